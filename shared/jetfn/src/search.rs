//! `jetfn search`: asks the indexing function's NATS service (`jetfn.index.search`) and prints ranked hits.

use std::time::Duration;

use anyhow::Context as _;
use serde::Deserialize;

/// The search endpoint of the `jetfn-index` service.
const SUBJECT: &str = "jetfn.index.search";

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

#[derive(Debug, Deserialize)]
struct Response {
    total: usize,
    hits: Vec<Hit>,
}

#[derive(Debug, Deserialize)]
struct Hit {
    message_id: String,
    conversation_id: String,
    sender_id: String,
    body: String,
    created_at: String,
    score: f32,
}

pub(crate) async fn run(client: async_nats::Client, args: SearchArgs) -> anyhow::Result<()> {
    let request = serde_json::json!({
        "q": args.query,
        "conversation_id": args.conversation,
        "limit": args.limit,
        "offset": args.offset,
    });
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(SUBJECT, serde_json::to_vec(&request)?.into()),
    )
    .await
    .context("the search service did not answer within 10 s")?
    .context("asking the search service (is the indexing function running?)")?;
    if let Some(headers) = &reply.headers
        && let Some(code) = headers.get("Nats-Service-Error-Code")
    {
        let status = headers
            .get("Nats-Service-Error")
            .map(|value| value.as_str().to_owned())
            .unwrap_or_default();
        anyhow::bail!("search refused ({}): {status}", code.as_str());
    }
    if args.json {
        println!("{}", String::from_utf8_lossy(&reply.payload));
        return Ok(());
    }
    let response: Response =
        serde_json::from_slice(&reply.payload).context("the search service's answer")?;
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
