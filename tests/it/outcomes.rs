//! Outcome events (issue 12, item 6) and the progress of a long job (item 5), against the real binaries.

use std::time::Duration;

use events::{CloudEvent, EmailFailed, EmailSent, FailureKind, PasswordResetRequested};

use crate::support::{System, WAIT, user};
use crate::welcome::{kill_and_redeliver, welcome_held_before_the_ack};

const SENT: &str = "events.email.sent";
const FAILED: &str = "events.email.failed";

/// The data of the last event on `subject` in EVENTS.
async fn last<T: events::Event>(system: &System, subject: &str) -> CloudEvent<T> {
    let stream = system.js.get_stream("EVENTS").await.unwrap();
    let message = stream
        .get_last_raw_message_by_subject(subject)
        .await
        .unwrap();
    serde_json::from_slice(&message.payload).unwrap()
}

#[tokio::test]
async fn one_email_sent_per_email_under_a_sigkill_redelivery_and_a_lost_ledger() {
    let system = System::start().await;
    let doomed = welcome_held_before_the_ack(&system).await;
    let event = CloudEvent::new("/signup", user("outcome@example.com", "Out"));
    system.publisher.publish_event(&event).await.unwrap();
    // The outcome goes out after the send and before the ack, so the kill comes after both.
    system.wait_on(SENT, 1, WAIT).await;
    let _survivor = kill_and_redeliver(&system, &doomed).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        system.count_on(SENT).await,
        1,
        "the redelivery found the outcome done"
    );

    let sent: CloudEvent<EmailSent> = last(&system, SENT).await;
    let mail = &system.smtp.messages()[0];
    assert_eq!(sent.data.to, "ou***@example.com", "the recipient is masked");
    assert_eq!(sent.data.source_type, "users.registered");
    assert_eq!(sent.data.function, "welcome");
    assert_eq!(sent.data.template, "welcome-email");
    assert_eq!(
        Some(sent.data.message_id.clone()),
        mail.raw_header("Message-ID"),
        "the outcome names the email's Message-ID"
    );
    let raw = system
        .js
        .get_stream("EVENTS")
        .await
        .unwrap()
        .get_last_raw_message_by_subject(SENT)
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&raw.payload).contains("outcome@example.com"),
        "no address in clear in the outcome"
    );

    // A `done` lost after the publish landed (here: the whole ledger lost) repeats the publish under the same
    // id, and the stream's duplicate window keeps one. The email itself goes again (its Message-ID is the same).
    system
        .js
        .get_stream("KV_jetfn-ledger")
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
    assert_eq!(sent.data.source_id, event.id);
    system
        .publish_raw(
            "events.users.registered",
            &serde_json::to_vec(&event).unwrap(),
        )
        .await;
    system.smtp.wait_for_messages(2, WAIT).await;
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        system.count_on(SENT).await,
        1,
        "the duplicate window absorbed the repeat"
    );
}

#[tokio::test]
async fn a_sigkill_between_the_outcome_s_publish_and_its_record_still_yields_one_email_sent_and_one_email()
 {
    let system = System::start().await;
    let doomed = system
        .spawn(
            "welcome",
            &[(
                "JOB_TEST_DELAY_BEFORE_OUTCOME_RECORD_MS",
                "60000".to_owned(),
            )],
        )
        .await;
    let event = CloudEvent::new("/signup", user("between@example.com", "Bet"));
    system.publisher.publish_event(&event).await.unwrap();
    // The outcome's publish was acked; its mark on the email's key waits.
    system.wait_on(SENT, 1, WAIT).await;
    let bucket = system.js.get_key_value("jetfn-ledger").await.unwrap();
    let effect_key = runtime::Ledger::new(
        system.js.clone(),
        bucket.clone(),
        "welcome",
        Duration::from_secs(120),
    )
    .key(&event.id, "welcome-email:between@example.com");
    let before = bucket.get(&effect_key).await.unwrap().unwrap_or_default();
    let before = String::from_utf8_lossy(&before).into_owned();
    assert!(
        before.starts_with("done ") && !before.contains(" +"),
        "the email is recorded sent and its outcome not yet: {before:?}"
    );

    doomed.sigkill();
    doomed.wait_exit(WAIT).await;
    let survivor = system.welcome().await;
    survivor.wait_for_output("already sent", WAIT).await;
    wait_for_value(&bucket, &effect_key, |value| {
        value.starts_with("done ") && value.contains(" +")
    })
    .await;
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        system.count_on(SENT).await,
        1,
        "the redelivery published again under the same id and the duplicate window kept one"
    );
    assert_eq!(system.smtp.messages().len(), 1, "the email went once");
}

