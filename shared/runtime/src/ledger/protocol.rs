//! The ledger's rules without I/O: what a key's value means, what an attempt does with what it found, and when
//! the claimant renews. The KV backend calls these and nothing else decides; the model test below drives the
//! same functions through crashes, stalls and skewed clocks.

use std::time::Duration;

/// A ledger value, as stored: `pending <token> <ms>` or `done <ms> [<decision>] [+<outcome mark>...]`. The marks
/// record the outcomes of the effect that were published ([`marked`]). The milliseconds are the
/// writer's wall clock, for a person reading the bucket only: no rule reads them, because two hosts' clocks
/// disagree. Lease age is the server's `created` time of the entry against a server timestamp of now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// Claimed by the attempt holding `token`, a fresh id per claim.
    Pending(String),
    /// Completed; `decision` is what the effect decided, when it recorded one.
    Done(Option<String>),
    Unknown,
}

pub(crate) fn parse(value: &[u8]) -> Value {
    let text = std::str::from_utf8(value).unwrap_or_default();
    let mut parts = text.split(' ');
    match parts.next() {
        // A mark is never a decision: `decision_token` keeps no `+`.
        Some("done") => Value::Done(
            parts
                .nth(1)
                .filter(|decision| !decision.starts_with('+'))
                .map(str::to_owned),
        ),
        Some("pending") => parts
            .next()
            .filter(|token| !token.is_empty())
            .map_or(Value::Unknown, |token| Value::Pending(token.to_owned())),
        _ => Value::Unknown,
    }
}

pub(crate) fn pending(token: &str, wall_ms: u64) -> String {
    format!("pending {token} {wall_ms}")
}

pub(crate) fn done(wall_ms: u64, decision: Option<&str>) -> String {
    match decision {
        Some(decision) => format!("done {wall_ms} {decision}"),
        None => format!("done {wall_ms}"),
    }
}

/// The value that records the outcome `mark` published, on its effect's key: `found` (the key's value, read
/// before the publish) with the mark added where it records the effect done, or a `done` of its own otherwise (the
/// effect ran in this attempt, which wrote `done` without marks, or the ledger lost the key meanwhile). An
/// outcome's record sits on its effect's key rather than a key of its own, so an email holds one key in the
/// bucket, not two: nats-server keeps every key in memory (tests/bench/ANALYSIS.md, section 34).
pub(crate) fn marked(found: Option<&[u8]>, mark: &str, wall_ms: u64) -> String {
    let kept = found
        .and_then(|value| std::str::from_utf8(value).ok())
        .filter(|text| matches!(parse(text.as_bytes()), Value::Done(_)));
    match kept {
        Some(text) => format!("{text} +{mark}"),
        None => format!("done {wall_ms} +{mark}"),
    }
}

/// Whether `value` records the outcome `mark` published ([`marked`]).
pub(crate) fn has_mark(value: &[u8], mark: &str) -> bool {
    let text = std::str::from_utf8(value).unwrap_or_default();
    matches!(parse(value), Value::Done(_))
        && text
            .split(' ')
            .any(|part| part.strip_prefix('+') == Some(mark))
}

/// A decision is stored in the value as one token: short, and nothing a person's data could hide in.
pub(crate) fn decision_token(decision: &str) -> String {
    let mut token = super::sanitize_token(decision);
    token.truncate(64);
    token
}

/// What an attempt whose `create` lost does with the value it found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Skip the effect: it completed.
    Done(Option<String>),
    /// A live claim: retry after this long.
    Busy(Duration),
    /// The claimant stopped renewing for a whole lease: take the claim over (CAS on the revision seen).
    TakeOver,
    Unknown,
}

/// `age` is the server's now minus the server's `created` of the entry, so a replica's clock has no say.
pub(crate) fn judge(found: &Value, age: Duration, lease: Duration) -> Verdict {
    match found {
        Value::Done(decision) => Verdict::Done(decision.clone()),
        Value::Pending(_) if age < lease => Verdict::Busy(lease - age),
        Value::Pending(_) => Verdict::TakeOver,
        Value::Unknown => Verdict::Unknown,
    }
}

