//! The scheduled pull: for a function whose events come in priority classes (one consumer per class) or that is
//! rate limited, pull only what can start now, from the class whose turn it is.
//!
//! The plain pull ([`consume::pull`]) keeps a continuous pull open and lets the server push a batch ahead; a
//! message pushed ahead waits in the client with its `ack_wait` running. That is harmless when every delivered
//! message starts at once, but not when a low-priority batch would sit in front of a high-priority event, nor when
//! a rate limit holds messages back (they would time out into redeliveries). So here each round first takes what
//! lets an event start (a free slot under `max_ack_pending` and, when limited, a grant of the shared rate limit),
//! then fetches (no-wait) at most that many from the class whose turn it is. When every class is empty, one long
//! poll per class waits for the next event; a message it brings is kept alive with in-progress acks until it gets
//! a slot and a grant.
//!
//! Turns: strict priority (high, normal, low), except that a lower class with events waiting is owed a turn after
//! `every - 1` starts from the classes above it. So while low events wait, at least one start in `every` is low,
//! and the same between normal and high: low is never starved. A high event waits for a free slot (the events
//! already started finish) and, when a lower class's turn is owed at that moment, for that one start (two when
//! both lower classes are owed). Both bounds are per replica: each runs its own turns.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::breaker::Breaker;
use crate::consume::Process;
use crate::health::Bound;
use crate::policy::Policy;
use crate::ratelimit::RateLimiter;
use crate::settle;

/// How long an idle class's long poll waits before it is asked again.
const IDLE_POLL: Duration = Duration::from_secs(5);
/// The longest a no-wait fetch may take before the round gives up on it.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// One priority class of a function: its consumer and the layer that runs its messages. Lanes are given highest
/// first.
pub(crate) struct Lane<P> {
    pub(crate) class: events::Priority,
    pub(crate) consumer: PullConsumer,
    pub(crate) policy: Policy,
    pub(crate) processor: Arc<P>,
}

/// Whose turn it is. Pure, so the starvation bound is tested without a server.
#[derive(Debug)]
pub(crate) struct Turns {
    every: u32,
    /// Per lane (highest first): starts from higher lanes since this lane last started or was found empty.
    owed: Vec<u32>,
}

impl Turns {
    pub(crate) fn new(lanes: usize, every: u32) -> Self {
        Self {
            every: every.max(2),
            owed: vec![0; lanes],
        }
    }

    fn due(&self, lane: usize) -> bool {
        self.owed[lane] >= self.every - 1
    }

    /// The lane to fetch from next among those not `tried` this round: the lowest one owed a turn, else the
    /// highest.
    pub(crate) fn next(&self, tried: &[bool]) -> Option<usize> {
        let open = |lane: &usize| !tried[*lane];
        (0..self.owed.len())
            .rev()
            .filter(open)
            .find(|lane| self.due(*lane))
            .or_else(|| (0..self.owed.len()).find(open))
    }

    /// How many may start from `lane` before a lower lane not yet tried is owed its turn (at least 1).
    pub(crate) fn allowance(&self, lane: usize, tried: &[bool]) -> usize {
        (lane + 1..self.owed.len())
            .filter(|lower| !tried[*lower])
            .map(|lower| (self.every - 1).saturating_sub(self.owed[lower]))
            .min()
            .map_or(usize::MAX, |left| usize::try_from(left.max(1)).unwrap_or(1))
    }

    /// An event of `lane` started.
    pub(crate) fn started(&mut self, lane: usize) {
        self.owed[lane] = 0;
        for lower in &mut self.owed[lane + 1..] {
            *lower = lower.saturating_add(1);
        }
    }

    /// `lane` had nothing waiting: it is owed nothing.
    pub(crate) fn empty(&mut self, lane: usize) {
        self.owed[lane] = 0;
    }
}

/// What every task of the scheduled pull shares.
struct Shared<P> {
    lanes: Vec<Lane<P>>,
    turns: Mutex<Turns>,
    permits: Arc<Semaphore>,
    limiter: Option<RateLimiter>,
    polling: Vec<AtomicBool>,
    activity: Notify,
    stop: CancellationToken,
}

