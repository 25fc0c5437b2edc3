//! Which durable consumers make up a function, read from the server: a consumer file's `metadata."jetfn.function"`
//! is applied with it, so the server knows the registry too, and an operator names a function (`indexing`), not
//! its three consumers.

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use futures::{StreamExt as _, TryStreamExt as _};
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

/// How many consumer info requests [`infos`] has in flight at once.
const INFO_REQUESTS: usize = 16;

/// Every consumer of the stream `name` (durable or not), with its info, in name order.
///
/// The names come from the meta layer (`CONSUMER.NAMES`), which knows every consumer; each info is then asked of
/// the consumer itself. The server's own info listing (`CONSUMER.LIST`, async-nats's `Stream::consumers`) leaves
/// out a consumer whose leader does not answer in time and names it only under `missing`, which async-nats drops:
/// a pause built on it would pause some of a function's consumers and report success. A consumer deleted between
/// the two reads is gone, and is left out.
///
/// # Errors
/// The names cannot be listed, or a consumer's info cannot be read (the error names the consumer).
pub async fn infos<I>(
    stream: &stream::Stream<I>,
    name: &str,
) -> anyhow::Result<Vec<consumer::Info>> {
    let (read, unreadable) = infos_or_unreadable(stream, name).await?;
    if let Some((consumer, why)) = unreadable.into_iter().next() {
        anyhow::bail!(
            "consumer {consumer} could not be read (its leader may be down or electing): {why}"
        );
    }
    Ok(read)
}

/// [`infos`], with the consumers that could not be read named apart (`stream/consumer`, why) rather than failing
/// the whole read: a status taken during a node loss still shows every consumer it can, and says which it cannot.
///
/// # Errors
/// The names cannot be listed.
pub async fn infos_or_unreadable<I>(
    stream: &stream::Stream<I>,
    name: &str,
) -> anyhow::Result<(Vec<consumer::Info>, Vec<(String, String)>)> {
    let mut names: Vec<String> = stream
        .consumer_names()
        .try_collect()
        .await
        .with_context(|| format!("listing the consumers of {name}"))?;
    names.sort();
    let answers: Vec<(String, Result<consumer::Info, _>)> = futures::stream::iter(names)
        .map(|consumer| async move {
            let answer = stream.consumer_info(&consumer).await;
            (consumer, answer)
        })
        .buffered(INFO_REQUESTS)
        .collect()
        .await;
    let mut read = Vec::new();
    let mut unreadable = Vec::new();
    for (consumer, answer) in answers {
        match answer {
            Ok(info) => read.push(info),
            Err(err) if err.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {}
            Err(err) => unreadable.push((format!("{name}/{consumer}"), err.to_string())),
        }
    }
    Ok((read, unreadable))
}

/// Every durable consumer on the server, with its info, stream by stream in name order.
///
/// # Errors
/// The server cannot list streams or consumers, or a consumer cannot be read.
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
        let mut consumers = infos(&stream, &name).await?;
        consumers.retain(is_durable);
        found.extend(consumers);
    }
    Ok(found)
}

/// The consumers of `function` (by its `jetfn.function` metadata, or a consumer of that name).
///
/// # Errors
/// No consumer belongs to it (the error lists the functions there are), or the server cannot be read: a consumer
/// that cannot be read may be one of the function's, so nothing short of every consumer is an answer.
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
