//! The jetfn function runtime: everything a function binary needs besides its handler.
//!
//! A function calls [`telemetry::init`], builds a [`Runtime`], and [`Runtime::serve`]s one handler:
//! `async fn(Job<T>) -> Result<(), JobError>`; a process with several consumers adds each with
//! [`Runtime::consume`] (or [`Runtime::consume_raw`]) and [`Runtime::run`]s them on one connection. The runtime
//! binds the durable consumers defined in `infra/`, validates each event, runs the handler under the consumer's
//! `max_ack_pending`, and maps its outcome to an ack, a delayed NAK from the consumer's backoff list, or a
//! dead-letter record followed by TERM. Handlers never ack, NAK or TERM themselves: only `settle` does.
#![warn(missing_docs)]

mod batch;
mod breaker;
pub mod config;
mod connect;
mod consume;
pub mod dlq;
mod error;
mod fault;
pub mod health;
pub mod heartbeat;
mod job;
mod json_fields;
mod lanes;
mod ledger;
mod log_fields;
mod metrics;
pub mod nats_context;
pub mod nats_url;
mod outbox;
mod policy;
mod progress;
mod ratelimit;
mod raw;
mod runtime;
mod settle;
mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod threads;
mod typed;

pub use batch::{DeadItem, DeadItems};
pub use breaker::Probe;
pub use connect::{connect, connect_once, connect_options};
pub use error::{Disposition, JobError};
pub use job::Job;
pub use ledger::window as ledger_window;
pub use ledger::{Effect, Ledger};
/// Functions that emit events publish as producers do; re-exported so a handler needs one import.
pub use publish::{PublishError, Published, Publisher};
pub use ratelimit::{Limit, RateLimiter};
pub use raw::{RawConsumer, RawJob};
pub use runtime::Runtime;
pub use settle::Outcome;
pub use shutdown::shutdown_signal;
pub use threads::Threads;
