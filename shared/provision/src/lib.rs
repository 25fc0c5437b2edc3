//! Everything jetfn needs on the server, read from one folder (`infra/nats`) and checked strictly, then planned
//! against what the server holds and applied. `jetfn infra plan|apply`, `jetfn dev`, the integration tests and the
//! bench all provision through this crate, so what they run on is what the files say.
//!
//! Layout: `streams/<STREAM>.json` (a stream configuration as the JetStream API takes it, durations in
//! nanoseconds, so `nats stream add --config` reads it too), `consumers/<STREAM>/<consumer>.json` (a pull
//! consumer configuration, same format), `kv/<bucket>.json` and `schedules/<name>.json` (jetfn's own shapes).
//! A key no list in [`schema`] knows is an error, never dropped: a misspelled `max_delivr` would otherwise leave
//! the consumer redelivering forever.

pub mod kubernetes;
pub mod permissions;
mod plan;
pub mod schedule;
mod schema;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{consumer, stream};
use serde::Deserialize;

pub use plan::{Action, Change, FieldChange, Kind, Plan, stream_not_found};

/// The consumer metadata key naming the function (the binary) that serves the consumer. A function may serve
/// several consumers (indexing serves three); `jetfn dev` and the deployment checks read this registry.
pub const FUNCTION_METADATA: &str = "jetfn.function";

/// Everything under one `infra/nats` folder.
#[derive(Debug, Clone)]
pub struct Definitions {
    /// Stream configurations.
    pub streams: Vec<stream::Config>,
    /// Consumer configurations with the stream each belongs to.
    pub consumers: Vec<(String, consumer::pull::Config)>,
    /// KV buckets.
    pub buckets: Vec<Bucket>,
    /// The default schedules, their events validated.
    pub schedules: Vec<schedule::Spec>,
}

/// A KV bucket, as the file describes it (async-nats' own `kv::Config` cannot be deserialized).
#[derive(Debug, Clone, Deserialize)]
pub struct Bucket {
    /// The bucket name.
    pub bucket: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// How long a key lives after its last write, in seconds; 0 keeps it forever.
    #[serde(default)]
    pub max_age_secs: u64,
    /// Values kept per key.
    #[serde(default = "one")]
    pub history: i64,
    /// Largest value in bytes; -1 for no limit.
    #[serde(default = "unlimited")]
    pub max_value_size: i32,
    /// Allow per-key TTLs (`create_with_ttl`); needs server 2.11+.
    #[serde(default)]
    pub per_key_ttl: bool,
    /// Allow atomic batch publish on the bucket's stream (nats-server 2.12+): the ledger then commits the claims,
    /// and the dones, of messages running at the same time as one batch each, a few fsyncs instead of one per
    /// write. For servers with `sync_interval: always` (the shipped setting); with a periodic sync there is no
    /// fsync to save and a batch costs the server more CPU than the writes alone (tests/bench/ANALYSIS.md, 8).
    #[serde(default)]
    pub atomic_batches: bool,
    /// Copies in a cluster; usually set per environment with `--replicas` rather than in the file.
    #[serde(default = "one_replica")]
    pub num_replicas: usize,
}

fn one() -> i64 {
    1
}
fn one_replica() -> usize {
    1
}
fn unlimited() -> i32 {
    -1
}

impl Bucket {
    pub(crate) fn kv_config(&self) -> async_nats::jetstream::kv::Config {
        async_nats::jetstream::kv::Config {
            bucket: self.bucket.clone(),
            description: self.description.clone(),
            history: self.history,
            max_age: Duration::from_secs(self.max_age_secs),
            max_value_size: self.max_value_size,
            storage: stream::StorageType::File,
            num_replicas: self.num_replicas,
            limit_markers: self.per_key_ttl.then(|| Duration::from_secs(60)),
            ..Default::default()
        }
    }
}

/// A function binary and the consumers it serves, from the consumer files' `jetfn.function` metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Function {
    /// The binary's name.
    pub name: String,
    /// `(stream, consumer)` pairs, in file order.
    pub consumers: Vec<(String, String)>,
}

