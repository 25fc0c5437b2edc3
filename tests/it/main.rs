//! Integration tests: one test binary, one module per area.

mod dlq;
mod emails;
mod harness_selftest;
mod local_system;
mod support;
mod tracing_otlp;
mod welcome;
