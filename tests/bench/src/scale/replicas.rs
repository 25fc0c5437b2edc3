//! Replicas: 1, 2, 4 and 8 `target/release/welcome` processes sharing one durable consumer (the shipped
//! `welcome.json`, so `max_ack_pending` 64 for the whole function), sending into the bench's SMTP sink.
//!
//! Each run: a fresh consumer (new events only) and ledger bucket, the replicas started and waited for until each
//! has a pull request waiting on the server, then the emails published with the validating publisher. The rate is
//! counted from the moment publishing ended to the last email the sink accepted, so the publisher's own CPU is
//! outside it; CPU per email over that window is read from /proc for the replicas, nats-server and the bench
//! (which holds the sink).

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::DeliverPolicy;

use super::{CpuSpent, CpuWindow, DURABILITY, Memory, Plan, Server, mib};
use crate::consume::{create_ledger, short_id};
use crate::publish::{self, Via};
use crate::report::Row;
use crate::stats;

const SECTION: &str = "Scale: replicas of one function (welcome, one shared consumer)";

struct Run {
    rate: f64,
    cpu: CpuSpent,
    /// Per email counted: what the processes did besides compute (see [`Calls`]).
    calls: Calls,
    emails: u64,
    replica_rss: Vec<Memory>,
    server_rss: Memory,
}

pub async fn run(root: &Path, server: &Server, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let bin = super::welcome_bin(root, plan)?;
    let sink = testkit::SmtpServer::start_sink();
    let mut runs: Vec<Vec<Run>> = plan.replicas.iter().map(|_| Vec::new()).collect();
    for run in 0..plan.runs {
        for (&replicas, runs) in plan.replicas.iter().zip(runs.iter_mut()) {
            let measured = once(&bin, server, &sink, replicas, plan.replica_emails).await?;
            eprintln!(
                "  replicas {replicas} run {}: {:.0} emails/s; CPU per email: replicas {:.1} µs, nats-server {:.1} \
                 µs, bench+sink {:.1} µs; wake-ups per email: replicas {:.1}, nats-server {:.1}; machine {:.0}% \
                 busy; replica RSS {:.1} MiB; nats-server RSS {:.1} MiB",
                run + 1,
                measured.rate,
                per_email(measured.cpu.function, measured.emails),
                per_email(measured.cpu.server, measured.emails),
                per_email(measured.cpu.bench, measured.emails),
                measured.calls.replica_wakeups,
                measured.calls.server_wakeups,
                measured.cpu.machine_busy * 100.0,
                stats::median(&rss(&measured.replica_rss)),
                mib(measured.server_rss.rss),
            );
            runs.push(measured);
        }
    }
    let one = runs
        .first()
        .map(|runs| stats::median(&runs.iter().map(|run| run.rate).collect::<Vec<_>>()));
    let mut rows = Vec::new();
    for (&replicas, runs) in plan.replicas.iter().zip(&runs) {
        let rates: Vec<f64> = runs.iter().map(|run| run.rate).collect();
        let median_rate = stats::median(&rates);
        // The run whose rate is the median speaks for the row's CPU and memory.
        let Some(typical) = runs.iter().min_by(|a, b| {
            (a.rate - median_rate)
                .abs()
                .total_cmp(&(b.rate - median_rate).abs())
        }) else {
            continue;
        };
        let mut row = Row::rate(
            format!("scale/replicas-{replicas}"),
            SECTION,
            format!(
                "{replicas} welcome process{} on one consumer (max_ack_pending 64 shared), {} emails",
                if replicas == 1 { "" } else { "es" },
                plan.replica_emails
            ),
            DURABILITY,
            "emails/s",
            rates,
        );
        let rss = rss(&typical.replica_rss);
        let peaks: Vec<f64> = typical.replica_rss.iter().map(|m| mib(m.peak)).collect();
        let speedup = one.map_or(String::new(), |one| {
            format!("{:.2}× one replica; ", median_rate / one.max(1e-9))
        });
        let calls = typical.calls;
        row.note = format!(
            "{speedup}CPU per email: replicas {:.0} µs, nats-server {:.0} µs, bench+sink {:.0} µs; per email, the \
             replicas woke {:.1} times and made {:.1} write calls (log lines, NATS sends), nats-server woke {:.1} \
             times and made {:.1} reads; RSS per replica {:.1} MiB (peak {:.1}), nats-server {:.0} MiB; {}",
            per_email(typical.cpu.function, typical.emails),
            per_email(typical.cpu.server, typical.emails),
            per_email(typical.cpu.bench, typical.emails),
            calls.replica_wakeups,
            calls.replica_writes,
            calls.server_wakeups,
            calls.server_reads,
            stats::median(&rss),
            stats::median(&peaks),
            mib(typical.server_rss.rss),
            typical.cpu.bound("replicas", "bench+sink", typical.emails),
        );
        rows.push(row);
    }
    Ok(rows)
}

