//! `jetfn pause` and `jetfn resume` on the server's consumer pause (nats-server 2.11+), with real function
//! replicas: a paused function gets nothing, its events wait in the stream, and resuming (or the end of a pause
//! `--until` a time) delivers each of them once. `jetfn infra apply` leaves a pause alone.

use std::time::Duration;

use testkit::{FunctionProcess, workspace_root};

use crate::support::{System, WAIT, user};

/// Runs the CLI with `extra` variables; returns its exit code and everything it printed.
pub async fn cli(
    system: &System,
    args: &[&str],
    extra: &[(&'static str, String)],
) -> (i32, String) {
    // As a person runs it: no RUST_LOG (the tests' own asks the functions for debug logs).
    let mut env: Vec<(&str, String)> = system
        .env()
        .into_iter()
        .filter(|(name, _)| *name != "RUST_LOG")
        .collect();
    env.extend(extra.iter().cloned());
    let process = FunctionProcess::spawn_with_args("jetfn", args, &env);
    let code = process.wait_exit(WAIT).await.code().unwrap_or(-1);
    (code, process.output())
}

/// Runs the CLI, which must succeed, and parses what it printed as JSON: anything else on stdout or stderr (a
/// connection notice, a warning) fails the parse.
pub async fn cli_json(system: &System, args: &[&str]) -> serde_json::Value {
    let (code, output) = cli(system, args, &[]).await;
    assert_eq!(code, 0, "jetfn {args:?}:\n{output}");
    serde_json::from_str(&output)
        .unwrap_or_else(|err| panic!("jetfn {args:?} printed no JSON alone ({err}):\n{output}"))
}

async fn publish_users(system: &System, prefix: &str, count: usize) -> Vec<String> {
    let mut addresses = Vec::new();
    for n in 0..count {
        let address = format!("{prefix}-{n}@example.com");
        system
            .publisher
            .publish(user(&address, "Paused"))
            .await
            .unwrap();
        addresses.push(address);
    }
    addresses
}

/// Every address got exactly one email.
fn each_once(system: &System, addresses: &[String]) {
    let mails = system.smtp.messages();
    for address in addresses {
        let count = mails.iter().filter(|m| m.rcpt_to.contains(address)).count();
        assert_eq!(count, 1, "{address} got {count} emails");
    }
}

#[tokio::test]
async fn a_paused_function_gets_nothing_on_any_replica_until_resumed_then_everything_once() {
    let system = System::start().await;
    let _first = system.welcome().await;
    let _second = system.welcome().await;
    let before = publish_users(&system, "before", 1).await;
    system.smtp.wait_for_messages(1, WAIT).await;
    system.wait_settled("welcome").await;

    let (code, output) = cli(&system, &["pause", "welcome", "--actor", "ada"], &[]).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("EVENTS/welcome paused until resumed"),
        "{output}"
    );
    let info = system.consumer_info("EVENTS", "welcome").await;
    assert!(info.paused, "the server holds it paused: {info:?}");

    let held = publish_users(&system, "held", 5).await;
    // Both replicas keep asking; the server answers neither. (A fixed wait: what is checked is that nothing
    // happens, so there is no event to wait for.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        system.smtp.messages().len(),
        1,
        "a paused function sent nothing"
    );
    let info = system.consumer_info("EVENTS", "welcome").await;
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (5, 0),
        "the events wait in the stream: {info:?}"
    );

    let status = cli_json(&system, &["status", "--json"]).await;
    let welcome = status["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consumer"] == "welcome")
        .unwrap_or_else(|| panic!("status lists welcome: {status}"));
    assert_eq!(welcome["paused"], true, "{welcome}");
    assert_eq!(welcome["waiting"], 5, "{welcome}");
    assert!(
        welcome["oldest_age_secs"].is_u64(),
        "the backlog has an age: {welcome}"
    );

    // A deploy re-applies the definitions (here the repository's own backoff, so welcome is updated): the
    // operator's pause stays.
    let dir = workspace_root().join("infra/nats");
    let (code, output) = cli(
        &system,
        &["infra", "apply", "--dir", &dir.to_string_lossy()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output
            .lines()
            .any(|line| line.contains("EVENTS/welcome") && line.ends_with("update")),
        "welcome was updated: {output}"
    );
    assert!(
        system.consumer_info("EVENTS", "welcome").await.paused,
        "infra apply left the pause alone"
    );
    let (code, plan) = cli(
        &system,
        &["infra", "plan", "--dir", &dir.to_string_lossy()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{plan}");
    assert!(
        !plan.contains("pause_until"),
        "a pause is no change to plan: {plan}"
    );

    let (code, output) = cli(&system, &["resume", "welcome"], &[]).await;
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("EVENTS/welcome delivering"), "{output}");
    system.smtp.wait_for_messages(6, WAIT).await;
    system.wait_settled("welcome").await;
    each_once(&system, &before);
    each_once(&system, &held);
    assert_eq!(system.smtp.messages().len(), 6);
    assert!(system.dlq().await.is_empty());

    // Each change is in the audit trail, with who did it.
    let audit = cli_json(&system, &["audit", "--json"]).await;
    let entries = audit.as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["pause", "infra-apply", "resume"], "{audit}");
    assert_eq!(entries[0]["actor"], "ada");
    assert_eq!(entries[0]["user"], "anonymous", "no NATS user in this test");
    assert_eq!(entries[0]["target"], "welcome");
    assert_eq!(entries[0]["result"], "ok");
    assert!(
        entries[0]["detail"]
            .as_str()
            .unwrap()
            .contains("until resumed"),
        "{audit}"
    );
    let paused = cli_json(
        &system,
        &["audit", "--json", "--action", "pause", "--since", "1h"],
    )
    .await;
    assert_eq!(paused.as_array().unwrap().len(), 1, "{paused}");
}

