//! `jetfn dlq`: list, show, replay and purge dead events (the work is `ops::dlq`'s).

use indicatif::{ProgressBar, ProgressStyle};
use ops::audit::Action;
use ops::dlq::{Filter, ReplayOptions, Selection, Step, Summary};

use crate::audit::Audit;
use crate::output;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum DlqCommand {
    /// One line per dead event: DLQ sequence, when, function, kind, attempts, subject, reason.
    List {
        #[command(flatten)]
        filter: FilterArgs,
        /// At most this many, oldest first.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Everything about one dead event. Personal data and secrets in the payload are masked unless --raw.
    Show {
        /// Its sequence in the DLQ stream (from `jetfn dlq list`).
        seq: u64,
        /// Print the payload exactly as stored, unmasked.
        #[arg(long)]
        raw: bool,
    },
    /// Publish dead events again to their original subject, under a new message id, then remove them from the
    /// DLQ (unless --keep). Goes on past a record that fails and ends with a summary; exits non-zero if any failed.
    Replay(ReplayArgs),
    /// Delete dead events for good.
    Purge(PurgeArgs),
}

/// Which records, by what they say.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FilterArgs {
    /// Only this function's (consumer's) dead events.
    #[arg(long)]
    consumer: Option<String>,
    /// Only this kind: invalid, permanent, exhausted, no-answer.
    #[arg(long)]
    kind: Option<String>,
    /// Only records whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// Only records that last failed at or after this time (RFC 3339, or a duration ago: 2h).
    #[arg(long)]
    since: Option<String>,
    /// Only records that last failed before this time (RFC 3339, or a duration ago).
    #[arg(long)]
    until: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        let time = |flag: &str, value: &Option<String>| {
            value
                .as_deref()
                .map(|v| output::parse_time(flag, v, false))
                .transpose()
        };
        Ok(Filter {
            consumer: self.consumer.clone(),
            kind: self.kind.as_deref().map(ops::dlq::parse_kind).transpose()?,
            reason: self.reason.clone(),
            since: time("--since", &self.since)?,
            until: time("--until", &self.until)?,
        })
    }
}

/// DLQ sequences, or every record (`--all`) or those a filter selects.
#[derive(Debug, clap::Args)]
pub(crate) struct SelectionArgs {
    /// DLQ sequences.
    #[arg(conflicts_with_all = ["all", "consumer", "kind", "reason", "since", "until"])]
    seqs: Vec<u64>,
    /// Every dead event (narrowed by the filters, when given).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    filter: FilterArgs,
}

impl SelectionArgs {
    fn selection(&self) -> anyhow::Result<Selection> {
        let filter = self.filter.filter()?;
        if !self.seqs.is_empty() {
            return Ok(Selection::Sequences(self.seqs.clone()));
        }
        anyhow::ensure!(
            self.all || !filter.is_empty(),
            "name DLQ sequences, a filter (--consumer, --kind, --reason, --since, --until), or --all"
        );
        Ok(Selection::Matching(filter))
    }

