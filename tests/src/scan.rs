//! Finds what must never be printed: a password or token the tests use, a URL with its password in clear, or an
//! email address that is not masked (`ab***@example.com` passes).

/// The secrets the integration tests hand to the processes they run.
pub const TEST_SECRETS: &[&str] = &[
    "S3cret-App-Pw",
    "S3cret-Admin-Pw",
    "T0ken-7f3a9c1e",
    "Smtp-Pw-5b8d",
    "hunter2",
    "welcome-secret",
    "router-secret",
    "signup-secret",
    "admin-secret",
    // tests/it/sealed.rs: the keyring's keys and the sealed values.
    "c2VhbGVkLWZpZWxkcy10ZXN0LWtleS1udW1iZXItMDE=",
    "c2VhbGVkLWZpZWxkcy10ZXN0LWtleS1udW1iZXItMDI=",
    "aW1wb3N0b3Ita2V5LWZvci10aGUtaWQtazEtMDAwMDA=",
    "sealedTokenNumber",
    "KeyToken_0123456789",
    "tamperedToken_",
    "movedToken_",
    "otherToken_",
    "sealedContactMessage",
    // tests/it/console.rs: the tokens of an edited sealed dead letter.
    "storedEditToken_",
    "retypedToken_",
    "retypedContactMessage",
    "804913",
];

/// Addresses a deployer configures (senders, staff inboxes: `MAIL_FROM`'s default, the tests' `shop.test`
/// settings), which are no one's personal data; a customer's address is never at these domains.
pub const SYSTEM_DOMAINS: &[&str] = &["jetfn.local", "shop.test"];

/// The first thing in `text` that should not be there, described without repeating a secret.
pub fn find(text: &str, secrets: &[&str]) -> Option<String> {
    if let Some(secret) = secrets.iter().find(|secret| holds(text, secret)) {
        let line = text
            .lines()
            .position(|line| holds(line, secret))
            .unwrap_or(0)
            + 1;
        return Some(format!("a test secret in clear on line {line}"));
    }
    if let Some(url) = url_password(text) {
        return Some(format!("a URL with its password in clear: {url}"));
    }
    clear_email(text).map(|email| format!("the email address {email} in clear"))
}

/// Whether `secret` is in `text`. A secret of digits only (a verification code) counts as a whole number: not
/// inside a longer run of digits, and not as the fraction of a decimal such as a log line's timestamp
/// (`19:04:13.804913Z` once held the code `804913`, failing a run whose logs were clean).
fn holds(text: &str, secret: &str) -> bool {
    if secret.is_empty() || !secret.bytes().all(|byte| byte.is_ascii_digit()) {
        return text.contains(secret);
    }
    let bytes = text.as_bytes();
    text.match_indices(secret).any(|(at, _)| {
        let end = at + secret.len();
        let digit_before = at > 0 && bytes[at - 1].is_ascii_digit();
        let fraction = at > 1 && bytes[at - 1] == b'.' && bytes[at - 2].is_ascii_digit();
        let digit_after = bytes.get(end).is_some_and(u8::is_ascii_digit);
        !(digit_before || fraction || digit_after)
    })
}

/// The first `local@domain.tld` in `text` whose local part is not masked and whose domain is not a system one.
pub fn clear_email(text: &str) -> Option<String> {
    let local = |c: char| c.is_ascii_alphanumeric() || "._%+-".contains(c);
    let domain = |c: char| c.is_ascii_alphanumeric() || ".-".contains(c);
    for (at, _) in text.match_indices('@') {
        let before = &text[..at];
        let start = before
            .char_indices()
            .rev()
            .take_while(|(_, c)| local(*c))
            .last()
            .map_or(at, |(i, _)| i);
        let after = &text[at + 1..];
        let end = after.find(|c: char| !domain(c)).unwrap_or(after.len());
        let host = after[..end].trim_end_matches('.');
        let dotted = host.rsplit_once('.').is_some_and(|(name, tld)| {
            !name.is_empty() && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
        });
        // `scheme://user:pass@host` is a URL, judged by `url_password`.
        let in_url = before[..start].ends_with(':');
        if start < at && dotted && !in_url && !SYSTEM_DOMAINS.contains(&host) {
            return Some(format!("{}@{host}", &text[start..at]));
        }
    }
    None
}

/// The first `scheme://user:password@` whose password is neither `***` nor the help's `pass`, shown masked.
pub fn url_password(text: &str) -> Option<String> {
    for (found, _) in text.match_indices("://") {
        let rest = &text[found + 3..];
        let end = rest
            .find(|c: char| c.is_whitespace() || "\"'/,<>".contains(c))
            .unwrap_or(rest.len());
        let authority = &rest[..end];
        let Some((userinfo, host)) = authority.rsplit_once('@') else {
            continue;
        };
        if let Some((user, password)) = userinfo.split_once(':')
            && !password.is_empty()
            && password != "***"
            // The placeholder of the help's examples (`smtps://user:pass@host`).
            && password != "pass"
        {
            return Some(format!("{user}:***@{host}"));
        }
    }
    None
}
