//! What the integration tests share outside the test binary: the scan for secrets in what the processes printed,
//! used by the TLS tests and, over the whole suite's logs, by `tests/run.sh` (`scan-logs`).

pub mod scan;
