//! Dead letters: what cannot succeed is copied, with everything needed to inspect and replay it, to the `DLQ`
//! stream on `<prefix>.<stream>.<consumer>.<sequence>`. One subject per original makes "is it recorded already?"
//! a direct get of the last message on that subject, so writers stay idempotent beyond the duplicate window.
//!
//! The record's body is the original payload, byte for byte, and its headers are the original headers (with
//! `traceparent`) minus NATS control headers, plus `Jetfn-Dlq-*` headers that say where it came from and why it
//! died. Every writer (the runtime before a TERM, the router after MAX_DELIVERIES) publishes with
//! `Nats-Msg-Id: dlq:<stream>:<seq>`, so two writers, or one writer twice, leave one record.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::{HeaderMap, HeaderValue};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::ledger::{now_ms, sanitize_token};

/// Header names of a dead-letter record.
pub mod header {
    /// Subject the event was published on.
    pub const SUBJECT: &str = "Jetfn-Dlq-Subject";
    /// Stream that held it.
    pub const STREAM: &str = "Jetfn-Dlq-Stream";
    /// Its sequence in that stream.
    pub const SEQUENCE: &str = "Jetfn-Dlq-Sequence";
    /// The consumer (function) that gave up on it.
    pub const CONSUMER: &str = "Jetfn-Dlq-Consumer";
    /// Deliveries made.
    pub const ATTEMPTS: &str = "Jetfn-Dlq-Attempts";
    /// The last error.
    pub const REASON: &str = "Jetfn-Dlq-Reason";
    /// `invalid`, `permanent`, `exhausted` or `no-answer`.
    pub const KIND: &str = "Jetfn-Dlq-Kind";
    /// When the first attempt failed (RFC 3339).
    pub const FIRST_FAILURE: &str = "Jetfn-Dlq-First-Failure";
    /// When the last attempt failed (RFC 3339).
    pub const LAST_FAILURE: &str = "Jetfn-Dlq-Last-Failure";
    /// Who wrote the record: `runtime` or `router`.
    pub const WRITER: &str = "Jetfn-Dlq-Writer";
    /// Present only on a record without its original: why the payload could not be copied.
    pub const PAYLOAD_LOST: &str = "Jetfn-Dlq-Payload-Lost";
    /// Every failed attempt kept (the last [`MAX_ATTEMPTS_KEPT`](super::MAX_ATTEMPTS_KEPT)), oldest first, as a
    /// compact JSON array of [`FailedAttempt`](super::FailedAttempt). A header, not the body: the body stays the
    /// original byte for byte, and a replay drops every `Jetfn-Dlq-*` header, so the list never travels with the
    /// replayed event. Absent on records written before it existed.
    pub const FAILED_ATTEMPTS: &str = "Jetfn-Dlq-Failed-Attempts";
}

/// How many failed attempts the journal and a record keep: the last ones, where the trouble is.
pub const MAX_ATTEMPTS_KEPT: usize = 20;

/// The most the failed-attempts header may take: with 20 reasons of up to 1 KiB each it would reach 21 KiB; the
/// oldest are dropped beyond this so the record stays far from the server's `max_payload` (1 MiB), which holds
/// the original payload too.
const FAILED_ATTEMPTS_HEADER_MAX: usize = 8 * 1024;

/// One failed attempt: when it failed, which delivery it was, and why (masked by the handler, header-safe and
/// capped like the reason).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedAttempt {
    /// When it failed, unix milliseconds.
    pub at_ms: u64,
    /// The delivery number (1 for the first delivery).
    pub delivery: u64,
    /// The error, free of personal data.
    pub reason: String,
}

impl FailedAttempt {
    /// When it failed, as a date.
    pub fn at(&self) -> OffsetDateTime {
        from_ms(self.at_ms)
    }
}

/// The header value: the newest attempts that fit the budget, oldest first; `None` when there are none.
fn encode_attempts(attempts: &[FailedAttempt]) -> Option<String> {
    let mut from = 0;
    while from < attempts.len() {
        let kept: Vec<FailedAttempt> = attempts[from..]
            .iter()
            .map(|attempt| FailedAttempt {
                reason: header_safe(&attempt.reason),
                ..attempt.clone()
            })
            .collect();
        let text = serde_json::to_string(&kept).ok()?;
        if text.len() <= FAILED_ATTEMPTS_HEADER_MAX {
            return Some(text);
        }
        from += 1;
    }
    None
}

