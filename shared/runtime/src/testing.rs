//! Handler tests without NATS (feature `testing`): a [`Job`] built in the test, on a [`MemoryLedger`], and the
//! decision the runtime would take on its result, by the runtime's own mapping.
//!
//! ```text
//! let ledger = runtime::testing::MemoryLedger::new();
//! let job = runtime::testing::job(event).attempt(2).max_deliver(5).ledger(&ledger).build();
//! assert_eq!(runtime::testing::run(job, handler).await, Settled::Acked);
//! ```
//!
//! A raw handler returns its [`Outcome`] itself, so its test builds a [`RawJob`] with [`raw_job`] and compares
//! the outcome.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use events::{CloudEvent, Event};
use tokio_util::sync::CancellationToken;

use crate::dlq::DeathKind;
use crate::ledger::Ledger;
pub use crate::ledger::MemoryLedger;
use crate::metrics::Metrics;
use crate::settle::Outcome;
use crate::{Job, JobError, RawJob};

/// What the runtime would do with a handler's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Acked: the handler succeeded (its effects ran now or had run before).
    Acked,
    /// Acked without its effect, on purpose ([`Job::skip`]), with the reason.
    Skipped(&'static str),
    /// NAKed for another attempt, after the handler's own delay or (`None`) the consumer's backoff step.
    Retry(Option<Duration>),
    /// NAKed because a dependency is down; counts towards the circuit breaker.
    Unavailable,
    /// Dead-lettered, then TERMed.
    Dead(DeathKind),
}

/// The decision on `result` alone. It cannot know the attempt: a transient error is a [`Settled::Retry`] even on
/// the last one, and a skip is [`Settled::Acked`]; [`run`] knows both.
pub fn disposition(result: &Result<(), JobError>) -> Settled {
    match result {
        Ok(()) => Settled::Acked,
        Err(err) => match err.disposition() {
            crate::Disposition::Transient => Settled::Retry(None),
            crate::Disposition::RetryAfter(delay) => Settled::Retry(Some(delay)),
            crate::Disposition::Unavailable => Settled::Unavailable,
            crate::Disposition::Permanent => Settled::Dead(DeathKind::Permanent),
        },
    }
}

/// Runs `handler` on `job` and says what the runtime would do: the last attempt's failure is dead-lettered as
/// exhausted, and a [`Job::skip`] shows as [`Settled::Skipped`]. A panic is not caught: it fails the test.
pub async fn run<T, H, Fut>(job: Job<T>, handler: H) -> Settled
where
    H: FnOnce(Job<T>) -> Fut,
    Fut: Future<Output = Result<(), JobError>>,
{
    let (attempt, last, event_id, ledger) = (
        job.attempt,
        job.is_last_attempt(),
        job.event.id.clone(),
        job.ledger.clone(),
    );
    let outcome = Outcome::of(handler(job).await).at_attempt(attempt, last);
    match outcome {
        Outcome::Success => ledger
            .memory_skip(&event_id)
            .map_or(Settled::Acked, Settled::Skipped),
        Outcome::Retry { after, .. } => Settled::Retry(after),
        Outcome::Unavailable { .. } => Settled::Unavailable,
        dead => Settled::Dead(dead.death().unwrap_or(DeathKind::Permanent)),
    }
}

/// Starts a test job on `event`: first attempt, unlimited deliveries, a fresh [`MemoryLedger`].
pub fn job<T: Event>(event: CloudEvent<T>) -> JobBuilder<T> {
    JobBuilder {
        event,
        attempt: 1,
        max_deliver: None,
        stream_sequence: 1,
        ledger: None,
        shutting_down: false,
    }
}

/// A [`Job`] under construction.
#[derive(Debug)]
#[must_use]
pub struct JobBuilder<T> {
    event: CloudEvent<T>,
    attempt: u32,
    max_deliver: Option<u32>,
    stream_sequence: u64,
    ledger: Option<MemoryLedger>,
    shutting_down: bool,
}

impl<T: Event> JobBuilder<T> {
    /// The delivery count (1 for the first delivery).
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The consumer's `max_deliver`.
    pub fn max_deliver(mut self, max_deliver: u32) -> Self {
        self.max_deliver = Some(max_deliver);
        self
    }

    /// The event's stream sequence.
    pub fn stream_sequence(mut self, sequence: u64) -> Self {
        self.stream_sequence = sequence;
        self
    }

    /// The ledger the job's effects go through; share one between jobs to test redeliveries.
    pub fn ledger(mut self, ledger: &MemoryLedger) -> Self {
        self.ledger = Some(ledger.clone());
        self
    }

    /// The process is draining.
    pub fn shutting_down(mut self) -> Self {
        self.shutting_down = true;
        self
    }

    /// The job.
    pub fn build(self) -> Job<T> {
        let shutdown = CancellationToken::new();
        if self.shutting_down {
            shutdown.cancel();
        }
        Job {
            event: self.event,
            attempt: self.attempt,
            max_deliver: self.max_deliver,
            stream_sequence: self.stream_sequence,
            ledger: Ledger::memory(self.ledger.unwrap_or_default()),
            shutdown,
            metrics: Arc::new(Metrics::new("test", events::subject_for(T::TYPE), "test")),
            extras: crate::job::Extras {
                function: "test".into(),
                ..crate::job::Extras::default()
            },
        }
    }
}

