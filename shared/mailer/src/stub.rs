//! A mailer for in-process handler tests: it records what it would have sent and answers as it is scripted to, so a
//! handler's decisions (sent, retried, dead-lettered, the breaker fed) are tested without an SMTP server or a
//! process. Compiled only for this crate's tests and with the `testing` feature, which function crates enable in
//! their `[dev-dependencies]`: a production binary has no stub.
//!
//! ```
//! # async fn run() {
//! use mailer::{Mailer, Reply};
//!
//! let (mailer, smtp) = Mailer::stub();
//! smtp.reply(Reply::Reject(451)); // the next send is greylisted, the one after accepted
//! # let _ = mailer;
//! // ... run the handler twice ...
//! assert_eq!(smtp.sent().len(), 0);
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use lettre::Message;

use crate::SendError;

/// What the stub answers to one send, as an SMTP server would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reply {
    /// `250`: the message is accepted and recorded.
    Accept,
    /// A negative reply with this code: a 4xx is transient (`421` means the server is unavailable), a 5xx
    /// permanent. Nothing is recorded.
    Reject(u16),
    /// The connection is refused: the server is unavailable. Probes fail too while this is the answer.
    Down,
    /// The send takes longer than `SMTP_TIMEOUT_SECS`: the server is unavailable.
    Timeout,
}

/// One message the stub accepted.
#[derive(Clone)]
pub struct Sent {
    message: Message,
}

impl Sent {
    /// The envelope recipients (full addresses: this is test data).
    pub fn to(&self) -> Vec<String> {
        self.message
            .envelope()
            .to()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// A header as composed (not encoded), such as `Subject`, `Reply-To`, `Message-ID` or `Content-Language`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.message.headers().get_raw(name).map(str::to_owned)
    }

    /// The whole message as it would go over the wire; the bodies are transfer-encoded, see [`Sent::text`].
    pub fn raw(&self) -> String {
        String::from_utf8_lossy(&self.message.formatted()).into_owned()
    }

    /// The text/plain part, decoded.
    ///
    /// # Panics
    /// When the message has no such part; [`compose`](crate::compose) always writes one.
    pub fn text(&self) -> String {
        self.part("text/plain")
    }

    /// The text/html part, decoded.
    ///
    /// # Panics
    /// As [`Sent::text`].
    pub fn html(&self) -> String {
        self.part("text/html")
    }

    /// Finds the part of `content_type` in the formatted message and undoes its transfer encoding.
    fn part(&self, content_type: &str) -> String {
        let raw = self.raw();
        let boundary = raw
            .split_once("boundary=\"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or("", |(boundary, _)| boundary);
        // Up to the boundary itself: a body may hold lines of its own that start with `--` (a signature's).
        let found = raw
            .split_once(&format!("\r\nContent-Type: {content_type}"))
            .and_then(|(_, part)| part.split_once("\r\n\r\n"))
            .map(|(headers, rest)| {
                let end = format!("\r\n--{boundary}");
                (headers, rest.split(end.as_str()).next().unwrap_or(rest))
            });
        let Some((headers, body)) = found else {
            panic!("the message has no {content_type} part")
        };
        let encoding = headers
            .split("\r\n")
            .find_map(|line| line.strip_prefix("Content-Transfer-Encoding: "))
            .unwrap_or("7bit");
        let bytes = match encoding {
            "quoted-printable" => {
                quoted_printable::decode(body, quoted_printable::ParseMode::Strict)
                    .expect("lettre wrote valid quoted-printable")
            }
            "base64" => {
                use base64::Engine as _;
                let compact: String = body.split_whitespace().collect();
                base64::engine::general_purpose::STANDARD
                    .decode(compact)
                    .expect("lettre wrote valid base64")
            }
            _ => body.as_bytes().to_vec(),
        };
        String::from_utf8(bytes)
            .expect("the parts are UTF-8")
            .replace("\r\n", "\n")
    }

    /// The message itself.
    pub fn message(&self) -> &Message {
        &self.message
    }
}

impl fmt::Debug for Sent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Masked like everything else this crate prints, so a failing assertion shows no address.
        let to: Vec<String> = self
            .to()
            .iter()
            .map(|to| events::pii::mask_email(to))
            .collect();
        f.debug_struct("Sent")
            .field("to", &to)
            .field("message_id", &self.header("Message-ID"))
            .finish_non_exhaustive()
    }
}

