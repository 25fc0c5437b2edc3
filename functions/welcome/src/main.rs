//! `welcome`: turns `users.registered` into the welcome email.
//!
//! Binds the durable consumer `welcome` (infra/nats/consumers/EVENTS/welcome.json). Everything else (decoding,
//! validation, retries, dead-lettering, tracing, shutdown) is the runtime's; this file is the handler.

use std::sync::Arc;

use anyhow::Context as _;
use events::UserRegistered;
use events::pii::Masked;
use lettre::message::Mailbox;
use mailer::{Mailer, SendError, Templates, compose};
use runtime::{Effect, Job, JobError, Runtime};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("welcome")?;
    let mailer = Mailer::from_env().context("reading SMTP_* and MAIL_* configuration")?;
    let templates = Arc::new(Templates::new());
    let runtime = Runtime::from_env("welcome").await?;
    runtime
        .serve(
            move |job| send_welcome(job, mailer.clone(), templates.clone()),
            runtime::shutdown_signal(),
        )
        .await?;
    telemetry.flush();
    Ok(())
}

/// Sends the welcome email once per (event, recipient): the send is a ledger effect, so a redelivery, a
/// re-publish of the same event id, or a second replica finds it done and skips it.
#[tracing::instrument(skip_all, fields(user_id = %job.event.data.user_id, to = %Masked(&job.event.data.email)))]
async fn send_welcome(
    job: Job<UserRegistered>,
    mailer: Mailer,
    templates: Arc<Templates>,
) -> Result<(), JobError> {
    let user = &job.event.data;
    let rendered = templates
        .render(
            "welcome",
            user.locale,
            mailer::context! { name => user.name.as_str() },
        )
        .map_err(JobError::permanent)?;
    let address = user.email.parse().map_err(|_| {
        JobError::permanent(anyhow::anyhow!("/data/email is not a deliverable address"))
    })?;
    let to = Mailbox::new(Some(user.name.clone()), address);
    let effect = format!("welcome-email:{}", user.email.to_ascii_lowercase());
    let message = compose(
        mailer.from(),
        &to,
        None,
        &rendered,
        user.locale,
        &job.effect_key(&effect),
    )
    .map_err(classify)?;
    match job
        .once(&effect, || async {
            mailer.send(message).await.map_err(classify)
        })
        .await?
    {
        Effect::Done(_) => tracing::info!("welcome email sent"),
        Effect::AlreadyDone => tracing::info!("welcome email already sent for this event; skipped"),
    }
    Ok(())
}

/// 4xx replies, refused connections and time-outs may pass; 5xx replies will not.
fn classify(err: SendError) -> JobError {
    if err.is_permanent() {
        JobError::permanent(err)
    } else {
        JobError::transient(err)
    }
}
