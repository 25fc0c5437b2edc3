//! A backlog: a million `users.registered` events published (raw, pipelined) before any consumer reads them,
//! then drained by one function process in the email functions' shape (`job.once` on a fresh ledger bucket, then
//! the confirmed ack), `max_ack_pending` 256 as the consume rows. The drainer is `jetfn-bench` itself started as
//! a function ([`super::FUNCTION_ENV`]), so its memory is a function's alone. Every second the consumer's ack
//! floor, the function's and nats-server's memory are sampled; the rows give the rate per 10 s window, memory at
//! the start and the end of the drain, and the total time. Then nats-server is restarted on the drained store,
//! once with the ledger bucket and once without it, for what each ledger key keeps in the server's memory.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::consumer::DeliverPolicy;
use runtime::Runtime;
use runtime::config::{JobConfig, NatsConfig};
use serde_json::json;

use super::{CpuWindow, DURABILITY, Memory, Plan, Restarted, Server, mib};
use crate::consume::{IN_FLIGHT, create_ledger, email_shape, short_id};
use crate::publish::{self, Via};
use crate::report::{Row, number};
use crate::servers::ChildGuard;

const SECTION: &str = "Scale: draining a backlog (ledger shape, one function process)";

/// One sample.
struct Sample {
    at: f64,
    /// Events acked: neither waiting nor delivered and unacked. Not the ack floor, which stops behind one event
    /// waiting for its retry (the consumer's backoff: 5 s, then 30 s) while the others go on.
    acked: u64,
    floor: u64,
    redelivered: usize,
    function: Memory,
    server: Memory,
}

