//! Schedules NATS holds: `jetfn schedule add/list/cancel` against a real nats-server, fired events landing in
//! EVENTS, time zones, cancellation and restarts.

use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::support::System;

const SUBJECT: &str = "events.messages.created";
const DATA: &str = r#"{"message_id":"m-s","conversation_id":"c-1","sender_id":"u-1","body":"scheduled hello","created_at":"2026-11-25T10:00:00Z"}"#;

/// When the last event on `subject` was stored.
pub(crate) async fn last_stored(system: &System, subject: &str) -> OffsetDateTime {
    let stream = system.js.get_stream("EVENTS").await.unwrap();
    stream
        .get_last_raw_message_by_subject(subject)
        .await
        .expect("an event on the subject")
        .time
}

#[tokio::test]
async fn a_one_off_schedule_fires_at_its_time_and_then_is_gone() {
    let system = System::start().await;
    let at = (OffsetDateTime::now_utc() + time::Duration::seconds(3))
        .replace_nanosecond(0)
        .unwrap();
    let output = system
        .jetfn(&[
            "schedule",
            "add",
            "messages.created",
            "--data",
            DATA,
            "--at",
            &at.format(&Rfc3339).unwrap(),
            "--name",
            "hello",
        ])
        .await;
    assert!(
        output.contains("scheduled messages.created name=hello"),
        "{output}"
    );
    let listed = system.jetfn(&["schedule", "list"]).await;
    assert!(
        listed.contains("hello") && listed.contains("@at "),
        "{listed}"
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(system.count_on(SUBJECT).await, 0, "it fired early");
    system.wait_on(SUBJECT, 1, Duration::from_secs(10)).await;
    let fired = last_stored(&system, SUBJECT).await;
    assert!(
        fired >= at && fired < at + time::Duration::seconds(2),
        "fired at {fired}, due {at}"
    );

    // The event is the one that was scheduled, and a one-off schedule removes itself after firing.
    let stream = system.js.get_stream("EVENTS").await.unwrap();
    let stored = stream
        .get_last_raw_message_by_subject(SUBJECT)
        .await
        .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&stored.payload).unwrap();
    assert_eq!(event["data"]["body"], "scheduled hello");
    let deadline = Instant::now() + Duration::from_secs(5);
    while system.jetfn(&["schedule", "list"]).await.contains("hello") {
        assert!(
            Instant::now() < deadline,
            "the fired one-off schedule is still listed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        system.count_on(SUBJECT).await,
        1,
        "a one-off schedule fires once"
    );
}

#[tokio::test]
async fn a_cron_schedule_fires_in_its_time_zone() {
    let system = System::start().await;
    // Asia/Kolkata is UTC+05:30 all year: a schedule read as UTC would fire hours away from now.
    let kolkata = time::UtcOffset::from_hms(5, 30, 0).unwrap();
    let due = (OffsetDateTime::now_utc() + time::Duration::seconds(4))
        .replace_nanosecond(0)
        .unwrap();
    let local = due.to_offset(kolkata);
    let cron = format!(
        "{} {} {} * * *",
        local.second(),
        local.minute(),
        local.hour()
    );
    let output = system
        .jetfn(&[
            "schedule",
            "add",
            "messages.created",
            "--data",
            DATA,
            "--cron",
            &cron,
            "--tz",
            "Asia/Kolkata",
            "--name",
            "kolkata",
        ])
        .await;
    assert!(output.contains("tz=Asia/Kolkata"), "{output}");
    system.wait_on(SUBJECT, 1, Duration::from_secs(12)).await;
    let fired = last_stored(&system, SUBJECT).await;
    assert!(
        fired >= due && fired < due + time::Duration::seconds(2),
        "fired at {fired}, due {due} ({cron} in Asia/Kolkata)"
    );
    // A daily cron stays until cancelled.
    assert!(
        system
            .jetfn(&["schedule", "list"])
            .await
            .contains("Asia/Kolkata")
    );
    system.jetfn(&["schedule", "cancel", "kolkata"]).await;
}

#[tokio::test]
async fn a_cancelled_schedule_does_not_fire() {
    let system = System::start().await;
    system
        .jetfn(&[
            "schedule",
            "add",
            "messages.created",
            "--data",
            DATA,
            "--in",
            "3s",
            "--name",
            "never",
        ])
        .await;
    // A second schedule of the same name is refused.
    let again = testkit::FunctionProcess::spawn_with_args(
        "jetfn",
        &[
            "schedule",
            "add",
            "messages.created",
            "--data",
            DATA,
            "--in",
            "3s",
            "--name",
            "never",
        ],
        &system.env(),
    );
    assert_ne!(again.wait_exit(crate::support::WAIT).await.code(), Some(0));
    assert!(again.output().contains("exists"), "{}", again.output());
    let cancelled = system.jetfn(&["schedule", "cancel", "never"]).await;
    assert!(cancelled.contains("cancelled never"), "{cancelled}");
    assert!(!system.jetfn(&["schedule", "list"]).await.contains("never"));

    // A recurring one fires until it is cancelled, then stops.
    system
        .jetfn(&[
            "schedule",
            "add",
            "messages.created",
            "--data",
            DATA,
            "--every",
            "1s",
            "--name",
            "ticker",
        ])
        .await;
    system.wait_on(SUBJECT, 2, Duration::from_secs(10)).await;
    system.jetfn(&["schedule", "cancel", "ticker"]).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let settled = system.count_on(SUBJECT).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        system.count_on(SUBJECT).await,
        settled,
        "a cancelled schedule fired"
    );
    // The cancelled one-off never fired either: every event came from the ticker.
    let unknown = testkit::FunctionProcess::spawn_with_args(
        "jetfn",
        &["schedule", "cancel", "never"],
        &system.env(),
    );
    assert_ne!(
        unknown.wait_exit(crate::support::WAIT).await.code(),
        Some(0)
    );
}

#[tokio::test]
async fn schedules_survive_a_server_restart_and_invalid_events_are_refused() {
    let system = System::start().await;
    let refused = testkit::FunctionProcess::spawn_with_args(
        "jetfn",
        &[
            "schedule",
            "add",
            "messages.created",
            "--data",
            r#"{"message_id":"m"}"#,
            "--in",
            "2s",
        ],
        &system.env(),
    );
    assert_ne!(
        refused.wait_exit(crate::support::WAIT).await.code(),
        Some(0)
    );
    assert!(refused.output().contains("/data"), "{}", refused.output());

    system
        .jetfn(&[
            "schedule",
            "add",
            "messages.created",
            "--data",
            DATA,
            "--in",
            "5s",
            "--name",
            "durable",
        ])
        .await;
    system.nats.restart();
    assert!(
        system
            .jetfn(&["schedule", "list"])
            .await
            .contains("durable")
    );
    assert_eq!(system.count_on(SUBJECT).await, 0);
    system.wait_on(SUBJECT, 1, Duration::from_secs(15)).await;
}
