//! The BullMQ side: `tests/bench/bullmq/bench.mjs` (bullmq pinned in its package.json) against a redis-server
//! this bench starts on 127.0.0.1 with the durability under test.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use crate::servers::{RedisDurability, RedisServer, TempDir};
use crate::stats::Quantiles;
use crate::workload;

/// What the Node script prints.
#[derive(Debug, Clone, Deserialize)]
pub struct Results {
    /// `addBulk` (chunks of 1,000) jobs per second, every run.
    pub add_bulk_per_s: Vec<f64>,
    /// `queue.add` one at a time, milliseconds.
    pub add_one: NodeQuantiles,
    /// No-op worker jobs per second by concurrency, every run.
    pub worker: BTreeMap<String, Vec<f64>>,
    /// End-to-end latency at fixed rates.
    pub e2e: Vec<NodeLatency>,
}

/// Quantiles in milliseconds.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct NodeQuantiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Samples.
    pub count: usize,
}

impl From<NodeQuantiles> for Quantiles {
    fn from(q: NodeQuantiles) -> Self {
        Self {
            p50: q.p50,
            p99: q.p99,
            max: q.max,
            count: q.count,
        }
    }
}

/// One end-to-end row.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct NodeLatency {
    /// Offered jobs per second.
    pub rate: u64,
    /// Its quantiles.
    #[serde(flatten)]
    pub quantiles: NodeQuantiles,
}

/// What one BullMQ pass runs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Jobs per throughput run (a quarter for concurrency 1).
    pub jobs: u64,
    /// Throughput runs.
    pub runs: usize,
    /// End-to-end rates.
    pub rates: Vec<u64>,
    /// Seconds per end-to-end rate.
    pub secs: u64,
}

/// Starts redis-server with `durability`, runs the script, stops the server.
pub fn run(root: &Path, durability: RedisDurability, plan: &Plan) -> anyhow::Result<Results> {
    let project = root.join("tests/bench/bullmq");
    if !project.join("node_modules/bullmq").is_dir() {
        bail!(
            "tests/bench/bullmq/node_modules is missing: run `npm ci` there (tests/bench/run.sh does)"
        );
    }
    let dir = TempDir::new("bullmq")?;
    let payload = dir.path().join("event.json");
    std::fs::write(&payload, serde_json::to_vec(&workload::event(1))?)?;
    let redis = RedisServer::start(durability)?;
    let rates: Vec<String> = plan.rates.iter().map(u64::to_string).collect();
    let output = Command::new("node")
        .current_dir(&project)
        .arg("bench.mjs")
        .args(["--port", &redis.port.to_string()])
        .arg("--payload")
        .arg(&payload)
        .args(["--jobs", &plan.jobs.to_string()])
        .args(["--runs", &plan.runs.to_string()])
        .args(["--rates", &rates.join(",")])
        .args(["--secs", &plan.secs.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running node tests/bench/bullmq/bench.mjs")?;
    drop(redis);
    if !output.status.success() {
        bail!("the BullMQ bench failed ({})", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let line = text
        .lines()
        .rev()
        .find(|line| line.starts_with('{'))
        .context("the BullMQ bench printed no JSON")?;
    serde_json::from_str(line).context("parsing the BullMQ bench's JSON")
}

/// The bullmq version installed under tests/bench/bullmq.
pub fn version(root: &Path) -> String {
    let path = root.join("tests/bench/bullmq/node_modules/bullmq/package.json");
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| json.get("version")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "not installed".to_owned())
}
