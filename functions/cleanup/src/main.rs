//! `cleanup`: retention work, run when a `cleanup.requested` event arrives. The event is fired by a schedule that
//! NATS itself holds (`infra/nats/schedules/cleanup-daily.json`, applied by `jetfn infra apply`): there is no
//! scheduler process and no leader election.
//!
//! Each run: asks the indexing function to purge index entries older than the index retention (the index belongs
//! to that process, so this one never opens it), purges dead-letter records stored before the DLQ retention, and
//! removes failure-journal records whose message has already left its stream. It then publishes
//! `cleanup.completed` with the counts. Every step is idempotent (a second run with the same cut-offs removes
//! nothing more), so two runs at once, or a redelivered run, do no harm.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use events::services::{self, index, index::PurgeRequest, index::PurgeResponse};
use events::{CleanupCompleted, CleanupRequested, CloudEvent};
use futures::{StreamExt as _, TryStreamExt as _};
use runtime::{Effect, Job, JobError, Publisher, Runtime};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `CLEANUP_*` settings.
#[derive(Debug, Clone, Deserialize)]
struct CleanupConfig {
    /// `CLEANUP_INDEX_RETENTION_SECS`: index entries of messages older than this are removed (default 90 days).
    #[serde(default = "default_index_retention")]
    index_retention_secs: u64,
    /// `CLEANUP_DLQ_RETENTION_SECS`: dead-letter records older than this are removed (default 30 days).
    #[serde(default = "default_dlq_retention")]
    dlq_retention_secs: u64,
    /// `CLEANUP_DLQ_STREAM`: the dead-letter stream.
    #[serde(default = "default_dlq_stream")]
    dlq_stream: String,
    /// `CLEANUP_FAILURES_BUCKET`: the runtime's failure journal.
    #[serde(default = "default_failures")]
    failures_bucket: String,
    /// `CLEANUP_INDEX_PURGE_SUBJECT`: the indexing service's purge endpoint.
    #[serde(default = "default_purge_subject")]
    index_purge_subject: String,
    /// `CLEANUP_REQUEST_TIMEOUT_SECS`: how long the index purge may take.
    #[serde(default = "default_timeout")]
    request_timeout_secs: u64,
}

/// The variables of [`CleanupConfig`].
const CONFIG: runtime::config::Table = runtime::config::Table {
    title: "Retention",
    prefix: "CLEANUP_",
    vars: &[
        runtime::config::Var::with_default(
            "CLEANUP_INDEX_RETENTION_SECS",
            "7776000",
            "index entries of messages older than this are removed (90 days)",
        ),
        runtime::config::Var::with_default(
            "CLEANUP_DLQ_RETENTION_SECS",
            "2592000",
            "dead-letter records older than this are removed (30 days)",
        ),
        runtime::config::Var::with_default("CLEANUP_DLQ_STREAM", "DLQ", "the dead-letter stream"),
        runtime::config::Var::with_default(
            "CLEANUP_FAILURES_BUCKET",
            "jetfn-failures",
            "the runtime's failure journal",
        ),
        runtime::config::Var::with_default(
            "CLEANUP_INDEX_PURGE_SUBJECT",
            index::PURGE_SUBJECT,
            "the indexing service's purge endpoint",
        ),
        runtime::config::Var::with_default(
            "CLEANUP_REQUEST_TIMEOUT_SECS",
            "30",
            "how long the index purge may take",
        ),
    ],
};

impl runtime::config::Settings for CleanupConfig {
    const TABLE: &'static runtime::config::Table = &CONFIG;
}

fn default_index_retention() -> u64 {
    90 * 24 * 3600
}
fn default_dlq_retention() -> u64 {
    30 * 24 * 3600
}
fn default_dlq_stream() -> String {
    "DLQ".to_owned()
}
fn default_failures() -> String {
    "jetfn-failures".to_owned()
}
fn default_purge_subject() -> String {
    index::PURGE_SUBJECT.to_owned()
}
fn default_timeout() -> u64 {
    30
}

