//! Consume throughput: raw async-nats pull consumers (the baselines) and the jetfn runtime, over the same
//! prefilled window of the real `EVENTS` stream, each on a fresh durable consumer with the same configuration.
//!
//! Every row is timed the same way, from the server's side: the consumer's ack floor, polled every 5 ms on a
//! separate connection, from the first poll that sees an ack to the poll that sees the whole window acked (or the
//! time cap). So a row counts only events whose ack the server has recorded, and start-up (connect, bind, the
//! first pull) is outside every row alike.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::consumer::{DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::{self, kv, stream};
use events::UserRegistered;
use futures::StreamExt as _;
use runtime::config::{JobConfig, NatsConfig};
use runtime::{Job, JobError, Runtime};
use serde_json::json;
use tokio::sync::{Semaphore, oneshot};

use crate::report::Row;
use crate::stats::Quantiles;

/// The pull batch and the cap on unacked messages, for every consumer row alike. The runtime pulls batches of
/// `min(max_ack_pending, 256)` and runs at most `max_ack_pending` handlers.
pub const IN_FLIGHT: i64 = 256;

/// Which consumer a row runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A raw pull consumer that acks each message with a plain `+ACK` publish (no confirmation).
    RawAck,
    /// A raw pull consumer that double-acks each message with async-nats' `Message::double_ack` (which
    /// subscribes a fresh inbox per ack), 256 in flight.
    RawDoubleAck,
    /// A raw pull consumer that confirms each ack with async-nats' `Client::request` (the connection's shared reply
    /// subscription, a random token per request), a task per message, 256 in flight: what the runtime did before
    /// ANALYSIS section 41, and issue 13's baseline for confirmed acks.
    RawRequestAck,
    /// A raw pull consumer that confirms each ack the way the runtime does since ANALYSIS section 41: published with
    /// a reply subject of its own inbox and a counter, one subscription for every reply, the replies matched back by
    /// the counter; one loop, no task per message, 256 in flight. The leanest confirmed ack the client allows.
    RawInboxAck,
    /// The jetfn runtime with a handler that does nothing, confirmed acks (the default).
    RuntimeNoop,
    /// The jetfn runtime with a handler that does nothing and `JOB_ACK=plain`.
    RuntimeNoopPlain,
    /// The jetfn runtime the way the email functions run it: one `job.once` ledger effect per event (a KV create
    /// and a KV update), then the double ack.
    RuntimeLedger,
}

impl Kind {
    /// A short name for consumer names and logs.
    pub fn slug(self) -> &'static str {
        match self {
            Self::RawAck => "raw-ack",
            Self::RawDoubleAck => "raw-double-ack",
            Self::RawRequestAck => "raw-request-ack",
            Self::RawInboxAck => "raw-inbox-ack",
            Self::RuntimeNoop => "runtime-noop",
            Self::RuntimeNoopPlain => "runtime-noop-plain",
            Self::RuntimeLedger => "runtime-ledger",
        }
    }
}

/// The stream sequences a consume row reads.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The first sequence.
    pub start: u64,
    /// How many events from there.
    pub count: u64,
}

/// A measured rate.
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    /// Events acked between the first and the last poll.
    pub events: u64,
    /// Seconds between them.
    pub secs: f64,
    /// CPU seconds per acked event over the whole row (this process: the consumer side), 10 ms resolution.
    pub client_cpu_per_event: f64,
    /// The same for nats-server.
    pub server_cpu_per_event: f64,
    /// `write` calls of this process per acked event (`/proc/self/io` `syscw`): how many sends the connection
    /// wrote together (ANALYSIS section 30).
    pub client_writes_per_event: f64,
    /// `read` calls of nats-server per acked event (`syscr`): each one a wake-up and a parse of what came in.
    pub server_reads_per_event: f64,
}

impl Rate {
    /// Events per second.
    pub fn per_sec(self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let events = self.events as f64;
        if self.secs > 0.0 {
            events / self.secs
        } else {
            0.0
        }
    }
}

