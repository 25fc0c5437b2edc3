//! Ledger faults (issue 14, item 4): a stalled nats-server right after the SMTP server accepted a mail, an effect
//! longer than the lease, and a replica whose clock is off by minutes. Each ends with exactly one mail, through
//! the real welcome binary, a real nats-server and the scripted SMTP server.

use std::time::{Duration, Instant};

use events::CloudEvent;
use testkit::SmtpCommand;

use crate::support::{System, WAIT, user};

/// Welcome consumers that keep retrying a busy claim for the whole test instead of dead-lettering it.
async fn system() -> System {
    System::start_with(|definitions| {
        for (stream, consumer) in &mut definitions.consumers {
            if stream == "EVENTS" {
                consumer.max_deliver = 60;
            }
        }
    })
    .await
}

/// Two consumers of one subject bound by the same function: both get every event and race for its ledger key,
/// as two replicas racing on a re-published event do.
async fn system_with_second_consumer() -> System {
    System::start_with(|definitions| {
        for (stream, consumer) in &mut definitions.consumers {
            if stream == "EVENTS" {
                consumer.max_deliver = 60;
            }
        }
        let mut second = definitions
            .consumer("EVENTS", "welcome")
            .expect("the welcome consumer")
            .clone();
        second.durable_name = Some("welcome-2".to_owned());
        second.name = None;
        definitions.consumers.push(("EVENTS".to_owned(), second));
    })
    .await
}

