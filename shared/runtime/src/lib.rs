//! The jetfn function runtime: everything a function binary needs besides its handler.
//!
//! A function calls [`telemetry::init`], builds a [`Runtime`], and [`Runtime::serve`]s one handler:
//! `async fn(Job<T>) -> Result<(), JobError>`; a process with several consumers adds each with
//! [`Runtime::consume`] (or [`Runtime::consume_raw`]) and [`Runtime::run`]s them on one connection. The runtime
//! binds the durable consumers defined in `infra/`, validates each event, runs the handler under the consumer's
//! `max_ack_pending`, and maps its outcome to an ack, a delayed NAK from the consumer's backoff list, or a
//! dead-letter record followed by TERM. Handlers never ack, NAK or TERM themselves: only `settle` does.
#![warn(missing_docs)]

mod breaker;
pub mod config;
mod connect;
mod consume;
pub mod dlq;
mod error;
mod fault;
pub mod health;
mod job;
mod ledger;
mod metrics;
pub mod nats_url;
mod policy;
mod publisher;
mod ratelimit;
mod raw;
mod runtime;
mod settle;
mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
mod typed;

pub use breaker::Probe;
pub use connect::connect;
pub use error::{Disposition, JobError};
pub use job::Job;
pub use ledger::{Effect, Ledger};
pub use publisher::{PublishError, Published, Publisher};
pub use ratelimit::RateLimiter;
pub use raw::{RawConsumer, RawJob};
pub use runtime::Runtime;
pub use settle::Outcome;
pub use shutdown::shutdown_signal;

/// Every binary that links the runtime (the functions, the CLI, the bench) allocates with mimalloc: the
/// consume path allocates for each event (its parsed tree, headers, span fields), and glibc's malloc and free
/// were a fifth of the runtime's CPU per event in the profile of tests/bench/ANALYSIS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
