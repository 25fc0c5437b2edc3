//! Delayed events on the schedules NATS holds: the one implementation behind `Publisher::publish_in` / `_at`, the
//! SDK's delayed emails, `jetfn schedule add --in/--at` and the schedules `jetfn infra apply` writes.
//!
//! A schedule is one message on `schedules.<name>` in the `SCHEDULES` stream, carrying the whole CloudEvent and
//! the headers `Nats-Schedule` (`@at <RFC 3339>`, `@every <duration>` or a 6-field cron), `Nats-Schedule-Time-Zone`
//! (cron only) and `Nats-Schedule-Target: scheduled.<type>`. When it fires the server stores a copy on the target,
//! with the schedule's other headers (so an encrypted event keeps its `Jetfn-Key-Id`), and `EVENTS` sources
//! `scheduled.>` as `events.>`. Being a stream message, a schedule survives restarts; cancelling purges its subject.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The stream that holds schedules.
pub const STREAM: &str = "SCHEDULES";
/// Schedules live on `schedules.<name>`.
pub const SCHEDULE_PREFIX: &str = "schedules";
/// A schedule fires to `scheduled.<type>`; EVENTS sources that as `events.<type>`.
pub const TARGET_PREFIX: &str = "scheduled";
/// How long a fired copy stays in SCHEDULES: long enough for EVENTS to source it through an outage.
const FIRED_COPY_TTL: &str = "24h";

/// When a schedule fires, as the `Nats-Schedule` header says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct When {
    /// The `Nats-Schedule` header: `@at ...`, `@every ...s` or a cron.
    pub pattern: String,
    /// The `Nats-Schedule-Time-Zone` header (cron only).
    pub time_zone: Option<String>,
}

/// When a one-off event should happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delay {
    /// This long from now.
    In(Duration),
    /// At this moment.
    At(OffsetDateTime),
}

/// Why a delay cannot be scheduled. The text names the field (`in` or `at`) and never quotes event data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelayError {
    /// `at` is before now: the event would fire at once, which is never what a delay means.
    #[error("`at`: {at} is in the past (now {now}); give a future time or publish the event now")]
    Past {
        /// The time asked for (RFC 3339).
        at: String,
        /// The clock's time when it was checked (RFC 3339).
        now: String,
    },
    /// The time is past the calendar's end.
    #[error("`{field}`: too far in the future")]
    TooFar {
        /// `in` or `at`.
        field: &'static str,
    },
}

impl Delay {
    /// The whole second the event fires at. `@at` takes whole seconds, so a fraction rounds up, never down: an
    /// event never fires before the moment asked for (truncated, `--in 3s` fired up to a second early: issue 14,
    /// item 12). A time before `now` is refused.
    ///
    /// # Errors
    /// [`DelayError::Past`] for an `At` before `now`; [`DelayError::TooFar`] past the calendar's end.
    pub fn fires_at(&self, now: OffsetDateTime) -> Result<OffsetDateTime, DelayError> {
        let (at, field) = match *self {
            Self::In(delay) => (
                time::Duration::try_from(delay)
                    .ok()
                    .and_then(|delay| now.checked_add(delay))
                    .ok_or(DelayError::TooFar { field: "in" })?,
                "in",
            ),
            Self::At(at) => {
                if at < now {
                    let text = |t: OffsetDateTime| t.format(&Rfc3339).unwrap_or_default();
                    return Err(DelayError::Past {
                        at: text(at),
                        now: text(now),
                    });
                }
                (at, "at")
            }
        };
        let at = at.to_offset(time::UtcOffset::UTC);
        if at.nanosecond() == 0 {
            return Ok(at);
        }
        at.replace_nanosecond(0)
            .ok()
            .and_then(|at| at.checked_add(time::Duration::SECOND))
            .ok_or(DelayError::TooFar { field })
    }

    /// The `Nats-Schedule` of this delay, checked against `now`.
    ///
    /// # Errors
    /// As [`Delay::fires_at`].
    pub fn when(&self, now: OffsetDateTime) -> Result<When, DelayError> {
        let at = self.fires_at(now)?;
        Ok(When {
            pattern: format!("@at {}", rfc3339(at)),
            time_zone: None,
        })
    }
}

pub(crate) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// The schedule name of a delayed event: derived from its id (a digest, since ids may hold `.` and `:`, which a
/// subject token cannot), so the same event scheduled twice is one schedule and can be cancelled by its id.
pub fn name_for_event(event_id: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, event_id.as_bytes());
    let mut name = "delayed-".to_owned();
    events::hex::push_lower(&mut name, &digest.as_ref()[..12]);
    name
}

/// A schedule name is one subject token.
///
/// # Errors
/// Anything but 1 to 128 letters, digits, `-` or `_`.
pub fn check_name(name: &str) -> Result<(), ScheduleError> {
    if !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        Ok(())
    } else {
        Err(ScheduleError::Name)
    }
}

