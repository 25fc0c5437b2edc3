//! Batches where no function answers for an item (the dlq-router counts it), and a submission of several atomic
//! chunks, against a real nats-server and the real welcome and dlq-router binaries.

use std::time::{Duration, Instant};

use events::batches::BatchState;
use publish::batch::ATOMIC_CHUNK;

use crate::batches::{COMPLETED, completion, items, status, wait_complete};
use crate::support::{System, WAIT};

#[tokio::test]
async fn batch_items_no_delivery_answered_are_counted_failed_by_the_router_and_complete_once() {
    let system = System::start_with(|definitions| {
        crate::router::fast(definitions);
        let events = definitions
            .streams
            .iter_mut()
            .find(|stream| stream.name == "EVENTS")
            .unwrap();
        events.duplicate_window = Duration::from_secs(1);
    })
    .await;
    let crashing = crate::router::silent(&system, "welcome");
    let _router = system.spawn("dlq-router", &[]).await;
    system
        .publisher
        .submit_batch("dead", "users.registered", &items("dead", 2))
        .await
        .unwrap();
    let status = wait_complete(&system, "dead", WAIT).await;
    assert_eq!(
        (
            status.total,
            status.succeeded,
            status.failed,
            status.cancelled
        ),
        (2, 0, 2, 0)
    );
    let records = system.wait_dlq(2).await;
    assert!(
        records
            .iter()
            .all(|(_, letter)| letter.writer == "router" && letter.payload_lost.is_none()),
        "{records:?}"
    );
    let completed = completion(&system).await;
    assert_eq!(completed.id, "batch-completed:dead");
    assert_eq!(completed.source, "/dlq-router");
    assert_eq!((completed.data.total, completed.data.failed), (2, 2));
    assert!(crashing.await.unwrap() >= 6, "three deliveries per item");

    // Outside the duplicate window, the function answers the replayed items: sent, not counted again, and the
    // finishing item's replay finds the completion claimed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let welcome = system.welcome().await;
    system.jetfn(&["dlq", "replay", "--all"]).await;
    let deadline = Instant::now() + WAIT;
    while system.smtp.messages().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the replayed items were not sent"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = self::status(&system, "dead").await;
    assert_eq!((status.succeeded, status.failed), (0, 2), "counted once");
    assert_eq!(system.count_on(COMPLETED).await, 1, "one batch.completed");
    drop(welcome);
}

/// More items than one atomic publish carries: several chunks, one record opened once, every item counted and
/// one completion.
#[tokio::test]
async fn a_batch_of_several_atomic_chunks_is_accepted_whole_and_completes_once() {
    let system = System::start().await;
    // Two chunks (a full one and a part), so the record's `open` joins chunks; more would only add emails.
    let total = ATOMIC_CHUNK + 100;
    let (_a, _b) = (system.welcome().await, system.welcome().await);
    let submitted = system
        .publisher
        .submit_batch("chunks", "users.registered", &items("chunks", total))
        .await
        .unwrap();
    assert_eq!((submitted.total, submitted.chunks), (total as u64, 2));
    assert!(!submitted.duplicate);
    let status = wait_complete(&system, "chunks", Duration::from_secs(60)).await;
    assert_eq!(status.state, BatchState::Open);
    assert_eq!(
        (
            status.total,
            status.succeeded,
            status.failed,
            status.remaining
        ),
        (total as u64, total as u64, 0, 0)
    );
    assert_eq!(system.smtp.messages().len(), total);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(system.count_on(COMPLETED).await, 1, "one batch.completed");
    assert_eq!(completion(&system).await.data.succeeded, total as u64);
}

/// The router counts a dead batch item and publishes the completion as its own user, with no right missing.
#[tokio::test]
async fn the_router_counts_a_dead_batch_item_with_its_own_rights_only() {
    use crate::permissions::{secret, secured_server};
    let system = System::start_on(
        secured_server(),
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-secret".into()),
        crate::router::fast,
    )
    .await;
    let _router = system
        .spawn(
            "dlq-router",
            &[
                ("NATS_USER", "dlq-router".to_owned()),
                ("NATS_PASSWORD", secret("dlq-router")),
                ("NATS_INBOX_PREFIX", "_INBOX_dlq".to_owned()),
            ],
        )
        .await;
    let crashing = crate::router::silent(&system, "welcome");
    system
        .publisher
        .submit_batch(
            "dead-secured",
            "users.registered",
            &items("dead-secured", 1),
        )
        .await
        .unwrap();
    let status = wait_complete(&system, "dead-secured", WAIT).await;
    assert_eq!((status.total, status.failed), (1, 1));
    assert_eq!(completion(&system).await.source, "/dlq-router");
    crashing.abort();
    assert!(
        !system.nats.log().contains(" Violation"),
        "the router needed a right it does not have: {}",
        system.nats.log()
    );
}
