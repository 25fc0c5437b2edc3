//! The jetfn function runtime: everything a function binary needs besides its handler.
//!
//! A function calls [`telemetry::init`], builds a [`Runtime`], and [`Runtime::serve`]s one handler:
//! `async fn(Job<T>) -> Result<(), JobError>`. The runtime binds the durable consumer defined in `infra/`,
//! validates each event, runs the handler under the consumer's `max_ack_pending`, and maps its outcome to an
//! ack, a delayed NAK from the consumer's backoff list, or a dead-letter record followed by TERM. Handlers never
//! ack, NAK or TERM themselves.
#![warn(missing_docs)]

mod breaker;
pub mod config;
mod connect;
pub mod dlq;
mod error;
pub mod health;
mod ledger;
mod metrics;
mod publisher;
mod ratelimit;
mod shutdown;
pub mod telemetry;
mod worker;

pub use breaker::Probe;
pub use connect::connect;
pub use error::JobError;
pub use ledger::{Effect, Ledger};
pub use publisher::{PublishError, Published, Publisher};
pub use ratelimit::RateLimiter;
pub use shutdown::shutdown_signal;
pub use worker::{Job, Runtime};

/// Every binary that links the runtime (the functions, the CLI, the bench) allocates with mimalloc: the
/// consume path allocates for each event (its parsed tree, headers, span fields), and glibc's malloc and free
/// were a fifth of the runtime's CPU per event in the profile of tests/bench/ANALYSIS.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
