//! `order-confirmation`: turns `orders.placed` into the customer's confirmation and a notification to each
//! configured staff address. Each email is its own ledger effect, so when one fails and is retried the others
//! are not sent twice.

use std::sync::Arc;

use events::{Locale, OrderPlaced};
use lettre::message::Mailbox;
use mailer::format::{datetime, money};
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError};
use serde::Deserialize;
use serde_json::{Value, json};

/// The emails this function sends, from `templates/<locale>/`.
const EMAILS: &[mailer::EmailTemplate] =
    mailer::templates!["order_confirmation", "order_admin_notification"];

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
    templates: Arc<Templates>,
    admins: Vec<Mailbox>,
    config: Config,
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
    let telemetry = runtime::telemetry::init("order-confirmation")?;
    let config: Config = runtime::config::from_env()?;
    let admins = mailer::mailboxes("ORDER_ADMIN_TO", &config.order_admin_to)?;
    if admins.is_empty() {
        tracing::warn!("ORDER_ADMIN_TO is empty: staff will not be notified of orders");
    }
    mailer::serve("order-confirmation", EMAILS, |mailer, templates| {
        let context = Arc::new(Context {
            mailer,
            templates,
            admins,
            config,
        });
        move |job| confirm_order(job, context.clone())
    })
    .await?;
    telemetry.flush();
    Ok(())
}

