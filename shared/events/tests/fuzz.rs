//! Fuzz targets for the envelope decoder and the validator: arbitrary bytes, mutations of valid events of every
//! catalog type, and structured envelopes with arbitrary JSON in every attribute. Nothing may panic; what the
//! validator accepts must survive a round trip; a refusal never quotes a value; the typed decode over the borrowed
//! tree agrees with the decode over a `serde_json::Value` it replaced.
//!
//! Random and shrinking (proptest), on stable Rust: `cargo test -p events --test fuzz -- --nocapture` runs a few
//! hundred inputs per target; `tests/run.sh` runs a bounded budget and `just fuzz` a long one (README).

use events::{CATALOG, CloudEvent, Validator};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

use testkit::fuzz::run as fuzz;

/// Every way the workspace decodes an event from bytes, on one input. The typed decoders are the functions' hot
/// path; `check` and `check_for_publish` are the publisher's and the router's.
fn decode_every_way(validator: &Validator, bytes: &[u8]) -> Result<(), TestCaseError> {
    let _ = serde_json::from_slice::<CloudEvent>(bytes);
    let _ = validator.check_for_publish(bytes);
    macro_rules! typed {
        ($($ty:ty),+) => {$(
            // The hot path parses into a tree that borrows from the bytes; the path it replaced parses into a
            // `serde_json::Value`. They must agree on every input: the same event, or the same refusal.
            let decoded = validator.decode::<$ty>(bytes);
            match (&decoded, validator.decode_by_value::<$ty>(bytes)) {
                (Ok(fast), Ok(slow)) => prop_assert_eq!(
                    serde_json::to_value(fast).expect("serializes"),
                    serde_json::to_value(&slow).expect("serializes"),
                    "the two decodes of {} differ", String::from_utf8_lossy(bytes)
                ),
                (Err(fast), Err(slow)) => prop_assert_eq!(
                    fast.to_string(), slow.to_string(),
                    "the two refusals of {} differ", String::from_utf8_lossy(bytes)
                ),
                (fast, slow) => prop_assert!(
                    false, "one decode of {} took it, one refused it: {:?} against {:?}",
                    String::from_utf8_lossy(bytes), fast.as_ref().err(), slow.err()
                ),
            }
            if let Ok(event) = decoded {
                let again = serde_json::to_vec(&event).expect("a decoded event serializes");
                let back = validator.decode::<$ty>(&again);
                prop_assert!(back.is_ok(), "a decoded event does not decode again: {:?}", back.err());
            }
        )+};
    }
    typed!(
        events::UserRegistered,
        events::PasswordResetRequested,
        events::EmailVerificationRequested,
        events::OrderPlaced,
        events::OrderShipped,
        events::OrderStatusChanged,
        events::ContactSubmitted,
        events::SubscriptionCreated,
        events::SubscriptionCancelled,
        events::SubscriptionStatusChanged,
        events::MessageCreated,
        events::MessageUpdated,
        events::MessageDeleted,
        events::CleanupRequested,
        events::CleanupCompleted
    );
    if let Ok(event) = validator.check(bytes) {
        let again = serde_json::to_vec(&event).expect("a checked event serializes");
        let back = validator.check(&again);
        prop_assert!(
            back.is_ok(),
            "a checked event does not check again: {:?}",
            back.err()
        );
    }
    Ok(())
}

fn examples() -> Vec<Vec<u8>> {
    CATALOG
        .iter()
        .map(|kind| {
            serde_json::to_vec(&json!({
                "specversion": "1.0", "id": "evt-1", "source": "/fuzz", "type": kind.ty,
                "time": "2026-11-25T10:00:00Z", "datacontenttype": "application/json",
                "data": (kind.example_data)()
            }))
            .expect("json")
        })
        .collect()
}

#[test]
fn fuzz_envelope_arbitrary_bytes() {
    let validator = Validator::new();
    fuzz(
        "envelope-bytes",
        proptest::collection::vec(any::<u8>(), 0..600),
        |bytes| decode_every_way(&validator, &bytes),
    );
}

/// One edit of a valid event's bytes.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Duplicate(usize, usize),
}

/// Bytes that change JSON's structure or its meaning when they land inside a valid event.
fn splice() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::sample::select(vec![
            &b"{"[..],
            b"}",
            b"[",
            b"]",
            b"\"",
            b",",
            b":",
            b"\\",
            b"\\u0000",
            b"\\ud800",
            b"null",
            b"true",
            b"-",
            b"1e999",
            b"18446744073709551616",
            b"-0",
            b".5",
            b"\r\n",
            b"\xc3\xa9",
            b"\xe1\xbb\x8d",
            b"\xff",
            b"\xf0\x9f\x92\xa9",
            b"\"extra\":1,",
            b"\"data\":{},",
            b"\"id\":\"x\",",
            b"Bcc: x@evil.test",
        ])
        .prop_map(<[u8]>::to_vec),
        proptest::collection::vec(any::<u8>(), 1..8),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Edit::Flip(at, byte)),
            (any::<usize>(), splice()).prop_map(|(at, bytes)| Edit::Insert(at, bytes)),
            (any::<usize>(), 1usize..16).prop_map(|(at, len)| Edit::Delete(at, len)),
            (any::<usize>(), 1usize..64).prop_map(|(at, len)| Edit::Duplicate(at, len)),
        ],
        1..6,
    )
}

