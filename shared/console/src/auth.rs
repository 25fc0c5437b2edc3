//! Who may use the console, and as what.
//!
//! Two ways to sign in, chosen when the console starts:
//! - tokens from a file: one line per person, `<name> <role> <sha256 of the token, hex>`; the file holds no
//!   secret, and a presented token is hashed and compared in constant time. The console acts over its own NATS
//!   connection, so its NATS user must be allowed everything the roles in the file may do (admin for purges and
//!   schedules).
//! - the person's own NATS credentials (user and password, or a creds file's content): the console opens a NATS
//!   connection with them for that session, so the server's permissions hold the person to their user's rights
//!   whatever the console allows; the console's role comes from the user's name ([`role_of_nats_user`]).

use std::fmt;
use std::path::Path;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

/// What a signed-in person may do. Each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read everything the console shows.
    Viewer,
    /// Also pause, resume, replay, edit and replay.
    Operator,
    /// Also purge dead letters and add or cancel schedules.
    Admin,
}

impl Role {
    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    /// The role named `name`.
    ///
    /// # Errors
    /// Not a role; the error lists them.
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        match name {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            "admin" => Ok(Self::Admin),
            other => anyhow::bail!("role {other:?} is not one of viewer, operator, admin"),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role a NATS user gets in the console: the generated users are named `viewer`, `operator` and `admin`
/// (`jetfn infra permissions`); a user of one's own gets the role its name starts with (`operator-ada`,
/// `admin_bob`), and any other user is a viewer. The server's permissions still decide what its connection may
/// do: a user named `operator-x` without the operator's rights sees its pauses refused by the server.
pub fn role_of_nats_user(user: &str) -> Role {
    let starts = |role: &str| {
        user == role
            || user
                .strip_prefix(role)
                .is_some_and(|rest| rest.starts_with(['-', '_', '.']))
    };
    if starts("admin") {
        Role::Admin
    } else if starts("operator") {
        Role::Operator
    } else {
        Role::Viewer
    }
}

/// The user name a creds file's JWT carries (its `name` claim), else its subject (the user's public key).
///
/// # Errors
/// The text holds no JWT, or the JWT's claims do not decode.
pub fn creds_user(creds: &str) -> anyhow::Result<String> {
    use base64::Engine as _;
    let jwt = creds
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("eyJ"))
        .context("creds: no user JWT in the text (a line starting with eyJ)")?;
    let claims = jwt
        .split('.')
        .nth(1)
        .context("creds: the JWT has no claims part")?;
    let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .context("creds: the JWT's claims are not base64url")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&claims).context("creds: the JWT's claims are not JSON")?;
    claims
        .get("name")
        .and_then(serde_json::Value::as_str)
        .filter(|name| !name.is_empty())
        .or_else(|| claims.get("sub").and_then(serde_json::Value::as_str))
        .map(str::to_owned)
        .context("creds: the JWT names no user (no name or sub claim)")
}

/// One line of the tokens file.
#[derive(Clone)]
struct TokenUser {
    name: String,
    role: Role,
    hash: [u8; 32],
}

/// The people who may sign in with a token.
#[derive(Clone)]
pub struct Tokens {
    users: Vec<TokenUser>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("users", &self.users.len())
            .finish()
    }
}

/// The SHA-256 of a token, hex: what a tokens file holds.
pub fn hash_token(token: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    events::hex::lower(digest.as_ref())
}

/// A new random token (32 bytes, hex).
///
/// # Errors
/// The system's random source failed.
pub fn new_token() -> anyhow::Result<String> {
    random_hex(32)
}

/// `bytes` random bytes, hex.
pub(crate) fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut buffer = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buffer)
        .map_err(|_| anyhow::anyhow!("the system's random source failed"))?;
    Ok(events::hex::lower(&buffer))
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Parses a tokens file's text: `<name> <role> <sha256 hex>` per line; blank lines and `#` comments skipped.
    ///
    /// # Errors
    /// A line that does not parse, named by its number and field; no user at all; a name twice.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let mut users: Vec<TokenUser> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, hash] = fields[..] else {
                anyhow::bail!(
                    "line {number}: expected `<name> <role> <sha256 hex>`, found {} field(s)",
                    fields.len()
                );
            };
            let role = Role::parse(role).with_context(|| format!("line {number}: role"))?;
            let hash = parse_hex32(hash).with_context(|| {
                format!("line {number}: hash: not 64 hex digits (the SHA-256 of the token)")
            })?;
            anyhow::ensure!(
                !users.iter().any(|user| user.name == name),
                "line {number}: name {name} appears twice"
            );
            users.push(TokenUser {
                name: name.to_owned(),
                role,
                hash,
            });
        }
        anyhow::ensure!(!users.is_empty(), "no user in the tokens file");
        Ok(Self { users })
    }

    /// Reads a tokens file.
    ///
    /// # Errors
    /// It cannot be read or does not parse (the error names the file and the line).
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--tokens-file: reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("--tokens-file {}", path.display()))
    }

    /// Who a token belongs to. Every entry is compared (in constant time), so the time taken says nothing of
    /// which one matched or how much of a hash did.
    pub fn check(&self, token: &str) -> Option<(String, Role)> {
        let digest = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes());
        let mut found = None;
        for user in &self.users {
            if bool::from(user.hash.ct_eq(digest.as_ref())) {
                found = Some((user.name.clone(), user.role));
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_found_by_its_hash_and_a_wrong_one_is_not() {
        let file = format!(
            "# console users\nada operator {}\n\nbob viewer {}\n",
            hash_token("t-ada"),
            hash_token("t-bob")
        );
        let tokens = Tokens::parse(&file).unwrap();
        assert_eq!(
            tokens.check("t-ada"),
            Some(("ada".to_owned(), Role::Operator))
        );
        assert_eq!(
            tokens.check("t-bob"),
            Some(("bob".to_owned(), Role::Viewer))
        );
        assert_eq!(tokens.check("t-eve"), None);
        assert_eq!(tokens.check(""), None);
    }

    #[test]
    fn a_bad_line_is_named_by_number_and_field() {
        let err = Tokens::parse("ada operator abc\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 1: hash"), "{err:#}");
        let err = Tokens::parse(&format!("ada root {}\n", hash_token("x"))).unwrap_err();
        assert!(format!("{err:#}").contains("line 1: role"), "{err:#}");
        let err = Tokens::parse("ada\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 1"), "{err:#}");
        assert!(Tokens::parse("# nobody\n").is_err());
    }

    #[test]
    fn nats_users_get_the_role_their_name_starts_with() {
        assert_eq!(role_of_nats_user("admin"), Role::Admin);
        assert_eq!(role_of_nats_user("operator"), Role::Operator);
        assert_eq!(role_of_nats_user("operator-ada"), Role::Operator);
        assert_eq!(role_of_nats_user("viewer"), Role::Viewer);
        assert_eq!(role_of_nats_user("administrator"), Role::Viewer);
        assert_eq!(role_of_nats_user("welcome"), Role::Viewer);
    }

    #[test]
    fn a_creds_file_names_its_user() {
        use base64::Engine as _;
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"name":"operator","sub":"UABC"}"#);
        let creds = format!(
            "-----BEGIN NATS USER JWT-----\neyJ0eXAiOiJKV1QifQ.{claims}.sig\n------END NATS USER JWT------\n"
        );
        assert_eq!(creds_user(&creds).unwrap(), "operator");
        assert!(creds_user("nothing").is_err());
    }
}
