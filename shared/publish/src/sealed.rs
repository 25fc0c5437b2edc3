//! Sensitive fields sealed end to end: the publisher encrypts the fields the catalog marks sensitive (a reset
//! token, a verification code, a contact message), and only the function that handles the event opens them, in
//! memory. The stream, the DLQ, a replay and a schedule hold ciphertext.
//!
//! The format, so producers in other languages can write it (README, "Sensitive fields"):
//! - header `Jetfn-Key-Id: <key id>`: the keyring key every sealed field of the event uses;
//! - each sensitive field's JSON value `v` becomes the string `jetfn:enc:v1:` + base64url (no padding) of
//!   `nonce (12 random bytes) || ChaCha20-Poly1305(key, nonce, plaintext = JSON text of v, aad)`;
//! - `aad` = `jetfn:enc:v1` followed by, for each of key id, event `id`, event `type` and the field's JSON pointer
//!   (`/data/token`): its UTF-8 length as 4 bytes big-endian, then its bytes. A ciphertext therefore opens only in
//!   the event, the field and under the key id it was made for: moved to another event or field, or relabelled
//!   with another key id, it fails authentication like any tampering.
//!
//! The cipher is ring's ChaCha20-Poly1305 (`ring::aead`): ring is already in every producer's tree (the random
//! trace id, rustls), constant-time without AES instructions, and in Python's `cryptography` and every TLS stack.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::SecureRandom as _;
use serde_json::Value;

/// The header naming the key an event's sealed fields use.
pub const KEY_ID_HEADER: &str = "Jetfn-Key-Id";
/// [`KEY_ID_HEADER`] as a header name: every consumed message is asked for it, and a `&str` name would be checked
/// and copied into a new `HeaderName` each time.
pub const KEY_ID: async_nats::header::HeaderName =
    async_nats::header::HeaderName::from_static(KEY_ID_HEADER);
/// What a sealed field's string starts with.
pub const PREFIX: &str = "jetfn:enc:v1:";
/// The variable holding the keyring's JSON.
pub const KEYRING_VAR: &str = "JETFN_KEYRING";
/// The variable naming a file that holds the keyring's JSON (a Kubernetes or compose secret).
pub const KEYRING_FILE_VAR: &str = "JETFN_KEYRING_FILE";
const AAD_LABEL: &[u8] = b"jetfn:enc:v1";
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// The keys a process may seal and open with: `{"current": "<id>", "keys": {"<id>": "<base64 of 32 bytes>"}}`.
/// A publisher seals with `current`; a consumer opens with whichever key an event names, so a rotated-out key
/// stays in the keyring until `jetfn keys usage <id>` finds nothing that names it.
pub struct Keyring {
    current: Option<String>,
    keys: BTreeMap<String, LessSafeKey>,
}

/// Key material never prints: only the ids.
impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Why a keyring cannot be read. Names the variable and the entry, never key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct KeyringError {
    origin: String,
    reason: String,
}

