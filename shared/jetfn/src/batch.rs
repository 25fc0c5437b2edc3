//! `jetfn batch`: submit many events of one type as one batch (all or none), follow its progress, cancel it.
//! A thin layer over `publish::batch`, which the SDK and the runtime share.

use anyhow::Context as _;
use ops::audit::{Action, Outcome};

use crate::output::{JsonArg, print_json};

#[derive(Debug, clap::Subcommand)]
pub(crate) enum BatchCommand {
    /// Submit a batch: every line of --items is the `data` of one event of TYPE. Every item is validated first
    /// (the first invalid one is named by line and field, and nothing is stored); then all are accepted at once.
    Submit(SubmitArgs),
    /// A batch's progress: state, total, succeeded, failed, cancelled, remaining.
    Status {
        /// The batch id.
        id: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Cancel a batch: items not yet started are skipped and counted as cancelled; running ones finish.
    Cancel {
        /// The batch id.
        id: String,
        #[command(flatten)]
        json: JsonArg,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    /// The catalog type of every item, such as `users.registered`.
    r#type: String,
    /// A JSON Lines file (or `-` for stdin): one item's `data` per line; blank lines are skipped.
    #[arg(long)]
    items: String,
    /// The batch id (letters, digits, - and _, at most 40; default: a new random one). Submitting the same id
    /// again is safe: an accepted batch is reported as a duplicate, a half-submitted one is resumed.
    #[arg(long)]
    id: Option<String>,
    /// The CloudEvents `source` of the items.
    #[arg(long, default_value = "/jetfn-cli")]
    source: String,
    #[command(flatten)]
    json: JsonArg,
}

pub(crate) async fn run(
    client: async_nats::Client,
    audit: &crate::audit::Audit,
    command: BatchCommand,
) -> anyhow::Result<()> {
    match command {
        BatchCommand::Submit(args) => submit(client, args).await,
        BatchCommand::Status { id, json } => {
            let status = publish::batch::status(&client, &id)
                .await?
                .with_context(|| format!("no batch {id}"))?;
            print_status(&status, json.json)
        }
        BatchCommand::Cancel { id, json } => {
            let cancelled = publish::batch::cancel(&client, &id).await;
            let (outcome, detail) = match &cancelled {
                Ok(status) => (
                    Outcome::Ok,
                    format!(
                        "state {:?}, {} of {} finished",
                        status.state,
                        status.total - status.remaining,
                        status.total
                    )
                    .to_lowercase(),
                ),
                Err(err) => (Outcome::Error, err.to_string()),
            };
            audit
                .record(Action::BatchCancel, &id, outcome, &detail)
                .await;
            print_status(&cancelled?, json.json)
        }
    }
}

async fn submit(client: async_nats::Client, args: SubmitArgs) -> anyhow::Result<()> {
    let path = if args.items == "-" {
        "-".to_owned()
    } else {
        format!("@{}", args.items)
    };
    let text = String::from_utf8(crate::read_arg(&path)?).context("--items is not UTF-8")?;
    let mut items = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: serde_json::Value = serde_json::from_str(line).with_context(|| {
            format!(
                "--items line {} (item {}) is not JSON",
                number + 1,
                items.len()
            )
        })?;
        items.push(item);
    }
    let id = args
        .id
        .unwrap_or_else(|| uuid::Uuid::now_v7().simple().to_string());
    let mut publisher = runtime::Publisher::new(client.clone(), args.source);
    if let Some(keyring) = publish::sealed::Keyring::from_env()? {
        publisher = publisher.with_keyring(std::sync::Arc::new(keyring));
    }
    let submitted = publisher.submit_batch(&id, &args.r#type, &items).await?;
    client.flush().await.ok();
    if args.json.json {
        return print_json(&submitted);
    }
    if submitted.duplicate {
        println!(
            "batch {} exists already ({} {} items): nothing new was published",
            submitted.id, submitted.total, submitted.item_type
        );
    } else {
        println!(
            "batch {} submitted: {} {} items in {} atomic chunk(s); follow it with `jetfn batch status {}`",
            submitted.id, submitted.total, submitted.item_type, submitted.chunks, submitted.id
        );
    }
    Ok(())
}

fn print_status(status: &publish::batch::BatchStatus, json: bool) -> anyhow::Result<()> {
    if json {
        return print_json(status);
    }
    let state = serde_json::to_value(status.state)?;
    println!(
        "batch {} ({}): {}{}\n  total {}  succeeded {}  failed {}  cancelled {}  remaining {}",
        status.id,
        status.item_type,
        state.as_str().unwrap_or_default(),
        if status.complete { ", complete" } else { "" },
        status.total,
        status.succeeded,
        status.failed,
        status.cancelled,
        status.remaining
    );
    Ok(())
}
