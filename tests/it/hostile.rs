//! Hostile input from outside, against the real binaries (issue 14, items 7 and 8): a publisher asking retention
//! to wipe the index and the DLQ, a purge with a cut-off in the future, searches that would make tantivy reserve
//! unbounded memory, and more searches at once than the service allows.

use std::time::Duration;

use events::services::index::{BUSY, MAX_OFFSET};
use events::services::{BAD_REQUEST, ERROR_CODE_HEADER, ERROR_HEADER};
use time::OffsetDateTime;

use crate::support::{System, TempDir, WAIT, message};

fn ago(days: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::days(days)
}

/// A request to the index service: the error code and reason when it refused, else the answer.
async fn ask(
    system: &System,
    subject: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, (u16, String)> {
    let reply = tokio::time::timeout(
        WAIT,
        system
            .client
            .request(subject.to_owned(), serde_json::to_vec(body).unwrap().into()),
    )
    .await
    .expect("the service answers in time")
    .expect("the service answers");
    let header = |name: &str| {
        reply
            .headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
    };
    match header(ERROR_CODE_HEADER) {
        Some(code) => Err((
            code.parse().unwrap(),
            header(ERROR_HEADER).unwrap_or_default(),
        )),
        None => Ok(serde_json::from_slice(&reply.payload).unwrap()),
    }
}

async fn dlq_messages(system: &System) -> u64 {
    let mut dlq = system.js.get_stream("DLQ").await.unwrap();
    dlq.info().await.unwrap().state.messages
}

#[tokio::test]
async fn a_publisher_cannot_make_retention_wipe_the_index_or_the_dlq() {
    let system = System::start().await;
    let dir = TempDir::new("index");
    // The default floors: what an operator ships.
    let _indexing = system.indexing(&dir, &[]).await;
    let _cleanup = system.spawn("cleanup", &[]).await;
    for created in [
        message("h-1", "c-1", "hostile mike", ago(2)),
        message("h-2", "c-1", "hostile mike", ago(0)),
    ] {
        system.publisher.publish(created).await.unwrap();
    }
    system.indexing_settled().await;
    for seq in [1, 2] {
        system
            .publish_raw(&format!("dlq.EVENTS.test.{seq}"), b"kept dead letter")
            .await;
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Both retentions at one second, as the report did: refused whole, the reason naming the fields.
    system
        .publisher
        .publish(events::CleanupRequested {
            index_retention_secs: Some(1),
            dlq_retention_secs: Some(1),
        })
        .await
        .unwrap();
    let records = wait_dlq_records(&system, 3).await;
    let (kind, reason) = &records[2];
    assert_eq!(kind, "permanent");
    assert!(reason.contains("/data/index_retention_secs"), "{reason}");
    assert!(
        reason.contains("CLEANUP_MIN_DLQ_RETENTION_SECS"),
        "{reason}"
    );
    assert_eq!(system.found("mike").await.len(), 2, "the index is intact");
    assert_eq!(system.count_on("events.cleanup.completed").await, 0);

    // A retention over the ceiling (it panicked the date arithmetic): refused by the schema, naming the field.
    system
        .publish_json(
            "events.cleanup.requested",
            &serde_json::json!({
                "specversion": "1.0", "id": "huge-1", "source": "/hostile", "type": "cleanup.requested",
                "data": { "dlq_retention_secs": u64::MAX }
            }),
        )
        .await;
    let records = wait_dlq_records(&system, 4).await;
    assert_eq!(records[3].0, "invalid");
    assert!(
        records[3].1.contains("/data/dlq_retention_secs"),
        "{records:?}"
    );

    // The purge endpoint itself, asked directly: a cut-off in the future, and one inside the floor, are refused.
    for before in [OffsetDateTime::now_utc() + time::Duration::hours(1), ago(1)] {
        let before = before
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let (code, reason) = ask(
            &system,
            events::services::index::PURGE_SUBJECT,
            &serde_json::json!({ "before": before }),
        )
        .await
        .expect_err("refused");
        assert_eq!(code, BAD_REQUEST, "{reason}");
        assert!(reason.starts_with("before: "), "{reason}");
    }
    assert_eq!(system.found("mike").await.len(), 2, "the index is intact");
    assert_eq!(dlq_messages(&system).await, 4, "the DLQ lost nothing");
}

/// (kind, reason) of every record in the DLQ that the runtime or the router wrote, waiting for `count` records in
/// all (the test's own raw records included).
async fn wait_dlq_records(system: &System, count: u64) -> Vec<(String, String)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while dlq_messages(system).await < count {
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} DLQ records, have {}",
            dlq_messages(system).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut dlq = system.js.get_stream("DLQ").await.unwrap();
    let state = dlq.info().await.unwrap().state.clone();
    let mut records = Vec::new();
    for seq in state.first_sequence..=state.last_sequence {
        let record = dlq.get_raw_message(seq).await.unwrap();
        let header = |name: &str| {
            record
                .headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        records.push((header("Jetfn-Dlq-Kind"), header("Jetfn-Dlq-Reason")));
    }
    records
}

#[tokio::test]
async fn searches_out_of_bounds_or_over_the_cap_get_a_clear_error_and_the_process_lives() {
    let system = System::start().await;
    let dir = TempDir::new("index");
    let indexing = system
        .indexing(
            &dir,
            &[
                ("INDEX_MAX_CONCURRENT_SEARCHES", "1".to_owned()),
                ("INDEX_TEST_SEARCH_DELAY_MS", "1500".to_owned()),
            ],
        )
        .await;
    system
        .publish_indexed(message("s-1", "c-1", "bounded november", ago(0)))
        .await;

    // Offsets that aborted the process (10^13: a 160 TB allocation) or answered with a panic's text (2^64-1).
    for (request, field) in [
        (
            serde_json::json!({ "q": "november", "offset": 10_000_000_000_000_u64 }),
            "offset",
        ),
        (
            serde_json::json!({ "q": "november", "offset": u64::MAX }),
            "offset",
        ),
        (
            serde_json::json!({ "q": "november", "offset": MAX_OFFSET + 1 }),
            "offset",
        ),
        (serde_json::json!({ "q": "november", "limit": 0 }), "limit"),
        (
            serde_json::json!({ "q": "november", "limit": u64::MAX }),
            "limit",
        ),
    ] {
        let (code, reason) = ask(&system, "jetfn.index.search", &request)
            .await
            .expect_err("refused");
        assert_eq!(code, BAD_REQUEST, "{request}: {reason}");
        assert!(reason.starts_with(field), "{request}: {reason}");
        assert!(
            !reason.contains("panick") && !reason.contains("overflow"),
            "{reason}"
        );
    }
    // Past the JSON number range of the field: a bad request, not a crash.
    let (code, _) = ask(
        &system,
        "jetfn.index.search",
        &serde_json::json!({ "q": "november", "offset": 1e30 }),
    )
    .await
    .expect_err("refused");
    assert_eq!(code, BAD_REQUEST);

    // Two searches at once with room for one: one is answered, the other is told the service is busy.
    let plain = serde_json::json!({ "q": "november" });
    let (first, second) = tokio::join!(
        ask(&system, "jetfn.index.search", &plain),
        ask(&system, "jetfn.index.search", &plain),
    );
    let (answered, busy) = match (first, second) {
        (Ok(answer), Err(refusal)) | (Err(refusal), Ok(answer)) => (answer, refusal),
        other => panic!("expected one answer and one busy refusal: {other:?}"),
    };
    assert_eq!(answered["total"], 1);
    assert_eq!(busy.0, BUSY, "{busy:?}");
    assert!(busy.1.starts_with("busy"), "{busy:?}");
    // The slot is free again, and the process never fell over.
    let again = ask(
        &system,
        "jetfn.index.search",
        &serde_json::json!({ "q": "november", "offset": MAX_OFFSET }),
    )
    .await
    .expect("answered");
    assert_eq!(again["total"], 1);
    assert!(
        indexing.try_exit_status().is_none(),
        "{}",
        indexing.output()
    );
}
