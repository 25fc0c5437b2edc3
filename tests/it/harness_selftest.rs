//! Self-tests of the harness (the test kit, `shared/testkit`) from the integration test binary: every component is
//! real and must behave as documented. The kit's own tests (the 3-node cluster, scripted SMTP commands) are in
//! `shared/testkit/tests`.

use std::time::{Duration, Instant};

use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use testkit::{
    AttemptStage, FunctionProcess, NatsServer, OtlpReceiver, SmtpServer, free_port, workspace_root,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- NATS

async fn stream_messages(url: &str, name: &str) -> u64 {
    let client = async_nats::connect(url).await.expect("connect");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(name).await.expect("get stream");
    stream.info().await.expect("stream info").state.messages
}

#[tokio::test(flavor = "multi_thread")]
async fn harness_nats_jetstream_publish_survives_restart_and_kill() {
    let nats = NatsServer::start();
    assert!(
        nats.url().starts_with("nats://127.0.0.1:"),
        "{}",
        nats.url()
    );
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
    assert!(nats.store_dir().is_dir());
    assert!(nats.log().contains("Server is ready"));

    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SELFTEST".to_owned(),
        subjects: vec!["selftest.>".to_owned()],
        ..Default::default()
    })
    .await
    .expect("create stream");
    let ack = js
        .publish("selftest.a", "hello".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!((ack.stream.as_str(), ack.sequence), ("SELFTEST", 1));
    drop(js);
    drop(client);

    let port = nats.port();
    let old_pid = nats.pid().expect("running");
    nats.restart();
    assert_eq!(nats.port(), port, "restart must keep the port");
    assert_ne!(nats.pid(), Some(old_pid));
    assert_eq!(stream_messages(&nats.url(), "SELFTEST").await, 1);

    // A crash (SIGKILL) with sync_interval: always loses no acked message.
    let client = async_nats::connect(nats.url()).await.expect("reconnect");
    let js = async_nats::jetstream::new(client);
    let ack = js
        .publish("selftest.b", "world".into())
        .await
        .expect("publish")
        .await
        .expect("ack");
    assert_eq!(ack.sequence, 2);
    nats.kill();
    assert!(!nats.is_running());
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "killed server still accepts"
    );
    nats.restart();
    assert_eq!(stream_messages(&nats.url(), "SELFTEST").await, 2);
    // A new client: the one from before the kill may still be in its reconnect backoff.
    let client = async_nats::connect(nats.url()).await.expect("reconnect");
    let js = async_nats::jetstream::new(client);
    let stream = js.get_stream("SELFTEST").await.expect("get stream");
    let message = stream.get_raw_message(2).await.expect("get message 2");
    assert_eq!(&message.payload[..], b"world");
}

#[tokio::test(flavor = "multi_thread")]
async fn harness_nats_start_with_extra_config() {
    let nats = NatsServer::start_with("max_payload: 65536");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    assert_eq!(client.server_info().max_payload, 65536);
    nats.stop().expect("was running");
    assert!(!nats.is_running());
    assert!(nats.log().contains("Server Exiting"), "{}", nats.log());
}

// ---------------------------------------------------------------- SMTP

fn transport(smtp: &SmtpServer) -> AsyncSmtpTransport<Tokio1Executor> {
    AsyncSmtpTransport::<Tokio1Executor>::from_url(&smtp.url())
        .expect("smtp url")
        .timeout(Some(Duration::from_secs(10)))
        .build()
}

fn simple_message(to: &str, subject: &str) -> Message {
    Message::builder()
        .from(
            "Jetfn <noreply@example.com>"
                .parse::<Mailbox>()
                .expect("from"),
        )
        .to(to.parse::<Mailbox>().expect("to"))
        .subject(subject)
        .singlepart(SinglePart::plain(
            "Hello\r\n.dot line\r\nbye\r\n".to_owned(),
        ))
        .expect("message")
}

