//! Fault-injection hooks for the crash tests. They exist only in a build with the `fault-injection` feature
//! (`tests/run.sh` builds the binaries the tests spawn that way); a production build refuses the variables instead
//! of ignoring them, so a test run against the wrong build fails loudly rather than passing for the wrong reason.

/// `JOB_TEST_DELAY_BEFORE_ACK_MS`: wait this long after the handler succeeded and before acking.
pub(crate) const DELAY_BEFORE_ACK: &str = "JOB_TEST_DELAY_BEFORE_ACK_MS";

/// `JOB_TEST_CLOCK_SKEW_MS`: this process's wall clock reads this many milliseconds ahead (negative: behind), as
/// on a host whose clock drifted; the ledger's lease must not care.
pub(crate) const CLOCK_SKEW: &str = "JOB_TEST_CLOCK_SKEW_MS";

/// `JOB_TEST_SLOW_JOB`: `<steps>x<ms>`: before its handler runs, every job reports progress `steps` times, `ms`
/// apart, through `job.progress`, outside the runtime's own progress timer: a long job that only its own
/// progress reports keep alive.
pub(crate) const SLOW_JOB: &str = "JOB_TEST_SLOW_JOB";

/// `JOB_TEST_DISK_VERDICT`: `synced` or `unsynced`: the ledger's start-up probe of the disk decides this instead
/// of what it measured, as a start that fell in a slow moment of the server did; the checks while the function
/// runs must put it right.
pub(crate) const DISK_VERDICT: &str = "JOB_TEST_DISK_VERDICT";

/// The disk-verdict hook: `Some(true)` for `synced`.
#[cfg(feature = "fault-injection")]
pub(crate) fn disk_verdict() -> Option<bool> {
    parse_disk_verdict(&std::env::var(DISK_VERDICT).ok()?)
}

#[cfg(feature = "fault-injection")]
fn parse_disk_verdict(value: &str) -> Option<bool> {
    match value {
        "synced" => Some(true),
        "unsynced" => Some(false),
        _ => None,
    }
}

/// The slow-job hook's steps and gap, read once.
#[cfg(feature = "fault-injection")]
pub(crate) fn slow_job() -> Option<(u64, std::time::Duration)> {
    static SLOW: std::sync::OnceLock<Option<(u64, std::time::Duration)>> =
        std::sync::OnceLock::new();
    *SLOW.get_or_init(|| {
        std::env::var(SLOW_JOB)
            .ok()
            .and_then(|v| parse_slow_job(&v))
    })
}

#[cfg(feature = "fault-injection")]
fn parse_slow_job(value: &str) -> Option<(u64, std::time::Duration)> {
    let (steps, ms) = value.split_once('x')?;
    Some((
        steps.parse().ok()?,
        std::time::Duration::from_millis(ms.parse().ok()?),
    ))
}

/// The hooks set in the environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Faults {
    #[cfg(feature = "fault-injection")]
    pub(crate) delay_before_ack: std::time::Duration,
}

impl Faults {
    /// Reads the hooks; the clock skew applies to the whole process at once.
    ///
    /// # Errors
    /// A value that is not a whole number of milliseconds; without the feature, any value at all.
    pub(crate) fn from_env() -> anyhow::Result<Self> {
        let delay = std::env::var_os(DELAY_BEFORE_ACK);
        let skew = std::env::var_os(CLOCK_SKEW);
        let slow = std::env::var_os(SLOW_JOB);
        let verdict = std::env::var_os(DISK_VERDICT);
        #[cfg(feature = "fault-injection")]
        {
            if let Some(verdict) = verdict
                && verdict.to_str().and_then(parse_disk_verdict).is_none()
            {
                anyhow::bail!("{DISK_VERDICT}: expected synced or unsynced, got {verdict:?}");
            }
            if let Some(slow) = slow
                && slow.to_str().and_then(parse_slow_job).is_none()
            {
                anyhow::bail!("{SLOW_JOB}: expected <steps>x<milliseconds> (8x200), got {slow:?}");
            }
            let parse = |name: &str, value: &std::ffi::OsStr| {
                value
                    .to_str()
                    .and_then(|v| v.parse::<i64>().ok())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "{name}: expected a whole number of milliseconds, got {value:?}"
                        )
                    })
            };
            if let Some(skew) = skew {
                crate::ledger::skew_clock(parse(CLOCK_SKEW, &skew)?);
            }
            let Some(delay) = delay else {
                return Ok(Self::default());
            };
            let ms = u64::try_from(parse(DELAY_BEFORE_ACK, &delay)?).map_err(|_| {
                anyhow::anyhow!(
                    "{DELAY_BEFORE_ACK}: expected a whole number of milliseconds, got {delay:?}"
                )
            })?;
            Ok(Self {
                delay_before_ack: std::time::Duration::from_millis(ms),
            })
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let Some(name) = delay
                .map(|_| DELAY_BEFORE_ACK)
                .or(skew.map(|_| CLOCK_SKEW))
                .or(slow.map(|_| SLOW_JOB))
                .or(verdict.map(|_| DISK_VERDICT))
            else {
                return Ok(Self::default());
            };
            Err(anyhow::anyhow!(
                "{name} is a fault-injection hook for the tests, and this binary was built without \
                 the `fault-injection` feature (build with `--features runtime/fault-injection`); unset it"
            ))
        }
    }
}

