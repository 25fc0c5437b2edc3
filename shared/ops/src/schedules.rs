//! The schedules NATS holds: list them with their next run times, add one, cancel one.
//!
//! A schedule is one message on `schedules.<name>` in the `SCHEDULES` stream, carrying the whole CloudEvent and
//! the headers `Nats-Schedule` (`@at <RFC 3339>`, `@every <duration>`, a 6-field cron or `@hourly`, `@daily`, ...),
//! `Nats-Schedule-Time-Zone` (cron only) and `Nats-Schedule-Target: scheduled.<type>`. The server fires it; there
//! is no scheduler process, so nothing but the server knows when it fires next. The times [`list`] gives are
//! computed here by the server's rules (read in nats-server's `scheduler.go` and `cron.go`, pinned by
//! `tests/it/schedule_ops.rs` against a real server):
//! - `@at`: that time; nothing once it is past (the server purges a fired one-off schedule).
//! - `@every d`: the server plans the first run at the stored message's time rounded to the second, plus `d`, and
//!   each next one from the previous *planned* time plus `d` (a run that would be in the past after an outage is
//!   skipped: it plans now plus `d`). Each fired copy carries the server's own next time (`Nats-Schedule-Next`);
//!   when the last copy on the target is this schedule's, that is the anchor, else the stored time is.
//! - cron: the next matches after now in the time zone (UTC without one), walked by `croner` (seconds first, 0 or 7
//!   is Sunday, day of month OR day of week when both are restricted, as the server's robfig-derived parser).
//!   Around daylight saving changes the server walks absolute hours: a fixed time inside a skipped hour does not
//!   run that day, and one inside a repeated hour runs twice. croner runs the first after the gap and the repeated
//!   one once, so [`next_runs`] drops the first and adds the second, to say what the server will do.
//!
//! Writing and cancelling go through `provision::schedule` and `publish::schedule` (the one implementation of
//! the headers, the `@at` rounding and the purge); every add and cancel is audited, success or failure.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use futures::TryStreamExt as _;
use provision::schedule::{SCHEDULE_PREFIX, STREAM, TARGET_PREFIX};
use publish::schedule::Delay;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::audit::{Action, Auditor, Outcome};

/// The source of the events `jetfn infra apply` schedules from `infra/nats/schedules/<name>.json`.
const INFRA_SOURCE: &str = "/jetfn-infra";
/// How many next runs [`add`] returns.
const ADD_NEXT_RUNS: usize = 5;

/// One schedule NATS holds (a message on `schedules.<name>` in SCHEDULES).
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    /// `<name>` of `schedules.<name>`.
    pub name: String,
    /// The `Nats-Schedule` header as stored: `@at ...`, `@every 5m`, a 6-field cron, `@daily`.
    pub spec: String,
    /// The `Nats-Schedule-Time-Zone` header (cron only).
    pub time_zone: Option<String>,
    /// The CloudEvent's type (from the event; the target's last token when the event cannot be read).
    pub event_type: Option<String>,
    /// `Nats-Schedule-Target`.
    pub target: String,
    /// Its stream sequence.
    pub sequence: u64,
    /// When the schedule message was stored.
    #[serde(with = "time::serde::rfc3339")]
    pub stored: OffsetDateTime,
    /// The next fire times, soonest first (empty for a past `@at`, or a pattern this code cannot read).
    #[serde(serialize_with = "rfc3339_vec")]
    pub next_runs: Vec<OffsetDateTime>,
    /// `infra/nats/schedules/<name>.json` when it is one of the committed default schedules, else `None`.
    pub defined_in: Option<String>,
}

fn rfc3339_vec<S: serde::Serializer>(
    times: &[OffsetDateTime],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(times.iter().map(|at| crate::rfc3339(*at)))
}

