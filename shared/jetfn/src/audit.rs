//! `jetfn audit`, and the recording of every change the CLI makes (through `ops::audit`).

use ops::audit::{Action, Auditor, Filter, Outcome};

use crate::output;

#[derive(Debug, clap::Args)]
pub(crate) struct AuditArgs {
    /// Only this action (pause, resume, dlq-replay, dlq-purge, schedule-add, schedule-cancel, infra-apply, batch-cancel).
    #[arg(long)]
    action: Option<String>,
    /// Only entries whose target contains this text (a function, `dlq #12`, a schedule).
    #[arg(long)]
    target: Option<String>,
    /// Only this NATS user's or actor's entries.
    #[arg(long)]
    who: Option<String>,
    /// Only entries from this time on (RFC 3339, or a duration ago: 2h, 7days).
    #[arg(long)]
    since: Option<String>,
    /// Only entries before this time (RFC 3339, or a duration ago).
    #[arg(long)]
    until: Option<String>,
    /// Only the newest this many.
    #[arg(long)]
    last: Option<usize>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(client: async_nats::Client, args: AuditArgs) -> anyhow::Result<()> {
    let filter = Filter {
        action: args.action.as_deref().map(Action::parse).transpose()?,
        target: args.target,
        who: args.who,
        since: args
            .since
            .as_deref()
            .map(|v| output::parse_time("--since", v, false))
            .transpose()?,
        until: args
            .until
            .as_deref()
            .map(|v| output::parse_time("--until", v, false))
            .transpose()?,
        last: args.last,
    };
    let entries = ops::audit::list(&async_nats::jetstream::new(client), &filter).await?;
    if args.json {
        return output::print_json(&entries);
    }
    if entries.is_empty() {
        println!("no audit entries");
        return Ok(());
    }
    let mut table = output::table(&[
        "time", "who", "user", "action", "target", "result", "detail",
    ]);
    for stored in &entries {
        let entry = &stored.entry;
        table.add_row(vec![
            ops::rfc3339(entry.time),
            entry.actor.clone(),
            entry.user.clone(),
            entry.action.as_str().to_owned(),
            entry.target.clone(),
            entry.result.as_str().to_owned(),
            entry.detail.clone(),
        ]);
    }
    output::print_table(&table);
    Ok(())
}

/// Records the CLI's changes. A change that was made but could not be recorded is said on stderr (with what to
/// fix), and does not turn the change into a failure: the command's exit status says whether the change was made.
pub(crate) struct Audit {
    auditor: Auditor,
}

impl Audit {
    pub(crate) fn new(
        client: &async_nats::Client,
        config: &runtime::config::NatsConfig,
        actor: Option<&str>,
    ) -> Self {
        Self {
            auditor: Auditor::new(
                async_nats::jetstream::new(client.clone()),
                &identity(config),
                actor,
                concat!("jetfn-cli ", env!("CARGO_PKG_VERSION")),
            )
            .on_unrecorded(std::sync::Arc::new(|action, target, err| {
                eprintln!(
                    "warning: {} {target}: not recorded in the audit trail: {}",
                    action.as_str(),
                    crate::render_error(err)
                );
            })),
        }
    }

    /// The auditor the ops functions that audit themselves take (`ops::schedules`); it reports an unwritten entry
    /// on stderr, as [`Audit::record`] does.
    pub(crate) fn auditor(&self) -> &Auditor {
        &self.auditor
    }

    pub(crate) async fn record(&self, action: Action, target: &str, result: Outcome, detail: &str) {
        if let Err(err) = self.auditor.record(action, target, result, detail).await {
            eprintln!(
                "warning: {} {target}: not recorded in the audit trail: {}",
                action.as_str(),
                crate::render_error(&err)
            );
        }
    }
}

/// The NATS identity the CLI connects as: the user (from NATS_USER, or the URL), else the credentials or nkey
/// file's name, else `token` or `anonymous`. The server's permissions hold each operator user to its own audit
/// subjects, so for the generated users this is the authenticated name.
pub(crate) fn identity(config: &runtime::config::NatsConfig) -> String {
    if let Some(user) = &config.user {
        return user.clone();
    }
    if let Ok(servers) = runtime::nats_url::parse(&config.url)
        // Only a user with a password: `nats://<token>@host` puts a token where a user name would be.
        && let Some(user) = servers
            .iter()
            .filter(|server| server.has_user_pass())
            .find_map(|server| server.username())
    {
        return user.to_owned();
    }
    let stem = |path: &std::path::Path| {
        path.file_stem()
            .map(|stem| stem.to_string_lossy().into_owned())
    };
    if let Some(name) = config.creds_file.as_deref().and_then(stem) {
        return name;
    }
    if let Some(name) = config.nkey_file.as_deref().and_then(stem) {
        return name;
    }
    if config.token.is_some() {
        return "token".to_owned();
    }
    "anonymous".to_owned()
}
