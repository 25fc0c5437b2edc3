//! The tokio runtime a function's `main` runs on, and `JOB_THREADS`, which overrides the function's choice.
//!
//! A function whose handler waits on I/O (every email function: the ledger, the SMTP pool, the ack) spends about
//! a quarter less CPU per event on one thread than on tokio's multi-threaded scheduler, which wakes its other
//! workers and steals tasks between them (tests/bench/ANALYSIS.md, sections 31 and 35: the welcome function's CPU
//! per email fell by a quarter to a third at the same emails/s, and each replica keeps less memory). A function
//! whose handler computes (indexing: tantivy's parse and commit) needs every core. So each function names its
//! own default, and an operator can override it per deployment. On one thread, a handler that blocks it holds up
//! everything else the process does (its acks, lease renewals and heartbeats), so a function of one's own that
//! calls blocking code belongs on [`Threads::PerCore`], or puts that call in `spawn_blocking`.

use std::num::NonZeroU16;

use serde::Deserialize;

use anyhow::Context as _;

use crate::config::JobConfig;

/// How many threads run a function's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// Every task on the thread that runs `main` (tokio's current-thread scheduler). Blocking work still goes to
    /// `spawn_blocking`'s pool.
    One,
    /// This many worker threads (tokio's multi-threaded scheduler).
    Workers(NonZeroU16),
    /// One worker per core the process may use (tokio's default; it respects a container's CPU quota).
    PerCore,
}

/// `JOB_THREADS`: a whole number of at least 1. `1` is [`Threads::One`], not a single worker beside `main`'s own
/// thread: that would keep the hand-offs between two threads that one thread is chosen to avoid.
impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        match value.trim().parse::<NonZeroU16>() {
            Ok(one) if one.get() == 1 => Ok(Self::One),
            Ok(workers) => Ok(Self::Workers(workers)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a whole number of threads, at least 1 (1: every task on one thread)",
            )),
        }
    }
}

/// Builds the runtime `main` blocks on: `JOB_THREADS` where it is set, else `default`.
///
/// # Errors
/// A `JOB_*` setting that does not parse (the error names it, as [`JobConfig::from_env`]'s does), or a runtime
/// the system refuses to start (no threads left).
pub fn build(default: Threads) -> anyhow::Result<tokio::runtime::Runtime> {
    let job = JobConfig::from_env().context("reading JOB_* configuration")?;
    Ok(builder(chosen(default, &job)).build()?)
}

fn builder(threads: Threads) -> tokio::runtime::Builder {
    let mut builder = match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread(),
        Threads::Workers(workers) => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(workers.get()));
            builder
        }
        Threads::PerCore => tokio::runtime::Builder::new_multi_thread(),
    };
    builder.enable_all();
    builder
}

fn chosen(default: Threads, job: &JobConfig) -> Threads {
    job.threads.unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_vars;

    fn threads(value: &str) -> Result<Option<Threads>, String> {
        from_vars::<JobConfig>([("JOB_THREADS".to_owned(), value.to_owned())])
            .map(|job| job.threads)
            .map_err(|err| err.to_string())
    }

    #[test]
    fn one_is_the_current_thread_scheduler_and_more_are_workers() {
        assert_eq!(threads("1"), Ok(Some(Threads::One)));
        assert_eq!(
            threads("4"),
            Ok(Some(Threads::Workers(NonZeroU16::new(4).unwrap())))
        );
        let unset = from_vars::<JobConfig>(std::iter::empty::<(String, String)>()).unwrap();
        assert_eq!(unset.threads, None);
        assert_eq!(chosen(Threads::One, &unset), Threads::One);
        assert_eq!(chosen(Threads::PerCore, &unset), Threads::PerCore);
    }

    #[test]
    fn a_count_that_is_not_a_whole_number_of_at_least_one_names_the_variable() {
        for bad in ["0", "-1", "two", "1.5", "70000"] {
            let err = threads(bad).unwrap_err();
            assert!(err.contains("JOB_THREADS"), "{bad}: {err}");
            assert!(err.contains("at least 1"), "{bad}: {err}");
        }
    }

    #[test]
    fn each_choice_builds_the_scheduler_it_names_and_runs_tasks_and_timers() {
        use tokio::runtime::RuntimeFlavor;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        for (threads, flavor, workers) in [
            (Threads::One, RuntimeFlavor::CurrentThread, 1),
            (
                Threads::Workers(NonZeroU16::new(3).unwrap()),
                RuntimeFlavor::MultiThread,
                3,
            ),
            (Threads::PerCore, RuntimeFlavor::MultiThread, cores),
        ] {
            let runtime = builder(threads).build().unwrap();
            assert_eq!(runtime.handle().runtime_flavor(), flavor, "{threads:?}");
            assert_eq!(runtime.metrics().num_workers(), workers, "{threads:?}");
            let answer = runtime.block_on(async {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                tokio::spawn(async { 42 }).await.unwrap()
            });
            assert_eq!(answer, 42, "{threads:?}");
        }
    }
}
