//! The ledger protocol, modelled: one key on a compare-and-set store with a server clock, attempts that claim,
//! run an effect, renew and record `done` through the same [`judge`], [`conflict`] and [`renew_period`] the KV
//! backend calls, and faults drawn at random from thousands of seeds: attempts racing (replicas, re-publishes,
//! redeliveries), crashes at any step, abandoned handlers, server stalls, writes that land but whose reply is lost
//! (a batch's commit reply, say), effects up to three leases long and clocks off by up to ten minutes. A seeded generator keeps every run reproducible; a failure names its seed.
//!
//! The property: an effect completes more than once only by one of the documented window events (a crash or an
//! abandonment between the effect's end and `done` landing, or a server stall longer than the lease less one
//! renewal period), and once the faults stop the key ends `done` (no claim stays stuck). The same model with each
//! of the old rules put back (no renewal, `done` given up after three failures, lease age from local clocks)
//! breaks the property, so the test can see the bugs it guards against.

use std::time::Duration;

use super::{Conflict, Value, Verdict, conflict, done, judge, parse, pending, renew_period};

/// One tick of server time.
const TICK_MS: u64 = 1_000;
const LEASE_TICKS: u64 = 20;
/// `JOB_HANDLER_TIMEOUT_SECS` against the lease, as 300 s against 120 s.
const HANDLER_TIMEOUT_TICKS: u64 = 50;
const FAULTS_END: u64 = 300;
const RUN_END: u64 = 800;
const SEEDS: u64 = 3_000;

fn lease() -> Duration {
    Duration::from_millis(LEASE_TICKS * TICK_MS)
}

/// Which rules the attempts follow: today's, or one of the old ones put back.
#[derive(Debug, Clone, Copy)]
struct Rules {
    renew: bool,
    /// The old `mark_done`: give up after this many failed writes, leaving the claim pending.
    give_up_done_after: Option<u32>,
    /// The old lease age: the observer's wall clock minus the claimant's, as written in the value.
    local_age: bool,
}

const TODAY: Rules = Rules {
    renew: true,
    give_up_done_after: None,
    local_age: false,
};

/// xorshift64*: small, seeded, good enough to draw schedules.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct Stored {
    value: String,
    revision: u64,
    created: u64,
}

/// The KV key: a CAS store stamping each write with the server's clock; unanswered while stalled.
#[derive(Default)]
struct Kv {
    stored: Option<Stored>,
    last_revision: u64,
    stalled_until: u64,
}

enum Write {
    Landed(u64),
    WrongRevision,
    Down,
}

impl Kv {
    fn up(&self, now: u64) -> bool {
        now >= self.stalled_until
    }
    fn write(&mut self, now: u64, value: String, expect: Option<u64>) -> Write {
        if !self.up(now) {
            return Write::Down;
        }
        if self.stored.as_ref().map(|stored| stored.revision) != expect {
            return Write::WrongRevision;
        }
        self.last_revision += 1;
        self.stored = Some(Stored {
            value,
            revision: self.last_revision,
            created: now,
        });
        Write::Landed(self.last_revision)
    }
    fn read(&self) -> Option<&Stored> {
        self.stored.as_ref()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Claim,
    TakeOver { seen: u64 },
    Running { ends_at: u64 },
    MarkDone { failures: u32 },
}

struct Attempt {
    token: String,
    skew_ms: i64,
    started: u64,
    phase: Phase,
    revision: u64,
    last_renewal: u64,
    renewing: bool,
}

struct World {
    rules: Rules,
    rng: Rng,
    now: u64,
    kv: Kv,
    attempts: Vec<Attempt>,
    /// Attempts that will come (redeliveries, re-publishes), with the tick they arrive at.
    arriving: Vec<u64>,
    tokens: u64,
    completions: u32,
    window_events: u32,
}

impl World {
    fn new(seed: u64, rules: Rules) -> Self {
        let mut rng = Rng::new(seed);
        let arriving = (0..1 + rng.below(3)).map(|_| rng.below(30)).collect();
        Self {
            rules,
            rng,
            now: 0,
            kv: Kv::default(),
            attempts: Vec::new(),
            arriving,
            tokens: 0,
            completions: 0,
            window_events: 0,
        }
    }

    fn wall_ms(&self, skew_ms: i64) -> u64 {
        (self.now * TICK_MS).saturating_add_signed(skew_ms)
    }

    fn spawn(&mut self) {
        self.tokens += 1;
        // Up to ten minutes either way.
        let skew_ms = i64::try_from(self.rng.below(1_200_001)).unwrap_or(0) - 600_000;
        self.attempts.push(Attempt {
            token: format!("t{}", self.tokens),
            skew_ms,
            started: self.now,
            phase: Phase::Claim,
            revision: 0,
            last_renewal: 0,
            renewing: false,
        });
    }

