//! Test harness: real nats-server, SMTP server and OTLP receiver for the integration tests.
