//! Settings read from environment variables into a serde struct, with errors a person can act on: each names the
//! variable (`JOB_BREAKER_THRESHOLD: expected a whole number, got "x"`), and a secret's value is never shown.
//!
//! envy reads the struct. Its errors are reworded here, because on their own they cannot be shown: a value that
//! does not parse is quoted whether or not it is secret and named only by the part of the variable after the
//! prefix, and an enum's or a `deserialize_with`'s error names no variable at all. The variable is found by
//! reading each one alone (see [`invalid`]), and what was expected from std's and serde's standard wording.

use std::fmt;

use serde::de::{self, DeserializeOwned, Visitor};

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
    from_vars(env_vars(T::TABLE)?)
}

/// The process environment as text, refusing one of `table`'s variables (or its `_FILE`) that is not UTF-8.
///
/// # Errors
/// That variable, by name.
pub fn env_vars(table: &Table) -> Result<Vec<(String, String)>, ConfigError> {
    let mut vars = Vec::new();
    for (name, value) in std::env::vars_os() {
        match (name.into_string(), value.into_string()) {
            (Ok(name), Ok(value)) => vars.push((name, value)),
            // Someone else's variable is not ours to refuse; one of ours must be readable.
            (Ok(name), Err(_))
                if table.var(&name).is_some()
                    || name
                        .strip_suffix(FILE_SUFFIX)
                        .is_some_and(|var| table.var(var).is_some()) =>
            {
                return Err(ConfigError {
                    var: name,
                    reason: "is not valid UTF-8".to_owned(),
                });
            }
            _ => {}
        }
    }
    Ok(vars)
}

/// What a secret variable's name takes to say "read my value from this file".
pub const FILE_SUFFIX: &str = "_FILE";

/// `vars` with each secret of `table` given as `<NAME>_FILE` replaced by `<NAME>` and the file's content.
///
/// Kubernetes and compose mount secrets as files; an environment variable shows in `ps e`, `docker inspect` and
/// crash reports, a file's content does not. One line ending at the end is dropped (`echo` and editors add it).
///
/// # Errors
/// Both `<NAME>` and `<NAME>_FILE` set (which one wins would be a guess), or a file that cannot be read, named by
/// its variable.
pub fn expand_files(
    table: &Table,
    vars: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::with_capacity(vars.len());
    let mut read = Vec::new();
    for (name, value) in vars {
        let secret = name
            .strip_suffix(FILE_SUFFIX)
            .and_then(|var| table.var(var))
            .filter(|var| var.secret);
        match secret {
            Some(var) => read.push((var, name, value)),
            None => out.push((name, value)),
        }
    }
    for (var, file_var, path) in read {
        if out.iter().any(|(name, _)| name == var.name) {
            return Err(ConfigError {
                var: var.name.to_owned(),
                reason: format!("is set and so is {file_var}; set only one"),
            });
        }
        let content = std::fs::read_to_string(&path).map_err(|err| ConfigError {
            var: file_var.clone(),
            reason: format!("cannot read {path:?}: {err}"),
        })?;
        let content = content.strip_suffix('\n').map_or(content.as_str(), |rest| {
            rest.strip_suffix('\r').unwrap_or(rest)
        });
        out.push((var.name.to_owned(), content.to_owned()));
    }
    Ok(out)
}

/// Reads `T` from `vars`, as [`from_env`] does from the process environment; tests pass their own.
///
/// # Errors
/// As [`from_env`].
pub fn from_vars<T: Settings>(
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigError> {
    let table = T::TABLE;
    let ours: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with(table.prefix))
        .collect();
    let ours = expand_files(table, ours)?;
    envy::prefixed(table.prefix)
        .from_iter(ours.iter().cloned())
        .map_err(|err| match err {
            envy::Error::MissingValue(field) => {
                let var = format!("{}{}", table.prefix, field.to_uppercase());
                let reason = match table.var(&var) {
                    Some(known) => format!("must be set ({})", known.help),
                    None => "must be set".to_owned(),
                };
                ConfigError { var, reason }
            }
            envy::Error::Custom(message) => invalid::<T>(&ours, &message),
        })
}