    fn is_done(&self) -> bool {
        self.kv
            .read()
            .is_some_and(|stored| matches!(parse(stored.value.as_bytes()), Value::Done(_)))
    }

    fn run(mut self) -> Result<(), String> {
        while self.now < RUN_END {
            self.tick();
            self.now += 1;
        }
        if self.completions > 1 + self.window_events {
            return Err(format!(
                "the effect completed {} times with {} window events",
                self.completions, self.window_events
            ));
        }
        if !self.is_done() {
            return Err(format!(
                "the key is not done {} ticks after the faults stopped",
                RUN_END - FAULTS_END
            ));
        }
        Ok(())
    }

    fn tick(&mut self) {
        let faulty = self.now < FAULTS_END;
        if faulty && self.kv.up(self.now) && self.rng.chance(1) {
            let ticks = 1 + self.rng.below(2 * LEASE_TICKS);
            let renewal_ticks = renew_period(lease()).as_millis() / u128::from(TICK_MS);
            if u128::from(ticks) >= u128::from(LEASE_TICKS) - renewal_ticks {
                self.window_events += 1;
            }
            self.kv.stalled_until = self.now + ticks;
        }
        if faulty && self.rng.chance(3) {
            let at = self.now + self.rng.below(10);
            self.arriving.push(at);
        }
        // JetStream redelivers until an attempt acks: while the key is not done, an attempt keeps coming.
        if self.attempts.is_empty() && self.arriving.is_empty() && !self.is_done() {
            self.arriving.push(self.now + 1 + self.rng.below(3));
        }
        let now = self.now;
        let due = self.arriving.iter().filter(|at| **at <= now).count();
        self.arriving.retain(|at| *at > now);
        for _ in 0..due {
            self.spawn();
        }
        let mut index = 0;
        while index < self.attempts.len() {
            let keep = self.step(index, faulty);
            if keep {
                index += 1;
            } else {
                self.attempts.swap_remove(index);
            }
        }
    }

    /// One tick of attempt `index`; false when it ended (finished, crashed or abandoned).
    fn step(&mut self, index: usize, faulty: bool) -> bool {
        let phase = self.attempts[index].phase;
        let in_window = matches!(phase, Phase::MarkDone { .. });
        if faulty && self.rng.chance(2) {
            // A crash: in the window only between the effect's end and `done` landing.
            if in_window {
                self.window_events += 1;
            }
            return false;
        }
        if self.now - self.attempts[index].started >= HANDLER_TIMEOUT_TICKS
            && !matches!(phase, Phase::Claim)
        {
            // Abandoned at the handler timeout: the effect may have completed without `done`.
            if matches!(phase, Phase::Running { .. }) {
                self.completions += 1;
            }
            if matches!(phase, Phase::Running { .. } | Phase::MarkDone { .. }) {
                self.window_events += 1;
            }
            return false;
        }
        if self.rng.chance(25) {
            // Not scheduled this tick.
            return true;
        }
        if matches!(phase, Phase::Running { .. } | Phase::MarkDone { .. }) {
            self.renew(index);
        }
        match phase {
            Phase::Claim => self.claim(index),
            Phase::TakeOver { seen } => {
                let value = pending(
                    &self.attempts[index].token,
                    self.wall_ms(self.attempts[index].skew_ms),
                );
                match self.write(value, Some(seen)) {
                    Write::Landed(revision) => self.start(index, revision),
                    Write::WrongRevision | Write::Down => self.attempts[index].phase = Phase::Claim,
                }
                true
            }
            Phase::Running { ends_at } => {
                if self.now >= ends_at {
                    self.completions += 1;
                    self.attempts[index].phase = Phase::MarkDone { failures: 0 };
                }
                true
            }
            Phase::MarkDone { failures } => self.mark_done(index, failures),
        }
    }

    fn claim(&mut self, index: usize) -> bool {
        let token = self.attempts[index].token.clone();
        let value = pending(&token, self.wall_ms(self.attempts[index].skew_ms));
        let expect = self.kv.read().map(|stored| stored.revision);
        if expect.is_none() {
            return match self.write(value, None) {
                Write::Landed(revision) => {
                    self.start(index, revision);
                    true
                }
                Write::WrongRevision | Write::Down => true,
            };
        }
        if !self.kv.up(self.now) {
            return true;
        }
        let stored = self.kv.read().expect("a value");
        let found = parse(stored.value.as_bytes());
        // Its own claim, whose reply was lost: the claim is held.
        if conflict(Some(&found), &token) == Conflict::Ours {
            let revision = stored.revision;
            self.start(index, revision);
            return true;
        }
        let age_ms = if self.rules.local_age {
            let written: u64 = stored
                .value
                .split(' ')
                .nth(2)
                .and_then(|ms| ms.parse().ok())
                .unwrap_or(0);
            self.wall_ms(self.attempts[index].skew_ms)
                .saturating_sub(written)
        } else {
            (self.now - stored.created) * TICK_MS
        };
        match judge(&found, Duration::from_millis(age_ms), lease()) {
            // Skipped: the job acks.
            Verdict::Done(_) => false,
            // Retried later as a new delivery.
            Verdict::Busy(remaining) => {
                let ticks = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX) / TICK_MS;
                let at = self.now + ticks.max(1);
                self.arriving.push(at);
                false
            }
            Verdict::TakeOver => {
                self.attempts[index].phase = Phase::TakeOver {
                    seen: stored.revision,
                };
                true
            }
            Verdict::Unknown => panic!("the model writes only known values"),
        }
    }

