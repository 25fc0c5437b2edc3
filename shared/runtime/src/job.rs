//! The job a handler sees: the validated event, where it stands in its retries, and the ledger for its effects.

use std::future::Future;
use std::sync::Arc;

use events::CloudEvent;
use tokio_util::sync::CancellationToken;

use crate::JobError;
use crate::ledger::{Effect, Ledger};
use crate::metrics::Metrics;

/// One delivery of an event to a handler.
#[derive(Debug)]
pub struct Job<T> {
    /// The validated event.
    pub event: CloudEvent<T>,
    /// 1 for the first delivery.
    pub attempt: u32,
    /// The consumer's `max_deliver`, `None` when unlimited.
    pub max_deliver: Option<u32>,
    /// The event's sequence in its stream.
    pub stream_sequence: u64,
    pub(crate) ledger: Ledger,
    pub(crate) shutdown: CancellationToken,
    pub(crate) metrics: Arc<Metrics>,
}

impl<T> Job<T> {
    /// Acks the event without its effect, on purpose (an expired code, a cancelled order): logged with the
    /// reason and counted as dropped. Return its result from the handler.
    #[allow(clippy::unnecessary_wraps)]
    pub fn skip(&self, reason: &'static str) -> Result<(), JobError> {
        tracing::warn!(reason, "event dropped without its effect");
        tracing::Span::current().record("jetfn.outcome", "dropped");
        self.metrics.dropped(reason);
        self.ledger.note_skip(&self.event.id, reason);
        Ok(())
    }

    /// Runs `effect` at most once for this event across redeliveries, re-publishes and replicas. `name` tells
    /// the effects of one event apart (for example `customer-email` and `admin-email`).
    ///
    /// # Errors
    /// The effect's error, or a transient ledger error.
    pub async fn once<R, F, Fut>(&self, name: &str, effect: F) -> Result<Effect<R>, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<R, JobError>>,
    {
        let key = self.ledger.key(&self.event.id, name);
        self.ledger.once(&key, effect).await
    }

    /// Decides once for this event across redeliveries, re-publishes, replays and replicas, and returns that
    /// decision every time: `decide` (which may take something, such as a rate-limit slot) runs at most once, and
    /// what it returned (a short token, for example `allowed` or `limited`) is kept in the ledger with the effect.
    /// `None` when an earlier attempt completed `name` before decisions were recorded.
    ///
    /// # Errors
    /// `decide`'s error, or a transient ledger error.
    pub async fn decide<F, Fut>(&self, name: &str, decide: F) -> Result<Option<String>, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<String, JobError>>,
    {
        let key = self.ledger.key(&self.event.id, name);
        self.ledger.decide(&key, decide).await
    }

    /// The idempotency key of an effect, for a downstream system that deduplicates (an email's `Message-ID`).
    pub fn effect_key(&self, name: &str) -> String {
        self.ledger.key(&self.event.id, name)
    }

    /// Whether a failure now goes to the dead-letter stream instead of being retried.
    pub fn is_last_attempt(&self) -> bool {
        crate::policy::is_last(self.max_deliver, self.attempt)
    }

    /// Whether the process is draining; long handlers may stop early and return a transient error.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}
