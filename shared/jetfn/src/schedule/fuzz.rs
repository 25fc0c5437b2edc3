//! Fuzz target for `jetfn schedule add`'s time options: `--in`, `--at`, `--every`, `--cron` with `--tz`, against any
//! `now`. Nothing may panic (`now + delay` did, for a delay past the calendar), and a one-off schedule never fires
//! before the moment asked for.
//!
//! Random and shrinking (proptest), on stable Rust: `cargo test -p jetfn --bin jetfn fuzz_ -- --nocapture`;
//! `tests/run.sh` runs a bounded budget and `just fuzz` a long one (README).

use proptest::prelude::*;

use super::*;

use testkit::fuzz::run as fuzz;

fn option_text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(("[0-9]{0,20}", "[smhd]"), 1..4)
            .prop_map(|parts| parts.into_iter().map(|(n, u)| n + &u).collect::<String>()),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})",
        "\\PC{0,20}",
    ]
}

#[test]
fn fuzz_schedule_add_times() {
    let inputs = (
        0u8..4,
        option_text(),
        proptest::option::of("[A-Za-z/_+-]{1,20}|\\PC{0,8}"),
        -2_000_000_000i64..200_000_000_000,
        0u32..1_000_000_000,
    );
    fuzz("schedule-add", inputs, |(which, text, tz, secs, nanos)| {
        let Ok(now) =
            OffsetDateTime::from_unix_timestamp(secs).and_then(|now| now.replace_nanosecond(nanos))
        else {
            return Ok(());
        };
        let args = AddArgs {
            r#type: "cleanup.requested".to_owned(),
            data: None,
            at: (which == 0).then(|| text.clone()),
            in_: (which == 1).then(|| text.clone()),
            every: (which == 2).then(|| text.clone()),
            cron: (which == 3).then(|| text.clone()),
            tz: tz.filter(|_| which == 3),
            name: None,
            replace: false,
            source: "/fuzz".to_owned(),
        };
        let Ok(when) = when_of(&args, now) else {
            return Ok(());
        };
        prop_assert!(!when.pattern.contains(['\r', '\n']), "{}", when.pattern);
        if which == 1 {
            let at = when.pattern.strip_prefix("@at ").expect("an @at pattern");
            let at = OffsetDateTime::parse(at, &Rfc3339).expect("RFC 3339");
            let delay = provision::schedule::parse_duration(&text).expect("it parsed");
            prop_assert!(
                at >= now + delay,
                "{} fires before {now} + {text}",
                when.pattern
            );
            prop_assert!(at < now + delay + time::Duration::SECOND);
        }
        Ok(())
    });
}
