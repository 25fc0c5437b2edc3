//! Fuzz target for email composition: render (the shared layouts, an email's own template, arbitrary field
//! values) and compose (arbitrary display names, addresses, subjects, the idempotency key), and the per-locale
//! formatting the templates use. Nothing may panic; a composed message has only the headers jetfn writes (no
//! injected `Bcc:`); a CR or LF in a header value is refused, never encoded; user text is escaped in HTML.
//!
//! Random and shrinking (proptest), on stable Rust: `cargo test -p mailer --test fuzz -- --nocapture`;
//! `tests/run.sh` runs a bounded budget and `just fuzz` a long one (README).

use events::{Currency, Locale};
use mailer::{EmailTemplate, Mailbox, SendError, Templates, compose, context};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use testkit::fuzz::run as fuzz;

const HTML: &str = "{% extends \"LOCALE/layout.html\" %}\n{% block content %}\n<p>{{ name }}</p>\n<div>{{ message }}</div>\n<p>{{ total }} {{ when }}</p>\n{% endblock %}\n{% block reason %}Because {{ name }} asked.{% endblock %}\n";
const TEXT: &str = "{% extends \"LOCALE/layout.txt\" %}\n{% block content %}\n{{ name }}\n{{ message }}\n{{ total }} {{ when }}\n{% endblock %}\n{% block reason %}Because {{ name }} asked.{% endblock %}\n";

fn templates() -> Templates {
    let leak = |locale: &str, source: &str| -> &'static str {
        Box::leak(source.replace("LOCALE", locale).into_boxed_str())
    };
    let email = EmailTemplate::__embedded(
        "fuzz",
        [
            (
                "en",
                [
                    "Hello {{ name }}: {{ subject }}",
                    leak("en", HTML),
                    leak("en", TEXT),
                ],
            ),
            (
                "vi",
                [
                    "Chào {{ name }}: {{ subject }}",
                    leak("vi", HTML),
                    leak("vi", TEXT),
                ],
            ),
        ],
    );
    Templates::new(&[email]).expect("the fuzz template parses")
}

/// Text a user could put in a field: anything printable, control characters, template syntax, markup.
fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "[a-zA-Z0-9 <>&\"'/=\\r\\n\\t\\x00{}%#.:;@-]{0,40}",
        Just("<script>alert(1)</script>".to_owned()),
        Just("{{ product_name }}{% raw %}".to_owned()),
        Just("Ada\r\nBcc: x@evil.test".to_owned()),
        Just("Ngọc Anh".to_owned()),
        Just("=?utf-8?q?=0D=0ABcc:x@evil.test?=".to_owned()),
    ]
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9.+_-]{1,20}@[a-z0-9-]{1,12}\\.[a-z]{2,4}",
        "\\PC{1,10}@[a-z0-9-]{1,12}\\.[a-z]{2,4}",
        "[^\\r\\n]{0,30}",
        Just("ngọc@example.vn".to_owned()),
        Just("\"quoted local\"@example.com".to_owned()),
    ]
}

fn locale() -> impl Strategy<Value = Locale> {
    prop_oneof![Just(Locale::En), Just(Locale::Vi)]
}

fn currency() -> impl Strategy<Value = Currency> {
    proptest::sample::select(vec![
        Currency::USD,
        Currency::EUR,
        Currency::JPY,
        Currency::VND,
        Currency::KRW,
        Currency::IDR,
    ])
}

/// The header names a composed message may carry.
const HEADERS: &[&str] = &[
    "from",
    "to",
    "reply-to",
    "subject",
    "message-id",
    "content-language",
    "mime-version",
    "date",
    "content-type",
    "content-transfer-encoding",
];

#[test]
fn fuzz_email_render_and_compose() {
    let templates = templates();
    let from: Mailbox = "Shop <no-reply@shop.test>".parse().expect("from");
    let inputs = (
        (field(), field(), field(), address(), field()),
        (locale(), any::<u64>(), currency(), field(), "\\PC{0,60}"),
        any::<bool>(),
    );
    fuzz(
        "email-compose",
        inputs,
        |(
            (name, message, subject, to, reply_name),
            (locale, amount, currency, when, key),
            reply,
        )| {
            let total = mailer::format::money(amount, currency, locale);
            let when = mailer::format::datetime(&when, locale);
            let _ = mailer::format::date(&key, locale);
            let _ = mailer::format::minutes_left(&key);
            let rendered = templates
                .render(
                    "fuzz",
                    locale,
                    context! { name => &name, message => &message, subject => &subject, total => &total, when => &when },
                )
                .map_err(|err| TestCaseError::fail(format!("render failed: {err}")))?;
            if name.contains("<script") || message.contains("<script") {
                prop_assert!(
                    !rendered.html.contains("<script"),
                    "unescaped: {}",
                    rendered.html
                );
            }
            let Ok(address) = to.parse() else {
                return Ok(());
            };
            let to = Mailbox::new(Some(name.clone()), address);
            let reply_to = reply.then(|| {
                Mailbox::new(
                    Some(reply_name.clone()),
                    "r@example.com".parse().expect("addr"),
                )
            });
            match compose(&from, &to, reply_to.as_ref(), &rendered, locale, &key) {
                Ok(composed) => {
                    let bytes = composed.formatted();
                    let text = String::from_utf8_lossy(&bytes);
                    let head = text.split("\r\n\r\n").next().unwrap_or_default();
                    for line in head.split("\r\n") {
                        if line.starts_with([' ', '\t']) {
                            continue;
                        }
                        let header = line
                            .split(':')
                            .next()
                            .unwrap_or_default()
                            .to_ascii_lowercase();
                        prop_assert!(
                            HEADERS.contains(&header.as_str()),
                            "header {line:?} in\n{head}"
                        );
                    }
                    prop_assert!(!rendered.subject.contains(['\r', '\n', '\0']));
                    // The bodies survive their transfer encoding (the mailer's own quoted-printable among them).
                    // Read back as the integration tests read what the SMTP server received.
                    let received = testkit::ReceivedMail {
                        mail_from: String::new(),
                        rcpt_to: Vec::new(),
                        mail_parameters: Vec::new(),
                        data: text.clone().into_owned(),
                        received_at: std::time::Instant::now(),
                        tls: false,
                    };
                    for (content_type, sent, decoded) in [
                        ("text/plain", &rendered.text, received.text_part()),
                        ("text/html", &rendered.html, received.html_part()),
                    ] {
                        let decoded = decoded.map(|part| part.replace("\r\n", "\n"));
                        let expected = sent.replace("\r\n", "\n");
                        prop_assert_eq!(
                            decoded.as_deref(),
                            Some(expected.as_str()),
                            "{} in\n{}",
                            content_type,
                            text
                        );
                    }
                }
                Err(SendError::HeaderInjection { .. }) => {
                    let mut values = vec![rendered.subject.as_str(), name.as_str()];
                    if reply_to.is_some() {
                        values.push(reply_name.as_str());
                    }
                    prop_assert!(
                        values
                            .iter()
                            .any(|value| value.contains(['\r', '\n', '\0'])),
                        "refused as an injection without a CR, LF or NUL"
                    );
                }
                Err(_) => {}
            }
            Ok(())
        },
    );
}
