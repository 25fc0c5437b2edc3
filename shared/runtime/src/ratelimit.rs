//! A rate limit shared by every replica: at most `limit` grants per key in any window of `window`, counted in NATS
//! KV and timed by the server's clock alone.
//!
//! Each key holds a sliding-window log: the server times of the last `limit` grants that counted. A grant is a
//! compare-and-set write of the log, and whether it counts is decided after the fact from the time the server
//! stamped on that very write (the entry's `created`): it counts when fewer than `limit` grants are logged or the
//! oldest of the last `limit` is at least `window` older. Every replica computes the same answer from the same
//! entries, so:
//! - no local clock takes part: a replica whose clock is off by minutes writes too early (a write that does not
//!   count, after which it waits the exact gap the server's times give) or too late (slower), never over the limit;
//! - a replica killed after a write that counted leaves a grant unused: the rate falls below the limit, never
//!   above; a write whose answer was lost counts the same way, as it would had it been used;
//! - concurrent writers are ordered by the CAS on the key's revision; the loser reads again.
//!
//! The cost is three KV operations per grant (read, write, read back), the write an fsync on a node with
//! `sync_interval: always`: meant for external limits (an SMTP provider's tens per second), not thousands.
//! A leader change to a node whose clock is behind stalls grants for at most that difference (its writes look
//! too early), and never lets more through.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::JobError;

/// A limit such as "3 contact forms per sender per 10 minutes" or "10 emails per second for the function".
#[derive(Clone)]
pub struct RateLimiter {
    store: kv::Store,
    name: String,
    limit: u64,
    window: Duration,
    /// The server's clock minus this process's, in ms, as last seen on one of its own writes: only to sleep
    /// instead of writing when a grant is surely too early. `i64::MIN` until known.
    offset_ms: std::sync::Arc<AtomicI64>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

/// What a key holds: the grants that counted before this write (server ms and the writer's token, oldest first,
/// at most `limit`), and this write's token.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Log {
    #[serde(rename = "g", default)]
    granted: Vec<(i64, String)>,
    #[serde(rename = "t", default)]
    token: String,
}

/// How many grants a limit allows per window, and the window: `10/1s`, `600/1m`, `3/10m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// Grants per window.
    pub limit: u64,
    /// The window.
    pub window: Duration,
}

impl std::str::FromStr for Limit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (count, window) = text.split_once('/').ok_or_else(|| {
            format!("expected `<count>/<duration>` such as `10/1s`, got {text:?}")
        })?;
        let limit: u64 = count
            .trim()
            .parse()
            .map_err(|_| format!("the count of {text:?} is not a whole number"))?;
        let window = humantime::parse_duration(window.trim())
            .map_err(|err| format!("the window of {text:?}: {err}"))?;
        if limit == 0 {
            return Err(format!("{text:?}: the count must be at least 1"));
        }
        if window < Duration::from_millis(1) {
            return Err(format!("{text:?}: the window must be at least 1 ms"));
        }
        Ok(Self { limit, window })
    }
}

/// By hand, so the error names what is wrong (its variable is added by `config::from_env`).
impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}",
            self.limit,
            humantime::format_duration(self.window)
        )
    }
}

impl RateLimiter {
    /// A limiter on an existing bucket (`infra/nats/kv/jetfn-ratelimit.json`); `name` separates limits.
    pub fn new(store: kv::Store, name: &str, limit: u64, window: Duration) -> Self {
        Self {
            store,
            name: crate::ledger::sanitize_token(name),
            limit: limit.max(1),
            window: window.max(Duration::from_millis(1)),
            offset_ms: std::sync::Arc::new(AtomicI64::new(i64::MIN)),
        }
    }

    /// Binds the bucket by name.
    ///
    /// # Errors
    /// The bucket does not exist (run `jetfn infra apply`), or keeps entries for less than the window (a log
    /// that ages out early would let more through).
    pub async fn bind(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        name: &str,
        limit: u64,
        window: Duration,
    ) -> anyhow::Result<Self> {
        let store = js
            .get_key_value(bucket)
            .await
            .map_err(|err| anyhow::anyhow!("KV bucket {bucket}: {err}"))?;
        if let Ok(status) = store.status().await {
            let max_age = status.max_age();
            anyhow::ensure!(
                max_age.is_zero() || max_age >= window,
                "rate limit {name}: the window ({}) is longer than KV bucket {bucket} keeps an entry ({})",
                humantime::format_duration(window),
                humantime::format_duration(max_age)
            );
        }
        Ok(Self::new(store, name, limit, window))
    }

