//! The operator's actions on a running jetfn system, as a library.
//!
//! The `jetfn` command line is a thin layer over these functions (parse the flags, call, print), so a web console
//! calls exactly the same code and gets the same structured results (every type here is `Serialize`, which is
//! what `--json` prints). Nothing here prints or reads the environment: the caller connects (through
//! `runtime::connect_once`) and says who is acting, so the same code serves a person at a terminal and a signed-in
//! console user.
//!
//! Every change (pause, resume, dead-letter replay and purge, schedules, provisioning) is recorded in the audit
//! stream by the caller through [`audit::Auditor`]; reads record nothing.

pub mod audit;
pub mod dlq;
pub mod event;
pub mod functions;
pub mod infra;
pub mod ordered;
pub mod pause;
pub mod replicas;
pub mod schedules;
pub mod status;

/// A time as RFC 3339, as every listing shows it (seconds, UTC).
pub fn rfc3339(at: time::OffsetDateTime) -> String {
    let at = at
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(at);
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}
