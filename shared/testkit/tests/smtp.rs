//! Self-tests of the scripted SMTP server, observed by a real lettre client: per-command and per-message
//! replies, delays, outages, AUTH, hidden extensions, STARTTLS and implicit TLS, and the counting sink.

use std::time::{Duration, Instant};

use lettre::message::{Mailbox, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::sync::Arc;

use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use testkit::{AttemptStage, Reply, SmtpCommand, SmtpServer, SmtpTls, TestCertificates};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

const WAIT: Duration = Duration::from_secs(10);

fn transport(smtp: &SmtpServer) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::from_url(&smtp.url())
        .expect("smtp url")
        .timeout(Some(WAIT))
        .build()
}

fn message(to: &str, subject: &str) -> Message {
    Message::builder()
        .from(
            "Jetfn <noreply@example.com>"
                .parse::<Mailbox>()
                .expect("from"),
        )
        .to(to.parse::<Mailbox>().expect("to"))
        .subject(subject)
        .singlepart(SinglePart::plain("Hello\r\n".to_owned()))
        .expect("message")
}

fn code(error: &lettre::transport::smtp::Error) -> Option<u16> {
    error.status().map(u16::from)
}

#[tokio::test]
async fn per_command_replies_refuse_then_accept() {
    let smtp = SmtpServer::start();
    smtp.script(SmtpCommand::Mail, [(451, "4.3.2 not now")]);
    smtp.script(SmtpCommand::Rcpt, [(550, "5.1.1 <{rcpt}>: no such user")]);
    smtp.script(SmtpCommand::Data, [(554, "5.3.4 no data today")]);
    let mailer = transport(&smtp);

    let error = mailer
        .send(message("a@example.com", "1"))
        .await
        .expect_err("MAIL 451");
    assert_eq!(code(&error), Some(451), "{error}");
    assert!(error.is_transient());

    let error = mailer
        .send(message("a@example.com", "2"))
        .await
        .expect_err("RCPT 550");
    assert_eq!(code(&error), Some(550), "{error}");
    assert!(
        error.to_string().contains("<a@example.com>: no such user"),
        "{error}"
    );
    let attempts = smtp.attempts();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].stage, attempts[0].code),
        (AttemptStage::Rcpt, 550)
    );

    let error = mailer
        .send(message("a@example.com", "3"))
        .await
        .expect_err("DATA 554");
    assert_eq!(code(&error), Some(554), "{error}");
    assert!(smtp.messages().is_empty());

    // Every script is used up: the next message goes through.
    mailer
        .send(message("a@example.com", "4"))
        .await
        .expect("accepted");
    let mails = smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].header("Subject").as_deref(), Some("4"));
    assert_eq!(smtp.count(), 1);
}

#[tokio::test]
async fn per_message_replies_4xx_then_250_and_5xx() {
    let smtp = SmtpServer::start();
    smtp.fail_next_data([
        Reply::new(451, "4.3.0 try again"),
        Reply::new(250, "2.0.0 fine"),
    ]);
    smtp.fail_next_data_to("bounce@example.com", [(552, "5.2.2 mailbox full")]);
    let mailer = transport(&smtp);

    let error = mailer
        .send(message("a@example.com", "first"))
        .await
        .expect_err("451");
    assert_eq!(code(&error), Some(451));
    mailer
        .send(message("a@example.com", "second"))
        .await
        .expect("scripted 250");
    let error = mailer
        .send(message("bounce@example.com", "full"))
        .await
        .expect_err("targeted 552");
    assert_eq!(code(&error), Some(552));
    assert!(error.is_permanent());
    mailer
        .send(message("a@example.com", "third"))
        .await
        .expect("normal 250");

    let attempts: Vec<(u16, String)> = smtp
        .wait_for_attempts(4, WAIT)
        .await
        .into_iter()
        .map(|a| (a.code, a.text))
        .collect();
    assert_eq!(
        attempts,
        [
            (451, "4.3.0 try again".to_owned()),
            (250, "2.0.0 fine".to_owned()),
            (552, "5.2.2 mailbox full".to_owned()),
            (250, "2.0.0 OK: queued".to_owned()),
        ]
    );
    let subjects: Vec<Option<String>> = smtp
        .messages()
        .iter()
        .map(|m| m.header("Subject"))
        .collect();
    assert_eq!(
        subjects,
        [Some("second".to_owned()), Some("third".to_owned())]
    );
}

