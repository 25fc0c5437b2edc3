//! Dead letters: list with a filter, show one masked, replay or purge a selection, going on past a record that
//! fails and ending with a summary of what did.

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
/// The stream cannot be read, or stops answering before every record it holds has been read.
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
    let mut pending = ordered.info().await?.num_pending;
    if pending == 0 {
        return Ok((records, unreadable));
    }
    let mut messages = ordered.messages().await?;
    while records.len() < limit {
        // A stall with records still to come is an error, never a shorter list: a replay or purge of "every record
        // matching" acts on what this returns, and a listing that silently stops short hides dead events.
        let Some(message) = crate::ordered::next(&mut messages).await else {
            anyhow::bail!(
                "the DLQ stopped answering with {pending} record(s) still to read (after {} read); nothing was \
                 changed, try again",
                records.len() + unreadable.len()
            );
        };
        let message = message?;
        let info = message.info().map_err(|err| anyhow::anyhow!("{err}"))?;
        let seq = info.stream_sequence;
        pending = info.pending;
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
/// Sensitive fields ([`publish::sealed::sensitive_fields`]) are never published in clear where sealing is
/// expected: one still in the sealed form the record holds goes out as it is, under the record's key; one typed
/// in clear is sealed with `keyring` (see [`seal_edit`] for which key), and `Jetfn-Key-Id` is set to match.
/// Without a keyring, a clear value where the record was sealed is refused: published, it would sit in `EVENTS`
/// in clear and the function would dead-letter it again as not sealed (so again in the DLQ, in clear).
///
/// # Errors
/// No such record, its payload was lost, the edit is invalid (every failing field named) or changes the type or
/// the id, a sensitive field cannot be published sealed (named, never its value), or the publish fails. Nothing
/// is changed then.
pub async fn replay_edited(
    js: &jetstream::Context,
    seq: u64,
    edited: &[u8],
    keep: bool,
    keyring: Option<&publish::sealed::Keyring>,
) -> anyhow::Result<Step> {
    let dlq = stream(js).await?;
    let mut letter = get(&dlq, seq).await?;
    if let Some(why) = &letter.payload_lost {
        anyhow::bail!(
            "dlq #{seq} holds no copy of the event (payload lost: {why}); there is nothing to edit"
        );
    }
    let validator = events::Validator::new();
    let (stored, original) = check_edit(&validator, &letter.payload).map_err(|invalid| {
        anyhow::anyhow!(
            "dlq #{seq}: the original is not a valid event ({invalid}); replay it as is"
        )
    })?;
    let (mut value, event) = check_edit(&validator, edited)
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
    let stored_key = publish::sealed::key_id_of(Some(&letter.headers)).map(str::to_owned);
    let sealing = seal_edit(&stored, stored_key.as_deref(), &mut value, keyring)?;
    let payload = if sealing.sealed_anew.is_empty() {
        edited.to_vec()
    } else {
        let bytes = serde_json::to_vec(&value)?;
        events::check_size(bytes.len()).map_err(|invalid| {
            anyhow::anyhow!("the edited event, sealed, is too large: {invalid}")
        })?;
        bytes
    };
    letter.headers = with_key_id(&letter.headers, sealing.key_id.as_deref());
    republish(js, &dlq, seq, letter, Some(&payload), keep).await
}

/// Parses and checks an event that may hold sealed fields. The schemas describe the plaintext (a sealed token
/// breaks its pattern), so each sensitive field still sealed stands in as the catalog example's value for the
/// check: the publisher checked the plaintext before sealing, and the function checks it again once opened.
/// Returns the event as given, and what the check read.
fn check_edit(
    validator: &events::Validator,
    bytes: &[u8],
) -> Result<(serde_json::Value, events::CloudEvent), events::Invalid> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        // Not JSON: the validator's own refusal names where.
        return Err(validator
            .check(bytes)
            .err()
            .unwrap_or_else(|| events::Invalid::new("", "not JSON")));
    };
    events::check_size(bytes.len())?;
    let mut checked = value.clone();
    if let Some(kind) = value
        .get("type")
        .and_then(serde_json::Value::as_str)
        .and_then(events::kind_by_type)
    {
        let example = (kind.example_data)();
        for field in kind.sensitive {
            if let Some(slot) = checked.pointer_mut(field)
                && publish::sealed::is_sealed(slot)
                && let Some(stand_in) = field.strip_prefix("/data").and_then(|f| example.pointer(f))
            {
                *slot = stand_in.clone();
            }
        }
    }
    let event = validator.check_value(checked)?;
    Ok((value, event))
}

