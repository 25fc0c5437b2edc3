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
        let index = usize::try_from(attempt.saturating_sub(1))
            .unwrap_or(usize::MAX)
            .min(self.backoff.len() - 1);
        self.backoff[index]
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
