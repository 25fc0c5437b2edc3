//! The NATS service `jetfn-index` (group `jetfn.index`): `search` (ranked hits) and `purge` (retention, asked by
//! the cleanup function). Its requests, replies, subjects and error codes are the contract in
//! `events::services::index`, which the cleanup function and `jetfn search` use too.

use std::sync::Arc;
use std::time::Duration;

use async_nats::service::{self, ServiceExt as _};
use events::services::index::{
    BUSY, GROUP, PURGE_ENDPOINT, PurgeRequest, PurgeResponse, SEARCH_ENDPOINT, SERVICE,
    SearchRequest,
};
use events::services::{BAD_REQUEST, INTERNAL};
use futures::StreamExt as _;
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::committer::Handle;
use crate::index::{self, SearchError, Searcher};

/// What the service allows a caller: the bounds that keep one request, or many, from taking the process down.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// A purge's cut-off must lie at least this far in the past (`INDEX_MIN_RETENTION_SECS`).
    pub min_retention: Duration,
    /// Searches running at once (`INDEX_MAX_CONCURRENT_SEARCHES`); one more is answered [`BUSY`] at once rather
    /// than queued, so a flood costs a reply each, not a task and its memory each.
    pub max_searches: usize,
    /// Fault injection (`INDEX_TEST_SEARCH_DELAY_MS`): each search holds its slot this long. Zero in production.
    pub test_search_delay: Duration,
}

/// Starts the service and answers until `stop`; search runs on the blocking pool (it is CPU work).
pub(crate) async fn serve_queries(
    client: async_nats::Client,
    searcher: Searcher,
    committer: Handle,
    limits: Limits,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let slots = Arc::new(Semaphore::new(limits.max_searches));
    let service = client
        .service_builder()
        .description("jetfn full-text index of messages: search, and purge for retention")
        .start(SERVICE, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|err| anyhow::anyhow!("starting the {SERVICE} service: {err}"))?;
    let group = service.group(GROUP);
    let mut search = group
        .endpoint(SEARCH_ENDPOINT)
        .await
        .map_err(|err| anyhow::anyhow!("adding the search endpoint: {err}"))?;
    let mut purge = group
        .endpoint(PURGE_ENDPOINT)
        .await
        .map_err(|err| anyhow::anyhow!("adding the purge endpoint: {err}"))?;
    tracing::info!(service = SERVICE, group = GROUP, "search service started");
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                Some(request) = search.next() => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        let busy = service_error(
                            BUSY,
                            format!("busy: {} searches are running; ask again shortly", limits.max_searches),
                        );
                        if let Err(err) = request.respond(Err(busy)).await {
                            tracing::warn!(error = %err, "answering a search failed");
                        }
                        continue;
                    };
                    let searcher = searcher.clone();
                    tokio::spawn(async move {
                        let answer = answer_search(searcher, &request.message.payload, limits.test_search_delay).await;
                        drop(slot);
                        if let Err(err) = request.respond(answer).await {
                            tracing::warn!(error = %err, "answering a search failed");
                        }
                    });
                }
                Some(request) = purge.next() => {
                    let committer = committer.clone();
                    tokio::spawn(async move {
                        let answer = answer_purge(&committer, &request.message.payload, limits.min_retention).await;
                        if let Err(err) = request.respond(answer).await {
                            tracing::warn!(error = %err, "answering a purge failed");
                        }
                    });
                }
                else => break,
            }
        }
        if let Err(err) = service.stop().await {
            tracing::warn!(error = %err, "stopping the search service failed");
        }
    }))
}

fn service_error(code: u16, status: impl Into<String>) -> service::error::Error {
    service::error::Error {
        code: code.into(),
        status: status.into(),
    }
}

async fn answer_search(
    searcher: Searcher,
    payload: &[u8],
    test_delay: Duration,
) -> Result<bytes::Bytes, service::error::Error> {
    let request: SearchRequest = serde_json::from_slice(payload)
        .map_err(|err| service_error(BAD_REQUEST, format!("bad request: {err}")))?;
    // Refused before any work: tantivy sizes its collector by `offset + limit`.
    request
        .page()
        .map_err(|reason| service_error(BAD_REQUEST, reason))?;
    let response = tokio::task::spawn_blocking(move || {
        if !test_delay.is_zero() {
            std::thread::sleep(test_delay);
        }
        searcher.search(&request)
    })
    .await
    .map_err(|err| {
        // A panic's message is for the log, not for whoever asked (it may quote internals, or the request).
        tracing::error!(error = %err, "a search panicked");
        service_error(INTERNAL, "search failed: internal error")
    })?
    .map_err(|err| match err {
        SearchError::BadRequest(reason) => service_error(BAD_REQUEST, reason),
        SearchError::Internal(reason) => service_error(INTERNAL, reason),
    })?;
    serde_json::to_vec(&response)
        .map(bytes::Bytes::from)
        .map_err(|err| service_error(INTERNAL, err.to_string()))
}

async fn answer_purge(
    committer: &Handle,
    payload: &[u8],
    min_retention: Duration,
) -> Result<bytes::Bytes, service::error::Error> {
    let request: PurgeRequest = serde_json::from_slice(payload)
        .map_err(|err| service_error(BAD_REQUEST, format!("bad request: {err}")))?;
    check_cutoff(request.before, OffsetDateTime::now_utc(), min_retention)
        .map_err(|reason| service_error(BAD_REQUEST, reason))?;
    let removed = committer
        .purge(crate::ms(request.before))
        .await
        .map_err(|err| service_error(INTERNAL, err))?;
    tracing::info!(removed, before = %index::rfc3339(crate::ms(request.before)), "index purged");
    serde_json::to_vec(&PurgeResponse {
        removed,
        before: request.before,
    })
    .map(bytes::Bytes::from)
    .map_err(|err| service_error(INTERNAL, err.to_string()))
}

/// A purge cut-off the service accepts: in the past, and at least `min_retention` ago. A cut-off in the future
/// would remove everything and raise the watermark past events not yet written.
fn check_cutoff(
    before: OffsetDateTime,
    now: OffsetDateTime,
    min_retention: Duration,
) -> Result<(), String> {
    if before > now {
        return Err("before: must not be in the future".to_owned());
    }
    let floor = time::Duration::try_from(min_retention).unwrap_or(time::Duration::MAX);
    if now.checked_sub(floor).is_none_or(|latest| before > latest) {
        return Err(format!(
            "before: must be at least {} s ago (INDEX_MIN_RETENTION_SECS)",
            min_retention.as_secs()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_off_in_the_future_or_inside_the_floor_is_refused() {
        let now = OffsetDateTime::now_utc();
        let day = Duration::from_secs(24 * 3600);
        let future = check_cutoff(now + time::Duration::hours(1), now, day).unwrap_err();
        assert!(future.contains("future"), "{future}");
        let recent = check_cutoff(now - time::Duration::hours(1), now, day).unwrap_err();
        assert!(recent.contains("INDEX_MIN_RETENTION_SECS"), "{recent}");
        assert_eq!(
            check_cutoff(now - time::Duration::days(2), now, day),
            Ok(())
        );
        assert_eq!(check_cutoff(now, now, Duration::ZERO), Ok(()));
        // A floor longer than the calendar refuses every cut-off.
        assert!(check_cutoff(now - time::Duration::days(400), now, Duration::MAX).is_err());
    }
}
