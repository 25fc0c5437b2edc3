//! Reading the progress a long job reports (`job.progress(done, total, note)` in a handler): the last report of
//! `function` on an event, from the `jetfn-progress` KV bucket. Plain NATS does the same with a KV get of
//! [`events::progress_key`] (`nats kv get jetfn-progress <key>`).

use async_nats::jetstream;

/// The last progress `function` reported on the event `event_id`; `None` when it reported none (or over a day
/// ago, when the entry expired).
///
/// # Errors
/// [`crate::PublishError::Nats`]: the bucket does not exist, NATS did not answer, or the entry is not JSON.
pub async fn read(
    client: &async_nats::Client,
    function: &str,
    event_id: &str,
) -> Result<Option<events::Progress>, crate::PublishError> {
    let nats = |what: &str, err: &dyn std::fmt::Display| {
        crate::PublishError::Nats(format!("{what}: {err}"))
    };
    let js = jetstream::new(client.clone());
    let store = js
        .get_key_value(events::PROGRESS_BUCKET)
        .await
        .map_err(|err| nats(events::PROGRESS_BUCKET, &err))?;
    let Some(value) = store
        .get(events::progress_key(function, event_id))
        .await
        .map_err(|err| nats("reading progress", &err))?
    else {
        return Ok(None);
    };
    let progress = serde_json::from_slice(&value)
        .map_err(|err| nats("a progress entry that is not JSON", &err))?;
    Ok(Some(progress))
}
