//! What an operator checks first: per stream, its use against its limits; per function, what waits, how old the
//! oldest unfinished event is, what is in flight against `max_ack_pending`, what was redelivered, and whether it is
//! paused. Internal streams (KV buckets, object stores) and temporary consumers (ephemeral and ordered ones, such
//! as a running `jetfn dlq list`) are left out unless asked for.

use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use futures::TryStreamExt as _;
use serde::Serialize;
use time::OffsetDateTime;

use crate::functions::{function_of, is_durable};
use crate::pause::is_until_resumed;

/// One stream's use against its limits.
#[derive(Debug, Clone, Serialize)]
pub struct StreamStatus {
    /// Its name.
    pub name: String,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// `max_msgs` (`None`: unlimited).
    pub max_messages: Option<u64>,
    /// `max_bytes` (`None`: unlimited).
    pub max_bytes: Option<u64>,
    /// `max_age` in seconds (`None`: unlimited).
    pub max_age_secs: Option<u64>,
    /// Age of its oldest message, in seconds (`None`: empty).
    pub oldest_age_secs: Option<u64>,
    /// The fullest of messages, bytes and oldest age against their limits, 0 to 1 (`None`: no limit is set). With
    /// `discard: new` a stream at 1 refuses publishes; with `discard: old` it drops its oldest.
    pub fill: Option<f64>,
    /// `new` or `old`: what the server does when a limit is reached.
    pub discard: &'static str,
    /// Durable consumers.
    pub consumers: usize,
}

/// One function's consumer.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    /// Its stream.
    pub stream: String,
    /// The consumer's name.
    pub consumer: String,
    /// The function it belongs to.
    pub function: String,
    /// Events not yet delivered.
    pub waiting: u64,
    /// Delivered and not yet acknowledged.
    pub in_flight: usize,
    /// The cap on `in_flight` across every replica (`None`: unlimited).
    pub max_ack_pending: Option<i64>,
    /// Messages delivered more than once and not yet acknowledged.
    pub redelivered: usize,
    /// Seconds since the oldest event the function has not finished was stored (`None`: nothing unfinished, or
    /// not readable: see `oldest_unknown`).
    pub oldest_age_secs: Option<u64>,
    /// Why the oldest age could not be read (the user may not read that stream's messages), if so.
    pub oldest_unknown: Option<String>,
    /// Whether the server holds it paused.
    pub paused: bool,
    /// The pause's end (`None` when not paused or paused until resumed).
    #[serde(with = "time::serde::rfc3339::option")]
    pub paused_until: Option<OffsetDateTime>,
    /// Pull requests waiting at the server: replicas connected and asking.
    pub pull_requests: usize,
}

/// The whole picture at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// When it was read.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Streams, by name.
    pub streams: Vec<StreamStatus>,
    /// Consumers, by stream then name.
    pub consumers: Vec<ConsumerStatus>,
    /// Per function (every function with a consumer, and any other that sends heartbeats): its live replicas,
    /// from their heartbeats (`ops::replicas`). Empty when the `jetfn-replicas` bucket is missing or unreadable:
    /// see `replicas_unknown`.
    pub replicas: std::collections::BTreeMap<String, crate::replicas::Summary>,
    /// Why the replicas could not be read, if so. Then `replicas` is empty rather than a zero per function: during
    /// an incident "no replicas" and "the heartbeats could not be read" call for different actions.
    pub replicas_unknown: Option<String>,
    /// Consumers the server names but whose state could not be read (`stream/consumer: why`), say while their
    /// leader is down or electing: listed apart, so a status taken during a node loss shows everything else and
    /// never reads a missing consumer as one with nothing waiting.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consumers_unknown: Vec<String>,
}

/// Which streams are the system's own plumbing rather than something an operator watches.
pub fn is_internal(stream: &str) -> bool {
    stream.starts_with("KV_") || stream.starts_with("OBJ_")
}