/// Why an event died.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeathKind {
    /// It failed validation: bad JSON, unknown type, a missing or invalid field, too large.
    Invalid,
    /// The handler said no attempt can succeed.
    Permanent,
    /// Every attempt failed with a transient error.
    Exhausted,
    /// Every delivery timed out unanswered: the function crashed or hung (found by the router).
    NoAnswer,
}

impl DeathKind {
    /// The header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Permanent => "permanent",
            Self::Exhausted => "exhausted",
            Self::NoAnswer => "no-answer",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "invalid" => Self::Invalid,
            "permanent" => Self::Permanent,
            "exhausted" => Self::Exhausted,
            "no-answer" => Self::NoAnswer,
            _ => return None,
        })
    }
}

/// A dead event and its history.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Original subject; empty when it is unknown (a record whose payload was lost before the router could read
    /// it: a MAX_DELIVERIES advisory names the stream and sequence, not the subject).
    pub subject: String,
    /// Original stream.
    pub stream: String,
    /// Original stream sequence.
    pub sequence: u64,
    /// Consumer that gave up.
    pub consumer: String,
    /// Deliveries made.
    pub attempts: u64,
    /// The last error, free of personal data.
    pub reason: String,
    /// Why it died.
    pub kind: DeathKind,
    /// First failed attempt.
    pub first_failure: OffsetDateTime,
    /// Last failed attempt.
    pub last_failure: OffsetDateTime,
    /// The original headers, control headers removed.
    pub headers: HeaderMap,
    /// The original payload.
    pub payload: Bytes,
    /// `runtime` or `router`.
    pub writer: String,
    /// Every failed attempt kept, oldest first (the last [`MAX_ATTEMPTS_KEPT`]); empty on a record written before
    /// they were kept.
    pub failed_attempts: Vec<FailedAttempt>,
    /// Why the record holds no original, when it holds none: the router found the original gone from its stream
    /// (purged, expired, deleted) before it could copy it. Such a record says what died and why, and cannot be
    /// replayed.
    pub payload_lost: Option<String>,
}

impl DeadLetter {
    /// The DLQ subject of one original: `<prefix>.<stream>.<consumer>.<sequence>`.
    pub fn subject_for(prefix: &str, stream: &str, consumer: &str, sequence: u64) -> String {
        format!(
            "{prefix}.{}.{}.{sequence}",
            sanitize_token(stream),
            sanitize_token(consumer)
        )
    }

    /// This record's DLQ subject.
    pub fn dlq_subject(&self, prefix: &str) -> String {
        Self::subject_for(prefix, &self.stream, &self.consumer, self.sequence)
    }

    /// The message id that makes every writer's copy of one original the same record: the runtime's and the
    /// router's copies for one consumer collapse in the duplicate window, while two functions dead-lettering the
    /// same stream sequence each keep their own record (their consumers differ).
    pub fn message_id(&self) -> String {
        format!("dlq:{}:{}:{}", self.stream, self.consumer, self.sequence)
    }

