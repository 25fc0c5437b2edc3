//! Schedules: events NATS publishes later, or again and again, with no scheduler process.
//!
//! A schedule is one message on `schedules.<name>` in the `SCHEDULES` stream, carrying the whole CloudEvent and
//! the headers `Nats-Schedule` (`@at <RFC 3339>`, `@every <duration>` or a 6-field cron), `Nats-Schedule-Time-Zone`
//! (cron only) and `Nats-Schedule-Target: scheduled.<type>`. When it fires the server stores a copy on the target,
//! and `EVENTS` sources `scheduled.>` as `events.>`, where the functions' consumers see an ordinary event. The
//! schedule is a stream message, so it survives server restarts; cancelling purges its subject.
//!
//! The default schedules live in `infra/nats/schedules/<name>.json`; `jetfn schedule add` writes others.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use serde::Deserialize;

/// The one implementation of schedules, shared with the publisher and the SDK.
pub use publish::schedule::{SCHEDULE_PREFIX, STREAM, TARGET_PREFIX, When};

/// One schedule to write.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The schedule's name: its subject is `schedules.<name>`.
    pub name: String,
    /// When it fires.
    pub when: When,
    /// The whole CloudEvent, validated.
    pub event: Vec<u8>,
    /// The event's type.
    pub event_type: String,
}

impl Spec {
    /// The subject the schedule lives on.
    pub fn subject(&self) -> String {
        format!("{SCHEDULE_PREFIX}.{}", self.name)
    }
}

/// Builds a schedule: checks the name and validates the event with the publisher's validator.
///
/// # Errors
/// A name that is not a subject token, or an event the catalog refuses.
pub fn spec(name: &str, when: When, event: &[u8]) -> anyhow::Result<Spec> {
    check_name(name)?;
    let checked = events::Validator::new()
        .check(event)
        .map_err(|invalid| anyhow::anyhow!("invalid event: {invalid}"))?;
    Ok(Spec {
        name: name.to_owned(),
        when,
        event: event.to_vec(),
        event_type: checked.ty,
    })
}

/// A schedule name is one subject token.
///
/// # Errors
/// Anything but 1 to 128 letters, digits, `-` or `_`.
pub fn check_name(name: &str) -> anyhow::Result<()> {
    Ok(publish::schedule::check_name(name)?)
}

/// A cron schedule: 6 fields or a named one (`@daily`).
///
/// # Errors
/// Any other number of fields.
pub fn cron_when(cron: &str, time_zone: Option<String>) -> anyhow::Result<When> {
    const NAMED: &[&str] = &[
        "@yearly",
        "@annually",
        "@monthly",
        "@weekly",
        "@daily",
        "@midnight",
        "@hourly",
    ];
    anyhow::ensure!(
        NAMED.contains(&cron) || cron.split_whitespace().count() == 6,
        "--cron takes 6 fields (second minute hour day-of-month month day-of-week) or one of {}",
        NAMED.join(", ")
    );
    if let Some(zone) = &time_zone {
        // It becomes the `Nats-Schedule-Time-Zone` header: a line break in it would end the header block (found by
        // the fuzz target `fuzz_schedule_files`). IANA names use only these characters.
        anyhow::ensure!(
            !zone.is_empty()
                && zone.len() <= 64
                && zone
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_+-/".contains(c)),
            "the time zone must be an IANA name such as Europe/Amsterdam (letters, digits, _ + - /)"
        );
    }
    Ok(When {
        pattern: cron.split_whitespace().collect::<Vec<_>>().join(" "),
        time_zone,
    })
}

/// `90s`, `10m`, `1h30m`, `2h`: whole seconds, minutes and hours (the `@every` syntax, without fractions).
///
/// # Errors
/// Text that is not such a duration.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let mut total = 0u64;
    let mut number = String::new();
    let mut any = false;
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => anyhow::bail!("unknown unit {c:?}; use s, m, h or d (e.g. 1h30m)"),
        };
        let value: u64 = number
            .parse()
            .map_err(|_| anyhow::anyhow!("a number must come before {c:?}"))?;
        total = total.saturating_add(value.saturating_mul(unit));
        number.clear();
        any = true;
    }
    anyhow::ensure!(
        any && number.is_empty(),
        "not a duration; write e.g. 90s, 10m or 1h30m"
    );
    Ok(Duration::from_secs(total))
}

