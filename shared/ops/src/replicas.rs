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
use serde::Serialize;

/// One definition of the heartbeat, shared with the runtime that writes it.
pub use runtime::heartbeat::{BUCKET, MINUTES, Minute, Replica};

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
    // The keys from the stream's subjects (stream info, which a viewer may read) rather than a watcher, which
    // would need a consumer on the bucket; each value by DIRECT.GET.
    let stream = js
        .get_stream_no_info(format!("KV_{BUCKET}"))
        .await
        .context("listing the replicas")?;
    let prefix = format!("$KV.{BUCKET}.");
    let mut keys: Vec<String> = stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .context("listing the replicas")?
        .try_collect::<Vec<(String, usize)>>()
        .await
        .context("listing the replicas")?
        .into_iter()
        .filter_map(|(subject, _)| subject.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    keys.sort();
    let mut replicas = Vec::new();
    for key in keys {
        // Deleted (a clean stop) or expired between the listing and the read: that replica is gone.
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
