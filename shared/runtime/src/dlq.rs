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
}

impl FailureRecord {
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

    /// Adds a failed attempt and returns the updated record. Journal errors are logged, never fatal: the record is
    /// an aid to diagnosis, not part of delivery.
    pub async fn record(
        &self,
        stream: &str,
        consumer: &str,
        sequence: u64,
        error: &str,
    ) -> FailureRecord {
        let key = Self::key(stream, consumer, sequence);
        let now = now_ms();
        let previous = self.get_by_key(&key).await;
        let record = FailureRecord {
            first_ms: previous.as_ref().map_or(now, |record| record.first_ms),
            last_ms: now,
            failures: previous.as_ref().map_or(0, |record| record.failures) + 1,
            last_error: header_safe(error),
        };
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
    fn a_message_that_is_no_record_is_refused() {
        assert!(DeadLetter::from_stored(Some(&stored(&[("a", "b")])), Bytes::new()).is_err());
        assert!(DeadLetter::from_stored(None, Bytes::new()).is_err());
        let full = stored(&[(header::SUBJECT, "events.x"), (header::STREAM, "EVENTS")]);
        let letter = DeadLetter::from_stored(Some(&full), Bytes::from_static(b"{}")).unwrap();
        assert_eq!(letter.payload_lost, None);
    }
}