/// What [`seal_edit`] did to an edited event.
#[derive(Debug, PartialEq, Eq)]
struct Sealing {
    /// The key its sealed fields use, for `Jetfn-Key-Id`; `None` when none is sealed.
    key_id: Option<String>,
    /// The fields it sealed (typed in clear).
    sealed_anew: Vec<&'static str>,
}

/// Brings an edited event's sensitive fields to the form a function opens, or refuses naming the fields (never a
/// value). `stored` is the record's event, `stored_key` its `Jetfn-Key-Id`.
///
/// - A value in the sealed form must be the record's own ciphertext for that field, the one known to belong under
///   `stored_key`: one pasted from another event or field would not open (the associated data binds them), and
///   this process does not open ciphertexts to tell which would.
/// - A value in clear is sealed with `keyring`. One header names the key of every sealed field, so when others stay
///   sealed it is sealed under their key, `stored_key`, even if the keyring's current key is newer: re-sealing the
///   kept fields with the current key would mean opening them here, and the console has no reason to see them. A
///   keyring without that key is refused, naming both; typing every sensitive field anew seals them all with the
///   current key. With nothing left sealed, the current key seals.
/// - Without a keyring, a value in clear is refused when the record held that field sealed or names a key (the
///   function would refuse it as not sealed). A record stored in clear, by a publisher without a keyring, is
///   replayed as such: that event was never sealed (the known gap of plaintext publishers).
fn seal_edit(
    stored: &serde_json::Value,
    stored_key: Option<&str>,
    edit: &mut serde_json::Value,
    keyring: Option<&publish::sealed::Keyring>,
) -> anyhow::Result<Sealing> {
    use publish::sealed::{KEY_ID_HEADER, KEYRING_FILE_VAR, KEYRING_VAR, is_sealed};
    let ty = edit
        .get("type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let mut kept = Vec::new();
    let mut clear = Vec::new();
    for field in publish::sealed::sensitive_fields(ty).iter().copied() {
        let Some(value) = edit.pointer(field) else {
            continue;
        };
        if !is_sealed(value) {
            clear.push(field);
            continue;
        }
        anyhow::ensure!(
            stored.pointer(field) == Some(value),
            "{field}: not the sealed value the dead letter holds (a sealed value opens only in the event and \
             field it was made for); keep the stored value, or type the new value in clear to have it sealed"
        );
        anyhow::ensure!(
            stored_key.is_some(),
            "{field}: sealed, but the dead letter names no key ({KEY_ID_HEADER}), so no function can open it; \
             type the value in clear to have it sealed anew"
        );
        kept.push(field);
    }
    let named = |fields: &[&str]| fields.join(", ");
    if clear.is_empty() {
        return Ok(Sealing {
            key_id: stored_key.filter(|_| !kept.is_empty()).map(str::to_owned),
            sealed_anew: clear,
        });
    }
    let Some(keyring) = keyring else {
        let was_sealed = |field: &&str| stored.pointer(field).is_some_and(is_sealed);
        if stored_key.is_some() || clear.iter().any(was_sealed) {
            anyhow::bail!(
                "{}: a sensitive field must stay sealed; keep the stored jetfn:enc:v1 value, or set {KEYRING_VAR} \
                 (or {KEYRING_FILE_VAR}) where the replay runs to seal a new value",
                named(&clear)
            );
        }
        return Ok(Sealing {
            key_id: None,
            sealed_anew: Vec::new(),
        });
    };
    let key_id = match (kept.is_empty(), stored_key) {
        (false, Some(stored_key)) => {
            anyhow::ensure!(
                keyring.contains(stored_key),
                "{}: cannot be sealed with key `{stored_key}`, which {} still use(s) ({KEY_ID_HEADER} names one \
                 key for every sealed field), and {KEYRING_VAR} lacks it; add that key, or type {} in clear too \
                 to seal every field with the current key",
                named(&clear),
                named(&kept),
                named(&kept)
            );
            stored_key.to_owned()
        }
        _ => keyring
            .current()
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: {KEYRING_VAR} has no `current` key to seal a new value with; set `current`",
                    named(&clear)
                )
            })?
            .to_owned(),
    };
    publish::sealed::seal_fields(edit, &clear, keyring, &key_id)
        .map_err(|err| anyhow::anyhow!("{}: {err}", named(&clear)))?;
    Ok(Sealing {
        key_id: Some(key_id),
        sealed_anew: clear,
    })
}

