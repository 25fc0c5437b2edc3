//! The text log format's fields, written as tracing-subscriber's `DefaultFields` writes them, for less CPU.
//!
//! Every attempt's span formats its fields into text when it is created: the log layer keeps that text for the
//! attempt's log lines. `DefaultFields` paints each field name through `nu_ansi_term` even with colours off and
//! formats it with `write!`, which cost about 6,700 instructions per attempt, an eighth of a no-op attempt
//! (tests/bench/ANALYSIS.md, section 17). Here an ordinary name and its value are written directly: a string that
//! needs no escape as one piece (section 31), an integer by its digits (section 40), other numbers and booleans
//! through `record_debug` as in `DefaultVisitor`; everything else (the message, errors, `r#` names, colours on)
//! goes to a `DefaultVisitor`, so the text is the same byte for byte (a unit test holds the two to that). The
//! direct pieces gather on the stack and reach the span's text in one write.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// The text format's fields (`fmt::layer().fmt_fields(LogFields)`); the bench's log sink uses it too, to pay what a
/// function pays.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogFields;

impl<'a> MakeVisitor<Writer<'a>> for LogFields {
    type Visitor = LogVisitor<'a>;

    fn make_visitor(&self, writer: Writer<'a>) -> LogVisitor<'a> {
        LogVisitor {
            direct: !writer.has_ansi_escapes(),
            writer,
            pending: [0; PENDING],
            pending_len: 0,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes `name=value` pairs separated by a space, as `DefaultVisitor` does.
pub struct LogVisitor<'a> {
    writer: Writer<'a>,
    /// The text of the fast paths, handed to `writer` in one write when the fields are done (or before anything
    /// else writes to it). The writer appends to a `String` that starts empty: a write per field made it grow
    /// two or three times per span, and those reallocations were most of what the fields cost (about 1,500 of
    /// a no-op attempt's instructions; tests/bench/ANALYSIS.md, section 40).
    pending: [u8; PENDING],
    pending_len: usize,
    /// Colours off: ordinary fields are written here. With colours, every field goes to `DefaultVisitor`.
    direct: bool,
    is_empty: bool,
    result: fmt::Result,
}

/// Room for an attempt's span fields and a typical line's.
const PENDING: usize = 256;

impl LogVisitor<'_> {
    /// Whether `DefaultVisitor` writes this field as a bare `name=` followed by the value's `Debug`: it treats
    /// `message` and `r#` names otherwise.
    fn ordinary(&self, name: &str) -> bool {
        self.direct && name != "message" && !name.starts_with("r#")
    }

    /// `name=` and the value, after a space unless it is the first field.
    fn write(&mut self, name: &str, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
        self.flush();
        if self.result.is_err() {
            return;
        }
        let separator = self.separator();
        self.result = (|| {
            self.writer.write_str(separator)?;
            self.writer.write_str(name)?;
            self.writer.write_char('=')?;
            value(&mut self.writer)
        })();
    }

    /// `name=` and a string that needs no escape, into the pending text: each write to the span's text costs a
    /// call through `dyn fmt::Write` and a capacity check.
    fn write_plain(&mut self, name: &str, value: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = self.separator();
        self.append(&[separator, name, "=\"", value, "\""]);
    }

    /// `name=` and an integer, into the pending text.
    fn write_integer(&mut self, name: &str, negative: bool, magnitude: u64) {
        if self.result.is_err() {
            return;
        }
        let mut buffer = [0_u8; 20];
        let digits = decimal(magnitude, &mut buffer);
        let separator = self.separator();
        let sign = if negative { "-" } else { "" };
        self.append(&[separator, name, "=", sign, digits]);
    }

    /// `parts` end to end after the pending text; to the writer directly when they do not fit even alone.
    fn append(&mut self, parts: &[&str]) {
        let total: usize = parts.iter().map(|part| part.len()).sum();
        if self.pending_len + total > PENDING {
            self.flush();
            if total > PENDING {
                for part in parts {
                    if self.result.is_ok() {
                        self.result = self.writer.write_str(part);
                    }
                }
                return;
            }
        }
        for part in parts {
            self.pending[self.pending_len..self.pending_len + part.len()]
                .copy_from_slice(part.as_bytes());
            self.pending_len += part.len();
        }
    }

    /// Hands the pending text to the writer.
    fn flush(&mut self) {
        if self.pending_len == 0 {
            return;
        }
        let len = std::mem::take(&mut self.pending_len);
        if self.result.is_err() {
            return;
        }
        // Whole `str`s end to end: valid UTF-8, so the check cannot fail.
        self.result = std::str::from_utf8(&self.pending[..len])
            .map_or(Err(fmt::Error), |text| self.writer.write_str(text));
    }

    fn separator(&mut self) -> &'static str {
        let separator = if self.is_empty { "" } else { " " };
        self.is_empty = false;
        separator
    }

    /// The field as `DefaultVisitor` writes it, continuing this visitor's output.
    fn delegate(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        self.flush();
        if self.result.is_err() {
            return;
        }
        let mut inner = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut inner);
        self.result = inner.finish();
        // It wrote the field (log metadata, which it skips, never gets here).
        self.is_empty = false;
    }
}