/// Why writing or cancelling a schedule failed.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The name is not a subject token.
    #[error("a schedule name is 1 to 128 letters, digits, - or _")]
    Name,
    /// A schedule of that name exists and `replace` was not asked for.
    #[error("a schedule named {0} exists; cancel it first or pass --replace")]
    Exists(String),
    /// The server refused or did not answer.
    #[error("the server refused the schedule: {0}")]
    Nats(String),
}

/// The subject a schedule lives on.
pub fn subject(name: &str) -> String {
    format!("{SCHEDULE_PREFIX}.{name}")
}

/// Writes a schedule: `event` (a whole, checked CloudEvent, possibly with sealed fields) fires to
/// `scheduled.<event_type>` `when` says. `extra` headers (`traceparent`, `Jetfn-Key-Id`) are copied by the server
/// onto the fired event. Without `replace`, a schedule of the same name is refused (the server checks that the
/// subject is empty, so two writers cannot both win).
///
/// # Errors
/// [`ScheduleError::Exists`] (without `replace`), or the server's refusal.
pub async fn put(
    js: &jetstream::Context,
    name: &str,
    when: &When,
    event_type: &str,
    event: bytes::Bytes,
    extra: Option<HeaderMap>,
    replace: bool,
) -> Result<u64, ScheduleError> {
    check_name(name)?;
    let mut headers = extra.unwrap_or_default();
    headers.insert("Nats-Schedule", when.pattern.as_str());
    headers.insert(
        "Nats-Schedule-Target",
        format!("{TARGET_PREFIX}.{event_type}").as_str(),
    );
    headers.insert("Nats-Schedule-TTL", FIRED_COPY_TTL);
    if let Some(tz) = &when.time_zone {
        headers.insert("Nats-Schedule-Time-Zone", tz.as_str());
    }
    headers.insert(
        "content-type",
        "application/cloudevents+json; charset=utf-8",
    );
    if !replace {
        headers.insert("Nats-Expected-Last-Subject-Sequence", "0");
    }
    let ack = js
        .publish_with_headers(subject(name), headers, event)
        .await
        .map_err(|err| ScheduleError::Nats(err.to_string()))?
        .await;
    match ack {
        Ok(ack) => Ok(ack.sequence),
        Err(err) if !replace && err.to_string().contains("wrong last sequence") => {
            Err(ScheduleError::Exists(name.to_owned()))
        }
        Err(err) => Err(ScheduleError::Nats(err.to_string())),
    }
}

/// Cancels a schedule by purging its subject. Returns whether there was one: `false` when the name was never
/// used or a one-off schedule already fired (the server purges it then).
///
/// # Errors
/// The name is not a subject token, or the server did not answer.
pub async fn cancel(js: &jetstream::Context, name: &str) -> Result<bool, ScheduleError> {
    check_name(name)?;
    let stream = js
        .get_stream(STREAM)
        .await
        .map_err(|err| ScheduleError::Nats(format!("the {STREAM} stream: {err}")))?;
    let purged = stream
        .purge()
        .filter(subject(name))
        .await
        .map_err(|err| ScheduleError::Nats(err.to_string()))?
        .purged;
    Ok(purged > 0)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    /// Issue 14, item 12: the time was truncated to the second, so `--in 3s` fired up to a second early.
    #[test]
    fn a_delay_never_fires_early() {
        let now = datetime!(2026-11-28 10:00:00.900 UTC);
        let at = Delay::In(Duration::from_secs(3)).fires_at(now).unwrap();
        assert!(at >= now + time::Duration::seconds(3));
        assert_eq!(rfc3339(at), "2026-11-28T10:00:04Z");
        let whole = datetime!(2026-11-28 10:00:00 UTC);
        assert_eq!(
            Delay::In(Duration::from_secs(3))
                .when(whole)
                .unwrap()
                .pattern,
            "@at 2026-11-28T10:00:03Z"
        );
        let at = Delay::At(datetime!(2026-12-01 09:00:00.250 +01:00))
            .when(now)
            .unwrap();
        assert_eq!(at.pattern, "@at 2026-12-01T08:00:01Z");
        assert_eq!(
            Delay::In(Duration::from_secs(u64::MAX)).fires_at(now),
            Err(DelayError::TooFar { field: "in" })
        );
    }

    #[test]
    fn a_time_in_the_past_is_refused_naming_the_field() {
        let now = datetime!(2026-11-28 10:00:00 UTC);
        let err = Delay::At(datetime!(2026-11-28 09:59:59.999 UTC))
            .fires_at(now)
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("`at`:") && text.contains("in the past"),
            "{text}"
        );
        // Now itself is not the past: it fires at once.
        assert_eq!(Delay::At(now).fires_at(now).unwrap(), now);
    }

    #[test]
    fn names_are_subject_tokens_and_stable() {
        let name = name_for_event("password-reset:u-1:abc.def");
        assert!(check_name(&name).is_ok(), "{name}");
        assert_eq!(name, name_for_event("password-reset:u-1:abc.def"));
        assert_ne!(name, name_for_event("password-reset:u-1:abc_def"));
        assert!(check_name("a.b").is_err());
        assert!(check_name("").is_err());
    }
}
