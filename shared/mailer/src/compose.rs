//! Turns a [`Rendered`] email into a MIME message.

use email_encoding::body::Encoding;
use events::Locale;
use lettre::Message;
use lettre::address::Envelope;
use lettre::message::header::ContentTransferEncoding;
use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Body, Mailbox, MultiPart};

use crate::{Rendered, SendError};

/// Namespace for Message-IDs: a v5 UUID of the idempotency key is the same on every redelivery and reveals nothing
/// of the key (which may contain an address).
const MESSAGE_ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6a2c_5f0e_8d7b_4c1a_9e3f_1b2d_4c6e_8a01);

/// Builds the multipart/alternative message (text first, then HTML, both UTF-8) for one recipient.
///
/// `idempotency_key` is the stable key of the event (for example `user.registered/<user_id>`); it becomes a
/// `Message-ID` of the form `<uuid@jetfn>`, so when a redelivered event sends the email again, receiving servers
/// and clients see one message. `reply_to` is where replies go, e.g. the visitor of a contact form whose address
/// must never be the `To`.
///
/// # Errors
/// [`SendError::HeaderInjection`] when the subject or a display name contains CR, LF or NUL: refused, not encoded,
/// so an injection attempt is visible. [`SendError::Invalid`] when lettre refuses the message. Both are permanent.
pub fn compose(
    from: &Mailbox,
    to: &Mailbox,
    reply_to: Option<&Mailbox>,
    rendered: &Rendered,
    locale: Locale,
    idempotency_key: &str,
) -> Result<Message, SendError> {
    refuse_control("Subject", &rendered.subject)?;
    refuse_control_in_name("From", from)?;
    refuse_control_in_name("To", to)?;
    if let Some(reply_to) = reply_to {
        refuse_control_in_name("Reply-To", reply_to)?;
    }

    // The envelope given, not derived: lettre would otherwise parse the From and To headers it has just written
    // back into addresses, about 44,000 instructions per email, a seventeenth of the welcome function's CPU per
    // email (tests/bench/ANALYSIS.md, section 28). The same two addresses either way.
    let envelope = Envelope::new(Some(from.email.clone()), vec![to.email.clone()])?;
    let mut builder = Message::builder()
        .envelope(envelope)
        .from(from.clone())
        .to(to.clone())
        .subject(rendered.subject.clone())
        .message_id(Some(message_id(idempotency_key)))
        .header(ContentLanguage(locale.as_str()));
    if let Some(reply_to) = reply_to {
        builder = builder.reply_to(reply_to.clone());
    }
    Ok(builder.multipart(MultiPart::alternative_plain_html(
        body(&rendered.text),
        body(&rendered.html),
    ))?)
}

/// A part's body in the transfer encoding lettre would choose for it, encoded by [`crate::qp`] where that is
/// quoted-printable: lettre's own encoder was an eighth of the welcome function's instructions per email
/// (tests/bench/ANALYSIS.md, section 36).
fn body(text: &str) -> Body {
    match Encoding::choose(text, false) {
        Encoding::QuotedPrintable => Body::dangerous_pre_encoded(
            crate::qp::encode(text),
            ContentTransferEncoding::QuotedPrintable,
        ),
        _ => Body::new(text.to_owned()),
    }
}

pub(crate) fn message_id(idempotency_key: &str) -> String {
    let id = uuid::Uuid::new_v5(&MESSAGE_ID_NAMESPACE, idempotency_key.as_bytes());
    format!("<{}@jetfn>", id.simple())
}

fn refuse_control(header: &'static str, value: &str) -> Result<(), SendError> {
    if value.contains(['\r', '\n', '\0']) {
        return Err(SendError::HeaderInjection { header });
    }
    Ok(())
}

fn refuse_control_in_name(header: &'static str, mailbox: &Mailbox) -> Result<(), SendError> {
    mailbox
        .name
        .as_deref()
        .map_or(Ok(()), |name| refuse_control(header, name))
}

