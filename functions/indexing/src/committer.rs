//! The batching committer: one thread owns the index writer, applies changes in arrival order, and commits every
//! `max_docs` writes or `interval` after the first pending change, whichever comes first. Each handler awaits a
//! oneshot that resolves only after the commit that made its change durable, so the runtime acks only what a crash
//! cannot lose. A failed commit fails every waiter of the batch: their messages are redelivered.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::index::{Change, Decision, Writer};

/// When to commit.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Commit once this many documents are pending.
    pub max_docs: usize,
    /// Commit this long after the first pending change at the latest. Keep it well inside the consumer's
    /// `ack_wait` (the runtime also sends progress acks while a handler waits).
    pub interval: Duration,
    /// Fault injection for the crash test only (feature `fault-injection`): sleep this long before each commit.
    #[cfg(feature = "fault-injection")]
    pub test_delay_before_commit: Duration,
    /// Called on the committer thread if it panics, before any waiting handler hears of it. The process passes
    /// [`exit_after_panic`]; in-process tests, which must survive a panic, pass a function that returns.
    pub on_panic: fn(),
    /// Fault injection for the supervision test only (feature `fault-injection`): panic at the first change.
    #[cfg(feature = "fault-injection")]
    pub test_panic_at_change: bool,
}

/// The exit status of a process whose committer thread panicked (`EX_SOFTWARE`).
pub const EXIT_COMMITTER_PANICKED: i32 = 70;

/// Ends the process after a panic of the committer thread. Without it the handlers' changes would fail one by one
/// (the committer is gone) and every event would be dead-lettered after its retries while `/livez` still answered
/// 200; exiting instead lets the orchestrator restart the process, and the unacked messages are redelivered to it.
pub fn exit_after_panic() {
    tracing::error!(
        status = EXIT_COMMITTER_PANICKED,
        "the index committer thread panicked; exiting so the process is restarted and its messages redelivered"
    );
    std::process::exit(EXIT_COMMITTER_PANICKED);
}

/// Runs [`Policy::on_panic`] when the committer thread unwinds. It must drop before the batch's waiters do, so no
/// handler sees the failure and settles its message.
struct OnPanic(fn());

impl Drop for OnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0)();
        }
    }
}

enum Request {
    Change(Change, oneshot::Sender<Result<Decision, String>>),
    Purge(i64, oneshot::Sender<Result<u64, String>>),
}

/// The handle handlers and the service talk to.
pub struct Committer {
    requests: mpsc::Sender<Request>,
    thread: std::thread::JoinHandle<()>,
}

impl Committer {
    /// Starts the committer thread; it owns `writer` until [`Committer::close`].
    pub fn start(writer: Writer, policy: Policy) -> Self {
        let (requests, inbox) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("index-committer".to_owned())
            .spawn(move || run(writer, &inbox, policy))
            .expect("spawning the committer thread");
        Self { requests, thread }
    }

    /// A sender for [`Committer::apply`] and [`Committer::purge`] from other tasks.
    pub fn handle(&self) -> Handle {
        Handle {
            requests: self.requests.clone(),
        }
    }

    /// Commits what is pending and stops the thread.
    pub fn close(self) {
        drop(self.requests);
        if self.thread.join().is_err() {
            tracing::error!("the committer thread panicked");
        }
    }
}

/// A cheap, cloneable way to submit work to the committer.
#[derive(Clone)]
pub struct Handle {
    requests: mpsc::Sender<Request>,
}

impl Handle {
    /// Applies `change`; resolves once it is committed (or once it is known to need no write).
    ///
    /// # Errors
    /// The change or its commit failed; nothing of it is durable.
    pub async fn apply(&self, change: Change) -> Result<Decision, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Change(change, reply))
            .map_err(|_| "the committer has stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the committer stopped before answering".to_owned())?
    }

    /// Removes entries written before `before_ms` and commits; returns how many it removed.
    ///
    /// # Errors
    /// The purge or its commit failed.
    pub async fn purge(&self, before_ms: i64) -> Result<u64, String> {
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request::Purge(before_ms, reply))
            .map_err(|_| "the committer has stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "the committer stopped before answering".to_owned())?
    }
}

