//! Our own SMTP connections and their pool, so that every socket has `TCP_NODELAY`.
//!
//! lettre writes a message's body and its `\r\n.\r\n` terminator as two writes and reads the reply only after the
//! second. Without `TCP_NODELAY`, Nagle's algorithm holds the 5-byte terminator until the body is acknowledged,
//! and the server delays that acknowledgement (up to 40 ms on Linux) because it has nothing to answer before the
//! terminator: measured, 44 of the 51 ms from a function's exec to its first email (tests/bench/ANALYSIS.md). lettre
//! 0.11 has no option for it, and its pooled transport opens its sockets itself, so this module opens them (lettre's
//! `AsyncSmtpConnection::connect_with_transport` speaks SMTP over a stream it is handed) and keeps its own pool.
//!
//! The greeting, EHLO, STARTTLS and implicit TLS (lettre's `TlsParameters`, the same roots and versions, plus the
//! roots of `SMTP_TLS_CA_FILE`) and AUTH stay lettre's. The pool does what lettre's did: the most recently used
//! idle connection is taken first, a connection marked broken (any failed command: `QUIT` has been sent and the
//! socket closed) is never parked, idle connections are closed with `QUIT` after [`IDLE_TIMEOUT`], and at most
//! `max_idle` are kept. Unlike lettre's, a connection whose send was cancelled (the mailer's `SMTP_TIMEOUT_SECS`)
//! is dropped rather than parked: its server may still answer the abandoned command, and the next email on it
//! would read that reply as its own.
//!
//! **Round trips.** lettre waits for each command's reply before the next: an email cost five round trips to the
//! server (`NOOP` on taking the connection, `MAIL`, `RCPT`, `DATA`, the message), which for a relay 20 ms away is
//! 100 ms per email and per connection. Where the server offers PIPELINING (RFC 2920; Postfix, Exim, Exchange and
//! Gmail's relay offer it), [`Conn::transact`] sends `MAIL`, the `RCPT`s and `DATA` in one write and the message
//! after `DATA`'s 354: two round trips. Such a connection is taken from the pool without `NOOP`: one the server
//! closed while it was idle answers `MAIL` with nothing (or a 421), before any of the message has gone, so
//! [`Pool::send`] sends the email again on a new connection, once. A server without PIPELINING gets lettre's
//! transaction and the `NOOP`, as before. lettre keeps no EHLO keyword it does not know, so [`Server::connect`]
//! asks once more (`EHLO` again before AUTH, which RFC 5321 allows and which resets nothing AUTH has set): one
//! round trip per connection, not per email.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, DEFAULT_MECHANISMS};
#[allow(deprecated)]
// lettre's TLS upgrade lives on this type; the deprecation is about its visibility only.
use lettre::transport::smtp::client::AsyncNetworkStream;
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::commands::{Data, Ehlo, Mail, Rcpt};
use lettre::transport::smtp::extension::{ClientId, Extension, MailBodyParameter, MailParameter};
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

use crate::{ConfigError, SendError};

/// How long an unused connection stays open (lettre's default). Servers drop idle clients after a few minutes
/// (Postfix: 300 s) with a `421`; closing first keeps the next email from finding a dead connection.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where connections go and how they are secured, from `SMTP_URL` (lettre's URL form).
#[derive(Clone)]
pub(crate) struct Server {
    host: String,
    port: u16,
    security: Security,
    credentials: Option<Credentials>,
    hello: ClientId,
    /// Bounds each TCP connect, as lettre's transport timeout did.
    connect_timeout: Duration,
}

