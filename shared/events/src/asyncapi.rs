//! The catalog as an AsyncAPI 3.1 document: one channel per subject, one message per CloudEvent type (its payload
//! the committed JSON Schema of the whole event), a `send` operation for producers and a `receive` operation per
//! consuming function. `shared/events/asyncapi.json` is this text; a test keeps it current and `tests/run.sh`
//! validates it with the AsyncAPI project's own parser (`tests/asyncapi/`).

use serde_json::{Map, Value, json};

use crate::catalog::{CATALOG, EventKind};

/// The committed document, for whoever serves it (the console): the same text [`asyncapi`] renders.
pub const ASYNCAPI_JSON: &str = include_str!("../asyncapi.json");

/// The AsyncAPI document of the whole catalog.
pub fn asyncapi() -> Value {
    asyncapi_of(CATALOG)
}

/// The document rendered as it is committed: pretty JSON and a final newline.
pub fn asyncapi_text() -> String {
    serde_json::to_string_pretty(&asyncapi()).expect("the document serializes") + "\n"
}

/// [`asyncapi`] of other rows.
pub fn asyncapi_of(catalog: &[EventKind]) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut messages = Map::new();
    let mut schemas = Map::new();
    for kind in catalog {
        let name = message_name(kind.ty);
        channels.insert(
            kind.ty.to_owned(),
            json!({
                "address": kind.subject,
                "title": kind.subject,
                "description": format!(
                    "Events of type `{}`. One stream, `EVENTS` (subjects `events.>`), holds every event.",
                    kind.ty
                ),
                "messages": { name.clone(): { "$ref": format!("#/components/messages/{name}") } }
            }),
        );
        let channel_ref = json!({ "$ref": format!("#/channels/{}", kind.ty) });
        let message_ref = json!([{ "$ref": format!("#/channels/{}/messages/{name}", kind.ty) }]);
        operations.insert(
            format!("publish.{}", kind.ty),
            json!({
                "action": "send",
                "channel": channel_ref,
                "messages": message_ref,
                "summary": format!("Publish a `{}` event.", kind.ty),
                "description": "Validate against the schema, set `Nats-Msg-Id` to the event id, publish with a \
                                JetStream publish and wait for the stream's ack. A re-publish with the same id \
                                within the duplicate window is dropped by the server."
            }),
        );
        for consumer in kind.consumers {
            operations.insert(
                format!("{consumer}.{}", kind.ty),
                json!({
                    "action": "receive",
                    "channel": channel_ref,
                    "messages": message_ref,
                    "summary": format!("The `{consumer}` function consumes `{}` events.", kind.ty),
                    "description": format!(
                        "Durable pull consumer `{consumer}` on stream `EVENTS`, at least once: an event is acked, \
                         retried on the consumer's backoff, or dead-lettered to `dlq.EVENTS.{consumer}.<sequence>`."
                    )
                }),
            );
        }
        messages.insert(
            name.clone(),
            json!({
                "name": kind.ty,
                "title": kind.ty,
                "summary": kind.description,
                "contentType": "application/cloudevents+json; charset=utf-8",
                "headers": { "$ref": "#/components/schemas/NatsHeaders" },
                "payload": payload_schema(kind, &mut schemas),
                "examples": [{
                    "name": "example",
                    "headers": {
                        "Nats-Msg-Id": "01J0000000000000000000000",
                        "content-type": "application/cloudevents+json; charset=utf-8",
                        "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    },
                    "payload": {
                        "specversion": "1.0", "id": "01J0000000000000000000000", "source": "/signup-api",
                        "type": kind.ty, "time": "2026-11-25T10:00:00Z",
                        "datacontenttype": "application/json", "data": (kind.example_data)()
                    }
                }]
            }),
        );
    }
    schemas.insert(
        "NatsHeaders".to_owned(),
        json!({
            "type": "object",
            "description": "NATS message headers a publisher sets.",
            "required": ["Nats-Msg-Id"],
            "properties": {
                "Nats-Msg-Id": { "type": "string", "description": "The event id: the stream's duplicate window drops a re-publish." },
                "content-type": { "type": "string", "const": "application/cloudevents+json; charset=utf-8" },
                "traceparent": {
                    "type": "string",
                    "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                    "description": "W3C trace context of the publish; every attempt of every consumer is in this trace."
                },
                "tracestate": { "type": "string" }
            }
        }),
    );
    json!({
        "asyncapi": "3.1.0",
        "id": "urn:jetfn:events",
        "info": {
            "title": "jetfn events",
            "version": "1.0.0",
            "description": "Every event jetfn knows: a CloudEvents 1.0 event in JSON structured mode on \
                            `events.<type>`, held by the JetStream stream `EVENTS`. Generated from the event \
                            catalog (`shared/events`); CATALOG.md says the same in prose."
        },
        "defaultContentType": "application/cloudevents+json; charset=utf-8",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "A NATS server with JetStream; `NATS_URL` names the real one."
            }
        },
        "channels": channels,
        "operations": operations,
        "components": { "messages": messages, "schemas": schemas }
    })
}

