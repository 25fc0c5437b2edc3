//! Delays from code (issue 12, item 4): the SDK and the publisher put an event on a one-off schedule NATS holds,
//! fired at its time and not before, once; cancelled, it never fires; a time in the past is refused; a retried call
//! is told it is a duplicate, on a three-node cluster too.

use std::time::Duration;

use futures::StreamExt as _;
use provision::Definitions;
use sdk::{Delay, DelayError, PublishError};
use testkit::{NatsCluster, workspace_root};
use time::OffsetDateTime;

use crate::schedules::last_stored;
use crate::support::{System, WAIT, user};

const SUBJECT: &str = "events.users.registered";

#[tokio::test]
async fn a_delayed_email_from_the_sdk_is_sent_once_and_not_before_its_time() {
    let system = System::start().await;
    let _welcome = system.welcome().await;
    let emails = system.emails();
    let asked = OffsetDateTime::now_utc();
    let scheduled = emails
        .delayed(Delay::In(Duration::from_millis(2500)))
        .send_welcome_email(user("grace@example.com", "Grace"))
        .await
        .expect("a valid delayed email is scheduled");
    assert!(!scheduled.duplicate);
    // Rounded up to the whole second, never early.
    assert!(
        scheduled.fires_at >= asked + time::Duration::milliseconds(2500),
        "{scheduled:?}"
    );
    assert_eq!(scheduled.fires_at.nanosecond(), 0);
    let listed = system.jetfn(&["schedule", "list"]).await;
    assert!(listed.contains(&scheduled.name), "{listed}");

    // The same email scheduled again (a retried call) is the same schedule.
    let again = emails
        .delayed(Delay::In(Duration::from_millis(2500)))
        .send_welcome_email(user("grace@example.com", "Grace"))
        .await
        .expect("a retried call is absorbed");
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.name, scheduled.name);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(system.count_on(SUBJECT).await, 0, "it fired early");
    assert_eq!(system.smtp.count(), 0, "an email went out early");

    let mails = system.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].rcpt_to, vec!["grace@example.com".to_owned()]);
    let fired = last_stored(&system, SUBJECT).await;
    assert!(
        fired >= scheduled.fires_at,
        "stored at {fired}, due {}",
        scheduled.fires_at
    );
    // Once: the schedule is gone, and nothing fires again.
    system.wait_settled("welcome").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(system.count_on(SUBJECT).await, 1);
    assert_eq!(system.smtp.count(), 1);
    assert!(
        !emails
            .cancel_delayed(&scheduled.id)
            .await
            .expect("the server answers"),
        "a fired one-off schedule is gone"
    );
    assert!(system.dlq().await.is_empty());
}

#[tokio::test]
async fn a_cancelled_delayed_event_never_fires() {
    let system = System::start().await;
    let at = OffsetDateTime::now_utc() + time::Duration::seconds(2);
    let scheduled = system
        .publisher
        .publish_at(at, user("ada@example.com", "Ada"))
        .await
        .expect("scheduled");
    assert!(scheduled.fires_at >= at);
    assert!(
        system
            .publisher
            .cancel_delayed(&scheduled.id)
            .await
            .expect("cancelled"),
        "there was a schedule to cancel"
    );
    let listed = system.jetfn(&["schedule", "list"]).await;
    assert!(!listed.contains(&scheduled.name), "{listed}");
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(system.count_on(SUBJECT).await, 0, "a cancelled event fired");
}

