//! Glue between the mailer and the runtime: how a send failure maps to a retry decision, and sending an email
//! exactly once per event through the idempotency ledger.

use events::pii::Masked;
use lettre::Message;
use runtime::{Effect, Job, JobError};

use crate::{Mailer, SendError};

/// A downed server ([`SendError::is_unavailable`]) feeds the circuit breaker, a 5xx reply dead-letters at once,
/// anything else is retried on the consumer's backoff.
pub fn job_error(err: SendError) -> JobError {
    if err.is_permanent() {
        JobError::permanent(err)
    } else if err.is_unavailable() {
        JobError::unavailable(err)
    } else {
        JobError::transient(err)
    }
}

/// Sends `message` once for this event and `effect` (name the effect after the email and its recipient, such as
/// `customer-email:ada@example.com`): a redelivery, a re-publish of the event or another replica finds it done and
/// skips it.
///
/// # Errors
/// The send's error mapped by [`job_error`], or a transient ledger error.
pub async fn send_once<T>(
    job: &Job<T>,
    mailer: &Mailer,
    effect: &str,
    message: Message,
) -> Result<(), JobError> {
    let recipient = message
        .envelope()
        .to()
        .first()
        .map(ToString::to_string)
        .unwrap_or_default();
    let kind = effect.split(':').next().unwrap_or(effect);
    match job
        .once(effect, || async {
            mailer.send(message).await.map_err(job_error)
        })
        .await?
    {
        Effect::Done(_) => tracing::info!(email = kind, to = %Masked(&recipient), "email sent"),
        Effect::AlreadyDone => {
            tracing::info!(email = kind, to = %Masked(&recipient), "email already sent for this event; skipped");
        }
    }
    Ok(())
}

/// Wraps the mailer's probe for [`runtime::Runtime::with_probe`].
pub fn probe(
    mailer: &Mailer,
) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>
+ Send
+ Sync
+ 'static {
    let mailer = mailer.clone();
    move || {
        let mailer = mailer.clone();
        Box::pin(async move { mailer.probe().await.map_err(anyhow::Error::from) })
    }
}
