//! What applying the definitions would change on a server: compared field by field against what the server
//! reports, after folding away the defaults the server fills in, so an applied file plans as "unchanged".
//!
//! The refusals mirror nats-server 2.15's own update checks (`configUpdateCheck` for streams,
//! `checkNewConsumerConfig` for consumers): planning them spares a half-applied run that stops at the first one.

use std::fmt;

use anyhow::Context as _;
use async_nats::jetstream::consumer::IntoConsumerConfig as _;
use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, ErrorCode};
use serde_json::{Map, Value, json};

use crate::schedule;
use crate::{Bucket, Definitions};

/// What kind of object a change is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A stream (`streams/`).
    Stream,
    /// A KV bucket (`kv/`).
    Bucket,
    /// A consumer (`consumers/<stream>/`).
    Consumer,
    /// A schedule (`schedules/`).
    Schedule,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Stream => "stream",
            Self::Bucket => "kv",
            Self::Consumer => "consumer",
            Self::Schedule => "schedule",
        })
    }
}

/// One field that differs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    /// The key, as the file spells it.
    pub field: String,
    /// What the server has (`(default)` when it reports nothing).
    pub old: String,
    /// What the file says.
    pub new: String,
    /// Why the server would refuse this change, if it would.
    pub refused: Option<&'static str>,
}

/// What applying does to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The server does not have it.
    Create,
    /// The server has it with these fields different.
    Update(Vec<FieldChange>),
    /// The server has it as the file says.
    Unchanged,
    /// The server has it, and refuses at least one of these changes: delete and recreate the object (losing
    /// its messages or delivery state), or revert the file.
    Impossible(Vec<FieldChange>),
}

/// One object and what applying does to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Stream, bucket, consumer or schedule.
    pub kind: Kind,
    /// Its name; a consumer's is `<stream>/<consumer>`.
    pub name: String,
    /// What applying does.
    pub action: Action,
    /// Its position in its kind's list in [`Definitions`].
    index: usize,
}

/// Every object, in the order apply handles them: streams, buckets, consumers, schedules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// One entry per object in the files.
    pub changes: Vec<Change>,
}

impl Plan {
    /// The changes the server would refuse.
    pub fn impossible(&self) -> Vec<&Change> {
        self.changes
            .iter()
            .filter(|change| matches!(change.action, Action::Impossible(_)))
            .collect()
    }

    /// Whether applying would change nothing.
    pub fn is_unchanged(&self) -> bool {
        self.changes
            .iter()
            .all(|change| change.action == Action::Unchanged)
    }

    /// How many objects are to be created, updated, left unchanged, and refused, in that order.
    pub fn counts(&self) -> [usize; 4] {
        let mut counts = [0; 4];
        for change in &self.changes {
            counts[match change.action {
                Action::Create => 0,
                Action::Update(_) => 1,
                Action::Unchanged => 2,
                Action::Impossible(_) => 3,
            }] += 1;
        }
        counts
    }

