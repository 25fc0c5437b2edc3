//! The validating publisher: the SDK backend teams use from Rust, and what `jetfn publish` runs.
//!
//! It refuses an invalid event before it reaches NATS, sets `Nats-Msg-Id` to the event id (so a re-publish is
//! absorbed by the stream's duplicate window), injects `traceparent`, and waits for the stream's ack.

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::jetstream;
use events::{CloudEvent, Event, Invalid, Validator};
use tracing::Instrument as _;

use crate::telemetry;

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
        let span = if telemetry::exporting() {
            tracing::info_span!(
                "send",
                "otel.name" = %format_args!("send {subject}"),
                "otel.kind" = "producer",
                "messaging.system" = "nats",
                "messaging.operation.type" = "send",
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
        telemetry::inject(&span, &mut headers);
        async {
            let ack = self
                .js
                .publish_with_headers(subject.clone(), headers, payload)
                .await
                .map_err(|err| PublishError::Nats(err.to_string()))?
                .await
                .map_err(|err| PublishError::Nats(err.to_string()))?;
            tracing::debug!(stream = %ack.stream, sequence = ack.sequence, duplicate = ack.duplicate, "published");
            Ok(Published { id: id.to_owned(), event_type: ty.to_owned(), subject: subject.clone(), stream: ack.stream, sequence: ack.sequence, duplicate: ack.duplicate })
        }
        .instrument(span)
        .await
    }
}
