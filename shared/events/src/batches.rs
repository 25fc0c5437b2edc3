//! Batches: many events of one catalog type submitted together, all or none, with counters that move once per
//! item and one `batch.completed` when the last item is finished (seed 004's project progress, seed 001's batch
//! sending). The record a batch keeps in the [`BATCH_BUCKET`] KV bucket, the headers and extensions its items
//! carry, and the pure counting rule that the runtime applies with compare-and-set (ARCHITECTURE.md, "Batches").

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Event, Invalid};

/// The KV bucket of batch records, one key per batch: the batch id.
pub const BATCH_BUCKET: &str = "jetfn-batches";
/// The header naming the batch an item belongs to. The runtime reads headers, not bodies, to find a batch item.
pub const BATCH_ID_HEADER: &str = "Jetfn-Batch-Id";
/// The header holding the item's index in its batch (0-based).
pub const BATCH_INDEX_HEADER: &str = "Jetfn-Batch-Index";
/// The CloudEvents extension attribute with the batch id (the same as the header, for readers of the body).
pub const BATCH_ID_EXTENSION: &str = "batchid";
/// The CloudEvents extension attribute with the item's index.
pub const BATCH_INDEX_EXTENSION: &str = "batchindex";
/// The most items one batch holds: the record keeps a bit per item (12.5 KB at this size) and every counted item
/// rewrites it.
pub const MAX_BATCH_ITEMS: u64 = 100_000;
/// The ledger prefix (in `jetfn-ledger`) of every batch's `batch.completed` effect, one key per batch: the key is
/// the batch's, not a function's, so whichever process finishes the last item (a function, a replay, the
/// dlq-router counting a dead item) claims the same effect. No function may take this name.
pub const COMPLETED_LEDGER_PREFIX: &str = "batches";
/// How long a submission may take from its `pending` record to `open`; past it, the first item that sees the
/// record still pending marks the batch `abandoned` (compare-and-set, so the submitter's open then fails) and
/// every item of it is skipped. Equal to `EVENTS`' duplicate window, so a retried submission inside it
/// republishes nothing twice.
pub const OPEN_DEADLINE_SECS: u64 = 300;

/// Where a batch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BatchState {
    /// Its items are being published; items that arrive wait for `open`.
    Pending,
    /// Every item landed: items run.
    Open,
    /// Cancelled: items not yet started are skipped and counted as cancelled.
    Cancelled,
    /// The submission never finished within [`OPEN_DEADLINE_SECS`]: none of its items is handled or counted.
    Abandoned,
}

/// What one item came to, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOutcome {
    /// Its handler succeeded (or skipped it on purpose).
    Succeeded,
    /// It was dead-lettered.
    Failed,
    /// The batch was cancelled before it started.
    Cancelled,
}

/// The record of one batch (JSON, the value of key `<batch id>` in [`BATCH_BUCKET`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// The batch id.
    pub id: String,
    /// The catalog type of every item.
    pub item_type: String,
    /// How many items.
    pub total: u64,
    /// Where it stands.
    pub state: BatchState,
    /// When the submission began (RFC 3339).
    pub created: String,
    /// Items handled successfully.
    #[serde(default)]
    pub succeeded: u64,
    /// Items dead-lettered.
    #[serde(default)]
    pub failed: u64,
    /// Items skipped because the batch was cancelled.
    #[serde(default)]
    pub cancelled: u64,
    /// One bit per item, lowest index in the lowest bit of the first byte, as lower-case hex: set once the item is
    /// counted, so a redelivery, a replica or a replay never counts it twice. Empty means none.
    #[serde(default)]
    pub done: String,
    /// The index of the item whose count finished the batch: only its deliveries publish `batch.completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_by: Option<u64>,
}

/// What [`BatchRecord::count`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// The item was counted before (its bit was set): nothing changed.
    Already,
    /// The item is counted now; `finished` when it was the last one.
    Now {
        /// This count finished the batch.
        finished: bool,
    },
}

impl BatchRecord {
    /// A new record in `pending`, for a submission that begins now.
    pub fn pending(id: &str, item_type: &str, total: u64, created: String) -> Self {
        Self {
            id: id.to_owned(),
            item_type: item_type.to_owned(),
            total,
            state: BatchState::Pending,
            created,
            succeeded: 0,
            failed: 0,
            cancelled: 0,
            done: String::new(),
            finished_by: None,
        }
    }

    /// Items counted so far.
    pub fn finished(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }

    /// Every item is counted.
    pub fn is_complete(&self) -> bool {
        self.finished() >= self.total
    }

    /// Whether item `index` is counted already.
    pub fn is_counted(&self, index: u64) -> bool {
        let (byte, bit) = position(index);
        self.done
            .get(byte * 2..byte * 2 + 2)
            .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            .is_some_and(|value| value & (1 << bit) != 0)
    }

