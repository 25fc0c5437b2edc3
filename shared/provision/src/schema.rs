//! The keys each kind of file may hold, with the JSON shape of each value.
//!
//! async-nats' configuration structs ignore keys they do not know, so a misspelled `max_delivr` would be dropped
//! and the server would run with unlimited redeliveries. Every file is checked against these lists first, on the
//! raw JSON, so the error can name the file, the key (nested keys with their path) and the closest known key.
//! Stream and consumer keys are the JetStream API's own names (durations in nanoseconds), limited to those
//! async-nats carries through to the server: a key it would drop is refused here rather than ignored there.

use serde_json::Value;

/// The JSON shape a key's value must have.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ty {
    Str,
    /// A whole number, negative allowed (`-1` means unlimited for most limits).
    Int,
    /// A whole number, zero or more.
    UInt,
    Bool,
    /// A duration in nanoseconds.
    Nanos,
    NanosList,
    StrList,
    /// An object of string values (`metadata`).
    StrMap,
    /// One of these strings.
    OneOf(&'static [&'static str]),
    Object(&'static [Field]),
    ObjectList(&'static [Field]),
    /// Anything JSON (a schedule's event data, checked later by the event's own schema).
    Any,
}

/// One known key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub key: &'static str,
    pub ty: Ty,
}

const fn f(key: &'static str, ty: Ty) -> Field {
    Field { key, ty }
}

const TRANSFORM: &[Field] = &[f("src", Ty::Str), f("dest", Ty::Str)];

const SOURCE: &[Field] = &[
    f("name", Ty::Str),
    f("opt_start_seq", Ty::UInt),
    f("opt_start_time", Ty::Str),
    f("filter_subject", Ty::Str),
    f(
        "external",
        Ty::Object(&[f("api", Ty::Str), f("deliver", Ty::Str)]),
    ),
    f("domain", Ty::Str),
    f("subject_transforms", Ty::ObjectList(TRANSFORM)),
];

/// A stream file: `streams/<NAME>.json`.
pub(crate) const STREAM: &[Field] = &[
    f("name", Ty::Str),
    f("description", Ty::Str),
    f("subjects", Ty::StrList),
    f("retention", Ty::OneOf(&["limits", "interest", "workqueue"])),
    f("max_consumers", Ty::Int),
    f("max_msgs", Ty::Int),
    f("max_bytes", Ty::Int),
    f("max_age", Ty::Nanos),
    f("max_msgs_per_subject", Ty::Int),
    f("max_msg_size", Ty::Int),
    f("discard", Ty::OneOf(&["old", "new"])),
    f("discard_new_per_subject", Ty::Bool),
    f("storage", Ty::OneOf(&["file", "memory"])),
    f("num_replicas", Ty::UInt),
    f("no_ack", Ty::Bool),
    f("duplicate_window", Ty::Nanos),
    f("sealed", Ty::Bool),
    f("allow_rollup_hdrs", Ty::Bool),
    f("deny_delete", Ty::Bool),
    f("deny_purge", Ty::Bool),
    f(
        "republish",
        Ty::Object(&[
            f("src", Ty::Str),
            f("dest", Ty::Str),
            f("headers_only", Ty::Bool),
        ]),
    ),
    f("allow_direct", Ty::Bool),
    f("mirror_direct", Ty::Bool),
    f("mirror", Ty::Object(SOURCE)),
    f("sources", Ty::ObjectList(SOURCE)),
    f("metadata", Ty::StrMap),
    f("subject_transform", Ty::Object(TRANSFORM)),
    f("compression", Ty::OneOf(&["none", "s2"])),
    f(
        "consumer_limits",
        Ty::Object(&[
            f("inactive_threshold", Ty::Nanos),
            f("max_ack_pending", Ty::Int),
        ]),
    ),
    f("first_seq", Ty::UInt),
    f(
        "placement",
        Ty::Object(&[f("cluster", Ty::Str), f("tags", Ty::StrList)]),
    ),
    f("persist_mode", Ty::OneOf(&["default", "async"])),
    f("allow_msg_ttl", Ty::Bool),
    f("subject_delete_marker_ttl", Ty::Nanos),
    f("allow_atomic", Ty::Bool),
    f("allow_msg_schedules", Ty::Bool),
    f("allow_msg_counter", Ty::Bool),
    f("allow_batched", Ty::Bool),
];