/// What every consume row shares.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The server.
    pub url: String,
    /// A JetStream context for creating consumers and polling them.
    pub js: jetstream::Context,
    /// The welcome consumer's definition from `infra/nats`, the template of every bench consumer.
    pub template: pull::Config,
    /// What to read.
    pub window: Window,
    /// A row stops at this much wall time even if the window is not fully acked.
    pub cap: Duration,
    /// nats-server's process ids (one, or a cluster's nodes), for their CPU time.
    pub server_pids: Vec<u32>,
    /// The ledger bucket allows atomic batches: as `infra/nats/kv/jetfn-ledger.json` advises, where the server
    /// runs `sync_interval: always` (each write an fsync), not with a periodic sync (where a batch costs the server
    /// more CPU than it saves).
    pub atomic_batches: bool,
    /// Copies of the ledger bucket: 1 on one node, 3 on a cluster (as `jetfn infra apply --replicas 3` makes it).
    pub ledger_replicas: usize,
    /// The CA that signed the certificate of a server that serves only TLS: the raw consumers then require TLS and
    /// trust it, and the runtime gets it as `NATS_TLS_CA_FILE`, so both pay what a deployed function pays.
    pub tls_ca: Option<PathBuf>,
    /// A client certificate and its key, for a server that asks for one (mutual TLS): the raw consumers present it,
    /// and the runtime gets it as `NATS_TLS_CERT_FILE` and `NATS_TLS_KEY_FILE`.
    pub tls_client: Option<(PathBuf, PathBuf)>,
}

/// Runs one row once and returns its rate.
pub async fn run(setup: &Setup, kind: Kind) -> anyhow::Result<Rate> {
    let name = format!("bench-{}-{}", kind.slug(), short_id());
    let stream = setup.js.get_stream("EVENTS").await?;
    let mut config = setup.template.clone();
    config.durable_name = Some(name.clone());
    config.name = None;
    config.description = Some(format!("jetfn-bench {}", kind.slug()));
    config.deliver_policy = DeliverPolicy::ByStartSequence {
        start_sequence: setup.window.start,
    };
    config.max_ack_pending = IN_FLIGHT;
    stream
        .create_consumer(config)
        .await
        .with_context(|| format!("creating consumer {name}"))?;
    let cpu_before = (cpu_secs("self"), servers_cpu_secs(&setup.server_pids));
    let io_before = (io_calls("self").1, servers_reads(&setup.server_pids));

    let one_thread = threads_one();
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped = async {
        let _ = stopped.await;
    };
    let mut bucket = None;
    let side = match kind {
        Kind::RawAck | Kind::RawDoubleAck | Kind::RawRequestAck | Kind::RawInboxAck => {
            let (url, ca, identity, name) = (
                setup.url.clone(),
                setup.tls_ca.clone(),
                setup.tls_client.clone(),
                name.clone(),
            );
            start_side(one_thread, move || async move {
                let client = connect(&url, ca.as_deref(), identity.as_ref()).await?;
                let consumer: PullConsumer = jetstream::new(client.clone())
                    .get_stream("EVENTS")
                    .await?
                    .get_consumer(&name)
                    .await
                    .map_err(|err| anyhow::anyhow!("binding {name}: {err}"))?;
                tokio::select! {
                    consumed = raw_consume(client.clone(), consumer, kind) => consumed?,
                    () = stopped => {}
                }
                client.flush().await?;
                Ok(())
            })
        }
        Kind::RuntimeNoop | Kind::RuntimeNoopPlain => {
            let ack = if kind == Kind::RuntimeNoop {
                "confirmed"
            } else {
                "plain"
            };
            let (setup, name) = (setup.clone(), name.clone());
            start_side(one_thread, move || async move {
                let runtime = runtime_for(&setup, &name, "jetfn-ledger", ack).await?;
                runtime
                    .serve(
                        |_job: Job<UserRegistered>| async { Ok::<(), JobError>(()) },
                        stopped,
                    )
                    .await
            })
        }
        Kind::RuntimeLedger => {
            // A fresh ledger per run: the same events are read again, and a ledger that remembered them would
            // skip every effect.
            let fresh = format!("bench-ledger-{}", short_id());
            create_ledger_with(
                &setup.js,
                &fresh,
                setup.atomic_batches,
                setup.ledger_replicas,
            )
            .await?;
            bucket = Some(fresh.clone());
            let (setup, name) = (setup.clone(), name.clone());
            start_side(one_thread, move || async move {
                let runtime = runtime_for(&setup, &name, &fresh, "confirmed").await?;
                runtime.serve(email_shape, stopped).await
            })
        }
    };
    let result = measure(&stream, &name, setup.window, setup.cap).await;
    let _ = stop.send(());
    side.await
        .map_err(|_| anyhow::anyhow!("the consuming side of {name} ended without a result"))??;
    if let Some(bucket) = bucket {
        setup.js.delete_key_value(&bucket).await?;
    }
    let (client_cpu, server_cpu) = (
        cpu_secs("self") - cpu_before.0,
        servers_cpu_secs(&setup.server_pids) - cpu_before.1,
    );
    let (client_writes, server_reads) = (
        io_calls("self").1.saturating_sub(io_before.0),
        servers_reads(&setup.server_pids).saturating_sub(io_before.1),
    );
    let acked = stream
        .consumer_info(&name)
        .await?
        .ack_floor
        .stream_sequence
        .saturating_sub(setup.window.start - 1)
        .max(1);
    stream.delete_consumer(&name).await?;
    #[allow(clippy::cast_precision_loss)]
    let acked = acked as f64;
    #[allow(clippy::cast_precision_loss)]
    let (client_writes, server_reads) = (client_writes as f64, server_reads as f64);
    result.map(|rate| Rate {
        client_cpu_per_event: client_cpu / acked,
        server_cpu_per_event: server_cpu / acked,
        client_writes_per_event: client_writes / acked,
        server_reads_per_event: server_reads / acked,
        ..rate
    })
}

