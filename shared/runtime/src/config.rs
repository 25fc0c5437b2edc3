//! Configuration from environment variables, one flat struct per concern (envy cannot flatten).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// A value that must never reach a log line: `Debug` and `Display` print `***`.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The clear value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How to reach NATS (`NATS_*`).
#[derive(Debug, Clone, Deserialize)]
pub struct NatsConfig {
    /// `NATS_URL`: one or more comma-separated server URLs.
    #[serde(default = "default_url")]
    pub url: String,
    /// `NATS_CREDS_FILE`: a `.creds` file (user JWT and nkey seed) for decentralized auth.
    pub creds_file: Option<PathBuf>,
    /// `NATS_USER` and `NATS_PASSWORD`: user/password auth, for development.
    pub user: Option<String>,
    /// `NATS_PASSWORD`.
    pub password: Option<Secret>,
    /// `NATS_TOKEN`: token auth.
    pub token: Option<Secret>,
    /// `NATS_TLS_REQUIRED`: refuse a plaintext connection.
    #[serde(default)]
    pub tls_required: bool,
    /// `NATS_TLS_CA_FILE`: the CA that signed the server's certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// `NATS_TLS_CERT_FILE` and `NATS_TLS_KEY_FILE`: the client certificate, for mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// `NATS_TLS_KEY_FILE`.
    pub tls_key_file: Option<PathBuf>,
    /// `NATS_INBOX_PREFIX`: a per-function inbox prefix, so least-privilege permissions need not grant `_INBOX.>`.
    pub inbox_prefix: Option<String>,
}

impl NatsConfig {
    /// Reads `NATS_*`.
    ///
    /// # Errors
    /// Names the variable that does not parse.
    pub fn from_env() -> Result<Self, envy::Error> {
        envy::prefixed("NATS_").from_env()
    }

    /// The local default: one server on the loopback, no auth.
    pub fn local(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            creds_file: None,
            user: None,
            password: None,
            token: None,
            tls_required: false,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            inbox_prefix: None,
        }
    }
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".to_owned()
}

/// How a function consumes (`JOB_*`).
#[derive(Debug, Clone, Deserialize)]
pub struct JobConfig {
    /// `JOB_STREAM`: the stream the consumer belongs to.
    #[serde(default = "default_stream")]
    pub stream: String,
    /// `JOB_CONSUMER`: the durable consumer to bind; defaults to the function's name.
    pub consumer: Option<String>,
    /// `JOB_DLQ_PREFIX`: dead events go to `<prefix>.<stream>.<consumer>.<sequence>`.
    #[serde(default = "default_dlq_prefix")]
    pub dlq_prefix: String,
    /// `JOB_LEDGER_BUCKET`: the KV bucket of the idempotency ledger.
    #[serde(default = "default_ledger_bucket")]
    pub ledger_bucket: String,
    /// `JOB_FAILURES_BUCKET`: the KV bucket where failed attempts are journaled for the dead-letter record.
    #[serde(default = "default_failures_bucket")]
    pub failures_bucket: String,
    /// `JOB_LEDGER_LEASE_SECS`: how long a claimed side effect is presumed still running before another attempt
    /// may take it over.
    #[serde(default = "default_lease")]
    pub ledger_lease_secs: u64,
    /// `JOB_HANDLER_TIMEOUT_SECS`: a handler still running after this is abandoned and the attempt counts as a
    /// transient failure; without it progress acks would keep a hung handler's message forever.
    #[serde(default = "default_handler_timeout")]
    pub handler_timeout_secs: u64,
    /// `JOB_DRAIN_TIMEOUT_SECS`: on SIGTERM, how long in-flight handlers may run before the process exits anyway
    /// (their messages are redelivered). Keep it below the container's stop grace period.
    #[serde(default = "default_drain")]
    pub drain_timeout_secs: u64,
    /// `JOB_HEALTH_ADDR`: where to serve `/livez` and `/readyz`, for example `0.0.0.0:8080`; unset, no endpoint.
    pub health_addr: Option<String>,
    /// `JOB_BREAKER_THRESHOLD`: downed-dependency failures in a row that open the circuit breaker; 0 disables it.
    #[serde(default = "default_breaker_threshold")]
    pub breaker_threshold: u32,
    /// `JOB_BREAKER_PROBE_SECS`: the first wait before probing an open circuit; it doubles after each failed probe.
    #[serde(default = "default_breaker_probe")]
    pub breaker_probe_secs: u64,
    /// `JOB_BREAKER_PROBE_MAX_SECS`: the longest wait between probes.
    #[serde(default = "default_breaker_probe_max")]
    pub breaker_probe_max_secs: u64,
    /// `JOB_ACK`: how a success is acked; see [`AckMode`].
    #[serde(default)]
    pub ack: AckMode,
}

/// How the runtime acks an event its handler finished. Neither mode can lose an event: an ack that never reaches
/// the server only means the event is delivered again after `ack_wait`, and the handler's `job.once` ledger
/// absorbs the repeat. The modes differ in how often that repeat happens and what it costs per event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AckMode {
    /// `confirmed` (the default): the ack is a request the server answers, retried until it does, and the
    /// handler's concurrency slot is held until then. A connection that drops right after a send costs no
    /// redelivery. Every shipped function runs this way.
    #[default]
    Confirmed,
    /// `plain`: a fire-and-forget `+ACK`, as most NATS clients do. It saves the server's reply and a round trip
    /// per event; for handlers whose repeat is harmless (idempotent writes, effects behind `job.once`) when
    /// throughput matters more than the rare redelivery after a dropped connection.
    Plain,
}

/// By hand, so the error names the variable: envy reports a bad enum value without it.
impl<'de> Deserialize<'de> for AckMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        match value.as_str() {
            "confirmed" => Ok(Self::Confirmed),
            "plain" => Ok(Self::Plain),
            other => Err(serde::de::Error::custom(format!(
                "JOB_ACK must be `confirmed` or `plain`, not `{other}`"
            ))),
        }
    }
}

impl JobConfig {
    /// Reads `JOB_*`.
    ///
    /// # Errors
    /// Names the variable that does not parse.
    pub fn from_env() -> Result<Self, envy::Error> {
        envy::prefixed("JOB_").from_env()
    }

    /// The drain timeout as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

fn default_stream() -> String {
    "EVENTS".to_owned()
}
fn default_dlq_prefix() -> String {
    "dlq".to_owned()
}
fn default_ledger_bucket() -> String {
    "jetfn-ledger".to_owned()
}
fn default_failures_bucket() -> String {
    "jetfn-failures".to_owned()
}
fn default_lease() -> u64 {
    120
}
fn default_handler_timeout() -> u64 {
    300
}
fn default_breaker_threshold() -> u32 {
    3
}
fn default_breaker_probe() -> u64 {
    5
}
fn default_breaker_probe_max() -> u64 {
    60
}
fn default_drain() -> u64 {
    20
}
