//! The JSON log format's span fields, written as tracing-subscriber's `JsonFields` writes them, for less CPU.
//!
//! `LOG_FORMAT=json` is the containers' setting, and every attempt's span formats its fields when it is created.
//! `JsonFields` puts each field into a `BTreeMap` of `serde_json::Value`s (a string value copied into an
//! allocation of its own) and serializes the map: with each attempt's log ids, a JSON-logging no-op attempt ran
//! about 9,000 instructions more than a text-logging one (tests/bench/ANALYSIS.md, section 40). Here each value is
//! written as JSON into one string as it is recorded (strings that need no escape, integers and booleans directly,
//! anything else through serde_json), and the fields are put in the map's order, by name, in one write at the
//! end, so the text is the same byte for byte (a unit test holds the two to that). Only the span fields go
//! through here: the JSON event format writes an event's own fields itself.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::span::Record;
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::FormatFields;
use tracing_subscriber::fmt::FormattedFields;
use tracing_subscriber::fmt::format::Writer;

use crate::log_fields::decimal;

/// The JSON format's span fields (`fmt::layer().json().fmt_fields(JsonLogFields)`).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLogFields;

impl<'writer> FormatFields<'writer> for JsonLogFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut gathered = Gathered::default();
        fields.record(&mut gathered);
        gathered.write(&mut writer)
    }

    /// As `JsonFields`: the fields already written are read back, the new ones set over them, and the whole
    /// written again (a span's later `record`, which an attempt's span does not make unless spans are exported).
    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        if current.fields.is_empty() {
            return self.format_fields(current.as_writer(), fields);
        }
        let mut values: std::collections::BTreeMap<String, serde_json::Value> =
            serde_json::from_str(&current.fields).map_err(|_| fmt::Error)?;
        let mut gathered = Gathered::default();
        fields.record(&mut gathered);
        for (name, value) in gathered.into_json() {
            values.insert(name.to_owned(), value);
        }
        current.fields = serde_json::to_string(&values).map_err(|_| fmt::Error)?;
        Ok(())
    }
}

/// Each field's value already written as JSON into one string, in the order recorded; a later field of the same
/// name replaces the earlier, as in `JsonVisitor`'s map. Field names are the callsite's `'static` text.
#[derive(Default)]
struct Gathered {
    values: String,
    fields: Vec<(&'static str, std::ops::Range<usize>)>,
}

impl Gathered {
    /// Records the field `name`, whose value `write` appends as JSON.
    fn set(&mut self, name: &'static str, write: impl FnOnce(&mut String)) {
        if self.fields.is_empty() {
            self.values.reserve(128);
            self.fields.reserve(8);
        }
        let start = self.values.len();
        write(&mut self.values);
        let range = start..self.values.len();
        if let Some(kept) = self.fields.iter_mut().find(|(kept, _)| *kept == name) {
            kept.1 = range;
        } else {
            self.fields.push((name, range));
        }
    }

    /// The fields as serde_json values, for a later `record`'s merge.
    fn into_json(self) -> impl Iterator<Item = (&'static str, serde_json::Value)> {
        let Gathered { values, fields } = self;
        fields.into_iter().filter_map(move |(name, range)| {
            serde_json::from_str(&values[range])
                .ok()
                .map(|value| (name, value))
        })
    }

