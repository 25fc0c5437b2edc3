//! `jetfn infra apply --wait-secs`: a provisioning step started together with its server (the compose stack's
//! `provision` service, a Job beside a new cluster) waits for the server instead of failing; without the flag it
//! fails at once, naming the server.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use testkit::{NatsServer, binary_path, free_port};

fn jetfn(url: &str, args: &[&str]) -> Command {
    let mut command = Command::new(binary_path("jetfn"));
    // The definitions are found relative to the workspace (this crate's parent).
    command.current_dir(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("tests/ has a parent"),
    );
    for (name, _) in std::env::vars() {
        if name.starts_with("NATS_") {
            command.env_remove(name);
        }
    }
    command.env("NATS_URL", url).args(args);
    command
}

#[test]
fn infra_apply_waits_for_a_server_that_starts_after_it() {
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");

    let at_once = jetfn(&url, &["infra", "apply"])
        .output()
        .expect("jetfn runs (build the bins first)");
    assert!(!at_once.status.success(), "no server, no wait: it fails");
    let said = String::from_utf8_lossy(&at_once.stderr);
    assert!(said.contains(&format!("127.0.0.1:{port}")), "{said}");

    let waiting = jetfn(&url, &["infra", "apply", "--wait-secs", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jetfn runs");
    std::thread::sleep(Duration::from_secs(2));
    let server = NatsServer::builder().port(port).start();
    let output = waiting.wait_with_output().expect("jetfn exits");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("waiting for NATS (up to 60 s)"), "{stderr}");
    // One line per different error, not one a second.
    assert!(stderr.matches("waiting for NATS").count() <= 2, "{stderr}");
    assert!(stdout.contains("applied infra/nats"), "{stdout}");
    drop(server);
}