/// `JETFN_BENCH_THREADS=one`: every consume row's consuming side, raw and runtime alike, on a one-thread runtime of
/// its own (tests/bench/ANALYSIS.md, section 37). A diagnostic: the full run refuses it.
pub fn threads_one() -> bool {
    std::env::var("JETFN_BENCH_THREADS").as_deref() == Ok("one")
}

/// Starts a row's consuming side (its connection, its consumer or runtime, until it is stopped): on the bench's
/// runtime, or with `one_thread` on a one-thread tokio runtime of its own in an OS thread of its own, as
/// `runtime::threads` runs an email function (`Threads::One`). The receiver gets the side's result.
fn start_side<F, Fut>(one_thread: bool, make: F) -> oneshot::Receiver<anyhow::Result<()>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let (done, result) = oneshot::channel();
    if one_thread {
        std::thread::spawn(move || {
            let outcome = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|runtime| runtime.block_on(make()));
            let _ = done.send(outcome);
        });
    } else {
        tokio::spawn(async move {
            let _ = done.send(make().await);
        });
    }
    result
}

/// User + system CPU seconds of a process (`self` or a pid) from /proc, in clock ticks of 10 ms; 0 if unreadable.
/// A process's `read` and `write` system calls so far (`syscr`, `syscw` of `/proc/<pid>/io`, every thread);
/// zeros where the file cannot be read.
pub fn io_calls(pid: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|value| value.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field("syscr:"), field("syscw:"))
}

fn servers_reads(pids: &[u32]) -> u64 {
    pids.iter().map(|pid| io_calls(&pid.to_string()).0).sum()
}

pub fn cpu_secs(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces: utime and stime are 12th and 13th.
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11..13).map_or(0, |both| {
        both.iter().filter_map(|f| f.parse::<u64>().ok()).sum()
    });
    #[allow(clippy::cast_precision_loss)]
    let secs = ticks as f64 / 100.0;
    secs
}

/// A duplicate-window row (effect end to `done` acknowledged) from what the ledger recorded in this process.
pub fn window_row(
    id: String,
    section: &'static str,
    label: String,
    durability: &str,
    window: runtime::ledger_window::Window,
) -> Row {
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    let mut row = Row::latency(
        id,
        section,
        label,
        durability,
        Quantiles {
            p50: ms(window.p50),
            p99: ms(window.p99),
            max: ms(window.max),
            count: usize::try_from(window.count).unwrap_or(usize::MAX),
        },
    );
    row.note = format!(
        "mean {:.2} ms; quantiles are bucket bounds (within 19%)",
        ms(window.mean)
    );
    row
}

