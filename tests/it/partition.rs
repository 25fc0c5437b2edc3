//! A network partition: the three nodes each in a network namespace of their own (testkit makes them and removes
//! them on drop, a panic included), and the node leading the EVENTS stream cut off the other two and off every
//! client. A function connected to the majority keeps consuming through it; after healing, nothing was lost,
//! nothing sent twice, and the replicas agree.

use std::time::{Duration, Instant};

use testkit::NatsCluster;

use crate::cluster::{
    ClusterSystem, FAILOVER, Producer, Replicas, longest_stall, wait_replicas_agree,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_function_keeps_consuming_through_the_majority_while_the_stream_leader_is_cut_off() {
    let cluster = NatsCluster::try_start_in_netns(|builder| builder).unwrap_or_else(|e| {
        panic!("the partition test needs network namespaces (root and iproute2): {e}")
    });
    let mut system = ClusterSystem::provision(&cluster, &cluster.url(), Replicas::InFiles).await;
    let leader = system.stream_leader("EVENTS").await;
    let cut = cluster.index_of(&leader).expect("a node of the cluster");
    let majority: Vec<String> = (0..3)
        .filter(|&i| i != cut)
        .map(|i| cluster.node(i).url())
        .collect();
    let welcome = system.welcome(&majority.join(",")).await;
    system.use_nodes(&majority).await;
    let producer = Producer::start(system.publisher.clone(), "p", Duration::from_millis(20));
    producer.wait_more(20).await;

    let cut_at = Instant::now();
    cluster.isolate(cut);
    producer.wait_more(50).await;
    // Everything acked so far is mailed while the old leader is still cut off.
    let acked = producer.acked();
    let deadline = Instant::now() + FAILOVER;
    while system.smtp.count() < acked {
        assert!(
            Instant::now() < deadline,
            "with {} cut off, {} of {acked} acked events mailed; welcome said:\n{}",
            cluster.node(cut).name(),
            system.smtp.count(),
            crate::cluster::tail(&welcome.output(), 40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new_leader = system.stream_leader("EVENTS").await;
    assert_ne!(
        new_leader, leader,
        "the majority elected a new stream leader"
    );

    let healed_at = Instant::now();
    cluster.heal(cut);
    cluster
        .wait_formed(FAILOVER)
        .unwrap_or_else(|e| panic!("{e}"));
    producer.wait_more(20).await;
    let acked = producer.finish().await;
    eprintln!(
        "stream leader {leader} cut off: emails stalled up to {:?}",
        longest_stall(&system.smtp, cut_at, healed_at)
    );
    system.assert_each_sent_once(&acked, &[&welcome]).await;
    wait_replicas_agree(&cluster, "EVENTS").await;
}