#[derive(Clone)]
enum Security {
    /// `smtp://`: plain text.
    None,
    /// `smtp://…?tls=opportunistic`: STARTTLS when the server offers it.
    Opportunistic(TlsParameters),
    /// `smtp://…?tls=required`: STARTTLS, or no email.
    Required(TlsParameters),
    /// `smtps://`: TLS from the first byte.
    Implicit(TlsParameters),
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let security = match self.security {
            Security::None => "none",
            Security::Opportunistic(_) => "opportunistic",
            Security::Required(_) => "starttls",
            Security::Implicit(_) => "implicit",
        };
        f.debug_struct("Server")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &security)
            .field("credentials", &self.credentials.is_some())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Reads `SMTP_URL` the way lettre's `from_url` does: `smtp://` (port 25, or 587 with `?tls=required` or
    /// `?tls=opportunistic`), `smtps://` (port 465), user and password percent-decoded, a path as the EHLO name.
    /// TLS trusts the public roots and `extra_roots` (`SMTP_TLS_CA_FILE`) alike: a relay may move between a
    /// public and a private certificate without a change here.
    ///
    /// # Errors
    /// [`ConfigError::SmtpUrl`]; its reason never contains the URL (it may hold the password).
    pub(crate) fn from_url(
        url: &str,
        connect_timeout: Duration,
        extra_roots: &[Certificate],
    ) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::SmtpUrl {
            reason: reason.to_owned(),
        };
        let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
        let host = match parsed.host() {
            Some(url::Host::Domain(name)) => name.to_owned(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            None => return Err(invalid("smtp host undefined")),
        };
        let tls = parsed
            .query_pairs()
            .find(|(k, _)| k == "tls")
            .map(|(_, v)| v.into_owned());
        let params = || {
            extra_roots
                .iter()
                .cloned()
                .fold(TlsParameters::builder(host.clone()), |builder, root| {
                    builder.add_root_certificate(root)
                })
                .build()
                .map_err(|e| invalid(&format!("TLS parameters for the host: {e}")))
        };
        use lettre::transport::smtp::{SMTP_PORT, SUBMISSION_PORT, SUBMISSIONS_PORT};
        let (default_port, security) = match (parsed.scheme(), tls.as_deref()) {
            ("smtp", None) => (SMTP_PORT, Security::None),
            ("smtp", Some("required")) => (SUBMISSION_PORT, Security::Required(params()?)),
            ("smtp", Some("opportunistic")) => {
                (SUBMISSION_PORT, Security::Opportunistic(params()?))
            }
            ("smtps", _) => (SUBMISSIONS_PORT, Security::Implicit(params()?)),
            (scheme, tls) => {
                return Err(invalid(&format!(
                    "unknown scheme '{scheme}' or tls parameter '{}': use smtp://, smtps:// or \
                     smtp://…?tls=required",
                    tls.unwrap_or_default()
                )));
            }
        };
        let path = parsed.path().trim_matches('/');
        let hello = if path.is_empty() {
            ClientId::default()
        } else {
            ClientId::Domain(path.to_owned())
        };
        let credentials = match parsed.password() {
            Some(password) => {
                let decode = |s: &str, what: &str| {
                    percent_encoding::percent_decode_str(s)
                        .decode_utf8()
                        .map(std::borrow::Cow::into_owned)
                        .map_err(|_| invalid(&format!("the {what} is not UTF-8 once decoded")))
                };
                Some(Credentials::new(
                    decode(parsed.username(), "user name")?,
                    decode(password, "password")?,
                ))
            }
            None => None,
        };
        Ok(Self {
            host,
            port: parsed.port().unwrap_or(default_port),
            security,
            credentials,
            hello,
            connect_timeout,
        })
    }

    /// Whether `SMTP_URL` asks for TLS in any form.
    pub(crate) fn uses_tls(&self) -> bool {
        !matches!(self.security, Security::None)
    }

    /// A new connection, greeted, secured and authenticated as `SMTP_URL` asks, knowing whether its server takes
    /// pipelined commands.
    async fn connect(&self) -> Result<Conn, SendError> {
        let tcp = self.tcp().await?;
        let smtp = |e: lettre::transport::smtp::Error| SendError::from_smtp(&e);
        let mut conn = if let Security::Implicit(params) = &self.security {
            #[allow(deprecated)]
            let mut stream = AsyncNetworkStream::use_existing_tokio1(Box::new(tcp));
            stream.upgrade_tls(params.clone()).await.map_err(smtp)?;
            AsyncSmtpConnection::connect_with_transport(Box::new(Encrypted(stream)), &self.hello)
                .await
        } else {
            AsyncSmtpConnection::connect_with_transport(Box::new(tcp), &self.hello).await
        }
        .map_err(smtp)?;
        match &self.security {
            Security::Opportunistic(params) if conn.can_starttls() => {
                conn.starttls(params.clone(), &self.hello)
                    .await
                    .map_err(smtp)?;
            }
            Security::Required(params) => conn
                .starttls(params.clone(), &self.hello)
                .await
                .map_err(smtp)?,
            _ => {}
        }
        // What EHLO offered, after STARTTLS (RFC 3207: what was offered in clear no longer counts).
        let offered = conn
            .command(Ehlo::new(self.hello.clone()))
            .await
            .map_err(smtp)?;
        let pipelining = offered
            .message()
            .skip(1)
            .filter_map(|line| line.split_whitespace().next())
            .any(|keyword| keyword.eq_ignore_ascii_case("PIPELINING"));
        if let Some(credentials) = &self.credentials {
            conn.auth(DEFAULT_MECHANISMS, credentials)
                .await
                .map_err(smtp)?;
        }
        Ok(Conn {
            smtp: conn,
            pipelining,
        })
    }

    /// The TCP connection, with `TCP_NODELAY`: every address the name resolves to is tried in turn, each within
    /// the connect timeout, as lettre does.
    async fn tcp(&self) -> Result<TcpStream, SendError> {
        let failed = |e: io::Error| SendError::Connection {
            detail: e.to_string(),
        };
        let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(failed)?;
        let mut last = None;
        for addr in addrs {
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    stream.set_nodelay(true).map_err(failed)?;
                    return Ok(stream);
                }
                Ok(Err(e)) => last = Some(e),
                Err(_elapsed) => {
                    last = Some(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connection timed out",
                    ));
                }
            }
        }
        Err(SendError::Connection {
            detail: last.map_or_else(
                || "could not resolve to any supported address".to_owned(),
                |e| e.to_string(),
            ),
        })
    }
}

