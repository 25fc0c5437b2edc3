//! An in-process SMTP server (RFC 5321 subset, plain TCP) on 127.0.0.1 with scripted faults.
//!
//! Speaks EHLO/HELO, MAIL, RCPT, DATA (dot-unstuffing), RSET, NOOP, QUIT, VRFY, HELP. No TLS,
//! AUTH or PIPELINING (none advertised). Each connection is its own task on a private runtime.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_parser::{HeaderValue, MessageParser, MimeHeaders, PartType};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

use crate::bg::BgRuntime;
use crate::{lock, poll_async, poll_blocking};

const GO_DOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A message the server accepted (answered 250 to the end of DATA).
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    /// Reverse-path from `MAIL FROM:<...>` (empty for the null sender `<>`).
    pub mail_from: String,
    /// Forward-paths accepted by `RCPT TO:<...>`, in order.
    pub rcpt_to: Vec<String>,
    /// The message as received (after dot-unstuffing), CRLF line endings.
    pub data: String,
    /// When the server committed the message (just before answering 250).
    pub received_at: Instant,
}

/// Which command an [`Attempt`] answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptStage {
    /// A `RCPT TO` rejected by [`SmtpServer::reject_recipients`].
    Rcpt,
    /// The end of DATA (`<CRLF>.<CRLF>`), whatever the answer.
    Data,
}

/// One delivery attempt: every end-of-DATA answer, and every rejected RCPT.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub stage: AttemptStage,
    /// The reply code the server answered (250 for a delivered message).
    pub code: u16,
    pub text: String,
    pub mail_from: String,
    /// For [`AttemptStage::Rcpt`], the rejected recipient; for `Data`, the accepted recipients.
    pub rcpt_to: Vec<String>,
    pub at: Instant,
}

#[derive(Default)]
struct Faults {
    data_replies: VecDeque<(u16, String)>,
    /// Replies for messages to one recipient only; checked before `data_replies`.
    targeted: Vec<(String, VecDeque<(u16, String)>)>,
    rcpt_reject: Option<(u16, String)>,
    data_delay: Option<Duration>,
}

#[derive(Default)]
struct Shared {
    faults: Mutex<Faults>,
    messages: Mutex<Vec<ReceivedMail>>,
    attempts: Mutex<Vec<Attempt>>,
}

/// The accept loop of one "up" period. Every task of that period holds a clone of the `mpsc`
/// sender, so when `done` reports disconnection, the listener and all connections are closed.
struct Online {
    accept: AbortHandle,
    done: mpsc::Receiver<()>,
}

/// A real SMTP server on `127.0.0.1:<port>` that the test controls.
pub struct SmtpServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    online: Mutex<Option<Online>>,
    runtime: BgRuntime,
}

impl SmtpServer {
    /// Starts the server on a free port.
    pub fn start() -> Self {
        let listener =
            StdTcpListener::bind(("127.0.0.1", 0)).expect("bind SMTP test server on 127.0.0.1:0");
        let addr = listener.local_addr().expect("SMTP listener address");
        let server = Self {
            addr,
            shared: Arc::default(),
            online: Mutex::new(None),
            runtime: BgRuntime::new("smtp-test-server"),
        };
        server.launch(listener);
        server
    }

