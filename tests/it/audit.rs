//! The audit trail under the shipped NATS users: the operator's changes (pause, resume, replay, purge) and the
//! admin's (a schedule, infra apply) are recorded under their own user with no permissions violation, the viewer
//! reads the trail but changes nothing (and, refused, records nothing), and nobody can delete an entry.

use testkit::{FunctionProcess, workspace_root};

use crate::permissions::{assert_refused, secret, secured_system};
use crate::support::{System, WAIT, user};

async fn as_user(system: &System, role: &str, args: &[&str]) -> (i32, String) {
    let env = vec![
        ("NATS_URL", system.nats.url()),
        ("NATS_USER", role.to_owned()),
        ("NATS_PASSWORD", secret(role)),
        ("NATS_INBOX_PREFIX", format!("_INBOX_{role}")),
    ];
    let process = FunctionProcess::spawn_with_args("jetfn", args, &env);
    let code = process.wait_exit(WAIT).await.code().unwrap_or(-1);
    (code, process.output())
}

#[tokio::test]
async fn each_role_records_its_own_changes_and_the_viewer_reads_them() {
    let system = secured_system().await;
    let dead = runtime::dlq::DeadLetter {
        subject: "events.users.registered".to_owned(),
        stream: "EVENTS".to_owned(),
        sequence: 1,
        consumer: "welcome".to_owned(),
        attempts: 1,
        reason: "550 no such user".to_owned(),
        kind: runtime::dlq::DeathKind::Permanent,
        first_failure: time::OffsetDateTime::now_utc(),
        last_failure: time::OffsetDateTime::now_utc(),
        headers: async_nats::HeaderMap::new(),
        payload: serde_json::to_vec(&events::CloudEvent::new("/t", user("a@example.com", "A")))
            .unwrap()
            .into(),
        writer: "runtime".to_owned(),
        failed_attempts: Vec::new(),
        payload_lost: None,
    };
    let dlq_seq = dead
        .publish(&system.js, "dlq")
        .await
        .unwrap()
        .sequence
        .to_string();

    // The viewer may change nothing; what it tried is refused, and so is its audit entry.
    let (code, output) = as_user(&system, "viewer", &["pause", "welcome"]).await;
    assert_ne!(code, 0, "{output}");
    assert!(!system.consumer_info("EVENTS", "welcome").await.paused);
    assert_refused(&system, "viewer", "audit.viewer.pause").await;
    let violations = system.nats.log().matches(" Violation").count();

    for args in [
        &["pause", "welcome", "--until", "1h", "--actor", "ada"][..],
        &["resume", "welcome", "--actor", "ada"],
        &["dlq", "replay", &dlq_seq, "--keep"],
        &["dlq", "purge", &dlq_seq],
    ] {
        let (code, output) = as_user(&system, "operator", args).await;
        assert_eq!(code, 0, "operator {args:?}:\n{output}");
        assert!(!output.contains("warning"), "recorded: {output}");
    }
    let dir = workspace_root().join("infra/nats");
    for args in [
        &[
            "schedule",
            "add",
            "cleanup.requested",
            "--every",
            "1h",
            "--name",
            "audited",
        ][..],
        &["schedule", "cancel", "audited"],
        &["infra", "apply", "--dir", &dir.to_string_lossy()],
    ] {
        let (code, output) = as_user(&system, "admin", args).await;
        assert_eq!(code, 0, "admin {args:?}:\n{output}");
        assert!(!output.contains("warning"), "recorded: {output}");
    }
    assert_eq!(
        system.nats.log().matches(" Violation").count(),
        violations,
        "the operator and the admin needed no right they lack: {}",
        system.nats.log()
    );

    let (code, output) = as_user(&system, "viewer", &["audit", "--json"]).await;
    assert_eq!(code, 0, "{output}");
    let entries: serde_json::Value =
        serde_json::from_str(&output).unwrap_or_else(|err| panic!("{err}: {output}"));
    let seen: Vec<(&str, &str, &str, &str)> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["user"].as_str().unwrap(),
                e["actor"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["result"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("operator", "ada", "pause", "ok"),
            ("operator", "ada", "resume", "ok"),
            ("operator", "operator", "dlq-replay", "ok"),
            ("operator", "operator", "dlq-purge", "ok"),
            ("admin", "admin", "schedule-add", "ok"),
            ("admin", "admin", "schedule-cancel", "ok"),
            ("admin", "admin", "infra-apply", "ok"),
        ],
        "{entries}"
    );
    assert_eq!(entries[2]["target"], format!("dlq #{dlq_seq}"));
    let (code, output) = as_user(
        &system,
        "viewer",
        &["audit", "--who", "admin", "--action", "schedule-add"],
    )
    .await;
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("audited") && !output.contains("dlq-purge"),
        "{output}"
    );

    // The viewer's status has no oldest age (it may not read the event stream), says why, and says nothing else.
    system
        .publisher
        .publish(user("waits@example.com", "Waits"))
        .await
        .unwrap();
    let (code, output) = as_user(&system, "viewer", &["status", "--json"]).await;
    assert_eq!(code, 0, "{output}");
    let status: serde_json::Value =
        serde_json::from_str(&output).unwrap_or_else(|err| panic!("JSON alone ({err}): {output}"));
    let welcome = status["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consumer"] == "welcome")
        .unwrap();
    assert_eq!(
        welcome["waiting"], 2,
        "the replayed event and this one: {welcome}"
    );
    assert!(
        welcome["oldest_age_secs"].is_null() && welcome["oldest_unknown"].is_string(),
        "{welcome}"
    );

    // The trail cannot be edited through the API, even by the admin.
    let mut audit = system.js.get_stream("AUDIT").await.unwrap();
    assert!(audit.delete_message(1).await.is_err(), "deny_delete");
    assert!(audit.purge().await.is_err(), "deny_purge");
    assert_eq!(audit.info().await.unwrap().state.messages, 7);
}
