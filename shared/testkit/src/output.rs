//! What child processes share: reading their output line by line, and signalling them.

use std::io::{BufRead, BufReader, Read};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::lock;

/// Sends `signal` to `pid`; errors (e.g. the process already exited) are ignored.
pub(crate) fn signal(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

/// Calls `on_line` with each line of `source` (without its line ending) on a thread of its own, until EOF.
/// The thread keeps draining after nobody looks, so the child never blocks on a full pipe. The handle tells when
/// it reached EOF, so a caller that saw the process exit can wait for its last lines.
pub(crate) fn pump_lines(
    source: Option<impl Read + Send + 'static>,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> Option<std::thread::JoinHandle<()>> {
    let source = source?;
    Some(std::thread::spawn(move || {
        let mut reader = BufReader::new(source);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let text = String::from_utf8_lossy(&line);
                    on_line(text.trim_end_matches(['\r', '\n']));
                }
            }
        }
    }))
}

/// Reads `source` line by line into `buffer` (and echoes each line to stderr with `prefix`, which
/// libtest captures and shows only for failing tests).
#[cfg(feature = "process")]
pub(crate) fn pump(
    source: Option<impl Read + Send + 'static>,
    prefix: &str,
    buffer: Arc<Mutex<String>>,
) -> Option<std::thread::JoinHandle<()>> {
    let prefix = prefix.to_owned();
    pump_lines(source, move |text| capture(&prefix, &buffer, text))
}

/// Echoes `text` to stderr with `prefix` and appends it to `buffer`.
pub(crate) fn capture(prefix: &str, buffer: &Mutex<String>, text: &str) {
    eprintln!("{prefix} {text}");
    let mut buffer = lock(buffer);
    buffer.push_str(text);
    buffer.push('\n');
}

/// A shared, growing text buffer.
#[cfg(feature = "nats")]
pub(crate) type Buffer = Arc<Mutex<String>>;