/// `users.registered` → `UsersRegistered`.
fn message_name(ty: &str) -> String {
    ty.split(['.', '_'])
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// The event's JSON Schema, made to live inside the document: its `$defs` move to `components/schemas` (a
/// `$ref` in a message resolves against the whole document, so `#/$defs/..` would point nowhere), shared by name
/// when two events define the same thing, prefixed by the event's message name when they differ; `$schema` and
/// `$id` go (an `$id` would move the base every reference resolves against).
fn payload_schema(kind: &EventKind, schemas: &mut Map<String, Value>) -> Value {
    let Value::Object(mut schema) = (kind.derived_schema)() else {
        unreachable!("a derived schema is an object")
    };
    schema.remove("$schema");
    schema.remove("$id");
    let defs = match schema.remove("$defs") {
        Some(Value::Object(defs)) => defs,
        _ => Map::new(),
    };
    let mut renames = Vec::new();
    for (name, def) in &defs {
        let target = match schemas.get(name) {
            None => name.clone(),
            Some(existing) if existing == def => name.clone(),
            Some(_) => format!("{}{name}", message_name(kind.ty)),
        };
        renames.push((
            format!("#/$defs/{name}"),
            format!("#/components/schemas/{target}"),
        ));
    }
    let mut schema = Value::Object(schema);
    rewrite_refs(&mut schema, &renames);
    for (name, mut def) in defs {
        rewrite_refs(&mut def, &renames);
        let target = renames
            .iter()
            .find(|(from, _)| *from == format!("#/$defs/{name}"))
            .map(|(_, to)| to.trim_start_matches("#/components/schemas/").to_owned())
            .unwrap_or(name);
        schemas.insert(target, def);
    }
    schema
}

fn rewrite_refs(value: &mut Value, renames: &[(String, String)]) {
    match value {
        Value::Object(object) => {
            for (key, value) in object.iter_mut() {
                if key == "$ref"
                    && let Value::String(reference) = value
                    && let Some((_, to)) = renames.iter().find(|(from, _)| from == reference)
                {
                    *reference = to.clone();
                } else {
                    rewrite_refs(value, renames);
                }
            }
        }
        Value::Array(items) => items
            .iter_mut()
            .for_each(|item| rewrite_refs(item, renames)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_document_is_current() {
        assert!(
            ASYNCAPI_JSON == asyncapi_text(),
            "shared/events/asyncapi.json is out of date; run `just schemas`"
        );
    }

    #[test]
    fn every_subject_is_a_channel_and_every_consumer_an_operation() {
        let document = asyncapi();
        for kind in CATALOG {
            assert_eq!(document["channels"][kind.ty]["address"], kind.subject);
            assert_eq!(
                document["operations"][format!("publish.{}", kind.ty)]["action"],
                "send"
            );
            for consumer in kind.consumers {
                assert_eq!(
                    document["operations"][format!("{consumer}.{}", kind.ty)]["action"],
                    "receive"
                );
            }
        }
    }

    /// Every `$ref` points at something in the document: nothing is left pointing at a schema's own `$defs`.
    #[test]
    fn every_reference_resolves_inside_the_document() {
        fn walk(document: &Value, value: &Value) {
            match value {
                Value::Object(object) => {
                    for (key, value) in object {
                        if key == "$ref" {
                            let reference = value.as_str().unwrap();
                            let pointer = reference.strip_prefix('#').unwrap();
                            assert!(document.pointer(pointer).is_some(), "{reference} resolves");
                        } else {
                            walk(document, value);
                        }
                    }
                }
                Value::Array(items) => items.iter().for_each(|item| walk(document, item)),
                _ => {}
            }
        }
        let document = asyncapi();
        walk(&document, &document);
    }

    /// The payload a message describes is the catalog's schema, only with its definitions moved: every example
    /// event in the document passes the validator of the real schema.
    #[test]
    fn the_examples_are_valid_events() {
        let validator = crate::Validator::new();
        let document = asyncapi();
        for kind in CATALOG {
            let message = &document["components"]["messages"][message_name(kind.ty)];
            let payload = &message["examples"][0]["payload"];
            validator
                .check(&serde_json::to_vec(payload).unwrap())
                .unwrap_or_else(|err| panic!("{}: {err}", kind.ty));
        }
    }
}
