//! How cost grows with scale (issue 13): replicas of one function, 100 functions on one server, a backlog of a
//! million events, payloads up to the 256 KiB limit, a three-node cluster, and TLS to the server. Every part starts
//! its own nats-server with `sync_interval: 1s` on a fresh store (removed afterwards, so the backlog's gigabyte does
//! not linger), with the monitoring port on, and applies `infra/nats` as the other rows do.
//!
//! Figures that load on a shared machine does not distort are recorded beside every rate: CPU per event of each
//! process (from /proc), resident memory, and request counts seen on the wire. Each row's note says what bounds
//! it, from those: the share of the machine's cores the measured processes kept busy.

mod backlog;
mod cluster;
mod functions;
mod payload;
mod replicas;
mod tls;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::jetstream::consumer::pull;
use clap::ValueEnum;
use provision::Definitions;

use crate::consume::cpu_secs;
use crate::report::Row;
use crate::servers::{ChildGuard, TempDir};

/// The parts of the scale section (`--scale`), each runnable alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    /// 1, 2, 4 and 8 welcome processes sharing one durable consumer.
    Replicas,
    /// 100 welcome processes, each bound to its own consumer, idle and under a light spread load.
    Functions,
    /// A backlog of a million events drained by a ledger-shaped function process.
    Backlog,
    /// 1 KiB to 256 KiB events: publish, no-op consume, latency.
    Payload,
    /// The consume rows on a three-node cluster (R3), every node on this machine.
    Cluster,
    /// Publish and consume rows over TLS, beside the same rows in plain text on a twin server.
    Tls,
}

/// Counts for the scale rows; the full section is sized to take about eight minutes on two cores.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The welcome binary the replica and function rows run (`--welcome-bin`); `None`: as [`welcome_bin`] says.
    pub welcome_bin: Option<PathBuf>,
    /// Runs of each replica count.
    pub runs: usize,
    /// Replica counts.
    pub replicas: Vec<usize>,
    /// Emails per replica run.
    pub replica_emails: u64,
    /// Functions (processes, one consumer each).
    pub functions: usize,
    /// How long the idle window lasts: at least the pull requests' 30 s expiry in the full run, so every
    /// function's re-pull falls in it.
    pub functions_idle: Duration,
    /// How long the loaded window lasts.
    pub functions_window: Duration,
    /// Events per second over all functions in the loaded window.
    pub functions_rate: u64,
    /// Events in the backlog.
    pub backlog: u64,
    /// The drain stops here even if the backlog is not empty.
    pub backlog_cap: Duration,
    /// (JSON bytes, events published) per payload size.
    pub payloads: Vec<(usize, u64)>,
    /// The latency rows' rate.
    pub payload_rate: u64,
    /// The latency rows' length (the first half second is warm-up).
    pub payload_latency: Duration,
    /// Events the cluster's consume rows read (each row from the first, until the cap).
    pub cluster_events: u64,
    /// A cluster consume row stops here.
    pub cluster_cap: Duration,
    /// Events each TLS row publishes and each consume row reads, on either server.
    pub tls_events: u64,
    /// A TLS or plain consume row stops here.
    pub tls_cap: Duration,
    /// How long each TLS or plain latency row offers its rate (after half a second of warm-up).
    pub tls_latency: Duration,
}

