//! What nats-server 2.15 does with an atomic batch of KV writes (issue 13), pinned against a real server: the
//! ledger's analysis of durable writes per event (tests/bench/ANALYSIS.md, section 8, and ARCHITECTURE.md,
//! "Idempotency") relies on these answers.
//!
//! - The provisioned ledger bucket's stream accepts `allow_atomic_publish`, and the KV API keeps working on it.
//! - Inside a batch each write may carry its own `Nats-Expected-Last-Subject-Sequence` (the KV CAS: 0 for a
//!   create, the revision for an update), checked at the commit against the stream as it was before the batch.
//! - One write whose expectation fails rejects the whole batch with that write's error (10071, wrong last
//!   sequence) and stores none of it; so do two creates of one key in a batch, though each alone would pass.
//! - On one node with `sync_interval: always`, N separate KV writes cost the server N fsyncs, and a committed batch
//!   of N writes a few, whatever N: the batch is staged in a store of its own (created, synced and removed per
//!   batch), and the commit appends the N messages to the bucket's block and syncs it once (`strace` counts it).
//! - A KV write the server refuses for its expected revision costs no fsync and stores nothing: the ledger's disk
//!   probe times writes against such refusals.
//! - Two KV writes sent together are stored one after the other, and the server's stamps (`created`) of the two
//!   are an fsync apart under `always` and a few microseconds apart under `1s`, whatever else the server is doing:
//!   the ledger's checks while a function runs read that gap, and put a wrong start-up verdict right, also when the
//!   checks of two replicas (which share their keys) meet.

use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{FutureExt as _, StreamExt as _};
use provision::Definitions;
use serde_json::Value;
use testkit::{NatsServer, SyncInterval};

const LEDGER: &str = "jetfn-ledger";

/// A server with `sync_interval: always` and the repository's definitions applied: the ledger's bucket allows
/// atomic batches (`atomic_batches` in its file), which provision sets on the bucket's stream.
async fn provisioned() -> (NatsServer, async_nats::Client, kv::Store) {
    let nats = NatsServer::builder()
        .sync_interval(SyncInterval::Always)
        .start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../infra/nats");
    let mut definitions = Definitions::load(&root).expect("infra/nats loads");
    definitions.schedules.clear();
    definitions.apply(&js).await.expect("infra/nats applies");
    let config = js
        .get_stream(format!("KV_{LEDGER}"))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .config
        .clone();
    assert!(
        config.allow_atomic_publish,
        "a KV bucket's stream takes allow_atomic_publish"
    );
    // Applying the same definitions again changes nothing (the flag is compared like the bucket's other fields).
    let plan = definitions.plan(&js).await.unwrap();
    assert!(
        plan.changes
            .iter()
            .all(|change| change.action == provision::Action::Unchanged),
        "a second apply is a no-op"
    );
    let store = js.get_key_value(LEDGER).await.unwrap();
    (nats, client, store)
}

/// Sends `writes` (key, expected last subject sequence, value) as one atomic batch; only the commit is a request.
/// Returns the commit's reply as JSON.
async fn batch(client: &async_nats::Client, writes: &[(&str, u64, &str)]) -> Value {
    let id = unique();
    for (index, (key, expected, value)) in writes.iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", (index + 1).to_string().as_str());
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        let subject = format!("$KV.{LEDGER}.{key}");
        let payload = Bytes::from(value.to_string());
        if index + 1 == writes.len() {
            headers.insert("Nats-Batch-Commit", "1");
            let reply = client
                .request_with_headers(subject, headers, payload)
                .await
                .expect("the commit is answered");
            return serde_json::from_slice(&reply.payload).expect("a JSON pub ack");
        }
        client
            .publish_with_headers(subject, headers, payload)
            .await
            .unwrap();
    }
    unreachable!("a batch has a commit")
}

/// An id no other batch or file of this run has.
fn unique() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let next = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{nanos:x}-{next}", std::process::id())
}

async fn value(store: &kv::Store, key: &str) -> Option<(String, u64)> {
    store
        .entry(key)
        .await
        .unwrap()
        .filter(|entry| entry.operation == kv::Operation::Put)
        .map(|entry| {
            (
                String::from_utf8_lossy(&entry.value).into_owned(),
                entry.revision,
            )
        })
}

