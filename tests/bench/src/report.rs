//! The results: one row per figure, the targets of issue 13 judged against them, the machine and the versions;
//! printed as a table, written as JSON, and rendered into BENCHMARKS.md.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::servers::{RedisDurability, Sync};
use crate::stats::{Quantiles, median};

/// One figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// A stable key, e.g. `consume/runtime-noop/always`.
    pub id: String,
    /// The table it belongs in.
    pub section: &'static str,
    /// What ran.
    pub label: String,
    /// Each side's durability, stated beside every figure.
    pub durability: String,
    /// The headline: the median of `runs`, or the p99 of a latency row.
    pub value: f64,
    /// Its unit.
    pub unit: &'static str,
    /// Every run's figure.
    pub runs: Vec<f64>,
    /// Latency quantiles, for latency rows.
    pub latency: Option<Quantiles>,
    /// A ratio or a remark.
    pub note: String,
    /// CPU microseconds per event (consumer process, nats-server), medians, for consume rows.
    pub cpu_us_per_event: Option<(f64, f64)>,
}

impl Row {
    /// A throughput row: the median of `runs`.
    pub fn rate(
        id: String,
        section: &'static str,
        label: impl Into<String>,
        durability: impl Into<String>,
        unit: &'static str,
        runs: Vec<f64>,
    ) -> Self {
        Self {
            id,
            section,
            label: label.into(),
            durability: durability.into(),
            value: median(&runs),
            unit,
            runs,
            latency: None,
            note: String::new(),
            cpu_us_per_event: None,
        }
    }

    /// A latency row, headlined by its p99.
    pub fn latency(
        id: String,
        section: &'static str,
        label: impl Into<String>,
        durability: impl Into<String>,
        quantiles: Quantiles,
    ) -> Self {
        Self {
            id,
            section,
            label: label.into(),
            durability: durability.into(),
            value: quantiles.p99,
            unit: "ms",
            runs: Vec::new(),
            latency: Some(quantiles),
            note: String::new(),
            cpu_us_per_event: None,
        }
    }

    /// A latency row run more than once: headlined by the run whose p99 is the median of the runs' (its p50 and
    /// max shown with it, so the three figures come from one run), every run's p99 listed.
    pub fn latency_runs(
        id: String,
        section: &'static str,
        label: impl Into<String>,
        durability: impl Into<String>,
        mut runs: Vec<Quantiles>,
    ) -> Self {
        let p99s: Vec<f64> = runs.iter().map(|run| run.p99).collect();
        runs.sort_by(|a, b| a.p99.total_cmp(&b.p99));
        let middle = runs.swap_remove(runs.len().saturating_sub(1) / 2);
        let mut row = Self::latency(id, section, label, durability, middle);
        if p99s.len() > 1 {
            row.runs = p99s;
            row.note = "figures of the run with the median p99; runs: each one's p99".to_owned();
        }
        row
    }

    /// The figure as the table shows it.
    pub fn figure(&self) -> String {
        match &self.latency {
            Some(q) => format!(
                "p50 {} / p99 {} / max {} ms (n={})",
                ms(q.p50),
                ms(q.p99),
                ms(q.max),
                q.count
            ),
            None => format!("{} {}", number(self.value), self.unit),
        }
    }

    fn runs_text(&self) -> String {
        if self.runs.len() < 2 {
            return String::new();
        }
        let show = if self.latency.is_some() { ms } else { number };
        self.runs
            .iter()
            .map(|run| show(*run))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A target of issue 13 and how this run did.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// The target as the issue states it.
    pub target: String,
    /// Under which durability.
    pub durability: String,
    /// What was measured.
    pub measured: String,
    /// `met`, `missed` or `not measured`.
    pub verdict: &'static str,
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs.
    pub nproc: usize,
    /// From /proc/cpuinfo.
    pub cpu: String,
    /// MemTotal.
    pub memory_gib: f64,
    /// The kernel release.
    pub kernel: String,
    /// p50 of a 1 KiB append + fdatasync in the temp dir, where the stores live: what `always` pays per message.
    pub fdatasync_p50_ms: f64,
    /// /proc/loadavg when the run started: other work on the machine (a build) lowers every figure.
    pub load_average: String,
}

impl Machine {
    /// Reads /proc and times the disk.
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .and_then(|rest| rest.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, name)| name.trim().to_owned());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self {
            nproc: std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
            cpu,
            memory_gib: kib / 1024.0 / 1024.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |text| text.trim().to_owned()),
            fdatasync_p50_ms: fdatasync_p50_ms().unwrap_or(f64::NAN),
            load_average: std::fs::read_to_string("/proc/loadavg")
                .map(|text| {
                    text.split_whitespace()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default(),
        }
    }
}

