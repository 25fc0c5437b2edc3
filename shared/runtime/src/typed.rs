//! The typed layer, for CloudEvents handlers: decode and validate the event, open the attempt's span, hold the
//! message while the circuit breaker is open, run the handler (timeout, panics, progress acks) and map its result
//! to an [`Outcome`] for settle.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use events::{Event, Validator};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::breaker::Breaker;
use crate::consume::{self, Process};
use crate::job::Extras;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::progress::Reporter;
use crate::settle::{Outcome, Settler};
use crate::{Job, JobError, telemetry};

/// One typed consumer's state, shared by its message tasks. Not generic: the pull loop, the attempt's span,
/// the breaker, batches and settle are compiled once, in this crate. Were they generic over the handler, every
/// function binary would compile all of them again (with the async-nats calls they await: a crate that awaits
/// another crate's future compiles that future's state machine itself), about half of each binary's build.
pub(crate) struct Typed {
    pub(crate) settler: Settler,
    pub(crate) validator: Arc<Validator>,
    pub(crate) keyring: Option<Arc<publish::sealed::Keyring>>,
    pub(crate) ledger: Ledger,
    /// The function's handler with its event type: the one generic step, called once per attempt.
    pub(crate) handler: Arc<dyn RunAttempt>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) breaker: Arc<Breaker>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) handler_timeout: Duration,
    /// The function's name, shared by its jobs.
    pub(crate) function: Arc<str>,
    /// Publishes the handlers' outcome events.
    pub(crate) publisher: Arc<publish::Publisher>,
    /// Writes `job.progress` reports (its bucket `None` when it does not exist: progress is then the ack only).
    pub(crate) progress: Arc<Reporter>,
    /// Gates and counts batch items (`crate::batch`).
    pub(crate) batches: Arc<crate::batch::Batches>,
}

/// What an attempt returns: its outcome, and the outcome events the handler registered for a dead letter.
type Attempted = (Outcome, Vec<(String, crate::job::DeadOutcome)>);

/// Decodes the event into its type and runs the handler: the part of an attempt that depends on the function.
/// Its future was boxed before it was behind this trait (a task's size is its largest state), so the dynamic
/// call adds no allocation.
pub(crate) trait RunAttempt: Send + Sync + 'static {
    fn run<'a>(
        &'a self,
        shared: &'a Typed,
        message: &'a jetstream::Message,
        known: consume::Known<'a>,
        attempt: u32,
        sequence: u64,
    ) -> Pin<Box<dyn Future<Output = Attempted> + Send + 'a>>;
}

/// A handler of events of type `T`.
pub(crate) struct Handler<T, H> {
    pub(crate) handler: H,
    pub(crate) _event: PhantomData<fn() -> T>,
}

impl<T, H, Fut> RunAttempt for Handler<T, H>
where
    T: Event,
    H: Fn(Job<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    fn run<'a>(
        &'a self,
        shared: &'a Typed,
        message: &'a jetstream::Message,
        known: consume::Known<'a>,
        attempt: u32,
        sequence: u64,
    ) -> Pin<Box<dyn Future<Output = Attempted> + Send + 'a>> {
        Box::pin(run_attempt(self, shared, message, known, attempt, sequence))
    }
}

impl Process for Typed {
    fn process(&self, message: jetstream::Message) -> impl Future<Output = ()> + Send {
        process(self, message)
    }
}

