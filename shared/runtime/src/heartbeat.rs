//! The replica's heartbeat: every `JOB_HEARTBEAT_SECS` the process writes what it is doing to the KV bucket
//! `jetfn-replicas` (key `<function>.<instance>`), so `jetfn status` and the console see each replica (ready,
//! breaker, in flight, paused, what it finished per minute over the last hour) without asking any function.
//! A clean stop deletes the key; a process that dies stops writing and its entry ages out (the bucket's `max_age`),
//! so a hung or partitioned replica disappears by itself.
//!
//! The counts are read, not pushed: the settle path's metrics calls tick a per-process [`Tally`], and the
//! `typed` and `raw` layers hold an [`InFlight`] guard while a message is processed, so the consumer loop is not
//! touched. One tally per process: a process's consumers (indexing has three) are one replica.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_nats::jetstream;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::breaker::Breaker;
use crate::health::Health;

/// The bucket the heartbeats live in (`infra/nats/kv/jetfn-replicas.json`).
pub const BUCKET: &str = "jetfn-replicas";
/// How many minutes of counts a heartbeat carries.
pub const MINUTES: usize = 60;

/// One function process, as its heartbeat describes it (what `ops::replicas::list` reads back).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    /// The function (its `jetfn.function`).
    pub function: String,
    /// Unique per process (host, pid and a random part), a KV-key-safe token.
    pub instance: String,
    /// The host name (a pod's name on Kubernetes).
    pub host: String,
    /// The runtime's version.
    pub version: String,
    /// When the process started.
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    /// The heartbeat's time.
    #[serde(with = "time::serde::rfc3339")]
    pub seen: OffsetDateTime,
    /// What `/readyz` would answer: connected and every consumer bound.
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
    /// Dead-lettered (or terminated without a record, for a raw consumer that keeps none).
    pub failed: u64,
    /// Handed back for a later attempt (a delayed NAK).
    pub retried: u64,
}

/// Per-minute counts of what this process finished, and how many messages it is processing now.
#[derive(Debug, Default)]
pub struct Tally {
    /// (minute since the epoch, succeeded, failed, retried), oldest first, at most [`MINUTES`].
    minutes: Mutex<VecDeque<(i64, u64, u64, u64)>>,
    in_flight: AtomicU64,
}

/// What became of one attempt.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Finished {
    Succeeded,
    Failed,
    Retried,
}

impl Tally {
    pub(crate) fn count(&self, finished: Finished) {
        self.count_at(finished, OffsetDateTime::now_utc());
    }

    fn count_at(&self, finished: Finished, at: OffsetDateTime) {
        let minute = at.unix_timestamp().div_euclid(60);
        let mut minutes = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        if minutes.back().is_none_or(|last| last.0 < minute) {
            minutes.push_back((minute, 0, 0, 0));
            while minutes.len() > MINUTES {
                minutes.pop_front();
            }
        }
        // A count for an earlier minute than the last (a clock step back) goes to the last: nothing is lost.
        let last = minutes.back_mut().expect("just pushed");
        match finished {
            Finished::Succeeded => last.1 += 1,
            Finished::Failed => last.2 += 1,
            Finished::Retried => last.3 += 1,
        }
    }

    /// The last [`MINUTES`] minutes up to `now`'s, oldest first, minutes without events included as zeros.
    pub fn minutes(&self, now: OffsetDateTime) -> Vec<Minute> {
        let current = now.unix_timestamp().div_euclid(60);
        let minutes = self.minutes.lock().unwrap_or_else(PoisonError::into_inner);
        (current - MINUTES as i64 + 1..=current)
            .map(|minute| {
                let (succeeded, failed, retried) = minutes
                    .iter()
                    .find(|entry| entry.0 == minute)
                    .map_or((0, 0, 0), |entry| (entry.1, entry.2, entry.3));
                Minute {
                    start: OffsetDateTime::from_unix_timestamp(minute * 60)
                        .unwrap_or(OffsetDateTime::UNIX_EPOCH),
                    succeeded,
                    failed,
                    retried,
                }
            })
            .collect()
    }