    /// The limit as `<count>/<window>`.
    pub fn limit(&self) -> Limit {
        Limit {
            limit: self.limit,
            window: self.window,
        }
    }

    /// Takes a grant for `key` if the window has one now (for example a sender's address; it is hashed, never
    /// stored in clear). Returns false when the last `limit` grants all lie within the window: the caller refuses
    /// rather than waits (an abuse limit).
    ///
    /// # Errors
    /// A KV error, as a transient job error.
    pub async fn take(&self, key: &str) -> Result<bool, JobError> {
        let kv_key = self.key(key);
        for _ in 0..20 {
            match self.attempt(&kv_key, false).await? {
                Attempt::Granted => return Ok(true),
                Attempt::Early(_) | Attempt::Unknown => return Ok(false),
                Attempt::Raced => tokio::time::sleep(jitter()).await,
            }
        }
        Err(JobError::transient(anyhow::anyhow!(
            "rate limit counter kept racing"
        )))
    }

    /// Waits for a grant for `key` (`""`: the limit as a whole, key `<name>.all`). Waiting costs one KV read and at most one write
    /// per grant another replica takes; it never fails the caller for being over the limit.
    ///
    /// # Errors
    /// A KV error, as a transient job error.
    pub async fn acquire(&self, key: &str) -> Result<(), JobError> {
        let kv_key = self.key(key);
        loop {
            match self.attempt(&kv_key, true).await? {
                Attempt::Granted => return Ok(()),
                Attempt::Early(wait) => tokio::time::sleep(wait).await,
                Attempt::Raced | Attempt::Unknown => tokio::time::sleep(jitter()).await,
            }
        }
    }

