//! Fuzz target for the schedule parser: `every` durations, cron expressions, names and whole schedule files
//! (what `jetfn infra apply` reads from `infra/nats/schedules/`). Nothing may panic; what parses means what it
//! says (a duration is the sum of its parts; a cron keeps its six fields).
//!
//! Random and shrinking (proptest), on stable Rust: `cargo test -p provision fuzz_ -- --nocapture`;
//! `tests/run.sh` runs a bounded budget and `just fuzz` a long one (README).

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

use testkit::fuzz::run as fuzz;

/// Duration-like text: digits and units, sometimes too many digits, sometimes other characters.
fn duration_text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(("[0-9]{0,22}", "[smhd]"), 0..5)
            .prop_map(|parts| parts.into_iter().map(|(n, u)| n + &u).collect::<String>()),
        "[0-9smhd .+-]{0,16}",
        "\\PC{0,16}",
    ]
}

fn cron_text() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec("[0-9*/,-]{1,4}|[A-Z]{3}|\\PC{1,3}", 0..9)
            .prop_map(|fields| fields.join(" ")),
        proptest::sample::select(vec![
            "@daily",
            "@hourly",
            "@every 1s",
            "@at 2026-01-01T00:00:00Z",
            ""
        ])
        .prop_map(str::to_owned),
        "[ \t\r\n]{0,3}\\PC{0,24}",
    ]
}

#[test]
fn fuzz_schedule_durations_crons_and_names() {
    fuzz(
        "schedule-parts",
        (
            duration_text(),
            cron_text(),
            "\\PC{0,20}|[a-zA-Z0-9_-]{0,140}",
        ),
        |(duration, cron, name)| {
            if let Ok(parsed) = parse_duration(&duration) {
                // Only digits and units, and every number has its unit.
                prop_assert!(
                    duration
                        .trim()
                        .chars()
                        .all(|c| c.is_ascii_digit() || "smhd".contains(c))
                );
                let mut expected = 0u64;
                let mut number = String::new();
                for c in duration.trim().chars() {
                    if c.is_ascii_digit() {
                        number.push(c);
                    } else {
                        let unit = match c {
                            's' => 1,
                            'm' => 60,
                            'h' => 3600,
                            _ => 86_400,
                        };
                        expected = expected.saturating_add(
                            number.parse::<u64>().unwrap_or(0).saturating_mul(unit),
                        );
                        number.clear();
                    }
                }
                prop_assert_eq!(parsed.as_secs(), expected);
            }
            if let Ok(when) = cron_when(&cron, Some("Europe/Amsterdam".to_owned())) {
                let fields = when.pattern.split(' ').count();
                prop_assert!(
                    fields == 6 || when.pattern.starts_with('@'),
                    "{}",
                    when.pattern
                );
                prop_assert!(
                    !when.pattern.contains(['\r', '\n']),
                    "a header value with a line break"
                );
            }
            if check_name(&name).is_ok() {
                prop_assert!(!name.contains(['.', '*', '>', ' ']));
            }
            Ok(())
        },
    );
}

fn file_value() -> impl Strategy<Value = Value> {
    let text = || {
        prop_oneof![
            "\\PC{0,12}",
            "[a-z._-]{0,16}",
            "[a-zA-Z/_ \\r\\n\\x00]{0,12}"
        ]
    };
    // Weighted towards a valid name, type and data, so most files get as far as the schedule's own fields.
    (
        prop_oneof![
            3 => "[a-z0-9_-]{1,12}".prop_map(Value::String),
            1 => text().prop_map(Value::String),
            1 => Just(Value::Null),
            1 => any::<i64>().prop_map(Value::from),
        ],
        prop_oneof![
            3 => Just(Value::String("cleanup.requested".to_owned())),
            1 => proptest::sample::select(vec!["users.registered", "nope"])
                .prop_map(|t| Value::String(t.to_owned())),
            1 => text().prop_map(Value::String),
        ],
        prop_oneof![
            3 => Just(json!({})),
            1 => Just(json!({"index_retention_secs": 86400})),
            1 => Just(json!({"index_retention_secs": u64::MAX})),
            1 => Just(json!([])),
            1 => Just(Value::Null),
        ],
        proptest::option::of(cron_text()),
        proptest::option::of(duration_text()),
        proptest::option::of(text()),
    )
        .prop_map(|(name, ty, data, cron, every, time_zone)| {
            let mut file = json!({"name": name, "type": ty, "data": data});
            if let Some(cron) = cron {
                file["cron"] = json!(cron);
            }
            if let Some(every) = every {
                file["every"] = json!(every);
            }
            if let Some(time_zone) = time_zone {
                file["time_zone"] = json!(time_zone);
            }
            file
        })
}

#[test]
fn fuzz_schedule_files() {
    fuzz("schedule-files", file_value(), |file| {
        if let Ok(spec) = from_file(file.clone()) {
            prop_assert!(check_name(&spec.name).is_ok());
            prop_assert!(events::Validator::new().check(&spec.event).is_ok());
            prop_assert!(!spec.when.pattern.contains(['\r', '\n']));
            // Both become NATS headers: a line break would end the header block.
            let zone = spec.when.time_zone.unwrap_or_default();
            prop_assert!(!zone.contains(['\r', '\n', '\0']), "time zone {zone:?}");
        }
        Ok(())
    });
}