/// Every schedule in SCHEDULES, by name, each with its next `next` run times.
///
/// # Errors
/// No SCHEDULES stream (run `jetfn infra apply`), or the server did not answer.
pub async fn list(js: &jetstream::Context, next: usize) -> anyhow::Result<Vec<Schedule>> {
    let stream = js
        .get_stream(STREAM)
        .await
        .context("the SCHEDULES stream (run `jetfn infra apply`)")?;
    let mut subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{SCHEDULE_PREFIX}.>"))
        .await?
        .try_collect()
        .await?;
    subjects.sort();
    let now = OffsetDateTime::now_utc();
    let mut listed = Vec::new();
    for (subject, _) in subjects {
        // From the stream's leader (STREAM.MSG.GET), never a direct get: a follower that has not applied the
        // schedule's write answers "none", which would leave it out of the list, or an older copy of it.
        // Gone between the listing and the read (cancelled, or a one-off that fired): not a schedule any more.
        // Any other failure is an error: a schedule left out of the list reads as one that does not exist.
        let message = match stream
            .get_last_raw_message_by_subject(subject.as_str())
            .await
        {
            Ok(message) => message,
            Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => continue,
            Err(err) => {
                return Err(err).with_context(|| format!("reading the schedule on {subject}"));
            }
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|value| value.as_str().to_owned())
                .filter(|value| !value.is_empty())
        };
        let Some(spec) = header("Nats-Schedule") else {
            continue;
        };
        let target = header("Nats-Schedule-Target").unwrap_or_default();
        let time_zone = header("Nats-Schedule-Time-Zone");
        let event: Option<serde_json::Value> = serde_json::from_slice(&message.payload).ok();
        let field = |name: &str| {
            event
                .as_ref()
                .and_then(|event| event.get(name))
                .and_then(|value| value.as_str())
                .map(str::to_owned)
        };
        let name = subject
            .strip_prefix(&format!("{SCHEDULE_PREFIX}."))
            .unwrap_or(&subject)
            .to_owned();
        let anchor = if spec.starts_with("@every ") {
            server_next(&stream, &target, &subject).await
        } else {
            None
        };
        let next_runs = next_runs(
            &spec,
            time_zone.as_deref(),
            anchor.unwrap_or(Anchor::Stored(message.time)),
            now,
            next,
        )
        .unwrap_or_default();
        listed.push(Schedule {
            defined_in: (field("source").as_deref() == Some(INFRA_SOURCE))
                .then(|| format!("infra/nats/schedules/{name}.json")),
            event_type: field("type").or_else(|| {
                target
                    .strip_prefix(&format!("{TARGET_PREFIX}."))
                    .map(str::to_owned)
            }),
            name,
            spec,
            time_zone,
            target,
            sequence: message.sequence,
            stored: message.time,
            next_runs,
        });
    }
    Ok(listed)
}

/// The server's own next time for an `@every` schedule: the `Nats-Schedule-Next` of the last copy it fired on the
/// target, if that copy is this schedule's (several schedules may share a target; then the stored time is used).
async fn server_next(
    stream: &jetstream::stream::Stream,
    target: &str,
    subject: &str,
) -> Option<Anchor> {
    // From the leader too: a follower's older copy would show a run already past as the next.
    let fired = stream.get_last_raw_message_by_subject(target).await.ok()?;
    let by = fired.headers.get("Nats-Scheduler")?;
    if by.as_str() != subject {
        return None;
    }
    let next = fired.headers.get("Nats-Schedule-Next")?;
    OffsetDateTime::parse(next.as_str(), &Rfc3339)
        .ok()
        .map(Anchor::Planned)
}

/// What an `@every` schedule's runs count from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// The time the schedule message was stored: the first run is this, rounded to the second, plus the interval.
    Stored(OffsetDateTime),
    /// A run the server has planned (`Nats-Schedule-Next` of a fired copy).
    Planned(OffsetDateTime),
}

/// The next `n` times a schedule fires after `now`, by the server's rules (see the module comment).
///
/// # Errors
/// A pattern or time zone the server would refuse too, naming what is wrong.
pub fn next_runs(
    spec: &str,
    time_zone: Option<&str>,
    anchor: Anchor,
    now: OffsetDateTime,
    n: usize,
) -> anyhow::Result<Vec<OffsetDateTime>> {
    if let Some(at) = spec.strip_prefix("@at ") {
        let at = OffsetDateTime::parse(at.trim(), &Rfc3339)
            .with_context(|| format!("`@at {at}` is not an RFC 3339 time"))?;
        return Ok(if at > now && n > 0 { vec![at] } else { vec![] });
    }
    if let Some(every) = spec.strip_prefix("@every ") {
        let every = go_duration(every.trim())?;
        let step = time::Duration::try_from(every).context("`@every`: too long")?;
        let mut at = match anchor {
            Anchor::Stored(stored) => round_to_second(stored) + step,
            Anchor::Planned(planned) => planned,
        };
        if at <= now {
            // Whole steps to the first one after now: the runs the server plans while it keeps up.
            let behind = (now - at).whole_nanoseconds();
            let steps = behind / step.whole_nanoseconds() + 1;
            let steps = i32::try_from(steps).context("`@every`: too far behind")?;
            at += step * steps;
        }
        return Ok((0..n).map(|k| at + step * (k as i32)).collect());
    }
    cron_runs(spec, time_zone, now, n)
}

