//! Validation at both ends: the publisher refuses an invalid event before it reaches NATS, and a function refuses
//! one that got through some other way. Both run the same code against the same committed schemas.

use std::fmt;
use std::sync::OnceLock;

use serde::Deserialize as _;
use serde_json::Value;

use jsonschema::json::Json;

use crate::tree::{Borrowed, Tree};
use crate::{CATALOG, CloudEvent, Event};

/// The largest event jetfn accepts, envelope included. The `EVENTS` stream's `max_msg_size` holds the same line.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// One field that failed, named by its JSON pointer (`/data/email`), with a reason that never quotes the value:
/// values may be personal data and reasons end up in logs and the dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// JSON pointer to the field, `""` for the whole event.
    pub field: String,
    /// Why it was refused.
    pub reason: String,
}

/// Why an event was refused. It is never worth retrying.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invalid {
    /// Every failure found, in document order.
    pub errors: Vec<FieldError>,
}

impl Invalid {
    /// One failure.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        let mut invalid = Self::default();
        invalid.push(field, reason);
        invalid
    }

    /// Adds a failure.
    pub fn push(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    /// `Ok` when nothing was pushed.
    ///
    /// # Errors
    /// Returns `self` when it holds at least one failure.
    pub fn into_result(self) -> Result<(), Self> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            let field = if error.field.is_empty() {
                "(event)"
            } else {
                error.field.as_str()
            };
            write!(f, "{field}: {}", error.reason)?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// Holds each catalog schema compiled at most once, so checking an event allocates no schema. A schema is compiled
/// the first time an event of its type is checked (or when [`Validator::prepare`] asks for it): a function takes
/// one or two types of the catalog's seventeen, and compiling all of them cost start-up time and resident memory
/// for validators it never uses (tests/bench/ANALYSIS.md, section 5).
pub struct Validator {
    /// One slot per [`CATALOG`] row, in the same order, compiled for [`Tree`], the tree that borrows its strings
    /// from the event's bytes: a function's [`Validator::decode`].
    schemas: Box<[OnceLock<jsonschema::Validator<Borrowed>>]>,
    /// The same schemas compiled for `serde_json::Value`: the publish paths and [`Validator::check`], which hold a
    /// `Value` already. A process compiles a type for both only if it both consumes and checks that type.
    by_value: Box<[OnceLock<jsonschema::Validator>]>,
}

impl fmt::Debug for Validator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let compiled: Vec<&str> = CATALOG
            .iter()
            .zip(self.schemas.iter().zip(self.by_value.iter()))
            .filter(|(_, (tree, value))| tree.get().is_some() || value.get().is_some())
            .map(|(kind, _)| kind.ty)
            .collect();
        f.debug_struct("Validator")
            .field("compiled", &compiled)
            .finish()
    }
}

impl Validator {
    /// A validator for every catalog type; each schema is compiled on first use.
    pub fn new() -> Self {
        Self {
            schemas: CATALOG.iter().map(|_| OnceLock::new()).collect(),
            by_value: CATALOG.iter().map(|_| OnceLock::new()).collect(),
        }
    }

    /// Compiles the schema of `ty` now rather than at the first event of that type, so a function pays it at
    /// start-up, before its first pull. Unknown types are ignored (their events are refused when checked).
    ///
    /// # Panics
    /// As [`Validator::new`] used to: when a committed schema is not valid JSON Schema, a build defect the catalog
    /// tests catch first.
    pub fn prepare(&self, ty: &str) {
        if let Some(index) = CATALOG.iter().position(|kind| kind.ty == ty) {
            self.compiled(index);
        }
    }

    /// The compiled schema of the catalog row `index`, for the borrowed tree.
    fn compiled(&self, index: usize) -> &jsonschema::Validator<Borrowed> {
        self.schemas[index].get_or_init(|| compile(index))
    }

    /// The compiled schema of the catalog row `index`, for a `serde_json::Value`.
    fn compiled_by_value(&self, index: usize) -> &jsonschema::Validator {
        self.by_value[index].get_or_init(|| compile(index))
    }

    /// Checks raw bytes as a CloudEvent of any catalog type.
    ///
    /// # Errors
    /// Names every field that fails and why: size, JSON syntax, envelope, unknown type, schema.
    pub fn check(&self, bytes: &[u8]) -> Result<CloudEvent, Invalid> {
        self.check_value_for(parse(bytes)?, false)
    }

    /// Checks an already parsed value as a CloudEvent of any catalog type.
    ///
    /// # Errors
    /// As [`Validator::check`].
    pub fn check_value(&self, value: Value) -> Result<CloudEvent, Invalid> {
        self.check_value_for(value, false)
    }

