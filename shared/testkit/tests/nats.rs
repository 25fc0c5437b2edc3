//! Self-tests of the nats-server manager: the builder's options and the three-node cluster the fault tests
//! run on, with a real client.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use testkit::{INSTALL_COMMAND, NatsCluster, NatsServer, SyncInterval};

const WAIT: Duration = Duration::from_secs(30);

#[test]
fn a_missing_binary_names_the_install_command() {
    let error = NatsServer::builder()
        .bin("/nonexistent/nats-server")
        .try_start()
        .expect_err("no such binary");
    assert!(error.to_string().contains(INSTALL_COMMAND), "{error}");
}

#[tokio::test(flavor = "multi_thread")]
async fn builder_options_reach_the_server() {
    let dir = std::env::temp_dir().join(format!("testkit-builder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let log_file = dir.join("server.log");
    std::fs::create_dir_all(&dir).expect("dir");
    let server = NatsServer::builder()
        .store_dir(dir.join("store"))
        .sync_interval(SyncInterval::Every(Duration::from_secs(1)))
        .server_name("builder_test")
        .config("max_payload: 65536")
        .jetstream_config("max_memory_store: 64MB")
        .monitor_port(0)
        .log_file(&log_file)
        .start();
    let config = std::fs::read_to_string(server.config_path()).expect("config");
    assert!(config.contains("sync_interval: 1s"), "{config}");
    assert!(config.contains("max_memory_store: 64MB"), "{config}");
    assert!(server.monitor_port().is_some());
    assert!(server.is_healthy());
    let jsz = server.jsz().expect("/jsz");
    assert_eq!(jsz["config"]["sync_interval"], 1_000_000_000, "{jsz}");
    assert!(
        std::fs::read_to_string(&log_file)
            .expect("log file")
            .contains("Server is ready")
    );
    assert!(server.log().contains("Server is ready"));

    let client = async_nats::connect(server.url()).await.expect("connect");
    assert_eq!(client.server_info().max_payload, 65536);
    assert_eq!(client.server_info().server_name, "builder_test");
    drop(client);

    // A given store outlives the server.
    let monitor = server.monitor_port();
    server.restart();
    assert_eq!(
        server.monitor_port(),
        monitor,
        "restart keeps the monitoring port"
    );
    drop(server);
    assert!(dir.join("store/jetstream").is_dir());
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Publishes until the stream acks (a new stream leader may take a few seconds after a node is lost).
async fn publish_until_acked(js: &jetstream::Context, subject: &str, payload: &'static str) -> u64 {
    let deadline = Instant::now() + WAIT;
    loop {
        let attempt = async {
            js.publish(subject.to_owned(), payload.into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(ack)) => return ack.sequence,
            Ok(Err(error)) => assert!(Instant::now() < deadline, "publish never acked: {error}"),
            Err(_) => assert!(Instant::now() < deadline, "publish never acked: timeout"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the stream's three replicas are current, and returns the stream leader's name.
async fn wait_all_replicas_current(js: &jetstream::Context, name: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let info = match js.get_stream(name).await {
            Ok(mut stream) => stream.info().await.ok().cloned(),
            Err(_) => None,
        };
        let cluster = info.as_ref().and_then(|info| info.cluster.clone());
        if let Some(cluster) = &cluster
            && let Some(leader) = &cluster.leader
            && cluster.replicas.len() == 2
            && cluster
                .replicas
                .iter()
                .all(|peer| peer.current && !peer.offline)
        {
            return leader.clone();
        }
        assert!(
            Instant::now() < deadline,
            "stream {name} replicas not all current: {cluster:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_node_cluster_serves_r3_loses_a_node_and_takes_it_back() {
    let cluster = NatsCluster::start();
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    let ports: std::collections::BTreeSet<u16> =
        cluster.nodes().iter().map(NatsServer::port).collect();
    assert_eq!(ports.len(), 3, "each node its own client port");
    let leader = cluster.meta_leader().expect("a meta leader");
    for node in cluster.nodes() {
        assert!(node.is_healthy(), "{} not healthy", node.name());
        assert_eq!(
            node.meta_leader().as_deref(),
            Some(cluster.node(leader).name())
        );
    }

    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(urls.clone())
        .await
        .expect("connect");
    let js = jetstream::new(client);
    let created = js
        .create_stream(stream::Config {
            name: "FAULTS".to_owned(),
            subjects: vec!["faults.>".to_owned()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("create an R3 stream");
    assert_eq!(created.cached_info().config.num_replicas, 3);
    assert_eq!(publish_until_acked(&js, "faults.a", "one").await, 1);

    // Lose the stream's leader: the other two elect a new one and keep taking writes.
    let stream_leader = wait_all_replicas_current(&js, "FAULTS").await;
    let lost = cluster
        .nodes()
        .iter()
        .position(|node| node.name() == stream_leader)
        .expect("the stream leader is a node");
    cluster.node(lost).kill();
    assert!(!cluster.node(lost).is_running());
    assert_eq!(publish_until_acked(&js, "faults.b", "two").await, 2);

    // Back on its ports and store, it rejoins and catches up.
    let port = cluster.node(lost).port();
    cluster.restart_node(lost);
    assert_eq!(cluster.node(lost).port(), port);
    assert!(cluster.node(lost).is_healthy());
    wait_all_replicas_current(&js, "FAULTS").await;
    let mut stream = js.get_stream("FAULTS").await.expect("stream");
    assert_eq!(stream.info().await.expect("info").state.messages, 2);

    // A graceful stop works the same way.
    let other = (lost + 1) % 3;
    cluster.node(other).stop().expect("was running");
    assert_eq!(publish_until_acked(&js, "faults.c", "three").await, 3);
    cluster.restart_node(other);
    wait_all_replicas_current(&js, "FAULTS").await;
}
