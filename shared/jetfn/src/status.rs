//! `jetfn status`: what an operator checks first: per stream, messages and bytes; per function, what waits,
//! what is in flight, what was redelivered, and whether it is paused.

use async_nats::jetstream;
use futures::TryStreamExt as _;

pub(crate) async fn run(client: async_nats::Client) -> anyhow::Result<()> {
    let js = jetstream::new(client);
    let mut names: Vec<String> = js.stream_names().try_collect().await?;
    names.sort();
    println!(
        "{:<18} {:>10} {:>12}  consumers",
        "stream", "messages", "bytes"
    );
    let mut rows = Vec::new();
    for name in &names {
        let mut stream = js.get_stream(name).await?;
        let info = stream.info().await?.clone();
        println!(
            "{:<18} {:>10} {:>12}  {}",
            name, info.state.messages, info.state.bytes, info.state.consumer_count
        );
        let consumers: Vec<jetstream::consumer::Info> = stream.consumers().try_collect().await?;
        for consumer in consumers {
            rows.push((name.clone(), consumer));
        }
    }
    println!();
    println!(
        "{:<12} {:<16} {:>9} {:>9} {:>11} {:>7}",
        "stream", "function", "waiting", "in-flight", "redelivered", "paused"
    );
    for (stream, consumer) in rows {
        println!(
            "{:<12} {:<16} {:>9} {:>9} {:>11} {:>7}",
            stream,
            consumer.name,
            consumer.num_pending,
            consumer.num_ack_pending,
            consumer.num_redelivered,
            if consumer.paused { "yes" } else { "no" }
        );
    }
    Ok(())
}
