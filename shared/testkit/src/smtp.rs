//! An in-process SMTP server (RFC 5321 subset) on 127.0.0.1 with scripted replies, delays and outages, or a
//! counting sink for the bench.
//!
//! Speaks EHLO/HELO, AUTH (PLAIN, LOGIN; any credentials), MAIL, RCPT, DATA (dot-unstuffing), RSET, NOOP,
//! QUIT, VRFY, HELP. Plain TCP by default; given a certificate ([`SmtpServer::start_tls`]) it offers STARTTLS
//! (RFC 3207) or speaks TLS from the first byte (RFC 8314 implicit TLS), so a client's TLS, its certificate checks
//! and its refusal to fall back to plain text are tested against a real handshake. PIPELINING (RFC 2920) is
//! offered: commands that arrive together are read and answered in order, and each received command records
//! whether it arrived before the reply to the one before it.
//! Each connection is its own task on a private runtime.

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_parser::{HeaderValue, MessageParser, MimeHeaders, PartType};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::bg::BgRuntime;
use crate::{lock, poll_async, poll_blocking};

const GO_DOWN_TIMEOUT: Duration = Duration::from_secs(5);
const EXTENSIONS: &[&str] = &[
    "PIPELINING",
    "8BITMIME",
    "SMTPUTF8",
    "ENHANCEDSTATUSCODES",
    "AUTH PLAIN LOGIN",
];

/// A message the server accepted (answered 250 to the end of DATA).
#[derive(Clone, Debug)]
pub struct ReceivedMail {
    /// Reverse-path from `MAIL FROM:<...>` (empty for the null sender `<>`).
    pub mail_from: String,
    /// Forward-paths accepted by `RCPT TO:<...>`, in order.
    pub rcpt_to: Vec<String>,
    /// The `MAIL FROM` parameters after the path, as sent (`SMTPUTF8`, `BODY=8BITMIME`): what the client asked of
    /// the server for this message.
    pub mail_parameters: Vec<String>,
    /// The message as received (after dot-unstuffing), CRLF line endings.
    pub data: String,
    /// When the server committed the message (just before answering 250).
    pub received_at: Instant,
    /// Whether it came over TLS (after STARTTLS, or on an implicit-TLS server).
    pub tls: bool,
}

/// How a server started with [`SmtpServer::start_tls`] offers TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain TCP first; EHLO offers `STARTTLS` and the conversation starts over in TLS after it (RFC 3207).
    StartTls,
    /// TLS from the first byte (`smtps://`, port 465 in production; RFC 8314).
    Implicit,
}

/// A command the server received: its verb only (the arguments hold addresses), and whether it came over TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedCommand {
    /// The verb, upper-cased (`EHLO`, `STARTTLS`, `AUTH`, `MAIL`, ...).
    pub verb: String,
    /// Whether it came over TLS.
    pub tls: bool,
    /// Whether it was already read, in one piece with the command before it, when that one's reply was written: the
    /// client sent it without waiting (RFC 2920 pipelining).
    pub pipelined: bool,
}

/// Which command an [`Attempt`] answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptStage {
    /// A `RCPT TO` refused (by [`SmtpServer::reject_recipients`] or a scripted reply).
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

/// A step of the conversation whose reply can be scripted ([`SmtpServer::script`]) or delayed
/// ([`SmtpServer::delay_replies`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SmtpCommand {
    /// The greeting on connect (220). A scripted 4xx/5xx greeting is sent, then the connection is closed.
    Connect,
    /// `EHLO`/`HELO`.
    Ehlo,
    /// The final answer to `AUTH` (235).
    Auth,
    /// `MAIL FROM`.
    Mail,
    /// `RCPT TO`. A refusal is recorded as an [`Attempt`]; `{rcpt}` in its text becomes the address, as real
    /// servers echo it.
    Rcpt,
    /// `STARTTLS` on a server that offers it (220, then the handshake); a refusal (454) leaves the connection
    /// in plain text.
    StartTls,
    /// The `DATA` command itself (354).
    Data,
    /// The end of the message (`<CRLF>.<CRLF>`): 250 commits it, anything else refuses it.
    EndOfData,
}

