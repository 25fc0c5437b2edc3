//! The dead-letter path for messages no handler answered, and replay from the DLQ.

use std::time::{Duration, Instant};

use runtime::dlq::DeathKind;
use testkit::FunctionProcess;

use crate::router::{silent, wait_advisories};
use crate::support::{System, WAIT, user};

/// A consumer that gives up fast: three deliveries, 200 ms apart.
async fn fast_exhaustion() -> System {
    System::start_with(|definitions| {
        let welcome = definitions.consumer_mut("EVENTS", "welcome").unwrap();
        welcome.max_deliver = 3;
        welcome.backoff = vec![Duration::from_millis(200); 2];
        welcome.ack_wait = Duration::from_millis(200);
    })
    .await
}

/// Pulls every delivery of the welcome consumer and never answers, like a function that hangs or crashes.
fn silent_function(system: &System) -> tokio::task::JoinHandle<usize> {
    silent(system, "welcome")
}

#[tokio::test]
async fn an_unanswered_message_reaches_the_dlq_through_the_router() {
    let system = fast_exhaustion().await;
    let _router = system.spawn("dlq-router", &[]).await;
    let silent = silent_function(&system);
    let published = system
        .publisher
        .publish(user("hang@example.com", "Hang"))
        .await
        .unwrap();

    let records = system.wait_dlq(1).await;
    let letter = &records[0].1;
    assert_eq!(letter.kind, DeathKind::NoAnswer);
    assert_eq!(letter.writer, "router");
    assert_eq!(letter.sequence, published.sequence);
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.subject, "events.users.registered");
    assert!(letter.headers.get("traceparent").is_some());
    let original = system
        .js
        .get_stream("EVENTS")
        .await
        .unwrap()
        .get_raw_message(published.sequence)
        .await
        .unwrap();
    assert_eq!(
        letter.payload, original.payload,
        "the record holds the original payload"
    );
    assert_eq!(
        silent.await.unwrap(),
        3,
        "delivered max_deliver times, never more"
    );
}

#[tokio::test]
async fn advisories_wait_in_their_stream_while_the_router_is_down() {
    let system = fast_exhaustion().await;
    let silent = silent_function(&system);
    let published = system
        .publisher
        .publish(user("later@example.com", "Later"))
        .await
        .unwrap();
    wait_advisories(&system, 1).await;
    assert!(system.dlq().await.is_empty(), "nobody has routed it yet");
    silent.await.unwrap();

    let router = system.spawn("dlq-router", &[]).await;
    let records = system.wait_dlq(1).await;
    assert_eq!(records[0].1.sequence, published.sequence);
    assert_eq!(records[0].1.kind, DeathKind::NoAnswer);

    // A second router run (a restart, a redelivered advisory) does not write it twice.
    router.sigterm();
    assert_eq!(router.wait_exit(WAIT).await.code(), Some(0));
    // Re-reading every advisory from the start, as after a lost consumer.
    let definitions =
        provision::Definitions::load(&testkit::workspace_root().join("infra/nats")).unwrap();
    let config = definitions
        .consumer("ADVISORIES", "dlq-router")
        .unwrap()
        .clone();
    let stream = system.js.get_stream("ADVISORIES").await.unwrap();
    stream.delete_consumer("dlq-router").await.unwrap();
    stream.create_consumer(config).await.unwrap();
    let again = system.spawn("dlq-router", &[]).await;
    again
        .wait_for_output("already in the dead-letter stream", WAIT)
        .await;
    assert_eq!(system.dlq().await.len(), 1);
}

#[tokio::test]
async fn a_replayed_dead_event_is_processed_by_the_function() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    system
        .smtp
        .reject_recipients(550, "5.1.1 mailbox unavailable");
    system
        .publisher
        .publish(user("replay@example.com", "Replay"))
        .await
        .unwrap();
    let records = system.wait_dlq(1).await;
    let dlq_seq = records[0].0;
    system.smtp.clear_faults();

    let env = system.env();
    let list = FunctionProcess::spawn_with_args("jetfn", &["dlq", "list"], &env);
    assert_eq!(list.wait_exit(WAIT).await.code(), Some(0));
    assert!(
        list.output().contains("permanent") && list.output().contains("welcome"),
        "{}",
        list.output()
    );
    let show =
        FunctionProcess::spawn_with_args("jetfn", &["dlq", "show", &dlq_seq.to_string()], &env);
    assert_eq!(show.wait_exit(WAIT).await.code(), Some(0));
    assert!(
        show.output().contains("re***@example.com"),
        "{}",
        show.output()
    );
    assert!(
        !show.output().contains("replay@example.com"),
        "show masks addresses: {}",
        show.output()
    );

    let replay =
        FunctionProcess::spawn_with_args("jetfn", &["dlq", "replay", &dlq_seq.to_string()], &env);
    assert_eq!(
        replay.wait_exit(WAIT).await.code(),
        Some(0),
        "{}",
        replay.output()
    );
    let mails = system.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].rcpt_to, vec!["replay@example.com".to_owned()]);
    system.wait_settled("welcome").await;
    assert!(
        system.dlq().await.is_empty(),
        "a replayed record leaves the DLQ"
    );
}

