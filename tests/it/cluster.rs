//! A function on a three-node JetStream cluster: the infra provisioned with three replicas, `NATS_URL` listing
//! every node, and the function still sending after the node it is connected to dies. And a `NATS_URL` list the
//! function refuses.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use events::{CloudEvent, UserRegistered};
use provision::Definitions;
use testkit::{FunctionProcess, NatsCluster, NatsServer, SmtpServer, workspace_root};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::{WAIT, user};

/// A lost node costs a leader election for each stream, consumer and bucket it led (a few seconds) and the
/// client's reconnect backoff: generous, and bounded.
const FAILOVER: Duration = Duration::from_secs(60);
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
            ("JOB_LEDGER_LEASE_SECS", "2".to_owned()),
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
async fn publish_until_stored(publisher: &runtime::Publisher, data: UserRegistered) {
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
