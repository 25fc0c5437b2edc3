//! Settle: the one place in the workspace that acks, NAKs, TERMs or sends progress acks (a test,
//! `tests/settle_is_the_only_acker.rs`, fails if any other file does). It is not generic over the event type: a
//! handler's outcome, whatever layer produced it, becomes exactly one of a confirmed ack, a delayed NAK, or a
//! dead-letter record followed by TERM (a NAK instead if the record could not be written).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use time::OffsetDateTime;
use tracing::Instrument as _;

use crate::config::AckMode;
use crate::dlq::{DeadLetter, DeathKind, FailedAttempt, Failures, strip_control_headers};
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::{JobError, error::Disposition, telemetry};

/// What became of one delivery, as the settle layer sees it. The typed layer derives it from the handler's
/// `Result<(), JobError>`; a raw handler returns it directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: ack (confirmed unless `JOB_ACK=plain`).
    Success,
    /// Another attempt may succeed: NAK delayed by `after`, or by the consumer's backoff step when `None`.
    Retry {
        /// The handler's own delay (a `Retry-After`), if any.
        after: Option<Duration>,
        /// The error, free of personal data.
        reason: String,
    },
    /// A dependency is down: retried on the backoff step like [`Outcome::Retry`] (the typed layer's circuit
    /// breaker has counted it already).
    Unavailable {
        /// The error, free of personal data.
        reason: String,
    },
    /// No attempt can succeed: dead-letter now.
    Permanent {
        /// The error, free of personal data.
        reason: String,
    },
    /// The message is not a valid event: dead-letter at its first delivery, never retried.
    Invalid {
        /// Every failing field, never a value.
        reason: String,
    },
    /// The last delivery failed too: dead-letter. Settle turns a retry on the last attempt into this itself.
    LastAttemptFailed {
        /// The last error.
        reason: String,
    },
    /// Every delivery ended without an answer (a crash, a hang): dead-letter.
    NeverAnswered {
        /// What is known of the deliveries.
        reason: String,
    },
}

impl Outcome {
    /// How the runtime maps a handler's result; the testing seam uses the same mapping.
    pub(crate) fn of(result: Result<(), JobError>) -> Self {
        match result {
            Ok(()) => Self::Success,
            Err(err) => match err.disposition() {
                Disposition::Transient => Self::Retry {
                    after: None,
                    reason: err.to_string(),
                },
                Disposition::RetryAfter(delay) => Self::Retry {
                    after: Some(delay),
                    reason: err.to_string(),
                },
                Disposition::Unavailable => Self::Unavailable {
                    reason: err.to_string(),
                },
                Disposition::Permanent => Self::Permanent {
                    reason: err.to_string(),
                },
            },
        }
    }

    /// On the last attempt a retry is no longer possible: it becomes [`Outcome::LastAttemptFailed`].
    pub(crate) fn at_attempt(self, attempt: u32, last: bool) -> Self {
        match self {
            Self::Retry { reason, .. } | Self::Unavailable { reason } if last => {
                Self::LastAttemptFailed {
                    reason: format!("all {attempt} attempts failed; last error: {reason}"),
                }
            }
            other => other,
        }
    }

    /// The dead-letter kind of a terminal outcome; `None` for an ack or a retry.
    pub fn death(&self) -> Option<DeathKind> {
        match self {
            Self::Success | Self::Retry { .. } | Self::Unavailable { .. } => None,
            Self::Permanent { .. } => Some(DeathKind::Permanent),
            Self::Invalid { .. } => Some(DeathKind::Invalid),
            Self::LastAttemptFailed { .. } => Some(DeathKind::Exhausted),
            Self::NeverAnswered { .. } => Some(DeathKind::NoAnswer),
        }
    }
}

/// Where a dead message goes.
#[derive(Debug, Clone)]
pub(crate) enum DeadLetters {
    /// A record on `<prefix>.<stream>.<consumer>.<sequence>` in the DLQ stream, then TERM.
    Record {
        /// `JOB_DLQ_PREFIX`.
        prefix: String,
    },
    /// TERM with the reason only: for consumers whose messages are not events anyone could replay (the router's
    /// advisories).
    TermOnly,
}

/// Everything settling one consumer's messages needs; shared by its message tasks.
#[derive(Debug)]
pub(crate) struct Settler {
    pub(crate) function: String,
    /// Acks go through it: those of concurrent attempts leave in one write (`crate::outbox`).
    pub(crate) outbox: crate::outbox::Outbox,
    pub(crate) js: jetstream::Context,
    pub(crate) policy: Policy,
    pub(crate) ack: AckMode,
    /// The failure journal; `None` for consumers that keep none.
    pub(crate) failures: Option<Failures>,
    pub(crate) dead_letters: DeadLetters,
    pub(crate) metrics: Arc<Metrics>,
    #[cfg(feature = "fault-injection")]
    pub(crate) delay_before_ack: Duration,
}

