//! Dead letters: list with a filter, show one masked, replay or purge a selection, going on past a record that
//! fails and ending with a summary of what did.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt as _;
use runtime::dlq::{DeadLetter, DeathKind};
use serde::Serialize;
use time::OffsetDateTime;

/// The dead-letter stream.
pub const STREAM: &str = "DLQ";
/// The first token of its subjects (`dlq.<stream>.<consumer>.<sequence>`).
pub const PREFIX: &str = "dlq";

/// Which records: a consumer's, a kind, a reason, a time span (of the last failure).
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this function's (consumer's) records.
    pub consumer: Option<String>,
    /// Only this kind.
    pub kind: Option<DeathKind>,
    /// Only records whose reason contains this text.
    pub reason: Option<String>,
    /// Only records whose last failure is at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only records whose last failure is before this time.
    pub until: Option<OffsetDateTime>,
}

impl Filter {
    /// Whether a record passes.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.consumer.as_ref().is_none_or(|c| letter.consumer == *c)
            && self.kind.is_none_or(|kind| letter.kind == kind)
            && self
                .reason
                .as_ref()
                .is_none_or(|reason| letter.reason.contains(reason.as_str()))
            && self.since.is_none_or(|since| letter.last_failure >= since)
            && self.until.is_none_or(|until| letter.last_failure < until)
    }

    /// Whether anything narrows the selection.
    pub fn is_empty(&self) -> bool {
        self.consumer.is_none()
            && self.kind.is_none()
            && self.reason.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

/// A kind by its name.
///
/// # Errors
/// Not a kind; the error lists them.
pub fn parse_kind(name: &str) -> anyhow::Result<DeathKind> {
    [
        DeathKind::Invalid,
        DeathKind::Permanent,
        DeathKind::Exhausted,
        DeathKind::NoAnswer,
    ]
    .into_iter()
    .find(|kind| kind.as_str() == name)
    .with_context(|| {
        format!("--kind {name:?} is not a dead-letter kind; one of invalid, permanent, exhausted, no-answer")
    })
}

/// A record as listings show it (and `--json` prints it): everything but the payload.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Its sequence in the DLQ.
    pub dlq_sequence: u64,
    /// The original subject (`None`: unknown, the payload was lost).
    pub subject: Option<String>,
    /// The original stream and sequence.
    pub stream: String,
    /// Its sequence there.
    pub sequence: u64,
    /// The consumer that gave up.
    pub consumer: String,
    /// `invalid`, `permanent`, `exhausted`, `no-answer`.
    pub kind: &'static str,
    /// Deliveries made.
    pub attempts: u64,
    /// The last error.
    pub reason: String,
    /// First failure.
    #[serde(with = "time::serde::rfc3339")]
    pub first_failure: OffsetDateTime,
    /// Last failure.
    #[serde(with = "time::serde::rfc3339")]
    pub last_failure: OffsetDateTime,
    /// `runtime` or `router`.
    pub writer: String,
    /// Why the record holds no copy of the event, if it does not.
    pub payload_lost: Option<String>,
    /// The CloudEvents id in the payload, when it is one.
    pub event_id: Option<String>,
    /// The W3C trace id of its `traceparent` (the publisher's trace, which every attempt joined).
    pub trace_id: Option<String>,
}

impl Summary {
    /// The summary of a record.
    pub fn of(dlq_sequence: u64, letter: &DeadLetter) -> Self {
        Self {
            dlq_sequence,
            subject: Some(letter.subject.clone()).filter(|s| !s.is_empty()),
            stream: letter.stream.clone(),
            sequence: letter.sequence,
            consumer: letter.consumer.clone(),
            kind: letter.kind.as_str(),
            attempts: letter.attempts,
            reason: letter.reason.clone(),
            first_failure: letter.first_failure,
            last_failure: letter.last_failure,
            writer: letter.writer.clone(),
            payload_lost: letter.payload_lost.clone(),
            event_id: event_id(&letter.payload),
            trace_id: letter
                .headers
                .get("traceparent")
                .and_then(|value| crate::event::trace_id(value.as_str())),
        }
    }
}

/// The `id` of a CloudEvent payload.
pub fn event_id(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: String,
    }
    serde_json::from_slice::<Id>(payload).ok().map(|id| id.id)
}