impl KeyringError {
    fn new(origin: &str, reason: impl Into<String>) -> Self {
        Self {
            origin: origin.to_owned(),
            reason: reason.into(),
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyringFile {
    #[serde(default)]
    current: Option<String>,
    keys: BTreeMap<String, String>,
}

/// A key id is a header value and a log field: short, and letters, digits, `.`, `_`, `-` only.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Keyring {
    /// Reads a keyring from its JSON; `origin` (a variable or a file) names it in errors.
    ///
    /// # Errors
    /// Not the keyring's JSON, a key id that is not `[A-Za-z0-9._-]{1,64}`, a key that is not base64 of 32 bytes,
    /// or a `current` that is not among the keys.
    pub fn parse(text: &str, origin: &str) -> Result<Self, KeyringError> {
        // serde's message may quote the input, which holds keys: say only where it went wrong.
        let file: KeyringFile = serde_json::from_str(text).map_err(|err| {
            KeyringError::new(
                origin,
                format!(
                    "not a keyring (expected {{\"current\": \"<id>\", \"keys\": {{\"<id>\": \"<base64 of 32 bytes>\"}}}}; \
                     error at line {} column {})",
                    err.line(),
                    err.column()
                ),
            )
        })?;
        let mut keys = BTreeMap::new();
        for (id, encoded) in file.keys {
            if !valid_key_id(&id) {
                return Err(KeyringError::new(
                    origin,
                    "a key id must be 1 to 64 letters, digits, '.', '_' or '-'",
                ));
            }
            let bytes = STANDARD
                .decode(encoded.trim())
                .ok()
                .filter(|bytes| bytes.len() == KEY_LEN)
                .ok_or_else(|| {
                    KeyringError::new(
                        origin,
                        format!(
                            "keys.{id}: must be standard base64 of 32 random bytes (`openssl rand -base64 32`)"
                        ),
                    )
                })?;
            let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes)
                .map_err(|_| KeyringError::new(origin, format!("keys.{id}: unusable")))?;
            keys.insert(id, LessSafeKey::new(key));
        }
        if let Some(current) = &file.current
            && !keys.contains_key(current)
        {
            return Err(KeyringError::new(
                origin,
                format!("current: {current} is not among the keys"),
            ));
        }
        Ok(Self {
            current: file.current,
            keys,
        })
    }

    /// The keyring `JETFN_KEYRING` (the JSON) or `JETFN_KEYRING_FILE` (a file holding it) gives; none when
    /// neither is set.
    ///
    /// # Errors
    /// Both set, an unreadable file, or a keyring [`Keyring::parse`] refuses.
    pub fn from_env() -> Result<Option<Self>, KeyringError> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        Self::from_vars(var(KEYRING_VAR), var(KEYRING_FILE_VAR))
    }

    /// [`Keyring::from_env`] on given values of the two variables.
    ///
    /// # Errors
    /// As [`Keyring::from_env`].
    pub fn from_vars(
        keyring: Option<String>,
        file: Option<String>,
    ) -> Result<Option<Self>, KeyringError> {
        match (keyring, file) {
            (None, None) => Ok(None),
            (Some(_), Some(_)) => Err(KeyringError::new(
                KEYRING_VAR,
                format!("set either {KEYRING_VAR} or {KEYRING_FILE_VAR}, not both"),
            )),
            (Some(text), None) => Self::parse(&text, KEYRING_VAR).map(Some),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(&path).map_err(|err| {
                    KeyringError::new(KEYRING_FILE_VAR, format!("cannot read {path}: {err}"))
                })?;
                Self::parse(&text, KEYRING_FILE_VAR).map(Some)
            }
        }
    }

    /// The key new events are sealed with.
    pub fn current(&self) -> Option<&str> {
        self.current.as_deref()
    }

    /// Every key id, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Whether the keyring holds this key.
    pub fn contains(&self, id: &str) -> bool {
        self.keys.contains_key(id)
    }
}

/// Why an event cannot be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The keyring has no `current` key, so it can open but not seal.
    #[error("the keyring has no `current` key to seal {0} with; set `current` in {KEYRING_VAR}")]
    NoCurrentKey(String),
    /// The event lacks its `id` or `type`, which the associated data binds.
    #[error("`{0}`: missing, and sealed fields are bound to it")]
    Missing(&'static str),
    /// The system's random source failed.
    #[error("no random nonce: the system's random source failed")]
    Random,
    /// The keyring does not hold the key asked for.
    #[error("the keyring has no key `{0}` to seal with; add it to {KEYRING_VAR}")]
    UnknownKey(String),
}

