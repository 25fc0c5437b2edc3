//! The indexing function end to end: real nats-server, the real binary, its NATS service and `jetfn search`.

use std::time::Duration;

use time::OffsetDateTime;

use crate::support::{System, TempDir, WAIT, deletion, edit, message};

fn ago(days: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::days(days)
}

#[tokio::test]
async fn indexed_messages_are_found_through_the_service_and_the_cli() {
    let system = System::start().await;
    let dir = TempDir::new("index");
    let _indexing = system.indexing(&dir, &[]).await;
    for created in [
        message(
            "m-1",
            "c-1",
            "the lighthouse keeper lights the lighthouse lamp",
            ago(1),
        ),
        message("m-2", "c-1", "a lighthouse far away", ago(1)),
        message(
            "m-3",
            "c-2",
            "the lighthouse in another conversation",
            ago(1),
        ),
        message("m-4", "c-1", "nothing to see here", ago(1)),
    ] {
        system.publisher.publish(created).await.unwrap();
    }
    system.indexing_settled().await;

    let answer = system
        .search(serde_json::json!({ "q": "lighthouse", "limit": 10 }))
        .await;
    assert_eq!(answer["total"], 3, "{answer}");
    let hits = answer["hits"].as_array().unwrap();
    assert_eq!(
        hits[0]["message_id"], "m-1",
        "the best match ranks first: {answer}"
    );
    let scores: Vec<f64> = hits
        .iter()
        .map(|hit| hit["score"].as_f64().unwrap())
        .collect();
    assert!(
        scores.windows(2).all(|pair| pair[0] >= pair[1]),
        "{scores:?}"
    );

    let in_c1 = system
        .search(serde_json::json!({ "q": "lighthouse", "conversation_id": "c-1", "limit": 10 }))
        .await;
    assert_eq!(in_c1["total"], 2, "{in_c1}");
    let page2 = system
        .search(serde_json::json!({ "q": "lighthouse", "limit": 1, "offset": 1 }))
        .await;
    assert_eq!(page2["total"], 3);
    assert_eq!(page2["hits"].as_array().unwrap().len(), 1);
    assert_eq!(page2["hits"][0]["message_id"], hits[1]["message_id"]);

    // Standard service discovery: PING, INFO (endpoints and subjects) and STATS.
    let client = system.js.client();
    let info = client
        .request("$SRV.INFO.jetfn-index", "".into())
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    let subjects: Vec<&str> = info["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|endpoint| endpoint["subject"].as_str().unwrap())
        .collect();
    assert!(
        subjects.contains(&"jetfn.index.search") && subjects.contains(&"jetfn.index.purge"),
        "{info}"
    );
    let ping = client
        .request("$SRV.PING.jetfn-index", "".into())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&ping.payload).contains("jetfn-index"));
    let stats = client
        .request("$SRV.STATS.jetfn-index", "".into())
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.payload).unwrap();
    let search_stats = stats["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|endpoint| endpoint["subject"] == "jetfn.index.search")
        .unwrap();
    assert!(
        search_stats["num_requests"].as_u64().unwrap() >= 3,
        "{stats}"
    );

    // A bad query is refused with a service error, not a crash.
    let bad = client
        .request(
            "jetfn.index.search",
            r#"{"q":"lighthouse","limit":1000}"#.into(),
        )
        .await
        .unwrap();
    assert_eq!(
        bad.headers
            .as_ref()
            .and_then(|h| h.get("Nats-Service-Error-Code"))
            .map(|v| v.as_str().to_owned()),
        Some("400".to_owned())
    );

    let output = system
        .jetfn(&[
            "search",
            "lighthouse",
            "--conversation",
            "c-1",
            "--limit",
            "5",
        ])
        .await;
    assert!(output.contains("2 matching messages"), "{output}");
    assert!(
        output.contains("m-1") && output.contains("m-2") && !output.contains("m-3"),
        "{output}"
    );
}