#[tokio::test]
async fn an_atomic_batch_of_ledger_writes_checks_each_key_and_stores_all_or_nothing() {
    let (_nats, client, store) = provisioned().await;

    // The KV API still works on the bucket.
    let alone = store.create("f.alone", "pending a 1".into()).await.unwrap();

    // Three creates (expected 0) in one batch: all stored, on consecutive sequences, the ack naming the batch.
    let ack = batch(
        &client,
        &[
            ("f.a", 0, "pending a 1"),
            ("f.b", 0, "pending b 1"),
            ("f.c", 0, "pending c 1"),
        ],
    )
    .await;
    assert!(ack.get("error").is_none(), "the batch commits: {ack}");
    assert_eq!(ack["count"], 3, "{ack}");
    let last = ack["seq"].as_u64().unwrap();
    assert_eq!(last, alone + 3);
    for (key, revision) in [("f.a", last - 2), ("f.b", last - 1), ("f.c", last)] {
        let (text, found) = value(&store, key).await.expect("stored");
        assert!(text.starts_with("pending"), "{key}: {text}");
        assert_eq!(found, revision, "{key}");
    }

    // A create of a key that exists, in a batch with two good updates: the whole batch is refused with the
    // conflicting write's error, and none of it is stored.
    let refused = batch(
        &client,
        &[
            ("f.a", last - 2, "done 2"),
            ("f.b", 0, "pending x 2"),
            ("f.c", last, "done 2"),
        ],
    )
    .await;
    assert_eq!(refused["error"]["err_code"], 10071, "{refused}");
    assert_eq!(refused["error"]["code"], 400, "{refused}");
    for key in ["f.a", "f.b", "f.c"] {
        let (text, _) = value(&store, key).await.unwrap();
        assert!(text.starts_with("pending"), "{key} unchanged: {text}");
    }
    // Two creates of one new key in one batch (two messages claiming it in the same group): each expects the key to
    // have no revision, which is true of the stream before the batch, yet the server refuses the batch rather than
    // storing both, and stores nothing of it.
    let twice = batch(
        &client,
        &[
            ("f.twice", 0, "pending t 1"),
            ("f.other", 0, "pending o 1"),
            ("f.twice", 0, "pending u 1"),
        ],
    )
    .await;
    assert!(twice.get("error").is_some(), "refused: {twice}");
    assert_eq!(twice["error"]["code"], 400, "{twice}");
    assert_eq!(value(&store, "f.twice").await, None);
    assert_eq!(value(&store, "f.other").await, None);
    // A wrong revision on an update is refused the same way.
    let stale = batch(
        &client,
        &[("f.a", last - 2, "done 3"), ("f.b", last - 2, "done 3")],
    )
    .await;
    assert_eq!(stale["error"]["err_code"], 10071, "{stale}");
    assert!(value(&store, "f.a").await.unwrap().0.starts_with("pending"));

    // The same updates with the right revisions commit together.
    let done = batch(
        &client,
        &[
            ("f.a", last - 2, "done 4"),
            ("f.b", last - 1, "done 4"),
            ("f.c", last, "done 4"),
        ],
    )
    .await;
    assert!(done.get("error").is_none(), "{done}");
    for key in ["f.a", "f.b", "f.c"] {
        assert_eq!(value(&store, key).await.unwrap().0, "done 4");
    }
}

#[tokio::test]
async fn a_committed_atomic_batch_costs_a_few_fsyncs_whatever_its_size() {
    const N: usize = 64;
    let (nats, client, store) = provisioned().await;
    let pid = nats.pid().expect("nats-server runs");

    let singles: Vec<String> = (0..N).map(|i| format!("f.single{i}")).collect();
    let (single_fsyncs, created) = fsyncs(pid, async {
        futures::future::join_all(
            singles
                .iter()
                .map(|key| store.create(key, Bytes::from_static(b"pending t 1"))),
        )
        .await
    })
    .await;
    assert!(created.iter().all(Result::is_ok));

    let keys: Vec<String> = (0..N).map(|i| format!("f.batched{i}")).collect();
    let writes: Vec<(&str, u64, &str)> = keys
        .iter()
        .map(|key| (key.as_str(), 0, "pending t 1"))
        .collect();
    let (batch_fsyncs, ack) = fsyncs(pid, batch(&client, &writes)).await;
    assert_eq!(ack["count"], N, "{ack}");

    let n = u64::try_from(N).unwrap();
    // Background work (consumer state files, written at most ten times a second) may add a few.
    assert!(
        (n..n + 8).contains(&single_fsyncs),
        "separate writes: {single_fsyncs} fsyncs for {N} writes"
    );
    // 2.15.1: the staging store's directory twice, its block once, the bucket's block once.
    assert!(
        batch_fsyncs <= 8,
        "one batch: {batch_fsyncs} fsyncs for {N} writes"
    );
}

