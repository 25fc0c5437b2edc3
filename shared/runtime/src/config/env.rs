//! Settings read from environment variables into a serde struct, with errors a person can act on: each names the
//! variable (`JOB_BREAKER_THRESHOLD: expected a whole number, got "x"`), and a secret's value is never shown.
//!
//! envy's map of variables, with two differences: every value knows its variable's full name and whether it is
//! secret (from the struct's [`Table`]), and its errors are ours. The semantics are envy's: a prefix is stripped
//! and the rest lowercased into the field name, a set variable is `Some` even when empty, a list splits on commas.

use std::fmt;

use serde::de::value::SeqDeserializer;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};

/// One environment variable a binary reads: the help's line, and whether its value may be shown in an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    /// The full name, prefix included (`JOB_BREAKER_THRESHOLD`).
    pub name: &'static str,
    /// What applies when it is unset.
    pub default: Default,
    /// What it means, for `--help`.
    pub help: &'static str,
    /// Its value is never printed (passwords, tokens, URLs with credentials).
    pub secret: bool,
}

/// What applies when a variable is unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    /// The binary refuses to start without it.
    Required,
    /// Unset is meaningful on its own; the help says what it means.
    Unset,
    /// This value, as it would be written in the environment.
    Value(&'static str),
}

impl Var {
    /// A variable the binary cannot start without.
    pub const fn required(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            default: Default::Required,
            help,
            secret: false,
        }
    }

    /// A variable whose absence means something of its own (said in `help`).
    pub const fn optional(name: &'static str, help: &'static str) -> Self {
        Self {
            name,
            default: Default::Unset,
            help,
            secret: false,
        }
    }

    /// A variable with a default value, written as it would be in the environment.
    pub const fn with_default(name: &'static str, value: &'static str, help: &'static str) -> Self {
        Self {
            name,
            default: Default::Value(value),
            help,
            secret: false,
        }
    }

    /// The same variable, whose value is never printed.
    #[must_use]
    pub const fn secret(self) -> Self {
        Self {
            secret: true,
            ..self
        }
    }
}

/// The variables of one settings struct: its `--help` section, and what [`from_env`] knows of each value.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// The section's heading in `--help`.
    pub title: &'static str,
    /// The prefix stripped from a variable's name before the rest, lowercased, names a field (`JOB_`); or empty.
    pub prefix: &'static str,
    /// Every variable, in the order the help lists them.
    pub vars: &'static [Var],
}

impl Table {
    /// The variable named `name`, if the table has it.
    pub fn var(&self, name: &str) -> Option<&'static Var> {
        self.vars.iter().find(|var| var.name == name)
    }
}

/// A settings struct read from the environment, with its table next to it. [`check_table`] in a unit test keeps
/// the table and the struct's fields the same set.
pub trait Settings: DeserializeOwned {
    /// Its variables.
    const TABLE: &'static Table;
}

/// A setting that does not parse or is missing, named by its environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: String,
    /// What is wrong, with the value quoted unless the variable is secret.
    pub reason: String,
}

/// Reads `T` from the process environment.
///
/// # Errors
/// The first variable that is missing or does not parse, by name.
pub fn from_env<T: Settings>() -> Result<T, ConfigError> {
    let table = T::TABLE;
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => vars.push((name, value)),
            // Someone else's variable is not ours to refuse; one of ours must be readable.
            (Ok(name), Err(_)) if table.var(&name).is_some() => {
                return Err(ConfigError {
                    var: name,
                    reason: "is not valid UTF-8".to_owned(),
                });
            }
            _ => {}
        }
    }
    from_vars(vars)
}

/// Reads `T` from `vars`, as [`from_env`] does from the process environment; tests pass their own.
///
/// # Errors
/// As [`from_env`].
pub fn from_vars<T: Settings>(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let table = T::TABLE;
    let values = vars.into_iter().filter_map(|(name, value)| {
        let field = name.strip_prefix(table.prefix)?.to_lowercase();
        let secret = table.var(&name).is_some_and(|var| var.secret);
        Some((
            field,
            Value {
                name,
                value,
                secret,
            },
        ))
    });
    T::deserialize(Vars {
        values,
        pending: None,
    })
    .map_err(|err| err.into_config_error(table))
}

