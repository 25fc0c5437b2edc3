//! The operator's CLI beyond pause: `jetfn status` (aligned columns, oldest age, stream fill, no internal streams
//! or temporary consumers, `--json`), `jetfn event <id>` (where the event is, what each function did, its effects
//! and its trace link), `jetfn dlq replay` with a filter (dry run, going on past a failure, a summary), and errors a
//! person can act on.

use async_nats::jetstream::consumer;

use crate::pause::{cli, cli_json};
use crate::support::{System, WAIT, user};

const LONG: &str = "a-function-with-a-rather-long-name-for-a-column";

#[tokio::test]
async fn status_aligns_any_name_shows_age_and_fill_and_hides_what_is_internal() {
    let system = System::start().await;
    let events = system.js.get_stream("EVENTS").await.unwrap();
    events
        .create_consumer(consumer::pull::Config {
            durable_name: Some(LONG.to_owned()),
            filter_subject: "events.orders.placed".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    // A temporary reader, as a running `jetfn dlq list` has: not a function.
    let ordered = events
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let _reading = ordered.messages().await.unwrap();
    system
        .publisher
        .publish(events::OrderPlaced::example())
        .await
        .unwrap();

    let (code, output) = cli(&system, &["status"], &[]).await;
    assert_eq!(code, 0, "{output}");
    assert!(!output.contains("KV_"), "KV buckets are internal: {output}");
    let lines: Vec<&str> = output.lines().collect();
    let header = lines
        .iter()
        .position(|line| line.starts_with("stream") && line.contains("function"))
        .unwrap_or_else(|| panic!("a consumers table: {output}"));
    let column = lines[header].find("function").unwrap();
    let waiting_end = lines[header].find("waiting").unwrap() + "waiting".len();
    let rows: Vec<&str> = lines[header + 1..]
        .iter()
        .copied()
        .filter(|l| l.starts_with("EVENTS"))
        .collect();
    assert!(rows.len() >= 10, "every EVENTS function: {output}");
    for row in &rows {
        assert_ne!(
            &row[column..column + 1],
            " ",
            "the function column lines up: {output}"
        );
        assert_ne!(
            &row[column - 1..column],
            "-",
            "no name runs into the next column: {output}"
        );
        assert!(
            row[..waiting_end].ends_with(|c: char| c.is_ascii_digit()),
            "waiting counts end under their header: {output}"
        );
    }
    let long = rows
        .iter()
        .find(|row| row.contains(LONG))
        .expect("the long name is shown whole");
    assert!(long[waiting_end - 1..waiting_end] == *"1", "{output}");
    assert_eq!(
        rows.len(),
        output.lines().filter(|l| l.starts_with("EVENTS ")).count() - 1,
        "one EVENTS stream row"
    );

    let status = cli_json(&system, &["status", "--json"]).await;
    let streams: Vec<&str> = status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        streams.contains(&"EVENTS") && streams.contains(&"AUDIT"),
        "{streams:?}"
    );
    assert!(!streams.iter().any(|s| s.starts_with("KV_")), "{streams:?}");
    let consumers = status["consumers"].as_array().unwrap();
    assert!(
        consumers
            .iter()
            .all(|c| !c["consumer"].as_str().unwrap().is_empty())
    );
    assert_eq!(
        consumers.iter().filter(|c| c["stream"] == "EVENTS").count(),
        rows.len(),
        "the ordered reader is not listed: {status}"
    );
    let long = consumers.iter().find(|c| c["consumer"] == LONG).unwrap();
    assert_eq!(long["waiting"], 1);
    assert!(long["oldest_age_secs"].as_u64().is_some(), "{long}");
    let events_stream = status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "EVENTS")
        .unwrap();
    assert!(
        events_stream["fill"].as_f64().unwrap() < 0.01,
        "{events_stream}"
    );
    assert_eq!(events_stream["max_bytes"], 4_294_967_296u64);
    let all = cli_json(&system, &["status", "--json", "--all"]).await;
    assert!(
        all["streams"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "KV_jetfn-ledger"),
        "--all shows the buckets: {all}"
    );

    // Heartbeats read: a function with no replica running has zero. Heartbeats unreadable (here the bucket is
    // gone): no count at all, and why, never a zero for every function.
    assert!(status["replicas_unknown"].is_null(), "{status}");
    assert_eq!(status["replicas"]["welcome"]["count"], 0, "{status}");
    system
        .js
        .delete_key_value(ops::replicas::BUCKET)
        .await
        .unwrap();
    let status = cli_json(&system, &["status", "--json"]).await;
    assert!(
        status["replicas_unknown"]
            .as_str()
            .is_some_and(|why| why.contains(ops::replicas::BUCKET)),
        "{status}"
    );
    assert_eq!(status["replicas"], serde_json::json!({}), "{status}");
    let (code, output) = cli(&system, &["status"], &[]).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("replicas ?: "), "{output}");
}