/// `magnitude`'s decimal digits, written into the end of `buffer`: `Debug` or `Display` for an integer goes through
/// `core::fmt`'s padding and flag checks, about 450 instructions for an attempt's sequence number, against a few
/// dozen here. The JSON fields write their integers through it too.
pub(crate) fn decimal(magnitude: u64, buffer: &mut [u8; 20]) -> &str {
    let mut start = buffer.len();
    let mut rest = magnitude;
    loop {
        start -= 1;
        // A digit: `rest % 10` is below 10.
        buffer[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    // ASCII digits: valid UTF-8, so the check cannot fail.
    std::str::from_utf8(&buffer[start..]).unwrap_or_default()
}

/// Whether `Debug` writes `value` between quotes as it is: printable ASCII without a quote or backslash. Every
/// byte is read (no early exit), which lets the compiler check many at once.
fn needs_no_escape(value: &str) -> bool {
    value.bytes().fold(true, |plain, byte| {
        plain & (b' '..=b'~').contains(&byte) & (byte != b'"') & (byte != b'\\')
    })
}

impl Visit for LogVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            // `DefaultVisitor` skips the `log` crate's metadata fields, which the event already shows.
            name if name.starts_with("log.") => {}
            name if self.ordinary(name) && needs_no_escape(value) => {
                self.write_plain(name, value);
            }
            name if self.ordinary(name) => self.write(name, |writer| write!(writer, "{value:?}")),
            _ => self.delegate(|inner| inner.record_str(field, value)),
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match field.name() {
            name if name.starts_with("log.") => {}
            name if self.ordinary(name) => self.write_integer(name, false, value),
            _ => self.delegate(|inner| inner.record_u64(field, value)),
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        match field.name() {
            name if name.starts_with("log.") => {}
            name if self.ordinary(name) => {
                self.write_integer(name, value < 0, value.unsigned_abs());
            }
            _ => self.delegate(|inner| inner.record_i64(field, value)),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !field.name().starts_with("log.") {
            self.delegate(|inner| inner.record_error(field, value));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            name if name.starts_with("log.") => {}
            name if self.ordinary(name) => self.write(name, |writer| write!(writer, "{value:?}")),
            _ => self.delegate(|inner| inner.record_debug(field, value)),
        }
    }
}

impl VisitOutput<fmt::Result> for LogVisitor<'_> {
    fn finish(mut self) -> fmt::Result {
        self.flush();
        self.result
    }
}

impl VisitFmt for LogVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        self.flush();
        &mut self.writer
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::LogFields;

    /// What a test's subscriber wrote (the JSON fields' test uses it too).
    #[derive(Clone, Default)]
    pub(crate) struct Captured(pub(crate) Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Self;
        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Failed(Option<Box<Failed>>);

    impl std::fmt::Display for Failed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(if self.0.is_some() {
                "outer \"failure\""
            } else {
                "inner\nfailure \u{1b}[31m"
            })
        }
    }

    impl std::error::Error for Failed {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.0.as_deref().map(|inner| inner as _)
        }
    }

    /// Spans and events with every kind of field, through the runtime's text format.
    fn write_lines(ansi: bool, ours: bool) -> String {
        let captured = Captured::default();
        let layer = tracing_subscriber::fmt()
            .with_ansi(ansi)
            .compact()
            .with_target(false)
            .without_time()
            .with_writer(captured.clone());
        let emit = || {
            let odd = "quote\" back\\ tab\t nl\n nul\0 esc\u{1b}[1m é 例 '\u{301}\u{200b}";
            let span = tracing::info_span!(
                "process",
                subject = "events.users.registered",
                seq = 42_u64,
                attempt = 3_u32,
                "messaging.message.id" = odd,
                r#type = "users.registered",
                negative = -7_i64,
                zero = 0_u64,
                largest = u64::MAX,
                smallest = i64::MIN,
                long = "a plain value longer than the buffer on the stack: ".repeat(8).as_str(),
                ratio = 0.5_f64,
                flag = true,
                shown = %"display value",
                debugged = ?vec!["a", "b\"c"],
                "log.target" = "skipped",
                empty = "",
                "jetfn.outcome" = tracing::field::Empty,
                "error.type" = tracing::field::Empty,
            );
            span.record("jetfn.outcome", "retry");
            span.record("error.type", odd);
            let _entered = span.enter();
            let error = Failed(Some(Box::new(Failed(None))));
            tracing::warn!(
                error = &error as &(dyn std::error::Error + 'static),
                shown = %error,
                "attempt failed: \"{}\" \u{1b}[31m",
                odd
            );
            tracing::info!(note = "plain", count = 1_u64, "done");
            tracing::info!(message = 42_i64, r#loop = -42_i64, "log.line" = 7_u64);
            tracing::info!(message = odd, big = u128::MAX, bytes = &b"ab"[..]);
            tracing::info!("");
        };
        if ours {
            tracing::subscriber::with_default(layer.fmt_fields(LogFields).finish(), emit);
        } else {
            tracing::subscriber::with_default(layer.finish(), emit);
        }
        String::from_utf8(captured.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn the_text_is_the_default_fields_text_byte_for_byte() {
        for ansi in [false, true] {
            let default = write_lines(ansi, false);
            let ours = write_lines(ansi, true);
            assert!(default.lines().count() >= 4, "{default}");
            assert_eq!(ours, default, "ansi {ansi}");
        }
        // The fast paths were taken: the plain fields are there, unescaped.
        let plain = write_lines(false, true);
        assert!(
            plain.contains(r#"subject="events.users.registered" seq=42 attempt=3"#),
            "{plain}"
        );
        assert!(
            plain.contains(
                "zero=0 largest=18446744073709551615 smallest=-9223372036854775808 long=\"a plain"
            ),
            "{plain}"
        );
    }
}