#[tokio::test]
async fn a_time_in_the_past_is_refused_naming_the_field_and_nothing_is_stored() {
    let system = System::start().await;
    let past = OffsetDateTime::now_utc() - time::Duration::minutes(1);
    let err = system
        .emails()
        .delayed(Delay::At(past))
        .send_welcome_email(user("ada@example.com", "Ada"))
        .await
        .expect_err("the past is refused");
    assert!(
        matches!(err, PublishError::Delay(DelayError::Past { .. })),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("`at`") && text.contains("in the past"),
        "{text}"
    );
    // An invalid event is refused before its delay is looked at too: nothing reaches SCHEDULES either way.
    let err = system
        .publisher
        .publish_in(Duration::from_secs(5), user("not-an-address", "Ada"))
        .await
        .expect_err("invalid");
    assert!(matches!(err, PublishError::Invalid(_)), "{err:?}");
    let mut schedules = system.js.get_stream("SCHEDULES").await.unwrap();
    assert_eq!(schedules.info().await.unwrap().state.messages, 0);
    // The CLI refuses the same way, naming its flag.
    let process = testkit::FunctionProcess::spawn_with_args(
        "jetfn",
        &[
            "schedule",
            "add",
            "users.registered",
            "--at",
            "2020-01-01T00:00:00Z",
        ],
        &system.env(),
    );
    let status = process.wait_exit(WAIT).await;
    assert_ne!(status.code(), Some(0));
    assert!(
        process.output().contains("--at 2020-01-01T00:00:00Z")
            && process.output().contains("in the past"),
        "{}",
        process.output()
    );
}

/// A retried call (the same event id) finds the schedule its first call stored, and is told it is that schedule,
/// whichever node it is connected to. The schedule stream is R3 with direct gets allowed, as provisioned: each
/// publisher is connected to a follower of its leader, where a direct get may be answered by a replica that has not
/// applied the first call's write yet. Before the held schedule was read from the leader, such retries failed
/// ("no message found") although the schedule existed.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_three_node_cluster_a_retried_delayed_event_is_always_told_it_is_a_duplicate() {
    const EVENTS: usize = 2000;
    const PARALLEL: usize = 16;
    let cluster = NatsCluster::start();
    let js = async_nats::jetstream::new(
        async_nats::connect(cluster.urls())
            .await
            .expect("the cluster accepts a client"),
    );
    let mut definitions =
        Definitions::load(&workspace_root().join("infra/nats")).expect("infra/nats loads");
    definitions.set_replicas(3);
    definitions
        .streams
        .retain(|stream| stream.name == publish::schedule::STREAM);
    definitions.consumers.clear();
    definitions.buckets.clear();
    definitions.schedules.clear();
    definitions
        .apply(&js)
        .await
        .expect("the schedule stream applies with three replicas");
    let config = js
        .get_stream(publish::schedule::STREAM)
        .await
        .expect("the schedule stream exists")
        .cached_info()
        .config
        .clone();
    assert_eq!(config.num_replicas, 3);
    assert!(config.allow_direct, "provisioned with direct gets allowed");
    let leader = crate::cluster::stream_leader(&js, publish::schedule::STREAM).await;
    let mut publishers = Vec::new();
    for node in cluster.nodes().iter().filter(|node| node.name() != leader) {
        let client = async_nats::connect(node.url()).await.unwrap();
        publishers.push(publish::Publisher::new(client, "/integration-tests"));
    }
    assert_eq!(publishers.len(), 2, "two followers of {leader}");
    let delay = Delay::In(Duration::from_secs(3600));
    let failed: Vec<(usize, String)> = futures::stream::iter(0..EVENTS)
        .map(|n| {
            let publisher = publishers[n % 2].clone();
            async move {
                let event = events::CloudEvent::new(
                    "/integration-tests",
                    user(&format!("retry-{n}@example.com"), "Retry"),
                );
                let first = publisher
                    .publish_delayed(&event, delay)
                    .await
                    .expect("the first call schedules");
                assert!(!first.duplicate, "{first:?}");
                match publisher.publish_delayed(&event, delay).await {
                    Ok(again) if again.duplicate && again.sequence == first.sequence => None,
                    other => Some((n, format!("{other:?}"))),
                }
            }
        })
        .buffer_unordered(PARALLEL)
        .filter_map(std::future::ready)
        .collect()
        .await;
    assert!(
        failed.is_empty(),
        "{} of {EVENTS} retried calls were not told they were a duplicate: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}
