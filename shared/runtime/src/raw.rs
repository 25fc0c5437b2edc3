//! The raw layer, for handlers of messages that are not CloudEvents (the dead-letter router's advisories): the
//! handler sees the message's subject, headers, payload and delivery, and returns an [`Outcome`] for settle. It
//! cannot ack the message itself: settle does, as for every other consumer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::consume::{self, Process};
use crate::settle::{Outcome, Settler};

/// One delivery of a raw message to a handler.
#[derive(Debug, Clone)]
pub struct RawJob {
    /// The subject it was published on.
    pub subject: Subject,
    /// Its headers.
    pub headers: Option<HeaderMap>,
    /// Its body.
    pub payload: Bytes,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// Its sequence in its stream.
    pub stream_sequence: u64,
    pub(crate) shutdown: CancellationToken,
}

impl RawJob {
    /// Whether the process is draining.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

/// A raw consumer to bind: its stream, its durable name, and where its dead messages go.
#[derive(Debug, Clone)]
pub struct RawConsumer {
    pub(crate) stream: String,
    pub(crate) consumer: String,
    pub(crate) dead_letters: bool,
}

impl RawConsumer {
    /// The durable `consumer` on `stream`. A dead message is recorded in the dead-letter stream, then TERMed,
    /// and failed attempts are journaled, as for a typed consumer.
    pub fn new(stream: impl Into<String>, consumer: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            consumer: consumer.into(),
            dead_letters: true,
        }
    }

    /// A dead message is TERMed with its reason and not recorded, and failures are not journaled: for messages
    /// that are not events anyone could replay (advisories). Such a consumer needs no KV bucket.
    #[must_use]
    pub fn without_dead_letters(mut self) -> Self {
        self.dead_letters = false;
        self
    }
}

/// A raw handler behind a pointer, its future boxed: so the raw layer, like the typed one, is compiled once in this
/// crate and not again in each function binary (see `crate::typed::Typed`). Raw consumers carry advisories and
/// other low-rate traffic, where the allocation per message is nothing beside the message's round trips.
pub(crate) type RawHandler =
    Arc<dyn Fn(RawJob) -> Pin<Box<dyn Future<Output = Outcome> + Send>> + Send + Sync>;

/// One raw consumer's state, shared by its message tasks.
pub(crate) struct Raw {
    pub(crate) settler: Settler,
    pub(crate) handler: RawHandler,
    pub(crate) shutdown: CancellationToken,
    pub(crate) handler_timeout: Duration,
}

impl Process for Raw {
    fn process(&self, message: jetstream::Message) -> impl Future<Output = ()> + Send {
        process(self, message)
    }
}

async fn process(shared: &Raw, message: jetstream::Message) {
    let Some((attempt, sequence)) = consume::delivery(&message) else {
        return;
    };
    shared.settler.metrics.consumed();
    let _in_flight = crate::heartbeat::in_flight();
    let span = tracing::info_span!(
        "process",
        subject = message.subject.as_str(),
        seq = sequence,
        attempt,
        "jetfn.outcome" = tracing::field::Empty,
        "error.type" = tracing::field::Empty,
        "otel.status_code" = tracing::field::Empty,
    );
    crate::telemetry::attach_log_ids(&span, message.headers.as_ref());
    async move {
        let started = std::time::Instant::now();
        let job = RawJob {
            subject: message.subject.clone(),
            headers: message.headers.clone(),
            payload: message.payload.clone(),
            attempt,
            stream_sequence: sequence,
            shutdown: shared.shutdown.clone(),
        };
        let outcome = consume::supervise(
            (shared.handler)(job),
            &message,
            &shared.settler.policy,
            shared.handler_timeout,
        )
        .await
        .into_outcome(shared.handler_timeout, |outcome| outcome);
        Box::pin(
            shared
                .settler
                .settle(&message, attempt, sequence, outcome, started),
        )
        .await;
    }
    .instrument(span)
    .await;
}
