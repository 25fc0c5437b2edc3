//! `jetfn-index`, served by the indexing function: full-text `search` over messages, and `purge` for retention
//! (asked by the cleanup function). The index is owned by that one process.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The service's name, as `$SRV.INFO` and `$SRV.PING` report it.
pub const SERVICE: &str = "jetfn-index";
/// The group its endpoints sit under.
pub const GROUP: &str = "jetfn.index";
/// The search endpoint's name in [`GROUP`].
pub const SEARCH_ENDPOINT: &str = "search";
/// The subject a client sends a [`SearchRequest`] to: `<GROUP>.<SEARCH_ENDPOINT>`.
pub const SEARCH_SUBJECT: &str = "jetfn.index.search";
/// The purge endpoint's name in [`GROUP`].
pub const PURGE_ENDPOINT: &str = "purge";
/// The subject a client sends a [`PurgeRequest`] to: `<GROUP>.<PURGE_ENDPOINT>`.
pub const PURGE_SUBJECT: &str = "jetfn.index.purge";

/// Hits per page when the request names no limit.
pub const DEFAULT_LIMIT: usize = 10;
/// The most hits one request may ask for.
pub const MAX_LIMIT: usize = 100;
/// The most hits one request may skip. tantivy keeps `offset + limit` hits in memory for a page, so an unbounded
/// offset let one request abort the process (an allocation of 160 TB) or overflow; deeper pages are a refined
/// query's job, not a scroll's.
pub const MAX_OFFSET: usize = 10_000;

/// The error code of a search refused because the service is already running as many searches as it allows
/// (`INDEX_MAX_CONCURRENT_SEARCHES`): nothing is wrong with the request, ask again shortly.
pub const BUSY: u16 = 503;

/// A search: answered with a [`SearchResponse`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchRequest {
    /// Query text (tantivy query syntax: words, "phrases", +required, -excluded). Empty: everything.
    #[serde(default)]
    pub q: String,
    /// Only this conversation's messages.
    #[serde(default)]
    pub conversation_id: Option<String>,
    /// Hits per page (1 to [`MAX_LIMIT`], default [`DEFAULT_LIMIT`]).
    #[serde(default)]
    pub limit: Option<usize>,
    /// Hits to skip (at most [`MAX_OFFSET`]).
    #[serde(default)]
    pub offset: usize,
}

impl SearchRequest {
    /// The page size this request asks for, within the bounds both ends hold: `limit` 1 to [`MAX_LIMIT`] (default
    /// [`DEFAULT_LIMIT`]), `offset` at most [`MAX_OFFSET`].
    ///
    /// # Errors
    /// Names the field out of bounds and the bound.
    pub fn page(&self) -> Result<usize, String> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(format!("limit must be between 1 and {MAX_LIMIT}"));
        }
        if self.offset > MAX_OFFSET {
            return Err(format!("offset must be at most {MAX_OFFSET}"));
        }
        Ok(limit)
    }
}

/// One hit, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The message id.
    pub message_id: String,
    /// Its conversation.
    pub conversation_id: String,
    /// Its author.
    pub sender_id: String,
    /// Its text.
    pub body: String,
    /// When it was written (RFC 3339).
    pub created_at: String,
    /// BM25 relevance.
    pub score: f32,
}

/// A page of hits and how many match in all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResponse {
    /// Matching messages in all.
    pub total: usize,
    /// This page.
    pub hits: Vec<Hit>,
}

/// Remove the entries of messages written before `before`: answered with a [`PurgeResponse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeRequest {
    /// The cut-off (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub before: OffsetDateTime,
}

/// What a purge removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeResponse {
    /// Index entries removed.
    pub removed: u64,
    /// The cut-off it applied.
    #[serde(with = "time::serde::rfc3339")]
    pub before: OffsetDateTime,
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    fn round_trip<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
        serde_json::from_slice(&serde_json::to_vec(value).expect("serializes")).expect("parses")
    }

    #[test]
    fn the_page_is_bounded_on_both_fields() {
        let page = |limit, offset| {
            SearchRequest {
                limit,
                offset,
                ..SearchRequest::default()
            }
            .page()
        };
        assert_eq!(page(None, 0), Ok(DEFAULT_LIMIT));
        assert_eq!(page(Some(MAX_LIMIT), MAX_OFFSET), Ok(MAX_LIMIT));
        assert!(page(Some(0), 0).unwrap_err().starts_with("limit"));
        assert!(
            page(Some(MAX_LIMIT + 1), 0)
                .unwrap_err()
                .starts_with("limit")
        );
        assert!(
            page(None, MAX_OFFSET + 1)
                .unwrap_err()
                .starts_with("offset")
        );
        assert!(page(None, usize::MAX).unwrap_err().starts_with("offset"));
    }

    #[test]
    fn subjects_are_the_group_and_the_endpoint() {
        assert_eq!(SEARCH_SUBJECT, format!("{GROUP}.{SEARCH_ENDPOINT}"));
        assert_eq!(PURGE_SUBJECT, format!("{GROUP}.{PURGE_ENDPOINT}"));
    }

    #[test]
    fn every_type_survives_a_round_trip() {
        let request = SearchRequest {
            q: "\"hello world\" -spam".to_owned(),
            conversation_id: Some("c1".to_owned()),
            limit: Some(5),
            offset: 10,
        };
        assert_eq!(round_trip(&request), request);
        let response = SearchResponse {
            total: 1,
            hits: vec![Hit {
                message_id: "m1".to_owned(),
                conversation_id: "c1".to_owned(),
                sender_id: "u1".to_owned(),
                body: "hello world".to_owned(),
                created_at: "2026-11-28T08:00:00Z".to_owned(),
                score: 1.5,
            }],
        };
        assert_eq!(round_trip(&response), response);
        let before = datetime!(2026-08-30 08:00:00 UTC);
        let purge = PurgeRequest { before };
        assert_eq!(round_trip(&purge), purge);
        let purged = PurgeResponse { removed: 7, before };
        assert_eq!(round_trip(&purged), purged);
    }

    #[test]
    fn the_wire_form_is_what_clients_in_other_languages_send() {
        let minimal: SearchRequest = serde_json::from_value(json!({})).expect("all optional");
        assert_eq!(minimal, SearchRequest::default());
        let from_cli: SearchRequest = serde_json::from_value(
            json!({"q": "x", "conversation_id": null, "limit": 10, "offset": 0}),
        )
        .expect("nulls allowed");
        assert_eq!(from_cli.conversation_id, None);
        assert_eq!(
            serde_json::to_value(PurgeRequest {
                before: datetime!(2026-08-30 08:00:00 UTC)
            })
            .expect("serializes"),
            json!({"before": "2026-08-30T08:00:00Z"})
        );
    }
}
