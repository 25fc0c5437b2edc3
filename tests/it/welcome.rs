//! The welcome function end to end: real nats-server, real SMTP server, the real binary.

use std::time::Duration;

use events::{CloudEvent, Locale};
use runtime::dlq::DeathKind;

use crate::support::{System, TEST_BACKOFF, WAIT, assert_no_address, user};

#[tokio::test]
async fn a_registered_user_gets_one_welcome_email_with_escaped_html() {
    let system = System::start().await;
    let welcome = system.welcome().await;
    let published = system
        .publisher
        .publish(user(
            "ada.lovelace@example.com",
            "<script>alert(1)</script> Ada",
        ))
        .await
        .expect("a valid event publishes");
    assert_eq!(
        (published.stream.as_str(), published.duplicate),
        ("EVENTS", false)
    );

    let mails = system.smtp.wait_for_messages(1, WAIT).await;
    let mail = &mails[0];
    assert_eq!(mail.rcpt_to, vec!["ada.lovelace@example.com".to_owned()]);
    assert_eq!(mail.header_count("Subject"), 1);
    assert!(
        mail.header("Subject").unwrap().contains("Welcome"),
        "{:?}",
        mail.header("Subject")
    );
    let html = mail.html_part().expect("an HTML part");
    let text = mail.text_part().expect("a text part");
    assert!(html.contains("&lt;script&gt;alert(1)&lt;"), "{html}");
    assert!(
        !html.contains("<script>"),
        "user data reached the HTML unescaped: {html}"
    );
    assert!(
        text.contains("<script>alert(1)</script> Ada"),
        "the text part keeps the literal name: {text}"
    );

    let info = system.wait_settled("welcome").await;
    assert_eq!(
        info.delivered.consumer_sequence, 1,
        "one delivery, no retry"
    );
    assert!(system.dlq().await.is_empty());
    assert_no_address(&welcome.output(), "ada.lovelace@example.com");
}

/// The threads tokio names its workers: `JOB_THREADS` must change what the process runs, not only what it reads.
fn tokio_workers(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the function's threads in /proc")
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.trim() == "tokio-rt-worker")
        })
        .count()
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the function's threads in /proc")
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

/// An email function runs every task on one thread unless `JOB_THREADS` asks for workers (runtime::threads); both
/// ways it sends each email once and settles every event.
#[tokio::test]
async fn welcome_runs_on_one_thread_unless_job_threads_asks_for_workers_and_sends_alike() {
    let system = System::start().await;
    for (threads, workers) in [(None, 0), (Some("3"), 3)] {
        let extra: Vec<(&'static str, String)> = threads
            .map(|count| ("JOB_THREADS", count.to_owned()))
            .into_iter()
            .collect();
        let welcome = system.spawn("welcome", &extra).await;
        assert_eq!(
            tokio_workers(welcome.pid()),
            workers,
            "JOB_THREADS={threads:?}: {:?}",
            thread_names(welcome.pid())
        );
        let before = system.smtp.messages().len();
        for n in 0..5 {
            system
                .publisher
                .publish(user(&format!("t{workers}-{n}@example.com"), "Ada"))
                .await
                .expect("a valid event publishes");
        }
        let mails = system.smtp.wait_for_messages(before + 5, WAIT).await;
        assert_eq!(mails.len(), before + 5, "JOB_THREADS={threads:?}");
        system.wait_settled("welcome").await;
        welcome.sigterm();
        assert!(
            welcome.wait_exit(WAIT).await.success(),
            "JOB_THREADS={threads:?}"
        );
    }
    assert!(system.dlq().await.is_empty());
}

#[tokio::test]
async fn vietnamese_locale_is_used_when_asked() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    let mut data = user("lan@example.com", "Lan");
    data.locale = Locale::Vi;
    system.publisher.publish(data).await.unwrap();
    let mail = &system.smtp.wait_for_messages(1, WAIT).await[0];
    assert!(
        mail.raw_header("Content-Language")
            .unwrap_or_default()
            .contains("vi")
    );
    assert!(mail.text_part().unwrap().contains("Lan"));
    assert_ne!(
        mail.header("Subject"),
        Some("Welcome to jetfn, Lan".to_owned()),
        "the subject is not English"
    );
}

