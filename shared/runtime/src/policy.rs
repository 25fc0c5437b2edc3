//! The retry policy of a consumer, read from the server at bind time so `infra/` is the one place retries are set.

use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;

/// What the consumer on the server says.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub(crate) stream: String,
    pub(crate) consumer: String,
    pub(crate) backoff: Vec<Duration>,
    pub(crate) max_deliver: Option<u32>,
    pub(crate) ack_wait: Duration,
    pub(crate) max_ack_pending: usize,
}

impl Policy {
    /// Reads the policy of a bound consumer.
    pub(crate) fn of(stream: &str, consumer_name: &str, consumer: &PullConsumer) -> Self {
        let config = &consumer.cached_info().config;
        Self {
            stream: stream.to_owned(),
            consumer: consumer_name.to_owned(),
            backoff: config.backoff.clone(),
            max_deliver: u32::try_from(config.max_deliver)
                .ok()
                .filter(|max| *max > 0),
            ack_wait: config.ack_wait,
            max_ack_pending: usize::try_from(config.max_ack_pending)
                .ok()
                .filter(|max| *max > 0)
                .unwrap_or(1000),
        }
    }

    /// The delay before attempt `attempt + 1`: the consumer's backoff list, the last value reused.
    pub(crate) fn delay_after(&self, attempt: u32) -> Duration {
        if self.backoff.is_empty() {
            let exp = attempt.saturating_sub(1).min(8);
            return (Duration::from_secs(1) * (1 << exp)).min(Duration::from_secs(300));
        }
        self.step(attempt)
    }

    /// The delay to put on the NAK of delivery `attempt` so the server redelivers `gap` later.
    ///
    /// Without a backoff list the server waits the NAK's delay, so the delay is the gap. With one, nats-server
    /// (2.15) sets the pending timestamp to `now - ack_wait + delay` (`ack_wait` being `backoff[0]`) and redelivers
    /// once the current step `backoff[attempt-1]` has passed, so the gap is `delay + step - backoff[0]`; the delay
    /// that gives `gap` is `gap - step + backoff[0]`. A gap shorter than `step - backoff[0]` cannot be had: a NAK
    /// without a delay redelivers at once, so the floor is a 1 ms delay, a gap of about `step - backoff[0]`.
    pub(crate) fn nak_delay(&self, attempt: u32, gap: Duration) -> Duration {
        let Some(first) = self.backoff.first() else {
            return gap;
        };
        let step = self.step(attempt);
        (gap + *first)
            .saturating_sub(step)
            .max(Duration::from_millis(1))
    }

    /// The server's redelivery deadline for delivery `attempt`: the backoff list, the last value reused.
    fn step(&self, attempt: u32) -> Duration {
        let index = usize::try_from(attempt.saturating_sub(1))
            .unwrap_or(usize::MAX)
            .min(self.backoff.len().saturating_sub(1));
        self.backoff.get(index).copied().unwrap_or(self.ack_wait)
    }

    /// Progress acks must land before the server's redelivery deadline; with a backoff list that deadline is
    /// the current backoff step, so tick at a third of the shortest.
    pub(crate) fn progress_period(&self) -> Duration {
        let shortest = self
            .backoff
            .iter()
            .copied()
            .chain([self.ack_wait])
            .min()
            .unwrap_or(self.ack_wait);
        (shortest / 3).max(Duration::from_millis(100))
    }

    pub(crate) fn is_last(&self, attempt: u32) -> bool {
        is_last(self.max_deliver, attempt)
    }
}

/// Whether a failure of delivery `attempt` goes to the dead-letter stream instead of being retried.
pub(crate) fn is_last(max_deliver: Option<u32>, attempt: u32) -> bool {
    max_deliver.is_some_and(|max| attempt >= max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(backoff: &[u64], max_deliver: Option<u32>) -> Policy {
        Policy {
            stream: "EVENTS".into(),
            consumer: "welcome".into(),
            backoff: backoff
                .iter()
                .map(|ms| Duration::from_millis(*ms))
                .collect(),
            max_deliver,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 16,
        }
    }

    #[test]
    fn delays_follow_the_backoff_list_and_reuse_the_last() {
        let policy = policy(&[100, 200, 400], Some(5));
        assert_eq!(policy.delay_after(1), Duration::from_millis(100));
        assert_eq!(policy.delay_after(2), Duration::from_millis(200));
        assert_eq!(policy.delay_after(3), Duration::from_millis(400));
        assert_eq!(policy.delay_after(9), Duration::from_millis(400));
        assert!(policy.is_last(5) && !policy.is_last(4));
    }

    #[test]
    fn nak_delays_cancel_the_step_the_server_adds() {
        let listed = policy(&[1000, 2000, 3000], Some(4));
        // The server's gap is delay + step - backoff[0]: a backoff step needs a delay of backoff[0].
        for attempt in 1..=5 {
            assert_eq!(
                listed.nak_delay(attempt, listed.delay_after(attempt)),
                Duration::from_secs(1)
            );
        }
        // A handler's own 7 s at delivery 3 (step 3 s): 7 - 3 + 1.
        assert_eq!(
            listed.nak_delay(3, Duration::from_secs(7)),
            Duration::from_secs(5)
        );
        // Shorter than the floor (step - backoff[0] = 2 s): the smallest positive delay, never a bare NAK.
        assert_eq!(
            listed.nak_delay(3, Duration::from_millis(500)),
            Duration::from_millis(1)
        );
        // Without a backoff list the delay is the gap.
        assert_eq!(
            policy(&[], None).nak_delay(4, Duration::from_secs(7)),
            Duration::from_secs(7)
        );
    }

    #[test]
    fn unlimited_deliveries_never_reach_the_last_attempt() {
        let policy = policy(&[], None);
        assert!(!policy.is_last(u32::MAX));
        assert_eq!(policy.delay_after(1), Duration::from_secs(1));
        assert_eq!(policy.delay_after(50), Duration::from_secs(256));
    }

    #[test]
    fn progress_ticks_before_the_shortest_deadline() {
        assert_eq!(
            policy(&[300, 600], None).progress_period(),
            Duration::from_millis(100)
        );
        assert_eq!(
            policy(&[30_000], None).progress_period(),
            Duration::from_secs(10)
        );
    }
}
