//! Subscription emails (issue 12, item 8) end to end, against a real nats-server, the real
//! `subscription-notification` binary and the testkit's SMTP server: each event type sends its email in English and
//! Vietnamese; one change published twice (even under two event ids) sends one email while another change sends
//! another; an invalid event is refused at publish naming the field and, forced in over plain NATS, dead-lettered
//! at its first delivery with that field in the reason; and the function works as its own NATS user.

use events::{
    Locale, SubscriptionCancelled, SubscriptionCreated, SubscriptionStatus,
    SubscriptionStatusChanged,
};
use runtime::dlq::DeathKind;
use serde_json::{Value, json};

use crate::support::{System, WAIT};

const FUNCTION: &str = "subscription-notification";
const CREATED: &str = "subscription-notification-created";
const CANCELLED: &str = "subscription-notification-cancelled";
const STATUS: &str = "subscription-notification-status-changed";

/// A subscription id of its own per `n`, so each sample is its own subscription.
fn uuid(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn created(n: u32, email: &str, locale: Locale) -> SubscriptionCreated {
    let mut created = SubscriptionCreated::example();
    created.subscription_id = uuid(n);
    created.customer.email = email.to_owned();
    created.locale = locale;
    created
}

fn cancelled(n: u32, email: &str, locale: Locale) -> SubscriptionCancelled {
    let mut cancelled = SubscriptionCancelled::example();
    cancelled.subscription_id = uuid(n);
    cancelled.customer.email = email.to_owned();
    cancelled.locale = locale;
    cancelled.reason = Some("Cancelled at <your> request & confirmed.".to_owned());
    cancelled
}

fn changed(n: u32, email: &str, locale: Locale) -> SubscriptionStatusChanged {
    let mut change = SubscriptionStatusChanged::example();
    change.subscription_id = uuid(n);
    change.customer.email = email.to_owned();
    change.locale = locale;
    (change.previous_status, change.new_status) =
        (SubscriptionStatus::Active, SubscriptionStatus::PastDue);
    change
}

fn envelope(ty: &str, id: &str, data: impl Into<DataValue>) -> Value {
    let data = data.into().0;
    json!({
        "specversion": "1.0", "id": id, "source": "/billing", "type": ty,
        "datacontenttype": "application/json", "data": data
    })
}

/// A payload as JSON, from a typed event or a value already edited.
struct DataValue(Value);

impl From<Value> for DataValue {
    fn from(value: Value) -> Self {
        Self(value)
    }
}

impl From<&SubscriptionCreated> for DataValue {
    fn from(data: &SubscriptionCreated) -> Self {
        Self(serde_json::to_value(data).unwrap())
    }
}

impl From<&SubscriptionStatusChanged> for DataValue {
    fn from(data: &SubscriptionStatusChanged) -> Self {
        Self(serde_json::to_value(data).unwrap())
    }
}

async fn settled(system: &System) {
    for consumer in [CREATED, CANCELLED, STATUS] {
        system.wait_settled(consumer).await;
    }
}

#[tokio::test]
async fn each_subscription_event_sends_its_email_in_english_and_vietnamese() {
    let system = System::start().await;
    let _function = system.spawn(FUNCTION, &[]).await;
    let emails = system.emails();
    emails
        .send_subscription_created(created(1, "created-en@example.com", Locale::En))
        .await
        .unwrap();
    emails
        .send_subscription_created(created(2, "created-vi@example.com", Locale::Vi))
        .await
        .unwrap();
    emails
        .send_subscription_cancelled(cancelled(3, "cancelled-en@example.com", Locale::En))
        .await
        .unwrap();
    emails
        .send_subscription_cancelled(cancelled(4, "cancelled-vi@example.com", Locale::Vi))
        .await
        .unwrap();
    emails
        .send_subscription_status_update(changed(5, "status-en@example.com", Locale::En))
        .await
        .unwrap();
    emails
        .send_subscription_status_update(changed(6, "status-vi@example.com", Locale::Vi))
        .await
        .unwrap();
    let mails = system.smtp.wait_for_messages(6, WAIT).await;
    let mail = |to: &str| {
        mails
            .iter()
            .find(|mail| mail.rcpt_to == [to])
            .unwrap_or_else(|| panic!("no email to {to}"))
    };
    // (recipient, language, subject, what the text says)
    let expected: [(&str, &str, &str, &[&str]); 6] = [
        (
            "created-en@example.com",
            "en",
            "Your Pro (monthly) trial has started",
            &["Thank you for subscribing to Pro (monthly)", "9 Dec 2026"],
        ),
        (
            "created-vi@example.com",
            "vi",
            "Bản dùng thử gói Pro (monthly) đã bắt đầu",
            &["Cảm ơn bạn đã đăng ký gói Pro (monthly)", "09/12/2026"],
        ),
        (
            "cancelled-en@example.com",
            "en",
            "Your Pro (monthly) subscription has been cancelled",
            &[
                "until 25 Dec 2026",
                "Cancelled at <your> request & confirmed.",
            ],
        ),
        (
            "cancelled-vi@example.com",
            "vi",
            "Gói Pro (monthly) của bạn đã bị hủy",
            &["đến 10:00 UTC, 25/12/2026", "Cancelled at <your> request"],
        ),
        (
            "status-en@example.com",
            "en",
            "Your Pro (monthly) subscription: Payment overdue",
            &["Active → Payment overdue", "update your payment method"],
        ),
        (
            "status-vi@example.com",
            "vi",
            "Gói Pro (monthly) của bạn: Quá hạn thanh toán",
            &[
                "Đang hoạt động → Quá hạn thanh toán",
                "cập nhật phương thức thanh toán",
            ],
        ),
    ];
    for (to, language, subject, says) in expected {
        let mail = mail(to);
        assert_eq!(mail.header("Subject").as_deref(), Some(subject), "{to}");
        assert!(
            mail.raw_header("Content-Language")
                .unwrap_or_default()
                .contains(language),
            "{to}"
        );
        let text = mail.text_part().unwrap();
        for said in says {
            assert!(text.contains(said), "{to} lacks {said:?}:\n{text}");
        }
        let html = mail.html_part().unwrap();
        assert!(
            !html.contains("<your>"),
            "{to}: the reason is escaped in HTML"
        );
    }
    settled(&system).await;
    system.wait_on("events.email.sent", 6, WAIT).await;
    assert!(system.dlq().await.is_empty());
}

#[tokio::test]
async fn one_change_published_twice_sends_one_email_and_each_other_change_its_own() {
    let system = System::start().await;
    let function = system.spawn(FUNCTION, &[]).await;
    let emails = system.emails();
    let change = changed(7, "twice@example.com", Locale::En);
    let first = emails
        .send_subscription_status_update(change.clone())
        .await
        .unwrap();
    let again = emails
        .send_subscription_status_update(change.clone())
        .await
        .unwrap();
    assert!(
        again.duplicate && again.sequence == first.sequence,
        "the SDK's id is the change's key, so the stream absorbs a repeated call"
    );
    // The same change from a producer that minted a fresh event id (and wrote the instant in another offset):
    // the stream stores it, the ledger's key (subscription, transition, instant) absorbs it.
    let mut retold = change.clone();
    retold.changed_at = "2026-11-26T17:00:00+07:00".to_owned();
    retold.subscription_id = retold.subscription_id.to_ascii_uppercase();
    system
        .publish_json(
            "events.subscription.status_changed",
            &envelope("subscription.status_changed", "fresh-id-1", &retold),
        )
        .await;
    system.smtp.wait_for_messages(1, WAIT).await;
    system.wait_settled(STATUS).await;
    // Two real changes afterwards: the payment goes through, then fails again a month later.
    let mut recovered = change.clone();
    (recovered.previous_status, recovered.new_status) =
        (SubscriptionStatus::PastDue, SubscriptionStatus::Active);
    recovered.changed_at = "2026-11-27T10:00:00Z".to_owned();
    emails
        .send_subscription_status_update(recovered)
        .await
        .unwrap();
    let mut again_overdue = change;
    again_overdue.changed_at = "2026-11-28T00:00:00Z".to_owned();
    emails
        .send_subscription_status_update(again_overdue)
        .await
        .unwrap();
    // A created event told twice under two ids is one confirmation.
    let created = created(8, "twice@example.com", Locale::En);
    emails
        .send_subscription_created(created.clone())
        .await
        .unwrap();
    system
        .publish_json(
            "events.subscription.created",
            &envelope("subscription.created", "fresh-id-2", &created),
        )
        .await;
    system.smtp.wait_for_messages(4, WAIT).await;
    settled(&system).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let subjects: Vec<String> = system
        .smtp
        .messages()
        .iter()
        .map(|mail| mail.header("Subject").unwrap_or_default())
        .collect();
    assert_eq!(subjects.len(), 4, "{subjects:?}");
    assert!(
        function
            .output()
            .contains("already sent for this event; skipped"),
        "the retold change met the ledger"
    );
    assert!(
        !function.output().contains("twice@example.com"),
        "addresses are masked in the logs"
    );
    assert!(system.dlq().await.is_empty());
}

/// Each invalid sample with the field its refusal must name.
fn invalid_samples() -> Vec<(&'static str, Value, &'static str)> {
    let mut bad_status = serde_json::to_value(changed(9, "bad@example.com", Locale::En)).unwrap();
    bad_status["new_status"] = json!("frozen");
    let mut same = changed(10, "bad@example.com", Locale::En);
    same.new_status = same.previous_status;
    let mut out_of_order = cancelled(11, "bad@example.com", Locale::Vi);
    out_of_order.cancelled_at = "2026-11-24T09:59:59Z".to_owned();
    let mut not_uuid = created(12, "bad@example.com", Locale::En);
    not_uuid.subscription_id = "sub_12".to_owned();
    vec![
        (
            "subscription.status_changed",
            bad_status,
            "/data/new_status",
        ),
        (
            "subscription.status_changed",
            serde_json::to_value(same).unwrap(),
            "/data/new_status",
        ),
        (
            "subscription.cancelled",
            serde_json::to_value(out_of_order).unwrap(),
            "/data/cancelled_at",
        ),
        (
            "subscription.created",
            serde_json::to_value(not_uuid).unwrap(),
            "/data/subscription_id",
        ),
    ]
}

#[tokio::test]
async fn invalid_subscription_events_are_refused_at_publish_and_dead_lettered_over_plain_nats() {
    let system = System::start().await;
    let _function = system.spawn(FUNCTION, &[]).await;
    let samples = invalid_samples();
    let mut sequences = Vec::new();
    for (i, (ty, data, field)) in samples.iter().enumerate() {
        let event = envelope(ty, &format!("bad-{i}"), data.clone());
        let bytes = serde_json::to_vec(&event).unwrap();
        match system.publisher.publish_json(&bytes).await {
            Err(runtime::PublishError::Invalid(invalid)) => assert!(
                invalid.errors.iter().any(|error| error.field == *field),
                "{ty}: the refusal names {field}: {invalid}"
            ),
            other => panic!("{ty}: {field} was not refused: {other:?}"),
        }
        // A client that skips validation.
        let sequence = system.publish_json(&format!("events.{ty}"), &event).await;
        sequences.push((sequence, *ty, *field));
    }
    let records = system.wait_dlq(samples.len()).await;
    for (sequence, ty, field) in sequences {
        let letter = &records
            .iter()
            .find(|(_, letter)| letter.sequence == sequence)
            .unwrap_or_else(|| panic!("{ty}: no dead letter for {field}"))
            .1;
        // `invalid` is the runtime's kind for a validation failure: permanent, never retried.
        assert_eq!(
            (letter.kind, letter.attempts),
            (DeathKind::Invalid, 1),
            "{ty}"
        );
        assert!(
            letter.reason.contains(field),
            "{ty}: {field} in {}",
            letter.reason
        );
        assert!(
            !letter.reason.contains("bad@example.com"),
            "{}",
            letter.reason
        );
    }
    settled(&system).await;
    assert!(
        system.smtp.messages().is_empty(),
        "no email for an invalid event"
    );
}

/// The function binds its three consumers, claims its ledger keys, publishes its outcomes and acks as its own
/// user, with no violation.
#[tokio::test]
async fn subscription_notification_sends_with_its_own_rights_only() {
    let system = crate::permissions::secured_system().await;
    let function = system
        .spawn(FUNCTION, &crate::permissions::as_function(FUNCTION))
        .await;
    let emails = system.emails();
    emails
        .send_subscription_created(created(13, "own@example.com", Locale::En))
        .await
        .unwrap();
    emails
        .send_subscription_cancelled(cancelled(13, "own@example.com", Locale::En))
        .await
        .unwrap();
    emails
        .send_subscription_status_update(changed(14, "own@example.com", Locale::Vi))
        .await
        .unwrap();
    system.smtp.wait_for_messages(3, WAIT).await;
    settled(&system).await;
    system.wait_on("events.email.sent", 3, WAIT).await;
    crate::permissions::assert_no_violation(&system, &function.output(), FUNCTION);
}

/// What every email function does with SMTP replies, here for each of the three consumers' paths: a 4xx is retried
/// and the retry sends once (`email.sent`), a 5xx dead-letters at once (`email.failed`).
#[tokio::test]
async fn a_4xx_is_retried_and_a_5xx_dead_letters_with_email_failed() {
    let system = System::start().await;
    let _function = system.spawn(FUNCTION, &[]).await;
    let emails = system.emails();
    system.smtp.fail_next_data(vec![(451, "4.3.0 later")]);
    emails
        .send_subscription_cancelled(cancelled(15, "later@example.com", Locale::En))
        .await
        .unwrap();
    system.smtp.wait_for_messages(1, WAIT).await;
    system.wait_settled(CANCELLED).await;
    assert!(
        system
            .smtp
            .attempts()
            .iter()
            .any(|attempt| attempt.code == 451),
        "the 4xx was seen"
    );
    system.wait_on("events.email.sent", 1, WAIT).await;

    system.smtp.reject_recipients(550, "5.1.1 no such user");
    emails
        .send_subscription_created(created(16, "gone@example.com", Locale::Vi))
        .await
        .unwrap();
    let records = system.wait_dlq(1).await;
    let letter = &records[0].1;
    assert_eq!(
        (letter.kind, letter.attempts, letter.consumer.as_str()),
        (DeathKind::Permanent, 1, CREATED)
    );
    assert!(
        !letter.reason.contains("gone@example.com"),
        "{}",
        letter.reason
    );
    system.wait_on("events.email.failed", 1, WAIT).await;
    assert_eq!(system.smtp.messages().len(), 1);
}
