//! The retry vocabulary of a handler: `?` means transient, `JobError::permanent` means give up now.

use std::fmt;
use std::time::Duration;

/// Why a handler failed, and whether another attempt could succeed.
pub struct JobError {
    permanent: bool,
    unavailable: bool,
    retry_after: Option<Duration>,
    source: anyhow::Error,
}

impl JobError {
    /// Another attempt may succeed: NAK with the consumer's backoff for this attempt; dead-lettered after the
    /// last attempt.
    pub fn transient(err: impl Into<anyhow::Error>) -> Self {
        Self {
            permanent: false,
            unavailable: false,
            retry_after: None,
            source: err.into(),
        }
    }

    /// Another attempt cannot succeed (a 5xx SMTP reply, data that will not improve): dead-letter now.
    pub fn permanent(err: impl Into<anyhow::Error>) -> Self {
        Self {
            permanent: true,
            unavailable: false,
            retry_after: None,
            source: err.into(),
        }
    }

    /// Transient, but the handler knows better than the backoff list when to try again (a `Retry-After`).
    pub fn retry_after(err: impl Into<anyhow::Error>, delay: Duration) -> Self {
        Self {
            permanent: false,
            unavailable: false,
            retry_after: Some(delay),
            source: err.into(),
        }
    }

    /// Transient because a dependency is down (connection refused, time-out, "service not available"), not
    /// because of this event. Enough of these in a row open the runtime's circuit breaker: it stops taking
    /// messages and probes the dependency, so an outage does not burn every message's retries.
    pub fn unavailable(err: impl Into<anyhow::Error>) -> Self {
        Self {
            permanent: false,
            unavailable: true,
            retry_after: None,
            source: err.into(),
        }
    }

    /// Whether this is an [`JobError::unavailable`] error.
    pub fn is_unavailable(&self) -> bool {
        self.unavailable
    }

    /// Whether the runtime dead-letters without retrying.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The delay the handler asked for, if any.
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_after
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
            .field("permanent", &self.permanent)
            .field("unavailable", &self.unavailable)
            .field("retry_after", &self.retry_after)
            .field("source", &format_args!("{:#}", self.source))
            .finish()
    }
}
