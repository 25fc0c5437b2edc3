//! `jetfn status`: the `ops::status` picture as two aligned tables, as JSON, or redrawn every few seconds.

use std::time::Duration;

use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct StatusArgs {
    /// Redraw every this many seconds until Ctrl-C (default 2 when given without a value).
    #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
    watch: Option<u64>,
    /// Print JSON (with --watch: one JSON document per line, per refresh).
    #[arg(long)]
    json: bool,
    /// Also the internal streams (KV buckets) and temporary consumers.
    #[arg(long)]
    all: bool,
}

pub(crate) async fn run(client: async_nats::Client, args: StatusArgs) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client);
    let Some(every) = args.watch else {
        let status = ops::status::read(&js, args.all).await?;
        return print(&status, args.json, false);
    };
    anyhow::ensure!(every >= 1, "--watch takes at least 1 second");
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        let status = ops::status::read(&js, args.all).await?;
        if !args.json {
            // Clear the screen and go home, so the tables stay in place.
            print!("\x1b[2J\x1b[H");
        }
        print(&status, args.json, true)?;
    }
}

fn print(status: &ops::status::Status, json: bool, compact: bool) -> anyhow::Result<()> {
    if json {
        if compact {
            println!("{}", serde_json::to_string(status)?);
            return Ok(());
        }
        return output::print_json(status);
    }
    let percent =
        |fill: Option<f64>| fill.map_or_else(|| "-".to_owned(), |f| format!("{:.0}%", f * 100.0));
    let limit = |value: Option<u64>| value.map_or_else(|| "-".to_owned(), |v| v.to_string());
    let mut streams = output::table(&[
        "stream",
        "messages",
        "max msgs",
        "bytes",
        "max bytes",
        "oldest",
        "max age",
        "fill",
        "discard",
        "consumers",
    ]);
    for stream in &status.streams {
        streams.add_row(vec![
            stream.name.clone(),
            stream.messages.to_string(),
            limit(stream.max_messages),
            stream.bytes.to_string(),
            limit(stream.max_bytes),
            stream
                .oldest_age_secs
                .map_or_else(|| "-".to_owned(), output::age),
            stream
                .max_age_secs
                .map_or_else(|| "-".to_owned(), output::age),
            percent(stream.fill),
            stream.discard.to_owned(),
            stream.consumers.to_string(),
        ]);
    }
    output::align_right(&mut streams, &[1, 2, 3, 4, 5, 6, 7, 9]);
    output::print_table(&streams);
    println!();
    if status.consumers.is_empty() {
        println!("no functions (no durable consumers; run `jetfn infra apply`)");
        return Ok(());
    }
    let mut consumers = output::table(&[
        "stream",
        "function",
        "consumer",
        "waiting",
        "oldest",
        "in flight",
        "redelivered",
        "pulling",
        "paused",
    ]);
    let mut unknown = None;
    for consumer in &status.consumers {
        let oldest = match (consumer.oldest_age_secs, &consumer.oldest_unknown) {
            (Some(secs), _) => output::age(secs),
            (None, Some(why)) => {
                unknown = Some(why.clone());
                "?".to_owned()
            }
            (None, None) => "-".to_owned(),
        };
        consumers.add_row(vec![
            consumer.stream.clone(),
            consumer.function.clone(),
            consumer.consumer.clone(),
            consumer.waiting.to_string(),
            oldest,
            match consumer.max_ack_pending {
                Some(max) => format!("{}/{max}", consumer.in_flight),
                None => consumer.in_flight.to_string(),
            },
            consumer.redelivered.to_string(),
            consumer.pull_requests.to_string(),
            match (consumer.paused, consumer.paused_until) {
                (false, _) => "no".to_owned(),
                (true, None) => "until resumed".to_owned(),
                (true, Some(at)) => format!("until {}", ops::rfc3339(at)),
            },
        ]);
    }
    output::align_right(&mut consumers, &[3, 4, 5, 6, 7]);
    output::print_table(&consumers);
    if !status.replicas.is_empty() {
        println!();
        let mut replicas = output::table(&["function", "replicas", "ready", "breaker open"]);
        for (function, summary) in &status.replicas {
            replicas.add_row(vec![
                function.clone(),
                summary.count.to_string(),
                summary.ready.to_string(),
                summary.breaker_open.to_string(),
            ]);
        }
        output::align_right(&mut replicas, &[1, 2, 3]);
        output::print_table(&replicas);
    }
    if let Some(why) = &status.replicas_unknown {
        println!();
        println!("replicas ?: {why}");
    }
    for unreadable in &status.consumers_unknown {
        println!();
        println!("consumer ?: {unreadable}");
    }
    if let Some(why) = unknown {
        println!();
        println!("oldest ?: {why}");
    }
    Ok(())
}
