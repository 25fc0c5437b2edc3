//! A rate limit counted in NATS KV, shared by every replica: at most `limit` events per key per window.
//!
//! Fixed windows: the key of a counter is the hashed subject key plus the window's index, so old windows simply
//! age out with the bucket's `max_age`. Counting is a compare-and-set loop, so concurrent replicas never lose an
//! increment.

use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;

use crate::JobError;
use crate::ledger::now_ms;

/// A limit such as "3 contact forms per sender per 10 minutes".
#[derive(Clone)]
pub struct RateLimiter {
    store: kv::Store,
    name: String,
    limit: u64,
    window: Duration,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("name", &self.name)
            .field("limit", &self.limit)
            .field("window", &self.window)
            .finish()
    }
}

impl RateLimiter {
    /// A limiter on an existing bucket (`infra/nats/kv/jetfn-ratelimit.json`); `name` separates limits.
    pub fn new(store: kv::Store, name: &str, limit: u64, window: Duration) -> Self {
        Self {
            store,
            name: crate::ledger::sanitize_token(name),
            limit,
            window: window.max(Duration::from_secs(1)),
        }
    }

    /// Binds the bucket by name.
    ///
    /// # Errors
    /// The bucket does not exist (run `jetfn infra apply`).
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
        Ok(Self::new(store, name, limit, window))
    }

    /// Takes one slot for `key` (for example a sender's address; it is hashed, never stored in clear).
    /// Returns false when the window's slots are used up.
    ///
    /// # Errors
    /// A KV error, as a transient job error.
    pub async fn take(&self, key: &str) -> Result<bool, JobError> {
        let window_ms = u64::try_from(self.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let hex: String = digest.as_ref()[..12]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let kv_key = format!("{}.{hex}.{}", self.name, now_ms() / window_ms);
        for _ in 0..20 {
            let entry =
                self.store.entry(&kv_key).await.map_err(|err| {
                    JobError::transient(anyhow::anyhow!("rate limit read: {err}"))
                })?;
            let (count, revision) = match &entry {
                Some(entry) if entry.operation == kv::Operation::Put => (
                    std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|text| text.parse::<u64>().ok())
                        .unwrap_or(0),
                    Some(entry.revision),
                ),
                _ => (0, None),
            };
            if count >= self.limit {
                return Ok(false);
            }
            let value = Bytes::from((count + 1).to_string());
            let written = match revision {
                Some(revision) => self.store.update(&kv_key, value, revision).await.is_ok(),
                None => self.store.create(&kv_key, value).await.is_ok(),
            };
            if written {
                return Ok(true);
            }
        }
        Err(JobError::transient(anyhow::anyhow!(
            "rate limit counter kept racing"
        )))
    }
}