impl Definitions {
    /// Reads and checks every definition under `dir`.
    ///
    /// # Errors
    /// Every problem found, each line naming the file and the key: an unreadable file, a key no list knows (with
    /// the closest known one), a value of the wrong type, a name that differs from the file's, a ledger or batch
    /// bucket kept shorter than a dead letter can wait for its replay.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let mut problems = Vec::new();
        let mut streams = Vec::new();
        let stream_files = json_files(&dir.join("streams"))?;
        for path in &stream_files {
            if let Some(config) = read::<stream::Config>(path, schema::STREAM, &mut problems) {
                check_name(path, "name", &config.name, &mut problems);
                streams.push(config);
            }
        }
        let mut consumers = Vec::new();
        let consumer_root = dir.join("consumers");
        if consumer_root.is_dir() {
            for entry in sorted_entries(&consumer_root)? {
                if !entry.is_dir() {
                    continue;
                }
                let stream_name = entry
                    .file_name()
                    .and_then(|name| name.to_str())
                    .unwrap_or_default()
                    .to_owned();
                if !stream_files.iter().any(|path| {
                    path.file_stem()
                        .is_some_and(|stem| stem == stream_name.as_str())
                }) {
                    problems.push(format!(
                        "{}: no stream {stream_name} in {}",
                        entry.display(),
                        dir.join("streams").display()
                    ));
                }
                for path in json_files(&entry)? {
                    if let Some(config) =
                        read::<consumer::pull::Config>(&path, schema::CONSUMER, &mut problems)
                    {
                        check_name(
                            &path,
                            "durable_name",
                            config.durable_name.as_deref().unwrap_or_default(),
                            &mut problems,
                        );
                        check_ack_wait(&path, &config, &mut problems);
                        consumers.push((stream_name.clone(), config));
                    }
                }
            }
        }
        let mut buckets = Vec::new();
        for path in json_files(&dir.join("kv"))? {
            if let Some(bucket) = read::<Bucket>(&path, schema::BUCKET, &mut problems) {
                check_name(&path, "bucket", &bucket.bucket, &mut problems);
                if let Some(dlq) = streams.iter().find(|stream| stream.name == DLQ_STREAM) {
                    check_outlives_dead_letters(
                        &path,
                        &bucket,
                        dlq,
                        &dir.join("streams").join(format!("{DLQ_STREAM}.json")),
                        &consumers,
                        &mut problems,
                    );
                }
                buckets.push(bucket);
            }
        }
        let mut schedules = Vec::new();
        for path in json_files(&dir.join("schedules"))? {
            let Some(value) = read::<serde_json::Value>(&path, schema::SCHEDULE, &mut problems)
            else {
                continue;
            };
            match schedule::from_file(value) {
                Ok(spec) => {
                    check_name(&path, "name", &spec.name, &mut problems);
                    schedules.push(spec);
                }
                Err(err) => problems.push(format!("{}: {err:#}", path.display())),
            }
        }
        match problems.len() {
            0 => Ok(Self {
                streams,
                consumers,
                buckets,
                schedules,
            }),
            1 => Err(anyhow::anyhow!("{}", problems[0])),
            n => Err(anyhow::anyhow!(
                "{n} problems in {}:\n  {}",
                dir.display(),
                problems.join("\n  ")
            )),
        }
    }

    /// The consumer definition named `name` on `stream`.
    pub fn consumer(&self, stream: &str, name: &str) -> Option<&consumer::pull::Config> {
        self.consumers
            .iter()
            .find(|(s, config)| s == stream && config.durable_name.as_deref() == Some(name))
            .map(|(_, config)| config)
    }

    /// The consumer definition named `name` on `stream`, for changing before apply (tests shorten backoffs).
    pub fn consumer_mut(
        &mut self,
        stream: &str,
        name: &str,
    ) -> Option<&mut consumer::pull::Config> {
        self.consumers
            .iter_mut()
            .find(|(s, config)| s == stream && config.durable_name.as_deref() == Some(name))
            .map(|(_, config)| config)
    }

    /// Sets the replica count of every stream, consumer and KV bucket: the same files serve a single dev node
    /// and a three-node cluster.
    pub fn set_replicas(&mut self, replicas: usize) {
        for stream in &mut self.streams {
            stream.num_replicas = replicas;
        }
        for (_, consumer) in &mut self.consumers {
            consumer.num_replicas = replicas;
        }
        for bucket in &mut self.buckets {
            bucket.num_replicas = replicas;
        }
    }

    /// The function binaries the consumers name (`metadata."jetfn.function"`, else the consumer's own name), in
    /// the order they first appear.
    pub fn functions(&self) -> Vec<Function> {
        let mut functions: Vec<Function> = Vec::new();
        for (stream, config) in &self.consumers {
            let consumer = config.durable_name.clone().unwrap_or_default();
            let name = function_of(config).to_owned();
            let pair = (stream.clone(), consumer);
            match functions.iter_mut().find(|function| function.name == name) {
                Some(function) => function.consumers.push(pair),
                None => functions.push(Function {
                    name,
                    consumers: vec![pair],
                }),
            }
        }
        functions
    }
}