    fn target(&self) -> String {
        if !self.seqs.is_empty() {
            return self
                .seqs
                .iter()
                .map(|seq| format!("dlq #{seq}"))
                .collect::<Vec<_>>()
                .join(", ");
        }
        let f = &self.filter;
        let mut parts = Vec::new();
        for (name, value) in [
            ("consumer", &f.consumer),
            ("kind", &f.kind),
            ("reason", &f.reason),
            ("since", &f.since),
            ("until", &f.until),
        ] {
            if let Some(value) = value {
                parts.push(format!("{name}={value}"));
            }
        }
        if parts.is_empty() {
            "dlq (all)".to_owned()
        } else {
            format!("dlq ({})", parts.join(" "))
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    selection: SelectionArgs,
    /// Keep the records in the DLQ after their replay.
    #[arg(long, conflicts_with = "dry_run")]
    keep: bool,
    /// Say what would be replayed; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct PurgeArgs {
    #[command(flatten)]
    selection: SelectionArgs,
    /// Say what would be deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(
    client: async_nats::Client,
    audit: &Audit,
    command: DlqCommand,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client.clone());
    match command {
        DlqCommand::List {
            filter,
            limit,
            json,
        } => {
            let dlq = ops::dlq::stream(&js).await?;
            let (records, unreadable) = ops::dlq::list(&dlq, &filter.filter()?, limit).await?;
            for (seq, err) in &unreadable {
                // Said, not skipped silently: something else writes to the DLQ's subjects.
                eprintln!("dlq #{seq} is not listed: {err}");
            }
            let summaries: Vec<Summary> = records
                .iter()
                .map(|(seq, letter)| Summary::of(*seq, letter))
                .collect();
            if json {
                return output::print_json(&summaries);
            }
            if summaries.is_empty() {
                println!("no dead events");
                return Ok(());
            }
            let mut table = output::table(&[
                "seq",
                "last failure",
                "function",
                "kind",
                "tries",
                "subject",
                "reason",
            ]);
            for record in &summaries {
                table.add_row(vec![
                    record.dlq_sequence.to_string(),
                    ops::rfc3339(record.last_failure),
                    record.consumer.clone(),
                    record.kind.to_owned(),
                    record.attempts.to_string(),
                    record
                        .subject
                        .clone()
                        .unwrap_or_else(|| "(unknown)".to_owned()),
                    match &record.payload_lost {
                        Some(why) => format!(
                            "{}; payload lost: {}",
                            truncate(&record.reason, 100),
                            truncate(why, 160)
                        ),
                        None => truncate(&record.reason, 100),
                    },
                ]);
            }
            output::align_right(&mut table, &[0, 4]);
            output::print_table(&table);
            println!("{} dead event(s)", summaries.len());
        }
        DlqCommand::Show { seq, raw } => show(&js, seq, raw).await?,
        DlqCommand::Replay(args) => {
            let selection = args.selection.selection()?;
            let bar = Bar::new();
            let result = ops::dlq::replay(
                &js,
                &selection,
                ReplayOptions {
                    keep: args.keep,
                    dry_run: args.dry_run,
                },
                |done, total, step| bar.step(done, total, step, args.json),
            )
            .await;
            bar.finish();
            finish(
                audit,
                Action::DlqReplay,
                &args.selection.target(),
                "replayed",
                result,
                args.json,
                args.dry_run,
            )
            .await?;
        }
        DlqCommand::Purge(args) => {
            let selection = args.selection.selection()?;
            let bar = Bar::new();
            let result = ops::dlq::purge(&js, &selection, args.dry_run, |done, total, step| {
                bar.step(done, total, step, args.json);
            })
            .await;
            bar.finish();
            finish(
                audit,
                Action::DlqPurge,
                &args.selection.target(),
                "purged",
                result,
                args.json,
                args.dry_run,
            )
            .await?;
        }
    }
    client.flush().await.ok();
    Ok(())
}

/// A progress bar on stderr (drawn only at a terminal), with each record's line printed above it.
struct Bar(ProgressBar);

impl Bar {
    fn new() -> Self {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Self(bar)
    }

