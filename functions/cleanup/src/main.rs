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
    /// `CLEANUP_MIN_INDEX_RETENTION_SECS`: the shortest index retention a request may ask for (default 7 days).
    /// The floor is the operator's, set here: any publisher can send `cleanup.requested`.
    #[serde(default = "default_min_retention")]
    min_index_retention_secs: u64,
    /// `CLEANUP_MIN_DLQ_RETENTION_SECS`: the shortest dead-letter retention a request may ask for (default 7 days).
    #[serde(default = "default_min_retention")]
    min_dlq_retention_secs: u64,
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
        runtime::config::Var::with_default(
            "CLEANUP_MIN_INDEX_RETENTION_SECS",
            "604800",
            "the shortest index retention a cleanup.requested may ask for; shorter is refused (7 days)",
        ),
        runtime::config::Var::with_default(
            "CLEANUP_MIN_DLQ_RETENTION_SECS",
            "604800",
            "the shortest dead-letter retention a cleanup.requested may ask for; shorter is refused (7 days)",
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
fn default_min_retention() -> u64 {
    7 * 24 * 3600
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

impl CleanupConfig {
    /// The configured retentions within their floors and the ceiling, so the defaults a request falls back on
    /// pass the same rule as the request.
    ///
    /// # Errors
    /// Names the variable that is out of bounds.
    fn check(&self) -> anyhow::Result<()> {
        for (name, value, floor) in [
            (
                "CLEANUP_INDEX_RETENTION_SECS",
                self.index_retention_secs,
                self.min_index_retention_secs,
            ),
            (
                "CLEANUP_DLQ_RETENTION_SECS",
                self.dlq_retention_secs,
                self.min_dlq_retention_secs,
            ),
        ] {
            if value < floor.max(1) || value > events::MAX_RETENTION_SECS {
                anyhow::bail!(
                    "{name}: must be between its floor {floor} (CLEANUP_MIN_*) and {}",
                    events::MAX_RETENTION_SECS
                );
            }
        }
        Ok(())
    }

    /// The retentions this request asks for, within the operator's floors.
    ///
    /// # Errors
    /// Names every field below its floor; the schema and `CleanupRequested::validate` already refused a value
    /// over the ceiling, and it is checked again here because the date arithmetic would overflow on it.
    fn retentions(&self, request: &CleanupRequested) -> Result<(u64, u64), events::Invalid> {
        let mut invalid = events::Invalid::default();
        let mut pick = |field: &str, asked: Option<u64>, configured: u64, floor: u64, var: &str| {
            let value = asked.unwrap_or(configured);
            if value < floor {
                invalid.push(
                    field,
                    format!("must be at least {floor} (the floor the operator set in {var})"),
                );
            } else if value > events::MAX_RETENTION_SECS {
                invalid.push(
                    field,
                    format!("must be at most {}", events::MAX_RETENTION_SECS),
                );
            }
            value
        };
        let index = pick(
            "/data/index_retention_secs",
            request.index_retention_secs,
            self.index_retention_secs,
            self.min_index_retention_secs,
            "CLEANUP_MIN_INDEX_RETENTION_SECS",
        );
        let dlq = pick(
            "/data/dlq_retention_secs",
            request.dlq_retention_secs,
            self.dlq_retention_secs,
            self.min_dlq_retention_secs,
            "CLEANUP_MIN_DLQ_RETENTION_SECS",
        );
        invalid.into_result().map(|()| (index, dlq))
    }
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

/// One thread: the handlers wait on I/O, so a second scheduler thread only adds wake-ups (runtime::threads).
fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(
        &runtime::binary!(),
        &[
            &CONFIG,
            &runtime::config::NATS,
            &runtime::config::JOB,
            &runtime::config::TELEMETRY,
        ],
    );
    runtime::threads::build(runtime::Threads::One)?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("cleanup")?;
    let config: CleanupConfig = runtime::config::from_env()?;
    config.check()?;
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
    // A request below the operator's floor removes nothing: it is dead-lettered whole, naming the field, for an
    // operator to see (any publisher can send one; a shorter retention is the operator's to configure).
    let (index_retention, dlq_retention) = config
        .retentions(&job.event.data)
        .map_err(|invalid| JobError::permanent(anyhow::anyhow!("refused: {invalid}")))?;
    let index_cutoff = now - secs(index_retention);
    let dlq_cutoff = now - secs(dlq_retention);

    // Every step runs even when another failed; a failure makes the run transient, and the retry redoes all of it
    // harmlessly (each step is idempotent). Only a purge request the index service refuses as bad is permanent.
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
    if let Err(err) = &index
        && refused_as_bad_request(err)
    {
        // The indexing service cannot read this request: the same request will not fare better at the next
        // attempt, so it goes to the dead-letter stream for an operator (the other steps ran all the same).
        return Err(JobError::permanent(anyhow::anyhow!(
            "the indexing service refused the purge request: {err:#}"
        )));
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

/// Within [`events::MAX_RETENTION_SECS`] (checked before), so `now - secs(..)` cannot overflow.
fn secs(seconds: u64) -> time::Duration {
    time::Duration::seconds(
        i64::try_from(seconds.min(events::MAX_RETENTION_SECS)).unwrap_or(i64::MAX),
    )
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

/// Whether the index service answered 400: the request itself is wrong (a contract mismatch between versions).
fn refused_as_bad_request(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<services::ReplyError>(),
            Some(services::ReplyError::Refused(refusal)) if refusal.code == services::BAD_REQUEST
        )
    })
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
        // Nothing newer than the cut-off: everything that existed before we looked is past retention, if so. The
        // probe is an R1 consumer the server may place on a follower that lags (or a fetch that ended without an
        // answer), and a purge cannot be undone: the newest record is read from the leader, and only one stored
        // before the cut-off lets everything go.
        None => {
            let newest = dlq
                .get_raw_message(state.last_sequence)
                .await
                .with_context(|| {
                    format!(
                        "confirming that {name}'s newest record #{} is past retention; nothing purged",
                        state.last_sequence
                    )
                })?;
            anyhow::ensure!(
                newest.time < before,
                "{name}'s newest record #{} is within retention but the probe found none: nothing purged, the step is \
                 retried",
                state.last_sequence
            );
            state.last_sequence + 1
        }
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

/// The handler's decisions in process: no function binary, but a real nats-server with the repository's
/// definitions applied and a real `jetfn.index.purge` endpoint answering with the typed contract (the indexing
/// service's side, over a list of entry ages). What the retention removes end to end, with the real indexing
/// process and a schedule, is `tests/it/cleanup.rs`.
#[cfg(test)]
mod handler_tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use async_nats::service::{self, ServiceExt as _};
    use events::services::index::{GROUP, PURGE_ENDPOINT, SERVICE};
    use runtime::dlq::DeathKind;
    use runtime::testing::{MemoryLedger, Settled, job, run};
    use testkit::NatsServer;

    use super::*;

    const COMPLETED: &str = "events.cleanup.completed";
    const MAX_DELIVER: u32 = 5;
    const DAY: u64 = 24 * 3600;

    struct Harness {
        _nats: NatsServer,
        client: async_nats::Client,
        js: jetstream::Context,
        context: Arc<Context>,
        ledger: MemoryLedger,
    }

    impl Harness {
        async fn start() -> Self {
            // The operator of these tests allows short retentions; the floors have their own test.
            Self::with_floors(1, 1).await
        }

        async fn with_floors(min_index: u64, min_dlq: u64) -> Self {
            let nats = NatsServer::start();
            let client = async_nats::connect(nats.url()).await.expect("connect");
            let js = jetstream::new(client.clone());
            let mut definitions =
                provision::Definitions::load(&testkit::workspace_root().join("infra/nats"))
                    .expect("infra/nats loads");
            definitions.schedules.clear();
            definitions.apply(&js).await.expect("infra/nats applies");
            let context = Arc::new(Context {
                config: CleanupConfig {
                    index_retention_secs: default_index_retention(),
                    dlq_retention_secs: default_dlq_retention(),
                    min_index_retention_secs: min_index,
                    min_dlq_retention_secs: min_dlq,
                    dlq_stream: default_dlq_stream(),
                    failures_bucket: default_failures(),
                    index_purge_subject: default_purge_subject(),
                    request_timeout_secs: 5,
                },
                client: client.clone(),
                js: js.clone(),
                publisher: Publisher::new(client.clone(), "/cleanup"),
            });
            Self {
                _nats: nats,
                client,
                js,
                context,
                ledger: MemoryLedger::new(),
            }
        }

        /// A request as the schedule fires it, stored in EVENTS like a real one.
        async fn request(&self, index_days: u64, dlq_secs: u64) -> CloudEvent<CleanupRequested> {
            self.request_of(CleanupRequested {
                index_retention_secs: Some(index_days * DAY),
                dlq_retention_secs: Some(dlq_secs),
            })
            .await
        }

        async fn request_of(&self, data: CleanupRequested) -> CloudEvent<CleanupRequested> {
            let event = CloudEvent::new("/test", data);
            Publisher::new(self.client.clone(), "/test")
                .publish_event(&event)
                .await
                .expect("the request is stored");
            event
        }

        async fn deliver(&self, event: &CloudEvent<CleanupRequested>, attempt: u32) -> Settled {
            let job = job(event.clone())
                .attempt(attempt)
                .max_deliver(MAX_DELIVER)
                .ledger(&self.ledger)
                .build();
            run(job, |job| super::run(job, self.context.clone())).await
        }

        async fn dead_letter(&self, seq: u64) {
            self.js
                .publish(format!("dlq.EVENTS.test.{seq}"), "dead".into())
                .await
                .expect("publish")
                .await
                .expect("stored");
        }

        async fn dlq_messages(&self) -> u64 {
            let mut dlq = self.js.get_stream("DLQ").await.expect("DLQ");
            dlq.info().await.expect("DLQ info").state.messages
        }

        /// Every `cleanup.completed` event's data, in stream order.
        async fn completions(&self) -> Vec<CleanupCompleted> {
            let mut stream = self.js.get_stream("EVENTS").await.expect("EVENTS");
            let last = stream.info().await.expect("info").state.last_sequence;
            let mut found = Vec::new();
            for seq in 1..=last {
                if let Ok(message) = stream.get_raw_message(seq).await
                    && message.subject.as_str() == COMPLETED
                {
                    let event: CloudEvent<CleanupCompleted> =
                        serde_json::from_slice(&message.payload).expect("a completion");
                    found.push(event.data);
                }
            }
            found
        }
    }

    /// How the indexing service answers a purge.
    #[derive(Clone, Copy)]
    enum Answer {
        /// Removes the entries older than the cut-off and says how many.
        Purge,
        /// Refuses with this code.
        Refuse(u16),
    }

    /// The other end of the purge contract: a NATS service endpoint over the ages of some index entries.
    struct IndexService {
        entries: Arc<Mutex<Vec<OffsetDateTime>>>,
        answer: Arc<Mutex<Answer>>,
        task: tokio::task::JoinHandle<()>,
    }

    impl IndexService {
        async fn start(
            client: &async_nats::Client,
            entries: Vec<OffsetDateTime>,
            answer: Answer,
        ) -> Self {
            let service = client
                .service_builder()
                .start(SERVICE, "0.0.0")
                .await
                .expect("the service starts");
            let mut purge = service
                .group(GROUP)
                .endpoint(PURGE_ENDPOINT)
                .await
                .expect("the purge endpoint");
            let entries = Arc::new(Mutex::new(entries));
            let answer = Arc::new(Mutex::new(answer));
            let (held, answering) = (entries.clone(), answer.clone());
            let task = tokio::spawn(async move {
                let _service = service;
                while let Some(request) = purge.next().await {
                    let asked: PurgeRequest =
                        serde_json::from_slice(&request.message.payload).expect("a purge request");
                    let answer = *answering.lock().unwrap_or_else(PoisonError::into_inner);
                    let reply = match answer {
                        Answer::Refuse(code) => Err(service::error::Error {
                            code: code.into(),
                            status: "refused by the test".to_owned(),
                        }),
                        Answer::Purge => {
                            let mut entries = held.lock().unwrap_or_else(PoisonError::into_inner);
                            let before = entries.len();
                            entries.retain(|at| *at >= asked.before);
                            let removed = (before - entries.len()) as u64;
                            Ok(serde_json::to_vec(&PurgeResponse {
                                removed,
                                before: asked.before,
                            })
                            .expect("serializes")
                            .into())
                        }
                    };
                    request.respond(reply).await.expect("the answer is sent");
                }
            });
            // The endpoint's subscription is registered once the server has seen it.
            client.flush().await.expect("flush");
            Self {
                entries,
                answer,
                task,
            }
        }

        fn answer(&self, answer: Answer) {
            *self.answer.lock().unwrap_or_else(PoisonError::into_inner) = answer;
        }

        fn left(&self) -> usize {
            self.entries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len()
        }
    }

    impl Drop for IndexService {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    fn days_ago(days: i64) -> OffsetDateTime {
        OffsetDateTime::now_utc() - time::Duration::days(days)
    }

    #[tokio::test]
    async fn a_run_removes_what_is_past_its_cut_offs_once_and_completes_once() {
        let h = Harness::start().await;
        let index = IndexService::start(
            &h.client,
            vec![days_ago(10), days_ago(6), days_ago(1)],
            Answer::Purge,
        )
        .await;
        for seq in [1, 2] {
            h.dead_letter(seq).await;
        }
        tokio::time::sleep(Duration::from_millis(1100)).await;
        h.dead_letter(3).await;
        // The failure journal: one record whose message has left EVENTS (sequence 0 never exists), one whose has not.
        let journal = h.js.get_key_value("jetfn-failures").await.expect("journal");
        journal
            .put("EVENTS.welcome.0", "{}".into())
            .await
            .expect("put");
        journal
            .put("EVENTS.welcome.99", "{}".into())
            .await
            .expect("put");

        let request = h.request(5, 1).await;
        assert_eq!(h.deliver(&request, 1).await, Settled::Acked);
        let done = h.completions().await;
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].request_id, request.id);
        assert_eq!(
            (
                done[0].index_removed,
                done[0].dlq_removed,
                done[0].journal_removed
            ),
            (2, 2, 1)
        );
        assert!(done[0].index_cutoff < days_ago(5) + time::Duration::minutes(1));
        assert!(done[0].index_cutoff > days_ago(5) - time::Duration::minutes(1));
        assert_eq!((index.left(), h.dlq_messages().await), (1, 1));
        assert!(
            journal
                .get("EVENTS.welcome.99")
                .await
                .expect("get")
                .is_some()
        );

        // The same request redelivered: acked, and its completion is not published a second time.
        assert_eq!(h.deliver(&request, 2).await, Settled::Acked);
        assert_eq!(h.completions().await.len(), 1);
        // Another request with the same retention removes nothing more, and completes on its own.
        let again = h.request(5, 1).await;
        assert_eq!(h.deliver(&again, 1).await, Settled::Acked);
        let done = h.completions().await;
        assert_eq!(done.len(), 2);
        assert_eq!(done[1].request_id, again.id);
        assert_eq!(
            (
                done[1].index_removed,
                done[1].dlq_removed,
                done[1].journal_removed
            ),
            (0, 0, 0)
        );
        assert_eq!((index.left(), h.dlq_messages().await), (1, 1));
    }

    #[tokio::test]
    async fn with_the_index_service_down_the_run_is_retried_and_completes_later() {
        let h = Harness::start().await;
        let request = h.request(5, 3600).await;
        assert_eq!(h.deliver(&request, 1).await, Settled::Retry(None));
        assert!(
            h.completions().await.is_empty(),
            "no completion for a failed run"
        );
        assert_eq!(
            h.deliver(&request, MAX_DELIVER).await,
            Settled::Dead(DeathKind::Exhausted),
            "the last attempt is dead-lettered"
        );
        // The service is back: the next delivery completes, once.
        let _index = IndexService::start(&h.client, vec![days_ago(9)], Answer::Purge).await;
        assert_eq!(h.deliver(&request, 2).await, Settled::Acked);
        let done = h.completions().await;
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].index_removed, 1);
    }

    #[tokio::test]
    async fn a_purge_the_service_refuses_as_bad_is_permanent_and_its_failure_is_retried() {
        let h = Harness::start().await;
        let request = h.request(5, 3600).await;
        let index =
            IndexService::start(&h.client, vec![], Answer::Refuse(services::BAD_REQUEST)).await;
        assert_eq!(
            h.deliver(&request, 1).await,
            Settled::Dead(DeathKind::Permanent)
        );
        index.answer(Answer::Refuse(services::INTERNAL));
        assert_eq!(h.deliver(&request, 2).await, Settled::Retry(None));
        assert!(h.completions().await.is_empty());
    }

    /// Issue 14, item 7: one `cleanup.requested` from an ordinary publisher with 1 s retentions emptied the index
    /// and the DLQ. Below the operator's floor the run removes nothing and is dead-lettered, naming the field.
    #[tokio::test]
    async fn a_request_below_the_operators_floor_removes_nothing_and_is_dead_lettered() {
        let h = Harness::with_floors(7 * DAY, 7 * DAY).await;
        let index = IndexService::start(
            &h.client,
            vec![days_ago(10), days_ago(1), days_ago(0)],
            Answer::Purge,
        )
        .await;
        h.dead_letter(1).await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let wipe = h
            .request_of(CleanupRequested {
                index_retention_secs: Some(1),
                dlq_retention_secs: Some(1),
            })
            .await;
        assert_eq!(
            h.deliver(&wipe, 1).await,
            Settled::Dead(DeathKind::Permanent)
        );
        assert_eq!((index.left(), h.dlq_messages().await), (3, 1));
        assert!(h.completions().await.is_empty());
        // The reason names both fields and the variable that sets the floor.
        let refused = h
            .context
            .config
            .retentions(&wipe.data)
            .expect_err("below the floor");
        let text = refused.to_string();
        assert!(text.contains("/data/index_retention_secs"), "{text}");
        assert!(text.contains("/data/dlq_retention_secs"), "{text}");
        assert!(text.contains("CLEANUP_MIN_INDEX_RETENTION_SECS"), "{text}");

        // At the floor, the run goes ahead.
        let at_floor = h
            .request_of(CleanupRequested {
                index_retention_secs: Some(7 * DAY),
                dlq_retention_secs: None,
            })
            .await;
        assert_eq!(h.deliver(&at_floor, 1).await, Settled::Acked);
        assert_eq!(index.left(), 2);
        assert_eq!(h.completions().await.len(), 1);
    }

    /// A huge retention panicked in the date arithmetic; it is refused with the field named, before any step.
    #[test]
    fn a_retention_over_the_ceiling_is_refused_by_name_not_by_a_panic() {
        let validator = events::Validator::new();
        for field in ["index_retention_secs", "dlq_retention_secs"] {
            for huge in [
                serde_json::json!(u64::MAX),
                serde_json::json!(events::MAX_RETENTION_SECS + 1),
                serde_json::json!(1e30),
            ] {
                let event = serde_json::json!({
                    "specversion": "1.0", "id": "e-1", "source": "/t", "type": "cleanup.requested",
                    "data": { field: huge }
                });
                let invalid = validator
                    .decode::<CleanupRequested>(&serde_json::to_vec(&event).expect("json"))
                    .expect_err("over the ceiling");
                assert_eq!(
                    invalid.errors[0].field,
                    format!("/data/{field}"),
                    "{invalid}"
                );
            }
        }
        // The typed rule holds the same ceiling for an event that never met the schema.
        let over = CleanupRequested {
            index_retention_secs: Some(u64::MAX),
            dlq_retention_secs: None,
        };
        assert!(events::Event::validate(&over).is_err());
        // And the configuration: the retention a request falls back on is within the floor and the ceiling.
        let mut config = CleanupConfig {
            index_retention_secs: u64::MAX,
            dlq_retention_secs: default_dlq_retention(),
            min_index_retention_secs: default_min_retention(),
            min_dlq_retention_secs: default_min_retention(),
            dlq_stream: default_dlq_stream(),
            failures_bucket: default_failures(),
            index_purge_subject: default_purge_subject(),
            request_timeout_secs: 5,
        };
        let err = config.check().expect_err("over the ceiling").to_string();
        assert!(err.contains("CLEANUP_INDEX_RETENTION_SECS"), "{err}");
        config.index_retention_secs = 60;
        assert!(config.check().is_err(), "below the floor");
        config.index_retention_secs = default_index_retention();
        assert!(config.check().is_ok());
    }
}