#[tokio::test]
async fn a_pause_until_a_time_ends_by_itself_and_delivers_what_waited() {
    let system = System::start().await;
    let _first = system.welcome().await;
    let _second = system.welcome().await;
    let (code, output) = cli(&system, &["pause", "welcome", "--until", "4s"], &[]).await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("EVENTS/welcome paused until 20"),
        "{output}"
    );
    let held = publish_users(&system, "until", 4).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        system.smtp.messages().is_empty(),
        "nothing before the pause ends"
    );
    assert!(system.consumer_info("EVENTS", "welcome").await.paused);

    system.smtp.wait_for_messages(4, WAIT).await;
    system.wait_settled("welcome").await;
    each_once(&system, &held);
    let info = system.consumer_info("EVENTS", "welcome").await;
    assert!(!info.paused, "{info:?}");
}

#[tokio::test]
async fn pause_names_what_is_wrong() {
    let system = System::start().await;
    let (code, output) = cli(&system, &["pause", "no-such-function"], &[]).await;
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("no function no-such-function") && output.contains("welcome"),
        "names the functions there are: {output}"
    );
    assert_eq!(output.trim().lines().count(), 1, "one line: {output}");
    let (code, output) = cli(
        &system,
        &["pause", "welcome", "--until", "2020-01-01T00:00:00Z"],
        &[],
    )
    .await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("is not in the future"), "{output}");
    let (code, output) = cli(&system, &["pause", "welcome", "--until", "soonish"], &[]).await;
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("--until \"soonish\""), "{output}");
    // A failed change is audited too.
    let audit = cli_json(&system, &["audit", "--json"]).await;
    let results: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        results,
        ["error", "error"],
        "the unknown function and the past time; an unreadable --until is refused before anything: {audit}"
    );
}