async fn process(shared: &Typed, message: jetstream::Message) {
    let Some((attempt, sequence)) = consume::delivery(&message) else {
        return;
    };
    let policy = &shared.settler.policy;
    let subject = message.subject.as_str();
    let known = consume::Known::of(message.headers.as_ref());
    let message_id = known.message_id;
    // The full set of OpenTelemetry attributes only when spans are exported. The log layer formats every span
    // field into text when it is created or recorded, so the logged span carries only what a log line needs, all
    // set at creation: recording fields afterwards was a measurable share of the runtime's CPU per event.
    shared.metrics.consumed();
    let _in_flight = crate::heartbeat::in_flight();
    let span = if telemetry::exporting() {
        let (server, port) = telemetry::server_address();
        let span = tracing::info_span!(
            "process",
            "otel.name" = %format_args!("process {subject}"),
            "otel.kind" = "consumer",
            "otel.status_code" = tracing::field::Empty,
            "messaging.system" = "nats",
            "messaging.operation.type" = "process",
            "messaging.operation.name" = crate::metrics::OPERATION,
            "server.address" = server,
            "server.port" = port,
            "messaging.destination.name" = subject,
            "messaging.destination.subscription.name" = %policy.consumer,
            "messaging.consumer.group.name" = %policy.consumer,
            "messaging.message.id" = tracing::field::Empty,
            "messaging.message.body.size" = message.payload.len(),
            "messaging.nats.stream" = %policy.stream,
            "messaging.nats.sequence" = sequence,
            "jetfn.function" = %shared.settler.function,
            "jetfn.attempt" = attempt,
            "jetfn.outcome" = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
        );
        telemetry::set_parent_from(&span, message.headers.as_ref());
        if !message_id.is_empty() {
            span.record("messaging.message.id", message_id);
        }
        span
    } else {
        let span = tracing::info_span!(
            "process",
            subject,
            seq = sequence,
            attempt,
            "messaging.message.id" = message_id,
            "jetfn.outcome" = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        );
        telemetry::attach_log_ids(&span, message.headers.as_ref());
        span
    };
    // Borrows the message (and `known`, read from it) rather than moving it: it is awaited right here.
    async {
        let started = std::time::Instant::now();
        // A NAK on the last delivery would make the server dead-letter the message: that one is held instead.
        let last = policy.is_last(attempt);
        // A batch item runs only once its batch is open, and is counted before it is settled (`crate::batch`).
        let item = crate::batch::Item::of(&known);
        if let Some(item) = &item {
            let admission = shared.batches.admit(
                item,
                &message,
                &shared.ledger,
                policy.progress_period(),
                &shared.shutdown,
                attempt,
            );
            if let crate::batch::Admission::Settle(outcome) = Box::pin(admission).await {
                return Box::pin(
                    shared
                        .settler
                        .settle(&message, attempt, sequence, outcome, started),
                )
                .await;
            }
        }
        let (outcome, on_dead) = loop {
            if shared.breaker.is_open() {
                if !last {
                    let why = "this replica's circuit is open";
                    return shared.settler.release(&message, attempt, why).await;
                }
                Box::pin(hold_while_open(shared, &message)).await;
            }
            // Boxed (by `RunAttempt::run`), like `settle` below: a task's size is its largest state, and the
            // handler's future and the settle paths' publish futures inline would make every message's task
            // several KiB to copy.
            let (outcome, on_dead) = shared
                .handler
                .run(shared, &message, known, attempt, sequence)
                .await;
            match &outcome {
                // The breaker is (now) open: the route, not this event, failed. Give the message to a replica whose
                // route works; on its last delivery keep it and try again when the breaker closes.
                Outcome::Unavailable { reason }
                    if shared.breaker.record_unavailable() =>
                {
                    if !last {
                        return shared.settler.release(&message, attempt, reason).await;
                    }
                    tracing::warn!(error = %reason, "dependency unavailable on the last delivery; holding the message until the circuit closes");
                    continue;
                }
                Outcome::Success | Outcome::Permanent { .. } => shared.breaker.record_success(),
                _ => {}
            }
            break (outcome, on_dead);
        };
        let after_handler = async {
            let outcome = Box::pin(dead_outcome(outcome, on_dead, attempt, last)).await;
            match &item {
                Some(item) => {
                    let counted =
                        shared
                            .batches
                            .after(item, &message, outcome, &shared.ledger, attempt, last);
                    Box::pin(counted).await
                }
                None => outcome,
            }
        };
        let outcome =
            consume::kept_alive(after_handler, &message, policy.progress_period()).await;
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

/// Publishes the outcome event the handler registered for a dead letter (`job.on_dead_letter`) when this attempt
/// dead-letters, before the record is written: so a crash between the two leaves the event undead, and its
/// redelivery finds the outcome done in the ledger (or publishes it under the same id, which the stream's
/// duplicate window absorbs). A publish that fails retries the event; on the last delivery there is no retry, so
/// the record is written anyway and the lost outcome logged.
async fn dead_outcome(
    outcome: Outcome,
    on_dead: Vec<(String, crate::job::DeadOutcome)>,
    attempt: u32,
    last: bool,
) -> Outcome {
    if on_dead.is_empty() {
        return outcome;
    }
    let Some(kind) = outcome.clone().at_attempt(attempt, last).death() else {
        return outcome;
    };
    for (_, publish) in on_dead {
        match publish(kind).await {
            Ok(()) => {}
            Err(err) if !last => {
                return Outcome::Retry {
                    after: None,
                    reason: format!("the dead-letter outcome event was not published: {err}"),
                };
            }
            Err(err) => {
                tracing::error!(error = %err, "a dead-letter outcome event was not published; dead-lettering without it");
            }
        }
    }
    outcome
}

/// Waits for the breaker to close, keeping the message (on its last delivery) with in-progress acks. A shutdown
/// does not end the wait: releasing the message would dead-letter it, so the drain keeps it until the breaker
/// closes or the drain's deadline passes (then the server, with no delivery left, raises MAX_DELIVERIES).
async fn hold_while_open(shared: &Typed, message: &jetstream::Message) {
    let mut progress = tokio::time::interval(shared.settler.policy.progress_period());
    loop {
        tokio::select! {
            () = shared.breaker.closed() => return,
            _ = progress.tick() => crate::settle::progress(message).await,
        }
    }
}

async fn run_attempt<T, H, Fut>(
    handler: &Handler<T, H>,
    shared: &Typed,
    message: &jetstream::Message,
    known: consume::Known<'_>,
    attempt: u32,
    sequence: u64,
) -> Attempted
where
    T: Event,
    H: Fn(Job<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    // Sealed fields open here, in memory, before validation: the schema describes the plaintext. The stored
    // message (and so a dead letter of it) keeps the ciphertext. A missing key dead-letters naming the key, so the
    // record replays once the key is deployed; an altered or moved ciphertext is an invalid event.
    let opened = match publish::sealed::open_event(
        &message.payload,
        known.key_id,
        shared.keyring.as_deref(),
    ) {
        Ok(opened) => opened,
        Err(err) if err.is_missing_key() => {
            let reason = format!("cannot decrypt: {err}");
            return (Outcome::Permanent { reason }, Vec::new());
        }
        Err(err) => {
            let reason = format!("invalid event: cannot decrypt: {err}");
            return (Outcome::Invalid { reason }, Vec::new());
        }
    };
    let payload = opened.as_deref().unwrap_or(&message.payload);
    let mut event = match shared.validator.decode::<T>(payload) {
        Ok(event) => event,
        Err(invalid) => {
            let reason = format!("invalid event: {invalid}");
            return (Outcome::Invalid { reason }, Vec::new());
        }
    };
    if known.is_recurring_firing() {
        // Every firing of a recurring schedule carries the same stored event; each is its own occurrence, so its
        // id (and with it every ledger key) gets the firing's stream sequence, stable across redeliveries.
        event.id = format!("{}:{sequence}", event.id);
    }
    if event.id.as_str() != known.message_id {
        tracing::Span::current().record("messaging.message.id", event.id.as_str());
    }
    let extras = Extras {
        function: Arc::clone(&shared.function),
        publisher: Some(Arc::clone(&shared.publisher)),
        on_dead: Arc::default(),
        progress: Some(Arc::clone(&shared.progress)),
        ack_subject: message.reply.clone(),
        idempotency_id: None,
    };
    let on_dead = Arc::clone(&extras.on_dead);
    let job = Job {
        event,
        attempt,
        max_deliver: shared.settler.policy.max_deliver,
        stream_sequence: sequence,
        ledger: shared.ledger.clone(),
        shutdown: shared.shutdown.clone(),
        metrics: shared.metrics.clone(),
        extras,
    };
    #[cfg(feature = "fault-injection")]
    if let Some((steps, gap)) = crate::fault::slow_job() {
        // The reporter `job.progress` uses, called without holding `&Job<T>` (not `Sync` for every `T`).
        let (function, id) = (job.extras.function.clone(), job.event.id.clone());
        let ack = job.extras.ack_subject.clone();
        for step in 0..=steps {
            let note = if step < steps {
                "test step"
            } else {
                "test steps done"
            };
            let at = (step, steps);
            let reporter = &shared.progress;
            reporter
                .report(&function, &id, ack.as_ref(), attempt, at, note)
                .await;
            if step < steps {
                tokio::time::sleep(gap).await;
            }
        }
    }
    let outcome = consume::supervise(
        (handler.handler)(job),
        message,
        &shared.settler.policy,
        shared.handler_timeout,
    )
    .await
    .into_outcome(shared.handler_timeout, Outcome::of);
    let on_dead = on_dead
        .lock()
        .map(|mut slot| std::mem::take(&mut *slot))
        .unwrap_or_default();
    (outcome, on_dead)
}
