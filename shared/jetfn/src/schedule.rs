//! `jetfn schedule`: events NATS publishes later, or again and again, with no scheduler process.
//!
//! A schedule is one message on `schedules.<name>` in the `SCHEDULES` stream, carrying the whole CloudEvent and
//! the headers `Nats-Schedule` (`@at <RFC 3339>`, `@every <duration>` or a 6-field cron), `Nats-Schedule-Time-Zone`
//! (cron only) and `Nats-Schedule-Target: scheduled.<type>`. When it fires the server stores a copy on the target,
//! and `EVENTS` sources `scheduled.>` as `events.>`, where the functions' consumers see an ordinary event. The
//! schedule is a stream message, so it survives server restarts; cancelling purges its subject.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, stream};
use futures::TryStreamExt as _;
use provision::schedule::{
    SCHEDULE_PREFIX, STREAM, TARGET_PREFIX, When, cron_when, parse_duration, put, spec,
};
use publish::schedule::Delay;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Schedule an event: once (--at, --in) or recurring (--every, --cron with --tz). The event is validated first.
    Add(AddArgs),
    /// Every schedule: name, when, time zone, event type.
    List(crate::output::JsonArg),
    /// Remove a schedule; it does not fire again.
    Cancel {
        /// The schedule's name.
        name: String,
    },
}

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("when").required(true).args(["at", "in_", "every", "cron"])))]
pub(crate) struct AddArgs {
    /// The event type, such as `cleanup.requested`.
    r#type: String,
    /// The event's data as JSON, `@file.json`, or `-` for stdin (default: the catalog's example).
    #[arg(long, short)]
    data: Option<String>,
    /// Once, at this time (RFC 3339, e.g. 2026-12-01T09:00:00+01:00).
    #[arg(long)]
    at: Option<String>,
    /// Once, after this delay (e.g. 90s, 10m, 1h30m).
    #[arg(long = "in", value_name = "DELAY")]
    in_: Option<String>,
    /// Again and again, at this interval (at least 1s; e.g. 1h).
    #[arg(long)]
    every: Option<String>,
    /// On a 6-field cron: second minute hour day-of-month month day-of-week (or @hourly, @daily, ...).
    #[arg(long)]
    cron: Option<String>,
    /// The IANA time zone of --cron (default UTC), e.g. Europe/Amsterdam.
    #[arg(long, requires = "cron")]
    tz: Option<String>,
    /// The schedule's name (letters, digits, - and _; default: the type and a random suffix).
    #[arg(long)]
    name: Option<String>,
    /// Replace a schedule of the same name instead of refusing.
    #[arg(long)]
    replace: bool,
    /// The CloudEvents `source`.
    #[arg(long, default_value = "/jetfn-cli")]
    source: String,
}

