//! Payload size: `messages.created` events of 1 KiB, 16 KiB, 64 KiB and up to the 256 KiB limit (EVENTS'
//! `max_msg_size` and the publisher's `MAX_EVENT_BYTES` are both 262,144 bytes). The bulk is the message's
//! `body`, which the catalog caps at 65,536 characters: up to 64 KiB it is ASCII text; the largest size fills the
//! same 65,536 characters mostly with 4-byte UTF-8 characters (the cap counts characters, not bytes), so every
//! event is schema-valid. Per size: the validating publisher pipelined, the runtime with a no-op handler over
//! what was published (in the bench process, timed by the consumer's ack floor like the consume rows), and
//! publish-to-handler latency at a fixed rate.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use events::{CloudEvent, MessageCreated};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use runtime::{Job, JobError, Publisher};
use serde_json::json;
use tokio::sync::oneshot;

use super::{CpuSpent, CpuWindow, DURABILITY, Plan, Server};
use crate::consume::{self, IN_FLIGHT, Window, short_id};
use crate::report::Row;
use crate::stats::Quantiles;
use crate::workload::{SENT_NS, now_ns, sent_ns};

const SECTION: &str = "Scale: payload size (messages.created, the bulk in `body`)";

/// The largest size measured: 255 KiB of JSON, so that with its headers (`Nats-Msg-Id`, `content-type`,
/// `traceparent`) the message stays under the stream's 262,144-byte `max_msg_size`.
pub const LIMIT_TARGET: usize = 255 * 1024;

/// The catalog's cap on `body`, in characters.
const BODY_CHARS: usize = 65_536;

const SUBJECT: &str = "events.messages.created";

pub async fn run(server: &Server, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    for &(size, count) in &plan.payloads {
        let data = data_of(size)?;
        let bytes = serde_json::to_vec(&event(&data))?.len();
        let label = kib_label(size);
        let start = server.last_sequence().await? + 1;

        let window = CpuWindow::start(&[], server.pid());
        let rate = publish(server, &data, count).await?;
        let cpu = window.end(&[], server.pid());
        eprintln!(
            "  payload {label} ({bytes} bytes): publish {rate:.0} events/s ({:.1} MB/s)",
            rate * bytes_f(bytes) / 1e6
        );
        let mut row = Row::rate(
            format!("scale/payload/publish-{label}"),
            SECTION,
            format!(
                "validating Publisher, pipelined (256 in flight), {label} events ({bytes} bytes), {count}"
            ),
            DURABILITY,
            "events/s",
            vec![rate],
        );
        row.note = note(rate, bytes, count, &cpu, "publisher");
        rows.push(row);

        let published = rate;
        let (rate, cpu, acked) = noop(server, start, count).await?;
        eprintln!(
            "  payload {label}: no-op runtime {rate:.0} events/s ({:.1} MB/s)",
            rate * bytes_f(bytes) / 1e6
        );
        let mut row = Row::rate(
            format!("scale/payload/noop-{label}"),
            SECTION,
            format!("jetfn runtime, no-op handler, confirmed acks, {label} events"),
            DURABILITY,
            "events/s",
            vec![rate],
        );
        row.note = note(rate, bytes, acked, &cpu, "runtime");
        rows.push(row);

        // At most half of what this size sustained here: an overloaded open-loop run measures its queue.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let e2e_rate =
            ((published.min(rate) / 2.0 / 10.0) as u64 * 10).clamp(10, plan.payload_rate);
        let quantiles = latency(server, &data, e2e_rate, plan.payload_latency).await?;
        eprintln!(
            "  payload {label}: e2e at {e2e_rate}/s p50 {:.2} ms p99 {:.2} ms",
            quantiles.p50, quantiles.p99
        );
        rows.push(Row::latency(
            format!("scale/payload/e2e-{label}"),
            SECTION,
            format!("Publisher → jetfn runtime (no-op), {label} events, {e2e_rate} events/s"),
            DURABILITY,
            quantiles,
        ));
    }
    Ok(rows)
}

