//! Batches: submit many events of one catalog type, all or none; read and cancel them; and the compare-and-set
//! steps the runtime takes per item (gate, count). One implementation for the SDK, the CLI and the runtime.
//!
//! The protocol (ARCHITECTURE.md, "Batches", argues it): the submitter creates the batch record `pending`
//! (create-only: a second submission of the same id finds it), publishes the items to `events.<type>` in
//! JetStream atomic batches of at most [`ATOMIC_CHUNK`] (the server's default limit, 1000), each item with
//! `Nats-Msg-Id` = its derived id and the batch headers, and then turns the record `open` with a compare-and-set
//! on the revision it created. Items of a record that is not `open` are not handled: they wait while it is
//! `pending`, and are acked unhandled when it is `abandoned` (a submission that did not finish within
//! [`events::batches::OPEN_DEADLINE_SECS`]). So the batch is accepted whole at the one write that opens it, or
//! not at all, however many chunks it took.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use events::batches::{
    BATCH_ID_EXTENSION, BATCH_ID_HEADER, BATCH_INDEX_EXTENSION, BATCH_INDEX_HEADER, BatchRecord,
    BatchState, Counted, ItemOutcome, MAX_BATCH_ITEMS, OPEN_DEADLINE_SECS, batch_item_id,
    check_batch_id,
};
use events::{BATCH_BUCKET, Invalid};
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::{Publisher, sealed};

/// The most items one JetStream atomic batch carries: nats-server's default `max_batch_size` (2.12+). A batch
/// of more items is published in several atomic chunks; the record's `open` makes them one.
pub const ATOMIC_CHUNK: usize = 1000;

/// Why a batch operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// An item (or the batch id, or the type) is invalid; nothing was submitted.
    #[error("batch refused: {0}")]
    Invalid(String),
    /// The id names another batch (another type or size), or one that cannot take this change.
    #[error("batch {id}: {reason}")]
    Conflict {
        /// The batch id.
        id: String,
        /// Why.
        reason: String,
    },
    /// No batch has this id.
    #[error("no batch {0}")]
    NotFound(String),
    /// NATS refused or did not answer; the same call may be repeated.
    #[error("batch: {0}")]
    Nats(String),
}

fn nats(what: &str, err: impl std::fmt::Display) -> BatchError {
    BatchError::Nats(format!("{what}: {err}"))
}

/// What a submission did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Submitted {
    /// The batch id.
    pub id: String,
    /// The catalog type of its items.
    pub item_type: String,
    /// How many items.
    pub total: u64,
    /// How many atomic publishes carried them.
    pub chunks: usize,
    /// True when the batch existed already (an open, cancelled or finished batch with this id): nothing was
    /// published or counted again.
    pub duplicate: bool,
}

/// A batch's progress, as `jetfn batch status` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchStatus {
    /// The batch id.
    pub id: String,
    /// The catalog type of its items.
    pub item_type: String,
    /// Where it stands.
    pub state: BatchState,
    /// How many items.
    pub total: u64,
    /// Items handled successfully.
    pub succeeded: u64,
    /// Items dead-lettered.
    pub failed: u64,
    /// Items skipped because the batch was cancelled.
    pub cancelled: u64,
    /// Items not yet finished.
    pub remaining: u64,
    /// Every item is finished (`batch.completed` is published once, when this became true).
    pub complete: bool,
    /// When the submission began (RFC 3339).
    pub created: String,
}

impl From<&BatchRecord> for BatchStatus {
    fn from(record: &BatchRecord) -> Self {
        Self {
            id: record.id.clone(),
            item_type: record.item_type.clone(),
            state: record.state,
            total: record.total,
            succeeded: record.succeeded,
            failed: record.failed,
            cancelled: record.cancelled,
            remaining: record.total.saturating_sub(record.finished()),
            complete: record.is_complete(),
            created: record.created.clone(),
        }
    }
}

/// The batch bucket.
///
/// # Errors
/// [`BatchError::Nats`] when it does not exist or NATS did not answer.
pub async fn bucket(js: &jetstream::Context) -> Result<kv::Store, BatchError> {
    js.get_key_value(BATCH_BUCKET)
        .await
        .map_err(|err| nats(BATCH_BUCKET, err))
}

