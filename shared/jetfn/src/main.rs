//! `jetfn`: the operator's and developer's command line.
//!
//! `jetfn dev` runs the whole local system; `jetfn publish` validates and publishes an event; `jetfn dlq`
//! inspects, replays and purges dead events; `jetfn infra plan|apply` shows and provisions streams, consumers,
//! buckets and the default schedules, and `jetfn infra kubernetes` renders the Kubernetes manifests of every
//! function; `jetfn status` shows queue depth per function; `jetfn search` queries the message index;
//! `jetfn schedule` publishes events later or on a recurring schedule NATS holds; `jetfn new` scaffolds a function;
//! `jetfn pause|resume` stops and restarts a function's delivery on the server; `jetfn event` finds an event and
//! what became of it; `jetfn audit` lists the changes made; `jetfn batch` submits, follows and cancels batches;
//! `jetfn console` serves the web console.
//!
//! The operations themselves live in the `ops` library (which a web console calls too); this binary parses flags,
//! calls them, prints, and records each change in the audit stream.

mod audit;
mod batch;
mod console;
mod dev;
mod dlq;
mod event;
mod keys;
mod new;
mod output;
mod pause;
mod schedule;
mod search;
mod status;

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "jetfn",
    version,
    about = "Background functions on NATS JetStream"
)]
struct Cli {
    /// NATS server URL, or several comma-separated (the nodes of a cluster) [env: NATS_URL; default:
    /// nats://127.0.0.1:4222]. The other NATS_* variables of the functions apply too (NATS_USER, NATS_PASSWORD,
    /// NATS_TOKEN, NATS_TLS_CA_FILE, ...; see the README).
    // Read from the environment by runtime::config, not by clap: the value may hold a password, and a context
    // must be able to set it.
    #[arg(long, global = true)]
    nats_url: Option<String>,
    /// NATS credentials file [env: NATS_CREDS_FILE].
    #[arg(long, global = true)]
    nats_creds: Option<PathBuf>,
    /// A nats CLI context, by name or JSON file path [env: NATS_CONTEXT]; NATS_* variables and the flags above
    /// override its fields.
    #[arg(long, global = true)]
    context: Option<String>,
    /// Who is acting, for the audit trail of changes (default: the NATS user).
    #[arg(long, global = true, env = "JETFN_ACTOR", hide_env_values = true)]
    actor: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the local system: a nats-server with JetStream, the streams and consumers from infra/, every
    /// function and the dead-letter router. Ctrl-C stops it all.
    Dev(dev::DevArgs),
    /// Show (plan) or make (apply) the changes that bring the server to the streams, KV buckets, consumers and
    /// schedules defined under infra/nats; or print the Kubernetes manifests of every function (kubernetes).
    Infra {
        #[command(subcommand)]
        command: InfraCommand,
    },
    /// Validate an event and publish it; prints the stream and sequence it got.
    Publish(PublishArgs),
    /// Submit many events of one type as one batch (all or none), follow its progress, cancel it.
    Batch {
        #[command(subcommand)]
        command: batch::BatchCommand,
    },
    /// Inspect, replay and purge dead events.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Per stream, its use against its limits; per function, what waits and how old the oldest is, what is in
    /// flight, what was redelivered, and whether it is paused.
    Status(status::StatusArgs),
    /// Stop delivering to a function (every replica at once, with the server's consumer pause): its events wait
    /// in the stream until `jetfn resume` or --until.
    Pause(pause::PauseArgs),
    /// Deliver to a paused function again.
    Resume(pause::ResumeArgs),
    /// Find an event by its id: where it is, what each function did with it, its effects and its trace.
    Event(event::EventArgs),
    /// Serve the web console and its JSON API (default http://127.0.0.1:8090).
    Console(console::ConsoleArgs),
    /// The changes made through jetfn (pause, resume, replay, purge, schedules, infra apply): who, what, when,
    /// target, result.
    Audit(audit::AuditArgs),
    /// Search the message index (through the indexing function's NATS service).
    Search(search::SearchArgs),
    /// Publish an event later, or on a recurring @every or cron schedule that NATS holds; list and cancel.
    Schedule {
        #[command(subcommand)]
        command: schedule::ScheduleCommand,
    },
    /// The keyring of sealed (encrypted) fields: which stored messages still name a key, a new key, the key ids.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// The event catalog: types, subjects, consumers.
    Catalog(output::JsonArg),
    /// Scaffold a function for a catalog event: its crate with a handler and a passing test, its consumer file,
    /// and its entries in the catalog, the NATS permissions and the Kubernetes manifests.
    New(new::NewArgs),
}