/// Reads the status. `all` keeps internal streams and temporary consumers.
///
/// # Errors
/// The server cannot list streams or consumers' names. A consumer that cannot be read is named in
/// `consumers_unknown`.
pub async fn read(js: &jetstream::Context, all: bool) -> anyhow::Result<Status> {
    let at = OffsetDateTime::now_utc();
    let mut names: Vec<String> = js.stream_names().try_collect().await?;
    names.sort();
    let mut streams = Vec::new();
    let mut consumers = Vec::new();
    let mut consumers_unknown = Vec::new();
    // Reading the oldest event needs read access to the stream's messages, which a viewer lacks; after one refusal
    // (a request the server drops, so a short timeout) the rest of that stream is not tried.
    let mut probe = js.clone();
    probe.set_timeout(Duration::from_secs(2));
    for name in names.iter().filter(|name| all || !is_internal(name)) {
        let mut handle = js.get_stream(name).await?;
        let info = handle.info().await?.clone();
        let (mut infos, unreadable) = crate::functions::infos_or_unreadable(&handle, name).await?;
        consumers_unknown.extend(
            unreadable
                .into_iter()
                .map(|(consumer, why)| format!("{consumer}: {why}")),
        );
        infos.retain(|info| all || is_durable(info));
        streams.push(stream_status(&info, infos.len(), at));
        let probe_stream = probe.get_stream_no_info(name).await?;
        let mut refused: Option<String> = None;
        for consumer in infos {
            let unfinished = consumer.num_pending > 0 || consumer.num_ack_pending > 0;
            let (oldest_age_secs, oldest_unknown) = if !unfinished {
                (None, None)
            } else if let Some(why) = &refused {
                (None, Some(why.clone()))
            } else {
                match oldest_unfinished(&probe_stream, &info.config, &consumer).await {
                    Ok(time) => (time.map(|time| age_secs(at, time)), None),
                    Err(why) => {
                        refused = Some(why.clone());
                        (None, Some(why))
                    }
                }
            };
            let paused_until = consumer
                .config
                .pause_until
                .filter(|until| consumer.paused && !is_until_resumed(*until));
            consumers.push(ConsumerStatus {
                stream: name.clone(),
                function: function_of(&consumer),
                consumer: consumer.name.clone(),
                waiting: consumer.num_pending,
                in_flight: consumer.num_ack_pending,
                max_ack_pending: Some(consumer.config.max_ack_pending).filter(|max| *max > 0),
                redelivered: consumer.num_redelivered,
                oldest_age_secs,
                oldest_unknown,
                paused: consumer.paused,
                paused_until,
                pull_requests: consumer.num_waiting,
            });
        }
    }
    let (replicas, replicas_unknown) = match crate::replicas::list(js).await {
        Ok(live) => {
            let mut replicas = crate::replicas::summarize(&live);
            for consumer in &consumers {
                replicas.entry(consumer.function.clone()).or_default();
            }
            (replicas, None)
        }
        Err(err) => (std::collections::BTreeMap::new(), Some(format!("{err:#}"))),
    };
    Ok(Status {
        at,
        streams,
        consumers,
        replicas,
        replicas_unknown,
        consumers_unknown,
    })
}

fn age_secs(now: OffsetDateTime, then: OffsetDateTime) -> u64 {
    u64::try_from((now - then).whole_seconds()).unwrap_or(0)
}

fn stream_status(info: &stream::Info, consumers: usize, now: OffsetDateTime) -> StreamStatus {
    let limit = |value: i64| u64::try_from(value).ok().filter(|v| *v > 0);
    let max_messages = limit(info.config.max_messages);
    let max_bytes = limit(info.config.max_bytes);
    let max_age_secs = Some(info.config.max_age.as_secs()).filter(|secs| *secs > 0);
    let oldest_age_secs =
        (info.state.messages > 0).then(|| age_secs(now, info.state.first_timestamp));
    #[allow(clippy::cast_precision_loss)]
    let ratio = |used: u64, max: Option<u64>| max.map(|max| used as f64 / max as f64);
    let fill = [
        ratio(info.state.messages, max_messages),
        ratio(info.state.bytes, max_bytes),
        ratio(oldest_age_secs.unwrap_or(0), max_age_secs),
    ]
    .into_iter()
    .flatten()
    .reduce(f64::max);
    StreamStatus {
        name: info.config.name.clone(),
        messages: info.state.messages,
        bytes: info.state.bytes,
        max_messages,
        max_bytes,
        max_age_secs,
        oldest_age_secs,
        fill,
        discard: match info.config.discard {
            stream::DiscardPolicy::New => "new",
            stream::DiscardPolicy::Old => "old",
        },
        consumers,
    }
}

/// The store time of the first message after the consumer's ack floor that its filter takes: every message
/// before it is acknowledged, so this is the oldest event the function has not finished. `Err` says why it could
/// not be read.
async fn oldest_unfinished(
    stream: &stream::Stream<()>,
    config: &stream::Config,
    consumer: &consumer::Info,
) -> Result<Option<OffsetDateTime>, String> {
    let mut filters = consumer.config.filter_subjects.clone();
    if !consumer.config.filter_subject.is_empty() {
        filters.push(consumer.config.filter_subject.clone());
    }
    if filters.is_empty() {
        filters.push(">".to_owned());
    }
    let from = consumer.ack_floor.stream_sequence + 1;
    let mut oldest: Option<OffsetDateTime> = None;
    for filter in filters {
        // From the stream's leader only (STREAM.MSG.GET). A direct get may be answered by any replica: one that has
        // not applied the latest writes finds nothing past the ack floor ("-" for a backlog), and one that has not
        // applied a deletion (interest retention, an age limit, a purge) returns a message the leader no longer
        // holds, an oldest age older than the truth. One request per consumer's filter, on a command an operator
        // runs, so the leader's extra load is nothing.
        let found = first_from_leader(stream, from, filter)
            .await
            .map_err(|err| refused(&config.name, &err))?;
        if let Some(message) = found {
            oldest = Some(oldest.map_or(message.time, |old| old.min(message.time)));
        }
    }
    Ok(oldest)
}

/// The first message from `from` on that `filter` takes, as the stream's leader holds it (`STREAM.MSG.GET`).
async fn first_from_leader(
    stream: &stream::Stream<()>,
    from: u64,
    filter: String,
) -> Result<Option<jetstream::message::StreamMessage>, stream::RawMessageError> {
    match stream
        .raw_message_builder()
        .sequence(from)
        .next_by_subject(filter)
        .send()
        .await
    {
        Ok(message) => Ok(Some(message)),
        Err(err) if matches!(err.kind(), stream::RawMessageErrorKind::NoMessageFound) => Ok(None),
        Err(err) => Err(err),
    }
}

fn refused(stream: &str, err: &dyn std::fmt::Display) -> String {
    format!(
        "reading {stream}'s messages was refused or timed out ({err}); a viewer may not read them"
    )
}