/// Sends the customer's confirmation and one notification per staff address, each at most once per event.
///
/// Each email is its own effect with its own fate: a permanent refusal (a 5xx) of one does not keep the others from
/// going out, and the dead letter names every refused one (masked). A transient failure stops here and retries:
/// the redelivery skips what was sent, and a downed server would refuse the rest the same way.
#[tracing::instrument(skip_all, fields(order_id = %job.event.data.order_id))]
async fn confirm_order(job: Job<OrderPlaced>, context: Arc<Context>) -> Result<(), JobError> {
    let order = &job.event.data;
    let mailer = &context.mailer;
    let mut refused = mailer::Refused::default();
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
        let sent = mailer::send_once(
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
        .await;
        refused.note("customer email", &to, sent)?;
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
            let sent = mailer::send_once(
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
            .await;
            refused.note("staff email", admin, sent)?;
        }
    }
    refused.into_result()
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
    use mailer::context;
    use mailer::snapshot::{INJECTED, assert_well_formed};

    fn templates() -> Templates {
        Templates::new(EMAILS).expect("the templates parse")
    }

    #[test]
    fn snapshots_in_every_locale() {
        let templates = templates();
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

    fn items() -> mailer::Value {
        mailer::Value::from(vec![
            context! { name => "Notebook", quantity => 2, unit_price => "$12.00", line_total => "$24.00" },
            context! { name => "Pen <i>blue</i>", quantity => 1, unit_price => "$3.50", line_total => "$3.50" },
        ])
    }

    fn sample_address(full: bool) -> mailer::Value {
        context! {
            name => INJECTED,
            line1 => "1 Main Street",
            line2 => full.then_some("Apartment 4"),
            city => "Springfield",
            region => full.then_some("IL"),
            postal_code => "62701",
            country => "US",
        }
    }

    /// The customer's email with a full context (`true`) or every optional field none (`false`).
    fn customer_sample(full: bool) -> mailer::Value {
        context! {
            name => INJECTED, order_number => "A-1001", items => items(),
            subtotal => "$27.50", shipping => "$5.00", tax => "$3.44",
            discount => full.then_some("$2.00"), total => "$33.94", currency => "USD",
            address => sample_address(full), order_url => full.then_some("https://shop.example/orders/A-1001"),
        }
    }

    fn admin_sample(full: bool) -> mailer::Value {
        context! {
            order_number => "A-1001", customer_name => INJECTED, customer_email => "ada@example.com",
            items => items(), item_count => 3, total => "$33.94", currency => "USD",
            address => sample_address(full), placed_at => "25 Nov 2026, 10:05 UTC",
            admin_url => full.then_some("https://admin.example/orders/A-1001"),
        }
    }

    #[test]
    fn every_email_is_well_formed_in_every_locale() {
        let templates = templates();
        for locale in [Locale::En, Locale::Vi] {
            for full in [true, false] {
                for (name, ctx) in [
                    ("order_confirmation", customer_sample(full)),
                    ("order_admin_notification", admin_sample(full)),
                ] {
                    let at = format!("{name} in {} (full: {full})", locale.as_str());
                    let r = templates
                        .render(name, locale, ctx)
                        .unwrap_or_else(|e| panic!("{at}: {e:#}"));
                    assert_well_formed(&at, &r, locale, true);
                }
            }
        }
    }

    #[test]
    fn optional_fields_show_only_when_present() {
        let templates = templates();
        let full = templates
            .render("order_confirmation", Locale::En, customer_sample(true))
            .expect("renders");
        let minimal = templates
            .render("order_confirmation", Locale::En, customer_sample(false))
            .expect("renders");
        for body in [&full.html, &full.text] {
            assert!(
                body.contains("Discount") && body.contains("-$2.00"),
                "{body}"
            );
            assert!(
                body.contains("Apartment 4") && body.contains("Springfield, IL 62701"),
                "{body}"
            );
        }
        assert!(
            full.text
                .contains("View your order: https://shop.example/orders/A-1001"),
            "{}",
            full.text
        );
        for body in [&minimal.html, &minimal.text] {
            assert!(
                !body.contains("Discount") && !body.contains("Apartment"),
                "{body}"
            );
            assert!(body.contains("Springfield 62701"), "{body}");
            assert!(!body.contains("View your order"), "{body}");
        }
    }
}

/// The handler in process: a test job on an in-memory ledger, the mailer on a stub SMTP server.
#[cfg(test)]
mod handler_tests {
    use super::*;
    use events::CloudEvent;
    use mailer::testing::{Harness, Reply, Settled};

    /// The handler as `main` wires it, with `admins` as `ORDER_ADMIN_TO`.
    fn harness(admins: &[&str]) -> Harness<OrderPlaced> {
        let admin_to = admins.join(",");
        let admins: Vec<Mailbox> = admins
            .iter()
            .map(|admin| admin.parse().expect("an address"))
            .collect();
        Harness::new(EMAILS, |mailer, templates| {
            let context = Arc::new(Context {
                mailer,
                templates,
                admins,
                config: Config {
                    order_admin_to: admin_to,
                    order_admin_locale: Locale::Vi,
                    order_url: Some("https://shop.example.com/orders/".to_owned()),
                    order_admin_url: None,
                },
            });
            move |job| confirm_order(job, context.clone())
        })
    }

    fn event() -> CloudEvent<OrderPlaced> {
        CloudEvent::new("test", OrderPlaced::example())
    }

    // The customer's confirmation and one staff notification.
    mailer::email_contract! {
        harness: || harness(&["ops@shop.example"]),
        event: event(),
        emails: 2,
    }

    #[tokio::test]
    async fn sends_the_confirmation_and_one_notification_per_staff_address() {
        let h = harness(&["ops@shop.example", "Boss <boss@shop.example>"]);
        assert_eq!(h.deliver(&event(), 1).await, Settled::Acked);
        assert_eq!(
            h.smtp.recipients(),
            ["ada@example.com", "ops@shop.example", "boss@shop.example"]
        );
        let sent = h.smtp.sent();
        assert_eq!(
            sent[0].header("Content-Language").as_deref(),
            Some("en"),
            "the customer's locale"
        );
        for admin in &sent[1..] {
            assert_eq!(
                admin.header("Content-Language").as_deref(),
                Some("vi"),
                "ORDER_ADMIN_LOCALE"
            );
            assert_ne!(admin.header("Subject"), sent[0].header("Subject"));
        }
        assert_ne!(
            sent[1].header("Message-ID"),
            sent[2].header("Message-ID"),
            "each email is its own effect"
        );
    }

    #[tokio::test]
    async fn the_event_chooses_who_is_told() {
        let admins = ["ops@shop.example"];
        let mut order = OrderPlaced::example();
        order.notify_customer = false;
        let h = harness(&admins);
        assert_eq!(
            h.deliver(&CloudEvent::new("test", order), 1).await,
            Settled::Acked
        );
        assert_eq!(h.smtp.recipients(), ["ops@shop.example"]);

        let mut order = OrderPlaced::example();
        order.notify_admins = false;
        let h = harness(&admins);
        assert_eq!(
            h.deliver(&CloudEvent::new("test", order), 1).await,
            Settled::Acked
        );
        assert_eq!(h.smtp.recipients(), ["ada@example.com"]);

        let h = harness(&[]);
        assert_eq!(h.deliver(&event(), 1).await, Settled::Acked);
        assert_eq!(
            h.smtp.recipients(),
            ["ada@example.com"],
            "no ORDER_ADMIN_TO: no staff email"
        );
    }

    #[tokio::test]
    async fn a_4xx_on_a_staff_email_is_retried_without_resending_the_customer_email() {
        let h = harness(&["ops@shop.example", "boss@shop.example"]);
        h.smtp.reply(Reply::Accept).reply(Reply::Reject(451));
        let event = event();
        assert_eq!(h.deliver(&event, 1).await, Settled::Retry(None));
        assert_eq!(h.smtp.recipients(), ["ada@example.com"]);
        assert_eq!(h.deliver(&event, 2).await, Settled::Acked);
        assert_eq!(
            h.smtp.recipients(),
            ["ada@example.com", "ops@shop.example", "boss@shop.example"]
        );
        assert_eq!(h.smtp.attempts(), 4);
    }

    #[tokio::test]
    async fn a_5xx_for_the_customer_still_notifies_the_staff_and_names_who_was_refused() {
        let admins = ["ops@shop.example", "boss@shop.example"];
        let h = harness(&admins);
        h.smtp.reply(Reply::Reject(550));
        assert_eq!(
            h.deliver(&event(), 1).await,
            Settled::Dead(runtime::dlq::DeathKind::Permanent)
        );
        assert_eq!(h.smtp.recipients(), admins, "each staff address was told");
        assert_eq!(h.smtp.attempts(), 3, "the refused email was tried once");

        let h = harness(&admins);
        h.smtp.reply(Reply::Accept).reply(Reply::Reject(550));
        let err = h.handle(&event(), 1).await.expect_err("one was refused");
        assert!(err.is_permanent());
        let reason = err.to_string();
        assert!(
            reason.contains("staff email to op***@shop.example") && reason.contains("550"),
            "{reason}"
        );
        assert!(!reason.contains("ops@shop.example"), "{reason}");
        assert_eq!(
            h.smtp.recipients(),
            ["ada@example.com", "boss@shop.example"]
        );
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