#[tokio::test]
async fn purge_removes_dead_events() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    system
        .publish_raw("events.users.registered", b"not json")
        .await;
    system
        .publish_raw("events.users.registered", b"not json either")
        .await;
    system.wait_dlq(2).await;
    let purge =
        FunctionProcess::spawn_with_args("jetfn", &["dlq", "purge", "--all"], &system.env());
    assert_eq!(purge.wait_exit(WAIT).await.code(), Some(0));
    assert!(purge.output().contains("purged 2"), "{}", purge.output());
    assert!(system.dlq().await.is_empty());
}

/// `jetfn dev` and every deploy apply the definitions to a server that already has them: that must succeed.
#[tokio::test]
async fn infra_definitions_apply_again_to_a_provisioned_server() {
    let system = System::start().await;
    let definitions =
        provision::Definitions::load(&testkit::workspace_root().join("infra/nats")).unwrap();
    definitions
        .apply(&system.js)
        .await
        .expect("a second apply of infra/nats succeeds");
    let apply = FunctionProcess::spawn_with_args(
        "jetfn",
        &[
            "infra",
            "apply",
            "--dir",
            &testkit::workspace_root()
                .join("infra/nats")
                .to_string_lossy(),
        ],
        &system.env(),
    );
    assert_eq!(
        apply.wait_exit(WAIT).await.code(),
        Some(0),
        "{}",
        apply.output()
    );
}

#[tokio::test]
async fn the_router_terms_what_is_not_an_advisory_without_a_record() {
    let system = System::start().await;
    let router = system.spawn("dlq-router", &[]).await;
    system
        .js
        .publish(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.EVENTS.welcome",
            "not an advisory".into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    router
        .wait_for_output("not a MAX_DELIVERIES advisory", WAIT)
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let info = system.consumer_info("ADVISORIES", "dlq-router").await;
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            assert_eq!(
                info.delivered.consumer_sequence, 1,
                "delivered once: {info:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the router never settled it: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        system.dlq().await.is_empty(),
        "an advisory is never dead-lettered"
    );
}

/// Two functions that dead-letter the same event (one stream sequence) each keep a record: the duplicate window
/// absorbs a second copy for one consumer, never another consumer's record.
#[tokio::test]
async fn two_consumers_dead_lettering_one_sequence_keep_a_record_each() {
    let system = System::start().await;
    let letter = |consumer: &str| runtime::dlq::DeadLetter {
        subject: "events.users.registered".to_owned(),
        stream: "EVENTS".to_owned(),
        sequence: 7,
        consumer: consumer.to_owned(),
        attempts: 1,
        reason: "invalid event: /data/email".to_owned(),
        kind: DeathKind::Invalid,
        first_failure: time::OffsetDateTime::now_utc(),
        last_failure: time::OffsetDateTime::now_utc(),
        headers: async_nats::HeaderMap::new(),
        payload: bytes::Bytes::from_static(b"{}"),
        writer: "runtime".to_owned(),
        failed_attempts: Vec::new(),
        payload_lost: None,
    };
    let welcome = letter("welcome").publish(&system.js, "dlq").await.unwrap();
    let audit = letter("audit").publish(&system.js, "dlq").await.unwrap();
    let again = letter("welcome").publish(&system.js, "dlq").await.unwrap();
    assert!(
        !welcome.duplicate && !audit.duplicate,
        "{welcome:?} {audit:?}"
    );
    assert!(
        again.duplicate,
        "the same consumer's second copy is absorbed: {again:?}"
    );
    let consumers: Vec<String> = system
        .dlq()
        .await
        .into_iter()
        .map(|(_, letter)| letter.consumer)
        .collect();
    assert_eq!(consumers, ["welcome", "audit"]);
}

/// A listing the server stops answering part-way is an error, never a shorter list: a replay or purge of "every
/// record matching" acts on what the listing returns. The server is paused (SIGSTOP) while the records are being
/// read, for longer than the listing waits for the next one, then resumed.
#[tokio::test(flavor = "multi_thread")]
async fn a_dlq_listing_the_server_stops_answering_is_an_error_never_a_shorter_list() {
    // 160 MiB in all: more than the client buffers ahead of the reader, so the pause meets the read.
    const RECORDS: usize = 20_000;
    let system = System::start().await;
    let record = bytes::Bytes::from(vec![b'x'; 8192]);
    // Not dead letters (listed apart as unreadable), which reads as fast as the server sends. Acked a thousand at
    // a time: async-nats holds back a publish while too many acks are outstanding.
    for chunk in 0..RECORDS / 1000 {
        let mut acks = Vec::with_capacity(1000);
        for n in chunk * 1000..(chunk + 1) * 1000 {
            acks.push(
                system
                    .js
                    .publish(format!("dlq.EVENTS.welcome.{n}"), record.clone())
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }
    let dlq = system.js.get_stream("DLQ").await.unwrap();
    let listing = tokio::spawn({
        let dlq = dlq.clone();
        async move { ops::dlq::list(&dlq, &ops::dlq::Filter::default(), usize::MAX).await }
    });
    // Paused once the listing's consumer exists, so the stall meets the read, not its set-up.
    let deadline = Instant::now() + WAIT;
    while dlq.clone().info().await.unwrap().state.consumer_count == 0 {
        assert!(Instant::now() < deadline, "the listing made no consumer");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    system.nats.pause();
    tokio::time::sleep(Duration::from_secs(8)).await;
    system.nats.resume();
    match listing.await.unwrap() {
        Ok((records, unreadable)) => assert_eq!(
            records.len() + unreadable.len(),
            RECORDS,
            "a listing that returns is whole"
        ),
        Err(err) => eprintln!("the listing failed, as it should: {err:#}"),
    }
}
