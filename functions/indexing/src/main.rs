//! `indexing`: keeps a full-text index of a messaging platform's messages and serves searches over NATS.
//!
//! It binds three durable consumers, one per event type (`indexing-created`, `indexing-updated`,
//! `indexing-deleted` in infra/nats/consumers/EVENTS/), and hands every change to one batching committer that owns
//! the tantivy writer. A handler returns only after the commit that made its change durable, so what the runtime
//! acks is searchable after a crash. The same process serves the NATS service `jetfn-index` (group `jetfn.index`):
//! `search` (ranked hits) and `purge` (retention, asked by the cleanup function). The index is owned by this one
//! process: run one replica per index directory.

mod committer;
mod index;
mod service;

use std::path::PathBuf;
use std::time::Duration;

use events::{MessageCreated, MessageDeleted, MessageUpdated};
use runtime::{Job, JobError, Runtime};
use serde::Deserialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::committer::{Committer, Handle, Policy};
use crate::index::{Change, Decision, MessageDoc, Version};
use crate::service::serve_queries;

/// `INDEX_*` settings.
#[derive(Debug, Deserialize)]
struct IndexConfig {
    /// `INDEX_DIR`: the tantivy directory.
    #[serde(default = "default_dir")]
    dir: PathBuf,
    /// `INDEX_COMMIT_MAX_DOCS`: commit once this many documents are pending.
    #[serde(default = "default_max_docs")]
    commit_max_docs: usize,
    /// `INDEX_COMMIT_INTERVAL_MS`: commit this long after the first pending change at the latest.
    #[serde(default = "default_interval")]
    commit_interval_ms: u64,
    /// `INDEX_WRITER_MEMORY_MB`: the writer's indexing buffer.
    #[serde(default = "default_memory")]
    writer_memory_mb: usize,
    /// `INDEX_MIN_RETENTION_SECS`: a purge may remove only entries at least this old (default 7 days). The floor
    /// is the operator's: anyone allowed to send on `jetfn.index.purge` could otherwise empty the index.
    #[serde(default = "default_min_retention")]
    min_retention_secs: u64,
    /// `INDEX_MAX_CONCURRENT_SEARCHES`: searches run at once; one more is answered "busy" (503) at once.
    #[serde(default = "default_max_searches")]
    max_concurrent_searches: usize,
}

/// `INDEX_TEST_DELAY_BEFORE_COMMIT_MS`: fault injection for the crash test. Read apart from [`IndexConfig`], as
/// the runtime reads its own hooks, so `--help` and the settings table stay the same in every build.
const DELAY_BEFORE_COMMIT: &str = "INDEX_TEST_DELAY_BEFORE_COMMIT_MS";

/// `INDEX_TEST_SEARCH_DELAY_MS`: fault injection for the busy test: each search holds its slot this long.
const SEARCH_DELAY: &str = "INDEX_TEST_SEARCH_DELAY_MS";

/// The delay a test hook (`DELAY_BEFORE_COMMIT`, `SEARCH_DELAY`) asks for; a production build refuses the hook
/// rather than ignoring it, so a fault test run against it fails loudly.
///
/// # Errors
/// A value that is not a whole number of milliseconds; without the `fault-injection` feature, any value.
fn test_delay(name: &str) -> anyhow::Result<Duration> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(Duration::ZERO);
    };
    #[cfg(feature = "fault-injection")]
    {
        let ms: u64 = value.to_str().and_then(|v| v.parse().ok()).ok_or_else(|| {
            anyhow::anyhow!("{name}: expected a whole number of milliseconds, got {value:?}")
        })?;
        Ok(Duration::from_millis(ms))
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = value;
        Err(anyhow::anyhow!(
            "{name} is a fault-injection hook for the tests, and this binary was built without \
             the `fault-injection` feature (build with `--features indexing/fault-injection`); unset it"
        ))
    }
}

/// `INDEX_TEST_PANIC_IN_COMMITTER=1`: fault injection for the supervision test; the committer thread panics at
/// the first change it receives.
const PANIC_IN_COMMITTER: &str = "INDEX_TEST_PANIC_IN_COMMITTER";