    /// `{"name":value,...}` ordered by name, in one write.
    fn write(mut self, writer: &mut Writer<'_>) -> fmt::Result {
        self.fields.sort_unstable_by_key(|(name, _)| *name);
        let size = self
            .fields
            .iter()
            .map(|(name, range)| name.len() + range.len() + 4)
            .sum::<usize>();
        let mut text = String::with_capacity(size + 2);
        text.push('{');
        for (at, (name, range)) in self.fields.iter().enumerate() {
            if at > 0 {
                text.push(',');
            }
            push_string(&mut text, name);
            text.push(':');
            text.push_str(&self.values[range.clone()]);
        }
        text.push('}');
        writer.write_str(&text)
    }
}

/// `value` as a JSON string, as serde_json writes it: directly when nothing in it needs an escape.
fn push_string(text: &mut String, value: &str) {
    let plain = value.bytes().fold(true, |plain, byte| {
        plain & (byte >= 0x20) & (byte != b'"') & (byte != b'\\')
    });
    if plain {
        text.push('"');
        text.push_str(value);
        text.push('"');
    } else {
        text.push_str(&serde_json::Value::from(value).to_string());
    }
}

impl Visit for Gathered {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.set(field.name(), |text| {
            text.push_str(&serde_json::Value::from(value).to_string());
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.set(field.name(), |text| {
            if value < 0 {
                text.push('-');
            }
            text.push_str(decimal(value.unsigned_abs(), &mut [0; 20]));
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.set(field.name(), |text| {
            text.push_str(decimal(value, &mut [0; 20]));
        });
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.set(field.name(), |text| {
            text.push_str(if value { "true" } else { "false" });
        });
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.set(field.name(), |text| push_string(text, value));
    }

    fn record_bytes(&mut self, field: &Field, value: &[u8]) {
        self.set(field.name(), |text| {
            text.push_str(&serde_json::Value::from(value).to_string());
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            // `JsonVisitor` skips the `log` crate's metadata fields, which the event already shows.
            name if name.starts_with("log.") => {}
            name => {
                let name = name.strip_prefix("r#").unwrap_or(name);
                self.set(name, |text| push_string(text, &format!("{value:?}")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::JsonLogFields;
    use crate::log_fields::tests::Captured;

    /// Spans with every kind of field, recorded at creation and later, and events inside them, as JSON lines.
    fn write_lines(ours: bool) -> String {
        let captured = Captured::default();
        let emit = || {
            let odd = "quote\" back\\ tab\t nl\n nul\0 esc\u{1b}[1m é 例 /slash";
            let outer = tracing::info_span!(
                "process",
                subject = "events.users.registered",
                seq = 42_u64,
                attempt = 3_u32,
                "messaging.message.id" = odd,
                r#type = "users.registered",
                negative = -7_i64,
                largest = u64::MAX,
                smallest = i64::MIN,
                ratio = 0.5_f64,
                nan = f64::NAN,
                flag = true,
                shown = %"display value",
                debugged = ?vec!["a", "b\"c"],
                "log.target" = "kept as a string",
                big = u128::MAX,
                "jetfn.outcome" = tracing::field::Empty,
                "error.type" = tracing::field::Empty,
            );
            let _outer = outer.enter();
            tracing::info!(note = "plain", count = 1_u64, "inside");
            outer.record("jetfn.outcome", "retry");
            outer.record("error.type", odd);
            outer.record("seq", 43_u64);
            let inner = tracing::info_span!("settle", empty = "", r#loop = -1_i64);
            let _inner = inner.enter();
            tracing::warn!(error = %odd, "attempt failed");
            let bare = tracing::info_span!("bare", later = tracing::field::Empty);
            bare.record("later", 1_u64);
            let _bare = bare.enter();
            tracing::info!("in a span without fields");
        };
        let builder = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .without_time()
            .with_writer(captured.clone());
        if ours {
            tracing::subscriber::with_default(builder.fmt_fields(JsonLogFields).finish(), emit);
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_text_is_the_json_fields_text_byte_for_byte() {
        let default = write_lines(false);
        let ours = write_lines(true);
        assert!(default.lines().count() >= 3, "{default}");
        assert!(default.contains("\"jetfn.outcome\":\"retry\""), "{default}");
        assert!(default.contains("\"seq\":43"), "{default}");
        for field in [
            r#""messaging.message.id":"quote\" back"#,
            r#""big":"340282366920938463463374607431768211455""#,
            r#""later":1"#,
            r#""loop":-1"#,
            r#""nan":null"#,
        ] {
            assert!(default.contains(field), "{field} in {default}");
        }
        assert_eq!(ours, default);
    }
}