/// A reply the server sends instead of its normal one: a code, a text (multi-line if it has newlines) and a
/// delay before it is sent. A 2xx/3xx reply lets the command take effect; 4xx/5xx refuses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub text: String,
    pub delay: Duration,
}

impl Reply {
    /// `code text`, sent at once.
    pub fn new(code: u16, text: impl Into<String>) -> Self {
        Self {
            code,
            text: text.into(),
            delay: Duration::ZERO,
        }
    }

    /// The same reply, sent `delay` after the command (a slow or stalled server).
    #[must_use]
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

impl<S: Into<String>> From<(u16, S)> for Reply {
    fn from((code, text): (u16, S)) -> Self {
        Self::new(code, text)
    }
}

#[derive(Default)]
struct Faults {
    /// The next replies per command, consumed one per command.
    scripted: HashMap<SmtpCommand, VecDeque<Reply>>,
    /// End-of-DATA replies for messages to one recipient only; checked before `scripted`.
    targeted: Vec<(String, VecDeque<Reply>)>,
    rcpt_reject: Option<Reply>,
    /// Added before every reply to the command.
    delays: HashMap<SmtpCommand, Duration>,
    hidden_extensions: Vec<String>,
    /// Each reply waits until this long after its command arrived, as from a server this far away.
    round_trip: Option<Duration>,
}

/// How many of something are open now, the most that ever were at once, and how many were ever opened.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    peak: AtomicUsize,
    total: AtomicUsize,
}

impl Gauge {
    fn enter(&self) -> GaugeGuard<'_> {
        self.total.fetch_add(1, Ordering::SeqCst);
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(self)
    }
}

/// Counts one open session or transaction until dropped.
struct GaugeGuard<'a>(&'a Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Shared {
    /// A sink keeps only arrival times (no message text, no attempts), for long bench runs.
    sink: bool,
    /// Open connections (from accept to close).
    sessions: Gauge,
    /// Open mail transactions (from an accepted `MAIL` to the end-of-DATA reply, `RSET` or the close).
    transactions: Gauge,
    faults: Mutex<Faults>,
    messages: Mutex<Vec<ReceivedMail>>,
    attempts: Mutex<Vec<Attempt>>,
    arrivals: Mutex<Vec<Instant>>,
    /// The `Message-ID` of every accepted message (empty if it had none), sink or not: duplicates are counted
    /// over thousands of messages without keeping their text.
    message_ids: Mutex<Vec<String>>,
    /// Every command's verb, and whether it came over TLS (none for a sink).
    commands: Mutex<Vec<ReceivedCommand>>,
    /// Set by [`SmtpServer::start_tls`].
    tls: Option<(SmtpTls, TlsAcceptor)>,
    /// TLS handshakes that completed.
    tls_handshakes: AtomicUsize,
    /// TLS handshakes that failed: most often a client that refused the certificate.
    tls_failures: AtomicUsize,
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
    /// Starts the server on a free port; it records every message and attempt.
    pub fn start() -> Self {
        Self::launch_new(Shared::default())
    }

    /// Starts a sink on a free port: it accepts every message and records only when each arrived
    /// ([`SmtpServer::arrivals`], [`SmtpServer::count`]), so it stays small and fast over a bench run.
    /// Scripted replies and outages work as with [`SmtpServer::start`].
    pub fn start_sink() -> Self {
        Self::launch_new(Shared {
            sink: true,
            ..Shared::default()
        })
    }

