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
mod indexing;
mod local_system;
mod permissions;
mod provision;
mod schedules;
mod support;
mod tls;
mod tracing_otlp;
mod welcome;