    /// Checks an event about to be published: as [`Validator::check`], plus the rules that only hold at publish
    /// time ([`crate::Event::validate_publish`], such as an expiry in the future).
    ///
    /// # Errors
    /// As [`Validator::check`].
    pub fn check_for_publish(&self, bytes: &[u8]) -> Result<CloudEvent, Invalid> {
        self.check_value_for(parse(bytes)?, true)
    }

    /// Checks a typed event about to be published, given the JSON tree it serializes to: the type's schema, then
    /// `T`'s own rules, the publish-time ones included. The typed publisher's path: it holds the payload already,
    /// so nothing is parsed back or decoded again.
    ///
    /// # Errors
    /// As [`Validator::check_for_publish`], plus a `type` that is not `T`'s.
    pub fn check_typed_for_publish<T: Event>(
        &self,
        value: &Value,
        event: &CloudEvent<T>,
    ) -> Result<(), Invalid> {
        let kind = self.check_schema_by_value(value)?;
        if kind.ty != T::TYPE {
            return Err(Invalid::new(
                "/type",
                format!("must be {} for this payload", T::TYPE),
            ));
        }
        event.data.validate()?;
        event.data.validate_publish()
    }

    fn check_value_for(&self, value: Value, publishing: bool) -> Result<CloudEvent, Invalid> {
        let kind = self.check_schema_by_value(&value)?;
        if let Some(data) = value.get("data") {
            (kind.check_data)(data, publishing)?;
        }
        serde_json::from_value(value)
            .map_err(|err| Invalid::new("", format!("envelope: {}", describe_json_error(&err))))
    }

    /// Checks raw bytes as a CloudEvent of type `T`, including `T`'s own rules.
    ///
    /// # Errors
    /// As [`Validator::check`], plus a wrong `type` and `T::validate` failures.
    pub fn decode<T: Event>(&self, bytes: &[u8]) -> Result<CloudEvent<T>, Invalid> {
        // The hot path of every function: one parse into a tree that borrows from `bytes`, one schema pass, one
        // typed decode out of the tree, one `validate`.
        let mut tree: Tree<'_> = parse(bytes)?;
        if let Ok(event) = self
            .check_schema(&tree)
            .and_then(|kind| typed_event(kind, &tree))
        {
            return Ok(event);
        }
        // Refused. Its small objects are in the text's order, and the errors' order (which one a message names
        // first) follows it: checked again in `Value`'s order, the message is the one `Value` gives.
        tree.sort_members();
        let kind = self.check_schema(&tree)?;
        typed_event(kind, &tree)
    }

    /// [`Validator::decode`] as it was before [`Tree`]: the bytes parsed into a `serde_json::Value`, the schema
    /// pass over it, the typed decode out of it. Kept as the oracle the fuzz tests hold `decode` to (same verdict,
    /// same message, same event); not for use on a hot path (it compiles a second copy of the schema).
    ///
    /// # Errors
    /// As [`Validator::decode`].
    #[doc(hidden)]
    pub fn decode_by_value<T: Event>(&self, bytes: &[u8]) -> Result<CloudEvent<T>, Invalid> {
        let value: Value = parse(bytes)?;
        let kind = self.check_schema_by_value(&value)?;
        typed_event(kind, value)
    }

    /// The envelope and `data` against the type's schema, on the borrowed tree; only when that fails are the
    /// errors collected, so a valid event costs one validation pass.
    fn check_schema(&self, tree: &Tree<'_>) -> Result<&'static crate::EventKind, Invalid> {
        if !matches!(tree, Tree::Object(_)) {
            return Err(Invalid::new("", "a CloudEvent must be a JSON object"));
        }
        let index = catalog_index(tree.get("type").map(|ty| match ty {
            Tree::String(ty) => Some(ty.as_ref()),
            _ => None,
        }))?;
        verdict(self.compiled(index), tree)?;
        Ok(&CATALOG[index])
    }

    /// As [`Validator::check_schema`], on a `serde_json::Value`.
    fn check_schema_by_value(&self, value: &Value) -> Result<&'static crate::EventKind, Invalid> {
        let Some(object) = value.as_object() else {
            return Err(Invalid::new("", "a CloudEvent must be a JSON object"));
        };
        let index = catalog_index(object.get("type").map(Value::as_str))?;
        verdict(self.compiled_by_value(index), value)?;
        Ok(&CATALOG[index])
    }

