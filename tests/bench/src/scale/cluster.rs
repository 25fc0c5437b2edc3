//! A three-node cluster: the consume rows again on R3 streams, consumers and ledger bucket, the way a production
//! deployment runs (the compose stack's nodes: default `sync_interval`, durability from the copies), so a reader
//! can see what replication costs beside the one-node rows. The three nodes share this machine's cores with the
//! bench, so the rows are CPU-bound by construction; their CPU per event (the three servers summed) is the figure
//! that carries over to a deployment with a core or more per node.
//!
//! The ledger row runs twice: on a bucket without atomic batches (every write alone) and on one that allows them,
//! where the runtime's start-up probe (`ledger::batch::Disk`) decides from the write and read floors it measures;
//! on a cluster every write is a Raft proposal the followers must accept before the ack, so the probe sees that
//! round trip as the disk's wait.

use std::path::Path;

use anyhow::Context as _;
use async_nats::jetstream;
use provision::Definitions;

use super::{DURABILITY_CLUSTER, Plan};
use crate::consume::{self, Kind, Setup, Window};
use crate::publish::{self, Via};
use crate::report::Row;
use crate::stats;

const SECTION: &str =
    "Scale: a three-node cluster on this machine (R3 streams, consumers and ledger)";

/// Copies of every stream, consumer and bucket, as `jetfn infra apply --replicas 3` makes them.
const REPLICAS: usize = 3;

/// One consume row of the cluster part.
struct Measured {
    slug: &'static str,
    kind: Kind,
    batches: bool,
    label: String,
}

pub async fn run(root: &Path, nats_bin: &Path, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let cluster = testkit::NatsCluster::try_start_with(|builder| {
        builder
            .bin(nats_bin)
            .quiet()
            .jetstream_config("max_file_store: 16GB\nmax_memory_store: 256MB")
    })
    .context("starting a three-node cluster")?;
    let url = cluster.url();
    let client = consume::connect(&url, None, None).await?;
    let js = jetstream::new(client.clone());
    let mut definitions = Definitions::load(&root.join("infra/nats"))?;
    definitions.schedules.clear();
    definitions.set_replicas(REPLICAS);
    definitions.apply(&js).await?;
    let template = definitions
        .consumer("EVENTS", "welcome")
        .cloned()
        .context("infra/nats has no EVENTS/welcome consumer")?;
    let server_pids: Vec<u32> = cluster
        .nodes()
        .iter()
        .filter_map(testkit::NatsServer::pid)
        .collect();

    // The prefill is the publish row: pipelined raw publishes, each acknowledged once the copies hold it.
    let published = publish::pipelined(&client, Via::Raw, plan.cluster_events).await?;
    eprintln!("  cluster: raw publish pipelined {published:.0} events/s (R3)");

    let setup = Setup {
        url,
        js: js.clone(),
        template,
        window: Window {
            start: 1,
            count: plan.cluster_events,
        },
        cap: plan.cluster_cap,
        server_pids,
        atomic_batches: false,
        ledger_replicas: REPLICAS,
        tls_ca: None,
        tls_client: None,
    };
    let measured = [
        Measured {
            slug: "raw-double-ack",
            kind: Kind::RawDoubleAck,
            batches: false,
            label: format!(
                "raw pull consumer, double acks, {} in flight",
                consume::IN_FLIGHT
            ),
        },
        Measured {
            slug: "raw-request-ack",
            kind: Kind::RawRequestAck,
            batches: false,
            label: format!(
                "raw pull consumer, acks confirmed by request on the shared inbox, {} in flight",
                consume::IN_FLIGHT
            ),
        },
        Measured {
            slug: "raw-inbox-ack",
            kind: Kind::RawInboxAck,
            batches: false,
            label: format!(
                "raw pull consumer, acks confirmed through its own inbox (a reply subject per ack), {} in flight",
                consume::IN_FLIGHT
            ),
        },
        Measured {
            slug: "runtime-noop",
            kind: Kind::RuntimeNoop,
            batches: false,
            label: "jetfn runtime, no-op handler, confirmed acks (default)".to_owned(),
        },
        Measured {
            slug: "runtime-ledger",
            kind: Kind::RuntimeLedger,
            batches: false,
            label: "jetfn runtime, ledger effect + confirmed acks, every ledger write alone".to_owned(),
        },
        Measured {
            slug: "runtime-ledger-batches",
            kind: Kind::RuntimeLedger,
            batches: true,
            label: "jetfn runtime, ledger effect + confirmed acks, bucket allowing atomic batches (the \
                    runtime's probe decides)"
                .to_owned(),
        },
    ];
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); measured.len()];
    // The duplicate window of each ledger row's last run (effect end to `done` acknowledged), as this process
    // recorded it: the one-node rows report it too, and the claims' cap was there to keep it short.
    let mut windows: Vec<Option<runtime::ledger_window::Window>> = vec![None; measured.len()];
    let mut cpu: Vec<Vec<(f64, f64)>> = vec![Vec::new(); measured.len()];
    // Rows interleave run by run, as the one-node rows do.
    for run in 0..plan.runs {
        for (((row, rates), cpu), window) in measured
            .iter()
            .zip(&mut rates)
            .zip(&mut cpu)
            .zip(&mut windows)
        {
            let setup = Setup {
                atomic_batches: row.batches,
                ..setup.clone()
            };
            runtime::ledger_window::reset();
            let rate = consume::run(&setup, row.kind).await?;
            if row.kind == Kind::RuntimeLedger {
                *window = Some(runtime::ledger_window::snapshot());
            }
            eprintln!(
                "  cluster consume {} run {}: {:.0} events/s; CPU per event: bench {:.1} µs, nats-servers {:.1} µs",
                row.slug,
                run + 1,
                rate.per_sec(),
                rate.client_cpu_per_event * 1e6,
                rate.server_cpu_per_event * 1e6,
            );
            rates.push(rate.per_sec());
            cpu.push((
                rate.client_cpu_per_event * 1e6,
                rate.server_cpu_per_event * 1e6,
            ));
        }
    }
    drop(client);
    drop(cluster);

    let mut rows = vec![Row::rate(
        "scale/cluster/publish-raw-pipelined".to_owned(),
        SECTION,
        format!(
            "raw async-nats publish, pipelined ({} in flight, {} events)",
            publish::WINDOW,
            plan.cluster_events
        ),
        DURABILITY_CLUSTER,
        "events/s",
        vec![published],
    )];
    for (((row, rates), cpu), window) in measured.iter().zip(rates).zip(cpu).zip(windows) {
        let client = stats::median(&cpu.iter().map(|(client, _)| *client).collect::<Vec<_>>());
        let server = stats::median(&cpu.iter().map(|(_, server)| *server).collect::<Vec<_>>());
        let mut out = Row::rate(
            format!("scale/cluster/consume/{}", row.slug),
            SECTION,
            row.label.clone(),
            DURABILITY_CLUSTER,
            "events/s",
            rates,
        );
        out.cpu_us_per_event = Some((client, server));
        out.note = format!(
            "CPU per event: consumer {client:.1} µs, the three nats-servers {server:.1} µs"
        );
        rows.push(out);
        if let Some(window) = window.filter(|window| window.count > 0) {
            rows.push(window_row(row, window));
        }
    }
    relate(&mut rows);
    Ok(rows)
}

