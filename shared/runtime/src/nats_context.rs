//! The nats CLI's contexts (`nats context add`): one JSON file per named connection, in
//! `$XDG_CONFIG_HOME/nats/context/<name>.json` (`~/.config/...` without it). Reading them lets an operator who
//! already uses the nats CLI point jetfn at the same server with the same identity by name.
//!
//! Only explicit selection (`NATS_CONTEXT`, `jetfn --context`) is honoured, not the nats CLI's "selected"
//! context: a function must not change servers because someone ran `nats context select` on the same machine.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::config::ConfigError;

/// The fields of a context file jetfn maps to its variables. The nats CLI writes every field, empty when unused.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Context {
    url: String,
    user: String,
    password: String,
    token: String,
    creds: String,
    nkey: String,
    cert: String,
    key: String,
    ca: String,
    inbox_prefix: String,
    // Fields jetfn cannot honour: refused when set rather than connecting some other way than the context says.
    nsc: String,
    user_jwt: String,
    socks_proxy: String,
    jetstream_domain: String,
    jetstream_api_prefix: String,
    tls_first: bool,
}

/// The `NATS_*` variables the context `name` sets (only its non-empty fields), for the caller to add where the
/// environment left them unset.
///
/// `name` is a context name, or a path to its JSON file when it holds a `/`.
///
/// # Errors
/// A name that cannot be a file name, a file that cannot be read or is not a context, or a field jetfn does not
/// support; all under `NATS_CONTEXT`, never quoting a password or token.
pub fn load(
    name: &str,
    config_home: Option<&str>,
    home: Option<&str>,
) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let error = |reason: String| ConfigError {
        var: "NATS_CONTEXT".to_owned(),
        reason,
    };
    let path = path(name, config_home, home).map_err(error)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|err| error(format!("cannot read the context {}: {err}", path.display())))?;
    let context: Context = serde_json::from_str(&text).map_err(|err| {
        // serde_json's message names the line and column, and quotes no value of a string field.
        error(format!(
            "{} is not a nats context file: {err}",
            path.display()
        ))
    })?;
    let unsupported = [
        ("nsc", !context.nsc.is_empty()),
        ("user_jwt", !context.user_jwt.is_empty()),
        ("socks_proxy", !context.socks_proxy.is_empty()),
        ("jetstream_domain", !context.jetstream_domain.is_empty()),
        (
            "jetstream_api_prefix",
            !context.jetstream_api_prefix.is_empty(),
        ),
        ("tls_first", context.tls_first),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(error(format!(
            "the context {} sets `{field}`, which jetfn does not support; use a context without it",
            path.display()
        )));
    }
    let file = |value: &str| expand_home(value, home);
    let fields = [
        ("NATS_URL", context.url),
        ("NATS_USER", context.user),
        ("NATS_PASSWORD", context.password),
        ("NATS_TOKEN", context.token),
        ("NATS_CREDS_FILE", file(&context.creds)),
        ("NATS_NKEY_FILE", file(&context.nkey)),
        ("NATS_TLS_CERT_FILE", file(&context.cert)),
        ("NATS_TLS_KEY_FILE", file(&context.key)),
        ("NATS_TLS_CA_FILE", file(&context.ca)),
        ("NATS_INBOX_PREFIX", context.inbox_prefix),
    ];
    Ok(fields
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect())
}

fn path(name: &str, config_home: Option<&str>, home: Option<&str>) -> Result<PathBuf, String> {
    if name.contains('/') {
        return Ok(PathBuf::from(expand_home(name, home)));
    }
    let valid = !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(format!(
            "{name:?} is not a context name (letters, digits, `-`, `_` and `.`; or a path to a JSON file)"
        ));
    }
    let base = match (config_home.filter(|dir| !dir.is_empty()), home) {
        (Some(dir), _) => PathBuf::from(dir),
        (None, Some(home)) => Path::new(home).join(".config"),
        (None, None) => {
            return Err(
                "neither XDG_CONFIG_HOME nor HOME is set, so contexts cannot be found".to_owned(),
            );
        }
    };
    Ok(base
        .join("nats")
        .join("context")
        .join(format!("{name}.json")))
}

/// `~/x` as the nats CLI reads it: relative to the home directory.
fn expand_home(value: &str, home: Option<&str>) -> String {
    match (value.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => Path::new(home).join(rest).to_string_lossy().into_owned(),
        _ => value.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, json: &str) {
        let folder = dir.join("nats/context");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join(format!("{name}.json")), json).unwrap();
    }

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("jetfn-ctx-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_context_fills_only_its_non_empty_fields() {
        let dir = temp();
        write(
            &dir,
            "prod",
            r#"{"description":"","url":"nats://n1:4222","user":"ada","password":"hunter2","token":"",
               "creds":"","nkey":"","cert":"~/c.pem","key":"","ca":"/etc/ca.pem","nsc":"","color_scheme":""}"#,
        );
        let fields = load("prod", dir.to_str(), Some("/home/ada")).expect("loads");
        assert_eq!(
            fields,
            [
                ("NATS_URL", "nats://n1:4222".to_owned()),
                ("NATS_USER", "ada".to_owned()),
                ("NATS_PASSWORD", "hunter2".to_owned()),
                ("NATS_TLS_CERT_FILE", "/home/ada/c.pem".to_owned()),
                ("NATS_TLS_CA_FILE", "/etc/ca.pem".to_owned()),
            ]
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_missing_or_unsupported_context_is_refused_by_name() {
        let dir = temp();
        let err = load("nope", dir.to_str(), None).unwrap_err().to_string();
        assert!(
            err.starts_with("NATS_CONTEXT: cannot read the context "),
            "{err}"
        );
        assert!(err.contains("nats/context/nope.json"), "{err}");
        let err = load("no good", dir.to_str(), None).unwrap_err().to_string();
        assert!(err.contains("is not a context name"), "{err}");
        write(&dir, "jwt", r#"{"user_jwt":"eyJ...","password":"hunter2"}"#);
        let err = load("jwt", dir.to_str(), None).unwrap_err().to_string();
        assert!(err.contains("sets `user_jwt`"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        write(&dir, "bad", r#"{"password": 12}"#);
        let err = load("bad", dir.to_str(), None).unwrap_err().to_string();
        assert!(err.contains("is not a nats context file"), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }
}