    /// Starts a server that offers TLS as `mode` says, with the certificate chain in `cert` and its key in `key`
    /// (PEM files, e.g. the server pair of `TestCertificates`); it records every message and attempt as
    /// [`SmtpServer::start`] does, and whether each came over TLS. Panics if the files do not hold a usable
    /// certificate and key.
    pub fn start_tls(mode: SmtpTls, cert: &Path, key: &Path) -> Self {
        Self::launch_new(Shared {
            tls: Some((mode, tls_acceptor(cert, key))),
            ..Shared::default()
        })
    }

    fn launch_new(shared: Shared) -> Self {
        let listener =
            StdTcpListener::bind(("127.0.0.1", 0)).expect("bind SMTP test server on 127.0.0.1:0");
        let addr = listener.local_addr().expect("SMTP listener address");
        let server = Self {
            addr,
            shared: Arc::new(shared),
            online: Mutex::new(None),
            runtime: BgRuntime::new("smtp-test-server"),
        };
        server.launch(listener);
        server
    }

    /// The lettre URL that reaches this server with the TLS it offers: `smtp://127.0.0.1:<port>` (plain),
    /// `smtp://127.0.0.1:<port>?tls=required` (STARTTLS) or `smtps://127.0.0.1:<port>` (implicit TLS).
    pub fn url(&self) -> String {
        match &self.shared.tls {
            None => format!("smtp://{}", self.addr),
            Some((SmtpTls::StartTls, _)) => format!("smtp://{}?tls=required", self.addr),
            Some((SmtpTls::Implicit, _)) => format!("smtps://{}", self.addr),
        }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The next `replies.len()` times `command` comes, these replies answer it (in order) instead of the
    /// normal one; e.g. `script(SmtpCommand::EndOfData, [Reply::new(451, "4.3.0 busy"), Reply::new(250,
    /// "2.0.0 OK").after(delay)])`.
    pub fn script<R: Into<Reply>>(
        &self,
        command: SmtpCommand,
        replies: impl IntoIterator<Item = R>,
    ) {
        lock(&self.shared.faults)
            .scripted
            .entry(command)
            .or_default()
            .extend(replies.into_iter().map(Into::into));
    }

    /// Every reply to `command` is sent `delay` late (on top of a scripted reply's own delay), until
    /// [`SmtpServer::clear_faults`]. `Connect` with a long delay is a server that accepts and never speaks.
    pub fn delay_replies(&self, command: SmtpCommand, delay: Duration) {
        lock(&self.shared.faults).delays.insert(command, delay);
    }

    /// Every reply is written `round_trip` after its command arrived (the greeting after the connection, the reply
    /// to the message after its last line), as by a server that far away, until [`SmtpServer::clear_faults`].
    /// Commands that arrive together (pipelined) are answered together, as over a real network; a client that
    /// waits for each reply pays one `round_trip` per command.
    pub fn set_round_trip(&self, round_trip: Duration) {
        lock(&self.shared.faults).round_trip = Some(round_trip);
    }

    /// EHLO no longer offers `extension` (e.g. `"SMTPUTF8"`, `"AUTH"`), until [`SmtpServer::clear_faults`].
    pub fn hide_extension(&self, extension: &str) {
        lock(&self.shared.faults)
            .hidden_extensions
            .push(extension.to_ascii_uppercase());
    }

    /// Like [`SmtpServer::fail_next_data`], for messages to `recipient` only: the next N of them get these
    /// replies, while mail to others goes through.
    pub fn fail_next_data_to<R: Into<Reply>>(
        &self,
        recipient: &str,
        replies: impl IntoIterator<Item = R>,
    ) {
        let replies = replies.into_iter().map(Into::into).collect();
        lock(&self.shared.faults)
            .targeted
            .push((recipient.to_owned(), replies));
    }

    /// The next `replies.len()` DATA completions get these replies (e.g. `(451, "4.3.0 try again")`)
    /// instead of 250. They are recorded as attempts, not as messages.
    pub fn fail_next_data<R: Into<Reply>>(&self, replies: impl IntoIterator<Item = R>) {
        self.script(SmtpCommand::EndOfData, replies);
    }

    /// Every `RCPT TO` gets this reply (e.g. `550, "5.1.1 no such user"`) until [`SmtpServer::clear_faults`].
    pub fn reject_recipients(&self, code: u16, text: impl Into<String>) {
        lock(&self.shared.faults).rcpt_reject = Some(Reply::new(code, text));
    }

    /// Hold the reply to every DATA completion for `delay` (a slow send). The message is committed
    /// (recorded) only when the reply is sent, so a client that dies during the delay still gets
    /// its message delivered, as with a real server (RFC 1047).
    pub fn delay_data_reply(&self, delay: Duration) {
        self.delay_replies(SmtpCommand::EndOfData, delay);
    }

    /// Removes every scripted reply, the RCPT rejection, the delays and the hidden extensions.
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

    /// The `Message-ID` of every accepted message, in order ("" for one without), for a sink too.
    pub fn message_ids(&self) -> Vec<String> {
        lock(&self.shared.message_ids).clone()
    }

    /// Delivered messages, in order (none for a sink).
    pub fn messages(&self) -> Vec<ReceivedMail> {
        lock(&self.shared.messages).clone()
    }

    /// Every DATA completion and rejected RCPT, in order (none for a sink).
    pub fn attempts(&self) -> Vec<Attempt> {
        lock(&self.shared.attempts).clone()
    }

    /// When each delivered message was committed, in order.
    pub fn arrivals(&self) -> Vec<Instant> {
        lock(&self.shared.arrivals).clone()
    }

    /// Every command received, in order, by verb and whether it came over TLS (none for a sink): what a client
    /// said in plain text, e.g. no `AUTH` or `MAIL` before its STARTTLS.
    pub fn commands(&self) -> Vec<ReceivedCommand> {
        lock(&self.shared.commands).clone()
    }

    /// How many TLS handshakes completed.
    pub fn tls_handshakes(&self) -> usize {
        self.shared.tls_handshakes.load(Ordering::SeqCst)
    }

    /// How many TLS handshakes failed (a client that refused the certificate, or that spoke no TLS).
    pub fn tls_failures(&self) -> usize {
        self.shared.tls_failures.load(Ordering::SeqCst)
    }

    /// How many messages were delivered.
    pub fn count(&self) -> usize {
        lock(&self.shared.arrivals).len()
    }

    /// The most connections that were open at once since the server started: a client's real connection cap.
    pub fn peak_sessions(&self) -> usize {
        self.shared.sessions.peak.load(Ordering::SeqCst)
    }

    /// The connections open now.
    pub fn sessions(&self) -> usize {
        self.shared.sessions.now.load(Ordering::SeqCst)
    }

    /// How many connections were accepted since the server started: a pool's reuse shows as fewer than emails.
    pub fn total_sessions(&self) -> usize {
        self.shared.sessions.total.load(Ordering::SeqCst)
    }

    /// The most mail transactions (`MAIL` accepted, end of DATA not yet answered) open at once since the server
    /// started: how many emails a client had in flight together.
    pub fn peak_transactions(&self) -> usize {
        self.shared.transactions.peak.load(Ordering::SeqCst)
    }

    /// Forgets every message, attempt and arrival (between bench rows).
    pub fn clear(&self) {
        lock(&self.shared.messages).clear();
        lock(&self.shared.attempts).clear();
        lock(&self.shared.arrivals).clear();
        lock(&self.shared.message_ids).clear();
        lock(&self.shared.commands).clear();
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

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("addr", &self.addr)
            .field("sink", &self.shared.sink)
            .field("tls", &self.shared.tls.as_ref().map(|(mode, _)| mode))
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

async fn accept_loop(listener: StdTcpListener, shared: Arc<Shared>, guard: mpsc::Sender<()>) {
    let listener = TcpListener::from_std(listener).expect("register SMTP listener with tokio");
    let mut sessions = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
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

/// The byte stream a session speaks over: the TCP connection, or TLS over it once upgraded.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Stream = Box<dyn Io>;

/// The server side of TLS for `cert` and `key`, on the ring provider (the one lettre uses, so no other is built).
fn tls_acceptor(cert: &Path, key: &Path) -> TlsAcceptor {
    let read = |path: &Path| {
        std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert))
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("certificates in {}: {e}", cert.display()));
    assert!(!chain.is_empty(), "no certificate in {}", cert.display());
    let key = PrivateKeyDer::from_pem_slice(&read(key))
        .unwrap_or_else(|e| panic!("private key in {}: {e}", key.display()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap_or_else(|e| panic!("the SMTP test server's certificate and key: {e}"));
    TlsAcceptor::from(Arc::new(config))
}

/// The TLS handshake on `stream`, counted as completed or failed.
async fn handshake(
    shared: &Shared,
    acceptor: &TlsAcceptor,
    stream: Stream,
) -> std::io::Result<Stream> {
    match acceptor.accept(stream).await {
        Ok(tls) => {
            shared.tls_handshakes.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(tls))
        }
        Err(e) => {
            shared.tls_failures.fetch_add(1, Ordering::SeqCst);
            Err(e)
        }
    }
}

/// Writes a reply; multi-line `text` becomes a multi-line reply (`code-` continuation lines).
async fn reply(stream: &mut Stream, code: u16, text: &str) -> std::io::Result<()> {
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

/// The reply `command` gets now: the next scripted one, else `normal`, after the command's delays.
async fn decide(shared: &Shared, command: SmtpCommand, normal: Reply) -> Reply {
    let (reply, delay) = {
        let mut faults = lock(&shared.faults);
        let scripted = faults
            .scripted
            .get_mut(&command)
            .and_then(VecDeque::pop_front);
        let delay = faults.delays.get(&command).copied().unwrap_or_default();
        (scripted.unwrap_or(normal), delay)
    };
    let wait = delay + reply.delay;
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    reply
}

/// Waits out [`SmtpServer::set_round_trip`] for a command that arrived at `arrived`.
async fn far_away(shared: &Shared, arrived: Instant) {
    let round_trip = lock(&shared.faults).round_trip;
    if let Some(round_trip) = round_trip {
        tokio::time::sleep_until((arrived + round_trip).into()).await;
    }
}

/// [`decide`], then send it; returns the code.
async fn answer(
    stream: &mut Stream,
    shared: &Shared,
    command: SmtpCommand,
    code: u16,
    text: &str,
) -> std::io::Result<u16> {
    let chosen = decide(shared, command, Reply::new(code, text)).await;
    reply(stream, chosen.code, &chosen.text).await?;
    Ok(chosen.code)
}

/// Reads one line without its line ending; `None` at EOF.
async fn read_line(reader: &mut BufReader<Stream>) -> std::io::Result<Option<String>> {
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

/// The words after `MAIL FROM:<path>`.
fn mail_parameters_of(arg: &str) -> Vec<String> {
    arg.split_once('>')
        .map(|(_, rest)| rest.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

fn is_hidden(shared: &Shared, extension: &str) -> bool {
    lock(&shared.faults)
        .hidden_extensions
        .iter()
        .any(|h| extension.starts_with(h.as_str()))
}

/// Whether `STARTTLS` is offered now: on a STARTTLS server, before the upgrade, unless hidden.
fn offers_starttls(shared: &Shared, tls: bool) -> bool {
    matches!(shared.tls, Some((SmtpTls::StartTls, _))) && !tls && !is_hidden(shared, "STARTTLS")
}

fn ehlo_text(shared: &Shared, arg: &str, tls: bool) -> String {
    let starttls = offers_starttls(shared, tls).then_some("STARTTLS");
    let mut text = format!("127.0.0.1 Hello {arg}");
    for extension in EXTENSIONS.iter().copied().chain(starttls) {
        if !is_hidden(shared, extension) {
            text.push('\n');
            text.push_str(extension);
        }
    }
    text
}

async fn session(stream: TcpStream, shared: &Shared) -> std::io::Result<()> {
    let _open = shared.sessions.enter();
    let mut stream: Stream = Box::new(stream);
    let mut tls = false;
    if let Some((SmtpTls::Implicit, acceptor)) = &shared.tls {
        stream = handshake(shared, acceptor, stream).await?;
        tls = true;
    }
    let mut conn = BufReader::new(stream);
    far_away(shared, Instant::now()).await;
    let greeting = answer(
        conn.get_mut(),
        shared,
        SmtpCommand::Connect,
        220,
        "127.0.0.1 ESMTP jetfn test server",
    )
    .await?;
    if greeting >= 400 {
        return conn.get_mut().shutdown().await;
    }
    loop {
        let Some(plain) = converse(conn, shared, tls).await? else {
            return Ok(());
        };
        let Some((_, acceptor)) = &shared.tls else {
            unreachable!("STARTTLS is accepted only on a TLS server")
        };
        conn = BufReader::new(handshake(shared, acceptor, plain).await?);
        tls = true;
    }
}

/// The commands of one session, from its start or from a STARTTLS upgrade (RFC 3207: all state is forgotten
/// and the client must send EHLO again). Returns the connection when STARTTLS was accepted, for the handshake;
/// `None` when the session ended.
async fn converse(
    mut conn: BufReader<Stream>,
    shared: &Shared,
    tls: bool,
) -> std::io::Result<Option<Stream>> {
    // Held while a transaction is open; dropped when it ends (or with the session).
    let mut transaction: Option<GaugeGuard<'_>> = None;
    let mut greeted = false;
    let mut mail_from: Option<String> = None;
    let mut mail_parameters: Vec<String> = Vec::new();
    let mut rcpt_to: Vec<String> = Vec::new();
    let mut arrived = Instant::now();
    loop {
        // Bytes still buffered here came in the same read as the command answered last.
        let pipelined = !conn.buffer().is_empty();
        let Some(line) = read_line(&mut conn).await? else {
            break;
        };
        if !pipelined {
            arrived = Instant::now();
        }
        far_away(shared, arrived).await;
        let (verb, arg) = match line.split_once(' ') {
            Some((verb, arg)) => (verb.to_ascii_uppercase(), arg.trim().to_owned()),
            None => (line.trim().to_ascii_uppercase(), String::new()),
        };
        if !shared.sink {
            lock(&shared.commands).push(ReceivedCommand {
                verb: verb.clone(),
                tls,
                pipelined,
            });
        }
        let arg = arg.as_str();
        match verb.as_str() {
            "EHLO" | "HELO" if arg.is_empty() => {
                reply(conn.get_mut(), 501, "5.5.4 Syntax: EHLO hostname").await?
            }
            "EHLO" | "HELO" => {
                let text = if verb == "EHLO" {
                    ehlo_text(shared, arg, tls)
                } else {
                    "127.0.0.1".to_owned()
                };
                let code = answer(conn.get_mut(), shared, SmtpCommand::Ehlo, 250, &text).await?;
                if code < 400 {
                    greeted = true;
                    mail_from = None;
                    rcpt_to.clear();
                    drop(transaction.take());
                }
            }
            "AUTH" if !greeted => reply(conn.get_mut(), 503, "5.5.1 Send EHLO first").await?,
            "AUTH" => {
                let mut words = arg.split_whitespace();
                let mechanism = words.next().unwrap_or_default().to_ascii_uppercase();
                let initial = words.next();
                let prompts: &[&str] = match (mechanism.as_str(), initial.is_some()) {
                    ("PLAIN", true) => &[],
                    ("PLAIN", false) => &[""],
                    // base64 "Username:" and "Password:".
                    ("LOGIN", false) => &["VXNlcm5hbWU6", "UGFzc3dvcmQ6"],
                    ("LOGIN", true) => &["UGFzc3dvcmQ6"],
                    _ => {
                        reply(
                            conn.get_mut(),
                            504,
                            "5.5.4 Unrecognized authentication type",
                        )
                        .await?;
                        continue;
                    }
                };
                let mut cancelled = false;
                for prompt in prompts {
                    reply(conn.get_mut(), 334, prompt).await?;
                    let Some(response) = read_line(&mut conn).await? else {
                        return Ok(None);
                    };
                    cancelled |= response.trim() == "*";
                }
                if cancelled {
                    reply(conn.get_mut(), 501, "5.7.0 Authentication cancelled").await?;
                } else {
                    let text = "2.7.0 Authentication successful";
                    answer(conn.get_mut(), shared, SmtpCommand::Auth, 235, text).await?;
                }
            }
            "MAIL" if !greeted => reply(conn.get_mut(), 503, "5.5.1 Send EHLO/HELO first").await?,
            "MAIL" if mail_from.is_some() => {
                reply(conn.get_mut(), 503, "5.5.1 Nested MAIL command").await?
            }
            "MAIL" => match parse_path(arg, "FROM:") {
                Some(path) => {
                    let code =
                        answer(conn.get_mut(), shared, SmtpCommand::Mail, 250, "2.1.0 OK").await?;
                    if code < 400 {
                        mail_from = Some(path);
                        drop(transaction.replace(shared.transactions.enter()));
                        mail_parameters = mail_parameters_of(arg);
                    }
                }
                None => reply(conn.get_mut(), 501, "5.5.4 Syntax: MAIL FROM:<address>").await?,
            },
            "RCPT" if mail_from.is_none() => {
                reply(conn.get_mut(), 503, "5.5.1 Need MAIL first").await?
            }
            "RCPT" => match parse_path(arg, "TO:") {
                Some(path) if !path.is_empty() => {
                    let reject = lock(&shared.faults).rcpt_reject.clone();
                    let normal = reject.unwrap_or_else(|| Reply::new(250, "2.1.5 OK"));
                    let chosen = decide(shared, SmtpCommand::Rcpt, normal).await;
                    let text = chosen.text.replace("{rcpt}", &path);
                    if chosen.code >= 400 {
                        if !shared.sink {
                            lock(&shared.attempts).push(Attempt {
                                stage: AttemptStage::Rcpt,
                                code: chosen.code,
                                text: text.clone(),
                                mail_from: mail_from.clone().unwrap_or_default(),
                                rcpt_to: vec![path],
                                at: Instant::now(),
                            });
                        }
                    } else {
                        rcpt_to.push(path);
                    }
                    reply(conn.get_mut(), chosen.code, &text).await?;
                }
                _ => reply(conn.get_mut(), 501, "5.5.4 Syntax: RCPT TO:<address>").await?,
            },
            "DATA" if mail_from.is_none() => {
                reply(conn.get_mut(), 503, "5.5.1 Need MAIL first").await?
            }
            "DATA" if rcpt_to.is_empty() => {
                reply(conn.get_mut(), 554, "5.5.1 No valid recipients").await?
            }
            "DATA" if !arg.is_empty() => reply(conn.get_mut(), 501, "5.5.4 Syntax: DATA").await?,
            "DATA" => {
                let text = "End data with <CR><LF>.<CR><LF>";
                if answer(conn.get_mut(), shared, SmtpCommand::Data, 354, text).await? != 354 {
                    continue;
                }
                let mut data = String::new();
                let mut message_id = String::new();
                let mut in_header = true;
                loop {
                    let Some(line) = read_line(&mut conn).await? else {
                        return Ok(None); // EOF inside DATA: abandoned transaction
                    };
                    if line == "." {
                        far_away(shared, Instant::now()).await;
                        break;
                    }
                    if in_header {
                        in_header = !line.is_empty();
                        if let Some((name, value)) = line.split_once(':')
                            && name.eq_ignore_ascii_case("message-id")
                        {
                            value.trim().clone_into(&mut message_id);
                        }
                    }
                    if !shared.sink {
                        data.push_str(line.strip_prefix('.').unwrap_or(&line));
                        data.push_str("\r\n");
                    }
                }
                let from = mail_from.take().unwrap_or_default();
                let rcpts = std::mem::take(&mut rcpt_to);
                let targeted = {
                    let mut faults = lock(&shared.faults);
                    faults
                        .targeted
                        .iter_mut()
                        .find(|(to, replies)| {
                            !replies.is_empty()
                                && rcpts.iter().any(|rcpt| rcpt.eq_ignore_ascii_case(to))
                        })
                        .and_then(|(_, replies)| replies.pop_front())
                };
                let normal = Reply::new(250, "2.0.0 OK: queued");
                let Reply { code, text, .. } = match targeted {
                    Some(targeted) => {
                        let delay = lock(&shared.faults)
                            .delays
                            .get(&SmtpCommand::EndOfData)
                            .copied()
                            .unwrap_or_default();
                        tokio::time::sleep(delay + targeted.delay).await;
                        targeted
                    }
                    None => decide(shared, SmtpCommand::EndOfData, normal).await,
                };
                let at = Instant::now();
                if code == 250 {
                    lock(&shared.arrivals).push(at);
                    lock(&shared.message_ids).push(message_id);
                }
                if !shared.sink {
                    if code == 250 {
                        lock(&shared.messages).push(ReceivedMail {
                            mail_from: from.clone(),
                            mail_parameters: mail_parameters.clone(),
                            rcpt_to: rcpts.clone(),
                            data,
                            received_at: at,
                            tls,
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
                }
                reply(conn.get_mut(), code, &text).await?;
                drop(transaction.take());
            }
            "RSET" => {
                mail_from = None;
                rcpt_to.clear();
                drop(transaction.take());
                reply(conn.get_mut(), 250, "2.0.0 OK").await?;
            }
            "NOOP" => reply(conn.get_mut(), 250, "2.0.0 OK").await?,
            "VRFY" => reply(conn.get_mut(), 252, "2.5.2 Cannot VRFY user").await?,
            "HELP" => {
                let text = "2.0.0 EHLO HELO AUTH MAIL RCPT DATA RSET NOOP QUIT VRFY";
                reply(conn.get_mut(), 214, text).await?
            }
            "QUIT" => {
                let out = conn.get_mut();
                reply(out, 221, "2.0.0 Bye").await?;
                out.shutdown().await?;
                return Ok(None);
            }
            "STARTTLS" if offers_starttls(shared, tls) && !arg.is_empty() => {
                reply(conn.get_mut(), 501, "5.5.4 Syntax: STARTTLS").await?
            }
            "STARTTLS" if offers_starttls(shared, tls) => {
                let text = "2.0.0 Ready to start TLS";
                if answer(conn.get_mut(), shared, SmtpCommand::StartTls, 220, text).await? == 220 {
                    // Without the reader: plain text the client sent after STARTTLS is dropped unread, as
                    // RFC 3207 asks (a man in the middle could have put commands there).
                    return Ok(Some(conn.into_inner()));
                }
            }
            "STARTTLS" if tls => reply(conn.get_mut(), 503, "5.5.1 TLS already active").await?,
            "STARTTLS" | "EXPN" | "TURN" | "ETRN" | "BDAT" => {
                reply(conn.get_mut(), 502, "5.5.1 Command not implemented").await?
            }
            _ => reply(conn.get_mut(), 500, "5.5.2 Command unrecognized").await?,
        }
    }
    Ok(None)
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