#[derive(Debug, Subcommand)]
enum InfraCommand {
    /// Print what apply would do, per object (create, update with each changed field, unchanged, or a change the
    /// server cannot make), and change nothing.
    Plan(InfraArgs),
    /// Apply every definition (streams, KV buckets, consumers, then schedules), printing the plan as it goes;
    /// refuses, applying nothing, when the server cannot make a change.
    Apply(InfraArgs),
    /// Print the NATS users (`authorization { users = [...] }`) generated from the consumer files and the event
    /// catalog: one per function, publishers, viewer, operator and admin. Needs no server.
    Permissions(PermissionsArgs),
    /// Print the Kubernetes manifests of every function the consumer files name (Namespace, provisioning Job,
    /// Deployments or StatefulSet, PodDisruptionBudgets, KEDA ScaledObjects); needs no cluster and no NATS.
    Kubernetes(KubernetesArgs),
}

#[derive(Debug, clap::Args)]
struct PermissionsArgs {
    /// The definitions folder.
    #[arg(long, env = "JETFN_INFRA_DIR", default_value = "infra/nats")]
    dir: PathBuf,
    /// Write the configuration to this file instead of stdout.
    #[arg(long, short, conflicts_with = "check")]
    output: Option<PathBuf>,
    /// Compare this file with the generated configuration and fail when it differs.
    #[arg(long)]
    check: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct KubernetesArgs {
    /// The definitions folder (the consumer files name the functions).
    #[arg(long, env = "JETFN_INFRA_DIR", default_value = "infra/nats")]
    dir: PathBuf,
    /// What the registry cannot know: images, replica bounds, extra settings per function.
    #[arg(long, default_value = "infra/deploy/kubernetes.json")]
    settings: PathBuf,
    /// The NATS users: each function's user and password variable come from here.
    #[arg(long, default_value = "infra/deploy/nats-permissions.conf")]
    permissions: PathBuf,
}

#[derive(Debug, clap::Args)]
struct InfraArgs {
    /// The definitions folder.
    #[arg(long, env = "JETFN_INFRA_DIR", default_value = "infra/nats")]
    dir: PathBuf,
    /// Replica count for every stream, consumer and KV bucket (e.g. 3 on a three-node cluster), instead of the
    /// files' own.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=5))]
    replicas: Option<u16>,
    /// Wait up to this many seconds for the server to answer, trying again every second: a node still starting,
    /// a new cluster still electing its JetStream leader (a provisioning step started with the servers). 0 tries
    /// once.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    wait_secs: u64,
}

#[derive(Debug, clap::Args)]
struct PublishArgs {
    /// The event type, such as `users.registered`. Omit it with --event.
    #[arg(required_unless_present = "event")]
    r#type: Option<String>,
    /// The event's data as JSON, `@file.json`, or `-` for stdin.
    #[arg(long, short, conflicts_with_all = ["event", "example"])]
    data: Option<String>,
    /// Publish the catalog's example data for the type (for trying a function out).
    #[arg(long, conflicts_with = "event")]
    example: bool,
    /// A whole CloudEvent as JSON, `@file.json`, or `-`; its id is kept.
    #[arg(long)]
    event: Option<String>,
    /// The CloudEvents `source`.
    #[arg(long, default_value = "/jetfn-cli")]
    source: String,
    /// The event id (default: a new UUIDv7). Publishing the same id twice stores it once.
    #[arg(long)]
    id: Option<String>,
    /// `high`, `normal` or `low`: the subject's class (`events.<type>.high`, `events.<type>`, `events.<type>.low`)
    /// that functions serving priorities pull from first, in turn, or last.
    #[arg(long, default_value = "normal")]
    priority: events::Priority,
}

/// mimalloc: glibc's malloc and free were a fifth of the runtime's CPU per event (tests/bench/ANALYSIS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let service = if matches!(cli.command, Command::Dev(_)) {
        "jetfn-dev"
    } else {
        "jetfn-cli"
    };
    let telemetry = match runtime::telemetry::init_cli(service) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("error: {err:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = run(cli).await;
    telemetry.flush();
    drop(telemetry);
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", render_error(&err));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Like `{:#}`, without repeating a cause that the message before it already quoted (NATS errors embed theirs),
/// on one line, with what to check when NATS's own words do not say it.
fn render_error(err: &anyhow::Error) -> String {
    let mut rendered = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if rendered.contains(&text) {
            continue;
        }
        if !rendered.is_empty() {
            rendered.push_str(": ");
        }
        rendered.push_str(&text);
    }
    let mut rendered = rendered.replace('\n', "; ");
    if let Some(hint) = hint(&rendered) {
        rendered.push_str(" (");
        rendered.push_str(hint);
        rendered.push(')');
    }
    rendered
}

