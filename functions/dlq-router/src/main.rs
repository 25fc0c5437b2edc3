//! `dlq-router`: the dead-letter path for messages no handler answered.
//!
//! A function that crashes or hangs on a message never reaches the runtime's dead-letter step; the server
//! redelivers until `max_deliver`, then emits a MAX_DELIVERIES advisory and leaves the message in its stream. The
//! `ADVISORIES` stream captures those advisories (so none is lost while this router is down); the router reads
//! them with a durable consumer, fetches each original by sequence, writes it to the DLQ stream idempotently, and
//! only then removes it from a work-queue stream. An original it cannot read for a moment (a timeout, a stream
//! without a leader) leaves the advisory for another try; a record without the original is written only when the
//! server shows it gone (purged, expired, deleted), says why, and never leads to deleting anything. It runs on the runtime's raw layer: the runtime binds the
//! consumer and acks the advisory once it is routed, NAKs it for another try when routing failed, and TERMs what
//! is not an advisory at all. A dead message that is a batch item is counted `failed` in its batch, as the runtime
//! would have on a last delivery that answered (`runtime::DeadItems`; ARCHITECTURE.md, "Batches").

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, RawMessageErrorKind};
use async_nats::jetstream::{self, stream};
use runtime::dlq::{DeadLetter, DeathKind, Failures, strip_control_headers};
use runtime::{DeadItem, DeadItems, Outcome, RawConsumer, RawJob};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio::sync::OnceCell;
use tracing::Instrument as _;

/// `ROUTER_*` settings; connection settings are the runtime's `NATS_*`, and `JOB_*` apply as to any function
/// (the drain timeout, for one).
#[derive(Debug, Deserialize)]
struct RouterConfig {
    /// `ROUTER_STREAM`: the stream capturing the advisories.
    #[serde(default = "default_stream")]
    stream: String,
    /// `ROUTER_CONSUMER`: the router's durable consumer on it.
    #[serde(default = "default_consumer")]
    consumer: String,
    /// `ROUTER_DLQ_STREAM`: the dead-letter stream.
    #[serde(default = "default_dlq_stream")]
    dlq_stream: String,
    /// `ROUTER_DLQ_PREFIX`: its subject prefix (the runtime's `JOB_DLQ_PREFIX`).
    #[serde(default = "default_dlq_prefix")]
    dlq_prefix: String,
    /// `ROUTER_FAILURES_BUCKET`: the runtime's failure journal.
    #[serde(default = "default_failures")]
    failures_bucket: String,
    /// `ROUTER_HEALTH_ADDR`: where to serve `/livez`, `/readyz` and `/metrics`.
    health_addr: Option<String>,
}

/// The variables of [`RouterConfig`].
const CONFIG: runtime::config::Table = runtime::config::Table {
    title: "Dead-letter routing",
    prefix: "ROUTER_",
    vars: &[
        runtime::config::Var::with_default(
            "ROUTER_STREAM",
            "ADVISORIES",
            "the stream capturing the max-deliveries advisories",
        ),
        runtime::config::Var::with_default(
            "ROUTER_CONSUMER",
            "dlq-router",
            "the router's durable consumer on it",
        ),
        runtime::config::Var::with_default("ROUTER_DLQ_STREAM", "DLQ", "the dead-letter stream"),
        runtime::config::Var::with_default(
            "ROUTER_DLQ_PREFIX",
            "dlq",
            "its subject prefix (the functions' JOB_DLQ_PREFIX)",
        ),
        runtime::config::Var::with_default(
            "ROUTER_FAILURES_BUCKET",
            "jetfn-failures",
            "the runtime's failure journal",
        ),
        runtime::config::Var::optional(
            "ROUTER_HEALTH_ADDR",
            "where to serve /livez, /readyz and /metrics; unset: no endpoint",
        ),
    ],
};

impl runtime::config::Settings for RouterConfig {
    const TABLE: &'static runtime::config::Table = &CONFIG;
}

fn default_stream() -> String {
    "ADVISORIES".to_owned()
}
fn default_consumer() -> String {
    "dlq-router".to_owned()
}
fn default_dlq_stream() -> String {
    "DLQ".to_owned()
}
fn default_dlq_prefix() -> String {
    "dlq".to_owned()
}
fn default_failures() -> String {
    "jetfn-failures".to_owned()
}

