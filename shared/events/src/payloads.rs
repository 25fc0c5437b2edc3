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
#[serde(deny_unknown_fields)]
pub struct UserRegistered {
    /// The producer's id of the user; part of the idempotency key.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\r\n]*$"))]
    pub user_id: String,
    /// Where the welcome email goes.
    #[schemars(extend("format" = "idn-email"), length(min = 3, max = 254))]
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
        // The schema's `format: idn-email` accepts what RFC 6531 allows; SMTP headers allow less.
        let mut invalid = Invalid::default();
        if crate::rules::has_any(&self.email, b"\r\n\0 <>,;") {
            invalid.push(
                "/data/email",
                "must be a bare address without spaces, brackets or separators",
            );
        }
        invalid.into_result()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{UserRegistered, Validator};

    fn registered(email: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "specversion": "1.0", "id": "evt-1", "source": "/tests", "type": "users.registered",
            "data": {"user_id": "u1", "email": email, "name": "Ngọc"}
        }))
        .expect("json")
    }

    /// Issue 14, item 11: `format: email` refused `ngọc@example.vn`, so the mailer's SMTPUTF8 path could not be
    /// reached through an event. RFC 6531 allows UTF-8 in the local part and the domain.
    #[test]
    fn internationalised_addresses_are_accepted_and_malformed_ones_still_refused() {
        let validator = Validator::new();
        for address in [
            "ngọc@example.vn",
            "ngọc.anh@bücher.example",
            "用户@例子.广告",
            "δοκιμή@παράδειγμα.δοκιμή",
            "ada@example.com",
        ] {
            let event = validator
                .decode::<UserRegistered>(&registered(address))
                .unwrap_or_else(|invalid| panic!("{address}: {invalid}"));
            assert_eq!(event.data.email, address);
        }
        for address in [
            "ngọc",
            "ngọc@",
            "@example.vn",
            "ngọc@@example.vn",
            "ngọc@exa mple.vn",
            "ngọc@-example.vn",
        ] {
            let invalid = validator
                .decode::<UserRegistered>(&registered(address))
                .expect_err(address);
            assert_eq!(
                invalid.errors[0].field, "/data/email",
                "{address}: {invalid}"
            );
            assert!(!invalid.to_string().contains(address), "{invalid}");
        }
        // The masked form stays readable and never shows more than two characters of the local part.
        assert_eq!(
            crate::pii::mask_email("ngọc@example.vn"),
            "ng***@example.vn"
        );
        assert_eq!(
            crate::pii::mask_email("用户名@例子.广告"),
            "用户***@例子.广告"
        );
    }
}
