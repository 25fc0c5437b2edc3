//! Payload types, one per event type. Each is the `data` of a CloudEvent and the source of its JSON Schema.
//!
//! Consumers are tolerant readers: unknown fields are ignored, so producers may add fields before consumers are
//! redeployed. Renaming or removing a field needs a new event type.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Event, Invalid};

/// A language the templates are written in. A missing locale means English.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Locale {
    /// English.
    #[default]
    En,
    /// Vietnamese.
    Vi,
}

impl Locale {
    /// The BCP 47 tag, as used in template paths and `Content-Language`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::Vi => "vi",
        }
    }
}

/// A user has just created an account: send them the welcome email.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "UserRegistered", example = UserRegistered::example())]
pub struct UserRegistered {
    /// The producer's id of the user; part of the idempotency key.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\r\n]*$"))]
    pub user_id: String,
    /// Where the welcome email goes.
    #[schemars(email, length(min = 3, max = 254))]
    pub email: String,
    /// The name the email greets; plain text, escaped in HTML.
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub name: String,
    /// The language of the email; English when absent.
    #[serde(default)]
    pub locale: Locale,
}

impl UserRegistered {
    /// The example the catalog and the README show.
    pub fn example() -> Self {
        Self {
            user_id: "u-1001".to_owned(),
            email: "ada@example.com".to_owned(),
            name: "Ada Lovelace".to_owned(),
            locale: Locale::En,
        }
    }
}

impl Event for UserRegistered {
    const TYPE: &'static str = "users.registered";

    fn validate(&self) -> Result<(), Invalid> {
        // The schema's `format: email` accepts what RFC 5321 allows; SMTP headers allow less.
        let mut invalid = Invalid::default();
        if self
            .email
            .contains(['\r', '\n', '\0', ' ', '<', '>', ',', ';'])
        {
            invalid.push(
                "/data/email",
                "must be a bare address without spaces, brackets or separators",
            );
        }
        invalid.into_result()
    }
}
