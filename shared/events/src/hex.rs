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

/// `bytes` random bytes as lower-case hex: tokens that tell one writer's try from another's (a rate-limit slot, an
/// atomic batch). From the thread's CSPRNG (seeded from the system), not a `getrandom` system call each, which
/// ring's system RNG made for every rate-limited event (tests/bench/ANALYSIS.md, section 38).
#[must_use]
pub fn random_lower(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes * 2);
    push_random_lower(&mut text, bytes);
    text
}

/// Appends `bytes` random bytes to `text` as lower-case hex, as [`random_lower`], drawn a block at a time rather
/// than a byte at a time.
pub fn push_random_lower(text: &mut String, bytes: usize) {
    let mut left = bytes;
    while left > 0 {
        let block: [u8; 32] = rand::random();
        let take = left.min(block.len());
        push_lower(text, &block[..take]);
        left -= take;
    }
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

    #[test]
    fn random_tokens_are_lower_hex_of_the_asked_length_past_one_block() {
        for bytes in [0, 4, 32, 40] {
            let token = super::random_lower(bytes);
            assert_eq!(token.len(), bytes * 2);
            assert!(
                token
                    .bytes()
                    .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
            );
        }
        assert_ne!(super::random_lower(16), super::random_lower(16));
    }
}