#[allow(clippy::cast_precision_loss)]
fn bytes_f(bytes: usize) -> f64 {
    bytes as f64
}

#[allow(clippy::cast_precision_loss)]
fn note(rate: f64, bytes: usize, events: u64, cpu: &CpuSpent, who: &str) -> String {
    let per = events.max(1) as f64;
    format!(
        "{:.1} MB/s; CPU per event: {who} (bench process) {:.0} µs, nats-server {:.0} µs; {}",
        rate * bytes_f(bytes) / 1e6,
        cpu.bench * 1e6 / per,
        cpu.server * 1e6 / per,
        cpu.bound("-", &format!("{who} (bench)"), events)
    )
}

fn kib_label(size: usize) -> String {
    if size == LIMIT_TARGET {
        "256KiB".to_owned()
    } else {
        format!("{}KiB", size / 1024)
    }
}

/// A `MessageCreated` whose event serializes to about `size` bytes.
fn data_of(size: usize) -> anyhow::Result<MessageCreated> {
    let base = serde_json::to_vec(&event(&message(String::new())?))?.len();
    let bulk = size.saturating_sub(base);
    let body = if bulk <= BODY_CHARS {
        text(bulk)
    } else {
        // n4 four-byte characters and n1 ASCII ones: 4·n4 + n1 = bulk within BODY_CHARS characters.
        let n4 = (bulk - BODY_CHARS).div_ceil(3);
        let n1 = bulk
            .checked_sub(4 * n4)
            .filter(|n1| n4 + n1 <= BODY_CHARS)
            .ok_or_else(|| anyhow::anyhow!("{size} bytes do not fit in {BODY_CHARS} characters"))?;
        let mut body = "\u{1F4E8}".repeat(n4);
        body.push_str(&text(n1));
        body
    };
    message(body)
}

fn text(len: usize) -> String {
    const SENTENCE: &str =
        "Shall we ship the analytical engine on Friday, or wait for the new gears? ";
    SENTENCE.chars().cycle().take(len).collect()
}

fn message(body: String) -> anyhow::Result<MessageCreated> {
    Ok(serde_json::from_value(json!({
        "message_id": "m-000000001001",
        "conversation_id": "c-bench-0042",
        "sender_id": "u-000000001001",
        "body": body,
        "created_at": "2026-11-28T10:00:00Z",
    }))?)
}

/// A fresh event (new id, now as its send time).
fn event(data: &MessageCreated) -> CloudEvent<MessageCreated> {
    let mut event = CloudEvent::new("/chat-api", data.clone());
    event.extensions.insert(SENT_NS.to_owned(), json!(now_ns()));
    event
}

