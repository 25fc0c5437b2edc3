//! `--help` and `--version` of a function binary. Its settings are environment variables, so the help is the
//! tables of the settings structs it reads: the same tables that name variables in configuration errors.

use std::fmt::Write as _;

use super::env::{Default, Table};

/// What `--version` and the help's first line say of a binary; [`binary!`](crate::binary) fills it from Cargo.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// The crate's name.
    pub name: &'static str,
    /// The crate's version.
    pub version: &'static str,
    /// The crate's description.
    pub about: &'static str,
}

/// The calling crate's [`Binary`]: its name, version and description from Cargo.
#[macro_export]
macro_rules! binary {
    () => {
        $crate::config::Binary {
            name: env!("CARGO_PKG_NAME"),
            version: env!("CARGO_PKG_VERSION"),
            about: env!("CARGO_PKG_DESCRIPTION"),
        }
    };
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// No argument: run.
    Run,
    /// `--help` or `-h`.
    Help,
    /// `--version` or `-V`.
    Version,
    /// Anything else: the first argument not understood.
    Unknown(String),
}

/// Reads the arguments after the program's name.
pub fn parse_args(args: impl IntoIterator<Item = String>) -> Request {
    let mut args = args.into_iter();
    let Some(first) = args.next() else {
        return Request::Run;
    };
    let request = match first.as_str() {
        "--help" | "-h" => Request::Help,
        "--version" | "-V" => Request::Version,
        _ => return Request::Unknown(first),
    };
    match args.next() {
        None => request,
        Some(extra) => Request::Unknown(extra),
    }
}

/// Answers `--help` and `--version` (exit 0) and refuses any other argument (exit 2), before anything connects;
/// returns when there is no argument. Call it first in `main`.
pub fn answer_args(binary: &Binary, tables: &[&Table]) {
    let args = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned());
    match parse_args(args) {
        Request::Run => {}
        Request::Help => {
            print!("{}", help(binary, tables));
            std::process::exit(0);
        }
        Request::Version => {
            println!("{}", version(binary));
            std::process::exit(0);
        }
        Request::Unknown(arg) => {
            eprintln!(
                "{name}: unexpected argument {arg:?}\n{name} takes no arguments: its settings are environment \
                 variables. See `{name} --help`.",
                name = binary.name
            );
            std::process::exit(2);
        }
    }
}

/// `name version (arch-os, profile)`.
pub fn version(binary: &Binary) -> String {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    format!(
        "{} {} ({}-{}, {profile} build)",
        binary.name,
        binary.version,
        std::env::consts::ARCH,
        std::env::consts::OS
    )
}

/// The help text: what the binary does, then each table's variables with their default and meaning.
pub fn help(binary: &Binary, tables: &[&Table]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} {}: {}", binary.name, binary.version, binary.about);
    let _ = writeln!(out);
    let _ = writeln!(out, "Usage: {} [--help | --version]", binary.name);
    let _ = writeln!(
        out,
        "It takes no arguments: every setting is an environment variable."
    );
    for table in tables {
        let _ = writeln!(out);
        let _ = writeln!(out, "{}:", table.title);
        for var in table.vars {
            let default = match var.default {
                Default::Required => "required".to_owned(),
                Default::Unset => "optional".to_owned(),
                Default::Value("") => "default: empty".to_owned(),
                Default::Value(value) => format!("default: {value}"),
            };
            let secret = if var.secret { ", secret" } else { "" };
            let _ = writeln!(out, "  {} ({default}{secret})", var.name);
            let _ = writeln!(out, "      {}", var.help);
            if var.secret {
                let _ = writeln!(
                    out,
                    "      or {}{}: a file holding it (a mounted secret)",
                    var.name,
                    super::env::FILE_SUFFIX
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{JOB, NATS, TELEMETRY};

    fn args(list: &[&str]) -> Request {
        parse_args(list.iter().map(|arg| (*arg).to_owned()))
    }

    #[test]
    fn only_help_and_version_are_understood() {
        assert_eq!(args(&[]), Request::Run);
        assert_eq!(args(&["--help"]), Request::Help);
        assert_eq!(args(&["-h"]), Request::Help);
        assert_eq!(args(&["--version"]), Request::Version);
        assert_eq!(args(&["-V"]), Request::Version);
        assert_eq!(
            args(&["--verbose"]),
            Request::Unknown("--verbose".to_owned())
        );
        assert_eq!(
            args(&["--help", "extra"]),
            Request::Unknown("extra".to_owned())
        );
    }

    #[test]
    fn the_help_lists_every_variable_with_its_default() {
        let binary = crate::binary!();
        let text = help(&binary, &[&NATS, &JOB, &TELEMETRY]);
        for table in [&NATS, &JOB, &TELEMETRY] {
            for var in table.vars {
                assert!(text.contains(var.name), "{} missing:\n{text}", var.name);
            }
        }
        assert!(
            text.contains("JOB_BREAKER_THRESHOLD (default: 3)"),
            "{text}"
        );
        assert!(text.contains("NATS_PASSWORD (optional, secret)"), "{text}");
        assert!(text.contains("or NATS_PASSWORD_FILE: a file"), "{text}");
        assert!(version(&binary).starts_with("runtime 0.0.0 ("));
    }
}
