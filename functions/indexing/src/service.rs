//! The NATS service `jetfn-index` (group `jetfn.index`): `search` (ranked hits) and `purge` (retention, asked by
//! the cleanup function). Its requests, replies, subjects and error codes are the contract in
//! `events::services::index`, which the cleanup function and `jetfn search` use too.

use async_nats::service::{self, ServiceExt as _};
use events::services::index::{
    GROUP, PURGE_ENDPOINT, PurgeRequest, PurgeResponse, SEARCH_ENDPOINT, SERVICE, SearchRequest,
};
use events::services::{BAD_REQUEST, INTERNAL};
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;

use crate::committer::Handle;
use crate::index::{self, SearchError, Searcher};

/// Starts the service and answers until `stop`; search runs on the blocking pool (it is CPU work).
pub(crate) async fn serve_queries(
    client: async_nats::Client,
    searcher: Searcher,
    committer: Handle,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
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
                    let searcher = searcher.clone();
                    tokio::spawn(async move {
                        let answer = answer_search(searcher, &request.message.payload).await;
                        if let Err(err) = request.respond(answer).await {
                            tracing::warn!(error = %err, "answering a search failed");
                        }
                    });
                }
                Some(request) = purge.next() => {
                    let committer = committer.clone();
                    tokio::spawn(async move {
                        let answer = answer_purge(&committer, &request.message.payload).await;
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
) -> Result<bytes::Bytes, service::error::Error> {
    let request: SearchRequest = serde_json::from_slice(payload)
        .map_err(|err| service_error(BAD_REQUEST, format!("bad request: {err}")))?;
    let response = tokio::task::spawn_blocking(move || searcher.search(&request))
        .await
        .map_err(|err| service_error(INTERNAL, format!("search failed: {err}")))?
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
) -> Result<bytes::Bytes, service::error::Error> {
    let request: PurgeRequest = serde_json::from_slice(payload)
        .map_err(|err| service_error(BAD_REQUEST, format!("bad request: {err}")))?;
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