/// A pull consumer file: `consumers/<STREAM>/<name>.json`. Push-only keys (`deliver_subject`, `flow_control`,
/// `idle_heartbeat`) are absent on purpose: functions pull.
pub(crate) const CONSUMER: &[Field] = &[
    f("durable_name", Ty::Str),
    f("name", Ty::Str),
    f("description", Ty::Str),
    f(
        "deliver_policy",
        Ty::OneOf(&[
            "all",
            "last",
            "new",
            "by_start_sequence",
            "by_start_time",
            "last_per_subject",
        ]),
    ),
    f("opt_start_seq", Ty::UInt),
    f("opt_start_time", Ty::Str),
    f("ack_policy", Ty::OneOf(&["explicit", "none", "all"])),
    f("ack_wait", Ty::Nanos),
    f("max_deliver", Ty::Int),
    f("filter_subject", Ty::Str),
    f("filter_subjects", Ty::StrList),
    f("replay_policy", Ty::OneOf(&["instant", "original"])),
    f("max_waiting", Ty::Int),
    f("max_ack_pending", Ty::Int),
    f("headers_only", Ty::Bool),
    f("max_batch", Ty::Int),
    f("max_bytes", Ty::Int),
    f("max_expires", Ty::Nanos),
    f("inactive_threshold", Ty::Nanos),
    f("num_replicas", Ty::UInt),
    f("metadata", Ty::StrMap),
    f("backoff", Ty::NanosList),
    f(
        "priority_policy",
        Ty::OneOf(&["none", "overflow", "pinned_client", "prioritized"]),
    ),
    f("priority_groups", Ty::StrList),
    f("priority_timeout", Ty::Nanos),
];

/// A KV bucket file: `kv/<bucket>.json` (jetfn's own shape: async-nats' `kv::Config` has no serde form).
pub(crate) const BUCKET: &[Field] = &[
    f("bucket", Ty::Str),
    f("description", Ty::Str),
    f("max_age_secs", Ty::UInt),
    f("history", Ty::UInt),
    f("max_value_size", Ty::Int),
    f("per_key_ttl", Ty::Bool),
    f("atomic_batches", Ty::Bool),
    f("num_replicas", Ty::UInt),
];

/// A schedule file: `schedules/<name>.json`.
pub(crate) const SCHEDULE: &[Field] = &[
    f("name", Ty::Str),
    f("description", Ty::Str),
    f("type", Ty::Str),
    f("data", Ty::Any),
    f("cron", Ty::Str),
    f("every", Ty::Str),
    f("time_zone", Ty::Str),
];

/// Every problem in `value` against `fields`, each as `<path>: <reason>`.
pub(crate) fn check(value: &Value, fields: &[Field]) -> Vec<String> {
    let mut problems = Vec::new();
    match value.as_object() {
        Some(_) => check_object(value, fields, "", &mut problems),
        None => problems.push(format!(
            "the file must hold a JSON object, not {}",
            describe(value)
        )),
    }
    problems
}

fn check_object(value: &Value, fields: &[Field], path: &str, problems: &mut Vec<String>) {
    let Some(object) = value.as_object() else {
        problems.push(format!(
            "`{path}`: expected an object, got {}",
            describe(value)
        ));
        return;
    };
    for (key, value) in object {
        let key_path = if path.is_empty() {
            key.clone()
        } else {
            format!("{path}.{key}")
        };
        match fields.iter().find(|field| field.key == key) {
            Some(field) => check_value(value, field.ty, &key_path, problems),
            None => problems.push(unknown_key(&key_path, key, fields)),
        }
    }
}

fn unknown_key(path: &str, key: &str, fields: &[Field]) -> String {
    let closest = fields
        .iter()
        .map(|field| (strsim::damerau_levenshtein(key, field.key), field.key))
        .filter(|(distance, known)| *distance <= 3.max(known.len() / 3))
        .min_by_key(|(distance, _)| *distance);
    match closest {
        Some((_, known)) => format!("unknown key `{path}` (did you mean `{known}`?)"),
        None => format!("unknown key `{path}`"),
    }
}

