//! The validating publisher: what the SDK backend teams use from Rust builds on, what `jetfn publish` and the
//! functions that emit events run.
//!
//! It refuses an invalid event before it reaches NATS, sets `Nats-Msg-Id` to the event id (so a re-publish is
//! absorbed by the stream's duplicate window), injects `traceparent`, and waits for the stream's ack.
//!
//! It is a crate of its own so that a producer does not link the consumer runtime: it depends on the
//! OpenTelemetry API alone, and the process that links it chooses the exporter, the subscriber and the allocator.
#![warn(missing_docs)]

pub mod batch;
pub mod clock;
pub mod leader;
pub mod progress;
pub mod schedule;
pub mod sealed;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use events::{CloudEvent, Event, Invalid, Validator};
use opentelemetry::propagation::Injector;
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument as _;

static EXPORTING: AtomicBool = AtomicBool::new(false);

/// Says whether this process exports spans. The publisher records the full OpenTelemetry messaging attributes on
/// its `send` span only then: the log layer formats every field of a span into text, per event, for nothing when no
/// span leaves the process. `runtime::telemetry::init` calls it; a service with its own exporter may call it once.
pub fn set_exporting(exporting: bool) {
    EXPORTING.store(exporting, Ordering::Relaxed);
}

fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// Where an event landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The event id (also its `Nats-Msg-Id`).
    pub id: String,
    /// The event type.
    pub event_type: String,
    /// The subject it was published on.
    pub subject: String,
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// True when the stream had it already (same id within the duplicate window): nothing new was stored.
    pub duplicate: bool,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event is invalid; nothing was sent.
    #[error("invalid event: {0}")]
    Invalid(#[from] Invalid),
    /// NATS refused or did not confirm the publish; it may be retried with the same event id.
    #[error("publish failed: {0}")]
    Nats(String),
    /// The delay cannot be scheduled (a time in the past); nothing was sent.
    #[error("invalid delay: {0}")]
    Delay(#[from] schedule::DelayError),
    /// The schedule could not be written or cancelled.
    #[error(transparent)]
    Schedule(#[from] schedule::ScheduleError),
    /// A sensitive field could not be sealed; nothing was sent.
    #[error("cannot seal: {0}")]
    Seal(#[from] sealed::SealError),
}

/// Where a delayed event waits until NATS fires it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scheduled {
    /// The event id (the fired event keeps it).
    pub id: String,
    /// The event type.
    pub event_type: String,
    /// The schedule's name (`jetfn schedule list` shows it; derived from the event id).
    pub name: String,
    /// The whole second it fires at, never before the moment asked for.
    pub fires_at: time::OffsetDateTime,
    /// The schedule message's sequence in `SCHEDULES`.
    pub sequence: u64,
    /// True when this event was scheduled already (a retried call): nothing new was stored.
    pub duplicate: bool,
}

/// Publishes CloudEvents to JetStream. Cheap to clone; each schema is compiled once per publisher, when first used.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    validator: Arc<Validator>,
    source: String,
    keyring: Option<Arc<sealed::Keyring>>,
    priority: events::Priority,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("source", &self.source)
            .field("keyring", &self.keyring)
            .field("priority", &self.priority)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// A publisher whose events name `source` (a URI reference such as `/billing-api`).
    pub fn new(client: async_nats::Client, source: impl Into<String>) -> Self {
        Self {
            js: jetstream::new(client),
            validator: Arc::new(Validator::new()),
            source: source.into(),
            keyring: None,
            priority: events::Priority::Normal,
        }
    }

    /// Publishes at `priority`: on `events.<type>.high` or `events.<type>.low`, which the functions that serve
    /// priorities pull from before (high) or after (low) their normal backlog. Normal, the default, is the plain
    /// `events.<type>`. Delayed events ([`Publisher::publish_delayed`]) fire at normal.
    #[must_use]
    pub fn with_priority(mut self, priority: events::Priority) -> Self {
        self.priority = priority;
        self
    }

    /// Checks events with `validator` instead of a validator of its own, so a process that already holds one (the
    /// runtime does) compiles each schema once.
    #[must_use]
    pub fn with_validator(mut self, validator: Arc<Validator>) -> Self {
        self.validator = validator;
        self
    }

    /// Seals the fields the catalog marks sensitive with the keyring's current key (`Jetfn-Key-Id` names it), so
    /// the stream, the DLQ and any replay hold ciphertext; events without such fields go out as before. Read the
    /// keyring with [`sealed::Keyring::from_env`] (`JETFN_KEYRING`, `JETFN_KEYRING_FILE`).
    #[must_use]
    pub fn with_keyring(mut self, keyring: Arc<sealed::Keyring>) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// Wraps `data` in a new envelope and publishes it.
    ///
    /// # Errors
    /// [`PublishError::Invalid`] before anything is sent; [`PublishError::Nats`] when the stream did not ack.
    pub async fn publish<T: Event>(&self, data: T) -> Result<Published, PublishError> {
        self.publish_event(&CloudEvent::new(self.source.clone(), data))
            .await
    }

    /// Publishes a prepared envelope, keeping its id: publishing the same envelope twice stores it once.
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn publish_event<T: Event>(
        &self,
        event: &CloudEvent<T>,
    ) -> Result<Published, PublishError> {
        // The schema runs on the JSON tree the event serializes to, and `T`'s rules on the payload held here: the
        // same checks as `publish_json`, without parsing the bytes back and decoding the payload again.
        let encoded = self.encode(event)?;
        self.send(&event.id, &event.ty, encoded).await
    }

    /// Publishes `data` in a new envelope to happen `delay` from now, on a schedule NATS holds.
    ///
    /// # Errors
    /// As [`Publisher::publish_delayed`].
    pub async fn publish_in<T: Event>(
        &self,
        delay: std::time::Duration,
        data: T,
    ) -> Result<Scheduled, PublishError> {
        let event = CloudEvent::new(self.source.clone(), data);
        self.publish_delayed(&event, schedule::Delay::In(delay))
            .await
    }

    /// Publishes `data` in a new envelope to happen at `at`, on a schedule NATS holds.
    ///
    /// # Errors
    /// [`PublishError::Delay`] when `at` is in the past; otherwise as [`Publisher::publish_delayed`].
    pub async fn publish_at<T: Event>(
        &self,
        at: time::OffsetDateTime,
        data: T,
    ) -> Result<Scheduled, PublishError> {
        let event = CloudEvent::new(self.source.clone(), data);
        self.publish_delayed(&event, schedule::Delay::At(at)).await
    }

    /// Publishes a prepared envelope to happen later: validated now (a bad field is named, nothing is stored), held
    /// by NATS as the one-off schedule [`schedule::name_for_event`] names, and fired to `events.<type>` at the whole
    /// second `delay` gives, rounded up, never early. Scheduling the same event again is absorbed (`duplicate`).
    ///
    /// # Errors
    /// [`PublishError::Invalid`] or [`PublishError::Delay`] before anything is sent; [`PublishError::Schedule`]
    /// when the server refused or did not confirm (call again: the name is the same), or the name holds another
    /// event; [`PublishError::Nats`] when a retried call could not read the schedule it found from the stream's
    /// leader, or found it gone (fired or cancelled meanwhile).
    pub async fn publish_delayed<T: Event>(
        &self,
        event: &CloudEvent<T>,
        delay: schedule::Delay,
    ) -> Result<Scheduled, PublishError> {
        let fires_at = delay.fires_at(time::OffsetDateTime::now_utc())?;
        let when = schedule::When {
            pattern: format!("@at {}", schedule::rfc3339(fires_at)),
            time_zone: None,
        };
        let encoded = self.encode(event)?;
        let name = schedule::name_for_event(&event.id);
        let mut headers = HeaderMap::new();
        if let Some(key_id) = &encoded.key_id {
            // The server copies it onto the fired event.
            headers.insert(sealed::KEY_ID_HEADER, key_id.as_str());
        }
        let span =
            tracing::info_span!("schedule", "messaging.message.id" = %event.id, name = %name);
        inject(&span, &mut headers);
        let scheduled = |sequence, duplicate| Scheduled {
            id: event.id.clone(),
            event_type: event.ty.clone(),
            name: name.clone(),
            fires_at,
            sequence,
            duplicate,
        };
        let put = schedule::put(
            &self.js,
            &name,
            &when,
            &event.ty,
            encoded.bytes,
            Some(headers),
            false,
        )
        .instrument(span)
        .await;
        match put {
            Ok(sequence) => Ok(scheduled(sequence, false)),
            Err(schedule::ScheduleError::Exists(_)) => {
                // A retried call finds its own schedule: the same event id is the same event. What the schedule
                // holds is read from the stream's leader (`STREAM.MSG.GET`), never a direct get: on an R3 stream a
                // follower that has not applied the first call's write answers "none", and the retry would fail
                // although its event is scheduled.
                let reading = |err: &dyn std::fmt::Display| {
                    PublishError::Nats(format!(
                        "schedule {name} exists; reading it from the {} stream's leader: {err}",
                        schedule::STREAM
                    ))
                };
                let stream = self
                    .js
                    .get_stream(schedule::STREAM)
                    .await
                    .map_err(|err| reading(&err))?;
                let held = match stream
                    .get_last_raw_message_by_subject(&schedule::subject(&name))
                    .await
                {
                    Ok(held) => held,
                    Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {
                        // The leader refused the write because the schedule was there: it fired or was cancelled
                        // since. Not written again, which would fire the event a second time.
                        return Err(PublishError::Nats(format!(
                            "schedule {name} existed when this call wrote it, and is gone now: it fired or was \
                             cancelled meanwhile; not scheduled again"
                        )));
                    }
                    Err(err) => return Err(reading(&err)),
                };
                let id = serde_json::from_slice::<serde_json::Value>(&held.payload)
                    .ok()
                    .and_then(|value| {
                        value
                            .get("id")
                            .and_then(|id| id.as_str().map(str::to_owned))
                    });
                if id.as_deref() == Some(event.id.as_str()) {
                    Ok(scheduled(held.sequence, true))
                } else {
                    Err(schedule::ScheduleError::Exists(name.clone()).into())
                }
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Cancels the delayed event with this id, if it has not fired yet. Returns whether a schedule was removed:
    /// `false` when it already fired (or was never scheduled).
    ///
    /// # Errors
    /// [`PublishError::Schedule`] when the server did not answer.
    pub async fn cancel_delayed(&self, event_id: &str) -> Result<bool, PublishError> {
        Ok(schedule::cancel(&self.js, &schedule::name_for_event(event_id)).await?)
    }

    /// Validates a typed envelope (the plaintext: the schema describes it), seals its sensitive fields when there
    /// is a keyring, and serializes it: the bytes that go on the stream, and the key id they were sealed with.
    fn encode<T: Event>(&self, event: &CloudEvent<T>) -> Result<Encoded, PublishError> {
        let cannot = |err: serde_json::Error| Invalid::new("", format!("cannot serialize: {err}"));
        let mut value = serde_json::to_value(event).map_err(cannot)?;
        self.validator.check_typed_for_publish(&value, event)?;
        let (bytes, key_id) = match &self.keyring {
            Some(keyring) if !T::SENSITIVE.is_empty() => {
                let key_id = sealed::seal_event(&mut value, keyring)?;
                (serde_json::to_vec(&value).map_err(cannot)?, key_id)
            }
            _ => {
                drop(value);
                (serde_json::to_vec(event).map_err(cannot)?, None)
            }
        };
        // The size that counts is what is stored: sealing adds a nonce, a tag and base64's third.
        events::check_size(bytes.len())?;
        Ok(Encoded {
            bytes: bytes::Bytes::from(bytes),
            key_id,
        })
    }

    /// Publishes a whole CloudEvent given as JSON, the way events from other languages arrive.
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn publish_json(&self, bytes: &[u8]) -> Result<Published, PublishError> {
        let event = self.validator.check_for_publish(bytes)?;
        let encoded = match &self.keyring {
            Some(keyring) if !sealed::sensitive_fields(&event.ty).is_empty() => {
                let mut value: serde_json::Value = serde_json::from_slice(bytes)
                    .map_err(|err| Invalid::new("", format!("not JSON: {err}")))?;
                let key_id = sealed::seal_event(&mut value, keyring)?;
                let sealed = serde_json::to_vec(&value)
                    .map_err(|err| Invalid::new("", format!("cannot serialize: {err}")))?;
                events::check_size(sealed.len())?;
                Encoded {
                    bytes: bytes::Bytes::from(sealed),
                    key_id,
                }
            }
            _ => Encoded {
                bytes: bytes::Bytes::copy_from_slice(bytes),
                key_id: None,
            },
        };
        self.send(&event.id, &event.ty, encoded).await
    }

    /// Sends a checked event: `Nats-Msg-Id`, `traceparent`, and the wait for the stream's ack.
    async fn send(&self, id: &str, ty: &str, encoded: Encoded) -> Result<Published, PublishError> {
        let Encoded {
            bytes: payload,
            key_id,
        } = encoded;
        let subject = self.priority.subject(ty);
        // As in the consume loop: the full OpenTelemetry attributes only when spans are exported; the log layer
        // formats every field of a span into text, per event.
        let span = if exporting() {
            tracing::info_span!(
                "send",
                "otel.name" = %format_args!("send {subject}"),
                "otel.kind" = "producer",
                "messaging.system" = "nats",
                "messaging.operation.type" = "send",
                "messaging.operation.name" = "send",
                "messaging.destination.name" = %subject,
                "messaging.message.id" = id,
                "messaging.message.body.size" = payload.len(),
            )
        } else {
            tracing::info_span!("send", subject = %subject, "messaging.message.id" = id)
        };
        let mut headers = HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
        if let Some(key_id) = &key_id {
            headers.insert(sealed::KEY_ID_HEADER, key_id.as_str());
        }
        headers.insert(
            "content-type",
            "application/cloudevents+json; charset=utf-8",
        );
        inject(&span, &mut headers);
        async {
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers, payload)
                .await
                .map_err(|err| PublishError::Nats(err.to_string()))?
                .await
                .map_err(|err| PublishError::Nats(err.to_string()))?;
            tracing::debug!(stream = %ack.stream, sequence = ack.sequence, duplicate = ack.duplicate, "published");
            Ok(Published {
                id: id.to_owned(),
                event_type: ty.to_owned(),
                subject: subject.clone(),
                stream: ack.stream,
                sequence: ack.sequence,
                duplicate: ack.duplicate,
            })
        }
        .instrument(span)
        .await
    }
}

/// An event ready to store: its bytes, and the key its sensitive fields were sealed with.
struct Encoded {
    bytes: bytes::Bytes,
    key_id: Option<String>,
}

/// Writes the trace context of `span` into NATS headers as W3C `traceparent` (and `tracestate`).
///
/// The context is OpenTelemetry's current one while `span` is entered (tracing-opentelemetry activates it), so
/// this needs the API alone. The global propagator writes it when the process installed one; W3C is what the
/// functions read, so it is written by hand when the propagator wrote nothing. Without a valid context (no
/// exporter) a fresh random `traceparent` is written, so the attempts of one event still share a trace id that
/// logs and downstream services can correlate.
fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    let context = span.in_scope(opentelemetry::Context::current);
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut HeaderInjector(headers));
        });
        if headers.get(TRACEPARENT).is_none() {
            let traceparent = format!(
                "00-{}-{}-{:02x}",
                span_context.trace_id(),
                span_context.span_id(),
                span_context.trace_flags().to_u8()
            );
            headers.insert(TRACEPARENT, traceparent.as_str());
            let state = span_context.trace_state().header();
            if !state.is_empty() {
                headers.insert("tracestate", state.as_str());
            }
        }
    } else {
        headers.insert(TRACEPARENT, random_traceparent().as_str());
    }
}

