//! Integration tests: one test binary, one module per area.

mod backoff;
mod backpressure;
mod breaker;
mod churn;
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
mod partition;
mod permissions;
mod provision;
mod router;
mod schedules;
mod storage;
mod supervision;
mod support;
mod tls;
mod tracing_otlp;
mod welcome;