impl Plan {
    /// The full or the quick counts.
    pub fn new(quick: bool, runs: usize) -> Self {
        let kib = 1024;
        let limit = payload::LIMIT_TARGET;
        if quick {
            Self {
                welcome_bin: None,
                runs,
                replicas: vec![1, 2, 4, 8],
                replica_emails: 1_000,
                functions: 100,
                functions_idle: Duration::from_secs(6),
                functions_window: Duration::from_secs(6),
                functions_rate: 100,
                backlog: 100_000,
                backlog_cap: Duration::from_secs(60),
                payloads: vec![
                    (kib, 5_000),
                    (16 * kib, 2_000),
                    (64 * kib, 600),
                    (limit, 200),
                ],
                payload_rate: 100,
                payload_latency: Duration::from_secs(2),
                cluster_events: 30_000,
                cluster_cap: Duration::from_secs(2),
                tls_events: 30_000,
                tls_cap: Duration::from_secs(2),
                tls_latency: Duration::from_secs(2),
            }
        } else {
            Self {
                welcome_bin: None,
                runs: runs.min(2),
                replicas: vec![1, 2, 4, 8],
                replica_emails: 3_000,
                functions: 100,
                functions_idle: Duration::from_secs(31),
                functions_window: Duration::from_secs(15),
                functions_rate: 200,
                backlog: 1_000_000,
                backlog_cap: Duration::from_secs(200),
                payloads: vec![
                    (kib, 20_000),
                    (16 * kib, 6_000),
                    (64 * kib, 2_000),
                    (limit, 600),
                ],
                payload_rate: 200,
                payload_latency: Duration::from_secs(4),
                cluster_events: 100_000,
                cluster_cap: Duration::from_secs(4),
                tls_events: 100_000,
                tls_cap: Duration::from_secs(4),
                tls_latency: Duration::from_secs(5),
            }
        }
    }
}

/// Runs the chosen parts (all when `parts` is empty); a part that fails is reported as not measured.
pub async fn run(
    root: &Path,
    nats_bin: &Path,
    plan: &Plan,
    parts: &[Part],
) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut not_measured = Vec::new();
    let wants = |part| parts.is_empty() || parts.contains(&part);
    for part in [
        Part::Replicas,
        Part::Functions,
        Part::Backlog,
        Part::Payload,
        Part::Cluster,
        Part::Tls,
    ] {
        if !wants(part) {
            continue;
        }
        eprintln!("==> scale: {part:?}");
        let started = Instant::now();
        let result = part_rows(root, nats_bin, plan, part).await;
        eprintln!(
            "  scale {part:?} took {:.0} s",
            started.elapsed().as_secs_f64()
        );
        match result {
            Ok(part_rows) => rows.extend(part_rows),
            Err(err) => {
                eprintln!("scale {part:?} failed: {err:#}");
                not_measured.push(format!("scale, {part:?}: {err:#}"));
            }
        }
    }
    (rows, not_measured)
}

/// One part's rows: the cluster part starts its three nodes, the TLS part a plain and a TLS server, every other
/// part one server of its own.
async fn part_rows(
    root: &Path,
    nats_bin: &Path,
    plan: &Plan,
    part: Part,
) -> anyhow::Result<Vec<Row>> {
    match part {
        Part::Replicas => {
            on_own_server(root, nats_bin, async |server| {
                replicas::run(root, server, plan).await
            })
            .await
        }
        Part::Functions => {
            on_own_server(root, nats_bin, async |server| {
                functions::run(root, server, plan).await
            })
            .await
        }
        Part::Backlog => {
            on_own_server(root, nats_bin, async |server| {
                backlog::run(root, server, plan).await
            })
            .await
        }
        Part::Payload => {
            on_own_server(root, nats_bin, async |server| {
                payload::run(server, plan).await
            })
            .await
        }
        Part::Cluster => {
            eprintln!("  three nats-servers, R3, fresh stores");
            cluster::run(root, nats_bin, plan).await
        }
        Part::Tls => {
            eprintln!(
                "  two nats-servers with sync_interval: 1s, fresh stores: one plain, one TLS only"
            );
            tls::run(root, nats_bin, plan).await
        }
    }
}

/// Runs `measure` on a fresh server of its own, stopped afterwards.
async fn on_own_server(
    root: &Path,
    nats_bin: &Path,
    measure: impl AsyncFnOnce(&Server) -> anyhow::Result<Vec<Row>>,
) -> anyhow::Result<Vec<Row>> {
    eprintln!("  nats-server with sync_interval: 1s, fresh store");
    let server = Server::start(root, nats_bin).await?;
    let result = measure(&server).await;
    server.stop();
    result
}

