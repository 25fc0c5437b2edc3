//! A whole jetfn system per test: a private nats-server with the real `infra/nats` definitions applied (timings
//! shortened so retries take milliseconds), a controllable SMTP server, and helpers to run the real binaries.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer};
use provision::Definitions;
use runtime::dlq::DeadLetter;
use testkit::{FunctionProcess, NatsServer, SmtpServer, workspace_root};

pub const WAIT: Duration = Duration::from_secs(20);

/// The welcome consumer's backoff in tests: attempt 2 comes 400 ms after attempt 1, attempt 3 800 ms after 2.
pub const TEST_BACKOFF: [Duration; 3] = [
    Duration::from_millis(400),
    Duration::from_millis(800),
    Duration::from_millis(800),
];
pub const TEST_MAX_DELIVER: i64 = 4;
pub const STAFF: &str = "staff@shop.test";
pub const SUPPORT: &str = "support@shop.test";

pub struct System {
    pub nats: NatsServer,
    pub smtp: SmtpServer,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub publisher: runtime::Publisher,
}

impl System {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts with the repository's definitions, changed by `adjust` before they are applied.
    pub async fn start_with(adjust: impl FnOnce(&mut Definitions)) -> Self {
        Self::start_on(
            NatsServer::start(),
            async_nats::ConnectOptions::new(),
            adjust,
        )
        .await
    }

