//! Group commit for the ledger's hot writes: the claims (`create`) and `done` updates of messages running at the
//! same time go to the server together, as one atomic batch. On one node with `sync_interval: always`, N separate
//! KV writes cost N fsyncs in a row on the bucket's stream, and a batch of N a few (tests/it/durable_writes.rs pins
//! both), so the fsyncs per event fall with the load, as Redis' one fsync per event-loop pass does.
//!
//! Every write in a batch carries its own `Nats-Expected-Last-Subject-Sequence` (0 for a claim, the held revision
//! for `done`): the same compare-and-set a single KV write makes, checked by the server at the commit. A batch
//! stores all of its writes or none (pinned), so a refused batch changes nothing and its writers fall back to
//! the single writes they would have made anyway, with all their conflict handling. Nothing here decides who owns
//! a key; only what reaches the server together. Two writes of one key in a batch (two messages claiming it at
//! once) make the server refuse the batch (pinned), never store both; a `done` and a claim of one key cannot meet
//! in a batch from one process, since a `done` is queued only after its claim landed.
//!
//! Claims and dones share one queue: each batch costs the server a staging store, whatever the batch's size (see
//! [`GROUPS_IN_FLIGHT`]), so one group of both kinds saves the store a group of each would take.
//!
//! A batch is not free: the server stages it before the commit, which on a disk that does not sync every write
//! cost more than the writes it grouped (the ledger row at half the rate of separate writes). So the ledger times
//! its bucket's writes against refused writes before its first pull ([`Disk`]), and batches only where a write
//! waits for the disk. That first verdict can be wrong: about one start in seven at `sync_interval: 1s` fell in a
//! moment when the server's writes were slow (ANALYSIS 21), and ran its whole life in batches at half the rate. So
//! the verdict is timed again while the function runs ([`Disk::keep_checking`]), by a measure the server takes
//! itself and its own traffic does not blur, and put right. Only while the function writes: an idle function's
//! verdict decides nothing, and its checks would be the only writes it makes (ANALYSIS 29).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
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
    /// `None`: written whatever the key holds (an outcome's mark on a `done` key, [`super::Inner::mark`]).
    expected: Option<u64>,
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
    disk: std::sync::Arc<Disk>,
}

/// Whether the bucket's writes wait for the disk, as the ledger's first writes measured it ([`Disk::probe`]).
/// Shared by the ledger's batcher and its single writes.
pub(crate) struct Disk {
    state: AtomicU8,
    probing: AtomicBool,
    /// A claim was made since the running checks last looked: they time the disk only while the ledger is used.
    claimed: AtomicBool,
}

const UNKNOWN: u8 = 0;
const SYNCED: u8 = 1;
const UNSYNCED: u8 = 2;

/// A write slower than the same write refused by the server by at least this much waits for an fsync (or a
/// replica): there a batch, which shares one wait among its writes, beats as many separate writes. Below it,
/// separate writes cost the server less than a batch's staging. Measured on one node (tests/bench/ANALYSIS.md
/// sections 12 and 22): the ledger row ran at 13,500/s with separate writes and 7,500/s with batches at
/// `sync_interval: 1s`, and at 4,000 against 7,500/s at `always`; a write's floor exceeded its refusal's by at most
/// 72 µs at `1s` and by 125 µs at least at `always` on a disk whose 1 KiB fdatasync takes 0.19 ms (an SSD's fsync
/// is ~100 µs; a network disk's costs milliseconds).
const SYNCED_WRITE_EXTRA: Duration = Duration::from_micros(40);
/// Pairs of a write and its refusal the probe times at most; their floors (minimum) leave out the queueing other
/// traffic adds.
const PROBE_ROUNDS: usize = 6;
/// The first re-check after the start-up probe; each later one waits twice as long, up to [`RECHECK_MAX`].
const RECHECK_FIRST: Duration = Duration::from_millis(500);
const RECHECK_MAX: Duration = Duration::from_secs(60);
/// The running checks pause this long after the last claim, and go on with the next.
/// A check is up to 24 writes of the clock keys (all of them where every write syncs): a function that had no
/// event for hours would otherwise keep writing them once a minute, and 100 idle functions made more ledger writes
/// than heartbeats (ANALYSIS 29).
const IDLE_AFTER: Duration = Duration::from_secs(120);
/// Rounds of one re-check (two writes and two reads each).
const RECHECK_ROUNDS: usize = 12;
/// From this round on, a gap of three margins ends the probe: a disk that syncs shows it in every round, and each
/// of its rounds costs start-up an fsync.
const PROBE_EARLY: usize = 3;