/// Go's `time.Duration.Round(time.Second)` of a time: to the nearest second, halves away from zero.
fn round_to_second(at: OffsetDateTime) -> OffsetDateTime {
    let whole = at.replace_nanosecond(0).unwrap_or(at);
    if at.nanosecond() >= 500_000_000 {
        whole + time::Duration::SECOND
    } else {
        whole
    }
}

/// A Go duration as `@every` takes it (`90s`, `1h30m`, `1.5h`, `500ms`): humantime reads the integer forms; a
/// fraction is read here. At least a second, as the server requires.
fn go_duration(text: &str) -> anyhow::Result<Duration> {
    let parsed = humantime::parse_duration(text).ok().or_else(|| {
        let split = text.find(|c: char| c.is_ascii_alphabetic())?;
        let (number, unit) = text.split_at(split);
        let number: f64 = number.parse().ok()?;
        let unit = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            _ => return None,
        };
        Duration::try_from_secs_f64(number * unit).ok()
    });
    let parsed =
        parsed.with_context(|| format!("`@every {text}` is not a duration (e.g. 90s, 1h30m)"))?;
    anyhow::ensure!(
        parsed >= Duration::from_secs(1),
        "`@every {text}`: at least 1s"
    );
    Ok(parsed)
}

/// The server's names for common crons (nats-server `parseMsgSchedule`).
fn predefined(spec: &str) -> Option<&'static str> {
    Some(match spec {
        "@yearly" | "@annually" => "0 0 0 1 1 *",
        "@monthly" => "0 0 0 1 * *",
        "@weekly" => "0 0 0 * * 0",
        "@daily" | "@midnight" => "0 0 0 * * *",
        "@hourly" => "0 0 * * * *",
        _ => return None,
    })
}

/// Parses a cron as the server reads it: exactly 6 fields, `?` as `*`, `N/step` allowed.
fn parse_cron(spec: &str) -> anyhow::Result<croner::Cron> {
    let pattern = predefined(spec.trim()).unwrap_or(spec);
    let fields: Vec<&str> = pattern
        .split_whitespace()
        .map(|field| if field == "?" { "*" } else { field })
        .collect();
    anyhow::ensure!(
        fields.len() == 6,
        "`cron`: {} fields; it takes 6 (second minute hour day-of-month month day-of-week) or one of @yearly, \
         @monthly, @weekly, @daily, @hourly",
        fields.len()
    );
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Required)
        .sloppy_ranges(true)
        .build()
        .parse(&fields.join(" "))
        .map_err(|err| anyhow::anyhow!("`cron` {pattern:?}: {err}"))
}

/// The IANA time zone `name` from the system's zoneinfo, as the server loads it (`time.LoadLocation`).
fn zone(name: Option<&str>) -> anyhow::Result<jiff::tz::TimeZone> {
    match name {
        None => Ok(jiff::tz::TimeZone::UTC),
        Some(name) => jiff::tz::TimeZone::get(name)
            .map_err(|err| anyhow::anyhow!("`time_zone` {name:?} is not a known IANA zone: {err}")),
    }
}

fn cron_runs(
    spec: &str,
    time_zone: Option<&str>,
    now: OffsetDateTime,
    n: usize,
) -> anyhow::Result<Vec<OffsetDateTime>> {
    let cron = parse_cron(spec)?;
    let tz = zone(time_zone)?;
    let start = jiff::Timestamp::from_nanosecond(now.unix_timestamp_nanos())
        .context("time out of range")?
        .to_zoned(tz.clone());
    let mut runs: Vec<jiff::Timestamp> = Vec::new();
    // Bounded: a pattern that never matches (30 February) ends the walk where croner gives up.
    for candidate in cron
        .iter_after(start)
        .take(n.saturating_mul(2).saturating_add(4))
    {
        // A fixed time croner moved past a skipped hour: the server does not run it that day.
        if !cron.is_time_matching(&candidate).unwrap_or(false) {
            continue;
        }
        runs.push(candidate.timestamp());
        // A wall-clock time that happens twice: the server runs at both (it walks absolute hours).
        let civil = candidate.datetime();
        if let jiff::tz::AmbiguousOffset::Fold { after, .. } = tz.to_ambiguous_zoned(civil).offset()
            && let Ok(second) = after.to_timestamp(civil)
            && second > candidate.timestamp()
        {
            runs.push(second);
        }
        runs.sort();
        runs.dedup();
        if runs.len() >= n {
            break;
        }
    }
    runs.truncate(n);
    runs.into_iter()
        .map(|at| {
            OffsetDateTime::from_unix_timestamp_nanos(at.as_nanosecond())
                .context("time out of range")
        })
        .collect()
}