    /// Converts a checked event to its payload type and runs the payload's own rules.
    ///
    /// # Errors
    /// A wrong `type`, a payload that does not fit `T`, or a `T::validate` failure.
    pub fn typed<T: Event>(event: CloudEvent) -> Result<CloudEvent<T>, Invalid> {
        if event.ty != T::TYPE {
            return Err(Invalid::new(
                "/type",
                format!("this function takes {} events only", T::TYPE),
            ));
        }
        let data: T = serde_json::from_value(event.data)
            .map_err(|err| Invalid::new("/data", describe_json_error(&err)))?;
        data.validate()?;
        Ok(CloudEvent {
            specversion: event.specversion,
            id: event.id,
            source: event.source,
            ty: event.ty,
            time: event.time,
            datacontenttype: event.datacontenttype,
            subject: event.subject,
            dataschema: event.dataschema,
            data,
            extensions: event.extensions,
        })
    }
}

/// `format: idn-email` with the same verdicts as the validator's own check, cheaper for the common address. The
/// built-in check parses the address with `email_address` and runs the domain through UTS 46 mapping both ways: 40%
/// of the schema pass of an event with one address (tests/bench/ANALYSIS.md, section 7). An address in
/// [`plain_address`]'s form is one the built-in check accepts (a property test holds the two together); every
/// other one goes to the built-in check.
fn idn_email(address: &str) -> bool {
    static BUILT_IN: OnceLock<jsonschema::Validator> = OnceLock::new();
    if plain_address(address) {
        return true;
    }
    BUILT_IN
        .get_or_init(|| {
            jsonschema::options()
                .should_validate_formats(true)
                .build(&serde_json::json!({ "format": "idn-email" }))
                .expect("a format-only schema compiles")
        })
        .is_valid(&Value::String(address.to_owned()))
}

/// A dot-atom local part of letters, digits and `._+-` (at most 64 bytes), `@`, and a domain of at least two
/// lower-case letter-digit-hyphen labels (each 1 to 63 bytes, starting and ending with a letter or digit, no `--`
/// in third and fourth place, which would make it an A-label) whose last label starts with a letter, at most 254
/// bytes in all: the addresses RFC 5321 and RFC 5890 both accept without mapping or decoding anything.
fn plain_address(address: &str) -> bool {
    let bytes = address.as_bytes();
    if bytes.len() > 254 {
        return false;
    }
    let Some(at) = bytes.iter().position(|&byte| byte == b'@') else {
        return false;
    };
    let (local, domain) = (&bytes[..at], &bytes[at + 1..]);
    let atom = |byte: &u8| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'+' | b'-');
    let local_ok = (1..=64).contains(&local.len())
        && local
            .split(|&byte| byte == b'.')
            .all(|part| !part.is_empty() && part.iter().all(atom));
    if !local_ok || domain.len() > 253 {
        return false;
    }
    let ldh = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'-';
    let end = |byte: Option<&u8>| {
        byte.is_some_and(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit())
    };
    let mut labels = 0;
    let mut last_first = 0;
    for label in domain.split(|&byte| byte == b'.') {
        let label_ok = (1..=63).contains(&label.len())
            && label.iter().all(ldh)
            && end(label.first())
            && end(label.last())
            && !(label.len() >= 4 && &label[2..4] == b"--");
        if !label_ok {
            return false;
        }
        labels += 1;
        last_first = label[0];
    }
    labels >= 2 && last_first.is_ascii_lowercase()
}

/// An event of `len` bytes against [`MAX_EVENT_BYTES`].
///
/// # Errors
/// When it is larger.
pub fn check_size(len: usize) -> Result<(), Invalid> {
    if len > MAX_EVENT_BYTES {
        return Err(Invalid::new(
            "",
            format!("event is {len} bytes, over the {MAX_EVENT_BYTES} byte limit"),
        ));
    }
    Ok(())
}

/// Size first, so an oversized event is refused before any parsing work.
///
/// Bytes that are UTF-8 as a whole (every event a publisher sends) are checked once and parsed as text, which
/// spares the parser a UTF-8 check per string; other bytes go to the byte parser, whose error names the first bad
/// string's place, so a refusal reads as it always did.
fn parse<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, Invalid> {
    check_size(bytes.len())?;
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
    .map_err(|err| not_json(&err))
}

fn not_json(err: &serde_json::Error) -> Invalid {
    Invalid::new(
        "",
        format!(
            "not JSON: {} at line {} column {}",
            describe_json_error(err),
            err.line(),
            err.column()
        ),
    )
}

