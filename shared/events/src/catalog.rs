//! The event catalog: every event type jetfn knows, its subject, its schema and the functions that consume it.

use serde_json::{Value, json};

use crate::{
    BatchCompleted, CleanupCompleted, CleanupRequested, ContactSubmitted, EmailFailed, EmailSent,
    EmailVerificationRequested, Event, Invalid, MessageCreated, MessageDeleted, MessageUpdated,
    OrderPlaced, OrderShipped, OrderStatusChanged, PasswordResetRequested, SubscriptionCancelled,
    SubscriptionCreated, SubscriptionStatusChanged, UserRegistered,
};

/// Every event subject starts with this token, so one stream (`EVENTS`, subjects `events.>`) holds them all.
pub const SUBJECT_PREFIX: &str = "events";

/// One row of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct EventKind {
    /// The CloudEvents `type`.
    pub ty: &'static str,
    /// The NATS subject events of this type are published on.
    pub subject: &'static str,
    /// What the event means.
    pub description: &'static str,
    /// The functions whose consumers filter on `subject`.
    pub consumers: &'static [&'static str],
    /// The committed JSON Schema file: the contract publishers in other languages validate against.
    pub schema_file: &'static str,
    /// The schema derived from the Rust type; a test keeps `schema_file` equal to it.
    pub derived_schema: fn() -> Value,
    /// A valid `data` for documentation and smoke tests.
    pub example_data: fn() -> Value,
    /// Runs the payload type's own rules on a `data` that passed the schema (with `true`: the publish-time ones too).
    pub check_data: fn(&Value, bool) -> Result<(), Invalid>,
    /// Whether the Rust type's `TYPE` is `ty`; a test checks the catalog rows against their types.
    pub type_matches: fn(&str) -> bool,
    /// The fields sealed end to end ([`Event::SENSITIVE`]), as JSON pointers into the envelope.
    pub sensitive: &'static [&'static str],
}

macro_rules! kind {
    ($payload:ty, $ty:literal, [$($consumer:literal),*], $description:literal) => {
        EventKind {
            ty: $ty,
            subject: concat!("events.", $ty),
            description: $description,
            consumers: &[$($consumer),*],
            schema_file: include_str!(concat!("../schemas/", $ty, ".json")),
            derived_schema: schema_for::<$payload>,
            example_data: || serde_json::to_value(<$payload>::example()).expect("example serializes"),
            check_data: check_data::<$payload>,
            type_matches: |ty| ty == <$payload as Event>::TYPE,
            sensitive: <$payload as Event>::SENSITIVE,
        }
    };
}

