//! The idempotency ledger: a side effect keyed by (function, event id, effect) runs at most once across
//! redeliveries, re-publishes and concurrent replicas.
//!
//! Protocol, on a KV bucket with history 1 (the rules are in [`protocol`], without I/O):
//! 1. `create(key, "pending <token> <ms>")`: compare-and-set, so exactly one attempt claims the effect. The token
//!    is new for every claim.
//! 2. The claimant runs the effect and, while it runs, rewrites its pending entry (CAS on the revision) every
//!    quarter lease, so a slow effect is never judged abandoned. On success it CAS-updates the key to
//!    `done <ms> [<decision>]`, retrying until the write lands or the key shows the claim is no longer ours; on
//!    failure it deletes the claim so the next attempt can run it.
//! 3. Another attempt that finds `done` skips the effect. One that finds a `pending` entry judges its age by the
//!    server's clock only: the entry's `created` time against the time the bucket stream's leader reports now
//!    ([`publish::clock`]). Younger than the lease, it backs off (a replica is running it now); older, it takes it
//!    over with a CAS update.
//!
//! **The window no queue can close:** a process that dies after the effect happened (the SMTP server said 250)
//! and before step 2 recorded `done` leaves a stale claim. After the lease the effect runs again. The window is
//! one KV write long; shrinking it further needs the downstream system to deduplicate (the `Message-ID` an email
//! carries is derived from the same key, so a receiving system can). A handler abandoned at
//! `JOB_HANDLER_TIMEOUT_SECS` stops renewing too, so an effect that outlives the handler timeout is in the same
//! window.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{
    self,
    kv::{self, CreateErrorKind, Operation, UpdateErrorKind},
};
use bytes::Bytes;

use crate::JobError;
use protocol::{Conflict, Verdict};

mod batch;
pub(crate) use batch::Disk;
pub(crate) mod protocol;
pub mod window;

#[cfg(feature = "testing")]
mod memory;
#[cfg(feature = "testing")]
pub use memory::MemoryLedger;

/// Whether the effect ran now or had already run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<T> {
    /// This attempt ran it.
    Done(T),
    /// An earlier attempt (or another replica) had completed it; nothing was done.
    AlreadyDone,
}

/// The ledger of one function. Cloned into every job, so it shares one inner value: a `kv::Store` clone copies
/// the bucket's whole stream info. With the `testing` feature it may instead be a
/// [`MemoryLedger`], for handler tests without NATS; without it the enum has one
/// variant and the match costs nothing.
#[derive(Clone)]
pub struct Ledger {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Kv(std::sync::Arc<Inner>),
    #[cfg(feature = "testing")]
    Memory(MemoryLedger),
}

struct Inner {
    /// Shared with the writes handed to `outbox`, which run in its task.
    store: std::sync::Arc<kv::Store>,
    /// The single claim and `done` writes go through it, so those of concurrent messages leave in one write
    /// (`crate::outbox`); `None` (a ledger built outside a runtime) writes from the caller's task.
    outbox: Option<crate::outbox::Outbox>,
    /// The context `store` was bound on: the server's clock is read through it.
    js: jetstream::Context,
    function: String,
    /// A key of this function's that holds nothing, written by the disk probe (`batch.rs`) only.
    clock: String,
    lease: Duration,
    /// Admits [`CLAIMS_IN_FLIGHT`] single claim writes at a time where writes wait for the disk; `done` writes
    /// never wait for it.
    claims: tokio::sync::Semaphore,
    /// The bucket keeps copies on other nodes (R3 in a cluster): its single claims are never capped.
    replicated: bool,
    /// Claims and dones of messages running at the same time committed together as atomic batches
    /// (`batch.rs`); `None` writes every key alone.
    batches: Option<Batches>,
}

struct Batches {
    writes: batch::Batcher,
    disk: std::sync::Arc<batch::Disk>,
}

/// Single claim writes one process keeps in flight at once (a claim batch is one more, whatever its size). The server appends a bucket's writes one after another (with
/// `sync_interval: always`, an fsync each, or one per group that arrived together), so a `done` waits behind every
/// write sent before it: with a claim per message in flight, that queue was the duplicate window. Capping claims,
/// and never `done`, bounds the queue ahead of a `done` to these claims plus the `done` writes of effects that
/// ended at the same moment. Measured with 256 in flight and `always` (tests/bench, `consume/ledger-window`): the
/// window's median went from 131 ms to 8 ms and its p99 from 524 ms to 33 ms; the no-op ledger row's throughput
/// under `always` fell from about 960 to 450 events/s (fewer writes share an fsync), far above an SMTP route's.
/// Where the disk probe (`batch.rs`) finds writes that do not wait for an fsync, the cap is off: there it halved the
/// ledger row (13,500 -> 7,300/s at `sync_interval: 1s`, ANALYSIS section 12) to shorten a window whose p99 is
/// 16 ms without it, while such a server may lose its last second of acknowledged writes in a crash anyway.
/// Nor is a replicated bucket capped (R3 on a cluster, where the probe sees the followers' round trip as a wait):
/// its leader replicates the writes that arrive together as pipelined proposals, no write waits behind another's
/// fsync, and on a three-node cluster the cap cut the ledger row from about 6,000 to 7,000 events/s to 1,400
/// (tests/bench/ANALYSIS.md section 19).
const CLAIMS_IN_FLIGHT: usize = 4;

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.backend {
            Backend::Kv(inner) => f
                .debug_struct("Ledger")
                .field("function", &inner.function)
                .field("lease", &inner.lease)
                .finish(),
            #[cfg(feature = "testing")]
            Backend::Memory(memory) => f.debug_tuple("Ledger").field(memory).finish(),
        }
    }
}