    /// `2 to create, 1 to update, 20 unchanged, 1 impossible`.
    pub fn summary(&self) -> String {
        let [create, update, unchanged, impossible] = self.counts();
        format!(
            "{create} to create, {update} to update, {unchanged} unchanged, {impossible} impossible"
        )
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (verb, fields) = match &self.action {
            Action::Create => ("create", None),
            Action::Update(fields) => ("update", Some(fields)),
            Action::Unchanged => ("unchanged", None),
            Action::Impossible(fields) => (
                "CANNOT UPDATE (recreate it, or revert the file)",
                Some(fields),
            ),
        };
        write!(f, "{:<9} {:<36} {verb}", self.kind.to_string(), self.name)?;
        for field in fields.into_iter().flatten() {
            write!(f, "\n    {}: {} -> {}", field.field, field.old, field.new)?;
            if let Some(reason) = field.refused {
                write!(f, "    refused: {reason}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for change in &self.changes {
            writeln!(f, "{change}")?;
        }
        write!(f, "{}", self.summary())
    }
}

impl Definitions {
    /// What [`apply`](Self::apply) would do, read from the server; changes nothing.
    ///
    /// # Errors
    /// The server cannot be asked (not a "not found", which plans a create).
    pub async fn plan(&self, js: &jetstream::Context) -> anyhow::Result<Plan> {
        let mut changes = Vec::new();
        for (index, config) in self.streams.iter().enumerate() {
            let current = stream_config(js, &config.name).await?;
            let action = match current {
                None => Action::Create,
                Some(current) => compare(
                    Kind::Stream,
                    &serde_json::to_value(config)?,
                    &serde_json::to_value(current)?,
                ),
            };
            changes.push(Change {
                kind: Kind::Stream,
                name: config.name.clone(),
                action,
                index,
            });
        }
        for (index, bucket) in self.buckets.iter().enumerate() {
            let current = stream_config(js, &format!("KV_{}", bucket.bucket)).await?;
            let action = match current {
                None => Action::Create,
                Some(current) => compare(Kind::Bucket, &bucket_view(bucket), &kv_view(&current)),
            };
            changes.push(Change {
                kind: Kind::Bucket,
                name: bucket.bucket.clone(),
                action,
                index,
            });
        }
        for (index, (stream_name, config)) in self.consumers.iter().enumerate() {
            let name = config.durable_name.clone().unwrap_or_default();
            let current = consumer_config(js, stream_name, &name).await?;
            let action = match current {
                None => Action::Create,
                Some(current) => compare(
                    Kind::Consumer,
                    &serde_json::to_value(config.clone().into_consumer_config())?,
                    &serde_json::to_value(current)?,
                ),
            };
            changes.push(Change {
                kind: Kind::Consumer,
                name: format!("{stream_name}/{name}"),
                action,
                index,
            });
        }
        let schedules = match js.get_stream(schedule::STREAM).await {
            Ok(stream) => Some(stream),
            Err(err) if stream_not_found(&err) => None,
            Err(err) => return Err(err).context("reading the SCHEDULES stream"),
        };
        for (index, spec) in self.schedules.iter().enumerate() {
            // From the stream's leader (STREAM.MSG.GET), never a direct get: on an R3 stream a follower that has
            // not applied the schedule's write answers "none" (or an older copy), and the apply would then write
            // it again, which restarts an `@every` interval (or leave a changed one as it is).
            let action = match &schedules {
                None => Action::Create,
                Some(stream) => match stream
                    .get_last_raw_message_by_subject(&spec.subject())
                    .await
                {
                    Ok(current) => compare_schedule(spec, &current),
                    Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => {
                        Action::Create
                    }
                    Err(err) => {
                        return Err(err).with_context(|| format!("reading schedule {}", spec.name));
                    }
                },
            };
            changes.push(Change {
                kind: Kind::Schedule,
                name: spec.name.clone(),
                action,
                index,
            });
        }
        Ok(Plan { changes })
    }

    /// Plans, refuses if the server would refuse any change, then creates or updates what differs.
    ///
    /// # Errors
    /// A change the server cannot make (nothing is applied then), or the first object the server refuses.
    pub async fn apply(&self, js: &jetstream::Context) -> anyhow::Result<Plan> {
        let plan = self.plan(js).await?;
        self.apply_plan(js, &plan, |change| {
            if change.action != Action::Unchanged {
                tracing::info!(kind = %change.kind, name = %change.name, "applied");
            }
        })
        .await?;
        Ok(plan)
    }

    /// Applies a plan made by [`plan`](Self::plan) from these definitions, calling `applied` for each object in
    /// plan order once it is handled. Unchanged objects are left alone: rewriting an `@every` schedule would
    /// restart its interval.
    ///
    /// # Errors
    /// A change the server cannot make, named (checked before anything is applied), or the first object the server
    /// refuses.
    pub async fn apply_plan(
        &self,
        js: &jetstream::Context,
        plan: &Plan,
        mut applied: impl FnMut(&Change),
    ) -> anyhow::Result<()> {
        let impossible = plan.impossible();
        if !impossible.is_empty() {
            let listed: Vec<String> = impossible.iter().map(ToString::to_string).collect();
            anyhow::bail!(
                "nothing applied: the server cannot make {} of the changes:\n{}",
                impossible.len(),
                listed.join("\n")
            );
        }
        for change in &plan.changes {
            let update = match change.action {
                Action::Unchanged => {
                    applied(change);
                    continue;
                }
                Action::Impossible(_) => continue,
                Action::Create => false,
                Action::Update(_) => true,
            };
            match change.kind {
                Kind::Stream => {
                    let config = &self.streams[change.index];
                    js.create_or_update_stream(config.clone())
                        .await
                        .with_context(|| format!("applying stream {}", config.name))?;
                }
                Kind::Bucket => {
                    let bucket = &self.buckets[change.index];
                    let applied = if update {
                        js.update_key_value(bucket.kv_config())
                            .await
                            .map(drop)
                            .map_err(anyhow::Error::from)
                    } else {
                        js.create_key_value(bucket.kv_config())
                            .await
                            .map(drop)
                            .map_err(anyhow::Error::from)
                    };
                    applied.with_context(|| format!("applying KV bucket {}", bucket.bucket))?;
                    allow_atomic_batches(js, bucket).await?;
                }
                Kind::Consumer => {
                    let (stream_name, config) = &self.consumers[change.index];
                    let mut config = config.clone();
                    // A pause is the operator's (`jetfn pause`), not the definition's: an update keeps it.
                    if update {
                        let name = config.durable_name.clone().unwrap_or_default();
                        config.pause_until = consumer_config(js, stream_name, &name)
                            .await?
                            .and_then(|current| current.pause_until);
                    }
                    js.get_stream(stream_name)
                        .await
                        .with_context(|| format!("stream {stream_name}"))?
                        .create_consumer(config)
                        .await
                        .with_context(|| format!("applying consumer {}", change.name))?;
                }
                Kind::Schedule => {
                    let spec = &self.schedules[change.index];
                    // Only a planned update replaces. A create refuses a schedule that appeared after the plan was
                    // made (another apply, `jetfn schedule add`): rewriting it would restart an `@every` interval
                    // in a change the plan did not show.
                    schedule::put(js, spec, update).await.map_err(|err| {
                        let appeared = matches!(
                            err.downcast_ref::<publish::schedule::ScheduleError>(),
                            Some(publish::schedule::ScheduleError::Exists(_))
                        );
                        if appeared {
                            anyhow::anyhow!(
                                "applying schedule {}: one of that name appeared after the plan was made; \
                                 run `jetfn infra plan` again",
                                spec.name
                            )
                        } else {
                            err.context(format!("applying schedule {}", spec.name))
                        }
                    })?;
                }
            }
            applied(change);
        }
        Ok(())
    }
}

/// Whether a stream lookup failed because the server has no such stream (JetStream error 10059): the one answer
/// that means absent, where a timeout or an election says nothing.
pub fn stream_not_found(err: &jetstream::context::GetStreamError) -> bool {
    matches!(err.kind(), GetStreamErrorKind::JetStream(inner) if inner.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

async fn stream_config(
    js: &jetstream::Context,
    name: &str,
) -> anyhow::Result<Option<jetstream::stream::Config>> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().config.clone())),
        Err(err) if stream_not_found(&err) => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading stream {name}")),
    }
}

