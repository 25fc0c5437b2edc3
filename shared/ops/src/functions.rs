//! Which durable consumers make up a function, read from the server: a consumer file's `metadata."jetfn.function"`
//! is applied with it, so the server knows the registry too, and an operator names a function (`indexing`), not
//! its three consumers.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use futures::TryStreamExt as _;
use serde::Serialize;

/// The metadata key naming a consumer's function.
pub const FUNCTION_KEY: &str = "jetfn.function";

/// A durable consumer and the function it belongs to.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConsumerRef {
    /// Its stream.
    pub stream: String,
    /// The consumer's (durable) name.
    pub consumer: String,
    /// `metadata."jetfn.function"`, or the consumer's own name when it has none.
    pub function: String,
}

/// The function a consumer belongs to.
pub fn function_of(info: &consumer::Info) -> String {
    info.config
        .metadata
        .get(FUNCTION_KEY)
        .cloned()
        .unwrap_or_else(|| info.name.clone())
}

/// Whether a consumer is one a person would call a function's: durable. Ephemeral and ordered consumers (a
/// `jetfn dlq list`, a console's reader) come and go and are not shown.
pub fn is_durable(info: &consumer::Info) -> bool {
    info.config.durable_name.is_some()
}

/// Every durable consumer on the server, with its info, stream by stream in name order.
///
/// # Errors
/// The server cannot list streams or consumers.
pub async fn all(js: &jetstream::Context) -> anyhow::Result<Vec<consumer::Info>> {
    let mut names: Vec<String> = js
        .stream_names()
        .try_collect()
        .await
        .context("listing streams")?;
    names.sort();
    let mut found = Vec::new();
    for name in names {
        let stream = js
            .get_stream_no_info(&name)
            .await
            .with_context(|| format!("stream {name}"))?;
        let mut consumers: Vec<consumer::Info> = stream
            .consumers()
            .try_collect()
            .await
            .with_context(|| format!("listing the consumers of {name}"))?;
        consumers.retain(is_durable);
        consumers.sort_by(|a, b| a.name.cmp(&b.name));
        found.extend(consumers);
    }
    Ok(found)
}

/// The consumers of `function` (by its `jetfn.function` metadata, or a consumer of that name).
///
/// # Errors
/// No consumer belongs to it (the error lists the functions there are), or the server cannot be read.
pub async fn consumers_of(
    js: &jetstream::Context,
    function: &str,
) -> anyhow::Result<Vec<ConsumerRef>> {
    let all = all(js).await?;
    let found: Vec<ConsumerRef> = all
        .iter()
        .filter(|info| function_of(info) == function || info.name == function)
        .map(|info| ConsumerRef {
            stream: info.stream_name.clone(),
            consumer: info.name.clone(),
            function: function_of(info),
        })
        .collect();
    if found.is_empty() {
        let mut known: Vec<String> = all.iter().map(function_of).collect();
        known.sort();
        known.dedup();
        anyhow::bail!(
            "no function {function} on the server (no durable consumer names it); functions: {}",
            if known.is_empty() {
                "none (run `jetfn infra apply`)".to_owned()
            } else {
                known.join(", ")
            }
        );
    }
    Ok(found)
}
