//! `contact`: turns `contact.submitted` into a notification to the support inbox and, when asked, an
//! acknowledgement to the sender. The sender's address is only ever the Reply-To of the notification (never
//! From), recipients come from configuration (never from the event), and a rate limit per sender address, counted
//! in NATS KV across every replica, keeps the form from being used to mail-bomb anyone.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use events::ContactSubmitted;
use lettre::message::Mailbox;
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError, RateLimiter, Runtime};
use serde::Deserialize;
use serde_json::json;

/// The emails this function sends, from `templates/<locale>/`.
const EMAILS: &[mailer::EmailTemplate] =
    mailer::templates!["contact_notification", "contact_acknowledgement"];

/// Settings of this function.
#[derive(Debug, Deserialize)]
struct Config {
    /// `CONTACT_SUPPORT_TO`: the support inbox (one or more comma-separated addresses).
    contact_support_to: String,
    /// `CONTACT_RATE_LIMIT`: forms accepted per sender address per window.
    #[serde(default = "default_limit")]
    contact_rate_limit: u64,
    /// `CONTACT_RATE_WINDOW_SECS`: the window.
    #[serde(default = "default_window")]
    contact_rate_window_secs: u64,
    /// `CONTACT_RATE_BUCKET`: the KV bucket counting them.
    #[serde(default = "default_bucket")]
    contact_rate_bucket: String,
}

/// The variables of [`Config`].
const CONFIG: runtime::config::Table = runtime::config::Table {
    title: "Contact form",
    prefix: "",
    vars: &[
        runtime::config::Var::required(
            "CONTACT_SUPPORT_TO",
            "the support inbox (one or more comma-separated addresses)",
        ),
        runtime::config::Var::with_default(
            "CONTACT_RATE_LIMIT",
            "3",
            "forms accepted per sender address per window",
        ),
        runtime::config::Var::with_default(
            "CONTACT_RATE_WINDOW_SECS",
            "600",
            "the rate limit's window",
        ),
        runtime::config::Var::with_default(
            "CONTACT_RATE_BUCKET",
            "jetfn-ratelimit",
            "the KV bucket counting forms per sender",
        ),
    ],
};

impl runtime::config::Settings for Config {
    const TABLE: &'static runtime::config::Table = &CONFIG;
}

fn default_limit() -> u64 {
    3
}
fn default_window() -> u64 {
    600
}
fn default_bucket() -> String {
    "jetfn-ratelimit".to_owned()
}

/// The rate decision kept in the ledger with the form's slot.
const ALLOWED: &str = "allowed";
const LIMITED: &str = "limited";

/// Where the sender's rate is counted: NATS KV in production, so every replica counts together; a counter in the
/// handler tests.
trait Slots: Send + Sync + 'static {
    /// Takes one of `sender`'s slots in the current window; false when they are used up.
    fn take(&self, sender: &str) -> impl Future<Output = Result<bool, JobError>> + Send;
}

impl Slots for RateLimiter {
    fn take(&self, sender: &str) -> impl Future<Output = Result<bool, JobError>> + Send {
        RateLimiter::take(self, sender)
    }
}

struct Context<L = RateLimiter> {
    mailer: Mailer,
    templates: Arc<Templates>,
    support: Vec<Mailbox>,
    limiter: L,
    limit: String,
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
    let telemetry = runtime::telemetry::init("contact")?;
    let config: Config = runtime::config::from_env()?;
    let support = mailer::mailboxes("CONTACT_SUPPORT_TO", &config.contact_support_to)?;
    anyhow::ensure!(!support.is_empty(), "CONTACT_SUPPORT_TO is empty");
    let templates = Templates::new(EMAILS).context("parsing the email templates")?;
    let mailer = Mailer::from_env().context("reading SMTP_* and MAIL_* configuration")?;
    let runtime = Runtime::from_env("contact")
        .await?
        .with_probe(mailer::probe(&mailer));
    let window = Duration::from_secs(config.contact_rate_window_secs);
    let limiter = RateLimiter::bind(
        runtime.jetstream(),
        &config.contact_rate_bucket,
        "contact",
        config.contact_rate_limit,
        window,
    )
    .await?;
    let limit = format!(
        "{} per {} s",
        config.contact_rate_limit, config.contact_rate_window_secs
    );
    let context = Arc::new(Context {
        mailer,
        templates: Arc::new(templates),
        support,
        limiter,
        limit,
    });
    runtime
        .serve(
            move |job| forward_contact(job, context.clone()),
            runtime::shutdown_signal(),
        )
        .await?;
    telemetry.flush();
    Ok(())
}

