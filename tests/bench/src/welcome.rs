//! The real email function, `target/release/welcome`, as a child process the way it is deployed (its own
//! connection, logs at `info` to stdout, pooled SMTP), sending into the local sink: emails per second, cold start
//! and memory.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use async_nats::jetstream::{self};
use runtime::Publisher;

use crate::consume::{cpu_secs, create_ledger, short_id};
use crate::publish::{self, Via};
use crate::servers::ChildGuard;
use crate::workload;
use testkit::SmtpServer;

/// What the welcome rows need.
#[derive(Debug)]
pub struct Setup<'a> {
    /// The function binary.
    pub bin: &'a Path,
    /// The server.
    pub url: String,
    /// A client for publishing and provisioning.
    pub client: async_nats::Client,
    /// `infra/nats/consumers/EVENTS/welcome.json`, unchanged but for its name and start.
    pub template: pull::Config,
    /// The SMTP sink.
    pub sink: &'a SmtpServer,
    /// nats-server's pid, for its CPU time.
    pub server_pid: u32,
    /// `SMTP_POOL_MAX` of the function.
    pub pool: u32,
}

/// One emails/s run: the rate, the function's peak memory, and what each process spent per email.
#[derive(Debug, Clone, Copy)]
pub struct EmailsRun {
    /// Emails per second, first to last accepted.
    pub rate: f64,
    /// The function's memory at the end.
    pub memory: Memory,
    /// CPU microseconds per email (user + system), from start to the last email: the welcome process, nats-server,
    /// and this process (the SMTP sink; the bench itself only polls the sink's count meanwhile).
    pub cpu_us: Cpu,
    /// Share of one core each was busy over the same span.
    pub busy: Cpu,
}

/// A figure for each process of the welcome rows.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    /// The function.
    pub welcome: f64,
    /// The broker.
    pub nats: f64,
    /// The SMTP sink (the bench process).
    pub sink: f64,
}

/// Memory of a process from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    /// Resident now.
    pub rss_kib: u64,
    /// The peak resident size so far.
    pub peak_kib: u64,
    /// Of `rss_kib`, the anonymous pages (heap, stacks): what each further process adds. The rest is file pages
    /// (the binary's code, the shared libraries), which every process of the same binary on a host shares.
    pub anon_kib: u64,
}

/// Reads `VmRSS`, `VmHWM` and `RssAnon`.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| crate::scale::status_kib(&status, name);
    Ok(Memory {
        rss_kib: field("VmRSS:"),
        peak_kib: field("VmHWM:"),
        anon_kib: field("RssAnon:"),
    })
}

impl Setup<'_> {
    async fn consumer(&self, deliver: DeliverPolicy) -> anyhow::Result<String> {
        let name = format!("bench-welcome-{}", short_id());
        let mut config = self.template.clone();
        config.durable_name = Some(name.clone());
        config.deliver_policy = deliver;
        jetstream::new(self.client.clone())
            .get_stream("EVENTS")
            .await?
            .create_consumer(config)
            .await?;
        Ok(name)
    }

    async fn delete(&self, consumer: &str) -> anyhow::Result<()> {
        jetstream::new(self.client.clone())
            .get_stream("EVENTS")
            .await?
            .delete_consumer(consumer)
            .await?;
        Ok(())
    }

    fn spawn(&self, consumer: &str, ledger: &str) -> anyhow::Result<ChildGuard> {
        crate::scale::spawn_welcome(
            self.bin,
            &self.url,
            &self.sink.url(),
            Some(self.pool),
            consumer,
            ledger,
        )
    }

    async fn wait_for_mail(&self, count: usize, timeout: Duration) -> anyhow::Result<Vec<Instant>> {
        let deadline = Instant::now() + timeout;
        while self.sink.count() < count {
            if Instant::now() > deadline {
                bail!(
                    "the welcome function sent {} of {count} emails within {timeout:?}",
                    self.sink.count()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(self.sink.arrivals())
    }

    /// Process start to the first email accepted by the sink, with one event waiting in the consumer. It includes
    /// exec, connecting to NATS, binding, the first pull, validation, rendering, and the first SMTP connection.
    pub async fn cold_start(&self) -> anyhow::Result<Duration> {
        let start = jetstream::new(self.client.clone())
            .get_stream("EVENTS")
            .await?
            .info()
            .await?
            .state
            .last_sequence
            + 1;
        Publisher::new(self.client.clone(), "/signup-api")
            .publish_event(&workload::event(start))
            .await?;
        let consumer = self
            .consumer(DeliverPolicy::ByStartSequence {
                start_sequence: start,
            })
            .await?;
        self.sink.clear();
        let spawned = Instant::now();
        let mut child = self.spawn(&consumer, "jetfn-ledger")?;
        let received = self.wait_for_mail(1, Duration::from_secs(30)).await;
        child.stop();
        self.delete(&consumer).await?;
        Ok(received?[0].duration_since(spawned))
    }

    /// Resident memory of a function that is bound and idle, two seconds after it started.
    pub async fn idle_memory(&self) -> anyhow::Result<Memory> {
        let consumer = self.consumer(DeliverPolicy::New).await?;
        let mut child = self.spawn(&consumer, "jetfn-ledger")?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let memory = memory(child.pid());
        child.stop();
        self.delete(&consumer).await?;
        memory
    }

    /// Emails per second over `count` events waiting in the consumer, from the first accepted email to the last,
    /// the process's peak memory by then, and the CPU each process spent. A fresh ledger bucket, so every event is
    /// a real send.
    pub async fn emails(&self, count: u64) -> anyhow::Result<EmailsRun> {
        let js = jetstream::new(self.client.clone());
        let start = js
            .get_stream("EVENTS")
            .await?
            .info()
            .await?
            .state
            .last_sequence
            + 1;
        publish::pipelined(&self.client, Via::Publisher, count).await?;
        let ledger = format!("bench-ledger-{}", short_id());
        // Its rows run under `sync_interval: always`, the shipped setting, with the shipped bucket file.
        create_ledger(&js, &ledger, true).await?;
        let consumer = self
            .consumer(DeliverPolicy::ByStartSequence {
                start_sequence: start,
            })
            .await?;
        self.sink.clear();
        let nats = self.server_pid.to_string();
        let before = (cpu_secs(&nats), cpu_secs("self"));
        let spawned = Instant::now();
        let mut child = self.spawn(&consumer, &ledger)?;
        let received = self
            .wait_for_mail(usize::try_from(count)?, Duration::from_secs(300))
            .await;
        let wall = spawned.elapsed().as_secs_f64();
        let spent = Cpu {
            welcome: cpu_secs(&child.pid().to_string()),
            nats: cpu_secs(&nats) - before.0,
            sink: cpu_secs("self") - before.1,
        };
        let memory = memory(child.pid());
        child.stop();
        self.delete(&consumer).await?;
        js.delete_key_value(&ledger).await?;
        let received = received?;
        let (Some(first), Some(last)) = (received.first(), received.last()) else {
            bail!("no email received");
        };
        #[allow(clippy::cast_precision_loss)]
        let (rate, per_email) = (
            (received.len() - 1) as f64 / last.duration_since(*first).as_secs_f64(),
            1e6 / received.len() as f64,
        );
        Ok(EmailsRun {
            rate,
            memory: memory?,
            cpu_us: Cpu {
                welcome: spent.welcome * per_email,
                nats: spent.nats * per_email,
                sink: spent.sink * per_email,
            },
            busy: Cpu {
                welcome: spent.welcome / wall,
                nats: spent.nats / wall,
                sink: spent.sink / wall,
            },
        })
    }
}
