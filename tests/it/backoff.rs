//! What nats-server 2.15 does with a NAK's delay on a consumer that has a backoff list, pinned against a real
//! server (the runtime's `Policy::nak_delay` relies on it), and the welcome function's retries keeping to the list.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt;
use testkit::NatsServer;

use crate::support::{System, user};

const BACKOFF: [Duration; 3] = [secs(1), secs(2), secs(3)];
/// Generous for a loaded 2-core machine, still telling 2 s from 3 s.
const TOLERANCE: Duration = Duration::from_millis(400);

const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// What to do with a delivery: nothing (let the backoff step run out), or a NAK with an optional delay.
#[derive(Clone, Copy)]
enum Answer {
    Nothing,
    Nak(Option<Duration>),
}

/// Publishes one message to a fresh consumer with backoff [1s, 2s, 3s] and `max_deliver` 4, answers delivery n with
/// `answers[n-1]`, and returns the gaps between deliveries.
async fn gaps(answers: [Answer; 3]) -> Vec<Duration> {
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "B".into(),
            subjects: vec!["b.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = stream
        .create_consumer(pull::Config {
            durable_name: Some("c".into()),
            backoff: BACKOFF.to_vec(),
            max_deliver: 4,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        consumer.cached_info().config.ack_wait,
        BACKOFF[0],
        "the server overwrites ack_wait with backoff[0]"
    );
    let mut messages = consumer.messages().await.unwrap();
    js.publish("b.x", "x".into()).await.unwrap().await.unwrap();
    let mut at = Vec::new();
    while at.len() < 4 {
        let message = tokio::time::timeout(Duration::from_secs(15), messages.next())
            .await
            .expect("the next delivery within 15 s")
            .unwrap()
            .unwrap();
        at.push(Instant::now());
        let delivered = message.info().unwrap().delivered;
        assert_eq!(usize::try_from(delivered).unwrap(), at.len());
        if let Some(Answer::Nak(delay)) = answers.get(at.len() - 1) {
            message.ack_with(AckKind::Nak(*delay)).await.unwrap();
        }
    }
    at.windows(2).map(|pair| pair[1] - pair[0]).collect()
}

fn assert_gaps(measured: &[Duration], expected: &[Duration]) {
    eprintln!("gaps between deliveries: {measured:?}, expected {expected:?}");
    for (i, (gap, want)) in measured.iter().zip(expected).enumerate() {
        assert!(
            gap.abs_diff(*want) <= TOLERANCE,
            "delivery {} came {gap:?} after the previous, expected {want:?} (all gaps {measured:?})",
            i + 2
        );
    }
}

#[tokio::test]
async fn an_unanswered_delivery_is_redelivered_after_the_current_backoff_step() {
    let measured = gaps([Answer::Nothing; 3]).await;
    assert_gaps(&measured, &BACKOFF);
}

#[tokio::test]
async fn a_delayed_nak_waits_its_delay_plus_the_current_step_minus_the_first() {
    // gap = delay + backoff[dc-1] - backoff[0]: 2 + 1 - 1, 2 + 2 - 1, 1 + 3 - 1.
    let measured = gaps([
        Answer::Nak(Some(secs(2))),
        Answer::Nak(Some(secs(2))),
        Answer::Nak(Some(secs(1))),
    ])
    .await;
    assert_gaps(&measured, &[secs(2), secs(3), secs(3)]);
}

#[tokio::test]
async fn a_bare_nak_redelivers_at_once_and_a_tiny_delay_waits_the_step_minus_the_first() {
    // No delay: at once. 1 ms: 2 - 1 and 3 - 1, the shortest gap a delayed NAK can give at those deliveries.
    let tiny = Duration::from_millis(1);
    let measured = gaps([
        Answer::Nak(None),
        Answer::Nak(Some(tiny)),
        Answer::Nak(Some(tiny)),
    ])
    .await;
    assert_gaps(&measured, &[Duration::ZERO, secs(1), secs(2)]);
}

#[tokio::test]
async fn welcome_retries_arrive_at_the_backoff_lists_gaps() {
    let system = System::start_with(|definitions| {
        for (stream, consumer) in &mut definitions.consumers {
            if stream == "EVENTS" {
                consumer.backoff = BACKOFF.to_vec();
                consumer.ack_wait = BACKOFF[0];
                consumer.max_deliver = 4;
            }
        }
    })
    .await;
    let _welcome = system.welcome().await;
    // Two failures, under the breaker's default threshold of three: the gaps are backoff[0] and backoff[1].
    system
        .smtp
        .fail_next_data(vec![(451, "4.3.0 try later"), (451, "4.3.0 try later")]);
    system
        .publisher
        .publish(user("grace@example.com", "Grace"))
        .await
        .unwrap();

    let mails = system
        .smtp
        .wait_for_messages(1, Duration::from_secs(30))
        .await;
    assert_eq!(mails.len(), 1);
    let attempts = system.smtp.attempts();
    let codes: Vec<u16> = attempts.iter().map(|attempt| attempt.code).collect();
    assert_eq!(codes, vec![451, 451, 250]);
    let measured: Vec<Duration> = attempts
        .windows(2)
        .map(|pair| pair[1].at - pair[0].at)
        .collect();
    assert_gaps(&measured, &BACKOFF);
    let info = system.wait_settled("welcome").await;
    assert_eq!(info.delivered.consumer_sequence, 3, "three deliveries");
    assert!(system.dlq().await.is_empty());
}