/// The test's side of a stub mailer: script its replies, read what it recorded. Clones share the stub.
#[derive(Clone, Default)]
pub struct Stub {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    /// Replies for the next sends, in order.
    script: VecDeque<Reply>,
    /// The reply once the script is used up; `None` is [`Reply::Accept`].
    otherwise: Option<Reply>,
    sent: Vec<Sent>,
    attempts: usize,
}

impl fmt::Debug for Stub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Stub")
            .field("script", &state.script)
            .field("otherwise", &state.otherwise)
            .field("sent", &state.sent.len())
            .field("attempts", &state.attempts)
            .finish()
    }
}

impl Stub {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers the next send (after those already scripted) with `reply`.
    pub fn reply(&self, reply: Reply) -> &Self {
        self.lock().script.push_back(reply);
        self
    }

    /// Answers every send with `reply` once the scripted replies are used up (the default is [`Reply::Accept`]).
    pub fn always(&self, reply: Reply) -> &Self {
        self.lock().otherwise = Some(reply);
        self
    }

    /// The messages accepted so far, in order.
    pub fn sent(&self) -> Vec<Sent> {
        self.lock().sent.clone()
    }

    /// The envelope recipients of every accepted message, in the order sent.
    pub fn recipients(&self) -> Vec<String> {
        self.lock().sent.iter().flat_map(Sent::to).collect()
    }

    /// How many sends were tried, accepted or not.
    pub fn attempts(&self) -> usize {
        self.lock().attempts
    }

    /// Forgets what was sent and tried; the script stays.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.sent.clear();
        state.attempts = 0;
    }

    pub(crate) fn send(&self, message: Message) -> Result<(), SendError> {
        let mut state = self.lock();
        state.attempts += 1;
        let reply = state
            .script
            .pop_front()
            .or(state.otherwise)
            .unwrap_or(Reply::Accept);
        match reply {
            Reply::Accept => {
                state.sent.push(Sent { message });
                Ok(())
            }
            other => Err(failure(other)),
        }
    }

    pub(crate) fn probe(&self) -> Result<(), SendError> {
        let state = self.lock();
        let next = state.script.front().copied().or(state.otherwise);
        match next {
            Some(reply @ (Reply::Down | Reply::Timeout)) => Err(failure(reply)),
            _ => Ok(()),
        }
    }
}

