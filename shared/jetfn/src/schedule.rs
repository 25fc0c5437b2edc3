//! `jetfn schedule`: events NATS publishes later, or again and again, with no scheduler process.
//!
//! A schedule is one message on `schedules.<name>` in the `SCHEDULES` stream, carrying the whole CloudEvent and
//! the headers `Nats-Schedule` (`@at <RFC 3339>`, `@every <duration>` or a 6-field cron), `Nats-Schedule-Time-Zone`
//! (cron only) and `Nats-Schedule-Target: scheduled.<type>`. When it fires the server stores a copy on the target,
//! and `EVENTS` sources `scheduled.>` as `events.>`, where the functions' consumers see an ordinary event. The
//! schedule is a stream message, so it survives server restarts; cancelling purges its subject.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use futures::TryStreamExt as _;
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The stream that holds schedules.
pub(crate) const STREAM: &str = "SCHEDULES";
/// Schedules live on `schedules.<name>`.
const SCHEDULE_PREFIX: &str = "schedules";
/// A schedule fires to `scheduled.<type>`; EVENTS sources that as `events.<type>`.
const TARGET_PREFIX: &str = "scheduled";
/// How long a fired copy stays in SCHEDULES: long enough for EVENTS to source it through an outage.
const FIRED_COPY_TTL: &str = "24h";

#[derive(Debug, clap::Subcommand)]
pub(crate) enum ScheduleCommand {
    /// Schedule an event: once (--at, --in) or recurring (--every, --cron with --tz). The event is validated first.
    Add(AddArgs),
    /// Every schedule: name, when, time zone, event type.
    List,
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

/// When a schedule fires, as the `Nats-Schedule` header says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct When {
    pattern: String,
    time_zone: Option<String>,
}

/// One schedule to write.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub name: String,
    pub when: When,
    /// The whole CloudEvent, validated.
    pub event: Vec<u8>,
    pub event_type: String,
}

pub(crate) async fn run(
    client: async_nats::Client,
    command: ScheduleCommand,
) -> anyhow::Result<()> {
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
            let sequence = put(&js, &spec, args.replace).await?;
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
        ScheduleCommand::List => list(&stream).await,
        ScheduleCommand::Cancel { name } => {
            check_name(&name)?;
            let purged = stream
                .purge()
                .filter(format!("{SCHEDULE_PREFIX}.{name}"))
                .await
                .context("purging the schedule")?
                .purged;
            anyhow::ensure!(purged > 0, "no schedule named {name}");
            println!("cancelled {name}");
            Ok(())
        }
    }
}

/// Builds a schedule: checks the name and validates the event with the publisher's validator.
pub(crate) fn spec(name: &str, when: When, event: &[u8]) -> anyhow::Result<Spec> {
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

fn check_name(name: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty()
            && name.len() <= 128
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
        "a schedule name is 1 to 128 letters, digits, - or _"
    );
    Ok(())
}

