//! The job a handler sees: the validated event, where it stands in its retries, and the ledger for its effects.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use events::{CloudEvent, Event};
use tokio_util::sync::CancellationToken;

use crate::JobError;
use crate::dlq::DeathKind;
use crate::ledger::{Effect, Ledger};
use crate::metrics::Metrics;

/// The follow-up event to publish if this attempt ends in a dead letter, registered by the handler and run by the
/// typed layer before the dead-letter record is written.
pub(crate) type DeadOutcome =
    Box<dyn FnOnce(DeathKind) -> Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>> + Send>;

/// What a job needs to publish outcome events and report progress; `None` parts in handler unit tests.
#[derive(Clone, Default)]
pub(crate) struct Extras {
    pub(crate) function: Arc<str>,
    pub(crate) publisher: Option<Arc<publish::Publisher>>,
    pub(crate) on_dead: Arc<Mutex<Vec<(String, DeadOutcome)>>>,
    pub(crate) progress: Option<Arc<crate::progress::Reporter>>,
    /// The message's ack subject, for the in-progress ack of `job.progress`.
    pub(crate) ack_subject: Option<async_nats::Subject>,
    /// What the ledger keys this job's effects and outcomes by, when not the event id ([`Job::keyed_by`]).
    pub(crate) idempotency_id: Option<Arc<str>>,
}

impl std::fmt::Debug for Extras {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Extras")
            .field("function", &self.function)
            .finish_non_exhaustive()
    }
}

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
    pub(crate) extras: Extras,
}

impl<T> Job<T> {
    /// Keys this job's effects and outcomes (`once`, `decide`, `effect_key`, the outcome events) by `id` instead of
    /// the event id: for an event whose payload names the change it reports (a subscription and the instant of its
    /// transition), so two events about one change, under two ids (a producer that retried with a fresh id, an
    /// outbox replayed), run the effect once, while every other change runs it again. Call it first, before any
    /// effect.
    #[must_use]
    pub fn keyed_by(mut self, id: impl Into<String>) -> Self {
        self.extras.idempotency_id = Some(id.into().into());
        self
    }