impl Disk {
    pub(crate) fn new() -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            state: AtomicU8::new(UNKNOWN),
            probing: AtomicBool::new(false),
            claimed: AtomicBool::new(false),
        })
    }

    /// Not yet known, or synced: single writes then keep the cap that bounds the queue ahead of a `done`.
    pub(crate) fn maybe_synced(&self) -> bool {
        self.state.load(Ordering::Relaxed) != UNSYNCED
    }

    fn unsynced(&self) -> bool {
        self.state.load(Ordering::Relaxed) == UNSYNCED
    }

    fn synced(&self) -> bool {
        self.state.load(Ordering::Relaxed) == SYNCED
    }

    /// Starts the probe in the background unless it ran or is running: until it ends, writes go one by one.
    pub(crate) fn start_probe(self: &std::sync::Arc<Self>, store: &kv::Store, clock: &str) {
        // Called at every claim: loads first, so the common case writes no shared cache line.
        if !self.claimed.load(Ordering::Relaxed) {
            self.claimed.store(true, Ordering::Relaxed);
        }
        if self.probing.load(Ordering::Relaxed) || self.probing.swap(true, Ordering::Relaxed) {
            return;
        }
        let (disk, store, clock) = (self.clone(), store.clone(), clock.to_owned());
        tokio::spawn(async move { disk.measure(&store, &clock).await });
    }

    /// Times the bucket's writes against refused writes, before the consumer's first pull (a probe that shares
    /// the server with a flood of this process's own writes would time their queue, not the disk), then keeps
    /// timing them while the consumer runs ([`Disk::keep_checking`]).
    pub(crate) async fn probe(self: &std::sync::Arc<Self>, store: &kv::Store, clock: &str) {
        if !self.probing.swap(true, Ordering::Relaxed) {
            self.measure(store, clock).await;
            // A replicated bucket's leader stamps a write when it proposes it, before its followers have it: two
            // writes sent together are stamped microseconds apart whatever they then wait for, so the stamps say
            // nothing there and the start-up verdict stands.
            if store.stream.cached_info().config.num_replicas > 1 {
                return;
            }
            let keys = (format!("{clock}.a"), format!("{clock}.b"));
            tokio::spawn(Self::keep_checking(
                std::sync::Arc::downgrade(self),
                store.clone(),
                keys,
            ));
        }
    }

    /// Times the verdict again about [`RECHECK_FIRST`] after the first claim, then at doubling intervals up to
    /// [`RECHECK_MAX`], for as long as the consumer's ledgers hold the `Disk`; from [`IDLE_AFTER`] after the last
    /// claim to the next there is no check: the verdict only shapes claims and dones, and a check is itself up to
    /// two dozen writes. A check runs beside the consumer's own writes, so it does not time replies (their floors
    /// carry the queue of the process's own flood: 0.3 to 5 ms, ANALYSIS 12) but reads the server's own stamps
    /// ([`stamp_gap`]). One check that finds two writes closer than an fsync proves the disk did not sync between
    /// them, and makes the writes go one by one at once; a slow moment of the server only widens gaps, so it takes
    /// two checks in a row to turn batches on.
    async fn keep_checking(disk: std::sync::Weak<Self>, store: kv::Store, keys: (String, String)) {
        let mut wait = RECHECK_FIRST;
        let mut disagreed = false;
        let mut last_claim: Option<Instant> = None;
        loop {
            tokio::time::sleep(wait).await;
            let Some(strong) = disk.upgrade() else {
                return;
            };
            if strong.claimed.swap(false, Ordering::Relaxed) {
                last_claim = Some(Instant::now());
            }
            drop(strong);
            if last_claim.is_none_or(|at| at.elapsed() >= IDLE_AFTER) {
                // Idle: no check, and the schedule stays where it was, so the first claims of a function that never
                // had work get the quick checks a wrong start-up verdict needs, and a function waking from a quiet
                // night does not repeat them. Looking is a load, not a write.
                continue;
            }
            wait = (wait * 2).min(RECHECK_MAX);
            let Some(gap) = stamp_gap(&store, &keys).await else {
                continue;
            };
            let Some(disk) = disk.upgrade() else {
                return;
            };
            let synced = gap >= SYNCED_WRITE_EXTRA;
            tracing::debug!(
                gap_us = gap.as_micros(),
                synced,
                "ledger writes timed again"
            );
            if synced == disk.synced() {
                disagreed = false;
                continue;
            }
            if synced && !disagreed {
                disagreed = true;
                continue;
            }
            disagreed = false;
            disk.state
                .store(if synced { SYNCED } else { UNSYNCED }, Ordering::Relaxed);
            tracing::info!(
                gap_us = gap.as_micros(),
                synced,
                "ledger writes timed again against the verdict: concurrent claims and dones now {}",
                if synced {
                    "go in atomic batches"
                } else {
                    "go one by one"
                }
            );
        }
    }

    async fn measure(&self, store: &kv::Store, clock: &str) {
        let state = match disk_floors(store, clock).await {
            Some((write, refused)) => {
                let synced = waits_for_disk(write, refused, 1);
                tracing::info!(
                    write_us = write.as_micros(),
                    refused_us = refused.as_micros(),
                    synced,
                    "ledger writes timed against refused writes: concurrent claims and dones {}",
                    if synced {
                        "go in atomic batches"
                    } else {
                        "go one by one"
                    }
                );
                if synced { SYNCED } else { UNSYNCED }
            }
            // Unmeasured (the clock key could not be written, or a refusal did not come): batches, whose worst case
            // is the better one.
            None => SYNCED,
        };
        #[cfg(feature = "fault-injection")]
        let state = match crate::fault::disk_verdict() {
            Some(synced) => {
                tracing::warn!(
                    synced,
                    "the disk probe's verdict is forced by {}",
                    crate::fault::DISK_VERDICT
                );
                if synced { SYNCED } else { UNSYNCED }
            }
            None => state,
        };
        self.state.store(state, Ordering::Relaxed);
    }
}