/// `Content-Language` (RFC 3282), so clients pick the right spell checker and screen-reader voice.
#[derive(Clone)]
struct ContentLanguage(&'static str);

impl Header for ContentLanguage {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Content-Language")
    }

    fn parse(s: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        match s.trim() {
            "en" => Ok(Self("en")),
            "vi" => Ok(Self("vi")),
            _ => Err("unsupported Content-Language".into()),
        }
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(subject: &str) -> Rendered {
        Rendered {
            subject: subject.to_owned(),
            html: "<p>Hi</p>".to_owned(),
            text: "Hi".to_owned(),
        }
    }

    fn mailbox(s: &str) -> Mailbox {
        s.parse().expect("valid mailbox")
    }

    fn formatted(message: &Message) -> String {
        String::from_utf8(message.formatted()).expect("ascii message")
    }

    fn header_count(message: &str, name: &str) -> usize {
        let prefix = format!("{name}:");
        message.lines().filter(|l| l.starts_with(&prefix)).count()
    }

    /// Only the quoted-printable encoder is the mailer's own: a part keeps lettre's headers (its choice of transfer
    /// encoding with them), a 7bit or base64 body is lettre's byte for byte, and a quoted-printable one decodes to
    /// what lettre's decodes to.
    #[test]
    fn a_part_keeps_lettre_s_headers_and_encoding_and_decodes_to_lettre_s_text() {
        use lettre::message::SinglePart;
        let long = format!("<p>{}</p>\n<p>x = y</p>\n", "word ".repeat(40));
        for (text, encoding) in [
            ("Hi\nthere", "7bit"),
            (long.as_str(), "quoted-printable"),
            (
                "Welcome, Ngọc Anh! Your account is ready. \nSee you soon\t\n",
                "quoted-printable",
            ),
            ("📬📬📬📬📬📬📬📬📬📬 hi", "base64"),
        ] {
            let split = |part: SinglePart| {
                let raw = String::from_utf8(part.formatted()).expect("ascii part");
                let (headers, body) = raw.split_once("\r\n\r\n").expect("headers, then the body");
                (headers.to_owned(), body.to_owned())
            };
            let (lettre_headers, lettre_body) = split(SinglePart::html(text.to_owned()));
            let (headers, body) = split(SinglePart::html(super::body(text)));
            assert_eq!(headers, lettre_headers, "{text:?}");
            assert!(
                headers.contains(&format!("Content-Transfer-Encoding: {encoding}")),
                "{headers}"
            );
            if encoding == "quoted-printable" {
                let decode = |body: &str| {
                    quoted_printable::decode(body.trim_end(), quoted_printable::ParseMode::Strict)
                        .expect("quoted-printable")
                };
                assert_eq!(decode(&body), decode(&lettre_body), "{text:?}");
            } else {
                assert_eq!(body, lettre_body, "{text:?}");
            }
        }
    }

    #[test]
    fn builds_one_subject_and_alternative_parts_in_order() {
        let m = compose(
            &mailbox("jetfn <no-reply@jetfn.local>"),
            &mailbox("Ada <ada@example.com>"),
            None,
            &rendered("Chào mừng Ngọc Anh"),
            Locale::Vi,
            "k1",
        )
        .expect("composes");
        let raw = formatted(&m);
        assert_eq!(header_count(&raw, "Subject"), 1, "{raw}");
        assert_eq!(header_count(&raw, "Message-ID"), 1, "{raw}");
        assert!(raw.contains("Content-Language: vi"), "{raw}");
        assert!(raw.contains("multipart/alternative"), "{raw}");
        let text = raw.find("text/plain; charset=utf-8").expect("text part");
        let html = raw.find("text/html; charset=utf-8").expect("html part");
        assert!(text < html, "text must come before html");
        assert_eq!(header_count(&raw, "Reply-To"), 0);
    }

    /// The envelope is given rather than derived from the headers: it must be the one lettre would derive.
    #[test]
    fn the_envelope_is_the_one_the_headers_give() {
        let m = compose(
            &mailbox("jetfn <no-reply@jetfn.local>"),
            &mailbox("\"Lovelace, Ada\" <ada@example.com>"),
            Some(&mailbox("Visitor <visitor@example.org>")),
            &rendered("Welcome"),
            Locale::En,
            "k1",
        )
        .expect("composes");
        let derived = Envelope::try_from(m.headers()).expect("an envelope from the headers");
        assert_eq!(m.envelope(), &derived);
        assert_eq!(m.envelope().to().len(), 1);
    }

    #[test]
    fn sets_reply_to_when_given() {
        let m = compose(
            &mailbox("no-reply@jetfn.local"),
            &mailbox("ops@example.com"),
            Some(&mailbox("visitor@example.org")),
            &rendered("Contact"),
            Locale::En,
            "k",
        )
        .expect("composes");
        assert!(formatted(&m).contains("Reply-To: visitor@example.org"));
    }

    #[test]
    fn refuses_cr_lf_and_nul_in_the_subject() {
        for subject in [
            "Hi\r\nBcc: victim@example.com",
            "Hi\nthere",
            "Hi\rthere",
            "Hi\0",
        ] {
            let err = compose(
                &mailbox("no-reply@jetfn.local"),
                &mailbox("ada@example.com"),
                None,
                &rendered(subject),
                Locale::En,
                "k",
            )
            .expect_err("refused");
            assert!(
                matches!(err, SendError::HeaderInjection { header: "Subject" }),
                "{err}"
            );
            assert!(err.is_permanent());
        }
    }

    #[test]
    fn refuses_cr_lf_in_display_names() {
        let to = Mailbox::new(
            Some("Ada\r\nBcc: x@example.com".to_owned()),
            "ada@example.com".parse().expect("addr"),
        );
        let err = compose(
            &mailbox("no-reply@jetfn.local"),
            &to,
            None,
            &rendered("Hi"),
            Locale::En,
            "k",
        )
        .expect_err("refused");
        assert!(
            matches!(err, SendError::HeaderInjection { header: "To" }),
            "{err}"
        );
    }

    #[test]
    fn message_id_is_stable_and_hides_the_key() {
        let compose_with = |key: &str| {
            let m = compose(
                &mailbox("no-reply@jetfn.local"),
                &mailbox("ada@example.com"),
                None,
                &rendered("Hi"),
                Locale::En,
                key,
            )
            .expect("composes");
            let raw = formatted(&m);
            raw.lines()
                .find(|l| l.starts_with("Message-ID:"))
                .expect("message id")
                .to_owned()
        };
        let key = "user.registered/ada@example.com";
        assert_eq!(compose_with(key), compose_with(key));
        assert_ne!(compose_with(key), compose_with("user.registered/other"));
        let id = compose_with(key);
        assert!(id.ends_with("@jetfn>") && !id.contains("ada"), "{id}");
    }
}
