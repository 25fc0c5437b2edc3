//! Quoted-printable (RFC 2045, section 6.7) for the text and HTML parts whose lines are too long for 7bit or which
//! hold non-ASCII characters: most of the emails sent.
//!
//! lettre encodes such a body with the `quoted_printable` crate, after inserting a CR before each LF one insert at
//! a time: about 92,000 instructions for the welcome email (1.5 KB), an eighth of the welcome function's per email
//! (tests/bench/ANALYSIS.md, sections 28 and 36). Here the line breaks and the encoding are one pass over the bytes
//! that copies each run of bytes that stand for themselves in one call. The output is a body lettre takes as it is
//! (`Body::dangerous_pre_encoded`); what lettre would pick for the body (7bit, quoted-printable or base64) is still
//! its own choice (`Encoding::choose`), so only the encoder differs.

/// The longest encoded line, not counting its CRLF (RFC 2045: "must be no more than 76 characters long").
const MAX_LINE: usize = 76;

/// Bytes written as themselves inside a line: printable ASCII but `=`, and space and tab (which are encoded at the
/// end of a line instead, where a transport may strip them).
const LITERAL: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = b'!';
    while byte <= b'~' {
        table[byte as usize] = byte != b'=';
        byte += 1;
    }
    table[b' ' as usize] = true;
    table[b'\t' as usize] = true;
    table
};

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// `text` as a quoted-printable body: each line break of the text (LF or CRLF) a CRLF, every other byte as itself
/// or as `=XX`, and lines wrapped with a soft break (`=` then CRLF) before they pass 76 characters. A CR not
/// followed by LF is `=0D`, as in lettre's encoding.
pub(crate) fn encode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 16 + 8);
    let mut lines = bytes.split(|&byte| byte == b'\n').peekable();
    while let Some(line) = lines.next() {
        let last = lines.peek().is_none();
        // A CRLF of the text is one line break; a CR at the very end, with no LF after it, is a byte to encode.
        let line = match line.split_last() {
            Some((b'\r', rest)) if !last => rest,
            _ => line,
        };
        encode_line(line, &mut out);
        if !last {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// One line of the text, wrapped: a soft break goes in before any token that would leave no room for it, so an
/// encoded line holds at most 75 characters and its `=`, or 76 where nothing follows on the text's line.
fn encode_line(line: &[u8], out: &mut Vec<u8>) {
    let mut column = 0;
    let mut at = 0;
    while at < line.len() {
        // The run of bytes that stand for themselves; a space or tab that ends the line is encoded instead.
        let mut end = at;
        while end < line.len() && LITERAL[usize::from(line[end])] {
            end += 1;
        }
        if end == line.len() && end > at && matches!(line[end - 1], b' ' | b'\t') {
            end -= 1;
        }
        while at < end {
            let rest = end - at;
            if end == line.len() && column + rest <= MAX_LINE {
                out.extend_from_slice(&line[at..end]);
                column += rest;
                at = end;
                break;
            }
            let room = (MAX_LINE - 1).saturating_sub(column);
            if room == 0 {
                out.extend_from_slice(b"=\r\n");
                column = 0;
                continue;
            }
            let take = room.min(rest);
            out.extend_from_slice(&line[at..at + take]);
            column += take;
            at += take;
        }
        if at == line.len() {
            break;
        }
        // One byte as `=XX`: 3 characters, and room for a soft break after them unless the line ends here.
        let byte = line[at];
        let limit = if at + 1 == line.len() {
            MAX_LINE
        } else {
            MAX_LINE - 1
        };
        if column + 3 > limit {
            out.extend_from_slice(b"=\r\n");
            column = 0;
        }
        out.extend_from_slice(&[
            b'=',
            HEX[usize::from(byte >> 4)],
            HEX[usize::from(byte & 0xf)],
        ]);
        column += 3;
        at += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The text as lettre would send it before encoding: each LF not after a CR gets one.
    fn crlf(text: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len() + 8);
        let bytes = text.as_bytes();
        for (at, &byte) in bytes.iter().enumerate() {
            if byte == b'\n' && (at == 0 || bytes[at - 1] != b'\r') {
                out.push(b'\r');
            }
            out.push(byte);
        }
        out
    }

    fn decoded(encoded: &[u8]) -> Vec<u8> {
        quoted_printable::decode(encoded, quoted_printable::ParseMode::Strict)
            .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(encoded)))
    }

    /// What RFC 2045 asks of every encoded line, whatever the text.
    fn assert_well_formed(encoded: &[u8]) {
        let text = std::str::from_utf8(encoded).expect("quoted-printable is ASCII");
        for line in text.split("\r\n") {
            assert!(
                line.len() <= MAX_LINE,
                "{} characters: {line:?}",
                line.len()
            );
            assert!(
                !line.ends_with([' ', '\t']),
                "whitespace ends an encoded line: {line:?}"
            );
            assert!(
                line.bytes()
                    .all(|byte| byte == b'\t' || (b' '..=b'~').contains(&byte)),
                "{line:?}"
            );
            let bytes = line.as_bytes();
            for (at, _) in line.match_indices('=') {
                let after = &bytes[at + 1..];
                let soft = after.is_empty();
                let hex = after.len() >= 2
                    && after[..2]
                        .iter()
                        .all(|byte| byte.is_ascii_digit() || (b'A'..=b'F').contains(byte));
                assert!(soft || hex, "a stray = in {line:?}");
            }
        }
    }

    #[test]
    fn the_welcome_email_s_parts_decode_to_what_lettre_sends() {
        let root = env!("CARGO_MANIFEST_DIR");
        for name in ["welcome.en.html", "welcome.vi.html", "welcome.vi.txt"] {
            let path = format!("{root}/../../functions/welcome/snapshots/{name}");
            let text = std::fs::read_to_string(&path).expect("the welcome snapshots");
            let ours = encode(&text);
            assert_well_formed(&ours);
            assert_eq!(decoded(&ours), crlf(&text), "{name}");
            let theirs = quoted_printable::encode(crlf(&text));
            assert_eq!(decoded(&ours), decoded(&theirs), "{name}");
        }
    }

    #[test]
    fn line_ends_long_lines_and_bytes_to_escape() {
        assert_eq!(encode("a\nb\r\nc"), b"a\r\nb\r\nc");
        assert_eq!(encode("x = 1 \nend\t"), b"x =3D 1=20\r\nend=09");
        assert_eq!(encode("caf\u{e9}\n"), b"caf=C3=A9\r\n");
        assert_eq!(encode("lone\rcr\r"), b"lone=0Dcr=0D");
        assert_eq!(encode(""), b"");
        // 76 characters fit on one line when nothing follows; a 77th wraps with the soft break at 75.
        let line = "a".repeat(76);
        assert_eq!(encode(&line), line.as_bytes());
        let long = "a".repeat(77);
        assert_eq!(
            encode(&long),
            format!("{}=\r\naa", "a".repeat(75)).as_bytes()
        );
        // An escape is never split by a soft break.
        let near = format!("{}\u{e9}b", "a".repeat(73));
        let encoded = encode(&near);
        assert_well_formed(&encoded);
        assert_eq!(decoded(&encoded), near.as_bytes());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Any text: lines of any length, spaces and tabs at their ends, `=`, CR and LF alone or together,
        /// non-ASCII.
        #[test]
        fn any_text_decodes_back_to_itself_with_crlf_line_breaks(
            text in "([a-z= \\t\\r\\n.,<>\"]|é|ệ|📬|[a-z]{70,90}){0,120}"
        ) {
            let ours = encode(&text);
            assert_well_formed(&ours);
            prop_assert_eq!(decoded(&ours), crlf(&text));
        }
    }
}