/// The duplicate window of a ledger row's last run.
fn window_row(row: &Measured, window: runtime::ledger_window::Window) -> Row {
    consume::window_row(
        format!("scale/cluster/window/{}", row.slug),
        SECTION,
        format!(
            "duplicate window of the row above: effect end to `done` acknowledged, {} in flight (its last run)",
            consume::IN_FLIGHT
        ),
        DURABILITY_CLUSTER,
        window,
    )
}

/// Puts each runtime row beside its raw baseline, as the one-node rows do.
fn relate(rows: &mut [Row]) {
    let value = |rows: &[Row], slug: &str| {
        rows.iter()
            .find(|row| row.id == format!("scale/cluster/consume/{slug}"))
            .map(|row| row.value)
    };
    let (Some(double), Some(request)) = (
        value(rows, "raw-double-ack"),
        value(rows, "raw-request-ack"),
    ) else {
        return;
    };
    let inbox = value(rows, "raw-inbox-ack");
    for row in rows.iter_mut() {
        let baseline = if row.id == "scale/cluster/consume/runtime-noop" {
            Some(("raw request-confirmed acks", request))
        } else if row.id.starts_with("scale/cluster/consume/runtime-ledger") {
            Some(("raw double acks", double))
        } else {
            None
        };
        if let Some((name, baseline)) = baseline.filter(|(_, baseline)| *baseline > 0.0) {
            // The runtime's own path for a confirmed ack (section 41 of the analysis), beside the target's baseline.
            let inbox = inbox
                .filter(|inbox| *inbox > 0.0 && row.id == "scale/cluster/consume/runtime-noop")
                .map(|inbox| {
                    format!(
                        ", {:.0}% of raw acks confirmed through their own inbox",
                        row.value / inbox * 100.0
                    )
                })
                .unwrap_or_default();
            row.note = format!(
                "{:.0}% of {name}{inbox}; {}",
                row.value / baseline * 100.0,
                row.note
            );
        }
    }
}
