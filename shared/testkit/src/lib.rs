//! Real servers for the integration tests, the bench and `jetfn dev`, written once.
//!
//! Every component is real and binds only `127.0.0.1`. A missing dependency (nats-server, a function
//! binary) is a clear error with the install command: tests never skip.
//!
//! * [`NatsServer`] (feature `nats`): a nats-server 2.15.x child process with JetStream, on a temp store
//!   or a given one; restart on the same port and store. [`NatsCluster`]: three of them routed into one
//!   JetStream cluster, for fault tests (on the loopback, or each node in a network namespace of its own so a
//!   test can partition one off).
//! * [`SmtpServer`] (feature `smtp`): an in-process RFC 5321 server with scripted replies, delays and
//!   outages, plain or with STARTTLS or implicit TLS, or a counting sink for the bench.
//! * [`OtlpReceiver`] (feature `otlp`): an OTLP/HTTP receiver that decodes protobuf exports.
//! * [`FunctionProcess`] (feature `process`): a workspace binary run as a child process, with captured
//!   output and signals.
//!
//! The SMTP server and OTLP receiver run on their own background runtime thread, so they work from
//! plain `#[test]`s and from `#[tokio::test]`s of either flavour. Waiting helpers come in two forms:
//! `async fn wait_for_*` (use these inside async tests) and `wait_for_*_blocking`.

#[cfg(any(feature = "smtp", feature = "otlp"))]
mod bg;
#[cfg(feature = "nats")]
mod cluster;
#[cfg(feature = "fuzz")]
pub mod fuzz;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "nats")]
mod netns;
#[cfg(feature = "otlp")]
mod otlp;
#[cfg(any(feature = "nats", feature = "process"))]
mod output;
#[cfg(feature = "process")]
mod process;
#[cfg(feature = "smtp")]
mod smtp;
#[cfg(feature = "nats")]
mod tls;

use std::net::TcpListener;
use std::path::PathBuf;
#[cfg(any(
    feature = "nats",
    feature = "process",
    feature = "smtp",
    feature = "otlp"
))]
use std::time::{Duration, Instant};

#[cfg(feature = "nats")]
pub use cluster::NatsCluster;
#[cfg(feature = "nats")]
pub use nats::{
    INSTALL_COMMAND, NatsServer, NatsServerBuilder, SyncInterval, find_nats_server, nats_server_bin,
};
#[cfg(feature = "otlp")]
pub use otlp::{OtlpReceiver, ReceivedMetric, ReceivedSpan};
#[cfg(feature = "process")]
pub use process::{FunctionProcess, LOG_DIR_VAR, binary_path};
#[cfg(feature = "smtp")]
pub use smtp::{
    Attempt, AttemptStage, ReceivedCommand, ReceivedMail, Reply, SmtpCommand, SmtpServer, SmtpTls,
};
#[cfg(feature = "nats")]
pub use tls::TestCertificates;

/// Signals for [`FunctionProcess::signal`] (e.g. `SIGSTOP`/`SIGCONT` to pause a worker).
#[cfg(any(feature = "nats", feature = "process"))]
pub use nix::sys::signal::Signal;

/// Why a server could not be started: the message says what to do (e.g. the install command).
#[cfg(feature = "nats")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(String);

#[cfg(feature = "nats")]
impl Error {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

#[cfg(feature = "nats")]
impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(feature = "nats")]
impl std::error::Error for Error {}

/// The workspace root (the directory holding the root `Cargo.toml`), as it was when this crate was built.
pub fn workspace_root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    dir.canonicalize().unwrap_or(dir)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it).
///
/// Prefer letting a server bind port 0 itself where it can; this is for processes that need a port
/// number up front (a cluster's routes name each other's ports).
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local_addr of a bound listener")
        .port()
}

/// Polls `check` every 20 ms until it returns `Some`, or `timeout` passes (then `None`).
#[cfg(any(
    feature = "nats",
    feature = "process",
    feature = "smtp",
    feature = "otlp"
))]
pub(crate) fn poll_blocking<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async twin of [`poll_blocking`]: sleeps with the caller's tokio timer between checks.
#[cfg(any(feature = "smtp", feature = "otlp", feature = "process"))]
pub(crate) async fn poll_async<T>(
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Locks a mutex, ignoring poisoning (a panicking test thread must not hide the records).
#[cfg(any(
    feature = "nats",
    feature = "process",
    feature = "smtp",
    feature = "otlp"
))]
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The last `max_lines` lines of `text`, for panic messages.
#[cfg(any(feature = "nats", feature = "process"))]
pub(crate) fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}
