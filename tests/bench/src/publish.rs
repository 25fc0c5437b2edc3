//! Publishing: our validating `Publisher` against a raw async-nats publish of the same event with the same
//! headers. Both build and serialize a fresh event per message; the publisher also validates it against the
//! schema, opens a span and injects `traceparent`. Every publish waits for the stream's ack.

use std::future::IntoFuture as _;
use std::time::Instant;

use async_nats::jetstream;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use runtime::Publisher;

use crate::stats::Quantiles;
use crate::workload::{self, SUBJECT};

/// Publishes in flight at once in the pipelined rows.
pub const WINDOW: usize = 256;

/// Which publisher a row uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `jetstream::Context::publish_with_headers`.
    Raw,
    /// `runtime::Publisher::publish_event`.
    Publisher,
}

/// Publishes `count` events with up to [`WINDOW`] unacked; returns events per second.
pub async fn pipelined(client: &async_nats::Client, via: Via, count: u64) -> anyhow::Result<f64> {
    let js = jetstream::new(client.clone());
    let publisher = Publisher::new(client.clone(), "/signup-api");
    let started = Instant::now();
    match via {
        Via::Raw => {
            let mut in_flight = FuturesUnordered::new();
            for n in 0..count {
                let event = workload::event(n);
                let payload = serde_json::to_vec(&event)?;
                let ack = js
                    .publish_with_headers(SUBJECT, workload::raw_headers(&event.id), payload.into())
                    .await?;
                in_flight.push(ack.into_future());
                while in_flight.len() >= WINDOW {
                    if let Some(acked) = in_flight.next().await {
                        acked?;
                    }
                }
            }
            while let Some(acked) = in_flight.next().await {
                acked?;
            }
        }
        Via::Publisher => {
            let mut in_flight = FuturesUnordered::new();
            for n in 0..count {
                let event = workload::event(n);
                let publisher = publisher.clone();
                in_flight.push(async move { publisher.publish_event(&event).await });
                while in_flight.len() >= WINDOW {
                    if let Some(published) = in_flight.next().await {
                        published?;
                    }
                }
            }
            while let Some(published) = in_flight.next().await {
                published?;
            }
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = count as f64 / started.elapsed().as_secs_f64();
    Ok(rate)
}

/// Publishes `count` events one at a time, each waiting for its ack; returns the latency of each publish.
pub async fn one_at_a_time(
    client: &async_nats::Client,
    via: Via,
    count: u64,
) -> anyhow::Result<Quantiles> {
    let js = jetstream::new(client.clone());
    let publisher = Publisher::new(client.clone(), "/signup-api");
    let mut samples = Vec::with_capacity(usize::try_from(count)?);
    for n in 0..count {
        let event = workload::event(n);
        let started = Instant::now();
        match via {
            Via::Raw => {
                let payload = serde_json::to_vec(&event)?;
                js.publish_with_headers(SUBJECT, workload::raw_headers(&event.id), payload.into())
                    .await?
                    .await?;
            }
            Via::Publisher => {
                publisher.publish_event(&event).await?;
            }
        }
        samples.push(u64::try_from(started.elapsed().as_nanos())?);
    }
    Ok(Quantiles::from_ns(&mut samples))
}
