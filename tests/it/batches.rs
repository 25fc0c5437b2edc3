//! Batches (issue 12, item 1): all-or-none submission, counters that move once per item, exactly one
//! `batch.completed`, cancel, against a real nats-server and the real welcome function.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::kv;
use events::batches::{BatchState, Counted, ItemOutcome};
use events::{BATCH_BUCKET, BatchCompleted, CloudEvent};
use publish::batch::{self, BatchError, BatchStatus};

use crate::support::{System, WAIT, user};

pub(crate) const COMPLETED: &str = "events.batch.completed";
const ITEMS: &str = "events.users.registered";

pub(crate) fn items(batch: &str, count: usize) -> Vec<serde_json::Value> {
    (0..count)
        .map(|i| serde_json::to_value(user(&format!("{batch}-{i}@example.com"), "Batch")).unwrap())
        .collect()
}

pub(crate) async fn status(system: &System, id: &str) -> BatchStatus {
    batch::status(&system.client, id)
        .await
        .unwrap()
        .expect("the batch exists")
}

/// Waits until the batch is complete, then a little more (for a second completion to show, if there were one).
pub(crate) async fn wait_complete(system: &System, id: &str, timeout: Duration) -> BatchStatus {
    let deadline = Instant::now() + timeout;
    loop {
        let status = status(system, id).await;
        if status.complete {
            system.wait_on(COMPLETED, 1, WAIT).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "batch {id} not complete: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `jetfn` with only the server's address (no `RUST_LOG`, so stdout holds the JSON alone); it must exit 0.
async fn cli(system: &System, args: &[&str]) -> serde_json::Value {
    let env = vec![("NATS_URL", system.nats.url())];
    let process = testkit::FunctionProcess::spawn_with_args("jetfn", args, &env);
    let status = process.wait_exit(WAIT).await;
    let output = process.output();
    assert_eq!(status.code(), Some(0), "jetfn {args:?}: {output}");
    serde_json::from_str(&output).unwrap_or_else(|err| panic!("{err}: {output}"))
}

pub(crate) async fn completion(system: &System) -> CloudEvent<BatchCompleted> {
    let message = system
        .js
        .get_stream("EVENTS")
        .await
        .unwrap()
        .get_last_raw_message_by_subject(COMPLETED)
        .await
        .unwrap();
    serde_json::from_slice(&message.payload).unwrap()
}

#[tokio::test]
async fn a_batch_through_two_replicas_counts_each_item_once_and_completes_once() {
    let system = System::start().await;
    let (_a, _b) = (system.welcome().await, system.welcome().await);
    // Two recipients refuse permanently: those items are dead-lettered and counted as failed.
    for i in [3, 17] {
        system.smtp.fail_next_data_to(
            &format!("two-{i}@example.com"),
            [(550, "5.1.1 no such user")],
        );
    }
    // Through the SDK, typed.
    let users: Vec<events::UserRegistered> = (0..40)
        .map(|i| user(&format!("two-{i}@example.com"), "Batch"))
        .collect();
    let submitted = system.emails().submit_batch("two", &users).await.unwrap();
    assert!(!submitted.duplicate);
    let status = wait_complete(&system, "two", WAIT).await;
    assert_eq!(
        (
            status.total,
            status.succeeded,
            status.failed,
            status.cancelled
        ),
        (40, 38, 2, 0)
    );
    assert_eq!(status.state, BatchState::Open);
    let mut sent: Vec<String> = system
        .smtp
        .messages()
        .iter()
        .flat_map(|mail| mail.rcpt_to.clone())
        .collect();
    sent.sort();
    assert_eq!(sent.len(), 38, "{sent:?}");
    assert_eq!(system.wait_dlq(2).await.len(), 2);
    assert_eq!(system.count_on(COMPLETED).await, 1, "one batch.completed");
    let completed = completion(&system).await;
    assert_eq!(completed.id, "batch-completed:two");
    assert_eq!(
        (
            completed.data.total,
            completed.data.succeeded,
            completed.data.failed
        ),
        (40, 38, 2)
    );
}

/// A replica SIGKILLed mid-batch: it holds (behind the ack hook) the items it took, counted and sent, while the rest
/// wait for the consumer's `max_ack_pending`; a new replica gets both the held items again and the rest.
#[tokio::test]
async fn a_replica_killed_mid_batch_leaves_exact_counts_and_one_completion() {
    let system = System::start().await;
    let doomed = crate::welcome::welcome_held_before_the_ack(&system).await;
    let total = 100;
    system
        .publisher
        .submit_batch("killed", "users.registered", &items("killed", total))
        .await
        .unwrap();
    // Wait for the doomed replica's share to be counted (it stops growing: the rest wait behind its held acks).
    let mut seen = 0;
    let deadline = Instant::now() + WAIT;
    let held = loop {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let now = status(&system, "killed").await.succeeded;
        if now > 0 && now == seen {
            break now;
        }
        seen = now;
        assert!(
            Instant::now() < deadline,
            "the doomed replica counted nothing"
        );
    };
    assert!(
        held < total as u64,
        "the kill comes mid-batch: {held} of {total} counted"
    );
    assert_eq!(system.count_on(COMPLETED).await, 0);
    doomed.sigkill();
    doomed.wait_exit(WAIT).await;
    let survivor = system.welcome().await;
    let status = wait_complete(&system, "killed", WAIT).await;
    survivor.wait_for_output("already sent", WAIT).await;
    assert_eq!(
        (status.succeeded, status.failed, status.cancelled),
        (total as u64, 0, 0),
        "the redeliveries counted nothing again"
    );
    assert_eq!(system.smtp.messages().len(), total);
    assert_eq!(system.count_on(COMPLETED).await, 1, "one batch.completed");
    assert_eq!(completion(&system).await.data.succeeded, total as u64);
}

/// The last items finishing at the same moment: many counts of the same batch race on one record (each item
/// counted twice at once, as a replica and a redelivery would), and exactly one of them finishes it.
#[tokio::test]
async fn items_finishing_together_are_counted_once_and_exactly_one_finishes_the_batch() {
    let system = System::start().await;
    let total = 24;
    system
        .publisher
        .submit_batch("race", "users.registered", &items("race", total))
        .await
        .unwrap();
    let store: kv::Store = system.js.get_key_value(BATCH_BUCKET).await.unwrap();
    let counts = (0..total as u64 * 2).map(|n| {
        let store = store.clone();
        let outcome = if n % 5 == 0 {
            ItemOutcome::Failed
        } else {
            ItemOutcome::Succeeded
        };
        tokio::spawn(async move { batch::count(&store, "race", n / 2, outcome).await })
    });
    let results = futures::future::join_all(counts).await;
    let results: Vec<Counted> = results
        .into_iter()
        .map(|joined| joined.unwrap().unwrap().0)
        .collect();
    let finishers = results
        .iter()
        .filter(|counted| **counted == Counted::Now { finished: true })
        .count();
    let counted = results
        .iter()
        .filter(|counted| matches!(counted, Counted::Now { .. }))
        .count();
    assert_eq!(finishers, 1, "exactly one count finished the batch");
    assert_eq!(counted, total, "each item counted once: {results:?}");
    let status = status(&system, "race").await;
    assert_eq!(status.succeeded + status.failed, total as u64);
    assert!(status.complete);
}

#[tokio::test]
async fn a_duplicate_submission_creates_no_second_batch_and_moves_no_counter_twice() {
    let system = System::start().await;
    let first = system
        .publisher
        .submit_batch("dup", "users.registered", &items("dup", 5))
        .await
        .unwrap();
    let again = system
        .publisher
        .submit_batch("dup", "users.registered", &items("dup", 5))
        .await
        .unwrap();
    assert!(!first.duplicate);
    assert!(again.duplicate, "{again:?}");
    assert_eq!(system.count_on(ITEMS).await, 5, "no item stored twice");
    // The CLI says the same.
    let path = std::env::temp_dir().join(format!("jetfn-dup-{}.jsonl", std::process::id()));
    let lines: Vec<String> = items("dup", 5).iter().map(ToString::to_string).collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    let output = cli(
        &system,
        &[
            "batch",
            "submit",
            "users.registered",
            "--items",
            path.to_str().unwrap(),
            "--id",
            "dup",
            "--json",
        ],
    )
    .await;
    assert_eq!(output["duplicate"], true, "{output}");
    // Another batch under the same id is refused, naming why.
    let other = system
        .publisher
        .submit_batch("dup", "users.registered", &items("dup", 6))
        .await;
    assert!(
        matches!(other, Err(BatchError::Conflict { .. })),
        "{other:?}"
    );

    let _welcome = system.welcome().await;
    let status = wait_complete(&system, "dup", WAIT).await;
    assert_eq!((status.total, status.succeeded), (5, 5));
    assert_eq!(system.smtp.messages().len(), 5);
    assert_eq!(system.count_on(COMPLETED).await, 1);
    let json = cli(&system, &["batch", "status", "dup", "--json"]).await;
    assert_eq!(json["succeeded"], 5);
    assert_eq!(json["complete"], true);
    std::fs::remove_file(&path).ok();
}

#[tokio::test]
async fn a_batch_with_an_invalid_item_is_refused_whole_naming_the_item_and_field() {
    let system = System::start().await;
    let mut batch_items = items("bad", 4);
    batch_items[2]["email"] = serde_json::json!("not an address");
    let refused = system
        .publisher
        .submit_batch("bad", "users.registered", &batch_items)
        .await
        .unwrap_err();
    let message = refused.to_string();
    assert!(matches!(refused, BatchError::Invalid(_)), "{message}");
    assert!(message.contains("item 2"), "{message}");
    assert!(message.contains("/data/email"), "{message}");
    assert!(
        !message.contains("not an address"),
        "no value quoted: {message}"
    );
    assert!(
        batch::status(&system.client, "bad")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(system.count_on(ITEMS).await, 0, "nothing stored");
}

#[tokio::test]
async fn cancel_skips_the_items_not_started_finishes_the_rest_and_completes_once() {
    let system = System::start().await;
    // Slow sends, so most items are still waiting when the batch is cancelled.
    system.smtp.delay_data_reply(Duration::from_millis(1000));
    let _welcome = system.welcome().await;
    system
        .publisher
        .submit_batch("stop", "users.registered", &items("stop", 150))
        .await
        .unwrap();
    system.smtp.wait_for_attempts(1, WAIT).await;
    let json = cli(&system, &["batch", "cancel", "stop", "--json"]).await;
    assert_eq!(json["state"], "cancelled", "{json}");
    let status = wait_complete(&system, "stop", Duration::from_secs(60)).await;
    assert_eq!(status.state, BatchState::Cancelled);
    assert!(status.cancelled > 0, "{status:?}");
    assert_eq!(status.succeeded + status.cancelled, 150, "{status:?}");
    assert_eq!(
        status.succeeded as usize,
        system.smtp.messages().len(),
        "the items in flight finished; the cancelled ones sent nothing"
    );
    assert_eq!(system.count_on(COMPLETED).await, 1);
    assert_eq!(completion(&system).await.data.cancelled, status.cancelled);
}

/// The server behaviour the design relies on, pinned against nats-server: an atomic batch stores all its
/// messages or none (a duplicate message id or a size over the limit refuses the whole chunk, and the first
/// message's ack comes before anything is visible), and the KV compare-and-set refuses a stale write and a second
/// create, at the first write and at later ones.
#[tokio::test]
async fn pin_atomic_batches_are_all_or_none_and_kv_compare_and_set_refuses_stale_writes() {
    let system = System::start().await;
    let subject = "events.pin.atomic";
    async fn atomic(
        client: &async_nats::Client,
        subject: &str,
        id: &str,
        ids: &[String],
    ) -> serde_json::Value {
        let mut answer = serde_json::Value::Null;
        for (n, msg_id) in ids.iter().enumerate() {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Batch-Id", id);
            headers.insert("Nats-Batch-Sequence", (n + 1).to_string().as_str());
            headers.insert("Nats-Msg-Id", msg_id.as_str());
            if n + 1 == ids.len() {
                headers.insert("Nats-Batch-Commit", "1");
            }
            if n == 0 || n + 1 == ids.len() {
                let reply = client
                    .request_with_headers(subject.to_owned(), headers, "{}".into())
                    .await
                    .unwrap();
                if !reply.payload.is_empty() {
                    answer = serde_json::from_slice(&reply.payload).unwrap();
                }
            } else {
                client
                    .publish_with_headers(subject.to_owned(), headers, "{}".into())
                    .await
                    .unwrap();
            }
        }
        answer
    }
    let ids = |prefix: &str, n: usize| -> Vec<String> {
        (0..n).map(|i| format!("{prefix}-{i}")).collect()
    };
    let ok = atomic(&system.client, subject, "pin-1", &ids("a", 5)).await;
    assert_eq!(ok["count"], 5, "{ok}");
    assert_eq!(system.count_on(subject).await, 5);
    // A chunk holding one id the stream has: refused whole (10201), none of its new messages stored.
    let mut mixed = ids("b", 4);
    mixed.push("a-0".to_owned());
    let refused = atomic(&system.client, subject, "pin-2", &mixed).await;
    assert_eq!(refused["error"]["err_code"], 10201, "{refused}");
    assert_eq!(
        system.count_on(subject).await,
        5,
        "nothing of the chunk stored"
    );
    // Over the server's limit of 1000 messages: refused whole (10199).
    let big = atomic(&system.client, subject, "pin-3", &ids("c", 1001)).await;
    assert_eq!(big["error"]["err_code"], 10199, "{big}");
    assert_eq!(system.count_on(subject).await, 5);

    let store: kv::Store = system.js.get_key_value(BATCH_BUCKET).await.unwrap();
    let first = store.create("pin", "1".into()).await.unwrap();
    let again = store.create("pin", "2".into()).await.unwrap_err();
    assert_eq!(again.kind(), kv::CreateErrorKind::AlreadyExists);
    let second = store.update("pin", "2".into(), first).await.unwrap();
    for stale in [first, second - 1] {
        let err = store.update("pin", "3".into(), stale).await.unwrap_err();
        assert_eq!(err.kind(), kv::UpdateErrorKind::WrongLastRevision);
    }
    store.update("pin", "3".into(), second).await.unwrap();
}

/// An item is published only after its batch record exists, so its gate must never read "no record" for a batch
/// being submitted. On an R3 bucket a KV read is a direct get that a follower may answer before it has applied the
/// record's creation: records are created through the leader here and each gate asks at once through a follower.
/// Before the gate asked the leader again on "none", such items were acked unhandled ("never submitted").
#[tokio::test(flavor = "multi_thread")]
async fn on_a_three_node_cluster_a_gate_never_skips_an_item_of_a_batch_just_created() {
    const BATCHES: usize = 2000;
    let cluster = testkit::NatsCluster::start();
    let js = async_nats::jetstream::new(
        async_nats::connect(cluster.urls())
            .await
            .expect("the cluster accepts a client"),
    );
    js.create_key_value(kv::Config {
        bucket: BATCH_BUCKET.to_owned(),
        history: 1,
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("an R3 bucket");
    let leader = crate::cluster::stream_leader(&js, &format!("KV_{BATCH_BUCKET}")).await;
    let writer_url = cluster
        .nodes()
        .iter()
        .find(|node| node.name() == leader)
        .map(testkit::NatsServer::url)
        .expect("the leader is a node");
    let writer = batch::bucket(&async_nats::jetstream::new(
        async_nats::connect(writer_url).await.unwrap(),
    ))
    .await
    .unwrap();
    let mut gates = Vec::new();
    for node in cluster.nodes().iter().filter(|node| node.name() != leader) {
        let js = async_nats::jetstream::new(async_nats::connect(node.url()).await.unwrap());
        let store = batch::bucket(&js).await.unwrap();
        gates.push((js, store));
    }
    assert_eq!(gates.len(), 2, "two followers of {leader}");
    let mut skipped = Vec::new();
    for n in 0..BATCHES {
        let id = format!("b-{n}");
        let record = events::batches::BatchRecord::pending(
            &id,
            "users.registered",
            1,
            "2026-11-30T00:00:00Z".to_owned(),
        );
        writer
            .create(&id, serde_json::to_vec(&record).unwrap().into())
            .await
            .expect("the record is created");
        let (js, store) = &gates[n % 2];
        match batch::gate(js, store, &id, 0)
            .await
            .expect("the gate reads")
        {
            batch::Gate::Wait => {}
            other => skipped.push((n, other)),
        }
    }
    assert!(
        skipped.is_empty(),
        "{} of {BATCHES} items of a batch being submitted were not told to wait: {:?}",
        skipped.len(),
        &skipped[..skipped.len().min(10)]
    );
}

/// Without the batch and progress buckets (a deployment whose infra is not yet applied) a function still binds and
/// handles ordinary events: only the server's "no such bucket" means absent. Any other lookup error fails the bind,
/// which is tried again, rather than leaving the process without batches for its lifetime.
#[tokio::test(flavor = "multi_thread")]
async fn a_function_without_the_batch_and_progress_buckets_binds_and_sends() {
    let system = System::start_with(|definitions| {
        definitions.buckets.retain(|bucket| {
            bucket.bucket != BATCH_BUCKET && bucket.bucket != events::PROGRESS_BUCKET
        });
    })
    .await;
    assert!(system.js.get_key_value(BATCH_BUCKET).await.is_err());
    let welcome = system.welcome().await;
    for absent in ["batch bucket not found", "progress bucket not found"] {
        assert!(
            welcome.output().contains(absent),
            "{absent}: {}",
            welcome.output()
        );
    }
    system
        .publisher
        .publish(user("ada@example.com", "Ada"))
        .await
        .unwrap();
    system.smtp.wait_for_messages(1, WAIT).await;
}
