//! Fault-injection hooks for the crash tests. They exist only in a build with the `fault-injection` feature
//! (`tests/run.sh` builds the binaries the tests spawn that way); a production build refuses the variables instead
//! of ignoring them, so a test run against the wrong build fails loudly rather than passing for the wrong reason.

/// `JOB_TEST_DELAY_BEFORE_ACK_MS`: wait this long after the handler succeeded and before acking.
pub(crate) const DELAY_BEFORE_ACK: &str = "JOB_TEST_DELAY_BEFORE_ACK_MS";

/// `JOB_TEST_CLOCK_SKEW_MS`: this process's wall clock reads this many milliseconds ahead (negative: behind), as
/// on a host whose clock drifted; the ledger's lease must not care.
pub(crate) const CLOCK_SKEW: &str = "JOB_TEST_CLOCK_SKEW_MS";

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
        #[cfg(feature = "fault-injection")]
        {
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
            let Some(name) = delay.map(|_| DELAY_BEFORE_ACK).or(skew.map(|_| CLOCK_SKEW)) else {
                return Ok(Self::default());
            };
            Err(anyhow::anyhow!(
                "{name} is a fault-injection hook for the tests, and this binary was built without \
                 the `fault-injection` feature (build with `--features runtime/fault-injection`); unset it"
            ))
        }
    }
}
