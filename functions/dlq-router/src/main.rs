//! `dlq-router`: the dead-letter path for messages no handler answered.
//!
//! A function that crashes or hangs on a message never reaches the runtime's dead-letter step; the server
//! redelivers until `max_deliver`, then emits a MAX_DELIVERIES advisory and leaves the message in its stream. The
//! `ADVISORIES` stream captures those advisories (so none is lost while this router is down); the router reads
//! them with a durable consumer, fetches each original by sequence, writes it to the DLQ stream idempotently, and
//! only then removes it from a work-queue stream and acks the advisory.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, stream};
use futures::StreamExt as _;
use runtime::dlq::{DeadLetter, DeathKind, Failures, strip_control_headers};
use runtime::health::Health;
use serde::Deserialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// `ROUTER_*` settings; connection settings are the runtime's `NATS_*`.
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

struct Router {
    js: jetstream::Context,
    config: RouterConfig,
    dlq: stream::Stream,
    failures: Failures,
    streams: HashMap<String, stream::Stream>,
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
    let client = runtime::connect(&nats, "dlq-router").await?;
    let js = jetstream::new(client.clone());
    let health = Health::default();
    health.watch_client(client.clone());
    let stop = CancellationToken::new();
    if let Some(addr) = &config.health_addr {
        health.clone().serve(addr, stop.clone()).await?;
    }

    let shutdown = runtime::shutdown_signal();
    tokio::pin!(shutdown);
    let bound = tokio::select! {
        () = &mut shutdown => None,
        bound = bind(&js, &config) => Some(bound),
    };
    if let Some((consumer, dlq, failures)) = bound {
        health.set_bound(true);
        tracing::info!(stream = %config.stream, consumer = %config.consumer, "dlq-router bound; serving");
        let mut router = Router {
            js,
            config,
            dlq,
            failures,
            streams: HashMap::new(),
        };
        router.run(&consumer, &mut shutdown).await;
    }
    health.set_bound(false);
    stop.cancel();
    client.flush().await.ok();
    telemetry.flush();
    tracing::info!("stopped");
    Ok(())
}

async fn bind(
    js: &jetstream::Context,
    config: &RouterConfig,
) -> (PullConsumer, stream::Stream, Failures) {
    let mut delay = Duration::from_millis(200);
    loop {
        let attempt = async {
            let consumer: PullConsumer = js
                .get_consumer_from_stream(&config.consumer, &config.stream)
                .await?;
            let dlq = js.get_stream(&config.dlq_stream).await?;
            let failures = js.get_key_value(&config.failures_bucket).await?;
            anyhow::Ok((consumer, dlq, Failures::new(failures)))
        };
        match attempt.await {
            Ok(bound) => return bound,
            Err(err) => {
                tracing::warn!(error = %err, "cannot bind yet (run `jetfn infra apply`?); retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

impl Router {
    async fn run(
        &mut self,
        consumer: &PullConsumer,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    ) {
        loop {
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(16)
                .messages()
                .await
            {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(error = %err, "starting the pull failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                // Advisories are handled one at a time, to completion: a shutdown never cuts one in half.
                let next = tokio::select! {
                    () = shutdown.as_mut() => return,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => self.handle(&message).await,
                    Some(Err(err)) => tracing::warn!(error = %err, "pull error; continuing"),
                    None => break,
                }
            }
        }
    }

    async fn handle(&mut self, message: &jetstream::Message) {
        let advisory: MaxDeliveries = match serde_json::from_slice(&message.payload) {
            Ok(advisory) => advisory,
            Err(err) => {
                tracing::error!(error = %err, subject = %message.subject, "not a MAX_DELIVERIES advisory; dropping it");
                let _ = message.ack_with(AckKind::Term).await;
                return;
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
            Ok(()) => {
                if let Err(err) = message.double_ack().await {
                    tracing::warn!(error = %err, "advisory ack not confirmed; a redelivery is absorbed by the DLQ check");
                }
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), stream = %advisory.stream, sequence = advisory.stream_seq, "routing failed; will retry");
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(2))))
                    .await;
            }
        }
    }

    async fn route(&mut self, advisory: &MaxDeliveries) -> anyhow::Result<()> {
        let subject = DeadLetter::subject_for(
            &self.config.dlq_prefix,
            &advisory.stream,
            &advisory.consumer,
            advisory.stream_seq,
        );
        let source = self.source_stream(&advisory.stream).await?;
        let recorded = self.dlq.direct_get_last_for_subject(&subject).await.is_ok();
        if recorded {
            tracing::info!(stream = %advisory.stream, sequence = advisory.stream_seq, "already in the dead-letter stream");
        } else {
            let journal = self
                .failures
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
        self.failures
            .clear(&advisory.stream, &advisory.consumer, advisory.stream_seq)
            .await;
        Ok(())
    }

    async fn source_stream(&mut self, name: &str) -> anyhow::Result<stream::Stream> {
        if let Some(stream) = self.streams.get(name) {
            return Ok(stream.clone());
        }
        let stream = self
            .js
            .get_stream(name)
            .await
            .with_context(|| format!("stream {name}"))?;
        self.streams.insert(name.to_owned(), stream.clone());
        Ok(stream)
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
