//! Rate limits (issue 12, item 3): a limit per function holds across its replicas (the SMTP server never receives
//! more than N in a window), events over it wait (never failed, retried, redelivered or dead-lettered), and keyed
//! limits come from the same limiter. Counts come from the SMTP server's receive times and the limiter's own
//! grants, with the tolerance a window's edges need: a correctness check, not a speed benchmark. Also pins the
//! server behaviour the limiter relies on: of concurrent CAS writers at one revision exactly one wins, and the
//! server, not the writer, stamps an entry's time.

use std::time::{Duration, Instant};

use runtime::RateLimiter;

use crate::support::{System, WAIT, user};

/// The most arrivals in any window of `window` (half open), by sliding it over every arrival.
fn most_in_window(arrivals: &[Instant], window: Duration) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|t| **t < sorted[i] + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_one_limit_and_events_over_it_wait_without_a_redelivery() {
    const LIMIT: usize = 4;
    const EVENTS: usize = 24;
    let system = System::start().await;
    let limit = [("JOB_RATE_LIMIT", format!("{LIMIT}/1s"))];
    let first = system.spawn("welcome", &limit).await;
    let second = system.spawn("welcome", &limit).await;
    for i in 0..EVENTS {
        system
            .publisher
            .publish(user(&format!("limited{i}@example.com"), "Ada"))
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while system.smtp.count() < EVENTS {
        assert!(
            Instant::now() < deadline,
            "{} of {EVENTS} mailed",
            system.smtp.count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let arrivals = system.smtp.arrivals();
    // Grants are a second apart per LIMIT by the server's clock; a mail reaches the SMTP server some milliseconds
    // after its grant, and that lag varies. A window shorter by the most the lag can vary holds at most LIMIT.
    let tolerance = Duration::from_millis(250);
    let most = most_in_window(&arrivals, Duration::from_secs(1) - tolerance);
    let span = arrivals
        .iter()
        .max()
        .unwrap()
        .duration_since(*arrivals.iter().min().unwrap());
    eprintln!(
        "{EVENTS} mails over {span:?}; at most {most} within {:?}",
        Duration::from_secs(1) - tolerance
    );
    assert!(
        most <= LIMIT,
        "{most} mails within one window, over the limit of {LIMIT}"
    );
    assert!(
        span >= Duration::from_secs((EVENTS / LIMIT - 1) as u64) - tolerance,
        "{EVENTS} mails in {span:?}: more than {LIMIT} a second"
    );
    let info = system.wait_settled("welcome").await;
    assert_eq!(
        info.delivered.consumer_sequence, EVENTS as u64,
        "every event delivered once: waiting never ran into ack_wait"
    );
    assert!(system.dlq().await.is_empty(), "nothing dead-lettered");
    for replica in [&first, &second] {
        assert!(
            replica.output().contains("rate_limit"),
            "each replica runs under the limit:\n{}",
            replica.output()
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_keyed_limit_counts_each_key_apart_and_frees_a_grant_a_window_later() {
    let system = System::start().await;
    let limiter = RateLimiter::bind(
        &system.js,
        "jetfn-ratelimit",
        "keyed-test",
        2,
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    assert!(limiter.take("tenant-a").await.unwrap());
    assert!(limiter.take("tenant-a").await.unwrap());
    assert!(
        !limiter.take("tenant-a").await.unwrap(),
        "a third within the window is refused"
    );
    assert!(
        limiter.take("tenant-b").await.unwrap(),
        "another key has its own grants"
    );
    // Waiting instead of refusing: the next grant for tenant-a comes once the first is a window old.
    let started = Instant::now();
    tokio::time::timeout(WAIT, limiter.acquire("tenant-a"))
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "acquire waited for the window: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn limiters_on_separate_connections_never_grant_more_than_the_limit_in_a_window() {
    const LIMIT: u64 = 5;
    let system = System::start().await;
    let mut tasks = Vec::new();
    for _ in 0..3 {
        let client = async_nats::connect(system.nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let limiter = RateLimiter::bind(
            &js,
            "jetfn-ratelimit",
            "shared-test",
            LIMIT,
            Duration::from_secs(1),
        )
        .await
        .unwrap();
        tasks.push(tokio::spawn(async move {
            let mut granted = Vec::new();
            for _ in 0..6 {
                limiter.acquire("").await.unwrap();
                granted.push(Instant::now());
            }
            granted
        }));
    }
    let mut granted = Vec::new();
    for task in tasks {
        granted.extend(task.await.unwrap());
    }
    // A grant is known to its taker a read after the server stamped it; that read's time varies a little.
    let most = most_in_window(&granted, Duration::from_millis(800));
    eprintln!("18 grants; at most {most} within 800 ms");
    assert!(most <= LIMIT as usize, "{most} grants within one window");
}

/// The limiter's two server facts: a CAS update at a revision lets exactly one of several concurrent writers in,
/// and an entry's `created` is the server's clock at the write (so writers' clocks take no part).
#[tokio::test(flavor = "multi_thread")]
async fn kv_cas_lets_one_concurrent_writer_in_and_the_server_stamps_the_time() {
    let system = System::start().await;
    let store = system.js.get_key_value("jetfn-ratelimit").await.unwrap();
    let revision = store.create("pin.cas", "0".into()).await.unwrap();
    let writers = (0..8).map(|i| {
        let store = store.clone();
        async move {
            store
                .update("pin.cas", i.to_string().into(), revision)
                .await
                .is_ok()
        }
    });
    let won = futures::future::join_all(writers).await;
    assert_eq!(won.iter().filter(|won| **won).count(), 1, "{won:?}");

    let before = time::OffsetDateTime::now_utc();
    let written = store.put("pin.clock", "x".into()).await.unwrap();
    let after = time::OffsetDateTime::now_utc();
    let entry = store.entry("pin.clock").await.unwrap().unwrap();
    assert_eq!(entry.revision, written);
    // The server runs on this machine: its stamp falls between the two readings of the same clock.
    assert!(
        entry.created >= before - time::Duration::milliseconds(5)
            && entry.created <= after + time::Duration::milliseconds(5),
        "created {} not within [{before}, {after}]",
        entry.created
    );
}

/// The limit can live in the consumer's definition (`jetfn.rate_limit`), the one place every replica reads.
#[tokio::test(flavor = "multi_thread")]
async fn a_limit_in_the_consumer_definition_holds_without_any_variable() {
    const LIMIT: usize = 3;
    const EVENTS: usize = 9;
    let system = System::start_with(|definitions| {
        let welcome = definitions
            .consumers
            .iter_mut()
            .find(|(_, consumer)| consumer.durable_name.as_deref() == Some("welcome"))
            .expect("the welcome consumer");
        welcome
            .1
            .metadata
            .insert("jetfn.rate_limit".to_owned(), format!("{LIMIT}/1s"));
    })
    .await;
    let welcome = system.welcome().await;
    assert!(welcome.output().contains("3/1s"), "{}", welcome.output());
    for i in 0..EVENTS {
        system
            .publisher
            .publish(user(&format!("defined{i}@example.com"), "Ada"))
            .await
            .unwrap();
    }
    system.smtp.wait_for_messages(EVENTS, WAIT).await;
    let most = most_in_window(&system.smtp.arrivals(), Duration::from_millis(750));
    assert!(most <= LIMIT, "{most} mails within one window");
    assert_eq!(
        system
            .wait_settled("welcome")
            .await
            .delivered
            .consumer_sequence,
        EVENTS as u64
    );
    assert!(system.dlq().await.is_empty());
}

/// On an R3 bucket a KV read is a direct get that any replica may answer (NATS prefers a responder on the
/// client's own node), and a follower that has not applied a write yet answers with the revision before it, or
/// none. The limiter reads its own write back to learn the server's time of it: answered by a stale follower, that
/// read once made a contact form's first grant "unknown", and the form was dead-lettered as rate-limited (the
/// compose test, in CI). Here limiters connected to each follower of the bucket's stream take a first grant for
/// many senders: every one is granted.
#[tokio::test(flavor = "multi_thread")]
async fn on_a_three_node_cluster_every_first_take_is_granted() {
    const SENDERS: usize = 3000;
    let cluster = testkit::NatsCluster::start();
    let js = async_nats::jetstream::new(
        async_nats::connect(cluster.urls())
            .await
            .expect("the cluster accepts a client"),
    );
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: "jetfn-ratelimit".to_owned(),
        history: 1,
        max_age: Duration::from_secs(86_400),
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("an R3 bucket");
    let leader = crate::cluster::stream_leader(&js, "KV_jetfn-ratelimit").await;
    let mut limiters = Vec::new();
    for node in cluster.nodes().iter().filter(|node| node.name() != leader) {
        let js = async_nats::jetstream::new(async_nats::connect(node.url()).await.unwrap());
        limiters.push(
            RateLimiter::bind(
                &js,
                "jetfn-ratelimit",
                "contact",
                3,
                Duration::from_secs(600),
            )
            .await
            .unwrap(),
        );
    }
    assert_eq!(limiters.len(), 2, "two followers of {leader}");
    let mut refused = Vec::new();
    for n in 0..SENDERS {
        let sender = format!("sender-{n}@example.com");
        if !limiters[n % 2]
            .take(&sender)
            .await
            .expect("the take reaches the bucket")
        {
            refused.push(n);
        }
    }
    assert!(
        refused.is_empty(),
        "{} of {SENDERS} senders refused at their first form: {refused:?}",
        refused.len()
    );
}
