//! What the in-process runtimes' ledger probes chose (`runtime::ledger::batch`, logged once per consumer before its
//! first pull): at `sync_interval: 1s` about one start in six or seven finds writes slower than their refusals and
//! batches, at about half the ledger row's rate (ANALYSIS 21 and 22), so the ledger rows say how many of their runs
//! did rather than leave a slow run unexplained.

use std::sync::atomic::{AtomicUsize, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

static BATCHES: AtomicUsize = AtomicUsize::new(0);
static ONE_BY_ONE: AtomicUsize = AtomicUsize::new(0);

/// Counts the probe's verdicts; installed beside the log sink with a filter on the probe's module, so no other
/// event reaches it.
pub struct Verdicts;

impl<S: Subscriber> Layer<S> for Verdicts {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut synced = Synced(None);
        event.record(&mut synced);
        match synced.0 {
            Some(true) => BATCHES.fetch_add(1, Ordering::Relaxed),
            Some(false) => ONE_BY_ONE.fetch_add(1, Ordering::Relaxed),
            None => 0,
        };
    }
}

struct Synced(Option<bool>);

impl Visit for Synced {
    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "synced" {
            self.0 = Some(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// The verdicts counted so far: (batches, one by one).
pub fn counts() -> (usize, usize) {
    (
        BATCHES.load(Ordering::Relaxed),
        ONE_BY_ONE.load(Ordering::Relaxed),
    )
}

/// What one run's runtime chose, from the counts before and after it: `None` when it logged no verdict (the log
/// is off, or its probe did not run).
pub fn chose_batches(before: (usize, usize), after: (usize, usize)) -> Option<bool> {
    match (after.0 - before.0, after.1 - before.1) {
        (0, 0) => None,
        (batches, one_by_one) => Some(batches > one_by_one),
    }
}

/// "the ledger's probe chose batches in 1 of 3 runs", or why it is not known.
pub fn note(verdicts: &[Option<bool>]) -> String {
    let known: Vec<bool> = verdicts.iter().flatten().copied().collect();
    if known.is_empty() {
        return "the ledger's probe verdict not logged (--log off)".to_owned();
    }
    let batches = known.iter().filter(|batches| **batches).count();
    format!(
        "the ledger's probe chose batches in {batches} of {} runs",
        known.len()
    )
}