/// Why a sealed event cannot be opened. Names the field and the key id, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The event names a key and this process has no keyring.
    #[error(
        "the event's sensitive fields are sealed with key `{key_id}` ({KEY_ID_HEADER}) and this process has no keyring; \
         set {KEYRING_VAR} or {KEYRING_FILE_VAR} with that key, then replay"
    )]
    NoKeyring {
        /// The key the event names.
        key_id: String,
    },
    /// The event names a key the keyring does not hold (never added, or retired too early).
    #[error(
        "key `{key_id}` ({KEY_ID_HEADER}) is not in this process's keyring; add it to {KEYRING_VAR}, then replay"
    )]
    UnknownKey {
        /// The key the event names.
        key_id: String,
    },
    /// The `Jetfn-Key-Id` header is not a key id.
    #[error("{KEY_ID_HEADER}: not a key id (1 to 64 letters, digits, '.', '_' or '-')")]
    BadKeyId,
    /// A sensitive field is in clear although the event says its fields are sealed.
    #[error("`{field}`: not sealed, though the event names key `{key_id}`")]
    NotSealed {
        /// The field's JSON pointer.
        field: String,
        /// The key the event names.
        key_id: String,
    },
    /// A field holds a sealed value and the event names no key (its header was dropped).
    #[error("`{field}`: holds a sealed value and the event has no {KEY_ID_HEADER} header")]
    NoKeyId {
        /// The field's JSON pointer.
        field: String,
    },
    /// A sealed value that is not `jetfn:enc:v1:<base64url>` of at least a nonce and a tag.
    #[error(
        "`{field}`: not a well-formed sealed value (jetfn:enc:v1:<base64url of nonce, ciphertext, tag>)"
    )]
    Malformed {
        /// The field's JSON pointer.
        field: String,
    },
    /// Authentication failed: altered, moved from another event or field, or sealed under another key.
    #[error(
        "`{field}`: does not open with key `{key_id}`: the ciphertext was altered, moved from another event or field, \
         or sealed with another key"
    )]
    Failed {
        /// The field's JSON pointer.
        field: String,
        /// The key the event names.
        key_id: String,
    },
}

impl OpenError {
    /// Whether the event itself is fine and only this process lacks the key: the dead letter replays once the key
    /// is deployed. Otherwise the event is bad and no key will open it.
    pub fn is_missing_key(&self) -> bool {
        matches!(self, Self::NoKeyring { .. } | Self::UnknownKey { .. })
    }
}

/// The sensitive fields of an event type, as JSON pointers into the envelope (`/data/token`).
pub fn sensitive_fields(event_type: &str) -> &'static [&'static str] {
    match events::kind_by_type(event_type) {
        Some(kind) => kind.sensitive,
        None => &[],
    }
}

