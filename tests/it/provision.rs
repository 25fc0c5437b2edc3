//! `jetfn infra plan|apply` against a real nats-server: plan changes nothing, apply then plan is all unchanged, an
//! edited field plans and applies as old -> new, a misspelled key applies nothing, and a change the server cannot
//! make is reported as such and refused.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream;
use testkit::{FunctionProcess, NatsServer, workspace_root};

use crate::support::WAIT;

/// A private copy of `infra/nats`, removed on drop, for editing.
struct InfraCopy(PathBuf);

impl InfraCopy {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("jetfn-provision-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy_dir(&workspace_root().join("infra/nats"), &dir);
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn edit(&self, file: &str, from: &str, to: &str) -> PathBuf {
        let path = self.0.join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from), "{file} has no {from}");
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        path
    }
}

impl Drop for InfraCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Runs `jetfn infra <command> --dir <dir>` and returns its exit code and output.
async fn infra(nats: &NatsServer, command: &str, dir: &Path) -> (Option<i32>, String) {
    infra_with(nats, &[command], dir).await
}

async fn infra_with(nats: &NatsServer, args: &[&str], dir: &Path) -> (Option<i32>, String) {
    let dir = dir.to_string_lossy().into_owned();
    let mut all = vec!["infra"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--dir", &dir]);
    let process = FunctionProcess::spawn_with_args(
        "jetfn",
        &all,
        &[("NATS_URL", nats.url()), ("RUST_LOG", "warn".to_owned())],
    );
    let status = process.wait_exit(WAIT).await;
    // The output pumps may still be draining the pipes when the exit is seen: wait for the last line.
    let last = match (status.success(), args.first()) {
        (false, _) => "error:",
        (true, Some(&"plan")) => " impossible",
        (true, _) => "applied ",
    };
    let deadline = std::time::Instant::now() + WAIT;
    while !process.output().contains(last) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (status.code(), process.output())
}

async fn context(nats: &NatsServer) -> jetstream::Context {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut js = jetstream::new(client);
    js.set_timeout(Duration::from_secs(5));
    js
}

async fn max_deliver(js: &jetstream::Context, consumer: &str) -> i64 {
    js.get_stream("EVENTS")
        .await
        .unwrap()
        .consumer_info(consumer)
        .await
        .unwrap()
        .config
        .max_deliver
}

fn line<'a>(output: &'a str, object: &str) -> &'a str {
    output
        .lines()
        .find(|line| line.split_whitespace().nth(1) == Some(object))
        .unwrap_or_else(|| panic!("no line for {object} in:\n{output}"))
}

#[tokio::test]
async fn plan_lists_creates_apply_makes_them_and_an_edit_plans_and_applies_as_old_to_new() {
    let nats = NatsServer::start();
    let js = context(&nats).await;
    let copy = InfraCopy::new("edit");

    let (code, planned) = infra_plan(&nats, copy.path()).await;
    assert_eq!(code, Some(0), "{planned}");
    for object in [
        "EVENTS",
        "jetfn-ledger",
        "EVENTS/welcome",
        "ADVISORIES/dlq-router",
        "cleanup-daily",
    ] {
        assert!(line(&planned, object).ends_with("create"), "{planned}");
    }
    assert!(planned.contains(" 0 unchanged, 0 impossible"), "{planned}");
    assert!(
        js.get_stream("EVENTS").await.is_err(),
        "plan created the EVENTS stream"
    );

    let (code, applied) = infra(&nats, "apply", copy.path()).await;
    assert_eq!(code, Some(0), "{applied}");
    assert!(
        line(&applied, "EVENTS/welcome").ends_with("create"),
        "{applied}"
    );
    let (code, again) = infra_plan(&nats, copy.path()).await;
    assert_eq!(code, Some(0), "{again}");
    assert!(
        again
            .lines()
            .any(|l| l.starts_with("0 to create, 0 to update,") && l.ends_with(" 0 impossible")),
        "an applied folder plans as unchanged:\n{again}"
    );

    // The replica count per environment, without editing a file: every stream, bucket and consumer.
    let (code, replicated) = infra_with(&nats, &["plan", "--replicas", "3"], copy.path()).await;
    assert_eq!(code, Some(0), "{replicated}");
    for object in ["EVENTS", "jetfn-ledger", "EVENTS/welcome"] {
        assert!(
            line(&replicated, object).ends_with("update"),
            "{replicated}"
        );
    }
    assert!(
        replicated.contains("    num_replicas: 1 -> 3"),
        "{replicated}"
    );

    copy.edit(
        "consumers/EVENTS/welcome.json",
        "\"max_deliver\": 6",
        "\"max_deliver\": 8",
    );
    let (code, planned) = infra_plan(&nats, copy.path()).await;
    assert_eq!(code, Some(0), "{planned}");
    assert!(
        line(&planned, "EVENTS/welcome").ends_with("update"),
        "{planned}"
    );
    assert!(planned.contains("    max_deliver: 6 -> 8"), "{planned}");
    assert!(planned.contains("0 to create, 1 to update"), "{planned}");
    assert_eq!(max_deliver(&js, "welcome").await, 6, "plan changed nothing");

    let (code, applied) = infra(&nats, "apply", copy.path()).await;
    assert_eq!(code, Some(0), "{applied}");
    assert!(applied.contains("    max_deliver: 6 -> 8"), "{applied}");
    assert_eq!(
        max_deliver(&js, "welcome").await,
        8,
        "the server has the new value"
    );
    let (_, after) = infra_plan(&nats, copy.path()).await;
    assert!(after.contains("0 to create, 0 to update"), "{after}");
}

