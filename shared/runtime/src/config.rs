//! Configuration from environment variables, one flat struct per concern (envy's model: no flattening), each
//! with its [`Table`] of variables next to it: the one list that `--help` prints and that names a variable in a
//! configuration error.

mod env;
mod help;

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use env::{
    ConfigError, Default, FILE_SUFFIX, Settings, Table, Var, check_table, env_vars, expand_files,
    from_env, from_vars,
};
pub use help::{Binary, Request, answer_args, help, parse_args, version};

/// A value that must never reach a log line or an error: `Debug` and `Display` print `***`. The one type for
/// every secret setting (NATS password and token, the SMTP URL with its password).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

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

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// What `runtime::telemetry::init` reads (the OpenTelemetry SDK reads the other standard `OTEL_*` variables).
pub const TELEMETRY: Table = Table {
    title: "Logs and traces",
    prefix: "",
    vars: &[
        Var::with_default(
            "RUST_LOG",
            "info",
            "log filter (tracing-subscriber EnvFilter syntax, e.g. `info,runtime=debug`)",
        ),
        Var::optional(
            "LOG_FORMAT",
            "`json` for one JSON object per line (containers); unset: compact text",
        ),
        Var::optional(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTLP/HTTP collector (port 4318); when set, spans and metrics are exported",
        ),
        Var::optional(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTLP/HTTP endpoint for spans alone",
        ),
        Var::optional(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTLP/HTTP endpoint for metrics alone",
        ),
        Var::with_default(
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "http/protobuf",
            "the only protocol built in; `grpc` is refused at start",
        ),
        Var::with_default(
            "OTEL_TRACES_EXPORTER",
            "otlp",
            "`none` exports no spans even when an endpoint is set",
        ),
        Var::with_default(
            "OTEL_METRICS_EXPORTER",
            "otlp,prometheus",
            "`otlp` and/or `prometheus` (the health port's /metrics), or `none`",
        ),
        Var::optional(
            "OTEL_SERVICE_NAME",
            "the service name on exported spans; unset: the function's name",
        ),
        Var::with_default(
            "OTEL_SDK_DISABLED",
            "false",
            "`true` turns exporting off even when an endpoint is set",
        ),
    ],
};

/// The variables of [`NatsConfig`].
pub const NATS: Table = Table {
    title: "NATS connection",
    prefix: "NATS_",
    vars: &[
        Var::with_default(
            "NATS_URL",
            "nats://127.0.0.1:4222",
            "one or more comma-separated server URLs",
        ),
        Var::optional(
            "NATS_CONTEXT",
            "a `nats context` by name (~/.config/nats/context/<name>.json) or JSON file path; \
             the variables here override its fields",
        ),
        Var::optional(
            "NATS_CREDS_FILE",
            "a .creds file (user JWT and nkey seed) for decentralized auth",
        ),
        Var::optional(
            "NATS_NKEY_FILE",
            "a file holding an nkey seed (SU...), for nkey auth",
        ),
        Var::optional(
            "NATS_USER",
            "user for user/password auth (with NATS_PASSWORD); `nats://user:pass@host` in NATS_URL works too",
        ),
        Var::optional("NATS_PASSWORD", "password for user/password auth").secret(),
        Var::optional("NATS_TOKEN", "token auth").secret(),
        Var::with_default(
            "NATS_TLS_REQUIRED",
            "false",
            "refuse a plaintext connection (implied by NATS_TLS_CA_FILE and a tls:// URL)",
        ),
        Var::optional(
            "NATS_TLS_CA_FILE",
            "the CA (PEM) that signed the server's certificate, trusted to verify it",
        ),
        Var::optional(
            "NATS_TLS_CERT_FILE",
            "client certificate, for mutual TLS (with NATS_TLS_KEY_FILE)",
        ),
        Var::optional("NATS_TLS_KEY_FILE", "the client certificate's key"),
        Var::optional(
            "NATS_INBOX_PREFIX",
            "a per-function inbox prefix, so permissions need not grant `_INBOX.>`",
        ),
    ],
};

impl Settings for NatsConfig {
    const TABLE: &'static Table = &NATS;
}

