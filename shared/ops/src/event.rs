//! `jetfn event <id>`: where an event is and what became of it, from what the server and jetfn's own records
//! hold, and no more.
//!
//! What can be known:
//! - Where it is: the publisher sets `Nats-Msg-Id` to the event id, so a headers-only scan of the event stream
//!   (no payload crosses the wire) finds each copy: its sequence, subject and store time. A UUIDv7 id (what
//!   `jetfn publish` and `Publisher` make by default) carries its creation time, so the scan starts a minute before
//!   it instead of at the beginning; `--type` narrows it to one subject. A replay from the DLQ is a new copy with
//!   a new message id; it carries `Jetfn-Replay-Of` (the DLQ sequence), and the DLQ record holds the event id, so
//!   replays are found too while their record is kept.
//! - What each consuming function did: its consumer's ack floor and delivered sequence say whether the copy was
//!   delivered and whether everything up to it was acknowledged; a DLQ record on
//!   `dlq.<stream>.<consumer>.<sequence>` says it was dead-lettered (with the attempts and the reason); the failure
//!   journal says how many attempts failed while it is still being retried.
//! - The effects: the ledger keys are hashes of (function, event id, effect name), so they can be looked up only
//!   for effect names that are known: those given with `--effect` and those the shipped functions use
//!   ([`known_effects`]).
//!
//! What cannot be known: an event published without `Nats-Msg-Id` (a hand-made publish) is not found by id; the
//! server does not report, per message, whether one above the ack floor was acknowledged (acks out of order) nor
//! how many times an acknowledged message was delivered; a copy removed by the stream's limits is gone; effects
//! under other names cannot be enumerated (keys are hashes, deliberately: effect names hold addresses).

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, kv};
use serde::Serialize;
use time::OffsetDateTime;

use crate::dlq;
use crate::functions::function_of;

/// The event stream and its subjects.
pub const EVENTS: &str = "EVENTS";

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The CloudEvents id.
    pub id: String,
    /// The event type, to scan its subject only.
    pub event_type: Option<String>,
    /// Effect names to check in the ledger besides the known ones.
    pub effects: Vec<String>,
    /// A trace link template with `{trace_id}` (e.g. `http://jaeger:16686/trace/{trace_id}`).
    pub trace_url_template: Option<String>,
}

/// Everything found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The id looked up.
    pub id: String,
    /// Each stored copy: the original and any replays.
    pub copies: Vec<Copy>,
    /// Dead-letter records of this event still in the DLQ.
    pub dead_letters: Vec<dlq::Summary>,
    /// Ledger entries of the effects that could be looked up.
    pub effects: Vec<Effect>,
    /// Messages read (headers only) to find it.
    pub scanned: u64,
    /// What could not be told, and why.
    pub unknown: Vec<String>,
}

/// One stored copy of the event.
#[derive(Debug, Clone, Serialize)]
pub struct Copy {
    /// Its stream.
    pub stream: String,
    /// Its sequence there.
    pub sequence: u64,
    /// Its subject.
    pub subject: String,
    /// When the stream stored it.
    #[serde(with = "time::serde::rfc3339")]
    pub stored: OffsetDateTime,
    /// The DLQ sequence it replays, for a replay.
    pub replay_of: Option<u64>,
    /// The W3C trace id of its `traceparent`.
    pub trace_id: Option<String>,
    /// The trace link, from the template.
    pub trace_url: Option<String>,
    /// Each consumer whose filter takes it.
    pub consumers: Vec<Fate>,
}

/// What one consumer did with a copy.
#[derive(Debug, Clone, Serialize)]
pub struct Fate {
    /// The consumer.
    pub consumer: String,
    /// Its function.
    pub function: String,
    /// `waiting` (not delivered yet), `delivered` (delivered, not known to be acknowledged), `acknowledged`,
    /// `dead-lettered`.
    pub state: &'static str,
    /// Deliveries, when known: from the DLQ record, or the failures the journal counted so far.
    pub attempts: Option<u64>,
    /// The journal's last error while it is being retried.
    pub last_error: Option<String>,
    /// Every failed attempt kept (the last [`runtime::dlq::MAX_ATTEMPTS_KEPT`], oldest first): from the DLQ record
    /// once dead-lettered, else from the journal while it is being retried; empty when none failed or none is known.
    pub failed_attempts: Vec<runtime::dlq::FailedAttempt>,
    /// Its DLQ sequence, when dead-lettered.
    pub dlq_sequence: Option<u64>,
    /// Whether the consumer is paused now.
    pub paused: bool,
}