/// A TLS stream lettre set up (implicit TLS), handed back to lettre as the stream its SMTP client speaks over.
#[allow(deprecated)]
#[derive(Debug)]
struct Encrypted(AsyncNetworkStream);

impl tokio::io::AsyncRead for Encrypted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let unfilled = buf.initialize_unfilled();
        match futures::io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, unfilled) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl tokio::io::AsyncWrite for Encrypted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures::io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures::io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}

impl AsyncTokioStream for Encrypted {
    fn peer_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.0.peer_addr()
    }
}

/// Connections to one server: the idle ones are shared, a checked-out one belongs to one send.
///
/// The pool bounds what it keeps (`max_idle`), not what is checked out: the mailer's semaphore bounds that, and
/// since a new connection is opened only when none is idle, idle and checked-out connections together never
/// exceed it either.
pub(crate) struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    server: Server,
    max_idle: usize,
    idle_timeout: Duration,
    /// Most recently parked last.
    idle: Mutex<Vec<Parked>>,
    /// Held while [`Pool::warm`] opens a connection: a send that finds nothing idle waits for it rather than open a
    /// second one beside it.
    warming: tokio::sync::Mutex<()>,
}

struct Parked {
    conn: Conn,
    since: Instant,
}

/// One SMTP connection, and whether its server takes pipelined commands.
struct Conn {
    smtp: AsyncSmtpConnection,
    pipelining: bool,
}

/// A transaction that failed, and whether the server can have taken any of it.
enum Failed {
    /// No reply to `MAIL` (the connection was closed or reset) or a 421 (the server is closing it): nothing of the
    /// message went, so it may go again on another connection.
    Unsent(lettre::transport::smtp::Error),
    /// Refused, or broken off after the envelope was accepted.
    Other(lettre::transport::smtp::Error),
}

impl Failed {
    fn into_send_error(self) -> SendError {
        match self {
            Self::Unsent(err) | Self::Other(err) => SendError::from_smtp(&err),
        }
    }
}

impl Conn {
    /// Sends one message: pipelined where the server offers it (the module doc), lettre's way otherwise. On a
    /// failure the connection is left broken (QUIT sent, or the socket to be dropped), never mid-transaction.
    async fn transact(&mut self, envelope: &Envelope, email: &[u8]) -> Result<(), Failed> {
        let Some(mail) = self.pipelined_mail(envelope, email) else {
            return self
                .smtp
                .send(envelope, email)
                .await
                .map(drop)
                .map_err(Failed::Other);
        };
        let mut group = mail.to_string();
        for to in envelope.to() {
            group.push_str(&Rcpt::new(to.clone(), Vec::new()).to_string());
        }
        group.push_str(&Data.to_string());
        // One write for the whole group; `command` reads the first reply, MAIL's.
        if let Err(err) = self.smtp.command(&group).await {
            if err.status().is_none_or(|code| u16::from(code) == 421) {
                self.smtp.abort().await;
                return Err(Failed::Unsent(err));
            }
            // The RCPTs and DATA still get their replies (503 after a refused MAIL): read them, so QUIT is
            // answered as QUIT.
            return Err(self.drain(envelope.to().len(), err).await);
        }
        let mut refused = None;
        for _ in envelope.to() {
            match self.smtp.read_response().await {
                Ok(_) => {}
                Err(err) if err.status().is_none() => {
                    self.smtp.abort().await;
                    return Err(Failed::Other(err));
                }
                Err(err) => {
                    refused.get_or_insert(err);
                }
            }
        }
        let data = self.smtp.read_response().await;
        match (refused, data) {
            (None, Ok(_)) => match self.smtp.message(email).await {
                Ok(_) => Ok(()),
                Err(err) => {
                    self.smtp.abort().await;
                    Err(Failed::Other(err))
                }
            },
            // A recipient was refused, yet DATA got its 354 (some recipients were accepted): the server now
            // reads the message. Nothing is sent; the connection is dropped, which ends the transaction unsent.
            (Some(err), Ok(_)) => Err(Failed::Other(err)),
            (Some(err), Err(_)) | (None, Err(err)) => {
                self.smtp.abort().await;
                Err(Failed::Other(err))
            }
        }
    }

