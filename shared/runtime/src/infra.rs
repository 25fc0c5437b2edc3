//! Stream, consumer and KV bucket definitions live as JSON files under `infra/nats/`: the one place they are set.
//! `jetfn infra apply`, the integration tests and `nats stream add --config` all read the same files.
//!
//! Layout: `streams/<STREAM>.json` (a stream configuration as the JetStream API takes it, durations in
//! nanoseconds), `consumers/<STREAM>/<consumer>.json` (a consumer configuration), `kv/<bucket>.json`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, kv, stream};
use serde::Deserialize;

/// Everything under one `infra/nats` folder.
#[derive(Debug, Clone)]
pub struct Definitions {
    /// Stream configurations.
    pub streams: Vec<stream::Config>,
    /// Consumer configurations with the stream each belongs to.
    pub consumers: Vec<(String, consumer::pull::Config)>,
    /// KV buckets.
    pub buckets: Vec<BucketDefinition>,
}

/// A KV bucket, as the file describes it (async-nats' own `kv::Config` cannot be deserialized).
#[derive(Debug, Clone, Deserialize)]
pub struct BucketDefinition {
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
}

fn one() -> i64 {
    1
}
fn unlimited() -> i32 {
    -1
}

impl Definitions {
    /// Reads every definition under `dir`.
    ///
    /// # Errors
    /// A file that cannot be read or parsed, named with its path.
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let mut streams = Vec::new();
        for path in json_files(&dir.join("streams"))? {
            streams.push(read_json::<stream::Config>(&path)?);
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
                for path in json_files(&entry)? {
                    consumers.push((
                        stream_name.clone(),
                        read_json::<consumer::pull::Config>(&path)?,
                    ));
                }
            }
        }
        let mut buckets = Vec::new();
        let kv_dir = dir.join("kv");
        if kv_dir.is_dir() {
            for path in json_files(&kv_dir)? {
                buckets.push(read_json::<BucketDefinition>(&path)?);
            }
        }
        Ok(Self {
            streams,
            consumers,
            buckets,
        })
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

    /// Creates or updates every stream, bucket and consumer, in that order.
    ///
    /// Consumers use create-or-update, so a changed backoff or `max_deliver` in a file reaches the server on the
    /// next apply (`get_or_create` would keep the old one).
    ///
    /// # Errors
    /// The first definition the server refuses, named.
    pub async fn apply(&self, js: &jetstream::Context) -> anyhow::Result<()> {
        for config in &self.streams {
            js.create_or_update_stream(config.clone())
                .await
                .with_context(|| format!("applying stream {}", config.name))?;
            tracing::info!(stream = %config.name, "stream applied");
        }
        for bucket in &self.buckets {
            apply_bucket(js, bucket)
                .await
                .with_context(|| format!("applying KV bucket {}", bucket.bucket))?;
            tracing::info!(bucket = %bucket.bucket, "kv bucket applied");
        }
        for (stream_name, config) in &self.consumers {
            let name = config.durable_name.clone().unwrap_or_default();
            let stream = js
                .get_stream(stream_name)
                .await
                .with_context(|| format!("stream {stream_name}"))?;
            stream
                .create_consumer(config.clone())
                .await
                .with_context(|| format!("applying consumer {name} on {stream_name}"))?;
            tracing::info!(stream = %stream_name, consumer = %name, "consumer applied");
        }
        Ok(())
    }
}

async fn apply_bucket(js: &jetstream::Context, bucket: &BucketDefinition) -> anyhow::Result<()> {
    let config = kv::Config {
        bucket: bucket.bucket.clone(),
        description: bucket.description.clone(),
        history: bucket.history,
        max_age: Duration::from_secs(bucket.max_age_secs),
        max_value_size: bucket.max_value_size,
        storage: stream::StorageType::File,
        limit_markers: bucket.per_key_ttl.then(|| Duration::from_secs(60)),
        ..Default::default()
    };
    match js.get_key_value(&bucket.bucket).await {
        Ok(_) => {
            js.update_key_value(config).await?;
        }
        Err(_) => {
            js.create_key_value(config).await?;
        }
    }
    Ok(())
}

/// The default definitions folder: `JETFN_INFRA_DIR`, else `infra/nats` under the current directory.
pub fn default_dir() -> PathBuf {
    std::env::var_os("JETFN_INFRA_DIR").map_or_else(|| PathBuf::from("infra/nats"), PathBuf::from)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
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
