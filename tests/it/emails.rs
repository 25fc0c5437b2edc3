//! Every email function end to end: content, retries, permanent failures, duplicates, expiry, rate limits, and an
//! SMTP outage longer than the whole backoff schedule.

use std::time::Duration;

use events::{
    ContactSubmitted, EmailVerificationRequested, Locale, OrderPlaced, OrderShipped, OrderStatus,
    OrderStatusChanged, PasswordResetRequested,
};
use runtime::dlq::DeathKind;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::{STAFF, SUPPORT, System, WAIT, assert_no_address};

/// The HTML part escapes `/` and `&` inside attributes too (`&#x2f;`), which every client decodes.
fn unescape(html: &str) -> String {
    html.replace("&#x2f;", "/")
        .replace("&#x3d;", "=")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

fn in_minutes(minutes: i64) -> String {
    (OffsetDateTime::now_utc() + time::Duration::minutes(minutes))
        .format(&Rfc3339)
        .unwrap()
}

fn order(id: &str, email: &str) -> OrderPlaced {
    let mut order = OrderPlaced::example();
    order.order_id = id.to_owned();
    order.customer.email = email.to_owned();
    order.items[0].name = "Sencha <b>100 g</b>".to_owned();
    order
}

#[tokio::test]
async fn an_order_confirms_to_the_customer_and_notifies_staff() {
    let system = System::start().await;
    let process = system.spawn("order-confirmation", &[]).await;
    let published = system
        .emails()
        .send_order_confirmation(order("o-1", "ada@example.com"))
        .await
        .unwrap();
    assert_eq!(published.subject, "events.orders.placed");

    let mails = system.smtp.wait_for_messages(2, WAIT).await;
    let customer = mails
        .iter()
        .find(|mail| mail.rcpt_to == ["ada@example.com"])
        .expect("the customer's email");
    let staff = mails
        .iter()
        .find(|mail| mail.rcpt_to == [STAFF])
        .expect("the staff notification");
    let subject = customer.header("Subject").unwrap();
    assert!(subject.contains("A-10042"), "{subject}");
    let text = customer.text_part().unwrap();
    for expected in [
        "Sencha <b>100 g</b>",
        "Glazed cup",
        "$12.50",
        "$25.00",
        "$43.00",
        "$51.44",
        "12 St James's Square",
        "SW1Y 4JH",
    ] {
        assert!(
            text.contains(expected),
            "the confirmation lacks {expected}:\n{text}"
        );
    }
    let html = customer.html_part().unwrap();
    assert!(
        html.contains("&lt;b&gt;100 g&lt;&#x2f;b&gt;") || html.contains("&lt;b&gt;100 g&lt;/b&gt;"),
        "{html}"
    );
    assert!(
        html.contains("http://localhost:3000/orders/o-1") || !html.contains("<b>100"),
        "escaped"
    );
    assert!(
        staff.text_part().unwrap().contains("ada@example.com"),
        "staff see who ordered"
    );
    assert!(staff.header("Subject").unwrap().contains("A-10042"));
    system.wait_settled("order-confirmation").await;
    assert_eq!(system.smtp.messages().len(), 2);
    assert_no_address(&process.output(), "ada@example.com");
}

#[tokio::test]
async fn a_failing_staff_email_is_retried_without_resending_the_customer_email() {
    let system = System::start().await;
    let _process = system.spawn("order-confirmation", &[]).await;
    system
        .smtp
        .fail_next_data_to(STAFF, vec![(451, "4.3.0 later"), (451, "4.3.0 later")]);
    system
        .emails()
        .send_order_confirmation(order("o-2", "grace@example.com"))
        .await
        .unwrap();
    system.smtp.wait_for_messages(2, WAIT).await;
    let info = system.wait_settled("order-confirmation").await;
    assert_eq!(
        info.delivered.consumer_sequence, 3,
        "two retries of one event"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mails = system.smtp.messages();
    assert_eq!(
        mails
            .iter()
            .filter(|mail| mail.rcpt_to == ["grace@example.com"])
            .count(),
        1,
        "the customer got exactly one"
    );
    assert_eq!(
        mails.iter().filter(|mail| mail.rcpt_to == [STAFF]).count(),
        1
    );
}

#[tokio::test]
async fn invalid_orders_are_refused_by_the_sdk_and_dead_lettered_when_published_raw() {
    let system = System::start().await;
    let _process = system.spawn("order-confirmation", &[]).await;
    let mut bad = order("o-3", "x@example.com");
    bad.total += 1;
    let refused = system
        .emails()
        .send_order_confirmation(bad.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("/data/total"), "{refused}");
    let mut empty = order("o-4", "x@example.com");
    empty.items.clear();
    let refused = system
        .emails()
        .send_order_confirmation(empty)
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("/data/items"), "{refused}");
    let mut currency = serde_json::to_value(order("o-5", "x@example.com")).unwrap();
    currency["currency"] = "XXX".into();
    let event = serde_json::json!({"specversion":"1.0","id":"o-5","source":"/t","type":"orders.placed","data": currency});
    system.publish_json("events.orders.placed", &event).await;
    let records = system.wait_dlq(1).await;
    assert_eq!(records[0].1.kind, DeathKind::Invalid);
    assert!(
        records[0].1.reason.contains("/data/currency"),
        "{}",
        records[0].1.reason
    );
    assert!(system.smtp.attempts().is_empty());
}

#[tokio::test]
async fn shipping_notifications_carry_the_tracking_link_and_5xx_dead_letters() {
    let system = System::start().await;
    let _process = system.spawn("shipping-notification", &[]).await;
    let mut shipment = OrderShipped::example();
    shipment.customer.email = "lan@example.com".to_owned();
    shipment.locale = Locale::Vi;
    system
        .emails()
        .send_shipping_notification(shipment.clone())
        .await
        .unwrap();
    let mail = &system.smtp.wait_for_messages(1, WAIT).await[0];
    let html = unescape(&mail.html_part().unwrap());
    assert!(
        html.contains("href=\"https://www.dhl.com/track?id=JD014600003828\""),
        "{html}"
    );
    assert!(mail.text_part().unwrap().contains("JD014600003828"));
    assert!(
        mail.text_part().unwrap().contains("28/11/2026"),
        "Vietnamese date format"
    );

    system.smtp.reject_recipients(550, "5.1.1 no such user");
    shipment.tracking_number = "JD2".to_owned();
    system
        .emails()
        .send_shipping_notification(shipment)
        .await
        .unwrap();
    let records = system.wait_dlq(1).await;
    assert_eq!(
        (records[0].1.kind, records[0].1.attempts),
        (DeathKind::Permanent, 1)
    );
}

#[tokio::test]
async fn a_status_update_is_worded_for_the_new_status_and_sent_once() {
    let system = System::start().await;
    let _process = system.spawn("order-status", &[]).await;
    let mut change = OrderStatusChanged::example();
    change.new_status = OrderStatus::Cancelled;
    change.previous_status = OrderStatus::Processing;
    change.customer.email = "mei@example.com".to_owned();
    let first = system
        .emails()
        .send_order_status_update(change.clone())
        .await
        .unwrap();
    let again = system
        .emails()
        .send_order_status_update(change.clone())
        .await
        .unwrap();
    assert!(
        again.duplicate && again.sequence == first.sequence,
        "the SDK's natural id dedupes a repeated call"
    );
    let mail = &system.smtp.wait_for_messages(1, WAIT).await[0];
    let text = mail.text_part().unwrap().to_lowercase();
    assert!(text.contains("cancel"), "{text}");
    change.new_status = OrderStatus::Delivered;
    change.previous_status = OrderStatus::Shipped;
    system
        .emails()
        .send_order_status_update(change)
        .await
        .unwrap();
    let mails = system.smtp.wait_for_messages(2, WAIT).await;
    assert!(
        mails[1]
            .text_part()
            .unwrap()
            .to_lowercase()
            .contains("deliver")
    );
    system.wait_settled("order-status").await;
    assert_eq!(system.smtp.messages().len(), 2);
}

#[tokio::test]
async fn a_password_reset_link_carries_the_token_and_nothing_else_does() {
    let system = System::start().await;
    let process = system.spawn("password-reset", &[]).await;
    let mut request = PasswordResetRequested::example();
    request.expires_at = in_minutes(30);
    request.email = "reset@example.com".to_owned();
    let token = request.token.clone();
    system
        .emails()
        .send_password_reset(request.clone())
        .await
        .unwrap();
    let mail = &system.smtp.wait_for_messages(1, WAIT).await[0];
    let link = format!("https://shop.test/reset?token={token}");
    assert!(
        unescape(&mail.html_part().unwrap()).contains(&link)
            && mail.text_part().unwrap().contains(&link)
    );
    system.wait_settled("password-reset").await;
    assert!(
        !process.output().contains(&token),
        "the token reached the logs"
    );

    // A request that expired while it waited is dropped, not emailed, not dead-lettered.
    let mut expired = serde_json::to_value(&request).unwrap();
    expired["expires_at"] = "2020-01-01T00:00:00Z".into();
    let refused = system
        .emails()
        .send_password_reset(serde_json::from_value(expired.clone()).unwrap())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("/data/expires_at") && !refused.contains(&token),
        "{refused}"
    );
    let event = serde_json::json!({"specversion":"1.0","id":"late-1","source":"/t","type":"users.password_reset_requested","data": expired});
    system
        .publish_json("events.users.password_reset_requested", &event)
        .await;
    process.wait_for_output("expired", WAIT).await;
    system.wait_settled("password-reset").await;
    assert_eq!(system.smtp.messages().len(), 1);
    assert!(system.dlq().await.is_empty());
    assert!(!process.output().contains(&token));
}

