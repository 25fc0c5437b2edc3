//! `events` is the contract every producer and function shares, in any process: it does no I/O, so it links no
//! NATS client and no async runtime. A crate of this list in its tree fails CI here.

use std::process::Command;

const FORBIDDEN: &[&str] = &["async-nats", "tokio", "mio", "runtime", "publish"];

#[test]
fn events_links_no_nats_client_and_no_async_runtime() {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--package",
            "events",
            "--edges",
            "normal",
            "--prefix",
            "none",
            "--format",
            "{p}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo tree");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "cargo tree failed: {stderr}");
    let tree = String::from_utf8_lossy(&output.stdout);
    // `{p}` is `name vX.Y.Z (path)`: the name is the first word.
    let names: Vec<&str> = tree
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert!(
        names.contains(&"serde_json"),
        "the tree was not read\n{tree}"
    );
    let found: Vec<&str> = FORBIDDEN
        .iter()
        .copied()
        .filter(|name| names.contains(name))
        .collect();
    assert!(found.is_empty(), "events links {found:?}\n{tree}");
}
