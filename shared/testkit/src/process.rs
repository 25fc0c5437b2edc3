//! A workspace binary run as a child process, the way an operator would run it.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::output::{capture, pump, pump_lines, signal};
use crate::{lock, poll_async, poll_blocking, tail, workspace_root};

/// A running function binary (`target/debug/<bin>`) with stdout and stderr captured.
///
/// Output is kept in a shared buffer ([`FunctionProcess::output`]) and echoed to the test's stderr
/// with a `[bin]` prefix. SIGKILLed on drop if still running. All methods take `&self`.
pub struct FunctionProcess {
    bin: String,
    pid: u32,
    child: Mutex<Child>,
    output: Arc<Mutex<String>>,
    /// The threads reading stdout and stderr; finished once the pipes reached EOF.
    pumps: Vec<std::thread::JoinHandle<()>>,
}

impl FunctionProcess {
    /// Spawns `<target dir>/debug/<bin>` with the test's environment plus `envs`.
    ///
    /// Panics if the binary has not been built (`cargo build --workspace`).
    pub fn spawn(bin: &str, envs: &[(&str, String)]) -> Self {
        Self::spawn_with_args(bin, &[], envs)
    }

    /// Like [`FunctionProcess::spawn`], with command-line arguments.
    pub fn spawn_with_args(bin: &str, args: &[&str], envs: &[(&str, String)]) -> Self {
        Self::spawn_path(bin, &binary_path(bin), args, envs)
    }

    /// Spawns a program that is not a workspace binary (`node` running a browser test), found on `PATH` or by
    /// path, with the same output capture and signals.
    pub fn spawn_program(program: &str, args: &[&str], envs: &[(&str, String)]) -> Self {
        let name = std::path::Path::new(program)
            .file_name()
            .map_or_else(|| program.to_owned(), |n| n.to_string_lossy().into_owned());
        Self::spawn_path(&name, std::path::Path::new(program), args, envs)
    }

