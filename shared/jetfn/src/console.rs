//! `jetfn console`: the web console and its JSON API (the `console` crate), over the same NATS options as the
//! other commands; `jetfn console token` makes a sign-in token and its line for the tokens file.

use std::path::PathBuf;

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct ConsoleArgs {
    #[command(subcommand)]
    command: Option<ConsoleCommand>,
    /// The address to serve on.
    #[arg(long, env = "JETFN_CONSOLE_LISTEN", default_value = "127.0.0.1:8090")]
    listen: String,
    /// Sign in with tokens from this file: one line per person, `<name> <role> <sha256 hex of the token>`
    /// (`jetfn console token` makes one). The console acts over its own NATS connection.
    #[arg(
        long,
        env = "JETFN_CONSOLE_TOKENS_FILE",
        conflicts_with = "nats_sign_in"
    )]
    tokens_file: Option<PathBuf>,
    /// Sign in with each person's own NATS user and password (or creds file): the server's permissions hold them to
    /// their user's rights; the role comes from the user's name (viewer, operator, admin).
    #[arg(long)]
    nats_sign_in: bool,
    /// A trace link template, `{trace_id}` replaced (e.g. http://localhost:16686/trace/{trace_id}).
    #[arg(long, env = "JETFN_TRACE_URL_TEMPLATE", hide_env_values = true)]
    trace_url_template: Option<String>,
    /// The infra definitions an admin may plan and apply from the console (as `jetfn infra plan|apply`).
    #[arg(long, env = "JETFN_INFRA_DIR", default_value = "infra/nats")]
    infra_dir: PathBuf,
}

#[derive(Debug, clap::Subcommand)]
enum ConsoleCommand {
    /// Print a new random token (give it to the person) and the line to add to the tokens file (holds its hash).
    Token {
        /// The person's name (shown in the console and the audit trail).
        name: String,
        /// viewer, operator or admin.
        role: String,
    },
}

pub(crate) async fn run(
    args: ConsoleArgs,
    nats: impl FnOnce() -> anyhow::Result<runtime::config::NatsConfig>,
) -> anyhow::Result<()> {
    if let Some(ConsoleCommand::Token { name, role }) = args.command {
        let role = jetfn_console::Role::parse(&role)?;
        anyhow::ensure!(
            !name.is_empty() && !name.contains(char::is_whitespace),
            "name: must be one word (no spaces)"
        );
        let token = jetfn_console::auth::new_token()?;
        println!("token: {token}");
        println!(
            "tokens file line: {name} {role} {}",
            jetfn_console::auth::hash_token(&token)
        );
        return Ok(());
    }
    if let Some(template) = &args.trace_url_template {
        anyhow::ensure!(
            template.contains("{trace_id}"),
            "JETFN_TRACE_URL_TEMPLATE (--trace-url-template) has no {{trace_id}} to fill in: {template}"
        );
    }
    let config = nats()?;
    let (sign_in, how) = match (&args.tokens_file, args.nats_sign_in) {
        (Some(path), false) => {
            let tokens = jetfn_console::Tokens::load(path)?;
            let client = crate::connect(&config).await?;
            let nats_user = crate::audit::identity(&config);
            (
                jetfn_console::SignIn::Tokens {
                    tokens,
                    client,
                    nats_user,
                },
                "a token from the tokens file",
            )
        }
        (None, true) => (
            jetfn_console::SignIn::Nats {
                nats: Box::new(config),
            },
            "a NATS user and password or creds",
        ),
        _ => anyhow::bail!(
            "choose how people sign in: --tokens-file <file> (tokens; `jetfn console token` makes one) or \
             --nats-sign-in (their own NATS credentials)"
        ),
    };
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .map_err(|err| anyhow::anyhow!("--listen {}: {err}", args.listen))?;
    println!(
        "console at http://{} (sign in with {how})",
        listener.local_addr()?
    );
    jetfn_console::serve(
        jetfn_console::Config {
            sign_in,
            trace_url_template: args.trace_url_template,
            infra_dir: args.infra_dir,
            keyring: publish::sealed::Keyring::from_env()?.map(std::sync::Arc::new),
        },
        listener,
        runtime::shutdown_signal(),
    )
    .await
}
