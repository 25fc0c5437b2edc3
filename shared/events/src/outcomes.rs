//! Outcome events: what a function publishes after its effect, so other services react without polling (seed
//! 001's delivery confirmation and job callbacks). Exactly one per source event and function: the id derives from
//! the source event's (see [`outcome_id`]) and the runtime publishes it through the ledger.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Event, Invalid};

/// An email a function sent: the SMTP server accepted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "EmailSent", example = EmailSent::example())]
#[schemars(extend("additionalProperties" = true))]
pub struct EmailSent {
    /// The id of the event the email answered.
    #[schemars(length(min = 1, max = 300))]
    pub source_id: String,
    /// That event's type.
    #[schemars(length(min = 1, max = 128))]
    pub source_type: String,
    /// The function that sent it.
    #[schemars(length(min = 1, max = 64))]
    pub function: String,
    /// The email's template (`welcome`, `password-reset`, ...).
    #[schemars(length(min = 1, max = 64))]
    pub template: String,
    /// The recipient, masked (`ab***@example.com`): an outcome is read by services that must not learn addresses.
    #[schemars(
        length(min = 3, max = 320),
        regex(pattern = r"^[^@\s]{0,2}\*\*\*(@[^@\s]+)?$")
    )]
    pub to: String,
    /// The email's `Message-ID` header, derived from the send's idempotency key: the same on a resend, so the
    /// receiving side (or a bounce) can be matched to this event.
    #[schemars(length(min = 1, max = 200))]
    pub message_id: String,
}

/// Why an event was dead-lettered, as the dead-letter record's `Jetfn-Dlq-Kind` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The event failed validation (or could not be decrypted).
    Invalid,
    /// No attempt could succeed (a 5xx reply, a missing key).
    Permanent,
    /// Every delivery failed.
    Exhausted,
    /// No delivery was answered (a crash, a hang).
    NoAnswer,
}

/// An email a function could not send: its event was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "EmailFailed", example = EmailFailed::example())]
#[schemars(extend("additionalProperties" = true))]
pub struct EmailFailed {
    /// The id of the dead-lettered event.
    #[schemars(length(min = 1, max = 300))]
    pub source_id: String,
    /// That event's type.
    #[schemars(length(min = 1, max = 128))]
    pub source_type: String,
    /// The function that dead-lettered it.
    #[schemars(length(min = 1, max = 64))]
    pub function: String,
    /// The email's template.
    #[schemars(length(min = 1, max = 64))]
    pub template: String,
    /// The recipient, masked.
    #[schemars(
        length(min = 3, max = 320),
        regex(pattern = r"^[^@\s]{0,2}\*\*\*(@[^@\s]+)?$")
    )]
    pub to: String,
    /// Why (the reason's text stays in the dead-letter record, for operators).
    pub kind: FailureKind,
}

/// The id of the outcome `name` of `function` for the source event `source_id`: the same on every redelivery,
/// replica and replay, so the stream's duplicate window and the ledger each keep one. `name` may hold an address
/// (one outcome per recipient), so it is hashed with the source id (a v5 UUID), never shown.
pub fn outcome_id(function: &str, source_id: &str, name: &str) -> String {
    let digest = uuid::Uuid::new_v5(
        &OUTCOME_NAMESPACE,
        format!("{source_id}\n{name}").as_bytes(),
    );
    format!("{function}.{}", digest.simple())
}

/// Namespace of outcome ids (a v5 UUID of itself under the URL namespace, fixed forever).
const OUTCOME_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6a0f_1c53_8a3e_5b7c_9d21_4e6f_0a8b_3c5d);

fn masked(to: &str) -> Result<(), Invalid> {
    let local = to.split('@').next().unwrap_or_default();
    if local.ends_with("***") && local.chars().count() <= 5 {
        Ok(())
    } else {
        Err(Invalid::new(
            "/data/to",
            "must be a masked address (ab***@example.com)",
        ))
    }
}

impl EmailSent {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            source_id: "users.registered:u-1001".to_owned(),
            source_type: "users.registered".to_owned(),
            function: "welcome".to_owned(),
            template: "welcome".to_owned(),
            to: "ad***@example.com".to_owned(),
            message_id: "<3f2b8c1e9a6d4f0b8e7c5a2d1b0c9e8f@jetfn>".to_owned(),
        }
    }
}

impl EmailFailed {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            source_id: "password-reset:u-1001:1764324000".to_owned(),
            source_type: "users.password_reset_requested".to_owned(),
            function: "password-reset".to_owned(),
            template: "password-reset".to_owned(),
            to: "ad***@example.com".to_owned(),
            kind: FailureKind::Permanent,
        }
    }
}

impl Event for EmailSent {
    const TYPE: &'static str = "email.sent";

    fn validate(&self) -> Result<(), Invalid> {
        masked(&self.to)
    }
}

impl Event for EmailFailed {
    const TYPE: &'static str = "email.failed";

    fn validate(&self) -> Result<(), Invalid> {
        masked(&self.to)
    }
}

impl FailureKind {
    /// The kind named as the dead-letter record's `Jetfn-Dlq-Kind` names it; `None` for a name it does not know.
    pub fn from_dlq_kind(kind: &str) -> Option<Self> {
        match kind {
            "invalid" => Some(Self::Invalid),
            "permanent" => Some(Self::Permanent),
            "exhausted" => Some(Self::Exhausted),
            "no-answer" => Some(Self::NoAnswer),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_in_clear_is_refused() {
        let mut sent = EmailSent::example();
        assert!(sent.validate().is_ok());
        sent.to = "ada@example.com".to_owned();
        assert!(sent.validate().is_err());
        sent.to = crate::pii::mask_email("ada.lovelace@example.com");
        assert!(sent.validate().is_ok(), "{}", sent.to);
    }
}