/// Publishes a registration whose address the SMTP server refuses for good; returns it and the DLQ once its dead
/// letter is there.
async fn publish_refused(
    system: &System,
    email: &str,
    name: &str,
) -> (runtime::Published, Vec<(u64, runtime::dlq::DeadLetter)>) {
    system
        .smtp
        .reject_recipients(550, "5.1.1 mailbox unavailable");
    let published = system.publisher.publish(user(email, name)).await.unwrap();
    (published, system.wait_dlq(1).await)
}

/// What `jetfn event --json` says `consumer` did with one copy of the event.
fn fate<'a>(copy: &'a serde_json::Value, consumer: &str) -> &'a serde_json::Value {
    copy["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["consumer"] == consumer)
        .unwrap()
}

/// The error `replay_edited` refuses `event` with, as the edit of DLQ record `seq`.
async fn refused_edit(system: &System, seq: u64, event: &serde_json::Value) -> String {
    ops::dlq::replay_edited(
        &system.js,
        seq,
        &serde_json::to_vec(event).unwrap(),
        false,
        None,
    )
    .await
    .unwrap_err()
    .to_string()
}

#[tokio::test]
async fn event_tells_where_an_event_is_what_each_function_did_its_effects_and_its_trace() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    let published = system
        .publisher
        .publish(user("found@example.com", "Found"))
        .await
        .unwrap();
    system.smtp.wait_for_messages(1, WAIT).await;
    system.wait_settled("welcome").await;
    let (dead, records) = publish_refused(&system, "dead@example.com", "Dead").await;

    let trace = [(
        "JETFN_TRACE_URL_TEMPLATE",
        "http://traces.test/trace/{trace_id}".to_owned(),
    )];
    let (code, output) = cli(&system, &["event", &published.id], &trace).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains(&format!("EVENTS #{}", published.sequence)),
        "{output}"
    );
    assert!(output.contains("events.users.registered"), "{output}");
    assert!(output.contains("http://traces.test/trace/"), "{output}");
    assert!(
        !output.contains("found@example.com"),
        "the address is masked: {output}"
    );
    assert!(
        output.contains("email.sent") && output.contains("recorded"),
        "the table says whether the email's email.sent is recorded: {output}"
    );
    let report = {
        let (code, output) = cli(&system, &["event", &published.id, "--json"], &trace).await;
        assert_eq!(code, 0, "{output}");
        serde_json::from_str::<serde_json::Value>(&output)
            .unwrap_or_else(|err| panic!("{err}: {output}"))
    };
    let copy = &report["copies"][0];
    assert_eq!(copy["sequence"], published.sequence);
    let trace_id = copy["trace_id"].as_str().unwrap();
    assert_eq!(
        copy["trace_url"],
        format!("http://traces.test/trace/{trace_id}")
    );
    let welcome = fate(copy, "welcome");
    assert_eq!(welcome["state"], "acknowledged", "{report}");
    let effect = &report["effects"][0];
    assert_eq!(effect["function"], "welcome", "{report}");
    assert_eq!(
        effect["state"], "done",
        "the ledger recorded the email: {report}"
    );
    assert_eq!(
        effect["effect"], "welcome-email:fo***@example.com",
        "{report}"
    );
    assert_eq!(
        effect["email_sent"], true,
        "the ledger records the email's email.sent: {report}"
    );
    // Without the mark (an outcome that never went out), the report says so.
    let bucket = system.js.get_key_value("jetfn-ledger").await.unwrap();
    let key = effect["key"].as_str().unwrap().to_owned();
    bucket.put(&key, "done 1".into()).await.unwrap();
    let (code, output) = cli(&system, &["event", &published.id, "--json"], &trace).await;
    assert_eq!(code, 0, "{output}");
    let unmarked: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(unmarked["effects"][0]["state"], "done", "{unmarked}");
    assert_eq!(
        unmarked["effects"][0]["email_sent"], false,
        "no mark, no record of email.sent: {unmarked}"
    );
    assert!(
        !report["unknown"].as_array().unwrap().is_empty(),
        "what cannot be told is said"
    );

    let report = cli_json(
        &system,
        &["event", &dead.id, "--json", "--type", "users.registered"],
    )
    .await;
    let welcome = fate(&report["copies"][0], "welcome");
    assert_eq!(welcome["state"], "dead-lettered", "{report}");
    assert_eq!(welcome["dlq_sequence"], records[0].0, "{report}");
    assert_eq!(report["dead_letters"][0]["kind"], "permanent", "{report}");

    let (code, output) = cli(&system, &["event", "no-such-id"], &[]).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("not found"), "{output}");
}