#[tokio::test]
async fn updates_and_deletes_in_any_order_keep_the_newest_state() {
    let system = System::start().await;
    let dir = TempDir::new("index");
    let _indexing = system.indexing(&dir, &[]).await;
    let t0 = ago(1);
    let at = |minutes: i64| t0 + time::Duration::minutes(minutes);

    // An old edit after a newer one does not overwrite it.
    let m1 = message("m-1", "c-1", "first draft alpha", t0);
    system.publish_indexed(m1.clone()).await;
    system
        .publish_indexed(edit(&m1, "second draft bravo", at(2)))
        .await;
    system
        .publish_indexed(edit(&m1, "stale draft charlie", at(1)))
        .await;
    assert_eq!(system.found("bravo").await, ["m-1"]);
    assert!(system.found("alpha").await.is_empty());
    assert!(system.found("charlie").await.is_empty());

    // An edit that arrives before its create is kept; the late create does not overwrite it.
    let m2 = message("m-2", "c-1", "original delta", t0);
    system
        .publish_indexed(edit(&m2, "edited echo", at(3)))
        .await;
    system.publish_indexed(m2.clone()).await;
    assert_eq!(system.found("echo").await, ["m-2"]);
    assert!(system.found("delta").await.is_empty());

    // A delete is final: a redelivered create (a new publish of the same data) and a newer edit stay out.
    let m3 = message("m-3", "c-1", "doomed foxtrot", t0);
    system.publish_indexed(m3.clone()).await;
    assert_eq!(system.found("foxtrot").await, ["m-3"]);
    system.publish_indexed(deletion(&m3, at(5))).await;
    assert!(system.found("foxtrot").await.is_empty());
    system.publish_indexed(m3.clone()).await;
    system
        .publish_indexed(edit(&m3, "revived golf", at(9)))
        .await;
    assert!(system.found("foxtrot").await.is_empty());
    assert!(system.found("golf").await.is_empty());

    // A delete before the message was ever seen leaves a tombstone.
    let m4 = message("m-4", "c-1", "never hotel", t0);
    system.publish_indexed(deletion(&m4, at(1))).await;
    system.publish_indexed(m4.clone()).await;
    assert!(system.found("hotel").await.is_empty());

    // The same create published twice (two events, as a retrying producer would) indexes it once.
    let m5 = message("m-5", "c-1", "steady india", t0);
    system.publish_indexed(m5.clone()).await;
    system.publish_indexed(m5).await;
    assert_eq!(system.found("india").await, ["m-5"]);
    assert!(system.dlq().await.is_empty());
}

#[tokio::test]
async fn a_crash_before_the_commit_is_redelivered_and_indexed() {
    let system = System::start_with(|definitions| {
        let created = definitions
            .consumer_mut("EVENTS", "indexing-created")
            .unwrap();
        created.ack_wait = Duration::from_millis(500);
        created.backoff = vec![Duration::from_millis(500)];
    })
    .await;
    let dir = TempDir::new("index");
    let crashing = system
        .indexing(
            &dir,
            &[("INDEX_TEST_DELAY_BEFORE_COMMIT_MS", "60000".to_owned())],
        )
        .await;
    system
        .publisher
        .publish(message("m-1", "c-1", "survives the crash", ago(1)))
        .await
        .unwrap();
    crashing.wait_for_output("commit delayed", WAIT).await;
    crashing.sigkill();
    crashing.wait_exit(WAIT).await;
    let info = system.consumer_info("EVENTS", "indexing-created").await;
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "nothing was acked before the commit: {info:?}"
    );

    let _indexing = system.indexing(&dir, &[]).await;
    let info = system.wait_settled("indexing-created").await;
    assert!(
        info.delivered.consumer_sequence >= 2,
        "it was redelivered: {info:?}"
    );
    assert_eq!(system.found("crash").await, ["m-1"]);
}