/// Writes the schedule. Without `replace`, it refuses when one of the same name exists (the server checks that the
/// subject is empty, so two writers cannot both win).
///
/// # Errors
/// A schedule of that name exists (without `replace`), or the server refuses it.
pub async fn put(js: &jetstream::Context, spec: &Spec, replace: bool) -> anyhow::Result<u64> {
    Ok(publish::schedule::put(
        js,
        &spec.name,
        &spec.when,
        &spec.event_type,
        spec.event.clone().into(),
        None,
        replace,
    )
    .await?)
}

/// A schedule defined in `infra/nats/schedules/<name>.json` (keys checked against `schema::SCHEDULE` first).
#[derive(Debug, Deserialize)]
struct ScheduleFile {
    name: String,
    r#type: String,
    #[serde(default)]
    data: serde_json::Value,
    #[serde(default)]
    cron: Option<String>,
    #[serde(default)]
    every: Option<String>,
    #[serde(default)]
    time_zone: Option<String>,
}

/// The schedule a file describes, its event validated.
///
/// A fixed id and no time: the same file always makes the same bytes, so "unchanged" is a byte compare.
pub(crate) fn from_file(value: serde_json::Value) -> anyhow::Result<Spec> {
    let file: ScheduleFile = serde_json::from_value(value)?;
    let when = match (&file.cron, &file.every) {
        (Some(cron), None) => cron_when(cron, file.time_zone.clone()).context("`cron`")?,
        (None, Some(every)) => {
            anyhow::ensure!(
                file.time_zone.is_none(),
                "`time_zone` goes with `cron` only"
            );
            When {
                pattern: format!(
                    "@every {}s",
                    parse_duration(every).context("`every`")?.as_secs()
                ),
                time_zone: None,
            }
        }
        _ => anyhow::bail!("give exactly one of `cron` and `every`"),
    };
    let event = serde_json::to_vec(&serde_json::json!({
        "specversion": events::SPECVERSION,
        "id": format!("schedule-{}", file.name),
        "source": "/jetfn-infra",
        "type": file.r#type,
        "datacontenttype": events::DATACONTENTTYPE_JSON,
        "data": file.data,
    }))?;
    spec(&file.name, when, &event)
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("2d").unwrap(), Duration::from_secs(172_800));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1.5h").is_err());
        assert!(parse_duration("").is_err());
    }

    /// Found by the fuzz target `fuzz_schedule_files` (minimal input: `"time_zone": "\n"` with `"cron": "@daily"`):
    /// the time zone reached the `Nats-Schedule-Time-Zone` header unchecked.
    #[test]
    fn a_time_zone_is_an_iana_name_never_a_header_break() {
        for zone in [
            "\n",
            "Europe/X\r\nNats-Expected-Stream: y",
            "",
            "Europe Amsterdam",
            "\0",
        ] {
            assert!(
                cron_when("@daily", Some(zone.to_owned())).is_err(),
                "{zone:?}"
            );
        }
        for zone in [
            "Europe/Amsterdam",
            "UTC",
            "Etc/GMT+5",
            "America/Argentina/Buenos_Aires",
            "Asia/Ho_Chi_Minh",
        ] {
            assert!(
                cron_when("0 30 3 * * *", Some(zone.to_owned())).is_ok(),
                "{zone}"
            );
        }
        let file = serde_json::json!({
            "name": "a", "type": "cleanup.requested", "data": {}, "cron": "@daily", "time_zone": "\n"
        });
        assert!(from_file(file).is_err());
    }

    #[test]
    fn cron_needs_six_fields() {
        assert!(cron_when("0 0 3 * * *", Some("Europe/Amsterdam".into())).is_ok());
        assert!(cron_when("@daily", None).is_ok());
        assert!(cron_when("0 3 * * *", None).is_err());
    }

    #[test]
    fn names_are_subject_tokens() {
        assert!(check_name("cleanup-daily_2").is_ok());
        assert!(check_name("a.b").is_err());
        assert!(check_name("").is_err());
    }
}
