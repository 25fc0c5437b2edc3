use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use time::OffsetDateTime;

/// The only CloudEvents version jetfn speaks.
pub const SPECVERSION: &str = "1.0";
/// Structured mode carries JSON data only.
pub const DATACONTENTTYPE_JSON: &str = "application/json";
/// What the schemas accept as `datacontenttype`: JSON, with or without a UTF-8 `charset` parameter (JSON is UTF-8,
/// RFC 8259, but many HTTP stacks add the parameter; refusing it refused valid events). Written without inline
/// flags, so every JSON Schema regex dialect reads it the same.
pub const DATACONTENTTYPE_PATTERN: &str =
    "^application/json( *; *charset *= *(\"utf-8\"|utf-8|\"UTF-8\"|UTF-8))?$";
/// The names extension attributes may have (CloudEvents 1.0: lower-case ASCII letters and digits). The schemas
/// refuse any other name. No jetfn release ever published an extension, so no older name needs to stay readable.
pub const EXTENSION_NAME_PATTERN: &str = "^[a-z0-9]+$";

/// A CloudEvents 1.0 event in JSON structured mode, generic over its `data`.
///
/// The seeds' envelope maps onto it: `event_id` is `id`, `timestamp` is `time`, `payload` is `data`. Attributes we
/// do not know are kept in `extensions`, so a function can pass them on untouched.
///
/// `Deserialize` is written by hand: derived with `#[serde(flatten)]`, serde buffers the whole event, `data`
/// included, into an intermediate tree before it decodes a field, which doubled the decode cost of every message.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

/// An envelope attribute name; anything else is an extension.
enum Attribute {
    Specversion,
    Id,
    Source,
    Type,
    Time,
    Datacontenttype,
    Subject,
    Dataschema,
    Data,
    Extension(String),
}