/// A record and the revision it was read at.
///
/// A KV read is a direct get, which any replica of an R3 bucket may answer, and a follower that has not applied
/// the record's creation yet answers "none". An item is published only after its record exists, so "none" would
/// skip a live batch's item unhandled: it is asked again of the stream's leader, whose answer is final.
async fn read(store: &kv::Store, id: &str) -> Result<Option<(BatchRecord, kv::Entry)>, BatchError> {
    let entry = match store
        .entry(id)
        .await
        .map_err(|err| nats("reading the batch record", err))?
    {
        Some(entry) => Some(entry),
        None => read_from_leader(store, id).await?,
    };
    record_of(entry)
}

/// A record as the leader holds it: for a submitter deciding what its own earlier writes left, where a
/// follower's older answer ("pending" for a batch already open) would make it report a failure that is none.
async fn read_at_leader(
    store: &kv::Store,
    id: &str,
) -> Result<Option<(BatchRecord, kv::Entry)>, BatchError> {
    record_of(read_from_leader(store, id).await?)
}

fn record_of(entry: Option<kv::Entry>) -> Result<Option<(BatchRecord, kv::Entry)>, BatchError> {
    let Some(entry) = entry.filter(|entry| entry.operation == kv::Operation::Put) else {
        return Ok(None);
    };
    let record = serde_json::from_slice(&entry.value)
        .map_err(|err| nats("a batch record that is not a batch record", err))?;
    Ok(Some((record, entry)))
}

/// The key's last entry as the bucket stream's leader holds it (`STREAM.MSG.GET`, never a direct get).
async fn read_from_leader(store: &kv::Store, id: &str) -> Result<Option<kv::Entry>, BatchError> {
    crate::leader::kv_entry(store, id)
        .await
        .map_err(|err| nats("reading the batch record from the leader", err))
}

/// Writes `record` over `revision`; `Ok(false)` when another write came first (read again and retry).
async fn replace(
    store: &kv::Store,
    record: &BatchRecord,
    revision: u64,
) -> Result<bool, BatchError> {
    let value = serde_json::to_vec(record).map_err(|err| nats("encoding the record", err))?;
    match store.update(&record.id, value.into(), revision).await {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
        Err(err) => Err(nats("writing the batch record", err)),
    }
}

/// The progress of batch `id`; `None` when there is no such batch.
///
/// # Errors
/// [`BatchError::Nats`].
pub async fn status(
    client: &async_nats::Client,
    id: &str,
) -> Result<Option<BatchStatus>, BatchError> {
    check_batch_id(id).map_err(|err| BatchError::Invalid(err.to_string()))?;
    let store = bucket(&jetstream::new(client.clone())).await?;
    Ok(read(&store, id)
        .await?
        .map(|(record, _)| BatchStatus::from(&record)))
}

/// Cancels batch `id`: items not yet started are skipped and counted as cancelled; items running finish.
/// Cancelling a cancelled, finished or abandoned batch changes nothing and returns its status.
///
/// # Errors
/// [`BatchError::NotFound`]; [`BatchError::Conflict`] for a batch still being submitted; [`BatchError::Nats`].
pub async fn cancel(client: &async_nats::Client, id: &str) -> Result<BatchStatus, BatchError> {
    check_batch_id(id).map_err(|err| BatchError::Invalid(err.to_string()))?;
    let store = bucket(&jetstream::new(client.clone())).await?;
    loop {
        let (mut record, entry) = read(&store, id)
            .await?
            .ok_or_else(|| BatchError::NotFound(id.to_owned()))?;
        match record.state {
            BatchState::Pending => {
                return Err(BatchError::Conflict {
                    id: id.to_owned(),
                    reason: "it is still being submitted; cancel it once it is open".to_owned(),
                });
            }
            BatchState::Open if !record.is_complete() => {}
            _ => return Ok(BatchStatus::from(&record)),
        }
        record.state = BatchState::Cancelled;
        if replace(&store, &record, entry.revision).await? {
            return Ok(BatchStatus::from(&record));
        }
    }
}

