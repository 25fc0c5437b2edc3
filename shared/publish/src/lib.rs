//! The validating publisher: what the SDK backend teams use from Rust builds on, what `jetfn publish` and the
//! functions that emit events run.
//!
//! It refuses an invalid event before it reaches NATS, sets `Nats-Msg-Id` to the event id (so a re-publish is
//! absorbed by the stream's duplicate window), injects `traceparent`, and waits for the stream's ack.
//!
//! It is a crate of its own so that a producer does not link the consumer runtime: it depends on the
//! OpenTelemetry API alone, and the process that links it chooses the exporter, the subscriber and the allocator.
#![warn(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_nats::HeaderMap;
use async_nats::jetstream;
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
}

/// Publishes CloudEvents to JetStream. Cheap to clone; schemas are compiled once per publisher.
#[derive(Clone)]
pub struct Publisher {
    js: jetstream::Context,
    validator: Arc<Validator>,
    source: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("source", &self.source)
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
        }
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
        let cannot = |err: serde_json::Error| Invalid::new("", format!("cannot serialize: {err}"));
        // The schema runs on the JSON tree the event serializes to, and `T`'s rules on the payload held here: the
        // same checks as `publish_json`, without parsing the bytes back and decoding the payload again.
        let value = serde_json::to_value(event).map_err(cannot)?;
        self.validator.check_typed_for_publish(&value, event)?;
        drop(value);
        let bytes = serde_json::to_vec(event).map_err(cannot)?;
        events::check_size(bytes.len())?;
        self.send(&event.id, &event.ty, bytes::Bytes::from(bytes))
            .await
    }

    /// Publishes a whole CloudEvent given as JSON, the way events from other languages arrive.
    ///
    /// # Errors
    /// As [`Publisher::publish`].
    pub async fn publish_json(&self, bytes: &[u8]) -> Result<Published, PublishError> {
        let event = self.validator.check_for_publish(bytes)?;
        self.send(&event.id, &event.ty, bytes::Bytes::copy_from_slice(bytes))
            .await
    }

    /// Sends a checked event: `Nats-Msg-Id`, `traceparent`, and the wait for the stream's ack.
    async fn send(
        &self,
        id: &str,
        ty: &str,
        payload: bytes::Bytes,
    ) -> Result<Published, PublishError> {
        let subject = events::subject_for(ty);
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
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 24];
    // The system RNG failing leaves zeros; the all-zero ids are invalid, so fall back to the clock's bits.
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes[..16].copy_from_slice(&nanos.to_le_bytes());
        bytes[16..].copy_from_slice(&nanos.to_be_bytes()[..8]);
    }
    let hex = |part: &[u8]| {
        part.iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    };
    format!("00-{}-{}-01", hex(&bytes[..16]), hex(&bytes[16..]))
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
