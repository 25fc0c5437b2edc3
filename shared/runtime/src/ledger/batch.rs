//! Group commit for the ledger's hot writes: the claims (`create`) of messages running at the same time go to the
//! server as one atomic batch, and so do their `done` updates. On one node with `sync_interval: always`, N separate
//! KV writes cost N fsyncs in a row on the bucket's stream, and a batch of N a few (tests/it/durable_writes.rs pins
//! both), so the fsyncs per event fall with the load, as Redis' one fsync per event-loop pass does.
//!
//! Every write in a batch carries its own `Nats-Expected-Last-Subject-Sequence` (0 for a claim, the held revision
//! for `done`): the same compare-and-set a single KV write makes, checked by the server at the commit. A batch
//! stores all of its writes or none (pinned), so a refused batch changes nothing and its writers fall back to
//! the single writes they would have made anyway, with all their conflict handling. Nothing here decides who owns
//! a key; only what reaches the server together.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

/// Fewer writes than this go one by one (concurrently): a batch costs the server a staging store of its own (a
/// directory, a block, two small synced files), which a handful of separate writes cost less than.
const MIN_BATCH: usize = 8;
/// The server refuses batches of more than 1,000 writes; a process has at most `max_ack_pending` messages.
const MAX_BATCH: usize = 256;
/// `atomic publish is disabled` on this stream: the bucket was provisioned without `atomic_batches`.
const DISABLED: u64 = 10174;

/// One write waiting for the next batch.
struct Write {
    key: String,
    expected: u64,
    value: Bytes,
    /// The revision the write got, or `None` when it was not committed in a batch and the writer must make it alone.
    landed: oneshot::Sender<Option<u64>>,
}

/// Collects writes of one kind (claims or dones) and commits what queued while the previous batch was in flight.
pub(crate) struct Batcher {
    client: async_nats::Client,
    /// `$KV.<bucket>.`
    prefix: String,
    queue: OnceLock<mpsc::UnboundedSender<Write>>,
    disabled: std::sync::Arc<AtomicBool>,
}

impl Batcher {
    pub(crate) fn new(
        client: async_nats::Client,
        store: &async_nats::jetstream::kv::Store,
    ) -> Option<Self> {
        // A bucket behind a JetStream domain prefix writes through other subjects; it keeps single writes.
        if store.use_jetstream_prefix {
            return None;
        }
        Some(Self {
            client,
            prefix: store
                .put_prefix
                .clone()
                .unwrap_or_else(|| store.prefix.clone()),
            queue: OnceLock::new(),
            disabled: std::sync::Arc::new(AtomicBool::new(false)),
        })
    }

    /// Writes `value` to `key` if its last revision is `expected` (0: the key has none), together with the writes
    /// other tasks queued meanwhile. `None`: not written in a batch (too few waiting, batches not allowed, or the
    /// batch refused as a whole); the caller makes the write alone, as it would without batching.
    pub(crate) async fn write(&self, key: &str, expected: u64, value: Bytes) -> Option<u64> {
        if self.disabled.load(Ordering::Relaxed) {
            return None;
        }
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(run(
                self.client.clone(),
                self.prefix.clone(),
                receiver,
                self.disabled.clone(),
            ));
            sender
        });
        let (landed, outcome) = oneshot::channel();
        queue
            .send(Write {
                key: key.to_owned(),
                expected,
                value,
                landed,
            })
            .ok()?;
        outcome.await.ok().flatten()
    }
}

/// Groups in flight at once, per kind. Each waits on the bucket's stream behind the ones before it; with one, a
/// group's round trip left the stream idle (with `sync_interval: 1s` the row ran at a quarter of its single-write
/// rate), with a few the stream stays busy and what queues behind them still forms the next groups.
const GROUPS_IN_FLIGHT: usize = 4;