/// Waits until `consumer` has handed out the event, then lets the handler get into the send.
async fn wait_in_flight(system: &System, consumer: &str) {
    let deadline = Instant::now() + WAIT;
    while system
        .consumer_info("EVENTS", consumer)
        .await
        .num_ack_pending
        == 0
    {
        assert!(Instant::now() < deadline, "the event was never delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// The server stalls from just before the SMTP server's 250 until well past the old 3 s give-up of `mark_done`,
/// then resumes. The writes the function sent during the stall wait in the socket and land on resume, so this
/// one held before the fix too; it pins that a stall shorter than the lease never costs a second mail.
#[tokio::test]
async fn a_nats_server_stalled_as_the_mail_is_accepted_then_resumed_sends_one_mail() {
    let system = system().await;
    let _welcome = system
        .spawn("welcome", &[("JOB_LEDGER_LEASE_SECS", "12".to_owned())])
        .await;
    let claimed = stall_during_the_send(&system).await;
    signal(system.nats.pid().expect("nats-server runs"), "-CONT");
    assert_one_mail_past(&system, claimed + Duration::from_secs(14)).await;
}

/// The ledger's stream stops answering while the rest of the server works, from just before the SMTP server's
/// 250 for 6 s: every KV write fails at once with "no responders", as when the node holding an R1 ledger dies
/// in a cluster (issue 14, item 13). Before: `mark_done` gave up after six failed writes (about 3 s) and left the
/// claim pending; the redelivery took it over after the lease and mailed again. Now `done` is retried until the
/// ledger answers, inside the lease.
#[tokio::test]
async fn a_ledger_unreachable_as_the_mail_is_accepted_sends_one_mail() {
    let system = system().await;
    let _welcome = system
        .spawn("welcome", &[("JOB_LEDGER_LEASE_SECS", "12".to_owned())])
        .await;
    system.smtp.delay_data_reply(Duration::from_secs(2));
    system
        .publisher
        .publish(user("away@example.com", "Away"))
        .await
        .unwrap();
    let claimed = Instant::now();
    wait_in_flight(&system, "welcome").await;
    let mut ledger = system
        .js
        .get_stream("KV_jetfn-ledger")
        .await
        .expect("the ledger's stream");
    let config = ledger.info().await.expect("ledger info").config.clone();
    let mut away = config.clone();
    away.subjects = vec!["$KV.jetfn-ledger-away.>".to_owned()];
    system
        .js
        .update_stream(away)
        .await
        .expect("move the ledger away");
    system.smtp.wait_for_messages(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    system
        .js
        .update_stream(config)
        .await
        .expect("bring the ledger back");
    assert_one_mail_past(&system, claimed + Duration::from_secs(14)).await;
}

/// Publishes one event, SIGSTOPs nats-server while the SMTP server holds its reply to DATA, and returns 6 s
/// after the stop, the mail accepted meanwhile. Returns (about) when the claim was written.
async fn stall_during_the_send(system: &System) -> Instant {
    system.smtp.delay_data_reply(Duration::from_secs(2));
    system
        .publisher
        .publish(user("stall@example.com", "Stall"))
        .await
        .unwrap();
    let claimed = Instant::now();
    wait_in_flight(system, "welcome").await;
    signal(system.nats.pid().expect("nats-server runs"), "-STOP");
    let stopped = Instant::now();
    system.smtp.wait_for_messages(1, WAIT).await;
    tokio::time::sleep(Duration::from_secs(6).saturating_sub(stopped.elapsed())).await;
    claimed
}

/// Waits until `lease_end` (a claim left pending would have been taken over by then), then checks one mail.
async fn assert_one_mail_past(system: &System, lease_end: Instant) {
    system.wait_settled("welcome").await;
    tokio::time::sleep(lease_end.saturating_duration_since(Instant::now())).await;
    system.wait_settled("welcome").await;
    assert_eq!(system.smtp.messages().len(), 1, "one mail for one event");
    assert!(system.dlq().await.is_empty(), "nothing dead-lettered");
}

/// Before: the lease (2 s here) was never renewed, so a second attempt of the event during a 5 s send took the
/// claim over and sent again.
#[tokio::test]
async fn an_effect_longer_than_the_lease_is_not_taken_over() {
    let system = system().await;
    let welcome = system.welcome().await;
    system.smtp.delay_data_reply(Duration::from_secs(5));
    let event = CloudEvent::new("/signup", user("slowpoke@example.com", "Slow"));
    system.publisher.publish_event(&event).await.unwrap();
    wait_in_flight(&system, "welcome").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The same event again as a new message (a re-publish past the duplicate window), while the send runs.
    system
        .publish_raw(
            "events.users.registered",
            &serde_json::to_vec(&event).unwrap(),
        )
        .await;
    system.smtp.wait_for_messages(1, WAIT).await;
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(system.smtp.messages().len(), 1, "one mail for one event");
    welcome.wait_for_output("already sent", WAIT).await;
}

/// Before: lease age was this host's clock minus the claimant's, so a replica ten minutes ahead judged a live
/// claim (a 3 s send, lease 8 s) stale and sent again.
#[tokio::test]
async fn a_replica_whose_clock_runs_ahead_does_not_take_over_a_live_claim() {
    let system = system_with_second_consumer().await;
    system.smtp.delay_data_reply(Duration::from_secs(3));
    let lease = ("JOB_LEDGER_LEASE_SECS", "8".to_owned());
    let _honest = system.spawn("welcome", std::slice::from_ref(&lease)).await;
    system
        .publisher
        .publish(user("skew@example.com", "Skew"))
        .await
        .unwrap();
    wait_in_flight(&system, "welcome").await;
    let _ahead = system
        .spawn(
            "welcome",
            &[
                lease,
                ("JOB_CONSUMER", "welcome-2".to_owned()),
                ("JOB_TEST_CLOCK_SKEW_MS", "600000".to_owned()),
            ],
        )
        .await;
    system.smtp.wait_for_messages(1, WAIT).await;
    system.wait_settled("welcome").await;
    system.wait_settled("welcome-2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(system.smtp.messages().len(), 1, "one mail for one event");
}

/// Before: a claim written by a replica ten minutes ahead looked fresh to the others for ten minutes plus the
/// lease after that replica died. Now it is taken over one lease (server time) after its last renewal.
#[tokio::test]
async fn a_claim_left_by_a_replica_whose_clock_runs_ahead_is_taken_over_after_the_lease() {
    let system = system().await;
    // The replica dies waiting for the reply to MAIL FROM: no mail was sent.
    system
        .smtp
        .delay_replies(SmtpCommand::Mail, Duration::from_secs(60));
    let lease = ("JOB_LEDGER_LEASE_SECS", "3".to_owned());
    let ahead = system
        .spawn(
            "welcome",
            &[
                lease.clone(),
                ("JOB_TEST_CLOCK_SKEW_MS", "600000".to_owned()),
            ],
        )
        .await;
    system
        .publisher
        .publish(user("orphan@example.com", "Orphan"))
        .await
        .unwrap();
    wait_in_flight(&system, "welcome").await;
    ahead.sigkill();
    ahead.wait_exit(WAIT).await;
    system.smtp.clear_faults();

    let _honest = system.spawn("welcome", &[lease]).await;
    system.smtp.wait_for_messages(1, WAIT).await;
    system.wait_settled("welcome").await;
    assert_eq!(system.smtp.messages().len(), 1, "one mail for one event");
    assert!(system.dlq().await.is_empty(), "nothing dead-lettered");
}

/// Before: judging a found claim's age wrote the ledger's clock key and read it back by a direct get, which a
/// follower of an R3 bucket that had not applied the write answered with an older stamp, so a stale claim looked
/// younger than it was. Now the age is the claim's stamp against the `ts` of the bucket stream's STREAM.INFO: the
/// server's clock still (a claim younger than the lease is busy, an older one is taken over), and no write.
#[tokio::test]
async fn a_found_claim_is_aged_by_the_servers_clock_without_a_write() {
    use async_nats::jetstream::{self, kv};

    let nats = testkit::NatsServer::start();
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let store = js
        .create_key_value(kv::Config {
            bucket: "jetfn-ledger".to_owned(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let lease = Duration::from_secs(2);
    let claimant = runtime::Ledger::new(js.clone(), store.clone(), "welcome", lease);
    let key = claimant.key("event-1", "send");
    // The claimant stops once its effect began, before its first renewal (a quarter lease): its claim stays,
    // unrenewed.
    let (started, began) = tokio::sync::oneshot::channel();
    let effect = claimant.once(&key, || async move {
        let _ = started.send(());
        std::future::pending::<Result<(), runtime::JobError>>().await
    });
    tokio::select! {
        _ = effect => panic!("the effect never ends"),
        _ = began => {}
    }
    let claimed = Instant::now();
    let mut stream = js.get_stream(&store.stream_name).await.unwrap();
    let written = stream.info().await.unwrap().state.last_sequence;

    let other = runtime::Ledger::new(js.clone(), store.clone(), "welcome", lease);
    let busy = other.once(&key, || async { Ok(()) }).await;
    assert!(
        busy.is_err(),
        "a claim younger than the lease is busy: {busy:?}"
    );
    assert_eq!(
        stream.info().await.unwrap().state.last_sequence,
        written,
        "judging the claim's age wrote nothing"
    );

    tokio::time::sleep((claimed + lease).saturating_duration_since(Instant::now())).await;
    let taken = other.once(&key, || async { Ok(7) }).await.unwrap();
    assert_eq!(
        taken,
        runtime::Effect::Done(7),
        "a claim past the lease is taken over"
    );
}
