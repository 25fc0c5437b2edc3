//! Delivery over SMTP, or into `.eml` files when no SMTP server is configured.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use events::pii::Masked;
use lettre::message::Mailbox;
use lettre::{AsyncFileTransport, AsyncTransport, Message, Tokio1Executor};
use tracing::Instrument;
use tracing::field::Empty;

use crate::{ConfigError, MailerConfig, SendError};

/// Where an email went.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// The SMTP server accepted it (2xx after DATA); from here on bounces arrive by email, not as errors.
    Smtp,
    /// It was written to this `.eml` file (no `SMTP_URL`).
    File(PathBuf),
}

/// Sends email; built once per process and cloned into every handler (a clone shares the SMTP pool).
#[derive(Clone)]
pub struct Mailer {
    inner: Arc<Inner>,
}

struct Inner {
    transport: Transport,
    from: Mailbox,
}

enum Transport {
    Smtp(Box<Smtp>),
    File {
        transport: AsyncFileTransport<Tokio1Executor>,
        dir: PathBuf,
    },
    /// Tests only; see [`Mailer::stub`].
    #[cfg(any(test, feature = "testing"))]
    Stub(crate::stub::Stub),
}

/// SMTP delivery: our pool of lettre connections (every socket with `TCP_NODELAY`; see `pool.rs` for why it is
/// ours), a cap on concurrent sends, and a limit on each send.
///
/// A pool bounds only the idle connections it keeps: under load it opens one connection per concurrent send, so
/// `sends` (`SMTP_POOL_MAX` permits) caps the transactions, and with them the connections, one process has open.
/// A server's per-client limit (Postfix: 50) would otherwise answer 421 and open the breaker.
///
/// lettre applies its timeout only to the TCP connect: a server that stalls later (TLS handshake, any command)
/// would hold the send forever, so the whole send runs under `SMTP_TIMEOUT_SECS`. A send cancelled by it drops its
/// connection instead of parking it: the server may still answer the abandoned command, and the next email on that
/// connection would read the reply as its own.
struct Smtp {
    pool: crate::pool::Pool,
    timeout: Duration,
    sends: tokio::sync::Semaphore,
    /// `SMTP_POOL_MAX`: the permits of `sends`.
    max: usize,
}

impl Smtp {
    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.sends
            .acquire()
            .await
            .expect("the send semaphore is never closed")
    }

    async fn probe(&self) -> Result<(), SendError> {
        let _permit = self.permit().await;
        let probe = async {
            let mut checkout = self.pool.get().await?;
            if checkout.conn().test_connected().await {
                checkout.done();
                Ok(())
            } else {
                Err(SendError::Connection {
                    detail: "the server did not answer NOOP".to_owned(),
                })
            }
        };
        tokio::time::timeout(self.timeout, probe)
            .await
            .unwrap_or(Err(SendError::Timeout))
    }

    /// Opens a connection ahead of a send when none is open, within a send permit and `SMTP_TIMEOUT_SECS`.
    async fn warm(&self) {
        let Ok(_permit) = self.sends.try_acquire() else {
            return;
        };
        match tokio::time::timeout(self.timeout, self.pool.warm()).await {
            Ok(Ok(())) => {}
            // The send this precedes opens its own connection and reports what goes wrong.
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "opening an SMTP connection ahead failed")
            }
            Err(_elapsed) => tracing::debug!("opening an SMTP connection ahead timed out"),
        }
    }

    /// No connection idle and no send under way: the next send would connect first.
    fn is_cold(&self) -> bool {
        self.sends.available_permits() == self.max && self.pool.is_empty()
    }

    async fn send(&self, message: Message) -> Result<Delivery, SendError> {
        // Waiting for a permit is not part of SMTP_TIMEOUT_SECS: only the server's own slowness is.
        let _permit = self.permit().await;
        // Nor is waiting for a warm-up under way (it has its own SMTP_TIMEOUT_SECS, and its connection is the one
        // this send takes): counted in, a warm-up that ended near the limit left this send milliseconds for its own
        // connect and transaction, and a limit that falls after the end of DATA went out but before the server's
        // 250 came back sends the email again on the retry (seen in CI: two emails for one event).
        self.pool.warm_up_ended().await;
        let raw = message.formatted();
        let send = async {
            self.pool.send(message.envelope(), &raw).await?;
            Ok(Delivery::Smtp)
        };
        tokio::time::timeout(self.timeout, send)
            .await
            .unwrap_or(Err(SendError::Timeout))
    }
}