/// The error of the variable that does not parse. serde reads the variables in order and reports a missing field
/// only after reading them all, so the first variable that fails when read alone is the one that failed.
fn invalid<T: Settings>(vars: &[(String, String)], message: &str) -> ConfigError {
    let table = T::TABLE;
    let alone = |name: &str, value: &str| match envy::prefixed(table.prefix)
        .from_iter::<_, T>([(name.to_owned(), value.to_owned())])
    {
        Err(envy::Error::Custom(message)) => Some(message),
        _ => None,
    };
    let secrets: Vec<&str> = vars
        .iter()
        .filter(|(name, _)| table.var(name).is_some_and(|var| var.secret))
        .map(|(_, value)| value.as_str())
        .collect();
    let Some((name, value, message)) = vars
        .iter()
        .find_map(|(name, value)| Some((name, value, alone(name, value)?)))
    else {
        // Not one variable's fault (a field given under two spellings): envy's words, without any value.
        let reason = parse_error(message).map_or(message, |(error, _)| error);
        return ConfigError {
            var: format!("{}*", table.prefix),
            reason: hide(reason, &secrets),
        };
    };
    let reason = if let Some((error, item)) = parse_error(&message) {
        // envy's own parse error: std's wording tells which type the field has.
        if Some(error) == "".parse::<bool>().err().map(|e| e.to_string()).as_deref() {
            "expected `true` or `false`".to_owned()
        } else if Some(error) == item.parse::<f64>().err().map(|e| e.to_string()).as_deref() {
            "expected a number".to_owned()
        } else if item.parse::<i128>().is_ok() {
            whole_number(|number| alone(name, number).is_none())
        } else {
            "expected a whole number".to_owned()
        }
    } else if let Some(expected) = serde_expected(&message) {
        format!("expected {expected}")
    } else {
        message
    };
    let reason = if table.var(name).is_some_and(|var| var.secret) {
        hide(&reason, &secrets)
    } else {
        format!("{reason}, got {value:?}")
    };
    ConfigError {
        var: name.clone(),
        reason,
    }
}

/// envy's parse error, `<std's error> while parsing value '<item>' provided by <NAME>`, as the error and the item
/// (one element of a list, or the whole value).
fn parse_error(message: &str) -> Option<(&str, &str)> {
    let (head, _) = message.rsplit_once("' provided by ")?;
    head.split_once(" while parsing value '")
}

/// What serde's standard errors expected, without the value they quote (`invalid type: string "x", expected ...`,
/// `unknown variant `x`, expected `a` or `b``).
fn serde_expected(message: &str) -> Option<&str> {
    let standard = [
        "invalid type: ",
        "invalid value: ",
        "invalid length ",
        "unknown variant ",
    ];
    if !standard.iter().any(|start| message.starts_with(start)) {
        return None;
    }
    message
        .rsplit_once(", expected ")
        .map(|(_, expected)| expected)
}

/// The range of a whole-number field, found by trying each integer type's bounds, widest first.
fn whole_number(accepts: impl Fn(&str) -> bool) -> String {
    let maxima: [i128; 8] = [
        u64::MAX.into(),
        i64::MAX.into(),
        u32::MAX.into(),
        i32::MAX.into(),
        u16::MAX.into(),
        i16::MAX.into(),
        u8::MAX.into(),
        i8::MAX.into(),
    ];
    let minima: [i128; 5] = [
        i64::MIN.into(),
        i32::MIN.into(),
        i16::MIN.into(),
        i8::MIN.into(),
        0,
    ];
    let accepted = |bounds: &[i128]| {
        bounds
            .iter()
            .copied()
            .find(|bound| accepts(&bound.to_string()))
    };
    match (accepted(&minima), accepted(&maxima)) {
        (Some(min), Some(max)) => format!("expected a whole number from {min} to {max}"),
        _ => "expected a whole number".to_owned(),
    }
}

/// `reason` with every secret value in it replaced by `***`: a custom error may quote the value it refused.
fn hide(reason: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|secret| !secret.is_empty())
        .fold(reason.to_owned(), |reason, secret| {
            reason.replace(secret, "***")
        })
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
    fn every_kind_of_envy_error_is_reworded_without_a_secret() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Kinds {
            offset: Option<i8>,
            ratio: Option<f64>,
            ports: Option<Vec<u16>>,
            #[serde(default, deserialize_with = "refuse")]
            key: Option<crate::config::Secret>,
            #[serde(default)]
            pin: Option<u16>,
        }
        fn refuse<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Option<crate::config::Secret>, D::Error> {
            let value = String::deserialize(d)?;
            Err(de::Error::custom(format_args!("`{value}` is too short")))
        }
        const KINDS: Table = Table {
            title: "kinds",
            prefix: "K_",
            vars: &[
                Var::optional("K_OFFSET", "o"),
                Var::optional("K_RATIO", "r"),
                Var::optional("K_PORTS", "p"),
                Var::optional("K_KEY", "k").secret(),
                Var::optional("K_PIN", "p").secret(),
            ],
        };
        impl Settings for Kinds {
            const TABLE: &'static Table = &KINDS;
        }
        let read = |name: &str, value: &str| {
            from_vars::<Kinds>([
                ("K_RATIO".to_owned(), "0.5".to_owned()),
                (name.to_owned(), value.to_owned()),
            ])
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            read("K_OFFSET", "-200"),
            r#"K_OFFSET: expected a whole number from -128 to 127, got "-200""#
        );
        assert_eq!(
            read("K_RATIO", "half"),
            r#"K_RATIO: expected a number, got "half""#
        );
        assert_eq!(
            read("K_PORTS", "80,99999"),
            r#"K_PORTS: expected a whole number from 0 to 65535, got "80,99999""#
        );
        assert_eq!(read("K_KEY", "hunter2"), "K_KEY: `***` is too short");
        assert_eq!(
            read("K_PIN", "99999"),
            "K_PIN: expected a whole number from 0 to 65535"
        );
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