/// Serves the lanes until `stop` is cancelled, then drains as [`crate::consume::pull`] does.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn pull<P: Process>(
    lanes: Vec<Lane<P>>,
    every: u32,
    limiter: Option<RateLimiter>,
    breaker: Option<&Breaker>,
    stop: &CancellationToken,
    bound: &Bound,
    drain_timeout: Duration,
) {
    let Some(first) = lanes.first() else {
        return;
    };
    // The function's concurrency is its main consumer's `max_ack_pending`, shared by its classes.
    let slots = lanes
        .iter()
        .find(|lane| lane.class == events::Priority::Normal)
        .unwrap_or(first)
        .policy
        .max_ack_pending
        .max(1);
    bound.set(true);
    tracing::info!(
        consumers = ?lanes.iter().map(|lane| lane.policy.consumer.as_str()).collect::<Vec<_>>(),
        classes = ?lanes.iter().map(|lane| lane.class.as_str()).collect::<Vec<_>>(),
        slots, every, rate_limit = ?limiter.as_ref().map(|limiter| limiter.limit().to_string()),
        "consumer bound; serving"
    );
    let shared = Arc::new(Shared {
        turns: Mutex::new(Turns::new(lanes.len(), every)),
        polling: lanes.iter().map(|_| AtomicBool::new(false)).collect(),
        lanes,
        permits: Arc::new(Semaphore::new(slots)),
        limiter,
        activity: Notify::new(),
        stop: stop.clone(),
    });
    let tracker = TaskTracker::new();
    let stopped = stop.cancelled();
    let mut stopped = std::pin::pin!(stopped);

    'round: loop {
        if let Some(breaker) = breaker.filter(|breaker| breaker.is_open()) {
            tracing::info!("circuit open: fetching nothing until it closes");
            tokio::select! {
                () = &mut stopped => break 'round,
                () = breaker.closed() => tracing::info!("circuit closed: fetching again"),
            }
        }
        let first = tokio::select! {
            () = &mut stopped => break 'round,
            permit = shared.permits.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let mut held = vec![first];
        if let Some(limiter) = &shared.limiter {
            // One grant, one event: a grant is taken only when a slot is free, and spent at once.
            let granted = tokio::select! {
                () = &mut stopped => break 'round,
                granted = limiter.acquire("") => granted,
            };
            if let Err(err) = granted {
                tracing::warn!(error = %err, "rate limit unavailable; trying again");
                drop(held);
                tokio::select! {
                    () = &mut stopped => break 'round,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue 'round,
                }
            }
        } else {
            while held.len() < 256 {
                match shared.permits.clone().try_acquire_owned() {
                    Ok(permit) => held.push(permit),
                    Err(_) => break,
                }
            }
        }
        let (started, failed) = round(&shared, &tracker, &mut held).await;
        drop(held);
        if started > 0 {
            continue;
        }
        if failed {
            tokio::select! {
                () = &mut stopped => break 'round,
                () = tokio::time::sleep(Duration::from_secs(1)) => continue 'round,
            }
        }
        // Every class is empty: one long poll per class waits for the next event.
        for lane in 0..shared.lanes.len() {
            if !shared.polling[lane].swap(true, Ordering::AcqRel) {
                let shared = shared.clone();
                tracker.spawn(async move { wait_on(&shared, lane).await });
            }
        }
        tokio::select! {
            () = &mut stopped => break 'round,
            () = shared.activity.notified() => {}
        }
    }

    bound.set(false);
    tracker.close();
    tracing::info!(
        in_flight = tracker.len(),
        timeout_secs = drain_timeout.as_secs(),
        "draining in-flight handlers"
    );
    if tokio::time::timeout(drain_timeout, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            still_running = tracker.len(),
            "drain timeout reached; unfinished messages will be redelivered"
        );
    }
}

/// Fetches for the held slots, class by class in turn order; returns how many started and whether a fetch failed.
async fn round<P: Process>(
    shared: &Arc<Shared<P>>,
    tracker: &TaskTracker,
    held: &mut Vec<OwnedSemaphorePermit>,
) -> (usize, bool) {
    let mut tried = vec![false; shared.lanes.len()];
    let (mut started, mut failed) = (0, false);
    while !held.is_empty() {
        let (lane, want) = {
            let turns = shared.turns.lock().expect("not poisoned");
            let Some(lane) = turns.next(&tried) else {
                break;
            };
            (lane, held.len().min(turns.allowance(lane, &tried)))
        };
        match fetch(&shared.lanes[lane].consumer, want).await {
            Ok(messages) => {
                let mut turns = shared.turns.lock().expect("not poisoned");
                if messages.len() < want {
                    tried[lane] = true;
                }
                if messages.is_empty() {
                    turns.empty(lane);
                }
                for message in messages {
                    turns.started(lane);
                    let permit = held.pop().expect("no more messages than held slots");
                    started += 1;
                    tracker.spawn(crate::consume::attempt(
                        shared.lanes[lane].processor.clone(),
                        message,
                        Some(permit),
                    ));
                }
            }
            Err(err) => {
                tracing::warn!(consumer = %shared.lanes[lane].policy.consumer, error = %err, "fetch failed");
                tried[lane] = true;
                failed = true;
            }
        }
    }
    (started, failed)
}

/// A no-wait fetch of at most `n`: what the consumer has now, nothing pushed ahead.
async fn fetch(consumer: &PullConsumer, n: usize) -> anyhow::Result<Vec<jetstream::Message>> {
    let mut batch = consumer
        .fetch()
        .max_messages(n)
        .messages()
        .await
        .map_err(|err| anyhow::anyhow!("{err}"))?;
    let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
    let mut messages = Vec::with_capacity(n);
    while messages.len() < n {
        match tokio::time::timeout_at(deadline, batch.next()).await {
            Ok(Some(Ok(message))) => messages.push(message),
            Ok(Some(Err(err))) if messages.is_empty() => return Err(anyhow::anyhow!("{err}")),
            Ok(Some(Err(_)) | None) => break,
            Err(_) if messages.is_empty() => anyhow::bail!("no answer in {FETCH_TIMEOUT:?}"),
            Err(_) => break,
        }
    }
    Ok(messages)
}