/// How to reach NATS (`NATS_*`). Its `Debug` masks the password a URL may carry.
#[derive(Clone, Deserialize)]
pub struct NatsConfig {
    /// `NATS_URL`: one or more comma-separated server URLs.
    #[serde(default = "default_url")]
    pub url: String,
    /// `NATS_CONTEXT`: a `nats context` whose fields fill the variables left unset (resolved by
    /// [`NatsConfig::from_vars`]; kept for `Debug`).
    pub context: Option<String>,
    /// `NATS_CREDS_FILE`: a `.creds` file (user JWT and nkey seed) for decentralized auth.
    pub creds_file: Option<PathBuf>,
    /// `NATS_NKEY_FILE`: a file holding an nkey seed.
    pub nkey_file: Option<PathBuf>,
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
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(env_vars(&NATS)?)
    }

    /// Reads `NATS_*` from `vars`: each secret may come from its `_FILE`, then the context `NATS_CONTEXT` names
    /// fills what is unset, then the pairs that only work together are checked.
    ///
    /// # Errors
    /// Names the variable that does not parse, the context that cannot be read, or the half of a pair that is
    /// missing.
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut vars = expand_files(&NATS, vars.into_iter().collect())?;
        let context = vars
            .iter()
            .find(|(name, _)| name == "NATS_CONTEXT")
            .map(|(_, value)| value.clone())
            .filter(|value| !value.is_empty());
        if let Some(context) = context {
            let home = vars
                .iter()
                .find(|(name, _)| name == "HOME")
                .map(|(_, value)| value.clone());
            let config_home = vars
                .iter()
                .find(|(name, _)| name == "XDG_CONFIG_HOME")
                .map(|(_, value)| value.clone());
            let fields =
                crate::nats_context::load(&context, config_home.as_deref(), home.as_deref())?;
            for (name, value) in fields {
                if !vars.iter().any(|(set, _)| set == name) {
                    vars.push((name.to_owned(), value));
                }
            }
        }
        let config: Self = from_vars(vars)?;
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<(), ConfigError> {
        let pair = |first: bool, second: bool, var: &str, other: &str| {
            if first && !second {
                Err(ConfigError {
                    var: var.to_owned(),
                    reason: format!("is set without {other}; set both or neither"),
                })
            } else {
                Ok(())
            }
        };
        pair(
            self.user.is_some(),
            self.password.is_some(),
            "NATS_USER",
            "NATS_PASSWORD",
        )?;
        pair(
            self.password.is_some(),
            self.user.is_some(),
            "NATS_PASSWORD",
            "NATS_USER",
        )?;
        let (cert, key) = (self.tls_cert_file.is_some(), self.tls_key_file.is_some());
        pair(cert, key, "NATS_TLS_CERT_FILE", "NATS_TLS_KEY_FILE")?;
        pair(key, cert, "NATS_TLS_KEY_FILE", "NATS_TLS_CERT_FILE")
    }

    /// The local default: one server on the loopback, no auth.
    pub fn local(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            context: None,
            creds_file: None,
            nkey_file: None,
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

/// By hand, for `url`: `nats://user:pass@host` is allowed, so it is shown through [`crate::nats_url::mask`].
impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured, so that a new field cannot be left out of the output unnoticed.
        let Self {
            url,
            context,
            creds_file,
            nkey_file,
            user,
            password,
            token,
            tls_required,
            tls_ca_file,
            tls_cert_file,
            tls_key_file,
            inbox_prefix,
        } = self;
        f.debug_struct("NatsConfig")
            .field("url", &crate::nats_url::mask(url))
            .field("context", context)
            .field("creds_file", creds_file)
            .field("nkey_file", nkey_file)
            .field("user", user)
            .field("password", password)
            .field("token", token)
            .field("tls_required", tls_required)
            .field("tls_ca_file", tls_ca_file)
            .field("tls_cert_file", tls_cert_file)
            .field("tls_key_file", tls_key_file)
            .field("inbox_prefix", inbox_prefix)
            .finish()
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
    /// `JOB_HEALTH_ADDR`: where to serve `/livez`, `/readyz` and `/metrics`, for example `0.0.0.0:8080`; unset, no
    /// endpoint.
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
    /// `JOB_RATE_LIMIT`: at most this many events started per window by all the function's replicas together
    /// (`10/1s`); unset, the consumer's `jetfn.rate_limit` metadata, else no limit.
    #[serde(default)]
    pub rate_limit: Option<crate::Limit>,
    /// `JOB_RATE_BUCKET`: the KV bucket the function's rate limit is counted in.
    #[serde(default = "default_rate_bucket")]
    pub rate_bucket: String,
    /// `JOB_PRIORITY_EVERY`: while a lower class has events waiting, at least one event in this many started is
    /// from it (the starvation bound of priorities).
    #[serde(default = "default_priority_every")]
    pub priority_every: u32,
    /// `JOB_HEARTBEAT_SECS`: how often the replica writes its state to the `jetfn-replicas` bucket (its entry ages
    /// out after the bucket's `max_age`, 15 s: keep this well under it); 0: no heartbeat.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_secs: u64,
    /// `JOB_THREADS`: the threads that run the process's tasks (read by [`crate::threads::build`] before the
    /// runtime exists); unset, the function's own choice.
    #[serde(default)]
    pub threads: Option<crate::Threads>,
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

/// By hand, for the wording of the error (its variable and value are added by [`from_env`]).
impl<'de> Deserialize<'de> for AckMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        match value.as_str() {
            "confirmed" => Ok(Self::Confirmed),
            "plain" => Ok(Self::Plain),
            _ => Err(serde::de::Error::custom("expected `confirmed` or `plain`")),
        }
    }
}