    fn start(&mut self, index: usize, revision: u64) {
        let length = 1 + self.rng.below(3 * LEASE_TICKS);
        let attempt = &mut self.attempts[index];
        attempt.revision = revision;
        attempt.last_renewal = self.now;
        attempt.renewing = self.rules.renew;
        attempt.phase = Phase::Running {
            ends_at: self.now + length,
        };
    }

    fn renew(&mut self, index: usize) {
        let period = u64::try_from(renew_period(lease()).as_millis()).unwrap_or(u64::MAX) / TICK_MS;
        let attempt = &self.attempts[index];
        if !attempt.renewing || self.now - attempt.last_renewal < period {
            return;
        }
        let value = pending(&attempt.token, self.wall_ms(attempt.skew_ms));
        let expect = Some(attempt.revision);
        self.attempts[index].last_renewal = self.now;
        match self.write(value, expect) {
            Write::Landed(revision) => self.attempts[index].revision = revision,
            Write::WrongRevision => match self.conflict(index) {
                Conflict::Ours => {}
                Conflict::Done | Conflict::Lost => self.attempts[index].renewing = false,
            },
            Write::Down => {}
        }
    }

    fn mark_done(&mut self, index: usize, failures: u32) -> bool {
        let value = done(self.wall_ms(self.attempts[index].skew_ms), None);
        let expect = Some(self.attempts[index].revision);
        match self.write(value, expect) {
            Write::Landed(_) => false,
            Write::WrongRevision => match self.conflict(index) {
                Conflict::Ours => true,
                Conflict::Done | Conflict::Lost => false,
            },
            Write::Down => {
                let failures = failures + 1;
                if self
                    .rules
                    .give_up_done_after
                    .is_some_and(|limit| failures >= limit)
                {
                    // The old give-up: the attempt ends as a transient failure, its claim left pending.
                    return false;
                }
                self.attempts[index].phase = Phase::MarkDone { failures };
                true
            }
        }
    }

    /// A write to the key; while faults last, one in twenty that land loses its reply (the writer sees an error).
    fn write(&mut self, value: String, expect: Option<u64>) -> Write {
        let written = self.kv.write(self.now, value, expect);
        if matches!(written, Write::Landed(_)) && self.now < FAULTS_END && self.rng.chance(5) {
            return Write::Down;
        }
        written
    }

    /// After a CAS met another revision, as `settle_conflict` does: adopt the revision while the claim is ours.
    fn conflict(&mut self, index: usize) -> Conflict {
        let stored = self.kv.read();
        let found = stored.map(|stored| parse(stored.value.as_bytes()));
        let verdict = conflict(found.as_ref(), &self.attempts[index].token);
        if verdict == Conflict::Ours
            && let Some(stored) = stored
        {
            self.attempts[index].revision = stored.revision;
        }
        verdict
    }
}

fn failures(rules: Rules) -> Vec<(u64, String)> {
    (0..SEEDS)
        .filter_map(|seed| {
            World::new(seed, rules)
                .run()
                .err()
                .map(|failure| (seed, failure))
        })
        .collect()
}

#[test]
fn an_effect_never_runs_twice_outside_the_window_and_no_claim_stays_stuck() {
    let failed = failures(TODAY);
    assert!(
        failed.is_empty(),
        "{} of {SEEDS} schedules broke the ledger's promise; first: seed {} ({})",
        failed.len(),
        failed[0].0,
        failed[0].1
    );
}

#[test]
fn the_model_sees_each_old_bug() {
    let old = [
        (
            "no renewal",
            Rules {
                renew: false,
                ..TODAY
            },
        ),
        (
            "done given up after 3 failures",
            Rules {
                give_up_done_after: Some(3),
                ..TODAY
            },
        ),
        (
            "lease age from local clocks",
            Rules {
                local_age: true,
                ..TODAY
            },
        ),
    ];
    for (name, rules) in old {
        assert!(
            !failures(rules).is_empty(),
            "the model finds no duplicate with the old rule: {name}"
        );
    }
}
