//! The circuit breaker: when a dependency is down, stop taking messages instead of burning their retries.
//!
//! Handlers report a downed dependency with [`JobError::unavailable`](crate::JobError::unavailable). After
//! `JOB_BREAKER_THRESHOLD` such failures in a row the breaker opens: the replica stops fetching and gives back what
//! it holds (a NAK, no failure recorded), so another replica whose route works serves those messages, and with
//! every replica open they wait on the server without being delivered. A message on its last delivery is the
//! exception: a NAK would make the server dead-letter it, so it waits here, kept alive with in-progress acks, and
//! runs once the breaker closes (through a drain too, until the drain's deadline). A probe (the function's, such as an SMTP `NOOP`, or else one trial message) runs every
//! `JOB_BREAKER_PROBE_SECS`, doubling up to `JOB_BREAKER_PROBE_MAX_SECS`; when it succeeds the breaker closes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// A check that the dependency answers again.
pub type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), anyhow::Error>> + Send>> + Send + Sync>;

/// Shared by every handler task of one function.
pub(crate) struct Breaker {
    threshold: u32,
    consecutive: AtomicU32,
    open: watch::Sender<bool>,
    probe: Option<Probe>,
    probe_initial: Duration,
    probe_max: Duration,
    opened: opentelemetry::metrics::Counter<u64>,
    /// 1 while open, 0 while closed: what a dashboard shows as the breaker's state (the opened counter says how
    /// often, not whether it is open now).
    state: opentelemetry::metrics::Gauge<u64>,
    attributes: [opentelemetry::KeyValue; 1],
}

impl Breaker {
    pub(crate) fn new(
        function: &str,
        threshold: u32,
        probe: Option<Probe>,
        probe_initial: Duration,
        probe_max: Duration,
    ) -> Arc<Self> {
        let meter = opentelemetry::global::meter("jetfn");
        let opened = meter
            .u64_counter("jetfn.breaker.opened")
            .with_description("times the circuit breaker opened because a dependency was down")
            .build();
        let state = meter
            .u64_gauge("jetfn.breaker.open")
            .with_description("1 while this replica's circuit breaker is open, 0 while closed")
            .build();
        let attributes = [opentelemetry::KeyValue::new(
            "jetfn.function",
            function.to_owned(),
        )];
        state.record(0, &attributes);
        Arc::new(Self {
            threshold,
            consecutive: AtomicU32::new(0),
            open: watch::Sender::new(false),
            probe,
            probe_initial,
            probe_max: probe_max.max(probe_initial),
            opened,
            state,
            attributes,
        })
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
        self.state.record(u64::from(open), &self.attributes);
    }

    pub(crate) fn is_open(&self) -> bool {
        *self.open.borrow()
    }

    /// Resolves when the breaker is closed.
    pub(crate) async fn closed(&self) {
        let mut receiver = self.open.subscribe();
        let _ = receiver.wait_for(|open| !*open).await;
    }

    /// Resolves when the breaker is open.
    pub(crate) async fn opened(&self) {
        let mut receiver = self.open.subscribe();
        let _ = receiver.wait_for(|open| *open).await;
    }

    pub(crate) fn record_success(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
    }

    /// Counts a downed-dependency failure; returns whether the breaker is (now) open.
    pub(crate) fn record_unavailable(self: &Arc<Self>) -> bool {
        if self.threshold == 0 {
            return false;
        }
        let failures = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= self.threshold {
            let newly_opened = self
                .open
                .send_if_modified(|open| !std::mem::replace(open, true));
            if newly_opened {
                self.opened.add(1, &self.attributes);
                self.state.record(1, &self.attributes);
                tracing::error!(
                    consecutive_failures = failures,
                    probe_every_secs = self.probe_initial.as_secs_f64(),
                    "circuit open: a dependency is down; giving back held messages, fetching none, probing"
                );
                let breaker = self.clone();
                tokio::spawn(async move { breaker.probe_until_closed().await });
            }
            return true;
        }
        self.is_open()
    }

    async fn probe_until_closed(self: Arc<Self>) {
        let mut delay = self.probe_initial;
        loop {
            tokio::time::sleep(delay).await;
            match &self.probe {
                Some(probe) => match probe().await {
                    Ok(()) => {
                        tracing::info!("circuit closed: the dependency answers again");
                        self.consecutive.store(0, Ordering::Relaxed);
                        self.set_open(false);
                        return;
                    }
                    Err(err) => {
                        tracing::warn!(error = %format!("{err:#}"), next_probe_secs = (delay * 2).min(self.probe_max).as_secs_f64(), "probe failed; circuit stays open");
                    }
                },
                None => {
                    // No probe: half-open. Let traffic through; one more failure reopens at once.
                    tracing::info!("circuit half-open: trying messages again");
                    self.consecutive
                        .store(self.threshold.saturating_sub(1), Ordering::Relaxed);
                    self.set_open(false);
                    return;
                }
            }
            delay = (delay * 2).min(self.probe_max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_after_the_threshold_and_closes_when_the_probe_answers() {
        let answers = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = answers.clone();
        let probe: Probe = Arc::new(move || {
            let up = flag.load(Ordering::Relaxed);
            Box::pin(async move {
                if up {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("still down"))
                }
            })
        });
        let breaker = Breaker::new(
            "t",
            3,
            Some(probe),
            Duration::from_millis(10),
            Duration::from_millis(40),
        );
        assert!(!breaker.record_unavailable());
        assert!(!breaker.record_unavailable());
        assert!(breaker.record_unavailable());
        assert!(breaker.is_open());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(breaker.is_open(), "the probe still fails");
        answers.store(true, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(2), breaker.closed())
            .await
            .expect("closes once the probe answers");
        assert!(!breaker.is_open());
    }

    #[test]
    fn a_success_resets_the_count() {
        let breaker = Breaker::new("t", 2, None, Duration::from_secs(1), Duration::from_secs(1));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            assert!(!breaker.record_unavailable());
            breaker.record_success();
            assert!(!breaker.record_unavailable());
        });
    }
}
