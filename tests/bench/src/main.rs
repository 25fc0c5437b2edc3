//! `jetfn-bench`: jetfn beside raw JetStream and beside BullMQ, in one run on this machine (issue 5).
//!
//! It starts its own nats-server (first with `sync_interval: 1s`, then `always` on the same store, so the stream
//! the consume rows read is filled at the fast setting once) and its own redis-servers, all on 127.0.0.1, and runs
//! every row against them. It prints a table, writes the figures as JSON, and regenerates BENCHMARKS.md around
//! the hand-written analysis in tests/bench/ANALYSIS.md. It only reports; nothing here asserts a timing.

mod bullmq;
mod consume;
mod latency;
mod probe;
mod publish;
mod report;
mod scale;
mod servers;
mod stats;
mod welcome;
mod workload;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use clap::{Parser, ValueEnum};
use provision::Definitions;

use crate::consume::{Kind, Window};
use crate::latency::Pipeline;
use crate::publish::Via;
use crate::report::{Machine, Report, Row, Versions, bullmq_id};
use crate::servers::{NatsServer, RedisDurability, Sync, TempDir};
use crate::stats::Quantiles;

/// The parts of the bench that `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    /// Validating publisher against raw publish: pipelined and one at a time.
    Publish,
    /// Consume throughput: raw baselines, the no-op runtime, the ledger runtime.
    Runtime,
    /// End-to-end latency at fixed rates.
    Latency,
    /// The welcome binary: emails/s into a local SMTP sink, cold start, memory.
    Welcome,
    /// The same workload on BullMQ and Redis.
    Bullmq,
    /// Only the three decode rows (also part of `runtime`): no server, no throughput row, so the per-event check
    /// can be measured on a machine busy with other work.
    Decode,
    /// Only the welcome function's cold start and idle RSS (`--runs` times each), no emails/s row.
    Start,
    /// How cost grows (issue 13): replicas, 100 functions, a backlog, payload sizes, a three-node cluster, TLS; on
    /// servers of its own (`sync_interval: 1s` on one node). `--scale` picks parts.
    Scale,
}

#[derive(Debug, Parser)]
#[command(
    version,
    about = "jetfn beside raw JetStream and beside BullMQ, on this machine"
)]
struct Args {
    /// Run only these sections (comma-separated): publish, runtime, latency, welcome, bullmq, and the parts
    /// decode (the three decode rows) and start (cold start and idle RSS of the welcome function), scale.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Section>,
    /// Only these parts of the scale section (comma-separated): replicas, functions, backlog, payload, cluster,
    /// tls.
    #[arg(long, value_delimiter = ',')]
    scale: Vec<scale::Part>,
    /// Small counts and one run per row: a smoke run of a minute or two.
    #[arg(long)]
    quick: bool,
    /// Runs per throughput row; the table shows the median (default 3; 1 with --quick).
    #[arg(long)]
    runs: Option<usize>,
    /// nats-server `sync_interval` settings to measure, in this order: 1s, always, and 2m as a diagnostic (no
    /// periodic fsync during a row).
    #[arg(long, value_delimiter = ',', default_value = "1s,always")]
    sync: Vec<Sync>,
    /// Where to write the figures as JSON (default: tests/bench/results.json for a full run,
    /// tests/bench/results-partial.json otherwise).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Regenerate BENCHMARKS.md even for a quick or partial run (a full run always does).
    #[arg(long)]
    markdown: bool,
    /// Log filter for the in-process runtime rows, written to /dev/null the way a function writes to stdout;
    /// `off` measures without logging. The ledger rows count their probes' verdicts from these logs: a filter
    /// quieter than `info` for `runtime::ledger::batch` (or `off`) leaves those counts at zero.
    #[arg(long, default_value = "info")]
    log: String,
    /// The log lines' format for the runtime rows: `text` (a function's default) or `json` (`LOG_FORMAT=json`,
    /// the containers' setting; a diagnostic for a partial run).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Only these consume rows (raw-ack, raw-double-ack, raw-request-ack, raw-inbox-ack, runtime-noop-plain,
    /// runtime-noop, runtime-ledger), for profiling one.
    #[arg(long, value_delimiter = ',')]
    consume: Vec<String>,
    /// The welcome binary the welcome rows and the scale rows of welcome processes (replicas, functions) run
    /// (default: target/release/welcome), for before/after runs of two builds in one session.
    #[arg(long)]
    welcome_bin: Option<PathBuf>,
    /// `SMTP_POOL_MAX` of the welcome function in its emails/s rows (what it ships with: 8).
    #[arg(long, default_value_t = 8)]
    welcome_pool: u32,
    /// `max_ack_pending` of the welcome rows' consumer (default: infra/nats's welcome consumer, unchanged).
    #[arg(long)]
    welcome_max_ack_pending: Option<i64>,
    /// The nats-server binary (default: the test kit's lookup: .tools/venv, then PATH).
    #[arg(long, env = "NATS_SERVER_BIN")]
    nats_server: Option<PathBuf>,
}

/// Counts per row; the full run is sized to finish in a few minutes on two cores.
#[derive(Debug, Clone)]
struct Plan {
    runs: usize,
    pipelined: [u64; 2],
    one_at_a_time: [u64; 2],
    consume: u64,
    consume_cap: Duration,
    rates: Vec<u64>,
    e2e: Duration,
    warmup: Duration,
    emails: u64,
    cold_starts: usize,
    bullmq: bullmq::Plan,
}

