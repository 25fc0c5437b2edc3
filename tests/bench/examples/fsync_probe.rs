//! Counts nats-server's durable writes (fsync, fdatasync, and the writes and file operations around them) for N
//! KV creates, N KV updates and N confirmed acks, sent concurrently one by one and as one atomic batch, under
//! `sync_interval: always` (issue 13). Run: `cargo run --release -p jetfn-bench --example fsync_probe -- 256`.
//! It attaches `strace -f -c` to the server for each scenario, so it needs strace and ptrace rights.

use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::StreamExt as _;
use testkit::{NatsServer, SyncInterval};

const TRACED: &str = "fsync,fdatasync,write,pwrite64,openat,renameat,unlinkat,mkdirat";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(256), |arg| arg.parse())?;
    let server = NatsServer::builder()
        .sync_interval(SyncInterval::Always)
        .start();
    let pid = server.pid().expect("nats-server runs");
    let client = async_nats::connect(server.url()).await?;
    let js = jetstream::new(client.clone());
    let store = js
        .create_key_value(kv::Config {
            bucket: "probe".into(),
            history: 1,
            max_age: Duration::from_secs(7_948_800),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let mut config = js
        .get_stream("KV_probe")
        .await?
        .info()
        .await?
        .config
        .clone();
    config.allow_atomic_publish = true;
    js.update_stream(config).await?;

    report(
        "idle 300 ms",
        n,
        traced(pid, async {
            tokio::time::sleep(Duration::from_millis(300)).await;
        })
        .await,
    );

    let keys: Vec<String> = (0..n).map(|i| format!("single.{i}")).collect();
    let revisions = traced(pid, async {
        futures::future::join_all(
            keys.iter()
                .map(|key| store.create(key, Bytes::from_static(b"pending t 1"))),
        )
        .await
    })
    .await;
    let (stats, revisions) = revisions;
    let revisions: Vec<u64> = revisions.into_iter().collect::<Result<_, _>>()?;
    report("concurrent KV creates", n, (stats, ()));
    let (stats, updated) = traced(pid, async {
        futures::future::join_all(
            keys.iter()
                .zip(&revisions)
                .map(|(key, revision)| store.update(key, Bytes::from_static(b"done 1"), *revision)),
        )
        .await
    })
    .await;
    updated.into_iter().collect::<Result<Vec<_>, _>>()?;
    report("concurrent KV updates (CAS)", n, (stats, ()));

    let batch_keys: Vec<String> = (0..n).map(|i| format!("batch.{i}")).collect();
    let (stats, ack) = traced(pid, atomic(&client, &batch_keys, "create", |_| 0)).await;
    println!("  batch create ack: {ack}");
    report("one atomic batch of creates", n, (stats, ()));
    let first: u64 = serde_json::from_str::<serde_json::Value>(&ack)?["seq"]
        .as_u64()
        .unwrap_or(0)
        .saturating_sub(n as u64 - 1);
    let (stats, ack) = traced(
        pid,
        atomic(&client, &batch_keys, "update", |i| first + i as u64),
    )
    .await;
    println!("  batch update ack: {ack}");
    report("one atomic batch of updates (CAS)", n, (stats, ()));

    // Confirmed acks: N events in a stream, one pull, each acked by a request on its reply subject.
    let events = js
        .create_stream(stream::Config {
            name: "PROBE".into(),
            subjects: vec!["probe.>".into()],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    for i in 0..n {
        js.publish(format!("probe.{i}"), Bytes::from_static(b"{}"))
            .await?
            .await?;
    }
    let consumer = events
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("probe".into()),
            max_ack_pending: 10_000,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.fetch().max_messages(n).messages().await?;
    let mut held = Vec::new();
    while let Some(message) = messages.next().await {
        held.push(message.map_err(|err| anyhow::anyhow!("{err}"))?);
    }
    let (stats, acked) = traced(pid, async {
        futures::future::join_all(held.iter().map(|message| {
            client.request(
                message.reply.clone().expect("a reply subject"),
                Bytes::from_static(b"+ACK"),
            )
        }))
        .await
    })
    .await;
    acked.into_iter().collect::<Result<Vec<_>, _>>()?;
    report("concurrent confirmed acks", n, (stats, ()));
    Ok(())
}

/// N writes to `$KV.probe.<key>` as one atomic batch, each with its own `Nats-Expected-Last-Subject-Sequence`;
/// only the commit is a request. Returns the commit's reply.
async fn atomic(
    client: &async_nats::Client,
    keys: &[String],
    what: &str,
    expected: impl Fn(usize) -> u64,
) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let mut reply = None;
    for (i, key) in keys.iter().enumerate() {
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected(i).to_string().as_str(),
        );
        let subject = format!("$KV.probe.{key}");
        let payload = Bytes::from(format!("{what} {i}"));
        if i + 1 == keys.len() {
            headers.insert("Nats-Batch-Commit", "1");
            reply = Some(
                client
                    .request_with_headers(subject, headers, payload)
                    .await
                    .map(|message| String::from_utf8_lossy(&message.payload).into_owned())
                    .unwrap_or_else(|err| format!("request failed: {err}")),
            );
        } else {
            client
                .publish_with_headers(subject, headers, payload)
                .await
                .expect("publish");
        }
    }
    reply.unwrap_or_default()
}

#[derive(Debug, Default)]
struct Calls(Vec<(String, u64)>);

async fn traced<T>(pid: u32, work: impl std::future::Future<Output = T>) -> (Calls, T) {
    let out = std::env::temp_dir().join(format!("fsync-probe-{}.txt", uuid::Uuid::now_v7()));
    let log = std::env::var_os("PROBE_LOG").is_some();
    let mode = if log { "-y" } else { "-c" };
    let mut strace = Command::new("strace")
        .args(["-f", mode, "-e", &format!("trace={TRACED}"), "-o"])
        .arg(&out)
        .args(["-p", &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("strace runs");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let value = work.await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = Command::new("kill")
        .args(["-INT", &strace.id().to_string()])
        .status();
    let _ = strace.wait();
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let _ = std::fs::remove_file(&out);
    if log {
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| !line.contains("pwrite64") || line.contains("blk"))
            .collect();
        let shown: Vec<&str> = lines.iter().take(40).copied().collect();
        println!("--- strace ({} lines)\n{}", lines.len(), shown.join("\n"));
    }
    let mut calls = Calls::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if fields.len() >= 5 && fields[0].parse::<f64>().is_ok() {
            let name = fields[fields.len() - 1].to_owned();
            if let Ok(count) = fields[3].parse::<u64>() {
                calls.0.push((name, count));
            }
        }
    }
    (calls, value)
}

fn report(what: &str, n: usize, (calls, ()): (Calls, ())) {
    let shown: Vec<String> = calls
        .0
        .iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect();
    println!("{what} (N = {n}): {}", shown.join(", "));
}
