//! The cleanup function: retention on the index (through the indexing service), the DLQ and the failure journal,
//! triggered by an event and by a schedule NATS holds.

use std::time::Duration;

use time::OffsetDateTime;

use crate::support::{System, TempDir, WAIT, deletion, message};

const COMPLETED: &str = "events.cleanup.completed";

fn ago(days: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::days(days)
}

/// Every `cleanup.completed` event's data, in stream order.
async fn completions(system: &System) -> Vec<serde_json::Value> {
    let stream = system.js.get_stream("EVENTS").await.unwrap();
    let mut found = Vec::new();
    let last = stream.clone().info().await.unwrap().state.last_sequence;
    for seq in 1..=last {
        if let Some(message) = crate::support::stored_message(&stream, seq).await
            && message.subject.as_str() == COMPLETED
        {
            let event: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
            found.push(event["data"].clone());
        }
    }
    found
}

async fn wait_completions(system: &System, count: usize) -> Vec<serde_json::Value> {
    system.wait_on(COMPLETED, count, WAIT).await;
    completions(system).await
}

/// The cleanup function's floors, lowered by its operator so a test can ask for a short retention.
fn short_floors() -> Vec<(&'static str, String)> {
    vec![
        ("CLEANUP_MIN_INDEX_RETENTION_SECS", "86400".to_owned()),
        ("CLEANUP_MIN_DLQ_RETENTION_SECS", "1".to_owned()),
    ]
}

/// The indexing function's purge floor, lowered to a day.
fn short_index_floor() -> Vec<(&'static str, String)> {
    vec![("INDEX_MIN_RETENTION_SECS", "86400".to_owned())]
}

async fn dlq_messages(system: &System) -> u64 {
    let mut dlq = system.js.get_stream("DLQ").await.unwrap();
    dlq.info().await.unwrap().state.messages
}

#[tokio::test]
async fn cleanup_removes_exactly_what_is_past_retention() {
    let system = System::start().await;
    let dir = TempDir::new("index");
    // The operator allows retentions this short (a day for the index, a second for the DLQ); the defaults do not.
    let _indexing = system.indexing(&dir, &short_index_floor()).await;
    let cleanup = system.spawn("cleanup", &short_floors()).await;

    // Index: two messages and a tombstone past a 5-day retention, two messages inside it.
    let old_tombstone = message("old-3", "c-1", "retention kilo", ago(10));
    for created in [
        message("old-1", "c-1", "retention lima", ago(10)),
        message("old-2", "c-1", "retention lima", ago(6)),
        old_tombstone.clone(),
        message("new-1", "c-1", "retention lima", ago(4)),
        message("new-2", "c-1", "retention lima", ago(1)),
    ] {
        system.publisher.publish(created).await.unwrap();
    }
    system.indexing_settled().await;
    system
        .publish_indexed(deletion(&old_tombstone, ago(1)))
        .await;
    assert_eq!(system.found("lima").await.len(), 4);

    // DLQ: two records stored 3 s before the run, one just before it; retention 2 s.
    for seq in [1, 2] {
        system
            .publish_raw(&format!("dlq.EVENTS.test.{seq}"), b"old dead letter")
            .await;
    }
    // Failure journal: one record whose message has left EVENTS (sequence 0 never exists), one whose has not.
    let journal = system.js.get_key_value("jetfn-failures").await.unwrap();
    journal.put("EVENTS.welcome.0", "{}".into()).await.unwrap();
    journal
        .put("EVENTS.welcome.999999", "{}".into())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    system
        .publish_raw("dlq.EVENTS.test.3", b"new dead letter")
        .await;
    assert_eq!(dlq_messages(&system).await, 3);

    let request = events::CleanupRequested {
        index_retention_secs: Some(5 * 24 * 3600),
        dlq_retention_secs: Some(2),
    };
    let published = system.publisher.publish(request.clone()).await.unwrap();
    let done = wait_completions(&system, 1).await;
    assert_eq!(done[0]["request_id"], published.id.as_str());
    assert_eq!(done[0]["index_removed"], 3, "{}", done[0]);
    assert_eq!(done[0]["dlq_removed"], 2, "{}", done[0]);
    assert_eq!(done[0]["journal_removed"], 1, "{}", done[0]);

    let mut left = system.found("lima").await;
    left.sort();
    assert_eq!(left, ["new-1", "new-2"]);
    assert_eq!(dlq_messages(&system).await, 1);
    let mut dlq = system.js.get_stream("DLQ").await.unwrap();
    let first = dlq.info().await.unwrap().state.first_sequence;
    assert_eq!(
        dlq.get_raw_message(first).await.unwrap().payload.as_ref(),
        b"new dead letter"
    );
    assert!(journal.get("EVENTS.welcome.0").await.unwrap().is_none());
    assert!(
        journal
            .get("EVENTS.welcome.999999")
            .await
            .unwrap()
            .is_some()
    );
    cleanup.wait_for_output("cleanup completed", WAIT).await;

    // A late redelivery of a purged message does not bring it back, and is not lost either: it is dead-lettered.
    let late = system
        .publish_indexed(message("old-1", "c-1", "retention lima", ago(10)))
        .await;
    assert_eq!(system.found("lima").await.len(), 2);
    assert_eq!(dlq_messages(&system).await, 2);
    let last = dlq.info().await.unwrap().state.last_sequence;
    let record = dlq.get_raw_message(last).await.unwrap();
    let header = |name: &str| record.headers.get(name).map(|v| v.as_str().to_owned());
    assert_eq!(
        header("Jetfn-Dlq-Consumer").as_deref(),
        Some("indexing-created")
    );
    assert_eq!(header("Jetfn-Dlq-Kind").as_deref(), Some("permanent"));
    assert!(
        header("Jetfn-Dlq-Reason")
            .unwrap_or_default()
            .contains("retention cut-off"),
        "{:?}",
        record.headers
    );
    let original: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
    assert_eq!(original["id"], late.id.as_str());

    // Two runs at once, with the same retention: nothing more is removed, and nothing breaks.
    system.publisher.publish(request.clone()).await.unwrap();
    system.publisher.publish(request).await.unwrap();
    let done = wait_completions(&system, 3).await;
    for run in &done[1..] {
        assert_eq!(
            (
                &run["index_removed"],
                &run["dlq_removed"],
                &run["journal_removed"]
            ),
            (
                &serde_json::json!(0),
                &serde_json::json!(0),
                &serde_json::json!(0)
            ),
            "{run}"
        );
    }
    assert_eq!(system.found("lima").await.len(), 2);
    assert_eq!(dlq_messages(&system).await, 2);
    let info = system.wait_settled("cleanup").await;
    assert_eq!(
        info.delivered.consumer_sequence, 3,
        "each run succeeded at its first attempt"
    );
}