    /// `smtp://127.0.0.1:<port>` (plain SMTP, no TLS).
    pub fn url(&self) -> String {
        format!("smtp://{}", self.addr)
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Like [`SmtpServer::fail_next_data`], for messages to `recipient` only: the next N of them get these
    /// replies, while mail to others goes through.
    pub fn fail_next_data_to<S: Into<String>>(
        &self,
        recipient: &str,
        replies: impl IntoIterator<Item = (u16, S)>,
    ) {
        let replies = replies
            .into_iter()
            .map(|(code, text)| (code, text.into()))
            .collect();
        lock(&self.shared.faults)
            .targeted
            .push((recipient.to_owned(), replies));
    }

    /// The next `replies.len()` DATA completions get these replies (e.g. `(451, "4.3.0 try again")`)
    /// instead of 250. They are recorded as attempts, not as messages.
    pub fn fail_next_data<S: Into<String>>(&self, replies: impl IntoIterator<Item = (u16, S)>) {
        let mut faults = lock(&self.shared.faults);
        for (code, text) in replies {
            faults.data_replies.push_back((code, text.into()));
        }
    }

    /// Every `RCPT TO` gets this reply (e.g. `550, "5.1.1 no such user"`) until [`SmtpServer::clear_faults`].
    pub fn reject_recipients(&self, code: u16, text: impl Into<String>) {
        lock(&self.shared.faults).rcpt_reject = Some((code, text.into()));
    }

    /// Hold the reply to every DATA completion for `delay` (a slow send). The message is committed
    /// (recorded) only when the reply is sent, so a client that dies during the delay still gets
    /// its message delivered, as with a real server (RFC 1047).
    pub fn delay_data_reply(&self, delay: Duration) {
        lock(&self.shared.faults).data_delay = Some(delay);
    }

    /// Removes scripted DATA replies, the RCPT rejection and the DATA delay.
    pub fn clear_faults(&self) {
        *lock(&self.shared.faults) = Faults::default();
    }

    /// Outage: closes the listener (connections are refused) and drops every open connection.
    /// Returns once all of them are closed. No-op if already down.
    pub fn go_down(&self) {
        let Some(online) = lock(&self.online).take() else {
            return;
        };
        online.accept.abort();
        let deadline = Instant::now() + GO_DOWN_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match online.done.recv_timeout(left) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    panic!("SMTP test server did not close within {GO_DOWN_TIMEOUT:?}")
                }
            }
        }
    }

    /// Listens again on the same port. No-op if already up.
    pub fn come_up(&self) {
        if lock(&self.online).is_some() {
            return;
        }
        // std sets SO_REUSEADDR, so TIME_WAIT connections don't block the bind; retry briefly anyway.
        let listener = poll_blocking(Duration::from_secs(5), || {
            StdTcpListener::bind(self.addr).ok()
        })
        .unwrap_or_else(|| panic!("SMTP test server cannot bind {} again", self.addr));
        self.launch(listener);
    }

    /// Whether the server is accepting connections.
    pub fn is_up(&self) -> bool {
        lock(&self.online).is_some()
    }

    /// Delivered messages, in order.
    pub fn messages(&self) -> Vec<ReceivedMail> {
        lock(&self.shared.messages).clone()
    }

    /// Every DATA completion and rejected RCPT, in order.
    pub fn attempts(&self) -> Vec<Attempt> {
        lock(&self.shared.attempts).clone()
    }

    /// Waits until at least `n` messages were delivered; panics with what it has on timeout.
    pub async fn wait_for_messages(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let found = poll_async(timeout, || self.enough_messages(n)).await;
        found.unwrap_or_else(|| self.timeout_panic("messages", n, timeout))
    }

    /// Blocking twin of [`SmtpServer::wait_for_messages`].
    pub fn wait_for_messages_blocking(&self, n: usize, timeout: Duration) -> Vec<ReceivedMail> {
        let found = poll_blocking(timeout, || self.enough_messages(n));
        found.unwrap_or_else(|| self.timeout_panic("messages", n, timeout))
    }

    /// Waits until at least `n` attempts were recorded; panics with what it has on timeout.
    pub async fn wait_for_attempts(&self, n: usize, timeout: Duration) -> Vec<Attempt> {
        let found = poll_async(timeout, || self.enough_attempts(n)).await;
        found.unwrap_or_else(|| self.timeout_panic("attempts", n, timeout))
    }

    /// Blocking twin of [`SmtpServer::wait_for_attempts`].
    pub fn wait_for_attempts_blocking(&self, n: usize, timeout: Duration) -> Vec<Attempt> {
        let found = poll_blocking(timeout, || self.enough_attempts(n));
        found.unwrap_or_else(|| self.timeout_panic("attempts", n, timeout))
    }

    fn enough_messages(&self, n: usize) -> Option<Vec<ReceivedMail>> {
        let messages = lock(&self.shared.messages);
        (messages.len() >= n).then(|| messages.clone())
    }

    fn enough_attempts(&self, n: usize) -> Option<Vec<Attempt>> {
        let attempts = lock(&self.shared.attempts);
        (attempts.len() >= n).then(|| attempts.clone())
    }

    fn timeout_panic(&self, what: &str, n: usize, timeout: Duration) -> ! {
        let messages: Vec<String> = self
            .messages()
            .iter()
            .map(|m| {
                format!(
                    "  from {:?} to {:?} subject {:?}",
                    m.mail_from,
                    m.rcpt_to,
                    m.header("Subject")
                )
            })
            .collect();
        let attempts: Vec<String> = self
            .attempts()
            .iter()
            .map(|a| format!("  {:?} {} {} ({:?})", a.stage, a.code, a.text, a.rcpt_to))
            .collect();
        panic!(
            "SMTP test server {}: expected {n} {what} within {timeout:?}; messages ({}):\n{}\nattempts ({}):\n{}",
            self.addr,
            messages.len(),
            messages.join("\n"),
            attempts.len(),
            attempts.join("\n"),
        )
    }

    fn launch(&self, listener: StdTcpListener) {
        listener
            .set_nonblocking(true)
            .expect("set SMTP listener non-blocking");
        let (guard, done) = mpsc::channel::<()>();
        let shared = Arc::clone(&self.shared);
        let handle = self.runtime.handle();
        let accept = handle.spawn(accept_loop(listener, shared, guard));
        *lock(&self.online) = Some(Online {
            accept: accept.abort_handle(),
            done,
        });
    }
}

