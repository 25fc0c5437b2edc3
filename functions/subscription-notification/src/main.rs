//! `subscription-notification`: turns `subscription.created`, `subscription.cancelled` and
//! `subscription.status_changed` into the customer's email, in their language.
//!
//! Binds three durable consumers on one connection, one per event type (`subscription-notification-created`,
//! `-cancelled` and `-status-changed` in infra/nats/consumers/EVENTS/), as `indexing` does: the typed runtime
//! decodes one payload type per consumer.
//!
//! **Idempotency.** Each email is sent once per *change*, not per event id: the handler keys the ledger by the
//! payload's own `idempotency_key()` ([`Job::keyed_by`]):
//! - `subscription.created`: the subscription id. A subscription is created once; a second event for it is the
//!   same creation told again.
//! - `subscription.cancelled`: the subscription id and the cancellation's instant. A subscription reactivated and
//!   cancelled again is a new cancellation, and its customer is told again.
//! - `subscription.status_changed`: the subscription id, the transition (`previous_status` and `new_status`) and
//!   the instant of the change. A trial converting, then a payment failing, then the payment going through are
//!   three changes and three emails; the same failure a month later is a fourth (its instant differs).
//!
//! Why not the event id alone, as the other email functions do: a billing system publishing from an outbox, or
//! retrying after a lost ack, may mint a fresh id for the same change, and the stream's duplicate window
//! (`Nats-Msg-Id`, five minutes) and an id-keyed ledger would both let the second copy through, so the customer
//! would get two emails. Why not the subscription id alone (seed 004's `idempotency_key`): every email after the
//! first would be swallowed. Instants are compared as instants (`events::instant_key`), so one change written with
//! two offsets is one change, and the UUID's case is folded. The SDK's event ids derive from the same key, so its
//! publishes also collapse in the duplicate window. The recipient is part of each effect's name, so a corrected
//! address for the same change is a new email, as for every other email function.

use std::sync::Arc;

use anyhow::Context as _;
use events::{
    Event, Locale, SubscriptionCancelled, SubscriptionCreated, SubscriptionStatusChanged,
};
use lettre::message::Mailbox;
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError};
use serde_json::json;

/// The emails this function sends, from `templates/<locale>/`.
const EMAILS: &[mailer::EmailTemplate] = mailer::templates![
    "subscription_created",
    "subscription_cancelled",
    "subscription_status"
];

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One thread: the handlers wait on I/O, so a second scheduler thread only adds wake-ups (runtime::threads).
fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(&runtime::binary!(), &mailer::SETTINGS);
    runtime::threads::build(runtime::Threads::One)?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("subscription-notification")?;
    // `mailer::serve` binds one consumer; this function has three, so it wires the same parts itself.
    let templates = Arc::new(Templates::new(EMAILS).context("parsing the email templates")?);
    let mailer = Mailer::from_env().context("reading SMTP_* and MAIL_* configuration")?;
    let runtime = runtime::Runtime::from_env("subscription-notification")
        .await?
        .with_probe(mailer::probe(&mailer));
    let base = runtime.default_consumer().to_owned();
    let (m1, m2, m3) = (mailer.clone(), mailer.clone(), mailer);
    let (t1, t2, t3) = (templates.clone(), templates.clone(), templates);
    runtime
        .consume(format!("{base}-created"), move |job| {
            on_created(job, m1.clone(), t1.clone())
        })
        .consume(format!("{base}-cancelled"), move |job| {
            on_cancelled(job, m2.clone(), t2.clone())
        })
        .consume(format!("{base}-status-changed"), move |job| {
            on_status_changed(job, m3.clone(), t3.clone())
        })
        .run(runtime::shutdown_signal())
        .await?;
    telemetry.flush();
    Ok(())
}

/// The subscription confirmation, once per subscription.
#[tracing::instrument(skip_all, fields(subscription_id = %job.event.data.subscription_id))]
async fn on_created(
    job: Job<SubscriptionCreated>,
    mailer: Mailer,
    templates: Arc<Templates>,
) -> Result<(), JobError> {
    let key = job.event.data.idempotency_key();
    let job = job.keyed_by(key);
    let created = &job.event.data;
    let rendered = render_created(&templates, created).map_err(JobError::permanent)?;
    send(
        &job,
        &mailer,
        &created.customer,
        created.locale,
        "subscription-created",
        &rendered,
    )
    .await
}

/// The cancellation notice, once per cancellation.
#[tracing::instrument(skip_all, fields(subscription_id = %job.event.data.subscription_id))]
async fn on_cancelled(
    job: Job<SubscriptionCancelled>,
    mailer: Mailer,
    templates: Arc<Templates>,
) -> Result<(), JobError> {
    let key = job.event.data.idempotency_key();
    let job = job.keyed_by(key);
    let cancelled = &job.event.data;
    let rendered = render_cancelled(&templates, cancelled).map_err(JobError::permanent)?;
    send(
        &job,
        &mailer,
        &cancelled.customer,
        cancelled.locale,
        "subscription-cancelled",
        &rendered,
    )
    .await
}

