//! `shipping-notification`: turns `orders.shipped` into an email with the carrier, the tracking number and link,
//! and the estimated delivery date.

use std::sync::Arc;

use events::OrderShipped;
use lettre::message::Mailbox;
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError};
use serde_json::json;

/// The emails this function sends, from `templates/<locale>/`.
const EMAILS: &[mailer::EmailTemplate] = mailer::templates!["shipping_notification"];

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One thread: the handlers wait on I/O, so a second scheduler thread only adds wake-ups (runtime::threads).
fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(&runtime::binary!(), &mailer::SETTINGS);
    runtime::threads::build(runtime::Threads::One)?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("shipping-notification")?;
    mailer::serve("shipping-notification", EMAILS, |mailer, templates| {
        move |job| notify_shipped(job, mailer.clone(), templates.clone())
    })
    .await?;
    telemetry.flush();
    Ok(())
}

/// Sends the shipping notification once per (event, recipient).
#[tracing::instrument(skip_all, fields(order_id = %job.event.data.order_id))]
async fn notify_shipped(
    job: Job<OrderShipped>,
    mailer: Mailer,
    templates: Arc<Templates>,
) -> Result<(), JobError> {
    let shipment = &job.event.data;
    let rendered = render(&templates, shipment).map_err(JobError::permanent)?;
    let to = Mailbox::new(
        Some(shipment.customer.name.clone()),
        shipment
            .customer
            .email
            .parse()
            .map_err(JobError::permanent)?,
    );
    let effect = format!(
        "shipping-email:{}",
        shipment.customer.email.to_ascii_lowercase()
    );
    mailer::send_once(
        &job,
        &mailer,
        &effect,
        mailer::Email {
            to: &to,
            reply_to: None,
            rendered: &rendered,
            locale: shipment.locale,
        },
    )
    .await
}

fn render(templates: &Templates, shipment: &OrderShipped) -> Result<Rendered, mailer::RenderError> {
    let context = json!({
        "name": shipment.customer.name,
        "order_number": shipment.order_number,
        "carrier": shipment.carrier,
        "tracking_number": shipment.tracking_number,
        "tracking_url": shipment.tracking_url,
        "estimated_delivery": shipment.estimated_delivery.as_deref().map(|date| mailer::format::date(date, shipment.locale)),
    });
    templates.render(
        "shipping_notification",
        shipment.locale,
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
            let mut shipment = OrderShipped::example();
            shipment.locale = locale;
            if locale == events::Locale::Vi {
                shipment.estimated_delivery = None;
            }
            let rendered = render(&templates, &shipment).unwrap();
            mailer::snapshot::assert_snapshot(
                &dir,
                &format!("shipping_notification.{}", locale.as_str()),
                &rendered,
            );
        }
    }

    #[test]
    fn well_formed_in_every_locale() {
        let templates = templates();
        for locale in [events::Locale::En, events::Locale::Vi] {
            for full in [true, false] {
                let ctx = context! {
                    name => INJECTED, order_number => "A-1001", carrier => "UPS",
                    tracking_number => "1Z999AA10123456784",
                    tracking_url => "https://track.example/?n=1Z999AA10123456784&lang=en",
                    estimated_delivery => full.then_some("28 Nov 2026"),
                };
                let at = format!(
                    "shipping_notification in {} (full: {full})",
                    locale.as_str()
                );
                let r = templates
                    .render("shipping_notification", locale, ctx)
                    .unwrap_or_else(|e| panic!("{at}: {e:#}"));
                assert_well_formed(&at, &r, locale, true);
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

    /// The handler as `main` wires it.
    fn harness() -> Harness<OrderShipped> {
        Harness::new(EMAILS, |mailer, templates| {
            move |job| notify_shipped(job, mailer.clone(), templates.clone())
        })
    }

    fn event() -> CloudEvent<OrderShipped> {
        CloudEvent::new("test", OrderShipped::example())
    }

    mailer::email_contract! {
        harness: harness,
        event: event(),
        emails: 1,
    }

    #[tokio::test]
    async fn the_customer_gets_the_tracking_number() {
        let h = harness();
        assert_eq!(h.deliver(&event(), 1).await, Settled::Acked);
        assert_eq!(h.smtp.recipients(), ["ada@example.com"]);
        assert!(
            h.smtp.sent()[0].text().contains("JD014600003828"),
            "the tracking number is in the email"
        );
    }
}