/// A ledger entry.
#[derive(Debug, Clone, Serialize)]
pub struct Effect {
    /// The function.
    pub function: String,
    /// The effect's name (holds an address for an email: shown masked).
    pub effect: String,
    /// The KV key.
    pub key: String,
    /// `done`, `pending`, `absent`, or `unknown` (a replica found nothing and the leader could not be asked).
    pub state: String,
    /// When the entry was written.
    #[serde(with = "time::serde::rfc3339::option")]
    pub written: Option<OffsetDateTime>,
    /// For an email (an effect whose name holds the address, as `mailer::send_once` names them): whether the ledger
    /// records its `email.sent` published; `false` while the email is not done, or when its outcome never went out
    /// (a full `EVENTS` on the last delivery). `None` for other effects, and where the ledger could not be read
    /// (said under `unknown`).
    pub email_sent: Option<bool>,
}

/// The effect names the shipped functions give an event's side effects (kept beside their code: see each
/// function's `main.rs`; `tests/it/operate.rs` checks welcome's). Others are checked when named with `--effect`.
pub fn known_effects(function: &str, data: &serde_json::Value) -> Vec<String> {
    let text = |pointer: &str| {
        data.pointer(pointer)
            .and_then(serde_json::Value::as_str)
            .map(str::to_ascii_lowercase)
    };
    let email = |prefix: &str, pointer: &str| {
        text(pointer)
            .map(|address| vec![format!("{prefix}:{address}")])
            .unwrap_or_default()
    };
    match function {
        "welcome" => email("welcome-email", "/email"),
        "password-reset" => email("reset-email", "/email"),
        "email-verification" => email("verification-email", "/email"),
        "cleanup" => vec!["cleanup-completed".to_owned()],
        _ => Vec::new(),
    }
}

/// Whether `subject` is matched by the subject `filter` (`*` one token, `>` the rest).
pub fn subject_matches(filter: &str, subject: &str) -> bool {
    let mut want = filter.split('.');
    let mut have = subject.split('.');
    loop {
        match (want.next(), have.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(w), Some(h)) if w == h => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// The creation time a UUIDv7 id carries.
pub fn uuid_v7_time(id: &str) -> Option<OffsetDateTime> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) || &hex[12..13] != "7" {
        return None;
    }
    let ms = u64::from_str_radix(&hex[..12], 16).ok()?;
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// The trace id of a W3C `traceparent`.
pub fn trace_id(traceparent: &str) -> Option<String> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    (parts.len() == 4 && parts[1].len() == 32).then(|| parts[1].to_owned())
}

