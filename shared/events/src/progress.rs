//! The progress of a long job, as a handler reports it (`job.progress(done, total, note)`) and anyone reads it:
//! one KV entry per (function, event) in the [`PROGRESS_BUCKET`] bucket, under [`progress_key`].

use serde::{Deserialize, Serialize};

/// The KV bucket progress is written to (entries expire a day after their last write: `infra/nats/kv`).
pub const PROGRESS_BUCKET: &str = "jetfn-progress";

/// The key of `function`'s progress on the event `event_id`: `<function>.<v5 UUID of the event id, simple>`.
/// Event ids may hold `:`, which keys cannot, so the id is hashed; in Python,
/// `f"{function}.{uuid.uuid5(uuid.UUID('8d7f4c2a-3b1e-5f60-9a4d-2c6e8b0f1a37'), event_id).hex}"`.
pub fn progress_key(function: &str, event_id: &str) -> String {
    let digest = uuid::Uuid::new_v5(&PROGRESS_NAMESPACE, event_id.as_bytes());
    format!("{function}.{}", digest.simple())
}

const PROGRESS_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x8d7f_4c2a_3b1e_5f60_9a4d_2c6e_8b0f_1a37);

/// What a progress entry holds (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The event the job handles.
    pub event_id: String,
    /// The function running it.
    pub function: String,
    /// The delivery that reported it (1 for the first).
    pub attempt: u32,
    /// Units done so far.
    pub done: u64,
    /// Units in all (0 when unknown).
    pub total: u64,
    /// A short note from the handler (at most [`MAX_NOTE_CHARS`] characters, control characters removed).
    pub note: String,
    /// When it was reported (RFC 3339).
    pub updated: String,
}

/// The longest note kept; a longer one is cut.
pub const MAX_NOTE_CHARS: usize = 200;

/// The note as it is stored: control characters dropped, cut to [`MAX_NOTE_CHARS`].
pub fn clean_note(note: &str) -> String {
    note.chars()
        .filter(|c| !c.is_control())
        .take(MAX_NOTE_CHARS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_a_valid_kv_key_and_stable() {
        let key = progress_key("indexing", "messages.created:m-1:42");
        assert!(key.starts_with("indexing."));
        assert_eq!(key.len(), "indexing.".len() + 32);
        assert_eq!(key, progress_key("indexing", "messages.created:m-1:42"));
        assert_ne!(key, progress_key("indexing", "messages.created:m-1:43"));
    }

    #[test]
    fn the_documented_python_formula_gives_the_same_key() {
        // uuid.uuid5(uuid.UUID("8d7f4c2a-3b1e-5f60-9a4d-2c6e8b0f1a37"), "users.registered:u-1001").hex
        assert_eq!(
            progress_key("welcome", "users.registered:u-1001"),
            "welcome.8dc90cd38baf53928f0113beb3801cd4"
        );
    }

    #[test]
    fn notes_are_cut_and_cleaned() {
        assert_eq!(clean_note("a\r\nb"), "ab");
        assert_eq!(clean_note(&"x".repeat(500)).len(), MAX_NOTE_CHARS);
    }
}