/// Whether a write's floor exceeds its refusal's by `margins` times the margin: [`SYNCED_WRITE_EXTRA`], or a
/// quarter of the refusal in a slow client (a debug build, a loaded machine), where both floors carry hundreds of
/// µs of its own time and their difference its noise.
fn waits_for_disk(write: Duration, refused: Duration, margins: u32) -> bool {
    write.saturating_sub(refused) >= SYNCED_WRITE_EXTRA.max(refused / 4) * margins
}

/// The fastest of up to [`PROBE_ROUNDS`] writes of the ledger's clock key, and of as many writes of it the server
/// refuses. The refusal is the reference because it takes the write's own path (the subject, the headers, the
/// stream's compare-and-set, the reply) and stops before the store and its sync: a read's path is another, and at
/// `1s` some processes found their writes 40 to 110 µs slower than their reads with no fsync at all (ANALYSIS 21),
/// against at most 72 µs slower than their refusals.
async fn disk_floors(store: &kv::Store, clock: &str) -> Option<(Duration, Duration)> {
    let (mut write, mut refused) = (Duration::MAX, Duration::MAX);
    for round in 1..=PROBE_ROUNDS {
        let started = Instant::now();
        store.put(clock, Bytes::new()).await.ok()?;
        write = write.min(started.elapsed());
        // Revision 0 expects the key to have none; the put above gave it one, so the server refuses it unstored.
        let started = Instant::now();
        match store.update(clock, Bytes::new(), 0).await {
            Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            _ => return None,
        }
        refused = refused.min(started.elapsed());
        if round >= PROBE_EARLY && waits_for_disk(write, refused, 3) {
            break;
        }
    }
    Some((write, refused))
}

