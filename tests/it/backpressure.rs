//! Slow consumer (S19): an SMTP server that takes its time with every mail and a burst far larger than the
//! consumer's `max_ack_pending`. The server keeps the function's in-flight messages at the cap, the function's
//! memory stays bounded, no message is redelivered because its `ack_wait` ran out while it waited, and everything
//! is delivered once.

use std::time::{Duration, Instant};

use crate::support::{System, user};

const BURST: usize = 300;
const SLOW: Duration = Duration::from_millis(200);
/// The function's resident memory stays under this whatever the backlog (it is ~20 MB at rest).
const RSS_LIMIT_KB: u64 = 100 * 1024;

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_smtp_server_keeps_in_flight_under_the_cap_memory_bounded_and_redelivers_nothing() {
    let system = System::start().await;
    let welcome = system.welcome().await;
    let cap = system
        .consumer_info("EVENTS", "welcome")
        .await
        .config
        .max_ack_pending;
    system.smtp.delay_data_reply(SLOW);

    let started = Instant::now();
    for i in 0..BURST {
        system
            .publisher
            .publish(user(&format!("slow{i}@example.com"), "Ada"))
            .await
            .expect("JetStream buffers the burst");
    }
    let published_in = started.elapsed();

    let mut most_in_flight = 0;
    let mut most_rss_kb = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while system.smtp.messages().len() < BURST {
        assert!(
            Instant::now() < deadline,
            "{} of {BURST} mailed",
            system.smtp.messages().len()
        );
        let info = system.consumer_info("EVENTS", "welcome").await;
        most_in_flight = most_in_flight.max(info.num_ack_pending);
        most_rss_kb = most_rss_kb.max(rss_kb(welcome.pid()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let info = system.wait_settled("welcome").await;
    eprintln!(
        "{BURST} events published in {published_in:?}, mailed in {:?}; in flight at most {most_in_flight} (cap \
         {cap}); welcome's RSS at most {most_rss_kb} kB",
        started.elapsed()
    );
    assert!(
        i64::try_from(most_in_flight).unwrap() <= cap,
        "{most_in_flight} in flight, over the cap {cap}"
    );
    assert!(
        most_rss_kb < RSS_LIMIT_KB,
        "welcome grew to {most_rss_kb} kB"
    );
    assert_eq!(
        info.delivered.consumer_sequence,
        u64::try_from(BURST).unwrap(),
        "every event delivered once: none redelivered after its ack_wait ran out"
    );
    assert_eq!(system.smtp.messages().len(), BURST, "one email per event");
    assert!(system.dlq().await.is_empty(), "no dead letter");
}

/// `VmRSS` of a process, in kB (0 if it cannot be read).
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
