//! Payload types of the messaging platform (kept in the search index) and of the scheduled cleanup.
//!
//! Message events carry their own version: `created_at` for a create, `updated_at` for an update. The index keeps
//! the version it holds per message and ignores anything older; a delete is final (a tombstone), so no create or
//! update, redelivered or late, brings a deleted message back.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::macros::datetime;

use crate::{Event, Invalid};

/// A new message in a conversation: index it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "MessageCreated", example = MessageCreated::example())]
#[schemars(extend("additionalProperties" = true))]
pub struct MessageCreated {
    /// The platform's id of the message; one index entry per id.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub message_id: String,
    /// The conversation (channel, thread) the message belongs to; searches can filter on it.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub conversation_id: String,
    /// Who wrote it.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub sender_id: String,
    /// The text, as written.
    #[schemars(length(max = 65536))]
    pub body: String,
    /// When the message was written; its version, and its age for retention.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub created_at: OffsetDateTime,
}

/// A message was edited: replace its text in the index, unless the index already holds a newer version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "MessageUpdated", example = MessageUpdated::example())]
#[schemars(extend("additionalProperties" = true))]
pub struct MessageUpdated {
    /// The platform's id of the message.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub message_id: String,
    /// The conversation the message belongs to.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub conversation_id: String,
    /// Who wrote it.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub sender_id: String,
    /// The new text.
    #[schemars(length(max = 65536))]
    pub body: String,
    /// When the message was first written (its age for retention).
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub created_at: OffsetDateTime,
    /// When this edit was made: the version. An edit older than what the index holds is ignored.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub updated_at: OffsetDateTime,
}

/// A message was deleted: remove it from the index for good.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "MessageDeleted", example = MessageDeleted::example())]
#[schemars(extend("additionalProperties" = true))]
pub struct MessageDeleted {
    /// The platform's id of the message.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub message_id: String,
    /// The conversation the message belonged to.
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[^\r\n\u0000]*$"))]
    pub conversation_id: String,
    /// When it was deleted.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub deleted_at: OffsetDateTime,
}

/// Time for retention work. Usually fired by the schedule NATS holds (`infra/nats/schedules/`); anyone may publish
/// one. Absent fields mean the cleanup function's configured retention.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "CleanupRequested", example = CleanupRequested::example())]
#[serde(deny_unknown_fields)]
pub struct CleanupRequested {
    /// Remove index entries of messages written longer ago than this many seconds. The cleanup function refuses a
    /// value below its operator-set floor (`CLEANUP_MIN_INDEX_RETENTION_SECS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_RETENTION_SECS))]
    pub index_retention_secs: Option<u64>,
    /// Remove dead-letter records stored longer ago than this many seconds. The cleanup function refuses a value
    /// below its operator-set floor (`CLEANUP_MIN_DLQ_RETENTION_SECS`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = MAX_RETENTION_SECS))]
    pub dlq_retention_secs: Option<u64>,
}

/// The longest retention a `cleanup.requested` may ask for: 100 years. A cut-off is `now - retention`, and a
/// retention without a ceiling overflows the date arithmetic (it panicked once); nothing real needs more.
pub const MAX_RETENTION_SECS: u64 = 3_153_600_000;

/// A cleanup run finished; what it removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "CleanupCompleted", example = CleanupCompleted::example())]
#[schemars(extend("additionalProperties" = true))]
pub struct CleanupCompleted {
    /// The id of the `cleanup.requested` event this run answered.
    #[schemars(length(min = 1, max = 300))]
    pub request_id: String,
    /// Index entries removed (messages and tombstones written before `index_cutoff`).
    pub index_removed: u64,
    /// Dead-letter records removed (stored before `dlq_cutoff`).
    pub dlq_removed: u64,
    /// Failure-journal records removed because their message has left its stream.
    pub journal_removed: u64,
    /// Index entries older than this were removed.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub index_cutoff: OffsetDateTime,
    /// Dead-letter records older than this were removed.
    #[serde(with = "time::serde::rfc3339")]
    #[schemars(with = "String", extend("format" = "date-time"))]
    pub dlq_cutoff: OffsetDateTime,
    /// How long the run took.
    pub duration_ms: u64,
}

