//! Test harness: real nats-server, SMTP server and OTLP receiver for the integration tests.
//!
//! Every component is real and binds only `127.0.0.1`. A missing dependency (nats-server, a function
//! binary) panics with an install hint: tests never skip.
//!
//! * [`NatsServer`]: a nats-server 2.15.x child process with JetStream on a private temp store.
//! * [`SmtpServer`]: an in-process RFC 5321 server with scripted faults (4xx/5xx, delay, outage).
//! * [`OtlpReceiver`]: an OTLP/HTTP receiver that decodes protobuf trace exports into [`ReceivedSpan`]s.
//! * [`FunctionProcess`]: a workspace binary run as a child process, with captured output and signals.
//!
//! The SMTP server and OTLP receiver run on their own background runtime thread, so they work from
//! plain `#[test]`s and from `#[tokio::test]`s of either flavour. Waiting helpers come in two forms:
//! `async fn wait_for_*` (use these inside async tests) and `wait_for_*_blocking`.

mod bg;
mod nats;
mod otlp;
mod process;
mod smtp;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use nats::{NatsServer, nats_server_bin};
pub use otlp::{OtlpReceiver, ReceivedMetric, ReceivedSpan};
pub use process::{FunctionProcess, binary_path};
pub use smtp::{Attempt, AttemptStage, ReceivedMail, SmtpServer};

/// Signals for [`FunctionProcess::signal`] (e.g. `SIGSTOP`/`SIGCONT` to pause a worker).
pub use nix::sys::signal::Signal;

/// The workspace root (the directory holding the root `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize().unwrap_or(dir)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it).
///
/// Prefer letting a server bind port 0 itself where it can; this is for processes that need a port
/// number up front.
pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0 to find a free port");
    listener
        .local_addr()
        .expect("local_addr of a bound listener")
        .port()
}

/// Polls `check` every 20 ms until it returns `Some`, or `timeout` passes (then `None`).
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
pub(crate) fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The last `max_lines` lines of `text`, for panic messages.
pub(crate) fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}