pub async fn run(root: &Path, server: &Server, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let count = plan.backlog;
    let start = server.last_sequence().await? + 1;
    eprintln!("  publishing {count} events (raw, pipelined)");
    let fill = publish::pipelined(&server.client, Via::Raw, count).await?;
    eprintln!("  backlog filled at {fill:.0} events/s");
    let name = format!("bench-backlog-{}", short_id());
    let mut config = server.template.clone();
    config.durable_name = Some(name.clone());
    config.deliver_policy = DeliverPolicy::ByStartSequence {
        start_sequence: start,
    };
    config.max_ack_pending = IN_FLIGHT;
    let stream = server.js.get_stream("EVENTS").await?;
    stream.create_consumer(config).await?;
    let ledger = format!("bench-ledger-{}", short_id());
    create_ledger(&server.js, &ledger, false).await?; // scale servers run `sync_interval: 1s`, where batches cost more than they save (ANALYSIS 8)
    let server_before = Memory::of(server.pid());

    let exe = std::env::current_exe().context("locating jetfn-bench")?;
    let child = Command::new(exe)
        .env(super::FUNCTION_ENV, "ledger")
        .env("NATS_URL", server.url())
        .env("JOB_CONSUMER", &name)
        .env("JOB_LEDGER_BUCKET", &ledger)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the drainer")?;
    let mut child = ChildGuard::new(child, "backlog drainer");
    let pid = child.pid();
    let started = Instant::now();
    let cpu = CpuWindow::start(&[pid], server.pid());
    let mut samples = Vec::new();
    let mut first: Option<f64> = None;
    loop {
        let info = stream.consumer_info(&name).await?;
        let floor = info.ack_floor.stream_sequence.saturating_sub(start - 1);
        let acked = count
            .saturating_sub(info.num_pending)
            .saturating_sub(u64::try_from(info.num_ack_pending)?);
        let at = started.elapsed().as_secs_f64();
        if first.is_none() && acked > 0 {
            first = Some(at);
        }
        samples.push(Sample {
            at,
            acked,
            floor,
            redelivered: info.num_redelivered,
            function: Memory::of(pid),
            server: Memory::of(server.pid()),
        });
        if acked >= count || started.elapsed() > plan.backlog_cap {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let cpu = cpu.end(&[pid], server.pid());
    child.stop();
    let _ = stream.delete_consumer(&name).await;
    let held = held(server, &ledger).await;
    let _ = server.js.delete_key_value(&ledger).await;
    let mut rows = rows(
        count,
        fill,
        first.unwrap_or(0.0),
        &samples,
        server_before,
        &cpu,
    );
    rows.push(held?.row(root)?);
    Ok(rows)
}

/// nats-server's memory restarted on the drained store with the ledger bucket, then without it.
struct Held {
    keys: u64,
    with: Restarted,
    without: Restarted,
}

/// Restarts drop what the drain left behind (block caches, garbage the Go runtime had not given back), so the
/// difference between the two is what the keys themselves keep while the bucket holds them: the server's index
/// of subjects, which a file store keeps in memory for every key, and its record of the claims each `done`
/// replaced. The drain's own peak says nothing about that.
async fn held(server: &Server, ledger: &str) -> anyhow::Result<Held> {
    let keys = server
        .js
        .get_stream(format!("KV_{ledger}"))
        .await?
        .info()
        .await?
        .state
        .subjects_count;
    eprintln!("  restarting nats-server on the drained store ({keys} ledger keys)");
    let with = server.restarted().await?;
    server.js.delete_key_value(ledger).await?;
    eprintln!("  restarting nats-server again, the ledger bucket deleted");
    let without = server.restarted().await?;
    Ok(Held {
        keys,
        with,
        without,
    })
}

impl Held {
    /// Bytes per key, and what the shipped ledger's retention makes of it for a steady flow of emails.
    #[allow(clippy::cast_precision_loss)]
    fn row(&self, root: &Path) -> anyhow::Result<Row> {
        let definitions = provision::Definitions::load(&root.join("infra/nats"))?;
        let kept_days = definitions
            .buckets
            .iter()
            .find(|bucket| bucket.bucket == "jetfn-ledger")
            .map(|bucket| bucket.max_age_secs as f64 / 86_400.0)
            .context("infra/nats has no jetfn-ledger bucket")?;
        let (with, without) = (self.with.memory, self.without.memory);
        let per_key =
            with.rss.saturating_sub(without.rss) as f64 * 1024.0 / self.keys.max(1) as f64;
        // A welcome email holds one key: its send, with its `email.sent` outcome marked on it (ANALYSIS 34).
        let daily = 100_000.0;
        let held_gib = daily * kept_days * per_key / f64::from(1u32 << 30);
        let mut row = Row::rate(
            "scale/backlog/server-bytes-per-ledger-key".to_owned(),
            SECTION,
            "nats-server's memory per ledger key the bucket holds (restarted on the drained store, with the \
             bucket and without it)"
                .to_owned(),
            DURABILITY,
            "bytes",
            vec![per_key],
        );
        row.note = format!(
            "{:.0} MiB restarted with the ledger's {} keys, {:.0} MiB without them (private memory {:.0} and {:.0} \
             MiB); JetStream answered {:.2} s and {:.2} s after the start; the ledger keeps a key {kept_days:.0} \
             days after its last write, and an email function holds one per email (the send, its `email.sent` \
             marked on it: one replaced write more than these keys): {} emails a day hold about \
             {held_gib:.1} GiB of the server's memory",
            mib(with.rss),
            number(self.keys as f64),
            mib(without.rss),
            mib(with.anon),
            mib(without.anon),
            self.with.ready.as_secs_f64(),
            self.without.ready.as_secs_f64(),
            number(daily),
        );
        Ok(row)
    }
}

#[allow(clippy::cast_precision_loss)]
fn rows(
    count: u64,
    fill: f64,
    first: f64,
    samples: &[Sample],
    server_before: Memory,
    cpu: &super::CpuSpent,
) -> Vec<Row> {
    let Some(last) = samples.last() else {
        return Vec::new();
    };
    let drained = last.acked;
    let secs = (last.at - first).max(1e-9);
    // Events per second in each 10 s window from the first ack.
    let mut curve = Vec::new();
    let mut from = samples.iter().find(|s| s.at >= first);
    while let Some(a) = from {
        let Some(b) = samples.iter().find(|s| s.at >= a.at + 10.0) else {
            break;
        };
        curve.push((b.acked - a.acked) as f64 / (b.at - a.at));
        from = Some(b);
    }
    let curve_text = curve
        .iter()
        .map(|rate| number(*rate))
        .collect::<Vec<_>>()
        .join(", ");
    let in_drain: Vec<&Sample> = samples.iter().filter(|s| s.at >= first).collect();
    let max_fn = in_drain
        .iter()
        .map(|s| mib(s.function.rss))
        .fold(0.0, f64::max);
    let max_server = in_drain
        .iter()
        .map(|s| mib(s.server.rss))
        .fold(0.0, f64::max);
    let (fn_start, fn_end) = (
        in_drain.first().map_or(0.0, |s| mib(s.function.rss)),
        mib(last.function.rss),
    );
    let (server_start, server_end) = (
        in_drain.first().map_or(0.0, |s| mib(s.server.rss)),
        mib(last.server.rss),
    );
    let complete = if drained >= count {
        String::new()
    } else {
        format!(" (stopped at the cap: {drained} of {count} drained)")
    };
    let mut drain = Row::rate(
        "scale/backlog/drain".to_owned(),
        SECTION,
        format!(
            "drain of {} events, mean from the first ack to the last{complete}",
            number(count as f64)
        ),
        DURABILITY,
        "events/s",
        vec![drained as f64 / secs],
    );
    drain.note = format!(
        "per 10 s window: {curve_text}; CPU per event: function {:.1} µs, nats-server {:.1} µs; {}",
        cpu.function * 1e6 / drained.max(1) as f64,
        cpu.server * 1e6 / drained.max(1) as f64,
        cpu.bound("function", "bench", drained),
    );
    let mut total = Row::rate(
        "scale/backlog/total".to_owned(),
        SECTION,
        format!(
            "time to drain {} events (function start to the last ack)",
            number(count as f64)
        ),
        DURABILITY,
        "s",
        vec![last.at],
    );
    let stalls = samples
        .windows(2)
        .filter(|pair| pair[1].floor == pair[0].floor && pair[1].acked > pair[0].acked)
        .count();
    total.note = format!(
        "first ack {first:.1} s after the function started; {} events redelivered at the end; the ack floor stood \
         still for {stalls} of the 1 s samples while events were being acked (behind an event waiting for its retry)",
        last.redelivered
    );
    let mut fill_row = Row::rate(
        "scale/backlog/fill".to_owned(),
        SECTION,
        format!(
            "filling it: raw publish, pipelined (256 in flight), {} events",
            number(count as f64)
        ),
        DURABILITY,
        "events/s",
        vec![fill],
    );
    fill_row.note = "no consumer reading meanwhile".to_owned();
    let mut function = Row::rate(
        "scale/backlog/function-rss".to_owned(),
        SECTION,
        "the function's RSS at the end of the drain".to_owned(),
        DURABILITY,
        "MiB",
        vec![fn_end],
    );
    function.note = format!(
        "{fn_start:.1} MiB at the first ack, at most {max_fn:.1} MiB during the drain, peak (VmHWM) {:.1} MiB",
        mib(last.function.peak)
    );
    let mut server = Row::rate(
        "scale/backlog/server-rss".to_owned(),
        SECTION,
        "nats-server's RSS at the end of the drain".to_owned(),
        DURABILITY,
        "MiB",
        vec![server_end],
    );
    server.note = format!(
        "{:.0} MiB with the backlog stored and nothing read, {server_start:.0} MiB at the first ack, at most \
         {max_server:.0} MiB during the drain",
        mib(server_before.rss)
    );
    vec![fill_row, drain, total, function, server]
}

/// The drainer's body (see [`super::function_main`]).
pub async fn function() -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let _ = tracing_subscriber::fmt()
        .compact()
        .with_target(false)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::sync::Mutex::new(stdout))
        .try_init();
    let url = std::env::var("NATS_URL").context("NATS_URL")?;
    let consumer = std::env::var("JOB_CONSUMER").context("JOB_CONSUMER")?;
    let ledger = std::env::var("JOB_LEDGER_BUCKET").context("JOB_LEDGER_BUCKET")?;
    let job: JobConfig = serde_json::from_value(json!({
        "stream": "EVENTS",
        "consumer": consumer,
        "ledger_bucket": ledger,
        "failures_bucket": "jetfn-failures",
        "drain_timeout_secs": 10,
    }))?;
    let runtime = Runtime::new("bench-backlog", &NatsConfig::local(url), job).await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    runtime
        .serve(email_shape, async move {
            terminate.recv().await;
        })
        .await
}
