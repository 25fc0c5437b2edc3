//! `password-reset`: turns `users.password_reset_requested` into an email with a reset link built from
//! `PASSWORD_RESET_URL` and the token. The token reaches the email body and nothing else: not a log line, a span,
//! an error or the dead-letter view (which masks it). A request already expired when consumed is dropped.

use std::sync::Arc;

use events::PasswordResetRequested;
use lettre::message::Mailbox;
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError};
use serde::Deserialize;
use serde_json::json;

/// The emails this function sends, from `templates/<locale>/`.
const EMAILS: &[mailer::EmailTemplate] = mailer::templates!["password_reset"];

/// Settings of this function.
#[derive(Debug, Deserialize)]
struct Config {
    /// `PASSWORD_RESET_URL`: the reset page; the link is `<url>?token=<token>` (or `&token=` when it has a query).
    password_reset_url: String,
}

/// The variables of [`Config`].
const CONFIG: runtime::config::Table = runtime::config::Table {
    title: "Password reset",
    prefix: "",
    vars: &[runtime::config::Var::required(
        "PASSWORD_RESET_URL",
        "the reset page's https URL; the link is `<url>?token=<token>`, or `&token=` when it has a query",
    )],
};

impl runtime::config::Settings for Config {
    const TABLE: &'static runtime::config::Table = &CONFIG;
}

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One thread: the handlers wait on I/O, so a second scheduler thread only adds wake-ups (runtime::threads).
fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(&runtime::binary!(), &mailer::settings_with(&CONFIG));
    runtime::threads::build(runtime::Threads::One)?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("password-reset")?;
    let config: Config = runtime::config::from_env()?;
    anyhow::ensure!(
        config.password_reset_url.starts_with("https://")
            || config.password_reset_url.starts_with("http://localhost")
            || config.password_reset_url.starts_with("http://127.0.0.1"),
        "PASSWORD_RESET_URL must be an https URL (http only for localhost)"
    );
    let base = Arc::new(config.password_reset_url);
    mailer::serve("password-reset", EMAILS, |mailer, templates| {
        move |job| send_reset_link(job, mailer.clone(), templates.clone(), base.clone())
    })
    .await?;
    telemetry.flush();
    Ok(())
}

/// Sends the reset link once per (event, recipient), unless the token expired while the event waited.
#[tracing::instrument(skip_all, fields(user_id = %job.event.data.user_id))]
async fn send_reset_link(
    job: Job<PasswordResetRequested>,
    mailer: Mailer,
    templates: Arc<Templates>,
    base: Arc<String>,
) -> Result<(), JobError> {
    let request = &job.event.data;
    let Some(minutes_left) = mailer::format::minutes_left(&request.expires_at) else {
        return job.skip("expired");
    };
    let rendered = render(&templates, request, &base, minutes_left).map_err(JobError::permanent)?;
    let to = Mailbox::new(
        request.name.clone(),
        request.email.parse().map_err(JobError::permanent)?,
    );
    let effect = format!("reset-email:{}", request.email.to_ascii_lowercase());
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

fn reset_url(base: &str, token: &str) -> String {
    let separator = if base.contains('?') { '&' } else { '?' };
    format!("{base}{separator}token={token}")
}

fn render(
    templates: &Templates,
    request: &PasswordResetRequested,
    base: &str,
    minutes_left: i64,
) -> Result<Rendered, mailer::RenderError> {
    let context = json!({
        "name": request.name,
        "reset_url": reset_url(base, &request.token),
        "expires_in_minutes": minutes_left,
        "expires_at": mailer::format::datetime(&request.expires_at, request.locale),
    });
    templates.render(
        "password_reset",
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
            let mut request = PasswordResetRequested::example();
            request.locale = locale;
            if locale == events::Locale::Vi {
                request.name = None;
            }
            let rendered = render(
                &templates,
                &request,
                "https://shop.example.com/reset-password",
                60,
            )
            .unwrap();
            assert!(
                rendered
                    .html
                    .contains("reset-password?token=q3Jm9xV7bT2wY5nK8pL1sD4fG6hR0zXc")
            );
            mailer::snapshot::assert_snapshot(
                &dir,
                &format!("password_reset.{}", locale.as_str()),
                &rendered,
            );
        }
    }

    #[test]
    fn links_keep_the_base_query() {
        assert_eq!(
            reset_url("https://x.test/reset?lang=vi", "abc"),
            "https://x.test/reset?lang=vi&token=abc"
        );
    }

    #[test]
    fn well_formed_in_every_locale() {
        let templates = templates();
        let none: Option<&str> = None;
        let samples = [
            (
                context! {
                    name => INJECTED, reset_url => "https://shop.example/reset?token=abc&x=1",
                    expires_in_minutes => 30, expires_at => "25 Nov 2026, 10:35 UTC",
                },
                true,
            ),
            (
                context! {
                    name => none, reset_url => "https://shop.example/reset?token=abc&x=1",
                    expires_in_minutes => 1, expires_at => "25 Nov 2026, 10:06 UTC",
                },
                false,
            ),
        ];
        for locale in [events::Locale::En, events::Locale::Vi] {
            for (ctx, injected) in samples.clone() {
                let at = format!("password_reset in {} (named: {injected})", locale.as_str());
                let r = templates
                    .render("password_reset", locale, ctx)
                    .unwrap_or_else(|e| panic!("{at}: {e:#}"));
                assert_well_formed(&at, &r, locale, injected);
            }
        }
    }

    #[test]
    fn the_greeting_and_the_expiry_fit_the_request() {
        let templates = templates();
        let reset = |name: Option<&str>| {
            templates
                .render(
                    "password_reset",
                    events::Locale::En,
                    context! { name, reset_url => "https://x.example/r", expires_in_minutes => 1, expires_at => "10:06" },
                )
                .expect("renders")
        };
        assert!(
            reset(None)
                .text
                .starts_with("jetfn\n\nHello,\n\nWe received"),
            "{}",
            reset(None).text
        );
        assert!(reset(None).text.contains("expires in 1 minute, at 10:06"));
        assert!(reset(Some("Ada")).html.contains("Hi Ada,"));
    }
}