impl Plan {
    fn new(args: &Args) -> Self {
        let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 });
        let rates = vec![1_000, 5_000];
        if args.quick {
            Self {
                runs,
                pipelined: [20_000, 2_000],
                one_at_a_time: [300, 200],
                consume: 60_000,
                consume_cap: Duration::from_secs(2),
                rates: rates.clone(),
                e2e: Duration::from_secs(2),
                warmup: Duration::from_millis(500),
                emails: 500,
                cold_starts: 1,
                bullmq: bullmq::Plan {
                    jobs: 5_000,
                    runs,
                    rates,
                    secs: 2,
                },
            }
        } else {
            Self {
                runs,
                // `always` fsyncs every message; on a slow-flush disk that is a few hundred per second.
                pipelined: [100_000, 2_000],
                one_at_a_time: [2_000, 300],
                consume: 300_000,
                consume_cap: Duration::from_secs(4),
                rates: rates.clone(),
                e2e: Duration::from_secs(5),
                warmup: Duration::from_millis(500),
                emails: 3_000,
                cold_starts: 3,
                bullmq: bullmq::Plan {
                    jobs: 10_000,
                    runs,
                    rates,
                    secs: 5,
                },
            }
        }
    }

    /// Index into the per-durability counts.
    fn at(counts: [u64; 2], sync: Sync) -> u64 {
        match sync {
            Sync::OneSecond | Sync::TwoMinutes => counts[0],
            Sync::Always => counts[1],
        }
    }
}

/// The bench measures what the functions run: mimalloc, the allocator each function binary chooses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    if scale::function_role() {
        return scale::function_main();
    }
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(args))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