/// The durability every scale row runs under.
pub const DURABILITY: &str = "nats sync_interval: 1s";

/// The cluster part's: three copies of every write, each node with nats-server's default periodic sync (as the
/// compose stack's nodes run).
pub const DURABILITY_CLUSTER: &str = "3 nodes, R3, nats sync_interval: default (2m)";

/// A nats-server for one part: `sync_interval: 1s`, a fresh store, monitoring on a free port.
pub struct Server {
    server: testkit::NatsServer,
    _dir: TempDir,
    /// A connection for provisioning, publishing and polling.
    pub client: async_nats::Client,
    /// Its JetStream context.
    pub js: jetstream::Context,
    /// `infra/nats/consumers/EVENTS/welcome.json`, the template of every consumer here.
    pub template: pull::Config,
}

impl Server {
    async fn start(root: &Path, bin: &Path) -> anyhow::Result<Self> {
        Self::start_with(root, bin, None).await
    }

    /// [`Self::start`], serving only TLS with `certs`' server certificate when given, and with `true` asking every
    /// client for a certificate that CA signed (mutual TLS), so the TLS part's servers differ in nothing else.
    async fn start_with(
        root: &Path,
        bin: &Path,
        certs: Option<(&testkit::TestCertificates, bool)>,
    ) -> anyhow::Result<Self> {
        let dir = TempDir::new("scale")?;
        let mut builder = testkit::NatsServer::builder();
        if let Some((certs, verify)) = certs {
            builder = builder.tls(certs, verify);
        }
        let server = builder
            .bin(bin)
            .store_dir(dir.path().join("store"))
            .sync_interval(crate::servers::Sync::OneSecond.interval())
            .server_name("jetfn_bench_scale")
            .monitor_port(0)
            .config("max_payload: 1MB")
            .jetstream_config("max_file_store: 16GB\nmax_memory_store: 256MB")
            .quiet()
            .try_start()?;
        let ca = certs.map(|(certs, _)| certs.ca());
        let identity = certs
            .filter(|(_, verify)| *verify)
            .map(|(certs, _)| (certs.client_cert(), certs.client_key()));
        let client =
            crate::consume::connect(&server.url(), ca.as_deref(), identity.as_ref()).await?;
        let js = jetstream::new(client.clone());
        let mut definitions = Definitions::load(&root.join("infra/nats"))?;
        definitions.schedules.clear();
        definitions.apply(&js).await?;
        let template = definitions
            .consumer("EVENTS", "welcome")
            .cloned()
            .context("infra/nats has no EVENTS/welcome consumer")?;
        Ok(Self {
            server,
            _dir: dir,
            client,
            js,
            template,
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.server.pid().unwrap_or_default()
    }

    /// `/jsz`'s `api.total` (JetStream API requests served so far) and `api.errors`.
    pub fn api_counts(&self) -> Option<(u64, u64)> {
        let jsz = self.server.jsz()?;
        let api = jsz.get("api")?;
        Some((api.get("total")?.as_u64()?, api.get("errors")?.as_u64()?))
    }

    /// The last sequence of EVENTS.
    pub async fn last_sequence(&self) -> anyhow::Result<u64> {
        Ok(self
            .js
            .get_stream("EVENTS")
            .await?
            .info()
            .await?
            .state
            .last_sequence)
    }

    fn stop(self) {
        self.server.stop();
    }

    /// Stops the server, starts it again on the same port and store, waits until JetStream answers (on a
    /// connection of its own, then on the reconnected shared client), and gives the server a few seconds to
    /// settle before reading its memory. The time from the start to JetStream's first answer is the store's
    /// recovery as a node's restart pays it.
    pub async fn restarted(&self) -> anyhow::Result<Restarted> {
        let begun = tokio::task::block_in_place(|| {
            self.server.stop();
            let begun = Instant::now();
            self.server.try_restart().map(|()| begun)
        })?;
        let deadline = begun + Duration::from_secs(120);
        // A connection of its own per try: the shared client reconnects on its own schedule, whose backoff
        // would be counted as the server's.
        loop {
            if let Ok(client) = crate::consume::connect(&self.url(), None, None).await
                && jetstream::new(client).query_account().await.is_ok()
            {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "JetStream did not answer within 120 s of the restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ready = begun.elapsed();
        while self.js.query_account().await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the bench's connection did not come back within 120 s of the restart"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        Ok(Restarted {
            memory: Memory::of(self.pid()),
            ready,
        })
    }
}

/// A server restarted on its store: its memory once settled, and how long it took to answer JetStream requests.
pub struct Restarted {
    /// Five seconds after the first answer.
    pub memory: Memory,
    /// From the process's start to JetStream's first answer.
    pub ready: Duration,
}

/// Memory of a process from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// `VmRSS`.
    pub rss: u64,
    /// `VmHWM`, the peak.
    pub peak: u64,
    /// `RssAnon`: private memory.
    pub anon: u64,
    /// `RssFile`: mapped files (the binary's code, shared by processes of one binary).
    pub file: u64,
}

impl Memory {
    /// Reads it; zeros if the process is gone.
    pub fn of(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| status_kib(&status, name);
        Self {
            rss: field("VmRSS:"),
            peak: field("VmHWM:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
        }
    }
}

/// A `/proc/<pid>/status` field in KiB (`name` with its colon, e.g. `VmRSS:`); 0 when absent.
pub fn status_kib(status: &str, name: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse::<u64>().ok())
        .unwrap_or(0)
}

/// KiB to MiB.
#[allow(clippy::cast_precision_loss)]
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// CPU seconds of several processes together.
pub fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter().map(|pid| cpu_precise(&pid.to_string())).sum()
}

