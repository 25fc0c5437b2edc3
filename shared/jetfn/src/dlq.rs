//! `jetfn dlq`: list, show, replay and purge dead events.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use runtime::dlq::DeadLetter;
use time::format_description::well_known::Rfc3339;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum DlqCommand {
    /// One line per dead event: DLQ sequence, when, function, why.
    List {
        /// Only this function's (consumer's) dead events.
        #[arg(long)]
        consumer: Option<String>,
        /// At most this many, oldest first.
        #[arg(long, default_value_t = 100)]
        limit: usize,
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
    /// DLQ (unless --keep).
    Replay(Selection),
    /// Delete dead events for good.
    Purge(Selection),
}

#[derive(Debug, clap::Args)]
pub(crate) struct Selection {
    /// DLQ sequences.
    seqs: Vec<u64>,
    /// Every dead event (of --consumer, when given).
    #[arg(long, conflicts_with = "seqs")]
    all: bool,
    /// Only this function's dead events, with --all.
    #[arg(long)]
    consumer: Option<String>,
    /// Keep the records in the DLQ after a replay.
    #[arg(long)]
    keep: bool,
}

const DLQ_STREAM: &str = "DLQ";
const DLQ_PREFIX: &str = "dlq";

pub(crate) async fn run(client: async_nats::Client, command: DlqCommand) -> anyhow::Result<()> {
    let js = jetstream::new(client.clone());
    let dlq = js
        .get_stream(DLQ_STREAM)
        .await
        .context("the DLQ stream (run `jetfn infra apply`)")?;
    match command {
        DlqCommand::List { consumer, limit } => {
            let records = read_all(&dlq, consumer.as_deref(), limit).await?;
            if records.is_empty() {
                println!("no dead events");
                return Ok(());
            }
            println!(
                "{:>6}  {:<20}  {:<14}  {:<10}  {:>4}  {:<28}  reason",
                "seq", "last failure", "function", "kind", "tries", "subject"
            );
            for (seq, letter) in &records {
                println!(
                    "{seq:>6}  {:<20}  {:<14}  {:<10}  {:>4}  {:<28}  {}",
                    letter
                        .last_failure
                        .format(&Rfc3339)
                        .unwrap_or_default()
                        .chars()
                        .take(19)
                        .collect::<String>(),
                    letter.consumer,
                    letter.kind.as_str(),
                    letter.attempts,
                    subject_of(letter),
                    match &letter.payload_lost {
                        Some(why) => format!(
                            "{}; payload lost: {}",
                            truncate(&letter.reason, 100),
                            truncate(why, 160)
                        ),
                        None => truncate(&letter.reason, 100),
                    }
                );
            }
            println!("{} dead event(s)", records.len());
        }
        DlqCommand::Show { seq, raw } => {
            let letter = get(&dlq, seq).await?;
            println!("dlq sequence   {seq}");
            println!("subject        {}", subject_of(&letter));
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
                        mask(&mut value, "");
                        println!("{}", serde_json::to_string_pretty(&value)?);
                    }
                    Err(_) => println!(
                        "(not JSON; {} bytes; use --raw to print it)",
                        letter.payload.len()
                    ),
                }
            }
        }
        DlqCommand::Replay(selection) => {
            let mut refused = Vec::new();
            for seq in select(&dlq, &selection).await? {
                let letter = get(&dlq, seq).await?;
                if let Some(why) = &letter.payload_lost {
                    // The others are still replayed; the command fails at the end so a script notices.
                    eprintln!(
                        "dlq #{seq} cannot be replayed: it holds no copy of the event (payload lost: {why}); \
                         `jetfn dlq show {seq}` explains, `jetfn dlq purge {seq}` removes it"
                    );
                    refused.push(seq);
                    continue;
                }
                let mut headers: HeaderMap = letter.headers.clone();
                headers.insert(
                    async_nats::header::NATS_MESSAGE_ID,
                    format!("replay:{}:{seq}", letter.message_id()).as_str(),
                );
                headers.insert("Jetfn-Replay-Of", seq.to_string().as_str());
                let ack = js
                    .publish_with_headers(letter.subject.clone(), headers, letter.payload.clone())
                    .await?
                    .await
                    .with_context(|| format!("replaying dlq #{seq}"))?;
                println!(
                    "replayed dlq #{seq} to {} -> {} seq={}",
                    letter.subject, ack.stream, ack.sequence
                );
                if !selection.keep {
                    dlq.delete_message(seq)
                        .await
                        .with_context(|| format!("removing dlq #{seq} after replay"))?;
                }
            }
            anyhow::ensure!(
                refused.is_empty(),
                "{} record(s) not replayed, their payload was lost: {}",
                refused.len(),
                refused
                    .iter()
                    .map(|seq| format!("#{seq}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        DlqCommand::Purge(selection) => {
            let seqs = select(&dlq, &selection).await?;
            for seq in &seqs {
                dlq.delete_message(*seq)
                    .await
                    .with_context(|| format!("deleting dlq #{seq}"))?;
            }
            println!("purged {} dead event(s)", seqs.len());
        }
    }
    client.flush().await.ok();
    Ok(())
}

async fn select(dlq: &stream::Stream, selection: &Selection) -> anyhow::Result<Vec<u64>> {
    if selection.all {
        Ok(read_all(dlq, selection.consumer.as_deref(), usize::MAX)
            .await?
            .into_iter()
            .map(|(seq, _)| seq)
            .collect())
    } else {
        anyhow::ensure!(!selection.seqs.is_empty(), "name DLQ sequences, or --all");
        Ok(selection.seqs.clone())
    }
}

async fn get(dlq: &stream::Stream, seq: u64) -> anyhow::Result<DeadLetter> {
    let message = dlq
        .get_raw_message(seq)
        .await
        .with_context(|| format!("dlq #{seq}"))?;
    DeadLetter::from_stored(Some(&message.headers), message.payload)
}

/// Reads the DLQ with an ephemeral ordered consumer: no state left on the server, no interference with others.
pub(crate) async fn read_all(
    dlq: &stream::Stream,
    consumer: Option<&str>,
    limit: usize,
) -> anyhow::Result<Vec<(u64, DeadLetter)>> {
    let filter = consumer.map_or_else(
        || format!("{DLQ_PREFIX}.>"),
        |name| format!("{DLQ_PREFIX}.*.{name}.*"),
    );
    let mut ordered = dlq
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    if ordered.info().await?.num_pending == 0 {
        return Ok(Vec::new());
    }
    let mut messages = ordered.messages().await?;
    let mut records = Vec::new();
    while records.len() < limit {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        else {
            break;
        };
        let message = message?;
        let info = message.info().map_err(|err| anyhow::anyhow!("{err}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        match DeadLetter::from_stored(message.headers.as_ref(), message.payload.clone()) {
            Ok(letter) => records.push((seq, letter)),
            // Said, not skipped silently: something else writes to the DLQ's subjects.
            Err(err) => eprintln!("dlq #{seq} is not listed: {err:#}"),
        }
        if pending == 0 {
            break;
        }
    }
    Ok(records)
}

/// Masks what an operator's screen should not show: addresses partly, secrets wholly.
fn mask(value: &mut serde_json::Value, key: &str) {
    let key = key.to_ascii_lowercase();
    match value {
        serde_json::Value::Object(map) => {
            for (child_key, child) in map.iter_mut() {
                mask(child, child_key);
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                mask(item, &key);
            }
        }
        serde_json::Value::String(text) => {
            if ["token", "password", "secret", "code", "otp"]
                .iter()
                .any(|word| key.contains(word))
            {
                *text = "***".to_owned();
            } else if key.contains("email")
                || key == "to"
                || key == "reply_to"
                || text.contains('@')
            {
                *text = events::pii::mask_email(text);
            }
        }
        _ => {}
    }
}

/// A record whose original was lost before the router read it may not know the subject: the advisory names the
/// stream and sequence only.
fn subject_of(letter: &DeadLetter) -> &str {
    if letter.subject.is_empty() {
        "(unknown)"
    } else {
        &letter.subject
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        text.chars().take(max).collect::<String>() + "…"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_and_addresses_are_masked() {
        let mut value = serde_json::json!({"data": {"email": "ada@example.com", "reset_token": "abc", "name": "Ada"}});
        mask(&mut value, "");
        assert_eq!(value["data"]["email"], "ad***@example.com");
        assert_eq!(value["data"]["reset_token"], "***");
        assert_eq!(value["data"]["name"], "Ada");
    }
}