/// The variables as a map of field names to values.
struct Vars<I> {
    values: I,
    pending: Option<Value>,
}

impl<'de, I: Iterator<Item = (String, Value)>> de::MapAccess<'de> for Vars<I> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((field, value)) = self.values.next() else {
            return Ok(None);
        };
        self.pending = Some(value);
        seed.deserialize(IntoDeserializer::<Error>::into_deserializer(field))
            .map(Some)
    }

    fn next_value_seed<S: DeserializeSeed<'de>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let value = self
            .pending
            .take()
            .ok_or_else(|| Error::reason("a value asked for before its variable"))?;
        // Errors raised after the value was read (a `deserialize_with` that validates it) pass here too.
        let origin = value.origin();
        seed.deserialize(value).map_err(|err| origin.attach(err))
    }
}

impl<'de, I: Iterator<Item = (String, Value)>> de::Deserializer<'de> for Vars<I> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// Checks that `T`'s table lists exactly its fields, and that each documented default is what the struct does
/// when the variable is unset. For a unit test next to the struct; `required` gives a value for each required
/// variable. Panics with what is wrong.
pub fn check_table<T: Settings + fmt::Debug>(required: &[(&str, &str)]) {
    let table = T::TABLE;
    let fields = field_names::<T>();
    let var_of = |field: &str| format!("{}{}", table.prefix, field.to_uppercase());
    for field in fields {
        assert!(
            table.var(&var_of(field)).is_some(),
            "field `{field}` is not in the table of {}: add {} so --help lists it",
            table.title,
            var_of(field)
        );
    }
    for var in table.vars {
        assert!(
            fields.iter().any(|field| var_of(field) == var.name),
            "{} is in the table of {} but no field reads it",
            var.name,
            table.title
        );
    }
    let with = |extra: Option<(&str, &str)>| {
        let vars = required
            .iter()
            .chain(extra.iter())
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()));
        from_vars::<T>(vars).map(|settings| format!("{settings:?}"))
    };
    let unset = with(None).unwrap_or_else(|err| panic!("the required values do not parse: {err}"));
    for var in table.vars {
        if let Default::Value(value) = var.default {
            let set = with(Some((var.name, value)))
                .unwrap_or_else(|err| panic!("the documented default does not parse: {err}"));
            assert_eq!(
                set, unset,
                "{} documents the default {value:?}, which is not what unset does",
                var.name
            );
        }
    }
}

/// The field names of a derived `Deserialize` struct: serde hands them to `deserialize_struct`.
fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(FieldNames) {
        Err(Fields(Some(fields))) => fields,
        _ => panic!("settings must be a struct with a derived Deserialize"),
    }
}

struct FieldNames;

#[derive(Debug)]
struct Fields(Option<&'static [&'static str]>);

impl fmt::Display for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a struct")
    }
}

impl std::error::Error for Fields {}

impl de::Error for Fields {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Self(None)
    }
}