/// What a person should check for the failures NATS words for a program.
fn hint(error: &str) -> Option<&'static str> {
    if error.contains("no responders") && error.contains("jetstream") {
        Some("nothing answers the JetStream API: is JetStream enabled on the server?")
    } else if error.contains("timed out") || error.contains("TimedOut") {
        Some(
            "no answer: the connection was lost, or the server dropped a request this NATS user has no right to make \
             (see the README's NATS users and permissions, and the server's log)",
        )
    } else {
        None
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Read only by the commands that connect: `jetfn new` or `catalog` must not fail on a NATS setting.
    let nats = || nats_config(&cli.nats_url, &cli.nats_creds, &cli.context);
    match cli.command {
        Command::Dev(args) => dev::run(args).await,
        Command::New(args) => new::run(&args),
        Command::Catalog(json) => catalog(json.json),
        Command::Infra { command } => match command {
            InfraCommand::Plan(args) => infra(&nats()?, &args, Mode::Plan).await,
            InfraCommand::Apply(args) => {
                let actor = cli.actor.as_deref();
                infra(&nats()?, &args, Mode::Apply { actor }).await
            }
            InfraCommand::Permissions(args) => permissions(&args),
            InfraCommand::Kubernetes(args) => {
                print!("{}", kubernetes(&args)?);
                Ok(())
            }
        },
        Command::Publish(args) => publish(&nats()?, args).await,
        Command::Batch { command } => {
            let config = nats()?;
            let client = connect(&config).await?;
            let audit = audit::Audit::new(&client, &config, cli.actor.as_deref());
            batch::run(client, &audit, command).await
        }
        Command::Dlq { command } => {
            let config = nats()?;
            let client = connect(&config).await?;
            let audit = audit::Audit::new(&client, &config, cli.actor.as_deref());
            dlq::run(client, &audit, command).await
        }
        Command::Status(args) => status::run(connect(&nats()?).await?, args).await,
        Command::Pause(args) => {
            let config = nats()?;
            let client = connect(&config).await?;
            let audit = audit::Audit::new(&client, &config, cli.actor.as_deref());
            pause::pause(client, &audit, args).await
        }
        Command::Resume(args) => {
            let config = nats()?;
            let client = connect(&config).await?;
            let audit = audit::Audit::new(&client, &config, cli.actor.as_deref());
            pause::resume(client, &audit, args).await
        }
        Command::Event(args) => event::run(connect(&nats()?).await?, args).await,
        Command::Audit(args) => audit::run(connect(&nats()?).await?, args).await,
        Command::Console(args) => console::run(args, nats).await,
        Command::Search(args) => search::run(connect(&nats()?).await?, args).await,
        Command::Schedule { command } => {
            let config = nats()?;
            let client = connect(&config).await?;
            let audit = audit::Audit::new(&client, &config, cli.actor.as_deref());
            schedule::run(client, &audit, command).await
        }
        Command::Keys { command } => {
            let client = if keys::needs_nats(&command) {
                Some(connect(&nats()?).await?)
            } else {
                None
            };
            keys::run(client, command).await
        }
    }
}