/// When a new schedule fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum When {
    /// Once, this long from now (rounded up to the whole second: never early).
    In(Duration),
    /// Once, at this time (rounded up to the whole second; the past is refused).
    At(OffsetDateTime),
    /// Again and again at this interval (whole seconds, at least 1s), from the moment it is stored.
    Every(Duration),
    /// On a 6-field cron (seconds first) or `@hourly`, `@daily`, ..., in an IANA zone (UTC without one).
    Cron {
        /// The expression.
        expr: String,
        /// The IANA zone, e.g. `Europe/Amsterdam`.
        time_zone: Option<String>,
    },
}

impl When {
    /// The `Nats-Schedule` (and time zone) headers this means at `now`, checked as the server checks them.
    ///
    /// # Errors
    /// A time in the past, an interval under a second or not whole seconds, a cron or zone the server would
    /// refuse; the error names the field (`in`, `at`, `every`, `cron`, `time_zone`).
    pub fn to_nats(&self, now: OffsetDateTime) -> anyhow::Result<provision::schedule::When> {
        match self {
            Self::In(delay) => Ok(Delay::In(*delay).when(now)?),
            Self::At(at) => Ok(Delay::At(*at).when(now)?),
            Self::Every(every) => {
                anyhow::ensure!(
                    *every >= Duration::from_secs(1) && every.subsec_nanos() == 0,
                    "`every`: whole seconds, at least 1s"
                );
                Ok(provision::schedule::When {
                    pattern: format!("@every {}s", every.as_secs()),
                    time_zone: None,
                })
            }
            Self::Cron { expr, time_zone } => {
                let when = provision::schedule::cron_when(expr.trim(), time_zone.clone())
                    .context("`cron`")?;
                parse_cron(&when.pattern)?;
                zone(when.time_zone.as_deref())?;
                Ok(when)
            }
        }
    }
}

/// A schedule to add.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    /// The event type, e.g. `cleanup.requested`.
    pub event_type: String,
    /// The event's `data`, checked against the type's schema.
    pub data: serde_json::Value,
    /// When it fires.
    pub when: When,
    /// Its name (letters, digits, `-`, `_`); default: the type and a random suffix.
    pub name: Option<String>,
    /// Replace a schedule of the same name instead of refusing.
    pub replace: bool,
    /// The CloudEvents `source`.
    pub source: String,
}

/// Adds a schedule: validates the event against its schema (errors name the field), writes it, and audits
/// (`schedule-add`) success or failure. Sensitive fields are stored as given; [`add_sealed`] seals them.
///
/// # Errors
/// Bad input (naming the field), a schedule of that name without `replace`, or the server's refusal.
pub async fn add(
    js: &jetstream::Context,
    auditor: &Auditor,
    new: NewSchedule,
) -> anyhow::Result<Schedule> {
    add_sealed(js, auditor, new, None).await
}

