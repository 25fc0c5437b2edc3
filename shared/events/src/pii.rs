//! Masking of personal data before it reaches a log line, a span or an error message.

use std::fmt;

/// Shows an email address as `ab***@example.com`: enough to tell two recipients apart, not enough to read one.
///
/// Use it as a `tracing` field value (`to = %Masked(&addr)`); it never allocates the clear address.
#[derive(Clone, Copy)]
pub struct Masked<'a>(pub &'a str);

impl fmt::Display for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.rsplit_once('@') {
            Some((local, domain)) if !domain.contains(['\r', '\n']) => {
                let shown: String = local.chars().take(2).collect();
                write!(f, "{shown}***@{domain}")
            }
            _ => f.write_str("***"),
        }
    }
}

impl fmt::Debug for Masked<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Returns the masked form of an email address as a string.
pub fn mask_email(address: &str) -> String {
    Masked(address).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_local_part_and_keeps_domain() {
        assert_eq!(mask_email("abcdef@example.com"), "ab***@example.com");
        assert_eq!(mask_email("a@example.com"), "a***@example.com");
        assert_eq!(mask_email("not an address"), "***");
    }
}
