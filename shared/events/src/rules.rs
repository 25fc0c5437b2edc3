//! Rules several payload types share, in the words their errors use.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::Invalid;

/// An address SMTP headers can carry as is: the schema's `format: idn-email` (RFC 6531) allows more than that.
pub(crate) fn bare_address(invalid: &mut Invalid, field: &str, value: &str) {
    if has_any(value, b"\r\n\0 <>,;\"") {
        invalid.push(
            field,
            "must be a bare address without spaces, quotes, brackets or separators",
        );
    }
}

/// Whether `value` holds any of the ASCII characters `ascii`. UTF-8 never uses an ASCII byte inside another
/// character, so a byte scan finds what a character scan would, for much less on a path every event takes.
pub(crate) fn has_any(value: &str, ascii: &[u8]) -> bool {
    value.bytes().any(|byte| ascii.contains(&byte))
}

/// An RFC 3339 timestamp.
pub(crate) fn timestamp(invalid: &mut Invalid, field: &str, value: &str) -> Option<OffsetDateTime> {
    match OffsetDateTime::parse(value, &Rfc3339) {
        Ok(at) => Some(at),
        Err(_) => {
            invalid.push(
                field,
                "must be an RFC 3339 timestamp such as 2026-11-25T10:00:00Z",
            );
            None
        }
    }
}

/// A timestamp that must still lie ahead when the event is published.
pub(crate) fn in_future(invalid: &mut Invalid, field: &str, value: &str) {
    if let Some(at) = timestamp(invalid, field, value)
        && at <= OffsetDateTime::now_utc()
    {
        invalid.push(field, "must be in the future when the event is published");
    }
}

/// A timestamp that cannot lie ahead (more than a few minutes of clock skew).
pub(crate) fn not_in_future(invalid: &mut Invalid, field: &str, value: &str) {
    if let Some(at) = timestamp(invalid, field, value)
        && at > OffsetDateTime::now_utc() + time::Duration::minutes(5)
    {
        invalid.push(field, "cannot be in the future");
    }
}
