//! The driver of the workspace's fuzz targets (`fuzz_*` tests): random inputs from a proptest strategy, shrunk to
//! the smallest failing one, on stable Rust. One driver, so every target reads the same budget variables.

use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Runs `test` on inputs from `strategy` until `JETFN_FUZZ_CASES` executions (default 300, so a plain `cargo test`
/// stays quick) or `JETFN_FUZZ_SECS` seconds, whichever comes first; a panic or failure is shrunk by proptest and
/// reported with the smallest input found. Prints the executions run.
///
/// # Panics
/// On the first input `test` fails or panics on, naming the target and the shrunk input.
pub fn run<S: Strategy>(
    name: &str,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let number = |var: &str| std::env::var(var).ok().and_then(|v| v.parse::<u64>().ok());
    let cases = number("JETFN_FUZZ_CASES").unwrap_or(300);
    let deadline = number("JETFN_FUZZ_SECS").map(|secs| Instant::now() + Duration::from_secs(secs));
    let mut executed = 0u64;
    while executed < cases && deadline.is_none_or(|deadline| Instant::now() < deadline) {
        let chunk = (cases - executed).min(500);
        let mut runner = TestRunner::new(Config {
            cases: u32::try_from(chunk).unwrap_or(500),
            failure_persistence: None,
            ..Config::default()
        });
        if let Err(failure) = runner.run(&strategy, &test) {
            panic!("fuzz {name}: a crash after {executed} executions: {failure}");
        }
        executed += chunk;
    }
    println!("fuzz {name}: {executed} executions, 0 crashes");
}