impl Attribute {
    fn known(name: &str) -> Option<Self> {
        Some(match name {
            "specversion" => Self::Specversion,
            "id" => Self::Id,
            "source" => Self::Source,
            "type" => Self::Type,
            "time" => Self::Time,
            "datacontenttype" => Self::Datacontenttype,
            "subject" => Self::Subject,
            "dataschema" => Self::Dataschema,
            "data" => Self::Data,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for Attribute {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = Attribute;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an attribute name")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Attribute, E> {
                Ok(Attribute::known(name).unwrap_or_else(|| Attribute::Extension(name.to_owned())))
            }
            fn visit_string<E: de::Error>(self, name: String) -> Result<Attribute, E> {
                Ok(Attribute::known(&name).unwrap_or(Attribute::Extension(name)))
            }
        }
        deserializer.deserialize_identifier(Name)
    }
}

/// `time` as RFC 3339, `null` or absent for none.
struct Rfc3339(Option<OffsetDateTime>);

impl<'de> Deserialize<'de> for Rfc3339 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        time::serde::rfc3339::option::deserialize(deserializer).map(Rfc3339)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for CloudEvent<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Envelope<T>(PhantomData<fn() -> T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Envelope<T> {
            type Value = CloudEvent<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CloudEvent object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CloudEvent<T>, A::Error> {
                fn once<V, E: de::Error>(
                    slot: &mut Option<V>,
                    name: &'static str,
                    value: V,
                ) -> Result<(), E> {
                    if slot.replace(value).is_some() {
                        return Err(E::duplicate_field(name));
                    }
                    Ok(())
                }
                let (mut specversion, mut id, mut source, mut ty) = (None, None, None, None);
                let (mut time, mut datacontenttype, mut subject, mut dataschema) =
                    (None, None, None, None);
                let mut data = None;
                let mut extensions = BTreeMap::new();
                while let Some(attribute) = map.next_key::<Attribute>()? {
                    match attribute {
                        Attribute::Specversion => {
                            once(&mut specversion, "specversion", map.next_value()?)?;
                        }
                        Attribute::Id => once(&mut id, "id", map.next_value()?)?,
                        Attribute::Source => once(&mut source, "source", map.next_value()?)?,
                        Attribute::Type => once(&mut ty, "type", map.next_value()?)?,
                        Attribute::Time => {
                            once(&mut time, "time", map.next_value::<Rfc3339>()?.0)?;
                        }
                        Attribute::Datacontenttype => {
                            once(&mut datacontenttype, "datacontenttype", map.next_value()?)?;
                        }
                        Attribute::Subject => once(&mut subject, "subject", map.next_value()?)?,
                        Attribute::Dataschema => {
                            once(&mut dataschema, "dataschema", map.next_value()?)?;
                        }
                        Attribute::Data => once(&mut data, "data", map.next_value()?)?,
                        Attribute::Extension(name) => {
                            let value = map.next_value()?;
                            extensions.insert(name, value);
                        }
                    }
                }
                Ok(CloudEvent {
                    specversion: specversion
                        .ok_or_else(|| de::Error::missing_field("specversion"))?,
                    id: id.ok_or_else(|| de::Error::missing_field("id"))?,
                    source: source.ok_or_else(|| de::Error::missing_field("source"))?,
                    ty: ty.ok_or_else(|| de::Error::missing_field("type"))?,
                    time: time.flatten(),
                    datacontenttype: datacontenttype.flatten(),
                    subject: subject.flatten(),
                    dataschema: dataschema.flatten(),
                    data: data.ok_or_else(|| de::Error::missing_field("data"))?,
                    extensions,
                })
            }
        }

        deserializer.deserialize_map(Envelope(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::CloudEvent;

    fn event() -> Value {
        json!({
            "specversion": "1.0",
            "id": "evt-1",
            "source": "/tests",
            "type": "users.registered",
            "time": "2026-11-25T10:00:00Z",
            "datacontenttype": "application/json",
            "data": {"n": 1},
            "tenant": "acme",
            "correlationid": "c-9",
        })
    }

    #[test]
    fn unknown_attributes_are_kept_as_extensions_and_written_back() {
        let decoded: CloudEvent = serde_json::from_value(event()).unwrap();
        assert_eq!(decoded.extensions.len(), 2);
        assert_eq!(decoded.extensions["tenant"], json!("acme"));
        assert_eq!(decoded.time.unwrap().unix_timestamp(), 1_795_600_800);
        assert_eq!(decoded.subject, None);
        assert_eq!(serde_json::to_value(&decoded).unwrap(), event());
        // From bytes as well as from a parsed tree.
        let from_bytes: CloudEvent =
            serde_json::from_slice(event().to_string().as_bytes()).unwrap();
        assert_eq!(from_bytes, decoded);
    }

    #[test]
    fn required_attributes_are_named_when_missing() {
        for name in ["specversion", "id", "source", "type", "data"] {
            let mut value = event();
            value.as_object_mut().unwrap().remove(name);
            let err = serde_json::from_value::<CloudEvent>(value).unwrap_err();
            assert_eq!(err.to_string(), format!("missing field `{name}`"));
        }
    }

    #[test]
    fn optional_attributes_accept_null_and_reject_bad_values() {
        let mut value = event();
        value["time"] = Value::Null;
        value["subject"] = Value::Null;
        let decoded: CloudEvent = serde_json::from_value(value).unwrap();
        assert_eq!((decoded.time, decoded.subject), (None, None));

        let mut value = event();
        value["time"] = json!("yesterday");
        assert!(serde_json::from_value::<CloudEvent>(value).is_err());
        assert!(serde_json::from_value::<CloudEvent>(json!(["not", "an", "object"])).is_err());
    }

    #[test]
    fn a_repeated_attribute_is_refused() {
        let text = r#"{"specversion":"1.0","id":"a","id":"b","source":"/s","type":"t","data":{}}"#;
        let err = serde_json::from_str::<CloudEvent>(text).unwrap_err();
        assert!(err.to_string().starts_with("duplicate field `id`"), "{err}");
    }
}
