//! The one payload every row sends: a `users.registered` CloudEvent of about 1 KiB, padded the way real sign-up
//! events grow (a long display name, tracing and tenancy extension attributes), so that the JSON parsing and
//! schema validation the runtime does per event cost what they cost in production.

use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use events::{CloudEvent, Locale, UserRegistered};
use serde_json::json;

/// The extension attribute carrying the send time (epoch nanoseconds) for end-to-end latency. Every event has
/// it, so the payload is the same size in every row.
pub const SENT_NS: &str = "benchsentns";

/// The subject of `users.registered`.
pub const SUBJECT: &str = "events.users.registered";

/// Epoch nanoseconds now.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
        })
}

/// A fresh event (new UUIDv7 id, the current time) for user number `n`.
pub fn event(n: u64) -> CloudEvent<UserRegistered> {
    let mut event = CloudEvent::new(
        "/signup-api",
        UserRegistered {
            user_id: format!("u-{n:012}"),
            email: format!("maria.fernanda.{n}@customers.example.com"),
            // 160 characters: the schema allows 200.
            name: "Maria Fernanda Alves de Oliveira Santos Pereira da Costa e Silva \
                   (Engenharia de Plataforma, Sao Paulo) - registered through the partner portal"
                .to_owned(),
            locale: if n.is_multiple_of(2) {
                Locale::En
            } else {
                Locale::Vi
            },
        },
    );
    event.subject = Some(format!("u-{n:012}"));
    let correlation = uuid::Uuid::now_v7().to_string();
    for (name, value) in [
        ("correlationid", json!(correlation)),
        ("tenant", json!("acme-eu-west-1")),
        ("signupflow", json!("web-checkout-v3")),
        (
            "useragent",
            json!(
                "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 (KHTML, like Gecko) \
                 Version/17.4 Safari/605.1.15"
            ),
        ),
        (
            "referrer",
            json!(
                "https://www.example.com/pricing?utm_source=newsletter&utm_campaign=spring-launch"
            ),
        ),
        ("ipcountry", json!("BR")),
        (SENT_NS, json!(now_ns())),
    ] {
        event.extensions.insert(name.to_owned(), value);
    }
    event
}

/// The event's send time, if it carries one.
pub fn sent_ns<T>(event: &CloudEvent<T>) -> Option<u64> {
    event.extensions.get(SENT_NS)?.as_u64()
}

/// The headers our publisher sets (`Nats-Msg-Id`, `content-type`, `traceparent`), for the raw rows: raw here
/// means without validation and spans, not a smaller message.
pub fn raw_headers(id: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
    headers.insert(
        "content-type",
        "application/cloudevents+json; charset=utf-8",
    );
    let trace = uuid::Uuid::now_v7().simple().to_string();
    let span = &trace[16..];
    headers.insert("traceparent", format!("00-{trace}-{span}-01").as_str());
    headers
}

/// The serialized size of a typical event, for the report.
pub fn payload_bytes() -> usize {
    serde_json::to_vec(&event(1)).map_or(0, |bytes| bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_is_valid_and_about_one_kib() {
        let bytes = serde_json::to_vec(&event(7)).expect("serializes");
        assert!((900..=1200).contains(&bytes.len()), "{} bytes", bytes.len());
        let decoded = events::Validator::new()
            .decode::<UserRegistered>(&bytes)
            .expect("the bench event passes the runtime's validation");
        assert!(sent_ns(&decoded).is_some());
    }
}
