//! The idempotency ledger: a side effect keyed by (function, event id, effect) runs at most once across
//! redeliveries, re-publishes and concurrent replicas.
//!
//! Protocol, on a KV bucket with history 1:
//! 1. `create(key, "pending <owner> <ms>")`: compare-and-set, so exactly one attempt claims the effect.
//! 2. The claimant runs the effect. On success it CAS-updates the key to `done <ms>`; on failure it deletes the
//!    claim so the next attempt can run it.
//! 3. Another attempt that finds `done` skips the effect. One that finds a fresh `pending` backs off (a replica
//!    is running it now). One that finds a `pending` older than the lease takes it over with a CAS update.
//!
//! **The window no queue can close:** a process that dies after the effect happened (the SMTP server said 250)
//! and before step 2 recorded `done` leaves a stale claim. After the lease the effect runs again. The window is
//! one KV write long; shrinking it further needs the downstream system to deduplicate (the `Message-ID` an email
//! carries is derived from the same key, so a receiving system can).

use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation};
use bytes::Bytes;

use crate::JobError;

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
    store: kv::Store,
    function: String,
    owner: String,
    lease: Duration,
}

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
    Claimed(u64),
    Done,
    Busy(Duration),
}

impl Ledger {
    /// A ledger for `function` on an existing bucket.
    pub fn new(store: kv::Store, function: &str, lease: Duration) -> Self {
        Self {
            backend: Backend::Kv(std::sync::Arc::new(Inner {
                store,
                function: function.to_owned(),
                owner: uuid::Uuid::now_v7().simple().to_string(),
                lease,
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
        match &self.backend {
            Backend::Kv(inner) => inner.once(key, effect).await,
            #[cfg(feature = "testing")]
            Backend::Memory(memory) => memory.once(key, effect).await,
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

/// `<function>.<first 16 bytes of sha256(event id, effect), hex>`.
pub(crate) fn key(function: &str, event_id: &str, effect: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA256,
        format!("{event_id}\0{effect}").as_bytes(),
    );
    let hex: String = digest.as_ref()[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{}.{hex}", sanitize_token(function))
}

impl Inner {
    async fn once<T, F, Fut>(&self, key: &str, effect: F) -> Result<Effect<T>, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, JobError>>,
    {
        let revision = match self.claim(key).await? {
            Claim::Claimed(revision) => revision,
            Claim::Done => return Ok(Effect::AlreadyDone),
            Claim::Busy(remaining) => {
                return Err(JobError::retry_after(
                    anyhow::anyhow!("side effect is being performed by another attempt"),
                    remaining.max(Duration::from_secs(1)),
                ));
            }
        };
        let _window = crate::fault::effect_window(key);
        match effect().await {
            Ok(value) => {
                crate::fault::before_done().await;
                self.mark_done(key, revision).await?;
                Ok(Effect::Done(value))
            }
            Err(err) => {
                // Release the claim so the retry does not wait out the lease; if this fails the lease expires.
                if let Err(release) = self.store.delete_expect_revision(key, Some(revision)).await {
                    tracing::warn!(error = %release, "releasing an idempotency claim failed; it expires with its lease");
                }
                Err(err)
            }
        }
    }

    async fn claim(&self, key: &str) -> Result<Claim, JobError> {
        for _ in 0..5 {
            match self.store.create(key, self.pending_value()).await {
                Ok(revision) => return Ok(Claim::Claimed(revision)),
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
            match parse_value(&entry.value) {
                Value::Done => return Ok(Claim::Done),
                Value::Pending(at_ms) => {
                    let age = Duration::from_millis(now_ms().saturating_sub(at_ms));
                    if age < self.lease {
                        return Ok(Claim::Busy(self.lease - age));
                    }
                    tracing::warn!(
                        age_secs = age.as_secs(),
                        "taking over a stale idempotency claim: the effect may have run once already"
                    );
                    match self
                        .store
                        .update(key, self.pending_value(), entry.revision)
                        .await
                    {
                        Ok(revision) => return Ok(Claim::Claimed(revision)),
                        Err(_) => continue,
                    }
                }
                Value::Unknown => {
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

    async fn mark_done(&self, key: &str, revision: u64) -> Result<(), JobError> {
        let value = Bytes::from(format!("done {}", now_ms()));
        let mut delay = Duration::from_millis(50);
        let mut last_error = None;
        for _ in 0..6 {
            match self.store.update(key, value.clone(), revision).await {
                Ok(_) => return Ok(()),
                Err(err) => {
                    last_error = Some(err.to_string());
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        // The effect happened but is not recorded: a retry after the lease would repeat it. Say so loudly.
        tracing::error!(error = ?last_error, "side effect done but the ledger could not record it");
        Err(JobError::transient(anyhow::anyhow!(
            "ledger could not record a completed effect"
        )))
    }

    fn pending_value(&self) -> Bytes {
        Bytes::from(format!("pending {} {}", self.owner, now_ms()))
    }
}

enum Value {
    Pending(u64),
    Done,
    Unknown,
}

fn parse_value(value: &[u8]) -> Value {
    let text = std::str::from_utf8(value).unwrap_or_default();
    let mut parts = text.split(' ');
    match parts.next() {
        Some("done") => Value::Done,
        Some("pending") => parts
            .nth(1)
            .and_then(|ms| ms.parse().ok())
            .map_or(Value::Unknown, Value::Pending),
        _ => Value::Unknown,
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// KV keys allow `[-/_=.a-zA-Z0-9]`; anything else becomes `_`.
pub(crate) fn sanitize_token(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse() {
        assert!(matches!(parse_value(b"done 12"), Value::Done));
        assert!(matches!(parse_value(b"pending abc 42"), Value::Pending(42)));
        assert!(matches!(parse_value(b"garbage"), Value::Unknown));
    }

    #[test]
    fn tokens_are_sanitized() {
        assert_eq!(sanitize_token("order-confirmation"), "order-confirmation");
        assert_eq!(sanitize_token("a.b c"), "a_b_c");
    }
}