/// Checks the sender's rate once per event and keeps the decision with it in the ledger: a redelivery or a
/// replay of a form acts on the first decision (a redelivery does not count twice, and a limited form stays
/// limited even after its window passed), then sends the support notification and the acknowledgement, each at
/// most once. A sender over the limit is dead-lettered, visible, never mailed.
#[tracing::instrument(skip_all)]
async fn forward_contact<L: Slots>(
    job: Job<ContactSubmitted>,
    context: Arc<Context<L>>,
) -> Result<(), JobError> {
    let form = &job.event.data;
    let sender = form.email.to_ascii_lowercase();
    let decision = job
        .decide("rate-slot", || async {
            let allowed = context.limiter.take(&sender).await?;
            Ok(if allowed { ALLOWED } else { LIMITED }.to_owned())
        })
        .await?;
    // `None`: the slot was taken by a version that did not record its decision; it mailed then, so it did allow.
    if decision.as_deref() == Some(LIMITED) {
        return Err(JobError::permanent(anyhow::anyhow!(
            "rate_limited: the sender sent more than {} contact forms",
            context.limit
        )));
    }
    let mailer = &context.mailer;
    let reply_to = Mailbox::new(
        Some(form.name.clone()),
        form.email.parse().map_err(JobError::permanent)?,
    );
    let notification =
        render_notification(&context.templates, form).map_err(JobError::permanent)?;
    let mut refused = mailer::Refused::default();
    for support in &context.support {
        let effect = format!(
            "support-email:{}",
            support.email.to_string().to_ascii_lowercase()
        );
        let sent = mailer::send_once(
            &job,
            mailer,
            &effect,
            mailer::Email {
                to: support,
                reply_to: Some(&reply_to),
                rendered: &notification,
                locale: form.locale,
            },
        )
        .await;
        refused.note("support email", support, sent)?;
    }
    if form.send_acknowledgement {
        let acknowledgement =
            render_acknowledgement(&context.templates, form).map_err(JobError::permanent)?;
        let effect = format!("ack-email:{sender}");
        let sent = mailer::send_once(
            &job,
            mailer,
            &effect,
            mailer::Email {
                to: &reply_to,
                reply_to: None,
                rendered: &acknowledgement,
                locale: form.locale,
            },
        )
        .await;
        refused.note("acknowledgement", &reply_to, sent)?;
    }
    refused.into_result()
}

fn render_notification(
    templates: &Templates,
    form: &ContactSubmitted,
) -> Result<Rendered, mailer::RenderError> {
    let context = json!({
        "sender_name": form.name,
        "sender_email": form.email,
        "subject": form.subject,
        "message": form.message,
        "submitted_at": mailer::format::datetime(&form.submitted_at, form.locale),
    });
    templates.render(
        "contact_notification",
        form.locale,
        mailer::Value::from(mailer::Serde(&context)),
    )
}