/// `io.nats.jetstream.advisory.v1.max_deliver`; it has no consumer sequence.
#[derive(Debug, Deserialize)]
struct MaxDeliveries {
    stream: String,
    consumer: String,
    stream_seq: u64,
    deliveries: u64,
    #[serde(default)]
    timestamp: Option<String>,
}

/// An advisory whose sequence lies beyond the end of its stream is called lost only after this many tries (with
/// the consumer's backoff, about a minute): a replica that is behind must not turn into a record without payload.
const NEVER_REACHED_TRIES: u32 = 5;

/// What became of an original.
enum Original {
    Copied(StreamMessage),
    /// Provably gone, and why.
    Gone(String),
}

struct Router {
    js: jetstream::Context,
    config: RouterConfig,
    /// Looked up at the first advisory, and again after a failure: routing waits for `jetfn infra apply` as the
    /// bind used to.
    dlq: OnceCell<stream::Stream>,
    failures: OnceCell<Failures>,
    /// Counts a dead batch item as failed (`runtime::DeadItems`), bound like the DLQ at first use.
    dead_items: OnceCell<DeadItems>,
    /// The ledger bucket and lease (`JOB_LEDGER_*`) the batch completion's effect is claimed in.
    ledger_bucket: String,
    ledger_lease: std::time::Duration,
    streams: Mutex<HashMap<String, stream::Stream>>,
    #[cfg(feature = "fault-injection")]
    faults: Faults,
}

/// `ROUTER_TEST_FAIL_FETCHES`: the first N fetches of an original fail as a request to a stream without a leader
/// does (a timeout), so the crash tests can show that a transient error leaves the advisory for another try.
const FAIL_FETCHES: &str = "ROUTER_TEST_FAIL_FETCHES";
/// `ROUTER_TEST_PAUSE_AFTER_RECORD_MS`: wait this long between writing a record and deleting the original and
/// acking the advisory, so a test can kill the router inside that window.
const PAUSE_AFTER_RECORD: &str = "ROUTER_TEST_PAUSE_AFTER_RECORD_MS";

/// The router's fault-injection hooks, read apart from [`RouterConfig`] (as the runtime reads its own) so `--help`
/// and the settings table are the same in every build.
#[cfg(feature = "fault-injection")]
#[derive(Debug, Default)]
struct Faults {
    fail_fetches: std::sync::atomic::AtomicU64,
    pause_after_record: std::time::Duration,
}

#[cfg(feature = "fault-injection")]
impl Faults {
    fn take_fetch_failure(&self) -> bool {
        use std::sync::atomic::Ordering;
        self.fail_fetches
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                left.checked_sub(1)
            })
            .is_ok()
    }
}

/// Reads the hooks; a production build refuses them rather than ignoring them, so a crash test run against the
/// wrong build fails loudly instead of passing for the wrong reason.
///
/// # Errors
/// A value that is not a whole number; without the `fault-injection` feature, any value.
fn faults_from_env() -> anyhow::Result<()> {
    for name in [FAIL_FETCHES, PAUSE_AFTER_RECORD] {
        if let Some(value) = std::env::var_os(name) {
            anyhow::ensure!(
                cfg!(feature = "fault-injection"),
                "{name} is a fault-injection hook for the tests, and this binary was built without the \
                 `fault-injection` feature (build with `--features dlq-router/fault-injection`); unset it"
            );
            anyhow::ensure!(
                value.to_str().is_some_and(|v| v.parse::<u64>().is_ok()),
                "{name}: expected a whole number, got {value:?}"
            );
        }
    }
    Ok(())
}

