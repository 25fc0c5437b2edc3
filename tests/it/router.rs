//! The dead-letter router under faults: the original gone before the router runs, a fetch that fails for a
//! moment, a work-queue stream, two functions dead-lettering one event, the router killed between writing a
//! record and settling. Each ends with the record `jetfn dlq list` shows, through the real CLI binary.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::RetentionPolicy;
use futures::StreamExt as _;
use provision::Definitions;
use runtime::dlq::DeathKind;
use testkit::{FunctionProcess, NatsCluster, Signal};

use crate::support::{System, WAIT, user};

/// Consumers that give up fast: three deliveries, 200 ms apart.
pub(crate) fn fast(definitions: &mut Definitions) {
    for (stream, consumer) in &mut definitions.consumers {
        if stream == "EVENTS" {
            consumer.max_deliver = 3;
            consumer.backoff = vec![Duration::from_millis(200); 2];
            consumer.ack_wait = Duration::from_millis(200);
        }
    }
}

/// EVENTS as a work-queue stream, with welcome its only consumer (a work queue refuses overlapping filters).
fn work_queue(definitions: &mut Definitions) {
    fast(definitions);
    let events = definitions
        .streams
        .iter_mut()
        .find(|stream| stream.name == "EVENTS")
        .expect("EVENTS is defined");
    events.retention = RetentionPolicy::WorkQueue;
    events.deny_delete = false;
    definitions.consumers.retain(|(stream, consumer)| {
        stream != "EVENTS" || consumer.durable_name.as_deref() == Some("welcome")
    });
}

/// Pulls every delivery of `consumer` and never answers, like a function that hangs or crashes.
pub(crate) fn silent(system: &System, consumer: &'static str) -> tokio::task::JoinHandle<usize> {
    silent_on(system.js.clone(), consumer)
}

fn silent_on(js: jetstream::Context, consumer: &'static str) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let consumer: PullConsumer = js
            .get_consumer_from_stream(consumer, "EVENTS")
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut deliveries = 0;
        while let Ok(Some(Ok(_ignored))) =
            tokio::time::timeout(Duration::from_secs(3), messages.next()).await
        {
            deliveries += 1;
        }
        deliveries
    })
}