/// The DLQ stream.
///
/// # Errors
/// It is not there.
pub async fn stream(js: &jetstream::Context) -> anyhow::Result<stream::Stream> {
    js.get_stream(STREAM)
        .await
        .context("the DLQ stream (run `jetfn infra apply`)")
}

/// How many records each consumer has in the DLQ, from the stream's per-subject counts (one request, no record
/// read): what an overview polling every few seconds can afford.
///
/// # Errors
/// The stream is missing or its info cannot be read.
pub async fn counts(
    js: &jetstream::Context,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    let dlq = stream(js).await?;
    let mut subjects = dlq
        .info_with_subjects(format!("{PREFIX}.>"))
        .await
        .context("reading the DLQ's subjects")?;
    let mut counts = std::collections::BTreeMap::new();
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry.context("reading the DLQ's subjects")?;
        // dlq.<stream>.<consumer>.<sequence>
        if let Some(consumer) = subject.split('.').nth(2) {
            *counts.entry(consumer.to_owned()).or_insert(0) += count as u64;
        }
    }
    Ok(counts)
}

/// One record by its DLQ sequence.
///
/// # Errors
/// No such record, or it is not a dead letter.
pub async fn get(dlq: &stream::Stream, seq: u64) -> anyhow::Result<DeadLetter> {
    let message = dlq
        .get_raw_message(seq)
        .await
        .with_context(|| format!("dlq #{seq}"))?;
    DeadLetter::from_stored(Some(&message.headers), message.payload)
}

/// Records that pass `filter`, oldest first, at most `limit`. Reads with an ordered consumer (filtered on the
/// server by consumer when given): no state is left on the server. What is on the DLQ's subjects but is no dead
/// letter is returned apart, so a caller can say so rather than skip it silently.
///
/// # Errors
/// The stream cannot be read.
pub async fn list(
    dlq: &stream::Stream,
    filter: &Filter,
    limit: usize,
) -> anyhow::Result<(Vec<(u64, DeadLetter)>, Vec<(u64, String)>)> {
    let subject = filter.consumer.as_deref().map_or_else(
        || format!("{PREFIX}.>"),
        |name| format!("{PREFIX}.*.{name}.*"),
    );
    let mut ordered = dlq
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject,
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await?;
    let mut records = Vec::new();
    let mut unreadable = Vec::new();
    if ordered.info().await?.num_pending == 0 {
        return Ok((records, unreadable));
    }
    let mut messages = ordered.messages().await?;
    while records.len() < limit {
        let Ok(Some(message)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        else {
            break;
        };
        let message = message?;
        let info = message.info().map_err(|err| anyhow::anyhow!("{err}"))?;
        let (seq, pending) = (info.stream_sequence, info.pending);
        match DeadLetter::from_stored(message.headers.as_ref(), message.payload.clone()) {
            Ok(letter) if filter.matches(&letter) => records.push((seq, letter)),
            Ok(_) => {}
            Err(err) => unreadable.push((seq, format!("{err:#}"))),
        }
        if pending == 0 {
            break;
        }
    }
    Ok((records, unreadable))
}

/// What a replay or purge selects: sequences, or every record passing a filter.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These DLQ sequences.
    Sequences(Vec<u64>),
    /// Every record passing the filter (an empty filter: every record).
    Matching(Filter),
}

/// The DLQ sequences a selection names.
///
/// # Errors
/// The stream cannot be read.
pub async fn select(dlq: &stream::Stream, selection: &Selection) -> anyhow::Result<Vec<u64>> {
    match selection {
        Selection::Sequences(seqs) => Ok(seqs.clone()),
        Selection::Matching(filter) => Ok(list(dlq, filter, usize::MAX)
            .await?
            .0
            .into_iter()
            .map(|(seq, _)| seq)
            .collect()),
    }
}

/// What became of one record.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Step {
    /// Published again (or, in a dry run, would be).
    Replayed {
        /// The DLQ sequence.
        dlq_sequence: u64,
        /// Where it went.
        subject: String,
        /// Its new sequence in the event stream (`None` in a dry run).
        sequence: Option<u64>,
        /// Whether the record was left in the DLQ.
        kept: bool,
    },
    /// Deleted (or, in a dry run, would be).
    Purged {
        /// The DLQ sequence.
        dlq_sequence: u64,
    },
    /// Not replayed: the record holds no copy of the event.
    Refused {
        /// The DLQ sequence.
        dlq_sequence: u64,
        /// Why.
        reason: String,
    },
    /// Failed; the rest went on.
    Failed {
        /// The DLQ sequence.
        dlq_sequence: u64,
        /// The error.
        error: String,
    },
}

