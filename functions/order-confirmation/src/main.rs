//! `order-confirmation`: turns `orders.placed` into the customer's confirmation and a notification to each
//! configured staff address. Each email is its own ledger effect, so when one fails and is retried the others
//! are not sent twice.

use std::sync::Arc;

use anyhow::Context as _;
use events::{Locale, OrderPlaced};
use lettre::message::Mailbox;
use mailer::format::{datetime, money};
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError, Runtime};
use serde::Deserialize;
use serde_json::{Value, json};

/// Settings of this function (besides the runtime's `NATS_*`/`JOB_*` and the mailer's `SMTP_*`/`MAIL_*`).
#[derive(Debug, Deserialize)]
struct Config {
    /// `ORDER_ADMIN_TO`: comma-separated staff addresses notified of each order; empty: none.
    #[serde(default)]
    order_admin_to: String,
    /// `ORDER_ADMIN_LOCALE`: the language of staff notifications.
    #[serde(default)]
    order_admin_locale: Locale,
    /// `ORDER_URL`: the customer's order page, the order id appended (e.g. `https://shop.example.com/orders/`).
    order_url: Option<String>,
    /// `ORDER_ADMIN_URL`: the staff's order page, the order id appended.
    order_admin_url: Option<String>,
}

/// The variables of [`Config`].
const CONFIG: runtime::config::Table = runtime::config::Table {
    title: "Orders",
    prefix: "",
    vars: &[
        runtime::config::Var::with_default(
            "ORDER_ADMIN_TO",
            "",
            "comma-separated staff addresses notified of each order; empty: none",
        ),
        runtime::config::Var::with_default(
            "ORDER_ADMIN_LOCALE",
            "en",
            "the language of staff notifications (`en` or `vi`)",
        ),
        runtime::config::Var::optional(
            "ORDER_URL",
            "the customer's order page, the order id appended; unset: no link",
        ),
        runtime::config::Var::optional(
            "ORDER_ADMIN_URL",
            "the staff's order page, the order id appended; unset: no link",
        ),
    ],
};

impl runtime::config::Settings for Config {
    const TABLE: &'static runtime::config::Table = &CONFIG;
}