/// A record written as a function would, on `consumer`, with `kind`.
fn letter(
    sequence: u64,
    consumer: &str,
    kind: runtime::dlq::DeathKind,
    lost: bool,
) -> runtime::dlq::DeadLetter {
    let mut event = events::CloudEvent::new("/t", user(&format!("r{sequence}@example.com"), "R"));
    event.id = format!("replay-{sequence}");
    let now = time::OffsetDateTime::now_utc();
    runtime::dlq::DeadLetter {
        subject: if lost {
            String::new()
        } else {
            "events.users.registered".to_owned()
        },
        stream: "EVENTS".to_owned(),
        sequence,
        consumer: consumer.to_owned(),
        attempts: 3,
        reason: format!("reason {sequence}"),
        kind,
        first_failure: now,
        last_failure: now,
        headers: async_nats::HeaderMap::new(),
        payload: if lost {
            bytes::Bytes::new()
        } else {
            serde_json::to_vec(&event).unwrap().into()
        },
        writer: "runtime".to_owned(),
        failed_attempts: Vec::new(),
        payload_lost: lost.then(|| "stream EVENTS now starts at sequence 9".to_owned()),
    }
}

#[tokio::test]
async fn dlq_replay_by_filter_dry_runs_goes_on_past_a_failure_and_sums_up() {
    use runtime::dlq::DeathKind;
    let system = System::start().await;
    for (sequence, consumer, kind, lost) in [
        (1, "welcome", DeathKind::Exhausted, false),
        (2, "welcome", DeathKind::Exhausted, true),
        (3, "welcome", DeathKind::Exhausted, false),
        (4, "welcome", DeathKind::Invalid, false),
        (5, "contact", DeathKind::Exhausted, false),
    ] {
        letter(sequence, consumer, kind, lost)
            .publish(&system.js, "dlq")
            .await
            .unwrap();
    }

    let (code, output) = cli(
        &system,
        &[
            "dlq",
            "replay",
            "--consumer",
            "welcome",
            "--kind",
            "exhausted",
            "--dry-run",
        ],
        &[],
    )
    .await;
    assert_eq!(
        code, 1,
        "a record that cannot be replayed fails the run: {output}"
    );
    assert!(
        output.contains("dry run: would have replayed 2 dead event(s), 1 refused"),
        "{output}"
    );
    assert_eq!(system.dlq().await.len(), 5, "a dry run changes nothing");
    assert_eq!(system.count_on("events.users.registered").await, 0);

    let (code, output) = cli(
        &system,
        &[
            "dlq",
            "replay",
            "--consumer",
            "welcome",
            "--kind",
            "exhausted",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("cannot be replayed"),
        "the refused one is named: {output}"
    );
    assert!(
        output.contains("replayed 2 dead event(s), 1 refused (payload lost), 0 failed"),
        "{output}"
    );
    assert_eq!(
        system.count_on("events.users.registered").await,
        2,
        "both others went on"
    );
    let left: Vec<u64> = system
        .dlq()
        .await
        .into_iter()
        .map(|(_, l)| l.sequence)
        .collect();
    assert_eq!(
        left,
        [2, 4, 5],
        "replayed records leave the DLQ; the rest stay"
    );

    let listed = cli_json(&system, &["dlq", "list", "--json", "--kind", "invalid"]).await;
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["event_id"], "replay-4");

    // --keep means nothing for a purge or a dry run: refused, not ignored.
    let (code, output) = cli(&system, &["dlq", "purge", "--all", "--keep"], &[]).await;
    assert_eq!(code, 2, "{output}");
    let (code, output) = cli(
        &system,
        &["dlq", "replay", "--all", "--keep", "--dry-run"],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{output}");
    let (code, output) = cli(&system, &["dlq", "replay"], &[]).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("name DLQ sequences, a filter"), "{output}");

    let (code, output) = cli(&system, &["dlq", "purge", "--consumer", "contact"], &[]).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("purged 1 dead event(s)"), "{output}");
    let audit = cli_json(&system, &["audit", "--json"]).await;
    let summary: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("dlq-replay".to_owned(), "partial".to_owned()),
            ("dlq-purge".to_owned(), "ok".to_owned())
        ],
        "dry runs are not changes: {audit}"
    );
}