/// `headers` with `Jetfn-Key-Id` naming `key_id`, or without it when nothing is sealed: a header naming a key
/// over a clear field makes the function refuse it, and a stale one keeps `jetfn keys usage` counting a key.
fn with_key_id(headers: &HeaderMap, key_id: Option<&str>) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, values) in headers.iter() {
        let name_text: &str = name.as_ref();
        if name_text.eq_ignore_ascii_case(publish::sealed::KEY_ID_HEADER) {
            continue;
        }
        for value in values {
            out.append(name.clone(), value.clone());
        }
    }
    if let Some(key_id) = key_id {
        out.insert(publish::sealed::KEY_ID_HEADER, key_id);
    }
    out
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

    use publish::sealed::{Keyring, is_sealed, open_event, seal_event};
    use serde_json::{Value, json};

    // Test keys (32 bytes each, base64); never used anywhere else.
    const K1: &str = "b3BzLWRscS1lZGl0LXRlc3Qta2V5LW51bWJlci0wMDE=";
    const K2: &str = "b3BzLWRscS1lZGl0LXRlc3Qta2V5LW51bWJlci0wMDI=";
    const STORED_TOKEN: &str = "storedToken_0123456789abcdefghijklmn";
    const TYPED_TOKEN: &str = "typedAnewToken_0123456789abcdefghijk";

    fn ring(current: &str) -> Keyring {
        Keyring::parse(
            &format!(r#"{{"current":"{current}","keys":{{"k1":"{K1}","k2":"{K2}"}}}}"#),
            "test",
        )
        .unwrap()
    }

    fn reset(token: &str) -> Value {
        let mut data = (events::kind_by_type("users.password_reset_requested")
            .unwrap()
            .example_data)();
        data["token"] = token.into();
        json!({
            "specversion": "1.0", "id": "e-1", "source": "/t", "type": "users.password_reset_requested",
            "datacontenttype": "application/json", "data": data
        })
    }

    /// A dead letter's event as a publisher with key `k1` stored it.
    fn stored_sealed() -> Value {
        let mut stored = reset(STORED_TOKEN);
        assert_eq!(
            seal_event(&mut stored, &ring("k1")).unwrap().as_deref(),
            Some("k1")
        );
        stored
    }

    /// The token an edit would hand the function, opened with `key_id` as the runtime opens it.
    fn opened_token(edit: &Value, key_id: &str) -> String {
        let bytes = serde_json::to_vec(edit).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(TYPED_TOKEN));
        let opened = open_event(&bytes, Some(key_id), Some(&ring("k1")))
            .unwrap()
            .unwrap();
        let opened: Value = serde_json::from_slice(&opened).unwrap();
        opened["data"]["token"].as_str().unwrap().to_owned()
    }

    #[test]
    fn a_sealed_value_left_as_stored_is_kept_under_the_stored_key() {
        let stored = stored_sealed();
        let mut edit = stored.clone();
        edit["data"]["email"] = "fixed@example.com".into();
        let before = edit.clone();
        for keyring in [None, Some(&ring("k2"))] {
            let sealing = seal_edit(&stored, Some("k1"), &mut edit, keyring).unwrap();
            assert_eq!(
                sealing,
                Sealing {
                    key_id: Some("k1".to_owned()),
                    sealed_anew: Vec::new()
                }
            );
            assert_eq!(edit, before, "the ciphertext goes out as stored");
        }
    }

    #[test]
    fn a_value_typed_in_clear_is_sealed_with_the_keyring_and_named_when_there_is_none() {
        let stored = stored_sealed();
        let mut edit = stored.clone();
        edit["data"]["token"] = TYPED_TOKEN.into();
        let err = seal_edit(&stored, Some("k1"), &mut edit.clone(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/data/token: a sensitive field must stay sealed")
                && err.contains("JETFN_KEYRING"),
            "{err}"
        );
        assert!(!err.contains(TYPED_TOKEN), "{err}");

        let sealing = seal_edit(&stored, Some("k1"), &mut edit, Some(&ring("k1"))).unwrap();
        assert_eq!(sealing.key_id.as_deref(), Some("k1"));
        assert_eq!(sealing.sealed_anew, ["/data/token"]);
        assert!(is_sealed(&edit["data"]["token"]), "{edit}");
        assert_ne!(edit["data"]["token"], stored["data"]["token"]);
        assert_eq!(opened_token(&edit, "k1"), TYPED_TOKEN);
    }

    #[test]
    fn a_value_typed_in_clear_after_a_rotation_is_sealed_with_the_current_key() {
        // The record names k1; the keyring seals with k2 now and nothing else stays sealed under k1.
        let stored = stored_sealed();
        let mut edit = stored.clone();
        edit["data"]["token"] = TYPED_TOKEN.into();
        let sealing = seal_edit(&stored, Some("k1"), &mut edit, Some(&ring("k2"))).unwrap();
        assert_eq!(sealing.key_id.as_deref(), Some("k2"));
        assert_eq!(opened_token(&edit, "k2"), TYPED_TOKEN);
        // A keyring that only opens (no current key) cannot seal: refused, naming the field.
        let open_only = Keyring::parse(&format!(r#"{{"keys":{{"k1":"{K1}"}}}}"#), "test").unwrap();
        let mut edit = stored.clone();
        edit["data"]["token"] = TYPED_TOKEN.into();
        let err = seal_edit(&stored, Some("k1"), &mut edit, Some(&open_only))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/data/token:") && err.contains("current"),
            "{err}"
        );
    }

    #[test]
    fn a_sealed_value_other_than_the_stored_one_or_without_a_key_is_refused() {
        let stored = stored_sealed();
        let mut other = reset(STORED_TOKEN);
        other["id"] = "e-2".into();
        seal_event(&mut other, &ring("k1")).unwrap();
        let mut edit = stored.clone();
        edit["data"]["token"] = other["data"]["token"].clone();
        let err = seal_edit(&stored, Some("k1"), &mut edit, Some(&ring("k1")))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/data/token: not the sealed value"),
            "{err}"
        );
        // The record lost its key header: no function could open what it holds.
        let err = seal_edit(&stored, None, &mut stored.clone(), Some(&ring("k1")))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("/data/token: sealed, but"), "{err}");
    }

    #[test]
    fn an_event_stored_in_clear_is_sealed_with_a_keyring_and_replayed_as_such_without() {
        let stored = reset(STORED_TOKEN);
        let mut edit = reset(TYPED_TOKEN);
        let sealing = seal_edit(&stored, None, &mut edit, None).unwrap();
        assert_eq!(sealing.key_id, None);
        assert_eq!(edit, reset(TYPED_TOKEN));
        let sealing = seal_edit(&stored, None, &mut edit, Some(&ring("k1"))).unwrap();
        assert_eq!(sealing.key_id.as_deref(), Some("k1"));
        assert_eq!(opened_token(&edit, "k1"), TYPED_TOKEN);
    }

    #[test]
    fn a_sealed_event_passes_the_schema_check_and_a_clear_value_is_checked_as_typed() {
        let validator = events::Validator::new();
        let stored = serde_json::to_vec(&stored_sealed()).unwrap();
        // The sealed token breaks the schema's pattern for the plaintext; it is not held against the edit.
        assert!(validator.check(&stored).is_err());
        let (value, event) = check_edit(&validator, &stored).unwrap();
        assert_eq!(event.id, "e-1");
        assert_eq!(
            serde_json::to_vec(&value).unwrap(),
            stored,
            "returned as given"
        );
        let err = check_edit(
            &validator,
            &serde_json::to_vec(&reset("short token!")).unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("/data/token") && !err.contains("short token!"),
            "{err}"
        );
        let err = check_edit(&validator, b"{not json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not JSON"), "{err}");
    }

    #[test]
    fn the_key_id_header_is_replaced_or_dropped_and_the_rest_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        );
        headers.insert(publish::sealed::KEY_ID_HEADER, "k1");
        let replaced = with_key_id(&headers, Some("k2"));
        assert_eq!(publish::sealed::key_id_of(Some(&replaced)), Some("k2"));
        assert_eq!(replaced.get("traceparent"), headers.get("traceparent"));
        let dropped = with_key_id(&headers, None);
        assert_eq!(publish::sealed::key_id_of(Some(&dropped)), None);
        assert_eq!(dropped.len(), 1);
    }

    #[test]
    fn secrets_and_addresses_are_masked() {
        let mut value = serde_json::json!({"data": {"email": "ada@example.com", "reset_token": "abc", "name": "Ada"}});
        mask(&mut value, "");
        assert_eq!(value["data"]["email"], "ad***@example.com");
        assert_eq!(value["data"]["reset_token"], "***");
        assert_eq!(value["data"]["name"], "Ada");
    }
}
