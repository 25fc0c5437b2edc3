//! `welcome`: turns `users.registered` into the welcome email.
//!
//! Binds the durable consumer `welcome` (infra/nats/consumers/EVENTS/welcome.json). Everything else (decoding,
//! validation, retries, dead-lettering, the circuit breaker, tracing, shutdown) is the runtime's.

use std::sync::Arc;

use events::UserRegistered;
use lettre::message::Mailbox;
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError};

/// The emails this function sends, from `templates/<locale>/`.
const EMAILS: &[mailer::EmailTemplate] = mailer::templates!["welcome"];

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One thread: the handlers wait on I/O, so a second scheduler thread only adds wake-ups (runtime::threads).
fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(&runtime::binary!(), &mailer::SETTINGS);
    runtime::threads::build(runtime::Threads::One)?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("welcome")?;
    mailer::serve("welcome", EMAILS, |mailer, templates| {
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
    use events::Locale;
    use mailer::snapshot::{INJECTED, assert_well_formed};

    fn templates() -> Templates {
        Templates::new(EMAILS).expect("the templates parse")
    }

    #[test]
    fn snapshots_in_every_locale() {
        let templates = templates();
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

    fn welcome(locale: Locale, name: &str) -> Rendered {
        let user = UserRegistered {
            name: name.to_owned(),
            locale,
            ..UserRegistered::example()
        };
        render(&templates(), &user).expect("renders")
    }

    #[test]
    fn welcome_in_english() {
        let r = welcome(Locale::En, "Ada");
        assert_eq!(r.subject, "Welcome to jetfn, Ada");
        for body in [&r.html, &r.text] {
            assert!(body.contains("Hi Ada"), "{body}");
            assert!(body.contains("Your account is ready"), "{body}");
            assert!(body.contains("You received this email because"), "{body}");
        }
        assert!(r.html.contains(r#"<html lang="en">"#));
        assert!(!r.text.contains('<'), "{}", r.text);
    }

    #[test]
    fn welcome_in_vietnamese() {
        let r = welcome(Locale::Vi, "Ngọc Anh");
        assert_eq!(r.subject, "Chào mừng Ngọc Anh đến với jetfn");
        for body in [&r.html, &r.text] {
            assert!(body.contains("Xin chào Ngọc Anh"), "{body}");
            assert!(body.contains("Tài khoản của bạn đã sẵn sàng"), "{body}");
            assert!(body.contains("Bạn nhận được email này vì"), "{body}");
        }
        assert!(r.html.contains(r#"<html lang="vi">"#));
    }

    #[test]
    fn well_formed_in_every_locale() {
        for locale in [Locale::En, Locale::Vi] {
            let r = welcome(locale, INJECTED);
            assert_well_formed(&format!("welcome in {}", locale.as_str()), &r, locale, true);
        }
    }
}

/// The handler's decisions, in process: a test job on an in-memory ledger, the mailer on a scripted stub.
#[cfg(test)]
mod handler_tests {
    use super::*;
    use events::CloudEvent;
    use mailer::testing::{DeathKind, Harness, Reply, Settled};

    /// The handler as `main` wires it.
    fn harness() -> Harness<UserRegistered> {
        Harness::new(EMAILS, |mailer, templates| {
            move |job| send_welcome(job, mailer.clone(), templates.clone())
        })
    }

    fn event() -> CloudEvent<UserRegistered> {
        CloudEvent::new("/test", UserRegistered::example())
    }

    fn effect(event: &CloudEvent<UserRegistered>) -> String {
        format!("welcome-email:{}", event.data.email.to_ascii_lowercase())
    }

    mailer::email_contract! {
        harness: harness,
        event: event(),
        emails: 1,
    }

    #[tokio::test]
    async fn the_user_is_welcomed_and_the_effect_is_named_after_the_address() {
        let h = harness();
        let event = event();
        assert_eq!(h.deliver(&event, 1).await, Settled::Acked);
        assert!(h.ledger.is_done(&event.id, &effect(&event)));
        assert_eq!(h.smtp.recipients(), [event.data.email.as_str()]);
    }

    #[tokio::test]
    async fn a_refused_send_is_not_recorded_as_done() {
        let h = harness();
        h.smtp.reply(Reply::Reject(451));
        let event = event();
        assert_eq!(h.deliver(&event, 1).await, Settled::Retry(None));
        assert!(!h.ledger.is_done(&event.id, &effect(&event)));
    }

    #[tokio::test]
    async fn nothing_is_sent_when_the_ledger_says_done() {
        let h = harness();
        let event = event();
        h.ledger.mark_done(&event.id, &effect(&event));
        assert_eq!(h.deliver(&event, 1).await, Settled::Acked);
        assert_eq!(h.smtp.attempts(), 0);
    }

    #[tokio::test]
    async fn an_unusable_address_is_dead_lettered_at_the_first_attempt() {
        let h = harness();
        let mut event = event();
        event.data.email = "not an address".to_owned();
        assert_eq!(
            h.deliver(&event, 1).await,
            Settled::Dead(DeathKind::Permanent)
        );
        assert_eq!(h.smtp.attempts(), 0);
    }
}
