//! A hundred functions on one server: 100 `target/release/welcome` processes, each bound to a consumer of its own
//! (a copy of `welcome.json` filtering `events.users.registered.f<i>`, so a spread load reaches each function
//! alone), all sending into the bench's SMTP sink. Measured idle, then under a light load spread evenly over the
//! hundred: the server's CPU and memory, each process's memory, and what the functions ask of the server, counted
//! on the wire by a subscriber in the bench: pull requests (`$JS.API.CONSUMER.MSG.NEXT.>`), every JetStream API
//! request (`/jsz`'s `api.total`, which also counts the bench's own), heartbeats written to `jetfn-replicas`,
//! ledger writes, and JetStream advisories.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;
use futures::StreamExt as _;

use super::{CpuSpent, CpuWindow, DURABILITY, Memory, Plan, Server, mib};
use crate::report::Row;
use crate::servers::ChildGuard;
use crate::stats;
use crate::workload;

const SECTION: &str =
    "Scale: 100 functions bound on one server (one welcome process and consumer each)";

/// Wire counters, each fed by a subscription in the bench.
#[derive(Default)]
struct Counters {
    pulls: AtomicU64,
    heartbeats: AtomicU64,
    ledger: AtomicU64,
    /// The ledger writes of the functions' disk checks (`<function>.clock.a` and `.b`), among `ledger`.
    disk_checks: AtomicU64,
    api_advisories: AtomicU64,
    advisories: AtomicU64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    pulls: u64,
    heartbeats: u64,
    ledger: u64,
    disk_checks: u64,
    api_advisories: u64,
    advisories: u64,
    api: u64,
    api_errors: u64,
}

impl Counters {
    fn read(&self, server: &Server) -> Counts {
        let (api, api_errors) = server.api_counts().unwrap_or_default();
        Counts {
            pulls: self.pulls.load(Ordering::Relaxed),
            heartbeats: self.heartbeats.load(Ordering::Relaxed),
            ledger: self.ledger.load(Ordering::Relaxed),
            disk_checks: self.disk_checks.load(Ordering::Relaxed),
            api_advisories: self.api_advisories.load(Ordering::Relaxed),
            advisories: self.advisories.load(Ordering::Relaxed),
            api,
            api_errors,
        }
    }
}

impl Counts {
    fn since(self, before: Self) -> Self {
        Self {
            pulls: self.pulls - before.pulls,
            heartbeats: self.heartbeats - before.heartbeats,
            ledger: self.ledger - before.ledger,
            disk_checks: self.disk_checks - before.disk_checks,
            api_advisories: self.api_advisories - before.api_advisories,
            advisories: self.advisories - before.advisories,
            api: self.api.saturating_sub(before.api),
            api_errors: self.api_errors.saturating_sub(before.api_errors),
        }
    }
}

struct Window {
    cpu: CpuSpent,
    counts: Counts,
    server: Memory,
    functions: Vec<Memory>,
}