/// Whether the supervision test asks the committer to panic; a production build refuses the hook.
///
/// # Errors
/// A value other than `1`; without the `fault-injection` feature, any value.
fn panic_in_committer() -> anyhow::Result<bool> {
    let Some(value) = std::env::var_os(PANIC_IN_COMMITTER) else {
        return Ok(false);
    };
    anyhow::ensure!(
        cfg!(feature = "fault-injection"),
        "{PANIC_IN_COMMITTER} is a fault-injection hook for the tests, and this binary was built without the \
         `fault-injection` feature (build with `--features indexing/fault-injection`); unset it"
    );
    anyhow::ensure!(
        value == "1",
        "{PANIC_IN_COMMITTER}: expected 1, got {value:?}"
    );
    Ok(true)
}

/// The variables of [`IndexConfig`].
const CONFIG: runtime::config::Table = runtime::config::Table {
    title: "Index",
    prefix: "INDEX_",
    vars: &[
        runtime::config::Var::with_default("INDEX_DIR", ".jetfn/index", "the tantivy directory"),
        runtime::config::Var::with_default(
            "INDEX_COMMIT_MAX_DOCS",
            "1000",
            "commit once this many documents are pending",
        ),
        runtime::config::Var::with_default(
            "INDEX_COMMIT_INTERVAL_MS",
            "500",
            "commit this long after the first pending change at the latest",
        ),
        runtime::config::Var::with_default(
            "INDEX_WRITER_MEMORY_MB",
            "50",
            "the writer's indexing buffer",
        ),
        runtime::config::Var::with_default(
            "INDEX_MIN_RETENTION_SECS",
            "604800",
            "a purge may remove only entries at least this old; a later cut-off is refused (7 days)",
        ),
        runtime::config::Var::with_default(
            "INDEX_MAX_CONCURRENT_SEARCHES",
            "8",
            "searches run at once; one more is answered busy (503)",
        ),
    ],
};

impl runtime::config::Settings for IndexConfig {
    const TABLE: &'static runtime::config::Table = &CONFIG;
}

fn default_dir() -> PathBuf {
    PathBuf::from(".jetfn/index")
}
fn default_max_docs() -> usize {
    1000
}
fn default_interval() -> u64 {
    500
}
fn default_memory() -> usize {
    50
}
fn default_min_retention() -> u64 {
    7 * 24 * 3600
}
fn default_max_searches() -> usize {
    8
}

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Per core: its handlers parse and index (tantivy), work that needs every core (runtime::threads).
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
    runtime::threads::build(runtime::Threads::PerCore)?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("indexing")?;
    let config: IndexConfig = runtime::config::from_env()?;
    #[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
    let delay_before_commit = test_delay(DELAY_BEFORE_COMMIT)?;
    #[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
    let search_delay = test_delay(SEARCH_DELAY)?;
    #[cfg_attr(not(feature = "fault-injection"), allow(unused_variables))]
    let panic_in_committer = panic_in_committer()?;
    let runtime = Runtime::from_env("indexing").await?;
    let (writer, searcher) = index::open(&config.dir, config.writer_memory_mb * 1024 * 1024)?;
    tracing::info!(dir = %config.dir.display(), entries = searcher.entries(), purged_before = %index::rfc3339(writer.purged_before_ms()), "index open");
    let committer = Committer::start(
        writer,
        Policy {
            max_docs: config.commit_max_docs.max(1),
            interval: Duration::from_millis(config.commit_interval_ms.max(1)),
            on_panic: committer::exit_after_panic,
            #[cfg(feature = "fault-injection")]
            test_delay_before_commit: delay_before_commit,
            #[cfg(feature = "fault-injection")]
            test_panic_at_change: panic_in_committer,
        },
    );

    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            runtime::shutdown_signal().await;
            stop.cancel();
        }
    });

    // One connection and one health endpoint for the three consumers: `<JOB_CONSUMER or indexing>-created`,
    // `-updated` and `-deleted`.
    let base = runtime.default_consumer().to_owned();
    let service = serve_queries(
        runtime.client().clone(),
        searcher,
        committer.handle(),
        service::Limits {
            min_retention: Duration::from_secs(config.min_retention_secs),
            max_searches: config.max_concurrent_searches.max(1),
            test_search_delay: search_delay,
        },
        stop.clone(),
    )
    .await?;

    let (c, u, d) = (committer.handle(), committer.handle(), committer.handle());
    let served = runtime
        .consume(format!("{base}-created"), move |job| {
            on_created(job, c.clone())
        })
        .consume(format!("{base}-updated"), move |job| {
            on_updated(job, u.clone())
        })
        .consume(format!("{base}-deleted"), move |job| {
            on_deleted(job, d.clone())
        })
        .run(stop.clone().cancelled_owned())
        .await;
    stop.cancel();
    if let Err(err) = service.await {
        tracing::warn!(error = %err, "the search service task failed");
    }
    tokio::task::spawn_blocking(move || committer.close()).await?;
    telemetry.flush();
    served
}

