//! Lower-case hex, for digests and random tokens in keys, names and trace ids.
//!
//! One table lookup per nibble into a string sized up front: `format!("{byte:02x}")` per byte allocated a string
//! per byte and ran the formatter, about 800 instructions a byte, and several of these strings are built per event
//! (the ledger's key of every effect, the `traceparent` a publisher writes without an exporter; tests/bench/
//! ANALYSIS.md, section 28).

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as lower-case hex, two characters a byte.
pub fn lower(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    push_lower(&mut text, bytes);
    text
}

/// Appends `bytes` to `text` as lower-case hex.
pub fn push_lower(text: &mut String, bytes: &[u8]) {
    text.reserve(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_byte_is_what_the_formatter_writes() {
        let bytes: Vec<u8> = (0..=255).collect();
        let formatted: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(super::lower(&bytes), formatted);
        assert_eq!(super::lower(&[]), "");
        let mut text = "key.".to_owned();
        super::push_lower(&mut text, &[0x0a, 0xf0]);
        assert_eq!(text, "key.0af0");
    }
}