/// `jetfn publish <type> --example` is how the README and `jetfn new` say to try a function out: every type's example
/// is accepted today, including those whose data must expire ahead (a reset link, a verification code).
#[tokio::test]
async fn every_catalog_example_publishes() {
    let system = System::start().await;
    for kind in events::CATALOG {
        let (code, output) = cli(&system, &["publish", kind.ty, "--example"], &[]).await;
        assert_eq!(code, 0, "{}: {output}", kind.ty);
    }
}

#[tokio::test]
async fn errors_are_one_line_a_person_can_act_on() {
    let system = System::start().await;
    let (code, output) = cli(&system, &["publish", "users.registered"], &[]).await;
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("--data") && output.contains("--example"),
        "{output}"
    );
    assert_eq!(output.trim().lines().count(), 1, "{output}");
    assert_eq!(
        system.count_on("events.users.registered").await,
        0,
        "nothing was published"
    );
    let (code, output) = cli(&system, &["publish", "users.registered", "--example"], &[]).await;
    assert_eq!(code, 0, "{output}");
    assert_eq!(output.trim().lines().count(), 1, "no chatter: {output}");

    let (code, output) = cli(&system, &["search", "anything"], &[]).await;
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("jetfn-index") && output.contains("not running"),
        "names the service: {output}"
    );
    assert_eq!(output.trim().lines().count(), 1, "{output}");

    let nobody = format!("nats://127.0.0.1:{}", testkit::free_port());
    let (code, output) = cli(&system, &["status"], &[("NATS_URL", nobody)]).await;
    assert_eq!(code, 1, "{output}");
    assert_eq!(output.trim().lines().count(), 1, "{output}");

    // Every listing takes --json.
    for args in [
        &["catalog", "--json"][..],
        &["schedule", "list", "--json"],
        &["dlq", "list", "--json"],
        &["audit", "--json"],
        &["status", "--json"],
    ] {
        cli_json(&system, args).await;
    }
}

