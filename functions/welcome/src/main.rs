//! `welcome`: turns `users.registered` into the welcome email.
//!
//! Binds the durable consumer `welcome` (infra/nats/consumers/EVENTS/welcome.json). Everything else (decoding,
//! validation, retries, dead-lettering, the circuit breaker, tracing, shutdown) is the runtime's.

use std::sync::Arc;

use events::UserRegistered;
use lettre::message::Mailbox;
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError};

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(&runtime::binary!(), &mailer::SETTINGS);
    let telemetry = runtime::telemetry::init("welcome")?;
    mailer::serve("welcome", |mailer, templates| {
        move |job| send_welcome(job, mailer.clone(), templates.clone())
    })
    .await?;
    telemetry.flush();
    Ok(())
}

/// Sends the welcome email once per (event, recipient).
#[tracing::instrument(skip_all, fields(user_id = %job.event.data.user_id))]
async fn send_welcome(
    job: Job<UserRegistered>,
    mailer: Mailer,
    templates: Arc<Templates>,
) -> Result<(), JobError> {
    let user = &job.event.data;
    let rendered = render(&templates, user).map_err(JobError::permanent)?;
    let to = Mailbox::new(
        Some(user.name.clone()),
        user.email.parse().map_err(JobError::permanent)?,
    );
    let effect = format!("welcome-email:{}", user.email.to_ascii_lowercase());
    mailer::send_once(
        &job,
        &mailer,
        &effect,
        mailer::Email {
            to: &to,
            reply_to: None,
            rendered: &rendered,
            locale: user.locale,
        },
    )
    .await
}

fn render(templates: &Templates, user: &UserRegistered) -> Result<Rendered, mailer::RenderError> {
    templates.render(
        "welcome",
        user.locale,
        mailer::context! { name => user.name.as_str() },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_in_every_locale() {
        let templates = Templates::new();
        for locale in [events::Locale::En, events::Locale::Vi] {
            let mut user = UserRegistered::example();
            user.locale = locale;
            let rendered = render(&templates, &user).unwrap();
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots");
            mailer::snapshot::assert_snapshot(
                &dir,
                &format!("welcome.{}", locale.as_str()),
                &rendered,
            );
        }
    }
}
