//! Every function binary answers `--help` and `--version` before it reads a setting or connects, and refuses any
//! other argument with exit code 2.

use std::path::PathBuf;
use std::process::{Command, Output};

/// `target/debug`, where the function binaries sit next to this test's `deps/` directory.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("target/debug/deps/it-<hash>")
        .to_path_buf()
}

/// Runs `bin` with `args`, pointed at a port where nothing listens and with a setting that does not parse: an
/// answer that tried to connect or read its settings would fail or hang instead.
fn run(bin: &str, args: &[&str]) -> Output {
    let path = bin_dir().join(bin);
    Command::new(&path)
        .args(args)
        .env("NATS_URL", "nats://127.0.0.1:1")
        .env("JOB_BREAKER_THRESHOLD", "not a number")
        .env("MAIL_DIR", std::env::temp_dir())
        .output()
        .unwrap_or_else(|err| panic!("running {}: {err} (build the bins first)", path.display()))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn help_lists_each_variable_with_its_default_and_exits_0() {
    let welcome = run("welcome", &["--help"]);
    assert_eq!(welcome.status.code(), Some(0), "{welcome:?}");
    let text = stdout(&welcome);
    for expected in [
        "users.registered -> the welcome email",
        "NATS_URL (default: nats://127.0.0.1:4222)",
        "JOB_BREAKER_THRESHOLD (default: 3)",
        "SMTP_URL (optional, secret)",
        "MAIL_FROM",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }

    let indexing = run("indexing", &["-h"]);
    assert_eq!(indexing.status.code(), Some(0), "{indexing:?}");
    let text = stdout(&indexing);
    for expected in [
        "INDEX_DIR (default: .jetfn/index)",
        "JOB_CONSUMER",
        "NATS_CREDS_FILE",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
}

#[test]
fn version_prints_the_crate_version_and_exits_0() {
    for bin in ["welcome", "indexing"] {
        let output = run(bin, &["--version"]);
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        assert!(
            stdout(&output).starts_with(&format!("{bin} 0.0.0 (")),
            "{}",
            stdout(&output)
        );
    }
}

#[test]
fn any_other_argument_is_refused_with_exit_2() {
    let output = run("welcome", &["--verbose"]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("\"--verbose\""), "{stderr}");
    assert!(stderr.contains("welcome --help"), "{stderr}");
}

#[test]
fn a_bad_setting_is_reported_by_its_variable() {
    let output = run("welcome", &[]);
    assert_ne!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(r#"JOB_BREAKER_THRESHOLD: expected a whole number, got "not a number""#),
        "{stderr}"
    );
}

/// `JOB_THREADS` is read before the tokio runtime exists (runtime::threads), so its error cannot come from the
/// runtime's own reading of the settings: it must still name the variable, and nothing may connect first.
#[test]
fn a_thread_count_that_does_not_parse_is_reported_by_its_variable_before_anything_connects() {
    for bin in ["welcome", "indexing"] {
        let output = Command::new(bin_dir().join(bin))
            .env("NATS_URL", "nats://127.0.0.1:1")
            .env("JOB_THREADS", "0")
            .env("MAIL_DIR", std::env::temp_dir())
            .env("INDEX_DIR", std::env::temp_dir().join("jetfn-threads-cli"))
            .output()
            .expect("the binary runs (build the bins first)");
        assert_ne!(output.status.code(), Some(0), "{bin}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("JOB_THREADS") && stderr.contains("at least 1"),
            "{bin}: {stderr}"
        );
        assert!(
            !stderr.contains("127.0.0.1:1"),
            "{bin} tried to connect: {stderr}"
        );
    }
}

/// Every function the consumer files name (the registry `jetfn dev` runs), not only the two above: a new function
/// that forgets `answer_args` fails here.
#[test]
fn every_registered_function_answers_help_and_version() {
    let definitions = provision::Definitions::load(&testkit::workspace_root().join("infra/nats"))
        .expect("infra/nats loads");
    let functions = definitions.functions();
    assert!(functions.len() >= 10, "{} functions", functions.len());
    for function in functions {
        let bin = function.name.as_str();
        let help = run(bin, &["--help"]);
        assert_eq!(help.status.code(), Some(0), "{bin} --help: {help:?}");
        assert!(
            stdout(&help).contains("NATS_URL"),
            "{bin} --help does not list NATS_URL:\n{}",
            stdout(&help)
        );
        let version = run(bin, &["--version"]);
        assert_eq!(
            version.status.code(),
            Some(0),
            "{bin} --version: {version:?}"
        );
        assert!(
            stdout(&version).starts_with(&format!("{bin} ")),
            "{bin} --version: {}",
            stdout(&version)
        );
    }
}