/// What an item of a batch may do, by its batch record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// The batch is open: handle the item.
    Run,
    /// The batch is still being submitted: wait and ask again.
    Wait,
    /// The batch was cancelled: skip the item and count it cancelled, unless an earlier delivery of it may have
    /// started it (see the runtime's rule).
    Cancelled {
        /// The item is counted already (its outcome, whatever it was, stands).
        counted: bool,
    },
    /// The batch was never accepted (abandoned, or no record): ack the item unhandled, count nothing.
    Skip(&'static str),
}

/// Where item `index` of batch `id` stands. A `pending` record older than the open deadline by the server's clock
/// (its `ts` now against its stamp on the record's write) is marked `abandoned` here, with a compare-and-set on
/// that revision, so exactly one of the submitter's open and this abandonment wins. `js` is the context the
/// bucket was bound on: the server's clock is read through it.
///
/// # Errors
/// [`BatchError::Nats`], also when the server's clock could not be read for a record that may be abandoned.
pub async fn gate(
    js: &jetstream::Context,
    store: &kv::Store,
    id: &str,
    index: u64,
) -> Result<Gate, BatchError> {
    gate_at(
        js,
        store,
        id,
        index,
        OffsetDateTime::now_utc(),
        &crate::clock::OFFSET,
        time::Duration::seconds(OPEN_DEADLINE_SECS.cast_signed()),
    )
    .await
}

/// [`gate`] with this host's clock read as `local_now`, the server's clock estimated from it by `offset`, and the
/// deadline as `deadline`, so a test can set a host's clock off (with an offset of its own: the process's is shared
/// by tests with other clocks) and wait out a short deadline on the real server's clock.
async fn gate_at(
    js: &jetstream::Context,
    store: &kv::Store,
    id: &str,
    index: u64,
    local_now: OffsetDateTime,
    offset: &crate::clock::Offset,
    deadline: time::Duration,
) -> Result<Gate, BatchError> {
    loop {
        let Some((mut record, entry)) = read(store, id).await? else {
            return Ok(Gate::Skip("no batch record: the batch was never submitted"));
        };
        if index >= record.total {
            return Ok(Gate::Skip("the item's index is outside its batch"));
        }
        match record.state {
            BatchState::Open => return Ok(Gate::Run),
            BatchState::Cancelled => {
                return Ok(Gate::Cancelled {
                    counted: record.is_counted(index),
                });
            }
            BatchState::Abandoned => {
                return Ok(Gate::Skip(
                    "the batch was abandoned before all its items landed",
                ));
            }
            BatchState::Pending => {
                // Only the server's clock may abandon: a host minutes ahead of it would abandon a batch still
                // being submitted (its submitter then reports it could not be opened). This host's clock, set to
                // the server's by the last reading's offset, only spares the request while the record is young
                // by it too; uncorrected, a host minutes behind would abandon that many minutes late.
                if offset
                    .server_time_at(local_now)
                    .is_some_and(|estimate| estimate - entry.created < deadline)
                {
                    return Ok(Gate::Wait);
                }
                let server_now = crate::clock::server_now(js, &store.stream_name)
                    .await
                    .map_err(|err| nats("judging the batch record's age", err))?;
                offset.learn(local_now, server_now);
                if server_now - entry.created < deadline {
                    return Ok(Gate::Wait);
                }
                record.state = BatchState::Abandoned;
                if replace(store, &record, entry.revision).await? {
                    tracing::warn!(batch = id, "batch abandoned: its submission did not finish");
                }
            }
        }
    }
}

/// Counts item `index` of batch `id` as `outcome`, exactly once: its bit and its counter change in one
/// compare-and-set write of the record, retried on a conflict. Returns what happened and the record as written
/// (or as found, when the item was counted before).
///
/// # Errors
/// [`BatchError::NotFound`], [`BatchError::Invalid`] for an index outside the batch, [`BatchError::Nats`].
pub async fn count(
    store: &kv::Store,
    id: &str,
    index: u64,
    outcome: ItemOutcome,
) -> Result<(Counted, BatchRecord), BatchError> {
    loop {
        let (mut record, entry) = read(store, id)
            .await?
            .ok_or_else(|| BatchError::NotFound(id.to_owned()))?;
        let counted = record
            .count(index, outcome)
            .map_err(|err| BatchError::Invalid(err.to_string()))?;
        if counted == Counted::Already {
            return Ok((counted, record));
        }
        if replace(store, &record, entry.revision).await? {
            return Ok((counted, record));
        }
    }
}