#[tokio::test]
async fn harness_smtp_receives_lettre_message() {
    let smtp = SmtpServer::start();
    assert_eq!(
        smtp.url(),
        format!("smtp://127.0.0.1:{}", smtp.addr().port())
    );
    let mailer = transport(&smtp);

    let message = Message::builder()
        .from(
            "Jetfn <noreply@example.com>"
                .parse::<Mailbox>()
                .expect("from"),
        )
        .to("Zoë <zoe@example.com>".parse::<Mailbox>().expect("to"))
        .subject("Welcome, Zoë ✓")
        .multipart(MultiPart::alternative_plain_html(
            "Hi Zoë,\nwelcome aboard. ✓\n".to_owned(),
            "<p>Hi Zoë, <b>welcome</b> aboard. ✓</p>".to_owned(),
        ))
        .expect("message");
    mailer.send(message).await.expect("send");
    mailer
        .send(simple_message("bob@example.com", "plain"))
        .await
        .expect("send plain");

    let mails = smtp.wait_for_messages(2, WAIT).await;
    let mail = &mails[0];
    assert_eq!(mail.mail_from, "noreply@example.com");
    assert_eq!(mail.rcpt_to, vec!["zoe@example.com".to_owned()]);
    assert_eq!(mail.header("Subject").as_deref(), Some("Welcome, Zoë ✓"));
    assert_eq!(mail.header_count("subject"), 1);
    let raw_subject = mail.raw_header("Subject").expect("raw subject");
    assert!(
        raw_subject.to_ascii_lowercase().contains("=?utf-8?"),
        "{raw_subject}"
    );
    assert_eq!(
        mail.header("To").as_deref(),
        Some("Zoë <zoe@example.com>"),
        "{}",
        mail.data
    );
    assert_eq!(
        mail.text_part().as_deref(),
        Some("Hi Zoë,\r\nwelcome aboard. ✓\r\n")
    );
    assert_eq!(
        mail.html_part().as_deref(),
        Some("<p>Hi Zoë, <b>welcome</b> aboard. ✓</p>")
    );

    // Dot-stuffed on the wire by lettre, unstuffed by the server.
    let plain = &mails[1];
    assert_eq!(plain.rcpt_to, vec!["bob@example.com".to_owned()]);
    assert!(plain.data.contains("\r\n.dot line\r\n"), "{}", plain.data);
    // lettre ends the body with CRLF and then sends <CRLF>.<CRLF>, so blank lines trail.
    let text = plain.text_part().expect("text part");
    assert_eq!(text.trim_end(), "Hello\r\n.dot line\r\nbye");
    assert_eq!(plain.html_part(), None);

    let attempts = smtp.attempts();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts
            .iter()
            .all(|a| a.stage == AttemptStage::Data && a.code == 250)
    );
}

#[tokio::test]
async fn harness_smtp_scripted_451_then_success() {
    let smtp = SmtpServer::start();
    smtp.fail_next_data(vec![(451, "4.3.0 try again")]);
    let mailer = transport(&smtp);

    let error = mailer
        .send(simple_message("a@example.com", "first"))
        .await
        .expect_err("scripted 451");
    assert!(error.is_transient(), "{error}");
    assert_eq!(error.status().map(u16::from), Some(451));
    assert!(smtp.messages().is_empty());

    mailer
        .send(simple_message("a@example.com", "second"))
        .await
        .expect("second attempt");
    let mails = smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].header("Subject").as_deref(), Some("second"));
    let codes: Vec<u16> = smtp
        .wait_for_attempts(2, WAIT)
        .await
        .iter()
        .map(|a| a.code)
        .collect();
    assert_eq!(codes, vec![451, 250]);
    assert_eq!(smtp.messages().len(), 1);
}

#[tokio::test]
async fn harness_smtp_rejects_recipients_until_cleared() {
    let smtp = SmtpServer::start();
    smtp.reject_recipients(550, "5.1.1 no such user");
    let mailer = transport(&smtp);

    let error = mailer
        .send(simple_message("ghost@example.com", "x"))
        .await
        .expect_err("550 on RCPT");
    assert!(error.is_permanent(), "{error}");
    assert_eq!(error.status().map(u16::from), Some(550));
    let attempts = smtp.attempts();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].stage, AttemptStage::Rcpt);
    assert_eq!(attempts[0].code, 550);
    assert_eq!(attempts[0].rcpt_to, vec!["ghost@example.com".to_owned()]);
    assert!(smtp.messages().is_empty());

    smtp.clear_faults();
    let mailer = transport(&smtp);
    mailer
        .send(simple_message("real@example.com", "y"))
        .await
        .expect("after clear_faults");
    assert_eq!(
        smtp.wait_for_messages(1, WAIT).await[0].rcpt_to,
        vec!["real@example.com"]
    );
}

#[tokio::test]
async fn harness_smtp_go_down_refuses_and_come_up_recovers() {
    let smtp = SmtpServer::start();
    let addr = smtp.addr();

    // An open session is dropped by go_down.
    let mut open = BufReader::new(TcpStream::connect(addr).await.expect("connect"));
    let mut greeting = String::new();
    open.read_line(&mut greeting).await.expect("greeting");
    assert!(greeting.starts_with("220 "), "{greeting:?}");

    smtp.go_down();
    assert!(!smtp.is_up());
    let mut rest = Vec::new();
    let read = tokio::time::timeout(WAIT, open.read_to_end(&mut rest))
        .await
        .expect("open connection closed by go_down");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let refused = TcpStream::connect(addr).await.expect_err("listener closed");
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let error = transport(&smtp)
        .send(simple_message("a@example.com", "down"))
        .await
        .expect_err("server down");
    assert!(error.status().is_none(), "no SMTP reply when down: {error}");

    smtp.come_up();
    assert_eq!(smtp.addr(), addr);
    transport(&smtp)
        .send(simple_message("a@example.com", "up again"))
        .await
        .expect("send after come_up");
    let mails = smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].header("Subject").as_deref(), Some("up again"));
}