/// A schema-checked event of catalog type `kind` as a `CloudEvent<T>`: refused unless `kind` is `T`'s, then
/// decoded out of its parsed tree (either representation) and held to `T`'s own rules.
fn typed_event<'de, T: Event>(
    kind: &crate::EventKind,
    tree: impl serde::Deserializer<'de, Error = serde_json::Error>,
) -> Result<CloudEvent<T>, Invalid> {
    if kind.ty != T::TYPE {
        return Err(Invalid::new(
            "/type",
            format!("this function takes {} events only", T::TYPE),
        ));
    }
    let event = CloudEvent::<T>::deserialize(tree)
        .map_err(|err| Invalid::new("/data", describe_json_error(&err)))?;
    event.data.validate()?;
    Ok(event)
}

/// The committed schema of the catalog row `index`, compiled for the representation `F`.
fn compile<F: Json>(index: usize) -> jsonschema::Validator<F> {
    let kind = &CATALOG[index];
    let schema: Value = serde_json::from_str(kind.schema_file).expect("committed schema is JSON");
    jsonschema::options_for::<F>()
        .should_validate_formats(true)
        .with_format("idn-email", idn_email)
        .build(&schema)
        .unwrap_or_else(|err| panic!("schema of {} does not compile: {err}", kind.ty))
}

/// The catalog row of an event's `type`, given as found: absent, not a string, or the string.
fn catalog_index(ty: Option<Option<&str>>) -> Result<usize, Invalid> {
    let ty = match ty {
        Some(Some(ty)) => ty,
        Some(None) => return Err(Invalid::new("/type", "must be a string")),
        None => return Err(Invalid::new("/type", "is required")),
    };
    CATALOG
        .iter()
        .position(|kind| kind.ty == ty)
        .ok_or_else(|| Invalid::new("/type", "is not an event type in the catalog"))
}

/// One pass for a valid instance; the errors are collected only when it fails.
fn verdict<'i, F: Json>(
    schema: &'i jsonschema::Validator<F>,
    instance: F::Node<'i>,
) -> Result<(), Invalid> {
    if schema.is_valid(instance.clone()) {
        return Ok(());
    }
    let mut invalid = Invalid::default();
    for error in schema.iter_errors(instance) {
        invalid.push(
            error.instance_path().to_string(),
            describe_schema_error(&error),
        );
    }
    invalid.into_result()
}

impl Default for Validator {
    fn default() -> Self {
        Self::new()
    }
}

/// serde_json's messages can quote the offending value ("invalid type: string \"ada@…\""); keep only the category.
pub(crate) fn describe_json_error(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let message = err.to_string();
    match err.classify() {
        Category::Syntax => "syntax error".to_owned(),
        Category::Eof => "unexpected end of input".to_owned(),
        Category::Io => "read error".to_owned(),
        Category::Data => {
            // "missing field `x`" and "unknown variant" name fields, not values; anything else is cut at the value.
            match message.find(['"', '\'']) {
                Some(cut) if !message.starts_with("missing field") => {
                    message[..cut].trim_end().to_owned()
                }
                _ => message
                    .split(" at line ")
                    .next()
                    .unwrap_or(&message)
                    .to_owned(),
            }
        }
    }
}

