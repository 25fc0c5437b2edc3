use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The only CloudEvents version jetfn speaks.
pub const SPECVERSION: &str = "1.0";
/// Structured mode carries JSON data only.
pub const DATACONTENTTYPE_JSON: &str = "application/json";

/// A CloudEvents 1.0 event in JSON structured mode, generic over its `data`.
///
/// The seeds' envelope maps onto it: `event_id` is `id`, `timestamp` is `time`, `payload` is `data`. Attributes we
/// do not know are kept in `extensions`, so a function can pass them on untouched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudEvent<T = serde_json::Value> {
    /// Always `1.0`.
    pub specversion: String,
    /// Unique per event; also the `Nats-Msg-Id`, so a re-publish is absorbed by the stream's duplicate window.
    pub id: String,
    /// Who produced the event, as a URI reference (for example `/billing-api`).
    pub source: String,
    /// The event type, such as `users.registered`.
    #[serde(rename = "type")]
    pub ty: String,
    /// When the occurrence happened.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub time: Option<OffsetDateTime>,
    /// Always `application/json` when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacontenttype: Option<String>,
    /// The subject of the event in the producer's context (for example a user id), never personal data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Where the schema of `data` lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataschema: Option<String>,
    /// The payload.
    pub data: T,
    /// Extension attributes, kept as they came.
    #[serde(flatten)]
    pub extensions: BTreeMap<String, serde_json::Value>,
}

impl<T: crate::Event> CloudEvent<T> {
    /// Wraps a payload in a fresh envelope: a time-ordered UUIDv7 id and the current time.
    pub fn new(source: impl Into<String>, data: T) -> Self {
        Self {
            specversion: SPECVERSION.to_owned(),
            id: uuid::Uuid::now_v7().to_string(),
            source: source.into(),
            ty: T::TYPE.to_owned(),
            time: Some(OffsetDateTime::now_utc()),
            datacontenttype: Some(DATACONTENTTYPE_JSON.to_owned()),
            subject: None,
            dataschema: Some(crate::catalog::dataschema_uri(T::TYPE)),
            data,
            extensions: BTreeMap::new(),
        }
    }
}
