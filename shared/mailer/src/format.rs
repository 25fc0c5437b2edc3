//! Amounts and dates as a reader of each locale expects them.

use events::{Currency, Locale};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// `amount` in `currency`'s minor unit, written for `locale`: `$1,234.50` / `€12.00` / `1.234.500 ₫` / `12,00 €`.
pub fn money(amount: u64, currency: Currency, locale: Locale) -> String {
    let exponent = currency.exponent();
    let scale = 10u64.pow(exponent);
    let (whole, fraction) = (amount / scale, amount % scale);
    let (group, decimal) = match locale {
        Locale::En => (',', '.'),
        Locale::Vi => ('.', ','),
    };
    let digits = whole.to_string();
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(group);
        }
        grouped.push(digit);
    }
    let number = if exponent == 0 {
        grouped
    } else {
        format!(
            "{grouped}{decimal}{fraction:0width$}",
            width = usize::try_from(exponent).unwrap_or(2)
        )
    };
    let symbol = match currency {
        Currency::USD => Some("$"),
        Currency::EUR => Some("€"),
        Currency::GBP => Some("£"),
        Currency::JPY => Some("¥"),
        Currency::VND => Some("₫"),
        _ => None,
    };
    match (locale, symbol) {
        (Locale::En, Some(symbol)) if currency != Currency::VND => format!("{symbol}{number}"),
        (_, Some(symbol)) => format!("{number} {symbol}"),
        (_, None) => format!("{number} {}", currency.code()),
    }
}

/// An RFC 3339 timestamp as `25 Nov 2026, 10:00 UTC` (en) or `10:00 UTC, 25/11/2026` (vi); the input when it
/// does not parse (the event was validated, so that does not happen).
pub fn datetime(rfc3339: &str, locale: Locale) -> String {
    let Ok(at) = OffsetDateTime::parse(rfc3339, &Rfc3339) else {
        return rfc3339.to_owned();
    };
    let at = at.to_offset(time::UtcOffset::UTC);
    match locale {
        Locale::En => format!(
            "{} {} {}, {:02}:{:02} UTC",
            at.day(),
            &format!("{}", at.month())[..3],
            at.year(),
            at.hour(),
            at.minute()
        ),
        Locale::Vi => format!(
            "{:02}:{:02} UTC, {:02}/{:02}/{}",
            at.hour(),
            at.minute(),
            at.day(),
            u8::from(at.month()),
            at.year()
        ),
    }
}

/// A `YYYY-MM-DD` date as `28 Nov 2026` (en) or `28/11/2026` (vi).
pub fn date(yyyy_mm_dd: &str, locale: Locale) -> String {
    let Ok(date) = time::Date::parse(
        yyyy_mm_dd,
        time::macros::format_description!("[year]-[month]-[day]"),
    ) else {
        return yyyy_mm_dd.to_owned();
    };
    match locale {
        Locale::En => format!(
            "{} {} {}",
            date.day(),
            &format!("{}", date.month())[..3],
            date.year()
        ),
        Locale::Vi => format!(
            "{:02}/{:02}/{}",
            date.day(),
            u8::from(date.month()),
            date.year()
        ),
    }
}

/// Whole minutes until an RFC 3339 `expires_at` (at least 1), or `None` once it has passed: an expired link or
/// code is not worth an email. A timestamp that does not parse counts as passed (the event was validated, so that
/// does not happen).
pub fn minutes_left(expires_at: &str) -> Option<i64> {
    let expires = OffsetDateTime::parse(expires_at, &Rfc3339).ok()?;
    let left = expires - OffsetDateTime::now_utc();
    left.is_positive().then(|| left.whole_minutes().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_follow_the_currency_and_the_locale() {
        assert_eq!(money(123_450, Currency::USD, Locale::En), "$1,234.50");
        assert_eq!(money(5, Currency::USD, Locale::En), "$0.05");
        assert_eq!(money(1_234_500, Currency::VND, Locale::Vi), "1.234.500 ₫");
        assert_eq!(money(1_234_500, Currency::VND, Locale::En), "1,234,500 ₫");
        assert_eq!(money(1200, Currency::EUR, Locale::Vi), "12,00 €");
        assert_eq!(money(999, Currency::SGD, Locale::En), "9.99 SGD");
        assert_eq!(money(100_000, Currency::JPY, Locale::En), "¥100,000");
    }

    #[test]
    fn minutes_left_until_an_expiry() {
        assert_eq!(minutes_left("2000-01-01T00:00:00Z"), None);
        assert_eq!(minutes_left("not a time"), None);
        assert!(minutes_left("2999-01-01T00:00:00Z").is_some_and(|minutes| minutes > 1));
    }

    #[test]
    fn dates_follow_the_locale() {
        assert_eq!(
            datetime("2026-11-25T10:05:00Z", Locale::En),
            "25 Nov 2026, 10:05 UTC"
        );
        assert_eq!(
            datetime("2026-11-25T17:05:00+07:00", Locale::Vi),
            "10:05 UTC, 25/11/2026"
        );
        assert_eq!(date("2026-11-28", Locale::En), "28 Nov 2026");
        assert_eq!(date("2026-11-28", Locale::Vi), "28/11/2026");
    }
}