/// What a person reads in a dead letter or a publisher's error: "must be a string", not the validator's
/// "must be of type single(string)". Only the schema's side is quoted (types, limits, allowed values, field names),
/// never the refused value.
fn describe_schema_error(error: &jsonschema::ValidationError<'_>) -> String {
    use jsonschema::error::{TypeKind, ValidationErrorKind as Kind};
    match error.kind() {
        Kind::Required { property } => format!("missing required field {}", plain(property)),
        Kind::Type {
            kind: TypeKind::Single(ty),
        } => format!("must be {}", with_article(*ty)),
        Kind::Type {
            kind: TypeKind::Multiple(types),
        } => format!(
            "must be {}",
            types
                .iter()
                .map(with_article)
                .collect::<Vec<_>>()
                .join(" or ")
        ),
        Kind::Format { format } => format!("is not a valid {format}"),
        Kind::MinLength { limit: 1 } => "must not be empty".to_owned(),
        Kind::MinLength { limit } => format!("must be at least {limit} characters"),
        Kind::MaxLength { limit } => format!("must be at most {limit} characters"),
        Kind::Pattern { pattern } => format!("does not match the pattern {pattern}"),
        Kind::Constant { expected_value } => format!("must be {}", plain(expected_value)),
        Kind::Enum { options } => match options.as_array() {
            Some(options) => format!(
                "must be one of {}",
                options.iter().map(plain).collect::<Vec<_>>().join(", ")
            ),
            None => format!("must be one of {}", plain(options)),
        },
        Kind::Minimum { limit } => format!("must be at least {limit}"),
        Kind::Maximum { limit } => format!("must be at most {limit}"),
        Kind::ExclusiveMinimum { limit } => format!("must be greater than {limit}"),
        Kind::ExclusiveMaximum { limit } => format!("must be less than {limit}"),
        Kind::MultipleOf { multiple_of } => format!("must be a multiple of {multiple_of}"),
        Kind::MinItems { limit: 1 } => "must not be empty".to_owned(),
        Kind::MinItems { limit } => format!("must have at least {limit} items"),
        Kind::MaxItems { limit } => format!("must have at most {limit} items"),
        Kind::UniqueItems => "must not repeat an item".to_owned(),
        Kind::MinProperties { limit } => format!("must have at least {limit} fields"),
        Kind::MaxProperties { limit } => format!("must have at most {limit} fields"),
        Kind::AdditionalProperties { unexpected } | Kind::UnevaluatedProperties { unexpected } => {
            match unexpected.as_slice() {
                [one] => format!("has an unexpected field {one}"),
                many => format!("has unexpected fields {}", many.join(", ")),
            }
        }
        Kind::AnyOf { .. } | Kind::OneOfNotValid { .. } => {
            "does not match any of the allowed forms".to_owned()
        }
        Kind::OneOfMultipleValid { .. } => "matches more than one of the allowed forms".to_owned(),
        Kind::FalseSchema | Kind::Not { .. } => "is not allowed here".to_owned(),
        other => format!("fails the schema ({})", kind_name(other)),
    }
}

/// A JSON value of the schema as a person writes it: `en`, not `"en"`.
fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn with_article(ty: jsonschema::JsonType) -> &'static str {
    use jsonschema::JsonType;
    match ty {
        JsonType::Null => "null",
        JsonType::Boolean => "true or false",
        JsonType::Integer => "an integer",
        JsonType::Number => "a number",
        JsonType::String => "a string",
        JsonType::Array => "a list",
        JsonType::Object => "an object",
    }
}