async fn accept_loop(listener: StdTcpListener, shared: Arc<Shared>, guard: mpsc::Sender<()>) {
    let listener = TcpListener::from_std(listener).expect("register SMTP listener with tokio");
    let mut sessions = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let shared = Arc::clone(&shared);
                let guard = guard.clone();
                sessions.spawn(async move {
                    let _guard = guard;
                    let _ = session(stream, &shared).await;
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
        while sessions.try_join_next().is_some() {}
    }
}

/// Writes a reply; multi-line `text` becomes a multi-line reply (`code-` continuation lines).
async fn reply(stream: &mut TcpStream, code: u16, text: &str) -> std::io::Result<()> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        out.push_str(&format!("{code}{sep}{line}\r\n"));
    }
    if lines.is_empty() {
        out = format!("{code} \r\n");
    }
    stream.write_all(out.as_bytes()).await?;
    stream.flush().await
}

/// Reads one line without its line ending; `None` at EOF.
async fn read_line(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<String>> {
    let mut line = Vec::new();
    if reader.read_until(b'\n', &mut line).await? == 0 {
        return Ok(None);
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    Ok(Some(String::from_utf8_lossy(&line).into_owned()))
}

/// The address inside `<...>` after a `FROM:`/`TO:` keyword; parameters after it are ignored.
fn parse_path(arg: &str, keyword: &str) -> Option<String> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..].trim_start();
    let rest = rest.strip_prefix('<')?;
    let end = rest.find('>')?;
    Some(rest[..end].to_owned())
}

async fn session(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let mut conn = BufReader::new(stream);
    reply(conn.get_mut(), 220, "127.0.0.1 ESMTP jetfn test server").await?;
    let mut greeted = false;
    let mut mail_from: Option<String> = None;
    let mut rcpt_to: Vec<String> = Vec::new();
    while let Some(line) = read_line(&mut conn).await? {
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim()),
            None => (line.trim().to_ascii_uppercase(), ""),
        };
        let out = conn.get_mut();
        match verb.as_str() {
            "EHLO" | "HELO" if arg.is_empty() => {
                reply(out, 501, "5.5.4 Syntax: EHLO hostname").await?
            }
            "EHLO" => {
                greeted = true;
                mail_from = None;
                rcpt_to.clear();
                let text =
                    format!("127.0.0.1 Hello {arg}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES");
                reply(out, 250, &text).await?;
            }
            "HELO" => {
                greeted = true;
                mail_from = None;
                rcpt_to.clear();
                reply(out, 250, "127.0.0.1").await?;
            }
            "MAIL" if !greeted => reply(out, 503, "5.5.1 Send EHLO/HELO first").await?,
            "MAIL" if mail_from.is_some() => reply(out, 503, "5.5.1 Nested MAIL command").await?,
            "MAIL" => match parse_path(arg, "FROM:") {
                Some(path) => {
                    mail_from = Some(path);
                    reply(out, 250, "2.1.0 OK").await?;
                }
                None => reply(out, 501, "5.5.4 Syntax: MAIL FROM:<address>").await?,
            },
            "RCPT" if mail_from.is_none() => reply(out, 503, "5.5.1 Need MAIL first").await?,
            "RCPT" => match parse_path(arg, "TO:") {
                Some(path) if !path.is_empty() => {
                    let reject = lock(&shared.faults).rcpt_reject.clone();
                    if let Some((code, text)) = reject {
                        lock(&shared.attempts).push(Attempt {
                            stage: AttemptStage::Rcpt,
                            code,
                            text: text.clone(),
                            mail_from: mail_from.clone().unwrap_or_default(),
                            rcpt_to: vec![path],
                            at: Instant::now(),
                        });
                        reply(out, code, &text).await?;
                    } else {
                        rcpt_to.push(path);
                        reply(out, 250, "2.1.5 OK").await?;
                    }
                }
                _ => reply(out, 501, "5.5.4 Syntax: RCPT TO:<address>").await?,
            },
            "DATA" if mail_from.is_none() => reply(out, 503, "5.5.1 Need MAIL first").await?,
            "DATA" if rcpt_to.is_empty() => reply(out, 554, "5.5.1 No valid recipients").await?,
            "DATA" if !arg.is_empty() => reply(out, 501, "5.5.4 Syntax: DATA").await?,
            "DATA" => {
                reply(out, 354, "End data with <CR><LF>.<CR><LF>").await?;
                let mut data = String::new();
                loop {
                    let Some(line) = read_line(&mut conn).await? else {
                        return Ok(()); // EOF inside DATA: abandoned transaction
                    };
                    if line == "." {
                        break;
                    }
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    data.push_str("\r\n");
                }
                let from = mail_from.take().unwrap_or_default();
                let rcpts = std::mem::take(&mut rcpt_to);
                let delay = lock(&shared.faults).data_delay;
                if let Some(delay) = delay {
                    tokio::time::sleep(delay).await;
                }
                let scripted = {
                    let mut faults = lock(&shared.faults);
                    let targeted = faults
                        .targeted
                        .iter_mut()
                        .find(|(to, replies)| {
                            !replies.is_empty()
                                && rcpts.iter().any(|rcpt| rcpt.eq_ignore_ascii_case(to))
                        })
                        .and_then(|(_, replies)| replies.pop_front());
                    targeted.or_else(|| faults.data_replies.pop_front())
                };
                let (code, text) = scripted.unwrap_or((250, "2.0.0 OK: queued".to_owned()));
                let at = Instant::now();
                if code == 250 {
                    lock(&shared.messages).push(ReceivedMail {
                        mail_from: from.clone(),
                        rcpt_to: rcpts.clone(),
                        data,
                        received_at: at,
                    });
                }
                lock(&shared.attempts).push(Attempt {
                    stage: AttemptStage::Data,
                    code,
                    text: text.clone(),
                    mail_from: from,
                    rcpt_to: rcpts,
                    at,
                });
                reply(conn.get_mut(), code, &text).await?;
            }
            "RSET" => {
                mail_from = None;
                rcpt_to.clear();
                reply(out, 250, "2.0.0 OK").await?;
            }
            "NOOP" => reply(out, 250, "2.0.0 OK").await?,
            "VRFY" => reply(out, 252, "2.5.2 Cannot VRFY user").await?,
            "HELP" => {
                reply(
                    out,
                    214,
                    "2.0.0 EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY",
                )
                .await?
            }
            "QUIT" => {
                reply(out, 221, "2.0.0 Bye").await?;
                out.shutdown().await?;
                return Ok(());
            }
            "STARTTLS" | "AUTH" | "EXPN" | "TURN" | "ETRN" | "BDAT" => {
                reply(out, 502, "5.5.1 Command not implemented").await?
            }
            _ => reply(out, 500, "5.5.2 Command unrecognized").await?,
        }
    }
    Ok(())
}