/// `jetfn infra permissions`: the generated users, printed, written or compared.
fn permissions(args: &PermissionsArgs) -> anyhow::Result<()> {
    let definitions = provision::Definitions::load(&args.dir)?;
    let generated = provision::permissions::config(&definitions, events::CATALOG)?;
    if let Some(path) = &args.check {
        let committed = std::fs::read_to_string(path)
            .with_context(|| format!("--check: reading {}", path.display()))?;
        anyhow::ensure!(
            committed == generated,
            "--check: {} differs from the permissions generated from {} and the event catalog; regenerate it with \
             `jetfn infra permissions --output {}`",
            path.display(),
            args.dir.display(),
            path.display()
        );
        println!("{} is current", path.display());
    } else if let Some(path) = &args.output {
        std::fs::write(path, &generated)
            .with_context(|| format!("--output: writing {}", path.display()))?;
        println!("wrote {}", path.display());
    } else {
        print!("{generated}");
    }
    Ok(())
}

/// `jetfn infra kubernetes`: the manifests rendered from the registry, the settings and the users.
fn kubernetes(args: &KubernetesArgs) -> anyhow::Result<String> {
    let definitions = provision::Definitions::load(&args.dir)?;
    let settings = provision::kubernetes::Settings::load(&args.settings)?;
    let permissions = std::fs::read_to_string(&args.permissions)
        .with_context(|| format!("reading {}", args.permissions.display()))?;
    provision::kubernetes::render(&definitions, &settings, &permissions)
}

/// `jetfn infra plan` reads; `jetfn infra apply` changes, and so is recorded in the audit trail.
enum Mode<'a> {
    Plan,
    Apply { actor: Option<&'a str> },
}

async fn infra(
    config: &runtime::config::NatsConfig,
    args: &InfraArgs,
    mode: Mode<'_>,
) -> anyhow::Result<()> {
    let mut definitions = provision::Definitions::load(&args.dir)?;
    if let Some(replicas) = args.replicas {
        definitions.set_replicas(usize::from(replicas));
    }
    // The audit trail is written over the connection `ready` made, so `--wait-secs` also covers it.
    let (client, js, plan) = ready(config, &definitions, args.wait_secs).await?;
    if let Mode::Apply { actor } = mode {
        let audit = audit::Audit::new(&client, config, actor);
        if !plan.impossible().is_empty() {
            println!("{plan}");
        }
        let counts = ops::infra::apply_planned(
            &js,
            audit.auditor(),
            &args.dir.display().to_string(),
            &definitions,
            &plan,
            |change| println!("{change}"),
        )
        .await?;
        client.flush().await.ok();
        println!("applied {}: {counts}", args.dir.display());
    } else {
        println!("{plan}");
        if !plan.impossible().is_empty() {
            println!("apply would refuse: the server cannot make the changes marked CANNOT UPDATE");
        }
    }
    Ok(())
}