enum Claim {
    Claimed { token: String, revision: u64 },
    Done(Option<String>),
    Busy(Duration),
}

/// What `once` did, with the decision an earlier attempt recorded when it skipped.
pub(crate) enum Outcome<T> {
    Done(T),
    AlreadyDone(Option<String>),
}

impl<T> Outcome<T> {
    fn effect(self) -> Effect<T> {
        match self {
            Self::Done(value) => Effect::Done(value),
            Self::AlreadyDone(_) => Effect::AlreadyDone,
        }
    }
}

impl Ledger {
    /// A ledger for `function` on an existing bucket, `store`, bound on `js`.
    pub fn new(js: jetstream::Context, store: kv::Store, function: &str, lease: Duration) -> Self {
        Self::build(js, store, function, lease, None, None)
    }

    /// A ledger whose claims and dones of concurrent messages go to the server as atomic batches over `js`'s
    /// client (when the bucket allows them; otherwise one by one, as [`Ledger::new`] writes), with the disk probe
    /// of `disk` (shared by a consumer's ledgers, and run by [`Ledger::probe_disk`] before the first pull).
    pub(crate) fn batched_on(
        js: jetstream::Context,
        store: kv::Store,
        function: &str,
        lease: Duration,
        disk: std::sync::Arc<batch::Disk>,
        outbox: crate::outbox::Outbox,
    ) -> Self {
        Self::build(js, store, function, lease, Some(disk), Some(outbox))
    }

    /// Whether `store`'s writes wait for the disk, timed before anything else writes: decides whether concurrent
    /// claims and dones go as batches (ANALYSIS section 12).
    pub(crate) async fn probe_disk(
        store: &kv::Store,
        function: &str,
    ) -> std::sync::Arc<batch::Disk> {
        let disk = batch::Disk::new();
        disk.probe(store, &clock_key(function)).await;
        disk
    }

    fn build(
        js: jetstream::Context,
        store: kv::Store,
        function: &str,
        lease: Duration,
        batching: Option<std::sync::Arc<batch::Disk>>,
        outbox: Option<crate::outbox::Outbox>,
    ) -> Self {
        let batches = batching.and_then(|disk| {
            Some(Batches {
                writes: batch::Batcher::new(js.client(), &store, disk.clone())?,
                disk,
            })
        });
        let replicated = store.stream.cached_info().config.num_replicas > 1;
        Self {
            backend: Backend::Kv(std::sync::Arc::new(Inner {
                replicated,
                store: std::sync::Arc::new(store),
                outbox,
                js,
                function: function.to_owned(),
                clock: clock_key(function),
                lease,
                claims: tokio::sync::Semaphore::new(CLAIMS_IN_FLIGHT),
                batches,
            })),
        }
    }

    #[cfg(feature = "testing")]
    pub(crate) fn memory(memory: MemoryLedger) -> Self {
        Self {
            backend: Backend::Memory(memory),
        }
    }

    /// The KV key of an effect. The parts are hashed: event ids may hold characters keys cannot, and effect names
    /// often hold a recipient's address, which must not sit in clear in a bucket anyone can list.
    pub fn key(&self, event_id: &str, effect: &str) -> String {
        let function = match &self.backend {
            Backend::Kv(inner) => inner.function.as_str(),
            #[cfg(feature = "testing")]
            Backend::Memory(_) => memory::FUNCTION,
        };
        key(function, event_id, effect)
    }

    /// Whether `value`, read from the key of effect `effect` of event `event_id`, records its outcome `name` as
    /// published ([`crate::Job::publish_outcome_of`]'s mark), for an operator's report. `false` says only that the
    /// mark is missing: a build from before the marks recorded the outcome on [`Ledger::outcome_key`] instead.
    pub fn records_outcome(&self, value: &[u8], event_id: &str, name: &str) -> bool {
        protocol::has_mark(value, outcome_mark(&self.outcome_key(event_id, name)))
    }

    /// The key of outcome `name` of event `event_id` when it is recorded on a key of its own
    /// ([`crate::Job::publish_outcome`], and every outcome in builds from before the marks).
    pub fn outcome_key(&self, event_id: &str, name: &str) -> String {
        self.key(event_id, &format!("outcome:{name}"))
    }

    /// Runs `effect` unless it already ran for this key.
    ///
    /// # Errors
    /// The effect's own error (after releasing the claim), a transient error while another replica holds a fresh
    /// claim, or a KV error (transient).
    pub async fn once<T, F, Fut>(&self, key: &str, effect: F) -> Result<Effect<T>, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, JobError>>,
    {
        self.run(key, effect, |_| None).await.map(Outcome::effect)
    }

    /// Runs `decide` unless it already ran for this key, and records what it decided (a short token such as
    /// `allowed` or `limited`) with `done`, so a redelivery or a replay acts on the first decision instead of
    /// deciding again. `None` when an earlier attempt completed the effect without recording a decision (one
    /// written before decisions were recorded).
    ///
    /// # Errors
    /// As [`Ledger::once`].
    pub async fn decide<F, Fut>(&self, key: &str, decide: F) -> Result<Option<String>, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, JobError>>,
    {
        let outcome = self
            .run(key, decide, |decision: &String| Some(decision.clone()))
            .await?;
        Ok(match outcome {
            Outcome::Done(decision) => Some(protocol::decision_token(&decision)),
            Outcome::AlreadyDone(decision) => decision,
        })
    }