fn ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

#[tracing::instrument(skip_all, fields(message_id = %job.event.data.message_id))]
async fn on_created(job: Job<MessageCreated>, committer: Handle) -> Result<(), JobError> {
    let data = job.event.data;
    let change = Change::Upsert {
        version: Version {
            ms: ms(data.created_at),
            rank: 0,
            seq: job.stream_sequence,
        },
        doc: MessageDoc {
            message_id: data.message_id,
            conversation_id: data.conversation_id,
            sender_id: data.sender_id,
            body: data.body,
            created_at_ms: ms(data.created_at),
        },
        create: true,
    };
    submit(&committer, change).await
}

#[tracing::instrument(skip_all, fields(message_id = %job.event.data.message_id))]
async fn on_updated(job: Job<MessageUpdated>, committer: Handle) -> Result<(), JobError> {
    let data = job.event.data;
    let change = Change::Upsert {
        version: Version {
            ms: ms(data.updated_at),
            rank: 1,
            seq: job.stream_sequence,
        },
        doc: MessageDoc {
            message_id: data.message_id,
            conversation_id: data.conversation_id,
            sender_id: data.sender_id,
            body: data.body,
            created_at_ms: ms(data.created_at),
        },
        create: false,
    };
    submit(&committer, change).await
}

#[tracing::instrument(skip_all, fields(message_id = %job.event.data.message_id))]
async fn on_deleted(job: Job<MessageDeleted>, committer: Handle) -> Result<(), JobError> {
    let data = job.event.data;
    let change = Change::Delete {
        message_id: data.message_id,
        conversation_id: data.conversation_id,
        deleted_at_ms: ms(data.deleted_at),
    };
    submit(&committer, change).await
}