fn fdatasync_p50_ms() -> anyhow::Result<f64> {
    use std::io::Write as _;
    let dir = crate::servers::TempDir::new("fsync")?;
    let mut file = std::fs::File::create(dir.path().join("probe"))?;
    let block = [b'x'; 1024];
    let mut samples = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        file.write_all(&block)?;
        file.sync_data()?;
        samples.push(u64::try_from(started.elapsed().as_nanos())?);
    }
    Ok(Quantiles::from_ns(&mut samples).p50)
}

/// The versions of everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct Versions {
    /// `nats-server --version`.
    pub nats_server: String,
    /// From Cargo.lock.
    pub async_nats: String,
    /// `rustc --version`.
    pub rustc: String,
    /// `node --version`.
    pub node: String,
    /// From node_modules.
    pub bullmq: String,
    /// `redis-server --version`.
    pub redis: String,
}

impl Versions {
    /// Asks each tool.
    pub fn read(root: &Path, nats_server: &Path) -> Self {
        let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
        let async_nats = lock
            .split("[[package]]")
            .find(|block| block.contains("name = \"async-nats\""))
            .and_then(|block| {
                block
                    .lines()
                    .find_map(|line| line.strip_prefix("version = "))
                    .map(|version| version.trim_matches('"').to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let redis = command_output("redis-server", &["--version"]);
        let redis = redis
            .split_whitespace()
            .find_map(|word| word.strip_prefix("v="))
            .map_or(redis.clone(), str::to_owned);
        Self {
            nats_server: command_output(&nats_server.display().to_string(), &["--version"])
                .trim_start_matches("nats-server: ")
                .to_owned(),
            async_nats,
            rustc: command_output("rustc", &["--version"]),
            node: command_output("node", &["--version"]),
            bullmq: crate::bullmq::version(root),
            redis,
        }
    }
}

fn command_output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map_or_else(
            || "not installed".to_owned(),
            |output| String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        )
}

/// Everything one run produced.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When (UTC, RFC 3339).
    pub generated: String,
    /// The command line's flags.
    pub mode: String,
    /// Runs per throughput row.
    pub runs: usize,
    /// The machine.
    pub machine: Machine,
    /// The versions.
    pub versions: Versions,
    /// The serialized size of the event every row sends.
    pub payload_bytes: usize,
    /// The figures.
    pub rows: Vec<Row>,
    /// The targets, judged.
    pub targets: Vec<Target>,
    /// What this run did not measure, and why.
    pub not_measured: Vec<String>,
}

impl Report {
    /// A row by id.
    pub fn row(&self, id: &str) -> Option<&Row> {
        self.rows.iter().find(|row| row.id == id)
    }