pub(crate) async fn run(
    client: async_nats::Client,
    audit: &crate::audit::Audit,
    command: ScheduleCommand,
) -> anyhow::Result<()> {
    use ops::audit::{Action, Outcome};
    let js = jetstream::new(client.clone());
    let stream = js
        .get_stream(STREAM)
        .await
        .context("the SCHEDULES stream (run `jetfn infra apply`)")?;
    match command {
        ScheduleCommand::Add(args) => {
            let when = when_of(&args, OffsetDateTime::now_utc())?;
            let name = match &args.name {
                Some(name) => name.clone(),
                None => format!(
                    "{}-{}",
                    args.r#type.replace('.', "-"),
                    &uuid::Uuid::now_v7().simple().to_string()[20..]
                ),
            };
            let data = match &args.data {
                Some(data) => {
                    serde_json::from_slice(&crate::read_arg(data)?).context("--data is not JSON")?
                }
                None => {
                    let kind = events::kind_by_type(&args.r#type).with_context(|| {
                        format!("unknown event type {}; see `jetfn catalog`", args.r#type)
                    })?;
                    (kind.example_data)()
                }
            };
            let event = serde_json::json!({
                "specversion": events::SPECVERSION,
                "id": uuid::Uuid::now_v7().to_string(),
                "source": args.source,
                "type": args.r#type,
                "datacontenttype": events::DATACONTENTTYPE_JSON,
                "data": data,
            });
            let spec = spec(&name, when, &serde_json::to_vec(&event)?)?;
            let detail = format!(
                "{} \"{}\"{}",
                spec.event_type,
                spec.when.pattern,
                spec.when
                    .time_zone
                    .as_ref()
                    .map(|tz| format!(" {tz}"))
                    .unwrap_or_default()
            );
            // With a keyring, sensitive fields are sealed as the publisher seals them (validated in clear above).
            let written = async {
                match publish::sealed::Keyring::from_env()? {
                    Some(keyring)
                        if !publish::sealed::sensitive_fields(&spec.event_type).is_empty() =>
                    {
                        let mut sealed = event.clone();
                        let mut headers = async_nats::HeaderMap::new();
                        if let Some(key_id) = publish::sealed::seal_event(&mut sealed, &keyring)? {
                            headers.insert(publish::sealed::KEY_ID_HEADER, key_id.as_str());
                        }
                        Ok(publish::schedule::put(
                            &js,
                            &spec.name,
                            &spec.when,
                            &spec.event_type,
                            serde_json::to_vec(&sealed)?.into(),
                            Some(headers),
                            args.replace,
                        )
                        .await?)
                    }
                    _ => put(&js, &spec, args.replace).await,
                }
            }
            .await;
            let sequence = match written {
                Ok(sequence) => {
                    audit
                        .record(Action::ScheduleAdd, &spec.name, Outcome::Ok, &detail)
                        .await;
                    sequence
                }
                Err(err) => {
                    audit
                        .record(
                            Action::ScheduleAdd,
                            &spec.name,
                            Outcome::Error,
                            &format!("{detail}: {}", crate::render_error(&err)),
                        )
                        .await;
                    return Err(err);
                }
            };
            client.flush().await.ok();
            println!(
                "scheduled {} name={} when=\"{}\"{} subject={SCHEDULE_PREFIX}.{} stream={STREAM} seq={sequence}",
                spec.event_type,
                spec.name,
                spec.when.pattern,
                spec.when
                    .time_zone
                    .as_ref()
                    .map(|tz| format!(" tz={tz}"))
                    .unwrap_or_default(),
                spec.name,
            );
            Ok(())
        }
        ScheduleCommand::List(json) => list(&stream, json.json).await,
        ScheduleCommand::Cancel { name } => {
            let purged = publish::schedule::cancel(&js, &name)
                .await
                .context("cancelling the schedule")
                .and_then(|purged| {
                    anyhow::ensure!(purged, "no schedule named {name}");
                    Ok(purged)
                });
            let outcome = match &purged {
                Ok(_) => (Outcome::Ok, String::new()),
                Err(err) => (Outcome::Error, crate::render_error(err)),
            };
            audit
                .record(Action::ScheduleCancel, &name, outcome.0, &outcome.1)
                .await;
            purged?;
            println!("cancelled {name}");
            Ok(())
        }
    }
}

fn when_of(args: &AddArgs, now: OffsetDateTime) -> anyhow::Result<When> {
    // The publisher's one implementation: rounded up to the whole second, never early, and never in the past.
    if let Some(at) = &args.at {
        let parsed = OffsetDateTime::parse(at, &Rfc3339)
            .with_context(|| format!("--at {at} is not an RFC 3339 time"))?;
        return Delay::At(parsed)
            .when(now)
            .with_context(|| format!("--at {at}"));
    }
    if let Some(delay) = &args.in_ {
        let parsed = parse_duration(delay).with_context(|| format!("--in {delay}"))?;
        return Delay::In(parsed)
            .when(now)
            .with_context(|| format!("--in {delay}"));
    }
    if let Some(every) = &args.every {
        let every = parse_duration(every).with_context(|| format!("--every {every}"))?;
        anyhow::ensure!(
            every >= Duration::from_secs(1),
            "--every must be at least 1s"
        );
        return Ok(When {
            pattern: format!("@every {}s", every.as_secs()),
            time_zone: None,
        });
    }
    let cron = args.cron.as_deref().unwrap_or_default().trim();
    cron_when(cron, args.tz.clone())
}

/// A schedule as `schedule list` shows it.
#[derive(Debug, serde::Serialize)]
struct Listed {
    name: String,
    when: String,
    time_zone: Option<String>,
    event_type: String,
    #[serde(with = "time::serde::rfc3339")]
    created: OffsetDateTime,
}