fn emails_sent() -> &'static opentelemetry::metrics::Counter<u64> {
    static COUNTER: std::sync::OnceLock<opentelemetry::metrics::Counter<u64>> =
        std::sync::OnceLock::new();
    COUNTER.get_or_init(|| {
        opentelemetry::global::meter("jetfn")
            .u64_counter("jetfn.emails.sent")
            .with_description("emails accepted by the SMTP server or written to MAIL_DIR")
            .build()
    })
}

impl Transport {
    fn kind(&self) -> &'static str {
        match self {
            Self::Smtp(_) => "smtp",
            Self::File { .. } => "file",
            #[cfg(any(test, feature = "testing"))]
            Self::Stub(_) => "stub",
        }
    }
}

impl fmt::Debug for Mailer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mailer")
            .field("transport", &self.inner.transport.kind())
            .finish_non_exhaustive()
    }
}

impl Mailer {
    /// Builds the transport `config` describes. Nothing is sent and no connection is opened yet.
    ///
    /// # Errors
    /// An unusable `SMTP_URL` or `SMTP_TLS_CA_FILE` (checked even without `SMTP_URL`: a bad setting shows where
    /// it is made, not where it is first used), a `MAIL_DIR` that cannot be created, or (with `SMTP_URL`) no
    /// Tokio runtime: the SMTP pool starts a background task.
    pub fn new(config: MailerConfig) -> Result<Self, ConfigError> {
        config.check()?;
        let extra_roots = config.extra_roots()?;
        let transport = match &config.smtp_url {
            Some(url) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(ConfigError::NoRuntime);
                }
                if let Some(why) = plaintext_warning(url.expose()) {
                    tracing::warn!(
                        smtp.tls = false,
                        "SMTP_URL {why}; use smtps:// or ?tls=required in production"
                    );
                }
                let timeout = Duration::from_secs(config.smtp_timeout_secs);
                let server = crate::pool::Server::from_url(url.expose(), timeout, &extra_roots)?;
                if !extra_roots.is_empty() && !server.uses_tls() {
                    tracing::warn!(
                        smtp.tls = false,
                        "SMTP_TLS_CA_FILE is set but SMTP_URL uses no TLS, so it is not used"
                    );
                }
                let max = usize::try_from(config.smtp_pool_max).unwrap_or(usize::MAX);
                Transport::Smtp(Box::new(Smtp {
                    pool: crate::pool::Pool::new(server, max, crate::pool::IDLE_TIMEOUT),
                    timeout,
                    sends: tokio::sync::Semaphore::new(max),
                    max,
                }))
            }
            None => {
                let dir = config.mail_dir;
                std::fs::create_dir_all(&dir).map_err(|source| ConfigError::MailDir {
                    path: dir.clone(),
                    source,
                })?;
                tracing::info!(mail_dir = %dir.display(), "no SMTP_URL: emails are written as .eml files");
                Transport::File {
                    transport: AsyncFileTransport::new(&dir),
                    dir,
                }
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                transport,
                from: config.mail_from,
            }),
        })
    }

    /// A mailer for in-process tests: it sends nothing, records what it accepts and answers as the returned
    /// [`Stub`](crate::Stub) is scripted to (accepting by default). `From` is `MAIL_FROM`'s default.
    #[cfg(any(test, feature = "testing"))]
    pub fn stub() -> (Self, crate::Stub) {
        let stub = crate::Stub::default();
        let mailer = Self {
            inner: Arc::new(Inner {
                transport: Transport::Stub(stub.clone()),
                from: MailerConfig::default().mail_from,
            }),
        };
        (mailer, stub)
    }

    /// [`MailerConfig::from_env`] then [`Mailer::new`].
    ///
    /// # Errors
    /// As those two.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::new(MailerConfig::from_env()?)
    }

    /// The `From` of every email (`MAIL_FROM`), for [`compose`](crate::compose).
    pub fn from(&self) -> &Mailbox {
        &self.inner.from
    }

    /// Delivers one message.
    ///
    /// The `smtp send` span carries the transport, the recipient count and masked recipients, and on failure the
    /// error kind and SMTP reply code; never a full address, the subject or the body.
    ///
    /// The future is boxed here, not in the caller: a crate that awaits another crate's future compiles its state
    /// machine itself, and every email function awaits this one (the pool, lettre's SMTP client, TLS).
    ///
    /// # Errors
    /// A [`SendError`]; ask it [`is_transient`](SendError::is_transient) to decide between retry and dead-letter.
    #[inline(never)]
    pub fn send(
        &self,
        message: Message,
    ) -> Pin<Box<dyn Future<Output = Result<Delivery, SendError>> + Send + '_>> {
        Box::pin(self.send_inner(message))
    }

    /// Starts opening an SMTP connection in the background if none is open, so that a send shortly after finds it
    /// ready: [`send_once`](crate::send_once) calls it before the ledger's claim, which the connect (and TLS and
    /// AUTH) then overlaps. A no-op for the file transport and while connections are open or in use.
    pub(crate) fn warm(&self) {
        let Transport::Smtp(smtp) = &self.inner.transport else {
            return;
        };
        if !smtp.is_cold() {
            return;
        }
        let mailer = self.clone();
        tokio::spawn(async move {
            if let Transport::Smtp(smtp) = &mailer.inner.transport {
                smtp.warm().await;
            }
        });
    }

    /// Checks that the SMTP server answers (connect, EHLO, NOOP, QUIT) within `SMTP_TIMEOUT_SECS`; the file
    /// transport always answers. The runtime's circuit breaker calls it while an outage lasts.
    ///
    /// # Errors
    /// The server cannot be reached or does not answer.
    #[inline(never)]
    pub fn probe(&self) -> Pin<Box<dyn Future<Output = Result<(), SendError>> + Send + '_>> {
        // Boxed, as `send` is.
        Box::pin(async move {
            match &self.inner.transport {
                Transport::Smtp(smtp) => smtp.probe().await,
                Transport::File { .. } => Ok(()),
                #[cfg(any(test, feature = "testing"))]
                Transport::Stub(stub) => stub.probe(),
            }
        })
    }

    async fn send_inner(&self, message: Message) -> Result<Delivery, SendError> {
        let recipients = message.envelope().to();
        let masked = recipients
            .iter()
            .map(|a| Masked(a.as_ref()).to_string())
            .collect::<Vec<_>>()
            .join(",");
        let span = tracing::info_span!(
            "smtp send",
            transport = self.inner.transport.kind(),
            recipients = recipients.len(),
            to = %masked,
            error.kind = Empty,
            smtp.code = Empty,
        );
        let result = async {
            match &self.inner.transport {
                Transport::Smtp(smtp) => smtp.send(message).await,
                Transport::File { transport, dir } => transport
                    .send(message)
                    .await
                    .map(|id| Delivery::File(dir.join(format!("{id}.eml"))))
                    .map_err(|e| SendError::from_file(&e)),
                #[cfg(any(test, feature = "testing"))]
                Transport::Stub(stub) => stub.send(message).map(|()| Delivery::Smtp),
            }
        }
        .instrument(span.clone())
        .await;
        let _entered = span.enter();
        match &result {
            Ok(_) => {
                emails_sent().add(
                    1,
                    &[opentelemetry::KeyValue::new(
                        "jetfn.mail.transport",
                        self.inner.transport.kind(),
                    )],
                );
                tracing::debug!("email accepted");
            }
            Err(e) => {
                span.record("error.kind", e.kind());
                if let Some(code) = e.code() {
                    span.record("smtp.code", code);
                }
                tracing::debug!(error = %e, transient = e.is_transient(), "email not sent");
            }
        }
        result
    }
}

