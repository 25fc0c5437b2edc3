//! `jetfn dev`: the whole system on one machine, for trying jetfn and for developing functions.
//!
//! It starts a nats-server (JetStream, file storage, `sync_interval: always`, data under `.jetfn/`), applies
//! `infra/nats`, and runs every function binary next to this one. Without `SMTP_URL`, emails are written as
//! `.eml` files under `.jetfn/mail`; the search index lives in `.jetfn/index`. The default schedules in
//! `infra/nats/schedules` are applied with the definitions (as `jetfn infra apply` does). The functions it runs are
//! those the consumer files name. Ctrl-C (or SIGTERM) stops the functions first, so they drain, then the server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// The first health port on the loopback; each function gets the next one, in [`functions`] order.
const FIRST_HEALTH_PORT: u16 = 8081;

/// Local defaults for the functions' own settings; a variable already set in the environment wins.
const LOCAL_DEFAULTS: &[(&str, &str)] = &[
    ("ORDER_ADMIN_TO", "orders@jetfn.local"),
    ("ORDER_URL", "http://localhost:3000/orders/"),
    ("PASSWORD_RESET_URL", "http://localhost:3000/reset-password"),
    ("CONTACT_SUPPORT_TO", "support@jetfn.local"),
];

#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    /// Where the server's data, its log and the emails go.
    #[arg(long, env = "JETFN_HOME", default_value = ".jetfn")]
    home: PathBuf,
    /// The client port of the local nats-server.
    #[arg(long, default_value_t = 4222)]
    port: u16,
    /// The definitions folder.
    #[arg(long, env = "JETFN_INFRA_DIR", default_value = "infra/nats")]
    infra: PathBuf,
    /// The monitoring port of the local nats-server (`/varz`, `/jsz`).
    #[arg(long, default_value_t = 8222)]
    monitor_port: u16,
    /// Serve no health endpoints (each function has its own fixed port otherwise).
    #[arg(long)]
    no_health: bool,
    /// Run only these functions (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

