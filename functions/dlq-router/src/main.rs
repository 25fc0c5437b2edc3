//! `dlq-router`: the dead-letter path for messages no handler answered.
//!
//! A function that crashes or hangs on a message never reaches the runtime's dead-letter step; the server
//! redelivers until `max_deliver`, then emits a MAX_DELIVERIES advisory and leaves the message in its stream. The
//! `ADVISORIES` stream captures those advisories (so none is lost while this router is down); the router reads
//! them with a durable consumer, fetches each original by sequence, writes it to the DLQ stream idempotently, and
//! only then removes it from a work-queue stream. It runs on the runtime's raw layer: the runtime binds the
//! consumer and acks the advisory once it is routed, NAKs it for another try when routing failed, and TERMs what
//! is not an advisory at all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use runtime::dlq::{DeadLetter, DeathKind, Failures, strip_control_headers};
use runtime::{Outcome, RawConsumer, RawJob};
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
    /// `ROUTER_HEALTH_ADDR`: where to serve `/livez` and `/readyz`.
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
            "where to serve /livez and /readyz; unset: no endpoint",
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

/// A routing failure is retried after this long.
const RETRY_AFTER: Duration = Duration::from_secs(2);

struct Router {
    js: jetstream::Context,
    config: RouterConfig,
    /// Looked up at the first advisory, and again after a failure: routing waits for `jetfn infra apply` as the
    /// bind used to.
    dlq: OnceCell<stream::Stream>,
    failures: OnceCell<Failures>,
    streams: Mutex<HashMap<String, stream::Stream>>,
}

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(
        &runtime::binary!(),
        &[&CONFIG, &runtime::config::NATS, &runtime::config::TELEMETRY],
    );
    let telemetry = runtime::telemetry::init("dlq-router")?;
    let config: RouterConfig = runtime::config::from_env()?;
    let nats = runtime::config::NatsConfig::from_env().context("reading NATS_* configuration")?;
    let mut job = runtime::config::JobConfig::from_env().context("reading JOB_* configuration")?;
    job.failures_bucket.clone_from(&config.failures_bucket);
    if config.health_addr.is_some() {
        job.health_addr.clone_from(&config.health_addr);
    }
    let runtime = runtime::Runtime::new("dlq-router", &nats, job).await?;
    // Advisories are not events anyone could replay: one that is not an advisory is TERMed, not dead-lettered.
    let consumer = RawConsumer::new(&config.stream, &config.consumer).without_dead_letters();
    let router = Arc::new(Router {
        js: runtime.jetstream().clone(),
        config,
        dlq: OnceCell::new(),
        failures: OnceCell::new(),
        streams: Mutex::new(HashMap::new()),
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
        let span = tracing::info_span!(
            "route",
            "otel.name" = "process $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES",
            "otel.kind" = "consumer",
            "messaging.system" = "nats",
            "messaging.nats.stream" = %advisory.stream,
            "messaging.nats.sequence" = advisory.stream_seq,
            "messaging.consumer.group.name" = %advisory.consumer,
        );
        match self.route(&advisory).instrument(span).await {
            Ok(()) => Outcome::Success,
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), stream = %advisory.stream, sequence = advisory.stream_seq, "routing failed; will retry");
                Outcome::Retry {
                    after: Some(RETRY_AFTER),
                    reason: format!("{err:#}"),
                }
            }
        }
    }

    async fn route(&self, advisory: &MaxDeliveries) -> anyhow::Result<()> {
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
        let recorded = dlq.direct_get_last_for_subject(&subject).await.is_ok();
        if recorded {
            tracing::info!(stream = %advisory.stream, sequence = advisory.stream_seq, "already in the dead-letter stream");
        } else {
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
            let (subject, headers, payload, gone) = match source
                .get_raw_message(advisory.stream_seq)
                .await
            {
                Ok(original) => (
                    original.subject.to_string(),
                    strip_control_headers(Some(&original.headers)),
                    original.payload,
                    false,
                ),
                Err(err) => {
                    tracing::error!(error = %err, "original no longer in its stream; recording the loss without payload");
                    (
                        String::new(),
                        async_nats::HeaderMap::new(),
                        bytes_empty(),
                        true,
                    )
                }
            };
            let reason = match (&journal, gone) {
                (_, true) => format!(
                    "exhausted {} deliveries; the original was no longer in stream {}",
                    advisory.deliveries, advisory.stream
                ),
                (Some(record), false) => format!(
                    "exhausted {} deliveries; the last {} ended without an answer; last recorded error: {}",
                    advisory.deliveries,
                    advisory.deliveries.saturating_sub(record.failures).max(1),
                    record.last_error
                ),
                (None, false) => format!(
                    "exhausted {} deliveries without an answer (the function crashed, hung or was stopped)",
                    advisory.deliveries
                ),
            };
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
            };
            let ack = letter
                .publish(&self.js, &self.config.dlq_prefix)
                .await
                .context("publishing the dead-letter record")?;
            tracing::error!(stream = %advisory.stream, sequence = advisory.stream_seq, consumer = %advisory.consumer, dlq_sequence = ack.sequence, "dead-lettered after max deliveries");
        }
        // Work-queue streams keep max-delivered messages forever (2.14+); the copy is safe, so remove the original.
        // Limits and interest streams are left alone: other consumers may still need the message.
        if source.cached_info().config.retention == stream::RetentionPolicy::WorkQueue {
            match source.delete_message(advisory.stream_seq).await {
                Ok(_) => tracing::info!(
                    sequence = advisory.stream_seq,
                    "removed from the work-queue stream"
                ),
                Err(err) => {
                    tracing::debug!(error = %err, "original already gone from the work-queue stream")
                }
            }
        }
        failures
            .clear(&advisory.stream, &advisory.consumer, advisory.stream_seq)
            .await;
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

fn bytes_empty() -> bytes::Bytes {
    bytes::Bytes::new()
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
                streams: Mutex::new(HashMap::new()),
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
    async fn an_advisory_whose_original_is_gone_records_the_loss() {
        let h = Harness::start().await;
        assert_eq!(h.handle(advisory(999), 1).await, Outcome::Success);
        // No original, so no original subject: the record is read by its headers, not as a `DeadLetter`.
        let dlq = h.js.get_stream("DLQ").await.expect("DLQ");
        let record = dlq
            .get_last_raw_message_by_subject("dlq.EVENTS.welcome.999")
            .await
            .expect("a record for the lost message");
        let header = |name: &str| {
            record
                .headers
                .get(name)
                .map(|value| value.as_str().to_owned())
                .unwrap_or_default()
        };
        assert!(record.payload.is_empty());
        assert_eq!(header(runtime::dlq::header::SEQUENCE), "999");
        assert_eq!(header(runtime::dlq::header::KIND), "no-answer");
        assert!(
            header(runtime::dlq::header::REASON).contains("no longer in stream EVENTS"),
            "{}",
            header(runtime::dlq::header::REASON)
        );
        // Again: still one record.
        assert_eq!(h.handle(advisory(999), 2).await, Outcome::Success);
        let mut dlq = dlq;
        assert_eq!(dlq.info().await.expect("info").state.messages, 1);
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
            matches!(&outcome, Outcome::Retry { after, reason } if *after == Some(RETRY_AFTER) && reason.starts_with("stream DLQ")),
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