/// Looks the event up.
///
/// # Errors
/// The event stream or one of its consumers cannot be read, or the scan stops before it reaches the stream's end.
pub async fn lookup(js: &jetstream::Context, query: &Query) -> anyhow::Result<Report> {
    anyhow::ensure!(!query.id.is_empty(), "the event id is empty");
    let mut unknown = Vec::new();
    // The DLQ first: its records name the replays to look for, and hold the payload the effect names come from.
    let mut dead_letters = Vec::new();
    // Each record's failed attempts, by DLQ sequence (the summaries leave them out: `dlq list` shows many records).
    let mut attempts_by_record = std::collections::BTreeMap::new();
    let mut payload: Option<serde_json::Value> = None;
    match dlq::stream(js).await {
        Ok(stream) => match dlq::list(&stream, &dlq::Filter::default(), usize::MAX).await {
            Ok((records, _)) => {
                for (seq, letter) in records {
                    let summary = dlq::Summary::of(seq, &letter);
                    if summary.event_id.as_deref() == Some(query.id.as_str()) {
                        if payload.is_none() {
                            payload = serde_json::from_slice(&letter.payload).ok();
                        }
                        attempts_by_record.insert(seq, letter.failed_attempts);
                        dead_letters.push(summary);
                    }
                }
            }
            Err(err) => unknown.push(format!("dead letters: the DLQ could not be read ({err:#})")),
        },
        Err(err) => unknown.push(format!("dead letters: {err:#}")),
    }
    let replays: Vec<u64> = dead_letters.iter().map(|d| d.dlq_sequence).collect();

    let mut events = js
        .get_stream(EVENTS)
        .await
        .context("the EVENTS stream (run `jetfn infra apply`)")?;
    let first_seq = events.info().await?.state.first_sequence;
    let deliver_policy = match uuid_v7_time(&query.id) {
        Some(created) => consumer::DeliverPolicy::ByStartTime {
            start_time: created - time::Duration::MINUTE,
        },
        None => consumer::DeliverPolicy::All,
    };
    let filter_subject = query
        .event_type
        .as_ref()
        .map_or_else(|| "events.>".to_owned(), |ty| format!("events.{ty}"));
    let mut ordered = events
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject,
            deliver_policy,
            headers_only: true,
            ..Default::default()
        })
        .await
        .context("reading EVENTS (headers only)")?;
    let mut copies: Vec<Copy> = Vec::new();
    let mut scanned = 0;
    let mut pending = ordered
        .info()
        .await
        .context("reading EVENTS (headers only)")?
        .num_pending;
    if pending > 0 {
        let mut messages = ordered
            .messages()
            .await
            .context("reading EVENTS (headers only)")?;
        loop {
            // A stall with messages still to scan is an error: a scan cut short would report the event as never
            // published, and a person would publish it again.
            let Some(message) = crate::ordered::next(&mut messages).await else {
                anyhow::bail!(
                    "{EVENTS} stopped answering after {scanned} message(s) scanned with {pending} more to scan; \
                     whether and where the event is stored is unknown, try again"
                );
            };
            let message = message.context("reading EVENTS (headers only)")?;
            scanned += 1;
            let info = message.info().map_err(|err| anyhow::anyhow!("{err}"))?;
            let (seq, stored) = (info.stream_sequence, info.published);
            pending = info.pending;
            let header = |name: &str| {
                message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(name))
                    .map(|v| v.as_str().to_owned())
            };
            let replay_of = header("Jetfn-Replay-Of").and_then(|v| v.parse::<u64>().ok());
            let is_original = header("Nats-Msg-Id").as_deref() == Some(query.id.as_str());
            if is_original || replay_of.is_some_and(|dlq| replays.contains(&dlq)) {
                let trace = header("traceparent").as_deref().and_then(trace_id);
                copies.push(Copy {
                    stream: EVENTS.to_owned(),
                    sequence: seq,
                    subject: message.subject.to_string(),
                    stored,
                    replay_of,
                    trace_url: match (&query.trace_url_template, &trace) {
                        (Some(template), Some(trace)) => {
                            Some(template.replace("{trace_id}", trace))
                        }
                        _ => None,
                    },
                    trace_id: trace,
                    consumers: Vec::new(),
                });
            }
            if pending == 0 {
                break;
            }
        }
    }
    if copies.is_empty() {
        unknown.push(format!(
            "not found in {EVENTS} (first sequence {first_seq}): never published with Nats-Msg-Id = the id, \
             removed by the stream's limits, or {}",
            if query.event_type.is_some() {
                "of another type than --type"
            } else {
                "published before its UUIDv7 time"
            }
        ));
    }

    let (consumers, unreadable) = crate::functions::infos_or_unreadable(&events, EVENTS).await?;
    let consumers: Vec<consumer::Info> = consumers
        .into_iter()
        .filter(crate::functions::is_durable)
        .collect();
    for (consumer, why) in unreadable {
        unknown.push(format!(
            "consumer {consumer} could not be read, so whether it has handled the event is unknown: {why}"
        ));
    }
    let failures = js
        .get_key_value("jetfn-failures")
        .await
        .ok()
        .map(runtime::dlq::Failures::new);
    for copy in &mut copies {
        let (sequence, subject) = (copy.sequence, copy.subject.clone());
        let mut fates = Vec::new();
        for info in &consumers {
            let filters: Vec<&str> = if info.config.filter_subjects.is_empty() {
                vec![info.config.filter_subject.as_str()]
            } else {
                info.config
                    .filter_subjects
                    .iter()
                    .map(String::as_str)
                    .collect()
            };
            if !filters
                .iter()
                .any(|f| f.is_empty() || subject_matches(f, &subject))
            {
                continue;
            }
            let dead = dead_letters
                .iter()
                .find(|d| d.consumer == info.name && d.sequence == sequence && d.stream == EVENTS);
            let journal = match &failures {
                Some(failures) => failures.get(EVENTS, &info.name, sequence).await,
                None => None,
            };
            let state = if dead.is_some() {
                "dead-lettered"
            } else if sequence <= info.ack_floor.stream_sequence {
                "acknowledged"
            } else if sequence <= info.delivered.stream_sequence {
                "delivered"
            } else {
                "waiting"
            };
            fates.push(Fate {
                consumer: info.name.clone(),
                function: function_of(info),
                state,
                attempts: dead
                    .map(|d| d.attempts)
                    .or(journal.as_ref().map(|j| j.failures)),
                failed_attempts: match (dead, &journal) {
                    (Some(dead), _) => attempts_by_record
                        .get(&dead.dlq_sequence)
                        .cloned()
                        .unwrap_or_default(),
                    (None, Some(journal)) => journal.attempts.clone(),
                    (None, None) => Vec::new(),
                },
                last_error: journal.map(|j| j.last_error),
                dlq_sequence: dead.map(|d| d.dlq_sequence),
                paused: info.paused,
            });
        }
        copy.consumers = fates;
    }
    if copies
        .iter()
        .any(|c| c.consumers.iter().any(|f| f.state == "acknowledged"))
    {
        unknown.push(
            "attempts of an acknowledged copy: the server forgets delivery counts once a message is acknowledged"
                .to_owned(),
        );
    }
    if copies
        .iter()
        .any(|c| c.consumers.iter().any(|f| f.state == "delivered"))
    {
        unknown.push(
            "whether a delivered copy above the consumer's ack floor was acknowledged (acks can come out of \
             order; the server reports only the floor)"
                .to_owned(),
        );
    }

    // Effects: the payload of the original copy (read by sequence; a viewer may not, and then only --effect names
    // that need no payload are checked).
    if payload.is_none()
        && let Some(copy) = copies.iter().find(|c| c.replay_of.is_none())
    {
        match events.direct_get(copy.sequence).await {
            Ok(message) => payload = serde_json::from_slice(&message.payload).ok(),
            Err(err) => unknown.push(format!(
                "the event's data (for its effect names): reading {EVENTS} #{} failed ({err})",
                copy.sequence
            )),
        }
    }
    let data = payload
        .as_ref()
        .and_then(|p| p.get("data"))
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    let mut functions: Vec<String> = copies
        .iter()
        .flat_map(|c| c.consumers.iter().map(|f| f.function.clone()))
        .collect();
    functions.sort();
    functions.dedup();
    let effects = if functions.is_empty() {
        Vec::new()
    } else {
        match js.get_key_value("jetfn-ledger").await {
            Ok(store) => {
                ledger_entries(
                    js,
                    &store,
                    &functions,
                    &query.id,
                    &query.effects,
                    &data,
                    &mut unknown,
                )
                .await
            }
            Err(err) => {
                unknown.push(format!("effects: the ledger could not be opened ({err})"));
                Vec::new()
            }
        }
    };
    unknown.push(
        "effects under names not known here: ledger keys are hashes of (function, event id, effect name); name \
         one with --effect"
            .to_owned(),
    );
    Ok(Report {
        id: query.id.clone(),
        copies,
        dead_letters,
        effects,
        scanned,
        unknown,
    })
}