/// [`BATCH_ID_HEADER`] as a header name: every consumed message is asked for it, and a `&str` name would be
/// checked and copied into a new `HeaderName` each time.
pub const BATCH_ID: async_nats::header::HeaderName =
    async_nats::header::HeaderName::from_static(BATCH_ID_HEADER);
/// [`BATCH_INDEX_HEADER`] as a header name.
pub const BATCH_INDEX: async_nats::header::HeaderName =
    async_nats::header::HeaderName::from_static(BATCH_INDEX_HEADER);

/// The batch id and item index a message's headers name, when it is a batch item.
pub fn item_of(headers: Option<&HeaderMap>) -> Option<(String, u64)> {
    let headers = headers?;
    item_from(
        headers.get(BATCH_ID).map(async_nats::HeaderValue::as_str),
        headers
            .get(BATCH_INDEX)
            .map(async_nats::HeaderValue::as_str),
    )
}

/// [`item_of`] from the two headers' values, for a caller that has read them already.
pub fn item_from(id: Option<&str>, index: Option<&str>) -> Option<(String, u64)> {
    let index = index?.parse().ok()?;
    Some((id?.to_owned(), index))
}

/// One item ready to publish.
struct Item {
    id: String,
    bytes: bytes::Bytes,
    key_id: Option<String>,
}

impl Publisher {
    /// Submits `items` (each the `data` of an event of type `item_type`) as batch `batch_id`, all or none: every
    /// item is validated first (the first invalid one is named by index and field, and nothing is stored), then
    /// the batch record is created `pending`, the items are published in atomic chunks, and the record is
    /// opened. Each item is an ordinary event (`id` `batch:<batch id>:<index>`, extensions `batchid` and
    /// `batchindex`, headers `Jetfn-Batch-Id` and `Jetfn-Batch-Index`) handled by the type's function.
    ///
    /// Submitting an id again is safe: an open (or finished, or cancelled) batch is reported as a `duplicate` and
    /// nothing is published; a submission that failed half-way is resumed (the chunks that landed are found by
    /// their message ids). A resubmission must carry the same items.
    ///
    /// # Errors
    /// [`BatchError::Invalid`] before anything is stored; [`BatchError::Conflict`] when the id names another
    /// batch or the batch was abandoned; [`BatchError::Nats`] when NATS failed (call again with the same id).
    pub async fn submit_batch(
        &self,
        batch_id: &str,
        item_type: &str,
        items: &[Value],
    ) -> Result<Submitted, BatchError> {
        check_batch_id(batch_id).map_err(|err| BatchError::Invalid(err.to_string()))?;
        if events::kind_by_type(item_type).is_none() {
            return Err(BatchError::Invalid(format!(
                "type: {item_type:?} is not in the event catalog"
            )));
        }
        let total = u64::try_from(items.len()).unwrap_or(u64::MAX);
        if total == 0 || total > MAX_BATCH_ITEMS {
            return Err(BatchError::Invalid(format!(
                "items: a batch holds 1 to {MAX_BATCH_ITEMS} items, not {total}"
            )));
        }
        let prepared = self.prepare(batch_id, item_type, items)?;
        let js = &self.js;
        let store = bucket(js).await?;
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let pending = BatchRecord::pending(batch_id, item_type, total, now);
        let value = serde_json::to_vec(&pending).map_err(|err| nats("encoding", err))?;
        let revision = match store.create(batch_id, value.into()).await {
            Ok(revision) => revision,
            Err(err) if err.kind() == kv::CreateErrorKind::AlreadyExists => {
                let (found, entry) = read_at_leader(&store, batch_id)
                    .await?
                    .ok_or_else(|| nats("the batch record", "vanished"))?;
                if found.item_type != item_type || found.total != total {
                    return Err(BatchError::Conflict {
                        id: batch_id.to_owned(),
                        reason: format!(
                            "the id is taken by a batch of {} {} items",
                            found.total, found.item_type
                        ),
                    });
                }
                match found.state {
                    BatchState::Pending => entry.revision,
                    BatchState::Abandoned => {
                        return Err(BatchError::Conflict {
                            id: batch_id.to_owned(),
                            reason:
                                "an earlier submission of it was abandoned; submit under a new id"
                                    .to_owned(),
                        });
                    }
                    _ => {
                        return Ok(Submitted {
                            id: batch_id.to_owned(),
                            item_type: item_type.to_owned(),
                            total,
                            chunks: 0,
                            duplicate: true,
                        });
                    }
                }
            }
            Err(err) => return Err(nats("creating the batch record", err)),
        };
        let subject = events::subject_for(item_type);
        let mut chunks = 0;
        for (number, chunk) in prepared.chunks(ATOMIC_CHUNK).enumerate() {
            self.publish_chunk(batch_id, number, &subject, chunk)
                .await?;
            chunks += 1;
        }
        let mut open = pending;
        open.state = BatchState::Open;
        if !replace(&store, &open, revision).await? {
            let state = read_at_leader(&store, batch_id)
                .await?
                .map(|(record, _)| record.state);
            // Opened (then maybe cancelled) by another submission of the same id: the batch was accepted whole,
            // and every chunk this one sent was a duplicate of that one's.
            if matches!(state, Some(BatchState::Open | BatchState::Cancelled)) {
                return Ok(Submitted {
                    id: batch_id.to_owned(),
                    item_type: item_type.to_owned(),
                    total,
                    chunks,
                    duplicate: true,
                });
            }
            return Err(BatchError::Conflict {
                id: batch_id.to_owned(),
                reason: format!(
                    "it could not be opened (now {}): its submission took longer than {OPEN_DEADLINE_SECS} s",
                    state.map_or_else(|| "gone".to_owned(), |s| format!("{s:?}").to_lowercase())
                ),
            });
        }
        Ok(Submitted {
            id: batch_id.to_owned(),
            item_type: item_type.to_owned(),
            total,
            chunks,
            duplicate: false,
        })
    }

