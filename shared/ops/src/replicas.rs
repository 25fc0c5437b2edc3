//! The live replicas of every function, from the heartbeats the runtime writes (`runtime::heartbeat`).
//!
//! Each function process writes one entry in the KV bucket `jetfn-replicas` (defined in
//! `infra/nats/kv/jetfn-replicas.json`), key `<function>.<instance>`, every few seconds: its readiness, breaker,
//! in-flight count, and what it finished per minute over the last hour. A replica that stops cleanly deletes its
//! key; one that dies stops writing and its entry ages out of the bucket (`max_age`), so the bucket holds only
//! replicas that were alive a few heartbeats ago. Reading it needs no request to any function: a function that is
//! hung or partitioned away simply disappears.

use anyhow::Context as _;
use async_nats::jetstream;
use futures::TryStreamExt as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The bucket the heartbeats live in.
pub const BUCKET: &str = "jetfn-replicas";
/// How many minutes of counts a heartbeat carries.
pub const MINUTES: usize = 60;

/// One function process, as its last heartbeat described it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The function (its `jetfn.function`).
    pub function: String,
    /// Unique per process (host, pid and a random part), a KV-key-safe token.
    pub instance: String,
    /// The host name (a pod's name on Kubernetes).
    pub host: String,
    /// The binary's version.
    pub version: String,
    /// When the process started.
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    /// The heartbeat's time.
    #[serde(with = "time::serde::rfc3339")]
    pub seen: OffsetDateTime,
    /// What `/readyz` would answer: every consumer bound, not draining.
    pub ready: bool,
    /// A circuit breaker of one of its consumers is open.
    pub breaker_open: bool,
    /// Events being handled now.
    pub in_flight: u64,
    /// A consumer of it is paused on the server, as the replica last saw it.
    pub paused: bool,
    /// The last [`MINUTES`] minutes, oldest first, one entry per minute: events this replica finished.
    pub minutes: Vec<Minute>,
}

/// What one replica finished in one minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minute {
    /// The minute's start.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// Acked as done.
    pub succeeded: u64,
    /// Dead-lettered.
    pub failed: u64,
    /// Handed back for a later attempt (a delayed NAK).
    pub retried: u64,
}

/// The KV key of a replica: `<function>.<instance>`.
pub fn key(function: &str, instance: &str) -> String {
    format!("{function}.{instance}")
}

/// Every live replica, by function and instance. Entries expire by themselves a few heartbeats after a replica
/// stops; an entry that cannot be read (another version's shape) is left out.
///
/// # Errors
/// No `jetfn-replicas` bucket (run `jetfn infra apply`), or the server did not answer.
pub async fn list(js: &jetstream::Context) -> anyhow::Result<Vec<Replica>> {
    let store = js
        .get_key_value(BUCKET)
        .await
        .with_context(|| format!("the {BUCKET} bucket (run `jetfn infra apply`)"))?;
    let mut keys: Vec<String> = match store.keys().await {
        Ok(keys) => keys.try_collect().await?,
        Err(err) => return Err(err).context("listing the replicas"),
    };
    keys.sort();
    let mut replicas = Vec::new();
    for key in keys {
        // Deleted or expired between the listing and the read: that replica is gone.
        let Some(value) = store
            .get(&key)
            .await
            .with_context(|| format!("reading {key}"))?
        else {
            continue;
        };
        if let Ok(replica) = serde_json::from_slice::<Replica>(&value) {
            replicas.push(replica);
        }
    }
    Ok(replicas)
}

/// Replicas of one function: how many, how many ready, how many with a breaker open.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Live replicas.
    pub count: usize,
    /// Of them, ready.
    pub ready: usize,
    /// Of them, with a breaker open.
    pub breaker_open: usize,
}

/// [`Summary`] per function, by function name.
pub fn summarize(replicas: &[Replica]) -> std::collections::BTreeMap<String, Summary> {
    let mut by_function = std::collections::BTreeMap::<String, Summary>::new();
    for replica in replicas {
        let summary = by_function.entry(replica.function.clone()).or_default();
        summary.count += 1;
        summary.ready += usize::from(replica.ready);
        summary.breaker_open += usize::from(replica.breaker_open);
    }
    by_function
}