#[tokio::test]
async fn delays_are_felt_by_the_client_and_a_silent_server_says_nothing() {
    let smtp = SmtpServer::start();
    smtp.delay_replies(SmtpCommand::Ehlo, Duration::from_millis(300));
    smtp.script(
        SmtpCommand::EndOfData,
        [Reply::new(250, "2.0.0 slow").after(Duration::from_millis(400))],
    );
    let started = Instant::now();
    transport(&smtp)
        .send(message("a@example.com", "slow"))
        .await
        .expect("slow send");
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "{:?}",
        started.elapsed()
    );

    // A greeting that never comes: the client hears nothing (lettre does not time out the greeting itself).
    smtp.clear_faults();
    smtp.delay_replies(SmtpCommand::Connect, Duration::from_secs(30));
    let silent = tokio::time::timeout(
        Duration::from_secs(1),
        transport(&smtp).send(message("a@example.com", "never")),
    )
    .await;
    assert!(silent.is_err(), "no reply within 1 s: {silent:?}");
    assert_eq!(smtp.count(), 1);
}

#[tokio::test]
async fn down_refuses_connections_and_up_accepts_on_the_same_port() {
    let smtp = SmtpServer::start();
    let addr = smtp.addr();
    smtp.go_down();
    let error = transport(&smtp)
        .send(message("a@example.com", "down"))
        .await
        .expect_err("refused");
    assert!(code(&error).is_none(), "no SMTP reply while down: {error}");
    smtp.come_up();
    assert_eq!(smtp.addr(), addr);
    transport(&smtp)
        .send(message("a@example.com", "up"))
        .await
        .expect("accepted");
    assert_eq!(smtp.wait_for_messages(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn a_refused_greeting_and_a_missing_extension() {
    let smtp = SmtpServer::start();
    smtp.script(SmtpCommand::Connect, [(421, "4.3.2 too busy")]);
    let error = transport(&smtp)
        .send(message("a@example.com", "busy"))
        .await
        .expect_err("421 greeting");
    assert!(error.is_transient(), "{error}");

    // Without SMTPUTF8 offered, lettre refuses a non-ASCII address before sending.
    smtp.hide_extension("SMTPUTF8");
    let error = transport(&smtp)
        .send(message("ngọc@example.com", "utf8"))
        .await
        .expect_err("needs SMTPUTF8");
    assert!(code(&error).is_none(), "{error}");
    assert!(smtp.messages().is_empty());
}

#[tokio::test]
async fn auth_plain_and_login_are_accepted_or_refused_as_scripted() {
    let smtp = SmtpServer::start();
    let with = |mechanism| {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(smtp.port())
            .credentials(Credentials::new("jetfn".to_owned(), "secret".to_owned()))
            .authentication(vec![mechanism])
            .timeout(Some(WAIT))
            .build()
    };
    use lettre::transport::smtp::authentication::Mechanism;
    with(Mechanism::Plain)
        .send(message("a@example.com", "plain"))
        .await
        .expect("AUTH PLAIN");
    with(Mechanism::Login)
        .send(message("a@example.com", "login"))
        .await
        .expect("AUTH LOGIN");
    smtp.script(SmtpCommand::Auth, [(535, "5.7.8 bad credentials")]);
    let error = with(Mechanism::Plain)
        .send(message("a@example.com", "refused"))
        .await
        .expect_err("535");
    assert_eq!(code(&error), Some(535));
    assert_eq!(smtp.wait_for_messages(2, WAIT).await.len(), 2);
}

#[tokio::test]
async fn the_sink_counts_arrivals_and_keeps_no_text() {
    let sink = SmtpServer::start_sink();
    let mailer = transport(&sink);
    for n in 0..5 {
        mailer
            .send(message("a@example.com", &n.to_string()))
            .await
            .expect("sent");
    }
    assert_eq!(sink.count(), 5);
    let arrivals = sink.arrivals();
    assert!(arrivals.windows(2).all(|pair| pair[0] <= pair[1]));
    assert!(sink.messages().is_empty() && sink.attempts().is_empty());
    sink.clear();
    assert_eq!(sink.count(), 0);
}

/// Sends `command` (if any) and reads the whole reply: its code and its lines' texts.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut BufReader<S>,
    command: Option<&str>,
) -> (u16, Vec<String>) {
    if let Some(command) = command {
        let out = conn.get_mut();
        out.write_all(format!("{command}\r\n").as_bytes())
            .await
            .expect("write");
        out.flush().await.expect("flush");
    }
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let read = tokio::time::timeout(WAIT, conn.read_line(&mut line))
            .await
            .expect("a reply in time")
            .expect("read");
        assert!(
            read > 0,
            "the server closed the connection after {command:?}"
        );
        let code = line[..3].parse::<u16>().expect("a reply code");
        lines.push(line[4..].trim_end().to_owned());
        if line.as_bytes()[3] == b' ' {
            return (code, lines);
        }
    }
}

#[tokio::test]
async fn starttls_is_offered_and_the_conversation_starts_over_in_tls() {
    let certs = TestCertificates::generate();
    let smtp = SmtpServer::start_tls(SmtpTls::StartTls, &certs.server_cert(), &certs.server_key());
    assert_eq!(smtp.url(), format!("smtp://{}?tls=required", smtp.addr()));
    smtp.script(
        SmtpCommand::StartTls,
        [(454, "4.7.0 TLS not available now")],
    );
    let tcp = tokio::net::TcpStream::connect(smtp.addr())
        .await
        .expect("connect");
    let mut plain = BufReader::new(tcp);
    assert_eq!(exchange(&mut plain, None).await.0, 220);
    let (code, ehlo) = exchange(&mut plain, Some("EHLO client.test")).await;
    assert_eq!(code, 250);
    assert!(ehlo.iter().any(|line| line == "STARTTLS"), "{ehlo:?}");
    assert_eq!(
        exchange(&mut plain, Some("STARTTLS now")).await.0,
        501,
        "STARTTLS takes no argument"
    );
    assert_eq!(
        exchange(&mut plain, Some("STARTTLS")).await.0,
        454,
        "the scripted refusal leaves the connection in plain text"
    );
    assert_eq!(exchange(&mut plain, Some("NOOP")).await.0, 250);
    assert_eq!(exchange(&mut plain, Some("STARTTLS")).await.0, 220);

    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(certs.ca()).expect("CA file");
    for cert in CertificateDer::pem_slice_iter(&ca) {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            ServerName::try_from("127.0.0.1").expect("an IP name"),
            plain.into_inner(),
        )
        .await
        .expect("the handshake, verified against the test CA");
    let mut tls = BufReader::new(tls);
    assert_eq!(
        exchange(&mut tls, Some("MAIL FROM:<a@example.com>"))
            .await
            .0,
        503,
        "the upgrade forgets the EHLO"
    );
    let (code, ehlo) = exchange(&mut tls, Some("EHLO client.test")).await;
    assert_eq!(code, 250);
    assert!(
        !ehlo.iter().any(|line| line == "STARTTLS"),
        "not offered twice: {ehlo:?}"
    );
    assert_eq!(exchange(&mut tls, Some("STARTTLS")).await.0, 503);
    assert_eq!(exchange(&mut tls, Some("QUIT")).await.0, 221);
    assert_eq!(smtp.tls_handshakes(), 1);
    let commands: Vec<(String, bool)> = smtp
        .commands()
        .into_iter()
        .map(|command| (command.verb, command.tls))
        .collect();
    let expected = [
        ("EHLO", false),
        ("STARTTLS", false),
        ("STARTTLS", false),
        ("NOOP", false),
        ("STARTTLS", false),
        ("MAIL", true),
        ("EHLO", true),
        ("STARTTLS", true),
        ("QUIT", true),
    ]
    .map(|(verb, tls)| (verb.to_owned(), tls));
    assert_eq!(commands, expected);
}

#[tokio::test]
async fn implicit_tls_delivers_and_marks_the_message_and_a_client_without_the_ca_is_refused() {
    let certs = TestCertificates::generate();
    let smtp = SmtpServer::start_tls(SmtpTls::Implicit, &certs.server_cert(), &certs.server_key());
    assert_eq!(smtp.url(), format!("smtps://{}", smtp.addr()));
    let with_roots = |ca: Option<Vec<u8>>| {
        let mut params = TlsParameters::builder("127.0.0.1".to_owned());
        if let Some(pem) = ca {
            params = params.add_root_certificate(Certificate::from_pem(&pem).expect("CA PEM"));
        }
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1")
            .port(smtp.port())
            .tls(Tls::Wrapper(params.build().expect("TLS parameters")))
            .timeout(Some(WAIT))
            .build()
    };
    let ca = std::fs::read(certs.ca()).expect("CA file");
    with_roots(Some(ca))
        .send(message("a@example.com", "tls"))
        .await
        .expect("sent over TLS");
    let mails = smtp.wait_for_messages(1, WAIT).await;
    assert!(mails[0].tls);
    assert!(smtp.commands().iter().all(|command| command.tls));
    with_roots(None)
        .send(message("a@example.com", "untrusted"))
        .await
        .expect_err("the public roots do not know the test CA");
    let deadline = Instant::now() + WAIT;
    while smtp.tls_failures() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!((smtp.tls_handshakes(), smtp.tls_failures()), (1, 1));
    assert_eq!(smtp.count(), 1);

    // A plain server records its messages as not over TLS.
    let plain = SmtpServer::start();
    transport(&plain)
        .send(message("a@example.com", "plain"))
        .await
        .expect("sent");
    assert!(!plain.wait_for_messages(1, WAIT).await[0].tls);
}