    /// Runs `effect` unless the ledger records it done, then records it done: for an effect whose repeats are
    /// absorbed downstream, a publish whose `Nats-Msg-Id` derives from `key` (an outcome event), where a claim
    /// would exclude only a second copy that the stream's duplicate window drops anyway. It saves the claim's
    /// write, a durable write (an fsync under `sync_interval: always`) per outcome. An outcome of an effect is
    /// recorded on the effect's key instead ([`Ledger::once_marked`]). ARCHITECTURE.md ("Outcome events") gives
    /// the argument for each crash point.
    ///
    /// # Errors
    /// The effect's own error, or a KV error reading the key (transient).
    pub(crate) async fn once_deduplicated<T, F, Fut>(
        &self,
        key: &str,
        effect: F,
    ) -> Result<Effect<T>, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, JobError>>,
    {
        match &self.backend {
            Backend::Kv(inner) => inner.once_deduplicated(key, effect).await,
            #[cfg(feature = "testing")]
            Backend::Memory(memory) => memory.once(key, effect, |_| None).await,
        }
        .map(Outcome::effect)
    }

    /// [`Ledger::once_deduplicated`] for an outcome of the effect at `effect_key` (a name given to `once`),
    /// recorded as a mark on that key rather than as a key of its own, and not read first where `may_have_run` is
    /// false (the caller knows no earlier attempt got to it: this attempt performed the effect, and outcomes come
    /// after its `done`). An email then holds one key in the bucket, not two, and nats-server keeps an index entry
    /// of every key in memory (a third to a half of its memory per email, tests/bench/ANALYSIS.md section 34).
    /// `legacy_key` is where builds before the mark recorded this outcome: it is read where the mark is missing, so
    /// an outcome one of them published is not published again. The mark is the first 16 hex digits of
    /// `legacy_key`'s hash: it tells the outcomes of one effect apart without a second digest.
    ///
    /// # Errors
    /// As [`Ledger::once_deduplicated`].
    pub(crate) async fn once_marked<T, F, Fut>(
        &self,
        effect_key: &str,
        legacy_key: &str,
        may_have_run: bool,
        effect: F,
    ) -> Result<Effect<T>, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, JobError>>,
    {
        match &self.backend {
            Backend::Kv(inner) => {
                let mark = outcome_mark(legacy_key);
                inner
                    .once_marked(effect_key, legacy_key, mark, may_have_run, effect)
                    .await
            }
            // The memory ledger keeps the rules, not the layout: the outcome stays on a key of its own.
            #[cfg(feature = "testing")]
            Backend::Memory(memory) => memory.once(legacy_key, effect, |_| None).await,
        }
        .map(Outcome::effect)
    }

    async fn run<T, F, Fut>(
        &self,
        key: &str,
        effect: F,
        decision: impl FnOnce(&T) -> Option<String>,
    ) -> Result<Outcome<T>, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, JobError>>,
    {
        match &self.backend {
            Backend::Kv(inner) => inner.once(key, effect, decision).await,
            #[cfg(feature = "testing")]
            Backend::Memory(memory) => memory.once(key, effect, decision).await,
        }
    }

    /// Notes that a job was acked without its effect on purpose; only a test ledger keeps it.
    #[cfg_attr(not(feature = "testing"), allow(clippy::unused_self))]
    pub(crate) fn note_skip(&self, _event_id: &str, _reason: &'static str) {
        #[cfg(feature = "testing")]
        if let Backend::Memory(memory) = &self.backend {
            memory.note_skip(_event_id, _reason);
        }
    }
}

impl Ledger {
    /// The skip a test ledger recorded for `event_id`.
    #[cfg(feature = "testing")]
    pub(crate) fn memory_skip(&self, event_id: &str) -> Option<&'static str> {
        match &self.backend {
            Backend::Memory(memory) => memory.skipped(event_id),
            Backend::Kv(_) => None,
        }
    }
}

/// The mark of the outcome whose own key, before marks, was `legacy_key`: its hash's first 16 hex digits.
fn outcome_mark(legacy_key: &str) -> &str {
    let hash = legacy_key.rsplit('.').next().unwrap_or(legacy_key);
    hash.get(..16).unwrap_or(hash)
}

fn clock_key(function: &str) -> String {
    format!("{}.clock", sanitize_token(function))
}

/// `<function>.<first 16 bytes of sha256(event id, NUL, effect), hex>`.
///
/// Written into one string without formatting: hex through `format!` per byte cost about 13,000 instructions
/// per effect, 9% of the email shape's instructions per event in the bench process (tests/bench/ANALYSIS.md,
/// section 28). The keys are unchanged, byte for byte (a unit test holds them to the formula).
pub(crate) fn key(function: &str, event_id: &str, effect: &str) -> String {
    // One digest call over one buffer: three `Context::update` calls cost more than the copy (callgrind).
    let mut parts = Vec::with_capacity(event_id.len() + 1 + effect.len());
    parts.extend_from_slice(event_id.as_bytes());
    parts.push(0);
    parts.extend_from_slice(effect.as_bytes());
    let digest = ring::digest::digest(&ring::digest::SHA256, &parts);
    let mut key = String::with_capacity(function.len() + 1 + 32);
    push_token(&mut key, function);
    key.push('.');
    events::hex::push_lower(&mut key, &digest.as_ref()[..16]);
    key
}

impl Inner {
    async fn once<T, F, Fut>(
        &self,
        key: &str,
        effect: F,
        decision: impl FnOnce(&T) -> Option<String>,
    ) -> Result<Outcome<T>, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, JobError>>,
    {
        let (token, revision) = match self.claim_boxed(key).await? {
            Claim::Claimed { token, revision } => (token, revision),
            Claim::Done(decision) => return Ok(Outcome::AlreadyDone(decision)),
            Claim::Busy(remaining) => {
                return Err(JobError::retry_after(
                    anyhow::anyhow!("side effect is being performed by another attempt"),
                    remaining.max(Duration::from_secs(1)),
                ));
            }
        };
        let _window = crate::fault::effect_window(key);
        let revision = AtomicU64::new(revision);
        let held = Held {
            key,
            token: &token,
            revision: &revision,
        };
        // The renewal runs beside the effect and beside the `done` write, in this same future: when the handler
        // is abandoned (its timeout) the renewal stops with it, and the lease then lets another attempt in.
        let work = async {
            match effect().await {
                Ok(value) => {
                    crate::fault::before_done().await;
                    let decision = decision(&value).map(|text| protocol::decision_token(&text));
                    let ended = Instant::now();
                    self.mark_done_boxed(&held, decision.as_deref()).await;
                    window::record(ended.elapsed());
                    Ok(Outcome::Done(value))
                }
                Err(err) => {
                    self.release_boxed(&held).await;
                    Err(err)
                }
            }
        };
        tokio::select! {
            biased;
            result = work => result,
            never = self.renew_boxed(&held) => match never {},
        }
    }