/// A consumer the server cannot read during a node loss (an R1 consumer on the lost node; its name still listed by
/// the meta layer) might be one of the function's: pause refuses and pauses nothing, naming it, rather than pause
/// the others and report success; `status` shows the others and names it as unknown rather than leave it out.
/// Once the node is back, every one is paused.
#[tokio::test(flavor = "multi_thread")]
async fn pause_refuses_and_status_names_a_consumer_that_cannot_be_read() {
    use async_nats::jetstream::{self, consumer, stream};
    let cluster = testkit::NatsCluster::start();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(cluster.urls())
        .await
        .expect("connect to the cluster");
    let js = jetstream::new(client);
    let work = js
        .create_stream(stream::Config {
            name: "WORK".to_owned(),
            subjects: vec!["work.>".to_owned()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("an R3 stream");
    // R1 consumers of one function, until they sit on more than one node and one node that is not the meta leader
    // holds some but not all of them.
    let meta = cluster.meta_leader();
    let mut placed: Vec<(String, usize)> = Vec::new();
    let victim = loop {
        let name = format!("f-{}", placed.len());
        let info = work
            .create_consumer(consumer::pull::Config {
                durable_name: Some(name.clone()),
                num_replicas: 1,
                metadata: [(ops::functions::FUNCTION_KEY.to_owned(), "f".to_owned())].into(),
                ..Default::default()
            })
            .await
            .expect("an R1 consumer")
            .cached_info()
            .clone();
        let leader = info
            .cluster
            .and_then(|c| c.leader)
            .and_then(|leader| cluster.index_of(&leader))
            .expect("the consumer's node");
        placed.push((name, leader));
        let candidate = (0..3).find(|&node| {
            Some(node) != meta
                && placed.iter().any(|(_, on)| *on == node)
                && placed.iter().any(|(_, on)| *on != node)
        });
        if let Some(node) = candidate {
            break node;
        }
        assert!(
            placed.len() < 12,
            "the consumers all sit on one node: {placed:?}"
        );
    };
    let lost: Vec<&str> = placed
        .iter()
        .filter(|(_, on)| *on == victim)
        .map(|(name, _)| name.as_str())
        .collect();
    cluster.node(victim).kill();

    let err = ops::pause::pause(&js, "f", None)
        .await
        .expect_err("a consumer could not be read");
    let text = format!("{err:#}");
    assert!(
        text.contains("nothing was paused") && lost.iter().any(|name| text.contains(name)),
        "names the consumer it could not read: {text}"
    );
    for (name, on) in &placed {
        if *on != victim {
            let info = work.consumer_info(name).await.expect("a readable consumer");
            assert!(!info.paused, "{name} was paused: {info:?}");
        }
    }
    let status = ops::status::read(&js, false)
        .await
        .expect("status reads what it can");
    for name in &lost {
        assert!(
            status
                .consumers_unknown
                .iter()
                .any(|unknown| unknown.starts_with(&format!("WORK/{name}: "))),
            "{name} is named unknown: {:?}",
            status.consumers_unknown
        );
        assert!(
            status.consumers.iter().all(|row| row.consumer != *name),
            "{name} is not shown as if read"
        );
    }
    assert_eq!(
        status.consumers.len() + lost.len(),
        placed.len(),
        "every readable consumer is shown: {:?}",
        status.consumers
    );

    cluster.restart_node(victim);
    let deadline = std::time::Instant::now() + crate::cluster::FAILOVER;
    let states = loop {
        match ops::pause::pause(&js, "f", None).await {
            Ok(states) => break states,
            Err(err) => assert!(std::time::Instant::now() < deadline, "{err:#}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(states.len(), placed.len(), "{states:?}");
    assert!(states.iter().all(|state| state.paused), "{states:?}");
}

/// A pause that fails part-way (here the user may pause one consumer of the function and not the other) says
/// which consumers it did pause and which failed: the server keeps the first, and "error" alone would hide a
/// function left half paused.
#[tokio::test]
async fn a_pause_that_fails_part_way_names_what_it_already_paused() {
    use async_nats::jetstream::{self, consumer, stream};
    let nats = testkit::NatsServer::start_with(
        "authorization {\n  users: [\n    { user: admin, password: admin }\n    { user: limited, password: \
         limited, permissions: { publish: [\"$JS.API.STREAM.NAMES\", \"$JS.API.CONSUMER.NAMES.S\", \
         \"$JS.API.CONSUMER.INFO.S.*\", \"$JS.API.CONSUMER.PAUSE.S.f-a\"], subscribe: [\"_INBOX.>\"] } }\n  ]\n}\n",
    );
    let connect = |user: &str| {
        async_nats::ConnectOptions::with_user_and_password(user.to_owned(), user.to_owned())
            .connect(nats.url())
    };
    let admin = jetstream::new(connect("admin").await.unwrap());
    let work = admin
        .create_stream(stream::Config {
            name: "S".to_owned(),
            subjects: vec!["s.>".to_owned()],
            ..Default::default()
        })
        .await
        .unwrap();
    for name in ["f-a", "f-b"] {
        work.create_consumer(consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            metadata: [(ops::functions::FUNCTION_KEY.to_owned(), "f".to_owned())].into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let mut limited = jetstream::new(connect("limited").await.unwrap());
    // The refused request is dropped by the server: only a timeout ends it.
    limited.set_timeout(Duration::from_secs(1));

    let err = ops::pause::pause(&limited, "f", None)
        .await
        .expect_err("f-b may not be paused");
    let text = format!("{err:#}");
    assert!(
        text.contains("S/f-a already paused") && text.contains("pausing S/f-b failed"),
        "{text}"
    );
    assert!(work.consumer_info("f-a").await.unwrap().paused);
    assert!(!work.consumer_info("f-b").await.unwrap().paused);
}