    /// `MAIL` for a pipelined transaction, or `None` where lettre's must run: the server does not pipeline, or
    /// the message needs an extension it lacks (lettre's transaction refuses that with its own error).
    fn pipelined_mail(&self, envelope: &Envelope, email: &[u8]) -> Option<Mail> {
        if !self.pipelining {
            return None;
        }
        let info = self.smtp.server_info();
        let mut parameters = Vec::new();
        let mut addresses = envelope.from().into_iter().chain(envelope.to());
        if addresses.any(|address| !AsRef::<str>::as_ref(address).is_ascii()) {
            if !info.supports_feature(Extension::SmtpUtfEight) {
                return None;
            }
            parameters.push(MailParameter::SmtpUtfEight);
        }
        if !email.is_ascii() {
            if !info.supports_feature(Extension::EightBitMime) {
                return None;
            }
            parameters.push(MailParameter::Body(MailBodyParameter::EightBitMime));
        }
        Some(Mail::new(envelope.from().cloned(), parameters))
    }

    /// Reads the replies still owed after MAIL was refused, then QUITs: the transaction fails with `refused`.
    async fn drain(
        &mut self,
        recipients: usize,
        refused: lettre::transport::smtp::Error,
    ) -> Failed {
        for _ in 0..=recipients {
            if let Err(err) = self.smtp.read_response().await
                && err.status().is_none()
            {
                break;
            }
        }
        self.smtp.abort().await;
        Failed::Other(refused)
    }
}