impl ReceivedMail {
    fn parsed(&self) -> mail_parser::Message<'_> {
        MessageParser::default()
            .parse(self.data.as_bytes())
            .unwrap_or_else(|| panic!("cannot parse received mail:\n{}", self.data))
    }

    /// The first header called `name` (case-insensitive), decoded: RFC 2047 words decoded,
    /// addresses as `Name <addr>, ...`, dates in RFC 822 form. `None` if absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let message = self.parsed();
        let header = message
            .headers()
            .iter()
            .find(|h| h.name().eq_ignore_ascii_case(name))?;
        Some(match header.value() {
            HeaderValue::Text(text) => text.to_string(),
            HeaderValue::TextList(list) => list.join(", "),
            HeaderValue::Address(address) => address
                .iter()
                .map(|addr| {
                    let email = addr.address.as_deref().unwrap_or_default();
                    match addr.name.as_deref() {
                        Some(name) => format!("{name} <{email}>"),
                        None => email.to_owned(),
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
            HeaderValue::DateTime(date) => date.to_rfc822(),
            _ => self.raw_header(name).unwrap_or_default(),
        })
    }

    /// The first header called `name`, undecoded (unfolded, trimmed).
    pub fn raw_header(&self, name: &str) -> Option<String> {
        let message = self.parsed();
        let value = message
            .headers_raw()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))?
            .1;
        Some(
            value
                .replace("\r\n", "")
                .replace('\n', "")
                .trim()
                .to_owned(),
        )
    }

    /// How many top-level headers are called `name` (case-insensitive).
    pub fn header_count(&self, name: &str) -> usize {
        self.parsed()
            .headers()
            .iter()
            .filter(|h| h.name().eq_ignore_ascii_case(name))
            .count()
    }

    /// The decoded (transfer encoding and charset) first `text/plain` body part.
    pub fn text_part(&self) -> Option<String> {
        let message = self.parsed();
        message.text_bodies().find_map(|part| match &part.body {
            PartType::Text(text)
                if part.content_type().is_none_or(|ct| {
                    ct.subtype().is_none_or(|s| s.eq_ignore_ascii_case("plain"))
                }) =>
            {
                Some(text.to_string())
            }
            _ => None,
        })
    }

    /// The decoded first `text/html` body part.
    pub fn html_part(&self) -> Option<String> {
        let message = self.parsed();
        message.html_bodies().find_map(|part| match &part.body {
            PartType::Html(html) => Some(html.to_string()),
            _ => None,
        })
    }
}