    async fn once_deduplicated<T, F, Fut>(
        &self,
        key: &str,
        effect: F,
    ) -> Result<Outcome<T>, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, JobError>>,
    {
        if let Some(decision) = self.done_boxed(key).await? {
            return Ok(Outcome::AlreadyDone(decision));
        }
        let value = effect().await?;
        crate::fault::before_outcome_record().await;
        self.record_done_boxed(key).await;
        Ok(Outcome::Done(value))
    }

    async fn once_marked<T, F, Fut>(
        &self,
        effect_key: &str,
        legacy_key: &str,
        mark: &str,
        may_have_run: bool,
        effect: F,
    ) -> Result<Outcome<T>, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, JobError>>,
    {
        let mut found = None;
        if may_have_run {
            found = self.value_boxed(effect_key).await?;
            if found
                .as_deref()
                .is_some_and(|value| protocol::has_mark(value, mark))
            {
                return Ok(Outcome::AlreadyDone(None));
            }
            // Published by a build from before the marks, which recorded it on a key of its own.
            if let Some(decision) = self.done_boxed(legacy_key).await? {
                return Ok(Outcome::AlreadyDone(decision));
            }
        }
        let value = effect().await?;
        crate::fault::before_outcome_record().await;
        let marked = protocol::marked(found.as_deref(), mark, now_ms());
        self.mark_boxed(effect_key, Bytes::from(marked)).await;
        Ok(Outcome::Done(value))
    }

    #[inline(never)]
    fn value_boxed<'a>(&'a self, key: &'a str) -> Step<'a, Result<Option<Bytes>, JobError>> {
        Box::pin(async move {
            Ok(self
                .entry(key)
                .await?
                .filter(|entry| entry.operation == Operation::Put)
                .map(|entry| entry.value))
        })
    }

    #[inline(never)]
    fn mark_boxed<'a>(&'a self, key: &'a str, value: Bytes) -> Step<'a, ()> {
        Box::pin(self.mark(key, value))
    }

    /// Writes an outcome's mark on its effect's key whatever the key holds: a `done` is never written again but
    /// by a mark, so there is no claim to lose (where the ledger lost the key, the mark's `done` is true: the effect
    /// ran). Retries as [`Inner::record_done`] does; a mark that never lands lets a later attempt publish the
    /// outcome again under its id, a duplicate the stream drops within its window.
    async fn mark(&self, key: &str, value: Bytes) {
        if self.batched(key, None, &value).await {
            return;
        }
        until_landed(OUTCOME_UNRECORDED, || async {
            self.put(key, value.clone())
                .await
                .map(|_| ())
                .map_err(|err| err.to_string())
        })
        .await;
    }