fn render_acknowledgement(
    templates: &Templates,
    form: &ContactSubmitted,
) -> Result<Rendered, mailer::RenderError> {
    let context = json!({ "name": form.name, "subject": form.subject });
    templates.render(
        "contact_acknowledgement",
        form.locale,
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
            let mut form = ContactSubmitted::example();
            form.locale = locale;
            form.message.push_str("\n<script>alert(1)</script>");
            let notification = render_notification(&templates, &form).unwrap();
            assert!(!notification.html.contains("<script>"));
            mailer::snapshot::assert_snapshot(
                &dir,
                &format!("contact_notification.{}", locale.as_str()),
                &notification,
            );
            let acknowledgement = render_acknowledgement(&templates, &form).unwrap();
            assert!(
                !acknowledgement.text.contains("discounts"),
                "the acknowledgement does not echo the message"
            );
            mailer::snapshot::assert_snapshot(
                &dir,
                &format!("contact_acknowledgement.{}", locale.as_str()),
                &acknowledgement,
            );
        }
    }

    #[test]
    fn every_email_is_well_formed_in_every_locale() {
        let templates = templates();
        let samples = [
            (
                "contact_notification",
                context! {
                    sender_name => INJECTED, sender_email => "ada@example.com", subject => "Bulk order",
                    message => format!("Hello,\n{INJECTED}\n\nRegards"), submitted_at => "25 Nov 2026, 10:05 UTC",
                },
            ),
            (
                "contact_acknowledgement",
                context! { name => INJECTED, subject => "Bulk order" },
            ),
        ];
        for locale in [events::Locale::En, events::Locale::Vi] {
            for (name, ctx) in samples.clone() {
                let at = format!("{name} in {}", locale.as_str());
                let r = templates
                    .render(name, locale, ctx)
                    .unwrap_or_else(|e| panic!("{at}: {e:#}"));
                assert_well_formed(&at, &r, locale, true);
            }
        }
    }
}