/// How often, per email, the replicas and nats-server were woken (put on a core), the replicas' `write` calls
/// (their log lines and their NATS sends; the SMTP client's `sendto` is not counted by `/proc/<pid>/io`) and
/// nats-server's `read` calls: a replica with fewer emails in flight gathers fewer into each wake-up and each
/// write, which is part of what a row's extra CPU per email with more replicas is made of (ANALYSIS section 32).
#[derive(Debug, Clone, Copy, Default)]
struct Calls {
    replica_wakeups: f64,
    replica_writes: f64,
    server_wakeups: f64,
    server_reads: f64,
}

/// The counters [`Calls`] is the difference of, at one moment.
struct Counters {
    replica_slices: u64,
    replica_writes: u64,
    server_slices: u64,
    server_reads: u64,
}

impl Counters {
    fn read(replicas: &[u32], server: u32) -> Self {
        Self {
            replica_slices: super::slices(replicas),
            replica_writes: replicas
                .iter()
                .map(|pid| crate::consume::io_calls(&pid.to_string()).1)
                .sum(),
            server_slices: super::slices(&[server]),
            server_reads: crate::consume::io_calls(&server.to_string()).0,
        }
    }

    #[allow(clippy::cast_precision_loss)]
    fn per_email(&self, later: &Self, emails: u64) -> Calls {
        let per =
            |before: u64, after: u64| after.saturating_sub(before) as f64 / emails.max(1) as f64;
        Calls {
            replica_wakeups: per(self.replica_slices, later.replica_slices),
            replica_writes: per(self.replica_writes, later.replica_writes),
            server_wakeups: per(self.server_slices, later.server_slices),
            server_reads: per(self.server_reads, later.server_reads),
        }
    }
}

fn rss(memory: &[Memory]) -> Vec<f64> {
    memory.iter().map(|m| mib(m.rss)).collect()
}

#[allow(clippy::cast_precision_loss)]
fn per_email(secs: f64, emails: u64) -> f64 {
    secs * 1e6 / emails.max(1) as f64
}

async fn once(
    bin: &Path,
    server: &Server,
    sink: &testkit::SmtpServer,
    replicas: usize,
    emails: u64,
) -> anyhow::Result<Run> {
    let name = format!("bench-replicas-{replicas}-{}", short_id());
    let mut config = server.template.clone();
    config.durable_name = Some(name.clone());
    config.deliver_policy = DeliverPolicy::New;
    let stream = server.js.get_stream("EVENTS").await?;
    stream.create_consumer(config).await?;
    let ledger = format!("bench-ledger-{}", short_id());
    create_ledger(&server.js, &ledger, false).await?; // scale servers run `sync_interval: 1s`, where batches cost more than they save (ANALYSIS 8)
    let mut children = Vec::new();
    let result = async {
        for _ in 0..replicas {
            children.push(super::spawn_welcome(
                bin,
                &server.url(),
                &sink.url(),
                None,
                &name,
                &ledger,
            )?);
        }
        super::wait_for_pulls(&server.js, &name, replicas, Duration::from_secs(30)).await?;
        sink.clear();
        publish::pipelined(&server.client, Via::Publisher, emails).await?;
        let pids: Vec<u32> = children
            .iter()
            .map(crate::servers::ChildGuard::pid)
            .collect();
        let window = CpuWindow::start(&pids, server.pid());
        let counters = Counters::read(&pids, server.pid());
        let (published_at, before) = (Instant::now(), sink.count());
        let total = usize::try_from(emails)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while sink.count() < total {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{replicas} replicas sent {} of {total} emails within 120 s",
                sink.count()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let cpu = window.end(&pids, server.pid());
        let counted_at_end = Counters::read(&pids, server.pid());
        let last = sink.arrivals().last().copied().unwrap_or_else(Instant::now);
        let mut counted = u64::try_from(total - before)?;
        #[allow(clippy::cast_precision_loss)]
        let mut rate = counted as f64 / last.duration_since(published_at).as_secs_f64().max(1e-6);
        if counted * 4 < emails {
            // Most were sent while publishing: first to last email instead (the publisher's CPU inside).
            let arrivals = sink.arrivals();
            if let (Some(first), Some(last)) = (arrivals.first(), arrivals.last()) {
                counted = emails - 1;
                #[allow(clippy::cast_precision_loss)]
                let all = counted as f64 / last.duration_since(*first).as_secs_f64().max(1e-6);
                rate = all;
            }
        }
        let replica_rss = pids.iter().map(|&pid| Memory::of(pid)).collect();
        Ok(Run {
            rate,
            cpu,
            calls: counters.per_email(&counted_at_end, counted),
            emails: counted,
            replica_rss,
            server_rss: Memory::of(server.pid()),
        })
    }
    .await;
    super::stop_all(&mut children);
    stream.delete_consumer(&name).await?;
    server.js.delete_key_value(&ledger).await?;
    result
}