/// The error the SMTP transport returns for the same answer from a real server.
fn failure(reply: Reply) -> SendError {
    match reply {
        Reply::Accept => unreachable!("an accepted send is not a failure"),
        Reply::Reject(code) => SendError::Rejected {
            code,
            enhanced: None,
        },
        Reply::Down => SendError::Connection {
            detail: "Connection refused (os error 111)".to_owned(),
        },
        Reply::Timeout => SendError::Timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Delivery, Mailer, Rendered, compose, job_error};
    use events::Locale;
    use lettre::message::Mailbox;

    fn message(mailer: &Mailer, to: &str) -> Message {
        let rendered = Rendered {
            subject: "Welcome to jetfn, Ada".to_owned(),
            html: "<p>Hi Ada</p>".to_owned(),
            text: "Hi Ada".to_owned(),
        };
        let reply_to: Mailbox = "Support <support@example.com>".parse().expect("reply-to");
        compose(
            mailer.from(),
            &to.parse().expect("to"),
            Some(&reply_to),
            &rendered,
            Locale::Vi,
            "user.registered/u-1",
        )
        .expect("compose")
    }

    #[tokio::test]
    async fn records_what_it_accepts() {
        let (mailer, smtp) = Mailer::stub();
        let delivery = mailer
            .send(message(&mailer, "Ada <ada@example.com>"))
            .await
            .expect("accepted");
        assert_eq!(
            delivery,
            Delivery::Smtp,
            "the stub stands in for an SMTP server"
        );
        let sent = smtp.sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].to(), ["ada@example.com"]);
        assert_eq!(smtp.recipients(), ["ada@example.com"]);
        assert_eq!(
            sent[0].header("Subject").as_deref(),
            Some("Welcome to jetfn, Ada")
        );
        assert_eq!(
            sent[0].header("Reply-To").as_deref(),
            Some("Support <support@example.com>")
        );
        assert_eq!(sent[0].header("Content-Language").as_deref(), Some("vi"));
        assert!(
            sent[0].raw().contains("From: jetfn <no-reply@jetfn.local>"),
            "{}",
            sent[0].raw()
        );
        assert_eq!(sent[0].text(), "Hi Ada");
        assert_eq!(sent[0].html(), "<p>Hi Ada</p>");
        assert_eq!(smtp.attempts(), 1);
        let debug = format!("{:?}", sent[0]);
        assert!(
            !debug.contains("Welcome") && !debug.contains("ada@"),
            "{debug}"
        );
        assert!(debug.contains("ad***@example.com"), "{debug}");
    }

    #[tokio::test]
    async fn bodies_read_back_whatever_their_transfer_encoding() {
        let (mailer, smtp) = Mailer::stub();
        let long = format!("https://shop.example/reset?token={}", "x".repeat(80));
        let vietnamese = "Xin chào Ngọc Anh, tài khoản của bạn đã sẵn sàng.\n".repeat(4);
        for text in [long.as_str(), vietnamese.as_str()] {
            let rendered = Rendered {
                subject: "s".to_owned(),
                html: format!("<p>{text}</p>"),
                text: text.to_owned(),
            };
            let to = "ada@example.com".parse().expect("to");
            let message =
                compose(mailer.from(), &to, None, &rendered, Locale::Vi, "k").expect("compose");
            mailer.send(message).await.expect("accepted");
        }
        let sent = smtp.sent();
        assert!(
            !sent[0].raw().contains(&long),
            "the long line is encoded on the wire"
        );
        assert_eq!(sent[0].text(), long);
        assert!(
            sent[1].raw().contains("Content-Transfer-Encoding: base64"),
            "{}",
            sent[1].raw()
        );
        assert_eq!(sent[1].text(), vietnamese);
        assert_eq!(sent[1].html(), format!("<p>{vietnamese}</p>"));
    }

    #[tokio::test]
    async fn scripted_replies_map_to_each_disposition() {
        let (mailer, smtp) = Mailer::stub();
        smtp.reply(Reply::Reject(451))
            .reply(Reply::Reject(550))
            .reply(Reply::Reject(421))
            .reply(Reply::Down)
            .reply(Reply::Timeout);
        let mut errors = Vec::new();
        for _ in 0..5 {
            let err = mailer
                .send(message(&mailer, "ada@example.com"))
                .await
                .expect_err("scripted failure");
            errors.push(job_error(err));
        }
        let [greylisted, no_such_user, not_available, down, timeout] =
            <[_; 5]>::try_from(errors).expect("five");
        assert!(
            !greylisted.is_permanent() && !greylisted.is_unavailable(),
            "{greylisted:?}"
        );
        assert!(no_such_user.is_permanent(), "{no_such_user:?}");
        assert!(no_such_user.to_string().contains("550"), "{no_such_user}");
        for unavailable in [not_available, down, timeout] {
            assert!(
                unavailable.is_unavailable() && !unavailable.is_permanent(),
                "{unavailable:?}"
            );
        }
        assert!(smtp.sent().is_empty(), "a refused message is not recorded");
        assert_eq!(smtp.attempts(), 5);

        // The script is used up: back to accepting.
        mailer
            .send(message(&mailer, "ada@example.com"))
            .await
            .expect("accepted");
        assert_eq!(smtp.sent().len(), 1);
    }

    #[tokio::test]
    async fn always_answers_the_same_until_changed() {
        let (mailer, smtp) = Mailer::stub();
        smtp.always(Reply::Down);
        for _ in 0..3 {
            let err = mailer
                .send(message(&mailer, "ada@example.com"))
                .await
                .expect_err("down");
            assert!(err.is_unavailable(), "{err}");
        }
        mailer
            .probe()
            .await
            .expect_err("a downed server fails the probe");
        smtp.always(Reply::Accept);
        mailer.probe().await.expect("up again");
        mailer
            .send(message(&mailer, "ada@example.com"))
            .await
            .expect("accepted");
        assert_eq!((smtp.sent().len(), smtp.attempts()), (1, 4));
        smtp.clear();
        assert_eq!((smtp.sent().len(), smtp.attempts()), (0, 0));
    }

    #[tokio::test]
    async fn clones_share_the_stub() {
        let (mailer, smtp) = Mailer::stub();
        let other = mailer.clone();
        other
            .send(message(&other, "ada@example.com"))
            .await
            .expect("accepted");
        assert_eq!(smtp.clone().sent().len(), 1);
        assert!(format!("{mailer:?}").contains("stub"));
    }
}