const EXAMPLE_CREATED: OffsetDateTime = datetime!(2026-11-25 10:00:00 UTC);

impl MessageCreated {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            message_id: "m-1001".to_owned(),
            conversation_id: "c-42".to_owned(),
            sender_id: "u-1001".to_owned(),
            body: "Shall we ship the analytical engine on Friday?".to_owned(),
            created_at: EXAMPLE_CREATED,
        }
    }
}

impl MessageUpdated {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            message_id: "m-1001".to_owned(),
            conversation_id: "c-42".to_owned(),
            sender_id: "u-1001".to_owned(),
            body: "Shall we ship the analytical engine on Monday?".to_owned(),
            created_at: EXAMPLE_CREATED,
            updated_at: datetime!(2026-11-25 10:05:00 UTC),
        }
    }
}

impl MessageDeleted {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            message_id: "m-1001".to_owned(),
            conversation_id: "c-42".to_owned(),
            deleted_at: datetime!(2026-11-25 10:10:00 UTC),
        }
    }
}

impl CleanupRequested {
    /// The example the catalog shows: the configured retention.
    pub fn example() -> Self {
        Self::default()
    }
}

impl CleanupCompleted {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            request_id: "schedule-cleanup-daily:118".to_owned(),
            index_removed: 1200,
            dlq_removed: 3,
            journal_removed: 0,
            index_cutoff: datetime!(2026-08-27 03:30:00 UTC),
            dlq_cutoff: datetime!(2026-10-26 03:30:00 UTC),
            duration_ms: 412,
        }
    }
}

impl Event for MessageCreated {
    const TYPE: &'static str = "messages.created";
}

impl Event for MessageUpdated {
    const TYPE: &'static str = "messages.updated";

    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        if self.updated_at < self.created_at {
            invalid.push(
                "/data/updated_at",
                "must not be earlier than /data/created_at",
            );
        }
        invalid.into_result()
    }
}

impl Event for MessageDeleted {
    const TYPE: &'static str = "messages.deleted";
}

impl Event for CleanupRequested {
    const TYPE: &'static str = "cleanup.requested";

    /// The schema holds the same bounds; this is the typed decoder's copy of them, so an event that bypassed the
    /// schema (a test's `job`, another decoder) cannot reach the date arithmetic with a value it would overflow on.
    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::default();
        for (field, value) in [
            ("/data/index_retention_secs", self.index_retention_secs),
            ("/data/dlq_retention_secs", self.dlq_retention_secs),
        ] {
            match value {
                Some(0) => invalid.push(field, "must be at least 1"),
                Some(secs) if secs > MAX_RETENTION_SECS => {
                    invalid.push(field, format!("must be at most {MAX_RETENTION_SECS}"));
                }
                _ => {}
            }
        }
        invalid.into_result()
    }
}

impl Event for CleanupCompleted {
    const TYPE: &'static str = "cleanup.completed";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_before_its_message_is_refused() {
        let mut updated = MessageUpdated::example();
        assert!(updated.validate().is_ok());
        updated.updated_at = updated.created_at - time::Duration::seconds(1);
        let err = updated.validate().unwrap_err();
        assert_eq!(err.errors[0].field, "/data/updated_at");
    }

    #[test]
    fn timestamps_travel_as_rfc3339() {
        let json = serde_json::to_value(MessageCreated::example()).unwrap();
        assert_eq!(json["created_at"], "2026-11-25T10:00:00Z");
        let back: MessageCreated = serde_json::from_value(json).unwrap();
        assert_eq!(back, MessageCreated::example());
    }
}