async fn consumer_config(
    js: &jetstream::Context,
    stream_name: &str,
    name: &str,
) -> anyhow::Result<Option<jetstream::consumer::Config>> {
    let stream = match js.get_stream(stream_name).await {
        Ok(stream) => stream,
        Err(err) if stream_not_found(&err) => return Ok(None),
        Err(err) => return Err(err).with_context(|| format!("reading stream {stream_name}")),
    };
    match stream.consumer_info(name).await {
        Ok(info) => Ok(Some(info.config)),
        Err(err)
            if matches!(
                err.kind(),
                ConsumerInfoErrorKind::NotFound | ConsumerInfoErrorKind::StreamNotFound
            ) =>
        {
            Ok(None)
        }
        Err(err) => Err(err).with_context(|| format!("reading consumer {stream_name}/{name}")),
    }
}

/// `kv::Config` has no field for atomic batches, and creating or updating a bucket through it leaves them off:
/// set the stream's flag to the file's afterwards.
async fn allow_atomic_batches(js: &jetstream::Context, bucket: &Bucket) -> anyhow::Result<()> {
    let name = format!("KV_{}", bucket.bucket);
    let mut config = stream_config(js, &name)
        .await?
        .with_context(|| format!("KV bucket {} has no stream {name}", bucket.bucket))?;
    if config.allow_atomic_publish != bucket.atomic_batches {
        config.allow_atomic_publish = bucket.atomic_batches;
        js.update_stream(config)
            .await
            .with_context(|| format!("allowing atomic batches on KV bucket {}", bucket.bucket))?;
    }
    Ok(())
}

