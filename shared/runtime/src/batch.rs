//! Batch items, for every typed function alike: an event whose headers name a batch (`Jetfn-Batch-Id`,
//! `Jetfn-Batch-Index`) runs only once its batch is open, is skipped and counted as cancelled once the batch is
//! cancelled, and is counted once (succeeded or failed) before it is settled; the count that finishes the batch
//! publishes `batch.completed`. No function has code of its own for it.
//!
//! Why the count comes before the settle, and the completion through the ledger (ARCHITECTURE.md, "Batches"): a
//! process killed after the count and before its ack gets the item again, finds its bit set (nothing moves),
//! and, when its count was the one that finished the batch (`finished_by`), publishes `batch.completed` through
//! the same ledger effect, so a kill between the count and the publish loses nothing and doubles nothing.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use events::batches::{COMPLETED_LEDGER_PREFIX, Counted, ItemOutcome, batch_completed_id};
use events::{BatchCompleted, CloudEvent};
use publish::batch::{self as batches, Gate};
use tokio_util::sync::CancellationToken;

use crate::ledger::Ledger;
use crate::settle::Outcome;

/// How often an item of a batch still being submitted asks again.
const WAIT_STEP: Duration = Duration::from_millis(250);

/// One consumer's view of the batch bucket, shared by its message tasks.
pub(crate) struct Batches {
    /// `None` when the bucket does not exist: batch items are then retried until it does.
    pub(crate) store: Option<kv::Store>,
    /// The context `store` was bound on: the gate reads the server's clock through it.
    pub(crate) js: jetstream::Context,
    pub(crate) publisher: Arc<publish::Publisher>,
    pub(crate) function: Arc<str>,
}

/// A batch item: its batch and index.
pub(crate) struct Item {
    batch: String,
    index: u64,
}

impl Item {
    pub(crate) fn of(known: &crate::consume::Known<'_>) -> Option<Self> {
        let (batch, index) = batches::item_from(known.batch_id, known.batch_index)?;
        Some(Self { batch, index })
    }
}

/// What to do with a batch item before its handler.
pub(crate) enum Admission {
    /// Run the handler.
    Run,
    /// Settle with this outcome, no handler: an ack for a skipped or cancelled item, a retry on an error.
    Settle(Outcome),
}

impl Batches {
    /// Whether the item may run; waits (with in-progress acks) while its batch is being submitted.
    pub(crate) async fn admit(
        &self,
        item: &Item,
        message: &jetstream::Message,
        ledger: &Ledger,
        progress_every: Duration,
        shutdown: &CancellationToken,
        attempt: u32,
    ) -> Admission {
        let Some(store) = &self.store else {
            return retry(format!(
                "batch item, but the {} bucket does not exist",
                events::BATCH_BUCKET
            ));
        };
        // Ask at least as often as the message must be kept alive, so the wait never outlives its ack deadline.
        let step = WAIT_STEP.min(progress_every);
        let mut last_progress = tokio::time::Instant::now();
        loop {
            match batches::gate(&self.js, store, &item.batch, item.index).await {
                Ok(Gate::Run) => return Admission::Run,
                Ok(Gate::Skip(why)) => {
                    tracing::warn!(batch = %item.batch, index = item.index, reason = why, "batch item skipped unhandled");
                    return Admission::Settle(Outcome::Success);
                }
                // A redelivery of an item not yet counted may have started on an earlier delivery (before the
                // cancel, or still running on another replica): it runs, and its effects stay once through the
                // ledger, so an item that sent is never counted cancelled. Only a first delivery is surely unstarted.
                Ok(Gate::Cancelled { counted: false }) if attempt > 1 => return Admission::Run,
                Ok(Gate::Cancelled { .. }) => {
                    tracing::info!(batch = %item.batch, index = item.index, "batch cancelled: item skipped");
                    return match self.count(item, ItemOutcome::Cancelled, ledger).await {
                        Ok(()) => Admission::Settle(Outcome::Success),
                        Err(reason) => retry(reason),
                    };
                }
                Ok(Gate::Wait) => {
                    if last_progress.elapsed() >= progress_every {
                        crate::settle::progress(message).await;
                        last_progress = tokio::time::Instant::now();
                    }
                    tokio::select! {
                        () = shutdown.cancelled() => return retry("shutting down while the batch was still being submitted".to_owned()),
                        () = tokio::time::sleep(step) => {}
                    }
                }
                Err(err) => return retry(err.to_string()),
            }
        }
    }

    /// Counts the item by the attempt's outcome (a success, or a dead letter), before it is settled. A count that
    /// fails retries the item (its effect is in the ledger); on the last delivery the outcome stands and the
    /// missing count is logged.
    pub(crate) async fn after(
        &self,
        item: &Item,
        message: &jetstream::Message,
        outcome: Outcome,
        ledger: &Ledger,
        attempt: u32,
        last: bool,
    ) -> Outcome {
        let settled = outcome.clone().at_attempt(attempt, last);
        let counted = match settled {
            Outcome::Success => ItemOutcome::Succeeded,
            ref dead if dead.death().is_some() => ItemOutcome::Failed,
            _ => return outcome,
        };
        // The handler's supervision (and its in-progress acks) ended; the count and the settle still take a few
        // writes, which must not outlast the ack deadline and hand the item to another replica meanwhile.
        crate::settle::progress(message).await;
        match self.count(item, counted, ledger).await {
            Ok(()) => outcome,
            Err(reason) if !last => Outcome::Retry {
                after: None,
                reason: format!("batch item not counted: {reason}"),
            },
            Err(reason) => {
                tracing::error!(batch = %item.batch, index = item.index, error = %reason, "batch item not counted on its last delivery");
                outcome
            }
        }
    }