    /// Publishes the record and waits for the stream's ack: only then may the original be TERMed or deleted.
    ///
    /// # Errors
    /// The publish or its ack failed; the caller must not discard the original.
    pub async fn publish(
        &self,
        js: &jetstream::Context,
        prefix: &str,
    ) -> anyhow::Result<jetstream::publish::PublishAck> {
        let mut headers = HeaderMap::new();
        for (name, values) in self.headers.iter() {
            for value in values {
                headers.append(name.clone(), value.clone());
            }
        }
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            self.message_id().as_str(),
        );
        headers.insert(header::SUBJECT, self.subject.as_str());
        headers.insert(header::STREAM, self.stream.as_str());
        headers.insert(header::SEQUENCE, self.sequence.to_string().as_str());
        headers.insert(header::CONSUMER, self.consumer.as_str());
        headers.insert(header::ATTEMPTS, self.attempts.to_string().as_str());
        headers.insert(header::REASON, header_safe(&self.reason).as_str());
        headers.insert(header::KIND, self.kind.as_str());
        headers.insert(header::FIRST_FAILURE, rfc3339(self.first_failure).as_str());
        headers.insert(header::LAST_FAILURE, rfc3339(self.last_failure).as_str());
        headers.insert(header::WRITER, self.writer.as_str());
        if let Some(why) = &self.payload_lost {
            headers.insert(header::PAYLOAD_LOST, header_safe(why).as_str());
        }
        if let Some(attempts) = encode_attempts(&self.failed_attempts) {
            headers.insert(header::FAILED_ATTEMPTS, attempts.as_str());
        }
        let subject = self.dlq_subject(prefix);
        let ack = js
            .publish_with_headers(subject, headers, self.payload.clone())
            .await?
            .await?;
        Ok(ack)
    }

    /// Reads a record back from the DLQ stream.
    ///
    /// # Errors
    /// A message that lacks the `Jetfn-Dlq-*` headers.
    pub fn from_stored(headers: Option<&HeaderMap>, payload: Bytes) -> anyhow::Result<Self> {
        let headers =
            headers.ok_or_else(|| anyhow::anyhow!("not a dead-letter record: no headers"))?;
        let get = |name: &str| {
            headers
                .get(name)
                .map(HeaderValue::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let time = |name: &str| {
            OffsetDateTime::parse(&get(name), &Rfc3339).unwrap_or(OffsetDateTime::UNIX_EPOCH)
        };
        let subject = get(header::SUBJECT);
        let stream = get(header::STREAM);
        let payload_lost = match headers.get(header::PAYLOAD_LOST) {
            Some(why) => Some(why.as_str().to_owned()),
            // Records written before the header existed: the router of that time wrote an empty subject and an
            // empty body whenever it could not read the original, for whatever reason.
            None if subject.is_empty() && !stream.is_empty() && payload.is_empty() => Some(
                "the router could not read the original when it wrote this record (an older router, which did not \
                 record why; the original may still be in its stream)"
                    .to_owned(),
            ),
            None => None,
        };
        if subject.is_empty() && payload_lost.is_none() {
            anyhow::bail!("not a dead-letter record: no {} header", header::SUBJECT);
        }
        let mut original = HeaderMap::new();
        for (name, values) in headers.iter() {
            let name_str: &str = name.as_ref();
            if name_str.starts_with("Jetfn-Dlq-") || name_str.starts_with("Nats-") {
                continue;
            }
            for value in values {
                original.append(name.clone(), value.clone());
            }
        }
        Ok(Self {
            subject,
            stream,
            sequence: get(header::SEQUENCE).parse().unwrap_or_default(),
            consumer: get(header::CONSUMER),
            attempts: get(header::ATTEMPTS).parse().unwrap_or_default(),
            reason: get(header::REASON),
            kind: DeathKind::parse(&get(header::KIND)).unwrap_or(DeathKind::Exhausted),
            first_failure: time(header::FIRST_FAILURE),
            last_failure: time(header::LAST_FAILURE),
            headers: original,
            payload,
            writer: get(header::WRITER),
            // Unreadable (hand-made) or absent: the summary headers still say what is known.
            failed_attempts: headers
                .get(header::FAILED_ATTEMPTS)
                .and_then(|value| serde_json::from_str(value.as_str()).ok())
                .unwrap_or_default(),
            payload_lost,
        })
    }
}

/// Copies headers a republish may carry: drops `Nats-*` control headers (a `Nats-TTL` is refused by a stream
/// without TTLs, a `Nats-Msg-Id` would dedupe against the wrong window), keeps `traceparent` and the rest.
pub fn strip_control_headers(headers: Option<&HeaderMap>) -> HeaderMap {
    let mut kept = HeaderMap::new();
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let name_str: &str = name.as_ref();
            if name_str.starts_with("Nats-") {
                continue;
            }
            for value in values {
                kept.append(name.clone(), value.clone());
            }
        }
    }
    kept
}