type Waiter = (oneshot::Sender<Result<Decision, String>>, Decision);

fn run(mut writer: Writer, inbox: &mpsc::Receiver<Request>, policy: Policy) {
    let mut waiters: Vec<Waiter> = Vec::new();
    let mut writes = 0usize;
    let mut batch_started: Option<Instant> = None;
    // Declared after the waiters, so it drops (and exits) before they do.
    let _on_panic = OnPanic(policy.on_panic);
    loop {
        let request = match batch_started {
            None => match inbox.recv() {
                Ok(request) => request,
                Err(mpsc::RecvError) => break,
            },
            Some(started) => {
                let left = (started + policy.interval).saturating_duration_since(Instant::now());
                match inbox.recv_timeout(left) {
                    Ok(request) => request,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        commit(&mut writer, &mut waiters, writes, policy);
                        (writes, batch_started) = (0, None);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        };
        #[cfg(feature = "fault-injection")]
        assert!(
            !policy.test_panic_at_change,
            "INDEX_TEST_PANIC_IN_COMMITTER: the committer panics as asked"
        );
        match request {
            Request::Change(change, reply) => match writer.apply(&change) {
                Ok(decision) => {
                    if decision == Decision::Write {
                        writes += 1;
                    }
                    if waiters.is_empty() && decision != Decision::Write {
                        // Nothing pending: the state it was checked against is committed already.
                        let _ = reply.send(Ok(decision));
                    } else {
                        // Checked against uncommitted state: it stands or falls with that commit.
                        waiters.push((reply, decision));
                        batch_started.get_or_insert_with(Instant::now);
                    }
                    if writes >= policy.max_docs {
                        commit(&mut writer, &mut waiters, writes, policy);
                        (writes, batch_started) = (0, None);
                    }
                }
                Err(err) => {
                    // The writer may hold half of this change: drop the whole batch, every waiter retries.
                    tracing::error!(error = %format!("{err:#}"), "applying a change failed; dropping the batch");
                    writer.rollback();
                    for (waiter, _) in waiters.drain(..) {
                        let _ = waiter.send(Err(format!("the batch was dropped: {err:#}")));
                    }
                    (writes, batch_started) = (0, None);
                    let _ = reply.send(Err(format!("applying the change: {err:#}")));
                }
            },
            Request::Purge(before_ms, reply) => {
                if !waiters.is_empty() {
                    commit(&mut writer, &mut waiters, writes, policy);
                    (writes, batch_started) = (0, None);
                }
                let result = writer.purge(before_ms).map_err(|err| {
                    writer.rollback();
                    format!("purging: {err:#}")
                });
                let _ = reply.send(result);
            }
        }
    }
    if !waiters.is_empty() {
        commit(&mut writer, &mut waiters, writes, policy);
    }
    tracing::info!("committer stopped");
}

fn commit(writer: &mut Writer, waiters: &mut Vec<Waiter>, writes: usize, policy: Policy) {
    #[cfg(not(feature = "fault-injection"))]
    let _ = policy;
    #[cfg(feature = "fault-injection")]
    if !policy.test_delay_before_commit.is_zero() {
        tracing::warn!(
            writes,
            delay_ms = u64::try_from(policy.test_delay_before_commit.as_millis()).unwrap_or(0),
            "commit delayed (INDEX_TEST_DELAY_BEFORE_COMMIT_MS)"
        );
        std::thread::sleep(policy.test_delay_before_commit);
    }
    let started = Instant::now();
    match writer.commit() {
        Ok(()) => {
            tracing::info!(
                writes,
                answered = waiters.len(),
                took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "index committed"
            );
            for (reply, decision) in waiters.drain(..) {
                let _ = reply.send(Ok(decision));
            }
        }
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), writes, "index commit failed; the batch will be redelivered");
            writer.rollback();
            for (reply, _) in waiters.drain(..) {
                let _ = reply.send(Err(format!("index commit failed: {err:#}")));
            }
        }
    }
}
