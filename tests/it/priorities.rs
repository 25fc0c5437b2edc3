//! Priorities (issue 12, item 2): an event published at high is served ahead of a function's backlog, and a low
//! backlog still completes, at least one start in `JOB_PRIORITY_EVERY` while it waits. Positions come from the SMTP
//! server's order of receipt, never from how long anything took. Also pins the server behaviour the design relies
//! on: a consumer filtered on `events.<type>` never sees `events.<type>.high`, and a no-wait fetch answers at once
//! with what the consumer has.

use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{self, pull};
use events::{EmailVerificationRequested, Priority};
use futures::StreamExt as _;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use testkit::FunctionProcess;

use crate::support::{System, WAIT};

const FUNCTION: &str = "email-verification";

fn request(email: &str) -> EmailVerificationRequested {
    let mut request = EmailVerificationRequested::example();
    request.email = email.to_owned();
    request.expires_at = (OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&Rfc3339)
        .unwrap();
    request
}

/// Publishes `count` requests at `priority`, many in flight at once (each still waits for the stream's ack).
async fn publish_many(system: &System, priority: Priority, prefix: &str, count: usize) {
    let publisher = system.publisher.clone().with_priority(priority);
    futures::stream::iter(0..count)
        .map(|i| {
            let publisher = publisher.clone();
            let email = format!("{prefix}{i}@example.com");
            async move { publisher.publish(request(&email)).await.expect("published") }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
}

/// The class of each mail received, in order of receipt, from its recipient's prefix.
fn received_classes(system: &System) -> Vec<char> {
    system
        .smtp
        .messages()
        .iter()
        .map(|mail| mail.rcpt_to[0].chars().next().unwrap_or('?'))
        .collect()
}

/// Sets the function's concurrency: its slots are its main consumer's `max_ack_pending`.
fn with_slots(slots: i64) -> impl FnOnce(&mut provision::Definitions) {
    move |definitions| {
        for (stream, consumer) in &mut definitions.consumers {
            if stream == "EVENTS" && consumer.durable_name.as_deref() == Some(FUNCTION) {
                consumer.max_ack_pending = slots;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_high_event_overtakes_a_backlog_of_5000_low_ones_and_every_low_one_completes() {
    const LOW: usize = 5000;
    const SLOTS: usize = 16;
    let system = System::start_with(with_slots(SLOTS as i64)).await;
    publish_many(&system, Priority::Low, "l", LOW).await;
    let function = system.spawn(FUNCTION, &[]).await;
    assert!(
        function.output().contains("email-verification-high"),
        "the function serves its classes:\n{}",
        function.output()
    );
    // Well into the backlog: the function is busy with low events, SLOTS of them in flight.
    system.smtp.wait_for_messages(200, WAIT).await;
    let before = system.smtp.count();
    system
        .publisher
        .clone()
        .with_priority(Priority::High)
        .publish(request("high@example.com"))
        .await
        .expect("published");
    let deadline = Instant::now() + Duration::from_secs(120);
    let position = loop {
        if let Some(position) = received_classes(&system).iter().position(|c| *c == 'h') {
            break position;
        }
        assert!(Instant::now() < deadline, "the high event was not mailed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Mailed after the lows already received or in flight when it was published (at most SLOTS), and at most one
    // start owed to another class (JOB_PRIORITY_EVERY's turn): never behind the backlog.
    let overtaken_by = position - before;
    eprintln!(
        "high published after {before} lows were mailed; mailed at position {position} ({overtaken_by} lows between)"
    );
    assert!(
        overtaken_by <= SLOTS + 2,
        "the high event waited behind {overtaken_by} low ones (slots {SLOTS})"
    );
    assert!(
        LOW - position > 1000,
        "the backlog was still long when it was served"
    );

    let deadline = Instant::now() + Duration::from_secs(300);
    while system.smtp.count() < LOW + 1 {
        assert!(
            Instant::now() < deadline,
            "{} of {} mailed",
            system.smtp.count(),
            LOW + 1
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let low = system.wait_settled("email-verification-low").await;
    assert_eq!(
        low.delivered.consumer_sequence, LOW as u64,
        "every low event delivered once: none waited into a redelivery"
    );
    assert_eq!(
        system
            .wait_settled("email-verification-high")
            .await
            .delivered
            .consumer_sequence,
        1
    );
    assert_eq!(system.smtp.count(), LOW + 1, "one email per event");
    assert!(system.dlq().await.is_empty(), "no dead letter");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_waiting_low_event_starts_at_least_once_in_every_job_priority_every_starts() {
    const HIGH: usize = 120;
    const LOW: usize = 15;
    const EVERY: usize = 4;
    // One slot: the order of receipt is the order of starts.
    let system = System::start_with(with_slots(1)).await;
    publish_many(&system, Priority::High, "h", HIGH).await;
    publish_many(&system, Priority::Low, "l", LOW).await;
    let _function = system
        .spawn(FUNCTION, &[("JOB_PRIORITY_EVERY", EVERY.to_string())])
        .await;
    system.smtp.wait_for_messages(HIGH + LOW, WAIT * 3).await;
    let classes: String = received_classes(&system).into_iter().collect();
    eprintln!("order of starts: {classes}");
    assert!(classes.starts_with("hhh"), "high goes first: {classes}");
    // While lows wait, never more than EVERY - 1 highs in a row.
    let last_low = classes.rfind('l').expect("lows were mailed");
    for run in classes[..last_low].split('l') {
        assert!(
            run.len() < EVERY,
            "{} highs in a row while lows waited: {classes}",
            run.len()
        );
    }
    assert_eq!(classes.matches('l').count(), LOW);
    assert!(system.dlq().await.is_empty());
}

/// The design's server behaviour: a filter on `events.<type>` does not match the class subjects, and a no-wait
/// fetch of more than a consumer has returns at once with what it has (no wait for the rest).
#[tokio::test(flavor = "multi_thread")]
async fn a_filter_on_the_type_subject_never_sees_a_class_subject_and_a_no_wait_fetch_returns_what_there_is()
 {
    let system = System::start().await;
    let stream = system.js.get_stream("EVENTS").await.unwrap();
    let normal = stream
        .create_consumer(pull::Config {
            durable_name: Some("pin-normal".into()),
            filter_subject: "events.pin.type".into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let high = stream
        .create_consumer(pull::Config {
            durable_name: Some("pin-high".into()),
            filter_subject: "events.pin.type.high".into(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    for subject in [
        "events.pin.type",
        "events.pin.type.high",
        "events.pin.type.high",
        "events.pin.type.low",
    ] {
        system.publish_raw(subject, b"{}").await;
    }
    let fetch = |consumer: consumer::PullConsumer| async move {
        let started = Instant::now();
        let messages: Vec<_> = consumer
            .fetch()
            .max_messages(10)
            .messages()
            .await
            .unwrap()
            .collect()
            .await;
        (messages.len(), started.elapsed())
    };
    let (got, took) = fetch(normal).await;
    assert_eq!(got, 1, "only events.pin.type itself");
    assert!(
        took < Duration::from_secs(5),
        "answered without waiting for 10: {took:?}"
    );
    let (got, _) = fetch(high).await;
    assert_eq!(got, 2);
}

/// A dead letter keeps its class: the record names the class's subject and consumer, and a replay republishes it
/// on that subject, so it is served at the class it was published at.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_keeps_its_class_and_a_replay_publishes_it_there() {
    let system = System::start().await;
    let _function = system.spawn(FUNCTION, &[]).await;
    let high = Priority::High.subject("users.email_verification_requested");
    system.publish_raw(&high, b"not a cloud event").await;
    let records = system.wait_dlq(1).await;
    let (dlq_seq, letter) = &records[0];
    assert_eq!(letter.subject, high);
    assert_eq!(letter.consumer, "email-verification-high");
    system
        .jetfn(&["dlq", "replay", &dlq_seq.to_string(), "--keep"])
        .await;
    system.wait_on(&high, 2, WAIT).await;
}

/// `jetfn publish --priority` at a class no consumer pulls from is refused before anything is stored (the event
/// would wait unseen); a served class is published.
#[tokio::test]
async fn the_cli_refuses_a_class_no_function_serves() {
    let system = System::start().await;
    let refused = FunctionProcess::spawn_with_args(
        "jetfn",
        &[
            "publish",
            "users.registered",
            "--example",
            "--priority",
            "high",
        ],
        &system.env(),
    );
    let status = refused.wait_exit(WAIT).await;
    assert_ne!(status.code(), Some(0), "{}", refused.output());
    let output = refused.output();
    assert!(
        output.contains("no function serves events.users.registered.high")
            && output.contains("order-status"),
        "{output}"
    );
    assert_eq!(system.count_on("events.users.registered.high").await, 0);

    let out = system
        .jetfn(&[
            "publish",
            "orders.status_changed",
            "--example",
            "--priority",
            "high",
        ])
        .await;
    assert!(
        out.contains("subject=events.orders.status_changed.high"),
        "{out}"
    );
}
