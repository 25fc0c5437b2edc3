//! Pausing a function with the server's consumer pause (nats-server 2.11+, `$JS.API.CONSUMER.PAUSE`): the
//! server stops delivering to every replica at once, events wait in the stream (limits retention keeps them;
//! `max_age` is still the budget), and delivery resumes by itself at the pause's end or on `resume`. In-flight
//! messages are not recalled: those already delivered finish (or are redelivered after `ack_wait`, which a paused
//! consumer holds until it resumes).
//!
//! The pause lives in the consumer's configuration on the server, not in a definition file: `jetfn infra apply`
//! leaves it alone (provision ignores `pause_until` when planning and carries it over when it updates a consumer).

use anyhow::Context as _;
use async_nats::jetstream;
use serde::Serialize;
use time::OffsetDateTime;

use crate::functions::{ConsumerRef, consumers_of};

/// The time a pause "until resumed" is given: the server needs a time, and one this far away reads as "until
/// resumed" everywhere ([`is_until_resumed`]). Within Go's longest duration from now, so the server's
/// `pause_remaining` stays exact.
pub const UNTIL_RESUMED: OffsetDateTime = time::macros::datetime!(2200-01-01 00:00 UTC);

/// Whether a pause's end is the "until resumed" mark rather than a time someone chose.
pub fn is_until_resumed(until: OffsetDateTime) -> bool {
    until >= UNTIL_RESUMED
}

/// One consumer's pause state after a pause or resume.
#[derive(Debug, Clone, Serialize)]
pub struct PauseState {
    /// Which consumer.
    #[serde(flatten)]
    pub consumer: ConsumerRef,
    /// Whether the server now holds it paused.
    pub paused: bool,
    /// The end of the pause the server reports (absent when not paused, or paused until resumed).
    #[serde(with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
}

/// Pauses every consumer of `function` until `until` (`None`: until resumed).
///
/// # Errors
/// `until` is not in the future, the function has no consumer, one of the server's consumers cannot be read (then
/// nothing is paused), or the server refuses (permissions, a server before 2.11; the error names the consumers
/// paused before it).
pub async fn pause(
    js: &jetstream::Context,
    function: &str,
    until: Option<OffsetDateTime>,
) -> anyhow::Result<Vec<PauseState>> {
    if let Some(until) = until {
        anyhow::ensure!(
            until > OffsetDateTime::now_utc(),
            "--until {} is not in the future",
            crate::rfc3339(until)
        );
    }
    let until = until.unwrap_or(UNTIL_RESUMED);
    let consumers = consumers_of(js, function)
        .await
        .context("nothing was paused")?;
    let mut states = Vec::new();
    for consumer in consumers {
        let stream = js.get_stream_no_info(&consumer.stream).await?;
        let response = stream
            .pause_consumer(&consumer.consumer, until)
            .await
            .with_context(|| {
                format!(
                    "{}; pausing {}/{} failed",
                    done_before("paused", &states),
                    consumer.stream,
                    consumer.consumer
                )
            })?;
        states.push(PauseState {
            consumer,
            paused: response.paused,
            until: Some(response.pause_until)
                .filter(|at| response.paused && !is_until_resumed(*at)),
        });
    }
    Ok(states)
}

/// Resumes every consumer of `function`; resuming one that is not paused changes nothing.
///
/// # Errors
/// The function has no consumer, one of the server's consumers cannot be read (then nothing is resumed), or the
/// server refuses (the error names the consumers resumed before it).
pub async fn resume(js: &jetstream::Context, function: &str) -> anyhow::Result<Vec<PauseState>> {
    let consumers = consumers_of(js, function)
        .await
        .context("nothing was resumed")?;
    let mut states = Vec::new();
    for consumer in consumers {
        let stream = js.get_stream_no_info(&consumer.stream).await?;
        let response = stream
            .resume_consumer(&consumer.consumer)
            .await
            .with_context(|| {
                format!(
                    "{}; resuming {}/{} failed",
                    done_before("resumed", &states),
                    consumer.stream,
                    consumer.consumer
                )
            })?;
        states.push(PauseState {
            consumer,
            paused: response.paused,
            until: None,
        });
    }
    Ok(states)
}

/// What a pause or resume that failed part-way had already done: the server keeps those changes, and an error
/// that reads as "nothing happened" would hide a function left half paused.
fn done_before(verb: &str, done: &[PauseState]) -> String {
    if done.is_empty() {
        return format!("no consumer was {verb}");
    }
    let names: Vec<String> = done
        .iter()
        .map(|state| format!("{}/{}", state.consumer.stream, state.consumer.consumer))
        .collect();
    format!("{} already {verb} (and left so)", names.join(", "))
}
