//! The server's clock, for rules that compare it with the time the server stamped on a stored message (a batch
//! record's write, a ledger claim's): a host's own clock may be minutes off, and a rule judged by it abandons a
//! live batch or takes over a live claim.
//!
//! Read from the `ts` of the stream's `STREAM.INFO` answer (the answering server's clock; async-nats does not
//! deserialize it): the stream's leader answers that request, and the leader is what stamps each write, so both
//! times come from one clock. Nothing is written, so reading it needs no key of the caller's own, and no
//! follower's older copy of anything is involved.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::response::Response;
use serde::Deserialize;
use time::OffsetDateTime;

/// Why the server's clock could not be read. Never a time: a caller deciding by it must not decide.
#[derive(Debug, thiserror::Error)]
#[error("reading the server's clock (STREAM.INFO of {stream}): {reason}")]
pub struct ClockError {
    stream: String,
    reason: String,
}

/// The part of a `STREAM.INFO` answer read here.
#[derive(Deserialize)]
struct Stamp {
    #[serde(with = "time::serde::rfc3339")]
    ts: OffsetDateTime,
}

/// The time now by the server that leads `stream` (for a KV bucket, `kv::Store::stream_name`).
///
/// # Errors
/// [`ClockError`] when the request fails or times out, the server answers with a JetStream API error (no such
/// stream, no leader), or its answer carries no `ts` (a server that does not send it).
pub async fn server_now(
    js: &jetstream::Context,
    stream: &str,
) -> Result<OffsetDateTime, ClockError> {
    let error = |reason: String| ClockError {
        stream: stream.to_owned(),
        reason,
    };
    let answer: Response<Stamp> = js
        .request(format!("STREAM.INFO.{stream}"), &serde_json::json!({}))
        .await
        .map_err(|err| error(err.to_string()))?;
    match answer {
        Response::Ok(stamp) => Ok(stamp.ts),
        Response::Err { error: err } => Err(error(err.to_string())),
    }
}

/// How long a learned offset is used before the server is asked again. A reading goes stale when the stream's
/// leader moves to a node with another clock or this host's clock is stepped; a stale offset can make its user
/// late, and this bounds by how much (the server is asked, and the offset learned again, once it runs out).
const OFFSET_TRUSTED_FOR: Duration = Duration::from_secs(120);

/// How far the server's clock runs ahead of this host's (negative when behind), from the last reading of it.
///
/// For a rule that the server's clock decides, but that would rather not ask the server while the answer is plainly
/// "not yet": judged by this host's own clock instead, a host X behind the server would answer "not yet" X too
/// long, and never ask. Corrected by the offset, the host's clock only spares requests; the server still decides.
pub(crate) struct Offset {
    /// When the offset was learned (monotonic: a stepped host clock cannot make it look fresh), and the offset.
    learned: Mutex<Option<(Instant, time::Duration)>>,
}

/// The process's offset: every gate of this process reads the same servers, and each reading corrects it for all.
pub(crate) static OFFSET: Offset = Offset::new();

impl Offset {
    /// None learned yet: the first user asks the server.
    pub(crate) const fn new() -> Self {
        Self {
            learned: Mutex::new(None),
        }
    }

    /// The server's time when this host's clock reads `local_now`, by the offset learned less than
    /// [`OFFSET_TRUSTED_FOR`] ago; `None` without one (ask the server, then [`Offset::learn`]).
    pub(crate) fn server_time_at(&self, local_now: OffsetDateTime) -> Option<OffsetDateTime> {
        let learned = *self.learned.lock().unwrap_or_else(PoisonError::into_inner);
        learned
            .filter(|(at, _)| at.elapsed() < OFFSET_TRUSTED_FOR)
            .map(|(_, offset)| local_now + offset)
    }

    /// Learns the offset from `server_now`, a reading requested after this host's clock read `local_now`. The
    /// time the request took counts as offset, so the estimate runs ahead of the server's clock, never behind:
    /// it makes its user ask the server early (a request more), not late.
    pub(crate) fn learn(&self, local_now: OffsetDateTime, server_now: OffsetDateTime) {
        *self.learned.lock().unwrap_or_else(PoisonError::into_inner) =
            Some((Instant::now(), server_now - local_now));
    }
}

#[cfg(test)]
mod tests {
    use async_nats::jetstream::kv;

    use super::*;

    /// The time is the server's, after the stamp of a write acknowledged before the request, and a JetStream API
    /// error is an error naming the stream.
    #[tokio::test]
    async fn the_time_is_the_servers_and_an_error_reply_is_an_error() {
        let nats = testkit::NatsServer::start();
        let js = jetstream::new(async_nats::connect(nats.url()).await.expect("connect"));
        let store = js
            .create_key_value(kv::Config {
                bucket: "clock-test".to_owned(),
                ..Default::default()
            })
            .await
            .expect("a bucket");
        store.put("k", "v".into()).await.expect("a write");
        let stamped = store.entry("k").await.unwrap().expect("the entry").created;
        let now = server_now(&js, &store.stream_name)
            .await
            .expect("the server's time");
        assert!(
            now >= stamped,
            "{now} is before the stamp {stamped} of an earlier write"
        );
        // The server runs on this host: the same clock, within a request's time.
        let local = OffsetDateTime::now_utc();
        assert!(
            (local - now).abs() < time::Duration::seconds(5),
            "{now} against {local}"
        );

        let err = server_now(&js, "NO_SUCH_STREAM")
            .await
            .expect_err("no such stream");
        assert!(err.to_string().contains("NO_SUCH_STREAM"), "{err}");
    }

    /// The server behaviour this stands on, on a three-node cluster with an R3 bucket: its STREAM.INFO answer
    /// carries `ts` whichever node the client is connected to (the stream's leader answers it), and `ts` is not
    /// before the stamp of a write acknowledged earlier.
    #[tokio::test]
    async fn on_a_three_node_cluster_every_node_reads_the_time() {
        let cluster = testkit::NatsCluster::start();
        let admin = jetstream::new(async_nats::connect(cluster.urls()).await.expect("connect"));
        let store = admin
            .create_key_value(kv::Config {
                bucket: "clock-r3".to_owned(),
                num_replicas: 3,
                ..Default::default()
            })
            .await
            .expect("an R3 bucket");
        let revision = store.put("k", "v".into()).await.expect("a write");
        let stamped = store
            .stream
            .get_raw_message(revision)
            .await
            .expect("the write, from the leader")
            .time;
        for node in cluster.nodes() {
            let js = jetstream::new(async_nats::connect(node.url()).await.expect("connect"));
            let now = server_now(&js, &store.stream_name)
                .await
                .unwrap_or_else(|err| panic!("through {}: {err}", node.url()));
            assert!(
                now >= stamped,
                "through {}: {now} is before the stamp {stamped} of an earlier write",
                node.url()
            );
        }
    }
}