fn aad(key_id: &str, event_id: &str, event_type: &str, field: &str) -> Vec<u8> {
    let mut aad = AAD_LABEL.to_vec();
    for part in [key_id, event_id, event_type, field] {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        aad.extend_from_slice(&len.to_be_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad
}

fn id_and_type(value: &Value) -> (Option<String>, Option<String>) {
    let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
    (text("id"), text("type"))
}

/// Seals the sensitive fields of a whole CloudEvent (as JSON) with the keyring's current key. Returns the key id
/// for the `Jetfn-Key-Id` header, or `None` when the type has no sensitive field present (nothing to seal).
///
/// # Errors
/// No current key, no `id` or `type`, or no randomness.
pub fn seal_event(value: &mut Value, keyring: &Keyring) -> Result<Option<String>, SealError> {
    let (_, ty) = id_and_type(value);
    let ty = ty.ok_or(SealError::Missing("type"))?;
    let fields = sensitive_fields(&ty);
    if !fields.iter().any(|field| value.pointer(field).is_some()) {
        return Ok(None);
    }
    let key_id = keyring
        .current()
        .ok_or_else(|| SealError::NoCurrentKey(ty.clone()))?
        .to_owned();
    seal_fields(value, fields, keyring, &key_id)?;
    Ok(Some(key_id))
}

/// Seals only the given sensitive fields, with the key `key_id` rather than the current one, and leaves every other
/// field as it is. An edited dead letter needs it: a value the operator typed anew is sealed under the key that
/// the event's other, still sealed fields use, since one `Jetfn-Key-Id` names the key of them all. A pointer that
/// is not one of the type's sensitive fields is left alone (no function would open it), as is an absent one.
///
/// # Errors
/// A key the keyring lacks, no `id` or `type`, or no randomness.
pub fn seal_fields(
    value: &mut Value,
    fields: &[&str],
    keyring: &Keyring,
    key_id: &str,
) -> Result<(), SealError> {
    let (id, ty) = id_and_type(value);
    let ty = ty.ok_or(SealError::Missing("type"))?;
    let sensitive = sensitive_fields(&ty);
    let fields: Vec<&str> = fields
        .iter()
        .copied()
        .filter(|field| sensitive.contains(field) && value.pointer(field).is_some())
        .collect();
    if fields.is_empty() {
        return Ok(());
    }
    let id = id.ok_or(SealError::Missing("id"))?;
    let key = keyring
        .keys
        .get(key_id)
        .ok_or_else(|| SealError::UnknownKey(key_id.to_owned()))?;
    let random = ring::rand::SystemRandom::new();
    for field in fields {
        let Some(slot) = value.pointer_mut(field) else {
            continue;
        };
        let mut nonce = [0u8; NONCE_LEN];
        random.fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut buffer = serde_json::to_vec(slot).unwrap_or_default();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad(key_id, &id, &ty, field)),
            &mut buffer,
        )
        .map_err(|_| SealError::Random)?;
        let mut sealed = nonce.to_vec();
        sealed.append(&mut buffer);
        *slot = Value::String(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(sealed)));
    }
    Ok(())
}

/// Whether a field's value is in the sealed form (`jetfn:enc:v1:...`); says nothing of whether it opens.
pub fn is_sealed(value: &Value) -> bool {
    value.as_str().is_some_and(|text| text.starts_with(PREFIX))
}

/// Opens a stored event's sealed fields, in memory. `key_id` is its `Jetfn-Key-Id` header. Returns the plaintext
/// event to decode, or `None` when there is nothing to open (the bytes decode as they are; bytes that are not
/// JSON are left to the decoder, which names the error).
///
/// # Errors
/// The key is missing ([`OpenError::is_missing_key`]), or a field is altered, moved, malformed, or in clear
/// where the event says it is sealed.
pub fn open_event(
    payload: &[u8],
    key_id: Option<&str>,
    keyring: Option<&Keyring>,
) -> Result<Option<Vec<u8>>, OpenError> {
    let Some(key_id) = key_id else {
        // The common case costs a substring search: only an event holding the prefix is parsed, to refuse a sealed
        // field whose header was dropped (it would otherwise reach a handler as ciphertext text).
        if !has_prefix(payload) {
            return Ok(None);
        }
        let Ok(value) = serde_json::from_slice::<Value>(payload) else {
            return Ok(None);
        };
        let (_, ty) = id_and_type(&value);
        for field in sensitive_fields(ty.as_deref().unwrap_or_default()) {
            if value
                .pointer(field)
                .and_then(Value::as_str)
                .is_some_and(|text| text.starts_with(PREFIX))
            {
                return Err(OpenError::NoKeyId {
                    field: (*field).to_owned(),
                });
            }
        }
        return Ok(None);
    };
    if !valid_key_id(key_id) {
        return Err(OpenError::BadKeyId);
    }
    let Ok(mut value) = serde_json::from_slice::<Value>(payload) else {
        return Ok(None);
    };
    let (id, ty) = id_and_type(&value);
    let (Some(id), Some(ty)) = (id, ty) else {
        return Ok(None);
    };
    let fields = sensitive_fields(&ty);
    if fields.is_empty() {
        return Ok(None);
    }
    let keyring = keyring.ok_or_else(|| OpenError::NoKeyring {
        key_id: key_id.to_owned(),
    })?;
    let key = keyring
        .keys
        .get(key_id)
        .ok_or_else(|| OpenError::UnknownKey {
            key_id: key_id.to_owned(),
        })?;
    for field in fields {
        let Some(slot) = value.pointer_mut(field) else {
            continue;
        };
        let malformed = || OpenError::Malformed {
            field: (*field).to_owned(),
        };
        let Some(sealed) = slot.as_str().and_then(|text| text.strip_prefix(PREFIX)) else {
            return Err(OpenError::NotSealed {
                field: (*field).to_owned(),
                key_id: key_id.to_owned(),
            });
        };
        let bytes = URL_SAFE_NO_PAD.decode(sealed).map_err(|_| malformed())?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(malformed());
        }
        let (nonce, rest) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| malformed())?;
        let mut buffer = rest.to_vec();
        let failed = || OpenError::Failed {
            field: (*field).to_owned(),
            key_id: key_id.to_owned(),
        };
        let plain = key
            .open_in_place(nonce, Aad::from(aad(key_id, &id, &ty, field)), &mut buffer)
            .map_err(|_| failed())?;
        *slot = serde_json::from_slice(plain).map_err(|_| failed())?;
    }
    Ok(Some(serde_json::to_vec(&value).unwrap_or_default()))
}