    /// Every item as the bytes to store, validated (and sealed with a keyring) the way `publish_json` does.
    fn prepare(
        &self,
        batch_id: &str,
        item_type: &str,
        items: &[Value],
    ) -> Result<Vec<Item>, BatchError> {
        let time = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let mut prepared = Vec::with_capacity(items.len());
        for (index, data) in items.iter().enumerate() {
            let index = index as u64;
            let id = batch_item_id(batch_id, index);
            let mut event = serde_json::json!({
                "specversion": events::SPECVERSION,
                "id": id,
                "source": self.source,
                "type": item_type,
                "time": time,
                "datacontenttype": events::DATACONTENTTYPE_JSON,
                "data": data,
                BATCH_ID_EXTENSION: batch_id,
                BATCH_INDEX_EXTENSION: index,
            });
            let refused =
                |err: &dyn std::fmt::Display| BatchError::Invalid(format!("item {index}: {err}"));
            let bytes = serde_json::to_vec(&event).map_err(|err| refused(&err))?;
            self.validator
                .check_for_publish(&bytes)
                .map_err(|err: Invalid| refused(&err))?;
            let (bytes, key_id) = match &self.keyring {
                Some(keyring) if !sealed::sensitive_fields(item_type).is_empty() => {
                    let key_id =
                        sealed::seal_event(&mut event, keyring).map_err(|err| refused(&err))?;
                    let sealed = serde_json::to_vec(&event).map_err(|err| refused(&err))?;
                    events::check_size(sealed.len()).map_err(|err| refused(&err))?;
                    (sealed, key_id)
                }
                _ => (bytes, None),
            };
            prepared.push(Item {
                id,
                bytes: bytes.into(),
                key_id,
            });
        }
        Ok(prepared)
    }