/// CPU seconds of a process (`self` or a pid) to the nanosecond: the sum of its live threads' run time from
/// `/proc/<pid>/task/*/schedstat`. `/proc/<pid>/stat` counts whole clock ticks of 10 ms, and a function that
/// starts in less than that, a hundred times, reads as zero there. Falls back to `stat` where schedstat is
/// missing.
pub fn cpu_precise(pid: &str) -> f64 {
    sched(pid).0
}

/// Seconds the live threads of these processes spent runnable but waiting for a core (schedstat's run delay).
pub fn run_delay(pids: &[String]) -> f64 {
    pids.iter().map(|pid| sched(pid).1).sum()
}

/// Times the live threads of these processes were put on a core (schedstat's third field): about one per
/// wake-up, so per event it says how many times a process slept and was woken to handle it.
pub fn slices(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|pid| schedstat(&pid.to_string()).map_or(0, |(_, _, slices)| slices))
        .sum()
}

/// The sums over a process's live threads of schedstat's three fields: run time and run delay in nanoseconds,
/// and the times a thread was put on a core. `None` where no thread's schedstat can be read.
fn schedstat(pid: &str) -> Option<(u64, u64, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let (mut ns, mut delay, mut slices) = (0u64, 0u64, 0u64);
    let mut found = false;
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
            continue;
        };
        let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
        if let (Some(Some(run)), Some(Some(wait)), Some(Some(count))) =
            (fields.next(), fields.next(), fields.next())
        {
            ns += run;
            delay += wait;
            slices += count;
            found = true;
        }
    }
    found.then_some((ns, delay, slices))
}

/// (run time, run delay) in seconds, from schedstat; (stat's CPU time, 0) without it.
fn sched(pid: &str) -> (f64, f64) {
    let Some((ns, delay, _)) = schedstat(pid) else {
        return if std::fs::metadata(format!("/proc/{pid}")).is_ok() {
            (cpu_secs(pid), 0.0)
        } else {
            (0.0, 0.0)
        };
    };
    #[allow(clippy::cast_precision_loss)]
    let secs = (ns as f64 / 1e9, delay as f64 / 1e9);
    secs
}