/// Every consumed event is searched for the sealed-field prefix: a byte-window comparison at every offset was 2% of
/// the runtime's CPU per event (tests/bench/ANALYSIS.md, section 7); memchr's vectorised search is a fraction of it,
/// with its searcher built once rather than per event.
fn has_prefix(payload: &[u8]) -> bool {
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(PREFIX));
    FINDER.find(payload).is_some()
}

/// The key id of a stored message's headers, if its fields are sealed.
pub fn key_id_of(headers: Option<&async_nats::HeaderMap>) -> Option<&str> {
    headers
        .and_then(|headers| headers.get(KEY_ID))
        .map(|value| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="; // 32 bytes, tests only
    const K2: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="; // 32 bytes, tests only
    const TOKEN: &str = "q3Jm9xV7bT2wY5nK8pL1sD4fG6hR0zXc";

    fn keyring(current: &str) -> Keyring {
        Keyring::parse(
            &format!(r#"{{"current":"{current}","keys":{{"k1":"{K1}","k2":"{K2}"}}}}"#),
            "test",
        )
        .unwrap()
    }

    fn reset(id: &str) -> Value {
        serde_json::json!({
            "specversion": "1.0", "id": id, "source": "/t", "type": "users.password_reset_requested",
            "data": {"user_id": "u-1", "email": "ada@example.com", "token": TOKEN, "expires_at": "2030-01-01T00:00:00Z"}
        })
    }

    fn sealed(id: &str, ring: &Keyring) -> (Vec<u8>, String) {
        let mut value = reset(id);
        let key_id = seal_event(&mut value, ring)
            .unwrap()
            .expect("a sensitive field");
        (serde_json::to_vec(&value).unwrap(), key_id)
    }

    #[test]
    fn a_sealed_field_holds_no_plaintext_and_opens_to_the_same_event() {
        let ring = keyring("k1");
        let (bytes, key_id) = sealed("e-1", &ring);
        assert_eq!(key_id, "k1");
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(!text.contains(TOKEN), "{text}");
        assert!(text.contains(PREFIX), "{text}");
        let opened = open_event(&bytes, Some("k1"), Some(&ring))
            .unwrap()
            .unwrap();
        let opened: Value = serde_json::from_slice(&opened).unwrap();
        assert_eq!(opened, reset("e-1"));
        // Two seals of one value differ (a fresh nonce each time).
        assert_ne!(sealed("e-1", &ring).0, bytes);
    }

    #[test]
    fn a_tampered_ciphertext_fails_authentication() {
        let ring = keyring("k1");
        let (bytes, _) = sealed("e-1", &ring);
        let mut value: Value = serde_json::from_slice(&bytes).unwrap();
        let token = value["data"]["token"].as_str().unwrap().to_owned();
        let body = token.strip_prefix(PREFIX).unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(body).unwrap();
        raw[NONCE_LEN] ^= 1;
        value["data"]["token"] = Value::String(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw)));
        let err = open_event(
            &serde_json::to_vec(&value).unwrap(),
            Some("k1"),
            Some(&ring),
        )
        .unwrap_err();
        assert!(matches!(err, OpenError::Failed { .. }), "{err}");
        assert!(err.to_string().contains("/data/token"), "{err}");
        assert!(!err.is_missing_key());
        // Truncated: malformed, not a panic.
        value["data"]["token"] = Value::String(format!("{PREFIX}AAAA"));
        let err = open_event(
            &serde_json::to_vec(&value).unwrap(),
            Some("k1"),
            Some(&ring),
        )
        .unwrap_err();
        assert!(matches!(err, OpenError::Malformed { .. }), "{err}");
    }

    #[test]
    fn the_associated_data_binds_the_event_id_type_field_and_key_id() {
        let ring = keyring("k1");
        let (first, _) = sealed("e-1", &ring);
        let first: Value = serde_json::from_slice(&first).unwrap();
        // Moved to another event.
        let mut other = reset("e-2");
        other["data"]["token"] = first["data"]["token"].clone();
        let err = open_event(
            &serde_json::to_vec(&other).unwrap(),
            Some("k1"),
            Some(&ring),
        )
        .unwrap_err();
        assert!(matches!(err, OpenError::Failed { .. }), "{err}");
        // Relabelled as another key (k2 is in the ring): fails too.
        let err = open_event(
            &serde_json::to_vec(&first).unwrap(),
            Some("k2"),
            Some(&ring),
        )
        .unwrap_err();
        assert!(matches!(err, OpenError::Failed { .. }), "{err}");
        // Moved to another event type with a sensitive field of the same name path.
        let code = serde_json::json!({
            "specversion": "1.0", "id": "e-1", "source": "/t", "type": "users.email_verification_requested",
            "data": {"code": first["data"]["token"].clone()}
        });
        let err =
            open_event(&serde_json::to_vec(&code).unwrap(), Some("k1"), Some(&ring)).unwrap_err();
        assert!(matches!(err, OpenError::Failed { .. }), "{err}");
    }

    #[test]
    fn an_unknown_or_absent_key_is_named_and_is_a_missing_key() {
        let ring = keyring("k1");
        let (bytes, _) = sealed("e-1", &ring);
        let err = open_event(&bytes, Some("k9"), Some(&ring)).unwrap_err();
        assert!(
            err.is_missing_key() && err.to_string().contains("`k9`"),
            "{err}"
        );
        let err = open_event(&bytes, Some("k1"), None).unwrap_err();
        assert!(
            err.is_missing_key() && err.to_string().contains(KEYRING_VAR),
            "{err}"
        );
        // The header dropped: refused, not handed on as ciphertext.
        let err = open_event(&bytes, None, Some(&ring)).unwrap_err();
        assert!(matches!(err, OpenError::NoKeyId { .. }), "{err}");
        assert!(matches!(
            open_event(&bytes, Some("a b"), Some(&ring)),
            Err(OpenError::BadKeyId)
        ));
        for err in [
            open_event(&bytes, Some("k9"), Some(&ring)).unwrap_err(),
            open_event(&bytes, Some("k1"), None).unwrap_err(),
        ] {
            assert!(!err.to_string().contains(TOKEN));
        }
    }

    #[test]
    fn rotation_keeps_old_events_open_and_seals_new_ones_with_the_new_key() {
        let old = keyring("k1");
        let (before, _) = sealed("e-1", &old);
        let new = keyring("k2");
        let (after, key_id) = sealed("e-2", &new);
        assert_eq!(key_id, "k2");
        assert!(
            open_event(&before, Some("k1"), Some(&new))
                .unwrap()
                .is_some()
        );
        assert!(
            open_event(&after, Some("k2"), Some(&new))
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn plaintext_events_and_events_without_sensitive_fields_pass_untouched() {
        let ring = keyring("k1");
        let plain = serde_json::to_vec(&reset("e-1")).unwrap();
        assert_eq!(open_event(&plain, None, Some(&ring)).unwrap(), None);
        assert_eq!(open_event(&plain, None, None).unwrap(), None);
        // A sensitive field in clear under a key id is refused: the header promised it sealed.
        let err = open_event(&plain, Some("k1"), Some(&ring)).unwrap_err();
        assert!(matches!(err, OpenError::NotSealed { .. }), "{err}");
        let mut welcome =
            serde_json::json!({"id": "e", "type": "users.registered", "data": {"name": "x"}});
        assert_eq!(seal_event(&mut welcome, &ring).unwrap(), None);
        assert_eq!(
            open_event(b"not json", Some("k1"), Some(&ring)).unwrap(),
            None
        );
    }

    #[test]
    fn seal_fields_seals_the_named_sensitive_fields_with_the_key_asked_for() {
        // k2 is current; the fields are sealed with k1 as asked, and open under k1 only.
        let ring = keyring("k2");
        let mut value = reset("e-1");
        seal_fields(&mut value, &["/data/token", "/data/email"], &ring, "k1").unwrap();
        assert!(is_sealed(&value["data"]["token"]), "{value}");
        assert_eq!(
            value["data"]["email"], "ada@example.com",
            "not a sensitive field: left as is"
        );
        let bytes = serde_json::to_vec(&value).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains(TOKEN));
        let opened: Value = serde_json::from_slice(
            &open_event(&bytes, Some("k1"), Some(&ring))
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(opened, reset("e-1"));
        assert!(matches!(
            open_event(&bytes, Some("k2"), Some(&ring)),
            Err(OpenError::Failed { .. })
        ));
        let err = seal_fields(&mut reset("e-1"), &["/data/token"], &ring, "k9").unwrap_err();
        assert_eq!(err, SealError::UnknownKey("k9".to_owned()));
        assert!(!err.to_string().contains(TOKEN), "{err}");
        // Nothing asked for, nothing done, even without the key.
        let mut untouched = reset("e-1");
        seal_fields(&mut untouched, &[], &ring, "k9").unwrap();
        assert_eq!(untouched, reset("e-1"));
    }

    #[test]
    fn a_keyring_is_checked_and_never_prints_its_keys() {
        let ring = keyring("k1");
        let debug = format!("{ring:?}");
        assert!(!debug.contains(K1) && debug.contains("k1"), "{debug}");
        let err = Keyring::parse(r#"{"current":"k3","keys":{"k1":"MDEy"}}"#, "JETFN_KEYRING")
            .unwrap_err();
        assert!(
            err.to_string().starts_with("JETFN_KEYRING: keys.k1"),
            "{err}"
        );
        let err = Keyring::parse(
            &format!(r#"{{"current":"k3","keys":{{"k1":"{K1}"}}}}"#),
            "X",
        )
        .unwrap_err();
        assert!(err.to_string().contains("current"), "{err}");
        let err = Keyring::parse(&format!(r#"{{"keys":{{"k1":"{K1}""#), "X").unwrap_err();
        assert!(!err.to_string().contains(K1), "{err}");
        let err = Keyring::from_vars(Some("{}".into()), Some("/x".into())).unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        // A consumer's keyring may have no current key: it opens, it cannot seal.
        let open_only = Keyring::parse(&format!(r#"{{"keys":{{"k1":"{K1}"}}}}"#), "X").unwrap();
        let (bytes, _) = sealed("e-1", &ring);
        assert!(open_event(&bytes, Some("k1"), Some(&open_only)).is_ok());
        assert!(matches!(
            seal_event(&mut reset("e-1"), &open_only),
            Err(SealError::NoCurrentKey(_))
        ));
    }
}