fn kind_name(kind: &jsonschema::error::ValidationErrorKind) -> String {
    let debug = format!("{kind:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or("rule")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Locale, UserRegistered};

    fn event(data: Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "specversion": "1.0", "id": "evt-1", "source": "/tests", "type": "users.registered",
            "time": "2026-11-25T10:00:00Z", "datacontenttype": "application/json", "data": data
        }))
        .unwrap()
    }

    #[test]
    fn a_valid_event_decodes_to_its_payload() {
        let validator = Validator::new();
        let bytes = event(
            serde_json::json!({"user_id": "u1", "email": "ada@example.com", "name": "Ada", "locale": "vi"}),
        );
        let decoded = validator.decode::<UserRegistered>(&bytes).unwrap();
        assert_eq!(decoded.data.locale, Locale::Vi);
        assert_eq!(decoded.id, "evt-1");
    }

    /// The borrowed tree against the `Value` it replaced, on what a tree could get wrong: a repeated key (the last
    /// wins, in the envelope and in `data`), escapes in keys and values, numbers past `u64`, nesting at serde_json's
    /// limit, and errors reported in key order.
    #[test]
    fn the_tree_decode_agrees_with_the_value_decode_on_what_a_tree_could_get_wrong() {
        let validator = Validator::new();
        let envelope = r#""specversion": "1.0", "id": "evt-1", "source": "/tests", "type": "users.registered",
            "time": "2026-11-25T10:00:00Z""#;
        let deep = format!("{}1{}", "[".repeat(126), "]".repeat(126));
        let deeper = format!("{}1{}", "[".repeat(130), "]".repeat(130));
        let cases = [
            format!(
                r#"{{{envelope}, "data": {{"user_id": "u1", "email": "not an address", "email": "ada@example.com",
                "name": "Ada", "locale": "vi"}}}}"#
            ),
            format!(
                r#"{{{envelope}, "data": {{"user_id": "u1", "email": "ada@example.com", "email": "nope",
                "name": "Ada", "locale": "vi"}}}}"#
            ),
            format!(
                r#"{{{envelope}, "id": "evt-2", "data": {{"user_id": "u\u0031", "em\u0061il": "ada\u0040example.com",
                "name": "A\"da\n", "locale": "vi"}}}}"#
            ),
            format!(
                r#"{{{envelope}, "data": {{"user_id": 18446744073709551616, "email": 1e400, "name": -0.0,
                "locale": "xx", "zz": [{deep}]}}}}"#
            ),
            format!(r#"{{{envelope}, "data": {deeper}}}"#),
            format!(r#"{{{envelope}, "type": "users.registered", "type": 3, "data": {{}}}}"#),
            format!(r#"{{{envelope}, "extension1": {{"b": 1, "a": [true, null]}}, "data": {{}}}}"#),
            r#"[{"type": "users.registered"}]"#.to_owned(),
        ];
        for case in &cases {
            let fast = validator.decode::<UserRegistered>(case.as_bytes());
            let slow = validator.decode_by_value::<UserRegistered>(case.as_bytes());
            match (&fast, &slow) {
                (Ok(fast), Ok(slow)) => assert_eq!(
                    serde_json::to_value(fast).unwrap(),
                    serde_json::to_value(slow).unwrap(),
                    "{case}"
                ),
                (Err(fast), Err(slow)) => assert_eq!(fast.to_string(), slow.to_string(), "{case}"),
                _ => panic!("{case}: {fast:?} against {slow:?}"),
            }
        }
        // The first case is the one a tree keeping the first of two keys would refuse.
        assert!(
            validator
                .decode::<UserRegistered>(cases[0].as_bytes())
                .is_ok()
        );
        assert!(
            validator
                .decode::<UserRegistered>(cases[1].as_bytes())
                .is_err()
        );
    }

    /// Schemas compile on first use now, so this is where a committed schema that does not compile shows.
    #[test]
    fn every_committed_schema_compiles_and_only_when_asked() {
        let validator = Validator::new();
        assert!(format!("{validator:?}").contains("compiled: []"));
        validator.prepare("users.registered");
        validator.prepare("not.in.the.catalog");
        assert_eq!(
            format!("{validator:?}"),
            r#"Validator { compiled: ["users.registered"] }"#
        );
        for kind in CATALOG {
            validator.prepare(kind.ty);
        }
        assert!(validator.schemas.iter().all(|slot| slot.get().is_some()));
    }

    #[test]
    fn a_bad_email_is_named_without_its_value() {
        let validator = Validator::new();
        let bytes = event(
            serde_json::json!({"user_id": "u1", "email": "secret-not-an-email", "name": "Ada"}),
        );
        let invalid = validator.decode::<UserRegistered>(&bytes).unwrap_err();
        let text = invalid.to_string();
        assert!(text.contains("/data/email"), "{text}");
        assert!(!text.contains("secret-not-an-email"), "{text}");
    }

    #[test]
    fn missing_fields_and_unknown_types_are_named() {
        let validator = Validator::new();
        let invalid = validator
            .decode::<UserRegistered>(&event(serde_json::json!({"user_id": "u1"})))
            .unwrap_err();
        let text = invalid.to_string();
        assert!(
            text.contains("missing required field") && text.contains("email"),
            "{text}"
        );

        let unknown = br#"{"specversion":"1.0","id":"x","source":"/t","type":"nope","data":{}}"#;
        assert_eq!(
            validator.check(unknown).unwrap_err().errors[0].field,
            "/type"
        );
        assert!(
            validator
                .check(b"{not json")
                .unwrap_err()
                .to_string()
                .contains("not JSON")
        );
    }

    #[test]
    fn oversized_events_are_refused_before_parsing() {
        let validator = Validator::new();
        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        assert!(
            validator
                .check(&big)
                .unwrap_err()
                .to_string()
                .contains("byte limit")
        );
    }

    #[test]
    fn header_injection_in_the_name_is_refused() {
        let validator = Validator::new();
        let bytes = event(
            serde_json::json!({"user_id": "u1", "email": "ada@example.com", "name": "Ada\r\nBcc: x@evil.test"}),
        );
        let invalid = validator.decode::<UserRegistered>(&bytes).unwrap_err();
        assert_eq!(invalid.errors[0].field, "/data/name");
    }

    #[test]
    fn the_typed_publish_check_agrees_with_the_check_of_the_bytes() {
        let validator = Validator::new();
        let mut event = CloudEvent::new(
            "/tests",
            UserRegistered {
                user_id: "u1".into(),
                email: "ada@example.com".into(),
                name: "Ada".into(),
                locale: crate::Locale::En,
            },
        );
        let check = |event: &CloudEvent<UserRegistered>| {
            let typed = validator
                .check_typed_for_publish(&serde_json::to_value(event).unwrap(), event)
                .map_err(|invalid| invalid.to_string());
            let bytes = validator
                .check_for_publish(&serde_json::to_vec(event).unwrap())
                .map(|_| ())
                .map_err(|invalid| invalid.to_string());
            assert_eq!(typed, bytes);
            typed
        };
        assert_eq!(check(&event), Ok(()));
        event.data.name = "Ada\r\nBcc: x@evil.test".into();
        assert!(check(&event).unwrap_err().contains("/data/name"));
        event.data.name = "Ada".into();
        event.data.email = "not an address".into();
        assert!(check(&event).unwrap_err().contains("/data/email"));
        event.data.email = "ada@example.com".into();
        event.ty = "orders.placed".into();
        assert!(check(&event).is_err());
    }

    /// Every common schema error kind reads as a person would write it, and none quotes the refused value.
    #[test]
    fn schema_errors_read_as_plain_language() {
        let cases: &[(Value, Value, &str)] = &[
            (
                serde_json::json!({"type": "string"}),
                serde_json::json!(12345),
                "must be a string",
            ),
            (
                serde_json::json!({"type": "integer"}),
                serde_json::json!("12345"),
                "must be an integer",
            ),
            (
                serde_json::json!({"type": "object"}),
                serde_json::json!([12345]),
                "must be an object",
            ),
            (
                serde_json::json!({"type": "array"}),
                serde_json::json!(12345),
                "must be a list",
            ),
            (
                serde_json::json!({"type": "boolean"}),
                serde_json::json!(12345),
                "must be true or false",
            ),
            (
                serde_json::json!({"type": ["string", "null"]}),
                serde_json::json!(12345),
                "must be null or a string",
            ),
            (
                serde_json::json!({"required": ["email"]}),
                serde_json::json!({}),
                "missing required field email",
            ),
            (
                serde_json::json!({"format": "email"}),
                serde_json::json!("12345"),
                "is not a valid email",
            ),
            (
                serde_json::json!({"minLength": 1}),
                serde_json::json!(""),
                "must not be empty",
            ),
            (
                serde_json::json!({"minLength": 6}),
                serde_json::json!("12345"),
                "must be at least 6 characters",
            ),
            (
                serde_json::json!({"maxLength": 3}),
                serde_json::json!("12345"),
                "must be at most 3 characters",
            ),
            (
                serde_json::json!({"pattern": "^[a-z]+$"}),
                serde_json::json!("12345"),
                "does not match the pattern ^[a-z]+$",
            ),
            (
                serde_json::json!({"enum": ["en", "vi"]}),
                serde_json::json!("12345"),
                "must be one of en, vi",
            ),
            (
                serde_json::json!({"const": "1.0"}),
                serde_json::json!("12345"),
                "must be 1.0",
            ),
            (
                serde_json::json!({"minimum": 1}),
                serde_json::json!(-12345),
                "must be at least 1",
            ),
            (
                serde_json::json!({"maximum": 100}),
                serde_json::json!(12345),
                "must be at most 100",
            ),
            (
                serde_json::json!({"exclusiveMinimum": 0}),
                serde_json::json!(-12345),
                "must be greater than 0",
            ),
            (
                serde_json::json!({"maxItems": 2}),
                serde_json::json!([1, 2, 12345]),
                "must have at most 2 items",
            ),
            (
                serde_json::json!({"minItems": 1}),
                serde_json::json!([]),
                "must not be empty",
            ),
            (
                serde_json::json!({"uniqueItems": true}),
                serde_json::json!([12345, 12345]),
                "must not repeat an item",
            ),
            (
                serde_json::json!({"properties": {"a": {}}, "additionalProperties": false}),
                serde_json::json!({"a": 1, "b12345": 2}),
                "has an unexpected field b12345",
            ),
            (
                serde_json::json!({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
                serde_json::json!([12345]),
                "does not match any of the allowed forms",
            ),
            (
                serde_json::json!({"oneOf": [{"type": "string"}, {"type": "integer"}]}),
                serde_json::json!([12345]),
                "does not match any of the allowed forms",
            ),
        ];
        for (schema, instance, expected) in cases {
            let validator = jsonschema::options()
                .should_validate_formats(true)
                .build(schema)
                .expect("a valid schema");
            let messages: Vec<String> = validator
                .iter_errors(instance)
                .map(|error| describe_schema_error(&error))
                .collect();
            assert_eq!(messages, [*expected], "{schema} against {instance}");
            // The field-name case quotes the schema's names and the unexpected key, never the value.
            assert!(
                messages
                    .iter()
                    .all(|message| !message.contains("12345") || expected.contains("12345")),
                "{messages:?}"
            );
        }
    }

    #[test]
    fn a_wrong_type_in_an_event_reads_must_be_a_string() {
        let validator = Validator::new();
        let bytes =
            event(serde_json::json!({"user_id": "u1", "email": "ada@example.com", "name": 7}));
        let invalid = validator.decode::<UserRegistered>(&bytes).unwrap_err();
        assert_eq!(invalid.to_string(), "/data/name: must be a string");
    }

    /// The built-in `idn-email` check, which [`idn_email`] answers for without running on plain addresses.
    fn built_in_idn_email(address: &str) -> bool {
        jsonschema::options()
            .should_validate_formats(true)
            .build(&serde_json::json!({ "format": "idn-email" }))
            .unwrap()
            .is_valid(&Value::String(address.to_owned()))
    }

    /// `parse` reads UTF-8 as text and other bytes as bytes: both must give what serde_json's byte parser gives,
    /// the same value or the same message, on event-like JSON with broken UTF-8, escapes and control characters.
    #[test]
    fn parsing_text_gives_what_parsing_bytes_gives() {
        use proptest::prelude::*;
        let via_bytes = |bytes: &[u8]| {
            serde_json::from_slice::<Value>(bytes).map_err(|err| not_json(&err).to_string())
        };
        let via_parse = |bytes: &[u8]| parse::<Value>(bytes).map_err(|invalid| invalid.to_string());
        // Pieces of JSON text and of what breaks it: invalid and truncated UTF-8, surrogate escapes, raw controls.
        let piece = prop_oneof![
            Just(b"{\"id\":\"".to_vec()),
            Just(b"\",\"data\":{\"name\":\"".to_vec()),
            Just(b"\"}}".to_vec()),
            Just(b"\"".to_vec()),
            Just("Ngọc é 例".as_bytes().to_vec()),
            Just(vec![0xff]),
            Just(vec![0xc3]),
            Just(vec![0xe4, 0xbe]),
            Just(vec![0xed, 0xa0, 0x80]),
            Just(b"\\ud800".to_vec()),
            Just(b"\\ud83d\\ude00".to_vec()),
            Just(b"\\n\\u0041".to_vec()),
            Just(vec![b'\n']),
            Just(vec![0x01]),
            Just(vec![0xef, 0xbb, 0xbf]),
            Just(b"1e400".to_vec()),
            Just(b"[1,2".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..4),
        ];
        let text = proptest::collection::vec(piece, 1..10).prop_map(|pieces| pieces.concat());
        proptest!(ProptestConfig::with_cases(3_000), |(bytes in text)| {
            prop_assert_eq!(via_parse(&bytes), via_bytes(&bytes), "{:?}", String::from_utf8_lossy(&bytes));
        });
    }

    #[test]
    fn plain_addresses_are_ones_the_built_in_check_accepts() {
        use proptest::prelude::*;
        let checker = jsonschema::options()
            .should_validate_formats(true)
            .build(&serde_json::json!({ "format": "idn-email" }))
            .unwrap();
        // Addresses near the plain form: its characters, the ones just outside it, and lengths around its limits.
        let part = r#"[a-zA-Z0-9._+-]{0,3}|[a-z0-9-]{1,6}|[-.]|xn--[a-z0-9]{1,4}|[a-z]{60,66}|[A-Z]|[ "@<>\[\]]|é|\.\."#;
        let address = proptest::collection::vec(part, 1..8)
            .prop_flat_map(|local| (Just(local), proptest::collection::vec(part, 1..10)))
            .prop_map(|(local, domain)| format!("{}@{}", local.concat(), domain.join(".")));
        proptest!(ProptestConfig::with_cases(2_000), |(address in address)| {
            let value = Value::String(address.clone());
            if plain_address(&address) {
                prop_assert!(checker.is_valid(&value), "{address:?} is plain but refused");
            }
            prop_assert_eq!(idn_email(&address), checker.is_valid(&value), "{:?}", address);
        });
        for (address, plain) in [
            ("maria.fernanda.1@customers.example.com", true),
            ("a+tag@mail.example.co", true),
            ("a@localhost", false),
            ("a@xn--nxasmq6b.com", false),
            ("a@ab--cd.com", false),
            ("a@-ab.com", false),
            ("a@1.2.3.4", false),
            (".a@example.com", false),
            ("a..b@example.com", false),
            ("A@Example.com", false),
            ("ada@例え.jp", false),
            ("\"a b\"@example.com", false),
        ] {
            assert_eq!(plain_address(address), plain, "{address}");
            assert_eq!(idn_email(address), built_in_idn_email(address), "{address}");
        }
    }
}