impl<'de> de::Deserializer<'de> for FieldNames {
    type Error = Fields;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Fields> {
        Err(Fields(None))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Fields> {
        Err(Fields(Some(fields)))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

/// A deserialization error before it knows its variable; [`Value`] attaches it.
#[derive(Debug)]
struct Error {
    var: Option<String>,
    missing_field: Option<&'static str>,
    reason: String,
    got: Option<String>,
}

impl Error {
    fn reason(reason: impl Into<String>) -> Self {
        Self {
            var: None,
            missing_field: None,
            reason: reason.into(),
            got: None,
        }
    }

    fn into_config_error(self, table: &Table) -> ConfigError {
        let reason = match self.got {
            Some(got) => format!("{}, got {got:?}", self.reason),
            None => self.reason,
        };
        match (self.var, self.missing_field) {
            (Some(var), _) => ConfigError { var, reason },
            (None, Some(field)) => {
                let var = format!("{}{}", table.prefix, field.to_uppercase());
                let reason = match table.var(&var) {
                    Some(known) => format!("must be set ({})", known.help),
                    None => "must be set".to_owned(),
                };
                ConfigError { var, reason }
            }
            (None, None) => ConfigError {
                var: format!("{}*", table.prefix),
                reason,
            },
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<M: fmt::Display>(message: M) -> Self {
        Self::reason(message.to_string())
    }

    // serde's own wording quotes the value it got; ours adds it only when the variable is not secret.
    fn invalid_type(_: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Self::reason(format!("expected {expected}"))
    }

    fn invalid_value(_: de::Unexpected<'_>, expected: &dyn de::Expected) -> Self {
        Self::reason(format!("expected {expected}"))
    }

    fn unknown_variant(_: &str, expected: &'static [&'static str]) -> Self {
        let quoted: Vec<String> = expected.iter().map(|name| format!("`{name}`")).collect();
        Self::reason(match quoted.as_slice() {
            [] => "expected nothing".to_owned(),
            [one] => format!("expected {one}"),
            [rest @ .., last] => format!("expected {} or {last}", rest.join(", ")),
        })
    }

    fn missing_field(field: &'static str) -> Self {
        Self {
            missing_field: Some(field),
            ..Self::reason("must be set")
        }
    }
}

/// One variable's value, as a deserializer that names the variable in its errors.
struct Value {
    name: String,
    value: String,
    secret: bool,
}

impl Value {
    fn origin(&self) -> Value {
        Value {
            name: self.name.clone(),
            value: self.value.clone(),
            secret: self.secret,
        }
    }

    fn attach(&self, mut err: Error) -> Error {
        if err.var.is_none() {
            err.var = Some(self.name.clone());
            if !self.secret && err.missing_field.is_none() {
                err.got = Some(self.value.clone());
            }
        }
        err
    }

    fn whole_number<N: std::str::FromStr + fmt::Display>(&self, min: N, max: N) -> Error {
        let reason = if self.value.parse::<i128>().is_ok() {
            format!("expected a whole number from {min} to {max}")
        } else {
            "expected a whole number".to_owned()
        };
        self.attach(Error::reason(reason))
    }
}

impl<'de> IntoDeserializer<'de, Error> for Value {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

macro_rules! whole_numbers {
    ($($method:ident $visit:ident $ty:ty),* $(,)?) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                match self.value.parse::<$ty>() {
                    Ok(number) => visitor.$visit(number).map_err(|err| self.attach(err)),
                    Err(_) => Err(self.whole_number(<$ty>::MIN, <$ty>::MAX)),
                }
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Value {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor
            .visit_str(&self.value)
            .map_err(|err| self.attach(err))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value.parse::<bool>() {
            Ok(flag) => visitor.visit_bool(flag).map_err(|err| self.attach(err)),
            Err(_) => Err(self.attach(Error::reason("expected `true` or `false`"))),
        }
    }

    whole_numbers! {
        deserialize_u8 visit_u8 u8,
        deserialize_u16 visit_u16 u16,
        deserialize_u32 visit_u32 u32,
        deserialize_u64 visit_u64 u64,
        deserialize_i8 visit_i8 i8,
        deserialize_i16 visit_i16 i16,
        deserialize_i32 visit_i32 i32,
        deserialize_i64 visit_i64 i64,
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value.parse::<f64>() {
            Ok(number) => visitor.visit_f64(number).map_err(|err| self.attach(err)),
            Err(_) => Err(self.attach(Error::reason("expected a number"))),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let items: Vec<Value> = if self.value.is_empty() {
            Vec::new()
        } else {
            self.value
                .split(',')
                .map(|item| Value {
                    name: self.name.clone(),
                    value: item.to_owned(),
                    secret: self.secret,
                })
                .collect()
        };
        visitor
            .visit_seq(SeqDeserializer::new(items.into_iter()))
            .map_err(|err| self.attach(err))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let variant: de::value::StrDeserializer<'_, Error> =
            self.value.as_str().into_deserializer();
        visitor.visit_enum(variant).map_err(|err| self.attach(err))
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char str string bytes byte_buf unit unit_struct tuple tuple_struct map struct identifier
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Sample {
        #[serde(default)]
        threshold: u32,
        #[serde(default)]
        on: bool,
        password: Option<crate::config::Secret>,
        port: Option<u16>,
        name: String,
        #[serde(default)]
        mode: Mode,
        #[serde(default)]
        tags: Vec<String>,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Mode {
        #[default]
        Fast,
        Safe,
    }

    const SAMPLE: Table = Table {
        title: "sample",
        prefix: "S_",
        vars: &[
            Var::with_default("S_THRESHOLD", "0", "a count"),
            Var::with_default("S_ON", "false", "a switch"),
            Var::optional("S_PASSWORD", "a password").secret(),
            Var::optional("S_PORT", "a port"),
            Var::required("S_NAME", "who this is"),
            Var::with_default("S_MODE", "fast", "how"),
            Var::with_default("S_TAGS", "", "labels"),
        ],
    };

    impl Settings for Sample {
        const TABLE: &'static Table = &SAMPLE;
    }

    fn read(pairs: &[(&str, &str)]) -> Result<Sample, String> {
        from_vars::<Sample>(
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        )
        .map_err(|err| err.to_string())
    }

    #[test]
    fn a_bad_number_is_named_by_its_variable_with_the_value() {
        assert_eq!(
            read(&[("S_NAME", "n"), ("S_THRESHOLD", "x")]).unwrap_err(),
            r#"S_THRESHOLD: expected a whole number, got "x""#
        );
        assert_eq!(
            read(&[("S_NAME", "n"), ("S_PORT", "70000")]).unwrap_err(),
            r#"S_PORT: expected a whole number from 0 to 65535, got "70000""#
        );
        assert_eq!(
            read(&[("S_NAME", "n"), ("S_ON", "yes")]).unwrap_err(),
            r#"S_ON: expected `true` or `false`, got "yes""#
        );
        assert_eq!(
            read(&[("S_NAME", "n"), ("S_MODE", "slow")]).unwrap_err(),
            r#"S_MODE: expected `fast` or `safe`, got "slow""#
        );
    }

    #[test]
    fn a_missing_variable_is_named_with_its_meaning() {
        assert_eq!(read(&[]).unwrap_err(), "S_NAME: must be set (who this is)");
    }

    #[test]
    fn a_secret_value_is_never_printed() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Pin {
            pin: u32,
        }
        const PIN: Table = Table {
            title: "pin",
            prefix: "",
            vars: &[Var::required("PIN", "the pin").secret()],
        };
        impl Settings for Pin {
            const TABLE: &'static Table = &PIN;
        }
        let err = from_vars::<Pin>([("PIN".to_owned(), "12ab34".to_owned())]).unwrap_err();
        assert_eq!(err.to_string(), "PIN: expected a whole number");
        let sample = read(&[("S_NAME", "n"), ("S_PASSWORD", "hunter2")]).expect("valid");
        assert!(!format!("{sample:?}").contains("hunter2"));
    }

    #[test]
    fn values_read_as_envy_reads_them() {
        let sample = read(&[
            ("S_NAME", "n"),
            ("S_THRESHOLD", "7"),
            ("S_TAGS", "a,b"),
            ("S_MODE", "safe"),
            ("OTHER_NAME", "ignored"),
            ("S_UNKNOWN", "ignored"),
        ])
        .expect("valid");
        assert_eq!(sample.threshold, 7);
        assert_eq!(sample.tags, ["a", "b"]);
        assert!(matches!(sample.mode, Mode::Safe));
        assert_eq!(sample.name, "n");
        assert!(
            read(&[("S_NAME", "n"), ("S_TAGS", "")])
                .expect("valid")
                .tags
                .is_empty()
        );
    }

    #[test]
    fn the_table_check_sees_a_forgotten_variable_and_a_wrong_default() {
        check_table::<Sample>(&[("S_NAME", "n")]);
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Forgot {
            a: u32,
            b: u32,
        }
        const FORGOT: Table = Table {
            title: "forgot",
            prefix: "F_",
            vars: &[Var::required("F_A", "a")],
        };
        impl Settings for Forgot {
            const TABLE: &'static Table = &FORGOT;
        }
        let panic =
            std::panic::catch_unwind(|| check_table::<Forgot>(&[("F_A", "1"), ("F_B", "2")]))
                .expect_err("F_B is missing from the table");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("F_B"), "{message}");

        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Wrong {
            #[serde(default)]
            n: u32,
        }
        const WRONG: Table = Table {
            title: "wrong",
            prefix: "W_",
            vars: &[Var::with_default("W_N", "5", "n")],
        };
        impl Settings for Wrong {
            const TABLE: &'static Table = &WRONG;
        }
        let panic = std::panic::catch_unwind(|| check_table::<Wrong>(&[]))
            .expect_err("the default is 0, not 5");
        let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(message.contains("W_N"), "{message}");
    }
}