#[tokio::test]
async fn a_verification_code_is_emailed_unless_it_expired_while_waiting() {
    let system = System::start().await;
    let process = system.spawn("email-verification", &[]).await;
    let mut request = EmailVerificationRequested::example();
    request.expires_at = in_minutes(10);
    request.email = "verify@example.com".to_owned();
    system
        .emails()
        .send_email_verification(request.clone())
        .await
        .unwrap();
    let mail = &system.smtp.wait_for_messages(1, WAIT).await[0];
    assert!(mail.text_part().unwrap().contains("493027"));
    assert_eq!(
        mail.raw_header("Content-Language")
            .unwrap_or_default()
            .trim(),
        "vi"
    );

    let mut bad = request.clone();
    bad.code = "12a456".to_owned();
    let refused = system
        .emails()
        .send_email_verification(bad)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("/data/code") && !refused.contains("12a456"),
        "{refused}"
    );

    let mut expired = serde_json::to_value(&request).unwrap();
    expired["expires_at"] = "2020-01-01T00:00:00Z".into();
    let event = serde_json::json!({"specversion":"1.0","id":"late-2","source":"/t","type":"users.email_verification_requested","data": expired});
    system
        .publish_json("events.users.email_verification_requested", &event)
        .await;
    process
        .wait_for_output("event dropped without its effect", WAIT)
        .await;
    system.wait_settled("email-verification").await;
    assert_eq!(system.smtp.messages().len(), 1);
    assert!(system.dlq().await.is_empty());
    assert!(
        !process.output().contains("493027"),
        "the code reached the logs"
    );
}

