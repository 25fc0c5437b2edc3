//! The consume loop: bind the durable consumer, run the handler on each message under the consumer's
//! concurrency cap, and turn its outcome into exactly one of ack, delayed NAK, or dead-letter + TERM.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use events::{CloudEvent, Event, Validator};
use futures::{FutureExt as _, StreamExt as _};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::breaker::{Breaker, Probe};
use crate::config::{AckMode, JobConfig, NatsConfig};
use crate::dlq::{DeadLetter, DeathKind, Failures, strip_control_headers};
use crate::health::Health;
use crate::ledger::{Effect, Ledger};
use crate::metrics::Metrics;

use crate::{JobError, telemetry};

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
    ledger: Ledger,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
}

impl<T> Job<T> {
    /// Acks the event without its effect, on purpose (an expired code, a cancelled order): logged with the
    /// reason and counted as dropped. Return its result from the handler.
    #[allow(clippy::unnecessary_wraps)]
    pub fn skip(&self, reason: &'static str) -> Result<(), JobError> {
        tracing::warn!(reason, "event dropped without its effect");
        tracing::Span::current().record("jetfn.outcome", "dropped");
        self.metrics.dropped(reason);
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

    /// The idempotency key of an effect, for a downstream system that deduplicates (an email's `Message-ID`).
    pub fn effect_key(&self, name: &str) -> String {
        self.ledger.key(&self.event.id, name)
    }

    /// Whether a failure now goes to the dead-letter stream instead of being retried.
    pub fn is_last_attempt(&self) -> bool {
        self.max_deliver.is_some_and(|max| self.attempt >= max)
    }

    /// Whether the process is draining; long handlers may stop early and return a transient error.
    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }
}

/// A connected function runtime, ready to serve one consumer.
pub struct Runtime {
    name: String,
    client: async_nats::Client,
    js: jetstream::Context,
    job: JobConfig,
    validator: Arc<Validator>,
    health: Health,
    probe: Option<Probe>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("name", &self.name)
            .field("job", &self.job)
            .finish_non_exhaustive()
    }
}

/// What the consumer on the server says; read at bind time so `infra/` is the one place retries are set.
#[derive(Debug, Clone)]
struct Policy {
    stream: String,
    consumer: String,
    backoff: Vec<Duration>,
    max_deliver: Option<u32>,
    ack_wait: Duration,
    max_ack_pending: usize,
}

impl Policy {
    /// The delay before attempt `attempt + 1`: the consumer's backoff list, the last value reused.
    fn delay_after(&self, attempt: u32) -> Duration {
        if self.backoff.is_empty() {
            let exp = attempt.saturating_sub(1).min(8);
            return (Duration::from_secs(1) * (1 << exp)).min(Duration::from_secs(300));
        }
        let index = usize::try_from(attempt.saturating_sub(1))
            .unwrap_or(usize::MAX)
            .min(self.backoff.len() - 1);
        self.backoff[index]
    }

    /// Progress acks must land before the server's redelivery deadline; with a backoff list that deadline is
    /// the current backoff step, so tick at a third of the shortest.
    fn progress_period(&self) -> Duration {
        let shortest = self
            .backoff
            .iter()
            .copied()
            .chain([self.ack_wait])
            .min()
            .unwrap_or(self.ack_wait);
        (shortest / 3).max(Duration::from_millis(100))
    }

    fn is_last(&self, attempt: u32) -> bool {
        self.max_deliver.is_some_and(|max| attempt >= max)
    }
}

struct Shared<H, T> {
    name: String,
    client: async_nats::Client,
    js: jetstream::Context,
    job: JobConfig,
    policy: Policy,
    validator: Arc<Validator>,
    ledger: Ledger,
    failures: Failures,
    handler: H,
    shutdown: CancellationToken,
    breaker: Arc<Breaker>,
    metrics: Arc<Metrics>,
    _event: PhantomData<fn() -> T>,
}

impl Runtime {
    /// Connects with `NATS_*` and reads `JOB_*`; `name` is the function's name and, by default, its consumer's.
    ///
    /// # Errors
    /// A configuration variable that does not parse, or a connection option that cannot be used.
    pub async fn from_env(name: &str) -> anyhow::Result<Self> {
        let nats = NatsConfig::from_env().context("reading NATS_* configuration")?;
        let job = JobConfig::from_env().context("reading JOB_* configuration")?;
        Self::new(name, &nats, job).await
    }

