//! The runtime's process core: several consumers, each with its own handler and event type, on one connection
//! with one health endpoint that is ready only when every one of them is bound.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer;
use events::{Event as _, MessageCreated, UserRegistered};
use runtime::config::{JobConfig, NatsConfig};
use runtime::{Job, JobError};

use crate::support::{System, TempDir, WAIT, message, user};

#[tokio::test]
async fn consumers_of_two_event_types_share_a_connection_and_are_ready_only_together() {
    let system = System::start().await;
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let job: JobConfig = serde_json::from_value(serde_json::json!({ "health_addr": addr }))
        .expect("JobConfig has defaults for every other field");
    let runtime =
        runtime::Runtime::new("two-consumers", &NatsConfig::local(system.nats.url()), job)
            .await
            .unwrap();
    let (welcomed, created) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let (counted_welcomes, counted_messages) = (welcomed.clone(), created.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(
        runtime
            .consume("welcome", move |_job: Job<UserRegistered>| {
                counted_welcomes.fetch_add(1, Ordering::SeqCst);
                async { Ok::<(), JobError>(()) }
            })
            // Not defined yet: the process is alive but not ready until it is.
            .consume("late", move |_job: Job<MessageCreated>| {
                counted_messages.fetch_add(1, Ordering::SeqCst);
                async { Ok::<(), JobError>(()) }
            })
            .run(async {
                let _ = stopped.await;
            }),
    );
    let deadline = Instant::now() + WAIT;
    while system.consumer_info("EVENTS", "welcome").await.num_waiting == 0 {
        assert!(Instant::now() < deadline, "welcome was never pulled from");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        crate::welcome::http_status(&addr, "/readyz").await,
        503,
        "one consumer of two is bound"
    );

    system
        .js
        .get_stream("EVENTS")
        .await
        .unwrap()
        .create_consumer(consumer::pull::Config {
            durable_name: Some("late".to_owned()),
            filter_subject: events::subject_for(MessageCreated::TYPE),
            ack_wait: Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .unwrap();
    while crate::welcome::http_status(&addr, "/readyz").await != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready once both consumers were bound"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    system
        .publisher
        .publish(user("both@example.com", "Both"))
        .await
        .unwrap();
    system
        .publisher
        .publish(message(
            "m-1",
            "c-1",
            "hello",
            time::OffsetDateTime::now_utc(),
        ))
        .await
        .unwrap();
    system.wait_settled("welcome").await;
    system.wait_settled("late").await;
    assert_eq!(
        (
            welcomed.load(Ordering::SeqCst),
            created.load(Ordering::SeqCst)
        ),
        (1, 1),
        "each handler got its own event"
    );
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn indexing_serves_its_three_consumers_on_one_connection_and_one_health_endpoint() {
    let system = System::start().await;
    let dir = TempDir::new("one-connection");
    let addr = format!("127.0.0.1:{}", testkit::free_port());
    let indexing = system
        .indexing(&dir, &[("JOB_HEALTH_ADDR", addr.clone())])
        .await;
    assert_eq!(
        indexing.output().matches("connecting to NATS").count(),
        1,
        "one connection for three consumers:\n{}",
        indexing.output()
    );
    assert_eq!(crate::welcome::http_status(&addr, "/readyz").await, 200);
}