/// The end of a replay or purge.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Whether nothing was changed (`--dry-run`).
    pub dry_run: bool,
    /// Records replayed or purged.
    pub done: usize,
    /// Records refused (payload lost).
    pub refused: usize,
    /// Records that failed.
    pub failed: usize,
    /// Every record's fate, in order.
    pub steps: Vec<Step>,
}

impl Report {
    fn push(&mut self, step: Step) {
        match step {
            Step::Replayed { .. } | Step::Purged { .. } => self.done += 1,
            Step::Refused { .. } => self.refused += 1,
            Step::Failed { .. } => self.failed += 1,
        }
        self.steps.push(step);
    }

    /// `ok` when everything was done, `error` when nothing was, `partial` otherwise.
    pub fn outcome(&self) -> crate::audit::Outcome {
        use crate::audit::Outcome;
        if self.refused + self.failed == 0 {
            Outcome::Ok
        } else if self.done == 0 {
            Outcome::Error
        } else {
            Outcome::Partial
        }
    }

    /// One line: the counts.
    pub fn line(&self, verb: &str) -> String {
        format!(
            "{}{verb} {} dead event(s), {} refused (payload lost), {} failed",
            if self.dry_run {
                "dry run: would have "
            } else {
                ""
            },
            self.done,
            self.refused,
            self.failed
        )
    }
}

/// A failed step, its error without the `dlq #<seq>: ` the step already names.
fn failed(seq: u64, err: &anyhow::Error) -> Step {
    let text = format!("{err:#}");
    Step::Failed {
        dlq_sequence: seq,
        error: text
            .strip_prefix(&format!("dlq #{seq}: "))
            .unwrap_or(&text)
            .to_owned(),
    }
}

/// Options of a replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    /// Leave the records in the DLQ.
    pub keep: bool,
    /// Change nothing; report what would be done.
    pub dry_run: bool,
}

/// Publishes each selected record again to its original subject (a new message id, the event id unchanged, so
/// effects that already ran are skipped by the ledger), then deletes it unless `keep`. A record that fails does not
/// stop the rest; `progress` hears of each as it ends, with the count done and the total.
///
/// # Errors
/// The selection cannot be read (nothing was replayed then).
pub async fn replay(
    js: &jetstream::Context,
    selection: &Selection,
    options: ReplayOptions,
    mut progress: impl FnMut(usize, usize, &Step),
) -> anyhow::Result<Report> {
    let dlq = stream(js).await?;
    let seqs = select(&dlq, selection).await?;
    let mut report = Report {
        dry_run: options.dry_run,
        ..Report::default()
    };
    for (index, seq) in seqs.iter().copied().enumerate() {
        let step = match replay_one(js, &dlq, seq, options).await {
            Ok(step) => step,
            Err(err) => failed(seq, &err),
        };
        progress(index + 1, seqs.len(), &step);
        report.push(step);
    }
    Ok(report)
}

async fn replay_one(
    js: &jetstream::Context,
    dlq: &stream::Stream,
    seq: u64,
    options: ReplayOptions,
) -> anyhow::Result<Step> {
    let letter = get(dlq, seq).await?;
    if let Some(why) = &letter.payload_lost {
        return Ok(Step::Refused {
            dlq_sequence: seq,
            reason: format!(
                "it holds no copy of the event (payload lost: {why}); `jetfn dlq show {seq}` explains, \
                 `jetfn dlq purge {seq}` removes it"
            ),
        });
    }
    if options.dry_run {
        return Ok(Step::Replayed {
            dlq_sequence: seq,
            subject: letter.subject,
            sequence: None,
            kept: true,
        });
    }
    republish(js, dlq, seq, letter, None, options.keep).await
}

