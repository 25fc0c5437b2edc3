//! `email-verification`: turns `users.email_verification_requested` into an email with the 6-digit code. A
//! request already expired when consumed is not emailed: the code would not work.

use std::sync::Arc;

use events::EmailVerificationRequested;
use lettre::message::Mailbox;
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError};
use serde_json::json;

/// The emails this function sends, from `templates/<locale>/`.
const EMAILS: &[mailer::EmailTemplate] = mailer::templates!["email_verification"];

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One thread: the handlers wait on I/O, so a second scheduler thread only adds wake-ups (runtime::threads).
fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(&runtime::binary!(), &mailer::SETTINGS);
    runtime::threads::build(runtime::Threads::One)?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("email-verification")?;
    mailer::serve("email-verification", EMAILS, |mailer, templates| {
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
    use mailer::context;
    use mailer::snapshot::{INJECTED, assert_well_formed};

    fn templates() -> Templates {
        Templates::new(EMAILS).expect("the templates parse")
    }

    #[test]
    fn snapshots_in_every_locale() {
        let templates = templates();
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

    #[test]
    fn well_formed_in_every_locale() {
        let templates = templates();
        let none: Option<&str> = None;
        let samples = [
            (
                context! { name => INJECTED, code => "042917", expires_in_minutes => 10 },
                true,
            ),
            (
                context! { name => none, code => "042917", expires_in_minutes => 10 },
                false,
            ),
        ];
        for locale in [events::Locale::En, events::Locale::Vi] {
            for (ctx, injected) in samples.clone() {
                let at = format!(
                    "email_verification in {} (named: {injected})",
                    locale.as_str()
                );
                let r = templates
                    .render("email_verification", locale, ctx)
                    .unwrap_or_else(|e| panic!("{at}: {e:#}"));
                assert_well_formed(&at, &r, locale, injected);
            }
        }
    }
}

/// The handler in process: a test job on an in-memory ledger, the mailer on a stub SMTP server.
#[cfg(test)]
mod handler_tests {
    use super::*;
    use events::CloudEvent;
    use mailer::testing::{Harness, Settled};
    use time::format_description::well_known::Rfc3339;

    /// The handler as `main` wires it.
    fn harness() -> Harness<EmailVerificationRequested> {
        Harness::new(EMAILS, |mailer, templates| {
            move |job| send_code(job, mailer.clone(), templates.clone())
        })
    }

    /// An English request whose code expires `minutes` from now (in the past when negative).
    fn event(minutes: i64) -> CloudEvent<EmailVerificationRequested> {
        let mut request = EmailVerificationRequested::example();
        request.locale = events::Locale::En;
        request.expires_at = (time::OffsetDateTime::now_utc() + time::Duration::minutes(minutes))
            .format(&Rfc3339)
            .expect("formats");
        CloudEvent::new("test", request)
    }

    mailer::email_contract! {
        harness: harness,
        event: event(15),
        emails: 1,
    }

    #[tokio::test]
    async fn the_user_gets_the_code() {
        let h = harness();
        assert_eq!(h.deliver(&event(15), 1).await, Settled::Acked);
        assert_eq!(h.smtp.recipients(), ["ada@example.com"]);
        assert!(
            h.smtp.sent()[0].text().contains("493027"),
            "the code is in the email"
        );
    }

    #[tokio::test]
    async fn an_expired_request_is_skipped_and_sends_nothing() {
        let h = harness();
        assert_eq!(h.deliver(&event(-1), 1).await, Settled::Skipped("expired"));
        assert_eq!(h.smtp.attempts(), 0);
    }
}
