//! Integration tests: one test binary, one module per area.

mod cleanup;
mod dlq;
mod harness_selftest;
mod indexing;
mod schedules;
mod support;
mod tracing_otlp;
mod welcome;