fn contact(email: &str) -> ContactSubmitted {
    let mut form = ContactSubmitted::example();
    form.email = email.to_owned();
    form.submitted_at = in_minutes(0);
    form
}

#[tokio::test]
async fn contact_goes_to_support_with_the_sender_in_reply_to_and_is_rate_limited() {
    let system = System::start().await;
    let process = system
        .spawn("contact", &[("CONTACT_RATE_LIMIT", "2".to_owned())])
        .await;
    let emails = system.emails();
    emails
        .send_contact_form(contact("visitor@example.com"))
        .await
        .unwrap();
    let mails = system.smtp.wait_for_messages(2, WAIT).await;
    let support = mails
        .iter()
        .find(|mail| mail.rcpt_to == [SUPPORT])
        .expect("support is notified");
    assert!(
        support
            .raw_header("Reply-To")
            .unwrap()
            .contains("visitor@example.com")
    );
    assert!(
        !support
            .raw_header("From")
            .unwrap()
            .contains("visitor@example.com"),
        "the sender is never From"
    );
    assert!(
        support
            .text_part()
            .unwrap()
            .contains("discounts for orders of 50 cups")
    );
    let ack = mails
        .iter()
        .find(|mail| mail.rcpt_to == ["visitor@example.com"])
        .expect("the sender is acknowledged");
    assert!(
        !ack.text_part().unwrap().contains("discounts"),
        "the acknowledgement does not echo the message"
    );

    // Header injection is refused before it reaches NATS, and by the function when published raw.
    let mut injected = contact("visitor@example.com");
    injected.subject = "Hi\r\nBcc: victim@evil.test".to_owned();
    let refused = emails
        .send_contact_form(injected.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains("/data/subject"), "{refused}");
    let event = serde_json::json!({"specversion":"1.0","id":"inj-1","source":"/t","type":"contact.submitted","data": injected});
    system
        .publish_json("events.contact.submitted", &event)
        .await;
    let mut oversized = contact("visitor@example.com");
    oversized.message = "x".repeat(5001);
    assert!(
        emails
            .send_contact_form(oversized)
            .await
            .unwrap_err()
            .to_string()
            .contains("/data/message")
    );

    // The limit is 2 per sender per window: the third form from the same sender is dead-lettered, never sent.
    emails
        .send_contact_form(contact("visitor@example.com"))
        .await
        .unwrap();
    emails
        .send_contact_form(contact("VISITOR@example.com"))
        .await
        .unwrap();
    emails
        .send_contact_form(contact("other@example.com"))
        .await
        .unwrap();
    system.wait_settled("contact").await;
    let records = system.wait_dlq(2).await;
    let limited: Vec<_> = records
        .iter()
        .filter(|(_, letter)| letter.reason.contains("rate_limited"))
        .collect();
    assert_eq!(limited.len(), 1, "{records:?}");
    assert!(
        records
            .iter()
            .any(|(_, letter)| letter.kind == DeathKind::Invalid
                && letter.reason.contains("/data/subject"))
    );
    let mails = system.smtp.messages();
    assert_eq!(
        mails
            .iter()
            .filter(|mail| mail.rcpt_to == [SUPPORT])
            .count(),
        3,
        "two from visitor, one from other"
    );
    assert!(mails.iter().all(|mail| mail.header_count("Bcc") == 0));
    assert_no_address(&process.output(), "visitor@example.com");
}