/// A ledger key's state and write time as the bucket stream's leader holds it; `None` when the key holds nothing
/// or was removed.
async fn from_leader(
    store: &kv::Store,
    key: &str,
) -> Result<Option<kv::Entry>, async_nats::jetstream::stream::LastRawMessageError> {
    Ok(publish::leader::kv_entry(store, key)
        .await?
        .filter(|entry| entry.operation == kv::Operation::Put))
}

/// A ledger value's state: its first word (`done <ms> [<decision>]`, `pending <token> ...`).
fn state_of(value: &[u8]) -> String {
    let value = String::from_utf8_lossy(value);
    value.split_whitespace().next().unwrap_or("").to_owned()
}

async fn ledger_entries(
    js: &jetstream::Context,
    store: &kv::Store,
    functions: &[String],
    id: &str,
    extra: &[String],
    data: &serde_json::Value,
    unknown: &mut Vec<String>,
) -> Vec<Effect> {
    let mut entries = Vec::new();
    for function in functions {
        let ledger = runtime::Ledger::new(
            js.clone(),
            store.clone(),
            function,
            Duration::from_secs(120),
        );
        let mut names = known_effects(function, data);
        names.extend(extra.iter().cloned());
        names.dedup();
        for effect in names {
            let key = ledger.key(id, &effect);
            let found = match store.entry(&key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => Some(entry),
                // A direct get may be answered by a follower that has not applied the write yet: its "none" for
                // an effect that ran would read as "the email was never sent". Only the leader's "none" is absent.
                Ok(_) => match from_leader(store, &key).await {
                    Ok(found) => found,
                    Err(err) => {
                        unknown.push(format!(
                            "effects: a replica found no ledger entry for {} and the bucket's leader could not \
                             be asked ({err})",
                            mask_effect(&effect)
                        ));
                        entries.push(Effect {
                            function: function.clone(),
                            effect: mask_effect(&effect),
                            key,
                            state: "unknown".to_owned(),
                            written: None,
                            email_sent: None,
                        });
                        continue;
                    }
                },
                Err(err) => {
                    unknown.push(format!("effects: the ledger could not be read ({err})"));
                    return entries;
                }
            };
            let email_sent = if effect.contains('@') {
                match email_sent(store, &ledger, id, &effect, found.as_ref()).await {
                    Ok(recorded) => Some(recorded),
                    Err(err) => {
                        unknown.push(format!(
                            "effects: whether the email.sent of {} is recorded (reading the ledger failed: {err})",
                            mask_effect(&effect)
                        ));
                        None
                    }
                }
            } else {
                None
            };
            entries.push(Effect {
                function: function.clone(),
                effect: mask_effect(&effect),
                key,
                state: found
                    .as_ref()
                    .map_or_else(|| "absent".to_owned(), |entry| state_of(&entry.value)),
                written: found.map(|entry| entry.created),
                email_sent,
            });
        }
    }
    entries
}

