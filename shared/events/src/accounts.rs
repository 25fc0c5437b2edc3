//! Account emails with secrets in them: password reset links and verification codes.
//!
//! Their `Debug` hides the secret, so a stray `{:?}` cannot leak it; the dead-letter view masks the fields too.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Event, Invalid, Locale, rules};

/// A user asked to reset their password: email them a link that carries the token.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "PasswordResetRequested", example = PasswordResetRequested::example())]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequested {
    /// The producer's id of the user.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\r\n]*$"))]
    pub user_id: String,
    /// Where the link goes.
    #[schemars(extend("format" = "idn-email"), length(min = 3, max = 254))]
    pub email: String,
    /// The name to greet, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub name: Option<String>,
    /// The single-use reset token, URL-safe; never logged.
    #[schemars(length(min = 32, max = 256), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub token: String,
    /// When the token stops working (RFC 3339); in the future at publish time.
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: String,
    /// The user's language.
    #[serde(default)]
    pub locale: Locale,
}

impl fmt::Debug for PasswordResetRequested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordResetRequested")
            .field("user_id", &self.user_id)
            .field("email", &crate::pii::Masked(&self.email))
            .field("token", &"***")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl PasswordResetRequested {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            user_id: "u-1001".to_owned(),
            email: "ada@example.com".to_owned(),
            name: Some("Ada".to_owned()),
            token: "q3Jm9xV7bT2wY5nK8pL1sD4fG6hR0zXc".to_owned(),
            expires_at: "2026-11-25T11:00:00Z".to_owned(),
            locale: Locale::En,
        }
    }
}

impl Event for PasswordResetRequested {
    const TYPE: &'static str = "users.password_reset_requested";
    const SENSITIVE: &'static [&'static str] = &["/data/token"];

    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::bare_address(&mut invalid, "/data/email", &self.email);
        rules::timestamp(&mut invalid, "/data/expires_at", &self.expires_at);
        invalid.into_result()
    }

    fn validate_publish(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::in_future(&mut invalid, "/data/expires_at", &self.expires_at);
        invalid.into_result()
    }
}

/// A user must confirm their address: email them a 6-digit code.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "EmailVerificationRequested", example = EmailVerificationRequested::example())]
#[serde(deny_unknown_fields)]
pub struct EmailVerificationRequested {
    /// The producer's id of the user.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\r\n]*$"))]
    pub user_id: String,
    /// The address to verify.
    #[schemars(extend("format" = "idn-email"), length(min = 3, max = 254))]
    pub email: String,
    /// The name to greet, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub name: Option<String>,
    /// Six digits; never logged.
    #[schemars(regex(pattern = r"^[0-9]{6}$"))]
    pub code: String,
    /// When the code stops working (RFC 3339); in the future at publish time. An event consumed after it is
    /// dropped, not emailed.
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: String,
    /// `en` or `vi`.
    #[serde(default)]
    pub locale: Locale,
}

impl fmt::Debug for EmailVerificationRequested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailVerificationRequested")
            .field("user_id", &self.user_id)
            .field("email", &crate::pii::Masked(&self.email))
            .field("code", &"***")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl EmailVerificationRequested {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            user_id: "u-1001".to_owned(),
            email: "ada@example.com".to_owned(),
            name: None,
            code: "493027".to_owned(),
            expires_at: "2026-11-25T10:15:00Z".to_owned(),
            locale: Locale::Vi,
        }
    }
}

impl Event for EmailVerificationRequested {
    const TYPE: &'static str = "users.email_verification_requested";
    const SENSITIVE: &'static [&'static str] = &["/data/code"];

    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::bare_address(&mut invalid, "/data/email", &self.email);
        rules::timestamp(&mut invalid, "/data/expires_at", &self.expires_at);
        invalid.into_result()
    }

    fn validate_publish(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        rules::in_future(&mut invalid, "/data/expires_at", &self.expires_at);
        invalid.into_result()
    }
}
