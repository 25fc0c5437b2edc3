//! TLS to the server: every other row runs in plain text on the loopback, while the compose stack and Kubernetes
//! connect over TLS. Three servers alike in all but the `tls { }` block run side by side, with the same definitions
//! and the same counts: plain text, TLS (the test kit's certificates, no client certificate asked), and mutual TLS
//! (`verify: true`: every client presents a certificate the CA signed, as a deployment that authenticates its
//! functions by certificate runs). Every row runs on all three, interleaved run by run with the order rotated each
//! run, so drift on a shared machine falls on every side.
//!
//! On the loopback the network costs nothing, so what TLS adds is CPU: encryption and decryption in the bench (or
//! the runtime) and in nats-server. The CPU per event of each side is the figure a deployment carries over; the
//! rate follows from it only while the two cores are the bound.
//!
//! The latency rows offer 5,000 events/s through the validating publisher into the runtime (the latency target's
//! jetfn row), on each side in turns: what TLS adds to publish-to-handler time.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;

use super::{CpuWindow, DURABILITY, Plan, Server};
use crate::consume::{self, Kind, Setup, Window};
use crate::latency::{self, Pipeline};
use crate::publish::{self, Via};
use crate::report::Row;

const SECTION: &str = "Scale: TLS to the server (one node, beside the same rows in plain text)";

/// Which of the three servers a row ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Plain,
    Tls,
    /// TLS with a client certificate asked and verified.
    Mutual,
}

impl Transport {
    const ALL: [Self; 3] = [Self::Plain, Self::Tls, Self::Mutual];

    fn slug(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Tls => "tls",
            Self::Mutual => "mtls",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::Tls => "over TLS",
            Self::Mutual => "over mutual TLS (client certificate)",
        }
    }
}

/// One run of one row on one side.
#[derive(Debug, Clone, Copy)]
struct Run {
    /// Events per second.
    rate: f64,
    /// CPU microseconds per event of the bench process (the publisher, or the consumer: raw or the runtime).
    bench_us: f64,
    /// The same of nats-server.
    server_us: f64,
    /// The whole machine's busy share over the run: the other engineer's builds show here and not in the two
    /// measured processes, so a reader can tell a CPU bound of ours from a shared machine's.
    machine_busy: f64,
}

/// The three sides of one row: its runs (or a latency row's quantiles).
#[derive(Debug)]
struct Sides<T = Run> {
    plain: Vec<T>,
    tls: Vec<T>,
    mutual: Vec<T>,
}

impl<T> Default for Sides<T> {
    fn default() -> Self {
        Self {
            plain: Vec::new(),
            tls: Vec::new(),
            mutual: Vec::new(),
        }
    }
}

impl<T> Sides<T> {
    fn push(&mut self, transport: Transport, run: T) {
        self.side_mut(transport).push(run);
    }

    fn side(&self, transport: Transport) -> &[T] {
        match transport {
            Transport::Plain => &self.plain,
            Transport::Tls => &self.tls,
            Transport::Mutual => &self.mutual,
        }
    }

    fn side_mut(&mut self, transport: Transport) -> &mut Vec<T> {
        match transport {
            Transport::Plain => &mut self.plain,
            Transport::Tls => &mut self.tls,
            Transport::Mutual => &mut self.mutual,
        }
    }
}

pub async fn run(root: &Path, nats_bin: &Path, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let certs = testkit::TestCertificates::try_generate()
        .map_err(|err| anyhow::anyhow!("making the test certificates: {err}"))?;
    let plain = Server::start_with(root, nats_bin, None)
        .await
        .context("starting the plain nats-server")?;
    let tls = match Server::start_with(root, nats_bin, Some((&certs, false))).await {
        Ok(tls) => tls,
        Err(err) => {
            plain.stop();
            return Err(err.context("starting the TLS nats-server"));
        }
    };
    let mutual = match Server::start_with(root, nats_bin, Some((&certs, true))).await {
        Ok(mutual) => mutual,
        Err(err) => {
            plain.stop();
            tls.stop();
            return Err(err.context("starting the mutual-TLS nats-server"));
        }
    };
    let result = measure([&plain, &tls, &mutual], &certs, plan).await;
    plain.stop();
    tls.stop();
    mutual.stop();
    result
}