async fn list(stream: &stream::Stream, json: bool) -> anyhow::Result<()> {
    let mut subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{SCHEDULE_PREFIX}.>"))
        .await?
        .try_collect()
        .await?;
    subjects.sort();
    let mut listed = Vec::new();
    for (subject, _) in subjects {
        let Ok(message) = stream.direct_get_last_for_subject(subject.as_str()).await else {
            continue;
        };
        let header = |name: &str| {
            message
                .headers
                .get(name)
                .map(|value| value.as_str().to_owned())
                .unwrap_or_default()
        };
        let target = header("Nats-Schedule-Target");
        listed.push(Listed {
            name: subject
                .strip_prefix(&format!("{SCHEDULE_PREFIX}."))
                .unwrap_or(&subject)
                .to_owned(),
            when: header("Nats-Schedule"),
            time_zone: Some(header("Nats-Schedule-Time-Zone")).filter(|tz| !tz.is_empty()),
            event_type: target
                .strip_prefix(&format!("{TARGET_PREFIX}."))
                .unwrap_or(&target)
                .to_owned(),
            created: message.time,
        });
    }
    if json {
        return crate::output::print_json(&listed);
    }
    if listed.is_empty() {
        println!("no schedules");
        return Ok(());
    }
    let mut table = crate::output::table(&["name", "when", "time zone", "event type", "created"]);
    for schedule in &listed {
        table.add_row(vec![
            schedule.name.clone(),
            schedule.when.clone(),
            schedule.time_zone.clone().unwrap_or_else(|| "-".to_owned()),
            schedule.event_type.clone(),
            ops::rfc3339(schedule.created),
        ]);
    }
    crate::output::print_table(&table);
    Ok(())
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod tests {
    use super::*;

    fn once(at: Option<&str>, in_: Option<&str>) -> AddArgs {
        AddArgs {
            r#type: "cleanup.requested".to_owned(),
            data: None,
            at: at.map(str::to_owned),
            in_: in_.map(str::to_owned),
            every: None,
            cron: None,
            tz: None,
            name: None,
            replace: false,
            source: "/t".to_owned(),
        }
    }

    fn fires_at(when: &When) -> OffsetDateTime {
        let at = when.pattern.strip_prefix("@at ").expect("an @at pattern");
        OffsetDateTime::parse(at, &Rfc3339).expect("RFC 3339")
    }

    /// Issue 14, item 12: the time was truncated to the second, so `--in 3s` fired up to a second early.
    #[test]
    fn in_and_at_never_fire_early() {
        let now = time::macros::datetime!(2026-11-28 10:00:00.900 UTC);
        let when = when_of(&once(None, Some("3s")), now).unwrap();
        assert!(
            fires_at(&when) >= now + time::Duration::seconds(3),
            "{}",
            when.pattern
        );
        assert_eq!(when.pattern, "@at 2026-11-28T10:00:04Z");
        // On a whole second nothing is added.
        let whole = time::macros::datetime!(2026-11-28 10:00:00 UTC);
        assert_eq!(
            when_of(&once(None, Some("3s")), whole).unwrap().pattern,
            "@at 2026-11-28T10:00:03Z"
        );
        // An --at with a fraction rounds up too, and keeps its instant across offsets.
        let at = when_of(&once(Some("2026-12-01T09:00:00.250+01:00"), None), now).unwrap();
        assert_eq!(at.pattern, "@at 2026-12-01T08:00:01Z");
        // A delay past the calendar is an error, not a panic.
        let err = when_of(&once(None, Some("9999999999d")), now).unwrap_err();
        assert!(format!("{err:#}").contains("--in"), "{err:#}");
        // A time in the past is refused, naming the flag.
        let err = when_of(&once(Some("2026-11-28T09:59:59Z"), None), now).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with("--at ") && text.contains("in the past"),
            "{text}"
        );
    }

    #[test]
    fn every_takes_whole_seconds_and_at_least_one() {
        let args = |every: &str| AddArgs {
            r#type: "cleanup.requested".to_owned(),
            data: None,
            at: None,
            in_: None,
            every: Some(every.to_owned()),
            cron: None,
            tz: None,
            name: None,
            replace: false,
            source: "/t".to_owned(),
        };
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            when_of(&args("1h30m"), now).unwrap().pattern,
            "@every 5400s"
        );
        assert!(when_of(&args("0s"), now).is_err());
    }
}