    /// One JetStream atomic batch (`Nats-Batch-Id`, `-Sequence`, `-Commit: 1` on the last): the first message and
    /// the commit are requests (the server answers the first with an empty message when it is staged, and the
    /// commit with the stream's ack), the rest plain publishes in between. A chunk whose message ids the stream
    /// holds already (error 10201: a resumed submission) landed whole before: atomic batches commit all or none.
    async fn publish_chunk(
        &self,
        batch_id: &str,
        number: usize,
        subject: &str,
        chunk: &[Item],
    ) -> Result<(), BatchError> {
        let client = self.js.client();
        let atomic_id = format!("{batch_id}-{number}-{}", events::hex::random_lower(4));
        let last = chunk.len();
        for (offset, item) in chunk.iter().enumerate() {
            let sequence = offset + 1;
            let index = number * ATOMIC_CHUNK + offset;
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, item.id.as_str());
            headers.insert("Nats-Batch-Id", atomic_id.as_str());
            headers.insert("Nats-Batch-Sequence", sequence.to_string().as_str());
            headers.insert(BATCH_ID_HEADER, batch_id);
            headers.insert(BATCH_INDEX_HEADER, index.to_string().as_str());
            headers.insert(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            );
            if let Some(key_id) = &item.key_id {
                headers.insert(sealed::KEY_ID_HEADER, key_id.as_str());
            }
            crate::inject(&tracing::Span::current(), &mut headers);
            if sequence == last {
                headers.insert("Nats-Batch-Commit", "1");
            }
            if sequence == 1 || sequence == last {
                let request = async_nats::Request::new()
                    .headers(headers)
                    .payload(item.bytes.clone())
                    .timeout(Some(Duration::from_secs(10)));
                let reply = client
                    .send_request(subject.to_owned(), request)
                    .await
                    .map_err(|err| nats("publishing a chunk of the batch", err))?;
                match answer(&reply.payload) {
                    Answer::Ok => {}
                    Answer::Duplicate => return Ok(()),
                    Answer::Error(why) => {
                        return Err(nats("the stream refused a chunk of the batch", why));
                    }
                }
            } else {
                client
                    .publish_with_headers(subject.to_owned(), headers, item.bytes.clone())
                    .await
                    .map_err(|err| nats("publishing a chunk of the batch", err))?;
            }
        }
        Ok(())
    }
}

enum Answer {
    Ok,
    Duplicate,
    Error(String),
}