/// The handler in process: a test job on an in-memory ledger, the mailer on a stub SMTP server.
#[cfg(test)]
mod handler_tests {
    use super::*;
    use events::CloudEvent;
    use mailer::testing::{Harness, Reply, Settled};
    use time::format_description::well_known::Rfc3339;

    const TOKEN: &str = "q3Jm9xV7bT2wY5nK8pL1sD4fG6hR0zXc";

    /// The handler as `main` wires it, with `PASSWORD_RESET_URL` set.
    fn harness() -> Harness<PasswordResetRequested> {
        let base = Arc::new("https://shop.example.com/reset-password".to_owned());
        Harness::new(EMAILS, |mailer, templates| {
            move |job| send_reset_link(job, mailer.clone(), templates.clone(), base.clone())
        })
    }

    /// A request whose link expires `minutes` from now (in the past when negative).
    fn event(minutes: i64) -> CloudEvent<PasswordResetRequested> {
        let mut request = PasswordResetRequested::example();
        request.expires_at = (time::OffsetDateTime::now_utc() + time::Duration::minutes(minutes))
            .format(&Rfc3339)
            .expect("formats");
        CloudEvent::new("test", request)
    }

    mailer::email_contract! {
        harness: harness,
        event: event(30),
        emails: 1,
    }

    #[tokio::test]
    async fn the_user_gets_the_link() {
        let h = harness();
        assert_eq!(h.deliver(&event(30), 1).await, Settled::Acked);
        assert_eq!(h.smtp.recipients(), ["ada@example.com"]);
        let sent = &h.smtp.sent()[0];
        let link = format!("https://shop.example.com/reset-password?token={TOKEN}");
        assert!(sent.text().contains(&link), "{}", sent.text());
        assert!(
            sent.html().contains(&format!("?token={TOKEN}\"")),
            "{}",
            sent.html()
        );
    }

    #[tokio::test]
    async fn an_expired_request_is_skipped_and_sends_nothing() {
        let h = harness();
        assert_eq!(h.deliver(&event(-1), 1).await, Settled::Skipped("expired"));
        assert_eq!(h.smtp.attempts(), 0);
    }

    #[tokio::test]
    async fn a_5xx_error_is_permanent_and_holds_no_token() {
        let h = harness();
        h.smtp.reply(Reply::Reject(550));
        let err = h.handle(&event(30), 1).await.expect_err("550");
        assert!(err.is_permanent(), "{err:?}");
        assert!(!format!("{err} {err:?}").contains(TOKEN), "{err:?}");
    }
}

#[cfg(test)]
mod settings {
    #[test]
    fn the_table_lists_every_setting() {
        runtime::config::check_table::<super::Config>(&[(
            "PASSWORD_RESET_URL",
            "https://example.com/reset",
        )]);
    }

    #[test]
    fn a_missing_url_is_named_with_its_meaning() {
        let err = runtime::config::from_vars::<super::Config>([]).expect_err("required");
        assert!(
            err.to_string()
                .starts_with("PASSWORD_RESET_URL: must be set (the reset page"),
            "{err}"
        );
    }
}