    /// Starts on a given server (one with an `authorization` block, say), connecting as `admin` to provision it.
    pub async fn start_on(
        nats: NatsServer,
        admin: async_nats::ConnectOptions,
        adjust: impl FnOnce(&mut Definitions),
    ) -> Self {
        let smtp = SmtpServer::start();
        let client = admin
            .connect(nats.url())
            .await
            .expect("connect to the test nats-server");
        let js = jetstream::new(client.clone());
        let mut definitions =
            Definitions::load(&workspace_root().join("infra/nats")).expect("infra/nats loads");
        assert!(
            definitions.consumer("EVENTS", "welcome").is_some(),
            "infra defines the welcome consumer"
        );
        for (stream, consumer) in &mut definitions.consumers {
            if stream == "EVENTS" {
                consumer.backoff = TEST_BACKOFF.to_vec();
                consumer.ack_wait = TEST_BACKOFF[0];
                consumer.max_deliver = TEST_MAX_DELIVER;
            }
        }
        // The default schedules stay out: a test writes the schedules it needs.
        definitions.schedules.clear();
        adjust(&mut definitions);
        definitions
            .apply(&js)
            .await
            .expect("infra/nats applies to nats-server 2.15");
        let publisher = runtime::Publisher::new(client.clone(), "/integration-tests");
        Self {
            nats,
            smtp,
            client,
            js,
            publisher,
        }
    }

    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("NATS_URL", self.nats.url()),
            ("SMTP_URL", self.smtp.url()),
            ("SMTP_TIMEOUT_SECS", "10".to_owned()),
            ("RUST_LOG", "debug,async_nats=info".to_owned()),
            ("JOB_DRAIN_TIMEOUT_SECS", "15".to_owned()),
            ("JOB_LEDGER_LEASE_SECS", "2".to_owned()),
            ("ROUTER_HEALTH_ADDR", String::new()),
            ("MAIL_FROM", "Shop <no-reply@shop.test>".to_owned()),
            ("ORDER_ADMIN_TO", STAFF.to_owned()),
            ("PASSWORD_RESET_URL", "https://shop.test/reset".to_owned()),
            ("CONTACT_SUPPORT_TO", SUPPORT.to_owned()),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .collect()
    }

    pub async fn spawn(&self, bin: &str, extra: &[(&'static str, String)]) -> FunctionProcess {
        let mut env = self.env();
        env.extend(extra.iter().cloned());
        let process = FunctionProcess::spawn(bin, &env);
        process.wait_for_output("serving", WAIT).await;
        process
    }

    /// Publishes through the typed SDK the old EmailService callers use.
    pub fn emails(&self) -> sdk::EmailEvents {
        sdk::EmailEvents::new(self.client.clone(), "/integration-tests")
    }

    pub async fn welcome(&self) -> FunctionProcess {
        self.spawn("welcome", &[]).await
    }

    pub async fn consumer_info(&self, stream: &str, name: &str) -> consumer::Info {
        let stream = self.js.get_stream(stream).await.expect("stream exists");
        let mut consumer: consumer::PullConsumer =
            stream.get_consumer(name).await.expect("consumer exists");
        consumer.info().await.expect("consumer info").clone()
    }

    /// Publishes raw JSON bytes as a careless client would, skipping the publisher's checks.
    pub async fn publish_json(&self, subject: &str, value: &serde_json::Value) -> u64 {
        self.publish_raw(subject, &serde_json::to_vec(value).unwrap())
            .await
    }

    /// Waits until the consumer has nothing waiting, nothing in flight and nothing due for redelivery. Its
    /// `delivered.consumer_sequence` then counts every delivery made, redeliveries included.
    pub async fn wait_settled(&self, name: &str) -> consumer::Info {
        let deadline = Instant::now() + WAIT;
        loop {
            let info = self.consumer_info("EVENTS", name).await;
            // A NAK with a delay leaves the message neither pending nor in flight; the ack floor shows it.
            let answered = info.ack_floor.consumer_sequence == info.delivered.consumer_sequence;
            if info.num_pending == 0 && info.num_ack_pending == 0 && answered {
                return info;
            }
            assert!(
                Instant::now() < deadline,
                "consumer {name} did not settle: {info:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every record in the DLQ stream, with its DLQ sequence.
    pub async fn dlq(&self) -> Vec<(u64, DeadLetter)> {
        let mut stream = self.js.get_stream("DLQ").await.expect("DLQ stream");
        let state = stream.info().await.expect("DLQ info").state.clone();
        let mut records = Vec::new();
        if state.messages == 0 {
            return records;
        }
        for seq in state.first_sequence..=state.last_sequence {
            if let Some(message) = stored_message(&stream, seq).await {
                let letter = DeadLetter::from_stored(Some(&message.headers), message.payload)
                    .expect("a DLQ record");
                records.push((seq, letter));
            }
        }
        records
    }

    pub async fn wait_dlq(&self, count: usize) -> Vec<(u64, DeadLetter)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let records = self.dlq().await;
            if records.len() >= count {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "expected {count} DLQ records, have {}",
                records.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes raw bytes on a subject, bypassing the validating publisher (as a careless client would).
    pub async fn publish_raw(&self, subject: &str, bytes: &[u8]) -> u64 {
        self.js
            .publish(subject.to_owned(), bytes.to_vec().into())
            .await
            .expect("publish")
            .await
            .expect("stream ack")
            .sequence
    }
}

pub fn user(email: &str, name: &str) -> events::UserRegistered {
    events::UserRegistered {
        user_id: "u-42".to_owned(),
        email: email.to_owned(),
        name: name.to_owned(),
        locale: events::Locale::En,
    }
}

/// No log line of a function may hold a full email address.
pub fn assert_no_address(output: &str, address: &str) {
    assert!(
        !output.contains(address),
        "the address {address} appears in clear in the logs:\n{output}"
    );
}

/// A fresh empty directory for one test's index (removed when the value drops).
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(kind: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir =
            std::env::temp_dir().join(format!("jetfn-it-{kind}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        Self(dir)
    }

    pub fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The indexing consumers, one per message event type.
pub const INDEXING: [&str; 3] = ["indexing-created", "indexing-updated", "indexing-deleted"];

impl System {
    /// Runs the indexing function on `dir`; returns once all three consumers are bound and the service is up.
    pub async fn indexing(
        &self,
        dir: &TempDir,
        extra: &[(&'static str, String)],
    ) -> FunctionProcess {
        let mut env = vec![
            ("INDEX_DIR", dir.path()),
            ("INDEX_COMMIT_INTERVAL_MS", "100".to_owned()),
        ];
        env.extend(extra.iter().cloned());
        let process = self.spawn("indexing", &env).await;
        process
            .wait_for_output("search service started", WAIT)
            .await;
        let deadline = Instant::now() + WAIT;
        while process.output().matches("consumer bound; serving").count() < 3 {
            assert!(
                Instant::now() < deadline,
                "indexing did not bind its three consumers"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        process
    }

    /// Waits until every indexing consumer has answered everything delivered to it.
    pub async fn indexing_settled(&self) {
        for consumer in INDEXING {
            self.wait_settled(consumer).await;
        }
    }

    /// Publishes and waits until the indexing function answered it: the order of a test's events is the order the
    /// index sees them.
    pub async fn publish_indexed<T: events::Event>(&self, data: T) -> runtime::Published {
        let published = self.publisher.publish(data).await.expect("publish");
        self.indexing_settled().await;
        published
    }

    /// Asks the search service.
    pub async fn search(&self, request: serde_json::Value) -> serde_json::Value {
        let reply = self
            .js
            .client()
            .request(
                "jetfn.index.search",
                serde_json::to_vec(&request).unwrap().into(),
            )
            .await
            .expect("the search service answers");
        assert!(
            reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error-Code"))
                .is_none(),
            "search error: {:?}",
            reply.headers
        );
        serde_json::from_slice(&reply.payload).expect("a JSON answer")
    }

    /// The message ids a search finds, best first.
    pub async fn found(&self, q: &str) -> Vec<String> {
        let answer = self
            .search(serde_json::json!({ "q": q, "limit": 100 }))
            .await;
        answer["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|hit| hit["message_id"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Runs the jetfn CLI against this system and returns its output; it must exit 0.
    pub async fn jetfn(&self, args: &[&str]) -> String {
        let process = FunctionProcess::spawn_with_args("jetfn", args, &self.env());
        let status = process.wait_exit(WAIT).await;
        assert_eq!(
            status.code(),
            Some(0),
            "jetfn {args:?} failed:\n{}",
            process.output()
        );
        process.output()
    }

    /// Messages stored on `subject` in EVENTS.
    pub async fn count_on(&self, subject: &str) -> usize {
        use futures::TryStreamExt as _;
        let stream = self.js.get_stream("EVENTS").await.unwrap();
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(subject)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        subjects.iter().map(|(_, count)| count).sum()
    }

    /// Waits until `subject` holds at least `count` messages in EVENTS.
    pub async fn wait_on(&self, subject: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.count_on(subject).await >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{subject} did not reach {count} messages"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

pub fn message(
    id: &str,
    conversation: &str,
    body: &str,
    created_at: time::OffsetDateTime,
) -> events::MessageCreated {
    events::MessageCreated {
        message_id: id.to_owned(),
        conversation_id: conversation.to_owned(),
        sender_id: "u-1".to_owned(),
        body: body.to_owned(),
        created_at,
    }
}

pub fn edit(
    created: &events::MessageCreated,
    body: &str,
    updated_at: time::OffsetDateTime,
) -> events::MessageUpdated {
    events::MessageUpdated {
        message_id: created.message_id.clone(),
        conversation_id: created.conversation_id.clone(),
        sender_id: created.sender_id.clone(),
        body: body.to_owned(),
        created_at: created.created_at,
        updated_at,
    }
}

pub fn deletion(
    created: &events::MessageCreated,
    deleted_at: time::OffsetDateTime,
) -> events::MessageDeleted {
    events::MessageDeleted {
        message_id: created.message_id.clone(),
        conversation_id: created.conversation_id.clone(),
        deleted_at,
    }
}

/// The message at `seq`, or `None` when the stream no longer holds it (acked off a work queue, replayed, purged).
/// Any other error is retried until [`WAIT`], then fails the test: a timeout read as "gone" would pass or fail an
/// exact assertion by luck.
pub async fn stored_message(
    stream: &jetstream::stream::Stream,
    seq: u64,
) -> Option<jetstream::message::StreamMessage> {
    let deadline = Instant::now() + WAIT;
    loop {
        match stream.get_raw_message(seq).await {
            Ok(message) => return Some(message),
            Err(error)
                if error.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound =>
            {
                return None;
            }
            Err(error) => assert!(
                Instant::now() < deadline,
                "message {seq} could not be read: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A subscriber to `stream`'s direct gets (both forms) that answers each with the status a replica sends when it
/// holds no such message, as one that has not applied the latest writes does. Where the stream serves direct gets
/// too, the first answer wins (the stand-in has a thread of its own, so the test's runtime does not slow it). Connects as the admin of a secured server (a server without users ignores the credentials). Raw
/// protocol: a client library publishes no status line. It ends with the server's connection.
pub fn stale_replica(url: &str, stream: &str) {
    stale_replica_answering(url, stream, "NATS/1.0 404 Message Not Found\r\n\r\n", "");
}

/// As [`stale_replica`], but the stand-in answers every direct get with one stored message, `subject` at
/// `sequence` stamped `time`: what a replica that has not applied a deletion still returns (a message the leader
/// no longer holds, interest retention having removed it once acknowledged).
pub fn stale_replica_holding(
    url: &str,
    stream: &str,
    subject: &str,
    sequence: u64,
    time: time::OffsetDateTime,
    payload: &str,
) {
    let stamp = time
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let headers = format!(
        "NATS/1.0\r\nNats-Stream: {stream}\r\nNats-Subject: {subject}\r\nNats-Sequence: {sequence}\r\n\
         Nats-Time-Stamp: {stamp}\r\nNats-Num-Pending: 0\r\nNats-Last-Sequence: 0\r\n\r\n"
    );
    stale_replica_answering(url, stream, &headers, payload);
}

/// The stand-in of [`stale_replica`] and [`stale_replica_holding`]: every direct get of `stream` is answered with
/// `headers` (a `NATS/1.0` block) and `payload`.
fn stale_replica_answering(url: &str, stream: &str, headers: &str, payload: &str) {
    use std::io::{BufRead as _, Read as _, Write as _};

    let address = url.trim_start_matches("nats://");
    let mut write = std::net::TcpStream::connect(address).unwrap();
    write.set_nodelay(true).unwrap();
    let mut read = std::io::BufReader::new(write.try_clone().unwrap());
    let mut line = String::new();
    read.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO"), "{line}");
    write!(
        write,
        "CONNECT {{\"verbose\":false,\"headers\":true,\"user\":\"admin\",\"pass\":\"admin-secret\"}}\r\n\
         SUB $JS.API.DIRECT.GET.{stream} 1\r\nSUB $JS.API.DIRECT.GET.{stream}.> 2\r\nPING\r\n"
    )
    .unwrap();
    loop {
        line.clear();
        read.read_line(&mut line).unwrap();
        assert!(!line.starts_with("-ERR"), "{line}");
        if line.starts_with("PONG") {
            break;
        }
    }
    let answer = format!("{headers}{payload}\r\n");
    let sizes = format!("{} {}", headers.len(), headers.len() + payload.len());
    std::thread::spawn(move || {
        loop {
            line.clear();
            if read.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line.starts_with("PING") {
                let _ = write.write_all(b"PONG\r\n");
                continue;
            }
            // `MSG <subject> <sid> [<reply>] <size>` or `HMSG <subject> <sid> [<reply>] <header size> <size>`.
            let words: Vec<&str> = line.split_whitespace().collect();
            let (reply, size) = match words.first().copied() {
                Some("MSG") if words.len() == 5 => (words[3], words[4]),
                Some("HMSG") if words.len() == 6 => (words[3], words[5]),
                _ => continue,
            };
            let mut body = vec![0; size.parse::<usize>().unwrap() + 2];
            if read.read_exact(&mut body).is_err() {
                return;
            }
            let publish = format!("HPUB {reply} {sizes}\r\n{answer}");
            let _ = write.write_all(publish.as_bytes());
        }
    });
}
