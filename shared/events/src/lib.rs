//! jetfn's event contract, shared by every publisher and every function.
//!
//! It holds the CloudEvents 1.0 envelope, the catalog of event types (subject, schema, consumer), the payload
//! types, and the validation that both ends run. It does no I/O and knows nothing of NATS or tokio, so a
//! producer in another service can depend on it alone.
#![warn(missing_docs)]

mod accounts;
pub mod asyncapi;
pub mod batches;
mod catalog;
mod commerce;
mod contact;
mod envelope;
pub mod hex;
mod messaging;
mod outcomes;
mod payloads;
pub mod pii;
mod priority;
pub mod progress;
mod rules;
pub mod services;
mod subscriptions;
mod tree;
mod validate;

pub use accounts::{EmailVerificationRequested, PasswordResetRequested};
pub use asyncapi::{ASYNCAPI_JSON, asyncapi};
pub use batches::{BATCH_BUCKET, BatchCompleted, BatchRecord, BatchState};
pub use catalog::{
    CATALOG, EventKind, SUBJECT_PREFIX, catalog_markdown, catalog_markdown_of, kind_by_type,
    schema_for, subject_for,
};
pub use commerce::{
    Address, Currency, Customer, Item, MAX_AMOUNT, OrderPlaced, OrderShipped, OrderStatus,
    OrderStatusChanged,
};
pub use contact::ContactSubmitted;
pub use envelope::{
    CloudEvent, DATACONTENTTYPE_JSON, DATACONTENTTYPE_PATTERN, EXTENSION_NAME_PATTERN, SPECVERSION,
};
pub use messaging::{
    CleanupCompleted, CleanupRequested, MAX_RETENTION_SECS, MessageCreated, MessageDeleted,
    MessageUpdated,
};
pub use outcomes::{EmailFailed, EmailSent, FailureKind, outcome_id};
pub use payloads::{Locale, UserRegistered};
pub use priority::{Priority, UnknownPriority};
pub use progress::{PROGRESS_BUCKET, Progress, progress_key};
pub use subscriptions::{
    SubscriptionCancelled, SubscriptionCreated, SubscriptionStatus, SubscriptionStatusChanged,
    instant_key,
};
pub use validate::{FieldError, Invalid, MAX_EVENT_BYTES, Validator, check_size};

/// A payload type that travels as the `data` of a CloudEvent.
///
/// The JSON Schema derived from the type is the contract for publishers in other languages; `validate` holds the
/// rules a schema cannot express (for example an expiry that must lie in the future).
pub trait Event:
    serde::Serialize + serde::de::DeserializeOwned + schemars::JsonSchema + Send + 'static
{
    /// The CloudEvents `type`, which also names the subject (`events.<type>`).
    const TYPE: &'static str;

    /// The fields a publisher with a keyring seals (encrypts) and only the consuming function opens, as JSON
    /// pointers into the envelope (`/data/token`): secrets and private text that must not sit readable in the
    /// stream, the DLQ or a replay. Each must be a string field of the schema (a catalog test checks).
    const SENSITIVE: &'static [&'static str] = &[];

    /// Checks the rules the schema cannot express. An error here is permanent: the event is never retried.
    ///
    /// # Errors
    /// Returns the offending fields, each with its reason.
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }

    /// Rules that hold when the event is published but may stop holding while it waits (an expiry in the
    /// future). Only publishers check them; a function decides itself what a late event means.
    ///
    /// # Errors
    /// Returns the offending fields, each with its reason.
    fn validate_publish(&self) -> Result<(), Invalid> {
        Ok(())
    }
}