/// Writes the queue in groups (a batch, or a few single writes sent together): whatever queued while the groups in
/// flight were being written forms the next one, so groups grow with the load and a lone write waits for nothing.
/// Ends when the ledger (the sender) is dropped.
async fn run(
    client: async_nats::Client,
    prefix: String,
    mut queue: mpsc::UnboundedReceiver<Write>,
    disabled: std::sync::Arc<AtomicBool>,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(GROUPS_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut writes = vec![first];
        while writes.len() < MAX_BATCH
            && let Ok(next) = queue.try_recv()
        {
            writes.push(next);
        }
        let (client, prefix, disabled) = (client.clone(), prefix.clone(), disabled.clone());
        tokio::spawn(async move {
            write_group(&client, &prefix, writes, &disabled).await;
            drop(slot);
        });
    }
}

async fn write_group(
    client: &async_nats::Client,
    prefix: &str,
    writes: Vec<Write>,
    disabled: &AtomicBool,
) {
    if writes.len() < MIN_BATCH || disabled.load(Ordering::Relaxed) {
        let landed =
            futures::future::join_all(writes.iter().map(|write| single(client, prefix, write)))
                .await;
        for (revision, write) in landed.into_iter().zip(writes) {
            let _ = write.landed.send(revision);
        }
        return;
    }
    match commit(client, prefix, &writes).await {
        Ok(first_revision) => {
            for (revision, write) in (first_revision..).zip(writes) {
                let _ = write.landed.send(Some(revision));
            }
        }
        Err(refusal) => {
            if refusal.err_code == Some(DISABLED) {
                if !disabled.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        "the ledger bucket does not allow atomic batches (provision it with atomic_batches); writing one by one"
                    );
                }
            } else {
                tracing::debug!(reason = %refusal.reason, "a ledger batch was refused; its writes go one by one");
            }
            for write in writes {
                let _ = write.landed.send(None);
            }
        }
    }
}

/// One write with its expectation, as the KV API writes it; `None` on any error (the caller writes it again alone
/// and handles what it finds).
async fn single(client: &async_nats::Client, prefix: &str, write: &Write) -> Option<u64> {
    let mut headers = HeaderMap::new();
    headers.insert(
        "Nats-Expected-Last-Subject-Sequence",
        write.expected.to_string().as_str(),
    );
    let reply = client
        .request_with_headers(
            format!("{prefix}{}", write.key),
            headers,
            write.value.clone(),
        )
        .await
        .ok()?;
    let ack: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
    if ack.get("error").is_some() {
        return None;
    }
    ack.get("seq").and_then(serde_json::Value::as_u64)
}

struct Refusal {
    err_code: Option<u64>,
    reason: String,
}

/// Sends `writes` as one atomic batch (only the commit is a request) and returns the revision of the first: the
/// server stores a committed batch on consecutive sequences, nothing of the stream's other writes between them.
async fn commit(
    client: &async_nats::Client,
    prefix: &str,
    writes: &[Write],
) -> Result<u64, Refusal> {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let refusal = |reason: String| Refusal {
        err_code: None,
        reason,
    };
    let last = writes.len();
    for (index, write) in writes.iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            write.expected.to_string().as_str(),
        );
        let subject = format!("{prefix}{}", write.key);
        if index + 1 < last {
            client
                .publish_with_headers(subject, headers, write.value.clone())
                .await
                .map_err(|err| refusal(err.to_string()))?;
            continue;
        }
        headers.insert("Nats-Batch-Commit", "1");
        let reply = client
            .request_with_headers(subject, headers, write.value.clone())
            .await
            .map_err(|err| refusal(err.to_string()))?;
        let ack: serde_json::Value = serde_json::from_slice(&reply.payload)
            .map_err(|err| refusal(format!("commit reply: {err}")))?;
        if let Some(error) = ack.get("error") {
            return Err(Refusal {
                err_code: error.get("err_code").and_then(serde_json::Value::as_u64),
                reason: error
                    .get("description")
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or("refused")
                    .to_owned(),
            });
        }
        let seq = ack.get("seq").and_then(serde_json::Value::as_u64);
        let count = ack.get("count").and_then(serde_json::Value::as_u64);
        return match (seq, count) {
            (Some(seq), Some(count)) if count == last as u64 && seq >= count => Ok(seq + 1 - count),
            _ => Err(refusal(format!("commit reply without its sequence: {ack}"))),
        };
    }
    Err(refusal("an empty batch".to_owned()))
}