async fn run(args: Args) -> anyhow::Result<()> {
    let root = workspace_root()
        .canonicalize()
        .context("locating the workspace")?;
    let full = args.only.is_empty() && !args.quick;
    if full && consume::threads_one() {
        anyhow::bail!(
            "JETFN_BENCH_THREADS=one is a diagnostic for a partial run (--quick or --only); a full run measures the \
             rows as tests/bench/ANALYSIS.md describes them"
        );
    }
    if full && args.log_format == LogFormat::Json {
        anyhow::bail!(
            "--log-format json is a diagnostic for a partial run (--quick or --only); a full run logs as a function \
             does by default"
        );
    }
    let wants = |section| args.only.is_empty() || args.only.contains(&section);
    let plan = Plan::new(&args);
    install_log_sink(&args.log, args.log_format)?;
    let nats_bin = match &args.nats_server {
        Some(bin) => bin.clone(),
        None => testkit::find_nats_server()?,
    };
    if !nats_bin.exists() {
        bail!(
            "{} not found: run `bash tests/bench/run.sh` (it installs nats-server 2.15.1 into .tools/venv)",
            nats_bin.display()
        );
    }
    let machine = Machine::read();
    let mut syncs = args.sync.clone();
    syncs.dedup();

    let mut rows = Vec::new();
    let mut not_measured = Vec::new();
    if args.only.contains(&Section::Decode) {
        rows.extend(decode_rows(&|row| row.to_owned(), plan.runs)?);
    }
    let servers_wanted = args.only.is_empty()
        || args
            .only
            .iter()
            .any(|section| !matches!(section, Section::Decode | Section::Bullmq | Section::Scale));
    let start_only = args.only.contains(&Section::Start) && !wants(Section::Welcome);
    let store = TempDir::new("nats")?;
    for &sync in syncs.iter().filter(|_| servers_wanted) {
        eprintln!(
            "==> nats-server with sync_interval: {}",
            sync.config_value()
        );
        let server = NatsServer::start(&nats_bin, store.path(), sync)?;
        // Applied once, on the fresh store; the restart keeps it (and infra/nats's EVENTS, which sources
        // SCHEDULES with a larger max_msg_size, is refused on a second apply by nats-server 2.15).
        let fresh = Some(&sync) == syncs.first();
        let phase = Phase::new(&root, &server, &plan, &args.consume, fresh).await?;
        if wants(Section::Publish) {
            rows.extend(phase.publish().await?);
        }
        if wants(Section::Runtime) {
            rows.extend(phase.consume().await?);
        }
        if wants(Section::Latency) {
            let capacity = rows
                .iter()
                .find(|row: &&Row| row.id == phase.id("publish/publisher-pipelined"))
                .map(|row| row.value);
            let (latency_rows, skipped) = phase.latency(capacity).await?;
            rows.extend(latency_rows);
            not_measured.extend(skipped);
        }
        let last = Some(&sync) == syncs.last();
        // emails/s under every durability; cold start and memory once, under the last (`always` in a full run).
        if wants(Section::Welcome) || (start_only && last) {
            match phase.welcome(&root, start_only, last, &args).await {
                Ok(welcome) => rows.extend(welcome),
                Err(err) => {
                    eprintln!("welcome rows failed: {err:#}");
                    not_measured.push(format!("the welcome function rows: {err:#}"));
                }
            }
        }
        drop(phase);
        server.stop();
    }
    if wants(Section::Welcome) && !syncs.contains(&Sync::Always) {
        not_measured.push("welcome rows under sync_interval: always (not selected)".to_owned());
    }
    if wants(Section::Scale) {
        let mut scale_plan = scale::Plan::new(args.quick, plan.runs);
        scale_plan.welcome_bin.clone_from(&args.welcome_bin);
        let (scale_rows, skipped) = scale::run(&root, &nats_bin, &scale_plan, &args.scale).await;
        rows.extend(scale_rows);
        not_measured.extend(skipped);
    }
    if wants(Section::Bullmq) {
        let mut durabilities: Vec<RedisDurability> =
            syncs.iter().map(|sync| sync.redis_equivalent()).collect();
        durabilities.push(RedisDurability::None);
        for durability in durabilities {
            eprintln!("==> BullMQ on redis-server with {}", durability.label());
            match bullmq::run(&root, durability, &plan.bullmq) {
                Ok(results) => rows.extend(bullmq_rows(&results, durability)),
                Err(err) => {
                    eprintln!("BullMQ with {} failed: {err:#}", durability.label());
                    not_measured.push(format!("BullMQ with {}: {err:#}", durability.label()));
                }
            }
        }
    }

    let mut report = Report {
        generated: now_rfc3339(),
        mode: mode_text(&args, full),
        runs: plan.runs,
        machine,
        versions: Versions::read(&root, &nats_bin),
        payload_bytes: workload::payload_bytes(),
        rows,
        targets: Vec::new(),
        not_measured,
    };
    report.judge(&syncs);
    report.print();
    let json = args.json.clone().unwrap_or_else(|| {
        root.join(if full {
            "tests/bench/results.json"
        } else {
            "tests/bench/results-partial.json"
        })
    });
    std::fs::write(&json, serde_json::to_string_pretty(&report)? + "\n")
        .with_context(|| format!("writing {}", json.display()))?;
    eprintln!("\nwrote {}", json.display());
    if full || args.markdown {
        let analysis =
            std::fs::read_to_string(root.join("tests/bench/ANALYSIS.md")).unwrap_or_default();
        let path = root.join("BENCHMARKS.md");
        std::fs::write(&path, report.markdown(&analysis))
            .with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn mode_text(args: &Args, full: bool) -> String {
    if full {
        return "full run".to_owned();
    }
    let mut parts = Vec::new();
    if consume::threads_one() {
        parts.push("JETFN_BENCH_THREADS=one".to_owned());
    }
    if args.log_format == LogFormat::Json {
        parts.push("--log-format json".to_owned());
    }
    if args.quick {
        parts.push("--quick".to_owned());
    }
    if !args.only.is_empty() {
        let only: Vec<String> = args
            .only
            .iter()
            .map(|section| format!("{section:?}").to_lowercase())
            .collect();
        parts.push(format!("--only {}", only.join(",")));
    }
    parts.join(" ")
}

fn now_rfc3339() -> String {
    let secs = workload::now_ns() / 1_000_000_000;
    let days = secs / 86_400;
    let rest = secs % 86_400;
    let (year, month, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm); spares a date crate for one timestamp.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The in-process runtime rows log the way a function does (the layer `runtime::telemetry` builds: compact text at
/// `info`, or JSON lines with each attempt's ids, the filter on the whole subscriber as it is when no spans are
/// exported), into /dev/null instead of stdout so the table stays readable; the formatting and the write are still
/// paid. The verdicts layer filters by itself rather than through a per-layer filter: any per-layer filter makes
/// every span pay its bookkeeping (ANALYSIS 39).
fn install_log_sink(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    if filter == "off" {
        return Ok(());
    }
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    let devnull = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let json = format == LogFormat::Json;
    runtime::telemetry::set_json_log_ids(json);
    // A function writes no colour codes into a pipe or a file (runtime::telemetry); neither does the sink.
    let sink = runtime::telemetry::log_layer(json, false, Mutex::new(devnull));
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new(filter))
        .with(sink)
        .with(probe::Verdicts)
        .try_init()
        .map_err(|err| anyhow::anyhow!("installing the log sink: {err}"))
}

/// The log lines' format of the runtime rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// One nats-server configuration's rows.
struct Phase<'a> {
    server: &'a NatsServer,
    plan: &'a Plan,
    client: async_nats::Client,
    js: jetstream::Context,
    template: async_nats::jetstream::consumer::pull::Config,
    consume_only: &'a [String],
}

impl<'a> Phase<'a> {
    async fn new(
        root: &Path,
        server: &'a NatsServer,
        plan: &'a Plan,
        consume_only: &'a [String],
        apply: bool,
    ) -> anyhow::Result<Self> {
        let client = async_nats::connect(server.url()).await?;
        let js = jetstream::new(client.clone());
        let mut definitions = Definitions::load(&root.join("infra/nats"))?;
        // Only what the measured path needs: no default schedule firing mid-run.
        definitions.schedules.clear();
        if apply {
            definitions.apply(&js).await?;
        }
        let template = definitions
            .consumer("EVENTS", "welcome")
            .cloned()
            .context("infra/nats has no EVENTS/welcome consumer")?;
        Ok(Self {
            server,
            plan,
            client,
            js,
            template,
            consume_only,
        })
    }

    fn sync(&self) -> Sync {
        self.server.sync
    }

    fn id(&self, what: &str) -> String {
        format!("{what}/{}", self.sync().config_value())
    }

    async fn publish(&self) -> anyhow::Result<Vec<Row>> {
        let count = Plan::at(self.plan.pipelined, self.sync());
        let mut runs: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        for run in 0..self.plan.runs {
            for (slug, via) in [("raw", Via::Raw), ("publisher", Via::Publisher)] {
                let rate = publish::pipelined(&self.client, via, count).await?;
                eprintln!(
                    "  publish {slug} pipelined run {}: {rate:.0} events/s",
                    run + 1
                );
                runs.entry(slug).or_default().push(rate);
            }
        }
        let durability = self.sync().label();
        let mut rows = vec![
            Row::rate(
                self.id("publish/raw-pipelined"),
                "Publish",
                format!(
                    "raw async-nats publish, pipelined ({} in flight, {count} events)",
                    publish::WINDOW
                ),
                &durability,
                "events/s",
                runs.remove("raw").unwrap_or_default(),
            ),
            Row::rate(
                self.id("publish/publisher-pipelined"),
                "Publish",
                format!(
                    "validating Publisher, pipelined ({} in flight, {count} events)",
                    publish::WINDOW
                ),
                &durability,
                "events/s",
                runs.remove("publisher").unwrap_or_default(),
            ),
        ];
        if let [raw, publisher] = &mut rows[..] {
            publisher.note = format!("{:.0}% of raw", publisher.value / raw.value * 100.0);
        }
        let count = Plan::at(self.plan.one_at_a_time, self.sync());
        for (slug, via, label) in [
            ("raw", Via::Raw, "raw async-nats publish, one at a time"),
            (
                "publisher",
                Via::Publisher,
                "validating Publisher, one at a time",
            ),
        ] {
            let quantiles = publish::one_at_a_time(&self.client, via, count).await?;
            eprintln!(
                "  publish {slug} one at a time: p50 {:.3} ms p99 {:.3} ms",
                quantiles.p50, quantiles.p99
            );
            rows.push(Row::latency(
                self.id(&format!("publish/{slug}-one")),
                "Publish",
                label,
                &durability,
                quantiles,
            ));
        }
        Ok(rows)
    }

    async fn consume(&self) -> anyhow::Result<Vec<Row>> {
        let window = self.prefill(self.plan.consume).await?;
        let setup = consume::Setup {
            url: self.server.url(),
            js: self.js.clone(),
            template: self.template.clone(),
            window,
            cap: self.plan.consume_cap,
            server_pids: vec![self.server.pid()],
            atomic_batches: self.sync() == Sync::Always,
            ledger_replicas: 1,
            tls_ca: None,
            tls_client: None,
        };
        let kinds = [
            (
                Kind::RawAck,
                "raw pull consumer, plain acks (baseline)".to_owned(),
            ),
            (
                Kind::RawDoubleAck,
                format!(
                    "raw pull consumer, double acks, {} in flight",
                    consume::IN_FLIGHT
                ),
            ),
            (
                Kind::RawRequestAck,
                format!(
                    "raw pull consumer, acks confirmed by request on the shared inbox, {} in flight",
                    consume::IN_FLIGHT
                ),
            ),
            (
                Kind::RawInboxAck,
                format!(
                    "raw pull consumer, acks confirmed through its own inbox (a reply subject per ack), {} in flight",
                    consume::IN_FLIGHT
                ),
            ),
            (
                Kind::RuntimeNoopPlain,
                "jetfn runtime, no-op handler, JOB_ACK=plain".to_owned(),
            ),
            (
                Kind::RuntimeNoop,
                "jetfn runtime, no-op handler, confirmed acks (default)".to_owned(),
            ),
            (
                Kind::RuntimeLedger,
                "jetfn runtime, ledger effect + confirmed acks (email config)".to_owned(),
            ),
        ];
        let kinds: Vec<_> = kinds
            .into_iter()
            .filter(|(kind, _)| {
                self.consume_only.is_empty()
                    || self.consume_only.iter().any(|slug| slug == kind.slug())
            })
            .collect();
        let mut runs: Vec<Vec<f64>> = vec![Vec::new(); kinds.len()];
        let mut cpu: Vec<Vec<(f64, f64)>> = vec![Vec::new(); kinds.len()];
        let mut io: Vec<Vec<(f64, f64)>> = vec![Vec::new(); kinds.len()];
        let mut verdicts: Vec<Vec<probe::Run>> = vec![Vec::new(); kinds.len()];
        // Only the ledger row records `done` writes in this process; its windows are read after the loop.
        runtime::ledger_window::reset();
        // Rows interleave run by run, so drift (page cache, a neighbour's build) spreads over all of them.
        for run in 0..self.plan.runs {
            for (((((kind, _), runs), cpu), io), verdicts) in kinds
                .iter()
                .zip(runs.iter_mut())
                .zip(cpu.iter_mut())
                .zip(io.iter_mut())
                .zip(verdicts.iter_mut())
            {
                let before = probe::counts();
                let rate = consume::run(&setup, *kind).await?;
                verdicts.push(probe::run(before, probe::counts()));
                eprintln!(
                    "  consume {} run {}: {:.0} events/s ({} events in {:.2} s; CPU per event: bench {:.1} µs, \
                     nats-server {:.1} µs; per event: bench writes {:.3}, nats-server reads {:.3})",
                    kind.slug(),
                    run + 1,
                    rate.per_sec(),
                    rate.events,
                    rate.secs,
                    rate.client_cpu_per_event * 1e6,
                    rate.server_cpu_per_event * 1e6,
                    rate.client_writes_per_event,
                    rate.server_reads_per_event,
                );
                runs.push(rate.per_sec());
                cpu.push((rate.client_cpu_per_event, rate.server_cpu_per_event));
                io.push((rate.client_writes_per_event, rate.server_reads_per_event));
            }
        }
        let durability = self.sync().label();
        let mut rows = decode_rows(&|row| self.id(row), self.plan.runs)?;
        if let Some(row) = self.ledger_window_row(&durability) {
            rows.push(row);
        }
        rows.extend(kinds.into_iter().zip(runs).zip(cpu).zip(io).zip(verdicts).map(
            |(((((kind, label), runs), cpu), io), verdicts)| {
                let mut row = Row::rate(
                    self.id(&format!("consume/{}", kind.slug())),
                    "Consume",
                    label,
                    &durability,
                    "events/s",
                    runs,
                );
                let client: Vec<f64> = cpu.iter().map(|(client, _)| client * 1e6).collect();
                let server: Vec<f64> = cpu.iter().map(|(_, server)| server * 1e6).collect();
                let (client, server) = (stats::median(&client), stats::median(&server));
                row.cpu_us_per_event = Some((client, server));
                let writes: Vec<f64> = io.iter().map(|(writes, _)| *writes).collect();
                let reads: Vec<f64> = io.iter().map(|(_, reads)| *reads).collect();
                row.note = format!(
                    "CPU per event: consumer {client:.1} µs, nats-server {server:.1} µs; system calls per event: \
                     consumer writes {:.3}, nats-server reads {:.3}",
                    stats::median(&writes),
                    stats::median(&reads)
                );
                if kind == Kind::RuntimeLedger {
                    row.note = format!("{}; {}", row.note, probe::note(&verdicts));
                }
                row
            },
        ));
        Ok(rows)
    }

    /// The duplicate window the ledger row saw: from each effect's end to the server acknowledging its `done`
    /// (a crash inside it repeats the effect after the lease). `None` when the ledger row did not run.
    fn ledger_window_row(&self, durability: &str) -> Option<Row> {
        let window = runtime::ledger_window::snapshot();
        if window.count == 0 {
            return None;
        }
        let row = consume::window_row(
            self.id("consume/ledger-window"),
            "Consume",
            format!(
                "duplicate window of the ledger row: effect end to `done` acknowledged, {} in flight",
                consume::IN_FLIGHT
            ),
            durability,
            window,
        );
        eprintln!("  ledger window: {}; {}", row.figure(), row.note);
        Some(row)
    }

    /// Makes sure the stream holds `count` events from sequence 1, publishing the rest pipelined.
    async fn prefill(&self, count: u64) -> anyhow::Result<Window> {
        let mut stream = self.js.get_stream("EVENTS").await?;
        let have = stream.info().await?.state.last_sequence;
        if have < count {
            eprintln!(
                "  prefilling {} events (sync_interval: {})",
                count - have,
                self.sync().config_value()
            );
            publish::pipelined(&self.client, Via::Raw, count - have).await?;
        }
        Ok(Window { start: 1, count })
    }

    /// Latency rows at the plan's rates; a rate above 80% of the publish capacity measured in this phase (under
    /// `always` on a slow-flush disk) is skipped and half the capacity is measured instead, since an overloaded
    /// open-loop run only measures how long its queue grew.
    async fn latency(&self, capacity: Option<f64>) -> anyhow::Result<(Vec<Row>, Vec<String>)> {
        let setup = consume::Setup {
            url: self.server.url(),
            js: self.js.clone(),
            template: self.template.clone(),
            window: Window { start: 1, count: 1 },
            cap: self.plan.consume_cap,
            server_pids: vec![self.server.pid()],
            atomic_batches: self.sync() == Sync::Always,
            ledger_replicas: 1,
            tls_ca: None,
            tls_client: None,
        };
        let durability = self.sync().label();
        let mut rows = Vec::new();
        let mut skipped = Vec::new();
        let mut rates = Vec::new();
        for &rate in &self.plan.rates {
            #[allow(clippy::cast_precision_loss)]
            let too_fast = capacity.is_some_and(|capacity| rate as f64 > 0.8 * capacity);
            if too_fast {
                skipped.push(format!(
                    "end-to-end at {rate} events/s under {durability}: above the {} events/s the validating \
                     publisher sustains here (one fsync per message)",
                    report::number(capacity.unwrap_or(0.0))
                ));
            } else {
                rates.push(rate);
            }
        }
        if let (false, Some(capacity)) = (skipped.is_empty(), capacity) {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let half = ((capacity / 2.0 / 10.0).round() as u64 * 10).max(10);
            rates.insert(0, half);
        }
        let top = rates.iter().copied().max().unwrap_or(5_000);
        for &rate in &rates {
            let mut pipelines = vec![(
                Pipeline::Jetfn,
                "jetfn",
                "Publisher → jetfn runtime (no-op)",
            )];
            // The target's rate runs `runs` times, raw and jetfn taking turns: one p99 of a few seconds is mostly
            // how many of the server's periodic flushes landed in it (raw's own p99 moved 3x between two runs of
            // one binary), and taking turns gives both sides the same drift of the host.
            let turns = if rate == top {
                pipelines.insert(
                    0,
                    (
                        Pipeline::Raw,
                        "raw",
                        "raw publish → raw pull consumer (plain acks)",
                    ),
                );
                self.plan.runs
            } else {
                1
            };
            let mut measured: Vec<Vec<Quantiles>> = vec![Vec::new(); pipelines.len()];
            for turn in 0..turns {
                for ((pipeline, slug, _), runs) in pipelines.iter().zip(&mut measured) {
                    let quantiles =
                        latency::run(&setup, *pipeline, rate, self.plan.e2e, self.plan.warmup)
                            .await?;
                    eprintln!(
                        "  e2e {slug} {rate}/s run {}: p50 {:.3} ms p99 {:.3} ms max {:.3} ms",
                        turn + 1,
                        quantiles.p50,
                        quantiles.p99,
                        quantiles.max
                    );
                    runs.push(quantiles);
                }
            }
            for ((_, slug, label), runs) in pipelines.into_iter().zip(measured) {
                rows.push(Row::latency_runs(
                    self.id(&format!("e2e/{slug}-{rate}")),
                    "End-to-end latency (publish → handler)",
                    format!("{label}, {rate} events/s"),
                    &durability,
                    runs,
                ));
            }
        }
        Ok((rows, skipped))
    }

    async fn welcome(
        &self,
        root: &Path,
        start_only: bool,
        last: bool,
        args: &Args,
    ) -> anyhow::Result<Vec<Row>> {
        let bin = args
            .welcome_bin
            .clone()
            .unwrap_or_else(|| root.join("target/release/welcome"));
        if !bin.exists() {
            bail!(
                "{} is missing: `cargo build --release -p welcome`",
                bin.display()
            );
        }
        let sink = testkit::SmtpServer::start_sink();
        let mut template = self.template.clone();
        if let Some(max) = args.welcome_max_ack_pending {
            template.max_ack_pending = max;
        }
        let setup = welcome::Setup {
            bin: &bin,
            url: self.server.url(),
            client: self.client.clone(),
            template,
            sink: &sink,
            server_pid: self.server.pid(),
            pool: args.welcome_pool,
        };
        let durability = self.sync().label();
        let far = if !start_only && self.sync() == Sync::OneSecond {
            self.welcome_far(&setup).await?
        } else {
            Vec::new()
        };
        if !last {
            let mut rows = self.welcome_emails(&setup).await?;
            rows.extend(far);
            return Ok(rows);
        }
        let cold_starts = if start_only {
            self.plan.runs.max(self.plan.cold_starts)
        } else {
            self.plan.cold_starts
        };
        let mut cold = Vec::new();
        for run in 0..cold_starts {
            let elapsed = setup.cold_start().await?;
            eprintln!(
                "  welcome cold start run {}: {:.1} ms",
                run + 1,
                elapsed.as_secs_f64() * 1e3
            );
            cold.push(elapsed.as_secs_f64() * 1e3);
        }
        let mut idle_mib = Vec::new();
        let mut anon_mib = Vec::new();
        for _ in 0..if start_only { self.plan.runs } else { 1 } {
            let idle = setup.idle_memory().await?;
            eprintln!(
                "  welcome idle: RSS {} KiB (anonymous {} KiB)",
                idle.rss_kib, idle.anon_kib
            );
            idle_mib.push(kib_to_mib(idle.rss_kib));
            anon_mib.push(kib_to_mib(idle.anon_kib));
        }
        let mut rows = if start_only {
            Vec::new()
        } else {
            self.welcome_emails(&setup).await?
        };
        rows.extend(far);
        rows.extend([
            Row::rate(
                "welcome/cold-start".to_owned(),
                "The welcome function (target/release/welcome)",
                "cold start: exec → first email accepted by the sink",
                &durability,
                "ms",
                cold,
            ),
            Row::rate(
                "welcome/rss-idle".to_owned(),
                "The welcome function (target/release/welcome)",
                "RSS, bound and idle (2 s after start)",
                "-",
                "MiB",
                idle_mib,
            ),
            Row::rate(
                "welcome/anon-idle".to_owned(),
                "The welcome function (target/release/welcome)",
                "of that RSS, anonymous memory (heap, stacks): what each further replica on a host adds; the rest \
                 is code and shared libraries, shared by every process of the binary",
                "-",
                "MiB",
                anon_mib,
            ),
        ]);
        Ok(rows)
    }

    /// Emails/s into a relay [`FAR`] away (a round trip), the way a function meets a hosted relay: one sink offers
    /// PIPELINING, the other (the baseline) does not, so the function sends each command after the last one's
    /// reply and checks a pooled connection with `NOOP` before each email, as lettre does. The two take turns.
    async fn welcome_far(&self, near: &welcome::Setup<'_>) -> anyhow::Result<Vec<Row>> {
        let durability = self.sync().label();
        let pipelining = testkit::SmtpServer::start_sink();
        let baseline = testkit::SmtpServer::start_sink();
        baseline.hide_extension("PIPELINING");
        let mut rates = [Vec::new(), Vec::new()];
        for run in 0..self.plan.runs {
            for (i, sink) in [&pipelining, &baseline].into_iter().enumerate() {
                sink.set_round_trip(FAR);
                let setup = welcome::Setup {
                    sink,
                    client: near.client.clone(),
                    url: near.url.clone(),
                    template: near.template.clone(),
                    ..*near
                };
                let emails = setup.emails(self.plan.emails).await?;
                eprintln!(
                    "  welcome emails run {}, relay {} ms away, PIPELINING {}: {:.0} emails/s",
                    run + 1,
                    FAR.as_millis(),
                    if i == 0 { "offered" } else { "not offered" },
                    emails.rate,
                );
                rates[i].push(emails.rate);
            }
        }
        let [offered, not_offered] = rates;
        let label = |what: &str| {
            format!(
                "emails/s into a sink {} ms away (round trip), {what} ({} events; SMTP pool {}; max_ack_pending {})",
                FAR.as_millis(),
                self.plan.emails,
                near.pool,
                near.template.max_ack_pending
            )
        };
        let mut pipelined = Row::rate(
            self.id("welcome/far-pipelining"),
            "The welcome function (target/release/welcome)",
            label(
                "the sink offers PIPELINING: envelope in one write, no NOOP, two round trips per email",
            ),
            &durability,
            "emails/s",
            offered,
        );
        let mut sequential = Row::rate(
            self.id("welcome/far-sequential"),
            "The welcome function (target/release/welcome)",
            label(
                "the sink does not offer PIPELINING (baseline): NOOP, MAIL, RCPT, DATA and the message each wait \
                 for a reply, five round trips",
            ),
            &durability,
            "emails/s",
            not_offered,
        );
        let (a, b) = (
            stats::median(&pipelined.runs),
            stats::median(&sequential.runs),
        );
        pipelined.note = format!(
            "{:.1}× the baseline; bound: round trips within the pool ({} connections × 1 / (2 × {} ms) = {:.0}/s)",
            a / b,
            near.pool,
            FAR.as_millis(),
            f64::from(near.pool) / (2.0 * FAR.as_secs_f64()),
        );
        sequential.note = format!(
            "bound: round trips within the pool ({} connections × 1 / (5 × {} ms) = {:.0}/s)",
            near.pool,
            FAR.as_millis(),
            f64::from(near.pool) / (5.0 * FAR.as_secs_f64()),
        );
        Ok(vec![pipelined, sequential])
    }

    /// The emails/s row under this durability, with what each process spent per email and what bounds the rate,
    /// and the peak memory after it.
    async fn welcome_emails(&self, setup: &welcome::Setup<'_>) -> anyhow::Result<Vec<Row>> {
        let durability = self.sync().label();
        let mut runs = Vec::new();
        for run in 0..self.plan.runs {
            let emails = setup.emails(self.plan.emails).await?;
            eprintln!(
                "  welcome emails run {}: {:.0} emails/s, peak RSS {} KiB; CPU µs per email: welcome {:.0}, \
                 nats-server {:.0}, sink {:.0}",
                run + 1,
                emails.rate,
                emails.memory.peak_kib,
                emails.cpu_us.welcome,
                emails.cpu_us.nats,
                emails.cpu_us.sink,
            );
            runs.push(emails);
        }
        let of = |f: &dyn Fn(&welcome::EmailsRun) -> f64| {
            stats::median(&runs.iter().map(f).collect::<Vec<_>>())
        };
        let cpu = welcome::Cpu {
            welcome: of(&|r| r.cpu_us.welcome),
            nats: of(&|r| r.cpu_us.nats),
            sink: of(&|r| r.cpu_us.sink),
        };
        let busy = welcome::Cpu {
            welcome: of(&|r| r.busy.welcome),
            nats: of(&|r| r.busy.nats),
            sink: of(&|r| r.busy.sink),
        };
        let mut emails = Row::rate(
            self.id("welcome/emails"),
            "The welcome function (target/release/welcome)",
            format!(
                "emails/s into a local SMTP sink ({} events; SMTP pool {}; max_ack_pending {})",
                self.plan.emails, setup.pool, setup.template.max_ack_pending
            ),
            &durability,
            "emails/s",
            runs.iter().map(|r| r.rate).collect(),
        );
        emails.note = format!(
            "CPU per email: welcome {:.0} µs, nats-server {:.0} µs, sink {:.0} µs; busy: welcome {:.0}%, \
             nats-server {:.0}%, sink {:.0}% of a core; bound: {}",
            cpu.welcome,
            cpu.nats,
            cpu.sink,
            busy.welcome * 100.0,
            busy.nats * 100.0,
            busy.sink * 100.0,
            welcome_bound(busy, self.sync()),
        );
        emails.cpu_us_per_event = Some((cpu.welcome, cpu.nats));
        #[allow(clippy::cast_precision_loss)]
        let peaks = runs
            .iter()
            .map(|r| r.memory.peak_kib as f64 / 1024.0)
            .collect();
        Ok(vec![
            emails,
            Row::rate(
                self.id("welcome/rss-peak"),
                "The welcome function (target/release/welcome)",
                format!("peak RSS (VmHWM) after {} emails", self.plan.emails),
                &durability,
                "MiB",
                peaks,
            ),
        ])
    }
}

/// How far the relay of the `welcome/far-*` rows is: a hosted relay in the same region is a few milliseconds away.
const FAR: Duration = Duration::from_millis(5);

/// What bounds the welcome rate, read from how busy each process was: one process near a full core is the bound;
/// the two cores full together make CPU the bound; otherwise the rate waits on something no process is busy with:
/// fsyncs under `always`, round trips (the sink's replies, the broker's acks) within the pool and
/// `max_ack_pending` under `1s`.
fn welcome_bound(busy: welcome::Cpu, sync: Sync) -> String {
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    let processes = [
        ("welcome", busy.welcome),
        ("nats-server", busy.nats),
        ("the sink", busy.sink),
    ];
    let (name, most) = processes
        .iter()
        .copied()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or(("welcome", 0.0));
    let total = busy.welcome + busy.nats + busy.sink;
    #[allow(clippy::cast_precision_loss)]
    if total >= 0.85 * cores as f64 {
        format!("CPU, all {cores} cores busy (most: {name})")
    } else if most >= 0.85 {
        format!("CPU of {name} (one core)")
    } else if sync == Sync::Always {
        "the fsyncs each email waits for (no process near a full core)".to_owned()
    } else {
        "waits, not CPU: round trips within the pool and max_ack_pending (no process near a full core)".to_owned()
    }
}

#[allow(clippy::cast_precision_loss)]
fn kib_to_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn bullmq_rows(results: &bullmq::Results, durability: RedisDurability) -> Vec<Row> {
    let label = durability.label();
    let section = "BullMQ (same event as job data, no-op processor)";
    let mut rows = vec![Row::rate(
        bullmq_id("add-bulk", durability),
        section,
        "queue.addBulk, chunks of 1,000 (every fill of every run)",
        label,
        "jobs/s",
        results.add_bulk_per_s.clone(),
    )];
    rows.push(Row::latency(
        bullmq_id("add-one", durability),
        section,
        "queue.add, one at a time",
        label,
        Quantiles::from(results.add_one),
    ));
    let mut workers: Vec<(u64, &Vec<f64>)> = results
        .worker
        .iter()
        .filter_map(|(c, runs)| Some((c.parse().ok()?, runs)))
        .collect();
    workers.sort_by_key(|(c, _)| *c);
    for (c, runs) in workers {
        rows.push(Row::rate(
            bullmq_id(&format!("worker-c{c}"), durability),
            section,
            format!("worker, concurrency {c}"),
            label,
            "jobs/s",
            runs.clone(),
        ));
    }
    for e2e in &results.e2e {
        rows.push(Row::latency(
            bullmq_id(&format!("e2e-{}", e2e.rate), durability),
            section,
            format!("queue.add → worker (concurrency 10), {} jobs/s", e2e.rate),
            label,
            Quantiles::from(e2e.quantiles),
        ));
    }
    rows
}

/// What checking one event costs on one thread, beside a bare typed decode of the same bytes: the share of the
/// runtime's CPU per event that the consume-side JSON Schema check (a fixed choice) takes.
fn decode_rows(id: &dyn Fn(&str) -> String, runs: usize) -> anyhow::Result<Vec<Row>> {
    const COUNT: u32 = 20_000;
    let bytes = serde_json::to_vec(&workload::event(1))?;
    let validator = events::Validator::new();
    let time = |f: &dyn Fn() -> bool| -> anyhow::Result<f64> {
        let started = std::time::Instant::now();
        for _ in 0..COUNT {
            if !std::hint::black_box(f()) {
                bail!("the bench event did not decode");
            }
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(COUNT))
    };
    // The schemas compile on first use (two copies: the borrowed tree's and the `Value` path's), not in a timing.
    validator.prepare(<events::UserRegistered as events::Event>::TYPE);
    if validator
        .decode_by_value::<events::UserRegistered>(&bytes)
        .is_err()
    {
        bail!("the bench event did not decode by value");
    }
    let mut checked = Vec::new();
    let mut by_value = Vec::new();
    let mut bare = Vec::new();
    for _ in 0..runs {
        checked.push(time(&|| {
            validator.decode::<events::UserRegistered>(&bytes).is_ok()
        })?);
        by_value.push(time(&|| {
            validator
                .decode_by_value::<events::UserRegistered>(&bytes)
                .is_ok()
        })?);
        bare.push(time(&|| {
            serde_json::from_slice::<events::CloudEvent<events::UserRegistered>>(&bytes).is_ok()
        })?);
    }
    Ok(vec![
        Row::rate(
            id("decode/validator"),
            "Consume",
            "one event on one thread: Validator::decode (parse, JSON Schema, typed decode, rules)",
            "-",
            "µs",
            checked,
        ),
        Row::rate(
            id("decode/by-value"),
            "Consume",
            "one event on one thread: the same check through a serde_json::Value (the path the borrowed tree \
             replaced; its baseline)",
            "-",
            "µs",
            by_value,
        ),
        Row::rate(
            id("decode/bare"),
            "Consume",
            "one event on one thread: serde_json typed decode only (no schema, no rules)",
            "-",
            "µs",
            bare,
        ),
    ])
}