async fn infra_plan(nats: &NatsServer, dir: &Path) -> (Option<i32>, String) {
    infra(nats, "plan", dir).await
}

#[tokio::test]
async fn a_misspelled_key_fails_naming_the_file_and_the_key_and_applies_nothing() {
    let nats = NatsServer::start();
    let js = context(&nats).await;
    let copy = InfraCopy::new("misspelled");
    let file = copy.edit(
        "consumers/EVENTS/welcome.json",
        "\"max_deliver\"",
        "\"max_delivr\"",
    );
    let (code, output) = infra(&nats, "apply", copy.path()).await;
    assert_ne!(code, Some(0), "{output}");
    assert!(
        output.contains(&format!(
            "{}: unknown key `max_delivr` (did you mean `max_deliver`?)",
            file.display()
        )),
        "{output}"
    );
    assert!(
        js.get_stream("EVENTS").await.is_err(),
        "nothing is applied from a folder with a bad file"
    );
}

#[tokio::test]
async fn a_change_the_server_cannot_make_is_planned_as_such_and_apply_refuses_it_whole() {
    let nats = NatsServer::start();
    let js = context(&nats).await;
    let copy = InfraCopy::new("impossible");
    let (code, output) = infra(&nats, "apply", copy.path()).await;
    assert_eq!(code, Some(0), "{output}");

    copy.edit(
        "consumers/EVENTS/welcome.json",
        "\"deliver_policy\": \"all\"",
        "\"deliver_policy\": \"new\"",
    );
    copy.edit(
        "consumers/EVENTS/contact.json",
        "\"max_deliver\": 6",
        "\"max_deliver\": 4",
    );
    let (code, planned) = infra_plan(&nats, copy.path()).await;
    assert_eq!(code, Some(0), "plan reports, it does not fail:\n{planned}");
    assert!(
        line(&planned, "EVENTS/welcome").contains("CANNOT UPDATE"),
        "{planned}"
    );
    assert!(
        planned.contains("deliver_policy: \"all\" -> \"new\""),
        "{planned}"
    );
    assert!(
        line(&planned, "EVENTS/contact").ends_with("update"),
        "{planned}"
    );

    let (code, refused) = infra(&nats, "apply", copy.path()).await;
    assert_ne!(code, Some(0), "{refused}");
    assert!(
        refused.contains("nothing applied") && refused.contains("EVENTS/welcome"),
        "{refused}"
    );
    assert_eq!(
        max_deliver(&js, "contact").await,
        6,
        "the possible change is not applied either"
    );
}

/// The library path the tests and `jetfn dev` use: apply then plan is unchanged, with the tests' short timings
/// (milliseconds survive the round trip through the server).
#[tokio::test]
async fn applied_definitions_plan_as_unchanged_through_the_library() {
    let nats = NatsServer::start();
    let js = context(&nats).await;
    let mut definitions =
        ::provision::Definitions::load(&workspace_root().join("infra/nats")).unwrap();
    let welcome = definitions.consumer_mut("EVENTS", "welcome").unwrap();
    welcome.backoff = vec![Duration::from_millis(400), Duration::from_millis(800)];
    welcome.ack_wait = Duration::from_millis(400);
    let first = definitions.apply(&js).await.unwrap();
    assert!(
        first
            .changes
            .iter()
            .all(|c| c.action == ::provision::Action::Create)
    );
    let plan = definitions.plan(&js).await.unwrap();
    assert!(plan.is_unchanged(), "{plan}");
}