/// The status update, once per change (subscription, transition, instant).
#[tracing::instrument(skip_all, fields(
    subscription_id = %job.event.data.subscription_id,
    new_status = job.event.data.new_status.as_str(),
))]
async fn on_status_changed(
    job: Job<SubscriptionStatusChanged>,
    mailer: Mailer,
    templates: Arc<Templates>,
) -> Result<(), JobError> {
    let key = job.event.data.idempotency_key();
    let job = job.keyed_by(key);
    let change = &job.event.data;
    let rendered = render_status(&templates, change).map_err(JobError::permanent)?;
    send(
        &job,
        &mailer,
        &change.customer,
        change.locale,
        "subscription-status",
        &rendered,
    )
    .await
}

/// Sends `rendered` to the customer through the ledger (`mailer::send_once`: the email once, then `email.sent`, or
/// `email.failed` if the event is dead-lettered). The effect is named after the email and its recipient.
async fn send<T: Event>(
    job: &Job<T>,
    mailer: &Mailer,
    customer: &events::Customer,
    locale: Locale,
    email: &str,
    rendered: &Rendered,
) -> Result<(), JobError> {
    let to = Mailbox::new(
        Some(customer.name.clone()),
        customer.email.parse().map_err(JobError::permanent)?,
    );
    let effect = format!("{email}:{}", customer.email.to_ascii_lowercase());
    mailer::send_once(
        job,
        mailer,
        &effect,
        mailer::Email {
            to: &to,
            reply_to: None,
            rendered,
            locale,
        },
    )
    .await
}

fn render_created(
    templates: &Templates,
    created: &SubscriptionCreated,
) -> Result<Rendered, mailer::RenderError> {
    let context = json!({
        "name": created.customer.name,
        "plan_name": created.plan_name,
        "status": created.status.as_str(),
        "created_at": mailer::format::datetime(&created.created_at, created.locale),
        "trial_end": created.trial_end.as_deref().map(|at| mailer::format::datetime(at, created.locale)),
    });
    templates.render(
        "subscription_created",
        created.locale,
        mailer::Value::from(mailer::Serde(&context)),
    )
}

fn render_cancelled(
    templates: &Templates,
    cancelled: &SubscriptionCancelled,
) -> Result<Rendered, mailer::RenderError> {
    let context = json!({
        "name": cancelled.customer.name,
        "plan_name": cancelled.plan_name,
        "cancelled_at": mailer::format::datetime(&cancelled.cancelled_at, cancelled.locale),
        "effective_until": cancelled.effective_until.as_deref().map(|at| mailer::format::datetime(at, cancelled.locale)),
        "reason": cancelled.reason,
    });
    templates.render(
        "subscription_cancelled",
        cancelled.locale,
        mailer::Value::from(mailer::Serde(&context)),
    )
}

