//! The servers the bench runs against: its own nats-server (the test kit's manager) and redis-server child
//! processes, on 127.0.0.1 only, free ports, stores in a temp dir; stopped (and the dir removed) when dropped, so an
//! interrupted bench leaves nothing listening.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// How often JetStream fsyncs its file store: `always` (before each ack, jetfn's setting) or an interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum Sync {
    /// `sync_interval: 1s`: acked writes may be lost in a power failure of the last second.
    OneSecond,
    /// `sync_interval: always`: fsync before every ack.
    Always,
    /// `sync_interval: 2m`: no periodic fsync within a row. A diagnostic (`--sync 2m`), not a production
    /// setting: it separates what the disk's once-a-second fsync costs from what the software costs.
    TwoMinutes,
}

impl Sync {
    /// The value in nats-server's configuration.
    pub fn config_value(self) -> &'static str {
        match self {
            Self::OneSecond => "1s",
            Self::Always => "always",
            Self::TwoMinutes => "2m",
        }
    }

    /// The same choice in the test kit's terms.
    pub fn interval(self) -> testkit::SyncInterval {
        match self {
            Self::OneSecond => testkit::SyncInterval::Every(std::time::Duration::from_secs(1)),
            Self::Always => testkit::SyncInterval::Always,
            Self::TwoMinutes => testkit::SyncInterval::Every(std::time::Duration::from_secs(120)),
        }
    }

    /// How the report names this durability.
    pub fn label(self) -> String {
        format!("nats sync_interval: {}", self.config_value())
    }

    /// The Redis setting that loses the same window on a power failure: the like-for-like BullMQ row.
    pub fn redis_equivalent(self) -> RedisDurability {
        match self {
            Self::OneSecond | Self::TwoMinutes => RedisDurability::EverySec,
            Self::Always => RedisDurability::Always,
        }
    }
}

impl std::str::FromStr for Sync {
    type Err = anyhow::Error;
    fn from_str(text: &str) -> anyhow::Result<Self> {
        match text {
            "1s" => Ok(Self::OneSecond),
            "always" => Ok(Self::Always),
            "2m" => Ok(Self::TwoMinutes),
            other => bail!("unknown sync interval {other:?}: use 1s, always or 2m (diagnostic)"),
        }
    }
}

/// A temp dir removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A fresh dir under the system temp dir.
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "jetfn-bench-{label}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }

    /// The dir.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process stopped with SIGTERM (then SIGKILL) on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: &'static str,
}

impl ChildGuard {
    /// Takes ownership of `child`.
    pub fn new(child: Child, name: &'static str) -> Self {
        Self {
            child: Some(child),
            name,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, wait up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} did not stop within 10 s of SIGTERM; killing it",
            self.name
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `command`, forwards its output lines to a channel and waits until one contains `ready`; returns the
/// guard and every line seen so far.
fn spawn_until(
    mut command: Command,
    name: &'static str,
    ready: &'static str,
) -> anyhow::Result<(ChildGuard, Vec<String>)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        child
            .stdout
            .take()
            .map(|out| Box::new(out) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|err| Box::new(err) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            // Keep draining after the receiver is gone, so the child never blocks on a full pipe.
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let guard = ChildGuard::new(child, name);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains(ready);
                seen.push(line);
                if done {
                    return Ok((guard, seen));
                }
            }
            Err(_) => bail!(
                "{name} did not become ready within 30 s; output:\n{}",
                seen.join("\n")
            ),
        }
    }
}

/// The bench's nats-server (the test kit's) with the durability it runs under.
pub struct NatsServer {
    server: testkit::NatsServer,
    /// The durability it runs with.
    pub sync: Sync,
}

impl NatsServer {
    /// Starts `bin` with `sync` on `dir`'s store (reused across restarts, so a stream filled fast under `1s` can
    /// be consumed under `always`): infra/nats/server.conf's settings, less the fixed ports (loopback only, a
    /// free port, no monitoring).
    pub fn start(bin: &Path, dir: &Path, sync: Sync) -> anyhow::Result<Self> {
        let server = testkit::NatsServer::builder()
            .bin(bin)
            .store_dir(dir.join("store"))
            .sync_interval(sync.interval())
            .server_name("jetfn_bench")
            .config("max_payload: 1MB")
            .jetstream_config("max_file_store: 16GB\nmax_memory_store: 256MB")
            .quiet()
            .try_start()?;
        Ok(Self { server, sync })
    }

    /// The process id, for reading its CPU time.
    pub fn pid(&self) -> u32 {
        self.server.pid().unwrap_or_default()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Graceful stop, so the store is clean for the next start.
    pub fn stop(self) {
        self.server.stop();
    }
}

/// Redis persistence, from the most durable to none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum RedisDurability {
    /// `appendonly yes`, `appendfsync always`: fsync before replying (once per event-loop pass).
    Always,
    /// `appendonly yes`, `appendfsync everysec`.
    EverySec,
    /// No AOF and no RDB snapshots: everything since start is lost on a crash.
    None,
}

impl RedisDurability {
    /// How the report names it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Always => "redis appendfsync always",
            Self::EverySec => "redis appendfsync everysec",
            Self::None => "redis no AOF, no RDB",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            Self::Always => &["--appendonly", "yes", "--appendfsync", "always"],
            Self::EverySec => &["--appendonly", "yes", "--appendfsync", "everysec"],
            Self::None => &["--appendonly", "no"],
        }
    }
}

/// A redis-server child process.
#[derive(Debug)]
pub struct RedisServer {
    _guard: ChildGuard,
    /// Its port on 127.0.0.1.
    pub port: u16,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts redis-server with `durability` on a free port and a fresh dir.
    pub fn start(durability: RedisDurability) -> anyhow::Result<Self> {
        let dir = TempDir::new("redis")?;
        let port = free_port()?;
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .args(["--save", "", "--protected-mode", "yes", "--daemonize", "no"])
            .args(durability.args());
        let (guard, _) = spawn_until(command, "redis-server", "Ready to accept connections")?;
        Ok(Self {
            _guard: guard,
            port,
            _dir: dir,
        })
    }
}

/// A port free now on 127.0.0.1 (for servers that cannot pick their own and report it).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