fn apply(mut bytes: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for edit in edits {
        let len = bytes.len().max(1);
        match edit {
            Edit::Flip(at, byte) => {
                if !bytes.is_empty() {
                    bytes[at % len] = *byte;
                }
            }
            Edit::Insert(at, insert) => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, insert.iter().copied());
            }
            Edit::Delete(at, n) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                bytes.drain(at.min(end)..end);
            }
            Edit::Duplicate(at, n) => {
                let at = at % len;
                let end = (at + n).min(bytes.len());
                let copy = bytes[at.min(end)..end].to_vec();
                bytes.splice(end..end, copy);
            }
        }
    }
    bytes
}

#[test]
fn fuzz_envelope_mutated_valid_events() {
    let validator = Validator::new();
    let examples = examples();
    fuzz(
        "envelope-mutations",
        (0..examples.len(), edits()),
        |(which, edits)| decode_every_way(&validator, &apply(examples[which].clone(), &edits)),
    );
}

/// String values carry this marker, keys (ASCII) never do: a refusal that contains it quoted a value.
const MARK: &str = "§§";

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9@._-]{0,12}",
        "\\PC{0,12}",
        Just("ngọc@example.vn".to_owned()),
        Just("a\r\nBcc: x@evil.test".to_owned()),
        Just("2026-11-25T10:00:00Z".to_owned()),
        Just("application/json; charset=utf-8".to_owned()),
    ]
    .prop_map(|s| format!("{MARK}{s}"))
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        Just(json!(0)),
        Just(json!(-1)),
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Field names: the catalog's own (so a mutation hits a real field) or others.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "email",
            "name",
            "user_id",
            "locale",
            "order_id",
            "items",
            "customer",
            "total",
            "currency",
            "message_id",
            "conversation_id",
            "sender_id",
            "body",
            "created_at",
            "updated_at",
            "deleted_at",
            "index_retention_secs",
            "dlq_retention_secs",
            "token",
            "expires_at",
            "subject",
            "message",
        ])
        .prop_map(str::to_owned),
        "[a-zA-Z_]{1,10}",
    ]
}

/// A catalog example with some fields replaced by arbitrary JSON, inside an envelope whose attributes may be
/// arbitrary too.
fn structured() -> impl Strategy<Value = Value> {
    let kinds = CATALOG.len();
    (
        0..kinds,
        proptest::collection::vec((key(), json_value()), 0..4),
        proptest::collection::vec(
            (
                proptest::sample::select(vec![
                    "specversion",
                    "id",
                    "source",
                    "type",
                    "time",
                    "datacontenttype",
                    "subject",
                    "dataschema",
                    "tenant",
                    "Bad_Ext",
                    "data",
                ]),
                json_value(),
            ),
            0..3,
        ),
    )
        .prop_map(|(which, data_edits, envelope_edits)| {
            let kind = &CATALOG[which];
            let mut data = (kind.example_data)();
            for (key, value) in data_edits {
                data[key] = value;
            }
            let mut event = json!({
                "specversion": "1.0", "id": "evt-1", "source": "/fuzz", "type": kind.ty,
                "datacontenttype": "application/json", "data": data
            });
            for (name, value) in envelope_edits {
                event[name] = value;
            }
            event
        })
}

/// `value` as JSON text with every object's members in an order drawn from `seed`, some keys written twice (a
/// throwaway value first, the real one last, which is the one that counts). `serde_json` writes a `Value`'s members
/// sorted, and the decoder keeps a small object's members in the text's order: this is how the fuzz reaches that
/// order, where a refusal's errors come in the text's order unless the decoder puts them back in `Value`'s.
fn write_shuffled(value: &Value, seed: &mut u64, out: &mut String) {
    let mut draw = |below: usize| {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        usize::try_from(*seed >> 33).expect("31 bits") % below.max(1)
    };
    match value {
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            for at in (1..members.len()).rev() {
                members.swap(at, draw(at + 1));
            }
            let twice = draw(4);
            out.push('{');
            for (index, (key, member)) in members.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                let key = serde_json::to_string(key).expect("a key");
                if index == twice {
                    out.push_str(&key);
                    out.push_str(":\"§§thrown away\",");
                }
                out.push_str(&key);
                out.push(':');
                write_shuffled(member, seed, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_shuffled(item, seed, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[test]
fn fuzz_envelope_structured() {
    let validator = Validator::new();
    fuzz(
        "envelope-structured",
        (structured(), any::<u64>()),
        |(event, mut seed)| {
            let mut shuffled = String::new();
            write_shuffled(&event, &mut seed, &mut shuffled);
            let sorted = serde_json::to_vec(&event).expect("json");
            for bytes in [sorted, shuffled.into_bytes()] {
                decode_every_way(&validator, &bytes)?;
                if let Err(invalid) = validator.check(&bytes) {
                    let text = invalid.to_string();
                    prop_assert!(!text.contains(MARK), "a refusal quotes a value: {text}");
                }
            }
            Ok(())
        },
    );
}