    /// Adds ratio notes and judges the targets.
    pub fn judge(&mut self, syncs: &[Sync]) {
        let mut notes = Vec::new();
        let mut targets = Vec::new();
        for &sync in syncs {
            let s = sync.config_value();
            let durability = sync.label();
            let value = |id: String| self.row(&id).map(|row| row.value);
            let raw = value(format!("consume/raw-ack/{s}"));
            let raw_double = value(format!("consume/raw-double-ack/{s}"));
            let raw_request = value(format!("consume/raw-request-ack/{s}"));
            let raw_inbox = value(format!("consume/raw-inbox-ack/{s}"));
            let noop_plain = value(format!("consume/runtime-noop-plain/{s}"));
            let noop = value(format!("consume/runtime-noop/{s}"));
            let ledger = value(format!("consume/runtime-ledger/{s}"));
            if let (Some(noop_plain), Some(raw)) = (noop_plain, raw) {
                notes.push((
                    format!("consume/runtime-noop-plain/{s}"),
                    format!("{} of raw plain acks", pct(noop_plain / raw)),
                ));
            }
            if let (Some(noop), Some(raw_double), Some(raw_request)) =
                (noop, raw_double, raw_request)
            {
                let mut note = format!(
                    "{} of raw double acks, {} of raw request-confirmed acks",
                    pct(noop / raw_double),
                    pct(noop / raw_request)
                );
                if let Some(raw_inbox) = raw_inbox {
                    let _ = write!(
                        note,
                        ", {} of raw acks confirmed through their own inbox (the runtime's path)",
                        pct(noop / raw_inbox)
                    );
                }
                notes.push((format!("consume/runtime-noop/{s}"), note));
            }
            // Issue 13's targets (issue 5's were lower: 70% for both no-op rows, 4× BullMQ, p99 ≤ 2 ms, cold
            // start ≤ 100 ms, idle RSS ≤ 20 MiB). Like with like: plain acks against plain acks, confirmed
            // against request-confirmed acks.
            targets.push(judge_ratio(
                "no-op runtime ≥ 70% of raw plain acks, plain acks both (JOB_ACK=plain), same run",
                &durability,
                noop_plain,
                raw,
                0.70,
            ));
            targets.push(judge_ratio(
                "no-op runtime ≥ 85% of raw request-confirmed acks, confirmed acks both (default), same run",
                &durability,
                noop,
                raw_request,
                0.85,
            ));
            if let (Some(ledger), Some(raw_double)) = (ledger, raw_double) {
                let mut note = format!("{} of raw double acks", pct(ledger / raw_double));
                if let Some(raw_request) = raw_request {
                    let _ = write!(
                        note,
                        ", {} of raw request-confirmed acks",
                        pct(ledger / raw_request)
                    );
                }
                // What the JetStream operations the row needs allow, from raw rows of the same run: two KV
                // writes (each a stream publish with an expected-sequence header) and one confirmed ack.
                if let (Some(publish), Some(raw_request)) =
                    (value(format!("publish/raw-pipelined/{s}")), raw_request)
                {
                    let bound = 1.0 / (2.0 / publish + 1.0 / raw_request);
                    let _ = write!(
                        note,
                        "; two raw publishes + one confirmed ack allow {} events/s here, so {} of that",
                        number(bound),
                        pct(ledger / bound)
                    );
                }
                notes.push((format!("consume/runtime-ledger/{s}"), note));
            }
            targets.push(judge_ratio(
                "ledger effect + confirmed ack (the email shape) ≥ 50% of raw double acks",
                &durability,
                ledger,
                raw_double,
                0.50,
            ));
            let redis = sync.redis_equivalent();
            let best_bullmq = self
                .rows
                .iter()
                .filter(|row| row.id.starts_with("bullmq/worker-c"))
                .filter(|row| row.id.ends_with(&format!("/{}", redis_slug(redis))))
                .max_by(|a, b| a.value.total_cmp(&b.value))
                .map(|row| (row.value, row.label.clone()));
            let bullmq_durability = format!("{durability} vs {}", redis.label());
            if sync == Sync::Always {
                let mut target = judge_ratio(
                    "the email shape (ledger effect + confirmed ack) ≥ 1× the best BullMQ no-op worker, same guarantees on disk",
                    &bullmq_durability,
                    ledger,
                    best_bullmq.as_ref().map(|(value, _)| *value),
                    1.0,
                );
                if let Some((_, label)) = &best_bullmq {
                    let _ = write!(target.measured, " (BullMQ best: {label})");
                }
                targets.push(target);
            }
            let mut target = judge_ratio(
                "no-op runtime (confirmed acks) ≥ 5× the best BullMQ no-op worker, same run, equivalent durability",
                &bullmq_durability,
                noop,
                best_bullmq.as_ref().map(|(value, _)| *value),
                5.0,
            );
            if let Some((_, label)) = &best_bullmq {
                let _ = write!(target.measured, " (BullMQ best: {label})");
            }
            targets.push(target);
            let emails = self
                .row(&format!("welcome/emails/{s}"))
                .map(|row| row.value);
            if sync == Sync::Always {
                targets.push(Target {
                    target:
                        "welcome into a local SMTP sink: reported beside the 1s row, with its bound"
                            .to_owned(),
                    durability: durability.clone(),
                    measured: emails.map_or("-".to_owned(), |v| format!("{} emails/s", number(v))),
                    verdict: if emails.is_some() {
                        "reported"
                    } else {
                        "not measured"
                    },
                });
            } else {
                targets.push(match emails {
                    Some(v) => Target {
                        target: "welcome into a local SMTP sink ≥ 2,000 emails/s".to_owned(),
                        durability: durability.clone(),
                        measured: format!("{} emails/s", number(v)),
                        verdict: if v >= 2000.0 { "met" } else { "missed" },
                    },
                    None => not_measured(
                        "welcome into a local SMTP sink ≥ 2,000 emails/s",
                        &durability,
                    ),
                });
            }
            let e2e = self
                .row(&format!("e2e/jetfn-5000/{s}"))
                .map(|row| row.value);
            let e2e_raw = self.row(&format!("e2e/raw-5000/{s}")).map(|row| row.value);
            let e2e_target =
                "publish → handler p99 at 5,000 events/s within 1 ms of raw's p99, same run";
            targets.push(match (e2e, e2e_raw) {
                (Some(p99), Some(raw_p99)) => Target {
                    target: e2e_target.to_owned(),
                    durability: durability.clone(),
                    measured: format!("p99 {} ms vs raw {} ms", ms(p99), ms(raw_p99)),
                    verdict: if p99 <= raw_p99 + 1.0 {
                        "met"
                    } else {
                        "missed"
                    },
                },
                _ => not_measured(e2e_target, &durability),
            });
        }
        for (id, note) in notes {
            if let Some(row) = self.rows.iter_mut().find(|row| row.id == id) {
                row.note = if row.note.is_empty() {
                    note
                } else {
                    format!("{note}; {}", row.note)
                };
            }
        }
        let cold = self.row("welcome/cold-start").map(|row| row.value);
        targets.push(match cold {
            Some(ms_value) => Target {
                target: "cold start, exec to first email accepted, ≤ 25 ms".to_owned(),
                durability: Sync::Always.label(),
                measured: format!("{} ms (median)", ms(ms_value)),
                verdict: if ms_value <= 25.0 { "met" } else { "missed" },
            },
            None => not_measured(
                "cold start, exec to first email accepted, ≤ 25 ms",
                &Sync::Always.label(),
            ),
        });
        let idle = self.row("welcome/rss-idle").map(|row| row.value);
        targets.push(match idle {
            Some(mib) => Target {
                target: "idle RSS of an email function ≤ 10 MiB".to_owned(),
                durability: "-".to_owned(),
                measured: format!("{} MiB", number(mib)),
                verdict: if mib <= 10.0 { "met" } else { "missed" },
            },
            None => not_measured("idle RSS of an email function ≤ 10 MiB", "-"),
        });
        self.targets = targets;
    }