struct Context {
    config: CleanupConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    publisher: Publisher,
}

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(
        &runtime::binary!(),
        &[
            &CONFIG,
            &runtime::config::NATS,
            &runtime::config::JOB,
            &runtime::config::TELEMETRY,
        ],
    );
    let telemetry = runtime::telemetry::init("cleanup")?;
    let config: CleanupConfig = runtime::config::from_env()?;
    let runtime = Runtime::from_env("cleanup").await?;
    let client = runtime.client().clone();
    let context = std::sync::Arc::new(Context {
        config,
        js: jetstream::new(client.clone()),
        publisher: Publisher::new(client.clone(), "/cleanup"),
        client,
    });
    runtime
        .serve(
            move |job| run(job, context.clone()),
            runtime::shutdown_signal(),
        )
        .await?;
    telemetry.flush();
    Ok(())
}

#[tracing::instrument(skip_all, fields(request_id = %job.event.id, index_removed, dlq_removed, journal_removed))]
async fn run(job: Job<CleanupRequested>, context: std::sync::Arc<Context>) -> Result<(), JobError> {
    let started = Instant::now();
    let config = &context.config;
    let now = OffsetDateTime::now_utc();
    let index_retention = job
        .event
        .data
        .index_retention_secs
        .unwrap_or(config.index_retention_secs);
    let dlq_retention = job
        .event
        .data
        .dlq_retention_secs
        .unwrap_or(config.dlq_retention_secs);
    let index_cutoff = now - secs(index_retention);
    let dlq_cutoff = now - secs(dlq_retention);

    // Every step runs even when another failed; any failure makes the run transient, and the retry redoes all of
    // it harmlessly (each step is idempotent).
    let index = purge_index(&context, index_cutoff).await;
    let dlq = purge_dlq(&context.js, &config.dlq_stream, dlq_cutoff).await;
    let journal = purge_orphan_journal(&context.js, &config.failures_bucket).await;
    let span = tracing::Span::current();
    let mut failed = Vec::new();
    for (name, result, field) in [
        ("index", &index, "index_removed"),
        ("dlq", &dlq, "dlq_removed"),
        ("journal", &journal, "journal_removed"),
    ] {
        match result {
            Ok(count) => {
                span.record(field, count);
                removed_counter().add(
                    *count,
                    &[opentelemetry::KeyValue::new("jetfn.cleanup.target", name)],
                );
            }
            Err(err) => {
                tracing::warn!(step = name, error = %format!("{err:#}"), "cleanup step failed");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        return Err(JobError::transient(anyhow::anyhow!(
            "cleanup steps failed: {}",
            failed.join(", ")
        )));
    }
    let completed = CleanupCompleted {
        request_id: job.event.id.clone(),
        index_removed: index.unwrap_or_default(),
        dlq_removed: dlq.unwrap_or_default(),
        journal_removed: journal.unwrap_or_default(),
        index_cutoff,
        dlq_cutoff,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    tracing::info!(
        index_removed = completed.index_removed,
        dlq_removed = completed.dlq_removed,
        journal_removed = completed.journal_removed,
        index_cutoff = %completed.index_cutoff.format(&Rfc3339).unwrap_or_default(),
        dlq_cutoff = %completed.dlq_cutoff.format(&Rfc3339).unwrap_or_default(),
        duration_ms = completed.duration_ms,
        "cleanup completed"
    );
    // One completion event per request: its id derives from the request's, and the ledger skips a second publish.
    let mut event = CloudEvent::new("/cleanup", completed);
    event.id = format!("{}.completed", job.event.id);
    match job
        .once("cleanup-completed", || async {
            context
                .publisher
                .publish_event(&event)
                .await
                .map_err(JobError::transient)
        })
        .await?
    {
        Effect::Done(published) => {
            tracing::info!(sequence = published.sequence, "cleanup.completed published");
        }
        Effect::AlreadyDone => tracing::info!("cleanup.completed was already published"),
    }
    Ok(())
}

fn secs(seconds: u64) -> time::Duration {
    time::Duration::seconds(i64::try_from(seconds).unwrap_or(i64::MAX / 2))
}

/// Asks the indexing function (the index's only owner) to purge; its answer is how many entries it removed.
async fn purge_index(context: &Context, before: OffsetDateTime) -> anyhow::Result<u64> {
    let body = serde_json::to_vec(&PurgeRequest { before })?;
    let reply = tokio::time::timeout(
        Duration::from_secs(context.config.request_timeout_secs),
        context
            .client
            .request(context.config.index_purge_subject.clone(), body.into()),
    )
    .await
    .context("the index purge timed out")?
    .context("asking the indexing service to purge (is `indexing` running?)")?;
    let header = |name: &str| {
        reply
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(async_nats::HeaderValue::as_str)
    };
    let purged: PurgeResponse = services::decode_reply(header, &reply.payload)
        .context("the indexing service's purge answer")?;
    Ok(purged.removed)
}

/// Purges every dead-letter record stored before `before`. Records are stored in time order, so everything below
/// the first record stored at or after the cut-off goes (the purge API's `seq`: up to, not including).
async fn purge_dlq(
    js: &jetstream::Context,
    name: &str,
    before: OffsetDateTime,
) -> anyhow::Result<u64> {
    let mut dlq = js
        .get_stream(name)
        .await
        .with_context(|| format!("stream {name}"))?;
    let state = dlq.info().await?.state.clone();
    if state.messages == 0 {
        return Ok(0);
    }
    let keep_from = match first_stored_since(&dlq, before).await? {
        Some(seq) => seq,
        // Nothing newer than the cut-off: everything that existed before we looked is past retention.
        None => state.last_sequence + 1,
    };
    if keep_from <= state.first_sequence {
        return Ok(0);
    }
    let purged = dlq
        .purge()
        .sequence(keep_from)
        .await
        .with_context(|| format!("purging {name} below sequence {keep_from}"))?;
    Ok(purged.purged)
}

/// The sequence of the first message stored at or after `since`, read with a short-lived consumer that starts
/// there (the server finds the sequence by time).
async fn first_stored_since(
    stream: &stream::Stream,
    since: OffsetDateTime,
) -> anyhow::Result<Option<u64>> {
    let probe: consumer::PullConsumer = stream
        .create_consumer(consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: since },
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: Duration::from_secs(30),
            memory_storage: true,
            ..Default::default()
        })
        .await
        .context("creating a probe consumer")?;
    let mut batch = probe
        .fetch()
        .max_messages(1)
        .messages()
        .await
        .context("reading the first newer record")?;
    let first = match batch.next().await {
        Some(Ok(message)) => Some(
            message
                .info()
                .map_err(|err| anyhow::anyhow!("{err}"))?
                .stream_sequence,
        ),
        Some(Err(err)) => return Err(anyhow::anyhow!("reading the first newer record: {err}")),
        None => None,
    };
    let name = probe.cached_info().name.clone();
    if let Err(err) = stream.delete_consumer(&name).await {
        tracing::debug!(error = %err, "deleting the probe consumer failed; it expires by itself");
    }
    Ok(first)
}

/// Removes failure-journal records (`<stream>.<consumer>.<seq>`) whose message has left its stream: no attempt
/// can ever read them again. The bucket's max age would remove them too, only later. The idempotency ledger needs
/// nothing: every ledger record is covered by its bucket's max age.
async fn purge_orphan_journal(js: &jetstream::Context, bucket: &str) -> anyhow::Result<u64> {
    let store = js
        .get_key_value(bucket)
        .await
        .with_context(|| format!("KV bucket {bucket}"))?;
    let keys: Vec<String> = store.keys().await?.try_collect().await?;
    let mut first_sequences = std::collections::HashMap::new();
    let mut removed = 0;
    for key in keys {
        let mut parts = key.rsplitn(3, '.');
        let (Some(seq), Some(_consumer), Some(stream_name)) =
            (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(seq) = seq.parse::<u64>() else {
            continue;
        };
        if !first_sequences.contains_key(stream_name) {
            let first = match js.get_stream(stream_name).await {
                Ok(mut stream) => Some(stream.info().await?.state.first_sequence),
                Err(_) => None,
            };
            first_sequences.insert(stream_name.to_owned(), first);
        }
        let Some(Some(first)) = first_sequences.get(stream_name) else {
            continue;
        };
        if seq < *first {
            store.purge(&key).await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// `jetfn.cleanup.removed`, by target (`index`, `dlq`, `journal`): what retention removed, for dashboards and alerts.
fn removed_counter() -> &'static opentelemetry::metrics::Counter<u64> {
    static COUNTER: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    COUNTER.get_or_init(|| {
        opentelemetry::global::meter("jetfn")
            .u64_counter("jetfn.cleanup.removed")
            .with_description("entries removed by retention cleanup")
            .build()
    })
}

#[cfg(test)]
mod settings {
    #[test]
    fn the_table_lists_every_setting() {
        runtime::config::check_table::<super::CleanupConfig>(&[]);
    }
}