/// The stream's answer to one message of an atomic batch: empty (staged), a publish ack, or an error.
fn answer(payload: &[u8]) -> Answer {
    if payload.is_empty() {
        return Answer::Ok;
    }
    let Ok(value) = serde_json::from_slice::<Value>(payload) else {
        return Answer::Error(String::from_utf8_lossy(payload).into_owned());
    };
    match value.get("error") {
        None => Answer::Ok,
        Some(error) if error.get("err_code").and_then(Value::as_u64) == Some(10201) => {
            Answer::Duplicate
        }
        Some(error) => Answer::Error(
            error
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("an error")
                .to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Offset;

    const DEADLINE: time::Duration = time::Duration::seconds(OPEN_DEADLINE_SECS.cast_signed());

    /// The batch bucket on a real server (R1, history 1, as `infra/nats/kv/jetfn-batches.json` has it on one node).
    async fn bucket_on(nats: &testkit::NatsServer) -> (jetstream::Context, kv::Store) {
        let client = async_nats::connect(nats.url()).await.expect("connect");
        let js = jetstream::new(client);
        let store = js
            .create_key_value(kv::Config {
                bucket: BATCH_BUCKET.to_owned(),
                history: 1,
                ..Default::default()
            })
            .await
            .expect("the batch bucket");
        (js, store)
    }

    /// A record as a submitter creates it before its first chunk; its revision.
    async fn pending(store: &kv::Store, id: &str) -> (BatchRecord, u64) {
        let record =
            BatchRecord::pending(id, "users.registered", 2, "2026-11-30T00:00:00Z".to_owned());
        let revision = store
            .create(id, serde_json::to_vec(&record).unwrap().into())
            .await
            .expect("the record is created");
        (record, revision)
    }

    async fn state(store: &kv::Store, id: &str) -> BatchState {
        read(store, id).await.unwrap().expect("the record").0.state
    }

    /// Before: the age was this host's clock against the server's stamp, so a host ten minutes ahead abandoned a
    /// batch whose submission had just begun, and its submitter's open then failed ("could not be opened").
    #[tokio::test]
    async fn a_host_whose_clock_runs_ahead_does_not_abandon_a_batch_being_submitted() {
        let nats = testkit::NatsServer::start();
        let (js, store) = bucket_on(&nats).await;
        let (record, revision) = pending(&store, "ahead").await;
        let ahead = OffsetDateTime::now_utc() + time::Duration::minutes(10);
        let offset = Offset::new();
        assert_eq!(
            gate_at(&js, &store, "ahead", 0, ahead, &offset, DEADLINE)
                .await
                .unwrap(),
            Gate::Wait
        );
        assert_eq!(state(&store, "ahead").await, BatchState::Pending);
        let mut open = record;
        open.state = BatchState::Open;
        assert!(
            replace(&store, &open, revision).await.unwrap(),
            "the submitter's open lands on the revision it created"
        );
        assert_eq!(
            gate_at(&js, &store, "ahead", 0, ahead, &offset, DEADLINE)
                .await
                .unwrap(),
            Gate::Run
        );
    }

    /// The server's clock decides both ways: a record young by it waits whatever this host says, and one past the
    /// deadline by it is abandoned (a short deadline here, on the real server's clock).
    #[tokio::test]
    async fn a_record_past_the_deadline_by_the_servers_clock_is_abandoned() {
        let nats = testkit::NatsServer::start();
        let (js, store) = bucket_on(&nats).await;
        let deadline = time::Duration::seconds(2);
        pending(&store, "stalled").await;
        let ahead = OffsetDateTime::now_utc() + time::Duration::minutes(10);
        assert_eq!(
            gate_at(&js, &store, "stalled", 0, ahead, &Offset::new(), deadline)
                .await
                .unwrap(),
            Gate::Wait
        );
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        let gate = gate_at(
            &js,
            &store,
            "stalled",
            1,
            OffsetDateTime::now_utc(),
            &Offset::new(),
            deadline,
        )
        .await
        .unwrap();
        assert_eq!(
            gate,
            Gate::Skip("the batch was abandoned before all its items landed")
        );
        assert_eq!(state(&store, "stalled").await, BatchState::Abandoned);
    }

    /// Before: this host's clock filtered first, so a host ten minutes behind the server kept a stalled batch
    /// waiting ten minutes past its deadline, never asking the server. The offset its first reading of the server's
    /// clock taught it moves its clock to the server's, and the batch is abandoned as soon as it is due.
    #[tokio::test]
    async fn a_host_whose_clock_runs_behind_abandons_a_stalled_batch_promptly() {
        let nats = testkit::NatsServer::start();
        let (js, store) = bucket_on(&nats).await;
        let deadline = time::Duration::seconds(2);
        pending(&store, "behind").await;
        let behind = || OffsetDateTime::now_utc() - time::Duration::minutes(10);
        let offset = Offset::new();
        // Young by the server's clock: it waits, and the reading teaches the offset.
        assert_eq!(
            gate_at(&js, &store, "behind", 0, behind(), &offset, deadline)
                .await
                .unwrap(),
            Gate::Wait
        );
        tokio::time::sleep(Duration::from_millis(2_300)).await;
        let gate = gate_at(&js, &store, "behind", 1, behind(), &offset, deadline)
            .await
            .unwrap();
        assert_eq!(
            gate,
            Gate::Skip("the batch was abandoned before all its items landed")
        );
        assert_eq!(state(&store, "behind").await, BatchState::Abandoned);
    }

    /// A record past the deadline by this host's clock, whose server cannot be asked: an error (the item is
    /// retried), never an abandonment.
    #[tokio::test]
    async fn an_unreadable_server_clock_is_an_error_not_an_abandonment() {
        let nats = testkit::NatsServer::start();
        let (js, store) = bucket_on(&nats).await;
        pending(&store, "unasked").await;
        // The bucket's server under a JetStream domain no server serves: the clock's request finds no one.
        let elsewhere = jetstream::with_domain(js.client(), "nowhere");
        let ahead = OffsetDateTime::now_utc() + time::Duration::minutes(10);
        let gate = gate_at(
            &elsewhere,
            &store,
            "unasked",
            0,
            ahead,
            &Offset::new(),
            DEADLINE,
        )
        .await;
        assert!(matches!(gate, Err(BatchError::Nats(_))), "{gate:?}");
        assert_eq!(state(&store, "unasked").await, BatchState::Pending);
    }
}