impl JobConfig {
    /// Reads `JOB_*`.
    ///
    /// # Errors
    /// Names the variable that does not parse.
    pub fn from_env() -> Result<Self, ConfigError> {
        from_env()
    }

    /// The drain timeout as a duration.
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_secs(self.drain_timeout_secs)
    }
}

/// The variables of [`JobConfig`].
pub const JOB: Table = Table {
    title: "Consuming",
    prefix: "JOB_",
    vars: &[
        Var::with_default("JOB_STREAM", "EVENTS", "the stream the consumer belongs to"),
        Var::optional(
            "JOB_CONSUMER",
            "the durable consumer to bind; unset: the function's name",
        ),
        Var::with_default(
            "JOB_DLQ_PREFIX",
            "dlq",
            "dead events go to `<prefix>.<stream>.<consumer>.<sequence>`",
        ),
        Var::with_default(
            "JOB_LEDGER_BUCKET",
            "jetfn-ledger",
            "the KV bucket of the idempotency ledger",
        ),
        Var::with_default(
            "JOB_FAILURES_BUCKET",
            "jetfn-failures",
            "the KV bucket journaling failed attempts for the dead-letter record",
        ),
        Var::with_default(
            "JOB_LEDGER_LEASE_SECS",
            "120",
            "how long a claimed side effect is presumed running before another attempt may take it over",
        ),
        Var::with_default(
            "JOB_HANDLER_TIMEOUT_SECS",
            "300",
            "a handler running longer is abandoned; the attempt counts as a transient failure",
        ),
        Var::with_default(
            "JOB_DRAIN_TIMEOUT_SECS",
            "20",
            "on SIGTERM, how long in-flight handlers may run before the process exits anyway",
        ),
        Var::optional(
            "JOB_HEALTH_ADDR",
            "where to serve /livez, /readyz and /metrics, e.g. `0.0.0.0:8080`; unset: no endpoint",
        ),
        Var::with_default(
            "JOB_BREAKER_THRESHOLD",
            "3",
            "downed-dependency failures in a row that open the circuit breaker; 0 disables it",
        ),
        Var::with_default(
            "JOB_BREAKER_PROBE_SECS",
            "5",
            "the first wait before probing an open circuit; doubles after each failed probe",
        ),
        Var::with_default(
            "JOB_BREAKER_PROBE_MAX_SECS",
            "60",
            "the longest wait between probes",
        ),
        Var::with_default(
            "JOB_ACK",
            "confirmed",
            "`confirmed` (the server answers each ack) or `plain` (fire-and-forget)",
        ),
        Var::optional(
            "JOB_RATE_LIMIT",
            "events started per window by all replicas together, e.g. `10/1s`; unset: the consumer's \
             `jetfn.rate_limit` metadata, else none",
        ),
        Var::with_default(
            "JOB_RATE_BUCKET",
            "jetfn-ratelimit",
            "the KV bucket counting the function's rate limit",
        ),
        Var::with_default(
            "JOB_PRIORITY_EVERY",
            "8",
            "while lower-priority events wait, at least one started in this many is one of them",
        ),
        Var::with_default(
            "JOB_HEARTBEAT_SECS",
            "5",
            "how often the replica writes its state to the jetfn-replicas bucket (entries expire after 15 s); 0: none",
        ),
        Var::optional(
            "JOB_THREADS",
            "threads that run the function's tasks: `1` runs them all on one thread (a quarter less CPU per event \
             where handlers wait on I/O; a handler must not block it), more are worker threads; unset: the \
             function's choice (one thread for the email functions, one per core for indexing)",
        ),
    ],
};