    #[inline(never)]
    fn done_boxed<'a>(
        &'a self,
        key: &'a str,
    ) -> Step<'a, Result<Option<Option<String>>, JobError>> {
        Box::pin(self.done(key))
    }

    #[inline(never)]
    fn record_done_boxed<'a>(&'a self, key: &'a str) -> Step<'a, ()> {
        Box::pin(self.record_done(key))
    }

    /// `Some(decision)` when the key records the effect done. A pending claim (an older build's, which claimed
    /// outcomes too) is not done: the effect runs, and its copy is absorbed as any other repeat.
    async fn done(&self, key: &str) -> Result<Option<Option<String>>, JobError> {
        Ok(self.entry(key).await?.as_ref().and_then(recorded_done))
    }

    /// Whether `value` landed on `key` in a batch with the writes of other messages ([`batch::Batcher::write`]);
    /// `false`: the caller writes it alone.
    async fn batched(&self, key: &str, expected: Option<u64>, value: &Bytes) -> bool {
        match &self.batches {
            Some(batches) => batches
                .writes
                .write(key, expected, value.clone())
                .await
                .is_some(),
            None => false,
        }
    }

    /// A read of `key`, its failure a transient error.
    async fn entry(&self, key: &str) -> Result<Option<kv::Entry>, JobError> {
        self.store
            .entry(key)
            .await
            .map_err(|err| JobError::transient(anyhow::anyhow!("ledger read: {err}")))
    }

    /// Records `done` on a key no claim of this attempt holds: created where it is absent, written over a
    /// pending claim (whose holder then finds it done), left alone where another attempt recorded it. Retries
    /// as [`Inner::mark_done`] does, bounded by the handler's timeout; a `done` that never lands only lets a
    /// later attempt repeat the effect, which its key makes a duplicate the stream drops.
    async fn record_done(&self, key: &str) {
        let value = Bytes::from(protocol::done(now_ms(), None));
        if self.batched(key, Some(0), &value).await {
            return;
        }
        until_landed(OUTCOME_UNRECORDED, || async {
            match self.create(key, value.clone()).await {
                Ok(_) => Ok(()),
                Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {
                    match self.store.entry(key).await {
                        Ok(Some(entry)) if recorded_done(&entry).is_some() => Ok(()),
                        Ok(Some(entry)) => self
                            .update(key, value.clone(), entry.revision)
                            .await
                            .map(|_| ())
                            .map_err(|err| err.to_string()),
                        // Deleted between the two, or a lagging replica answered: the next round sees.
                        Ok(None) => Err("the key was not found on reading it back".to_owned()),
                        Err(err) => Err(err.to_string()),
                    }
                }
                Err(err) => Err(err.to_string()),
            }
        })
        .await;
    }

    // The steps `once` awaits, each boxed behind a pointer by a function of this crate. `once` is generic over the
    // effect, so it is compiled in each function binary, and a crate that awaits a future compiles its state
    // machine and those of everything it awaits: unboxed, every binary compiled the claim, the batches and the
    // async-nats KV calls again. An allocation per step is nothing beside the step's write to the server.
    #[inline(never)]
    fn claim_boxed<'a>(&'a self, key: &'a str) -> Step<'a, Result<Claim, JobError>> {
        Box::pin(self.claim(key))
    }

    #[inline(never)]
    fn mark_done_boxed<'a>(
        &'a self,
        held: &'a Held<'_>,
        decision: Option<&'a str>,
    ) -> Step<'a, ()> {
        Box::pin(self.mark_done(held, decision))
    }

    #[inline(never)]
    fn release_boxed<'a>(&'a self, held: &'a Held<'_>) -> Step<'a, ()> {
        Box::pin(self.release(held))
    }

    #[inline(never)]
    fn renew_boxed<'a>(&'a self, held: &'a Held<'_>) -> Step<'a, std::convert::Infallible> {
        Box::pin(self.renew(held))
    }

    async fn claim(&self, key: &str) -> Result<Claim, JobError> {
        // Single writes meet the cap unless the probe found writes that do not wait for the disk: there a queue of
        // them drains in a few ms and the cap halved the row's throughput (ANALYSIS section 12).
        let capped = !self.replicated
            && match &self.batches {
                Some(batches) => {
                    batches.disk.start_probe(&self.store, &self.clock);
                    batches.disk.maybe_synced()
                }
                None => true,
            };
        for attempt in 0..5 {
            let token = uuid::Uuid::now_v7().simple().to_string();
            let value = self.pending_value(&token);
            let batched = match &self.batches {
                Some(batches) if attempt == 0 => {
                    batches.writes.write(key, Some(0), value.clone()).await
                }
                _ => None,
            };
            let created = if let Some(revision) = batched {
                Ok(revision)
            } else if capped {
                let _admitted = self
                    .claims
                    .acquire()
                    .await
                    .map_err(|_| JobError::transient(anyhow::anyhow!("ledger closed")))?;
                self.create(key, value).await
            } else {
                self.create(key, value).await
            };
            match created {
                Ok(revision) => return Ok(Claim::Claimed { token, revision }),
                Err(err) if err.kind() == CreateErrorKind::AlreadyExists => {}
                Err(err) => {
                    return Err(JobError::transient(anyhow::anyhow!("ledger create: {err}")));
                }
            }
            let Some(entry) = self
                .store
                .entry(key)
                .await
                .map_err(|err| JobError::transient(anyhow::anyhow!("ledger read: {err}")))?
            else {
                continue;
            };
            if entry.operation != Operation::Put {
                continue;
            }
            let found = protocol::parse(&entry.value);
            // Our own claim: a batch whose commit reply was lost had landed after all.
            if protocol::conflict(Some(&found), &token) == Conflict::Ours {
                return Ok(Claim::Claimed {
                    token,
                    revision: entry.revision,
                });
            }
            let age = if matches!(found, protocol::Value::Pending(_)) {
                let now = self.server_now().await?;
                duration_between(entry.created, now)
            } else {
                Duration::ZERO
            };
            match protocol::judge(&found, age, self.lease) {
                Verdict::Done(decision) => return Ok(Claim::Done(decision)),
                Verdict::Busy(remaining) => return Ok(Claim::Busy(remaining)),
                Verdict::TakeOver => {
                    tracing::warn!(
                        age_secs = age.as_secs(),
                        "taking over a stale idempotency claim: the effect may have run once already"
                    );
                    if let Ok(revision) = self
                        .store
                        .update(key, self.pending_value(&token), entry.revision)
                        .await
                    {
                        return Ok(Claim::Claimed { token, revision });
                    }
                }
                Verdict::Unknown => {
                    return Err(JobError::permanent(anyhow::anyhow!(
                        "ledger key holds an unknown value"
                    )));
                }
            }
        }
        Err(JobError::transient(anyhow::anyhow!(
            "ledger claim kept racing; will retry"
        )))
    }

    /// The server's clock now, as the bucket stream's leader (which stamps every write) reports it. Only an
    /// attempt that found a pending claim pays for it: one request, no write. It was a write of a clock key read
    /// back by a direct get, which a lagging follower could answer with an older stamp, making a stale claim look
    /// younger than it was.
    async fn server_now(&self) -> Result<time::OffsetDateTime, JobError> {
        publish::clock::server_now(&self.js, &self.store.stream_name)
            .await
            .map_err(|err| JobError::transient(anyhow::anyhow!("ledger clock: {err}")))
    }

    /// Rewrites the pending entry every quarter lease so its server `created` time stays young. Never returns:
    /// once the claim is no longer ours it parks, and it is dropped with the effect.
    async fn renew(&self, held: &Held<'_>) -> std::convert::Infallible {
        let period = protocol::renew_period(self.lease);
        loop {
            tokio::time::sleep(period).await;
            let current = held.revision.load(Ordering::Acquire);
            match self
                .store
                .update(held.key, self.pending_value(held.token), current)
                .await
            {
                Ok(revision) => {
                    // A `done` CAS that raced this one may have moved on already; never go back.
                    held.revision.fetch_max(revision, Ordering::AcqRel);
                }
                Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => {
                    match self.settle_conflict(held).await {
                        Some(Conflict::Ours) | None => {}
                        Some(Conflict::Done) => return std::future::pending().await,
                        Some(Conflict::Lost) => {
                            tracing::error!(
                                "an idempotency claim was taken over while its effect ran: the effect may run twice"
                            );
                            return std::future::pending().await;
                        }
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "renewing an idempotency claim failed; trying again");
                }
            }
        }
    }

    /// Records `done`. Retries for as long as the key shows the claim is ours: a stalled or electing server only
    /// delays the write, and no other attempt can take the claim over while the server that would judge its age
    /// is not answering. The bound is the handler's timeout, whose abandoning drops this future; after that the
    /// claim is left pending and another attempt takes it over one lease (server time) after the last renewal.
    async fn mark_done(&self, held: &Held<'_>, decision: Option<&str>) {
        let value = Bytes::from(protocol::done(now_ms(), decision));
        if let Some(batches) = &self.batches {
            let current = held.revision.load(Ordering::Acquire);
            if batches
                .writes
                .write(held.key, Some(current), value.clone())
                .await
                .is_some()
            {
                return;
            }
        }
        let mut retry = DoneRetry::new();
        loop {
            let current = held.revision.load(Ordering::Acquire);
            let error = match self.update(held.key, value.clone(), current).await {
                Ok(_) => return,
                Err(err) if err.kind() == UpdateErrorKind::WrongLastRevision => {
                    match self.settle_conflict(held).await {
                        Some(Conflict::Ours) => continue,
                        Some(Conflict::Done) => return,
                        Some(Conflict::Lost) => {
                            tracing::error!(
                                "side effect done, but another attempt had taken its claim over: it may run twice"
                            );
                            return;
                        }
                        None => err.to_string(),
                    }
                }
                Err(err) => err.to_string(),
            };
            retry
                .after(
                    &error,
                    "side effect done but the ledger has not recorded it yet; still trying",
                )
                .await;
        }
    }

    /// `store.create`, through the outbox when there is one: an update that expects no revision, and where one is
    /// found, the key read as the KV API reads it (a deleted or purged key is written over).
    async fn create(&self, key: &str, value: Bytes) -> Result<u64, kv::CreateError> {
        if self.direct().is_none() {
            let (store, key) = (self.store.clone(), key.to_owned());
            return self
                .through_outbox(async move { store.create(key, value).await }, || {
                    kv::CreateError::new(CreateErrorKind::Other)
                })
                .await;
        }
        let refused = match self.update(key, value.clone(), 0).await {
            Ok(revision) => return Ok(revision),
            Err(err) => err,
        };
        match self.store.entry(key).await? {
            Some(kv::Entry {
                operation: Operation::Delete | Operation::Purge,
                revision,
                ..
            }) => Ok(self.update(key, value, revision).await?),
            Some(_) => Err(kv::CreateError::new(CreateErrorKind::AlreadyExists)),
            None => Err(refused.into()),
        }
    }

    /// `store.put`, through the outbox when there is one.
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, kv::PutError> {
        if let Some(outbox) = self.direct() {
            return self
                .write(outbox, key, value, None)
                .await
                .map_err(|err| kv::PutError::with_source(kv::PutErrorKind::Ack, err));
        }
        let (store, key) = (self.store.clone(), key.to_owned());
        self.through_outbox(async move { store.put(key, value).await }, || {
            kv::PutError::new(kv::PutErrorKind::Publish)
        })
        .await
    }

    /// `store.update`, through the outbox when there is one.
    async fn update(&self, key: &str, value: Bytes, revision: u64) -> Result<u64, kv::UpdateError> {
        if let Some(outbox) = self.direct() {
            return self
                .write(outbox, key, value, Some(revision))
                .await
                .map_err(kv::UpdateError::from);
        }
        let (store, key) = (self.store.clone(), key.to_owned());
        self.through_outbox(
            async move { store.update(key, value, revision).await },
            || kv::UpdateError::new(UpdateErrorKind::Other),
        )
        .await
    }

    /// The outbox, where a write can go as a request of its own ([`Inner::write`]): not for a bucket behind a
    /// JetStream domain prefix, whose writes go through subjects the KV API builds.
    fn direct(&self) -> Option<&crate::outbox::Outbox> {
        self.outbox
            .as_ref()
            .filter(|_| !self.store.use_jetstream_prefix)
    }

    /// One KV write as the KV API sends it (the key's subject, `Nats-Expected-Last-Subject-Sequence` when
    /// `expected`), sent as a request of the outbox's own ([`crate::outbox`]), and its stream ack read as the API
    /// reads it: the revision written, or the same errors, a wrong revision as `WrongLastSequence`. Through `kv::Store` each write took a
    /// random inbox, a timer and the client's request map (ANALYSIS section 41).
    async fn write(
        &self,
        outbox: &crate::outbox::Outbox,
        key: &str,
        value: Bytes,
        expected: Option<u64>,
    ) -> Result<u64, jetstream::context::PublishError> {
        use jetstream::context::{PublishError, PublishErrorKind};
        let prefix = self.store.put_prefix.as_ref().unwrap_or(&self.store.prefix);
        let mut subject = String::with_capacity(prefix.len() + key.len());
        subject.push_str(prefix);
        subject.push_str(key);
        let headers = expected.map(|revision| {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                async_nats::HeaderValue::from(revision),
            );
            headers
        });
        let reply = outbox
            .request_with_headers(subject.into(), headers, value, WRITE_TIMEOUT)
            .await
            .map_err(|err| match err.kind() {
                async_nats::RequestErrorKind::TimedOut => {
                    PublishError::new(PublishErrorKind::TimedOut)
                }
                async_nats::RequestErrorKind::NoResponders => {
                    PublishError::new(PublishErrorKind::StreamNotFound)
                }
                _ => PublishError::with_source(PublishErrorKind::Other, err),
            })?;
        match serde_json::from_slice(&reply.payload)
            .map_err(|err| PublishError::with_source(PublishErrorKind::Other, err))?
        {
            StreamAck::Refused { error } => Err(match error.error_code() {
                jetstream::ErrorCode::STREAM_WRONG_LAST_SEQUENCE => {
                    PublishError::with_source(PublishErrorKind::WrongLastSequence, error)
                }
                jetstream::ErrorCode::STREAM_WRONG_LAST_MESSAGE_ID => {
                    PublishError::with_source(PublishErrorKind::WrongLastMessageId, error)
                }
                _ => PublishError::with_source(PublishErrorKind::Other, error),
            }),
            StreamAck::Stored(ack) => Ok(ack.sequence),
        }
    }

    /// Runs a single KV write in the outbox's task when there is one, so the writes of concurrent messages leave
    /// in one write (`crate::outbox`); without one, here. A write whose outcome is unknown (the outbox's task ended
    /// with it unfinished) is the error `lost` makes, as a timeout is.
    async fn through_outbox<T, E>(
        &self,
        write: impl Future<Output = Result<T, E>> + Send + 'static,
        lost: impl FnOnce() -> E,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: Send + 'static,
    {
        match &self.outbox {
            Some(outbox) => outbox.run(write).await.unwrap_or_else(|| Err(lost())),
            None => write.await,
        }
    }

    /// After a CAS write met another revision: reads the key and, when the claim is still ours, adopts the
    /// revision found. `None` when the read itself failed, or answered from before the revision this claim last
    /// wrote: on an R3 bucket a KV read is a direct get any replica may answer, and a follower that has not applied
    /// that write shows an older value (the previous holder's claim) or none. Neither is a takeover, which only
    /// moves the revision on; taken as `Lost` it stopped the renewals (the effect could then be taken over and run
    /// twice) or gave up the `done` write. The callers read again later.
    async fn settle_conflict(&self, held: &Held<'_>) -> Option<Conflict> {
        let entry = self.store.entry(held.key).await.ok()?;
        let written = held.revision.load(Ordering::Acquire);
        if entry.as_ref().is_none_or(|entry| entry.revision < written) {
            return None;
        }
        let found = entry
            .as_ref()
            .filter(|entry| entry.operation == Operation::Put)
            .map(|entry| protocol::parse(&entry.value));
        let verdict = protocol::conflict(found.as_ref(), held.token);
        if verdict == Conflict::Ours
            && let Some(entry) = entry
        {
            held.revision.fetch_max(entry.revision, Ordering::AcqRel);
        }
        Some(verdict)
    }

    /// Deletes a claim whose effect failed, so the retry does not wait out the lease; if this fails the lease
    /// expires.
    async fn release(&self, held: &Held<'_>) {
        for _ in 0..3 {
            let current = held.revision.load(Ordering::Acquire);
            match self
                .store
                .delete_expect_revision(held.key, Some(current))
                .await
            {
                Ok(()) => return,
                Err(err) => {
                    // A renewal may have landed between the load and the delete.
                    if self.settle_conflict(held).await != Some(Conflict::Ours) {
                        tracing::warn!(error = %err, "releasing an idempotency claim failed; it expires with its lease");
                        return;
                    }
                }
            }
        }
    }

    fn pending_value(&self, token: &str) -> Bytes {
        Bytes::from(protocol::pending(token, now_ms()))
    }
}