#[tokio::test]
async fn a_recurring_schedule_runs_cleanup_with_no_scheduler_process() {
    let system = System::start().await;
    let dir = TempDir::new("index");
    let _indexing = system.indexing(&dir, &short_index_floor()).await;
    let _cleanup = system.spawn("cleanup", &short_floors()).await;
    system
        .jetfn(&[
            "schedule",
            "add",
            "cleanup.requested",
            "--data",
            r#"{"index_retention_secs":86400}"#,
            "--every",
            "1s",
            "--name",
            "cleanup-test",
        ])
        .await;
    let done = wait_completions(&system, 2).await;
    system.jetfn(&["schedule", "cancel", "cleanup-test"]).await;
    // Each firing is its own run: the stored event is the same, the runtime gives each firing its own id.
    assert_ne!(done[0]["request_id"], done[1]["request_id"], "{done:?}");
}

/// S30: cleanup SIGKILLed after its deletes and its completion, before its ack. The redelivered request deletes
/// nothing more (what is gone counts as done), publishes no second completion, and dead-letters nothing.
#[tokio::test]
async fn a_cleanup_killed_between_its_deletes_and_its_ack_deletes_nothing_twice() {
    let system = System::start().await;
    let dir = TempDir::new("index");
    let _indexing = system.indexing(&dir, &short_index_floor()).await;
    let mut env = short_floors();
    env.push(("JOB_TEST_DELAY_BEFORE_ACK_MS", "60000".to_owned()));
    let doomed = system.spawn("cleanup", &env).await;

    for created in [
        message("gone-1", "c-2", "retention mike", ago(10)),
        message("kept-1", "c-2", "retention mike", ago(1)),
    ] {
        system.publisher.publish(created).await.unwrap();
    }
    system.indexing_settled().await;
    system
        .publish_raw("dlq.EVENTS.test.30", b"old dead letter")
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let request = events::CleanupRequested {
        index_retention_secs: Some(5 * 24 * 3600),
        dlq_retention_secs: Some(1),
    };
    system.publisher.publish(request).await.unwrap();
    doomed
        .wait_for_output("cleanup.completed published", WAIT)
        .await;
    doomed.sigkill();
    assert_eq!(system.found("mike").await, ["kept-1"]);
    assert_eq!(dlq_messages(&system).await, 0);

    let cleanup = system.spawn("cleanup", &short_floors()).await;
    cleanup
        .wait_for_output("cleanup.completed was already published", WAIT)
        .await;
    let info = system.wait_settled("cleanup").await;
    assert_eq!(
        info.delivered.consumer_sequence, 2,
        "the request was delivered again after the kill, once"
    );
    let done = completions(&system).await;
    assert_eq!(done.len(), 1, "one completion for one request: {done:?}");
    assert_eq!(done[0]["index_removed"], 1, "{}", done[0]);
    assert_eq!(done[0]["dlq_removed"], 1, "{}", done[0]);
    assert_eq!(system.found("mike").await, ["kept-1"]);
    assert_eq!(
        dlq_messages(&system).await,
        0,
        "the redelivered run dead-lettered nothing"
    );
}