/// A schedule the plan would create but that appeared before the apply (another apply, `jetfn schedule add`) is not
/// rewritten: a rewrite restarts an `@every` interval in a change the plan did not show. The apply refuses, says
/// to plan again, and the schedule is the one that appeared.
#[tokio::test]
async fn an_apply_never_rewrites_a_schedule_that_appeared_after_its_plan() {
    let nats = NatsServer::start();
    let js = context(&nats).await;
    let definitions = ::provision::Definitions::load(&workspace_root().join("infra/nats")).unwrap();
    definitions.apply(&js).await.unwrap();
    let spec = definitions
        .schedules
        .first()
        .expect("infra/nats defines schedules");
    assert!(publish::schedule::cancel(&js, &spec.name).await.unwrap());
    let plan = definitions.plan(&js).await.unwrap();
    assert!(
        !plan.is_unchanged(),
        "the cancelled schedule is to be created: {plan}"
    );
    let appeared = ::provision::schedule::put(&js, spec, false).await.unwrap();
    let err = definitions
        .apply_plan(&js, &plan, |_| {})
        .await
        .expect_err("the apply refuses");
    assert!(
        format!("{err:#}").contains("appeared after the plan was made"),
        "{err:#}"
    );
    let stored = js
        .get_stream("SCHEDULES")
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&publish::schedule::subject(&spec.name))
        .await
        .unwrap();
    assert_eq!(
        stored.sequence, appeared,
        "the schedule that appeared stays as it was"
    );
}

/// `infra/nats` applied, with every direct get of SCHEDULES answered "none" by a stand-in for a replica that has not
/// applied the schedules' writes (the stream's own direct gets are off, so the stand-in always answers).
async fn applied_behind_a_stale_replica(
    nats: &NatsServer,
) -> (jetstream::Context, ::provision::Definitions) {
    let js = context(nats).await;
    let mut definitions =
        ::provision::Definitions::load(&workspace_root().join("infra/nats")).unwrap();
    assert!(
        !definitions.schedules.is_empty(),
        "infra/nats defines schedules"
    );
    definitions
        .streams
        .iter_mut()
        .find(|stream| stream.name == "SCHEDULES")
        .expect("the SCHEDULES stream")
        .allow_direct = false;
    definitions.apply(&js).await.unwrap();
    crate::support::stale_replica(&nats.url(), "SCHEDULES");
    (js, definitions)
}

/// `jetfn schedule list` reads each schedule from the stream's leader as well: a replica's stale "none" left the
/// schedule out of the list, where it reads as one that does not exist.
#[tokio::test]
async fn a_replicas_stale_none_never_leaves_a_schedule_out_of_the_list() {
    let nats = NatsServer::start();
    let (js, definitions) = applied_behind_a_stale_replica(&nats).await;
    let listed = ops::schedules::list(&js, 1).await.unwrap();
    let names: Vec<&str> = listed
        .iter()
        .map(|schedule| schedule.name.as_str())
        .collect();
    for spec in &definitions.schedules {
        assert!(
            names.contains(&spec.name.as_str()),
            "{} is listed: {names:?}",
            spec.name
        );
    }
}

/// Before: an applied schedule was looked up by a direct get, and a replica that had not applied it answered
/// "none": the plan re-created it, and the apply's rewrite restarted an `@every` interval. Behind the stand-in for
/// such a replica, the plan reads the leader and finds every schedule unchanged.
#[tokio::test]
async fn a_replicas_stale_none_never_plans_an_applied_schedule_again() {
    let nats = NatsServer::start();
    let (js, definitions) = applied_behind_a_stale_replica(&nats).await;
    let plan = definitions.plan(&js).await.unwrap();
    assert!(plan.is_unchanged(), "{plan}");
}

/// The server rule the loader's `ack_wait` check stands on: given a backoff list, nats-server 2.15 stores
/// `backoff[0]` as the consumer's ack wait whatever the request said, without an error.
#[tokio::test]
async fn the_server_replaces_ack_wait_with_the_first_backoff_step() {
    let nats = NatsServer::start();
    let js = context(&nats).await;
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "ACKWAIT".into(),
            subjects: vec!["ackwait.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("c".into()),
            ack_wait: Duration::from_secs(30),
            backoff: vec![Duration::from_secs(5), Duration::from_secs(30)],
            max_deliver: 5,
            ..Default::default()
        })
        .await
        .expect("the server accepts the request");
    let info = consumer.info().await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(5));
}