/// The ledger's disk probe (`ledger::batch::Disk`) times a write of its clock key against the same write refused:
/// revision 0 on a key that has one. It relies on the refusal taking the write's path and stopping before the store
/// and its sync: here, under `sync_interval: always`, 32 writes cost the server at least 32 fsyncs and 32 refusals
/// none, each refusal comes back as a wrong last revision (the kind the probe asks for), and the key keeps the last
/// write's revision and value.
#[tokio::test]
async fn a_write_the_server_refuses_for_its_revision_costs_no_fsync_and_stores_nothing() {
    const N: usize = 32;
    let (nats, _client, store) = provisioned().await;
    let pid = nats.pid().expect("nats-server runs");
    let key = format!("f.clock{}", unique());
    let first = store.put(&key, Bytes::from_static(b"kept")).await.unwrap();

    let (write_fsyncs, written) = fsyncs(pid, async {
        let mut revisions = Vec::new();
        for _ in 0..N {
            revisions.push(store.put(&key, Bytes::from_static(b"kept")).await.unwrap());
        }
        revisions
    })
    .await;
    let last = *written.last().unwrap();
    assert!(last > first);

    let (refusal_fsyncs, refusals) = fsyncs(pid, async {
        let mut refusals = Vec::new();
        for _ in 0..N {
            refusals.push(store.update(&key, Bytes::from_static(b"lost"), 0).await);
        }
        refusals
    })
    .await;
    for refusal in &refusals {
        match refusal {
            Err(err) => assert_eq!(err.kind(), kv::UpdateErrorKind::WrongLastRevision, "{err}"),
            Ok(revision) => panic!("a write expecting no revision was stored as {revision}"),
        }
    }
    let n = u64::try_from(N).unwrap();
    assert!(
        write_fsyncs >= n,
        "writes: {write_fsyncs} fsyncs for {N} writes"
    );
    // Background work (consumer state files, written at most ten times a second) may add a few.
    assert!(
        refusal_fsyncs < 8,
        "refusals: {refusal_fsyncs} fsyncs for {N} refused writes"
    );
    assert_eq!(
        value(&store, &key).await,
        Some(("kept".to_owned(), last)),
        "the refusals stored nothing"
    );
    let stream = store.stream.get_info().await.unwrap();
    assert_eq!(
        stream.state.last_sequence, last,
        "nothing appended after the last write"
    );
}

