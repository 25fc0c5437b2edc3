//! A process that cannot do its work says so: readiness follows a consumer deleted and re-created by
//! `jetfn infra apply`, and the indexing process exits when its committer thread dies instead of dead-lettering
//! every event while `/livez` says 200.

use std::time::{Duration, Instant};

use testkit::FunctionProcess;

use crate::support::{System, WAIT, user};
use crate::welcome::http_status;

/// Waits until `path` answers `status`.
async fn wait_status(addr: &str, path: &str, status: u16) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = http_status(addr, path).await;
        if now == status {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} stayed {now}, expected {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn readiness_returns_when_infra_apply_recreates_a_deleted_consumer() {
    let system = System::start().await;
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let _welcome = system
        .spawn("welcome", &[("JOB_HEALTH_ADDR", addr.clone())])
        .await;
    wait_status(&addr, "/readyz", 200).await;

    system
        .js
        .get_stream("EVENTS")
        .await
        .unwrap()
        .delete_consumer("welcome")
        .await
        .unwrap();
    wait_status(&addr, "/readyz", 503).await;
    assert_eq!(
        http_status(&addr, "/livez").await,
        200,
        "alive: it waits for its consumer"
    );

    let dir = testkit::workspace_root().join("infra/nats");
    let apply = FunctionProcess::spawn_with_args(
        "jetfn",
        &["infra", "apply", "--dir", &dir.to_string_lossy()],
        &system.env(),
    );
    assert_eq!(
        apply.wait_exit(WAIT).await.code(),
        Some(0),
        "{}",
        apply.output()
    );
    wait_status(&addr, "/readyz", 200).await;

    system
        .publisher
        .publish(user("back@example.com", "Back"))
        .await
        .unwrap();
    let mails = system.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].rcpt_to, vec!["back@example.com".to_owned()]);
}

/// A panic in the indexing committer thread ends the process (non-zero, so an orchestrator restarts it) instead of
/// leaving it alive with every change failing: nothing is dead-lettered, and the restarted process indexes the
/// event.
#[tokio::test]
async fn a_panicked_index_committer_ends_the_process_and_nothing_is_dead_lettered() {
    let system = System::start().await;
    let dir = crate::support::TempDir::new("index");
    let indexing = system
        .indexing(&dir, &[("INDEX_TEST_PANIC_IN_COMMITTER", "1".to_owned())])
        .await;
    let created = crate::support::message(
        "m-panic",
        "c-1",
        "a lighthouse after a panic",
        time::OffsetDateTime::now_utc() - time::Duration::hours(1),
    );
    system.publisher.publish(created).await.unwrap();
    let status = indexing.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(70), "{}", indexing.output());

    let _restarted = system.indexing(&dir, &[]).await;
    system.indexing_settled().await;
    let answer = system
        .search(serde_json::json!({ "q": "lighthouse", "limit": 10 }))
        .await;
    assert_eq!(answer["total"], 1, "{answer}");
    assert!(system.dlq().await.is_empty(), "nothing was dead-lettered");
}
