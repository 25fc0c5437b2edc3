//! `shipping-notification`: turns `orders.shipped` into an email with the carrier, the tracking number and link,
//! and the estimated delivery date.

use std::sync::Arc;

use events::OrderShipped;
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
    let telemetry = runtime::telemetry::init("shipping-notification")?;
    mailer::serve("shipping-notification", |mailer, templates| {
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

    #[test]
    fn snapshots_in_every_locale() {
        let templates = Templates::new();
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
}
