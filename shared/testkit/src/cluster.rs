//! Three nats-servers routed into one JetStream cluster on the loopback, for fault tests (a node killed,
//! stopped, restarted).

use std::time::Duration;

use crate::nats::{NatsServer, NatsServerBuilder};
use crate::{Error, free_port, poll_blocking};

const NODES: usize = 3;
/// Forming a cluster is a meta leader election over routes that retry every second or so.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A three-node JetStream cluster: each node has its own client, cluster and monitoring port on 127.0.0.1,
/// its own temp store, and routes to the other two. Every node is killed and its store removed on drop.
///
/// [`NatsCluster::start`] returns once every node answers `/healthz` (a meta leader is elected and every
/// node is current with it), so an R3 stream can be created right away.
pub struct NatsCluster {
    name: String,
    nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three nodes (`n1`..`n3`, cluster `jetfn_test_cluster`) and waits until the cluster has formed;
    /// panics with the nodes' logs if it does not within 30 s.
    pub fn start() -> Self {
        Self::try_start_with(|builder| builder).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Like [`NatsCluster::start`], with each node's builder adjusted by `adjust` (e.g. a `sync_interval`,
    /// extra config); the ports, names, stores and cluster block are set by the cluster.
    pub fn try_start_with(
        adjust: impl Fn(NatsServerBuilder) -> NatsServerBuilder,
    ) -> Result<Self, Error> {
        let name = "jetfn_test_cluster".to_owned();
        let cluster_ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
        let mut nodes = Vec::with_capacity(NODES);
        for (i, &cluster_port) in cluster_ports.iter().enumerate() {
            let routes: Vec<String> = cluster_ports
                .iter()
                .filter(|&&port| port != cluster_port)
                .map(|port| format!("\"nats-route://127.0.0.1:{port}\""))
                .collect();
            let cluster_block = format!(
                "cluster {{\n  name: {name}\n  listen: \"127.0.0.1:{cluster_port}\"\n  routes: [{}]\n}}",
                routes.join(", ")
            );
            let node_name = format!("n{}", i + 1);
            let builder = adjust(NatsServer::builder())
                .server_name(&node_name)
                .label(format!("nats {node_name}"))
                .port(free_port())
                .monitor_port(free_port())
                .config(cluster_block);
            nodes.push(builder.try_start()?);
        }
        let cluster = Self { name, nodes };
        cluster.wait_formed(FORM_TIMEOUT)?;
        Ok(cluster)
    }

    /// The cluster's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The nodes, in start order (`n1`, `n2`, `n3`).
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// Node `i` (0-based): to kill, stop or restart it, or read its log.
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Every node's client URL, comma-separated: the value for `NATS_URL`, so a client fails over.
    pub fn url(&self) -> String {
        self.urls().join(",")
    }

    /// Every node's client URL (`nats://127.0.0.1:<port>`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::url).collect()
    }

    /// The current meta leader's index, as the running nodes see it.
    pub fn meta_leader(&self) -> Option<usize> {
        let leader = self
            .nodes
            .iter()
            .filter(|node| node.is_running())
            .find_map(NatsServer::meta_leader)?;
        self.nodes.iter().position(|node| node.name() == leader)
    }

    /// Restarts node `i` on its ports and store (stopping it first if it runs) and waits until it is back in
    /// the cluster (healthy, current with the meta leader).
    pub fn restart_node(&self, i: usize) {
        self.nodes[i].restart();
        self.wait_formed(FORM_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Waits until every running node answers `/healthz` and they agree on one meta leader.
    pub fn wait_formed(&self, timeout: Duration) -> Result<(), Error> {
        let formed = poll_blocking(timeout, || {
            let running: Vec<&NatsServer> =
                self.nodes.iter().filter(|node| node.is_running()).collect();
            let healthy = running.iter().all(|node| node.is_healthy());
            let leaders: Vec<Option<String>> =
                running.iter().map(|node| node.meta_leader()).collect();
            let agreed = leaders.first().is_some_and(Option::is_some)
                && leaders.iter().all(|leader| *leader == leaders[0]);
            (healthy && agreed).then_some(())
        });
        formed.ok_or_else(|| {
            let logs: Vec<String> = self
                .nodes
                .iter()
                .map(|node| {
                    format!(
                        "--- {} (running {}, healthy {}, leader {:?}):\n{}",
                        node.name(),
                        node.is_running(),
                        node.is_healthy(),
                        node.meta_leader(),
                        crate::tail(&node.log(), 25)
                    )
                })
                .collect();
            Error::new(format!(
                "cluster {} did not form (a healthy meta group on every running node) within {timeout:?}:\n{}",
                self.name,
                logs.join("\n")
            ))
        })
    }
}
