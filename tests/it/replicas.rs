//! Each replica's heartbeat in `jetfn-replicas`: two real replicas are listed, their counts move as they work, a
//! SIGKILLed one disappears when its entry expires, and a clean stop removes its entry at once.

use std::time::{Duration, Instant};

use crate::support::{System, user};

/// The bucket's max_age in these tests (15 s in infra/nats): short, so expiry is quick to see.
const MAX_AGE_SECS: u64 = 4;

async fn welcome_replicas(system: &System) -> Vec<ops::replicas::Replica> {
    ops::replicas::list(&system.js)
        .await
        .expect("the replicas")
        .into_iter()
        .filter(|replica| replica.function == "welcome")
        .collect()
}

async fn wait_for(
    system: &System,
    what: &str,
    timeout: Duration,
    done: impl Fn(&[ops::replicas::Replica]) -> bool,
) -> Vec<ops::replicas::Replica> {
    let deadline = Instant::now() + timeout;
    loop {
        let replicas = welcome_replicas(system).await;
        if done(&replicas) {
            return replicas;
        }
        assert!(Instant::now() < deadline, "{what}: {replicas:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn total(replicas: &[ops::replicas::Replica], of: fn(&ops::replicas::Minute) -> u64) -> u64 {
    replicas
        .iter()
        .flat_map(|replica| &replica.minutes)
        .map(of)
        .sum()
}

#[tokio::test]
async fn replicas_beat_count_their_work_and_leave_by_stop_or_expiry() {
    let system = System::start_with(|definitions| {
        let bucket = definitions
            .buckets
            .iter_mut()
            .find(|bucket| bucket.bucket == ops::replicas::BUCKET)
            .expect("infra/nats defines the replicas bucket");
        bucket.max_age_secs = MAX_AGE_SECS;
    })
    .await;
    let beat = [("JOB_HEARTBEAT_SECS", "1".to_owned())];
    let first = system.spawn("welcome", &beat).await;
    let second = system.spawn("welcome", &beat).await;

    let replicas = wait_for(
        &system,
        "two ready replicas",
        Duration::from_secs(10),
        |r| r.len() == 2 && r.iter().all(|replica| replica.ready),
    )
    .await;
    assert_ne!(replicas[0].instance, replicas[1].instance);
    for replica in &replicas {
        assert_eq!(replica.minutes.len(), ops::replicas::MINUTES);
        assert!(!replica.breaker_open && !replica.paused, "{replica:?}");
        assert!(replica.minutes.windows(2).all(|m| m[0].start < m[1].start));
    }
    let status = system.jetfn(&["status"]).await;
    assert!(
        status.contains("breaker open")
            && status.lines().any(|line| line.contains("welcome")
                && line.split_whitespace().filter(|w| *w == "2").count() >= 2),
        "status shows two ready welcome replicas:\n{status}"
    );

    // Work moves the counts: six emails sent, one invalid event dead-lettered.
    for n in 0..6 {
        system
            .publisher
            .publish(user(&format!("beat-{n}@example.com"), "Beat"))
            .await
            .unwrap();
    }
    system
        .publish_raw("events.users.registered", b"{not json")
        .await;
    wait_for(&system, "the counts", Duration::from_secs(15), |r| {
        total(r, |m| m.succeeded) == 6 && total(r, |m| m.failed) == 1
    })
    .await;

    // A SIGKILLed replica cannot delete its key: it stays until the entry ages out, then is gone.
    let killed_pid = first.pid();
    first.sigkill();
    first.wait_exit(Duration::from_secs(5)).await;
    let killed_at = Instant::now();
    let replicas = welcome_replicas(&system).await;
    assert!(
        replicas
            .iter()
            .any(|replica| replica.instance.contains(&format!("-{killed_pid}-"))),
        "a killed replica is listed until its entry expires: {replicas:#?}"
    );
    wait_for(
        &system,
        "the killed replica expires",
        Duration::from_secs(MAX_AGE_SECS * 3),
        |r| r.len() == 1,
    )
    .await;
    assert!(killed_at.elapsed() >= Duration::from_secs(MAX_AGE_SECS) - Duration::from_secs(2));

    // A clean stop deletes its key before the process exits.
    second.sigterm();
    assert_eq!(
        second.wait_exit(Duration::from_secs(30)).await.code(),
        Some(0)
    );
    let replicas = welcome_replicas(&system).await;
    assert!(
        replicas.is_empty(),
        "a stopped replica is gone at once: {replicas:#?}"
    );
}

/// Under the generated users: a function writes its own heartbeat with no violation, may not write another
/// function's key, and the viewer lists the replicas.
#[tokio::test]
async fn a_function_writes_only_its_own_heartbeat_and_the_viewer_reads_them() {
    use crate::permissions::{as_function, assert_refused, connect_as, secured_system};
    let system = secured_system().await;
    let mut env = as_function("welcome");
    env.push(("JOB_HEARTBEAT_SECS", "1".to_owned()));
    let welcome = system.spawn("welcome", &env).await;
    let viewer = async_nats::jetstream::new(connect_as(&system, "viewer").await);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let replicas = ops::replicas::list(&viewer)
            .await
            .expect("the viewer lists the replicas");
        if replicas
            .iter()
            .any(|replica| replica.function == "welcome" && replica.ready)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no welcome heartbeat: {replicas:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut js = async_nats::jetstream::new(connect_as(&system, "welcome").await);
    js.set_timeout(Duration::from_secs(1));
    let store = js.get_key_value(ops::replicas::BUCKET).await.unwrap();
    assert!(
        store.put("contact.forged", "{}".into()).await.is_err(),
        "welcome may not write contact's heartbeat"
    );
    assert_refused(&system, "welcome", "$KV.jetfn-replicas.contact.forged").await;
    welcome.sigterm();
    welcome.wait_exit(Duration::from_secs(30)).await;
    let output = welcome.output();
    assert!(!output.contains("heartbeat not"), "{output}");
    let log = system.nats.log();
    let violations: Vec<&str> = log
        .lines()
        .filter(|line| line.contains(" Violation"))
        .collect();
    assert!(
        violations
            .iter()
            .all(|line| line.contains("contact.forged")),
        "only the forged write was refused: {violations:#?}"
    );
}
