//! `order-status`: turns `orders.status_changed` into an email whose wording fits the new status.

use std::sync::Arc;

use events::OrderStatusChanged;
use lettre::message::Mailbox;
use mailer::{Mailer, Rendered, Templates};
use runtime::{Job, JobError};
use serde::Deserialize;
use serde_json::json;

/// The emails this function sends, from `templates/<locale>/`.
const EMAILS: &[mailer::EmailTemplate] = mailer::templates!["order_status"];

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

/// One thread: the handlers wait on I/O, so a second scheduler thread only adds wake-ups (runtime::threads).
fn main() -> anyhow::Result<()> {
    runtime::config::answer_args(&runtime::binary!(), &mailer::settings_with(&CONFIG));
    runtime::threads::build(runtime::Threads::One)?.block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let telemetry = runtime::telemetry::init("order-status")?;
    let config: Arc<Config> = Arc::new(runtime::config::from_env()?);
    mailer::serve("order-status", EMAILS, |mailer, templates| {
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
    use mailer::context;
    use mailer::snapshot::{INJECTED, assert_well_formed};

    fn templates() -> Templates {
        Templates::new(EMAILS).expect("the templates parse")
    }
    use events::OrderStatus;

    /// Every status, in a plausible order; each has its own wording.
    pub(super) const EVERY_STATUS: [OrderStatus; 8] = [
        OrderStatus::Pending,
        OrderStatus::Confirmed,
        OrderStatus::Processing,
        OrderStatus::OnHold,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
        OrderStatus::Refunded,
    ];

    #[test]
    fn snapshots_in_every_locale_and_wording_for_every_status() {
        let templates = templates();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots");
        let statuses = EVERY_STATUS;
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

    #[test]
    fn well_formed_in_every_locale() {
        let templates = templates();
        for locale in [events::Locale::En, events::Locale::Vi] {
            for full in [true, false] {
                let ctx = context! {
                    name => INJECTED, order_number => "A-1001", previous_status => "shipped",
                    new_status => "delivered", note => full.then_some("Left at the door.\nThank you!"),
                    order_url => full.then_some("https://shop.example/orders/A-1001"),
                };
                let at = format!("order_status in {} (full: {full})", locale.as_str());
                let r = templates
                    .render("order_status", locale, ctx)
                    .unwrap_or_else(|e| panic!("{at}: {e:#}"));
                assert_well_formed(&at, &r, locale, true);
            }
        }
    }

    #[test]
    fn every_order_status_has_a_label_and_a_sentence() {
        let templates = templates();
        let statuses = [
            "pending",
            "confirmed",
            "processing",
            "on_hold",
            "shipped",
            "delivered",
            "cancelled",
            "refunded",
        ];
        for locale in [events::Locale::En, events::Locale::Vi] {
            let mut sentences = std::collections::BTreeSet::new();
            for (i, &status) in statuses.iter().enumerate() {
                let previous = statuses[(i + 1) % statuses.len()];
                let ctx = context! {
                    name => "Ada", order_number => "A-1001", previous_status => previous, new_status => status,
                    note => None::<&str>, order_url => None::<&str>,
                };
                let r = templates
                    .render("order_status", locale, ctx)
                    .expect("renders");
                let at = format!("{status} in {}", locale.as_str());
                // The wire names never reach the reader, only the labels.
                assert!(!r.subject.contains(status), "{at}: {}", r.subject);
                for body in [&r.subject, &r.html, &r.text] {
                    assert!(!body.contains('_'), "{at}\n{body}");
                }
                assert!(
                    r.subject.starts_with(&format!(
                        "{} A-1001: ",
                        if locale == events::Locale::En {
                            "Order"
                        } else {
                            "Đơn hàng"
                        }
                    )),
                    "{at}: {}",
                    r.subject
                );
                let transition = r
                    .text
                    .lines()
                    .find(|line| line.contains(" → "))
                    .expect("previous → new");
                assert!(
                    transition.ends_with(&format!("{}.", r.subject.rsplit(": ").next().unwrap())),
                    "{at}: {transition}"
                );
                // The sentence is the line after the transition and the blank line.
                let sentence = r
                    .text
                    .lines()
                    .skip_while(|line| !line.contains(" → "))
                    .nth(2)
                    .expect("a sentence");
                assert!(
                    sentence.len() > 10 && !sentence.starts_with("--"),
                    "{at}: {sentence:?}"
                );
                sentences.insert(sentence.to_owned());
            }
            assert_eq!(
                sentences.len(),
                statuses.len(),
                "one distinct sentence per status"
            );
        }
    }
}

/// The handler in process: a test job on an in-memory ledger, the mailer on a stub SMTP server.
#[cfg(test)]
mod handler_tests {
    use super::tests::EVERY_STATUS;
    use super::*;
    use events::{CloudEvent, OrderStatus};
    use mailer::testing::{Harness, Settled};

    /// The handler as `main` wires it, with `ORDER_URL` set.
    fn harness() -> Harness<OrderStatusChanged> {
        let config = Arc::new(Config {
            order_url: Some("https://shop.example.com/orders/".to_owned()),
        });
        Harness::new(EMAILS, |mailer, templates| {
            move |job| notify_status(job, mailer.clone(), templates.clone(), config.clone())
        })
    }

    fn event() -> CloudEvent<OrderStatusChanged> {
        CloudEvent::new("test", OrderStatusChanged::example())
    }

    mailer::email_contract! {
        harness: harness,
        event: event(),
        emails: 1,
    }

    #[tokio::test]
    async fn the_customer_gets_the_order_link() {
        let h = harness();
        assert_eq!(h.deliver(&event(), 1).await, Settled::Acked);
        assert_eq!(h.smtp.recipients(), ["ada@example.com"]);
        assert!(
            h.smtp.sent()[0]
                .text()
                .contains("https://shop.example.com/orders/ord_8f14e45f"),
            "the order link is built from ORDER_URL"
        );
    }

    #[tokio::test]
    async fn every_status_change_is_its_own_email() {
        let h = harness();
        let statuses = EVERY_STATUS;
        let mut previous = OrderStatus::Pending;
        for status in statuses {
            let mut change = OrderStatusChanged::example();
            (change.previous_status, change.new_status) = (previous, status);
            previous = status;
            let event = CloudEvent::new("test", change);
            assert_eq!(h.deliver(&event, 1).await, Settled::Acked, "{status:?}");
        }
        let sent = h.smtp.sent();
        assert_eq!(sent.len(), statuses.len());
        let subjects: std::collections::BTreeSet<_> =
            sent.iter().map(|sent| sent.header("Subject")).collect();
        assert_eq!(subjects.len(), statuses.len(), "one subject per status");
    }
}

#[cfg(test)]
mod settings {
    #[test]
    fn the_table_lists_every_setting() {
        runtime::config::check_table::<super::Config>(&[]);
    }
}
