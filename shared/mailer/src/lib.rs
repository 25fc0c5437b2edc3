//! Email rendering, composition and delivery for jetfn functions.
//!
//! A function builds one [`Templates`] (the shared layouts and its own emails) and one [`Mailer`] at start-up,
//! then per event:
//!
//! ```no_run
//! # async fn run(emails: &[mailer::EmailTemplate]) -> Result<(), Box<dyn std::error::Error>> {
//! use mailer::{Mailer, Templates, compose};
//!
//! let mailer = Mailer::from_env()?;
//! // `emails` is the function's own `mailer::templates!["welcome"]`, from its `templates/<locale>/` folder.
//! let templates = Templates::new(emails)?;
//!
//! let locale = events::Locale::Vi;
//! let rendered = templates.render("welcome", locale, mailer::context! { name => "Ada" })?;
//! let to = "Ada <ada@example.com>".parse()?;
//! let message = compose(mailer.from(), &to, None, &rendered, locale, "user.registered/u-1001")?;
//! match mailer.send(message).await {
//!     Ok(_) => { /* ack */ }
//!     Err(e) if e.is_transient() => { /* nak with a delay */ }
//!     Err(_) => { /* dead-letter, then term */ }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Nothing in this crate logs or displays a full address, a subject, a body or the SMTP password: recipients appear
//! masked (`ab***@example.com`) and SMTP replies are reduced to their codes, because server replies often echo the
//! address.
#![warn(missing_docs)]

mod compose;
mod config;
mod error;
pub mod format;
mod jobs;
mod pool;
mod qp;
pub mod snapshot;
#[cfg(any(test, feature = "testing"))]
mod stub;
mod templates;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod transport;

pub use compose::compose;
pub use config::{ConfigError, MAILER, MailerConfig, SETTINGS, Secret, mailboxes, settings_with};
pub use error::SendError;
pub use jobs::{Email, Refused, job_error, probe, send_once, serve};
#[cfg(any(test, feature = "testing"))]
pub use stub::{Reply, Sent, Stub};
pub use templates::{EmailTemplate, RenderError, Rendered, TemplateError, Templates};
pub use transport::{Delivery, Mailer};

/// Re-exported so function crates can build addresses and messages without their own `lettre` dependency.
pub use lettre::{Address, Message, message::Mailbox};
/// Re-exported so callers build template contexts with the same minijinja version the templates use.
pub use minijinja::value::Serde;
pub use minijinja::{Value, context};