/// The whole machine's busy and total CPU time from /proc/stat, in clock ticks: other engineers' builds show
/// here and not in the measured processes.
pub fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|line| line.starts_with("cpu ")) else {
        return (0, 0);
    };
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().take(8).sum();
    // idle and iowait
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// CPU seconds of the measured processes and of the machine over one window.
#[derive(Debug, Clone, Copy)]
pub struct CpuWindow {
    started: Instant,
    function: f64,
    server: f64,
    bench: f64,
    machine: (u64, u64),
    delay: f64,
}

/// What a window cost: CPU seconds per process group, the wall time, and how busy the machine was.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSpent {
    /// The function processes (or the in-process runtime, for rows that run it in the bench).
    pub function: f64,
    /// nats-server.
    pub server: f64,
    /// The bench process (publisher, SMTP sink, pollers), when the function is not in it.
    pub bench: f64,
    /// Wall seconds.
    pub secs: f64,
    /// The machine's busy share of all its cores, everyone's work included.
    pub machine_busy: f64,
    /// Seconds the measured processes' threads spent runnable but waiting for a core.
    pub waiting: f64,
}

impl CpuWindow {
    /// Starts a window over `functions` (empty: the function runs in the bench process), `server`.
    pub fn start(functions: &[u32], server: u32) -> Self {
        Self {
            started: Instant::now(),
            function: cpu_of(functions),
            server: cpu_precise(&server.to_string()),
            bench: cpu_precise("self"),
            machine: machine_ticks(),
            delay: run_delay(&all(functions, server)),
        }
    }

    /// Ends it.
    pub fn end(&self, functions: &[u32], server: u32) -> CpuSpent {
        let machine = machine_ticks();
        let busy = machine.0.saturating_sub(self.machine.0);
        let total = machine.1.saturating_sub(self.machine.1).max(1);
        #[allow(clippy::cast_precision_loss)]
        let machine_busy = busy as f64 / total as f64;
        CpuSpent {
            function: cpu_of(functions) - self.function,
            server: cpu_precise(&server.to_string()) - self.server,
            bench: cpu_precise("self") - self.bench,
            secs: self.started.elapsed().as_secs_f64(),
            machine_busy,
            waiting: run_delay(&all(functions, server)) - self.delay,
        }
    }
}

impl CpuSpent {
    /// The sentence on what bounds a row: the cores the measured processes kept busy against the machine's.
    /// `function` and `bench` name those two groups (a group that spent nothing is left out). With the CPU all
    /// three spent per event, it says what this machine's cores would allow if they were the processes' alone:
    /// the figure a reader scales to their own deployment.
    pub fn bound(&self, function: &str, bench: &str, events: u64) -> String {
        let cores = f64::from(u32::try_from(nproc()).unwrap_or(2));
        let secs = self.secs.max(1e-9);
        let (f, s, b) = (self.function / secs, self.server / secs, self.bench / secs);
        let ours = f + s + b;
        let waiting = self.waiting / secs;
        let verdict = if ours >= 0.85 * cores {
            "bound: CPU (every core busy with the measured processes)".to_owned()
        } else if waiting >= 0.5 * ours {
            format!(
                "bound: CPU shared with other work (the measured processes waited for a core {waiting:.2} s per \
                 second, against {ours:.2} s running)"
            )
        } else {
            format!(
                "bound: not CPU (the measured processes ran {ours:.2} s per second and waited for a core only \
                 {waiting:.2} s): round trips and the in-flight cap"
            )
        };
        let mut parts = Vec::new();
        if self.function > 0.0 {
            parts.push(format!("{function} {f:.2}"));
        }
        parts.push(format!("nats-server {s:.2}"));
        parts.push(format!("{bench} {b:.2}"));
        #[allow(clippy::cast_precision_loss)]
        let per_event = (self.function + self.server + self.bench) / events.max(1) as f64;
        format!(
            "{verdict}; cores busy: {} of {cores:.0}; machine {:.0}% busy; {:.0} µs of CPU per event in all, so \
             {cores:.0} idle cores would allow about {}/s",
            parts.join(", "),
            self.machine_busy * 100.0,
            per_event * 1e6,
            crate::report::number(cores / per_event.max(1e-9)),
        )
    }
}

