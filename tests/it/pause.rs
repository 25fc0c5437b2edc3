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
