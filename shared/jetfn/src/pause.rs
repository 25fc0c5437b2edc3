//! `jetfn pause` and `jetfn resume`.

use ops::audit::{Action, Outcome};

use crate::audit::Audit;
use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct PauseArgs {
    /// The function (its consumers are paused together; `jetfn status` lists them).
    function: String,
    /// Until this time (RFC 3339, or a duration from now: 30m, 2h); default: until `jetfn resume`.
    #[arg(long)]
    until: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub(crate) struct ResumeArgs {
    /// The function.
    function: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn pause(
    client: async_nats::Client,
    audit: &Audit,
    args: PauseArgs,
) -> anyhow::Result<()> {
    let until = args
        .until
        .as_deref()
        .map(|value| output::parse_time("--until", value, true))
        .transpose()?;
    let js = async_nats::jetstream::new(client);
    let result = ops::pause::pause(&js, &args.function, until).await;
    let when = until.map_or_else(
        || "until resumed".to_owned(),
        |at| format!("until {}", ops::rfc3339(at)),
    );
    finish(
        audit,
        Action::Pause,
        &args.function,
        &when,
        result,
        args.json,
    )
    .await
}

pub(crate) async fn resume(
    client: async_nats::Client,
    audit: &Audit,
    args: ResumeArgs,
) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(client);
    let result = ops::pause::resume(&js, &args.function).await;
    finish(audit, Action::Resume, &args.function, "", result, args.json).await
}

async fn finish(
    audit: &Audit,
    action: Action,
    function: &str,
    detail: &str,
    result: anyhow::Result<Vec<ops::pause::PauseState>>,
    json: bool,
) -> anyhow::Result<()> {
    let states = match result {
        Ok(states) => states,
        Err(err) => {
            audit
                .record(action, function, Outcome::Error, &crate::render_error(&err))
                .await;
            return Err(err);
        }
    };
    let consumers: Vec<String> = states
        .iter()
        .map(|s| format!("{}/{}", s.consumer.stream, s.consumer.consumer))
        .collect();
    audit
        .record(
            action,
            function,
            Outcome::Ok,
            &format!(
                "{detail}{}{}",
                if detail.is_empty() { "" } else { "; " },
                consumers.join(", ")
            ),
        )
        .await;
    if json {
        return output::print_json(&states);
    }
    for state in &states {
        let what = match (state.paused, state.until) {
            (false, _) => "delivering".to_owned(),
            (true, None) => "paused until resumed".to_owned(),
            (true, Some(at)) => format!("paused until {}", ops::rfc3339(at)),
        };
        println!(
            "{function}: {}/{} {what}",
            state.consumer.stream, state.consumer.consumer
        );
    }
    Ok(())
}