fn all(functions: &[u32], server: u32) -> Vec<String> {
    let mut pids: Vec<String> = functions.iter().map(u32::to_string).collect();
    pids.push(server.to_string());
    pids.push("self".to_owned());
    pids
}

/// Logical CPUs.
pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZero::get)
}

/// Starts `bin` (the welcome function) bound to `consumer`, sending into `smtp` over at most `pool` connections
/// (the function's default when `None`); quiet, without health port or exporters, like every bench function.
pub fn spawn_welcome(
    bin: &Path,
    url: &str,
    smtp: &str,
    pool: Option<u32>,
    consumer: &str,
    ledger: &str,
) -> anyhow::Result<ChildGuard> {
    let mut command = Command::new(bin);
    command
        .env("NATS_URL", url)
        .env("SMTP_URL", smtp)
        .env("JOB_CONSUMER", consumer)
        .env("JOB_LEDGER_BUCKET", ledger)
        .env("RUST_LOG", "info")
        .env_remove("JOB_HEALTH_ADDR")
        .env_remove("LOG_FORMAT")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // To read what a function decided (the ledger's disk probe, its pool), `JETFN_BENCH_FUNCTION_LOGS=<dir>` keeps
    // each process's log in `<dir>/<consumer>.log` (appended: a consumer's replicas share one).
    if let Some(dir) = std::env::var_os("JETFN_BENCH_FUNCTION_LOGS") {
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Path::new(&dir).join(format!("{consumer}.log")))?;
        command.stderr(log.try_clone()?).stdout(log);
    }
    if let Some(pool) = pool {
        command.env("SMTP_POOL_MAX", pool.to_string());
    }
    let child = command
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    Ok(ChildGuard::new(child, "welcome"))
}

/// The plan's `--welcome-bin`, else `$JETFN_BENCH_WELCOME_BIN`, else `target/release/welcome` (to compare two builds
/// in one session), or an error saying how to build it.
pub fn welcome_bin(root: &Path, plan: &Plan) -> anyhow::Result<PathBuf> {
    let bin = plan.welcome_bin.clone().unwrap_or_else(|| {
        std::env::var_os("JETFN_BENCH_WELCOME_BIN")
            .map_or_else(|| root.join("target/release/welcome"), PathBuf::from)
    });
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: `cargo build --release -p welcome`",
        bin.display()
    );
    Ok(bin)
}

/// SIGTERM to every child first, then waits for each: stopping a hundred one after another takes a while.
pub fn stop_all(children: &mut Vec<ChildGuard>) {
    for child in children.iter() {
        if let Ok(pid) = i32::try_from(child.pid()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    for child in children.iter_mut() {
        child.stop();
    }
    children.clear();
}

/// Waits until `consumer` has `pulls` pull requests waiting on the server: every replica bound and pulling.
pub async fn wait_for_pulls(
    js: &jetstream::Context,
    consumer: &str,
    pulls: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let stream = js.get_stream("EVENTS").await?;
    let deadline = Instant::now() + timeout;
    loop {
        let info = stream.consumer_info(consumer).await?;
        if info.num_waiting >= pulls {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "consumer {consumer}: {} of {pulls} pull requests waiting after {timeout:?}",
            info.num_waiting
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The environment variable that makes `jetfn-bench` run as a function process instead (the backlog row's
/// drainer: the runtime's ledger shape in a process of its own, so its memory is its alone).
pub const FUNCTION_ENV: &str = "JETFN_BENCH_SCALE_FUNCTION";

/// When set, `main` runs [`function_main`] and nothing else.
pub fn function_role() -> bool {
    std::env::var_os(FUNCTION_ENV).is_some()
}

/// The ledger-shaped function: `NATS_URL`, `JOB_CONSUMER` and `JOB_LEDGER_BUCKET` as a function reads them, one
/// `job.once` effect per event and confirmed acks, logs at `info` to stdout; stops on SIGTERM.
pub fn function_main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(backlog::function())
}