    /// The table on stdout.
    pub fn print(&self) {
        let mut section = "";
        for row in &self.rows {
            if row.section != section {
                section = row.section;
                println!("\n== {section}");
            }
            println!(
                "  {:<52} {:<28} {:>34}  {}",
                row.label,
                row.durability,
                row.figure(),
                row.note
            );
        }
        println!("\n== Targets (issue 13)");
        for target in &self.targets {
            println!(
                "  [{:<12}] {} | {} | {}",
                target.verdict, target.target, target.durability, target.measured
            );
        }
    }

    /// BENCHMARKS.md: generated figures around the hand-written analysis in tests/bench/ANALYSIS.md.
    pub fn markdown(&self, analysis: &str) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let v = &self.versions;
        let _ = writeln!(
            md,
            "# Benchmarks\n\n<!-- Generated by `just bench` (tests/bench/run.sh). Edit tests/bench/src/report.rs \
             or tests/bench/ANALYSIS.md, not this file. -->\n\n\
             jetfn beside raw JetStream and beside BullMQ, in one run on one machine (issues 5 and 13). Regenerate with \
             `just bench` (or `bash tests/bench/run.sh`); `--quick` and `--only runtime,publish` run a subset \
             (`bash tests/bench/run.sh --quick`), `--only scale --scale backlog` one part of the scale rows. Figures are medians of {runs} where a row was run more than \
             once; every run's figure is in the last column and in `tests/bench/results.json`. Tests never assert \
             timings; this only reports.\n",
            runs = self.runs
        );
        let _ = writeln!(md, "Run: {} ({}).\n", self.generated, self.mode);
        let _ = writeln!(md, "## Machine and versions\n");
        let _ = writeln!(md, "| | |\n|---|---|");
        let _ = writeln!(
            md,
            "| machine | {} CPUs, {}, {:.1} GiB RAM, Linux {}; load average {} at the start |",
            m.nproc, m.cpu, m.memory_gib, m.kernel, m.load_average
        );
        let _ = writeln!(
            md,
            "| disk | a 1 KiB append + fdatasync in the store's filesystem: p50 {} ms |",
            ms(m.fdatasync_p50_ms)
        );
        let _ = writeln!(
            md,
            "| nats | nats-server {}, async-nats {}, {} |",
            v.nats_server, v.async_nats, v.rustc
        );
        let _ = writeln!(
            md,
            "| bullmq | bullmq {} on Node {}, redis-server {} |",
            v.bullmq, v.node, v.redis
        );
        let _ = writeln!(
            md,
            "| payload | one `users.registered` CloudEvent, {} bytes of JSON, plus `Nats-Msg-Id`, `content-type` \
             and `traceparent` headers |\n",
            self.payload_bytes
        );
        let _ = writeln!(md, "## Targets\n");
        let _ = writeln!(
            md,
            "| target (issue 13) | durability | measured | verdict |\n|---|---|---|---|"
        );
        for t in &self.targets {
            let _ = writeln!(
                md,
                "| {} | {} | {} | **{}** |",
                t.target, t.durability, t.measured, t.verdict
            );
        }
        let _ = writeln!(md, "\n## Results\n");
        let mut section = "";
        for row in &self.rows {
            if row.section != section {
                section = row.section;
                let _ = writeln!(
                    md,
                    "\n### {section}\n\n| row | durability | figure | note | runs |\n|---|---|---|---|---|"
                );
            }
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} |",
                row.label,
                row.durability,
                row.figure(),
                row.note,
                row.runs_text()
            );
        }
        if !self.not_measured.is_empty() {
            let _ = writeln!(md, "\n### Not measured in this run\n");
            for item in &self.not_measured {
                let _ = writeln!(md, "- {item}");
            }
        }
        let _ = writeln!(md, "\n{}", analysis.trim());
        md
    }
}