#[tokio::test]
async fn an_smtp_outage_longer_than_the_backoff_schedule_loses_and_dead_letters_nothing() {
    let system = System::start().await;
    let process = system
        .spawn(
            "welcome",
            &[
                ("JOB_BREAKER_THRESHOLD", "2".to_owned()),
                ("JOB_BREAKER_PROBE_SECS", "1".to_owned()),
                ("JOB_BREAKER_PROBE_MAX_SECS", "1".to_owned()),
                ("SMTP_TIMEOUT_SECS", "2".to_owned()),
            ],
        )
        .await;
    system.smtp.go_down();
    // The whole schedule (4 deliveries, 0.4 + 0.8 + 0.8 s apart) is 2 s; the outage lasts 6 s while events arrive.
    let mut sent = Vec::new();
    for i in 0..12 {
        let address = format!("user{i}@example.com");
        system
            .publisher
            .publish(crate::support::user(&address, "Someone"))
            .await
            .unwrap();
        sent.push(address);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    process.wait_for_output("circuit open", WAIT).await;
    assert!(
        system.dlq().await.is_empty(),
        "nothing is dead-lettered during the outage"
    );
    system.smtp.come_up();
    let mails = system.smtp.wait_for_messages(sent.len(), WAIT).await;
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mails_after = system.smtp.messages();
    assert_eq!(mails_after.len(), sent.len(), "every email exactly once");
    for address in &sent {
        assert_eq!(
            mails
                .iter()
                .filter(|mail| mail.rcpt_to == [address.as_str()])
                .count(),
            1,
            "{address}"
        );
    }
    assert!(system.dlq().await.is_empty(), "nothing was dead-lettered");
    process.wait_for_output("circuit closed", WAIT).await;
}

#[tokio::test]
async fn functions_export_metrics_over_otlp() {
    let system = System::start().await;
    let receiver = testkit::OtlpReceiver::start();
    let _process = system
        .spawn(
            "welcome",
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint()),
                ("OTEL_METRIC_EXPORT_INTERVAL", "300".to_owned()),
            ],
        )
        .await;
    crate::telemetry::handle_some_events(&system, 1).await;
    let wanted = [
        "jetfn.events.processed",
        "jetfn.events.retried",
        "jetfn.events.dead_lettered",
        "jetfn.emails.sent",
        "messaging.process.duration",
    ];
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let metrics = receiver.metrics();
        let missing: Vec<_> = wanted
            .iter()
            .filter(|name| {
                !metrics
                    .iter()
                    .any(|metric| metric.name == **name && metric.value >= 1.0)
            })
            .collect();
        if missing.is_empty() {
            assert!(
                metrics
                    .iter()
                    .all(|metric| metric.service_name == "welcome")
            );
            // Seconds need second-sized buckets: the SDK's defaults (0, 5, 10, ... 10000) would put almost every
            // attempt in the first one.
            let duration = metrics
                .iter()
                .find(|metric| metric.name == "messaging.process.duration")
                .unwrap();
            assert_eq!(
                duration.bounds,
                [
                    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                    10.0, 30.0, 60.0, 300.0
                ]
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never arrived: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One event of each email function, built fresh so each call has its own natural id, with the number of emails
/// it sends.
fn sample(function: &str, n: u32) -> (serde_json::Value, &'static str, usize) {
    let email = format!("matrix{n}@example.com");
    match function {
        "order-confirmation" => (
            serde_json::to_value(order(&format!("m-{n}"), &email)).unwrap(),
            "orders.placed",
            2,
        ),
        "shipping-notification" => {
            let mut shipment = OrderShipped::example();
            shipment.customer.email = email;
            shipment.tracking_number = format!("T{n}");
            (serde_json::to_value(shipment).unwrap(), "orders.shipped", 1)
        }
        "order-status" => {
            let mut change = OrderStatusChanged::example();
            change.customer.email = email;
            change.order_id = format!("m-{n}");
            (
                serde_json::to_value(change).unwrap(),
                "orders.status_changed",
                1,
            )
        }
        "password-reset" => {
            let mut request = PasswordResetRequested::example();
            request.email = email;
            request.user_id = format!("u-{n}");
            request.expires_at = in_minutes(30);
            (
                serde_json::to_value(request).unwrap(),
                "users.password_reset_requested",
                1,
            )
        }
        "email-verification" => {
            let mut request = EmailVerificationRequested::example();
            request.email = email;
            request.user_id = format!("u-{n}");
            request.expires_at = in_minutes(30);
            (
                serde_json::to_value(request).unwrap(),
                "users.email_verification_requested",
                1,
            )
        }
        "contact" => (
            serde_json::to_value(contact(&email)).unwrap(),
            "contact.submitted",
            2,
        ),
        other => panic!("no sample for {other}"),
    }
}

fn envelope(ty: &str, id: &str, data: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "specversion": "1.0", "id": id, "source": "/matrix", "type": ty, "datacontenttype": "application/json", "data": data
    }))
    .unwrap()
}