    fn key(&self, key: &str) -> String {
        if key.is_empty() {
            return format!("{}.all", self.name);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut name = String::with_capacity(self.name.len() + 1 + 24);
        name.push_str(&self.name);
        name.push('.');
        events::hex::push_lower(&mut name, &digest.as_ref()[..12]);
        name
    }

    /// One read, one CAS write, one read back.
    async fn attempt(&self, kv_key: &str, may_sleep: bool) -> Result<Attempt, JobError> {
        let transient = |what: &str, err: &dyn std::fmt::Display| {
            JobError::transient(anyhow::anyhow!("rate limit {what}: {err}"))
        };
        let entry = self
            .store
            .entry(kv_key)
            .await
            .map_err(|err| transient("read", &err))?;
        let granted = self.granted_after(entry.as_ref());
        let full = granted.len() >= self.limit_len();
        let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        // The oldest of the last `limit` grants; a grant counts once the server's clock is a window past it.
        let oldest = full.then(|| granted[granted.len() - self.limit_len()].0);
        if let (true, Some(oldest)) = (may_sleep, oldest) {
            let offset = self.offset_ms.load(Ordering::Relaxed);
            if offset != i64::MIN {
                let server_now = local_ms().saturating_add(offset);
                let due = oldest.saturating_add(window_ms);
                if server_now < due {
                    return Ok(Attempt::Early(ms(due - server_now)));
                }
            }
        }
        let token = events::hex::random_lower(8);
        let log = Log {
            granted,
            token: token.clone(),
        };
        let value = Bytes::from(serde_json::to_vec(&log).expect("a log serializes"));
        let written = match &entry {
            Some(entry) => self.store.update(kv_key, value, entry.revision).await.ok(),
            None => self.store.create(kv_key, value).await.ok(),
        };
        let Some(revision) = written else {
            return Ok(Attempt::Raced);
        };
        let (back, before) = self.read_back(kv_key, revision).await?;
        if back.revision == revision {
            let created = server_ms(&back);
            self.offset_ms
                .store(created.saturating_sub(before), Ordering::Relaxed);
            return Ok(match oldest {
                Some(oldest) if created - oldest < window_ms => {
                    Attempt::Early(ms(oldest + window_ms - created))
                }
                _ => Attempt::Granted,
            });
        }
        // Others wrote since: the log they carried forward names this write's token if it counted (a write
        // drops out of the log only a whole window after it, far longer than this read took).
        let carried = self.granted_after(Some(&back));
        Ok(if carried.iter().any(|(_, t)| *t == token) {
            Attempt::Granted
        } else {
            Attempt::Unknown
        })
    }

    /// Reads `kv_key` at `revision` or later, with the local time just before the read that returned it. A KV
    /// read is a direct get, which any replica of an R3 bucket may answer, and a follower that has not applied the
    /// write yet answers with an older revision or none; a revision below the one just written can only be such a
    /// stale answer, so it is read again. Taken as the answer, it once turned a sender's first grant into
    /// "unknown", refused (tests/it/rate_limits.rs).
    ///
    /// # Errors
    /// A KV error, or no replica caught up within about 1.5 s: a transient job error.
    async fn read_back(&self, kv_key: &str, revision: u64) -> Result<(kv::Entry, i64), JobError> {
        let mut pause = Duration::from_millis(1);
        for _ in 0..READ_BACK_TRIES {
            let before = local_ms();
            let back = self.store.entry(kv_key).await.map_err(|err| {
                JobError::transient(anyhow::anyhow!("rate limit read back: {err}"))
            })?;
            if let Some(back) = back.filter(|back| back.revision >= revision) {
                return Ok((back, before));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        Err(JobError::transient(anyhow::anyhow!(
            "rate limit read back: no replica answered with revision {revision} or later"
        )))
    }

    fn limit_len(&self) -> usize {
        usize::try_from(self.limit).unwrap_or(usize::MAX)
    }

    /// The grants that counted up to and including `entry`: its log, plus itself when it counted.
    fn granted_after(&self, entry: Option<&kv::Entry>) -> Vec<(i64, String)> {
        let Some(entry) = entry.filter(|entry| entry.operation == kv::Operation::Put) else {
            return Vec::new();
        };
        // An unreadable value (the fixed-window counters of an older version) holds no grant of this log.
        let Ok(Log { mut granted, token }) = serde_json::from_slice::<Log>(&entry.value) else {
            return Vec::new();
        };
        let window_ms = i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX);
        let created = server_ms(entry);
        let keep = self.limit_len();
        let counted =
            granted.len() < keep || created - granted[granted.len() - keep].0 >= window_ms;
        if counted && !token.is_empty() {
            granted.push((created, token));
        }
        if granted.len() > keep {
            granted.drain(..granted.len() - keep);
        }
        granted
    }
}

/// Reads of a write just made before it counts as lost: 1 + 2 + 4 + ... ms, then 100 ms each, about 1.5 s.
const READ_BACK_TRIES: u32 = 20;

enum Attempt {
    Granted,
    /// Too early by the server's clock; a grant can come after this wait.
    Early(Duration),
    /// The CAS lost to another writer.
    Raced,
    /// The write landed but whether it counted cannot be told: taken as not counted.
    Unknown,
}

fn server_ms(entry: &kv::Entry) -> i64 {
    i64::try_from(entry.created.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

fn local_ms() -> i64 {
    i64::try_from(crate::ledger::now_ms()).unwrap_or(i64::MAX)
}

fn ms(value: i64) -> Duration {
    Duration::from_millis(u64::try_from(value.max(1)).unwrap_or(1))
}

/// A few milliseconds, different per call, so racing replicas fall out of step.
fn jitter() -> Duration {
    use ring::rand::SecureRandom as _;
    let mut byte = [0u8; 1];
    let _ = ring::rand::SystemRandom::new().fill(&mut byte);
    Duration::from_millis(1 + u64::from(byte[0] % 10))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_and_name_what_is_wrong() {
        assert_eq!(
            "10/1s".parse(),
            Ok(Limit {
                limit: 10,
                window: Duration::from_secs(1)
            })
        );
        assert_eq!(
            " 3 / 10m ".parse::<Limit>().map(|l| l.window),
            Ok(Duration::from_secs(600))
        );
        assert!(
            "10".parse::<Limit>()
                .unwrap_err()
                .contains("<count>/<duration>")
        );
        assert!(
            "x/1s"
                .parse::<Limit>()
                .unwrap_err()
                .contains("whole number")
        );
        assert!("0/1s".parse::<Limit>().unwrap_err().contains("at least 1"));
        assert!("5/soon".parse::<Limit>().unwrap_err().contains("window"));
    }
}
