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
pub mod infra;
mod ledger;
mod metrics;
mod ratelimit;
mod shutdown;
pub mod telemetry;
mod worker;

pub use breaker::Probe;
pub use connect::connect;
pub use error::JobError;
pub use ledger::{Effect, Ledger};
/// Functions that emit events publish as producers do; re-exported so a handler needs one import.
pub use publish::{PublishError, Published, Publisher};
pub use ratelimit::RateLimiter;
pub use shutdown::shutdown_signal;
pub use worker::{Job, Runtime};