/// A bucket as the file spells it, so a change is shown with the file's keys.
fn bucket_view(bucket: &Bucket) -> Value {
    json!({
        "description": bucket.description,
        "max_age_secs": bucket.max_age_secs,
        "history": bucket.history,
        "max_value_size": bucket.max_value_size,
        "per_key_ttl": bucket.per_key_ttl,
        "atomic_batches": bucket.atomic_batches,
        "num_replicas": bucket.num_replicas,
    })
}

/// The same view of the bucket's backing stream (`KV_<bucket>`).
fn kv_view(config: &jetstream::stream::Config) -> Value {
    json!({
        "description": config.description.clone().unwrap_or_default(),
        "max_age_secs": config.max_age.as_secs(),
        "history": config.max_messages_per_subject,
        "max_value_size": config.max_message_size,
        "per_key_ttl": config.allow_message_ttl,
        "atomic_batches": config.allow_atomic_publish,
        "num_replicas": config.num_replicas,
    })
}

/// The value the server uses for a key it was not given (or reports as given). Both sides fold these away.
fn server_default(kind: Kind, key: &str) -> Option<Value> {
    let value = match (kind, key) {
        (
            Kind::Stream,
            "max_bytes" | "max_msgs" | "max_msgs_per_subject" | "max_consumers" | "max_msg_size",
        )
        | (Kind::Consumer, "max_deliver")
        | (Kind::Bucket, "max_value_size") => json!(-1),
        (Kind::Stream, "duplicate_window") => json!(120_000_000_000_u64),
        (Kind::Stream, "compression") | (Kind::Consumer, "priority_policy") => json!("none"),
        (Kind::Stream, "retention") => json!("limits"),
        (Kind::Stream, "discard") => json!("old"),
        (Kind::Stream, "storage") => json!("file"),
        (Kind::Stream, "persist_mode") => json!("default"),
        (Kind::Stream | Kind::Consumer | Kind::Bucket, "num_replicas")
        | (Kind::Bucket, "history") => json!(1),
        (Kind::Consumer, "deliver_policy") => json!("all"),
        (Kind::Consumer, "ack_policy") => json!("explicit"),
        (Kind::Consumer, "ack_wait") => json!(30_000_000_000_u64),
        (Kind::Consumer, "max_waiting") => json!(512),
        (Kind::Consumer, "max_ack_pending") => json!(1000),
        (Kind::Consumer, "replay_policy") => json!("instant"),
        _ => return None,
    };
    Some(value)
}

fn is_zero(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        Value::Object(map) => map.is_empty(),
    }
}

/// Drops zero values, server defaults, the server's own `_nats.*` metadata, a consumer `name` that repeats its
/// `durable_name` (the server fills it in) and a consumer's `pause_until`.
fn normalise(kind: Kind, value: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    let durable = value.get("durable_name").filter(|_| kind == Kind::Consumer);
    for (key, value) in value.as_object().into_iter().flatten() {
        let mut value = value.clone();
        if key == "metadata"
            && let Some(map) = value.as_object_mut()
        {
            map.retain(|k, _| !k.starts_with("_nats."));
        }
        if is_zero(&value)
            || server_default(kind, key).as_ref() == Some(&value)
            || (key == "name" && durable == Some(&value))
            // The operator's pause (`jetfn pause`) is state, not definition: apply neither shows nor undoes it.
            || (kind == Kind::Consumer && key == "pause_until")
        {
            continue;
        }
        out.insert(key.clone(), value);
    }
    out
}