#[tokio::test]
async fn an_invalid_event_is_dead_lettered_at_once_with_the_field_named() {
    let system = System::start().await;
    let welcome = system.welcome().await;
    // A client that skips validation: the email is not an address, and `name` is missing.
    let event =
        br#"{"specversion":"1.0","id":"bad-1","source":"/elsewhere","type":"users.registered",
        "data":{"user_id":"u1","email":"secret-but-not-an-address"}}"#;
    let sequence = system.publish_raw("events.users.registered", event).await;
    let not_json = system
        .publish_raw("events.users.registered", b"{ this is not json")
        .await;
    let wrong_type = system
        .publish_raw(
            "events.users.registered",
            br#"{"specversion":"1.0","id":"x","source":"/s","type":"orders.unknown","data":{}}"#,
        )
        .await;

    let records = system.wait_dlq(3).await;
    let by_seq = |seq: u64| {
        &records
            .iter()
            .find(|(_, letter)| letter.sequence == seq)
            .expect("a record per event")
            .1
    };
    let letter = by_seq(sequence);
    assert_eq!(letter.kind, DeathKind::Invalid);
    assert_eq!(letter.attempts, 1, "an invalid event is never retried");
    assert!(
        letter.reason.contains("/data/email") && letter.reason.contains("/data"),
        "{}",
        letter.reason
    );
    assert!(letter.reason.contains("name"), "{}", letter.reason);
    assert!(
        !letter.reason.contains("secret-but-not-an-address"),
        "the reason quotes the value: {}",
        letter.reason
    );
    assert_eq!(
        letter.payload.as_ref(),
        event,
        "the DLQ keeps the original payload"
    );
    assert_eq!(
        (
            letter.subject.as_str(),
            letter.stream.as_str(),
            letter.consumer.as_str()
        ),
        ("events.users.registered", "EVENTS", "welcome")
    );
    assert!(by_seq(not_json).reason.contains("not JSON"));
    assert!(by_seq(wrong_type).reason.contains("/type"));

    let info = system.wait_settled("welcome").await;
    assert_eq!(
        info.delivered.consumer_sequence, 3,
        "three events, three deliveries: nothing was retried"
    );
    assert!(system.smtp.attempts().is_empty(), "no email was attempted");
    assert_no_address(&welcome.output(), "secret-but-not-an-address");
}

#[tokio::test]
async fn the_stream_refuses_events_over_256_kib() {
    let system = System::start().await;
    let big = vec![b'x'; 300 * 1024];
    let refused = system
        .js
        .publish("events.users.registered", big.into())
        .await
        .unwrap()
        .await;
    assert!(
        refused.is_err(),
        "max_msg_size holds the 256 KiB line at the stream"
    );
}

#[tokio::test]
async fn two_4xx_replies_then_success_send_exactly_one_email_on_the_backoff_schedule() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    system
        .smtp
        .fail_next_data(vec![(451, "4.3.0 try later"), (452, "4.2.2 mailbox busy")]);
    system
        .publisher
        .publish(user("grace@example.com", "Grace"))
        .await
        .unwrap();

    let mails = system.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails.len(), 1);
    let attempts = system.smtp.attempts();
    let codes: Vec<u16> = attempts.iter().map(|attempt| attempt.code).collect();
    assert_eq!(codes, vec![451, 452, 250]);
    for (i, pair) in attempts.windows(2).enumerate() {
        let gap = pair[1].at - pair[0].at;
        let expected = TEST_BACKOFF[i];
        assert!(
            gap >= expected - Duration::from_millis(50),
            "attempt {} came {gap:?} after the previous; backoff says {expected:?}",
            i + 2
        );
        assert!(
            gap < expected + Duration::from_millis(1500),
            "attempt {} came {gap:?} late; backoff says {expected:?}",
            i + 2
        );
    }
    let info = system.wait_settled("welcome").await;
    assert_eq!(
        info.delivered.consumer_sequence, 3,
        "three deliveries of one event"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(system.smtp.messages().len(), 1, "exactly one email");
    assert!(system.dlq().await.is_empty());
}

#[tokio::test]
async fn a_5xx_reply_is_dead_lettered_at_the_first_attempt() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    system.smtp.reject_recipients(550, "5.1.1 no such user");
    let published = system
        .publisher
        .publish(user("nobody@example.com", "Nobody"))
        .await
        .unwrap();

    let records = system.wait_dlq(1).await;
    let letter = &records[0].1;
    assert_eq!(letter.kind, DeathKind::Permanent);
    assert_eq!(letter.attempts, 1);
    assert_eq!(letter.sequence, published.sequence);
    assert!(letter.reason.contains("550"), "{}", letter.reason);
    assert!(
        !letter.reason.contains("nobody@example.com"),
        "{}",
        letter.reason
    );
    assert!(
        letter.headers.get("traceparent").is_some(),
        "the record keeps the trace context"
    );
    system.wait_settled("welcome").await;
    assert_eq!(system.smtp.attempts().len(), 1, "never retried");
}

