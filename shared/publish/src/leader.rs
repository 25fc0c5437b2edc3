//! Reads from a stream's leader (`STREAM.MSG.GET`), never a direct get: on an R3 stream a follower that has not
//! applied the latest writes answers a direct get with "none" or an older copy, and where the answer decides
//! something only the leader's counts (ARCHITECTURE.md, "a read that failed, stalled or may be stale is never taken
//! as an answer").

use async_nats::jetstream::kv;
use async_nats::jetstream::stream::{LastRawMessageError, LastRawMessageErrorKind};

/// `key`'s last entry in `store` as the bucket stream's leader holds it; `None` when the key never held anything.
/// A delete, a purge, or the server's marker of a TTL's removal is an entry of that operation, as async-nats reads
/// one, so a caller tells "removed" from "written" as it does for `kv::Store::entry`.
///
/// # Errors
/// The leader could not be asked (no right to `STREAM.MSG.GET`, a timeout, an election).
pub async fn kv_entry(
    store: &kv::Store,
    key: &str,
) -> Result<Option<kv::Entry>, LastRawMessageError> {
    const OPERATION: &str = "KV-Operation";
    const MARKER: &str = "Nats-Marker-Reason";
    let message = match store
        .stream
        .get_last_raw_message_by_subject(&format!("{}{key}", store.prefix))
        .await
    {
        Ok(message) => message,
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let operation = match message.headers.get(OPERATION).map(|value| value.as_str()) {
        Some("DEL") => kv::Operation::Delete,
        Some("PURGE") => kv::Operation::Purge,
        _ if message.headers.get(MARKER).is_some() => kv::Operation::Purge,
        _ => kv::Operation::Put,
    };
    Ok(Some(kv::Entry {
        bucket: store.name.clone(),
        key: key.to_owned(),
        value: message.payload,
        revision: message.sequence,
        delta: 0,
        created: message.time,
        operation,
        seen_current: false,
    }))
}