    /// Messages being processed now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Held while one message is processed (decode to settle).
#[derive(Debug)]
pub(crate) struct InFlight;

impl Drop for InFlight {
    fn drop(&mut self) {
        STATE.tally.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Marks one message in flight until the guard drops.
pub(crate) fn in_flight() -> InFlight {
    STATE.tally.in_flight.fetch_add(1, Ordering::Relaxed);
    InFlight
}

/// Counts a finished attempt in this process's tally.
pub(crate) fn count(finished: Finished) {
    STATE.tally.count(finished);
}

/// What the heartbeat reads: the tally, the breakers and the consumers of this process.
#[derive(Default)]
struct State {
    tally: Tally,
    breakers: Mutex<Vec<Weak<Breaker>>>,
    consumers: Mutex<Vec<jetstream::consumer::PullConsumer>>,
}

static STATE: std::sync::LazyLock<State> = std::sync::LazyLock::new(State::default);

/// Lets the heartbeat say whether this breaker is open.
pub(crate) fn watch_breaker(breaker: &Arc<Breaker>) {
    STATE
        .breakers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Arc::downgrade(breaker));
}

/// Lets the heartbeat say whether this consumer is paused on the server.
pub(crate) fn watch_consumer(consumer: &jetstream::consumer::PullConsumer) {
    STATE
        .consumers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(consumer.clone());
}

/// A KV-key-safe token unique to this process: host, pid and a random part (a restarted pod keeps its host name
/// and often its pid 1).
fn instance(host: &str) -> String {
    let safe: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(48)
        .collect();
    let random = &uuid::Uuid::now_v7().simple().to_string()[24..];
    format!("{safe}-{}-{random}", std::process::id())
}

fn host() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Writes this replica's heartbeat every `every` until `stop`, then returns; [`Beating::stop`] deletes the key.
pub(crate) struct Beating {
    task: tokio::task::JoinHandle<Option<(jetstream::kv::Store, String)>>,
}

/// Starts the heartbeat of `function` (none when `every` is zero).
pub(crate) fn start(
    js: jetstream::Context,
    function: &str,
    health: Health,
    every: Duration,
    stop: CancellationToken,
) -> Option<Beating> {
    if every.is_zero() {
        return None;
    }
    let host = host();
    let mut replica = Replica {
        function: function.to_owned(),
        instance: instance(&host),
        host,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started: OffsetDateTime::now_utc(),
        seen: OffsetDateTime::now_utc(),
        ready: false,
        breaker_open: false,
        in_flight: 0,
        paused: false,
        minutes: Vec::new(),
    };
    let key = format!("{}.{}", replica.function, replica.instance);
    let task = tokio::spawn(async move {
        let mut store = None;
        let mut warned = false;
        loop {
            if store.is_none() {
                // Not connected yet (a wrong CA, a server still down), the lookup waits out the request timeout;
                // a stop must not wait with it.
                let found = tokio::select! {
                    () = stop.cancelled() => break,
                    found = js.get_key_value(BUCKET) => found,
                };
                match found {
                    Ok(found) => store = Some(found),
                    Err(err) if !warned => {
                        warned = true;
                        tracing::warn!(bucket = BUCKET, error = %err, "replica bucket not found; this replica will not be listed (run `jetfn infra apply`)");
                    }
                    Err(_) => {}
                }
            }
            if let Some(store) = &store {
                // A beat against a server that does not answer must not hold up the shutdown.
                let beat = async {
                    fill(&mut replica, &health).await;
                    match serde_json::to_vec(&replica) {
                        Ok(value) => store
                            .put(&key, value.into())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        Err(err) => Err(err.to_string()),
                    }
                };
                let written = tokio::select! {
                    () = stop.cancelled() => break,
                    written = beat => written,
                };
                match written {
                    Ok(()) => warned = false,
                    Err(err) if !warned => {
                        warned = true;
                        tracing::warn!(bucket = BUCKET, error = %err, "heartbeat not written");
                    }
                    Err(_) => {}
                }
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(every) => {}
            }
        }
        store.map(|store| (store, key))
    });
    Some(Beating { task })
}

impl Beating {
    /// Stops beating and deletes the key, so the replica leaves the listing at once.
    pub(crate) async fn stop(self) {
        let Ok(Some((store, key))) = self.task.await else {
            return;
        };
        // Bounded: a server that does not answer lets the entry expire instead of holding up the exit.
        match tokio::time::timeout(Duration::from_secs(2), store.delete(&key)).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(bucket = BUCKET, error = %err, "heartbeat not deleted; it expires by itself");
            }
            Err(_) => {
                tracing::warn!(
                    bucket = BUCKET,
                    "heartbeat not deleted in time; it expires by itself"
                );
            }
        }
    }
}

async fn fill(replica: &mut Replica, health: &Health) {
    let now = OffsetDateTime::now_utc();
    replica.seen = now;
    replica.ready = health.ready();
    replica.breaker_open = STATE
        .breakers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .any(|breaker| breaker.is_open());
    replica.in_flight = STATE.tally.in_flight();
    replica.minutes = STATE.tally.minutes(now);
    let consumers: Vec<_> = STATE
        .consumers
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut paused = false;
    for mut consumer in consumers {
        // The server's own word; on an error keep what was seen last.
        match consumer.info().await {
            Ok(info) => paused |= info.paused,
            Err(_) => paused |= replica.paused,
        }
    }
    replica.paused = paused;
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    #[test]
    fn minutes_are_the_last_hour_oldest_first_with_gaps_as_zeros() {
        let tally = Tally::default();
        let at = datetime!(2026-11-28 10:00:30 UTC);
        tally.count_at(Finished::Succeeded, at - time::Duration::minutes(90));
        tally.count_at(Finished::Succeeded, at - time::Duration::minutes(2));
        tally.count_at(Finished::Succeeded, at);
        tally.count_at(Finished::Failed, at);
        tally.count_at(Finished::Retried, at + time::Duration::seconds(10));
        let minutes = tally.minutes(at + time::Duration::seconds(20));
        assert_eq!(minutes.len(), MINUTES);
        assert_eq!(minutes[59].start, datetime!(2026-11-28 10:00 UTC));
        assert_eq!(
            (
                minutes[59].succeeded,
                minutes[59].failed,
                minutes[59].retried
            ),
            (1, 1, 1)
        );
        assert_eq!(minutes[57].succeeded, 1);
        assert_eq!(minutes[0].start, datetime!(2026-11-28 09:01 UTC));
        assert_eq!(
            minutes.iter().map(|m| m.succeeded).sum::<u64>(),
            2,
            "the 90-minute-old one is gone"
        );
    }

    #[test]
    fn instances_are_key_tokens() {
        let id = instance("pod.example/a b");
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{id}"
        );
        assert_ne!(id, instance("pod.example/a b"));
    }
}