/// The function a consumer belongs to: its `jetfn.function` metadata, else its durable name.
pub fn function_of(config: &consumer::pull::Config) -> &str {
    config
        .metadata
        .get(FUNCTION_METADATA)
        .or(config.durable_name.as_ref())
        .map_or("", String::as_str)
}

/// The default definitions folder: `JETFN_INFRA_DIR`, else `infra/nats` under the current directory.
pub fn default_dir() -> PathBuf {
    std::env::var_os("JETFN_INFRA_DIR").map_or_else(|| PathBuf::from("infra/nats"), PathBuf::from)
}

/// Reads `path`, checks its keys against `fields`, then deserializes it; a problem is recorded with the path.
fn read<T: serde::de::DeserializeOwned>(
    path: &Path,
    fields: &[schema::Field],
    problems: &mut Vec<String>,
) -> Option<T> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            problems.push(format!("{}: cannot read: {err}", path.display()));
            return None;
        }
    };
    let value: serde_json::Value = match serde_json::from_str(&text) {
        Ok(value) => value,
        Err(err) => {
            problems.push(format!("{}: not JSON: {err}", path.display()));
            return None;
        }
    };
    let found = schema::check(&value, fields);
    if !found.is_empty() {
        problems.extend(
            found
                .into_iter()
                .map(|problem| format!("{}: {problem}", path.display())),
        );
        return None;
    }
    match serde_json::from_value(value) {
        Ok(typed) => Some(typed),
        Err(err) => {
            problems.push(format!("{}: {err}", path.display()));
            None
        }
    }
}

/// nats-server replaces a consumer's `ack_wait` with `backoff[0]` when a backoff list is given, without a word: a
/// file saying otherwise would be applied as something else and planned as a change forever. Refused, so a
/// definition means what it says.
fn check_ack_wait(path: &Path, config: &consumer::pull::Config, problems: &mut Vec<String>) {
    if let Some(first) = config.backoff.first()
        && !config.ack_wait.is_zero()
        && config.ack_wait != *first
    {
        problems.push(format!(
            "{}: `ack_wait` is {:?} but `backoff[0]` is {first:?}; nats-server uses `backoff[0]` as the ack wait \
             when a backoff list is given, so write them equal (or leave `ack_wait` out)",
            path.display(),
            config.ack_wait
        ));
    }
}

/// The dead-letter stream a replay reads from.
const DLQ_STREAM: &str = "DLQ";

/// Buckets whose records a replayed dead letter must still find: the ledger (an effect recorded at the first
/// attempt, before the event died, is not repeated by its replay) and the batch records (a replayed item counts
/// against its batch).
const OUTLIVE_DEAD_LETTERS: [&str; 2] = ["jetfn-ledger", "jetfn-batches"];

/// The longest an event can spend being retried before it is dead-lettered, over `consumers`: its effects may be
/// recorded at the first attempt and the dead letter written at the last. A consumer without a `max_deliver`
/// retries without end and is dead-lettered only by a permanent error, which no retention can bound; it adds
/// nothing here.
pub fn longest_retry_span(consumers: &[(String, consumer::pull::Config)]) -> Duration {
    consumers
        .iter()
        .map(|(_, consumer)| {
            let attempts = u32::try_from(consumer.max_deliver.max(1)).unwrap_or(u32::MAX);
            (1..attempts)
                .map(|n| {
                    let step = usize::try_from(n - 1).unwrap_or(usize::MAX);
                    consumer
                        .backoff
                        .get(step)
                        .or(consumer.backoff.last())
                        .copied()
                        .unwrap_or(consumer.ack_wait)
                })
                .sum::<Duration>()
        })
        .max()
        .unwrap_or_default()
}

/// An operator who shortens the ledger to hold less of the server's memory (each key costs a few hundred bytes
/// there while it is kept; README, "Sizing the server's memory") must shorten the DLQ with it, or a late replay
/// repeats an email. Refused here, at load, so `jetfn infra plan` says so before anything is applied.
fn check_outlives_dead_letters(
    path: &Path,
    bucket: &Bucket,
    dlq: &stream::Config,
    dlq_path: &Path,
    consumers: &[(String, consumer::pull::Config)],
    problems: &mut Vec<String>,
) {
    if !OUTLIVE_DEAD_LETTERS.contains(&bucket.bucket.as_str()) || bucket.max_age_secs == 0 {
        return;
    }
    let kept = Duration::from_secs(bucket.max_age_secs);
    if dlq.max_age.is_zero() {
        problems.push(format!(
            "{}: `max_age_secs` is {} but the DLQ keeps dead letters forever (`max_age` 0 in {}): a replay after \
             the record expired repeats its effect; keep it forever too (0), or give the DLQ a `max_age`",
            path.display(),
            kept.as_secs(),
            dlq_path.display()
        ));
        return;
    }
    let retries = longest_retry_span(consumers);
    let needed = dlq.max_age + retries;
    if kept < needed {
        problems.push(format!(
            "{}: `max_age_secs` is {}, less than a dead letter can wait for its replay: up to {} s of retries, \
             then the DLQ keeps it {} s (`max_age` in {}); a replay after the record expired repeats its effect. \
             Keep at least {} s, or lower the DLQ's `max_age` with it",
            path.display(),
            kept.as_secs(),
            retries.as_secs(),
            dlq.max_age.as_secs(),
            dlq_path.display(),
            needed.as_secs()
        ));
    }
}