struct Context {
    mailer: Mailer,
    templates: Templates,
    admins: Vec<Mailbox>,
    config: Config,
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
    let telemetry = runtime::telemetry::init("order-confirmation")?;
    let config: Config = runtime::config::from_env()?;
    let admins = config
        .order_admin_to
        .split(',')
        .map(str::trim)
        .filter(|address| !address.is_empty())
        .map(|address| {
            address.parse::<Mailbox>().with_context(|| {
                format!(
                    "ORDER_ADMIN_TO holds an invalid address: {}",
                    events::pii::mask_email(address)
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if admins.is_empty() {
        tracing::warn!("ORDER_ADMIN_TO is empty: staff will not be notified of orders");
    }
    let mailer = Mailer::from_env().context("reading SMTP_* and MAIL_* configuration")?;
    let context = Arc::new(Context {
        mailer: mailer.clone(),
        templates: Templates::new(),
        admins,
        config,
    });
    let runtime = Runtime::from_env("order-confirmation")
        .await?
        .with_probe(mailer::probe(&mailer));
    runtime
        .serve(
            move |job| confirm_order(job, context.clone()),
            runtime::shutdown_signal(),
        )
        .await?;
    telemetry.flush();
    Ok(())
}

/// Sends the customer's confirmation and one notification per staff address, each at most once per event.
#[tracing::instrument(skip_all, fields(order_id = %job.event.data.order_id))]
async fn confirm_order(job: Job<OrderPlaced>, context: Arc<Context>) -> Result<(), JobError> {
    let order = &job.event.data;
    let mailer = &context.mailer;
    if order.notify_customer {
        let rendered = render_customer(
            &context.templates,
            order,
            context.config.order_url.as_deref(),
        )
        .map_err(JobError::permanent)?;
        let to = Mailbox::new(
            Some(order.customer.name.clone()),
            order.customer.email.parse().map_err(JobError::permanent)?,
        );
        let effect = format!(
            "customer-email:{}",
            order.customer.email.to_ascii_lowercase()
        );
        mailer::send_once(
            &job,
            mailer,
            &effect,
            mailer::Email {
                to: &to,
                reply_to: None,
                rendered: &rendered,
                locale: order.locale,
            },
        )
        .await?;
    }
    if order.notify_admins && !context.admins.is_empty() {
        let locale = context.config.order_admin_locale;
        let rendered = render_admin(
            &context.templates,
            order,
            locale,
            context.config.order_admin_url.as_deref(),
        )
        .map_err(JobError::permanent)?;
        for admin in &context.admins {
            let effect = format!(
                "admin-email:{}",
                admin.email.to_string().to_ascii_lowercase()
            );
            mailer::send_once(
                &job,
                mailer,
                &effect,
                mailer::Email {
                    to: admin,
                    reply_to: None,
                    rendered: &rendered,
                    locale,
                },
            )
            .await?;
        }
    }
    Ok(())
}

fn items(order: &OrderPlaced, locale: Locale) -> Value {
    order
        .items
        .iter()
        .map(|item| {
            json!({
                "name": item.name,
                "quantity": item.quantity,
                "unit_price": money(item.unit_price, order.currency, locale),
                "line_total": money(item.unit_price.saturating_mul(u64::from(item.quantity)), order.currency, locale),
            })
        })
        .collect()
}

fn address(order: &OrderPlaced) -> Value {
    let address = &order.shipping_address;
    json!({
        "name": address.name, "line1": address.line1, "line2": address.line2, "city": address.city,
        "region": address.region, "postal_code": address.postal_code, "country": address.country,
    })
}

fn link(base: Option<&str>, id: &str) -> Option<String> {
    base.map(|base| format!("{base}{id}"))
}

fn render_customer(
    templates: &Templates,
    order: &OrderPlaced,
    order_url: Option<&str>,
) -> Result<Rendered, mailer::RenderError> {
    let locale = order.locale;
    let amount = |value: u64| money(value, order.currency, locale);
    let context = json!({
        "name": order.customer.name,
        "order_number": order.order_number,
        "items": items(order, locale),
        "subtotal": amount(order.subtotal),
        "shipping": amount(order.shipping),
        "tax": amount(order.tax),
        "discount": (order.discount > 0).then(|| amount(order.discount)),
        "total": amount(order.total),
        "currency": order.currency.code(),
        "address": address(order),
        "order_url": link(order_url, &order.order_id),
    });
    templates.render(
        "order_confirmation",
        locale,
        mailer::Value::from(mailer::Serde(&context)),
    )
}

fn render_admin(
    templates: &Templates,
    order: &OrderPlaced,
    locale: Locale,
    admin_url: Option<&str>,
) -> Result<Rendered, mailer::RenderError> {
    let context = json!({
        "order_number": order.order_number,
        "customer_name": order.customer.name,
        "customer_email": order.customer.email,
        "items": items(order, locale),
        "item_count": order.items.iter().map(|item| u64::from(item.quantity)).sum::<u64>(),
        "total": money(order.total, order.currency, locale),
        "currency": order.currency.code(),
        "address": address(order),
        "placed_at": datetime(&order.placed_at, locale),
        "admin_url": link(admin_url, &order.order_id),
    });
    templates.render(
        "order_admin_notification",
        locale,
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
        for locale in [Locale::En, Locale::Vi] {
            let mut order = OrderPlaced::example();
            order.locale = locale;
            if locale == Locale::Vi {
                order.currency = events::Currency::VND;
                order.discount = 344;
                order.total = 4800;
            }
            let customer =
                render_customer(&templates, &order, Some("https://shop.example.com/orders/"))
                    .unwrap();
            mailer::snapshot::assert_snapshot(
                &dir,
                &format!("order_confirmation.{}", locale.as_str()),
                &customer,
            );
            let admin = render_admin(&templates, &order, locale, None).unwrap();
            mailer::snapshot::assert_snapshot(
                &dir,
                &format!("order_admin_notification.{}", locale.as_str()),
                &admin,
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

    #[test]
    fn a_bad_locale_is_named_by_its_variable() {
        let err = runtime::config::from_vars::<super::Config>([(
            "ORDER_ADMIN_LOCALE".to_owned(),
            "fr".to_owned(),
        )])
        .expect_err("not a locale");
        assert_eq!(
            err.to_string(),
            r#"ORDER_ADMIN_LOCALE: expected `en` or `vi`, got "fr""#
        );
    }
}
