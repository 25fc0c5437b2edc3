//! The ledger's in-memory backend (feature `testing`): the KV ledger's rules without NATS, so a handler's
//! decisions can be tested in process. `runtime::testing` re-exports it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use super::Outcome;
use crate::JobError;

/// An idempotency ledger in memory, with the KV ledger's rules: an effect that completed is skipped by every
/// later job of the same event, one that failed may run again, one in progress makes another job retry.
#[derive(Clone, Default)]
pub struct MemoryLedger {
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    effects: HashMap<String, Entry>,
    skips: HashMap<String, &'static str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Pending,
    Done(Option<String>),
}

impl std::fmt::Debug for MemoryLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("MemoryLedger")
            .field("effects", &state.effects.len())
            .field("skips", &state.skips.len())
            .finish()
    }
}

/// The function name in a test ledger's keys.
pub(crate) const FUNCTION: &str = "test";

impl MemoryLedger {
    /// An empty ledger.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records effect `effect` of event `event_id` as done, as an earlier attempt would have.
    pub fn mark_done(&self, event_id: &str, effect: &str) {
        self.lock()
            .effects
            .insert(super::key(FUNCTION, event_id, effect), Entry::Done(None));
    }

    /// Whether effect `effect` of event `event_id` completed.
    pub fn is_done(&self, event_id: &str, effect: &str) -> bool {
        self.lock()
            .effects
            .get(&super::key(FUNCTION, event_id, effect))
            .is_some_and(|entry| matches!(entry, Entry::Done(_)))
    }

    /// Records effect `effect` of event `event_id` as done with `decision`, as an earlier attempt of
    /// `Job::decide` would have.
    pub fn mark_decided(&self, event_id: &str, effect: &str, decision: &str) {
        self.lock().effects.insert(
            super::key(FUNCTION, event_id, effect),
            Entry::Done(Some(super::protocol::decision_token(decision))),
        );
    }

    /// Effects completed, over all events.
    pub fn done(&self) -> usize {
        self.lock()
            .effects
            .values()
            .filter(|entry| matches!(entry, Entry::Done(_)))
            .count()
    }

    /// The reason a job of `event_id` was skipped with, if it was.
    pub fn skipped(&self, event_id: &str) -> Option<&'static str> {
        self.lock().skips.get(event_id).copied()
    }

    pub(crate) fn note_skip(&self, event_id: &str, reason: &'static str) {
        self.lock().skips.insert(event_id.to_owned(), reason);
    }

    pub(crate) async fn once<R, F, Fut>(
        &self,
        key: &str,
        effect: F,
        decision: impl FnOnce(&R) -> Option<String>,
    ) -> Result<Outcome<R>, JobError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<R, JobError>>,
    {
        {
            let mut state = self.lock();
            match state.effects.get(key) {
                Some(Entry::Done(decision)) => return Ok(Outcome::AlreadyDone(decision.clone())),
                Some(Entry::Pending) => {
                    return Err(JobError::retry_after(
                        anyhow::anyhow!("side effect is being performed by another attempt"),
                        Duration::from_secs(1),
                    ));
                }
                None => {
                    state.effects.insert(key.to_owned(), Entry::Pending);
                }
            }
        }
        let result = effect().await;
        let mut state = self.lock();
        match result {
            Ok(value) => {
                let decision = decision(&value).map(|text| super::protocol::decision_token(&text));
                state.effects.insert(key.to_owned(), Entry::Done(decision));
                Ok(Outcome::Done(value))
            }
            Err(err) => {
                state.effects.remove(key);
                Err(err)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