#[tokio::test]
async fn harness_smtp_delayed_data_reply() {
    let smtp = SmtpServer::start();
    smtp.delay_data_reply(Duration::from_millis(700));
    let started = Instant::now();
    transport(&smtp)
        .send(simple_message("a@example.com", "slow"))
        .await
        .expect("slow send");
    assert!(started.elapsed() >= Duration::from_millis(700));
    let mail = &smtp.messages()[0];
    assert!(mail.received_at >= started + Duration::from_millis(700));
}

/// The wire protocol directly: multi-line EHLO, RSET, NOOP, sequencing errors, dot-unstuffing.
#[tokio::test]
async fn harness_smtp_raw_conversation() {
    let smtp = SmtpServer::start();
    let mut conn = BufReader::new(TcpStream::connect(smtp.addr()).await.expect("connect"));
    async fn reply(conn: &mut BufReader<TcpStream>) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).await.expect("read reply");
            assert!(line.ends_with("\r\n"), "{line:?}");
            let last = line.as_bytes().get(3) == Some(&b' ');
            lines.push(line.trim_end().to_owned());
            if last {
                return lines;
            }
        }
    }
    async fn send(conn: &mut BufReader<TcpStream>, line: &str) -> Vec<String> {
        conn.get_mut()
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("write");
        reply(conn).await
    }
    assert!(reply(&mut conn).await[0].starts_with("220 "));
    assert!(send(&mut conn, "MAIL FROM:<a@x>").await[0].starts_with("503 "));
    let ehlo = send(&mut conn, "EHLO client.example").await;
    assert!(
        ehlo.len() > 1 && ehlo[0].starts_with("250-") && ehlo.last().unwrap().starts_with("250 ")
    );
    assert!(send(&mut conn, "NOOP").await[0].starts_with("250 "));
    assert!(send(&mut conn, "DATA").await[0].starts_with("503 "));
    assert!(send(&mut conn, "mail from:<a@x> BODY=8BITMIME").await[0].starts_with("250 "));
    assert!(send(&mut conn, "RSET").await[0].starts_with("250 "));
    assert!(send(&mut conn, "RCPT TO:<b@y>").await[0].starts_with("503 "));
    assert!(send(&mut conn, "MAIL FROM:<>").await[0].starts_with("250 "));
    assert!(send(&mut conn, "RCPT TO:<b@y>").await[0].starts_with("250 "));
    assert!(send(&mut conn, "RCPT TO:<c@y>").await[0].starts_with("250 "));
    assert!(send(&mut conn, "DATA").await[0].starts_with("354 "));
    let done = send(&mut conn, "Subject: raw\r\n\r\n..leading dot\r\nline\r\n.").await;
    assert!(done[0].starts_with("250 "), "{done:?}");
    assert!(send(&mut conn, "FOO").await[0].starts_with("500 "));
    assert!(send(&mut conn, "QUIT").await[0].starts_with("221 "));

    let mail = &smtp.messages()[0];
    assert_eq!(mail.mail_from, "");
    assert_eq!(mail.rcpt_to, vec!["b@y".to_owned(), "c@y".to_owned()]);
    assert_eq!(mail.data, "Subject: raw\r\n\r\n.leading dot\r\nline\r\n");
}

// ---------------------------------------------------------------- OTLP

/// One HTTP/1.1 request on a kept-alive connection; returns (status, body).
async fn http_post(
    conn: &mut BufReader<TcpStream>,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = conn.get_mut();
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body).await.expect("write body");
    let mut status_line = String::new();
    conn.read_line(&mut status_line).await.expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut length = 0;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await.expect("header line");
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("content-length");
        }
    }
    let mut response = vec![0; length];
    conn.read_exact(&mut response).await.expect("body");
    (status, response)
}

