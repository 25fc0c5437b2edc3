//! Self-tests of the scripted SMTP server, observed by a real lettre client: per-command and per-message
//! replies, delays, outages, AUTH, hidden extensions and the counting sink.

use std::time::{Duration, Instant};

use lettre::message::{Mailbox, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use testkit::{AttemptStage, Reply, SmtpCommand, SmtpServer};

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
