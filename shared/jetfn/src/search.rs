//! `jetfn search`: asks the indexing function's NATS service (`jetfn.index.search`) and prints ranked hits.

use std::time::Duration;

use anyhow::Context as _;
use events::services::index::{SEARCH_SUBJECT, SearchRequest, SearchResponse};
use events::services::{self, ReplyError};

#[derive(Debug, clap::Args)]
pub(crate) struct SearchArgs {
    /// The query: words (any may match; best first), "a phrase", +required, -excluded.
    query: String,
    /// Only this conversation's messages.
    #[arg(long)]
    conversation: Option<String>,
    /// Hits per page (1 to 100).
    #[arg(long, default_value_t = 10)]
    limit: usize,
    /// Hits to skip (the next page starts at offset + limit).
    #[arg(long, default_value_t = 0)]
    offset: usize,
    /// Print the service's JSON answer as it came.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(client: async_nats::Client, args: SearchArgs) -> anyhow::Result<()> {
    let request = SearchRequest {
        q: args.query,
        conversation_id: args.conversation,
        limit: Some(args.limit),
        offset: args.offset,
    };
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(SEARCH_SUBJECT, serde_json::to_vec(&request)?.into()),
    )
    .await
    .context("the search service did not answer within 10 s")?
    .map_err(|err| {
        if err.kind() == async_nats::RequestErrorKind::NoResponders {
            anyhow::anyhow!(
                "the search service ({}) is not running: nothing answers on {SEARCH_SUBJECT}; start the indexing \
                 function",
                events::services::index::SERVICE
            )
        } else {
            anyhow::Error::new(err).context("asking the search service")
        }
    })?;
    let header = |name: &str| {
        reply
            .headers
            .as_ref()
            .and_then(|headers| headers.get(name))
            .map(async_nats::HeaderValue::as_str)
    };
    let response: SearchResponse = match services::decode_reply(header, &reply.payload) {
        Ok(response) => response,
        Err(ReplyError::Refused(refusal)) => {
            anyhow::bail!("search refused ({}): {}", refusal.code, refusal.status)
        }
        Err(err @ ReplyError::Malformed(_)) => {
            return Err(anyhow::Error::new(err).context("the search service's answer"));
        }
    };
    if args.json {
        println!("{}", String::from_utf8_lossy(&reply.payload));
        return Ok(());
    }
    let last = args.offset + response.hits.len();
    println!(
        "{} matching message{}{}",
        response.total,
        if response.total == 1 { "" } else { "s" },
        if response.hits.is_empty() {
            String::new()
        } else {
            format!("; showing {} to {last}", args.offset + 1)
        }
    );
    for (rank, hit) in response.hits.iter().enumerate() {
        let body: String = hit.body.chars().take(100).collect();
        let ellipsis = if hit.body.chars().count() > 100 {
            "…"
        } else {
            ""
        };
        println!(
            "{:>4}. {:>6.3}  {}  conversation={} sender={} {}\n        {}{ellipsis}",
            args.offset + rank + 1,
            hit.score,
            hit.message_id,
            hit.conversation_id,
            hit.sender_id,
            hit.created_at,
            body.replace('\n', " "),
        );
    }
    Ok(())
}