/// A step of the ledger's protocol, boxed (see `Inner::claim_boxed`).
type Step<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// `Some(decision)` where `entry` records its effect done (a pending claim, a deletion or an unknown value do not).
fn recorded_done(entry: &kv::Entry) -> Option<Option<String>> {
    if entry.operation != Operation::Put {
        return None;
    }
    match protocol::parse(&entry.value) {
        protocol::Value::Done(decision) => Some(decision),
        protocol::Value::Pending(_) | protocol::Value::Unknown => None,
    }
}

/// What [`until_landed`] logs while an outcome's record has not landed.
const OUTCOME_UNRECORDED: &str =
    "outcome published but the ledger has not recorded it yet; still trying";

/// Makes `write` again until it lands, paced and logged by [`DoneRetry`] with `pending`: for a record whose loss
/// would let a later attempt repeat what it records (bounded by the handler's timeout, which drops the future).
async fn until_landed<F, Fut>(pending: &'static str, mut write: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut retry = DoneRetry::new();
    while let Err(error) = write().await {
        retry.after(&error, pending).await;
    }
}

/// The pace of a `done` write that must land (after the effect happened, giving up would let it run again): 20 ms
/// doubling to a second between tries, the error logged at the third failure and every twentieth.
struct DoneRetry {
    delay: Duration,
    failures: u32,
}