    /// Connects with explicit configuration.
    ///
    /// # Errors
    /// As [`Runtime::from_env`].
    pub async fn new(name: &str, nats: &NatsConfig, job: JobConfig) -> anyhow::Result<Self> {
        tracing::info!(function = name, ?job, nats_url = %nats.url, "starting");
        let client = crate::connect(nats, name).await?;
        let js = jetstream::new(client.clone());
        let health = Health::default();
        health.watch_client(client.clone());
        Ok(Self {
            name: name.to_owned(),
            client,
            js,
            job,
            validator: Arc::new(Validator::new()),
            health,
            probe: None,
        })
    }

    /// Gives the circuit breaker a way to tell that a downed dependency answers again (an SMTP `NOOP`, an HTTP
    /// health check). Without one, the breaker lets a trial message through after the probe interval.
    #[must_use]
    pub fn with_probe<F, Fut>(mut self, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), anyhow::Error>> + Send + 'static,
    {
        self.probe = Some(Arc::new(move || Box::pin(probe())));
        self
    }

    /// The NATS connection, for handlers that publish.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Serves the consumer until `shutdown` resolves, then drains: stops pulling, lets in-flight handlers finish
    /// within `JOB_DRAIN_TIMEOUT_SECS` and acks them. What is unfinished at the deadline is redelivered later.
    ///
    /// # Errors
    /// Only start-up failures (the health address cannot be bound); once messages flow, errors are handled per
    /// message and never end the loop.
    pub async fn serve<T, H, Fut>(
        self,
        handler: H,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()>
    where
        T: Event,
        H: Fn(Job<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        if let Some(addr) = &self.job.health_addr {
            self.health.clone().serve(addr, stop.clone()).await?;
        }
        let stopper = stop.clone();
        let mut shutdown = std::pin::pin!(shutdown);
        let bound = tokio::select! {
            () = &mut shutdown => None,
            bound = self.bind() => Some(bound),
        };
        let Some((consumer, policy, ledger, failures)) = bound else {
            tracing::info!("stopped before the consumer was bound");
            return Ok(());
        };
        self.health.set_bound(true);
        tracing::info!(
            stream = %policy.stream, consumer = %policy.consumer, max_deliver = ?policy.max_deliver,
            backoff = ?policy.backoff, max_ack_pending = policy.max_ack_pending, "consumer bound; serving"
        );

        let shared = Arc::new(Shared {
            name: self.name.clone(),
            client: self.client.clone(),
            js: self.js.clone(),
            job: self.job.clone(),
            policy: policy.clone(),
            validator: self.validator.clone(),
            ledger,
            failures,
            handler,
            shutdown: stopper.clone(),
            breaker: Breaker::new(
                self.job.breaker_threshold,
                self.probe.clone(),
                Duration::from_secs(self.job.breaker_probe_secs.max(1)),
                Duration::from_secs(self.job.breaker_probe_max_secs.max(1)),
            ),
            metrics: Arc::new(Metrics::new(&self.name, T::TYPE)),
            _event: PhantomData,
        });
        let tracker = TaskTracker::new();
        let permits = Arc::new(Semaphore::new(policy.max_ack_pending));
        let batch = policy.max_ack_pending.clamp(1, 256);

        'pull: loop {
            let mut messages = match consumer
                .stream()
                .max_messages_per_batch(batch)
                .heartbeat(Duration::from_secs(5))
                .expires(Duration::from_secs(30))
                .messages()
                .await
            {
                Ok(messages) => messages,
                Err(err) => {
                    tracing::warn!(error = %err, "starting the pull failed; retrying");
                    tokio::select! {
                        () = &mut shutdown => break 'pull,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue 'pull,
                    }
                }
            };
            loop {
                let permit = tokio::select! {
                    () = &mut shutdown => break 'pull,
                    permit = permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                };
                let next = tokio::select! {
                    () = &mut shutdown => break 'pull,
                    next = messages.next() => next,
                };
                match next {
                    Some(Ok(message)) => {
                        let shared = shared.clone();
                        tracker.spawn(async move {
                            process(&shared, message).await;
                            drop(permit);
                        });
                    }
                    Some(Err(err)) => {
                        tracing::warn!(error = %err, "pull error; continuing");
                        if matches!(
                            err.kind(),
                            jetstream::consumer::pull::MessagesErrorKind::ConsumerDeleted
                        ) {
                            self.health.set_bound(false);
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue 'pull;
                        }
                    }
                    None => continue 'pull,
                }
            }
        }

        // Draining: nothing new is pulled; messages buffered but not started are redelivered after ack_wait.
        self.health.set_bound(false);
        stopper.cancel();
        tracker.close();
        let in_flight = tracker.len();
        tracing::info!(
            in_flight,
            timeout_secs = self.job.drain_timeout_secs,
            "draining in-flight handlers"
        );
        if tokio::time::timeout(self.job.drain_timeout(), tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                still_running = tracker.len(),
                "drain timeout reached; unfinished messages will be redelivered"
            );
        }
        if let Err(err) = self.client.flush().await {
            tracing::warn!(error = %err, "flushing the NATS connection failed");
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Waits until the consumer and the ledger buckets exist, then reads the consumer's retry policy.
    async fn bind(&self) -> (PullConsumer, Policy, Ledger, Failures) {
        let consumer_name = self
            .job
            .consumer
            .clone()
            .unwrap_or_else(|| self.name.clone());
        let mut delay = Duration::from_millis(200);
        loop {
            match self.try_bind(&consumer_name).await {
                Ok(bound) => return bound,
                Err(err) => {
                    tracing::warn!(
                        error = %format!("{err:#}"), stream = %self.job.stream, consumer = %consumer_name,
                        "cannot bind yet (run `jetfn infra apply`?); retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn try_bind(
        &self,
        consumer_name: &str,
    ) -> anyhow::Result<(PullConsumer, Policy, Ledger, Failures)> {
        let consumer: PullConsumer = self
            .js
            .get_consumer_from_stream(consumer_name, &self.job.stream)
            .await
            .with_context(|| format!("consumer {consumer_name} on stream {}", self.job.stream))?;
        let config = &consumer.cached_info().config;
        let policy = Policy {
            stream: self.job.stream.clone(),
            consumer: consumer_name.to_owned(),
            backoff: config.backoff.clone(),
            max_deliver: u32::try_from(config.max_deliver)
                .ok()
                .filter(|max| *max > 0),
            ack_wait: config.ack_wait,
            max_ack_pending: usize::try_from(config.max_ack_pending)
                .ok()
                .filter(|max| *max > 0)
                .unwrap_or(1000),
        };
        let ledger_store = self
            .js
            .get_key_value(&self.job.ledger_bucket)
            .await
            .with_context(|| format!("KV bucket {}", self.job.ledger_bucket))?;
        let failures_store = self
            .js
            .get_key_value(&self.job.failures_bucket)
            .await
            .with_context(|| format!("KV bucket {}", self.job.failures_bucket))?;
        let ledger = Ledger::new(
            ledger_store,
            &self.name,
            Duration::from_secs(self.job.ledger_lease_secs),
        );
        Ok((consumer, policy, ledger, Failures::new(failures_store)))
    }
}

/// Waits for the breaker to close, keeping the message with in-progress acks. False when shutdown came first.
async fn hold_while_open<H, T>(shared: &Arc<Shared<H, T>>, message: &jetstream::Message) -> bool {
    let mut progress = tokio::time::interval(shared.policy.progress_period());
    loop {
        tokio::select! {
            () = shared.breaker.closed() => return true,
            () = shared.shutdown.cancelled() => return false,
            _ = progress.tick() => {
                if let Err(err) = message.ack_with(AckKind::Progress).await {
                    tracing::warn!(error = %err, "in-progress ack failed while holding");
                }
            }
        }
    }
}

fn message_id_of(message: &jetstream::Message) -> &str {
    message
        .headers
        .as_ref()
        .and_then(|headers| headers.get(async_nats::header::NATS_MESSAGE_ID))
        .map_or("", async_nats::HeaderValue::as_str)
}

/// A message a recurring NATS message schedule generated: the server sets `Nats-Scheduler` (the schedule's
/// subject) and `Nats-Schedule-Next` (the next firing, or `purge` after a one-off `@at`).
fn is_recurring_firing(message: &jetstream::Message) -> bool {
    let Some(headers) = message.headers.as_ref() else {
        return false;
    };
    headers.get("Nats-Scheduler").is_some()
        && headers
            .get("Nats-Schedule-Next")
            .is_some_and(|next| next.as_str() != "purge")
}

enum Outcome {
    Ack,
    Retry(JobError),
    Dead(DeathKind, String),
}

async fn process<T, H, Fut>(shared: &Arc<Shared<H, T>>, message: jetstream::Message)
where
    T: Event,
    H: Fn(Job<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    let (attempt, sequence) = match message.info() {
        Ok(info) => (
            u32::try_from(info.delivered).unwrap_or(u32::MAX),
            info.stream_sequence,
        ),
        Err(err) => {
            tracing::error!(error = %err, "message without JetStream metadata; ignoring it");
            return;
        }
    };
    let policy = &shared.policy;
    let subject = message.subject.as_str();
    let message_id = message_id_of(&message);
    // The full set of OpenTelemetry attributes only when spans are exported. The log layer formats every span
    // field into text when it is created or recorded, so the logged span carries only what a log line needs, all
    // set at creation: recording fields afterwards was a measurable share of the runtime's CPU per event.
    let span = if telemetry::exporting() {
        let span = tracing::info_span!(
            "process",
            "otel.name" = %format_args!("process {subject}"),
            "otel.kind" = "consumer",
            "otel.status_code" = tracing::field::Empty,
            "messaging.system" = "nats",
            "messaging.operation.type" = "process",
            "messaging.destination.name" = subject,
            "messaging.consumer.group.name" = %policy.consumer,
            "messaging.message.id" = tracing::field::Empty,
            "messaging.message.body.size" = message.payload.len(),
            "messaging.nats.stream" = %policy.stream,
            "messaging.nats.sequence" = sequence,
            "jetfn.function" = %shared.name,
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
        tracing::info_span!(
            "process",
            subject,
            seq = sequence,
            attempt,
            "messaging.message.id" = message_id,
            "jetfn.outcome" = tracing::field::Empty,
            "error.type" = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
        )
    };
    async move {
        let started = std::time::Instant::now();
        let outcome = loop {
            if shared.breaker.is_open() && !Box::pin(hold_while_open(shared, &message)).await {
                break Outcome::Retry(JobError::transient(anyhow::anyhow!("shutting down while the circuit was open")));
            }
            // Boxed, like `settle` below: a task's size is its largest state, and the handler's future and the
            // settle paths' publish futures inline would make every message's task several KiB to copy.
            let outcome = Box::pin(run_attempt(shared, &message, attempt, sequence)).await;
            match &outcome {
                // Once the breaker is open, keep this delivery and retry it when the dependency is back: its
                // delivery count does not grow during the outage.
                Outcome::Retry(err)
                    if err.is_unavailable()
                        && shared.breaker.record_unavailable(&shared.name)
                        && !shared.shutdown.is_cancelled() =>
                {
                    tracing::warn!(error = %err, "dependency unavailable; holding the message until the circuit closes");
                    continue;
                }
                Outcome::Ack | Outcome::Dead(DeathKind::Permanent, _) => shared.breaker.record_success(),
                _ => {}
            }
            break outcome;
        };
        Box::pin(settle(shared, &message, attempt, sequence, outcome, started)).await;
    }
    .instrument(span)
    .await;
}

async fn run_attempt<T, H, Fut>(
    shared: &Arc<Shared<H, T>>,
    message: &jetstream::Message,
    attempt: u32,
    sequence: u64,
) -> Outcome
where
    T: Event,
    H: Fn(Job<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    let mut event = match shared.validator.decode::<T>(&message.payload) {
        Ok(event) => event,
        Err(invalid) => {
            return Outcome::Dead(DeathKind::Invalid, format!("invalid event: {invalid}"));
        }
    };
    if is_recurring_firing(message) {
        // Every firing of a recurring schedule carries the same stored event; each is its own occurrence, so its
        // id (and with it every ledger key) gets the firing's stream sequence, stable across redeliveries.
        event.id = format!("{}:{sequence}", event.id);
    }
    if event.id.as_str() != message_id_of(message) {
        tracing::Span::current().record("messaging.message.id", event.id.as_str());
    }
    let job = Job {
        event,
        attempt,
        max_deliver: shared.policy.max_deliver,
        stream_sequence: sequence,
        ledger: shared.ledger.clone(),
        shutdown: shared.shutdown.clone(),
        metrics: shared.metrics.clone(),
    };
    // A panic is caught here and the process keeps serving; polling in place avoids a task spawn per message.
    let mut handle =
        std::pin::pin!(std::panic::AssertUnwindSafe((shared.handler)(job)).catch_unwind());
    // A handler that finishes at its first poll (one with nothing to wait for, or one that skips) needs neither
    // the progress timer nor the deadline, whose registering and cancelling take the timer driver per event.
    let joined = if let std::task::Poll::Ready(joined) = futures::poll!(&mut handle) {
        joined
    } else {
        let period = shared.policy.progress_period();
        let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let deadline = tokio::time::sleep(Duration::from_secs(shared.job.handler_timeout_secs));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = &mut handle => break joined,
                _ = progress.tick() => {
                    if let Err(err) = message.ack_with(AckKind::Progress).await {
                        tracing::warn!(error = %err, "in-progress ack failed");
                    }
                }
                () = &mut deadline => {
                    return Outcome::Retry(JobError::transient(anyhow::anyhow!(
                        "handler still running after {} s (JOB_HANDLER_TIMEOUT_SECS)", shared.job.handler_timeout_secs
                    )));
                }
            }
        }
    };
    match joined {
        Ok(Ok(())) => Outcome::Ack,
        Ok(Err(err)) if err.is_permanent() => Outcome::Dead(DeathKind::Permanent, err.to_string()),
        Ok(Err(err)) => Outcome::Retry(err),
        Err(_panic) => Outcome::Retry(JobError::transient(anyhow::anyhow!("handler panicked"))),
    }
}

async fn settle<T, H>(
    shared: &Arc<Shared<H, T>>,
    message: &jetstream::Message,
    attempt: u32,
    sequence: u64,
    outcome: Outcome,
    started: std::time::Instant,
) {
    let seconds = started.elapsed().as_secs_f64();
    let span = tracing::Span::current();
    let policy = &shared.policy;
    let outcome = match outcome {
        Outcome::Retry(err) if policy.is_last(attempt) => Outcome::Dead(
            DeathKind::Exhausted,
            format!("all {attempt} attempts failed; last error: {err}"),
        ),
        other => other,
    };
    match outcome {
        Outcome::Ack => {
            if shared.job.test_delay_before_ack_ms > 0 {
                tokio::time::sleep(Duration::from_millis(shared.job.test_delay_before_ack_ms))
                    .await;
            }
            if telemetry::exporting() {
                span.record("jetfn.outcome", "ack");
            }
            match shared.job.ack {
                AckMode::Confirmed => double_ack(shared, message).await,
                AckMode::Plain => {
                    if let Err(err) = message.ack().await {
                        tracing::warn!(error = %err, "ack not sent; the event will be redelivered and the ledger will absorb it");
                    }
                }
            }
            shared.metrics.processed(seconds);
            if attempt > 1 {
                shared
                    .failures
                    .clear(&policy.stream, &policy.consumer, sequence)
                    .await;
            }
            tracing::debug!(attempt, "processed");
        }
        Outcome::Retry(err) => {
            let delay = err
                .requested_delay()
                .unwrap_or_else(|| policy.delay_after(attempt));
            span.record("jetfn.outcome", "retry");
            shared.metrics.retried(seconds);
            span.record("error.type", "transient");
            span.record("otel.status_code", "ERROR");
            shared
                .failures
                .record(&policy.stream, &policy.consumer, sequence, &err.to_string())
                .await;
            tracing::warn!(attempt, retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), error = %err, "attempt failed; will retry");
            if let Err(nak) = message.ack_with(AckKind::Nak(Some(delay))).await {
                // Without the NAK the server redelivers after the backoff step anyway.
                tracing::warn!(error = %nak, "nak failed; the server will redeliver after ack_wait");
            }
        }
        Outcome::Dead(kind, reason) => {
            span.record("jetfn.outcome", "dead-letter");
            shared.metrics.dead_lettered(seconds, kind.as_str());
            span.record("error.type", kind.as_str());
            span.record("otel.status_code", "ERROR");
            Box::pin(dead_letter(
                shared, message, attempt, sequence, kind, reason,
            ))
            .await;
        }
    }
}

async fn dead_letter<T, H>(
    shared: &Arc<Shared<H, T>>,
    message: &jetstream::Message,
    attempt: u32,
    sequence: u64,
    kind: DeathKind,
    reason: String,
) {
    let policy = &shared.policy;
    let record = shared
        .failures
        .record(&policy.stream, &policy.consumer, sequence, &reason)
        .await;
    let letter = DeadLetter {
        subject: message.subject.to_string(),
        stream: policy.stream.clone(),
        sequence,
        consumer: policy.consumer.clone(),
        attempts: u64::from(attempt),
        reason: reason.clone(),
        kind,
        first_failure: record.first(),
        last_failure: OffsetDateTime::now_utc(),
        headers: strip_control_headers(message.headers.as_ref()),
        payload: message.payload.clone(),
        writer: "runtime".to_owned(),
    };
    let dlq_subject = letter.dlq_subject(&shared.job.dlq_prefix);
    let publish_span = tracing::info_span!(
        "send",
        "otel.name" = %format!("send {dlq_subject}"),
        "otel.kind" = "producer",
        "messaging.system" = "nats",
        "messaging.operation.type" = "send",
        "messaging.destination.name" = %dlq_subject,
    );
    let published = letter
        .publish(&shared.js, &shared.job.dlq_prefix)
        .instrument(publish_span)
        .await;
    match published {
        Ok(ack) => {
            tracing::error!(kind = kind.as_str(), attempt, reason = %reason, dlq_sequence = ack.sequence, "dead-lettered");
            term(shared, message, kind.as_str()).await;
            shared
                .failures
                .clear(&policy.stream, &policy.consumer, sequence)
                .await;
        }
        Err(err) => {
            // The record is not safe yet, so the original must stay: NAK it and try again later. On the last
            // delivery the router's MAX_DELIVERIES path picks it up.
            tracing::error!(error = %format!("{err:#}"), "dead-letter publish failed; the original is kept for another try");
            let _ = message
                .ack_with(AckKind::Nak(Some(policy.delay_after(attempt))))
                .await;
        }
    }
}

/// Acks as a request, so a lost ack is noticed and retried (JetStream's "exactly once" ack).
async fn double_ack<T, H>(shared: &Arc<Shared<H, T>>, message: &jetstream::Message) {
    if !confirmed(shared, message, bytes::Bytes::from_static(b"+ACK"), "ack").await {
        tracing::error!(
            "ack never confirmed; the message will be redelivered and the ledger will absorb it"
        );
    }
}

/// async-nats' `AckKind::Term` sends a bare `+TERM`; the server (2.10.4+) records a reason when one follows.
async fn term<T, H>(shared: &Arc<Shared<H, T>>, message: &jetstream::Message, reason: &str) {
    let body = bytes::Bytes::from(format!("+TERM {reason}"));
    if !confirmed(shared, message, body, "term").await {
        tracing::error!(
            "term never confirmed; a redelivery will find the dead-letter record already written"
        );
    }
}

/// Sends an ack-protocol body to the message's reply subject as a request and waits for the server's reply,
/// three tries. A request goes through the connection's one shared reply subscription; async-nats'
/// `Message::double_ack` subscribes and unsubscribes a fresh inbox for every ack instead, which cost more client
/// and server CPU per message than the whole rest of the runtime's settle path (see tests/bench/ANALYSIS.md).
async fn confirmed<T, H>(
    shared: &Arc<Shared<H, T>>,
    message: &jetstream::Message,
    body: bytes::Bytes,
    what: &'static str,
) -> bool {
    let Some(reply) = message.reply.clone() else {
        return false;
    };
    for attempt in 1..=3u64 {
        let request = async_nats::Request::new()
            .payload(body.clone())
            .timeout(Some(Duration::from_secs(5)));
        match shared.client.send_request(reply.clone(), request).await {
            Ok(_) => return true,
            Err(err) => {
                tracing::warn!(error = %err, attempt, "{what} not confirmed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: &[u64], max_deliver: Option<u32>) -> Policy {
        Policy {
            stream: "EVENTS".into(),
            consumer: "welcome".into(),
            backoff: backoff
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            max_deliver,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 16,
        }
    }

    #[test]
    fn delays_follow_the_backoff_list_and_reuse_the_last() {
        let policy = policy(&[100, 200, 400], Some(5));
        assert_eq!(policy.delay_after(1), Duration::from_millis(100));
        assert_eq!(policy.delay_after(2), Duration::from_millis(200));
        assert_eq!(policy.delay_after(3), Duration::from_millis(400));
        assert_eq!(policy.delay_after(9), Duration::from_millis(400));
        assert!(policy.is_last(5) && !policy.is_last(4));
    }

    #[test]
    fn unlimited_deliveries_never_reach_the_last_attempt() {
        let policy = policy(&[], None);
        assert!(!policy.is_last(u32::MAX));
        assert_eq!(policy.delay_after(1), Duration::from_secs(1));
        assert_eq!(policy.delay_after(50), Duration::from_secs(256));
    }

    #[test]
    fn progress_ticks_before_the_shortest_deadline() {
        assert_eq!(
            policy(&[300, 600], None).progress_period(),
            Duration::from_millis(100)
        );
        assert_eq!(
            policy(&[30_000], None).progress_period(),
            Duration::from_secs(10)
        );
    }
}