    fn step(&self, done: usize, total: usize, step: &Step, json: bool) {
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
        if !json {
            let line = describe(step);
            self.0.suspend(|| println!("{line}"));
        }
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

fn describe(step: &Step) -> String {
    match step {
        Step::Replayed {
            dlq_sequence,
            subject,
            sequence: Some(sequence),
            kept,
        } => format!(
            "replayed dlq #{dlq_sequence} to {subject} -> seq={sequence}{}",
            if *kept { " (kept)" } else { "" }
        ),
        Step::Replayed {
            dlq_sequence,
            subject,
            sequence: None,
            ..
        } => format!("would replay dlq #{dlq_sequence} to {subject}"),
        Step::Purged { dlq_sequence } => format!("dlq #{dlq_sequence} purged"),
        Step::Refused {
            dlq_sequence,
            reason,
        } => format!("dlq #{dlq_sequence} cannot be replayed: {reason}"),
        Step::Failed {
            dlq_sequence,
            error,
        } => format!("dlq #{dlq_sequence} failed: {error}"),
    }
}

async fn finish(
    audit: &Audit,
    action: Action,
    target: &str,
    verb: &str,
    result: anyhow::Result<ops::dlq::Report>,
    json: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let report = match result {
        Ok(report) => report,
        Err(err) => {
            if !dry_run {
                audit
                    .record(
                        action,
                        target,
                        ops::audit::Outcome::Error,
                        &crate::render_error(&err),
                    )
                    .await;
            }
            return Err(err);
        }
    };
    // A dry run changes nothing, so it is not a change to audit.
    if !dry_run {
        audit
            .record(action, target, report.outcome(), &report.line(verb))
            .await;
    }
    if json {
        output::print_json(&report)?;
    } else {
        println!("{}", report.line(verb));
    }
    anyhow::ensure!(
        report.refused + report.failed == 0,
        "{} of {} record(s) not {verb}; each is named above",
        report.refused + report.failed,
        report.steps.len()
    );
    Ok(())
}

async fn show(js: &async_nats::jetstream::Context, seq: u64, raw: bool) -> anyhow::Result<()> {
    use time::format_description::well_known::Rfc3339;
    let dlq = ops::dlq::stream(js).await?;
    let letter = ops::dlq::get(&dlq, seq).await?;
    let subject = if letter.subject.is_empty() {
        "(unknown)"
    } else {
        &letter.subject
    };
    println!("dlq sequence   {seq}");
    println!("subject        {subject}");
    println!("stream/seq     {} #{}", letter.stream, letter.sequence);
    println!("function       {}", letter.consumer);
    println!("kind           {}", letter.kind.as_str());
    println!("attempts       {}", letter.attempts);
    println!(
        "first failure  {}",
        letter.first_failure.format(&Rfc3339).unwrap_or_default()
    );
    println!(
        "last failure   {}",
        letter.last_failure.format(&Rfc3339).unwrap_or_default()
    );
    println!("written by     {}", letter.writer);
    println!("reason         {}", letter.reason);
    if letter.failed_attempts.is_empty() {
        println!("failed attempts  not kept (a record written before jetfn kept them)");
    } else {
        println!(
            "failed attempts (the last {} kept, oldest first):",
            runtime::dlq::MAX_ATTEMPTS_KEPT
        );
        output::print_table(&attempts_table(&letter.failed_attempts));
    }
    for (name, values) in letter.headers.iter() {
        for value in values {
            println!("header         {name}: {value}");
        }
    }
    if let Some(why) = &letter.payload_lost {
        println!("payload        lost: {why}");
        println!(
            "               This record says what died and why, but holds no copy of the event: it cannot \
             be replayed. Recover the event from its publisher (stream {} #{}, function {}), or purge the \
             record.",
            letter.stream, letter.sequence, letter.consumer
        );
    } else if raw {
        println!("payload ({} bytes):", letter.payload.len());
        println!("{}", String::from_utf8_lossy(&letter.payload));
    } else {
        println!("payload ({} bytes):", letter.payload.len());
        match serde_json::from_slice::<serde_json::Value>(&letter.payload) {
            Ok(mut value) => {
                ops::dlq::mask(&mut value, "");
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            Err(_) => println!(
                "(not JSON; {} bytes; use --raw to print it)",
                letter.payload.len()
            ),
        }
    }
    Ok(())
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        text.chars().take(max).collect::<String>() + "…"
    }
}

/// Failed attempts as `jetfn dlq show` and `jetfn event` print them: delivery, time, masked reason.
pub(crate) fn attempts_table(attempts: &[runtime::dlq::FailedAttempt]) -> comfy_table::Table {
    let mut table = output::table(&["delivery", "time", "reason"]);
    for attempt in attempts {
        table.add_row(vec![
            attempt.delivery.to_string(),
            attempt
                .at()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            attempt.reason.clone(),
        ]);
    }
    table
}