#[tokio::test]
async fn a_dead_lettered_password_reset_publishes_one_email_failed() {
    let system = System::start().await;
    let process = system.spawn("password-reset", &[]).await;
    system.smtp.reject_recipients(550, "5.1.1 no such user");
    let mut request = PasswordResetRequested::example();
    request.expires_at = (time::OffsetDateTime::now_utc() + time::Duration::minutes(30))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    request.email = "refused@example.com".to_owned();
    system.emails().send_password_reset(request).await.unwrap();

    let records = system.wait_dlq(1).await;
    system.wait_on(FAILED, 1, WAIT).await;
    let failed: CloudEvent<EmailFailed> = last(&system, FAILED).await;
    assert_eq!(failed.data.kind, FailureKind::Permanent);
    assert_eq!(failed.data.to, "re***@example.com");
    assert_eq!(failed.data.function, "password-reset");
    assert_eq!(failed.data.source_type, "users.password_reset_requested");
    assert_eq!(failed.data.template, "reset-email");

    // A replay of the dead letter fails the same way: a second record, still one outcome (the ledger has it).
    let dlq_sequence = records[0].0;
    system
        .jetfn(&["dlq", "replay", &dlq_sequence.to_string()])
        .await;
    let deadline = std::time::Instant::now() + WAIT;
    while system.smtp.attempts().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the replay was not attempted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    system.wait_settled("password-reset").await;
    let records = system.wait_dlq(1).await;
    assert!(
        records.iter().any(|(seq, _)| *seq != dlq_sequence),
        "the replay was dead-lettered again: {} records",
        records.len()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        system.count_on(FAILED).await,
        1,
        "one email.failed per event"
    );
    assert_eq!(system.count_on(SENT).await, 0);
    assert!(!process.output().contains("refused@example.com"));
}