/// The dead-letter record's write outlasting `ack_wait` (400 ms in the tests; here 1.5 s, as a stalled server
/// would make it): the attempt keeps the message with in-progress acks until its TERM, so the server never gives
/// it to another attempt, which would send the email the 550 refused (the refusal here is for one DATA only).
/// Seen in CI before the fix: an email sent on the redelivery of an event being dead-lettered.
#[tokio::test]
async fn a_slow_dead_letter_write_keeps_the_message_and_nothing_is_sent_on_a_redelivery() {
    let system = System::start().await;
    let _welcome = system
        .spawn(
            "welcome",
            &[("JOB_TEST_DELAY_BEFORE_DEAD_LETTER_MS", "1500".to_owned())],
        )
        .await;
    system
        .smtp
        .fail_next_data_to("slow-dlq@example.com", [(550, "5.1.1 no such user")]);
    system
        .publisher
        .publish(user("slow-dlq@example.com", "Slow"))
        .await
        .unwrap();
    let records = system.wait_dlq(1).await;
    assert_eq!(records[0].1.attempts, 1);
    let info = system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(system.smtp.messages().is_empty(), "no email after the 550");
    assert_eq!(info.delivered.consumer_sequence, 1, "delivered once");
    assert_eq!(system.wait_dlq(1).await.len(), 1, "one dead letter");
}

#[tokio::test]
async fn transient_failures_on_every_attempt_end_in_the_dlq_with_the_history() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    system.smtp.fail_next_data(vec![(451, "4.7.0 busy"); 10]);
    system
        .publisher
        .publish(user("tries@example.com", "Tries"))
        .await
        .unwrap();
    let records = system.wait_dlq(1).await;
    let letter = &records[0].1;
    assert_eq!(letter.kind, DeathKind::Exhausted);
    assert_eq!(letter.attempts, 4);
    assert!(
        letter.first_failure < letter.last_failure,
        "{:?} {:?}",
        letter.first_failure,
        letter.last_failure
    );
    assert!(letter.reason.contains("451"), "{}", letter.reason);
    assert_eq!(system.smtp.attempts().len(), 4);
    assert!(system.smtp.messages().is_empty());
}

#[tokio::test]
async fn the_same_event_published_twice_sends_one_email() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    let event = CloudEvent::new("/signup", user("twice@example.com", "Twice"));
    let first = system.publisher.publish_event(&event).await.unwrap();
    let second = system.publisher.publish_event(&event).await.unwrap();
    assert!(
        second.duplicate && second.sequence == first.sequence,
        "the duplicate window absorbs it"
    );
    // A re-publish after the window: a new message id, the same event id. The ledger absorbs this one.
    let bytes = serde_json::to_vec(&event).unwrap();
    system.publish_raw("events.users.registered", &bytes).await;

    system.smtp.wait_for_messages(1, WAIT).await;
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(system.smtp.messages().len(), 1, "one email for one event");
}

/// A welcome function that holds each event a minute between its effect and its ack: a kill lands in between.
pub(crate) async fn welcome_held_before_the_ack(system: &System) -> testkit::FunctionProcess {
    system
        .spawn(
            "welcome",
            &[("JOB_TEST_DELAY_BEFORE_ACK_MS", "60000".to_owned())],
        )
        .await
}

/// SIGKILLs `doomed` before its ack and starts another welcome: the event is delivered again and the ledger says
/// it was already sent. Returns the survivor.
///
/// The kill waits for `doomed` to hold the ack: the SMTP server has the message as soon as the send's DATA ends,
/// before the function has its reply and writes the ledger's `done`, and a kill in that gap is the documented
/// window in which a redelivery sends again (ARCHITECTURE.md), not the case these tests pin.
pub(crate) async fn kill_and_redeliver(
    system: &System,
    doomed: &testkit::FunctionProcess,
) -> testkit::FunctionProcess {
    doomed.wait_for_output("holding the ack", WAIT).await;
    doomed.sigkill();
    doomed.wait_exit(WAIT).await;
    let survivor = system.welcome().await;
    let info = system.wait_settled("welcome").await;
    assert!(
        info.delivered.consumer_sequence >= 2,
        "the message was redelivered: {info:?}"
    );
    survivor.wait_for_output("already sent", WAIT).await;
    survivor
}