/// `JOB_TEST_DELAY_BEFORE_DONE_MS`: wait this long after a ledger effect succeeded (the SMTP server said 250)
/// and before the ledger records it "done": widens the window in which a crash makes the effect run twice.
pub(crate) const DELAY_BEFORE_DONE: &str = "JOB_TEST_DELAY_BEFORE_DONE_MS";
/// `JOB_TEST_DELAY_BEFORE_OUTCOME_RECORD_MS`: wait this long after an outcome event's publish was acked and before
/// the ledger records it (the mark on its effect's key, or the outcome's own `done`): the crash point where a
/// redelivery publishes the outcome again and the stream's duplicate window must drop the copy.
pub(crate) const DELAY_BEFORE_OUTCOME_RECORD: &str = "JOB_TEST_DELAY_BEFORE_OUTCOME_RECORD_MS";
/// `JOB_TEST_EFFECT_MARKS`: a file to which every ledger effect appends `start <key>` once its claim is taken
/// (before the effect runs) and `end <key>` once "done" is recorded or the attempt gave up. A process killed with
/// a `start` and no `end` for a key was killed inside that key's window: only those keys may be sent twice.
pub(crate) const EFFECT_MARKS: &str = "JOB_TEST_EFFECT_MARKS";

/// `JOB_TEST_DELAY_BEFORE_DEAD_LETTER_MS`: wait this long before writing a dead-letter record, as a slow or
/// stalled server would make the record's publish: the message must stay with this attempt meanwhile.
pub(crate) const DELAY_BEFORE_DEAD_LETTER: &str = "JOB_TEST_DELAY_BEFORE_DEAD_LETTER_MS";