impl Settler {
    /// Turns the outcome of delivery `attempt` into exactly one ack, delayed NAK, or dead letter + TERM.
    pub(crate) async fn settle(
        &self,
        message: &jetstream::Message,
        attempt: u32,
        sequence: u64,
        outcome: Outcome,
        started: std::time::Instant,
    ) {
        let seconds = started.elapsed().as_secs_f64();
        let outcome = outcome.at_attempt(attempt, self.policy.is_last(attempt));
        let (kind, reason) = match outcome {
            Outcome::Success => return self.ack(message, attempt, sequence, seconds).await,
            Outcome::Retry { after, reason } => {
                return self
                    .retry(message, attempt, sequence, after, &reason, seconds)
                    .await;
            }
            Outcome::Unavailable { reason } => {
                return self
                    .retry(message, attempt, sequence, None, &reason, seconds)
                    .await;
            }
            Outcome::Permanent { reason } => (DeathKind::Permanent, reason),
            Outcome::Invalid { reason } => (DeathKind::Invalid, reason),
            Outcome::LastAttemptFailed { reason } => (DeathKind::Exhausted, reason),
            Outcome::NeverAnswered { reason } => (DeathKind::NoAnswer, reason),
        };
        self.dead(message, attempt, sequence, kind, reason, seconds)
            .await;
    }

    async fn ack(&self, message: &jetstream::Message, attempt: u32, sequence: u64, seconds: f64) {
        #[cfg(feature = "fault-injection")]
        if !self.delay_before_ack.is_zero() {
            // The crash tests kill the process on this line: the effect and its ledger record are behind it.
            tracing::info!(
                delay_ms = self.delay_before_ack.as_millis(),
                "holding the ack ({})",
                crate::fault::DELAY_BEFORE_ACK
            );
            tokio::time::sleep(self.delay_before_ack).await;
        }
        if telemetry::exporting() {
            tracing::Span::current().record("jetfn.outcome", "ack");
        }
        match self.ack {
            AckMode::Confirmed => self.double_ack(message).await,
            AckMode::Plain => {
                // What `message.ack()` sends, through the outbox.
                let sent = match message.reply.clone() {
                    Some(reply) => self
                        .outbox
                        .publish(reply, bytes::Bytes::from_static(b"+ACK"))
                        .await
                        .map_err(|err| err.to_string()),
                    None => Err("the message has no reply subject".to_owned()),
                };
                if let Err(err) = sent {
                    tracing::warn!(error = %err, "ack not sent; the event will be redelivered and the ledger will absorb it");
                }
            }
        }
        self.metrics.processed(seconds);
        if attempt > 1
            && let Some(failures) = &self.failures
        {
            failures
                .clear(&self.policy.stream, &self.policy.consumer, sequence)
                .await;
        }
        tracing::debug!(attempt, "processed");
    }

    async fn dead(
        &self,
        message: &jetstream::Message,
        attempt: u32,
        sequence: u64,
        kind: DeathKind,
        reason: String,
        seconds: f64,
    ) {
        let span = tracing::Span::current();
        span.record("error.type", kind.as_str());
        span.record("otel.status_code", "ERROR");
        match &self.dead_letters {
            DeadLetters::Record { prefix } => {
                span.record("jetfn.outcome", "dead-letter");
                self.metrics.dead_lettered(seconds, kind.as_str());
                Box::pin(self.dead_letter(message, attempt, sequence, kind, reason, prefix)).await;
            }
            DeadLetters::TermOnly => {
                span.record("jetfn.outcome", "term");
                self.metrics.dropped(kind.as_str());
                tracing::error!(kind = kind.as_str(), attempt, reason = %reason, "terminated");
                self.term(message, kind.as_str()).await;
            }
        }
    }