#[tokio::test]
async fn sigkill_after_the_send_and_before_the_ack_still_sends_one_email() {
    let system = System::start().await;
    let doomed = welcome_held_before_the_ack(&system).await;
    system
        .publisher
        .publish(user("crash@example.com", "Crash"))
        .await
        .unwrap();
    system.smtp.wait_for_messages(1, WAIT).await;
    let _survivor = kill_and_redeliver(&system, &doomed).await;
    assert_eq!(
        system.smtp.messages().len(),
        1,
        "the ledger kept the redelivery from sending again"
    );
}

#[tokio::test]
async fn sigterm_during_a_slow_send_finishes_it_acks_it_and_exits_zero() {
    let system = System::start().await;
    let welcome = system.welcome().await;
    sigterm_during_a_slow_send(&system, welcome).await;
}

/// With plain acks the ack is queued in the runtime's outbox when the attempt ends, during the drain, and must still
/// reach the server before the process exits. The drain hands the outbox's queue to the client before the last
/// flush; the outbox's own task has usually sent it by then already (without that step this passed 3 runs of 3),
/// so this holds the outcome, not which of the two sent it.
#[tokio::test]
async fn sigterm_during_a_slow_send_with_plain_acks_still_acks_it_before_exiting() {
    let system = System::start().await;
    let welcome = system
        .spawn("welcome", &[("JOB_ACK", "plain".to_owned())])
        .await;
    sigterm_during_a_slow_send(&system, welcome).await;
}

async fn sigterm_during_a_slow_send(system: &System, welcome: testkit::FunctionProcess) {
    system.smtp.delay_data_reply(Duration::from_secs(2));
    system
        .publisher
        .publish(user("slow@example.com", "Slow"))
        .await
        .unwrap();
    // Wait until the handler is inside the send.
    let deadline = std::time::Instant::now() + WAIT;
    while system
        .consumer_info("EVENTS", "welcome")
        .await
        .num_ack_pending
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the event was never delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    welcome.sigterm();
    let status = welcome.wait_exit(WAIT).await;
    assert_eq!(
        status.code(),
        Some(0),
        "drained and exited cleanly:\n{}",
        welcome.output()
    );
    assert_eq!(system.smtp.messages().len(), 1);
    let info = system.consumer_info("EVENTS", "welcome").await;
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "acked before exit: {info:?}"
    );
    assert_eq!(
        (
            info.delivered.consumer_sequence,
            info.ack_floor.consumer_sequence
        ),
        (1, 1),
        "acked, not redelivered: {info:?}"
    );
}

#[tokio::test]
async fn a_panicking_handler_is_retried_and_the_process_keeps_serving() {
    // The welcome handler does not panic on any input, so this drives the runtime with one that does.
    let system = System::start().await;
    let runtime = runtime::Runtime::new(
        "welcome",
        &runtime::config::NatsConfig::local(system.nats.url()),
        job_config(),
    )
    .await
    .unwrap();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = calls.clone();
    let stop = tokio_util_like_stop();
    let serving = tokio::spawn(runtime.serve(
        move |job: runtime::Job<events::UserRegistered>| {
            let counted = counted.clone();
            async move {
                let call = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                assert!(call > 0 || job.attempt > 1, "first attempt panics");
                Ok(())
            }
        },
        stop.1,
    ));
    system
        .publisher
        .publish(user("panic@example.com", "Panic"))
        .await
        .unwrap();
    system
        .publisher
        .publish(user("calm@example.com", "Calm"))
        .await
        .unwrap();
    let info = system.wait_settled("welcome").await;
    assert_eq!(
        info.delivered.consumer_sequence, 3,
        "two events, one retried once: {info:?}"
    );
    assert!(
        calls.load(std::sync::atomic::Ordering::SeqCst) >= 3,
        "the panicking event was retried and the other served"
    );
    assert!(system.dlq().await.is_empty());
    let _ = stop.0.send(());
    serving.await.unwrap().unwrap();
}

fn job_config() -> runtime::config::JobConfig {
    serde_json::from_value(serde_json::json!({})).expect("JobConfig has defaults for every field")
}

fn tokio_util_like_stop() -> (
    tokio::sync::oneshot::Sender<()>,
    impl std::future::Future<Output = ()>,
) {
    let (sender, receiver) = tokio::sync::oneshot::channel::<()>();
    (sender, async move {
        let _ = receiver.await;
    })
}