/// Waits [`DELAY_BEFORE_DEAD_LETTER`] before a dead-letter record is written.
pub(crate) async fn before_dead_letter() {
    #[cfg(feature = "fault-injection")]
    {
        static DELAY: std::sync::OnceLock<std::time::Duration> = std::sync::OnceLock::new();
        let delay = *DELAY.get_or_init(|| millis(DELAY_BEFORE_DEAD_LETTER).unwrap_or_default());
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Reads the ledger's hooks, kept process-wide since the ledger is built apart from the runtime.
///
/// # Errors
/// A value that is not a whole number of milliseconds, a marks file that cannot be opened; without the
/// feature, any value at all.
pub(crate) fn ledger_hooks_from_env() -> anyhow::Result<()> {
    #[cfg(feature = "fault-injection")]
    {
        // Checked here, so a bad value stops the start instead of being read as no delay later.
        millis(DELAY_BEFORE_DEAD_LETTER)?;
        ledger::init(
            millis(DELAY_BEFORE_DONE)?,
            millis(DELAY_BEFORE_OUTCOME_RECORD)?,
            std::env::var_os(EFFECT_MARKS),
        )
    }
    #[cfg(not(feature = "fault-injection"))]
    {
        for name in [
            DELAY_BEFORE_DONE,
            DELAY_BEFORE_OUTCOME_RECORD,
            EFFECT_MARKS,
            DELAY_BEFORE_DEAD_LETTER,
        ] {
            if std::env::var_os(name).is_some() {
                return Err(anyhow::anyhow!(
                    "{name} is a fault-injection hook for the tests, and this binary was built without the \
                     `fault-injection` feature (build with `--features runtime/fault-injection`); unset it"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(feature = "fault-injection")]
fn millis(name: &str) -> anyhow::Result<std::time::Duration> {
    let Some(value) = std::env::var_os(name) else {
        return Ok(std::time::Duration::ZERO);
    };
    let ms: u64 = value.to_str().and_then(|v| v.parse().ok()).ok_or_else(|| {
        anyhow::anyhow!("{name}: expected a whole number of milliseconds, got {value:?}")
    })?;
    Ok(std::time::Duration::from_millis(ms))
}

/// Marks the window of one ledger effect (claim taken .. "done" recorded) for the churn test; dropping it
/// writes the `end` mark. A no-op unless [`EFFECT_MARKS`] is set in a fault-injection build.
#[must_use]
pub(crate) struct EffectWindow {
    #[cfg(feature = "fault-injection")]
    key: Option<String>,
}

/// Opens the window of the effect keyed `key` (see [`EFFECT_MARKS`]).
#[cfg_attr(not(feature = "fault-injection"), allow(clippy::missing_const_for_fn))]
pub(crate) fn effect_window(_key: &str) -> EffectWindow {
    #[cfg(feature = "fault-injection")]
    {
        let key = ledger::mark("start", _key).then(|| _key.to_owned());
        EffectWindow { key }
    }
    #[cfg(not(feature = "fault-injection"))]
    EffectWindow {}
}

impl Drop for EffectWindow {
    fn drop(&mut self) {
        #[cfg(feature = "fault-injection")]
        if let Some(key) = &self.key {
            ledger::mark("end", key);
        }
    }
}

/// Waits [`DELAY_BEFORE_DONE`] between a successful effect and recording it "done".
pub(crate) async fn before_done() {
    #[cfg(feature = "fault-injection")]
    {
        let delay = ledger::HOOKS
            .get()
            .map_or(std::time::Duration::ZERO, |hooks| hooks.delay_before_done);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

/// Waits [`DELAY_BEFORE_OUTCOME_RECORD`] between an outcome's acked publish and the ledger's record of it.
pub(crate) async fn before_outcome_record() {
    #[cfg(feature = "fault-injection")]
    {
        let delay = ledger::HOOKS
            .get()
            .map_or(std::time::Duration::ZERO, |hooks| {
                hooks.delay_before_outcome_record
            });
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
    }
}

#[cfg(feature = "fault-injection")]
mod ledger {
    use std::io::Write as _;
    use std::sync::{Mutex, OnceLock};
    use std::time::Duration;

    use anyhow::Context as _;

    pub(super) struct Hooks {
        pub(super) delay_before_done: Duration,
        pub(super) delay_before_outcome_record: Duration,
        marks: Option<Mutex<std::fs::File>>,
    }

    pub(super) static HOOKS: OnceLock<Hooks> = OnceLock::new();

    pub(super) fn init(
        delay_before_done: Duration,
        delay_before_outcome_record: Duration,
        marks: Option<std::ffi::OsString>,
    ) -> anyhow::Result<()> {
        let marks = marks
            .map(|path| {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("{}: opening {path:?}", super::EFFECT_MARKS))
            })
            .transpose()?
            .map(Mutex::new);
        // One runtime per process; a second one (a test building two) keeps the first's hooks.
        let _ = HOOKS.set(Hooks {
            delay_before_done,
            delay_before_outcome_record,
            marks,
        });
        Ok(())
    }

    /// Appends `<what> <key>`; false if no marks file is set. One `write` per line, so a SIGKILL leaves whole
    /// lines only.
    pub(super) fn mark(what: &str, key: &str) -> bool {
        let Some(file) = HOOKS.get().and_then(|hooks| hooks.marks.as_ref()) else {
            return false;
        };
        let line = format!("{what} {key}\n");
        let mut file = file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(err) = file.write_all(line.as_bytes()) {
            tracing::error!(error = %err, "writing the effect marks file failed");
        }
        true
    }
}
