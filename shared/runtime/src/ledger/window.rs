//! The duplicate window as this process saw it: for each effect that succeeded, the time from its end to the
//! server acknowledging `done`. A crash inside that time repeats the effect after the lease, so its size is the
//! number ARCHITECTURE.md states and the bench measures. Kept in fixed buckets (a quarter of a power of two
//! each), so recording costs a few atomic adds and memory never grows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKETS: usize = 4 * 40;

static COUNTS: [AtomicU64; BUCKETS] = [const { AtomicU64::new(0) }; BUCKETS];
static MAX_MICROS: AtomicU64 = AtomicU64::new(0);
static SUM_MICROS: AtomicU64 = AtomicU64::new(0);

/// The windows recorded since start (or since [`reset`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Effects whose `done` was acknowledged.
    pub count: u64,
    /// The mean window.
    pub mean: Duration,
    /// Upper bound of the bucket holding the median (at most 19% above the true value).
    pub p50: Duration,
    /// Upper bound of the bucket holding the 99th percentile.
    pub p99: Duration,
    /// The longest window.
    pub max: Duration,
}

pub(crate) fn record(window: Duration) {
    let micros = u64::try_from(window.as_micros()).unwrap_or(u64::MAX);
    COUNTS[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    MAX_MICROS.fetch_max(micros, Ordering::Relaxed);
    SUM_MICROS.fetch_add(micros, Ordering::Relaxed);
}

/// What was recorded so far.
pub fn snapshot() -> Window {
    let counts: Vec<u64> = COUNTS
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .collect();
    let count: u64 = counts.iter().sum();
    let quantile = |q: f64| {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (index, bucket_count) in counts.iter().enumerate() {
            seen += bucket_count;
            if seen >= rank {
                return Duration::from_micros(upper(index));
            }
        }
        Duration::ZERO
    };
    let max = Duration::from_micros(MAX_MICROS.load(Ordering::Relaxed));
    Window {
        count,
        mean: Duration::from_micros(
            SUM_MICROS
                .load(Ordering::Relaxed)
                .checked_div(count)
                .unwrap_or(0),
        ),
        p50: if count == 0 {
            Duration::ZERO
        } else {
            quantile(0.5).min(max)
        },
        p99: if count == 0 {
            Duration::ZERO
        } else {
            quantile(0.99).min(max)
        },
        max,
    }
}

/// Forgets what was recorded (a bench's warm-up).
pub fn reset() {
    for count in &COUNTS {
        count.store(0, Ordering::Relaxed);
    }
    MAX_MICROS.store(0, Ordering::Relaxed);
    SUM_MICROS.store(0, Ordering::Relaxed);
}

fn bucket(micros: u64) -> usize {
    if micros <= 1 {
        return 0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let index = ((micros as f64).log2() * 4.0).floor() as usize;
    index.min(BUCKETS - 1)
}

fn upper(index: usize) -> u64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let bound = 2_f64.powf((index + 1) as f64 / 4.0).ceil() as u64;
    bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values() {
        for micros in [2_u64, 3, 17, 1_000, 4_321, 99_999, 10_000_000] {
            let index = bucket(micros);
            assert!(
                upper(index) >= micros,
                "{micros} fits under its bucket's bound"
            );
            assert!(
                index == 0 || upper(index - 1) <= micros + 1,
                "{micros} is above the previous bucket"
            );
        }
    }
}
