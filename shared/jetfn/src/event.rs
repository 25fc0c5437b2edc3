//! `jetfn event <id>`: `ops::event::lookup`, printed. What cannot be known is printed too, under "unknown".

use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct EventArgs {
    /// The CloudEvents id (what `jetfn publish` printed as id=...).
    id: String,
    /// The event type, to read only its subject (faster on a long stream).
    #[arg(long = "type")]
    event_type: Option<String>,
    /// An effect name to look up in the ledger (repeatable), besides those the shipped functions use.
    #[arg(long = "effect")]
    effects: Vec<String>,
    /// A trace link template, `{trace_id}` replaced (e.g. http://localhost:16686/trace/{trace_id}).
    #[arg(long, env = "JETFN_TRACE_URL_TEMPLATE", hide_env_values = true)]
    trace_url_template: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(client: async_nats::Client, args: EventArgs) -> anyhow::Result<()> {
    if let Some(template) = &args.trace_url_template {
        anyhow::ensure!(
            template.contains("{trace_id}"),
            "JETFN_TRACE_URL_TEMPLATE (--trace-url-template) has no {{trace_id}} to fill in: {template}"
        );
    }
    let js = async_nats::jetstream::new(client);
    let report = ops::event::lookup(
        &js,
        &ops::event::Query {
            id: args.id.clone(),
            event_type: args.event_type,
            effects: args.effects,
            trace_url_template: args.trace_url_template,
        },
    )
    .await?;
    if args.json {
        return output::print_json(&report);
    }
    println!("event {}", report.id);
    if report.copies.is_empty() {
        println!("  not found ({} messages read)", report.scanned);
    }
    for copy in &report.copies {
        println!();
        println!(
            "{} #{}  {}  stored {}{}",
            copy.stream,
            copy.sequence,
            copy.subject,
            ops::rfc3339(copy.stored),
            copy.replay_of
                .map(|dlq| format!("  (replay of dlq #{dlq})"))
                .unwrap_or_default()
        );
        match (&copy.trace_url, &copy.trace_id) {
            (Some(url), _) => println!("  trace {url}"),
            (None, Some(id)) => {
                println!("  trace id {id} (set JETFN_TRACE_URL_TEMPLATE for a link)")
            }
            (None, None) => println!("  no traceparent"),
        }
        if copy.consumers.is_empty() {
            println!("  no function consumes {}", copy.subject);
            continue;
        }
        let mut table = output::table(&[
            "function",
            "consumer",
            "state",
            "attempts",
            "dlq",
            "last error",
        ]);
        for fate in &copy.consumers {
            table.add_row(vec![
                fate.function.clone(),
                fate.consumer.clone(),
                format!(
                    "{}{}",
                    fate.state,
                    if fate.paused { " (paused)" } else { "" }
                ),
                fate.attempts
                    .map_or_else(|| "-".to_owned(), |a| a.to_string()),
                fate.dlq_sequence
                    .map_or_else(|| "-".to_owned(), |s| format!("#{s}")),
                fate.last_error.clone().unwrap_or_default(),
            ]);
        }
        output::align_right(&mut table, &[3]);
        for line in table.to_string().lines() {
            println!("  {}", line.trim_end());
        }
        for fate in copy
            .consumers
            .iter()
            .filter(|f| !f.failed_attempts.is_empty())
        {
            println!(
                "  {} ({}): failed attempts, oldest first",
                fate.function, fate.consumer
            );
            for line in crate::dlq::attempts_table(&fate.failed_attempts)
                .to_string()
                .lines()
            {
                println!("    {}", line.trim_end());
            }
        }
    }
    if !report.dead_letters.is_empty() {
        println!();
        println!("dead letters");
        for letter in &report.dead_letters {
            println!(
                "  dlq #{}  {}  {}  {} attempt(s)  {}",
                letter.dlq_sequence, letter.consumer, letter.kind, letter.attempts, letter.reason
            );
        }
    }
    if !report.effects.is_empty() {
        println!();
        println!("effects (ledger)");
        let mut table = output::table(&[
            "function",
            "effect",
            "state",
            "email.sent",
            "written",
            "key",
        ]);
        for effect in &report.effects {
            table.add_row(vec![
                effect.function.clone(),
                effect.effect.clone(),
                effect.state.clone(),
                match effect.email_sent {
                    Some(true) => "recorded",
                    Some(false) => "not recorded",
                    None => "-",
                }
                .to_owned(),
                effect.written.map(ops::rfc3339).unwrap_or_default(),
                effect.key.clone(),
            ]);
        }
        for line in table.to_string().lines() {
            println!("  {}", line.trim_end());
        }
    }
    println!();
    println!("cannot be told");
    for line in &report.unknown {
        println!("  - {line}");
    }
    Ok(())
}