pub(crate) async fn wait_advisories(system: &System, count: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut stream = system.js.get_stream("ADVISORIES").await.unwrap();
        if stream.info().await.unwrap().state.messages >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no MAX_DELIVERIES advisory was captured"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether EVENTS still holds `seq`.
async fn in_events(system: &System, seq: u64) -> bool {
    let stream = system.js.get_stream("EVENTS").await.unwrap();
    crate::support::stored_message(&stream, seq).await.is_some()
}

/// Waits until the router's consumer has acked every advisory.
async fn advisories_settled(system: &System) {
    let deadline = Instant::now() + WAIT;
    loop {
        let info = system.consumer_info("ADVISORIES", "dlq-router").await;
        if info.num_pending == 0
            && info.num_ack_pending == 0
            && info.ack_floor.consumer_sequence == info.delivered.consumer_sequence
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the router never settled: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `jetfn <args>`, which must exit as `code`; its output.
async fn cli(system: &System, args: &[&str], code: i32) -> String {
    let run = FunctionProcess::spawn_with_args("jetfn", args, &system.env());
    let status = run.wait_exit(WAIT).await;
    assert_eq!(
        status.code(),
        Some(code),
        "jetfn {args:?}: {}",
        run.output()
    );
    run.output()
}

/// The original is gone (purged, or expired by max_age) before the router runs: the record says so, is listed
/// with its reason and "payload lost", `show` explains, and `replay` refuses it naming why.
async fn original_gone_before_the_router_runs(expire: bool) {
    let system = System::start_with(|definitions| {
        fast(definitions);
        if expire {
            let events = definitions
                .streams
                .iter_mut()
                .find(|stream| stream.name == "EVENTS")
                .unwrap();
            events.max_age = Duration::from_secs(2);
            events.duplicate_window = Duration::from_secs(1);
        }
    })
    .await;
    let silent = silent(&system, "welcome");
    let published = system
        .publisher
        .publish(user("gone@example.com", "Gone"))
        .await
        .unwrap();
    wait_advisories(&system, 1).await;
    silent.await.unwrap();
    if expire {
        let deadline = Instant::now() + WAIT;
        while in_events(&system, published.sequence).await {
            assert!(Instant::now() < deadline, "the original never expired");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        system
            .js
            .get_stream("EVENTS")
            .await
            .unwrap()
            .purge()
            .await
            .unwrap();
    }

    let _router = system.spawn("dlq-router", &[]).await;
    let records = system.wait_dlq(1).await;
    let (dlq_seq, letter) = &records[0];
    assert_eq!(
        (letter.sequence, letter.kind),
        (published.sequence, DeathKind::NoAnswer)
    );
    assert!(letter.payload.is_empty());
    assert!(
        letter
            .payload_lost
            .as_deref()
            .is_some_and(|why| why.contains("purged or expired")),
        "{letter:?}"
    );
    advisories_settled(&system).await;

    let list = cli(&system, &["dlq", "list"], 0).await;
    assert!(
        list.contains("1 dead event(s)") && list.contains("welcome") && list.contains("(unknown)"),
        "{list}"
    );
    assert!(
        list.contains("exhausted 3 deliveries without an answer"),
        "{list}"
    );
    assert!(
        list.contains("payload lost: stream EVENTS now starts at sequence"),
        "{list}"
    );
    let show = cli(&system, &["dlq", "show", &dlq_seq.to_string()], 0).await;
    assert!(
        show.contains("payload        lost: ") && show.contains("cannot be replayed"),
        "{show}"
    );
    let replay = cli(&system, &["dlq", "replay", &dlq_seq.to_string()], 1).await;
    assert!(
        replay.contains(&format!("dlq #{dlq_seq} cannot be replayed"))
            && replay.contains("purged or expired"),
        "{replay}"
    );
    assert_eq!(
        system.dlq().await.len(),
        1,
        "a refused replay keeps the record"
    );
}

#[tokio::test]
async fn router_an_original_purged_before_the_router_runs_is_listed_as_lost() {
    original_gone_before_the_router_runs(false).await;
}

#[tokio::test]
async fn router_an_original_expired_before_the_router_runs_is_listed_as_lost() {
    original_gone_before_the_router_runs(true).await;
}

/// A fetch that fails (as during a leader election) is retried: the advisory stays, nothing is written, the
/// original stays in its work-queue stream, and the next try copies it whole and only then deletes it.
#[tokio::test]
async fn router_a_failed_fetch_is_retried_and_the_work_queue_original_kept_until_copied() {
    let system = System::start_with(work_queue).await;
    let silent = silent(&system, "welcome");
    let published = system
        .publisher
        .publish(user("flaky@example.com", "Flaky"))
        .await
        .unwrap();
    wait_advisories(&system, 1).await;
    silent.await.unwrap();

    let router = system
        .spawn(
            "dlq-router",
            &[("ROUTER_TEST_FAIL_FETCHES", "2".to_owned())],
        )
        .await;
    router
        .wait_for_output("routing failed; will retry", WAIT)
        .await;
    assert!(
        system.dlq().await.is_empty(),
        "nothing is written on a transient error"
    );
    assert!(
        in_events(&system, published.sequence).await,
        "the original stays until it is copied"
    );

    let records = system.wait_dlq(1).await;
    let letter = &records[0].1;
    assert_eq!(letter.payload_lost, None, "{letter:?}");
    assert_eq!(letter.subject, "events.users.registered");
    assert!(!letter.payload.is_empty());
    advisories_settled(&system).await;
    assert!(
        !in_events(&system, published.sequence).await,
        "copied, then removed from the work queue"
    );
    assert_eq!(
        router
            .output()
            .matches("routing failed; will retry")
            .count(),
        2,
        "{}",
        router.output()
    );

    let list = cli(&system, &["dlq", "list"], 0).await;
    assert!(
        list.contains("1 dead event(s)")
            && list.contains("events.users.registered")
            && !list.contains("payload lost"),
        "{list}"
    );
}

/// Two functions on one subject both exhaust the same event: the router writes a record for each.
#[tokio::test]
async fn router_two_consumers_on_one_subject_each_get_their_record() {
    let system = System::start_with(|definitions| {
        fast(definitions);
        let mut audit = definitions.consumer("EVENTS", "welcome").unwrap().clone();
        audit.durable_name = Some("audit".to_owned());
        definitions.consumers.push(("EVENTS".to_owned(), audit));
    })
    .await;
    let (welcome, audit) = (silent(&system, "welcome"), silent(&system, "audit"));
    let published = system
        .publisher
        .publish(user("twice@example.com", "Twice"))
        .await
        .unwrap();
    wait_advisories(&system, 2).await;
    welcome.await.unwrap();
    audit.await.unwrap();

    let _router = system.spawn("dlq-router", &[]).await;
    let records = system.wait_dlq(2).await;
    advisories_settled(&system).await;
    let mut consumers: Vec<&str> = records
        .iter()
        .map(|(_, letter)| letter.consumer.as_str())
        .collect();
    consumers.sort_unstable();
    assert_eq!(consumers, ["audit", "welcome"]);
    assert!(
        records
            .iter()
            .all(|(_, letter)| letter.sequence == published.sequence
                && letter.payload_lost.is_none())
    );

    let list = cli(&system, &["dlq", "list"], 0).await;
    assert!(
        list.contains("2 dead event(s)") && list.contains("audit") && list.contains("welcome"),
        "{list}"
    );
}

/// SIGKILL between writing the record and settling (deleting the work-queue original, acking the advisory): the
/// next router finds the record, deletes the original and acks, and there is one record.
#[tokio::test]
async fn router_killed_between_record_and_ack_leaves_one_record_and_finishes_on_restart() {
    let system = System::start_with(work_queue).await;
    let silent = silent(&system, "welcome");
    let published = system
        .publisher
        .publish(user("killed@example.com", "Killed"))
        .await
        .unwrap();
    wait_advisories(&system, 1).await;
    silent.await.unwrap();

    let router = system
        .spawn(
            "dlq-router",
            &[("ROUTER_TEST_PAUSE_AFTER_RECORD_MS", "60000".to_owned())],
        )
        .await;
    router
        .wait_for_output("pausing before settling", WAIT)
        .await;
    router.sigkill();
    router.wait_exit(WAIT).await;
    assert_eq!(
        system.dlq().await.len(),
        1,
        "the record was written before the kill"
    );
    assert!(
        in_events(&system, published.sequence).await,
        "the kill came before the delete"
    );

    let again = system.spawn("dlq-router", &[]).await;
    again
        .wait_for_output("already in the dead-letter stream", WAIT)
        .await;
    advisories_settled(&system).await;
    assert!(
        !in_events(&system, published.sequence).await,
        "the restarted router finished the job"
    );
    let records = system.dlq().await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1.payload_lost, None);

    let list = cli(&system, &["dlq", "list"], 0).await;
    assert!(
        list.contains("1 dead event(s)") && list.contains("events.users.registered"),
        "{list}"
    );
}

/// The DLQ's records, read through any client.
/// Every DLQ record, or why they could not all be read. An error is never read as "none": while a node is down
/// the DLQ (R3) may be electing a leader, and an empty answer then would pass or fail an assertion by luck.
async fn try_records(js: &jetstream::Context) -> Result<Vec<runtime::dlq::DeadLetter>, String> {
    let mut dlq = js
        .get_stream("DLQ")
        .await
        .map_err(|error| format!("DLQ lookup: {error}"))?;
    let state = dlq
        .info()
        .await
        .map_err(|error| format!("DLQ info: {error}"))?
        .state
        .clone();
    let mut records = Vec::new();
    if state.messages == 0 {
        return Ok(records);
    }
    for seq in state.first_sequence..=state.last_sequence {
        let message = dlq
            .get_raw_message(seq)
            .await
            .map_err(|error| format!("DLQ record {seq}: {error}"))?;
        records.push(
            runtime::dlq::DeadLetter::from_stored(Some(&message.headers), message.payload)
                .expect("a DLQ record"),
        );
    }
    Ok(records)
}

/// The DLQ's records as soon as they can be read in full.
async fn records(js: &jetstream::Context) -> Vec<runtime::dlq::DeadLetter> {
    let deadline = Instant::now() + WAIT;
    loop {
        match try_records(js).await {
            Ok(records) => return records,
            Err(error) => assert!(
                Instant::now() < deadline,
                "the DLQ could not be read: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_records(
    js: &jetstream::Context,
    count: usize,
    within: Duration,
) -> Vec<runtime::dlq::DeadLetter> {
    let deadline = Instant::now() + within;
    loop {
        let read = try_records(js).await;
        if let Ok(records) = &read
            && records.len() >= count
        {
            return records.clone();
        }
        assert!(
            Instant::now() < deadline,
            "expected {count} DLQ records, have {read:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A real transient fault: the only node holding EVENTS (R1 on a three-node cluster, everything else R3) is down
/// when the router fetches an original. The router retries; nothing is written until the node is back, and then
/// the record holds the original.
#[tokio::test(flavor = "multi_thread")]
async fn router_a_fetch_while_the_streams_node_is_down_is_retried_until_it_is_back() {
    const FAILOVER: Duration = Duration::from_secs(60);
    let cluster = NatsCluster::start();
    let admin = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(cluster.urls())
        .await
        .expect("connect to the cluster");
    let js = jetstream::new(admin.clone());
    let mut definitions =
        Definitions::load(&testkit::workspace_root().join("infra/nats")).expect("infra/nats loads");
    definitions.set_replicas(3);
    definitions.schedules.clear();
    fast(&mut definitions);
    for stream in &mut definitions.streams {
        if stream.name == "EVENTS" {
            stream.num_replicas = 1;
        }
    }
    for (stream, consumer) in &mut definitions.consumers {
        if stream == "EVENTS" {
            consumer.num_replicas = 0;
        }
    }
    definitions.apply(&js).await.expect("infra/nats applies");
    let leader = js
        .get_stream("EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .cluster
        .clone()
        .and_then(|cluster| cluster.leader)
        .expect("EVENTS has a leader");
    let down = cluster
        .nodes()
        .iter()
        .position(|node| node.name() == leader)
        .expect("the leader is a node");
    let others: Vec<String> = cluster
        .urls()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != down)
        .map(|(_, url)| url)
        .collect();
    let router = FunctionProcess::spawn(
        "dlq-router",
        &[
            ("NATS_URL", others.join(",")),
            ("RUST_LOG", "debug,async_nats=info".to_owned()),
        ],
    );
    router.wait_for_output("serving", WAIT).await;
    let publisher = runtime::Publisher::new(admin.clone(), "/integration-tests");

    // One dead event routed while all is well: the router has looked EVENTS up.
    let silent = silent_on(js.clone(), "welcome");
    publisher
        .publish(user("first@example.com", "First"))
        .await
        .unwrap();
    wait_records(&js, 1, WAIT).await;
    silent.await.unwrap();

    // The next one's advisory waits while the router is paused; then EVENTS' node dies.
    router.signal(Signal::SIGSTOP);
    let silent = silent_on(js.clone(), "welcome");
    let second = publisher
        .publish(user("second@example.com", "Second"))
        .await
        .unwrap();
    silent.await.unwrap();
    let deadline = Instant::now() + WAIT;
    while js
        .get_stream("ADVISORIES")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "the second advisory was never captured"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.node(down).kill();
    router.signal(Signal::SIGCONT);
    router
        .wait_for_output("routing failed; will retry", FAILOVER)
        .await;
    assert_eq!(
        records(&js).await.len(),
        1,
        "nothing is written while the original cannot be read"
    );

    cluster.restart_node(down);
    let records = wait_records(&js, 2, FAILOVER).await;
    let letter = records
        .iter()
        .find(|letter| letter.sequence == second.sequence)
        .expect("the second event's record");
    assert_eq!(letter.payload_lost, None, "{letter:?}");
    assert_eq!(letter.subject, "events.users.registered");
    assert!(!letter.payload.is_empty());

    // Just after the restart the CLI may meet a group still catching up: it then says so and exits non-zero
    // (never a shorter list), and a user runs it again.
    let mut tries = 0;
    let list = loop {
        tries += 1;
        let list = FunctionProcess::spawn_with_args(
            "jetfn",
            &["dlq", "list"],
            &[("NATS_URL", cluster.url())],
        );
        let code = list.wait_exit(WAIT).await.code();
        if code == Some(0) {
            break list;
        }
        assert!(
            tries < 3,
            "jetfn dlq list failed 3 times: {}",
            list.output()
        );
        eprintln!(
            "jetfn dlq list exited {code:?}, running it again: {}",
            list.output()
        );
    };
    assert!(
        list.output().contains("2 dead event(s)") && !list.output().contains("payload lost"),
        "{}",
        list.output()
    );
}
