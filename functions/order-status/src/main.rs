//! `order-status`: turns `orders.status_changed` into an email whose wording fits the new status.

use std::sync::Arc;

use events::OrderStatusChanged;
use lettre::message::Mailbox;
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError};
use serde::Deserialize;
use serde_json::json;

/// Settings of this function.
#[derive(Debug, Deserialize)]
struct Config {
    /// `ORDER_URL`: the customer's order page, the order id appended.
    order_url: Option<String>,
}

/// The variables of [`Config`].
const CONFIG: runtime::config::Table = runtime::config::Table {
    title: "Order status",
    prefix: "",
    vars: &[runtime::config::Var::optional(
        "ORDER_URL",
        "the customer's order page, the order id appended; unset: no link",
    )],
};

impl runtime::config::Settings for Config {
    const TABLE: &'static runtime::config::Table = &CONFIG;
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
    let telemetry = runtime::telemetry::init("order-status")?;
    let config: Arc<Config> = Arc::new(runtime::config::from_env()?);
    mailer::serve("order-status", |mailer, templates| {
        move |job| notify_status(job, mailer.clone(), templates.clone(), config.clone())
    })
    .await?;
    telemetry.flush();
    Ok(())
}

/// Sends the status email once per (event, recipient); each status change is its own event.
#[tracing::instrument(skip_all, fields(order_id = %job.event.data.order_id, new_status = job.event.data.new_status.as_str()))]
async fn notify_status(
    job: Job<OrderStatusChanged>,
    mailer: Mailer,
    templates: Arc<Templates>,
    config: Arc<Config>,
) -> Result<(), JobError> {
    let change = &job.event.data;
    let rendered =
        render(&templates, change, config.order_url.as_deref()).map_err(JobError::permanent)?;
    let to = Mailbox::new(
        Some(change.customer.name.clone()),
        change.customer.email.parse().map_err(JobError::permanent)?,
    );
    let effect = format!(
        "status-email:{}",
        change.customer.email.to_ascii_lowercase()
    );
    mailer::send_once(
        &job,
        &mailer,
        &effect,
        mailer::Email {
            to: &to,
            reply_to: None,
            rendered: &rendered,
            locale: change.locale,
        },
    )
    .await
}

fn render(
    templates: &Templates,
    change: &OrderStatusChanged,
    order_url: Option<&str>,
) -> Result<Rendered, mailer::RenderError> {
    let context = json!({
        "name": change.customer.name,
        "order_number": change.order_number,
        "previous_status": change.previous_status.as_str(),
        "new_status": change.new_status.as_str(),
        "note": change.note,
        "order_url": order_url.map(|base| format!("{base}{}", change.order_id)),
    });
    templates.render(
        "order_status",
        change.locale,
        mailer::Value::from(mailer::Serde(&context)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::OrderStatus;

    #[test]
    fn snapshots_in_every_locale_and_wording_for_every_status() {
        let templates = Templates::new();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots");
        let statuses = [
            OrderStatus::Pending,
            OrderStatus::Confirmed,
            OrderStatus::Processing,
            OrderStatus::OnHold,
            OrderStatus::Shipped,
            OrderStatus::Delivered,
            OrderStatus::Cancelled,
            OrderStatus::Refunded,
        ];
        for locale in [events::Locale::En, events::Locale::Vi] {
            let mut change = OrderStatusChanged::example();
            change.locale = locale;
            change.note = Some("Left with the <neighbour> at no. 14".to_owned());
            let rendered = render(
                &templates,
                &change,
                Some("https://shop.example.com/orders/"),
            )
            .unwrap();
            mailer::snapshot::assert_snapshot(
                &dir,
                &format!("order_status.{}", locale.as_str()),
                &rendered,
            );
            let mut texts = std::collections::HashSet::new();
            for status in statuses {
                change.new_status = status;
                change.previous_status = if status == OrderStatus::Pending {
                    OrderStatus::OnHold
                } else {
                    OrderStatus::Pending
                };
                let rendered = render(&templates, &change, None).unwrap();
                texts.insert(rendered.text);
            }
            assert_eq!(
                texts.len(),
                statuses.len(),
                "every status has its own wording in {locale:?}"
            );
        }
    }
}

#[cfg(test)]
mod settings {
    #[test]
    fn the_table_lists_every_setting() {
        runtime::config::check_table::<super::Config>(&[]);
    }
}
