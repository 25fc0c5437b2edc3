//! A function on a three-node JetStream cluster: the infra provisioned with three replicas by the real
//! `jetfn infra apply --replicas 3`, `NATS_URL` listing every node in each form the README names, and the
//! functions still sending, once per event, while the stream leader dies, a follower dies, the stream leader is
//! paused past an election, and the whole cluster restarts on its stores. And a `NATS_URL` list the function refuses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use events::{CloudEvent, UserRegistered};
use futures::StreamExt as _;
use provision::Definitions;
use testkit::{FunctionProcess, NatsCluster, NatsServer, SmtpServer, workspace_root};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{TempDir, WAIT, user};

/// A lost node costs a leader election for each stream, consumer and bucket it led (a few seconds) and the
/// client's reconnect backoff: generous, and bounded.
pub const FAILOVER: Duration = Duration::from_secs(60);
/// The welcome functions' ledger lease: past the longest ledger stall a failover causes here (about 11 s after a
/// whole-cluster restart), as a deployment must set it: a stall longer than the lease is inside the documented
/// window, so a shorter lease would let the test see a duplicate the design allows.
const LEASE_SECS: &str = "30";
/// In `NATS_URL` only, to see that no log line shows it.
const URL_PASSWORD: &str = "url-s3cret";

#[tokio::test(flavor = "multi_thread")]
async fn welcome_keeps_sending_after_the_node_it_is_connected_to_dies() {
    let cluster = NatsCluster::start();
    let admin = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(cluster.urls())
        .await
        .expect("connect to the cluster");
    let js = jetstream::new(admin.clone());
    let mut definitions =
        Definitions::load(&workspace_root().join("infra/nats")).expect("infra/nats loads");
    definitions.set_replicas(3);
    definitions.schedules.clear();
    // A delivery that fails while leaders move is retried within seconds, not after the production backoff.
    let welcome = definitions
        .consumer_mut("EVENTS", "welcome")
        .expect("infra defines the welcome consumer");
    welcome.ack_wait = Duration::from_secs(2);
    welcome.backoff = vec![Duration::from_secs(2); 5];
    welcome.max_deliver = 20;
    definitions
        .apply(&js)
        .await
        .expect("infra/nats applies with three replicas");
    let stream = js.get_stream("EVENTS").await.expect("EVENTS exists");
    assert_eq!(stream.cached_info().config.num_replicas, 3);

    // Every node, with spaces after the commas as people write them, and a password in the first URL (the
    // servers have no auth, so it is only there to be masked).
    let urls = cluster.urls();
    let nats_url = format!(
        "{}, {}, {}",
        urls[0].replace("nats://", &format!("nats://jetfn:{URL_PASSWORD}@")),
        urls[1],
        urls[2]
    );
    let smtp = SmtpServer::start();
    let function = FunctionProcess::spawn(
        "welcome",
        &[
            ("NATS_URL", nats_url),
            ("SMTP_URL", smtp.url()),
            ("SMTP_TIMEOUT_SECS", "10".to_owned()),
            ("MAIL_FROM", "Shop <no-reply@shop.test>".to_owned()),
            ("RUST_LOG", "debug,async_nats=info".to_owned()),
            ("JOB_LEDGER_LEASE_SECS", LEASE_SECS.to_owned()),
        ],
    );
    function.wait_for_output("serving", WAIT).await;
    let publisher = runtime::Publisher::new(admin.clone(), "/integration-tests");

    publish_until_stored(&publisher, user("ada@example.com", "Ada")).await;
    let mails = smtp.wait_for_messages(1, FAILOVER).await;
    assert_eq!(mails[0].rcpt_to, vec!["ada@example.com".to_owned()]);

    let connected = wait_connected_node(&cluster, "welcome").await;
    cluster.node(connected).kill();
    let reconnected = wait_connected_node(&cluster, "welcome").await;
    assert_ne!(
        reconnected, connected,
        "the killed node holds no connection"
    );

    publish_until_stored(&publisher, user("grace@example.com", "Grace")).await;
    let deadline = Instant::now() + FAILOVER;
    while !smtp
        .messages()
        .iter()
        .any(|mail| mail.rcpt_to == ["grace@example.com"])
    {
        assert!(
            Instant::now() < deadline,
            "no email for the event published after {} died; the function said:\n{}",
            cluster.node(connected).name(),
            function.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let output = function.output();
    assert!(
        !output.contains(URL_PASSWORD),
        "the NATS_URL password reached the logs:\n{output}"
    );
    assert!(
        output.contains("jetfn:***@127.0.0.1"),
        "the start-up log shows the masked NATS_URL:\n{output}"
    );
}

#[tokio::test]
async fn a_bad_nats_url_entry_stops_the_function_naming_its_position_and_hiding_its_password() {
    let smtp = SmtpServer::start();
    let function = FunctionProcess::spawn(
        "welcome",
        &[
            (
                "NATS_URL",
                format!("nats://127.0.0.1:4222, nats://jetfn:{URL_PASSWORD}@127.0.0.1:x"),
            ),
            ("SMTP_URL", smtp.url()),
            ("MAIL_FROM", "Shop <no-reply@shop.test>".to_owned()),
        ],
    );
    let status = function.wait_exit(WAIT).await;
    assert!(!status.success());
    let output = function.output();
    assert!(
        output.contains("NATS_URL: entry 2 of 2, \"nats://jetfn:***@127.0.0.1:x\", is not"),
        "{output}"
    );
    assert!(!output.contains(URL_PASSWORD), "{output}");
}

/// Publishes one envelope until a stream leader stores it: while a node is lost the stream may have none for a
/// moment, and the same id is stored once however many tries reach it.
pub async fn publish_until_stored(publisher: &runtime::Publisher, data: UserRegistered) {
    let event = CloudEvent::new("/integration-tests", data);
    let deadline = Instant::now() + FAILOVER;
    loop {
        match publisher.publish_event(&event).await {
            Ok(_) => return,
            Err(err) => {
                assert!(Instant::now() < deadline, "publish never stored: {err}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// The running node that holds the client connection named `name`, from each node's `/connz`.
async fn wait_connected_node(cluster: &NatsCluster, name: &str) -> usize {
    let deadline = Instant::now() + FAILOVER;
    loop {
        for (i, node) in cluster.nodes().iter().enumerate() {
            if node.is_running() && connections_named(node, name).await > 0 {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no running node has a connection named {name}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many client connections named `name` the node's monitoring endpoint lists (0 if it does not answer).
async fn connections_named(node: &NatsServer, name: &str) -> usize {
    let Some(port) = node.monitor_port() else {
        return 0;
    };
    let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let request = "GET /connz?limit=1024 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if conn.write_all(request.as_bytes()).await.is_err() {
        return 0;
    }
    let mut response = String::new();
    if conn.read_to_string(&mut response).await.is_err() {
        return 0;
    }
    let Some((_, body)) = response.split_once("\r\n\r\n") else {
        return 0;
    };
    let Ok(connz) = serde_json::from_str::<serde_json::Value>(body) else {
        return 0;
    };
    connz["connections"].as_array().map_or(0, |connections| {
        connections
            .iter()
            .filter(|connection| connection["name"] == name)
            .count()
    })
}

/// Everything a cluster test runs: the infra applied through the real CLI with `--replicas 3` from a copy of
/// `infra/nats` whose EVENTS consumers retry within seconds (a delivery that fails while leaders move is
/// retried soon, not after the production backoff), a recording SMTP server, and an admin connection.
pub struct ClusterSystem {
    pub smtp: SmtpServer,
    pub js: jetstream::Context,
    pub publisher: runtime::Publisher,
    _infra: TempDir,
}

/// Where a cluster's replica count comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replicas {
    /// `jetfn infra apply --replicas 3` over the repository's files (which say 1).
    Flag,
    /// `"num_replicas": 3` written in every stream, consumer and KV bucket file, applied as they are.
    InFiles,
}

impl ClusterSystem {
    /// Provisions `cluster` by running `jetfn infra apply` with `NATS_URL` set to `nats_url`, checks that every
    /// stream (KV buckets included) and every consumer reached the server at R3, and that `jetfn infra plan`
    /// (given the cluster with `--nats-url`, as a list with spaces) then finds nothing to change.
    pub async fn provision(cluster: &NatsCluster, nats_url: &str, replicas: Replicas) -> Self {
        let infra = TempDir::new("infra");
        copy_dir(&workspace_root().join("infra/nats"), &infra.0);
        let _ = std::fs::remove_dir_all(infra.0.join("schedules"));
        for dir in ["streams", "kv", "consumers/EVENTS", "consumers/ADVISORIES"] {
            for entry in std::fs::read_dir(infra.0.join(dir)).expect("an infra folder") {
                let path = entry.expect("a definition file").path();
                let mut definition: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("JSON");
                if dir == "consumers/EVENTS" {
                    // nats-server sets `ack_wait` to `backoff[0]` when a backoff list is given; written the same
                    // here, so the plan after apply finds the files and the server agreeing.
                    definition["ack_wait"] = 1_000_000_000_u64.into();
                    definition["backoff"] = serde_json::json!(vec![1_000_000_000_u64; 5]);
                    definition["max_deliver"] = 30.into();
                }
                if replicas == Replicas::InFiles {
                    definition["num_replicas"] = 3.into();
                }
                std::fs::write(&path, serde_json::to_vec_pretty(&definition).unwrap())
                    .expect("write");
            }
        }
        let dir = infra.path();
        let mut args = vec!["infra", "apply", "--dir", &dir];
        if replicas == Replicas::Flag {
            args.extend(["--replicas", "3"]);
        }
        let apply =
            FunctionProcess::spawn_with_args("jetfn", &args, &[("NATS_URL", nats_url.to_owned())]);
        let status = apply.wait_exit(FAILOVER).await;
        assert!(
            status.success(),
            "jetfn {args:?} with NATS_URL={nats_url:?} failed:\n{}",
            apply.output()
        );

        let listed = cluster.urls().join(", ");
        args[1] = "plan";
        let mut plan_args = vec!["--nats-url", &listed];
        plan_args.extend(&args);
        let plan = FunctionProcess::spawn_with_args("jetfn", &plan_args, &[]);
        let status = plan.wait_exit(FAILOVER).await;
        let output = plan.output();
        assert!(
            status.success()
                && output.contains("0 to create, 0 to update")
                && output.contains("0 impossible"),
            "jetfn {plan_args:?} found changes after apply:\n{output}"
        );

        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(cluster.urls())
            .await
            .expect("connect to the cluster");
        let js = jetstream::new(client.clone());
        assert_everything_r3(&js).await;
        let publisher = runtime::Publisher::new(client.clone(), "/integration-tests");
        Self {
            smtp: SmtpServer::start(),
            js,
            publisher,
            _infra: infra,
        }
    }

    /// From now on, talks to the cluster through `urls` only: a client of a node cut off by a partition would
    /// wait out its ping timeout (a minute) before it notices.
    pub async fn use_nodes(&mut self, urls: &[String]) {
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(urls)
            .await
            .expect("connect to the cluster");
        self.js = jetstream::new(client.clone());
        self.publisher = runtime::Publisher::new(client, "/integration-tests");
    }

    /// The welcome function, connected through `nats_url`.
    pub async fn welcome(&self, nats_url: &str) -> FunctionProcess {
        let function = FunctionProcess::spawn(
            "welcome",
            &[
                ("NATS_URL", nats_url.to_owned()),
                ("SMTP_URL", self.smtp.url()),
                ("SMTP_TIMEOUT_SECS", "10".to_owned()),
                ("MAIL_FROM", "Shop <no-reply@shop.test>".to_owned()),
                ("RUST_LOG", "info,async_nats=info".to_owned()),
                ("JOB_LEDGER_LEASE_SECS", LEASE_SECS.to_owned()),
            ],
        );
        function.wait_for_output("serving", FAILOVER).await;
        function
    }

    /// The node names the stream's leader as, once there is one.
    pub async fn stream_leader(&self, stream: &str) -> String {
        stream_leader(&self.js, stream).await
    }

    /// Waits until every address in `expected` got at least one welcome email.
    pub async fn wait_all_mailed(&self, expected: &[String], functions: &[&FunctionProcess]) {
        let deadline = Instant::now() + FAILOVER * 2;
        loop {
            let sent: std::collections::HashSet<String> = self
                .smtp
                .messages()
                .iter()
                .flat_map(|mail| mail.rcpt_to.clone())
                .collect();
            let missing: Vec<&String> = expected.iter().filter(|e| !sent.contains(*e)).collect();
            if missing.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} acked events never mailed (e.g. {:?}); the functions said:\n{}",
                missing.len(),
                &missing[..missing.len().min(5)],
                functions
                    .iter()
                    .map(|f| tail(&f.output(), 40))
                    .collect::<Vec<_>>()
                    .join("\n---\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until every address in `expected` got its welcome email, then until the welcome consumer has
    /// settled and a little more (a redelivery still on its way would have sent again by then), and
    /// checks: every email once (one Message-ID, one copy), nothing for anyone else, no dead letter.
    pub async fn assert_each_sent_once(&self, expected: &[String], functions: &[&FunctionProcess]) {
        self.wait_all_mailed(expected, functions).await;
        self.wait_settled("welcome").await;
        tokio::time::sleep(Duration::from_secs(5)).await;

        let mut copies: HashMap<String, (usize, String)> = HashMap::new();
        for mail in self.smtp.messages() {
            let id = mail.header("Message-ID").unwrap_or_default();
            let entry = copies
                .entry(id)
                .or_insert_with(|| (0, mail.rcpt_to.join(",")));
            entry.0 += 1;
        }
        let twice: Vec<&(usize, String)> = copies.values().filter(|(n, _)| *n > 1).collect();
        assert!(
            twice.is_empty(),
            "{} emails sent more than once: {twice:?}; the functions said:\n{}",
            twice.len(),
            functions
                .iter()
                .flat_map(|f| f.output().lines().map(str::to_owned).collect::<Vec<_>>())
                .filter(|line| line.contains("WARN") || line.contains("ERROR"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(
            copies.len(),
            expected.len(),
            "one email per acked event, none for anything else"
        );
        assert_eq!(self.stored("DLQ").await, 0, "no dead letter");
        assert_eq!(
            self.stored("ADVISORIES").await,
            0,
            "no max-deliveries advisory"
        );
    }

    /// Messages the stream holds, once its (R3) group answers: after a restart or a heal, a stream other than the
    /// ones the test waited on may still be electing its leader.
    pub async fn stored(&self, name: &str) -> u64 {
        let deadline = Instant::now() + FAILOVER;
        loop {
            let read = match self.js.get_stream(name).await {
                Ok(mut stream) => stream
                    .info()
                    .await
                    .map(|info| info.state.messages)
                    .map_err(|e| e.to_string()),
                Err(error) => Err(error.to_string()),
            };
            match read {
                Ok(messages) => return messages,
                Err(error) => assert!(
                    Instant::now() < deadline,
                    "{name} could not be read: {error}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_settled(&self, name: &str) {
        let deadline = Instant::now() + FAILOVER;
        loop {
            if let Ok(stream) = self.js.get_stream("EVENTS").await
                && let Ok(mut consumer) = stream
                    .get_consumer::<jetstream::consumer::pull::Config>(name)
                    .await
                && let Ok(info) = consumer.info().await
                && info.num_pending == 0
                && info.num_ack_pending == 0
                && info.ack_floor.consumer_sequence == info.delivered.consumer_sequence
            {
                return;
            }
            assert!(Instant::now() < deadline, "consumer {name} did not settle");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Every stream (the KV buckets' included) and every consumer on the server is R3 with two peers.
async fn assert_everything_r3(js: &jetstream::Context) {
    const EXPECTED: [&str; 5] = [
        "KV_jetfn-ledger",
        "KV_jetfn-failures",
        "KV_jetfn-ratelimit",
        "EVENTS",
        "DLQ",
    ];
    // The server leaves a stream out of its list when the stream's leader does not answer the meta leader in time,
    // and a slow answer fails the list: both are read again, never taken as the server's state.
    let deadline = Instant::now() + FAILOVER;
    let listed = loop {
        let listed = list_replicas(js).await;
        match &listed {
            Ok(streams)
                if EXPECTED
                    .iter()
                    .all(|name| streams.iter().any(|(stream, ..)| stream == name)) =>
            {
                break listed.unwrap();
            }
            _ => assert!(
                Instant::now() < deadline,
                "the streams {EXPECTED:?} were not all listed: {listed:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for (name, replicas, consumers) in listed {
        assert_eq!(replicas, 3, "stream {name} is R3");
        for (consumer, replicas) in consumers {
            // 0 means "as the stream"; the CLI writes 3 explicitly.
            assert_eq!(replicas, 3, "consumer {name}/{consumer} is R3");
        }
    }
}

/// Each stream's name and replicas, with its consumers' names and replicas.
type Placement = Vec<(String, usize, Vec<(String, usize)>)>;

async fn list_replicas(js: &jetstream::Context) -> Result<Placement, String> {
    let mut listed = Vec::new();
    let mut streams = js.streams();
    while let Some(info) = streams.next().await {
        let info = info.map_err(|error| format!("stream list: {error}"))?;
        let name = info.config.name.clone();
        let stream = js
            .get_stream(&name)
            .await
            .map_err(|error| format!("stream {name}: {error}"))?;
        let mut consumers = Vec::new();
        let mut list = stream.consumers();
        while let Some(consumer) = list.next().await {
            let consumer = consumer.map_err(|error| format!("consumer list of {name}: {error}"))?;
            consumers.push((consumer.name.clone(), consumer.config.num_replicas));
        }
        listed.push((name, info.config.num_replicas, consumers));
    }
    Ok(listed)
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// Publishes welcome events, one after another, for as long as it runs; each is retried with its own id until a
/// stream leader stores it, so every address it returns is an acked publish.
pub struct Producer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Producer {
    pub fn start(publisher: runtime::Publisher, tag: &'static str, pace: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
            async move {
                let mut i = 0_u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let email = format!("{tag}{i}@example.com");
                    publish_until_stored(&publisher, user(&email, "Ada")).await;
                    acked.lock().unwrap().push(email);
                    tokio::time::sleep(pace).await;
                }
            }
        });
        Self { stop, acked, task }
    }

    /// How many publishes were acked so far.
    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `n` more publishes are acked.
    pub async fn wait_more(&self, n: usize) {
        let target = self.acked() + n;
        let deadline = Instant::now() + FAILOVER;
        while self.acked() < target {
            assert!(
                Instant::now() < deadline,
                "publishing stalled at {}",
                self.acked()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops and returns every acked address.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("producer task");
        self.acked.lock().unwrap().clone()
    }
}

/// The longest wait between two emails (or from `since` to the first, or from the last to `until`): how long
/// consumption stalled around a fault while events kept coming.
pub fn longest_stall(smtp: &SmtpServer, since: Instant, until: Instant) -> Duration {
    let mut last = since;
    let mut longest = Duration::ZERO;
    for at in smtp
        .arrivals()
        .into_iter()
        .filter(|at| *at > since && *at < until)
    {
        longest = longest.max(at - last);
        last = at;
    }
    longest.max(until - last)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_loses_no_event_and_sends_none_twice_through_leader_and_follower_kills_a_pause_and_a_full_restart()
 {
    let cluster = NatsCluster::start();
    // The README's other list form: no spaces, and no scheme (`host:port` means `nats://`).
    let schemeless: Vec<String> = cluster
        .urls()
        .iter()
        .map(|url| url.trim_start_matches("nats://").to_owned())
        .collect();
    let system = ClusterSystem::provision(&cluster, &schemeless.join(","), Replicas::Flag).await;
    let replicas = [
        system.welcome(&cluster.url()).await,
        system.welcome(&cluster.url()).await,
    ];
    let producer = Producer::start(system.publisher.clone(), "c", Duration::from_millis(20));
    producer.wait_more(30).await;
    let mut faults = Vec::new();

    let leader = system.stream_leader("EVENTS").await;
    let leader = cluster.index_of(&leader).expect("a node of the cluster");
    faults.push((
        format!("stream leader {} killed", cluster.node(leader).name()),
        Instant::now(),
    ));
    cluster.node(leader).kill();
    producer.wait_more(30).await;
    faults.push(("it restarted".to_owned(), Instant::now()));
    cluster.restart_node(leader);
    producer.wait_more(30).await;

    let leader = system.stream_leader("EVENTS").await;
    let follower = (0..3)
        .find(|&i| cluster.node(i).name() != leader)
        .expect("two followers");
    faults.push((
        format!("follower {} killed", cluster.node(follower).name()),
        Instant::now(),
    ));
    cluster.node(follower).kill();
    producer.wait_more(30).await;
    faults.push(("it restarted".to_owned(), Instant::now()));
    cluster.restart_node(follower);
    producer.wait_more(30).await;

    // Longer than an election: the others elect a new leader; the resumed ex-leader must not keep what it
    // accepted alone (S18).
    let leader = system.stream_leader("EVENTS").await;
    let paused = cluster.index_of(&leader).expect("a node of the cluster");
    faults.push((
        format!("stream leader {leader} paused (SIGSTOP)"),
        Instant::now(),
    ));
    cluster.node(paused).pause();
    // A fixed time, not a number of publishes: a client connected to the paused node waits with it.
    tokio::time::sleep(Duration::from_secs(10)).await;
    faults.push(("it resumed".to_owned(), Instant::now()));
    cluster.node(paused).resume();
    cluster
        .wait_formed(FAILOVER)
        .unwrap_or_else(|e| panic!("{e}"));
    producer.wait_more(30).await;

    faults.push((
        "whole cluster killed and restarted".to_owned(),
        Instant::now(),
    ));
    cluster.restart_all();
    producer.wait_more(30).await;
    let acked = producer.finish().await;

    let functions: Vec<&FunctionProcess> = replicas.iter().collect();
    system.wait_all_mailed(&acked, &functions).await;
    faults.push(("end".to_owned(), Instant::now()));
    for pair in faults.windows(2) {
        eprintln!(
            "{}: emails stalled up to {:?} after it",
            pair[0].0,
            longest_stall(&system.smtp, pair[0].1, pair[1].1)
        );
    }
    system.assert_each_sent_once(&acked, &functions).await;
    // The stores agree once the restarted nodes caught up.
    wait_replicas_agree(&cluster, "EVENTS").await;
}

/// Every running node holds the same last sequence of `stream` (from each node's `/jsz`).
/// The node `stream`'s leader is (`$JS.API.STREAM.INFO` `cluster.leader`), once there is one.
pub async fn stream_leader(js: &jetstream::Context, stream: &str) -> String {
    let deadline = Instant::now() + FAILOVER;
    loop {
        if let Ok(mut stream) = js.get_stream(stream).await
            && let Ok(info) = stream.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return leader;
        }
        assert!(Instant::now() < deadline, "{stream} has no leader");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn wait_replicas_agree(cluster: &NatsCluster, stream: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seqs: Vec<Option<u64>> = cluster
            .nodes()
            .iter()
            .map(|node| node.stream_last_seq(stream))
            .collect();
        if seqs[0].is_some() && seqs.iter().all(|seq| *seq == seqs[0]) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas of {stream} disagree: last_seq {seqs:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