/// The smallest gap, over [`RECHECK_ROUNDS`] rounds, between the server's stamps (the entries' `created`) of two
/// keys written together: the bucket's stream stores one write after the other, so the gap is the first one's own
/// time, its fsync included where the disk syncs every write (192 µs and more at `always` on this host, 2 to 15 µs
/// at `1s`, measured under the ledger row's flood: ANALYSIS 23). A queue in front of the pair delays both alike
/// and this process's pace does not enter, which is why the check may run beside the consumer's own writes; a
/// write that lands between the two only widens that round's gap, which the minimum leaves out. A round whose
/// entries are not its own writes (another replica's check on the same keys) is left out. The first round closer
/// than [`SYNCED_WRITE_EXTRA`] ends the check: the minimum could only fall further. `None`: no round counted, or a
/// write or read failed.
async fn stamp_gap(store: &kv::Store, (a, b): &(String, String)) -> Option<Duration> {
    let mut gap: Option<Duration> = None;
    for _ in 0..RECHECK_ROUNDS {
        let (first, second) = tokio::join!(store.put(a, Bytes::new()), store.put(b, Bytes::new()));
        let (first, second) = (first.ok()?, second.ok()?);
        let (x, y) = tokio::join!(store.entry(a), store.entry(b));
        let (Some(x), Some(y)) = (x.ok()?, y.ok()?) else {
            return None;
        };
        if x.revision != first || y.revision != second {
            tracing::debug!("a round of the disk check met another writer of its keys; left out");
            continue;
        }
        let apart = (y.created - x.created).abs().unsigned_abs();
        if apart < SYNCED_WRITE_EXTRA {
            // Proof enough that the disk did not sync between the two, and no later round can undo it: the rest
            // would only be writes (twelve times the check's cost at `1s`, ANALYSIS 29).
            return Some(apart);
        }
        gap = Some(gap.map_or(apart, |gap| gap.min(apart)));
    }
    gap
}

impl Batcher {
    pub(crate) fn new(
        client: async_nats::Client,
        store: &kv::Store,
        disk: std::sync::Arc<Disk>,
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
            disk,
        })
    }

    /// Writes `value` to `key` if its last revision is `expected` (0: the key has none; `None`: any), together with the writes
    /// other tasks queued meanwhile. `None`: not written in a batch (too few waiting, batches not allowed, or the
    /// batch refused as a whole); the caller makes the write alone, as it would without batching.
    pub(crate) async fn write(
        &self,
        key: &str,
        expected: Option<u64>,
        value: Bytes,
    ) -> Option<u64> {
        if self.disabled.load(Ordering::Relaxed) || self.disk.unsynced() {
            return None;
        }
        let queue = self.queue.get_or_init(|| {
            let (sender, receiver) = mpsc::unbounded_channel();
            tokio::spawn(run(
                self.client.clone(),
                self.prefix.clone(),
                receiver,
                self.disabled.clone(),
                self.disk.clone(),
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

/// Groups in flight at once. Each waits on the bucket's stream behind the ones before it, so while they are written
/// the next group forms; fewer groups in flight make bigger groups, and a batch's staging costs the server about
/// the same whatever its size. Measured with the ledger row under `sync_interval: always` on one node (interleaved
/// runs, ANALYSIS 25): claims and dones in queues of their own with 4 groups each, 7,642 to 9,605 events/s; one
/// queue with 8 groups, 8,089 to 8,218; with 4, 8,818 to 10,348; with 2, 9,635 to 11,060; with 1, 10,121 to 10,624.
/// 1 is no faster than 2, and it once left the stream idle during a group's round trip (at `1s`, before the probe
/// kept batches off there, the row ran at a quarter of its single-write rate). On a three-node cluster (R3) 2 groups
/// did not fall behind 4 per kind. Groups go as batches only where the probe found writes waiting for the disk;
/// before it has spoken they go as single writes sent together, and after a verdict of no wait each write goes alone.
const GROUPS_IN_FLIGHT: usize = 2;

/// Writes the queue in groups (a batch, or a few single writes sent together): whatever queued while the groups in
/// flight were being written forms the next one, so groups grow with the load and a lone write waits for nothing.
/// Ends when the ledger (the sender) is dropped.
async fn run(
    client: async_nats::Client,
    prefix: String,
    mut queue: mpsc::UnboundedReceiver<Write>,
    disabled: std::sync::Arc<AtomicBool>,
    disk: std::sync::Arc<Disk>,
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
        let (client, prefix, disabled, disk) = (
            client.clone(),
            prefix.clone(),
            disabled.clone(),
            disk.clone(),
        );
        tokio::spawn(async move {
            write_group(&client, &prefix, writes, &disabled, &disk).await;
            drop(slot);
        });
    }
}

async fn write_group(
    client: &async_nats::Client,
    prefix: &str,
    writes: Vec<Write>,
    disabled: &AtomicBool,
    disk: &Disk,
) {
    // Until the probe has spoken, and once it found writes that do not wait for the disk, a group goes as
    // separate writes (sent together).
    if writes.len() < MIN_BATCH || disabled.load(Ordering::Relaxed) || !disk.synced() {
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
    if let Some(expected) = write.expected {
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
    }
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
        if let Some(expected) = write.expected {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                expected.to_string().as_str(),
            );
        }
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