/// The fsync and fdatasync calls nats-server (`pid`, all threads) makes while `work` runs, counted by strace.
async fn fsyncs<T>(pid: u32, work: impl std::future::Future<Output = T>) -> (u64, T) {
    let out = std::env::temp_dir().join(format!("jetfn-fsyncs-{}.txt", unique()));
    let strace = Command::new("strace")
        .args(["-f", "-c", "-e", "trace=fsync,fdatasync", "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("strace is installed (the test counts the server's fsyncs; infra/install-test-tools.sh or apt-get install strace)");
    // strace prints nothing until it is attached to every thread; give it time.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let value = work.await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success(), "stop strace");
    let output = strace.wait_with_output().unwrap();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    // With no call to count, `-c` writes no table at all; strace's own "attached" line then tells zero from a
    // failure to attach.
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(
        text.contains("total") || log.contains("attached"),
        "strace attached to nats-server ({}): {text} {log}",
        output.status
    );
    let count = text
        .lines()
        .filter(|line| line.ends_with("fsync") || line.ends_with("fdatasync"))
        .filter_map(|line| line.split_whitespace().nth(3)?.parse::<u64>().ok())
        .sum();
    (count, value)
}

/// 40 events waiting, each also re-published under a new message id, then the real welcome function: its claims
/// and dones go to the ledger in groups (atomic batches where eight or more are ready and the probe found writes
/// waiting for the disk), the copies' claims of the same keys make batches refused and their writes retried alone,
/// and each event still gets exactly one email.
#[tokio::test]
async fn events_arriving_together_get_one_email_each_on_a_server_syncing_every_write() {
    let welcome = one_email_per_event_arriving_together(NatsServer::start()).await;
    // The test server syncs every write (`always`); whether the probe chose batches depends on the disk and on
    // the build (a debug client's floors are noisy), so the test asks only that it decided before the first pull.
    welcome
        .wait_for_output(
            "ledger writes timed against refused writes",
            crate::support::WAIT,
        )
        .await;
}

/// The same on a server that syncs once a second, where the ledger's probe usually finds writes about as fast as
/// their refusals and writes each key alone, without the cap on claims in flight (in a debug build on a loaded machine its
/// floors are noisy and it may choose batches): one email per event either way.
#[tokio::test]
async fn events_arriving_together_get_one_email_each_on_a_server_syncing_once_a_second() {
    let nats = NatsServer::builder()
        .sync_interval(SyncInterval::Every(Duration::from_secs(1)))
        .start();
    let welcome = one_email_per_event_arriving_together(nats).await;
    welcome
        .wait_for_output(
            "ledger writes timed against refused writes",
            crate::support::WAIT,
        )
        .await;
}

/// Publishes 40 events, each twice under two message ids, starts welcome and checks one email per event; returns
/// the welcome process, still running.
async fn one_email_per_event_arriving_together(nats: NatsServer) -> testkit::FunctionProcess {
    const EVENTS: usize = 40;
    let system =
        crate::support::System::start_on(nats, async_nats::ConnectOptions::new(), |_| {}).await;
    for index in 0..EVENTS {
        let event = events::CloudEvent::new(
            "/signup",
            crate::support::user(&format!("batch{index}@example.com"), "Batch"),
        );
        system.publisher.publish_event(&event).await.unwrap();
        let bytes = serde_json::to_vec(&event).unwrap();
        system.publish_raw("events.users.registered", &bytes).await;
    }
    let welcome = system.welcome().await;
    system
        .smtp
        .wait_for_messages(EVENTS, crate::support::WAIT)
        .await;
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut recipients: Vec<String> = system
        .smtp
        .messages()
        .iter()
        .flat_map(|mail| mail.rcpt_to.clone())
        .collect();
    recipients.sort();
    let count = recipients.len();
    recipients.dedup();
    assert_eq!(count, EVENTS, "one email per event");
    assert_eq!(recipients.len(), EVENTS, "every event's own recipient");
    welcome
}

/// The smallest gap between the server's stamps of two keys written together, over `rounds` rounds (the first
/// creates both keys, the later ones overwrite them), as the ledger's running checks measure it.
async fn stamp_gaps(store: &kv::Store, rounds: usize) -> Vec<Duration> {
    let (a, b) = (format!("gap.{}", unique()), format!("gap.{}", unique()));
    let mut gaps = Vec::new();
    for _ in 0..rounds {
        let (first, second) =
            tokio::join!(store.put(&a, Bytes::new()), store.put(&b, Bytes::new()));
        let (first, second) = (first.unwrap(), second.unwrap());
        let (x, y) = (
            store.entry(&a).await.unwrap().unwrap(),
            store.entry(&b).await.unwrap().unwrap(),
        );
        assert_eq!(
            (x.revision, y.revision),
            (first, second),
            "the entries are the writes just made"
        );
        gaps.push((y.created - x.created).abs().unsigned_abs());
    }
    gaps
}

/// Two writes sent together are stamped at least an fsync apart on a server that syncs every write (the first
/// write's sync lies between the stamps), and a few microseconds apart at `1s`, at the first writes of the keys and
/// the later ones: the ledger's running checks call a disk "synced" at a gap of 40 µs or more.
#[tokio::test]
async fn two_writes_sent_together_are_stamped_an_fsync_apart_only_where_every_write_syncs() {
    let (_always, _client, store) = provisioned().await;
    let synced = stamp_gaps(&store, 24).await;
    let once_a_second = NatsServer::builder()
        .sync_interval(SyncInterval::Every(Duration::from_secs(1)))
        .start();
    let client = async_nats::connect(once_a_second.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let store = js
        .create_key_value(kv::Config {
            bucket: "gaps".to_owned(),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let unsynced = stamp_gaps(&store, 24).await;
    let threshold = Duration::from_micros(40);
    assert!(
        synced.iter().all(|gap| *gap >= threshold),
        "always: every pair is an fsync apart: {synced:?}"
    );
    assert!(
        unsynced.iter().min().is_some_and(|gap| *gap < threshold),
        "1s: the closest pair is closer than an fsync: {unsynced:?}"
    );
}

/// A start whose disk probe decided wrongly (forced here by `JOB_TEST_DISK_VERDICT`, as a start that fell in a slow
/// moment of the server did about once in seven at `1s`) is put right by the checks once the function has work,
/// within a few seconds of its first event: at `1s` by the first check (two writes closer than an fsync), at
/// `always` by the second in a row that finds them an fsync apart. One event is enough: the checks go on for two
/// minutes after a claim.
#[tokio::test]
async fn a_wrong_start_up_verdict_on_the_disk_is_put_right_while_the_function_runs() {
    for (sync, forced, corrected) in WRONG_VERDICTS {
        let system = system_syncing(sync).await;
        let welcome = system
            .spawn("welcome", &[("JOB_TEST_DISK_VERDICT", forced.to_owned())])
            .await;
        welcome
            .wait_for_output("the disk probe's verdict is forced", crate::support::WAIT)
            .await;
        still_sends(&system, "first", 1).await;
        welcome
            .wait_for_output(&now_going(corrected), crate::support::WAIT)
            .await;
        // And the function still does its work.
        still_sends(&system, "after-check", 1).await;
    }
}

/// An idle function does not time its disk: the checks are up to two dozen writes of the clock keys each, which 100
/// idle functions made once a minute each for as long as they ran (more ledger writes than their heartbeats).
/// Nothing writes to the ledger between the start-up probe and the first event, and the checks start with that
/// event; at `1s` a check ends at its first round, whose two writes are already closer than an fsync.
#[tokio::test]
async fn an_idle_function_makes_no_ledger_writes_after_its_start_up_probe() {
    for (sync, _, _) in WRONG_VERDICTS {
        let system = system_syncing(sync).await;
        let welcome = system.spawn("welcome", &[]).await;
        welcome
            .wait_for_output(
                "ledger writes timed against refused writes",
                crate::support::WAIT,
            )
            .await;
        let ledger = || async {
            let mut stream = system.js.get_stream(format!("KV_{LEDGER}")).await.unwrap();
            stream.info().await.unwrap().state.last_sequence
        };
        let after_probe = ledger().await;
        // The checks used to start 0.5 s after the probe and come again at 1.5, 3.5 and 7.5 s.
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(
            ledger().await,
            after_probe,
            "{sync:?}: an idle function wrote to the ledger after its start-up probe"
        );
        // "timed again gap_us": the check's own line ("timed again" alone also matches the probe's "timed against").
        assert!(
            !welcome
                .output()
                .contains("ledger writes timed again gap_us"),
            "{sync:?}: an idle function timed its disk again"
        );
        // The first check after the first claim: at `always` all twelve rounds (every gap an fsync), at `1s` up to
        // the first round closer than an fsync; the next check is a second later.
        let mut checks = system
            .client
            .subscribe("$KV.jetfn-ledger.welcome.clock.>")
            .await
            .unwrap();
        system.client.flush().await.unwrap();
        still_sends(&system, "wakes", 1).await;
        welcome
            .wait_for_output("ledger writes timed again gap_us", crate::support::WAIT)
            .await;
        let mut writes = 0;
        while let Some(Some(_)) = checks.next().now_or_never() {
            writes += 1;
        }
        // At `1s` the first round is not always the one: the keys' first writes, or a busy moment, can stamp a
        // pair farther apart, but every round then ends the check.
        if matches!(sync, SyncInterval::Always) {
            assert_eq!(
                writes, 24,
                "{sync:?}: the first check's writes of the clock keys"
            );
        } else {
            assert!(
                (2..24).contains(&writes),
                "{sync:?}: the first check's writes of the clock keys: {writes}"
            );
        }
    }
}

/// A server syncing as `sync` with every definition applied (the ledger's bucket allowing atomic batches).
async fn system_syncing(sync: SyncInterval) -> crate::support::System {
    let nats = NatsServer::builder().sync_interval(sync).start();
    crate::support::System::start_on(nats, async_nats::ConnectOptions::new(), |_| {}).await
}

/// Each server setting, the start-up verdict that is wrong there (forced by `JOB_TEST_DISK_VERDICT`), and how the
/// checks while the function runs put it right.
const WRONG_VERDICTS: [(SyncInterval, &str, &str); 2] = [
    (
        SyncInterval::Every(Duration::from_secs(1)),
        "synced",
        "go one by one",
    ),
    (SyncInterval::Always, "unsynced", "go in atomic batches"),
];

/// The log line of a check that put the verdict right.
fn now_going(corrected: &str) -> String {
    format!("concurrent claims and dones now {corrected}")
}

/// Publishes `count` sign-ups, to addresses `<tag>-<n>@example.com`, and waits for their emails.
async fn still_sends(system: &crate::support::System, tag: &str, count: usize) {
    let addresses: Vec<String> = (0..count)
        .map(|n| format!("{tag}-{n}@example.com"))
        .collect();
    for address in &addresses {
        sign_up(system, address).await;
    }
    let deadline = std::time::Instant::now() + crate::support::WAIT;
    loop {
        let received = system.smtp.messages();
        let arrived = |address: &String| {
            received
                .iter()
                .any(|mail| mail.rcpt_to.iter().any(|to| to == address))
        };
        if addresses.iter().all(arrived) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no email to every one of {addresses:?} within {:?}",
            crate::support::WAIT
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Publishes one sign-up for `address`.
async fn sign_up(system: &crate::support::System, address: &str) {
    system
        .publisher
        .publish_event(&events::CloudEvent::new(
            "/signup",
            crate::support::user(address, "Checked"),
        ))
        .await
        .unwrap();
}

/// Every replica of a function checks the disk on the same two keys (`<function>.clock.a` and `.b` in the ledger's
/// bucket), so checks can meet. A round whose entries another writer overwrote between the write and the read is
/// left out, never read as a gap; another writer's write between the two of a round only widens that round's gap.
/// Forced here: two replicas started together with a wrong verdict, and beside them a writer in the test making a
/// check's rounds on the same keys every few milliseconds for as long as the replicas run. Both replicas are put
/// right as one alone is, and at `always` their logs show rounds left out, so the checks did meet (there a check
/// makes all its rounds; at `1s` it ends at its first round closer than an fsync, so whether it meets the writer
/// first is chance, and the meeting is the same code at either setting).
#[tokio::test]
async fn two_replicas_checking_the_disk_at_once_are_both_put_right() {
    for (sync, forced, corrected) in WRONG_VERDICTS {
        let system = system_syncing(sync).await;
        let store = system.js.get_key_value(LEDGER).await.unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let intruder = tokio::spawn({
            let stop = stop.clone();
            async move {
                let (a, b) = ("welcome.clock.a", "welcome.clock.b");
                let mut rounds = 0_u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (first, second) =
                        tokio::join!(store.put(a, Bytes::new()), store.put(b, Bytes::new()));
                    first.unwrap();
                    second.unwrap();
                    let (x, y) = tokio::join!(store.entry(a), store.entry(b));
                    x.unwrap().unwrap();
                    y.unwrap().unwrap();
                    rounds += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                rounds
            }
        });
        let env = [("JOB_TEST_DISK_VERDICT", forced.to_owned())];
        let (first, second) =
            tokio::join!(system.spawn("welcome", &env), system.spawn("welcome", &env));
        // The checks run only while a replica has work: a sign-up every 50 ms, which both replicas share.
        let corrected_both = async {
            for replica in [&first, &second] {
                replica
                    .wait_for_output(&now_going(corrected), crate::support::WAIT)
                    .await;
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        };
        let trickle = async {
            let mut n = 0_u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                sign_up(&system, &format!("trickle-{n}@example.com")).await;
                n += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::join!(corrected_both, trickle);
        let rounds = intruder.await.unwrap();
        assert!(
            rounds > 10,
            "{sync:?}: the test's writer made {rounds} rounds"
        );
        let left_out = [&first, &second]
            .iter()
            .map(|replica| {
                replica
                    .output()
                    .matches("met another writer of its keys; left out")
                    .count()
            })
            .sum::<usize>();
        assert!(
            left_out > 0 || !matches!(sync, SyncInterval::Always),
            "{sync:?}: no check met another writer, so this test did not test a meeting"
        );
        // Both still do their work.
        still_sends(&system, "after-check", 4).await;
    }
}