/// `status --watch --json` prints one JSON document per line per refresh, each seeing what changed, until Ctrl-C.
#[tokio::test]
async fn status_watch_follows_the_backlog_until_interrupted() {
    let system = System::start().await;
    let env: Vec<(&str, String)> = vec![("NATS_URL", system.nats.url())];
    let watch = testkit::FunctionProcess::spawn_with_args(
        "jetfn",
        &["status", "--watch", "1", "--json"],
        &env,
    );
    watch.wait_for_output("\"consumers\"", WAIT).await;
    system
        .publisher
        .publish(user("watched@example.com", "Watched"))
        .await
        .unwrap();
    let welcome_waiting = |line: &str| -> Option<u64> {
        let status: serde_json::Value = serde_json::from_str(line).ok()?;
        status["consumers"]
            .as_array()?
            .iter()
            .find(|c| c["consumer"] == "welcome")?["waiting"]
            .as_u64()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while !watch
        .output()
        .lines()
        .any(|line| welcome_waiting(line) == Some(1))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "a refresh shows the new event:\n{}",
            watch.output()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    watch.signal(testkit::Signal::SIGINT);
    assert_eq!(
        watch.wait_exit(WAIT).await.code(),
        Some(0),
        "{}",
        watch.output()
    );
    assert!(
        watch
            .output()
            .lines()
            .all(|line| welcome_waiting(line).is_some()),
        "every line is a whole status:\n{}",
        watch.output()
    );
}

/// What a console's "edit and replay" calls (`ops::dlq::replay_edited`): an invalid edit is refused naming the
/// field and changes nothing; a valid one is replayed and the real function sends the email to the fixed address.
#[tokio::test]
async fn an_edited_dead_letter_is_checked_against_its_schema_then_replayed() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    let (published, records) = publish_refused(&system, "typo@exmaple.com", "Typo").await;
    let seq = records[0].0;
    system.smtp.clear_faults();
    let mut event: serde_json::Value = serde_json::from_slice(&records[0].1.payload).unwrap();

    event["data"]["email"] = "not an address".into();
    let err = refused_edit(&system, seq, &event).await;
    assert!(err.contains("/data/email"), "names the field: {err}");
    assert!(
        !err.contains("not an address"),
        "never quotes the value: {err}"
    );
    event["data"]["email"] = "fixed@example.com".into();
    event["id"] = "another-id".into();
    let err = refused_edit(&system, seq, &event).await;
    assert!(err.contains("/id"), "{err}");
    assert_eq!(
        system.dlq().await.len(),
        1,
        "a refused edit changes nothing"
    );

    event["id"] = published.id.clone().into();
    let step = ops::dlq::replay_edited(
        &system.js,
        seq,
        &serde_json::to_vec(&event).unwrap(),
        false,
        None,
    )
    .await
    .unwrap();
    assert!(
        matches!(step, ops::dlq::Step::Replayed { kept: false, .. }),
        "{step:?}"
    );
    let mails = system.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].rcpt_to, ["fixed@example.com"]);
    system.wait_settled("welcome").await;
    assert!(system.dlq().await.is_empty());
    let listed = ops::dlq::Summary::of(seq, &records[0].1);
    assert!(
        listed.trace_id.is_some(),
        "a record's trace id, for the console's link"
    );
}

/// Before: the oldest unfinished event was read by a direct get alone, which any replica may answer, and one that
/// had not applied the latest writes found nothing past the ack floor: `status` showed "-" for a backlog. Here a
/// stand-in for such a replica answers every direct get of the event stream "404 Message Not Found", and often
/// first (without the leader's confirmation, 4 runs in 5 showed "-" within 20 reads); the oldest age is now read
/// from the stream's leader alone, which the operator's user may read (STREAM.MSG.GET on the event stream).
#[tokio::test]
async fn status_confirms_a_direct_gets_none_with_the_leader() {
    let system = crate::permissions::secured_system().await;
    crate::support::stale_replica(&system.nats.url(), "EVENTS");
    let operator = one_waiting_event_read_by_the_operator(&system).await;
    for read in 0..60 {
        let welcome = waiting_welcome(&operator, read).await;
        assert!(
            welcome.oldest_age_secs.is_some() && welcome.oldest_unknown.is_none(),
            "read {read}: the backlog's oldest event, from the leader: {welcome:?}"
        );
    }
    assert!(
        !system.nats.log().contains(" Violation"),
        "the operator needed a right it does not have: {}",
        system.nats.log()
    );
}

