//! `welcome`: turns `users.registered` into the welcome email.
//!
//! Binds the durable consumer `welcome` (infra/nats/consumers/EVENTS/welcome.json). Everything else (decoding,
//! validation, retries, dead-lettering, the circuit breaker, tracing, shutdown) is the runtime's.

use std::sync::Arc;

use events::UserRegistered;
use lettre::message::Mailbox;
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
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
    use runtime::dlq::DeathKind;
    use runtime::testing::{self, MemoryLedger, Settled};

    /// A mailer writing `.eml` files to a fresh directory, and that directory.
    fn mailer(name: &str) -> (Mailer, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("welcome-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mailer = Mailer::new(mailer::MailerConfig {
            mail_dir: dir.clone(),
            ..mailer::MailerConfig::default()
        })
        .unwrap();
        (mailer, dir)
    }

    fn emails(dir: &std::path::Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |entries| entries.count())
    }

    fn event() -> events::CloudEvent<UserRegistered> {
        events::CloudEvent::new("/test", UserRegistered::example())
    }

    fn effect(event: &events::CloudEvent<UserRegistered>) -> String {
        format!("welcome-email:{}", event.data.email.to_ascii_lowercase())
    }

    async fn welcome(job: Job<UserRegistered>, mailer: &Mailer) -> Settled {
        let templates = Arc::new(Templates::new());
        testing::run(job, |job| send_welcome(job, mailer.clone(), templates)).await
    }

    #[tokio::test]
    async fn a_registered_user_is_welcomed_once_across_redeliveries() {
        let (mailer, dir) = mailer("once");
        let ledger = MemoryLedger::new();
        let event = event();
        let first = testing::job(event.clone()).ledger(&ledger).build();
        assert_eq!(welcome(first, &mailer).await, Settled::Acked);
        assert_eq!(emails(&dir), 1);
        assert!(ledger.is_done(&event.id, &effect(&event)));
        let redelivered = testing::job(event).attempt(2).ledger(&ledger).build();
        assert_eq!(welcome(redelivered, &mailer).await, Settled::Acked);
        assert_eq!(emails(&dir), 1, "the redelivery found the email sent");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn nothing_is_sent_when_the_ledger_says_done() {
        let (mailer, dir) = mailer("done");
        let ledger = MemoryLedger::new();
        let event = event();
        ledger.mark_done(&event.id, &effect(&event));
        let job = testing::job(event).ledger(&ledger).build();
        assert_eq!(welcome(job, &mailer).await, Settled::Acked);
        assert_eq!(emails(&dir), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_unusable_address_is_dead_lettered_at_the_first_attempt() {
        let (mailer, dir) = mailer("address");
        let mut event = event();
        event.data.email = "not an address".to_owned();
        let job = testing::job(event).max_deliver(5).build();
        assert_eq!(
            welcome(job, &mailer).await,
            Settled::Dead(DeathKind::Permanent)
        );
        assert_eq!(emails(&dir), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_failed_send_is_retried_and_dead_lettered_after_the_last_attempt() {
        // The mail directory vanishes under the file transport: a transient failure, like an SMTP 4xx.
        let (mailer, dir) = mailer("failing");
        std::fs::remove_dir_all(&dir).unwrap();
        let ledger = MemoryLedger::new();
        let event = event();
        let early = testing::job(event.clone())
            .attempt(2)
            .max_deliver(5)
            .ledger(&ledger)
            .build();
        assert_eq!(welcome(early, &mailer).await, Settled::Retry(None));
        assert!(
            !ledger.is_done(&event.id, &effect(&event)),
            "a failed send is not recorded as done"
        );
        let last = testing::job(event)
            .attempt(5)
            .max_deliver(5)
            .ledger(&ledger)
            .build();
        assert_eq!(
            welcome(last, &mailer).await,
            Settled::Dead(DeathKind::Exhausted)
        );
    }

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