async fn measure(
    [plain, tls, mutual]: [&Server; 3],
    certs: &testkit::TestCertificates,
    plan: &Plan,
) -> anyhow::Result<Vec<Row>> {
    let server = |transport| match transport {
        Transport::Plain => plain,
        Transport::Tls => tls,
        Transport::Mutual => mutual,
    };
    // Rotated every run: whichever side ran last would otherwise always meet a warmer (or busier) machine.
    let order = |run: usize| {
        let mut order = Transport::ALL;
        order.rotate_left(run % Transport::ALL.len());
        order
    };

    // Publishing fills each stream: the first run's events are the window every consume row reads, later runs only
    // add to the stream behind it.
    let mut published: Sides = Sides::default();
    for run in 0..plan.runs {
        for transport in order(run) {
            let server = server(transport);
            let window = CpuWindow::start(&[], server.pid());
            let rate = publish::pipelined(&server.client, Via::Raw, plan.tls_events).await?;
            let spent = window.end(&[], server.pid());
            let (bench, nats) = per_event_us(spent.bench, spent.server, plan.tls_events);
            let machine_busy = spent.machine_busy;
            eprintln!(
                "  tls: raw publish pipelined, {} run {}: {rate:.0} events/s; CPU per event: bench {bench:.1} µs, \
                 nats-server {nats:.1} µs; machine {:.0}% busy",
                transport.slug(),
                run + 1,
                machine_busy * 100.0,
            );
            published.push(
                transport,
                Run {
                    rate,
                    bench_us: bench,
                    server_us: nats,
                    machine_busy,
                },
            );
        }
    }

    let setup = |transport| {
        let server = server(transport);
        Setup {
            url: server.url(),
            js: server.js.clone(),
            template: server.template.clone(),
            window: Window {
                start: 1,
                count: plan.tls_events,
            },
            cap: plan.tls_cap,
            server_pids: vec![server.pid()],
            atomic_batches: false,
            ledger_replicas: 1,
            tls_ca: (transport != Transport::Plain).then(|| certs.ca()),
            tls_client: (transport == Transport::Mutual)
                .then(|| (certs.client_cert(), certs.client_key())),
        }
    };
    let kinds = [
        (
            Kind::RawRequestAck,
            format!(
                "raw pull consumer, acks confirmed by request on the shared inbox, {} in flight",
                consume::IN_FLIGHT
            ),
        ),
        (
            Kind::RawInboxAck,
            format!(
                "raw pull consumer, acks confirmed through its own inbox (a reply subject per ack), {} in flight",
                consume::IN_FLIGHT
            ),
        ),
        (
            Kind::RuntimeNoop,
            "jetfn runtime, no-op handler, confirmed acks (default)".to_owned(),
        ),
        (
            Kind::RuntimeLedger,
            "jetfn runtime, ledger effect + confirmed acks (the email functions' shape)".to_owned(),
        ),
    ];
    let mut consumed: Vec<Sides> = kinds.iter().map(|_| Sides::default()).collect();
    for run in 0..plan.runs {
        for ((kind, _), sides) in kinds.iter().zip(&mut consumed) {
            for transport in order(run) {
                let window = CpuWindow::start(&[], server(transport).pid());
                let rate = consume::run(&setup(transport), *kind).await?;
                let machine_busy = window.end(&[], server(transport).pid()).machine_busy;
                let (bench, nats) = (
                    rate.client_cpu_per_event * 1e6,
                    rate.server_cpu_per_event * 1e6,
                );
                eprintln!(
                    "  tls consume {} {} run {}: {:.0} events/s; CPU per event: consumer {bench:.1} µs, \
                     nats-server {nats:.1} µs; machine {:.0}% busy",
                    kind.slug(),
                    transport.slug(),
                    run + 1,
                    rate.per_sec(),
                    machine_busy * 100.0,
                );
                sides.push(
                    transport,
                    Run {
                        rate: rate.per_sec(),
                        bench_us: bench,
                        server_us: nats,
                        machine_busy,
                    },
                );
            }
        }
    }

    // Publish to handler at the rate of the latency target, through the runtime, on each side in turns.
    let mut latencies = Sides::default();
    for run in 0..plan.runs {
        for transport in order(run) {
            let quantiles = latency::run(
                &setup(transport),
                Pipeline::Jetfn,
                LATENCY_RATE,
                plan.tls_latency,
                Duration::from_millis(500),
            )
            .await?;
            eprintln!(
                "  tls latency {} run {}: p50 {:.2} / p99 {:.2} ms",
                transport.slug(),
                run + 1,
                quantiles.p50,
                quantiles.p99,
            );
            latencies.push(transport, quantiles);
        }
    }

    let mut rows = pair(
        "publish-raw-pipelined",
        &format!(
            "raw async-nats publish, pipelined ({} in flight, {} events)",
            publish::WINDOW,
            plan.tls_events
        ),
        "bench",
        &published,
    );
    for ((kind, label), sides) in kinds.iter().zip(&consumed) {
        rows.extend(pair(
            &format!("consume/{}", kind.slug()),
            label,
            "consumer",
            sides,
        ));
    }
    for (transport, runs) in [
        (Transport::Plain, latencies.plain),
        (Transport::Tls, latencies.tls),
        (Transport::Mutual, latencies.mutual),
    ] {
        rows.push(Row::latency_runs(
            format!("scale/tls/e2e-{LATENCY_RATE}/{}", transport.slug()),
            SECTION,
            format!(
                "Publisher → jetfn runtime (no-op), {LATENCY_RATE} events/s, {}",
                transport.label()
            ),
            DURABILITY,
            runs,
        ));
    }
    Ok(rows)
}