/// Before: a direct get's answer was taken when it found a message, and any replica may answer one. A replica that
/// has not applied a deletion (interest retention removes a message once every function acknowledged it) still
/// returns the message the leader no longer holds, and `status` showed its age: older than the truth. Here a
/// stand-in answers every direct get of the event stream with a message stamped an hour ago (without the leader's
/// read, 3,600 s by the second read); the oldest age must be the waiting event's, seconds old.
#[tokio::test]
async fn status_takes_the_oldest_age_from_the_leader_not_from_a_replica_behind_a_deletion() {
    let system = crate::permissions::secured_system().await;
    let hour_ago = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    crate::support::stale_replica_holding(
        &system.nats.url(),
        "EVENTS",
        "events.users.registered",
        1,
        hour_ago,
        "{}",
    );
    let operator = one_waiting_event_read_by_the_operator(&system).await;
    for read in 0..20 {
        let welcome = waiting_welcome(&operator, read).await;
        let age = welcome
            .oldest_age_secs
            .unwrap_or_else(|| panic!("read {read}: no oldest age: {welcome:?}"));
        assert!(
            age < 600,
            "read {read}: the oldest age came from a replica's deleted message: {welcome:?}"
        );
    }
}

/// Publishes one event for the welcome function (which is not running) and connects as the operator.
async fn one_waiting_event_read_by_the_operator(
    system: &crate::support::System,
) -> async_nats::jetstream::Context {
    system
        .publisher
        .publish(user("backlog@example.com", "Backlog"))
        .await
        .unwrap();
    async_nats::jetstream::new(crate::permissions::connect_as(system, "operator").await)
}

/// The welcome function's line of `status` as `js` reads it, with its one waiting event.
async fn waiting_welcome(
    js: &async_nats::jetstream::Context,
    read: usize,
) -> ops::status::ConsumerStatus {
    let status = ops::status::read(js, false).await.unwrap();
    let welcome = status
        .consumers
        .into_iter()
        .find(|c| c.stream == "EVENTS" && c.consumer == "welcome")
        .expect("the welcome consumer");
    assert_eq!(welcome.waiting, 1, "read {read}: {welcome:?}");
    welcome
}

/// `jetfn event` takes a ledger key's "none" only from the bucket's leader (a replica that has not applied the
/// write answers a direct get "none", and "absent" reads as "the email was never sent"). A lagging replica is not
/// reproduced here (on one node the server's own direct get answers first, even beside a stand-in or a
/// `mirror_direct` mirror); this holds what the leader's read decides and that the operator may make it: a key
/// written `done` is done, a deleted one and a missing one are absent, and the server refused nothing.
#[tokio::test]
async fn event_reads_a_ledger_keys_absence_from_the_leader_with_the_operators_rights() {
    let system = crate::permissions::secured_system().await;
    let published = system
        .publisher
        .publish(user("sent@example.com", "Sent"))
        .await
        .unwrap();
    let ledger_bucket = system.js.get_key_value("jetfn-ledger").await.unwrap();
    let ledger = runtime::Ledger::new(
        system.js.clone(),
        ledger_bucket.clone(),
        "welcome",
        std::time::Duration::from_secs(60),
    );
    let done = ledger.key(&published.id, "probe-done");
    let deleted = ledger.key(&published.id, "probe-deleted");
    let missing = ledger.key(&published.id, "probe-missing");
    ledger_bucket.put(&done, "done 1".into()).await.unwrap();
    ledger_bucket.put(&deleted, "done 1".into()).await.unwrap();
    ledger_bucket.delete(&deleted).await.unwrap();
    let operator =
        async_nats::jetstream::new(crate::permissions::connect_as(&system, "operator").await);
    let query = ops::event::Query {
        id: published.id.clone(),
        event_type: Some("users.registered".to_owned()),
        effects: ["probe-done", "probe-deleted", "probe-missing"]
            .map(str::to_owned)
            .to_vec(),
        trace_url_template: None,
    };
    let report = ops::event::lookup(&operator, &query).await.unwrap();
    let state = |key: &str| {
        report
            .effects
            .iter()
            .find(|effect| effect.key == key)
            .map(|effect| effect.state.clone())
            .unwrap_or_else(|| panic!("{key} is looked up: {report:?}"))
    };
    assert_eq!(state(&done), "done", "{report:?}");
    assert_eq!(state(&deleted), "absent", "{report:?}");
    assert_eq!(state(&missing), "absent", "{report:?}");
    assert!(
        !report.unknown.iter().any(|why| why.contains("leader")),
        "the leader was asked: {report:?}"
    );
    assert!(
        !system.nats.log().contains(" Violation"),
        "the operator needed a right it does not have: {}",
        system.nats.log()
    );
}
