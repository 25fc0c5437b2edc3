//! End-to-end latency at a fixed rate: from just before the publish call to the moment the handler (or, for the
//! raw row, the pull loop) has the event, measured in one process on one clock.
//!
//! The producer is open-loop: every millisecond it starts the publishes that are due, each in its own task, so
//! a slow ack does not slow the offered rate down. The first half second of every row is warm-up and not
//! counted.

use std::future::IntoFuture as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self};
use events::UserRegistered;
use futures::StreamExt as _;
use runtime::{Job, JobError, Publisher};
use tokio::sync::oneshot;

use crate::consume::{self, IN_FLIGHT, Setup, short_id};
use crate::stats::Quantiles;
use crate::workload::{self, SUBJECT, now_ns, sent_ns};

/// Which pipeline a latency row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pipeline {
    /// Raw publish into a raw pull consumer with plain acks: what JetStream itself delivers.
    Raw,
    /// Our validating publisher into the jetfn runtime with a no-op handler.
    Jetfn,
}

/// (send time, latency) pairs, both in nanoseconds.
type Samples = Arc<Mutex<Vec<(u64, u64)>>>;

/// Runs one row: `rate` events per second for `duration`; returns the quantiles after warm-up.
pub async fn run(
    setup: &Setup,
    pipeline: Pipeline,
    rate: u64,
    duration: Duration,
    warmup: Duration,
) -> anyhow::Result<Quantiles> {
    let name = format!("bench-e2e-{}", short_id());
    let stream = setup.js.get_stream("EVENTS").await?;
    let mut config = setup.template.clone();
    config.durable_name = Some(name.clone());
    config.deliver_policy = DeliverPolicy::New;
    config.max_ack_pending = IN_FLIGHT;
    stream.create_consumer(config).await?;

    let samples: Samples = Arc::default();
    let handled = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = oneshot::channel::<()>();
    let consumer_task = match pipeline {
        Pipeline::Jetfn => {
            let runtime = consume::runtime_for(setup, &name, "jetfn-ledger", "confirmed").await?;
            let (samples, handled) = (samples.clone(), handled.clone());
            tokio::spawn(async move {
                runtime
                    .serve(
                        move |job: Job<UserRegistered>| {
                            record(&samples, &handled, sent_ns(&job.event));
                            async { Ok::<(), JobError>(()) }
                        },
                        async {
                            let _ = stopped.await;
                        },
                    )
                    .await
            })
        }
        Pipeline::Raw => {
            let client = consume::connect(
                &setup.url,
                setup.tls_ca.as_deref(),
                setup.tls_client.as_ref(),
            )
            .await?;
            let consumer: PullConsumer = jetstream::new(client)
                .get_stream("EVENTS")
                .await?
                .get_consumer(&name)
                .await
                .map_err(|err| anyhow::anyhow!("binding {name}: {err}"))?;
            let (samples, handled) = (samples.clone(), handled.clone());
            tokio::spawn(async move {
                let mut messages = consumer
                    .stream()
                    .max_messages_per_batch(usize::try_from(IN_FLIGHT)?)
                    .messages()
                    .await?;
                let mut stopped = std::pin::pin!(stopped);
                loop {
                    let message = tokio::select! {
                        _ = &mut stopped => return Ok(()),
                        next = messages.next() => match next {
                            Some(message) => message.map_err(|err| anyhow::anyhow!("{err}"))?,
                            None => return Ok(()),
                        },
                    };
                    record(&samples, &handled, find_sent_ns(&message.payload));
                    message
                        .ack()
                        .await
                        .map_err(|err| anyhow::anyhow!("{err}"))?;
                }
            })
        }
    };

    let client = consume::connect(
        &setup.url,
        setup.tls_ca.as_deref(),
        setup.tls_client.as_ref(),
    )
    .await?;
    let js = jetstream::new(client.clone());
    let publisher = Publisher::new(client.clone(), "/signup-api");
    let failures = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let warm_from = now_ns() + u64::try_from(warmup.as_nanos())?;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    while started.elapsed() < duration {
        tick.tick().await;
        let due = due(started.elapsed(), rate);
        while sent < due {
            let event = workload::event(sent);
            let failures = failures.clone();
            match pipeline {
                Pipeline::Jetfn => {
                    let publisher = publisher.clone();
                    tokio::spawn(async move {
                        if publisher.publish_event(&event).await.is_err() {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
                Pipeline::Raw => {
                    let payload = serde_json::to_vec(&event)?;
                    let ack = js
                        .publish_with_headers(
                            SUBJECT,
                            workload::raw_headers(&event.id),
                            payload.into(),
                        )
                        .await?;
                    tokio::spawn(async move {
                        if ack.into_future().await.is_err() {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    });
                }
            }
            sent += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while handled.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    match consumer_task.await? {
        Ok(()) => {}
        Err(err) => eprintln!("latency consumer ended with: {err:#}"),
    }
    stream.delete_consumer(&name).await?;
    let lost = sent.saturating_sub(handled.load(Ordering::Relaxed));
    let failed = failures.load(Ordering::Relaxed);
    if lost > 0 || failed > 0 {
        eprintln!(
            "latency {pipeline:?} {rate}/s: {lost} of {sent} events not handled, {failed} publishes failed"
        );
    }
    warm_quantiles(&samples, warm_from)
}

fn record(samples: &Samples, handled: &AtomicU64, sent: Option<u64>) {
    handled.fetch_add(1, Ordering::Relaxed);
    if let Some(sent) = sent {
        let latency = now_ns().saturating_sub(sent);
        if let Ok(mut samples) = samples.lock() {
            samples.push((sent, latency));
        }
    }
}

/// The send time in a raw payload, found without parsing the JSON (the raw row does no decoding at all).
fn find_sent_ns(payload: &[u8]) -> Option<u64> {
    let key = format!("\"{}\":", workload::SENT_NS);
    let at = payload
        .windows(key.len())
        .position(|window| window == key.as_bytes())?;
    let digits: String = payload[at + key.len()..]
        .iter()
        .skip_while(|byte| byte.is_ascii_whitespace())
        .take_while(|byte| byte.is_ascii_digit())
        .map(|byte| char::from(*byte))
        .collect();
    digits.parse().ok()
}

/// The quantiles of the latencies recorded for events sent at or after `warm_from` (ns): the warm-up's are left out.
pub fn warm_quantiles(
    samples: &Mutex<Vec<(u64, u64)>>,
    warm_from: u64,
) -> anyhow::Result<Quantiles> {
    let mut latencies: Vec<u64> = samples
        .lock()
        .map_err(|_| anyhow::anyhow!("a latency recorder panicked"))?
        .iter()
        .filter(|(sent_at, _)| *sent_at >= warm_from)
        .map(|(_, latency)| *latency)
        .collect();
    Ok(Quantiles::from_ns(&mut latencies))
}

/// How many events an open-loop run at `rate` per second owes `elapsed` after its start: the runs send on a clock,
/// not when the previous event was handled, so a slow handler shows as latency rather than as a lower rate.
pub fn due(elapsed: Duration, rate: u64) -> u64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let due = (elapsed.as_secs_f64() * rate as f64) as u64;
    due
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_raw_row_finds_the_send_time() {
        let event = workload::event(3);
        let bytes = serde_json::to_vec(&event).expect("serializes");
        assert_eq!(find_sent_ns(&bytes), sent_ns(&event));
    }
}