/// All event types, in documentation order.
pub static CATALOG: &[EventKind] = &[
    kind!(
        UserRegistered,
        "users.registered",
        ["welcome"],
        "A user created an account; the welcome email goes out."
    ),
    kind!(
        PasswordResetRequested,
        "users.password_reset_requested",
        ["password-reset"],
        "A user asked to reset their password; an email with a reset link (base URL + token) goes out."
    ),
    kind!(
        EmailVerificationRequested,
        "users.email_verification_requested",
        ["email-verification"],
        "A user must confirm their address; an email with a 6-digit code goes out, unless it expired before it was consumed."
    ),
    kind!(
        OrderPlaced,
        "orders.placed",
        ["order-confirmation"],
        "A customer placed an order; the customer's confirmation and a notification to the shop's staff go out."
    ),
    kind!(
        OrderShipped,
        "orders.shipped",
        ["shipping-notification"],
        "An order shipped; the customer gets the carrier and tracking link."
    ),
    kind!(
        OrderStatusChanged,
        "orders.status_changed",
        ["order-status"],
        "An order's status changed; the customer is told, in wording for the new status."
    ),
    kind!(
        SubscriptionCreated,
        "subscription.created",
        ["subscription-notification"],
        "A customer subscribed to a plan; the confirmation (with the trial's end, if any) goes out, once per subscription."
    ),
    kind!(
        SubscriptionCancelled,
        "subscription.cancelled",
        ["subscription-notification"],
        "A subscription was cancelled; the customer is told until when they keep access, once per cancellation."
    ),
    kind!(
        SubscriptionStatusChanged,
        "subscription.status_changed",
        ["subscription-notification"],
        "A subscription's status changed (not a cancellation); the customer is told, in wording for the new status, once per change."
    ),
    kind!(
        ContactSubmitted,
        "contact.submitted",
        ["contact"],
        "The contact form was submitted; support is notified (sender in Reply-To) and the sender optionally acknowledged."
    ),
    kind!(
        MessageCreated,
        "messages.created",
        ["indexing"],
        "A message was written in a conversation; it becomes searchable."
    ),
    kind!(
        MessageUpdated,
        "messages.updated",
        ["indexing"],
        "A message was edited; the index keeps the newest edit (`updated_at`) and ignores older ones."
    ),
    kind!(
        MessageDeleted,
        "messages.deleted",
        ["indexing"],
        "A message was deleted; it leaves the index for good (a late create or edit never brings it back)."
    ),
    kind!(
        CleanupRequested,
        "cleanup.requested",
        ["cleanup"],
        "Time for retention work, usually fired by a schedule NATS holds; absent fields mean the configured retention."
    ),
    kind!(
        CleanupCompleted,
        "cleanup.completed",
        [],
        "A cleanup run finished; how many index entries, dead letters and journal records it removed."
    ),
    kind!(
        EmailSent,
        "email.sent",
        [],
        "An email function's email was accepted by the SMTP server: once per event and email, recipient masked, with the template and Message-ID."
    ),
    kind!(
        EmailFailed,
        "email.failed",
        [],
        "An email function dead-lettered its event: once per event and email, recipient masked, with the reason's kind."
    ),
    kind!(
        BatchCompleted,
        "batch.completed",
        [],
        "A batch's last item was finished: exactly once per batch, with how many items succeeded, failed (dead-lettered) and were cancelled."
    ),
];

/// Deserializes `data` as `T` and runs `T::validate`, plus `T::validate_publish` when publishing.
fn check_data<T: Event>(data: &Value, publishing: bool) -> Result<(), Invalid> {
    let typed: T = serde::Deserialize::deserialize(data)
        .map_err(|err| Invalid::new("/data", crate::validate::describe_json_error(&err)))?;
    typed.validate()?;
    if publishing {
        typed.validate_publish()?;
    }
    Ok(())
}

/// Looks a type up in the catalog.
pub fn kind_by_type(ty: &str) -> Option<&'static EventKind> {
    CATALOG.iter().find(|kind| kind.ty == ty)
}

/// The subject events of type `ty` are published on.
pub fn subject_for(ty: &str) -> String {
    format!("{SUBJECT_PREFIX}.{ty}")
}

pub(crate) fn dataschema_uri(ty: &str) -> String {
    format!("https://schemas.jetfn.dev/events/{ty}.json")
}

/// Derives the JSON Schema of a whole CloudEvent whose `data` is `T`.
///
/// The envelope rules are written here once; the payload rules come from `T`'s derive, so the schema cannot drift
/// from the type a function deserializes.
pub fn schema_for<T: Event>() -> Value {
    let payload = schemars::schema_for!(T);
    let mut payload = payload.to_value();
    let payload_obj = payload
        .as_object_mut()
        .expect("a derived schema is an object");
    payload_obj.remove("$schema");
    let mut defs = match payload_obj.remove("$defs") {
        Some(Value::Object(defs)) => defs,
        _ => serde_json::Map::new(),
    };
    let payload_name = payload_obj
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or("Data")
        .to_owned();
    defs.insert(payload_name.clone(), payload);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": dataschema_uri(T::TYPE),
        "title": T::TYPE,
        "description": format!("A CloudEvents 1.0 event (JSON structured mode) of type `{}`, published on `{}`.", T::TYPE, subject_for(T::TYPE)),
        "type": "object",
        "required": ["specversion", "id", "source", "type", "data"],
        "properties": {
            "specversion": { "const": crate::SPECVERSION },
            "id": { "type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[A-Za-z0-9._:-]+$",
                    "description": "Unique per event; publishers set Nats-Msg-Id to it." },
            "source": { "type": "string", "minLength": 1, "maxLength": 512, "format": "uri-reference" },
            "type": { "const": T::TYPE },
            "time": { "type": "string", "format": "date-time" },
            "datacontenttype": { "type": "string", "pattern": crate::envelope::DATACONTENTTYPE_PATTERN },
            "subject": { "type": "string", "maxLength": 256 },
            "dataschema": { "type": "string", "format": "uri" },
            "data": { "$ref": format!("#/$defs/{payload_name}") }
        },
        // Extension attributes are kept and passed on, but their names follow CloudEvents 1.0: lower-case ASCII
        // letters and digits. Any other name is refused, and the refusal names it.
        "patternProperties": { crate::envelope::EXTENSION_NAME_PATTERN: true },
        "additionalProperties": false,
        "$defs": defs
    })
}