impl Pool {
    /// A pool of at most `max_idle` idle connections to `server`, closed after `idle_timeout` unused. Spawns the
    /// task that closes them, so it needs a Tokio runtime; the task ends with the pool.
    pub(crate) fn new(server: Server, max_idle: usize, idle_timeout: Duration) -> Self {
        let shared = Arc::new(Shared {
            server,
            max_idle,
            idle_timeout,
            idle: Mutex::new(Vec::new()),
            warming: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(reap(Arc::downgrade(&shared)));
        Self { shared }
    }

    /// Sends one message on an idle connection or a new one; again on a new one, once, when an idle connection
    /// taken unchecked turns out closed before any of the message went.
    ///
    /// # Errors
    /// Opening a connection failed, or the server refused or broke off the transaction.
    pub(crate) async fn send(&self, envelope: &Envelope, email: &[u8]) -> Result<(), SendError> {
        let checkout = self.get().await?;
        let unchecked = checkout.unchecked;
        match checkout.transact(envelope, email).await {
            Err(Failed::Unsent(err)) if unchecked => {
                // The classified error, not lettre's: its text may quote the server's reply, addresses and all.
                let error = SendError::from_smtp(&err);
                tracing::debug!(%error, "an idle SMTP connection was closed; sending on a new one");
                let fresh = Checkout::new(self.shared.server.connect().await?, &self.shared);
                fresh
                    .transact(envelope, email)
                    .await
                    .map_err(Failed::into_send_error)
            }
            sent => sent.map_err(Failed::into_send_error),
        }
    }

    /// An idle connection (checked with `NOOP` unless its server pipelines: see the module doc), or a new one.
    ///
    /// # Errors
    /// Opening a new connection failed (connect, TLS, greeting, EHLO or AUTH).
    pub(crate) async fn get(&self) -> Result<Checkout<'_>, SendError> {
        let mut waited = false;
        loop {
            while let Some(mut conn) = self.shared.take_idle() {
                if conn.pipelining {
                    let mut checkout = Checkout::new(conn, &self.shared);
                    checkout.unchecked = true;
                    return Ok(checkout);
                }
                if conn.smtp.test_connected().await {
                    return Ok(Checkout::new(conn, &self.shared));
                }
                // Closed by the server, or it answered NOOP with an error: QUIT (if it still listens) and close.
                conn.smtp.abort().await;
            }
            if waited {
                break;
            }
            // A warm-up under way parks its connection before it lets go; none under way: no wait.
            drop(self.shared.warming.lock().await);
            waited = true;
        }
        let conn = self.shared.server.connect().await?;
        Ok(Checkout::new(conn, &self.shared))
    }

    /// Returns once no warm-up is under way (at once when none is): [`Pool::get`] then finds its connection parked.
    pub(crate) async fn warm_up_ended(&self) {
        drop(self.shared.warming.lock().await);
    }

    /// Whether nothing is idle: with no send under way either, the next send would open a connection first.
    pub(crate) fn is_empty(&self) -> bool {
        self.shared.lock().is_empty()
    }

    /// Opens one connection and parks it, so that the send this precedes finds it ready: the connect, TLS, EHLO
    /// and AUTH overlap with whatever comes first (the ledger's claim). Skipped if another warm-up is under way.
    ///
    /// # Errors
    /// Opening the connection failed; the send will try again and report it.
    pub(crate) async fn warm(&self) -> Result<(), SendError> {
        let Ok(_warming) = self.shared.warming.try_lock() else {
            return Ok(());
        };
        let conn = self.shared.server.connect().await?;
        self.shared.park(conn);
        Ok(())
    }

    /// How many idle connections are parked; for tests.
    #[cfg(test)]
    fn idle(&self) -> usize {
        self.shared.lock().len()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = std::mem::take(&mut *self.shared.lock());
        if !idle.is_empty()
            && let Ok(handle) = tokio::runtime::Handle::try_current()
        {
            handle.spawn(quit_all(idle));
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Parked>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection still within the idle timeout; older ones are closed on the way.
    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.lock();
        let fresh = idle
            .iter()
            .position(|p| p.since.elapsed() < self.idle_timeout);
        let stale: Vec<Parked> = match fresh {
            // Parked in order, so everything before the first fresh one is stale.
            Some(first) => idle.drain(..first).collect(),
            None => idle.drain(..).collect(),
        };
        let taken = idle.pop().map(|p| p.conn);
        drop(idle);
        if !stale.is_empty() {
            tokio::spawn(quit_all(stale));
        }
        taken
    }

    /// Parks a connection after a completed exchange, unless it is broken or the pool is full.
    fn park(&self, mut conn: Conn) {
        if conn.smtp.has_broken() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() < self.max_idle {
            idle.push(Parked {
                conn,
                since: Instant::now(),
            });
        } else {
            drop(idle);
            tokio::spawn(async move { conn.smtp.abort().await });
        }
    }
}

/// Closes idle connections past the timeout, checking every timeout (as lettre does); ends with the pool.
async fn reap(shared: Weak<Shared>) {
    loop {
        let Some(period) = shared.upgrade().map(|s| s.idle_timeout) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(pool) = shared.upgrade() else {
            return;
        };
        let stale: Vec<Parked> = {
            let mut idle = pool.lock();
            let fresh = idle
                .iter()
                .position(|p| p.since.elapsed() < pool.idle_timeout)
                .unwrap_or(idle.len());
            idle.drain(..fresh).collect()
        };
        drop(pool);
        quit_all(stale).await;
    }
}

async fn quit_all(connections: Vec<Parked>) {
    for mut parked in connections {
        parked.conn.smtp.abort().await;
    }
}

/// A connection lent to one send. [`Checkout::done`] hands it back; dropped without that (the send was
/// cancelled mid-command), it is closed instead, since its next reply may belong to the abandoned command.
pub(crate) struct Checkout<'a> {
    conn: Option<Conn>,
    shared: &'a Shared,
    /// Taken from the pool without `NOOP`: it may have been closed while idle.
    unchecked: bool,
}

impl<'a> Checkout<'a> {
    fn new(conn: Conn, shared: &'a Shared) -> Self {
        Self {
            conn: Some(conn),
            shared,
            unchecked: false,
        }
    }

    /// The connection.
    pub(crate) fn conn(&mut self) -> &mut AsyncSmtpConnection {
        &mut self
            .conn
            .as_mut()
            .expect("a checkout holds its connection until done")
            .smtp
    }