fn render_status(
    templates: &Templates,
    change: &SubscriptionStatusChanged,
) -> Result<Rendered, mailer::RenderError> {
    let context = json!({
        "name": change.customer.name,
        "plan_name": change.plan_name,
        "previous_status": change.previous_status.as_str(),
        "new_status": change.new_status.as_str(),
        "changed_at": mailer::format::datetime(&change.changed_at, change.locale),
        "reason": change.reason,
    });
    templates.render(
        "subscription_status",
        change.locale,
        mailer::Value::from(mailer::Serde(&context)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::SubscriptionStatus;
    use mailer::snapshot::{INJECTED, assert_well_formed};

    fn templates() -> Templates {
        Templates::new(EMAILS).expect("the templates parse")
    }

    const LOCALES: [Locale; 2] = [Locale::En, Locale::Vi];

    #[test]
    fn snapshots_in_every_locale() {
        let templates = templates();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots");
        for locale in LOCALES {
            let mut created = SubscriptionCreated::example();
            created.locale = locale;
            created.customer.name = INJECTED.to_owned();
            let rendered = render_created(&templates, &created).unwrap();
            assert_well_formed(&format!("created {locale:?}"), &rendered, locale, true);
            mailer::snapshot::assert_snapshot(
                &dir,
                &format!("subscription_created.{}", locale.as_str()),
                &rendered,
            );
            let mut cancelled = SubscriptionCancelled::example();
            cancelled.locale = locale;
            cancelled.customer.name = INJECTED.to_owned();
            cancelled.reason = Some("You asked <us> to & we did.".to_owned());
            let rendered = render_cancelled(&templates, &cancelled).unwrap();
            assert_well_formed(&format!("cancelled {locale:?}"), &rendered, locale, true);
            mailer::snapshot::assert_snapshot(
                &dir,
                &format!("subscription_cancelled.{}", locale.as_str()),
                &rendered,
            );
            let mut change = SubscriptionStatusChanged::example();
            change.locale = locale;
            change.customer.name = INJECTED.to_owned();
            change.new_status = SubscriptionStatus::PastDue;
            change.previous_status = SubscriptionStatus::Active;
            change.reason = Some("Your card was declined.".to_owned());
            let rendered = render_status(&templates, &change).unwrap();
            assert_well_formed(&format!("status {locale:?}"), &rendered, locale, true);
            mailer::snapshot::assert_snapshot(
                &dir,
                &format!("subscription_status.{}", locale.as_str()),
                &rendered,
            );
        }
    }

    #[test]
    fn a_trial_is_announced_with_its_end_and_a_plain_start_without() {
        let templates = templates();
        for locale in LOCALES {
            let trial = render_created(
                &templates,
                &SubscriptionCreated {
                    locale,
                    ..SubscriptionCreated::example()
                },
            )
            .unwrap();
            let mut active = SubscriptionCreated {
                locale,
                ..SubscriptionCreated::example()
            };
            active.status = SubscriptionStatus::Active;
            active.trial_end = None;
            let active = render_created(&templates, &active).unwrap();
            let end = mailer::format::datetime("2026-12-09T10:00:00Z", locale);
            assert!(trial.text.contains(&end), "{locale:?}: {}", trial.text);
            assert!(!active.text.contains(&end), "{locale:?}: {}", active.text);
            assert_ne!(trial.subject, active.subject, "{locale:?}");
        }
    }

    #[test]
    fn every_new_status_has_its_own_wording_and_no_wire_name() {
        let templates = templates();
        for locale in LOCALES {
            let mut texts = std::collections::HashSet::new();
            for status in SubscriptionStatus::ALL {
                let mut change = SubscriptionStatusChanged {
                    locale,
                    ..SubscriptionStatusChanged::example()
                };
                change.new_status = status;
                change.previous_status = if status == SubscriptionStatus::Active {
                    SubscriptionStatus::Paused
                } else {
                    SubscriptionStatus::Active
                };
                let r = render_status(&templates, &change).unwrap();
                for body in [&r.subject, &r.text, &r.html] {
                    assert!(!body.contains('_'), "{status:?} {locale:?}: {body}");
                }
                texts.insert(r.text);
            }
            assert_eq!(texts.len(), SubscriptionStatus::ALL.len(), "{locale:?}");
        }
    }
}

/// The handlers in process: test jobs on an in-memory ledger, the mailer on a stub SMTP server.
#[cfg(test)]
mod handler_tests {
    use super::*;
    use events::{CloudEvent, SubscriptionStatus};
    use mailer::testing::{Harness, Settled};

    pub(super) fn created() -> Harness<SubscriptionCreated> {
        Harness::new(EMAILS, |mailer, templates| {
            move |job| on_created(job, mailer.clone(), templates.clone())
        })
    }

    pub(super) fn cancelled() -> Harness<SubscriptionCancelled> {
        Harness::new(EMAILS, |mailer, templates| {
            move |job| on_cancelled(job, mailer.clone(), templates.clone())
        })
    }

    pub(super) fn status() -> Harness<SubscriptionStatusChanged> {
        Harness::new(EMAILS, |mailer, templates| {
            move |job| on_status_changed(job, mailer.clone(), templates.clone())
        })
    }

    mod created_contract {
        use super::*;
        mailer::email_contract! {
            harness: created,
            event: CloudEvent::new("test", SubscriptionCreated::example()),
            emails: 1,
        }
    }

    mod cancelled_contract {
        use super::*;
        mailer::email_contract! {
            harness: cancelled,
            event: CloudEvent::new("test", SubscriptionCancelled::example()),
            emails: 1,
        }
    }

    mod status_contract {
        use super::*;
        mailer::email_contract! {
            harness: status,
            event: CloudEvent::new("test", SubscriptionStatusChanged::example()),
            emails: 1,
        }
    }

    #[tokio::test]
    async fn the_same_change_under_two_event_ids_is_one_email_and_another_change_another() {
        let h = status();
        let change = SubscriptionStatusChanged::example();
        let first = CloudEvent::new("test", change.clone());
        let mut retold = change.clone();
        retold.changed_at = "2026-11-26T17:00:00+07:00".to_owned();
        let retold = CloudEvent::new("test", retold);
        assert_ne!(first.id, retold.id);
        assert_eq!(h.deliver(&first, 1).await, Settled::Acked);
        assert_eq!(h.deliver(&retold, 1).await, Settled::Acked);
        assert_eq!(h.smtp.sent().len(), 1, "one change, one email");
        let mut next = change;
        (next.previous_status, next.new_status) =
            (SubscriptionStatus::Active, SubscriptionStatus::PastDue);
        next.changed_at = "2026-11-27T10:00:00Z".to_owned();
        assert_eq!(
            h.deliver(&CloudEvent::new("test", next), 1).await,
            Settled::Acked
        );
        assert_eq!(h.smtp.sent().len(), 2, "another change, another email");
    }

    #[tokio::test]
    async fn a_second_cancellation_after_a_reactivation_is_told_again() {
        let h = cancelled();
        let first = SubscriptionCancelled::example();
        let mut again = first.clone();
        again.cancelled_at = "2026-11-28T08:00:00Z".to_owned();
        again.effective_until = None;
        for cancellation in [first.clone(), first, again] {
            assert_eq!(
                h.deliver(&CloudEvent::new("test", cancellation), 1).await,
                Settled::Acked
            );
        }
        assert_eq!(h.smtp.sent().len(), 2);
    }
}