#[cfg(feature = "fault-injection")]
fn faults() -> Faults {
    let number = |name: &str| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Faults {
        fail_fetches: number(FAIL_FETCHES).into(),
        pause_after_record: std::time::Duration::from_millis(number(PAUSE_AFTER_RECORD)),
    }
}

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One thread: the handlers wait on I/O, so a second scheduler thread only adds wake-ups (runtime::threads).
fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(
        &runtime::binary!(),
        &[&CONFIG, &runtime::config::NATS, &runtime::config::TELEMETRY],
    );
    runtime::threads::build(runtime::Threads::One)?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("dlq-router")?;
    let config: RouterConfig = runtime::config::from_env()?;
    faults_from_env()?;
    let nats = runtime::config::NatsConfig::from_env().context("reading NATS_* configuration")?;
    let mut job = runtime::config::JobConfig::from_env().context("reading JOB_* configuration")?;
    job.failures_bucket.clone_from(&config.failures_bucket);
    if config.health_addr.is_some() {
        job.health_addr.clone_from(&config.health_addr);
    }
    let (ledger_bucket, ledger_lease_secs) = (job.ledger_bucket.clone(), job.ledger_lease_secs);
    let runtime = runtime::Runtime::new("dlq-router", &nats, job).await?;
    // Advisories are not events anyone could replay: one that is not an advisory is TERMed, not dead-lettered.
    let consumer = RawConsumer::new(&config.stream, &config.consumer).without_dead_letters();
    let router = Arc::new(Router {
        js: runtime.jetstream().clone(),
        config,
        dlq: OnceCell::new(),
        failures: OnceCell::new(),
        dead_items: OnceCell::new(),
        ledger_bucket,
        ledger_lease: std::time::Duration::from_secs(ledger_lease_secs),
        streams: Mutex::new(HashMap::new()),
        #[cfg(feature = "fault-injection")]
        faults: faults(),
    });
    runtime
        .consume_raw(consumer, move |job| {
            let router = router.clone();
            async move { router.handle(&job).await }
        })
        .run(runtime::shutdown_signal())
        .await?;
    telemetry.flush();
    Ok(())
}