/// Header values cannot hold CR/LF; reasons are also capped so a runaway error message cannot bloat a record.
fn header_safe(text: &str) -> String {
    let mut cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cleaned.len() > 1024 {
        let mut cut = 1024;
        while !cleaned.is_char_boundary(cut) {
            cut -= 1;
        }
        cleaned.truncate(cut);
        cleaned.push('…');
    }
    cleaned
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// The failure journal: each failed attempt of a message is recorded, so the dead-letter record can say when
/// the trouble started and what the last error was, even when the router writes it after a crash.
#[derive(Clone, Debug)]
pub struct Failures {
    store: kv::Store,
}

/// What the journal knows of one message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailureRecord {
    /// First failure, unix milliseconds.
    pub first_ms: u64,
    /// Last failure, unix milliseconds.
    pub last_ms: u64,
    /// Failures recorded.
    pub failures: u64,
    /// The last error.
    pub last_error: String,
    /// The last [`MAX_ATTEMPTS_KEPT`] failed attempts, oldest first (absent in records written before).
    #[serde(default)]
    pub attempts: Vec<FailedAttempt>,
}

impl FailureRecord {
    /// `previous` (if any) with one more failed attempt.
    fn after(previous: Option<Self>, now: u64, delivery: u64, error: &str) -> Self {
        let reason = header_safe(error);
        let mut attempts = previous
            .as_ref()
            .map(|record| record.attempts.clone())
            .unwrap_or_default();
        attempts.push(FailedAttempt {
            at_ms: now,
            delivery,
            reason: reason.clone(),
        });
        let excess = attempts.len().saturating_sub(MAX_ATTEMPTS_KEPT);
        attempts.drain(..excess);
        Self {
            first_ms: previous.as_ref().map_or(now, |record| record.first_ms),
            last_ms: now,
            failures: previous.as_ref().map_or(0, |record| record.failures) + 1,
            last_error: reason,
            attempts,
        }
    }

    /// First failure as a timestamp.
    pub fn first(&self) -> OffsetDateTime {
        from_ms(self.first_ms)
    }
    /// Last failure as a timestamp.
    pub fn last(&self) -> OffsetDateTime {
        from_ms(self.last_ms)
    }
}

