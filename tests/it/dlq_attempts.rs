//! Every failed attempt in the dead letter (issue 11, item 3): an event that fails three times with three
//! different SMTP replies ends in the DLQ with the three attempts in order, each with its delivery number, time
//! and masked reason; `jetfn dlq show` prints them as a table; a replay does not carry them into the event.

use runtime::dlq::DeathKind;
use testkit::FunctionProcess;

use crate::support::{System, WAIT, user};

#[tokio::test]
async fn a_dead_letter_lists_every_failed_attempt_in_order_with_its_reason() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    // Two transient replies (retried on the backoff), then a permanent one (dead-lettered at once).
    system.smtp.fail_next_data(vec![
        (451, "4.3.0 try later"),
        (452, "4.2.2 mailbox busy"),
        (554, "5.7.1 message refused"),
    ]);
    let published = system
        .publisher
        .publish(user("thrice@example.com", "Thrice"))
        .await
        .unwrap();
    let records = system.wait_dlq(1).await;
    let (seq, letter) = &records[0];
    assert_eq!((letter.kind, letter.attempts), (DeathKind::Permanent, 3));
    let deliveries: Vec<u64> = letter.failed_attempts.iter().map(|a| a.delivery).collect();
    assert_eq!(deliveries, [1, 2, 3], "{:?}", letter.failed_attempts);
    for (attempt, code) in letter.failed_attempts.iter().zip(["451", "452", "554"]) {
        assert!(attempt.reason.contains(code), "{attempt:?} names {code}");
        assert!(!attempt.reason.contains("thrice@"), "masked: {attempt:?}");
    }
    let times: Vec<_> = letter.failed_attempts.iter().map(|a| a.at()).collect();
    assert!(
        times.windows(2).all(|pair| pair[0] < pair[1]),
        "in order: {times:?}"
    );
    assert_eq!(
        letter.first_failure, times[0],
        "the first attempt is the first failure"
    );

    let show = system.jetfn(&["dlq", "show", &seq.to_string()]).await;
    assert_attempt_rows(&show, "failed attempts");

    // `jetfn event` lists them too, under the function that failed them, in its table and in its JSON.
    let event = system.jetfn(&["event", &published.id]).await;
    assert_attempt_rows(&event, "welcome (welcome): failed attempts");
    // As a person runs it (no RUST_LOG, so no client log line beside the JSON), and nothing but the JSON printed.
    let report = crate::pause::cli_json(&system, &["event", &published.id, "--json"]).await;
    let welcome = report["copies"][0]["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|fate| fate["function"] == "welcome")
        .unwrap_or_else(|| panic!("{report}"));
    let deliveries: Vec<u64> = welcome["failed_attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| attempt["delivery"].as_u64().unwrap())
        .collect();
    assert_eq!(deliveries, [1, 2, 3], "{report}");

    // The replayed event carries none of the record's headers.
    let env = system.env();
    let replay = FunctionProcess::spawn_with_args(
        "jetfn",
        &["dlq", "replay", &seq.to_string(), "--keep"],
        &env,
    );
    assert_eq!(
        replay.wait_exit(WAIT).await.code(),
        Some(0),
        "{}",
        replay.output()
    );
    let events = system.js.get_stream("EVENTS").await.unwrap();
    let replayed = events
        .get_last_raw_message_by_subject("events.users.registered")
        .await
        .unwrap();
    assert!(
        replayed.headers.get("Jetfn-Replay-Of").is_some(),
        "the last message is the replay"
    );
    assert!(
        replayed
            .headers
            .iter()
            .all(|(name, _)| !AsRef::<str>::as_ref(name).starts_with("Jetfn-Dlq-")),
        "{:?}",
        replayed.headers
    );
    system.smtp.wait_for_messages(1, WAIT).await;
}

/// The three failed attempts, in order, in the table under the line that starts with `title` (after its header
/// row): each row's delivery number and SMTP code, and no address in clear anywhere in `output`.
fn assert_attempt_rows(output: &str, title: &str) {
    // The output is stdout and stderr together, so a log line of the client (`event: closed`) can land between a
    // table's header and its rows: left out here.
    let rows: Vec<&str> = output
        .lines()
        .filter(|line| !is_log_line(line))
        .skip_while(|line| !line.trim_start().starts_with(title))
        .skip(2)
        .take(3)
        .collect();
    assert_eq!(rows.len(), 3, "{output}");
    for ((row, delivery), code) in rows.iter().zip(["1", "2", "3"]).zip(["451", "452", "554"]) {
        assert!(
            row.trim_start().starts_with(delivery) && row.contains(code),
            "row {delivery} names {code}: {output}"
        );
    }
    assert!(!output.contains("thrice@example.com"), "{output}");
}

/// A tracing log line (`2026-11-30T13:56:18.778312Z  INFO event: closed`): a UTC timestamp, then a level.
fn is_log_line(line: &str) -> bool {
    let mut words = line.split_whitespace();
    let stamp = words.next().unwrap_or_default();
    let level = words.next().unwrap_or_default();
    stamp.len() >= 20
        && stamp.as_bytes()[4] == b'-'
        && stamp.contains('T')
        && stamp.ends_with('Z')
        && ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level)
}