/// Connects and reads the plan, the first thing that needs JetStream to answer; with `--wait-secs`, again every
/// second until it does or the time is up (then the last error). Each different error is printed once, so a wait
/// shows what it is waiting for without a line per second.
async fn ready(
    config: &runtime::config::NatsConfig,
    definitions: &provision::Definitions,
    wait_secs: u64,
) -> anyhow::Result<(
    async_nats::Client,
    async_nats::jetstream::Context,
    provision::Plan,
)> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait_secs);
    let mut last = String::new();
    loop {
        let attempt = async {
            let client = connect(config).await?;
            let js = async_nats::jetstream::new(client.clone());
            let plan = definitions.plan(&js).await?;
            anyhow::Ok((client, js, plan))
        }
        .await;
        match attempt {
            Ok(ready) => return Ok(ready),
            Err(err) if std::time::Instant::now() < deadline => {
                let text = format!("{err:#}");
                if text != last {
                    eprintln!("waiting for NATS (up to {wait_secs} s): {text}");
                    last = text;
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
            Err(err) => return Err(err),
        }
    }
}

/// An event published at a class no consumer pulls from would wait in the stream unseen, so `--priority` is refused
/// unless some consumer on EVENTS filters that class's subject. A user who may not list consumers (a
/// `publisher-<domain>`) cannot be checked here (the generated permissions grant it only served classes), so when
/// the consumers cannot be read the event is published unchecked, with a warning that says so: refusing would
/// lock those users out, and a silent skip would let a person believe the class was checked. A refusal needs
/// every consumer read: one that could not be may be the class's.
async fn refuse_unserved_class(
    client: &async_nats::Client,
    body: &[u8],
    priority: events::Priority,
) -> anyhow::Result<()> {
    let Some(ty) = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|event| {
            event
                .get("type")
                .and_then(|t| t.as_str())
                .map(str::to_owned)
        })
    else {
        return Ok(());
    };
    let subject = priority.subject(&ty);
    let js = async_nats::jetstream::new(client.clone());
    let events = provision::permissions::EVENTS_STREAM;
    let read = match js.get_stream_no_info(events).await {
        Ok(stream) => ops::functions::infos(&stream, events).await,
        Err(err) => Err(err.into()),
    };
    let consumers = match read {
        Ok(consumers) => consumers,
        Err(err) => {
            eprintln!(
                "warning: --priority {priority} not checked: the consumers of {events} could not be read ({}); \
                 publishing anyway",
                render_error(&err)
            );
            return Ok(());
        }
    };
    let served = consumers.iter().any(|info| {
        info.config.filter_subject == subject || info.config.filter_subjects.contains(&subject)
    });
    if !served {
        let mut with_classes: Vec<&str> = consumers
            .iter()
            .filter(|info| info.config.metadata.contains_key("jetfn.priority"))
            .filter_map(|info| {
                info.config
                    .metadata
                    .get("jetfn.function")
                    .map(String::as_str)
            })
            .collect();
        with_classes.sort_unstable();
        with_classes.dedup();
        let which = if with_classes.is_empty() {
            "none".to_owned()
        } else {
            with_classes.join(", ")
        };
        anyhow::bail!(
            "--priority {priority}: no function serves {subject} (functions with priority classes here: {which}); \
             publish at normal, or add a `<function>-{priority}` consumer under infra/nats/consumers/EVENTS and run \
             `jetfn infra apply`"
        );
    }
    Ok(())
}

/// The functions' `NATS_*` settings, with the flags in place of their variables: one reading, one set of names,
/// and an error that names the variable instead of a silent fallback to the defaults.
fn nats_config(
    url: &Option<String>,
    creds: &Option<PathBuf>,
    context: &Option<String>,
) -> anyhow::Result<runtime::config::NatsConfig> {
    let table = &runtime::config::NATS;
    let mut vars = runtime::config::env_vars(table)?;
    let flags = [
        ("NATS_URL", url.clone()),
        (
            "NATS_CREDS_FILE",
            creds
                .as_ref()
                .map(|path| path.to_string_lossy().into_owned()),
        ),
        ("NATS_CONTEXT", context.clone()),
    ];
    for (name, value) in flags {
        if let Some(value) = value {
            vars.retain(|(set, _)| set != name);
            vars.push((name.to_owned(), value));
        }
    }
    Ok(runtime::config::NatsConfig::from_vars(vars)?)
}

/// One-shot commands fail fast instead of retrying forever like a function does.
async fn connect(config: &runtime::config::NatsConfig) -> anyhow::Result<async_nats::Client> {
    runtime::connect_once(config, "jetfn-cli").await
}

/// The catalog's examples are fixed documents (the schemas and the AsyncAPI document show them), so an expiry in one
/// has passed by now and the type's rule refuses it. `--example` is for trying a function out: an `expires_at` is
/// moved to an hour from now.
fn example_for_now(mut data: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    if let Some(expires) = data.get_mut("expires_at") {
        let later =
            time::OffsetDateTime::now_utc().replace_nanosecond(0)? + time::Duration::hours(1);
        *expires = serde_json::Value::String(
            later.format(&time::format_description::well_known::Rfc3339)?,
        );
    }
    Ok(data)
}