#[tokio::test]
async fn harness_otlp_receiver_decodes_protobuf_traces() {
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    };
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, InstrumentationScope, KeyValue, any_value::Value,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
    use prost::Message as _;

    let kv = |key: &str, value: Value| KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    };
    let root = Span {
        trace_id: vec![0xab; 16],
        span_id: vec![0x01; 8],
        name: "job.process".to_owned(),
        kind: 5,
        attributes: vec![
            kv("messaging.system", Value::StringValue("nats".to_owned())),
            kv("attempt", Value::IntValue(3)),
            kv("ok", Value::BoolValue(false)),
        ],
        status: Some(Status {
            code: 2,
            message: "boom".to_owned(),
        }),
        ..Default::default()
    };
    let child = Span {
        trace_id: vec![0xab; 16],
        span_id: vec![0x02; 8],
        parent_span_id: vec![0x01; 8],
        name: "smtp.send".to_owned(),
        kind: 3,
        ..Default::default()
    };
    let export = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", Value::StringValue("welcome".to_owned()))],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "selftest".to_owned(),
                    ..Default::default()
                }),
                spans: vec![root, child],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };

    let otlp = OtlpReceiver::start();
    assert_eq!(otlp.endpoint(), format!("http://{}", otlp.addr()));
    let mut conn = BufReader::new(TcpStream::connect(otlp.addr()).await.expect("connect"));
    let (status, body) = http_post(
        &mut conn,
        "/v1/traces",
        "application/x-protobuf",
        &export.encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200);
    ExportTraceServiceResponse::decode(&body[..]).expect("protobuf response");
    // Same connection (keep-alive): metrics and logs are accepted, JSON traces are refused loudly.
    assert_eq!(
        http_post(&mut conn, "/v1/metrics", "application/x-protobuf", b"")
            .await
            .0,
        200
    );
    assert_eq!(
        http_post(&mut conn, "/v1/logs", "application/x-protobuf", b"")
            .await
            .0,
        200
    );
    assert_eq!(
        http_post(&mut conn, "/v1/traces", "application/json", b"{}")
            .await
            .0,
        415
    );

    let spans = otlp.wait_for_spans(|spans| spans.len() >= 2, WAIT).await;
    let root = &spans[0];
    assert_eq!(root.service_name, "welcome");
    assert_eq!(root.name, "job.process");
    assert_eq!(root.trace_id, "ab".repeat(16));
    assert_eq!(root.span_id, "0101010101010101");
    assert_eq!(root.parent_span_id, "");
    assert_eq!(root.kind, 5);
    assert_eq!(root.status_code, 2);
    assert_eq!(root.status_message, "boom");
    assert_eq!(root.scope_name, "selftest");
    assert_eq!(root.attributes["messaging.system"], "nats");
    assert_eq!(root.attributes["attempt"], "3");
    assert_eq!(root.attributes["ok"], "false");
    let child = otlp.wait_for_span(|s| s.name == "smtp.send", WAIT).await;
    assert_eq!(child.parent_span_id, root.span_id);
    assert_eq!(child.trace_id, root.trace_id);
    assert_eq!(otlp.requests().len(), 4);
}

// ---------------------------------------------------------------- processes and helpers

#[tokio::test]
async fn harness_function_process_output_and_signals() {
    let process =
        FunctionProcess::spawn("it-fixture", &[("FIXTURE_MESSAGE", "hi there".to_owned())]);
    process
        .wait_for_output(&format!("fixture started pid={}", process.pid()), WAIT)
        .await;
    process
        .wait_for_output("fixture message: hi there", WAIT)
        .await;
    assert!(process.try_exit_status().is_none());
    process.sigterm();
    let status = process.wait_exit(WAIT).await;
    assert_eq!(status.code(), Some(7));
    assert!(process.output().contains("fixture got SIGTERM"));

    let killed = FunctionProcess::spawn("it-fixture", &[]);
    killed.wait_for_output("fixture started", WAIT).await;
    killed.sigkill();
    let status = killed.wait_exit(WAIT).await;
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
}

#[test]
fn harness_function_process_missing_binary_panics_with_hint() {
    let Err(panic) = std::panic::catch_unwind(|| FunctionProcess::spawn("no-such-function", &[]))
    else {
        panic!("spawning a binary that was never built must fail loudly");
    };
    let message = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|text| (*text).to_owned()))
        .unwrap_or_default();
    assert!(
        message.contains("binary no-such-function not built: run `cargo build --workspace` first"),
        "{message}"
    );
}

#[test]
fn harness_helpers() {
    assert!(workspace_root().join("Cargo.toml").is_file());
    assert!(workspace_root().join("tests/Cargo.toml").is_file());
    // Other tests bind ports concurrently, so a single free port can be taken before we bind it
    // (the documented race of free_port); one of a few must work.
    let bound = (0..5).any(|_| {
        let port = free_port();
        port != 0 && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
    });
    assert!(bound, "free_port never returned a bindable port");
}