const TRACEPARENT: &str = "traceparent";

fn random_traceparent() -> String {
    let mut traceparent = String::with_capacity(55);
    traceparent.push_str("00-");
    events::hex::push_random_lower(&mut traceparent, 16);
    traceparent.push('-');
    events::hex::push_random_lower(&mut traceparent, 8);
    traceparent.push_str("-01");
    traceparent
}

/// NATS header names are case-sensitive (ADR-4); W3C names are lowercase, so write them lowercase.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    /// Without an exporter each event still gets a W3C `traceparent`: version 00, 16 random bytes of trace id and
    /// 8 of parent id in lower-case hex, sampled.
    #[test]
    fn a_random_traceparent_is_a_valid_w3c_header() {
        let first = random_traceparent();
        let parts: Vec<&str> = first.split('-').collect();
        assert_eq!(first.len(), 55, "{first}");
        assert_eq!(parts.len(), 4, "{first}");
        assert_eq!((parts[0], parts[3]), ("00", "01"));
        assert_eq!((parts[1].len(), parts[2].len()), (32, 16));
        assert!(
            parts[1..3].iter().all(|id| id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
            "{first}"
        );
        assert_ne!(random_traceparent(), first);
    }

    fn traceparent(headers: &HeaderMap) -> String {
        headers
            .get(TRACEPARENT)
            .map(|value| value.as_str().to_owned())
            .expect("a traceparent")
    }

    fn is_valid_traceparent(value: &str) -> bool {
        let parts: Vec<&str> = value.split('-').collect();
        parts.len() == 4
            && parts[0] == "00"
            && parts[1].len() == 32
            && parts[2].len() == 16
            && parts[3].len() == 2
            && parts[1..]
                .iter()
                .all(|part| part.bytes().all(|b| b.is_ascii_hexdigit()))
            && parts[1].bytes().any(|b| b != b'0')
            && parts[2].bytes().any(|b| b != b'0')
    }

    #[test]
    fn without_an_exporter_each_event_gets_a_fresh_valid_random_trace() {
        let (mut first, mut second) = (HeaderMap::new(), HeaderMap::new());
        inject(&tracing::info_span!("send"), &mut first);
        inject(&tracing::info_span!("send"), &mut second);
        let (first, second) = (traceparent(&first), traceparent(&second));
        assert!(is_valid_traceparent(&first), "{first}");
        assert!(is_valid_traceparent(&second), "{second}");
        assert_ne!(first[3..35], second[3..35], "two events, two traces");
    }

    #[test]
    fn an_exported_span_is_the_parent_written_in_w3c_form_even_without_a_global_propagator() {
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("send");
            let mut headers = HeaderMap::new();
            inject(&span, &mut headers);
            let expected = span.in_scope(|| {
                let context = opentelemetry::Context::current();
                let span_context = context.span().span_context().clone();
                format!(
                    "00-{}-{}-01",
                    span_context.trace_id(),
                    span_context.span_id()
                )
            });
            assert_eq!(traceparent(&headers), expected);
            assert!(is_valid_traceparent(&expected), "{expected}");
        });
    }
}
