//! Glue between the mailer and the runtime: how a send failure maps to a retry decision, and sending an email
//! exactly once per event through the idempotency ledger.

use events::Locale;
use events::pii::Masked;
use lettre::message::Mailbox;
use runtime::{Effect, Job, JobError};

use crate::{Mailer, Rendered, SendError, compose};

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

/// One email to send: who gets it, where replies go, what it says.
#[derive(Debug, Clone, Copy)]
pub struct Email<'a> {
    /// The recipient.
    pub to: &'a Mailbox,
    /// Where replies go (the contact form's sender), if not to the From address.
    pub reply_to: Option<&'a Mailbox>,
    /// Subject, HTML and text.
    pub rendered: &'a Rendered,
    /// Its language, for `Content-Language`.
    pub locale: Locale,
}

/// Composes `email` (From is `MAIL_FROM`; the `Message-ID` derives from the effect's idempotency key) and sends it
/// once for this event and `effect` (name the effect after the email and its recipient, such as
/// `customer-email:ada@example.com`): a redelivery, a re-publish of the event or another replica finds it done and
/// skips it. Then, once per event and effect, the outcome: `email.sent` (recipient masked, the email's name, the
/// `Message-ID`) once the send is done, or `email.failed` with the dead letter's kind if the event is dead-lettered
/// without it (registered before the send, withdrawn once it succeeded).
///
/// # Errors
/// A composition or send error mapped by [`job_error`], or a transient ledger or publish error.
pub async fn send_once<T>(
    job: &Job<T>,
    mailer: &Mailer,
    effect: &str,
    email: Email<'_>,
) -> Result<(), JobError> {
    let idempotency_key = job.effect_key(effect);
    let recipient = email.to.email.to_string();
    let kind = effect.split(':').next().unwrap_or(effect);
    let source_id = job.event.id.clone();
    let source_type = job.event.ty.clone();
    let function = job.function().to_owned();
    let to = events::pii::mask_email(&recipient);
    {
        let (source_id, source_type, function, template, to) = (
            source_id.clone(),
            source_type.clone(),
            function.clone(),
            kind.to_owned(),
            to.clone(),
        );
        job.on_dead_letter(&failed_outcome(effect), move |kind| events::EmailFailed {
            source_id,
            source_type,
            function,
            template,
            to,
            kind,
        });
    }
    let message = compose(
        mailer.from(),
        email.to,
        email.reply_to,
        email.rendered,
        email.locale,
        &idempotency_key,
    )
    .map_err(job_error)?;
    // The first email of a process (or after every connection closed) connects while the ledger claims.
    mailer.warm();
    let sent = job
        .once(effect, || async {
            mailer.send(message).await.map_err(job_error)
        })
        .await?;
    match sent {
        Effect::Done(_) => tracing::info!(email = kind, to = %Masked(&recipient), "email sent"),
        Effect::AlreadyDone => {
            tracing::info!(email = kind, to = %Masked(&recipient), "email already sent for this event; skipped");
        }
    }
    job.forget_dead_letter(&failed_outcome(effect));
    let outcome = events::EmailSent {
        source_id,
        source_type,
        function,
        template: kind.to_owned(),
        to,
        message_id: crate::compose::message_id(&idempotency_key),
    };
    match job
        .publish_outcome_of(effect, &sent, &format!("email.sent:{effect}"), outcome)
        .await
    {
        Ok(_) => Ok(()),
        // The email went out: dead-lettering the event for want of its confirmation would be the worse lie (a
        // full EVENTS stream refuses it on every delivery). The loss is logged; a replay publishes it.
        Err(err) if job.is_last_attempt() => {
            tracing::error!(email = kind, error = %err, "email.sent not published on the last delivery; the email was sent, so the event is acked without it");
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// The outcome name of an email's `email.failed` (the effect name holds the address; outcome names are hashed).
fn failed_outcome(effect: &str) -> String {
    format!("email.failed:{effect}")
}

/// The emails of one event the server refused for good, for a function that sends several: each recipient's send
/// is its own effect, so a 5xx for one must not keep the others from going out, and the dead letter names every
/// refused one (masked, with the reply code).
#[derive(Debug, Default)]
pub struct Refused(Vec<String>);

impl Refused {
    /// Keeps a permanent refusal of `what` (such as "staff email") to `to` and returns `Ok` so the caller goes on
    /// to the next email; any other failure is returned as it is, to retry the event (the redelivery skips what
    /// was sent, and a downed server would refuse the rest the same way).
    ///
    /// # Errors
    /// `sent`'s error, unless it is permanent.
    pub fn note(
        &mut self,
        what: &str,
        to: &Mailbox,
        sent: Result<(), JobError>,
    ) -> Result<(), JobError> {
        match sent {
            Err(err) if err.is_permanent() => {
                let to = events::pii::mask_email(to.email.as_ref());
                tracing::warn!(email = what, to = %to, error = %err, "email refused for good; sending the others");
                self.0.push(format!("{what} to {to}: {err}"));
                Ok(())
            }
            other => other,
        }
    }

    /// `Ok` when nothing was refused; else a permanent error naming each refused email.
    ///
    /// # Errors
    /// At least one email was refused.
    pub fn into_result(self) -> Result<(), JobError> {
        if self.0.is_empty() {
            return Ok(());
        }
        Err(JobError::permanent(anyhow::anyhow!(
            "refused: {}",
            self.0.join("; ")
        )))
    }
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

/// The rest of an email function's `main` once its own configuration is read: the function's `emails` (from
/// [`templates!`](crate::templates)) parsed with the shared layouts, the mailer from `SMTP_*` and `MAIL_*`, the
/// runtime bound to the function's consumer with the mailer as the circuit breaker's probe, and the handler `make`
/// builds from the mailer and the templates, served until SIGTERM.
///
/// # Errors
/// A template that does not parse, a configuration that does not parse, or a start-up failure of
/// [`runtime::Runtime::serve`].
pub async fn serve<T, H, Fut>(
    name: &str,
    emails: &[crate::EmailTemplate],
    make: impl FnOnce(Mailer, std::sync::Arc<crate::Templates>) -> H,
) -> anyhow::Result<()>
where
    T: events::Event,
    H: Fn(Job<T>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    use anyhow::Context as _;
    let templates = crate::Templates::new(emails).context("parsing the email templates")?;
    let mailer = Mailer::from_env().context("reading SMTP_* and MAIL_* configuration")?;
    let runtime = runtime::Runtime::from_env(name)
        .await?
        .with_probe(probe(&mailer));
    let handler = make(mailer, std::sync::Arc::new(templates));
    runtime.serve(handler, runtime::shutdown_signal()).await
}