    async fn retry(
        &self,
        message: &jetstream::Message,
        attempt: u32,
        sequence: u64,
        after: Option<Duration>,
        reason: &str,
        seconds: f64,
    ) {
        let policy = &self.policy;
        let gap = after.unwrap_or_else(|| policy.delay_after(attempt));
        let delay = policy.nak_delay(attempt, gap);
        let span = tracing::Span::current();
        span.record("jetfn.outcome", "retry");
        self.metrics.retried(seconds);
        span.record("error.type", "transient");
        span.record("otel.status_code", "ERROR");
        if let Some(failures) = &self.failures {
            failures
                .record(
                    &policy.stream,
                    &policy.consumer,
                    sequence,
                    u64::from(attempt),
                    reason,
                )
                .await;
        }
        tracing::warn!(attempt, retry_in_ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX), error = %reason, "attempt failed; will retry");
        if let Err(nak) = message.ack_with(AckKind::Nak(Some(delay))).await {
            // Without the NAK the server redelivers after the backoff step anyway.
            tracing::warn!(error = %nak, "nak failed; the server will redeliver after ack_wait");
        }
    }

    /// Gives a message back unprocessed because this replica's circuit is open: a NAK with the shortest delay the
    /// consumer allows, so a replica whose route works takes it at once. It is not a failed attempt: nothing goes
    /// to the failure journal or the retry metric, and it is never dead-lettered. The server still counts the
    /// delivery, so callers never release a message on its last delivery (that NAK would make the server
    /// dead-letter it); an open replica fetching nothing keeps a release to about one delivery per outage.
    pub(crate) async fn release(&self, message: &jetstream::Message, attempt: u32, why: &str) {
        let delay = self
            .policy
            .nak_delay(attempt, Duration::ZERO)
            .max(Duration::from_millis(1));
        tracing::Span::current().record("jetfn.outcome", "release");
        tracing::info!(attempt, reason = %why, "circuit open: giving the message back for another replica");
        if let Err(nak) = message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(error = %nak, "release not sent; the server will redeliver after the backoff step");
        }
    }

    async fn dead_letter(
        &self,
        message: &jetstream::Message,
        attempt: u32,
        sequence: u64,
        kind: DeathKind,
        reason: String,
        prefix: &str,
    ) {
        // The journal read and the record's publish keep the message: a redelivery meanwhile would run the event
        // on another replica while this one dead-letters it (`consume::kept_alive`). The TERM, after, ends it.
        let record = self.write_dead_letter(message, attempt, sequence, kind, &reason, prefix);
        let published =
            crate::consume::kept_alive(record, message, self.policy.progress_period()).await;
        let policy = &self.policy;
        match published {
            Ok(ack) => {
                tracing::error!(kind = kind.as_str(), attempt, reason = %reason, dlq_sequence = ack.sequence, "dead-lettered");
                self.term(message, kind.as_str()).await;
                if let Some(failures) = &self.failures {
                    failures
                        .clear(&policy.stream, &policy.consumer, sequence)
                        .await;
                }
            }
            Err(err) => {
                // The record is not safe yet, so the original must stay: NAK it and try again later. On the last
                // delivery the router's MAX_DELIVERIES path picks it up.
                tracing::error!(error = %format!("{err:#}"), "dead-letter publish failed; the original is kept for another try");
                let _ = message
                    .ack_with(AckKind::Nak(Some(
                        policy.nak_delay(attempt, policy.delay_after(attempt)),
                    )))
                    .await;
            }
        }
    }

    /// Reads the event's failure journal and publishes its dead-letter record.
    async fn write_dead_letter(
        &self,
        message: &jetstream::Message,
        attempt: u32,
        sequence: u64,
        kind: DeathKind,
        reason: &str,
        prefix: &str,
    ) -> anyhow::Result<jetstream::publish::PublishAck> {
        crate::fault::before_dead_letter().await;
        let policy = &self.policy;
        let (first_failure, failed_attempts) = match &self.failures {
            Some(failures) => {
                let journal = failures
                    .record(
                        &policy.stream,
                        &policy.consumer,
                        sequence,
                        u64::from(attempt),
                        reason,
                    )
                    .await;
                (journal.first(), journal.attempts)
            }
            None => (
                OffsetDateTime::now_utc(),
                vec![FailedAttempt {
                    at_ms: crate::ledger::now_ms(),
                    delivery: u64::from(attempt),
                    reason: reason.to_owned(),
                }],
            ),
        };
        let letter = DeadLetter {
            subject: message.subject.to_string(),
            stream: policy.stream.clone(),
            sequence,
            consumer: policy.consumer.clone(),
            attempts: u64::from(attempt),
            reason: reason.to_owned(),
            kind,
            first_failure,
            last_failure: OffsetDateTime::now_utc(),
            headers: strip_control_headers(message.headers.as_ref()),
            payload: message.payload.clone(),
            writer: "runtime".to_owned(),
            failed_attempts,
            payload_lost: None,
        };
        let dlq_subject = letter.dlq_subject(prefix);
        // The span is named after the subject's template, one per consumer: a name with the sequence in it would
        // make every dead letter its own operation in the trace backend.
        let template = format!("{prefix}.{}.{}.*", policy.stream, policy.consumer);
        let (server, port) = telemetry::server_address();
        let publish_span = tracing::info_span!(
            "send",
            "otel.name" = %format_args!("send {template}"),
            "otel.kind" = "producer",
            "messaging.system" = "nats",
            "messaging.operation.type" = "send",
            "messaging.operation.name" = "send",
            "messaging.destination.name" = %dlq_subject,
            "messaging.destination.template" = %template,
            "server.address" = server,
            "server.port" = port,
        );
        letter
            .publish(&self.js, prefix)
            .instrument(publish_span)
            .await
    }

    /// Acks as a request, so a lost ack is noticed and retried (JetStream's "exactly once" ack).
    async fn double_ack(&self, message: &jetstream::Message) {
        if !self
            .confirmed(message, bytes::Bytes::from_static(b"+ACK"), "ack")
            .await
        {
            tracing::error!(
                "ack never confirmed; the message will be redelivered and the ledger will absorb it"
            );
        }
    }

    /// async-nats' `AckKind::Term` sends a bare `+TERM`; the server (2.10.4+) records a reason when one follows.
    async fn term(&self, message: &jetstream::Message, reason: &str) {
        let body = bytes::Bytes::from(format!("+TERM {reason}"));
        if !self.confirmed(message, body, "term").await {
            tracing::error!(
                "term never confirmed; a redelivery will find the dead-letter record already written"
            );
        }
    }

    /// Sends an ack-protocol body to the message's reply subject as a request and waits for the server's reply,
    /// three tries. A request goes through the connection's one shared reply subscription; async-nats'
    /// `Message::double_ack` subscribes and unsubscribes a fresh inbox for every ack instead, which cost more
    /// client and server CPU per message than the whole rest of the runtime's settle path (see
    /// tests/bench/ANALYSIS.md).
    async fn confirmed(
        &self,
        message: &jetstream::Message,
        body: bytes::Bytes,
        what: &'static str,
    ) -> bool {
        let Some(reply) = message.reply.clone() else {
            return false;
        };
        for attempt in 1..=3u64 {
            match self
                .outbox
                .request(reply.clone(), body.clone(), Duration::from_secs(5))
                .await
            {
                Ok(_) => return true,
                Err(err) => {
                    tracing::warn!(error = %err, attempt, "{what} not confirmed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
            }
        }
        false
    }
}

/// An in-progress ack a handler asked for (`job.progress`), sent on the message's ack subject.
pub(crate) async fn progress_to(client: &async_nats::Client, reply: async_nats::Subject) {
    if let Err(err) = client
        .publish(reply, bytes::Bytes::from_static(b"+WPI"))
        .await
    {
        tracing::warn!(error = %err, "in-progress ack failed");
    }
}

/// An in-progress ack: the message's redelivery deadline starts again while its handler runs or waits.
pub(crate) async fn progress(message: &jetstream::Message) {
    if let Err(err) = message.ack_with(AckKind::Progress).await {
        tracing::warn!(error = %err, "in-progress ack failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retry_on_the_last_attempt_is_dead_lettered_as_exhausted() {
        let retry = Outcome::of(Err(JobError::transient(anyhow::anyhow!("451 try later"))));
        assert_eq!(
            retry.clone().at_attempt(2, false),
            Outcome::Retry {
                after: None,
                reason: "451 try later".into()
            }
        );
        let last = retry.at_attempt(5, true);
        assert_eq!(last.death(), Some(DeathKind::Exhausted));
        assert_eq!(
            last,
            Outcome::LastAttemptFailed {
                reason: "all 5 attempts failed; last error: 451 try later".into()
            }
        );
    }

    #[test]
    fn each_disposition_has_its_outcome() {
        let delay = Duration::from_secs(7);
        assert_eq!(
            Outcome::of(Err(JobError::retry_after(anyhow::anyhow!("busy"), delay))),
            Outcome::Retry {
                after: Some(delay),
                reason: "busy".into()
            }
        );
        assert_eq!(
            Outcome::of(Err(JobError::permanent(anyhow::anyhow!("550")))).death(),
            Some(DeathKind::Permanent)
        );
        assert!(matches!(
            Outcome::of(Err(JobError::unavailable(anyhow::anyhow!("refused")))),
            Outcome::Unavailable { .. }
        ));
        assert_eq!(Outcome::of(Ok(())), Outcome::Success);
        // A permanent error stays permanent on the last attempt: its kind is not "exhausted".
        assert_eq!(
            Outcome::of(Err(JobError::permanent(anyhow::anyhow!("550"))))
                .at_attempt(5, true)
                .death(),
            Some(DeathKind::Permanent)
        );
    }
}