impl Settings for JobConfig {
    const TABLE: &'static Table = &JOB;
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
fn default_rate_bucket() -> String {
    "jetfn-ratelimit".to_owned()
}
fn default_priority_every() -> u32 {
    8
}
fn default_breaker_probe_max() -> u64 {
    60
}
fn default_heartbeat() -> u64 {
    5
}
fn default_drain() -> u64 {
    20
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(pairs: &[(&str, &str)]) -> Result<JobConfig, String> {
        from_vars::<JobConfig>(
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        )
        .map_err(|err| err.to_string())
    }

    #[test]
    fn the_tables_list_every_field_with_its_real_default() {
        check_table::<NatsConfig>(&[]);
        check_table::<JobConfig>(&[]);
    }

    #[test]
    fn a_bad_job_setting_is_named_by_its_variable() {
        assert_eq!(
            job(&[("JOB_BREAKER_THRESHOLD", "x")]).unwrap_err(),
            r#"JOB_BREAKER_THRESHOLD: expected a whole number, got "x""#
        );
        assert_eq!(
            job(&[("JOB_ACK", "maybe")]).unwrap_err(),
            r#"JOB_ACK: expected `confirmed` or `plain`, got "maybe""#
        );
        assert_eq!(
            job(&[("JOB_ACK", "plain")]).expect("valid").ack,
            AckMode::Plain
        );
    }

    #[test]
    fn a_nats_secret_is_never_shown() {
        let config = from_vars::<NatsConfig>([
            ("NATS_PASSWORD".to_owned(), "hunter2".to_owned()),
            ("NATS_TLS_REQUIRED".to_owned(), "yes".to_owned()),
        ]);
        let err = config
            .expect_err("NATS_TLS_REQUIRED is not a bool")
            .to_string();
        assert_eq!(
            err,
            r#"NATS_TLS_REQUIRED: expected `true` or `false`, got "yes""#
        );
        let config = from_vars::<NatsConfig>([("NATS_PASSWORD".to_owned(), "hunter2".to_owned())])
            .expect("valid");
        assert_eq!(format!("{:?}", config.password), "Some(***)");
        assert_eq!(
            config.password.as_ref().map(ToString::to_string).as_deref(),
            Some("***")
        );
    }

    #[test]
    fn a_password_in_the_nats_url_is_never_shown() {
        let config = from_vars::<NatsConfig>([(
            "NATS_URL".to_owned(),
            "nats://ada:hunter2@n1:4222, nats://n2:4222".to_owned(),
        )])
        .expect("valid");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(
            debug.starts_with(r#"NatsConfig { url: "nats://ada:***@n1:4222,nats://n2:4222", "#),
            "{debug}"
        );
        assert!(debug.contains("tls_required: false"), "{debug}");
    }

    fn nats(pairs: &[(&str, &str)]) -> Result<NatsConfig, String> {
        NatsConfig::from_vars(
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        )
        .map_err(|err| err.to_string())
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("jetfn-cfg-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_secret_can_come_from_a_file_but_not_from_both() {
        let dir = temp_dir();
        let file = dir.join("password");
        std::fs::write(&file, "hunter2\n").unwrap();
        let path = file.to_str().unwrap();
        let config = nats(&[("NATS_USER", "ada"), ("NATS_PASSWORD_FILE", path)]).expect("valid");
        assert_eq!(
            config.password.as_ref().map(Secret::expose),
            Some("hunter2")
        );
        let err = nats(&[
            ("NATS_USER", "ada"),
            ("NATS_PASSWORD", "hunter2"),
            ("NATS_PASSWORD_FILE", path),
        ])
        .unwrap_err();
        assert_eq!(
            err,
            "NATS_PASSWORD: is set and so is NATS_PASSWORD_FILE; set only one"
        );
        let err = nats(&[("NATS_TOKEN_FILE", "/nonexistent/token")]).unwrap_err();
        assert!(
            err.starts_with(r#"NATS_TOKEN_FILE: cannot read "/nonexistent/token": "#),
            "{err}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn half_a_pair_is_refused_by_name() {
        assert_eq!(
            nats(&[("NATS_USER", "ada")]).unwrap_err(),
            "NATS_USER: is set without NATS_PASSWORD; set both or neither"
        );
        assert_eq!(
            nats(&[("NATS_TLS_KEY_FILE", "/k.pem")]).unwrap_err(),
            "NATS_TLS_KEY_FILE: is set without NATS_TLS_CERT_FILE; set both or neither"
        );
    }

    #[test]
    fn a_context_fills_what_the_variables_leave_unset() {
        let dir = temp_dir();
        let folder = dir.join("nats/context");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(
            folder.join("prod.json"),
            r#"{"url":"nats://n1:4222","user":"ada","password":"from-context","ca":"/ca.pem"}"#,
        )
        .unwrap();
        let config = nats(&[
            ("XDG_CONFIG_HOME", dir.to_str().unwrap()),
            ("NATS_CONTEXT", "prod"),
            ("NATS_PASSWORD", "from-env"),
        ])
        .expect("valid");
        assert_eq!(config.url, "nats://n1:4222");
        assert_eq!(config.user.as_deref(), Some("ada"));
        assert_eq!(
            config.password.as_ref().map(Secret::expose),
            Some("from-env")
        );
        assert_eq!(config.tls_ca_file, Some(PathBuf::from("/ca.pem")));
        let config = nats(&[
            ("XDG_CONFIG_HOME", dir.to_str().unwrap()),
            ("NATS_CONTEXT", "prod"),
            ("NATS_URL", "nats://n2:4222"),
        ])
        .expect("valid");
        assert_eq!(config.url, "nats://n2:4222");
        std::fs::remove_dir_all(dir).ok();
    }
}