/// A unix-milliseconds timestamp as a date.
pub fn from_ms(ms: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl Failures {
    /// The journal on an existing bucket.
    pub fn new(store: kv::Store) -> Self {
        Self { store }
    }

    fn key(stream: &str, consumer: &str, sequence: u64) -> String {
        format!(
            "{}.{}.{sequence}",
            sanitize_token(stream),
            sanitize_token(consumer)
        )
    }

    /// Adds failed attempt `delivery` and returns the updated record. Journal errors are logged, never fatal: the
    /// record is an aid to diagnosis, not part of delivery.
    pub async fn record(
        &self,
        stream: &str,
        consumer: &str,
        sequence: u64,
        delivery: u64,
        error: &str,
    ) -> FailureRecord {
        let key = Self::key(stream, consumer, sequence);
        let record = FailureRecord::after(self.get_by_key(&key).await, now_ms(), delivery, error);
        if let Ok(bytes) = serde_json::to_vec(&record)
            && let Err(err) = self.store.put(&key, bytes.into()).await
        {
            tracing::warn!(error = %err, "journaling a failed attempt failed");
        }
        record
    }

    /// The record of a message, if it ever failed.
    pub async fn get(&self, stream: &str, consumer: &str, sequence: u64) -> Option<FailureRecord> {
        self.get_by_key(&Self::key(stream, consumer, sequence))
            .await
    }

    /// Forgets a message that finally succeeded or was dead-lettered.
    pub async fn clear(&self, stream: &str, consumer: &str, sequence: u64) {
        if let Err(err) = self
            .store
            .purge(Self::key(stream, consumer, sequence))
            .await
        {
            tracing::debug!(error = %err, "clearing a failure record failed; it expires with the bucket's max age");
        }
    }

    async fn get_by_key(&self, key: &str) -> Option<FailureRecord> {
        match tokio::time::timeout(Duration::from_secs(5), self.store.get(key)).await {
            Ok(Ok(Some(bytes))) => serde_json::from_slice(&bytes).ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, *value);
        }
        headers
    }

    #[test]
    fn a_record_without_its_original_reads_back_with_why() {
        let headers = stored(&[
            (header::STREAM, "EVENTS"),
            (header::SEQUENCE, "42"),
            (header::CONSUMER, "welcome"),
            (header::KIND, "no-answer"),
            (header::WRITER, "router"),
            (header::PAYLOAD_LOST, "purged or expired"),
        ]);
        let letter = DeadLetter::from_stored(Some(&headers), Bytes::new()).expect("a record");
        assert_eq!(
            letter.subject, "",
            "the subject is unknown, and says so by being empty"
        );
        assert_eq!(letter.payload_lost.as_deref(), Some("purged or expired"));
        assert_eq!((letter.stream.as_str(), letter.sequence), ("EVENTS", 42));
    }

    #[test]
    fn an_older_routers_empty_record_is_read_as_lost_not_skipped() {
        let headers = stored(&[
            (header::SUBJECT, ""),
            (header::STREAM, "EVENTS"),
            (header::SEQUENCE, "7"),
            (header::WRITER, "router"),
        ]);
        let letter = DeadLetter::from_stored(Some(&headers), Bytes::new()).expect("a record");
        assert!(
            letter
                .payload_lost
                .as_deref()
                .is_some_and(|why| why.contains("may still be in its stream")),
            "{letter:?}"
        );
    }

    #[test]
    fn the_journal_keeps_the_last_attempts_in_order_and_reads_older_records() {
        let mut record = None;
        for delivery in 1..=25u64 {
            record = Some(FailureRecord::after(
                record,
                delivery * 1000,
                delivery,
                &format!("451 try later\r\n#{delivery}"),
            ));
        }
        let record = record.expect("a record");
        assert_eq!(
            (record.failures, record.first_ms, record.last_ms),
            (25, 1000, 25_000)
        );
        let deliveries: Vec<u64> = record.attempts.iter().map(|a| a.delivery).collect();
        assert_eq!(
            deliveries,
            (6..=25).collect::<Vec<_>>(),
            "the last 20, oldest first"
        );
        assert_eq!(
            record.attempts[19].reason, "451 try later  #25",
            "header-safe"
        );
        let older: FailureRecord =
            serde_json::from_str(r#"{"first_ms":1,"last_ms":2,"failures":2,"last_error":"x"}"#)
                .expect("a record written before attempts were kept");
        assert!(older.attempts.is_empty());
    }

    #[test]
    fn the_attempts_header_round_trips_and_stays_within_its_budget() {
        let attempts: Vec<FailedAttempt> = (1..=20)
            .map(|delivery| FailedAttempt {
                at_ms: 1_700_000_000_000 + delivery,
                delivery,
                reason: "x".repeat(2000),
            })
            .collect();
        let text = encode_attempts(&attempts).expect("some fit");
        assert!(text.len() <= FAILED_ATTEMPTS_HEADER_MAX, "{}", text.len());
        let mut headers = stored(&[(header::SUBJECT, "events.x"), (header::STREAM, "EVENTS")]);
        headers.insert(header::FAILED_ATTEMPTS, text.as_str());
        let letter = DeadLetter::from_stored(Some(&headers), Bytes::new()).expect("a record");
        let last = letter.failed_attempts.last().expect("the newest is kept");
        assert_eq!(last.delivery, 20);
        assert!(last.reason.len() < 1100, "capped like the reason");
        assert!(
            letter.failed_attempts.len() < 20,
            "the oldest dropped to fit"
        );
        assert!(
            letter.headers.get(header::FAILED_ATTEMPTS).is_none(),
            "not an original header"
        );
        assert_eq!(encode_attempts(&[]), None, "no header without attempts");
    }

    #[test]
    fn a_message_that_is_no_record_is_refused() {
        assert!(DeadLetter::from_stored(Some(&stored(&[("a", "b")])), Bytes::new()).is_err());
        assert!(DeadLetter::from_stored(None, Bytes::new()).is_err());
        let full = stored(&[(header::SUBJECT, "events.x"), (header::STREAM, "EVENTS")]);
        let letter = DeadLetter::from_stored(Some(&full), Bytes::from_static(b"{}")).unwrap();
        assert_eq!(letter.payload_lost, None);
    }
}
