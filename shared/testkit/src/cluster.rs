//! Three nats-servers routed into one JetStream cluster on the loopback, for fault tests (a node killed,
//! stopped, restarted).

use std::net::IpAddr;
use std::time::Duration;

use crate::nats::{NatsServer, NatsServerBuilder};
use crate::netns::Netns;
use crate::{Error, free_port, poll_blocking};

const NODES: usize = 3;
/// How many times a loopback cluster is started on fresh ports when one of its ports was taken meanwhile.
const PORT_TRIES: u32 = 3;

/// Forming a cluster is a meta leader election over routes that retry every second or so.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// A three-node JetStream cluster: each node has its own client, cluster and monitoring port on 127.0.0.1,
/// its own temp store, and routes to the other two. Every node is killed and its store removed on drop.
///
/// [`NatsCluster::start`] returns once every node answers `/healthz` (a meta leader is elected and every
/// node is current with it), so an R3 stream can be created right away.
pub struct NatsCluster {
    name: String,
    /// Before `net`: the servers are killed before their namespaces go.
    nodes: Vec<NatsServer>,
    net: Option<Netns>,
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
        let hosts = [IpAddr::from([127, 0, 0, 1]); NODES];
        // The ports are picked before the nodes bind them (the routes name each other's), so another process
        // (a parallel test) may take one in between: such a start is tried again on fresh ports.
        let mut tries = 1;
        loop {
            let cluster_ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect();
            let ports: Vec<(u16, u16)> = (0..NODES).map(|_| (free_port(), free_port())).collect();
            match Self::start_nodes(&hosts, &cluster_ports, &ports, None, &adjust) {
                Err(err)
                    if tries < PORT_TRIES && err.to_string().contains("address already in use") =>
                {
                    tries += 1;
                }
                started => return started,
            }
        }
    }

    /// Like [`NatsCluster::start`], each node in a network namespace of its own (made here, removed on drop)
    /// on one bridge, so [`NatsCluster::isolate`] can cut a node off the others and off this process. Needs root
    /// (`ip netns`, veth, bridge).
    ///
    /// # Errors
    /// The namespaces cannot be made (not root, no `ip`), or the cluster does not form.
    pub fn try_start_in_netns(
        adjust: impl Fn(NatsServerBuilder) -> NatsServerBuilder,
    ) -> Result<Self, Error> {
        let net = Netns::create(NODES)?;
        let hosts: Vec<IpAddr> = (0..NODES).map(|i| net.addr(i)).collect();
        // Each node has a network stack of its own: the well-known ports never collide.
        let cluster_ports = [6222; NODES];
        let ports = [(4222, 8222); NODES];
        Self::start_nodes(&hosts, &cluster_ports, &ports, Some(net), adjust)
    }

    fn start_nodes(
        hosts: &[IpAddr],
        cluster_ports: &[u16],
        ports: &[(u16, u16)],
        net: Option<Netns>,
        adjust: impl Fn(NatsServerBuilder) -> NatsServerBuilder,
    ) -> Result<Self, Error> {
        let name = "jetfn_test_cluster".to_owned();
        let mut cluster = Self {
            name: name.clone(),
            nodes: Vec::with_capacity(NODES),
            net,
        };
        for i in 0..NODES {
            let routes: Vec<String> = (0..NODES)
                .filter(|&j| j != i)
                .map(|j| format!("\"nats-route://{}:{}\"", hosts[j], cluster_ports[j]))
                .collect();
            let cluster_block = format!(
                "cluster {{\n  name: {name}\n  listen: \"{}:{}\"\n  routes: [{}]\n}}",
                hosts[i],
                cluster_ports[i],
                routes.join(", ")
            );
            let node_name = format!("n{}", i + 1);
            let mut builder = adjust(NatsServer::builder())
                .server_name(&node_name)
                .label(format!("nats {node_name}"))
                .host(hosts[i])
                .port(ports[i].0)
                .monitor_port(ports[i].1)
                .config(cluster_block);
            if let Some(net) = &cluster.net {
                builder = builder.netns(net.namespace(i));
            }
            cluster.nodes.push(builder.try_start()?);
        }
        cluster.wait_formed(FORM_TIMEOUT)?;
        Ok(cluster)
    }

    /// Cuts node `i` off the other nodes and off every client outside its namespace (its link to the bridge
    /// goes down: packets are dropped, nothing is refused). Panics for a cluster not started in namespaces.
    pub fn isolate(&self, i: usize) {
        self.netns()
            .set_link(i, false)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Undoes [`NatsCluster::isolate`].
    pub fn heal(&self, i: usize) {
        self.netns()
            .set_link(i, true)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    fn netns(&self) -> &Netns {
        self.net
            .as_ref()
            .expect("a cluster started with NatsCluster::try_start_in_netns")
    }

    /// The index of the node named `name` (`n1`..`n3`), e.g. a stream's `cluster.leader`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name() == name)
    }

    /// Crashes every node (SIGKILL), then starts them all again on their ports and stores and waits until the
    /// cluster has formed again.
    pub fn restart_all(&self) {
        for node in &self.nodes {
            node.kill();
        }
        // All at once: a lone node cannot finish starting JetStream without a quorum to talk to, so each
        // waits only for its own listener here, and for the others in `wait_formed`.
        for node in &self.nodes {
            node.try_restart().unwrap_or_else(|e| panic!("{e}"));
        }
        self.wait_formed(FORM_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e}"));
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

    /// Every node's client URL (`nats://<host>:<port>`).
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