    /// [`Conn::transact`], then [`Checkout::done`]; a connection left in the server's DATA phase (see there) is
    /// dropped instead.
    async fn transact(mut self, envelope: &Envelope, email: &[u8]) -> Result<(), Failed> {
        let conn = self
            .conn
            .as_mut()
            .expect("a checkout holds its connection until done");
        let sent = conn.transact(envelope, email).await;
        if sent.is_err() && !conn.smtp.has_broken() {
            self.conn = None;
        }
        self.done();
        sent
    }

    /// The exchange finished (with a reply, or an error lettre has closed the connection for): park it if it
    /// can carry another email.
    pub(crate) fn done(mut self) {
        if let Some(conn) = self.conn.take() {
            self.shared.park(conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use testkit::{Reply, SmtpCommand, SmtpServer};

    fn server(smtp: &SmtpServer) -> Server {
        Server::from_url(&smtp.url(), Duration::from_secs(5), &[]).expect("url")
    }

    async fn send(pool: &Pool) -> Result<(), SendError> {
        let message = lettre::Message::builder()
            .from("a@example.com".parse().expect("from"))
            .to("b@example.com".parse().expect("to"))
            .subject("s")
            .body("hi".to_owned())
            .expect("message");
        pool.send(message.envelope(), &message.formatted()).await
    }

    #[test]
    fn reads_the_url_as_lettre_does() {
        let timeout = Duration::from_secs(1);
        let plain = Server::from_url("smtp://127.0.0.1:2525", timeout, &[]).expect("plain");
        assert_eq!((plain.host.as_str(), plain.port), ("127.0.0.1", 2525));
        assert!(matches!(plain.security, Security::None));
        assert!(plain.credentials.is_none());
        let starttls = Server::from_url(
            "smtp://u%40x:p%2Fw@mail.example.com?tls=required",
            timeout,
            &[],
        )
        .expect("starttls");
        assert_eq!(starttls.port, 587);
        assert!(matches!(starttls.security, Security::Required(_)));
        assert_eq!(
            starttls.credentials,
            Some(Credentials::new("u@x".to_owned(), "p/w".to_owned()))
        );
        let opportunistic =
            Server::from_url("smtp://mail.example.com?tls=opportunistic", timeout, &[])
                .expect("opportunistic");
        assert!(matches!(opportunistic.security, Security::Opportunistic(_)));
        let implicit = Server::from_url("smtps://u:p@mail.example.com/jetfn.example", timeout, &[])
            .expect("implicit");
        assert_eq!(implicit.port, 465);
        assert!(matches!(implicit.security, Security::Implicit(_)));
        assert_eq!(implicit.hello, ClientId::Domain("jetfn.example".to_owned()));
        let v6 = Server::from_url("smtp://[::1]:2525", timeout, &[]).expect("v6");
        assert_eq!(v6.host, "::1");
        for bad in [
            "ftp://u:hunter2@host",
            "smtp://h?tls=sometimes",
            "smtp:///x",
        ] {
            let err = Server::from_url(bad, timeout, &[]).expect_err(bad);
            assert!(matches!(err, ConfigError::SmtpUrl { .. }), "{bad}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{err}");
        }
    }

    #[tokio::test]
    async fn sockets_have_nodelay() {
        let smtp = SmtpServer::start();
        let tcp = server(&smtp).tcp().await.expect("connect");
        assert!(tcp.nodelay().expect("nodelay"), "TCP_NODELAY is set");
    }

    /// The verbs `smtp` received, each with whether it came pipelined.
    fn verbs(smtp: &SmtpServer) -> Vec<(String, bool)> {
        smtp.commands()
            .into_iter()
            .map(|command| (command.verb, command.pipelined))
            .collect()
    }

    fn transaction(pipelined: bool) -> Vec<(String, bool)> {
        [("MAIL", false), ("RCPT", pipelined), ("DATA", pipelined)]
            .map(|(verb, pipelined)| (verb.to_owned(), pipelined))
            .to_vec()
    }

    #[tokio::test]
    async fn a_server_that_pipelines_gets_each_envelope_in_one_write_and_no_noop() {
        let smtp = SmtpServer::start();
        let pool = Pool::new(server(&smtp), 2, IDLE_TIMEOUT);
        for _ in 0..3 {
            send(&pool).await.expect("sent");
        }
        assert_eq!(smtp.count(), 3);
        assert_eq!(smtp.total_sessions(), 1, "one connection carried all three");
        assert_eq!(pool.idle(), 1);
        let verbs = verbs(&smtp);
        let setup = ["EHLO", "EHLO"].map(|verb| (verb.to_owned(), false));
        assert_eq!(verbs[..2], setup, "{verbs:?}");
        let three: Vec<_> = (0..3).flat_map(|_| transaction(true)).collect();
        assert_eq!(verbs[2..], three, "{verbs:?}");
    }

    #[tokio::test]
    async fn a_server_without_pipelining_gets_one_command_at_a_time_and_a_noop_on_reuse() {
        let smtp = SmtpServer::start();
        smtp.hide_extension("PIPELINING");
        let pool = Pool::new(server(&smtp), 2, IDLE_TIMEOUT);
        for _ in 0..2 {
            send(&pool).await.expect("sent");
        }
        assert_eq!(smtp.count(), 2);
        assert_eq!(smtp.total_sessions(), 1);
        let verbs = verbs(&smtp);
        let mut expected = transaction(false);
        expected.push(("NOOP".to_owned(), false));
        expected.extend(transaction(false));
        assert_eq!(verbs[2..], expected, "{verbs:?}");
    }

    #[tokio::test]
    async fn a_connection_the_server_closed_while_idle_is_replaced_and_the_email_sent_once() {
        for pipelining in [true, false] {
            let smtp = SmtpServer::start();
            if !pipelining {
                smtp.hide_extension("PIPELINING");
            }
            let pool = Pool::new(server(&smtp), 2, IDLE_TIMEOUT);
            send(&pool).await.expect("first");
            assert_eq!(pool.idle(), 1);
            // The server closes every open connection. Pipelining, the parked one is taken unchecked and gets
            // no reply to MAIL; without, it fails its NOOP. Either way the email goes on a new connection.
            smtp.go_down();
            smtp.come_up();
            send(&pool).await.expect("second, on a new connection");
            assert_eq!(smtp.count(), 2, "pipelining {pipelining}");
            assert_eq!(smtp.total_sessions(), 2, "pipelining {pipelining}");
            assert_eq!(pool.idle(), 1, "pipelining {pipelining}");
        }
    }

    #[tokio::test]
    async fn a_421_to_mail_on_an_idle_connection_sends_on_a_new_one_but_on_a_new_one_is_the_answer()
    {
        let smtp = SmtpServer::start();
        let pool = Pool::new(server(&smtp), 2, IDLE_TIMEOUT);
        send(&pool).await.expect("first");
        smtp.script(SmtpCommand::Mail, [(421, "4.4.2 idle too long, closing")]);
        send(&pool).await.expect("sent again on a new connection");
        assert_eq!(smtp.count(), 2);
        assert_eq!(smtp.total_sessions(), 2);
        // On a connection just opened, a 421 is the server's answer: no second try.
        let fresh = Pool::new(server(&smtp), 2, IDLE_TIMEOUT);
        smtp.script(SmtpCommand::Mail, [(421, "4.3.2 not now")]);
        let err = send(&fresh).await.expect_err("421");
        assert_eq!(err.code(), Some(421));
        assert_eq!(smtp.count(), 2);
        assert_eq!(fresh.idle(), 0);
    }

    #[tokio::test]
    async fn a_refusal_inside_the_pipelined_envelope_fails_the_send_with_its_code_and_sends_nothing()
     {
        let cases: [(SmtpCommand, u16); 3] = [
            (SmtpCommand::Mail, 451),
            (SmtpCommand::Rcpt, 550),
            (SmtpCommand::Data, 554),
        ];
        for (command, code) in cases {
            let smtp = SmtpServer::start();
            let pool = Pool::new(server(&smtp), 2, IDLE_TIMEOUT);
            smtp.script(command, [(code, "5.0.0 no")]);
            let err = send(&pool).await.expect_err("refused");
            assert_eq!(err.code(), Some(code), "{command:?}");
            assert_eq!(smtp.count(), 0, "{command:?}");
            assert_eq!(
                pool.idle(),
                0,
                "{command:?}: QUIT and closed, as lettre does"
            );
            send(&pool)
                .await
                .expect("the next email, on a new connection");
            assert_eq!(smtp.count(), 1, "{command:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_recipient_beside_an_accepted_one_sends_nothing_although_data_was_accepted() {
        let smtp = SmtpServer::start();
        let pool = Pool::new(server(&smtp), 2, IDLE_TIMEOUT);
        smtp.script(SmtpCommand::Rcpt, [(550, "5.1.1 no such user")]);
        let message = lettre::Message::builder()
            .from("a@example.com".parse().expect("from"))
            .to("gone@example.com".parse().expect("to"))
            .to("b@example.com".parse().expect("to"))
            .subject("s")
            .body("hi".to_owned())
            .expect("message");
        let err = pool
            .send(message.envelope(), &message.formatted())
            .await
            .expect_err("one recipient refused");
        assert_eq!(err.code(), Some(550));
        assert_eq!(
            pool.idle(),
            0,
            "the server is reading a message: the connection is dropped"
        );
        send(&pool).await.expect("the next email");
        assert_eq!(smtp.count(), 1, "only the next email arrived");
    }

    #[tokio::test]
    async fn a_rejected_transaction_breaks_its_connection_as_lettre_does() {
        let smtp = SmtpServer::start();
        smtp.fail_next_data([(451, "4.3.0 try again later")]);
        let pool = Pool::new(server(&smtp), 2, IDLE_TIMEOUT);
        let err = send(&pool).await.expect_err("451");
        assert_eq!(err.code(), Some(451));
        assert_eq!(pool.idle(), 0, "lettre QUIT and closed it: not parked");
        send(&pool).await.expect("a new connection");
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn a_cancelled_send_does_not_park_its_connection() {
        let smtp = SmtpServer::start();
        smtp.script(
            SmtpCommand::EndOfData,
            [Reply::new(250, "2.0.0 queued").after(Duration::from_secs(30))],
        );
        let pool = Pool::new(server(&smtp), 2, IDLE_TIMEOUT);
        let cancelled = tokio::time::timeout(Duration::from_millis(300), send(&pool)).await;
        assert!(cancelled.is_err(), "the send stalls on the end of DATA");
        assert_eq!(pool.idle(), 0, "its connection is closed, not parked");
        send(&pool)
            .await
            .expect("a fresh connection gets its own reply");
    }

    #[tokio::test]
    async fn a_send_takes_the_connection_a_warm_up_is_opening() {
        let smtp = SmtpServer::start();
        smtp.delay_replies(SmtpCommand::Connect, Duration::from_millis(300));
        let pool = Arc::new(Pool::new(server(&smtp), 2, IDLE_TIMEOUT));
        let warming = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.warm().await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.is_empty(), "still greeting");
        send(&pool).await.expect("sent");
        warming.await.expect("task").expect("warmed");
        assert_eq!(smtp.count(), 1);
        assert_eq!(
            smtp.total_sessions(),
            1,
            "the send waited for the warm connection instead of opening its own"
        );
        assert_eq!(pool.idle(), 1);
    }

    #[tokio::test]
    async fn at_most_max_idle_are_kept() {
        let smtp = SmtpServer::start();
        smtp.delay_data_reply(Duration::from_millis(200));
        let pool = Arc::new(Pool::new(server(&smtp), 2, IDLE_TIMEOUT));
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let pool = Arc::clone(&pool);
            sends.spawn(async move { send(&pool).await });
        }
        while let Some(sent) = sends.join_next().await {
            sent.expect("task").expect("sent");
        }
        assert_eq!(
            smtp.peak_sessions(),
            4,
            "four sends at once, four connections"
        );
        assert_eq!(pool.idle(), 2, "two kept, two closed");
    }

    #[tokio::test]
    async fn idle_connections_are_closed_after_the_timeout() {
        let smtp = SmtpServer::start();
        let pool = Pool::new(server(&smtp), 2, Duration::from_millis(200));
        send(&pool).await.expect("sent");
        assert_eq!(pool.idle(), 1);
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(pool.idle(), 0, "the reaper closed it");
        let deadline = Instant::now() + Duration::from_secs(5);
        while smtp.sessions() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(smtp.sessions(), 0, "with QUIT, so the server closed it too");
    }

    #[tokio::test]
    async fn a_stale_connection_is_not_taken() {
        let smtp = SmtpServer::start();
        // The reaper checks every 60 s: only the check on taking can see this one is stale.
        let pool = Pool::new(server(&smtp), 2, Duration::from_secs(60));
        send(&pool).await.expect("sent");
        if let Some(parked) = pool.shared.lock().first_mut() {
            parked.since = Instant::now()
                .checked_sub(Duration::from_secs(61))
                .expect("the machine is up for a minute");
        }
        send(&pool).await.expect("sent");
        assert_eq!(smtp.count(), 2);
        assert_eq!(
            smtp.total_sessions(),
            2,
            "the second send opened a new connection"
        );
    }
}
