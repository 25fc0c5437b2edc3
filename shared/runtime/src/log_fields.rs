//! The text log format's fields, written as tracing-subscriber's `DefaultFields` writes them, for less CPU.
//!
//! Every attempt's span formats its fields into text when it is created: the log layer keeps that text for the
//! attempt's log lines. `DefaultFields` paints each field name through `nu_ansi_term` even with colours off and
//! formats it with `write!`, which cost about 6,700 instructions per attempt, an eighth of a no-op attempt
//! (tests/bench/ANALYSIS.md, section 17). Here an ordinary name and its value are written directly: a string that
//! needs no escape in one write (section 31), numbers and booleans through `record_debug` as in `DefaultVisitor`;
//! everything else (the message, errors, `r#` names, colours on) goes to a `DefaultVisitor`, so the text is the
//! same byte for byte (a unit test holds the two to that).

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
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes `name=value` pairs separated by a space, as `DefaultVisitor` does.
pub struct LogVisitor<'a> {
    writer: Writer<'a>,
    /// Colours off: ordinary fields are written here. With colours, every field goes to `DefaultVisitor`.
    direct: bool,
    is_empty: bool,
    result: fmt::Result,
}

impl LogVisitor<'_> {
    /// Whether `DefaultVisitor` writes this field as a bare `name=` followed by the value's `Debug`: it treats
    /// `message` and `r#` names otherwise.
    fn ordinary(&self, name: &str) -> bool {
        self.direct && name != "message" && !name.starts_with("r#")
    }

    /// `name=` and the value, after a space unless it is the first field.
    fn write(&mut self, name: &str, value: impl FnOnce(&mut Writer<'_>) -> fmt::Result) {
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

    /// `name=` and a string that needs no escape, in one write rather than six: each write to the span's text
    /// costs a call through `dyn fmt::Write` and a capacity check.
    fn write_plain(&mut self, name: &str, value: &str) {
        if self.result.is_err() {
            return;
        }
        let separator = self.separator();
        self.result = write_joined(&mut self.writer, &[separator, name, "=\"", value, "\""]);
    }

    fn separator(&mut self) -> &'static str {
        let separator = if self.is_empty { "" } else { " " };
        self.is_empty = false;
        separator
    }

    /// The field as `DefaultVisitor` writes it, continuing this visitor's output.
    fn delegate(&mut self, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
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

/// Whether `Debug` writes `value` between quotes as it is: printable ASCII without a quote or backslash. Every
/// byte is read (no early exit), which lets the compiler check many at once.
fn needs_no_escape(value: &str) -> bool {
    value.bytes().fold(true, |plain, byte| {
        plain & (b' '..=b'~').contains(&byte) & (byte != b'"') & (byte != b'\\')
    })
}

/// `parts` written end to end in one `write_str`, through a buffer on the stack when they fit in it.
fn write_joined(writer: &mut Writer<'_>, parts: &[&str]) -> fmt::Result {
    let mut buffer = [0_u8; 128];
    let mut len = 0;
    for part in parts {
        let Some(room) = buffer.get_mut(len..len + part.len()) else {
            return parts.iter().try_for_each(|part| writer.write_str(part));
        };
        room.copy_from_slice(part.as_bytes());
        len += part.len();
    }
    // Whole `str`s end to end: valid UTF-8, so the check cannot fail.
    std::str::from_utf8(&buffer[..len]).map_or(Err(fmt::Error), |text| writer.write_str(text))
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
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for LogVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::LogFields;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

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