pub(crate) async fn run(args: DevArgs) -> anyhow::Result<()> {
    let home = absolute(&args.home)?;
    let data = home.join("data");
    let mail = home.join("mail");
    let index = home.join("index");
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    std::fs::create_dir_all(&mail).with_context(|| format!("creating {}", mail.display()))?;
    let log_path = home.join("nats-server.log");
    // Its own process group: a terminal's Ctrl-C reaches jetfn only, which stops the server after the functions.
    let builder = testkit::NatsServer::builder()
        .config_file(args.infra.join("server.conf"))
        .store_dir(&data)
        .port(args.port)
        .monitor_port(args.monitor_port)
        .log_file(&log_path)
        .own_process_group()
        .stop_timeout(Duration::from_secs(15));
    let server = tokio::task::spawn_blocking(move || builder.try_start())
        .await
        .context("starting nats-server")??;
    let url = server.url();
    // The local server has no auth and no TLS: the shell's NATS_* settings are for some other server.
    let client = runtime::connect_once(&runtime::config::NatsConfig::local(&url), "jetfn-dev")
        .await
        .context("connecting to the local nats-server")?;
    let definitions = provision::Definitions::load(&args.infra)?;
    let js = async_nats::jetstream::new(client.clone());
    definitions.apply(&js).await?;
    let functions = functions(&definitions);

    let bin_dir = std::env::current_exe()?
        .parent()
        .map(Path::to_path_buf)
        .context("locating the jetfn binary")?;
    let mut children = Vec::new();
    for (name, health_port) in &functions {
        if !args.only.is_empty() && !args.only.iter().any(|only| only == name) {
            continue;
        }
        let bin = bin_dir.join(name);
        anyhow::ensure!(
            bin.exists(),
            "{} is not built: run `cargo build --workspace --bins` first",
            bin.display()
        );
        let mut command = Command::new(&bin);
        for var in runtime::config::NATS.vars {
            command.env_remove(var.name);
            command.env_remove(format!("{}{}", var.name, runtime::config::FILE_SUFFIX));
        }
        command
            .env("NATS_URL", &url)
            .env("MAIL_DIR", &mail)
            .env("INDEX_DIR", &index);
        for (name, value) in LOCAL_DEFAULTS {
            if std::env::var_os(name).is_none() {
                command.env(name, value);
            }
        }
        if !args.no_health {
            let health = format!("127.0.0.1:{health_port}");
            command
                .env("JOB_HEALTH_ADDR", &health)
                .env("ROUTER_HEALTH_ADDR", &health);
        }
        // Own process group: a terminal's Ctrl-C reaches jetfn only, which then stops the functions in order.
        command.process_group(0).kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        children.push((name.clone(), child));
    }

    println!();
    println!("jetfn is running");
    println!(
        "  nats-server  {url}   (data {}, log {})",
        data.display(),
        log_path.display()
    );
    for (name, port) in &functions {
        if args.no_health {
            println!("  {name}");
        } else {
            println!("  {name:<22} health http://127.0.0.1:{port}/readyz");
        }
    }
    if std::env::var_os("SMTP_URL").is_some() {
        println!("  emails       sent through SMTP_URL");
    } else {
        println!("  emails       written to {}", mail.display());
    }
    println!(
        "try:  target/debug/jetfn publish users.registered   (the catalog's example data; --data '{{...}}' for yours)"
    );
    println!("      target/debug/jetfn search \"some words\"    target/debug/jetfn schedule list");
    println!("Ctrl-C stops everything.");
    println!();

    let stopped_by = tokio::select! {
        () = runtime::shutdown_signal() => None,
        exited = wait_any(&mut children) => Some(exited),
    };
    if let Some((name, status)) = stopped_by {
        tracing::error!(
            function = %name,
            ?status,
            "a function exited; stopping the system"
        );
        eprintln!("{name} exited ({status:?}); stopping");
    }
    for (name, child) in &mut children {
        if let Some(pid) = child.id() {
            let _ = kill(
                Pid::from_raw(i32::try_from(pid).unwrap_or(0)),
                Signal::SIGTERM,
            );
        }
        match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
            Ok(Ok(status)) => eprintln!("{name} stopped ({status})"),
            _ => {
                let _ = child.kill().await;
                eprintln!("{name} killed after 30 s");
            }
        }
    }
    drop(client);
    let _ = tokio::task::spawn_blocking(move || server.stop()).await;
    eprintln!("nats-server stopped");
    Ok(())
}

/// The functions to run, from the one registry: the consumer files' `jetfn.function` metadata (a function serving
/// several consumers runs once). Ordered as the event catalog lists them, then the rest (the dead-letter router),
/// with consecutive health ports.
fn functions(definitions: &provision::Definitions) -> Vec<(String, u16)> {
    let mut names: Vec<String> = definitions
        .functions()
        .into_iter()
        .map(|function| function.name)
        .collect();
    let rank = |name: &str| {
        events::CATALOG
            .iter()
            .position(|kind| kind.consumers.contains(&name))
            .unwrap_or(usize::MAX)
    };
    names.sort_by_key(|name| rank(name));
    names.into_iter().zip(FIRST_HEALTH_PORT..).collect()
}

async fn wait_any(children: &mut [(String, Child)]) -> (String, Option<std::process::ExitStatus>) {
    loop {
        for (name, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                return (name.clone(), Some(status));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    if path.is_absolute() {
        Ok(path.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_function_is_found_once_from_the_consumer_files() {
        let infra = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../infra/nats");
        let functions = functions(&provision::Definitions::load(&infra).unwrap());
        let names: Vec<&str> = functions.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names.first(), Some(&"welcome"));
        assert_eq!(
            names.last(),
            Some(&"dlq-router"),
            "not in the catalog: last"
        );
        assert_eq!(
            names.iter().filter(|name| **name == "indexing").count(),
            1,
            "indexing serves three consumers from one process"
        );
        for kind in events::CATALOG {
            for consumer in kind.consumers {
                assert!(names.contains(consumer), "{consumer} is not run");
            }
        }
        let ports: Vec<u16> = functions.iter().map(|(_, port)| *port).collect();
        assert_eq!(ports, (8081..).take(ports.len()).collect::<Vec<_>>());
    }
}