async fn publish(config: &runtime::config::NatsConfig, args: PublishArgs) -> anyhow::Result<()> {
    let body = match (&args.event, &args.data, &args.r#type) {
        (Some(event), _, _) => read_arg(event)?,
        (None, data, Some(ty)) => {
            let data: serde_json::Value = match data {
                Some(data) => {
                    serde_json::from_slice(&read_arg(data)?).context("--data is not JSON")?
                }
                None => {
                    let kind = events::kind_by_type(ty)
                        .with_context(|| format!("unknown event type {ty}; see `jetfn catalog`"))?;
                    // An example published by a forgotten --data would send a real email to a made-up person.
                    anyhow::ensure!(
                        args.example,
                        "give the event's data with --data (JSON, @file.json or - for stdin), or --example to \
                         publish the catalog's example {ty}"
                    );
                    example_for_now((kind.example_data)())?
                }
            };
            let event = serde_json::json!({
                "specversion": events::SPECVERSION,
                "id": args.id.clone().unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
                "source": args.source,
                "type": ty,
                "time": time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339)?,
                "datacontenttype": events::DATACONTENTTYPE_JSON,
                "data": data,
            });
            serde_json::to_vec(&event)?
        }
        (None, _, None) => anyhow::bail!("give an event type, or --event"),
    };
    let client = connect(config).await?;
    if args.priority != events::Priority::Normal {
        refuse_unserved_class(&client, &body, args.priority).await?;
    }
    let mut publisher =
        runtime::Publisher::new(client.clone(), args.source).with_priority(args.priority);
    // With a keyring, sensitive fields are sealed as the SDK seals them.
    if let Some(keyring) = publish::sealed::Keyring::from_env()? {
        publisher = publisher.with_keyring(std::sync::Arc::new(keyring));
    }
    let published = publisher.publish_json(&body).await?;
    client.flush().await.ok();
    println!(
        "published {} id={} subject={} stream={} seq={}{}",
        published.event_type,
        published.id,
        published.subject,
        published.stream,
        published.sequence,
        if published.duplicate {
            " (duplicate: already stored, nothing new)"
        } else {
            ""
        }
    );
    Ok(())
}

pub(crate) fn read_arg(arg: &str) -> anyhow::Result<Vec<u8>> {
    if arg == "-" {
        let mut buffer = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buffer)
            .context("reading stdin")?;
        Ok(buffer)
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read(path).with_context(|| format!("reading {path}"))
    } else {
        Ok(arg.as_bytes().to_vec())
    }
}

fn catalog(json: bool) -> anyhow::Result<()> {
    if json {
        let kinds: Vec<serde_json::Value> = events::CATALOG
            .iter()
            .map(|kind| {
                serde_json::json!({
                    "type": kind.ty,
                    "subject": kind.subject,
                    "consumers": kind.consumers,
                    "description": kind.description,
                })
            })
            .collect();
        return output::print_json(&kinds);
    }
    let mut table = output::table(&["type", "subject", "consumers", "description"]);
    for kind in events::CATALOG {
        table.add_row(vec![
            kind.ty.to_owned(),
            kind.subject.to_owned(),
            kind.consumers.join(","),
            kind.description.to_owned(),
        ]);
    }
    output::print_table(&table);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_nats_url_is_refused_by_position_with_its_password_masked() {
        let config =
            runtime::config::NatsConfig::local("nats://127.0.0.1:4222, nats://ada:s3cret@n2:port");
        let err = render_error(&connect(&config).await.expect_err("refused"));
        assert!(err.contains("NATS_URL: entry 2 of 2"), "{err}");
        assert!(err.contains("nats://ada:***@n2:port"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[tokio::test]
    async fn a_comma_separated_nats_url_reaches_the_node_that_answers() {
        let server = testkit::NatsServer::start();
        // Nothing listens on the first address: the CLI tries the next instead of failing.
        let down = format!("nats://127.0.0.1:{}", testkit::free_port());
        let config = runtime::config::NatsConfig::local(format!("{down}, {}", server.url()));
        let client = connect(&config).await.expect("connects to the live node");
        assert_eq!(client.server_info().port, server.port());
    }
}