/// An idle class's long poll: waits up to [`IDLE_POLL`] for one event, wakes the loop, and runs the event once it
/// has a slot and a grant, keeping it alive with in-progress acks meanwhile.
async fn wait_on<P: Process>(shared: &Arc<Shared<P>>, lane: usize) {
    let consumer = &shared.lanes[lane].consumer;
    let polled = async {
        let mut batch = consumer
            .batch()
            .max_messages(1)
            .expires(IDLE_POLL)
            .messages()
            .await
            .ok()?;
        batch.next().await?.ok()
    };
    let message = tokio::select! {
        () = shared.stop.cancelled() => None,
        message = polled => message,
    };
    shared.polling[lane].store(false, Ordering::Release);
    shared.activity.notify_one();
    let Some(message) = message else {
        return;
    };
    shared.turns.lock().expect("not poisoned").started(lane);
    let policy = &shared.lanes[lane].policy;
    let Some(permit) = keep_alive(&message, policy, async {
        shared.permits.clone().acquire_owned().await.ok()
    })
    .await
    else {
        return;
    };
    if let Some(limiter) = &shared.limiter {
        let granted = keep_alive(&message, policy, async {
            while let Err(err) = limiter.acquire("").await {
                tracing::warn!(error = %err, "rate limit unavailable; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        granted.await;
    }
    shared.lanes[lane].processor.process(message).await;
    drop(permit);
}

/// Runs `wait` while sending in-progress acks for `message`, so waiting never lets it time out into a redelivery.
async fn keep_alive<F: std::future::Future>(
    message: &jetstream::Message,
    policy: &Policy,
    wait: F,
) -> F::Output {
    let mut wait = std::pin::pin!(wait);
    let period = policy.progress_period();
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            output = &mut wait => return output,
            _ = progress.tick() => settle::progress(message).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates backlogs: each pick starts one event from the lane `next` names, if it has one.
    fn starts(backlog: [usize; 3], every: u32, picks: usize) -> Vec<usize> {
        let mut left = backlog;
        let mut turns = Turns::new(3, every);
        let mut order = Vec::new();
        for _ in 0..picks {
            let mut tried = [false; 3];
            loop {
                let Some(lane) = turns.next(&tried) else {
                    return order;
                };
                assert!(turns.allowance(lane, &tried) >= 1);
                if left[lane] == 0 {
                    turns.empty(lane);
                    tried[lane] = true;
                    continue;
                }
                left[lane] -= 1;
                turns.started(lane);
                order.push(lane);
                break;
            }
        }
        order
    }

    #[test]
    fn higher_classes_go_first_and_a_waiting_lower_one_gets_one_start_in_every() {
        let order = starts([100, 100, 100], 4, 40);
        // High first; after three highs, the lowest owed class (low, owed by both above) takes a turn, then
        // normal, and so on: never more than every - 1 starts above a waiting class between two of its own.
        assert_eq!(&order[..6], &[0, 0, 0, 2, 1, 0]);
        for lane in [1, 2] {
            let mut since = 0;
            for started in &order {
                if *started == lane {
                    since = 0;
                } else if *started < lane {
                    since += 1;
                    assert!(since < 4, "lane {lane} waited {since} starts: {order:?}");
                }
            }
        }
    }

    #[test]
    fn a_high_event_starts_at_the_next_pick_whatever_the_low_backlog() {
        let mut turns = Turns::new(3, 8);
        for _ in 0..1000 {
            turns.started(2);
        }
        assert_eq!(turns.next(&[false; 3]), Some(0));
        // Lower classes not yet found empty may be waiting: a batch of highs stops at their turn.
        assert_eq!(turns.allowance(0, &[false; 3]), 7);
        assert_eq!(turns.allowance(0, &[false, true, true]), usize::MAX);
    }

    #[test]
    fn an_empty_lower_class_is_owed_nothing() {
        let order = starts([50, 0, 0], 4, 50);
        assert_eq!(order, vec![0; 50]);
    }

    #[test]
    fn a_class_with_nothing_above_it_runs_alone() {
        assert_eq!(starts([0, 0, 7], 8, 10), vec![2; 7]);
    }

    #[test]
    fn allowance_stops_a_batch_at_the_lower_class_turn() {
        let mut turns = Turns::new(3, 4);
        turns.started(0);
        // Low is owed 1 of 3: two more highs, then low's turn.
        assert_eq!(turns.allowance(0, &[false; 3]), 2);
        assert_eq!(turns.allowance(0, &[false, false, true]), 2);
    }
}