impl DoneRetry {
    fn new() -> Self {
        Self {
            delay: Duration::from_millis(20),
            failures: 0,
        }
    }

    async fn after(&mut self, error: &str, message: &'static str) {
        self.failures += 1;
        if self.failures == 3 || self.failures.is_multiple_of(20) {
            tracing::error!(error = %error, failures = self.failures, "{message}");
        }
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(Duration::from_secs(1));
    }
}

/// A claim this attempt holds: the revision moves with each renewal.
struct Held<'a> {
    key: &'a str,
    token: &'a str,
    revision: &'a AtomicU64,
}

fn duration_between(earlier: time::OffsetDateTime, later: time::OffsetDateTime) -> Duration {
    Duration::try_from(later - earlier).unwrap_or(Duration::ZERO)
}

/// This host's wall clock in milliseconds: written into values for a person reading them, and used for the
/// rate limiter's windows and the failure journal; no ledger rule compares it with another host's.
pub(crate) fn now_ms() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        });
    #[cfg(feature = "fault-injection")]
    let ms = ms.saturating_add_signed(SKEW_MS.load(Ordering::Relaxed));
    ms
}

#[cfg(feature = "fault-injection")]
static SKEW_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// `JOB_TEST_CLOCK_SKEW_MS`: makes [`now_ms`] read `skew_ms` off, as on a host whose clock drifted.
#[cfg(feature = "fault-injection")]
pub(crate) fn skew_clock(skew_ms: i64) {
    SKEW_MS.store(skew_ms, Ordering::Relaxed);
}