    fn spawn_path(
        bin: &str,
        path: &std::path::Path,
        args: &[&str],
        envs: &[(&str, String)],
    ) -> Self {
        let mut command = Command::new(path);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, value) in envs {
            command.env(key, value);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", path.display()));
        let output = Arc::new(Mutex::new(String::new()));
        let prefix = format!("[{bin}]");
        let pumps = match log_file(bin, child.id()) {
            None => [
                pump(child.stdout.take(), &prefix, Arc::clone(&output)),
                pump(child.stderr.take(), &prefix, Arc::clone(&output)),
            ]
            .into_iter()
            .flatten()
            .collect(),
            Some(file) => {
                let tee = || {
                    let (prefix, output, file) =
                        (prefix.clone(), Arc::clone(&output), Arc::clone(&file));
                    move |text: &str| {
                        capture(&prefix, &output, text);
                        let _ = writeln!(lock(&file), "{text}");
                    }
                };
                [
                    pump_lines(child.stdout.take(), tee()),
                    pump_lines(child.stderr.take(), tee()),
                ]
                .into_iter()
                .flatten()
                .collect()
            }
        };
        Self {
            bin: bin.to_owned(),
            pid: child.id(),
            child: Mutex::new(child),
            output,
            pumps,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// stdout and stderr so far, interleaved line by line in arrival order.
    pub fn output(&self) -> String {
        lock(&self.output).clone()
    }

    /// Waits until the output contains `needle`; panics with the output tail on timeout (or if the
    /// process exits first without having printed it).
    pub async fn wait_for_output(&self, needle: &str, timeout: Duration) -> String {
        let found = poll_async(timeout, || self.output_check(needle)).await;
        self.output_result(needle, timeout, found)
    }

    /// Blocking twin of [`FunctionProcess::wait_for_output`].
    pub fn wait_for_output_blocking(&self, needle: &str, timeout: Duration) -> String {
        let found = poll_blocking(timeout, || self.output_check(needle));
        self.output_result(needle, timeout, found)
    }

    /// Sends SIGTERM (graceful shutdown request).
    pub fn sigterm(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Sends SIGKILL (crash).
    pub fn sigkill(&self) {
        self.signal(Signal::SIGKILL);
    }

    /// Sends any signal (e.g. SIGSTOP/SIGCONT to pause) unless the process has been reaped.
    pub fn signal(&self, sig: Signal) {
        let mut child = lock(&self.child);
        if matches!(child.try_wait(), Ok(None)) {
            signal(self.pid, sig);
        }
    }

    /// The exit status if the process has exited.
    pub fn try_exit_status(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    /// Waits for the process to exit; panics with the output tail on timeout.
    pub async fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let status = poll_async(timeout, || self.try_exit_status()).await;
        self.exit_result(timeout, status)
    }

    /// Blocking twin of [`FunctionProcess::wait_exit`].
    pub fn wait_exit_blocking(&self, timeout: Duration) -> ExitStatus {
        let status = poll_blocking(timeout, || self.try_exit_status());
        self.exit_result(timeout, status)
    }

    fn output_check(&self, needle: &str) -> Option<Option<String>> {
        let output = self.output();
        if output.contains(needle) {
            return Some(Some(output));
        }
        // Exited: give the pump threads a moment to drain the pipes, then decide.
        self.try_exit_status()?;
        std::thread::sleep(Duration::from_millis(100));
        let output = self.output();
        Some(output.contains(needle).then_some(output))
    }

    fn output_result(
        &self,
        needle: &str,
        timeout: Duration,
        found: Option<Option<String>>,
    ) -> String {
        match found {
            Some(Some(output)) => output,
            Some(None) => panic!(
                "{} exited ({:?}) without printing {needle:?}; output tail:\n{}",
                self.bin,
                self.try_exit_status(),
                tail(&self.output(), 60)
            ),
            None => panic!(
                "{} did not print {needle:?} within {timeout:?}; output tail:\n{}",
                self.bin,
                tail(&self.output(), 60)
            ),
        }
    }

    fn exit_result(&self, timeout: Duration, status: Option<ExitStatus>) -> ExitStatus {
        if status.is_some() {
            self.drain_output();
        }
        status.unwrap_or_else(|| {
            panic!(
                "{} (pid {}) still running after {timeout:?}; output tail:\n{}",
                self.bin,
                self.pid,
                tail(&self.output(), 60)
            )
        })
    }
}

impl FunctionProcess {
    /// After the exit, waits (two seconds at most: a grandchild may hold a pipe open) until both pipes reached EOF,
    /// so what the process printed last is in [`FunctionProcess::output`] when `wait_exit` returns.
    fn drain_output(&self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !self.pumps.iter().all(std::thread::JoinHandle::is_finished)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for FunctionProcess {
    fn drop(&mut self) {
        let child = self
            .child
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `<target dir>/debug/<bin>`: the directory above the test executable's `deps/` first, then
/// `$CARGO_TARGET_DIR/debug`, then `<workspace>/target/debug`.
pub fn binary_path(bin: &str) -> PathBuf {
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/debug/deps/it-<hash> -> target/debug
        if let Some(profile_dir) = exe.parent().and_then(|deps| deps.parent()) {
            candidates.push(profile_dir.join(bin));
        }
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        let target = PathBuf::from(target);
        let target = if target.is_relative() {
            workspace_root().join(target)
        } else {
            target
        };
        candidates.push(target.join("debug").join(bin));
    }
    candidates.push(workspace_root().join("target/debug").join(bin));
    candidates
        .iter()
        .find(|path| path.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "binary {bin} not built: run `cargo build --workspace` first (looked in {candidates:?})"
            )
        })
}

/// The variable naming a directory where every [`FunctionProcess`] also writes its output, one
/// `<bin>-<pid>.log` each: `tests/run.sh` sets it, then scans the files for secrets in clear.
pub const LOG_DIR_VAR: &str = "JETFN_TEST_LOG_DIR";

fn log_file(bin: &str, pid: u32) -> Option<Arc<Mutex<File>>> {
    let dir = PathBuf::from(std::env::var_os(LOG_DIR_VAR)?);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("{LOG_DIR_VAR}: creating {}: {e}", dir.display()));
    let path = dir.join(format!("{bin}-{pid}.log"));
    let file = File::create(&path)
        .unwrap_or_else(|e| panic!("{LOG_DIR_VAR}: creating {}: {e}", path.display()));
    Some(Arc::new(Mutex::new(file)))
}