    /// Counts the item once and, when its count finished the batch (now, or on an earlier delivery that did not
    /// get to publish), publishes `batch.completed` through the ledger.
    async fn count(
        &self,
        item: &Item,
        outcome: ItemOutcome,
        ledger: &Ledger,
    ) -> Result<(), String> {
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| format!("no {} bucket", events::BATCH_BUCKET))?;
        let (counted, record) = batches::count(store, &item.batch, item.index, outcome)
            .await
            .map_err(|err| err.to_string())?;
        let finisher = match counted {
            Counted::Now { finished } => finished,
            Counted::Already => record.is_complete() && record.finished_by == Some(item.index),
        };
        if !finisher {
            return Ok(());
        }
        let mut event = CloudEvent::new(format!("/{}", self.function), record.completed());
        event.id = batch_completed_id(&item.batch);
        let publisher = Arc::clone(&self.publisher);
        let key = completed_key(&item.batch);
        ledger
            .once(&key, || async move {
                let published = publisher
                    .publish_event::<BatchCompleted>(&event)
                    .await
                    .map_err(crate::JobError::transient)?;
                tracing::info!(batch = %event.data.batch_id, duplicate = published.duplicate, "batch.completed published");
                Ok(())
            })
            .await
            .map(|_| ())
            .map_err(|err| format!("batch.completed not published: {err}"))
    }
}

/// The ledger key of a batch's `batch.completed`: the batch's, under [`COMPLETED_LEDGER_PREFIX`], not the
/// function's. Whoever finishes the batch's last item (a function's delivery of it, a replay of it, a second
/// function on the same type, or the dlq-router counting it dead) runs the same effect, so one `done` stops them
/// all.
fn completed_key(batch: &str) -> String {
    crate::ledger::key(
        COMPLETED_LEDGER_PREFIX,
        &batch_completed_id(batch),
        "publish",
    )
}

/// The batch side of a dead letter written outside the functions: the dlq-router's record of an item whose every
/// delivery went unanswered (a crash, a hang). The runtime counted it on none of them, so the router counts it
/// `failed` here, through the same gate, count and completion as a function's last delivery.
pub struct DeadItems {
    batches: Batches,
    ledger: Ledger,
}

/// What [`DeadItems::count_failed`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadItem {
    /// The message is not a batch item.
    NotAnItem,
    /// Its batch was never accepted (abandoned, no record): nothing counts.
    Skipped(&'static str),
    /// Counted (now, or before: the count is once per item), and `batch.completed` published when this item
    /// finished the batch.
    Counted,
}

impl DeadItems {
    /// Binds the batch and ledger buckets; `writer` names the process (the `batch.completed` source).
    ///
    /// # Errors
    /// A bucket that does not exist, or NATS not answering.
    pub async fn bind(
        client: &async_nats::Client,
        ledger_bucket: &str,
        lease: Duration,
        writer: &str,
    ) -> anyhow::Result<Self> {
        let js = jetstream::new(client.clone());
        let store = batches::bucket(&js).await?;
        let ledger = js
            .get_key_value(ledger_bucket)
            .await
            .map_err(|err| anyhow::anyhow!("KV bucket {ledger_bucket}: {err}"))?;
        Ok(Self {
            batches: Batches {
                store: Some(store),
                js: js.clone(),
                publisher: Arc::new(publish::Publisher::new(
                    client.clone(),
                    format!("/{writer}"),
                )),
                function: writer.into(),
            },
            ledger: Ledger::new(js, ledger, writer, lease),
        })
    }

    /// Whether the headers name a batch item (nothing to bind or count otherwise).
    pub fn is_item(headers: Option<&HeaderMap>) -> bool {
        batches::item_of(headers).is_some()
    }

    /// Counts the item the dead message's `headers` name as failed, exactly once. A batch still being submitted
    /// is an error (try again later: counting now could complete a batch that is then abandoned).
    ///
    /// # Errors
    /// The record could not be read or written, the batch is still `pending`, or `batch.completed` was not
    /// published; the same call may be repeated.
    pub async fn count_failed(&self, headers: Option<&HeaderMap>) -> Result<DeadItem, String> {
        let Some((batch, index)) = batches::item_of(headers) else {
            return Ok(DeadItem::NotAnItem);
        };
        let item = Item { batch, index };
        let store = self
            .batches
            .store
            .as_ref()
            .ok_or_else(|| format!("no {} bucket", events::BATCH_BUCKET))?;
        match batches::gate(&self.batches.js, store, &item.batch, item.index)
            .await
            .map_err(|err| err.to_string())?
        {
            Gate::Skip(why) => Ok(DeadItem::Skipped(why)),
            Gate::Wait => Err(format!(
                "batch {} is still being submitted; its item is counted once it is open or abandoned",
                item.batch
            )),
            // Every delivery may have started it, so a dead item of a cancelled batch counts failed, as the
            // runtime's own redeliveries do.
            Gate::Run | Gate::Cancelled { .. } => {
                self.batches
                    .count(&item, ItemOutcome::Failed, &self.ledger)
                    .await?;
                Ok(DeadItem::Counted)
            }
        }
    }
}

fn retry(reason: String) -> Admission {
    Admission::Settle(Outcome::Retry {
        after: None,
        reason,
    })
}
