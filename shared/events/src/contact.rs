//! The contact form.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Event, Invalid, Locale, rules};

/// Someone submitted the contact form: support is notified (the sender in Reply-To, never in From), and the
/// sender optionally gets an acknowledgement.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "ContactSubmitted", example = ContactSubmitted::example())]
#[serde(deny_unknown_fields)]
pub struct ContactSubmitted {
    /// The sender's name; it goes into a header, so no line breaks.
    #[schemars(length(min = 1, max = 100), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub name: String,
    /// The sender's address: Reply-To of the notification, recipient of the acknowledgement. Rate-limited.
    #[schemars(extend("format" = "idn-email"), length(min = 3, max = 254))]
    pub email: String,
    /// The subject line; it goes into a header, so no line breaks.
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub subject: String,
    /// The message, plain text.
    #[schemars(length(min = 1, max = 5000))]
    pub message: String,
    /// Whether to email the sender an acknowledgement.
    #[serde(default)]
    pub send_acknowledgement: bool,
    /// When the form was submitted (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub submitted_at: String,
    /// The sender's language.
    #[serde(default)]
    pub locale: Locale,
}

impl fmt::Debug for ContactSubmitted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContactSubmitted")
            .field("email", &crate::pii::Masked(&self.email))
            .field("message_len", &self.message.len())
            .finish_non_exhaustive()
    }
}

impl ContactSubmitted {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            name: "Grace Hopper".to_owned(),
            email: "grace@example.com".to_owned(),
            subject: "Bulk order".to_owned(),
            message: "Hello,\ndo you offer discounts for orders of 50 cups or more?\nGrace"
                .to_owned(),
            send_acknowledgement: true,
            submitted_at: "2026-11-25T10:00:00Z".to_owned(),
            locale: Locale::En,
        }
    }
}

impl Event for ContactSubmitted {
    const TYPE: &'static str = "contact.submitted";
    const SENSITIVE: &'static [&'static str] = &["/data/message"];

    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::bare_address(&mut invalid, "/data/email", &self.email);
        rules::timestamp(&mut invalid, "/data/submitted_at", &self.submitted_at);
        if self.message.contains('\0') {
            invalid.push("/data/message", "must not contain NUL characters");
        }
        invalid.into_result()
    }

    fn validate_publish(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::not_in_future(&mut invalid, "/data/submitted_at", &self.submitted_at);
        invalid.into_result()
    }
}