/// [`add`], sealing the event's sensitive fields with `keyring` as the publisher does (validated in clear first).
///
/// # Errors
/// As [`add`], and a sealing failure.
pub async fn add_sealed(
    js: &jetstream::Context,
    auditor: &Auditor,
    new: NewSchedule,
    keyring: Option<&publish::sealed::Keyring>,
) -> anyhow::Result<Schedule> {
    let name = new.name.clone().unwrap_or_else(|| {
        format!(
            "{}-{}",
            new.event_type.replace('.', "-"),
            &uuid::Uuid::now_v7().simple().to_string()[20..]
        )
    });
    let mut detail = format!("{} {:?}", new.event_type, new.when);
    let result = async {
        let now = OffsetDateTime::now_utc();
        let when = new.when.to_nats(now)?;
        detail = format!(
            "{} \"{}\"{}",
            new.event_type,
            when.pattern,
            when.time_zone
                .as_ref()
                .map(|tz| format!(" {tz}"))
                .unwrap_or_default()
        );
        let event = serde_json::json!({
            "specversion": events::SPECVERSION,
            "id": uuid::Uuid::now_v7().to_string(),
            "source": new.source,
            "type": new.event_type,
            "datacontenttype": events::DATACONTENTTYPE_JSON,
            "data": new.data,
        });
        let spec = provision::schedule::spec(&name, when, &serde_json::to_vec(&event)?)?;
        let sequence = match keyring {
            Some(keyring) if !publish::sealed::sensitive_fields(&spec.event_type).is_empty() => {
                let mut sealed = event.clone();
                let mut headers = async_nats::HeaderMap::new();
                if let Some(key_id) = publish::sealed::seal_event(&mut sealed, keyring)? {
                    headers.insert(publish::sealed::KEY_ID_HEADER, key_id.as_str());
                }
                publish::schedule::put(
                    js,
                    &spec.name,
                    &spec.when,
                    &spec.event_type,
                    serde_json::to_vec(&sealed)?.into(),
                    Some(headers),
                    new.replace,
                )
                .await?
            }
            _ => provision::schedule::put(js, &spec, new.replace).await?,
        };
        let next_runs = next_runs(
            &spec.when.pattern,
            spec.when.time_zone.as_deref(),
            Anchor::Stored(now),
            now,
            ADD_NEXT_RUNS,
        )
        .unwrap_or_default();
        anyhow::Ok(Schedule {
            name: spec.name.clone(),
            spec: spec.when.pattern.clone(),
            time_zone: spec.when.time_zone.clone(),
            event_type: Some(spec.event_type.clone()),
            target: format!("{TARGET_PREFIX}.{}", spec.event_type),
            sequence,
            stored: now,
            next_runs,
            defined_in: None,
        })
    }
    .await;
    match &result {
        Ok(_) => {
            auditor
                .record_reported(Action::ScheduleAdd, &name, Outcome::Ok, &detail)
                .await;
        }
        Err(err) => {
            auditor
                .record_reported(
                    Action::ScheduleAdd,
                    &name,
                    Outcome::Error,
                    &format!("{detail}: {err:#}"),
                )
                .await;
        }
    }
    result
}