/// Hands the change to the committer and waits for the commit: an error is transient (the message comes back).
async fn submit(committer: &Handle, change: Change) -> Result<(), JobError> {
    match committer
        .apply(change)
        .await
        .map_err(|err| JobError::transient(anyhow::anyhow!(err)))?
    {
        Decision::Write => tracing::info!("indexed"),
        Decision::Skip(reason) => tracing::info!(reason, "nothing to index"),
        Decision::Refuse(reason) => {
            return Err(JobError::permanent(anyhow::anyhow!(
                "not indexed: {reason}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod settings {
    #[test]
    fn the_table_lists_every_setting() {
        runtime::config::check_table::<super::IndexConfig>(&[]);
    }
}

/// The handlers' decisions in process, on a real tantivy index in a temporary directory behind a real committer:
/// what the runtime would do with each delivery (`runtime::testing::run`), and what is searchable afterwards.
/// The rules themselves are `index::decide`'s unit tests; the crash and the service are the integration tests'.
#[cfg(test)]
mod handler_tests {
    use std::path::PathBuf;

    use events::services::index::SearchRequest;
    use events::{CloudEvent, MessageCreated, MessageDeleted, MessageUpdated};
    use runtime::dlq::DeathKind;
    use runtime::testing::{MemoryLedger, Settled, job, run};
    use time::OffsetDateTime;

    use super::*;
    use crate::index::Searcher;

    const MAX_DELIVER: u32 = 5;

    struct Harness {
        dir: PathBuf,
        committer: Option<Committer>,
        /// Taken on drop: the committer stops once every handle is gone.
        handle: Option<Handle>,
        searcher: Searcher,
        ledger: MemoryLedger,
    }

    impl Harness {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "jetfn-index-handlers-{}-{}",
                std::process::id(),
                OffsetDateTime::now_utc().unix_timestamp_nanos()
            ));
            let (writer, searcher) = index::open(&dir, 15_000_000).expect("the index opens");
            let committer = Committer::start(
                writer,
                Policy {
                    max_docs: 1000,
                    interval: Duration::from_millis(5),
                    // The failed-commit test takes the committer down (tantivy panics on a second rollback after
                    // the directory vanished); in process, the test harness must survive it.
                    on_panic: || {},
                    #[cfg(feature = "fault-injection")]
                    test_delay_before_commit: Duration::ZERO,
                    #[cfg(feature = "fault-injection")]
                    test_panic_at_change: false,
                },
            );
            Self {
                dir,
                handle: Some(committer.handle()),
                committer: Some(committer),
                searcher,
                ledger: MemoryLedger::new(),
            }
        }

        async fn created(
            &self,
            event: &CloudEvent<MessageCreated>,
            seq: u64,
            attempt: u32,
        ) -> Settled {
            let handle = self.handle.clone().expect("running");
            run(self.job(event, seq, attempt), |job| on_created(job, handle)).await
        }

        async fn updated(&self, event: &CloudEvent<MessageUpdated>, seq: u64) -> Settled {
            let handle = self.handle.clone().expect("running");
            run(self.job(event, seq, 1), |job| on_updated(job, handle)).await
        }

        async fn deleted(&self, event: &CloudEvent<MessageDeleted>, seq: u64) -> Settled {
            let handle = self.handle.clone().expect("running");
            run(self.job(event, seq, 1), |job| on_deleted(job, handle)).await
        }

        fn job<T: events::Event + Clone>(
            &self,
            event: &CloudEvent<T>,
            seq: u64,
            attempt: u32,
        ) -> Job<T> {
            job(event.clone())
                .stream_sequence(seq)
                .attempt(attempt)
                .max_deliver(MAX_DELIVER)
                .ledger(&self.ledger)
                .build()
        }

        /// The bodies of the live messages matching `q`, on the last committed state.
        fn found(&self, q: &str) -> Vec<String> {
            let response = self
                .searcher
                .search(&SearchRequest {
                    q: q.to_owned(),
                    conversation_id: None,
                    limit: Some(10),
                    offset: 0,
                })
                .expect("the search runs");
            assert_eq!(response.total, response.hits.len());
            response.hits.into_iter().map(|hit| hit.body).collect()
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            drop(self.handle.take());
            if let Some(committer) = self.committer.take() {
                committer.close();
            }
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 ns")
            - time::Duration::hours(1)
            + time::Duration::seconds(secs)
    }

    fn created(id: &str, body: &str) -> CloudEvent<MessageCreated> {
        CloudEvent::new(
            "/test",
            MessageCreated {
                message_id: id.to_owned(),
                conversation_id: "c-1".to_owned(),
                sender_id: "u-1".to_owned(),
                body: body.to_owned(),
                created_at: at(0),
            },
        )
    }

    fn updated(id: &str, body: &str, secs: i64) -> CloudEvent<MessageUpdated> {
        CloudEvent::new(
            "/test",
            MessageUpdated {
                message_id: id.to_owned(),
                conversation_id: "c-1".to_owned(),
                sender_id: "u-1".to_owned(),
                body: body.to_owned(),
                created_at: at(0),
                updated_at: at(secs),
            },
        )
    }

    fn deleted(id: &str, secs: i64) -> CloudEvent<MessageDeleted> {
        CloudEvent::new(
            "/test",
            MessageDeleted {
                message_id: id.to_owned(),
                conversation_id: "c-1".to_owned(),
                deleted_at: at(secs),
            },
        )
    }

    #[tokio::test]
    async fn a_create_is_acked_once_searchable_and_a_redelivery_adds_nothing() {
        let h = Harness::new();
        let event = created("m-1", "harbour lights");
        assert_eq!(h.created(&event, 1, 1).await, Settled::Acked);
        // Acked means committed: searchable now, with no wait.
        assert_eq!(h.found("harbour"), ["harbour lights"]);
        assert_eq!(h.created(&event, 1, 2).await, Settled::Acked);
        // The same message published again (another event id, a later sequence) is no second entry either.
        assert_eq!(
            h.created(&created("m-1", "harbour lights"), 7, 1).await,
            Settled::Acked
        );
        assert_eq!(h.found("harbour"), ["harbour lights"]);
        assert_eq!(h.searcher.entries(), 1);
    }

    #[tokio::test]
    async fn an_older_update_after_a_newer_one_does_not_win() {
        let h = Harness::new();
        assert_eq!(
            h.created(&created("m-1", "draft anchor"), 1, 1).await,
            Settled::Acked
        );
        assert_eq!(
            h.updated(&updated("m-1", "final anchor", 20), 2).await,
            Settled::Acked
        );
        assert_eq!(
            h.updated(&updated("m-1", "stale anchor", 10), 3).await,
            Settled::Acked
        );
        assert_eq!(h.found("anchor"), ["final anchor"]);
        // An update that arrives before its create is indexed, and the late create replaces nothing.
        assert_eq!(
            h.updated(&updated("m-2", "early rope", 5), 4).await,
            Settled::Acked
        );
        assert_eq!(
            h.created(&created("m-2", "original rope"), 5, 1).await,
            Settled::Acked
        );
        assert_eq!(h.found("rope"), ["early rope"]);
    }

    #[tokio::test]
    async fn a_delete_is_final() {
        let h = Harness::new();
        let create = created("m-1", "gone buoy");
        assert_eq!(h.created(&create, 1, 1).await, Settled::Acked);
        assert_eq!(h.deleted(&deleted("m-1", 30), 2).await, Settled::Acked);
        assert!(h.found("buoy").is_empty());
        // A redelivered create, a later update, a second delete: acked, and the message stays gone.
        assert_eq!(h.created(&create, 1, 2).await, Settled::Acked);
        assert_eq!(
            h.updated(&updated("m-1", "back buoy", 60), 3).await,
            Settled::Acked
        );
        assert_eq!(h.deleted(&deleted("m-1", 90), 4).await, Settled::Acked);
        assert!(h.found("buoy").is_empty());
        // A delete before anything else leaves a tombstone the create cannot pass.
        assert_eq!(h.deleted(&deleted("m-2", 30), 5).await, Settled::Acked);
        assert_eq!(
            h.created(&created("m-2", "late buoy"), 6, 1).await,
            Settled::Acked
        );
        assert!(h.found("buoy").is_empty());
    }

    /// Issue 14, item 7: an event about a message written before the retention watermark was acked and dropped,
    /// so a purge with a late cut-off lost a backlog for good. It is dead-lettered now, and still not indexed.
    #[tokio::test]
    async fn an_event_behind_the_retention_watermark_is_dead_lettered_not_dropped() {
        let h = Harness::new();
        let handle = h.handle.clone().expect("running");
        // The watermark: everything written before 30 s after `at(0)`.
        handle.purge(ms(at(30))).await.expect("the purge commits");
        let late = created("m-1", "backlog tide");
        assert_eq!(
            h.created(&late, 1, 1).await,
            Settled::Dead(DeathKind::Permanent)
        );
        assert_eq!(
            h.updated(&updated("m-1", "edited tide", 60), 2).await,
            Settled::Dead(DeathKind::Permanent)
        );
        assert!(h.found("tide").is_empty());
        // A delete behind it loses nothing (the message stays out either way): acked.
        assert_eq!(h.deleted(&deleted("m-2", 10), 3).await, Settled::Acked);
    }

    #[tokio::test]
    async fn a_failed_commit_is_retried_and_dead_lettered_at_the_last_attempt() {
        let h = Harness::new();
        assert_eq!(
            h.created(&created("m-1", "kept keel"), 1, 1).await,
            Settled::Acked
        );
        // The directory disappears under the writer: the next commit cannot write its segment.
        std::fs::remove_dir_all(&h.dir).expect("removing the index directory");
        let event = created("m-2", "lost keel");
        assert_eq!(h.created(&event, 2, 1).await, Settled::Retry(None));
        assert_eq!(
            h.created(&event, 2, MAX_DELIVER).await,
            Settled::Dead(DeathKind::Exhausted)
        );
        assert_eq!(
            h.found("keel"),
            ["kept keel"],
            "nothing of the failed batch is visible"
        );
    }
}
