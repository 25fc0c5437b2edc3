//! `email-verification`: turns `users.email_verification_requested` into an email with the 6-digit code. A
//! request already expired when consumed is not emailed: the code would not work.

use std::sync::Arc;

use events::EmailVerificationRequested;
use lettre::message::Mailbox;
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError};
use serde_json::json;

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(&runtime::binary!(), &mailer::SETTINGS);
    let telemetry = runtime::telemetry::init("email-verification")?;
    mailer::serve("email-verification", |mailer, templates| {
        move |job| send_code(job, mailer.clone(), templates.clone())
    })
    .await?;
    telemetry.flush();
    Ok(())
}

/// Sends the code once per (event, recipient), unless it expired while the event waited.
#[tracing::instrument(skip_all, fields(user_id = %job.event.data.user_id))]
async fn send_code(
    job: Job<EmailVerificationRequested>,
    mailer: Mailer,
    templates: Arc<Templates>,
) -> Result<(), JobError> {
    let request = &job.event.data;
    let Some(minutes_left) = mailer::format::minutes_left(&request.expires_at) else {
        return job.skip("expired");
    };
    let rendered = render(&templates, request, minutes_left).map_err(JobError::permanent)?;
    let to = Mailbox::new(
        request.name.clone(),
        request.email.parse().map_err(JobError::permanent)?,
    );
    let effect = format!("verification-email:{}", request.email.to_ascii_lowercase());
    mailer::send_once(
        &job,
        &mailer,
        &effect,
        mailer::Email {
            to: &to,
            reply_to: None,
            rendered: &rendered,
            locale: request.locale,
        },
    )
    .await
}

fn render(
    templates: &Templates,
    request: &EmailVerificationRequested,
    minutes_left: i64,
) -> Result<Rendered, mailer::RenderError> {
    let context =
        json!({ "name": request.name, "code": request.code, "expires_in_minutes": minutes_left });
    templates.render(
        "email_verification",
        request.locale,
        mailer::Value::from(mailer::Serde(&context)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_in_every_locale() {
        let templates = Templates::new();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots");
        for locale in [events::Locale::En, events::Locale::Vi] {
            let mut request = EmailVerificationRequested::example();
            request.locale = locale;
            if locale == events::Locale::En {
                request.name = Some("Ada".to_owned());
            }
            let rendered = render(&templates, &request, 15).unwrap();
            assert!(rendered.text.contains("493027"));
            mailer::snapshot::assert_snapshot(
                &dir,
                &format!("email_verification.{}", locale.as_str()),
                &rendered,
            );
        }
    }
}