/// A connection to `url`, one server or a cluster's comma-separated list, read as a function reads `NATS_URL`
/// (async-nats parses only a single URL from a string). With `tls_ca`, TLS is required and the server's certificate
/// verified against that CA, so a raw baseline never falls back to plain text; with `tls_client` as well, that
/// certificate is presented to a server that asks for one.
pub async fn connect(
    url: &str,
    tls_ca: Option<&Path>,
    tls_client: Option<&(PathBuf, PathBuf)>,
) -> anyhow::Result<async_nats::Client> {
    let servers = runtime::nats_url::parse(url)
        .map_err(|err| anyhow::anyhow!("parsing the server list {url}: {err}"))?;
    let mut options = async_nats::ConnectOptions::new();
    if let Some(ca) = tls_ca {
        options = options
            .add_root_certificates(ca.to_path_buf())
            .require_tls(true);
    }
    if let Some((cert, key)) = tls_client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options.connect(servers).await?)
}

/// The CPU seconds of several processes together (a cluster's nodes).
pub fn servers_cpu_secs(pids: &[u32]) -> f64 {
    pids.iter().map(|pid| cpu_secs(&pid.to_string())).sum()
}

/// A bucket configured like `infra/nats/kv/jetfn-ledger.json`, with `atomic_batches` as given;
/// `JETFN_BENCH_LEDGER_BATCHES=on` or `off` overrides it (the A/B of tests/bench/ANALYSIS.md, section 8).
pub async fn create_ledger(
    js: &jetstream::Context,
    bucket: &str,
    atomic_batches: bool,
) -> anyhow::Result<()> {
    create_ledger_with(js, bucket, atomic_batches, 1).await
}

