//! Fault-injection hooks for the crash tests. They exist only in a build with the `fault-injection` feature
//! (`tests/run.sh` builds the binaries the tests spawn that way); a production build refuses the variable instead
//! of ignoring it, so a test run against the wrong build fails loudly rather than passing for the wrong reason.

/// `JOB_TEST_DELAY_BEFORE_ACK_MS`: wait this long after the handler succeeded and before acking.
pub(crate) const DELAY_BEFORE_ACK: &str = "JOB_TEST_DELAY_BEFORE_ACK_MS";

/// The hooks set in the environment.
#[derive(Debug, Clone, Default)]
pub(crate) struct Faults {
    #[cfg(feature = "fault-injection")]
    pub(crate) delay_before_ack: std::time::Duration,
}

impl Faults {
    /// Reads the hooks.
    ///
    /// # Errors
    /// A value that is not a whole number of milliseconds; without the feature, any value at all.
    pub(crate) fn from_env() -> anyhow::Result<Self> {
        let Some(value) = std::env::var_os(DELAY_BEFORE_ACK) else {
            return Ok(Self::default());
        };
        #[cfg(feature = "fault-injection")]
        {
            let ms: u64 = value.to_str().and_then(|v| v.parse().ok()).ok_or_else(|| {
                anyhow::anyhow!(
                    "{DELAY_BEFORE_ACK}: expected a whole number of milliseconds, got {value:?}"
                )
            })?;
            Ok(Self {
                delay_before_ack: std::time::Duration::from_millis(ms),
            })
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = value;
            Err(anyhow::anyhow!(
                "{DELAY_BEFORE_ACK} is a fault-injection hook for the tests, and this binary was built without \
                 the `fault-injection` feature (build with `--features runtime/fault-injection`); unset it"
            ))
        }
    }
}