fn when_of(args: &AddArgs, now: OffsetDateTime) -> anyhow::Result<When> {
    let once = |at: OffsetDateTime| -> anyhow::Result<When> {
        let at = at.to_offset(time::UtcOffset::UTC).replace_nanosecond(0)?;
        Ok(When {
            pattern: format!("@at {}", at.format(&Rfc3339)?),
            time_zone: None,
        })
    };
    if let Some(at) = &args.at {
        let at = OffsetDateTime::parse(at, &Rfc3339)
            .with_context(|| format!("--at {at} is not an RFC 3339 time"))?;
        return once(at);
    }
    if let Some(delay) = &args.in_ {
        let delay = parse_duration(delay).with_context(|| format!("--in {delay}"))?;
        return once(now + delay);
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

pub(crate) fn cron_when(cron: &str, time_zone: Option<String>) -> anyhow::Result<When> {
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
    Ok(When {
        pattern: cron.split_whitespace().collect::<Vec<_>>().join(" "),
        time_zone,
    })
}

/// `90s`, `10m`, `1h30m`, `2h`: whole seconds, minutes and hours (the `@every` syntax, without fractions).
pub(crate) fn parse_duration(text: &str) -> anyhow::Result<Duration> {
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
pub(crate) async fn put(
    js: &jetstream::Context,
    spec: &Spec,
    replace: bool,
) -> anyhow::Result<u64> {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Schedule", spec.when.pattern.as_str());
    headers.insert(
        "Nats-Schedule-Target",
        format!("{TARGET_PREFIX}.{}", spec.event_type).as_str(),
    );
    headers.insert("Nats-Schedule-TTL", FIRED_COPY_TTL);
    if let Some(tz) = &spec.when.time_zone {
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
        .publish_with_headers(
            format!("{SCHEDULE_PREFIX}.{}", spec.name),
            headers,
            spec.event.clone().into(),
        )
        .await
        .context("publishing the schedule")?
        .await;
    match ack {
        Ok(ack) => Ok(ack.sequence),
        Err(err) if !replace && err.to_string().contains("wrong last sequence") => {
            Err(anyhow::anyhow!(
                "a schedule named {} exists; cancel it first or pass --replace",
                spec.name
            ))
        }
        Err(err) => Err(anyhow::anyhow!("the server refused the schedule: {err}")),
    }
}

async fn list(stream: &stream::Stream) -> anyhow::Result<()> {
    let mut subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{SCHEDULE_PREFIX}.>"))
        .await?
        .try_collect()
        .await?;
    if subjects.is_empty() {
        println!("no schedules");
        return Ok(());
    }
    subjects.sort();
    println!(
        "{:<28} {:<34} {:<18} {:<22} created",
        "name", "when", "time zone", "event type"
    );
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
        println!(
            "{:<28} {:<34} {:<18} {:<22} {}",
            subject
                .strip_prefix(&format!("{SCHEDULE_PREFIX}."))
                .unwrap_or(&subject),
            header("Nats-Schedule"),
            Some(header("Nats-Schedule-Time-Zone"))
                .filter(|tz| !tz.is_empty())
                .unwrap_or_else(|| "-".to_owned()),
            target
                .strip_prefix(&format!("{TARGET_PREFIX}."))
                .unwrap_or(&target),
            message.time.format(&Rfc3339).unwrap_or_default()
        );
    }
    Ok(())
}

/// A schedule defined in `infra/nats/schedules/<name>.json`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
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

/// Applies every schedule defined under `dir` (if it exists): writes those that are missing or differ, leaves the
/// others alone (rewriting an `@every` schedule would restart its interval). Returns how many it wrote.
///
/// # Errors
/// A file that does not parse, an invalid event, or a schedule the server refuses.
pub(crate) async fn apply_dir(js: &jetstream::Context, dir: &Path) -> anyhow::Result<usize> {
    if !dir.is_dir() {
        return Ok(0);
    }
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<_, _>>()?;
    paths.sort();
    let stream = js
        .get_stream(STREAM)
        .await
        .context("the SCHEDULES stream")?;
    let mut written = 0;
    for path in paths
        .iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
    {
        let file: ScheduleFile = serde_json::from_str(
            &std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?,
        )
        .with_context(|| format!("parsing {}", path.display()))?;
        let when = match (&file.cron, &file.every) {
            (Some(cron), None) => cron_when(cron, file.time_zone.clone())?,
            (None, Some(every)) => {
                anyhow::ensure!(
                    file.time_zone.is_none(),
                    "{}: time_zone goes with cron only",
                    path.display()
                );
                When {
                    pattern: format!("@every {}s", parse_duration(every)?.as_secs()),
                    time_zone: None,
                }
            }
            _ => anyhow::bail!("{}: give exactly one of cron and every", path.display()),
        };
        // A fixed id and no time: the same file always makes the same bytes, so "unchanged" is a byte compare.
        let event = serde_json::to_vec(&serde_json::json!({
            "specversion": events::SPECVERSION,
            "id": format!("schedule-{}", file.name),
            "source": "/jetfn-infra",
            "type": file.r#type,
            "datacontenttype": events::DATACONTENTTYPE_JSON,
            "data": file.data,
        }))?;
        let spec = spec(&file.name, when, &event)
            .with_context(|| format!("schedule {}", path.display()))?;
        if let Ok(current) = stream
            .direct_get_last_for_subject(format!("{SCHEDULE_PREFIX}.{}", spec.name))
            .await
        {
            let header = |name: &str| current.headers.get(name).map(|v| v.as_str().to_owned());
            if current.payload.as_ref() == spec.event.as_slice()
                && header("Nats-Schedule").as_deref() == Some(spec.when.pattern.as_str())
                && header("Nats-Schedule-Time-Zone") == spec.when.time_zone
            {
                tracing::info!(schedule = %spec.name, "schedule unchanged");
                continue;
            }
        }
        put(js, &spec, true).await?;
        tracing::info!(schedule = %spec.name, when = %spec.when.pattern, "schedule applied");
        written += 1;
    }
    Ok(written)
}

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

    #[test]
    fn the_default_schedules_are_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/nats/schedules");
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let file: ScheduleFile =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let event = serde_json::to_vec(&serde_json::json!({
                "specversion": "1.0", "id": "x", "source": "/t", "type": file.r#type, "data": file.data,
            }))
            .unwrap();
            let when = cron_when(file.cron.as_deref().unwrap(), file.time_zone).unwrap();
            spec(&file.name, when, &event).unwrap();
        }
    }
}
