//! Integration tests: one test binary, one module per area.

mod backoff;
mod breaker;
mod cleanup;
mod cluster;
mod consumers;
mod dlq;
mod emails;
mod function_cli;
mod harness_selftest;
mod hostile;
mod indexing;
mod ledger;
mod local_system;
mod permissions;
mod provision;
mod router;
mod schedules;
mod supervision;
mod support;
mod tracing_otlp;
mod welcome;
