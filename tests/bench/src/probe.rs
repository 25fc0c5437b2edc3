//! What the in-process runtimes' ledger probes chose (`runtime::ledger::batch`, logged once per consumer before its
//! first pull): at `sync_interval: 1s` about one start in six or seven finds writes slower than their refusals and
//! batches, at about half the ledger row's rate (ANALYSIS 21 and 22), so the ledger rows say how many of their runs
//! did rather than leave a slow run unexplained; and in how many the ledger's checks while it ran changed the
//! verdict (ANALYSIS 23).

use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

static BATCHES: AtomicUsize = AtomicUsize::new(0);
static ONE_BY_ONE: AtomicUsize = AtomicUsize::new(0);
static CHANGES: AtomicUsize = AtomicUsize::new(0);

/// Counts the probe's verdicts, and the changes the ledger's checks while it runs made to them (the events with a
/// `gap_us`); installed beside the log sink, behind its filter, it reads only the probe module's events at `info`
/// and above.
pub struct Verdicts;

impl<S: Subscriber> Layer<S> for Verdicts {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let metadata = event.metadata();
        if metadata.target() != "runtime::ledger::batch" || *metadata.level() > tracing::Level::INFO
        {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        match (fields.synced, fields.gap) {
            (Some(_), true) => CHANGES.fetch_add(1, Ordering::Relaxed),
            (Some(true), false) => BATCHES.fetch_add(1, Ordering::Relaxed),
            (Some(false), false) => ONE_BY_ONE.fetch_add(1, Ordering::Relaxed),
            (None, _) => 0,
        };
    }
}

#[derive(Default)]
struct Fields {
    synced: Option<bool>,
    gap: bool,
}

impl Visit for Fields {
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "synced" {
            self.synced = Some(value);
        }
    }

    // Numbers reach `record_debug` unless recorded otherwise; `gap_us` is one.
    fn record_debug(&mut self, field: &Field, _: &dyn std::fmt::Debug) {
        self.gap |= field.name() == "gap_us";
    }
}

/// The events counted so far.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    batches: usize,
    one_by_one: usize,
    changes: usize,
}

pub fn counts() -> Counts {
    Counts {
        batches: BATCHES.load(Ordering::Relaxed),
        one_by_one: ONE_BY_ONE.load(Ordering::Relaxed),
        changes: CHANGES.load(Ordering::Relaxed),
    }
}

/// What one run's runtime did: what its start-up probe chose (`None` when it logged no verdict: the log is off, or
/// its probe did not run), and how often its checks while it ran changed that.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    batches: Option<bool>,
    changes: usize,
}

/// One run's [`Run`], from the counts before and after it.
pub fn run(before: Counts, after: Counts) -> Run {
    let batches = match (
        after.batches - before.batches,
        after.one_by_one - before.one_by_one,
    ) {
        (0, 0) => None,
        (batches, one_by_one) => Some(batches > one_by_one),
    };
    Run {
        batches,
        changes: after.changes - before.changes,
    }
}

/// "the ledger's probe chose batches in 1 of 3 runs, and its checks while running changed that in 1", or why it is
/// not known.
pub fn note(runs: &[Run]) -> String {
    let known: Vec<&Run> = runs.iter().filter(|run| run.batches.is_some()).collect();
    if known.is_empty() {
        return "the ledger's probe verdict not logged (--log off)".to_owned();
    }
    let batches = known.iter().filter(|run| run.batches == Some(true)).count();
    let changed = known.iter().filter(|run| run.changes > 0).count();
    format!(
        "the ledger's probe chose batches in {batches} of {} runs, and its checks while running changed that in {changed}",
        known.len()
    )
}