    /// The ledger's key for this job: [`Job::keyed_by`]'s, or the event id.
    fn idempotency_id(&self) -> &str {
        self.extras
            .idempotency_id
            .as_deref()
            .unwrap_or(self.event.id.as_str())
    }

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
        let key = self.ledger.key(self.idempotency_id(), name);
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
        let key = self.ledger.key(self.idempotency_id(), name);
        self.ledger.decide(&key, decide).await
    }

    /// The idempotency key of an effect, for a downstream system that deduplicates (an email's `Message-ID`).
    pub fn effect_key(&self, name: &str) -> String {
        self.ledger.key(self.idempotency_id(), name)
    }

    /// Whether a failure now goes to the dead-letter stream instead of being retried.
    pub fn is_last_attempt(&self) -> bool {
        crate::policy::is_last(self.max_deliver, self.attempt)
    }

    /// Publishes `data` as an outcome of this event (an `email.sent` after the send), once for this event and
    /// `name` across redeliveries, replicas, kills and replays. The event's id derives from this event's id and
    /// `name` ([`events::outcome_id`]) and is its `Nats-Msg-Id`; the ledger records the publish `done` (without
    /// claiming it first), so a `done` skips it, and a publish whose `done` was lost, or one a replica makes at
    /// the same time, goes again with the same id, which the stream's duplicate window absorbs (ARCHITECTURE.md,
    /// "Outcome events"). `name` may hold an address: it is only hashed.
    ///
    /// # Errors
    /// A transient error when the stream did not ack (the redelivery publishes it), or a permanent one when
    /// `data` is not a valid event.
    pub async fn publish_outcome<O: Event + Sync>(
        &self,
        name: &str,
        data: O,
    ) -> Result<Effect<()>, JobError> {
        let publish = outcome_publisher(&self.extras, self.idempotency_id(), name, data);
        let key = self.ledger.outcome_key(self.idempotency_id(), name);
        self.ledger.once_deduplicated(&key, publish).await
    }

    /// [`Job::publish_outcome`] for the outcome of `effect`, an effect of this event that this attempt ran through
    /// [`Job::once`] just before (`ran` is what it returned). The outcome is recorded as a mark on the effect's key
    /// rather than on a key of its own, so the effect and its outcome hold one key in the ledger, where
    /// nats-server keeps every key in memory (ARCHITECTURE.md, "Outcome events"). Where this attempt performed
    /// the effect ([`Effect::Done`]), no earlier attempt got past it to publish the outcome, so the ledger is not
    /// read first: the outcome costs its publish and one ledger write. Where an earlier attempt had
    /// ([`Effect::AlreadyDone`]), the effect's key is read for the mark, and where it has none, the outcome's own
    /// key, which builds before the marks wrote.
    ///
    /// # Errors
    /// As [`Job::publish_outcome`].
    pub async fn publish_outcome_of<R, O: Event + Sync>(
        &self,
        effect: &str,
        ran: &Effect<R>,
        name: &str,
        data: O,
    ) -> Result<Effect<()>, JobError> {
        let may_have_run = matches!(ran, Effect::AlreadyDone);
        let publish = outcome_publisher(&self.extras, self.idempotency_id(), name, data);
        let effect_key = self.ledger.key(self.idempotency_id(), effect);
        let legacy_key = self.ledger.outcome_key(self.idempotency_id(), name);
        self.ledger
            .once_marked(&effect_key, &legacy_key, may_have_run, publish)
            .await
    }

    /// Registers the outcome `name` to publish if this attempt dead-letters the event (an `email.failed`): `make`
    /// gets the dead letter's kind. It is published once for this event and `name`, through the ledger like
    /// [`Job::publish_outcome`], before the dead-letter record is written; a publish that fails retries the event
    /// instead (on its last delivery the record is written anyway and the failure logged). Register before the
    /// effect and [`Job::forget_dead_letter`] once it succeeded, so a handler that times out or panics mid-effect
    /// still reports it. A second call with the same `name` replaces the first. Not run for an event that fails
    /// validation (no handler ran) nor for one the router dead-letters after every delivery went unanswered.
    pub fn on_dead_letter<O, F>(&self, name: &str, make: F)
    where
        O: Event + Sync,
        F: FnOnce(events::FailureKind) -> O + Send + 'static,
    {
        let extras = self.extras.clone();
        let ledger = self.ledger.clone();
        let key = self.ledger.outcome_key(self.idempotency_id(), name);
        let registered = key.clone();
        let event_id = self.idempotency_id().to_owned();
        let name = name.to_owned();
        let outcome: DeadOutcome = Box::new(move |kind: DeathKind| {
            Box::pin(async move {
                let kind = events::FailureKind::from_dlq_kind(kind.as_str())
                    .unwrap_or(events::FailureKind::Permanent);
                let publish = outcome_publisher(&extras, &event_id, &name, make(kind));
                ledger.once_deduplicated(&key, publish).await.map(|_| ())
            })
        });
        if let Ok(mut slot) = self.extras.on_dead.lock() {
            slot.retain(|(other, _)| *other != registered);
            slot.push((registered, outcome));
        }
    }

    /// Withdraws the dead-letter outcome `name` (its effect succeeded after all).
    pub fn forget_dead_letter(&self, name: &str) {
        let key = self.ledger.outcome_key(self.idempotency_id(), name);
        if let Ok(mut slot) = self.extras.on_dead.lock() {
            slot.retain(|(registered, _)| *registered != key);
        }
    }

    /// Reports how far a long job is (`done` of `total`, and a short `note` with no personal data): the message
    /// is kept alive at once (an in-progress ack; the runtime sends them on its own too, but this one lands
    /// now), and the progress is written to the `jetfn-progress` KV bucket under
    /// [`events::progress_key`]`(function, event id)`, where `publish::progress::read`, `jetfn`, or a plain KV get
    /// reads it while the job runs and for a day after. Best effort: a failed write is logged, never an error.
    pub async fn progress(&self, done: u64, total: u64, note: &str) {
        if let Some(reporter) = &self.extras.progress {
            reporter
                .report(
                    &self.extras.function,
                    &self.event.id,
                    self.extras.ack_subject.as_ref(),
                    self.attempt,
                    (done, total),
                    note,
                )
                .await;
        }
    }

    /// The function running this job (its consumer's function name).
    pub fn function(&self) -> &str {
        &self.extras.function
    }

    /// Whether the process is draining; long handlers may stop early and return a transient error.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

type Publish = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;

/// The publish of one outcome event, to run as a ledger effect.
fn outcome_publisher<O: Event + Sync>(
    extras: &Extras,
    source_id: &str,
    name: &str,
    data: O,
) -> impl FnOnce() -> Publish + Send + use<O> {
    let mut event = CloudEvent::new(format!("/{}", extras.function), data);
    event.id = events::outcome_id(&extras.function, source_id, name);
    let publisher = extras.publisher.clone();
    move || {
        Box::pin(async move {
            let Some(publisher) = publisher else {
                // A handler unit test: no NATS, so the outcome is only recorded in the memory ledger.
                return Ok(());
            };
            match publisher.publish_event(&event).await {
                Ok(published) => {
                    tracing::info!(
                        outcome = O::TYPE,
                        duplicate = published.duplicate,
                        "outcome event published"
                    );
                    Ok(())
                }
                Err(err @ publish::PublishError::Invalid(_)) => Err(JobError::permanent(err)),
                Err(err) => Err(JobError::transient(err)),
            }
        })
    }
}
