//! `jetfn new` must leave a project that builds, whose scaffolded handler test passes and whose registries agree.
//! This runs the real command on a copy of the workspace and then the real cargo on that copy: the generated
//! crate's tests, the registry cross-check (shared/provision/tests/registry.rs) and rustfmt.
//!
//! The copy lives at `target/scaffold-check/workspace` and builds into `target/scaffold-check/target`: a fixed
//! place, so a second run reuses the compiled dependencies (a fresh temporary directory would rebuild the path
//! crates every time and grow the target directory). It cannot share the workspace's own target directory: the
//! cargo running this test holds its lock.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .unwrap()
        .to_owned()
}

/// Copies `from` into `to`, keeping modification times so cargo sees unchanged sources as unchanged.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == "target" || name == ".jetfn" {
            continue;
        }
        let (source, dest) = (entry.path(), to.join(&name));
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&source, &dest);
        } else if kind.is_file() {
            copy_file(&source, &dest, None);
        }
    }
}

/// Copies one file (or writes `text` in its place), with the original's modification time.
fn copy_file(source: &Path, dest: &Path, text: Option<&str>) {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    match text {
        Some(text) => std::fs::write(dest, text).unwrap(),
        None => {
            std::fs::copy(source, dest).unwrap();
        }
    }
    let modified: SystemTime = std::fs::metadata(source).unwrap().modified().unwrap();
    std::fs::File::options()
        .write(true)
        .open(dest)
        .unwrap()
        .set_modified(modified)
        .unwrap();
}

/// Runs a command in `dir` and returns its stdout; a failure fails the test with everything it printed.
fn run(dir: &Path, program: &str, args: &[&str], target: &Path) -> String {
    let started = Instant::now();
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        // Generated code must be warning-free; only this target directory's path crates see the flag.
        .env("RUSTFLAGS", "-D warnings")
        .output()
        .unwrap_or_else(|err| panic!("running {program}: {err}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "`{program} {}` in {} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        args.join(" "),
        dir.display(),
        output.status
    );
    eprintln!(
        "`{} {}` took {:.1}s",
        Path::new(program).file_name().unwrap().to_string_lossy(),
        args.join(" "),
        started.elapsed().as_secs_f64()
    );
    stdout
}

#[test]
fn a_scaffolded_function_builds_passes_its_test_and_the_registry_check() {
    let root = root();
    let check = root.join("target/scaffold-check");
    let work = check.join("workspace");
    let target = check.join("target");
    if work.exists() {
        std::fs::remove_dir_all(&work).unwrap();
    }

    // The build needs the libraries, the functions and infra/; not the integration tests or the benchmark.
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let members = manifest
        .lines()
        .find(|line| line.starts_with("members = ["))
        .expect("the root Cargo.toml has a one-line `members = [...]`");
    assert!(
        members.contains("\"functions/*\"") && members.contains("\"shared/*\""),
        "{members}"
    );
    let trimmed = manifest.replace(members, r#"members = ["functions/*", "shared/*"]"#);
    copy_file(
        &root.join("Cargo.toml"),
        &work.join("Cargo.toml"),
        Some(&trimmed),
    );
    copy_file(&root.join("Cargo.lock"), &work.join("Cargo.lock"), None);
    copy_file(
        &root.join(".cargo/config.toml"),
        &work.join(".cargo/config.toml"),
        None,
    );
    for dir in ["shared", "functions", "infra"] {
        copy_tree(&root.join(dir), &work.join(dir));
    }

    let jetfn = env!("CARGO_BIN_EXE_jetfn");
    let args = ["new", "demo-fn", "--event", "users.registered"];
    let printed = run(&work, jetfn, &args, &target);
    for line in [
        "created functions/demo-fn/Cargo.toml",
        "created functions/demo-fn/src/main.rs",
        "created infra/nats/consumers/EVENTS/demo-fn.json",
        "updated shared/events/src/catalog.rs (demo-fn added to the consumers of users.registered)",
        "updated shared/events/CATALOG.md",
        "updated shared/events/asyncapi.json",
        "updated infra/deploy/nats-permissions.conf (the NATS user demo-fn)",
        "updated infra/deploy/kubernetes.yaml (regenerated: the Deployment, PodDisruptionBudget and ScaledObject demo-fn)",
        "cargo test -p demo-fn",
    ] {
        assert!(printed.contains(line), "missing {line:?} in:\n{printed}");
    }
    let again = Command::new(jetfn)
        .args(args)
        .current_dir(&work)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("functions/demo-fn already exists"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // One cargo invocation, so the three packages share one feature resolution and build their dependencies once.
    // events: its test that CATALOG.md is what the generator writes; provision: the registry cross-check.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let tests = run(
        &work,
        &cargo,
        &[
            "test",
            "--offline",
            "-p",
            "demo-fn",
            "-p",
            "provision",
            "-p",
            "events",
        ],
        &target,
    );
    for test in [
        "test tests::an_event_is_handled_once_across_redeliveries ... ok",
        "test tests::an_effect_the_ledger_has_is_not_run_again ... ok",
        "test the_catalog_consumer_files_permissions_and_deployments_agree ... ok",
        "test catalog::tests::the_catalog_document_is_current ... ok",
        "test asyncapi::tests::the_committed_document_is_current ... ok",
    ] {
        assert!(tests.contains(test), "missing {test:?} in:\n{tests}");
    }
    // The binary's wiring: it links (its own allocator) and answers --help with the runtime's variables.
    let help = run(
        &work,
        &cargo,
        &["run", "--offline", "-q", "-p", "demo-fn", "--", "--help"],
        &target,
    );
    assert!(
        help.contains("demo-fn") && help.contains("NATS_URL"),
        "{help}"
    );
    // What the command wrote or edited is formatted as `cargo fmt` would (the rest of the copy is CI's business).
    run(
        &work,
        "rustfmt",
        &[
            "--check",
            "--edition",
            "2024",
            "functions/demo-fn/src/main.rs",
            "shared/events/src/catalog.rs",
        ],
        &target,
    );
}