/// [`create_ledger`] with `replicas` copies (a cluster's R3).
pub async fn create_ledger_with(
    js: &jetstream::Context,
    bucket: &str,
    atomic_batches: bool,
    replicas: usize,
) -> anyhow::Result<()> {
    js.create_key_value(kv::Config {
        bucket: bucket.to_owned(),
        history: 1,
        max_age: Duration::from_secs(7_948_800),
        storage: stream::StorageType::File,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .with_context(|| format!("creating KV bucket {bucket}"))?;
    // `atomic_batches` in the file: the ledger commits the claims (and the dones) of concurrent messages together.
    let atomic_batches = match std::env::var("JETFN_BENCH_LEDGER_BATCHES").as_deref() {
        Ok("on") => true,
        Ok("off") => false,
        _ => atomic_batches,
    };
    if !atomic_batches {
        return Ok(());
    }
    let mut config = js
        .get_stream(format!("KV_{bucket}"))
        .await?
        .info()
        .await?
        .config
        .clone();
    config.allow_atomic_publish = true;
    js.update_stream(config).await?;
    Ok(())
}

/// The email shape's handler: one ledger effect that does nothing, so a row measures the claim, the `done` write
/// and the confirmed ack a welcome email pays, without the email. The backlog rows drain with it too.
pub async fn email_shape(job: Job<UserRegistered>) -> Result<(), JobError> {
    job.once("welcome-email", || async { Ok::<(), JobError>(()) })
        .await?;
    Ok(())
}

/// A runtime bound to `consumer`, configured as a function's would be from `JOB_*` (defaults otherwise).
pub async fn runtime_for(
    setup: &Setup,
    consumer: &str,
    ledger: &str,
    ack: &str,
) -> anyhow::Result<Runtime> {
    let job: JobConfig = serde_json::from_value(json!({
        "ack": ack,
        "stream": "EVENTS",
        "consumer": consumer,
        "ledger_bucket": ledger,
        "failures_bucket": "jetfn-failures",
        "drain_timeout_secs": 10,
    }))?;
    // The CA goes through the runtime's own configuration, the path `NATS_TLS_CA_FILE` takes in a function.
    let nats = NatsConfig {
        tls_ca_file: setup.tls_ca.clone(),
        tls_cert_file: setup.tls_client.as_ref().map(|(cert, _)| cert.clone()),
        tls_key_file: setup.tls_client.as_ref().map(|(_, key)| key.clone()),
        ..NatsConfig::local(setup.url.clone())
    };
    Runtime::new("bench", &nats, job).await
}

async fn raw_consume(
    client: async_nats::Client,
    consumer: PullConsumer,
    kind: Kind,
) -> anyhow::Result<()> {
    let batch = usize::try_from(IN_FLIGHT)?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await?;
    if kind == Kind::RawAck {
        while let Some(message) = messages.next().await {
            message
                .map_err(|err| anyhow::anyhow!("{err}"))?
                .ack()
                .await
                .map_err(|err| anyhow::anyhow!("{err}"))?;
        }
        return Ok(());
    }
    if kind == Kind::RawInboxAck {
        return inbox_acks(&client, messages, batch).await;
    }
    let permits = Arc::new(Semaphore::new(batch));
    loop {
        let permit = permits.clone().acquire_owned().await?;
        let Some(message) = messages.next().await else {
            return Ok(());
        };
        let message = message.map_err(|err| anyhow::anyhow!("{err}"))?;
        let client = client.clone();
        tokio::spawn(async move {
            if kind == Kind::RawDoubleAck {
                let _ = message.double_ack().await;
            } else if let Some(reply) = message.reply.clone() {
                let _ = client
                    .request(reply, bytes::Bytes::from_static(b"+ACK"))
                    .await;
            }
            drop(permit);
        });
    }
}

/// Acks each message as a publish with the reply subject `<inbox>.<n>`, at most `in_flight` unconfirmed, and counts
/// one confirmed when the server's reply for its `n` comes back.
async fn inbox_acks(
    client: &async_nats::Client,
    mut messages: pull::Stream,
    in_flight: usize,
) -> anyhow::Result<()> {
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(format!("{inbox}.*")).await?;
    let prefix = format!("{inbox}.");
    let mut pending = std::collections::HashSet::with_capacity(in_flight);
    let mut next = 0u64;
    loop {
        tokio::select! {
            biased;
            Some(reply) = replies.next() => {
                let n = reply
                    .subject
                    .as_str()
                    .strip_prefix(prefix.as_str())
                    .and_then(|digits| digits.parse::<u64>().ok());
                if let Some(n) = n {
                    pending.remove(&n);
                }
            }
            message = messages.next(), if pending.len() < in_flight => {
                let Some(message) = message else {
                    return Ok(());
                };
                let message = message.map_err(|err| anyhow::anyhow!("{err}"))?;
                let Some(reply) = message.reply.clone() else {
                    continue;
                };
                client
                    .publish_with_reply(reply, format!("{prefix}{next}"), bytes::Bytes::from_static(b"+ACK"))
                    .await?;
                pending.insert(next);
                next += 1;
            }
        }
    }
}

/// Polls the consumer's ack floor until the window is acked or `cap` has passed since the first ack.
pub async fn measure(
    stream: &stream::Stream,
    name: &str,
    window: Window,
    cap: Duration,
) -> anyhow::Result<Rate> {
    let last = window.start + window.count - 1;
    let begun = Instant::now();
    let mut first: Option<(Instant, u64)> = None;
    loop {
        let info = stream.consumer_info(name).await?;
        let now = Instant::now();
        let floor = info.ack_floor.stream_sequence;
        let acked = floor.saturating_sub(window.start - 1);
        match first {
            None if acked > 0 => first = Some((now, acked)),
            None if now - begun > Duration::from_secs(60) => {
                bail!("consumer {name}: nothing acked within 60 s")
            }
            Some((at, acked_then)) if floor >= last || now - at >= cap => {
                return Ok(Rate {
                    events: acked - acked_then,
                    secs: (now - at).as_secs_f64(),
                    client_cpu_per_event: 0.0,
                    server_cpu_per_event: 0.0,
                    client_writes_per_event: 0.0,
                    server_reads_per_event: 0.0,
                });
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A short unique suffix for names that must not collide across runs.
pub fn short_id() -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    // The tail: a v7 id starts with the clock, which two calls in one millisecond share.
    id[id.len() - 10..].to_owned()
}
