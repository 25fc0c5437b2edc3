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
    /// `INDEX_TEST_DELAY_BEFORE_COMMIT_MS`: fault injection for the crash test, in a build with the
    /// `fault-injection` feature only.
    #[cfg(feature = "fault-injection")]
    #[serde(default)]
    test_delay_before_commit_ms: u64,
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
    let telemetry = runtime::telemetry::init("indexing")?;
    let config: IndexConfig = runtime::config::from_env()?;
    // A production build refuses the hook rather than ignoring it, so a crash test run against it fails loudly.
    #[cfg(not(feature = "fault-injection"))]
    anyhow::ensure!(
        std::env::var_os("INDEX_TEST_DELAY_BEFORE_COMMIT_MS").is_none(),
        "INDEX_TEST_DELAY_BEFORE_COMMIT_MS is a fault-injection hook for the tests, and this binary was built \
         without the `fault-injection` feature (build with `--features indexing/fault-injection`); unset it"
    );
    let runtime = Runtime::from_env("indexing").await?;
    let (writer, searcher) = index::open(&config.dir, config.writer_memory_mb * 1024 * 1024)?;
    tracing::info!(dir = %config.dir.display(), entries = searcher.entries(), purged_before = %index::rfc3339(writer.purged_before_ms()), "index open");
    let committer = Committer::start(
        writer,
        Policy {
            max_docs: config.commit_max_docs.max(1),
            interval: Duration::from_millis(config.commit_interval_ms.max(1)),
            #[cfg(feature = "fault-injection")]
            test_delay_before_commit: Duration::from_millis(config.test_delay_before_commit_ms),
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