/// The status of `GET path` on a health port.
pub(crate) async fn http_status(addr: &str, path: &str) -> u16 {
    crate::telemetry::http_get(addr, path).await.0
}

#[tokio::test]
async fn health_probes_say_alive_and_ready_only_when_bound() {
    let system = System::start().await;
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let _welcome = system
        .spawn("welcome", &[("JOB_HEALTH_ADDR", addr.clone())])
        .await;
    assert_eq!(http_status(&addr, "/livez").await, 200);
    assert_eq!(http_status(&addr, "/readyz").await, 200);

    // A function whose consumer does not exist is alive but not ready, and keeps trying to bind.
    let unbound = format!("127.0.0.1:{}", testkit::free_port());
    let mut env = system.env();
    env.extend([
        ("JOB_HEALTH_ADDR", unbound.clone()),
        ("JOB_CONSUMER", "nobody".to_owned()),
    ]);
    let waiting = testkit::FunctionProcess::spawn("welcome", &env);
    waiting.wait_for_output("cannot bind yet", WAIT).await;
    assert_eq!(http_status(&unbound, "/livez").await, 200);
    assert_eq!(http_status(&unbound, "/readyz").await, 503);
}

#[tokio::test]
async fn plain_acks_settle_every_event_and_a_redelivery_still_sends_once() {
    let system = System::start().await;
    let welcome = system
        .spawn("welcome", &[("JOB_ACK", "plain".to_owned())])
        .await;
    for n in 0..5 {
        system
            .publisher
            .publish(user(&format!("plain{n}@example.com"), "Plain"))
            .await
            .unwrap();
    }
    system.smtp.wait_for_messages(5, WAIT).await;
    let info = system.wait_settled("welcome").await;
    assert_eq!(info.delivered.consumer_sequence, 5, "one delivery each");
    drop(welcome);

    // What a lost plain ack leads to: the event comes again, and the ledger keeps it from sending twice.
    let crashed = system
        .spawn(
            "welcome",
            &[
                ("JOB_ACK", "plain".to_owned()),
                ("JOB_TEST_DELAY_BEFORE_ACK_MS", "60000".to_owned()),
            ],
        )
        .await;
    system
        .publisher
        .publish(user("lost-ack@example.com", "Lost"))
        .await
        .unwrap();
    system.smtp.wait_for_messages(6, WAIT).await;
    // After the ledger's `done`, not between the send and it (see `kill_and_redeliver`).
    crashed.wait_for_output("holding the ack", WAIT).await;
    crashed.sigkill();
    crashed.wait_exit(WAIT).await;
    let survivor = system
        .spawn("welcome", &[("JOB_ACK", "plain".to_owned())])
        .await;
    survivor.wait_for_output("already sent", WAIT).await;
    system.wait_settled("welcome").await;
    assert_eq!(system.smtp.messages().len(), 6);
}

#[tokio::test]
async fn an_unknown_ack_mode_stops_the_function_naming_the_variable() {
    let system = System::start().await;
    let mut env = system.env();
    env.push(("JOB_ACK", "sometimes".to_owned()));
    let welcome = testkit::FunctionProcess::spawn("welcome", &env);
    let status = welcome.wait_exit(WAIT).await;
    assert!(!status.success());
    let output = welcome.output();
    assert!(
        output.contains("ACK") && output.contains("sometimes"),
        "{output}"
    );
}

/// Issue 14, item 11: an internationalised address (RFC 6531) passes validation, reaches the SMTP server with
/// `SMTPUTF8` on `MAIL FROM`, is delivered, and is masked in the logs like any other.
#[tokio::test]
async fn an_internationalised_address_is_mailed_with_smtputf8_and_masked_in_the_logs() {
    let system = System::start().await;
    let welcome = system.welcome().await;
    let address = "ngọc@example.vn";
    system
        .publisher
        .publish(user(address, "Ngọc Anh"))
        .await
        .expect("an RFC 6531 address publishes");
    let mails = system.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].rcpt_to, vec![address.to_owned()]);
    assert!(
        mails[0]
            .mail_parameters
            .iter()
            .any(|p| p.eq_ignore_ascii_case("SMTPUTF8")),
        "{:?}",
        mails[0].mail_parameters
    );
    system.wait_settled("welcome").await;
    assert!(system.dlq().await.is_empty());
    let output = welcome.output();
    assert_no_address(&output, address);
    assert!(output.contains("ng***@example.vn"), "{output}");
}
