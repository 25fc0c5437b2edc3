//! `NATS_URL` (and `jetfn --nats-url`): one or more comma-separated server URLs.
//!
//! Parsed here, for the functions and the CLI alike, because async-nats takes one string as one address: a
//! comma-joined cluster list handed to it whole does not parse. A URL may carry a password
//! (`nats://user:pass@host`), so anything that shows the value (a log line, an error) goes through [`mask`].
//! async-nats 0.51 does not authenticate with that user info (`NATS_USER` and `NATS_PASSWORD` do); it is masked
//! all the same, since people put it there.

use std::fmt;

use async_nats::ServerAddr;

/// The servers `value` names, in the order given: what `ConnectOptions::connect` takes to fail over between
/// the nodes of a cluster.
///
/// Each entry is trimmed; a scheme-less entry (`host:4222`) means `nats://`, as async-nats reads it.
///
/// # Errors
/// An empty entry (`a,,b`, a trailing comma, an empty value) or one that is not a NATS server URL, named by its
/// position and shown masked.
pub fn parse(value: &str) -> Result<Vec<ServerAddr>, NatsUrlError> {
    let entries: Vec<&str> = value.split(',').map(str::trim).collect();
    let count = entries.len();
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let error = |problem| NatsUrlError {
                position: index + 1,
                count,
                entry: mask_one(entry),
                problem,
            };
            if entry.is_empty() {
                return Err(error(Problem::Empty));
            }
            entry.parse::<ServerAddr>().map_err(|err| {
                // async-nats prefixes the url crate's reason, which never quotes the input.
                let reason = err.to_string();
                let reason = reason
                    .strip_prefix("NATS server URL is invalid: ")
                    .unwrap_or(&reason);
                error(Problem::Invalid(reason.to_owned()))
            })
        })
        .collect()
}

/// `value` with the user info of every entry hidden: `nats://ada:secret@host` becomes `nats://ada:***@host`,
/// and a lone user part (`nats://token@host`, which NATS reads as a token) becomes `***`.
///
/// Works on text that does not parse as a URL too, since it is what an error about such text shows.
pub fn mask(value: &str) -> String {
    value
        .split(',')
        .map(|entry| mask_one(entry.trim()))
        .collect::<Vec<_>>()
        .join(",")
}

fn mask_one(entry: &str) -> String {
    let authority = entry.find("://").map_or(0, |at| at + 3);
    // The last `@`: a password with an unescaped `@` or `/` in it is still hidden whole.
    let Some(at) = entry[authority..].rfind('@').map(|at| authority + at) else {
        return entry.to_owned();
    };
    let userinfo = &entry[authority..at];
    let shown = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    format!("{}{shown}{}", &entry[..authority], &entry[at..])
}

/// A `NATS_URL` that cannot be used; its text holds the entry masked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsUrlError {
    position: usize,
    count: usize,
    entry: String,
    problem: Problem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Problem {
    Empty,
    Invalid(String),
}

impl fmt::Display for NatsUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NATS_URL: ")?;
        if self.count > 1 {
            write!(f, "entry {} of {}", self.position, self.count)?;
        } else {
            f.write_str("the value")?;
        }
        match &self.problem {
            Problem::Empty => {
                f.write_str(" is empty; expected one or more comma-separated server URLs")?;
                if self.count > 1 {
                    f.write_str(" (no empty entry, no trailing comma)")?;
                }
                Ok(())
            }
            Problem::Invalid(reason) => write!(
                f,
                ", \"{}\", is not a NATS server URL: {reason}",
                self.entry
            ),
        }
    }
}

impl std::error::Error for NatsUrlError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(value: &str) -> Vec<String> {
        parse(value)
            .expect("parses")
            .iter()
            .map(|addr| format!("{}:{}", addr.host(), addr.port()))
            .collect()
    }

    #[test]
    fn one_url_is_one_server() {
        assert_eq!(urls("nats://127.0.0.1:4222"), ["127.0.0.1:4222"]);
        assert_eq!(urls("nats.internal"), ["nats.internal:4222"]);
    }

    #[test]
    fn a_list_keeps_its_order_and_loses_its_spaces() {
        assert_eq!(
            urls(" nats://n1:4222 ,nats://n2:4223,  tls://n3:4224"),
            ["n1:4222", "n2:4223", "n3:4224"]
        );
    }

    #[test]
    fn user_info_survives_parsing() {
        let servers = parse("nats://ada:s3cret@n1:4222,nats://n2").unwrap();
        assert_eq!(servers[0].username(), Some("ada"));
        assert_eq!(servers[0].password(), Some("s3cret"));
        assert_eq!(servers[1].username(), None);
    }

    #[test]
    fn an_empty_entry_is_named_by_position() {
        let err = parse("nats://n1:4222,,nats://n3").unwrap_err().to_string();
        assert!(err.starts_with("NATS_URL: entry 2 of 3 is empty"), "{err}");
        let err = parse("nats://n1:4222, ").unwrap_err().to_string();
        assert!(err.starts_with("NATS_URL: entry 2 of 2 is empty"), "{err}");
        let err = parse("").unwrap_err().to_string();
        assert_eq!(
            err,
            "NATS_URL: the value is empty; expected one or more comma-separated server URLs"
        );
    }

    #[test]
    fn an_unparsable_entry_is_named_by_position_without_its_password() {
        let err = parse("nats://n1:4222,nats://ada:s3cret@n2:port")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "NATS_URL: entry 2 of 2, \"nats://ada:***@n2:port\", is not a NATS server URL: invalid port number"
        );
        let err = parse("http://ada:s3cret@n1").unwrap_err().to_string();
        assert_eq!(
            err,
            "NATS_URL: the value, \"http://ada:***@n1\", is not a NATS server URL: invalid scheme for NATS server URL: http"
        );
        let err = parse("nats://s3cret@n1:99999").unwrap_err().to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("\"nats://***@n1:99999\""), "{err}");
    }

    #[test]
    fn mask_hides_passwords_and_tokens_only() {
        assert_eq!(
            mask("nats://ada:s3cret@host:4222"),
            "nats://ada:***@host:4222"
        );
        assert_eq!(mask("nats://tok3n@host:4222"), "nats://***@host:4222");
        assert_eq!(mask("ada:s3cret@host"), "ada:***@host");
        assert_eq!(mask("nats://ada:@host"), "nats://ada:***@host");
        assert_eq!(mask("nats://host:4222"), "nats://host:4222");
        assert_eq!(mask("host"), "host");
        assert_eq!(mask(""), "");
    }

    #[test]
    fn mask_hides_every_entry_of_a_list() {
        assert_eq!(
            mask("nats://a:p1@n1:4222,nats://n2:4222, tls://b:p2@n3"),
            "nats://a:***@n1:4222,nats://n2:4222,tls://b:***@n3"
        );
    }

    #[test]
    fn mask_hides_a_password_that_holds_url_delimiters() {
        let masked = mask("nats://ada:p@ss/w:rd@host:4222");
        assert_eq!(masked, "nats://ada:***@host:4222");
    }
}