fn compare(kind: Kind, desired: &Value, actual: &Value) -> Action {
    let (want, have) = (normalise(kind, desired), normalise(kind, actual));
    let mut keys: Vec<&String> = want.keys().chain(have.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut fields = Vec::new();
    for key in keys {
        let (old, new) = (have.get(key.as_str()), want.get(key.as_str()));
        if old == new {
            continue;
        }
        let shown = |side: Option<&Value>, raw: &Value| {
            render(
                key,
                side.or_else(|| raw.get(key.as_str()))
                    .filter(|v| !v.is_null()),
            )
        };
        fields.push(FieldChange {
            field: key.clone(),
            old: shown(old, actual),
            new: shown(new, desired),
            refused: refusal(kind, key, old, new),
        });
    }
    if fields.is_empty() {
        Action::Unchanged
    } else if fields.iter().any(|field| field.refused.is_some()) {
        Action::Impossible(fields)
    } else {
        Action::Update(fields)
    }
}

/// Why nats-server 2.15 refuses changing `key` from `old` to `new` (`None`: the default), if it does.
fn refusal(
    kind: Kind,
    key: &str,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Option<&'static str> {
    let effective = |side: Option<&Value>| side.cloned().or_else(|| server_default(kind, key));
    let turned_off = old == Some(&Value::Bool(true)) && new != Some(&Value::Bool(true));
    match (kind, key) {
        (Kind::Stream, "storage") => Some("a stream's storage type cannot change"),
        (Kind::Stream, "retention") => {
            let workqueue = Some(json!("workqueue"));
            (effective(old) == workqueue || effective(new) == workqueue)
                .then_some("retention cannot change to or from workqueue")
        }
        (Kind::Stream, "sealed") => turned_off.then_some("a sealed stream cannot be unsealed"),
        (Kind::Stream, "deny_delete") => turned_off.then_some("deny_delete cannot be turned off"),
        (Kind::Stream, "deny_purge") => turned_off.then_some("deny_purge cannot be turned off"),
        (Kind::Stream, "allow_msg_ttl") => {
            turned_off.then_some("message TTLs cannot be turned off")
        }
        (Kind::Stream, "allow_msg_schedules") => {
            turned_off.then_some("message schedules cannot be turned off")
        }
        (Kind::Stream, "allow_msg_counter") => Some("the message counter setting cannot change"),
        (Kind::Stream, "persist_mode") => Some("the persist mode cannot change"),
        (Kind::Stream, "mirror") => new.is_some().then_some("a mirror cannot change"),
        (Kind::Bucket, "per_key_ttl") => turned_off.then_some("per-key TTLs cannot be turned off"),
        (Kind::Consumer, "deliver_policy") => Some("a consumer's deliver policy cannot change"),
        (Kind::Consumer, "opt_start_seq" | "opt_start_time") => {
            Some("a consumer's start position cannot change")
        }
        (Kind::Consumer, "ack_policy") => Some("a consumer's ack policy cannot change"),
        (Kind::Consumer, "replay_policy") => Some("a consumer's replay policy cannot change"),
        (Kind::Consumer, "max_waiting") => Some("a consumer's max_waiting cannot change"),
        (Kind::Consumer, "mem_storage") => Some("a consumer's storage type cannot change"),
        (Kind::Consumer, "deliver_subject" | "idle_heartbeat" | "flow_control") => {
            Some("a consumer cannot change between pull and push, or its push settings")
        }
        _ => None,
    }
}

const DURATION_KEYS: &[&str] = &[
    "ack_wait",
    "backoff",
    "max_age",
    "duplicate_window",
    "inactive_threshold",
    "max_expires",
    "priority_timeout",
    "subject_delete_marker_ttl",
];

fn render(key: &str, value: Option<&Value>) -> String {
    let Some(value) = value else {
        return "(default)".to_owned();
    };
    if DURATION_KEYS.contains(&key) {
        match value {
            Value::Number(n) if n.is_u64() => return nanos(n.as_u64().unwrap_or_default()),
            Value::Array(items) if items.iter().all(Value::is_u64) => {
                let shown: Vec<String> = items
                    .iter()
                    .map(|item| nanos(item.as_u64().unwrap_or_default()))
                    .collect();
                return format!("[{}]", shown.join(", "));
            }
            _ => {}
        }
    }
    value.to_string()
}

/// `5s`, `2m`, `14d`, `400ms`: the largest unit that divides exactly.
fn nanos(ns: u64) -> String {
    const UNITS: &[(u64, &str)] = &[
        (86_400_000_000_000, "d"),
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
    ];
    if ns == 0 {
        return "0s".to_owned();
    }
    UNITS
        .iter()
        .find(|(unit, _)| ns.is_multiple_of(*unit))
        .map_or_else(
            || format!("{ns}ns"),
            |(unit, name)| format!("{}{name}", ns / unit),
        )
}

fn compare_schedule(spec: &schedule::Spec, current: &jetstream::message::StreamMessage) -> Action {
    let header = |name: &str| {
        current
            .headers
            .get(name)
            .map(|value| value.as_str().to_owned())
    };
    let mut fields = Vec::new();
    let mut differs = |field: &str, old: Option<String>, new: Option<String>| {
        if old != new {
            fields.push(FieldChange {
                field: field.to_owned(),
                old: old.unwrap_or_else(|| "(none)".to_owned()),
                new: new.unwrap_or_else(|| "(none)".to_owned()),
                refused: None,
            });
        }
    };
    differs(
        "when",
        header("Nats-Schedule"),
        Some(spec.when.pattern.clone()),
    );
    differs(
        "time_zone",
        header("Nats-Schedule-Time-Zone"),
        spec.when.time_zone.clone(),
    );
    differs(
        "target",
        header("Nats-Schedule-Target"),
        Some(format!("{}.{}", schedule::TARGET_PREFIX, spec.event_type)),
    );
    if current.payload.as_ref() != spec.event.as_slice() {
        differs(
            "event",
            Some("(as stored)".to_owned()),
            Some("(as the file builds it)".to_owned()),
        );
    }
    if fields.is_empty() {
        Action::Unchanged
    } else {
        Action::Update(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(nanos(5_000_000_000), "5s");
        assert_eq!(nanos(120_000_000_000), "2m");
        assert_eq!(nanos(1_209_600_000_000_000), "14d");
        assert_eq!(nanos(400_000_000), "400ms");
        assert_eq!(
            render(
                "backoff",
                Some(&json!([1_000_000_000_u64, 30_000_000_000_u64]))
            ),
            "[1s, 30s]"
        );
        assert_eq!(render("max_deliver", Some(&json!(6))), "6");
        assert_eq!(render("max_deliver", None), "(default)");
    }

    #[test]
    fn defaults_the_server_fills_in_are_not_changes() {
        let file = json!({"durable_name": "w", "ack_policy": "explicit", "deliver_policy": "all", "max_deliver": 6});
        let server = json!({"durable_name": "w", "name": "w", "ack_policy": "explicit", "deliver_policy": "all", "max_deliver": 6,
            "max_waiting": 512, "max_ack_pending": 1000, "ack_wait": 30_000_000_000_u64, "num_replicas": 0,
            "metadata": {"_nats.ver": "2.15.1", "_nats.level": "1"}});
        assert_eq!(compare(Kind::Consumer, &file, &server), Action::Unchanged);
    }

    #[test]
    fn a_changed_field_shows_old_and_new() {
        let file = json!({"max_deliver": 3, "backoff": [1_000_000_000_u64]});
        let server = json!({"max_deliver": 6, "backoff": [5_000_000_000_u64]});
        let Action::Update(fields) = compare(Kind::Consumer, &file, &server) else {
            panic!("an update");
        };
        assert_eq!(fields.len(), 2);
        assert_eq!(
            (
                fields[1].field.as_str(),
                fields[1].old.as_str(),
                fields[1].new.as_str()
            ),
            ("max_deliver", "6", "3")
        );
        assert_eq!(fields[0].old, "[5s]");
    }

    #[test]
    fn changes_the_server_refuses_are_planned_as_impossible() {
        let action = compare(
            Kind::Consumer,
            &json!({"deliver_policy": "new"}),
            &json!({"deliver_policy": "all"}),
        );
        assert!(matches!(action, Action::Impossible(_)), "{action:?}");
        let action = compare(
            Kind::Stream,
            &json!({"storage": "memory"}),
            &json!({"storage": "file"}),
        );
        assert!(matches!(action, Action::Impossible(_)), "{action:?}");
        // Limits to interest is allowed; to workqueue is not.
        let action = compare(Kind::Stream, &json!({"retention": "interest"}), &json!({}));
        assert!(matches!(action, Action::Update(_)), "{action:?}");
        let action = compare(Kind::Stream, &json!({"retention": "workqueue"}), &json!({}));
        assert!(matches!(action, Action::Impossible(_)), "{action:?}");
        // Turning deny_delete on is fine, off is not.
        let action = compare(Kind::Stream, &json!({"deny_delete": true}), &json!({}));
        assert!(matches!(action, Action::Update(_)), "{action:?}");
        let action = compare(Kind::Stream, &json!({}), &json!({"deny_delete": true}));
        assert!(matches!(action, Action::Impossible(_)), "{action:?}");
    }
}