#[tokio::test]
async fn a_job_longer_than_ack_wait_is_kept_alive_by_its_progress_and_readable_mid_job() {
    let system = System::start().await;
    // 10 steps of 200 ms: two seconds, five times the test consumers' ack_wait (400 ms), with the runtime's own
    // progress timer not yet running: only the job's reports keep the message.
    let welcome = system
        .spawn("welcome", &[("JOB_TEST_SLOW_JOB", "10x200".to_owned())])
        .await;
    let event = CloudEvent::new("/signup", user("slow@example.com", "Slow"));
    system.publisher.publish_event(&event).await.unwrap();
    let event_id = event.id.clone();

    // Mid-job: the SDK reads the progress while the email is not yet sent.
    let deadline = std::time::Instant::now() + WAIT;
    let seen = loop {
        if let Some(progress) = sdk::read_progress(&system.client, "welcome", &event_id)
            .await
            .unwrap()
            && progress.done >= 3
        {
            break progress;
        }
        assert!(std::time::Instant::now() < deadline, "no progress reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen.total, 10);
    assert_eq!(seen.event_id, event_id);
    assert_eq!(seen.note, "test step");
    assert!(system.smtp.messages().is_empty(), "read while the job ran");

    system.smtp.wait_for_messages(1, WAIT).await;
    let info = system.wait_settled("welcome").await;
    assert_eq!(info.num_redelivered, 0, "never redelivered: {info:?}");
    assert_eq!(
        info.delivered.consumer_sequence, 1,
        "one delivery: {info:?}"
    );
    let last = sdk::read_progress(&system.client, "welcome", &event_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((last.done, last.total), (10, 10));
    assert_eq!(system.smtp.messages().len(), 1);
    drop(welcome);
}

#[tokio::test]
async fn a_welcome_failing_on_every_attempt_publishes_one_exhausted_email_failed() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    system.smtp.fail_next_data(vec![(451, "4.7.0 busy"); 10]);
    let event = CloudEvent::new("/signup", user("busy@example.com", "Busy"));
    system.publisher.publish_event(&event).await.unwrap();
    system.wait_dlq(1).await;
    system.wait_on(FAILED, 1, WAIT).await;
    system.wait_settled("welcome").await;
    let failed: CloudEvent<EmailFailed> = last(&system, FAILED).await;
    assert_eq!(failed.data.kind, FailureKind::Exhausted);
    assert_eq!(failed.data.source_id, event.id);
    assert_eq!(failed.data.to, "bu***@example.com");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        system.count_on(FAILED).await,
        1,
        "the earlier failed attempts published none"
    );
    assert_eq!(system.count_on(SENT).await, 0);
}

/// Waits until the ledger's `key` holds a value `wanted` accepts (an outcome's mark written by a redelivery).
async fn wait_for_value(
    bucket: &async_nats::jetstream::kv::Store,
    key: &str,
    wanted: impl Fn(&str) -> bool,
) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let value = bucket.get(key).await.unwrap().unwrap_or_default();
        let value = String::from_utf8_lossy(&value);
        if wanted(&value) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the ledger's {key} still holds {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every write to the ledger bucket's subjects, as (key, value) in the order the server routed them.
async fn ledger_writes(
    system: &System,
) -> (
    std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>,
    tokio::task::JoinHandle<()>,
) {
    use futures::StreamExt as _;
    let mut writes = system.client.subscribe("$KV.jetfn-ledger.>").await.unwrap();
    system.client.flush().await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let into = seen.clone();
    let task = tokio::spawn(async move {
        while let Some(message) = writes.next().await {
            let key = message
                .subject
                .trim_start_matches("$KV.jetfn-ledger.")
                .to_owned();
            let value = String::from_utf8_lossy(&message.payload).into_owned();
            into.lock().unwrap().push((key, value));
        }
    });
    (seen, task)
}

#[tokio::test]
async fn an_email_sent_outcome_is_a_mark_on_its_email_s_key_and_an_older_build_s_record_is_honoured()
 {
    let system = System::start().await;
    let (writes, listener) = ledger_writes(&system).await;
    let _welcome = system.spawn("welcome", &[]).await;
    let event = CloudEvent::new("/signup", user("claimless@example.com", "Cla"));
    system.publisher.publish_event(&event).await.unwrap();
    system.wait_on(SENT, 1, WAIT).await;
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The email's effect: a claim, then its `done`, then the outcome's mark on the same key. One key per email:
    // nats-server holds every key of the bucket in memory.
    let bucket = system.js.get_key_value("jetfn-ledger").await.unwrap();
    let keys = runtime::Ledger::new(
        system.js.clone(),
        bucket.clone(),
        "welcome",
        Duration::from_secs(120),
    );
    let effect_key = keys.key(&event.id, "welcome-email:claimless@example.com");
    let legacy_key = keys.key(
        &event.id,
        "outcome:email.sent:welcome-email:claimless@example.com",
    );
    let seen: Vec<(String, String)> = writes
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, value)| value.starts_with("pending ") || value.starts_with("done "))
        .cloned()
        .collect();
    assert_eq!(seen.len(), 3, "three ledger writes per email: {seen:?}");
    assert!(
        seen.iter().all(|(key, _)| *key == effect_key),
        "every write is on the email's key {effect_key}: {seen:?}"
    );
    assert!(seen[0].1.starts_with("pending "), "{seen:?}");
    let marked = &seen[2].1;
    assert!(
        marked.starts_with("done ") && marked.contains(" +"),
        "the last write marks the outcome: {seen:?}"
    );
    assert_eq!(
        bucket.get(&legacy_key).await.unwrap(),
        None,
        "the outcome has no key of its own"
    );

    // An older build recorded the outcome on a key of its own and no mark: a redelivery honours it and
    // publishes nothing (it would write the mark if it had).
    bucket.put(&effect_key, "done 1".into()).await.unwrap();
    bucket.put(&legacy_key, "done 1".into()).await.unwrap();
    let redeliver = || async {
        system
            .publish_raw(
                "events.users.registered",
                &serde_json::to_vec(&event).unwrap(),
            )
            .await;
    };
    redeliver().await;
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        bucket.get(&effect_key).await.unwrap().as_deref(),
        Some(&b"done 1"[..]),
        "nothing published again, so no mark"
    );

    // A claim on the outcome's own key (an older build claimed outcomes, and one may be mid-publish in a rolling
    // update) does not hold a redelivery's outcome back: the repeat goes out under the same id, the duplicate
    // window keeps one, and the mark is written.
    bucket
        .put(
            &legacy_key,
            "pending 0123456789abcdef0123456789abcdef 1".into(),
        )
        .await
        .unwrap();
    redeliver().await;
    wait_for_value(&bucket, &effect_key, |value| value.starts_with("done 1 +")).await;
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(system.count_on(SENT).await, 1, "one email.sent");
    assert_eq!(system.smtp.messages().len(), 1, "the email went once");
    listener.abort();
}