/// The rate of the latency target's rows (issue 13): publish to handler at 5,000 events/s.
const LATENCY_RATE: u64 = 5_000;

/// The plain row and the TLS row of one measurement, the TLS row's note relating it to the plain one.
fn pair(slug: &str, label: &str, client: &str, sides: &Sides) -> Vec<Row> {
    let cores = f64::from(u32::try_from(super::nproc()).unwrap_or(2));
    let row = |transport: Transport, runs: &[Run]| {
        let rates: Vec<f64> = runs.iter().map(|run| run.rate).collect();
        // The CPU figures of the run the headline rate comes from, not each column's own median: with two runs a
        // slow run's CPU per event would sit beside the fast run's rate.
        let mut by_rate = runs.to_vec();
        by_rate.sort_by(|a, b| a.rate.total_cmp(&b.rate));
        // The same run `stats::median` picks: the upper one of an even count.
        let headline = by_rate.get(by_rate.len() / 2).copied().unwrap_or(Run {
            rate: 0.0,
            bench_us: 0.0,
            server_us: 0.0,
            machine_busy: 0.0,
        });
        let (bench, nats, busy) = (headline.bench_us, headline.server_us, headline.machine_busy);
        // Cores the two processes kept busy: near all of them, the row is bound by their CPU; short of it, by
        // other work on the machine (its busy share tells) or by round trips and the in-flight cap.
        let ours = (bench + nats) * 1e-6 * headline.rate;
        let mut row = Row::rate(
            format!("scale/tls/{slug}/{}", transport.slug()),
            SECTION,
            format!("{label}, {}", transport.label()),
            DURABILITY,
            "events/s",
            rates,
        );
        row.cpu_us_per_event = Some((bench, nats));
        row.note = format!(
            "CPU per event: {client} {bench:.1} µs, nats-server {nats:.1} µs; {ours:.2} of {cores:.0} cores busy \
             with them, machine {:.0}% busy",
            busy * 100.0
        );
        row
    };
    let plain = row(Transport::Plain, sides.side(Transport::Plain));
    let mut rows = vec![plain];
    for transport in [Transport::Tls, Transport::Mutual] {
        let mut encrypted = row(transport, sides.side(transport));
        let plain = &rows[0];
        if let (Some((plain_bench, plain_nats)), Some((bench, nats))) =
            (plain.cpu_us_per_event, encrypted.cpu_us_per_event)
            && plain.value > 0.0
        {
            let what = match transport {
                Transport::Mutual => "mutual TLS",
                _ => "TLS",
            };
            encrypted.note = format!(
                "{:.0}% of plain; {}; {what} adds {:+.1} µs ({client}) and {:+.1} µs (nats-server) per event",
                encrypted.value / plain.value * 100.0,
                encrypted.note,
                bench - plain_bench,
                nats - plain_nats,
            );
        }
        rows.push(encrypted);
    }
    rows
}

/// CPU seconds over `events` as microseconds per event, (bench, nats-server).
fn per_event_us(bench: f64, nats: f64, events: u64) -> (f64, f64) {
    #[allow(clippy::cast_precision_loss)]
    let events = events.max(1) as f64;
    (bench / events * 1e6, nats / events * 1e6)
}