/// Whether the ledger records the `email.sent` of the email `effect` published: the mark on the email's own key
/// (`found`), or, written by builds from before the marks, the outcome's own key.
async fn email_sent(
    store: &kv::Store,
    ledger: &runtime::Ledger,
    id: &str,
    effect: &str,
    found: Option<&kv::Entry>,
) -> Result<bool, kv::EntryError> {
    let outcome = format!("email.sent:{effect}");
    if found.is_some_and(|entry| ledger.records_outcome(&entry.value, id, &outcome)) {
        return Ok(true);
    }
    Ok(matches!(
        store.entry(ledger.outcome_key(id, &outcome)).await?,
        Some(entry) if entry.operation == kv::Operation::Put && state_of(&entry.value) == "done"
    ))
}

/// An effect name with the address in it masked.
fn mask_effect(effect: &str) -> String {
    match effect.split_once(':') {
        Some((name, rest)) if rest.contains('@') => {
            format!("{name}:{}", events::pii::mask_email(rest))
        }
        _ => effect.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_match_as_nats_does() {
        assert!(subject_matches("events.>", "events.users.registered"));
        assert!(subject_matches("events.users.*", "events.users.registered"));
        assert!(subject_matches(
            "events.users.registered",
            "events.users.registered"
        ));
        assert!(!subject_matches("events.users.*", "events.users.a.b"));
        assert!(!subject_matches(
            "events.orders.>",
            "events.users.registered"
        ));
        assert!(!subject_matches("events.>", "events"));
    }

    #[test]
    fn a_uuid_v7_id_tells_its_time_and_others_do_not() {
        let id = "019ac9a3-5f10-7cc0-8000-000000000000";
        let at = uuid_v7_time(id).unwrap();
        assert_eq!(at.unix_timestamp(), 0x019a_c9a3_5f10 / 1000);
        assert!(uuid_v7_time("order-o-1-confirmation").is_none());
        assert!(uuid_v7_time("019ac9a3-5f10-4cc0-8000-000000000000").is_none());
    }

    #[test]
    fn a_traceparent_gives_its_trace_id() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("junk"), None);
    }
}