/// Publishes record `seq`'s event again to its original subject, `edited` in place of the stored one if given,
/// then removes the record unless `keep`. A plain replay's message id is the record's own (replaying it twice
/// within the window publishes once); an edit's is new each time, so a second edit is not taken for a duplicate.
async fn republish(
    js: &jetstream::Context,
    dlq: &stream::Stream,
    seq: u64,
    letter: DeadLetter,
    edited: Option<&[u8]>,
    keep: bool,
) -> anyhow::Result<Step> {
    let mut headers: HeaderMap = letter.headers.clone();
    let (message_id, what) = match edited {
        None => (
            format!("replay:{}:{seq}", letter.message_id()),
            format!("dlq #{seq}"),
        ),
        Some(_) => {
            let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
            (
                format!("replay:{}:{seq}:edited:{nanos}", letter.message_id()),
                format!("the edited dlq #{seq}"),
            )
        }
    };
    headers.insert(async_nats::header::NATS_MESSAGE_ID, message_id.as_str());
    headers.insert("Jetfn-Replay-Of", seq.to_string().as_str());
    if edited.is_some() {
        headers.insert("Jetfn-Replay-Edited", "true");
    }
    let payload = edited.map_or_else(|| letter.payload.clone(), bytes::Bytes::copy_from_slice);
    let ack = js
        .publish_with_headers(letter.subject.clone(), headers, payload)
        .await?
        .await
        .with_context(|| format!("publishing {what} to {}", letter.subject))?;
    if !keep {
        dlq.delete_message(seq)
            .await
            .with_context(|| format!("removing dlq #{seq} after its replay (it was replayed)"))?;
    }
    Ok(Step::Replayed {
        dlq_sequence: seq,
        subject: letter.subject,
        sequence: Some(ack.sequence),
        kept: keep,
    })
}

/// Replays one record with its event edited (a console's "fix the address and replay"): the edit must be a valid
/// event of the same type with the same id (so the ledger still knows what already ran for it), checked against
/// the catalog's schema before anything is published; then as [`replay`], under a message id of its own so a
/// second edit is not taken for a duplicate.
///
/// # Errors
/// No such record, its payload was lost, the edit is invalid (every failing field named) or changes the type or
/// the id, or the publish fails. Nothing is changed then.
pub async fn replay_edited(
    js: &jetstream::Context,
    seq: u64,
    edited: &[u8],
    keep: bool,
) -> anyhow::Result<Step> {
    let dlq = stream(js).await?;
    let letter = get(&dlq, seq).await?;
    if let Some(why) = &letter.payload_lost {
        anyhow::bail!(
            "dlq #{seq} holds no copy of the event (payload lost: {why}); there is nothing to edit"
        );
    }
    let original = events::Validator::new()
        .check(&letter.payload)
        .map_err(|invalid| {
            anyhow::anyhow!(
                "dlq #{seq}: the original is not a valid event ({invalid}); replay it as is"
            )
        })?;
    let event = events::Validator::new()
        .check(edited)
        .map_err(|invalid| anyhow::anyhow!("the edited event is invalid: {invalid}"))?;
    anyhow::ensure!(
        event.ty == original.ty,
        "/type: the edit changes the event type from {} to {}; an edit keeps the type",
        original.ty,
        event.ty
    );
    anyhow::ensure!(
        event.id == original.id,
        "/id: the edit changes the event id; an edit keeps it, so the ledger still knows which effects already ran"
    );
    republish(js, &dlq, seq, letter, Some(edited), keep).await
}

/// Deletes each selected record for good, going on past one that fails.
///
/// # Errors
/// The selection cannot be read (nothing was deleted then).
pub async fn purge(
    js: &jetstream::Context,
    selection: &Selection,
    dry_run: bool,
    mut progress: impl FnMut(usize, usize, &Step),
) -> anyhow::Result<Report> {
    let dlq = stream(js).await?;
    let seqs = select(&dlq, selection).await?;
    let mut report = Report {
        dry_run,
        ..Report::default()
    };
    for (index, seq) in seqs.iter().copied().enumerate() {
        let step = if dry_run {
            match get(&dlq, seq).await {
                Ok(_) => Step::Purged { dlq_sequence: seq },
                Err(err) => failed(seq, &err),
            }
        } else {
            match dlq.delete_message(seq).await {
                Ok(_) => Step::Purged { dlq_sequence: seq },
                Err(err) => Step::Failed {
                    dlq_sequence: seq,
                    error: format!("deleting dlq #{seq}: {err}"),
                },
            }
        };
        progress(index + 1, seqs.len(), &step);
        report.push(step);
    }
    Ok(report)
}

/// Masks what an operator's screen should not show: addresses partly, secrets wholly.
pub fn mask(value: &mut serde_json::Value, key: &str) {
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