pub async fn run(root: &Path, server: &Server, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let bin = super::welcome_bin(root, plan)?;
    let sink = testkit::SmtpServer::start_sink();
    let stream = server.js.get_stream("EVENTS").await?;
    let names: Vec<String> = (0..plan.functions)
        .map(|i| format!("bench-fn-{i:03}"))
        .collect();
    for (i, name) in names.iter().enumerate() {
        let mut config = server.template.clone();
        config.durable_name = Some(name.clone());
        config.filter_subject = subject(i);
        config.deliver_policy = DeliverPolicy::New;
        stream.create_consumer(config).await?;
    }
    let mut children: Vec<ChildGuard> = Vec::new();
    let result = async {
        let started = Instant::now();
        let before_start = CpuWindow::start(&[], server.pid());
        for name in &names {
            children.push(super::spawn_welcome(
                &bin,
                &server.url(),
                &sink.url(),
                None,
                name,
                "jetfn-ledger",
            )?);
        }
        for name in &names {
            super::wait_for_pulls(&server.js, name, 1, Duration::from_secs(120)).await?;
        }
        let start_secs = started.elapsed().as_secs_f64();
        let start_cpu = before_start.end(&[], server.pid());
        let pids: Vec<u32> = children.iter().map(ChildGuard::pid).collect();
        let start_functions_cpu = super::cpu_of(&pids);
        eprintln!(
            "  {} functions bound in {start_secs:.1} s (their CPU {start_functions_cpu:.1} s, nats-server {:.1} s)",
            plan.functions, start_cpu.server
        );

        let counters = Arc::new(Counters::default());
        let mut tasks = Vec::new();
        for (subject, counter) in [
            ("$JS.API.CONSUMER.MSG.NEXT.EVENTS.>", 0),
            ("$KV.jetfn-replicas.>", 1),
            ("$KV.jetfn-ledger.>", 2),
            ("$JS.EVENT.ADVISORY.>", 3),
        ] {
            let mut subscriber = server.client.subscribe(subject).await?;
            let counters = counters.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(message) = subscriber.next().await {
                    let counter = match counter {
                        0 => &counters.pulls,
                        1 => &counters.heartbeats,
                        2 => {
                            if message.subject.contains(".clock.") {
                                counters.disk_checks.fetch_add(1, Ordering::Relaxed);
                            }
                            &counters.ledger
                        }
                        _ if message.subject.starts_with("$JS.EVENT.ADVISORY.API") => {
                            &counters.api_advisories
                        }
                        _ => {
                            eprintln!("  advisory: {}", message.subject);
                            &counters.advisories
                        }
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        server.client.flush().await?;
        // Settle: start-up's binding and first heartbeats are behind us.
        tokio::time::sleep(Duration::from_secs(2)).await;

        let idle = window(server, &counters, &pids, plan.functions_idle, async {
            tokio::time::sleep(plan.functions_idle).await;
            Ok(0)
        })
        .await?;
        sink.clear();
        let rate = plan.functions_rate;
        let loaded = window(
            server,
            &counters,
            &pids,
            plan.functions_window,
            spread(server, plan.functions, rate, plan.functions_window),
        )
        .await?;
        let sent = loaded.1;
        let deadline = Instant::now() + Duration::from_secs(30);
        let published = Instant::now();
        while sink.count() < usize::try_from(sent)? && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let lag = sink
            .arrivals()
            .last()
            .map_or(0.0, |last| {
                last.saturating_duration_since(published).as_secs_f64()
            });
        let delivered = sink.count();
        for task in tasks {
            task.abort();
        }
        Ok(rows(
            plan,
            &Startup {
                secs: start_secs,
                functions_cpu: start_functions_cpu,
                server_cpu: start_cpu.server,
            },
            &idle.0,
            &loaded.0,
            sent,
            delivered,
            lag,
        ))
    }
    .await;
    super::stop_all(&mut children);
    for name in &names {
        let _ = stream.delete_consumer(name).await;
    }
    result
}

/// The subject function `i` filters.
fn subject(i: usize) -> String {
    format!("{}.f{i:03}", workload::SUBJECT)
}

/// Publishes `rate` events per second for `length`, round-robin over the functions' subjects (raw publishes
/// with the publisher's headers of schema-valid `users.registered` events); returns how many.
async fn spread(
    server: &Server,
    functions: usize,
    rate: u64,
    length: Duration,
) -> anyhow::Result<u64> {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut sent = 0u64;
    let mut acks = Vec::new();
    while started.elapsed() < length {
        tick.tick().await;
        let due = crate::latency::due(started.elapsed(), rate);
        while sent < due {
            let event = workload::event(sent);
            let payload = serde_json::to_vec(&event)?;
            let i = usize::try_from(sent)? % functions;
            acks.push(
                server
                    .js
                    .publish_with_headers(
                        subject(i),
                        workload::raw_headers(&event.id),
                        payload.into(),
                    )
                    .await?,
            );
            sent += 1;
        }
    }
    for ack in acks {
        ack.await?;
    }
    Ok(sent)
}

/// Runs `work` while measuring a window of `length`.
async fn window(
    server: &Server,
    counters: &Counters,
    pids: &[u32],
    length: Duration,
    work: impl Future<Output = anyhow::Result<u64>>,
) -> anyhow::Result<(Window, u64)> {
    let before = counters.read(server);
    let cpu = CpuWindow::start(pids, server.pid());
    let started = Instant::now();
    let done = work.await?;
    if let Some(left) = length.checked_sub(started.elapsed()) {
        tokio::time::sleep(left).await;
    }
    let cpu = cpu.end(pids, server.pid());
    let counts = counters.read(server).since(before);
    Ok((
        Window {
            cpu,
            counts,
            server: Memory::of(server.pid()),
            functions: pids.iter().map(|&pid| Memory::of(pid)).collect(),
        },
        done,
    ))
}

struct Startup {
    secs: f64,
    functions_cpu: f64,
    server_cpu: f64,
}

#[allow(clippy::cast_precision_loss)]
fn rows(
    plan: &Plan,
    startup: &Startup,
    idle: &Window,
    loaded: &Window,
    sent: u64,
    delivered: usize,
    lag: f64,
) -> Vec<Row> {
    let n = plan.functions;
    let row = |id: &str, label: String, unit: &'static str, value: f64, note: String| {
        let mut row = Row::rate(
            format!("scale/functions/{id}"),
            SECTION,
            label,
            DURABILITY,
            unit,
            vec![value],
        );
        row.note = note;
        row
    };
    let per_sec = |count: u64, window: &Window| count as f64 / window.cpu.secs.max(1e-9);
    let memory = |window: &Window| {
        let rss: Vec<f64> = window.functions.iter().map(|m| mib(m.rss)).collect();
        let anon: Vec<f64> = window.functions.iter().map(|m| mib(m.anon)).collect();
        let file: Vec<f64> = window.functions.iter().map(|m| mib(m.file)).collect();
        let max = rss.iter().copied().fold(0.0, f64::max);
        (
            stats::median(&rss),
            max,
            stats::median(&anon),
            stats::median(&file),
            anon.iter().sum::<f64>(),
        )
    };
    let mut rows = vec![row(
        "start",
        format!("{n} processes started at once until each has a pull waiting"),
        "s",
        startup.secs,
        format!(
            "CPU: the functions {:.1} s together ({:.0} ms each), nats-server {:.1} s",
            startup.functions_cpu,
            startup.functions_cpu * 1e3 / n as f64,
            startup.server_cpu
        ),
    )];
    for (slug, what, window) in [
        ("idle", "idle".to_owned(), idle),
        (
            "loaded",
            format!(
                "{} events/s spread evenly ({:.1}/s each)",
                plan.functions_rate,
                plan.functions_rate as f64 / n as f64
            ),
            loaded,
        ),
    ] {
        let (rss, max, anon, file, anon_sum) = memory(window);
        let c = window.counts;
        rows.push(row(
            &format!("server-cpu-{slug}"),
            format!("nats-server CPU, {n} functions {what}"),
            "% of a core",
            window.cpu.server / window.cpu.secs.max(1e-9) * 100.0,
            format!(
                "the {n} functions together {:.1}% of a core; machine {:.0}% busy (other work included)",
                window.cpu.function / window.cpu.secs.max(1e-9) * 100.0,
                window.cpu.machine_busy * 100.0
            ),
        ));
        rows.push(row(
            &format!("server-rss-{slug}"),
            format!("nats-server RSS, {n} functions {what}"),
            "MiB",
            mib(window.server.rss),
            format!("peak {:.0} MiB", mib(window.server.peak)),
        ));
        rows.push(row(
            &format!("function-rss-{slug}"),
            format!("RSS per function process, {n} functions {what} (median)"),
            "MiB",
            rss,
            format!(
                "max {max:.1} MiB; private (RssAnon) {anon:.1} MiB each, {anon_sum:.0} MiB for all {n}; mapped code \
                 (RssFile, shared by all) {file:.1} MiB"
            ),
        ));
        rows.push(row(
            &format!("wire-{slug}"),
            format!("what {n} functions ask of the server, {what}"),
            "pulls/s",
            per_sec(c.pulls, window),
            format!(
                "pull requests {:.1}/s; JetStream API requests {:.1}/s ({} errors); heartbeats written to \
                 jetfn-replicas {:.1}/s (one per function per 5 s is {:.1}/s); ledger writes {:.1}/s (of them the disk \
                 checks' {:.1}/s, which run while a function has claims); API audit advisories {:.1}/s; other \
                 advisories {}",
                per_sec(c.pulls, window),
                per_sec(c.api, window),
                c.api_errors,
                per_sec(c.heartbeats, window),
                n as f64 / 5.0,
                per_sec(c.ledger, window),
                per_sec(c.disk_checks, window),
                per_sec(c.api_advisories, window),
                c.advisories
            ),
        ));
    }
    rows.push(row(
        "delivered",
        format!(
            "emails delivered of {sent} spread over {n} functions in {:.0} s",
            plan.functions_window.as_secs_f64()
        ),
        "emails",
        delivered as f64,
        format!("the last arrived {lag:.2} s after the last publish was acknowledged"),
    ));
    rows
}