/// KV keys allow `[-/_=.a-zA-Z0-9]`; anything else becomes `_`.
pub(crate) fn sanitize_token(text: &str) -> String {
    let mut token = String::with_capacity(text.len());
    push_token(&mut token, text);
    token
}

/// Appends [`sanitize_token`]'s form of `text` to `out`.
fn push_token(out: &mut String, text: &str) {
    out.extend(text.chars().map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '_'
        }
    }));
}

/// How long a ledger write waits for its stream ack: the JetStream context's default, which `kv::Store`'s writes
/// waited.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A stream's answer to a publish, as async-nats reads it.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum StreamAck {
    Refused { error: jetstream::Error },
    Stored(jetstream::publish::PublishAck),
}

#[cfg(test)]
mod tests {

    /// A write sent through the outbox's own requests answers as the same write through `kv::Store` does: the
    /// revision, or the error kind the ledger's protocol branches on (a key that exists, a revision that moved on),
    /// and a deleted key created again.
    #[tokio::test]
    async fn writes_through_the_outbox_answer_as_the_kv_apis_do() {
        use super::*;
        let server = testkit::NatsServer::start();
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        let store = js
            .create_key_value(kv::Config {
                bucket: "ledger-writes".to_owned(),
                history: 1,
                ..Default::default()
            })
            .await
            .unwrap();
        let lease = Duration::from_secs(60);
        let outbox = crate::outbox::Outbox::start(client);
        let direct = Ledger::build(js.clone(), store.clone(), "f", lease, None, Some(outbox));
        let through_api = Ledger::build(js, store.clone(), "f", lease, None, None);
        let inner = |ledger: &Ledger| match &ledger.backend {
            Backend::Kv(inner) => inner.clone(),
            #[cfg(feature = "testing")]
            Backend::Memory(_) => unreachable!("a KV ledger"),
        };
        let (direct, through_api) = (inner(&direct), inner(&through_api));
        assert!(direct.direct().is_some() && through_api.direct().is_none());

        for (name, ledger) in [("direct", &direct), ("api", &through_api)] {
            let key = |suffix: &str| format!("{name}-{suffix}");
            let value = Bytes::from_static(b"v");
            let first = ledger.create(&key("a"), value.clone()).await.unwrap();
            let again = ledger.create(&key("a"), value.clone()).await.unwrap_err();
            assert_eq!(
                again.kind(),
                CreateErrorKind::AlreadyExists,
                "{name}: {again}"
            );
            let second = ledger
                .update(&key("a"), value.clone(), first)
                .await
                .unwrap();
            assert_eq!(
                store.entry(key("a")).await.unwrap().unwrap().revision,
                second,
                "{name}"
            );
            let stale = ledger
                .update(&key("a"), value.clone(), first)
                .await
                .unwrap_err();
            assert_eq!(
                stale.kind(),
                UpdateErrorKind::WrongLastRevision,
                "{name}: {stale}"
            );
            let absent = ledger
                .update(&key("never"), value.clone(), second)
                .await
                .unwrap_err();
            assert_eq!(
                absent.kind(),
                UpdateErrorKind::WrongLastRevision,
                "{name}: {absent}"
            );

            store.delete(key("a")).await.unwrap();
            let recreated = ledger.create(&key("a"), value.clone()).await.unwrap();
            assert!(recreated > second, "{name}");

            let put = ledger.put(&key("b"), value.clone()).await.unwrap();
            let overwritten = ledger.put(&key("b"), value.clone()).await.unwrap();
            assert!(overwritten > put, "{name}");
            let entry = store.entry(key("b")).await.unwrap().unwrap();
            assert_eq!(
                (entry.revision, &entry.value[..]),
                (overwritten, &b"v"[..]),
                "{name}"
            );
        }
    }

    /// The keys of effects recorded by earlier releases must still be found: the key is the formula it always was.
    #[test]
    fn a_key_is_the_formula_it_always_was() {
        let formula = |function: &str, event_id: &str, effect: &str| {
            let digest = ring::digest::digest(
                &ring::digest::SHA256,
                format!("{event_id}\0{effect}").as_bytes(),
            );
            let hex: String = digest.as_ref()[..16]
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            format!("{}.{hex}", sanitize_token(function))
        };
        for (function, event_id, effect) in [
            ("welcome", "01J8Z6V5W4", "email:ada@example.com"),
            ("order-confirmation", "", ""),
            ("fn with spaces.and.dots", "id\0with nul", "effect é 例"),
            ("ünïcode*>", "e-1", "send"),
        ] {
            assert_eq!(
                super::key(function, event_id, effect),
                formula(function, event_id, effect)
            );
        }
        // One value written down, so the formula above cannot drift with the code.
        assert_eq!(
            super::key("welcome", "e-1", "send"),
            "welcome.79a67a5fc851f37817f44bf8619271c3"
        );
    }
    use super::*;

    #[test]
    fn tokens_are_sanitized() {
        assert_eq!(sanitize_token("order-confirmation"), "order-confirmation");
        assert_eq!(sanitize_token("a.b c"), "a_b_c");
    }
}