fn redis_slug(durability: RedisDurability) -> &'static str {
    match durability {
        RedisDurability::Always => "always",
        RedisDurability::EverySec => "everysec",
        RedisDurability::None => "none",
    }
}

/// The id suffix of a BullMQ row.
pub fn bullmq_id(what: &str, durability: RedisDurability) -> String {
    format!("bullmq/{what}/{}", redis_slug(durability))
}

fn judge_ratio(
    target: &str,
    durability: &str,
    value: Option<f64>,
    base: Option<f64>,
    at_least: f64,
) -> Target {
    match (value, base) {
        (Some(value), Some(base)) if base > 0.0 => {
            let ratio = value / base;
            Target {
                target: target.to_owned(),
                durability: durability.to_owned(),
                measured: if at_least >= 1.0 {
                    format!("{ratio:.1}× ({} vs {})", number(value), number(base))
                } else {
                    format!("{} ({} vs {})", pct(ratio), number(value), number(base))
                },
                verdict: if ratio >= at_least { "met" } else { "missed" },
            }
        }
        _ => not_measured(target, durability),
    }
}

fn not_measured(target: &str, durability: &str) -> Target {
    Target {
        target: target.to_owned(),
        durability: durability.to_owned(),
        measured: "-".to_owned(),
        verdict: "not measured",
    }
}

fn pct(ratio: f64) -> String {
    format!("{:.0}%", ratio * 100.0)
}

/// Milliseconds with precision that suits their size.
pub fn ms(value: f64) -> String {
    if value < 10.0 {
        format!("{value:.2}")
    } else if value < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// A count with thousands separators, or a small figure with one decimal.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return "-".to_owned();
    }
    if value.abs() < 100.0 {
        return format!("{value:.1}");
    }
    #[allow(clippy::cast_possible_truncation)]
    let whole = value.round() as i64;
    let digits = whole.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if whole < 0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(183_456.4), "183,456");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(ms(0.456), "0.46");
    }
}