/// The catalog as Markdown: one section per event type with its subject, consumers, payload fields and an
/// example. `shared/events/CATALOG.md` is this text; a test keeps it current.
pub fn catalog_markdown() -> String {
    catalog_markdown_of(CATALOG)
}

/// [`catalog_markdown`] of other rows: `jetfn new` renders the page with the consumer it is adding before the
/// catalog it was built from has that consumer.
pub fn catalog_markdown_of(catalog: &[EventKind]) -> String {
    let mut out = String::from(
        "# Event catalog\n\n<!-- Generated from the Rust types: `cargo run -p events --example write_schemas`. -->\n\n\
         Every event is a CloudEvents 1.0 event in JSON structured mode, published on `events.<type>` with\n\
         `Nats-Msg-Id` set to its `id`. The schema files under `shared/events/schemas/` describe the whole event.\n\n\
         `datacontenttype` is `application/json`, optionally with `; charset=utf-8`. Extension attributes are kept\n\
         and passed on; their names are lower-case ASCII letters and digits (CloudEvents 1.0), any other name is\n\
         refused. Unknown fields in `data` are refused for the events jetfn acts on (a misspelt field would\n\
         otherwise silently mean its default: add a field to the catalog and deploy the consumers before the\n\
         producers send it), and accepted for the `messages.*` events (a messaging platform's own shape, with\n\
         fields the index does not use) and for `cleanup.completed` (an output: its readers must tolerate fields\n\
         added later). Each section says which.\n\n\
         Sensitive fields (a section lists them) are sealed end to end when the publisher has a keyring: the\n\
         stream, the dead-letter stream and any replay hold `jetfn:enc:v1:...` ciphertext in their place and a\n\
         `Jetfn-Key-Id` header, and only the consuming function opens them (README, \"Sensitive fields\"). The\n\
         schemas describe the plaintext: a publisher validates before sealing, a function after opening.\n\n\
         | type | subject | consumed by | schema |\n|---|---|---|---|\n",
    );
    for kind in catalog {
        out.push_str(&format!(
            "| `{}` | `{}` | {} | [`schemas/{}.json`](schemas/{}.json) |\n",
            kind.ty,
            kind.subject,
            if kind.consumers.is_empty() {
                "–".to_owned()
            } else {
                kind.consumers.join(", ")
            },
            kind.ty,
            kind.ty
        ));
    }
    for kind in catalog {
        let schema = (kind.derived_schema)();
        let payload = schema["properties"]["data"]["$ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("#/$defs/"))
            .unwrap_or_default();
        let def = &schema["$defs"][payload];
        let unknown = if def["additionalProperties"] == Value::Bool(false) {
            "refused"
        } else {
            "accepted and ignored"
        };
        out.push_str(&format!(
            "\n## `{}`\n\n{}\n\nUnknown fields in `data`: {unknown}.\n",
            kind.ty, kind.description
        ));
        if !kind.sensitive.is_empty() {
            let fields: Vec<String> = kind.sensitive.iter().map(|f| format!("`{f}`")).collect();
            out.push_str(&format!(
                "\nSensitive, sealed end to end: {}.\n",
                fields.join(", ")
            ));
        }
        out.push_str("\n| field | type | required | description |\n|---|---|---|---|\n");
        let required: Vec<&str> = def["required"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(properties) = def["properties"].as_object() {
            for (name, property) in properties {
                let ty = property["type"]
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| {
                        property["$ref"]
                            .as_str()
                            .map(|r| r.trim_start_matches("#/$defs/").to_owned())
                    })
                    .unwrap_or_else(|| "object".to_owned());
                let format = property["format"]
                    .as_str()
                    .map(|f| format!(" ({f})"))
                    .unwrap_or_default();
                let description = property["description"]
                    .as_str()
                    .unwrap_or_default()
                    .replace('\n', " ");
                out.push_str(&format!(
                    "| `{name}` | {ty}{format} | {} | {description} |\n",
                    if required.contains(&name.as_str()) {
                        "yes"
                    } else {
                        "no"
                    }
                ));
            }
        }
        let example = json!({
            "specversion": "1.0", "id": "01J0000000000000000000000", "source": "/signup-api", "type": kind.ty,
            "time": "2026-11-25T10:00:00Z", "datacontenttype": "application/json", "data": (kind.example_data)()
        });
        out.push_str(&format!(
            "\nExample:\n\n```json\n{}\n```\n",
            serde_json::to_string_pretty(&example).unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_catalog_document_is_current() {
        let committed = include_str!("../CATALOG.md");
        assert!(
            committed == catalog_markdown(),
            "shared/events/CATALOG.md is out of date; run `cargo run -p events --example write_schemas`"
        );
    }

    use super::*;

    /// The committed schema files are the contract other languages read; they must equal what the types derive.
    /// Regenerate them with `cargo run -p events --example write_schemas`.
    #[test]
    fn committed_schemas_match_the_rust_types() {
        for kind in CATALOG {
            let committed: Value = serde_json::from_str(kind.schema_file)
                .unwrap_or_else(|err| panic!("schemas/{}.json is not JSON: {err}", kind.ty));
            assert_eq!(
                committed,
                (kind.derived_schema)(),
                "schemas/{}.json is out of date; run `cargo run -p events --example write_schemas`",
                kind.ty
            );
        }
    }

    /// A sealed field's ciphertext is a string in its place, so each sensitive field must be a string property of
    /// the payload's schema (and a pointer a typo would make silently unsealed must exist).
    #[test]
    fn sensitive_fields_are_string_properties_of_their_schema() {
        let mut any = 0;
        for kind in CATALOG {
            let schema = (kind.derived_schema)();
            let payload = schema["properties"]["data"]["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .expect("a payload definition");
            for field in kind.sensitive {
                let name = field
                    .strip_prefix("/data/")
                    .unwrap_or_else(|| panic!("{}: {field} is not under /data/", kind.ty));
                let property = &schema["$defs"][payload]["properties"][name];
                assert_eq!(property["type"], "string", "{}: {field}", kind.ty);
                any += 1;
            }
        }
        assert!(
            any >= 3,
            "the reset token, the verification code and the contact message are sensitive"
        );
    }

    #[test]
    fn subjects_follow_the_scheme() {
        for kind in CATALOG {
            assert_eq!(kind.subject, subject_for(kind.ty));
            assert!(
                (kind.type_matches)(kind.ty),
                "catalog row {} names another type's TYPE",
                kind.ty
            );
        }
    }

    /// Issue 14: today unknown fields were accepted everywhere by default. Every payload type (and every object
    /// inside one) now says it, one way or the other.
    #[test]
    fn every_payload_object_says_whether_it_takes_unknown_fields() {
        fn walk(ty: &str, path: &str, schema: &Value) {
            if let Some(object) = schema.as_object() {
                if object.contains_key("properties") {
                    assert!(
                        object
                            .get("additionalProperties")
                            .is_some_and(Value::is_boolean),
                        "{ty}: {path} does not say additionalProperties"
                    );
                }
                for (key, value) in object {
                    walk(ty, &format!("{path}/{key}"), value);
                }
            }
        }
        for kind in CATALOG {
            walk(kind.ty, "", &(kind.derived_schema)());
        }
    }

    fn event_with(ty: &str, data: Value, extra: &[(&str, Value)]) -> Vec<u8> {
        let mut event = json!({
            "specversion": "1.0", "id": "evt-1", "source": "/tests", "type": ty,
            "datacontenttype": "application/json", "data": data
        });
        for (name, value) in extra {
            event[*name] = value.clone();
        }
        serde_json::to_vec(&event).expect("json")
    }

    #[test]
    fn a_json_content_type_with_a_utf8_charset_is_accepted_and_others_refused() {
        let validator = crate::Validator::new();
        let data = (kind_by_type("users.registered").unwrap().example_data)();
        for accepted in [
            "application/json",
            "application/json; charset=utf-8",
            "application/json;charset=UTF-8",
            "application/json; charset=\"utf-8\"",
        ] {
            let bytes = event_with(
                "users.registered",
                data.clone(),
                &[("datacontenttype", json!(accepted))],
            );
            validator
                .check(&bytes)
                .unwrap_or_else(|err| panic!("{accepted}: {err}"));
        }
        for refused in [
            "text/plain",
            "application/json; charset=latin1",
            "application/xml",
            "application/jsonx",
        ] {
            let bytes = event_with(
                "users.registered",
                data.clone(),
                &[("datacontenttype", json!(refused))],
            );
            let invalid = validator.check(&bytes).expect_err(refused);
            assert_eq!(invalid.errors[0].field, "/datacontenttype", "{invalid}");
        }
    }

    #[test]
    fn extension_names_follow_cloudevents_and_a_bad_one_is_named() {
        let validator = crate::Validator::new();
        let data = (kind_by_type("users.registered").unwrap().example_data)();
        let kept = validator
            .check(&event_with(
                "users.registered",
                data.clone(),
                &[("tenant", json!("acme")), ("traceid2", json!(7))],
            ))
            .expect("lower-case letters and digits");
        assert_eq!(kept.extensions["tenant"], json!("acme"));
        for bad in ["jetfn_attempt", "correlationId", "x-tenant", "ünïcode"] {
            let invalid = validator
                .check(&event_with(
                    "users.registered",
                    data.clone(),
                    &[(bad, json!("v"))],
                ))
                .expect_err(bad);
            assert!(invalid.to_string().contains(bad), "{bad}: {invalid}");
        }
    }

    #[test]
    fn unknown_data_fields_are_refused_or_accepted_as_each_type_says() {
        let validator = crate::Validator::new();
        for kind in CATALOG {
            let mut data = (kind.example_data)();
            data["surprise_field"] = json!("x");
            let result = validator.check(&event_with(kind.ty, data, &[]));
            let schema = (kind.derived_schema)();
            let payload = schema["properties"]["data"]["$ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("#/$defs/"))
                .unwrap_or_default();
            let closed = schema["$defs"][payload]["additionalProperties"] == json!(false);
            match result {
                Ok(_) => assert!(!closed, "{}: an unknown field was accepted", kind.ty),
                Err(invalid) => {
                    assert!(closed, "{}: {invalid}", kind.ty);
                    assert!(invalid.to_string().contains("surprise_field"), "{invalid}");
                }
            }
        }
        let refused: Vec<_> = CATALOG
            .iter()
            .filter(|kind| {
                let mut data = (kind.example_data)();
                data["surprise_field"] = json!("x");
                validator.check(&event_with(kind.ty, data, &[])).is_err()
            })
            .map(|kind| kind.ty)
            .collect();
        for open in [
            "messages.created",
            "messages.updated",
            "messages.deleted",
            "cleanup.completed",
        ] {
            assert!(!refused.contains(&open), "{open}");
        }
        for closed in [
            "users.registered",
            "orders.placed",
            "contact.submitted",
            "cleanup.requested",
        ] {
            assert!(refused.contains(&closed), "{closed}");
        }
    }

    #[test]
    fn every_example_is_valid() {
        for kind in CATALOG {
            (kind.check_data)(&(kind.example_data)(), false)
                .unwrap_or_else(|err| panic!("{}: {err}", kind.ty));
        }
    }
}