/// Cancels the schedule `name` (purges its subject), and audits (`schedule-cancel`) success or failure.
///
/// # Errors
/// No such schedule (naming it; a one-off that already fired is gone too), or the server's refusal.
pub async fn cancel(js: &jetstream::Context, auditor: &Auditor, name: &str) -> anyhow::Result<()> {
    let result = publish::schedule::cancel(js, name)
        .await
        .context("cancelling the schedule")
        .and_then(|purged| {
            anyhow::ensure!(purged, "no schedule named {name}");
            Ok(())
        });
    let (outcome, detail) = match &result {
        Ok(()) => (Outcome::Ok, String::new()),
        Err(err) => (Outcome::Error, format!("{err:#}")),
    };
    auditor
        .record_reported(Action::ScheduleCancel, name, outcome, &detail)
        .await;
    result
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn utc(at: OffsetDateTime) -> String {
        crate::rfc3339(at)
    }

    /// A daily 09:00 in Amsterdam stays 09:00 local across the spring change (08:00Z, then 07:00Z).
    #[test]
    fn cron_in_a_zone_keeps_local_time_across_dst() {
        let now = datetime!(2026-03-27 12:00 UTC);
        let runs = next_runs(
            "0 0 9 * * *",
            Some("Europe/Amsterdam"),
            Anchor::Stored(now),
            now,
            3,
        )
        .unwrap();
        assert_eq!(
            runs.into_iter().map(utc).collect::<Vec<_>>(),
            [
                "2026-03-28T08:00:00Z",
                "2026-03-29T07:00:00Z",
                "2026-03-30T07:00:00Z"
            ]
        );
        // And back in autumn (25 October 2026).
        let now = datetime!(2026-10-24 12:00 UTC);
        let runs = next_runs(
            "@daily",
            Some("Europe/Amsterdam"),
            Anchor::Stored(now),
            now,
            2,
        )
        .unwrap();
        assert_eq!(
            runs.into_iter().map(utc).collect::<Vec<_>>(),
            ["2026-10-24T22:00:00Z", "2026-10-25T23:00:00Z"]
        );
    }

    /// The server walks absolute hours: 02:30 does not exist on 29 March in Amsterdam, so it does not run that day;
    /// on 25 October 02:30 happens twice, and it runs at both.
    #[test]
    fn cron_in_skipped_and_repeated_hours_follows_the_server() {
        let now = datetime!(2026-03-28 12:00 UTC);
        let runs = next_runs(
            "0 30 2 * * *",
            Some("Europe/Amsterdam"),
            Anchor::Stored(now),
            now,
            2,
        )
        .unwrap();
        assert_eq!(
            runs.into_iter().map(utc).collect::<Vec<_>>(),
            ["2026-03-30T00:30:00Z", "2026-03-31T00:30:00Z"]
        );
        let now = datetime!(2026-10-24 12:00 UTC);
        let runs = next_runs(
            "0 30 2 * * *",
            Some("Europe/Amsterdam"),
            Anchor::Stored(now),
            now,
            3,
        )
        .unwrap();
        assert_eq!(
            runs.into_iter().map(utc).collect::<Vec<_>>(),
            [
                "2026-10-25T00:30:00Z",
                "2026-10-25T01:30:00Z",
                "2026-10-26T01:30:00Z"
            ]
        );
    }

    #[test]
    fn every_counts_from_the_stored_time_rounded_or_the_planned_run() {
        let stored = datetime!(2026-11-28 10:00:00.600 UTC);
        let now = datetime!(2026-11-28 10:00:07.100 UTC);
        let runs = next_runs("@every 5s", None, Anchor::Stored(stored), now, 3).unwrap();
        assert_eq!(
            runs.into_iter().map(utc).collect::<Vec<_>>(),
            [
                "2026-11-28T10:00:11Z",
                "2026-11-28T10:00:16Z",
                "2026-11-28T10:00:21Z"
            ]
        );
        let planned = datetime!(2026-11-28 10:00:09 UTC);
        let runs = next_runs("@every 1m30s", None, Anchor::Planned(planned), now, 2).unwrap();
        assert_eq!(
            runs.into_iter().map(utc).collect::<Vec<_>>(),
            ["2026-11-28T10:00:09Z", "2026-11-28T10:01:39Z"]
        );
        assert_eq!(go_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert!(go_duration("500ms").is_err());
    }

    #[test]
    fn at_is_its_time_or_nothing() {
        let now = datetime!(2026-11-28 10:00 UTC);
        let next = |spec: &str| next_runs(spec, None, Anchor::Stored(now), now, 5).unwrap();
        assert_eq!(
            next("@at 2026-11-28T11:00:00Z"),
            [datetime!(2026-11-28 11:00 UTC)]
        );
        assert!(next("@at 2026-11-28T09:00:00Z").is_empty());
    }

    #[test]
    fn predefined_and_day_rules_are_the_servers() {
        let now = datetime!(2026-11-28 10:00 UTC); // a Saturday
        let next = |spec: &str| {
            next_runs(spec, None, Anchor::Stored(now), now, 2)
                .unwrap()
                .into_iter()
                .map(utc)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            next("@hourly"),
            ["2026-11-28T11:00:00Z", "2026-11-28T12:00:00Z"]
        );
        assert_eq!(
            next("@weekly"),
            ["2026-11-29T00:00:00Z", "2026-12-06T00:00:00Z"]
        );
        assert_eq!(
            next("@monthly"),
            ["2026-12-01T00:00:00Z", "2027-01-01T00:00:00Z"]
        );
        // Sunday is 0; both days restricted means either.
        assert_eq!(
            next("0 0 0 1 * 0"),
            ["2026-11-29T00:00:00Z", "2026-12-01T00:00:00Z"]
        );
        // `?` is a star, `N/step` starts at N.
        assert_eq!(
            next("0 0/20 * ? * *"),
            ["2026-11-28T10:20:00Z", "2026-11-28T10:40:00Z"]
        );
    }

    #[test]
    fn bad_patterns_name_the_field() {
        let now = OffsetDateTime::now_utc();
        let cron = |expr: &str, tz: Option<&str>| {
            format!(
                "{:#}",
                When::Cron {
                    expr: expr.to_owned(),
                    time_zone: tz.map(str::to_owned)
                }
                .to_nats(now)
                .unwrap_err()
            )
        };
        assert!(
            cron("0 0 * * *", None).contains("cron"),
            "{}",
            cron("0 0 * * *", None)
        );
        assert!(cron("0 61 * * * *", None).contains("cron"));
        let text = cron("0 0 9 * * *", Some("Mars/Olympus"));
        assert!(text.contains("time_zone"), "{text}");
        let every = format!(
            "{:#}",
            When::Every(Duration::from_millis(1500))
                .to_nats(now)
                .unwrap_err()
        );
        assert!(every.contains("every"), "{every}");
    }
}