/// Every email function, the same three properties: a 4xx then success sends each email once, a re-publish of
/// the same event (inside and after the duplicate window) sends nothing more, and a 5xx dead-letters at once.
#[tokio::test]
async fn every_email_function_retries_dedupes_and_dead_letters() {
    for function in [
        "order-confirmation",
        "shipping-notification",
        "order-status",
        "password-reset",
        "email-verification",
        "contact",
    ] {
        let system = System::start().await;
        let _process = system.spawn(function, &[]).await;

        let (data, ty, emails) = sample(function, 1);
        let subject = format!("events.{ty}");
        system.smtp.fail_next_data(vec![(451, "4.3.0 later")]);
        let first = system
            .publisher
            .publish_json(&envelope(ty, "evt-1", data.clone()))
            .await
            .unwrap();
        let again = system
            .publisher
            .publish_json(&envelope(ty, "evt-1", data.clone()))
            .await
            .unwrap();
        assert!(
            again.duplicate && again.sequence == first.sequence,
            "{function}: the stream absorbs a re-publish"
        );
        system.smtp.wait_for_messages(emails, WAIT).await;
        system.wait_settled(function).await;
        // After the duplicate window: a new message id, the same event id. The ledger absorbs it.
        system
            .publish_raw(&subject, &envelope(ty, "evt-1", data))
            .await;
        system.wait_settled(function).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            system.smtp.messages().len(),
            emails,
            "{function}: each email exactly once"
        );
        assert!(
            system
                .smtp
                .attempts()
                .iter()
                .any(|attempt| attempt.code == 451),
            "{function}: the 4xx was seen"
        );
        assert!(
            system.dlq().await.is_empty(),
            "{function}: nothing dead-lettered"
        );

        system.smtp.reject_recipients(550, "5.1.1 no such user");
        let (data, ty, _) = sample(function, 2);
        let published = system
            .publisher
            .publish_json(&envelope(ty, "evt-2", data))
            .await
            .unwrap();
        let records = system.wait_dlq(1).await;
        let letter = &records[0].1;
        assert_eq!(
            (letter.kind, letter.attempts, letter.sequence),
            (DeathKind::Permanent, 1, published.sequence),
            "{function}"
        );
        assert!(
            letter.reason.contains("550"),
            "{function}: {}",
            letter.reason
        );
    }
}