/// The handler in process: a test job on an in-memory ledger, the mailer on a stub SMTP server, and the rate
/// limit counted in memory with the KV limiter's rule (at most `limit` forms per sender in the window).
#[cfg(test)]
mod handler_tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    use events::CloudEvent;
    use mailer::testing::{DeathKind, Harness, Reply, Settled};

    /// One window that never ends.
    struct Counter {
        limit: u64,
        taken: Mutex<HashMap<String, u64>>,
    }

    impl Slots for Counter {
        async fn take(&self, sender: &str) -> Result<bool, JobError> {
            let mut taken = self.taken.lock().expect("not poisoned");
            let count = taken.entry(sender.to_owned()).or_default();
            *count += 1;
            Ok(*count <= self.limit)
        }
    }

    /// The handler as `main` wires it, with two support addresses and `limit` forms per sender.
    fn harness(limit: u64) -> Harness<ContactSubmitted> {
        Harness::new(EMAILS, |mailer, templates| {
            let context = Arc::new(Context {
                mailer,
                templates,
                support: ["support@shop.example", "Sales <sales@shop.example>"]
                    .map(|to| to.parse().expect("an address"))
                    .to_vec(),
                limiter: Counter {
                    limit,
                    taken: Mutex::default(),
                },
                limit: format!("{limit} per 600 s"),
            });
            move |job| forward_contact(job, context.clone())
        })
    }

    fn event() -> CloudEvent<ContactSubmitted> {
        CloudEvent::new("test", ContactSubmitted::example())
    }

    // Two support notifications and the acknowledgement. A limit of 1: a redelivery or a retry that took a second
    // slot would be dead-lettered as rate limited.
    mailer::email_contract! {
        harness: || harness(1),
        event: event(),
        emails: 3,
    }

    #[tokio::test]
    async fn notifies_support_with_the_sender_as_reply_to_and_acknowledges() {
        let h = harness(3);
        assert_eq!(h.deliver(&event(), 1).await, Settled::Acked);
        assert_eq!(
            h.smtp.recipients(),
            [
                "support@shop.example",
                "sales@shop.example",
                "grace@example.com"
            ]
        );
        let sent = h.smtp.sent();
        for notification in &sent[..2] {
            assert_eq!(
                notification.header("Reply-To").as_deref(),
                Some("Grace Hopper <grace@example.com>")
            );
        }
        for email in &sent {
            assert_eq!(
                email.header("From").as_deref(),
                Some("jetfn <no-reply@jetfn.local>"),
                "the sender is never the From"
            );
        }
        assert_eq!(sent[2].header("Reply-To"), None);
    }

    #[tokio::test]
    async fn no_acknowledgement_unless_asked() {
        let h = harness(3);
        let mut form = ContactSubmitted::example();
        form.send_acknowledgement = false;
        assert_eq!(
            h.deliver(&CloudEvent::new("test", form), 1).await,
            Settled::Acked
        );
        assert_eq!(
            h.smtp.recipients(),
            ["support@shop.example", "sales@shop.example"]
        );
    }

    #[tokio::test]
    async fn a_sender_over_the_limit_is_dead_lettered_and_never_mailed() {
        let h = harness(1);
        assert_eq!(h.deliver(&event(), 1).await, Settled::Acked);
        h.smtp.clear();
        // More forms from the same sender, whatever the case of the address.
        let over = || {
            let mut form = ContactSubmitted::example();
            form.email = "Grace@Example.com".to_owned();
            CloudEvent::new("test", form)
        };
        let err = h.handle(&over(), 1).await.expect_err("over the limit");
        assert!(err.is_permanent(), "{err:?}");
        assert!(err.to_string().starts_with("rate_limited"), "{err}");
        assert!(
            !err.to_string().contains("race@"),
            "no address in the reason: {err}"
        );
        assert_eq!(
            h.deliver(&over(), 1).await,
            Settled::Dead(DeathKind::Permanent)
        );
        assert_eq!(h.smtp.attempts(), 0);
    }

    /// Issue 14, item 6: the ledger kept that the slot was taken, not that the form was refused, so a redelivery
    /// (or a replay from the DLQ) found the effect done and mailed the limited form.
    #[tokio::test]
    async fn a_limited_form_stays_limited_on_redelivery_and_replay() {
        let h = harness(1);
        assert_eq!(h.deliver(&event(), 1).await, Settled::Acked);
        h.smtp.clear();
        let mut form = ContactSubmitted::example();
        form.email = "grace@example.com".to_owned();
        let limited = CloudEvent::new("test", form);
        assert_eq!(
            h.deliver(&limited, 1).await,
            Settled::Dead(DeathKind::Permanent)
        );
        // A redelivery of the same event, and a replay (a new message, attempt 1 again).
        for attempt in [2, 1] {
            let err = h
                .handle(&limited, attempt)
                .await
                .expect_err("still limited");
            assert!(err.to_string().starts_with("rate_limited"), "{err}");
        }
        assert_eq!(h.smtp.attempts(), 0, "a limited form is never mailed");
    }

    /// A slot taken by a version that kept no decision counts as allowed, as it did then.
    #[tokio::test]
    async fn a_slot_taken_without_a_recorded_decision_is_allowed() {
        let h = harness(1);
        let event = event();
        h.ledger.mark_done(&event.id, "rate-slot");
        assert_eq!(h.deliver(&event, 2).await, Settled::Acked);
        assert_eq!(h.smtp.attempts(), 3);
    }

    #[tokio::test]
    async fn a_4xx_on_the_acknowledgement_is_retried_without_resending_the_notifications() {
        let h = harness(1);
        h.smtp
            .reply(Reply::Accept)
            .reply(Reply::Accept)
            .reply(Reply::Reject(451));
        let event = event();
        assert_eq!(h.deliver(&event, 1).await, Settled::Retry(None));
        assert_eq!(
            h.smtp.recipients(),
            ["support@shop.example", "sales@shop.example"]
        );
        // The retry is within the limit of 1: the slot was taken once, for the event.
        assert_eq!(h.deliver(&event, 2).await, Settled::Acked);
        assert_eq!(
            h.smtp.recipients(),
            [
                "support@shop.example",
                "sales@shop.example",
                "grace@example.com"
            ]
        );
        assert_eq!(h.smtp.attempts(), 4);
    }
}

#[cfg(test)]
mod settings {
    #[test]
    fn the_table_lists_every_setting() {
        runtime::config::check_table::<super::Config>(&[(
            "CONTACT_SUPPORT_TO",
            "support@example.com",
        )]);
    }
}