impl Router {
    async fn handle(&self, job: &RawJob) -> Outcome {
        let advisory: MaxDeliveries = match serde_json::from_slice(&job.payload) {
            Ok(advisory) => advisory,
            Err(err) => {
                tracing::error!(error = %err, subject = %job.subject, "not a MAX_DELIVERIES advisory; dropping it");
                return Outcome::Invalid {
                    reason: format!("not a MAX_DELIVERIES advisory: {err}"),
                };
            }
        };
        let (server, port) = runtime::telemetry::server_address();
        let span = tracing::info_span!(
            "route",
            "otel.name" = "process $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES",
            "otel.kind" = "consumer",
            "messaging.system" = "nats",
            "messaging.operation.type" = "process",
            "messaging.operation.name" = "process",
            "server.address" = server,
            "server.port" = port,
            "messaging.nats.stream" = %advisory.stream,
            "messaging.nats.sequence" = advisory.stream_seq,
            "messaging.consumer.group.name" = %advisory.consumer,
        );
        match self.route(&advisory, job.attempt).instrument(span).await {
            Ok(()) => Outcome::Success,
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), stream = %advisory.stream, sequence = advisory.stream_seq, "routing failed; will retry");
                // On the consumer's backoff (1 s, 5 s, 30 s, then every 30 s): the advisory stays until it is routed.
                Outcome::Retry {
                    after: None,
                    reason: format!("{err:#}"),
                }
            }
        }
    }

    async fn route(&self, advisory: &MaxDeliveries, attempt: u32) -> anyhow::Result<()> {
        let subject = DeadLetter::subject_for(
            &self.config.dlq_prefix,
            &advisory.stream,
            &advisory.consumer,
            advisory.stream_seq,
        );
        let source = self.source_stream(&advisory.stream).await?;
        let dlq = self
            .dlq
            .get_or_try_init(|| async {
                self.js
                    .get_stream(&self.config.dlq_stream)
                    .await
                    .with_context(|| format!("stream {}", self.config.dlq_stream))
            })
            .await?;
        let failures = self
            .failures
            .get_or_try_init(|| async {
                let store = self
                    .js
                    .get_key_value(&self.config.failures_bucket)
                    .await
                    .with_context(|| format!("KV bucket {}", self.config.failures_bucket))?;
                anyhow::Ok(Failures::new(store))
            })
            .await?;
        // Only "not found" means no record: any other error (a timeout, no leader) could hide one, so it is retried.
        let earlier = match dlq.direct_get_last_for_subject(&subject).await {
            Ok(record) => {
                // The record carries the original's headers: the link survives a redelivered advisory.
                runtime::telemetry::link_from(&tracing::Span::current(), Some(&record.headers));
                let copied = DeadLetter::from_stored(Some(&record.headers), record.payload)
                    .is_ok_and(|letter| letter.payload_lost.is_none());
                Some((copied, record.headers))
            }
            Err(err) if err.kind() == DirectGetErrorKind::NotFound => None,
            Err(err) => {
                return Err(err).with_context(|| format!("looking for a record on {subject}"));
            }
        };
        let (copied, headers) = if let Some((copied, headers)) = earlier {
            tracing::info!(stream = %advisory.stream, sequence = advisory.stream_seq, copied, "already in the dead-letter stream");
            (copied, headers)
        } else {
            let original = self.original(&source, advisory, attempt).await?;
            // The route span links to the publisher's context, as the runtime's attempt spans do (the messaging
            // conventions' creation context); the advisory itself carries none, so it is taken from the dead event.
            let headers = match &original {
                Original::Copied(message) => {
                    runtime::telemetry::link_from(
                        &tracing::Span::current(),
                        Some(&message.headers),
                    );
                    message.headers.clone()
                }
                Original::Gone(_) => async_nats::HeaderMap::new(),
            };
            (self.record(advisory, failures, original).await?, headers)
        };
        // A batch item: no delivery of it answered, so no delivery counted it; it counts failed here, once, after
        // its record exists (a `batch.completed` reader finds the dead letter) and before the advisory is acked
        // (a failure retries the advisory, and the record is found again with the headers). A record without the
        // original has no headers: its item cannot be counted (ARCHITECTURE.md, "Batches").
        self.count_item(copied.then_some(&headers)).await?;
        #[cfg(feature = "fault-injection")]
        if !self.faults.pause_after_record.is_zero() {
            tracing::warn!(
                pause_ms = u64::try_from(self.faults.pause_after_record.as_millis()).unwrap_or(0),
                "recorded; pausing before settling (ROUTER_TEST_PAUSE_AFTER_RECORD_MS)"
            );
            tokio::time::sleep(self.faults.pause_after_record).await;
        }
        // Work-queue streams keep max-delivered messages forever (2.14+); once the copy is safe, remove the original.
        // Limits and interest streams are left alone: other consumers may still need the message. An original this
        // router did not copy (a record without payload) is never deleted.
        if source.cached_info().config.retention == stream::RetentionPolicy::WorkQueue {
            if copied {
                match source.delete_message(advisory.stream_seq).await {
                    Ok(_) => tracing::info!(
                        sequence = advisory.stream_seq,
                        "removed from the work-queue stream"
                    ),
                    Err(err) => {
                        tracing::debug!(error = %err, "original already gone from the work-queue stream");
                    }
                }
            } else {
                tracing::warn!(
                    sequence = advisory.stream_seq,
                    "the record holds no copy of the original; leaving the work-queue stream as it is"
                );
            }
        }
        failures
            .clear(&advisory.stream, &advisory.consumer, advisory.stream_seq)
            .await;
        Ok(())
    }

    /// The original, or proof that it is gone. An error is transient (the stream has no leader, a request timed
    /// out): the advisory is retried and nothing is written.
    async fn original(
        &self,
        source: &stream::Stream,
        advisory: &MaxDeliveries,
        attempt: u32,
    ) -> anyhow::Result<Original> {
        let seq = advisory.stream_seq;
        #[cfg(feature = "fault-injection")]
        if self.faults.take_fetch_failure() {
            anyhow::bail!(
                "fetching {} #{seq}: request timed out (ROUTER_TEST_FAIL_FETCHES)",
                advisory.stream
            );
        }
        match source.get_raw_message(seq).await {
            Ok(original) => return Ok(Original::Copied(original)),
            Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => {}
            Err(err) => {
                return Err(err).with_context(|| format!("fetching {} #{seq}", advisory.stream));
            }
        }
        // "No message found" from the leader; the stream's bounds say why, and whether it is final.
        let mut fresh = self
            .js
            .get_stream(&advisory.stream)
            .await
            .with_context(|| format!("stream {}", advisory.stream))?;
        let state = fresh
            .info()
            .await
            .with_context(|| format!("stream {} info", advisory.stream))?
            .state
            .clone();
        let why = if seq < state.first_sequence {
            format!(
                "stream {} now starts at sequence {}: the original was purged or expired (max_age, max_msgs, \
                 max_bytes) before the router could copy it",
                advisory.stream, state.first_sequence
            )
        } else if seq <= state.last_sequence {
            format!(
                "stream {} has no message at sequence {seq} (it holds {} to {}): the original was deleted before \
                 the router could copy it",
                advisory.stream, state.first_sequence, state.last_sequence
            )
        } else if attempt >= NEVER_REACHED_TRIES {
            format!(
                "stream {} ends at sequence {}, before {seq}, after {attempt} tries: it was re-created or \
                 restored since the advisory, and the original is not in it",
                advisory.stream, state.last_sequence
            )
        } else {
            // A replica that is behind, or a stream re-created moments ago: not proof yet.
            anyhow::bail!(
                "stream {} ends at sequence {}, before {seq}; trying again before calling it lost",
                advisory.stream,
                state.last_sequence
            );
        };
        Ok(Original::Gone(why))
    }

    /// Writes the record; returns whether it holds the original.
    async fn record(
        &self,
        advisory: &MaxDeliveries,
        failures: &Failures,
        original: Original,
    ) -> anyhow::Result<bool> {
        let journal = failures
            .get(&advisory.stream, &advisory.consumer, advisory.stream_seq)
            .await;
        let now = OffsetDateTime::now_utc();
        let advised_at = advisory
            .timestamp
            .as_deref()
            .and_then(|at| {
                OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339).ok()
            })
            .unwrap_or(now);
        let mut reason = match &journal {
            Some(record) => format!(
                "exhausted {} deliveries; the last {} ended without an answer; last recorded error: {}",
                advisory.deliveries,
                advisory.deliveries.saturating_sub(record.failures).max(1),
                record.last_error
            ),
            None => format!(
                "exhausted {} deliveries without an answer (the function crashed, hung or was stopped)",
                advisory.deliveries
            ),
        };
        let (subject, headers, payload, payload_lost) = match original {
            Original::Copied(original) => (
                original.subject.to_string(),
                strip_control_headers(Some(&original.headers)),
                original.payload,
                None,
            ),
            Original::Gone(why) => {
                tracing::error!(stream = %advisory.stream, sequence = advisory.stream_seq, why = %why, "the original is gone; recording the death without its payload");
                reason.push_str(&format!(
                    "; the original was no longer in stream {}",
                    advisory.stream
                ));
                // The advisory names the stream and sequence, not the subject: it stays unknown.
                (
                    String::new(),
                    async_nats::HeaderMap::new(),
                    bytes::Bytes::new(),
                    Some(why),
                )
            }
        };
        let copied = payload_lost.is_none();
        // The journal holds the attempts that failed with an error; the deliveries after them ended unanswered,
        // the last one when the advisory came.
        let mut failed_attempts = journal
            .as_ref()
            .map(|record| record.attempts.clone())
            .unwrap_or_default();
        if failed_attempts
            .last()
            .is_none_or(|last| last.delivery < advisory.deliveries)
        {
            failed_attempts.push(runtime::dlq::FailedAttempt {
                at_ms: u64::try_from(advised_at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
                delivery: advisory.deliveries,
                reason: "ended without an answer (the function crashed, hung or was stopped)"
                    .to_owned(),
            });
            let excess = failed_attempts
                .len()
                .saturating_sub(runtime::dlq::MAX_ATTEMPTS_KEPT);
            failed_attempts.drain(..excess);
        }
        let letter = DeadLetter {
            subject,
            stream: advisory.stream.clone(),
            sequence: advisory.stream_seq,
            consumer: advisory.consumer.clone(),
            attempts: advisory.deliveries,
            reason,
            kind: DeathKind::NoAnswer,
            first_failure: journal
                .as_ref()
                .map_or(advised_at, runtime::dlq::FailureRecord::first),
            last_failure: advised_at,
            headers,
            payload,
            writer: "router".to_owned(),
            failed_attempts,
            payload_lost,
        };
        let ack = letter
            .publish(&self.js, &self.config.dlq_prefix)
            .await
            .context("publishing the dead-letter record")?;
        tracing::error!(stream = %advisory.stream, sequence = advisory.stream_seq, consumer = %advisory.consumer, dlq_sequence = ack.sequence, copied, "dead-lettered after max deliveries");
        Ok(copied)
    }

    /// Counts the dead message as a failed batch item when it is one.
    async fn count_item(&self, headers: Option<&async_nats::HeaderMap>) -> anyhow::Result<()> {
        if !DeadItems::is_item(headers) {
            return Ok(());
        }
        let dead_items = self
            .dead_items
            .get_or_try_init(|| async {
                let client = self.js.client();
                DeadItems::bind(
                    &client,
                    &self.ledger_bucket,
                    self.ledger_lease,
                    "dlq-router",
                )
                .await
            })
            .await?;
        match dead_items
            .count_failed(headers)
            .await
            .map_err(|reason| anyhow::anyhow!("counting the batch item: {reason}"))?
        {
            DeadItem::Skipped(why) => {
                tracing::warn!(reason = why, "dead batch item not counted");
            }
            DeadItem::Counted => tracing::info!("dead batch item counted failed"),
            DeadItem::NotAnItem => {}
        }
        Ok(())
    }

    async fn source_stream(&self, name: &str) -> anyhow::Result<stream::Stream> {
        if let Some(stream) = self.streams().get(name) {
            return Ok(stream.clone());
        }
        let stream = self
            .js
            .get_stream(name)
            .await
            .with_context(|| format!("stream {name}"))?;
        self.streams().insert(name.to_owned(), stream.clone());
        Ok(stream)
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<String, stream::Stream>> {
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod settings {
    #[test]
    fn the_table_lists_every_setting() {
        runtime::config::check_table::<super::RouterConfig>(&[]);
    }
}

/// The router's decisions in process: no router binary, but a real nats-server with the repository's definitions
/// applied, and advisories handed to [`Router::handle`] as the raw layer would. How the runtime settles each
/// outcome (ack, NAK, TERM without a record), and the advisory's way from a real consumer, are
/// `tests/it/dlq.rs`'s.
#[cfg(test)]
mod handler_tests {
    use async_nats::HeaderMap;
    use runtime::testing::raw_job;
    use testkit::NatsServer;

    use super::*;

    const ADVISORY: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EVENTS.welcome";

    struct Harness {
        _nats: NatsServer,
        js: jetstream::Context,
        definitions: provision::Definitions,
        router: Router,
    }

    impl Harness {
        async fn start() -> Self {
            let nats = NatsServer::start();
            let client = async_nats::connect(nats.url()).await.expect("connect");
            let js = jetstream::new(client);
            let mut definitions =
                provision::Definitions::load(&testkit::workspace_root().join("infra/nats"))
                    .expect("infra/nats loads");
            definitions.schedules.clear();
            definitions.apply(&js).await.expect("infra/nats applies");
            let router = Router {
                js: js.clone(),
                config: RouterConfig {
                    stream: default_stream(),
                    consumer: default_consumer(),
                    dlq_stream: default_dlq_stream(),
                    dlq_prefix: default_dlq_prefix(),
                    failures_bucket: default_failures(),
                    health_addr: None,
                },
                dlq: OnceCell::new(),
                failures: OnceCell::new(),
                dead_items: OnceCell::new(),
                ledger_bucket: "jetfn-ledger".to_owned(),
                ledger_lease: std::time::Duration::from_secs(30),
                streams: Mutex::new(HashMap::new()),
                #[cfg(feature = "fault-injection")]
                faults: Faults::default(),
            };
            Self {
                _nats: nats,
                js,
                definitions,
                router,
            }
        }

        /// Stores an event in EVENTS, as a publisher would; returns its sequence.
        async fn stored(&self) -> u64 {
            let mut headers = HeaderMap::new();
            headers.insert("traceparent", TRACEPARENT);
            headers.insert(async_nats::header::NATS_MESSAGE_ID, "evt-1");
            self.js
                .publish_with_headers("events.user.registered", headers, PAYLOAD.into())
                .await
                .expect("publish")
                .await
                .expect("stored")
                .sequence
        }

        async fn handle(&self, payload: impl Into<bytes::Bytes>, attempt: u32) -> Outcome {
            let job = raw_job(ADVISORY, None, payload).attempt(attempt).build();
            self.router.handle(&job).await
        }

        async fn dlq(&self) -> Vec<DeadLetter> {
            let mut dlq = self.js.get_stream("DLQ").await.expect("DLQ");
            let state = dlq.info().await.expect("DLQ info").state.clone();
            let mut records = Vec::new();
            for seq in state.first_sequence..=state.last_sequence {
                if let Ok(message) = dlq.get_raw_message(seq).await {
                    records.push(
                        DeadLetter::from_stored(Some(&message.headers), message.payload)
                            .expect("a DLQ record"),
                    );
                }
            }
            records
        }
    }

    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const PAYLOAD: &[u8] = br#"{"specversion":"1.0","id":"evt-1"}"#;

    fn advisory(seq: u64) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": "io.nats.jetstream.advisory.v1.max_deliver",
            "id": "adv-1",
            "timestamp": "2026-11-28T08:00:00Z",
            "stream": "EVENTS",
            "consumer": "welcome",
            "stream_seq": seq,
            "deliveries": 4,
        }))
        .expect("serializes")
    }

    #[tokio::test]
    async fn an_advisory_is_recorded_once_with_the_original_and_its_history() {
        let h = Harness::start().await;
        let seq = h.stored().await;
        assert_eq!(h.handle(advisory(seq), 1).await, Outcome::Success);
        let records = h.dlq().await;
        assert_eq!(records.len(), 1);
        let letter = &records[0];
        assert_eq!(letter.subject, "events.user.registered");
        assert_eq!(
            (
                letter.stream.as_str(),
                letter.consumer.as_str(),
                letter.sequence
            ),
            ("EVENTS", "welcome", seq)
        );
        assert_eq!((letter.attempts, letter.kind), (4, DeathKind::NoAnswer));
        assert_eq!(letter.writer, "router");
        assert!(
            letter.reason.contains("without an answer"),
            "{}",
            letter.reason
        );
        assert_eq!(
            letter.last_failure,
            OffsetDateTime::parse(
                "2026-11-28T08:00:00Z",
                &time::format_description::well_known::Rfc3339
            )
            .expect("a time")
        );
        assert_eq!(letter.payload.as_ref(), PAYLOAD);
        assert_eq!(
            letter.headers.get("traceparent").map(|v| v.as_str()),
            Some(TRACEPARENT),
            "the original headers travel with the record"
        );
        // The same advisory again (a redelivery after a lost ack): acked, and no second record.
        assert_eq!(h.handle(advisory(seq), 2).await, Outcome::Success);
        assert_eq!(h.dlq().await.len(), 1);
        // EVENTS keeps its history (limits retention): the original stays for other consumers.
        let events = h.js.get_stream("EVENTS").await.expect("EVENTS");
        assert!(events.get_raw_message(seq).await.is_ok());
    }

    #[tokio::test]
    async fn the_record_lists_the_journaled_attempts_then_the_unanswered_last_delivery() {
        let h = Harness::start().await;
        let seq = h.stored().await;
        let journal = Failures::new(h.js.get_key_value("jetfn-failures").await.expect("bucket"));
        journal
            .record("EVENTS", "welcome", seq, 1, "451 try later")
            .await;
        journal
            .record("EVENTS", "welcome", seq, 2, "452 mailbox busy")
            .await;
        assert_eq!(h.handle(advisory(seq), 1).await, Outcome::Success);
        let records = h.dlq().await;
        let attempts: Vec<(u64, &str)> = records[0]
            .failed_attempts
            .iter()
            .map(|attempt| (attempt.delivery, attempt.reason.as_str()))
            .collect();
        assert_eq!(
            attempts,
            [
                (1, "451 try later"),
                (2, "452 mailbox busy"),
                (
                    4,
                    "ended without an answer (the function crashed, hung or was stopped)"
                )
            ]
        );
        assert_eq!(
            records[0].failed_attempts[2].at(),
            records[0].last_failure,
            "the last delivery ended when the advisory came"
        );
    }

    /// The record read by its raw headers, as any tool would.
    async fn record_headers(h: &Harness, seq: u64) -> (HeaderMap, bytes::Bytes) {
        let dlq = h.js.get_stream("DLQ").await.expect("DLQ");
        let record = dlq
            .get_last_raw_message_by_subject(&format!("dlq.EVENTS.welcome.{seq}"))
            .await
            .expect("a record for the lost message");
        (record.headers, record.payload)
    }

    #[tokio::test]
    async fn an_advisory_whose_original_was_purged_records_the_loss_and_why() {
        let h = Harness::start().await;
        let seq = h.stored().await;
        h.js.get_stream("EVENTS")
            .await
            .expect("EVENTS")
            .purge()
            .await
            .expect("purged");
        assert_eq!(h.handle(advisory(seq), 1).await, Outcome::Success);
        let (headers, payload) = record_headers(&h, seq).await;
        let header = |name: &str| {
            headers
                .get(name)
                .map(|value| value.as_str().to_owned())
                .unwrap_or_default()
        };
        assert!(payload.is_empty());
        assert_eq!(header(runtime::dlq::header::SEQUENCE), seq.to_string());
        assert_eq!(header(runtime::dlq::header::KIND), "no-answer");
        assert!(
            header(runtime::dlq::header::REASON).contains("no longer in stream EVENTS"),
            "{}",
            header(runtime::dlq::header::REASON)
        );
        assert!(
            header(runtime::dlq::header::PAYLOAD_LOST).contains("purged or expired"),
            "{}",
            header(runtime::dlq::header::PAYLOAD_LOST)
        );
        // Listed like any record: the loss is visible, the subject honestly unknown.
        let records = h.dlq().await;
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].subject, "");
        assert!(records[0].payload_lost.is_some());
        // Again: still one record.
        assert_eq!(h.handle(advisory(seq), 2).await, Outcome::Success);
        assert_eq!(h.dlq().await.len(), 1);
    }

    /// A sequence past the end of the stream is not proof (a replica may be behind): retried, and recorded as lost
    /// only after several tries.
    #[tokio::test]
    async fn a_sequence_the_stream_never_reached_is_retried_before_it_is_called_lost() {
        let h = Harness::start().await;
        h.stored().await;
        for attempt in 1..NEVER_REACHED_TRIES {
            let outcome = h.handle(advisory(999), attempt).await;
            assert!(
                matches!(&outcome, Outcome::Retry { after: None, reason } if reason.contains("before 999")),
                "{outcome:?}"
            );
            assert!(h.dlq().await.is_empty(), "nothing is written while unsure");
        }
        assert_eq!(
            h.handle(advisory(999), NEVER_REACHED_TRIES).await,
            Outcome::Success
        );
        let records = h.dlq().await;
        assert!(
            records[0]
                .payload_lost
                .as_deref()
                .is_some_and(|why| why.contains("re-created or restored")),
            "{records:?}"
        );
    }

    #[tokio::test]
    async fn what_is_not_an_advisory_is_invalid_and_leaves_no_record() {
        let h = Harness::start().await;
        for payload in [&b"not json"[..], br#"{"stream":"EVENTS"}"#] {
            let outcome = h.handle(payload, 1).await;
            assert!(
                matches!(&outcome, Outcome::Invalid { reason } if reason.starts_with("not a MAX_DELIVERIES advisory")),
                "{outcome:?}"
            );
        }
        assert!(h.dlq().await.is_empty());
    }

    #[tokio::test]
    async fn a_routing_failure_is_retried_until_the_infrastructure_is_back() {
        let h = Harness::start().await;
        let seq = h.stored().await;
        h.js.delete_stream("DLQ").await.expect("DLQ deleted");
        let outcome = h.handle(advisory(seq), 1).await;
        assert!(
            matches!(&outcome, Outcome::Retry { after: None, reason } if reason.starts_with("stream DLQ")),
            "{outcome:?}"
        );
        // An advisory about a stream that does not exist is retried too.
        let mut unknown =
            serde_json::from_slice::<serde_json::Value>(&advisory(seq)).expect("json");
        unknown["stream"] = "NOPE".into();
        let outcome = h
            .handle(serde_json::to_vec(&unknown).expect("serializes"), 1)
            .await;
        assert!(
            matches!(&outcome, Outcome::Retry { reason, .. } if reason.starts_with("stream NOPE")),
            "{outcome:?}"
        );
        // `jetfn infra apply` again: the next delivery routes.
        h.definitions
            .apply(&h.js)
            .await
            .expect("infra/nats applies");
        assert_eq!(h.handle(advisory(seq), 2).await, Outcome::Success);
        assert_eq!(h.dlq().await.len(), 1);
    }
}