async fn publish(server: &Server, data: &MessageCreated, count: u64) -> anyhow::Result<f64> {
    let publisher = Publisher::new(server.client.clone(), "/chat-api");
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    for _ in 0..count {
        let event = event(data);
        let publisher = publisher.clone();
        in_flight.push(async move { publisher.publish_event(&event).await });
        while in_flight.len() >= crate::publish::WINDOW {
            if let Some(published) = in_flight.next().await {
                published?;
            }
        }
    }
    while let Some(published) = in_flight.next().await {
        published?;
    }
    #[allow(clippy::cast_precision_loss)]
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn setup(server: &Server, window: Window) -> consume::Setup {
    consume::Setup {
        url: server.url(),
        js: server.js.clone(),
        template: server.template.clone(),
        window,
        cap: Duration::from_secs(30),
        server_pids: vec![server.pid()],
        atomic_batches: false,
        ledger_replicas: 1,
        tls_ca: None,
        tls_client: None,
    }
}

/// The no-op runtime over the `count` events from `start`: events/s, CPU, events acked.
async fn noop(server: &Server, start: u64, count: u64) -> anyhow::Result<(f64, CpuSpent, u64)> {
    let name = format!("bench-payload-{}", short_id());
    let mut config = server.template.clone();
    config.durable_name = Some(name.clone());
    config.filter_subject = SUBJECT.to_owned();
    config.deliver_policy = DeliverPolicy::ByStartSequence {
        start_sequence: start,
    };
    config.max_ack_pending = IN_FLIGHT;
    let stream = server.js.get_stream("EVENTS").await?;
    stream.create_consumer(config).await?;
    let setup = setup(server, Window { start, count });
    let runtime = consume::runtime_for(&setup, &name, "jetfn-ledger", "confirmed").await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let window = CpuWindow::start(&[], server.pid());
    let task = tokio::spawn(runtime.serve(
        |_job: Job<MessageCreated>| async { Ok::<(), JobError>(()) },
        async {
            let _ = stopped.await;
        },
    ));
    let rate = consume::measure(&stream, &name, setup.window, setup.cap).await;
    let cpu = window.end(&[], server.pid());
    let _ = stop.send(());
    task.await??;
    stream.delete_consumer(&name).await?;
    let rate = rate?;
    Ok((rate.per_sec(), cpu, count))
}

/// Open-loop publishes at `rate` for `length` into the no-op runtime; latency after 0.5 s of warm-up.
async fn latency(
    server: &Server,
    data: &MessageCreated,
    rate: u64,
    length: Duration,
) -> anyhow::Result<Quantiles> {
    let name = format!("bench-payload-e2e-{}", short_id());
    let mut config = server.template.clone();
    config.durable_name = Some(name.clone());
    config.filter_subject = SUBJECT.to_owned();
    config.deliver_policy = DeliverPolicy::New;
    config.max_ack_pending = IN_FLIGHT;
    let stream = server.js.get_stream("EVENTS").await?;
    stream.create_consumer(config).await?;
    let setup = setup(server, Window { start: 1, count: 1 });
    let runtime = consume::runtime_for(&setup, &name, "jetfn-ledger", "confirmed").await?;
    let samples: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let (stop, stopped) = oneshot::channel::<()>();
    let recorded = samples.clone();
    let task = tokio::spawn(runtime.serve(
        move |job: Job<MessageCreated>| {
            if let (Some(sent), Ok(mut samples)) = (sent_ns(&job.event), recorded.lock()) {
                samples.push((sent, now_ns().saturating_sub(sent)));
            }
            async { Ok::<(), JobError>(()) }
        },
        async {
            let _ = stopped.await;
        },
    ));
    let publisher = Publisher::new(server.client.clone(), "/chat-api");
    let warm_from = now_ns() + 500_000_000;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut sent = 0u64;
    let mut publishes = Vec::new();
    while started.elapsed() < length {
        tick.tick().await;
        let due = crate::latency::due(started.elapsed(), rate);
        while sent < due {
            let event = event(data);
            let publisher = publisher.clone();
            publishes.push(tokio::spawn(async move {
                publisher.publish_event(&event).await.is_ok()
            }));
            sent += 1;
        }
    }
    for publish in publishes {
        publish.await?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while samples.lock().map_or(0, |s| s.len()) < usize::try_from(sent)?
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    task.await??;
    stream.delete_consumer(&name).await?;
    crate::latency::warm_quantiles(&samples, warm_from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_size_is_schema_valid_and_near_its_target() {
        let validator = events::Validator::new();
        for size in [1024, 16 * 1024, 64 * 1024, LIMIT_TARGET] {
            let data = data_of(size).expect("fits");
            let bytes = serde_json::to_vec(&event(&data)).expect("serializes");
            assert!(
                bytes.len().abs_diff(size) <= 8,
                "{size}: {} bytes",
                bytes.len()
            );
            validator
                .decode::<MessageCreated>(&bytes)
                .expect("the payload event passes the runtime's validation");
            assert!(bytes.len() <= events::MAX_EVENT_BYTES);
        }
    }
}
