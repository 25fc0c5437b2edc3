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
use runtime::{Effect, Job, JobError, RateLimiter, Runtime};
use serde::Deserialize;
use serde_json::json;

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

struct Context {
    mailer: Mailer,
    templates: Templates,
    support: Vec<Mailbox>,
    limiter: RateLimiter,
    limit: String,
}

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(
        &runtime::binary!(),
        &[
            &CONFIG,
            &runtime::config::NATS,
            &runtime::config::JOB,
            &mailer::MAILER,
            &runtime::config::TELEMETRY,
        ],
    );
    let telemetry = runtime::telemetry::init("contact")?;
    let config: Config = runtime::config::from_env()?;
    let support = config
        .contact_support_to
        .split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(|address| {
            address
                .parse::<Mailbox>()
                .context("CONTACT_SUPPORT_TO holds an invalid address")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!support.is_empty(), "CONTACT_SUPPORT_TO is empty");
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
        templates: Templates::new(),
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

/// Checks the sender's rate (once per event: a redelivery does not count twice), then sends the support
/// notification and the acknowledgement, each at most once. A sender over the limit is dead-lettered, visible and
/// replayable, never mailed.
#[tracing::instrument(skip_all)]
async fn forward_contact(
    job: Job<ContactSubmitted>,
    context: Arc<Context>,
) -> Result<(), JobError> {
    let form = &job.event.data;
    let sender = form.email.to_ascii_lowercase();
    let slot = job
        .once("rate-slot", || async {
            context.limiter.take(&sender).await
        })
        .await?;
    if slot == Effect::Done(false) {
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
    for support in &context.support {
        let effect = format!(
            "support-email:{}",
            support.email.to_string().to_ascii_lowercase()
        );
        mailer::send_once(
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
        .await?;
    }
    if form.send_acknowledgement {
        let acknowledgement =
            render_acknowledgement(&context.templates, form).map_err(JobError::permanent)?;
        let effect = format!("ack-email:{sender}");
        mailer::send_once(
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
        .await?;
    }
    Ok(())
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

    #[test]
    fn snapshots_in_every_locale() {
        let templates = Templates::new();
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
