//! `jetfn schedule`: events NATS publishes later, or again and again, with no scheduler process.
//!
//! A schedule is one message on `schedules.<name>` in the `SCHEDULES` stream, carrying the whole CloudEvent and
//! the headers `Nats-Schedule` (`@at <RFC 3339>`, `@every <duration>` or a 6-field cron), `Nats-Schedule-Time-Zone`
//! (cron only) and `Nats-Schedule-Target: scheduled.<type>`. When it fires the server stores a copy on the target,
//! and `EVENTS` sources `scheduled.>` as `events.>`, where the functions' consumers see an ordinary event. The
//! schedule is a stream message, so it survives server restarts; cancelling purges its subject.

use anyhow::Context as _;
use async_nats::jetstream;
use ops::schedules::{NewSchedule, When as Asked};
#[cfg(test)]
use provision::schedule::When;
use provision::schedule::{SCHEDULE_PREFIX, STREAM, parse_duration};
#[cfg(test)]
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Schedule an event: once (--at, --in) or recurring (--every, --cron with --tz). The event is validated first.
    Add(AddArgs),
    /// Every schedule: name, when, time zone, event type, next run (`--json`: the next `--next` runs).
    List(ListArgs),
    /// Remove a schedule; it does not fire again.
    Cancel {
        /// The schedule's name.
        name: String,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct ListArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// How many next run times to compute per schedule (the table shows the first).
    #[arg(long, default_value_t = 5)]
    next: usize,
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
    let js = jetstream::new(client.clone());
    match command {
        ScheduleCommand::Add(args) => {
            let when = asked(&args)?;
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
            // With a keyring, sensitive fields are sealed as the publisher seals them (validated in clear first).
            let keyring = publish::sealed::Keyring::from_env()?;
            let schedule = ops::schedules::add_sealed(
                &js,
                audit.auditor(),
                NewSchedule {
                    event_type: args.r#type.clone(),
                    data,
                    when,
                    name: args.name.clone(),
                    replace: args.replace,
                    source: args.source.clone(),
                },
                keyring.as_ref(),
            )
            .await
            .map_err(|err| flag_context(&args, err))?;
            client.flush().await.ok();
            println!(
                "scheduled {} name={} when=\"{}\"{} subject={SCHEDULE_PREFIX}.{} stream={STREAM} seq={}{}",
                schedule.event_type.as_deref().unwrap_or_default(),
                schedule.name,
                schedule.spec,
                schedule
                    .time_zone
                    .as_ref()
                    .map(|tz| format!(" tz={tz}"))
                    .unwrap_or_default(),
                schedule.name,
                schedule.sequence,
                schedule
                    .next_runs
                    .first()
                    .map(|at| format!(" next={}", ops::rfc3339(*at)))
                    .unwrap_or_default(),
            );
            Ok(())
        }
        ScheduleCommand::List(args) => list(&js, &args).await,
        ScheduleCommand::Cancel { name } => {
            ops::schedules::cancel(&js, audit.auditor(), &name).await?;
            println!("cancelled {name}");
            Ok(())
        }
    }
}

/// The flags' schedule, as ops takes it.
fn asked(args: &AddArgs) -> anyhow::Result<Asked> {
    if let Some(at) = &args.at {
        let parsed = time::OffsetDateTime::parse(at, &Rfc3339)
            .with_context(|| format!("--at {at} is not an RFC 3339 time"))?;
        return Ok(Asked::At(parsed));
    }
    if let Some(delay) = &args.in_ {
        return Ok(Asked::In(
            parse_duration(delay).with_context(|| format!("--in {delay}"))?,
        ));
    }
    if let Some(every) = &args.every {
        return Ok(Asked::Every(
            parse_duration(every).with_context(|| format!("--every {every}"))?,
        ));
    }
    Ok(Asked::Cron {
        expr: args.cron.as_deref().unwrap_or_default().trim().to_owned(),
        time_zone: args.tz.clone(),
    })
}

/// An error of ops about the schedule's time, said with the flag it came from.
fn flag_context(args: &AddArgs, err: anyhow::Error) -> anyhow::Error {
    let flag = match () {
        () if args.at.is_some() => format!("--at {}", args.at.as_deref().unwrap_or_default()),
        () if args.in_.is_some() => format!("--in {}", args.in_.as_deref().unwrap_or_default()),
        () if args.every.is_some() => {
            format!("--every {}", args.every.as_deref().unwrap_or_default())
        }
        () => "--cron".to_owned(),
    };
    let text = format!("{err:#}");
    let about_time = ["`at`", "`in`", "`every`", "`cron`", "`time_zone`"]
        .iter()
        .any(|field| text.contains(field));
    if about_time { err.context(flag) } else { err }
}

/// The `Nats-Schedule` the flags mean at `now` (what `add` writes).
#[cfg(test)]
fn when_of(args: &AddArgs, now: OffsetDateTime) -> anyhow::Result<When> {
    let when = asked(args)?;
    when.to_nats(now).map_err(|err| flag_context(args, err))
}

async fn list(js: &jetstream::Context, args: &ListArgs) -> anyhow::Result<()> {
    let listed = ops::schedules::list(js, args.next).await?;
    if args.json {
        return crate::output::print_json(&listed);
    }
    if listed.is_empty() {
        println!("no schedules");
        return Ok(());
    }
    let mut table = crate::output::table(&["name", "when", "time zone", "event type", "next run"]);
    for schedule in &listed {
        table.add_row(vec![
            schedule.name.clone(),
            schedule.spec.clone(),
            schedule.time_zone.clone().unwrap_or_else(|| "-".to_owned()),
            schedule
                .event_type
                .clone()
                .unwrap_or_else(|| "-".to_owned()),
            schedule
                .next_runs
                .first()
                .map_or_else(|| "-".to_owned(), |at| ops::rfc3339(*at)),
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