    /// Counts item `index` as `outcome`, once: the rule the runtime applies under compare-and-set, so the bit and
    /// the counter move in one write. An index outside the batch is refused.
    ///
    /// # Errors
    /// The index is not below `total`.
    pub fn count(&mut self, index: u64, outcome: ItemOutcome) -> Result<Counted, Invalid> {
        if index >= self.total {
            return Err(Invalid::new(
                "/batchindex",
                format!("must be below the batch's total ({})", self.total),
            ));
        }
        if self.is_counted(index) {
            return Ok(Counted::Already);
        }
        let (byte, bit) = position(index);
        let mut bytes = hex_decode(&self.done);
        if bytes.len() <= byte {
            bytes.resize(byte + 1, 0);
        }
        bytes[byte] |= 1 << bit;
        self.done = crate::hex::lower(&bytes);
        match outcome {
            ItemOutcome::Succeeded => self.succeeded += 1,
            ItemOutcome::Failed => self.failed += 1,
            ItemOutcome::Cancelled => self.cancelled += 1,
        }
        let finished = self.is_complete();
        if finished {
            self.finished_by = Some(index);
        }
        Ok(Counted::Now { finished })
    }

    /// The `batch.completed` event's data.
    pub fn completed(&self) -> BatchCompleted {
        BatchCompleted {
            batch_id: self.id.clone(),
            item_type: self.item_type.clone(),
            total: self.total,
            succeeded: self.succeeded,
            failed: self.failed,
            cancelled: self.cancelled,
        }
    }
}

fn position(index: u64) -> (usize, u32) {
    (
        usize::try_from(index / 8).unwrap_or(usize::MAX / 4),
        u32::try_from(index % 8).unwrap_or(0),
    )
}

fn hex_decode(text: &str) -> Vec<u8> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .unwrap_or(0)
        })
        .collect()
}

/// Checks a batch id: 1 to 40 characters of `A-Z a-z 0-9 _ -`, so it is a KV key, a subject token, and (with a
/// chunk number) a `Nats-Batch-Id` of at most 64 characters.
///
/// # Errors
/// Names the rule broken.
pub fn check_batch_id(id: &str) -> Result<(), Invalid> {
    if id.is_empty() || id.len() > 40 {
        return Err(Invalid::new("batch id", "must be 1 to 40 characters"));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(Invalid::new(
            "batch id",
            "may hold only A-Z, a-z, 0-9, '-' and '_'",
        ));
    }
    Ok(())
}

/// The event id of item `index` of batch `batch_id`: derived, so a resubmission publishes the same ids (the
/// stream's duplicate window and the ledger absorb them).
pub fn batch_item_id(batch_id: &str, index: u64) -> String {
    format!("batch:{batch_id}:{index}")
}

/// The id of a batch's `batch.completed` event (its `Nats-Msg-Id`): one per batch, whoever publishes it.
pub fn batch_completed_id(batch_id: &str) -> String {
    format!("batch-completed:{batch_id}")
}

/// A batch's last item was finished: how many succeeded, failed (were dead-lettered) and were cancelled. Exactly
/// one per batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "BatchCompleted", example = BatchCompleted::example())]
#[schemars(extend("additionalProperties" = true))]
pub struct BatchCompleted {
    /// The batch id.
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub batch_id: String,
    /// The catalog type of its items.
    #[schemars(length(min = 1, max = 128))]
    pub item_type: String,
    /// How many items it had.
    pub total: u64,
    /// Items handled successfully.
    pub succeeded: u64,
    /// Items dead-lettered.
    pub failed: u64,
    /// Items skipped because the batch was cancelled.
    pub cancelled: u64,
}

impl BatchCompleted {
    /// The example the catalog shows.
    pub fn example() -> Self {
        Self {
            batch_id: "newsletter-2026-11".to_owned(),
            item_type: "users.registered".to_owned(),
            total: 50_000,
            succeeded: 49_990,
            failed: 7,
            cancelled: 3,
        }
    }
}

impl Event for BatchCompleted {
    const TYPE: &'static str = "batch.completed";

    fn validate(&self) -> Result<(), Invalid> {
        if self.succeeded + self.failed + self.cancelled != self.total {
            return Err(Invalid::new(
                "/data/total",
                "must equal succeeded + failed + cancelled",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_counts_once_and_the_last_count_finishes_the_batch() {
        let mut record = BatchRecord::pending("b1", "users.registered", 10, String::new());
        for index in 0..9 {
            assert_eq!(
                record.count(index, ItemOutcome::Succeeded).unwrap(),
                Counted::Now { finished: false }
            );
            assert_eq!(
                record.count(index, ItemOutcome::Failed).unwrap(),
                Counted::Already
            );
        }
        assert_eq!(
            record.count(9, ItemOutcome::Cancelled).unwrap(),
            Counted::Now { finished: true }
        );
        assert_eq!(record.finished_by, Some(9));
        assert_eq!(
            (record.succeeded, record.failed, record.cancelled),
            (9, 0, 1)
        );
        assert!(record.count(10, ItemOutcome::Succeeded).is_err());
        assert!(record.completed().validate().is_ok());
    }

    #[test]
    fn the_bitmap_survives_json() {
        let mut record = BatchRecord::pending("b1", "users.registered", 20, String::new());
        record.count(17, ItemOutcome::Failed).unwrap();
        let back: BatchRecord =
            serde_json::from_slice(&serde_json::to_vec(&record).unwrap()).unwrap();
        assert!(back.is_counted(17));
        assert!(!back.is_counted(16));
        assert_eq!(back.done, "000002");
    }

    #[test]
    fn batch_ids_are_checked() {
        assert!(check_batch_id("newsletter-2026_11").is_ok());
        assert!(check_batch_id("").is_err());
        assert!(check_batch_id("a.b").is_err());
        assert!(check_batch_id(&"x".repeat(41)).is_err());
    }
}