/// Why an SMTP URL sends in clear text, unless the server is on this machine (a local test server).
fn plaintext_warning(url: &str) -> Option<&'static str> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    let tls = rest
        .split_once('?')
        .and_then(|(_, q)| q.split('&').find_map(|kv| kv.strip_prefix("tls=")));
    match (scheme, tls) {
        ("smtp", None) if !local => Some("has no TLS"),
        ("smtp", Some("opportunistic")) if !local => {
            Some("uses opportunistic TLS, open to downgrade")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Rendered, compose};
    use events::Locale;
    use std::path::Path;
    use testkit::{Reply, SmtpCommand, SmtpServer, SmtpTls, TestCertificates};

    const WAIT: Duration = Duration::from_secs(5);

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mailer-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn message(to: &str) -> Message {
        let rendered = Rendered {
            subject: "Welcome to jetfn, Ada".to_owned(),
            html: "<p>Hi Ada</p>".to_owned(),
            text: "Hi Ada".to_owned(),
        };
        let from: Mailbox = "jetfn <no-reply@jetfn.local>".parse().expect("from");
        compose(
            &from,
            &to.parse().expect("to"),
            None,
            &rendered,
            Locale::En,
            "k",
        )
        .expect("compose")
    }

    fn smtp_config(url: String, timeout_secs: u64) -> MailerConfig {
        MailerConfig {
            smtp_url: Some(crate::Secret::new(url)),
            smtp_timeout_secs: timeout_secs,
            smtp_pool_max: 1,
            ..MailerConfig::default()
        }
    }

    #[tokio::test]
    async fn file_transport_writes_an_eml_with_the_subject() {
        let dir = temp_dir("file");
        let mailer = Mailer::new(MailerConfig {
            mail_dir: dir.clone(),
            ..MailerConfig::default()
        })
        .expect("mailer");
        assert!(dir.is_dir(), "MAIL_DIR is created");
        let delivery = mailer.send(message("ada@example.com")).await.expect("sent");
        let Delivery::File(path) = delivery else {
            panic!("expected a file delivery, got {delivery:?}")
        };
        assert_eq!(path.parent(), Some(dir.as_path()));
        assert_eq!(path.extension().and_then(|e| e.to_str()), Some("eml"));
        let eml = std::fs::read_to_string(&path).expect("eml readable");
        assert!(eml.contains("Subject: Welcome to jetfn, Ada"), "{eml}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[tokio::test]
    async fn file_transport_io_error_is_transient() {
        let dir = temp_dir("file-gone");
        let mailer = Mailer::new(MailerConfig {
            mail_dir: dir.clone(),
            ..MailerConfig::default()
        })
        .expect("mailer");
        std::fs::remove_dir_all(&dir).expect("remove");
        let err = mailer
            .send(message("ada@example.com"))
            .await
            .expect_err("dir is gone");
        assert!(matches!(err, SendError::File { .. }), "{err:?}");
        assert!(err.is_transient());
    }

    #[test]
    fn mail_dir_that_cannot_be_created_is_a_config_error() {
        let file = temp_dir("not-a-dir");
        std::fs::write(&file, b"x").expect("write");
        let err = Mailer::new(MailerConfig {
            mail_dir: file.join("sub"),
            ..MailerConfig::default()
        })
        .expect_err("parent is a file");
        assert!(matches!(err, ConfigError::MailDir { .. }), "{err}");
        std::fs::remove_file(&file).expect("cleanup");
    }

    #[test]
    fn smtp_needs_a_runtime() {
        let err = Mailer::new(smtp_config("smtp://127.0.0.1:2525".to_owned(), 5))
            .expect_err("no runtime");
        assert!(matches!(err, ConfigError::NoRuntime), "{err}");
    }

    #[tokio::test]
    async fn bad_smtp_url_does_not_echo_the_password() {
        let err =
            Mailer::new(smtp_config("ftp://u:hunter2@host".to_owned(), 5)).expect_err("bad scheme");
        assert!(matches!(err, ConfigError::SmtpUrl { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn warns_about_plaintext_only_off_this_machine() {
        assert!(plaintext_warning("smtp://mail.example.com:25").is_some());
        assert!(plaintext_warning("smtp://u:p@mail.example.com:587?tls=opportunistic").is_some());
        assert!(plaintext_warning("smtp://u:p@mail.example.com:587?tls=required").is_none());
        assert!(plaintext_warning("smtps://u:p@mail.example.com").is_none());
        assert!(plaintext_warning("smtp://127.0.0.1:2525").is_none());
        assert!(plaintext_warning("smtp://localhost").is_none());
        assert!(plaintext_warning("smtp://[::1]:2525").is_none());
    }

    /// A real SMTP server on 127.0.0.1 with its replies scripted by `script`.
    fn smtp_server(script: impl FnOnce(&SmtpServer)) -> SmtpServer {
        let server = SmtpServer::start();
        script(&server);
        server
    }

    async fn send_to(server: &SmtpServer) -> Result<Delivery, SendError> {
        let mailer = Mailer::new(smtp_config(server.url(), 5)).expect("mailer");
        mailer.send(message("ada@example.com")).await
    }

    #[tokio::test]
    async fn smtp_accepts() {
        let server = SmtpServer::start();
        assert_eq!(send_to(&server).await.expect("sent"), Delivery::Smtp);
        let mail = &server.wait_for_messages(1, Duration::from_secs(5)).await[0];
        assert_eq!(mail.rcpt_to, ["ada@example.com"]);
    }

    #[tokio::test]
    async fn smtp_4xx_is_transient_with_its_code() {
        let server = smtp_server(|s| s.fail_next_data([(451, "4.3.0 try again later")]));
        let err = send_to(&server).await.expect_err("451");
        assert_eq!(err.code(), Some(451));
        assert!(err.is_transient());
        assert_eq!(err.to_string(), "SMTP server replied 451 4.3.0");
    }

    #[tokio::test]
    async fn smtp_5xx_is_permanent_and_hides_the_echoed_address() {
        let server =
            smtp_server(|s| s.reject_recipients(550, "5.1.1 <{rcpt}>: Recipient address rejected"));
        let err = send_to(&server).await.expect_err("550");
        assert_eq!(err.code(), Some(550));
        assert!(err.is_permanent());
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("ada@"), "{shown}");
        assert_eq!(err.to_string(), "SMTP server replied 550 5.1.1");
    }

    #[tokio::test]
    async fn unicode_address_without_smtputf8_is_permanent() {
        let server = smtp_server(|s| s.hide_extension("SMTPUTF8"));
        let mailer = Mailer::new(smtp_config(server.url(), 5)).expect("mailer");
        let err = mailer
            .send(message("ngọc@example.com"))
            .await
            .expect_err("needs SMTPUTF8");
        assert!(matches!(err, SendError::Invalid { .. }), "{err:?}");
        assert!(err.is_permanent());
    }

    /// Collects every span field and event (with its target) into one string.
    #[derive(Clone, Default)]
    struct Capture(
        Arc<std::sync::Mutex<String>>,
        Arc<std::sync::atomic::AtomicU64>,
    );

    struct Collect<'a>(&'a mut String);

    impl tracing::field::Visit for Collect<'_> {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn fmt::Debug) {
            self.0.push_str(&format!(" {}={value:?}", field.name()));
        }
    }

    impl Capture {
        fn text(&self) -> String {
            self.0.lock().expect("lock").clone()
        }

        fn push(&self, prefix: &str, record: impl FnOnce(&mut Collect<'_>)) {
            let mut text = self.0.lock().expect("lock");
            text.push('\n');
            text.push_str(prefix);
            record(&mut Collect(&mut text));
        }
    }

    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            self.push(span.metadata().name(), |c| span.record(c));
            tracing::span::Id::from_u64(
                self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
            )
        }
        fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
            self.push("record", |c| values.record(c));
        }
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            self.push(event.metadata().target(), |c| event.record(c));
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }

    #[tokio::test]
    async fn the_span_masks_recipients_and_records_the_reply_code() {
        let capture = Capture::default();
        let _guard = tracing::subscriber::set_default(capture.clone());
        let server =
            smtp_server(|s| s.reject_recipients(550, "5.1.1 <{rcpt}>: Recipient address rejected"));
        let url = format!("smtp://jetfn:hunter2@{}", server.addr());
        let mailer = Mailer::new(smtp_config(url, 5)).expect("mailer");
        let _ = mailer.send(message("ada.lovelace@example.com")).await;
        let ours: String = capture
            .text()
            .lines()
            .filter(|l| !l.starts_with("lettre"))
            .collect::<Vec<_>>()
            .join("\n");
        assert!(ours.contains("smtp send"), "{ours}");
        assert!(ours.contains("ad***@example.com"), "{ours}");
        assert!(ours.contains("smtp.code=550"), "{ours}");
        assert!(ours.contains("error.kind=\"smtp_rejected\""), "{ours}");
        for secret in ["ada.lovelace@", "hunter2", "Welcome to jetfn", "Hi Ada"] {
            assert!(!ours.contains(secret), "{secret} leaked: {ours}");
        }
    }

    /// lettre's `tracing` feature logs every SMTP line at DEBUG, including `AUTH PLAIN <base64 user+password>`,
    /// `RCPT TO:<address>` and the message body. The workspace keeps that feature off; this test notices if it
    /// comes back.
    #[tokio::test]
    async fn lettre_logs_neither_credentials_nor_addresses() {
        let capture = Capture::default();
        let _guard = tracing::subscriber::set_default(capture.clone());
        let server = SmtpServer::start();
        let url = format!("smtp://jetfn:hunter2@{}", server.addr());
        let mailer = Mailer::new(smtp_config(url, 5)).expect("mailer");
        mailer
            .send(message("ada.lovelace@example.com"))
            .await
            .expect("sent");
        let all = capture.text();
        // base64("\0jetfn\0hunter2"), as sent in AUTH PLAIN.
        for secret in ["AGpldGZuAGh1bnRlcjI=", "ada.lovelace@", "Hi Ada"] {
            assert!(!all.contains(secret), "{secret} leaked: {all}");
        }
    }

    #[tokio::test]
    async fn connection_refused_is_transient() {
        let server = SmtpServer::start();
        server.go_down();
        let mailer = Mailer::new(smtp_config(server.url(), 5)).expect("mailer");
        let err = mailer
            .send(message("ada@example.com"))
            .await
            .expect_err("refused");
        assert!(matches!(err, SendError::Connection { .. }), "{err:?}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn silent_server_times_out_transiently() {
        // Accepts the connection and never says anything.
        let server =
            smtp_server(|s| s.delay_replies(SmtpCommand::Connect, Duration::from_secs(30)));
        let mailer = Mailer::new(smtp_config(server.url(), 1)).expect("mailer");
        let err = tokio::time::timeout(
            Duration::from_secs(10),
            mailer.send(message("ada@example.com")),
        )
        .await
        .expect("the mailer's own timeout fires first")
        .expect_err("timeout");
        assert!(err.is_transient(), "{err:?}");
        assert!(matches!(err, SendError::Timeout), "{err:?}");
    }

    #[tokio::test]
    async fn a_timeout_retires_the_pool_so_no_send_reads_a_stale_reply() {
        // The first message's end of DATA is never answered in time; later ones are.
        let server = smtp_server(|s| {
            s.script(
                SmtpCommand::EndOfData,
                [Reply::new(250, "2.0.0 queued").after(Duration::from_secs(30))],
            )
        });
        let mailer = Mailer::new(smtp_config(server.url(), 1)).expect("mailer");
        let err = mailer
            .send(message("ada@example.com"))
            .await
            .expect_err("stalls");
        assert!(matches!(err, SendError::Timeout), "{err:?}");
        // Let lettre hand the cancelled connection back to its pool; on the old pool the next send would take that
        // stalled connection and time out again.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            mailer
                .send(message("ada@example.com"))
                .await
                .expect("fresh connection"),
            Delivery::Smtp
        );
    }

    #[tokio::test]
    async fn concurrent_sends_never_exceed_smtp_pool_max() {
        // Slow end-of-DATA replies keep every send open long enough for all of them to overlap.
        let server = SmtpServer::start();
        server.delay_data_reply(Duration::from_millis(200));
        let mailer = Mailer::new(MailerConfig {
            smtp_pool_max: 2,
            ..smtp_config(server.url(), 5)
        })
        .expect("mailer");
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..8 {
            let mailer = mailer.clone();
            sends.spawn(async move { mailer.send(message(&format!("user{i}@example.com"))).await });
        }
        while let Some(sent) = sends.join_next().await {
            assert_eq!(sent.expect("task").expect("sent"), Delivery::Smtp);
        }
        assert_eq!(server.messages().len(), 8);
        assert!(
            server.peak_transactions() <= 2,
            "{} emails were in flight at once with SMTP_POOL_MAX=2",
            server.peak_transactions()
        );
        assert!(
            server.peak_sessions() <= 2,
            "{} connections were open at once with SMTP_POOL_MAX=2",
            server.peak_sessions()
        );
    }

    #[tokio::test]
    async fn warming_opens_the_connection_the_next_send_uses_and_only_when_none_is_open() {
        let server = SmtpServer::start();
        let url = format!("smtp://jetfn:hunter2@{}", server.addr());
        let mailer = Mailer::new(smtp_config(url, 5)).expect("mailer");
        mailer.warm();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while server.total_sessions() == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(server.total_sessions(), 1, "warming connected");
        mailer.send(message("ada@example.com")).await.expect("sent");
        mailer.warm();
        mailer.send(message("bob@example.com")).await.expect("sent");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(server.count(), 2);
        assert_eq!(
            server.total_sessions(),
            1,
            "both emails went over the warmed connection; warming with one open is a no-op"
        );
    }

    /// A send that waited for a slow warm-up still has all of `SMTP_TIMEOUT_SECS` for its own transaction: the
    /// limit cannot fall after the server took the message because the warm-up used most of it.
    #[tokio::test]
    async fn a_send_after_a_slow_warm_up_has_its_whole_time_limit() {
        let server = smtp_server(|s| {
            s.delay_replies(SmtpCommand::Connect, Duration::from_millis(700));
            s.delay_data_reply(Duration::from_millis(500));
        });
        let mailer = Mailer::new(MailerConfig {
            smtp_pool_max: 2,
            ..smtp_config(server.url(), 1)
        })
        .expect("mailer");
        mailer.warm();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while server.total_sessions() == 0 && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let started = std::time::Instant::now();
        let sent = mailer.send(message("ada@example.com")).await;
        assert_eq!(
            sent.expect("sent: 700 ms of warm-up and 500 ms of DATA are each under the 1 s limit"),
            Delivery::Smtp
        );
        assert!(
            started.elapsed() >= Duration::from_millis(1_000),
            "it did wait"
        );
        assert_eq!(server.count(), 1);
        assert_eq!(
            server.total_sessions(),
            1,
            "the send used the warmed connection"
        );
    }

    #[tokio::test]
    async fn refused_credentials_are_a_route_fault_for_sends_and_the_probe() {
        // 535 to every AUTH: a wrong or rotated password, the same for every email.
        let server = smtp_server(|s| {
            s.script(
                SmtpCommand::Auth,
                vec![Reply::new(535, "5.7.8 Authentication credentials invalid"); 8],
            );
        });
        let url = format!("smtp://jetfn:wrong@{}", server.addr());
        let mailer = Mailer::new(smtp_config(url, 5)).expect("mailer");
        let err = mailer
            .send(message("ada@example.com"))
            .await
            .expect_err("authentication fails");
        assert_eq!(err.code(), Some(535), "{err:?}");
        assert!(err.is_unavailable() && !err.is_permanent(), "{err:?}");
        assert!(crate::job_error(err).is_unavailable());
        assert!(
            mailer.probe().await.is_err(),
            "the breaker's probe authenticates too, so it stays open while the credentials are refused"
        );
        assert!(server.messages().is_empty());
    }

    #[tokio::test]
    async fn tls_handshake_failure_is_transient_and_never_plaintext() {
        // A plaintext server behind an smtps:// URL: the TLS handshake fails and nothing is sent in clear.
        let server = SmtpServer::start();
        let url = format!("smtps://{}", server.addr());
        let mailer = Mailer::new(smtp_config(url, 5)).expect("mailer");
        let err = mailer
            .send(message("ada@example.com"))
            .await
            .expect_err("tls fails");
        assert!(matches!(err, SendError::Tls { .. }), "{err:?}");
        assert!(err.is_transient());
    }

    /// `url` with `SMTP_TLS_CA_FILE` set to `ca`.
    fn tls_config(url: String, ca: Option<PathBuf>) -> MailerConfig {
        MailerConfig {
            smtp_tls_ca_file: ca,
            ..smtp_config(url, 5)
        }
    }

    /// A TLS test server as `mode` says, with the certificate the test CA signed for 127.0.0.1.
    fn tls_server(mode: SmtpTls, certs: &TestCertificates) -> SmtpServer {
        SmtpServer::start_tls(mode, &certs.server_cert(), &certs.server_key())
    }

    /// `server`'s URL with a user and password, so that an AUTH sent in clear would show.
    fn with_password(server: &SmtpServer) -> String {
        server.url().replacen("://", "://jetfn:Smtp-Pw-5b8d@", 1)
    }

    /// The verbs `server` received in clear.
    fn in_clear(server: &SmtpServer) -> Vec<String> {
        server
            .commands()
            .into_iter()
            .filter(|command| !command.tls)
            .map(|command| command.verb)
            .collect()
    }

    /// Nothing but the greeting's EHLO and the STARTTLS went in clear: no AUTH, no mail transaction.
    fn assert_nothing_sent_in_clear(server: &SmtpServer) {
        let clear = in_clear(server);
        assert!(
            clear
                .iter()
                .all(|verb| ["EHLO", "STARTTLS", "QUIT"].contains(&verb.as_str())),
            "sent in clear: {clear:?}"
        );
    }

    async fn wait_for_tls_failures(server: &SmtpServer, n: usize) {
        let deadline = std::time::Instant::now() + WAIT;
        while server.tls_failures() < n && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(server.tls_failures(), n, "failed TLS handshakes");
    }

    #[tokio::test]
    async fn starttls_to_a_relay_with_a_private_ca_delivers_over_tls_and_authenticates_after_it() {
        let certs = TestCertificates::generate();
        let server = tls_server(SmtpTls::StartTls, &certs);
        let mailer =
            Mailer::new(tls_config(with_password(&server), Some(certs.ca()))).expect("mailer");
        assert_eq!(
            mailer.send(message("ada@example.com")).await.expect("sent"),
            Delivery::Smtp
        );
        let mail = &server.wait_for_messages(1, WAIT).await[0];
        assert!(mail.tls, "the message came over TLS");
        assert_eq!(mail.rcpt_to, ["ada@example.com"]);
        let commands: Vec<(String, bool)> = server
            .commands()
            .into_iter()
            .map(|command| (command.verb, command.tls))
            .collect();
        // The second EHLO over TLS is the pool's own, for the keywords lettre does not keep (PIPELINING).
        let expected = [
            ("EHLO", false),
            ("STARTTLS", false),
            ("EHLO", true),
            ("EHLO", true),
            ("AUTH", true),
            ("MAIL", true),
            ("RCPT", true),
            ("DATA", true),
        ]
        .map(|(verb, tls)| (verb.to_owned(), tls));
        assert_eq!(commands[..expected.len()], expected, "{commands:?}");
        assert_eq!(server.tls_handshakes(), 1);
        mailer
            .probe()
            .await
            .expect("the breaker's probe reaches the relay through the same TLS");
        assert_nothing_sent_in_clear(&server);
    }

    #[tokio::test]
    async fn a_certificate_the_mailer_does_not_trust_is_a_transient_tls_error_and_nothing_goes_in_clear()
     {
        let certs = TestCertificates::generate();
        let server = tls_server(SmtpTls::StartTls, &certs);
        // Another CA in SMTP_TLS_CA_FILE, then none: the public roots alone do not know the relay's private CA.
        for ca in [Some(certs.other_ca()), None] {
            let mailer =
                Mailer::new(tls_config(with_password(&server), ca.clone())).expect("mailer");
            let err = mailer
                .send(message("ada@example.com"))
                .await
                .expect_err("the certificate is not trusted");
            assert!(matches!(err, SendError::Tls { .. }), "{ca:?}: {err:?}");
            assert!(
                err.to_string().contains("UnknownIssuer")
                    && err.to_string().contains("or by a CA of SMTP_TLS_CA_FILE"),
                "the reason is the certificate's issuer, and the setting to check: {err}"
            );
            assert!(err.is_transient() && err.is_unavailable(), "{err:?}");
            assert!(
                !crate::job_error(err).is_permanent(),
                "retried with a delay, never dead-lettered at once"
            );
        }
        wait_for_tls_failures(&server, 2).await;
        assert_eq!(server.tls_handshakes(), 0);
        assert_nothing_sent_in_clear(&server);
        assert!(server.messages().is_empty(), "nothing was delivered");
    }

    #[tokio::test]
    async fn implicit_tls_to_a_relay_with_a_private_ca_delivers_over_tls() {
        let certs = TestCertificates::generate();
        let server = tls_server(SmtpTls::Implicit, &certs);
        let url = with_password(&server);
        assert!(url.starts_with("smtps://"), "{url}");
        let mailer = Mailer::new(tls_config(url, Some(certs.ca()))).expect("mailer");
        mailer.send(message("ada@example.com")).await.expect("sent");
        let mail = &server.wait_for_messages(1, WAIT).await[0];
        assert!(mail.tls, "the message came over TLS");
        assert_eq!(
            in_clear(&server),
            Vec::<String>::new(),
            "TLS from the first byte"
        );
        assert_eq!(server.tls_handshakes(), 1);

        let other = Mailer::new(tls_config(with_password(&server), Some(certs.other_ca())))
            .expect("mailer");
        let err = other
            .send(message("ada@example.com"))
            .await
            .expect_err("another CA");
        assert!(matches!(err, SendError::Tls { .. }), "{err:?}");
        wait_for_tls_failures(&server, 1).await;
        assert_eq!(server.count(), 1, "nothing more was delivered");
    }

    #[tokio::test]
    async fn tls_required_against_a_server_without_starttls_sends_nothing_in_clear() {
        let certs = TestCertificates::generate();
        // A server with no TLS at all, and one whose STARTTLS is stripped from EHLO (as a man in the middle would).
        let plain = SmtpServer::start();
        let stripped = tls_server(SmtpTls::StartTls, &certs);
        stripped.hide_extension("STARTTLS");
        for server in [&plain, &stripped] {
            let url = format!("smtp://jetfn:Smtp-Pw-5b8d@{}?tls=required", server.addr());
            let mailer = Mailer::new(tls_config(url, Some(certs.ca()))).expect("mailer");
            let err = mailer
                .send(message("ada@example.com"))
                .await
                .expect_err("no STARTTLS offered");
            assert!(matches!(err, SendError::Tls { .. }), "{err:?}");
            assert!(err.is_transient(), "{err:?}");
            assert_nothing_sent_in_clear(server);
            assert!(server.messages().is_empty(), "nothing was delivered");
            assert_eq!(server.tls_handshakes(), 0);
        }
    }

    #[tokio::test]
    async fn an_unusable_tls_ca_file_stops_the_mailer_at_start_up_even_without_smtp_url() {
        let dir = temp_dir("ca-file");
        let err = Mailer::new(MailerConfig {
            mail_dir: dir.clone(),
            smtp_tls_ca_file: Some(PathBuf::from("/nonexistent/smtp-ca.pem")),
            ..MailerConfig::default()
        })
        .expect_err("the file is missing");
        assert!(matches!(err, ConfigError::CaFile { .. }), "{err}");
        assert!(err.to_string().starts_with("SMTP_TLS_CA_FILE: "), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn clones_share_the_transport() {
        let dir = temp_dir("clone");
        let a = Mailer::new(MailerConfig {
            mail_dir: dir.clone(),
            ..MailerConfig::default()
        })
        .expect("mailer");
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.inner, &b.inner));
        assert_eq!(b.from().email.to_string(), "no-reply@jetfn.local");
        std::fs::remove_dir_all(Path::new(&dir)).expect("cleanup");
    }
}