fn check_value(value: &Value, ty: Ty, path: &str, problems: &mut Vec<String>) {
    let mut wrong = |expected: &str| {
        problems.push(format!(
            "`{path}`: expected {expected}, got {}",
            describe(value)
        ));
    };
    match ty {
        Ty::Any => {}
        Ty::Str => {
            if !value.is_string() {
                wrong("a string");
            }
        }
        Ty::Int => {
            if !value.is_i64() {
                wrong("a whole number");
            }
        }
        Ty::UInt => {
            if !value.is_u64() {
                wrong("a whole number, 0 or more");
            }
        }
        Ty::Nanos => {
            if !value.is_u64() {
                wrong("a duration in nanoseconds (a whole number, e.g. 5000000000 for 5 s)");
            }
        }
        Ty::Bool => {
            if !value.is_boolean() {
                wrong("true or false");
            }
        }
        Ty::NanosList => {
            if !value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_u64))
            {
                wrong("a list of durations in nanoseconds");
            }
        }
        Ty::StrList => {
            if !value
                .as_array()
                .is_some_and(|items| items.iter().all(Value::is_string))
            {
                wrong("a list of strings");
            }
        }
        Ty::StrMap => {
            if !value
                .as_object()
                .is_some_and(|map| map.values().all(Value::is_string))
            {
                wrong("an object of string values");
            }
        }
        Ty::OneOf(choices) => {
            if !value.as_str().is_some_and(|text| choices.contains(&text)) {
                wrong(&format!("one of {}", choices.join(", ")));
            }
        }
        Ty::Object(fields) => check_object(value, fields, path, problems),
        Ty::ObjectList(fields) => match value.as_array() {
            Some(items) => {
                for (index, item) in items.iter().enumerate() {
                    check_object(item, fields, &format!("{path}[{index}]"), problems);
                }
            }
            None => wrong("a list of objects"),
        },
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(_) => "a list".to_owned(),
        Value::Object(_) => "an object".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_misspelled_key_is_named_with_the_closest_known_one() {
        let problems = check(&json!({"durable_name": "x", "max_delivr": 3}), CONSUMER);
        assert_eq!(
            problems,
            ["unknown key `max_delivr` (did you mean `max_deliver`?)"]
        );
        let problems = check(&json!({"backof": [1]}), CONSUMER);
        assert_eq!(problems, ["unknown key `backof` (did you mean `backoff`?)"]);
    }

    #[test]
    fn nested_keys_are_checked_with_their_path() {
        let problems = check(
            &json!({"name": "S", "subject_transform": {"srcx": "a.>", "dest": "b.>"}}),
            STREAM,
        );
        assert_eq!(
            problems,
            ["unknown key `subject_transform.srcx` (did you mean `src`?)"]
        );
        let problems = check(
            &json!({"name": "S", "sources": [{"name": "A", "subject_transforms": [{"src": "a", "dst": "b"}]}]}),
            STREAM,
        );
        assert_eq!(
            problems,
            ["unknown key `sources[0].subject_transforms[0].dst` (did you mean `dest`?)"]
        );
    }

    #[test]
    fn a_wrong_type_names_the_key_and_the_reason() {
        let problems = check(
            &json!({"max_deliver": "6", "ack_wait": 1.5, "deliver_policy": "everything", "backoff": [-1]}),
            CONSUMER,
        );
        assert!(
            problems.contains(&"`max_deliver`: expected a whole number, got \"6\"".to_owned()),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("`ack_wait`: expected a duration")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("`deliver_policy`: expected one of all, last")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("`backoff`: expected a list of durations")),
            "{problems:?}"
        );
    }

    #[test]
    fn a_far_off_key_gets_no_suggestion() {
        assert_eq!(
            check(&json!({"zzzzzzzzzzzz": 1}), BUCKET),
            ["unknown key `zzzzzzzzzzzz`"]
        );
    }
}