/// A file is named after what it defines, so the folder listing is the inventory.
fn check_name(path: &Path, key: &str, name: &str, problems: &mut Vec<String>) {
    let stem = path
        .file_stem()
        .and_then(|stem| stem.to_str())
        .unwrap_or_default();
    if stem != name {
        problems.push(format!(
            "{}: `{key}` is {name:?}, but the file is named {stem:?}; they must match",
            path.display()
        ));
    }
}

fn sorted_entries(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort();
    Ok(entries)
}

fn json_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    Ok(sorted_entries(dir)?
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/nats")
    }

    #[test]
    fn every_shipped_file_loads() {
        let definitions = Definitions::load(&shipped()).unwrap();
        let count = |sub: &str| {
            walk(&shipped().join(sub))
                .iter()
                .filter(|p| p.extension().is_some_and(|e| e == "json"))
                .count()
        };
        assert_eq!(definitions.streams.len(), count("streams"));
        assert_eq!(definitions.consumers.len(), count("consumers"));
        assert_eq!(definitions.buckets.len(), count("kv"));
        assert_eq!(definitions.schedules.len(), count("schedules"));
        assert!(definitions.consumer("EVENTS", "welcome").is_some());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    /// Every key the shipped files use is in the lists (so the lists cannot be stricter than the files), and
    /// every listed key survives async-nats' round trip (so none is silently dropped on the way to the server).
    #[test]
    fn the_key_lists_cover_the_shipped_files_and_async_nats_keeps_them() {
        for (sub, fields) in [
            ("streams", schema::STREAM),
            ("consumers", schema::CONSUMER),
            ("kv", schema::BUCKET),
            ("schedules", schema::SCHEDULE),
        ] {
            for path in walk(&shipped().join(sub)) {
                let value: serde_json::Value =
                    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
                assert_eq!(
                    schema::check(&value, fields),
                    Vec::<String>::new(),
                    "{}",
                    path.display()
                );
                let round_trip = match sub {
                    "streams" => serde_json::to_value(
                        serde_json::from_value::<stream::Config>(value.clone()).unwrap(),
                    )
                    .unwrap(),
                    "consumers" => serde_json::to_value(
                        serde_json::from_value::<consumer::pull::Config>(value.clone()).unwrap(),
                    )
                    .unwrap(),
                    _ => continue,
                };
                for (key, original) in value.as_object().unwrap() {
                    // async-nats leaves out `false` and empty values; the server reads those as absent too.
                    let absent_means_same = original == &serde_json::json!(false);
                    assert!(
                        round_trip.get(key) == Some(original)
                            || (absent_means_same && round_trip.get(key).is_none()),
                        "{}: async-nats drops or changes `{key}`",
                        path.display()
                    );
                }
            }
        }
    }

    fn temp_copy(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("provision-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        copy_dir(&shipped(), &dir);
        dir
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let path = entry.unwrap().path();
            let target = to.join(path.file_name().unwrap());
            if path.is_dir() {
                copy_dir(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }

    fn edit(path: &Path, from: &str, to: &str) {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains(from), "{} has no {from}", path.display());
        std::fs::write(path, text.replacen(from, to, 1)).unwrap();
    }

    #[test]
    fn a_misspelled_key_fails_naming_the_file_and_the_key() {
        let dir = temp_copy("misspelled");
        let file = dir.join("consumers/EVENTS/welcome.json");
        edit(&file, "\"max_deliver\"", "\"max_delivr\"");
        let err = Definitions::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains(&file.display().to_string())
                && err.contains("unknown key `max_delivr` (did you mean `max_deliver`?)"),
            "{err}"
        );
        let stream = dir.join("streams/EVENTS.json");
        edit(&stream, "\"src\"", "\"srcx\"");
        let err = Definitions::load(&dir).unwrap_err().to_string();
        assert!(err.starts_with("2 problems in"), "{err}");
        assert!(
            err.contains(&format!(
                "{}: unknown key `sources[0].subject_transforms[0].srcx`",
                stream.display()
            )),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_ack_wait_the_server_would_replace_with_the_first_backoff_step_is_refused() {
        let dir = temp_copy("ack-wait");
        let file = dir.join("consumers/EVENTS/welcome.json");
        edit(
            &file,
            "\"ack_wait\": 5000000000",
            "\"ack_wait\": 30000000000",
        );
        let err = Definitions::load(&dir).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: `ack_wait` is 30s but `backoff[0]` is 5s; nats-server uses `backoff[0]` as the ack wait when a \
                 backoff list is given, so write them equal (or leave `ack_wait` out)",
                file.display()
            )
        );
        edit(&file, "\"ack_wait\": 30000000000,", "");
        Definitions::load(&dir).expect("without ack_wait the server's rule is the file's meaning");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_wrong_type_names_the_file_the_key_and_the_reason() {
        let dir = temp_copy("wrong-type");
        let file = dir.join("kv/jetfn-ledger.json");
        edit(&file, "\"history\": 1", "\"history\": \"one\"");
        let err = Definitions::load(&dir).unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "{}: `history`: expected a whole number, 0 or more, got \"one\"",
                file.display()
            )
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_ledger_kept_shorter_than_a_dead_letter_can_wait_is_refused_and_a_shorter_dlq_allows_it() {
        let dir = temp_copy("retention");
        let ledger = dir.join("kv/jetfn-ledger.json");
        let dlq = dir.join("streams/DLQ.json");
        // 16 days, as an operator might set it to hold fewer keys in the server's memory.
        edit(
            &ledger,
            "\"max_age_secs\": 7948800",
            "\"max_age_secs\": 1382400",
        );
        let err = Definitions::load(&dir).unwrap_err().to_string();
        let retries = longest_retry_span(&Definitions::load(&shipped()).unwrap().consumers);
        assert_eq!(
            err,
            format!(
                "{}: `max_age_secs` is 1382400, less than a dead letter can wait for its replay: up to {} s of \
                 retries, then the DLQ keeps it 7776000 s (`max_age` in {}); a replay after the record expired \
                 repeats its effect. Keep at least {} s, or lower the DLQ's `max_age` with it",
                ledger.display(),
                retries.as_secs(),
                dlq.display(),
                7_776_000 + retries.as_secs()
            )
        );
        // 14 days of dead letters fit in 16 days of ledger.
        edit(
            &dlq,
            "\"max_age\": 7776000000000000",
            "\"max_age\": 1209600000000000",
        );
        Definitions::load(&dir).expect("a DLQ shortened with the ledger");
        edit(&dlq, "\"max_age\": 1209600000000000", "\"max_age\": 0");
        let err = Definitions::load(&dir).unwrap_err().to_string();
        assert!(
            err.contains("jetfn-ledger.json: `max_age_secs` is 1382400 but the DLQ keeps dead letters forever")
                && err.contains("jetfn-batches.json: `max_age_secs` is 7948800 but the DLQ"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_name_that_differs_from_the_file_name_is_refused() {
        let dir = temp_copy("renamed");
        let file = dir.join("consumers/EVENTS/contact.json");
        edit(
            &file,
            "\"durable_name\": \"contact\"",
            "\"durable_name\": \"kontakt\"",
        );
        let err = Definitions::load(&dir).unwrap_err().to_string();
        assert!(err.contains("`durable_name` is \"kontakt\""), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn replicas_reach_streams_consumers_and_buckets() {
        let mut definitions = Definitions::load(&shipped()).unwrap();
        definitions.set_replicas(3);
        assert!(definitions.streams.iter().all(|s| s.num_replicas == 3));
        assert!(
            definitions
                .consumers
                .iter()
                .all(|(_, c)| c.num_replicas == 3)
        );
        assert!(
            definitions
                .buckets
                .iter()
                .all(|b| b.kv_config().num_replicas == 3)
        );
    }

    #[test]
    fn one_function_may_serve_several_consumers() {
        let functions = Definitions::load(&shipped()).unwrap().functions();
        let indexing = functions.iter().find(|f| f.name == "indexing").unwrap();
        assert_eq!(indexing.consumers.len(), 3);
        assert!(functions.iter().any(|f| f.name == "dlq-router"
            && f.consumers == [("ADVISORIES".to_owned(), "dlq-router".to_owned())]));
    }
}