/// Starts a test [`RawJob`]: a message on `subject` with `headers` and `payload`, first attempt, stream sequence 1.
pub fn raw_job(
    subject: impl Into<String>,
    headers: Option<async_nats::HeaderMap>,
    payload: impl Into<bytes::Bytes>,
) -> RawJobBuilder {
    RawJobBuilder {
        subject: subject.into(),
        headers,
        payload: payload.into(),
        attempt: 1,
        stream_sequence: 1,
        shutting_down: false,
    }
}

/// A [`RawJob`] under construction.
#[derive(Debug)]
#[must_use]
pub struct RawJobBuilder {
    subject: String,
    headers: Option<async_nats::HeaderMap>,
    payload: bytes::Bytes,
    attempt: u32,
    stream_sequence: u64,
    shutting_down: bool,
}

impl RawJobBuilder {
    /// The delivery count (1 for the first delivery).
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The message's stream sequence.
    pub fn stream_sequence(mut self, sequence: u64) -> Self {
        self.stream_sequence = sequence;
        self
    }

    /// The process is draining.
    pub fn shutting_down(mut self) -> Self {
        self.shutting_down = true;
        self
    }

    /// The job.
    pub fn build(self) -> RawJob {
        let shutdown = CancellationToken::new();
        if self.shutting_down {
            shutdown.cancel();
        }
        RawJob {
            subject: self.subject.into(),
            headers: self.headers,
            payload: self.payload,
            attempt: self.attempt,
            stream_sequence: self.stream_sequence,
            shutdown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::UserRegistered;

    fn event() -> CloudEvent<UserRegistered> {
        CloudEvent::new("test", UserRegistered::example())
    }

    async fn send(
        job: Job<UserRegistered>,
        sent: &std::sync::atomic::AtomicU32,
    ) -> Result<(), JobError> {
        job.once("email", || async {
            sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), JobError>(())
        })
        .await?;
        Ok(())
    }

    #[tokio::test]
    async fn a_second_job_of_the_same_event_skips_the_effect() {
        let ledger = MemoryLedger::new();
        let sent = std::sync::atomic::AtomicU32::new(0);
        let event = event();
        let first = job(event.clone()).ledger(&ledger).build();
        assert_eq!(run(first, |job| send(job, &sent)).await, Settled::Acked);
        let again = job(event.clone()).attempt(2).ledger(&ledger).build();
        assert_eq!(run(again, |job| send(job, &sent)).await, Settled::Acked);
        assert_eq!(sent.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert!(ledger.is_done(&event.id, "email"));
        // Another event is another effect.
        let other = job(self::event()).ledger(&ledger).build();
        assert_eq!(run(other, |job| send(job, &sent)).await, Settled::Acked);
        assert_eq!(ledger.done(), 2);
    }

    #[tokio::test]
    async fn a_failed_effect_may_run_again_and_the_last_attempt_is_dead_lettered() {
        let ledger = MemoryLedger::new();
        let event = event();
        let failing = |job: Job<UserRegistered>| async move {
            job.once("email", || async {
                Err::<(), _>(JobError::transient(anyhow::anyhow!("451")))
            })
            .await?;
            Ok(())
        };
        let early = job(event.clone()).max_deliver(3).ledger(&ledger).build();
        assert_eq!(run(early, failing).await, Settled::Retry(None));
        assert!(!ledger.is_done(&event.id, "email"));
        let last = job(event).attempt(3).max_deliver(3).ledger(&ledger).build();
        assert_eq!(
            run(last, failing).await,
            Settled::Dead(DeathKind::Exhausted)
        );
    }

    #[tokio::test]
    async fn a_skip_is_seen() {
        let ledger = MemoryLedger::new();
        let event = event();
        let skipped = job(event.clone()).ledger(&ledger).build();
        assert_eq!(
            run(skipped, |job| async move { job.skip("expired") }).await,
            Settled::Skipped("expired")
        );
        assert_eq!(ledger.skipped(&event.id), Some("expired"));
        assert_eq!(
            disposition(&Err(JobError::unavailable(anyhow::anyhow!("refused")))),
            Settled::Unavailable
        );
    }

    #[test]
    fn a_raw_job_carries_what_it_was_built_with() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Trace", "t-1");
        let raw = raw_job("events.x", Some(headers), &b"{}"[..])
            .attempt(3)
            .stream_sequence(42)
            .shutting_down()
            .build();
        assert_eq!(raw.subject.as_str(), "events.x");
        assert_eq!(
            raw.headers
                .as_ref()
                .and_then(|h| h.get("Trace"))
                .map(|v| v.as_str()),
            Some("t-1")
        );
        assert_eq!(raw.payload.as_ref(), b"{}");
        assert_eq!((raw.attempt, raw.stream_sequence), (3, 42));
        assert!(raw.shutting_down());
        assert!(
            !raw_job("a", None, bytes::Bytes::new())
                .build()
                .shutting_down()
        );
    }
}