/// What the claimant does when its CAS write (a renewal or `done`) met another revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Conflict {
    /// The key still holds this claim (an earlier write of ours landed though its reply was lost): go on from
    /// the revision read.
    Ours,
    /// It is done: our own `done` landed, or the attempt that took the claim over finished.
    Done,
    /// Another attempt took the claim over (or it was deleted): the claim is no longer ours.
    Lost,
}

pub(crate) fn conflict(found: Option<&Value>, token: &str) -> Conflict {
    match found {
        Some(Value::Pending(holder)) if holder == token => Conflict::Ours,
        Some(Value::Done(_)) => Conflict::Done,
        _ => Conflict::Lost,
    }
}

/// How often a claimant rewrites its pending entry: four times per lease, so three renewals in a row can fail
/// (a leader election, a slow disk) before another attempt may judge the claim abandoned.
pub(crate) fn renew_period(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(50))
}

#[cfg(test)]
mod model;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        assert_eq!(
            parse(pending("abc", 42).as_bytes()),
            Value::Pending("abc".into())
        );
        assert_eq!(parse(done(12, None).as_bytes()), Value::Done(None));
        assert_eq!(
            parse(done(12, Some("limited")).as_bytes()),
            Value::Done(Some("limited".into()))
        );
        // Written before claims carried a token per claim and done a decision.
        assert_eq!(parse(b"pending owner 42"), Value::Pending("owner".into()));
        assert_eq!(parse(b"done 12"), Value::Done(None));
        assert_eq!(parse(b"garbage"), Value::Unknown);
        assert_eq!(parse(b"pending"), Value::Unknown);
    }

    #[test]
    fn an_outcome_mark_joins_a_done_and_is_never_read_as_its_decision() {
        let first = marked(Some(done(12, None).as_bytes()), "aa11", 99);
        assert_eq!(first, "done 12 +aa11");
        assert_eq!(parse(first.as_bytes()), Value::Done(None));
        assert!(has_mark(first.as_bytes(), "aa11"));
        assert!(!has_mark(first.as_bytes(), "aa1"));
        assert!(!has_mark(first.as_bytes(), "bb22"));
        let second = marked(Some(first.as_bytes()), "bb22", 99);
        assert!(has_mark(second.as_bytes(), "aa11") && has_mark(second.as_bytes(), "bb22"));
        let decided = marked(Some(done(12, Some("allowed")).as_bytes()), "aa11", 99);
        assert_eq!(
            parse(decided.as_bytes()),
            Value::Done(Some("allowed".into()))
        );
        // Nothing read, a claim, or a value no build wrote: a `done` of its own, which the effect's run earned.
        for found in [None, Some(&b"pending t 1"[..]), Some(&b"garbage"[..])] {
            assert_eq!(marked(found, "aa11", 99), "done 99 +aa11");
        }
        assert!(!has_mark(b"pending t 1 +aa11", "aa11"));
    }

    #[test]
    fn a_pending_claim_is_live_for_a_lease_of_server_time() {
        let lease = Duration::from_secs(120);
        let claim = Value::Pending("t".into());
        assert_eq!(
            judge(&claim, Duration::from_secs(100), lease),
            Verdict::Busy(Duration::from_secs(20))
        );
        assert_eq!(judge(&claim, lease, lease), Verdict::TakeOver);
        assert_eq!(
            judge(&Value::Done(Some("limited".into())), Duration::ZERO, lease),
            Verdict::Done(Some("limited".into()))
        );
    }

    #[test]
    fn a_conflict_is_ours_only_with_our_token() {
        let ours = Value::Pending("mine".into());
        let theirs = Value::Pending("theirs".into());
        assert_eq!(conflict(Some(&ours), "mine"), Conflict::Ours);
        assert_eq!(conflict(Some(&theirs), "mine"), Conflict::Lost);
        assert_eq!(conflict(Some(&Value::Done(None)), "mine"), Conflict::Done);
        assert_eq!(conflict(None, "mine"), Conflict::Lost);
    }

    #[test]
    fn decisions_are_single_tokens() {
        assert_eq!(decision_token("limited"), "limited");
        assert_eq!(decision_token("a b\nc"), "a_b_c");
        assert_eq!(decision_token(&"x".repeat(100)).len(), 64);
    }
}
