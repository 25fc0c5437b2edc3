//! The retry vocabulary of a handler: `?` means transient, `JobError::permanent` means give up now.

use std::fmt;
use std::time::Duration;

/// What the runtime should do about a failed attempt. One value, so an impossible combination (permanent and
/// retried after a delay, say) cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Another attempt may succeed: NAK with the consumer's backoff step; dead-lettered after the last attempt.
    Transient,
    /// Transient, but the handler knows when to try again (a `Retry-After`, a busy ledger claim).
    RetryAfter(Duration),
    /// Transient because a dependency is down; feeds the circuit breaker.
    Unavailable,
    /// No attempt can succeed: dead-letter now.
    Permanent,
}

/// Why a handler failed, and whether another attempt could succeed.
pub struct JobError {
    disposition: Disposition,
    source: anyhow::Error,
}

impl JobError {
    /// An error with an explicit disposition.
    pub fn new(disposition: Disposition, err: impl Into<anyhow::Error>) -> Self {
        Self {
            disposition,
            source: err.into(),
        }
    }

    /// Another attempt may succeed: NAK with the consumer's backoff for this attempt; dead-lettered after the
    /// last attempt.
    pub fn transient(err: impl Into<anyhow::Error>) -> Self {
        Self::new(Disposition::Transient, err)
    }

    /// Another attempt cannot succeed (a 5xx SMTP reply, data that will not improve): dead-letter now.
    pub fn permanent(err: impl Into<anyhow::Error>) -> Self {
        Self::new(Disposition::Permanent, err)
    }

    /// Transient, but the handler knows better than the backoff list when to try again (a `Retry-After`).
    ///
    /// On a consumer with a backoff list the server cannot redeliver sooner than `backoff[attempt-1] - backoff[0]`
    /// after a delayed NAK, so a shorter `delay` gets that floor (`Policy::nak_delay`).
    pub fn retry_after(err: impl Into<anyhow::Error>, delay: Duration) -> Self {
        Self::new(Disposition::RetryAfter(delay), err)
    }

    /// Transient because a dependency is down (connection refused, time-out, "service not available"), not
    /// because of this event. Enough of these in a row open the runtime's circuit breaker: it stops taking
    /// messages and probes the dependency, so an outage does not burn every message's retries.
    pub fn unavailable(err: impl Into<anyhow::Error>) -> Self {
        Self::new(Disposition::Unavailable, err)
    }

    /// What the runtime does about it.
    pub fn disposition(&self) -> Disposition {
        self.disposition
    }

    /// Whether this is an [`JobError::unavailable`] error.
    pub fn is_unavailable(&self) -> bool {
        self.disposition == Disposition::Unavailable
    }

    /// Whether the runtime dead-letters without retrying.
    pub fn is_permanent(&self) -> bool {
        self.disposition == Disposition::Permanent
    }

    /// The delay the handler asked for, if any.
    pub fn requested_delay(&self) -> Option<Duration> {
        match self.disposition {
            Disposition::RetryAfter(delay) => Some(delay),
            _ => None,
        }
    }

    /// The underlying error.
    pub fn source(&self) -> &anyhow::Error {
        &self.source
    }
}

/// `?` in a handler makes any error transient (axum's `AppError` pattern), which is why `JobError` does not
/// implement `std::error::Error` itself.
impl<E: Into<anyhow::Error>> From<E> for JobError {
    fn from(err: E) -> Self {
        Self::transient(err)
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.source)
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobError")
            .field("disposition", &self.disposition)
            .field("source", &format_args!("{:#}", self.source))
            .finish()
    }
}
