//! What a backend service links when it depends on the SDK. A producer must be able to bring its own allocator,
//! exporter and HTTP stack: a crate of this list coming back (through the runtime, say) fails CI here.

use std::process::Command;

/// Crates the SDK must not pull in, each with why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("mimalloc", "a global allocator is the binary's choice"),
    (
        "libmimalloc-sys",
        "a global allocator is the binary's choice",
    ),
    (
        "opentelemetry_sdk",
        "the exporter is the service's choice; the API is enough to propagate",
    ),
    ("opentelemetry-otlp", "the exporter is the service's choice"),
    ("reqwest", "an HTTP client the SDK never uses"),
    ("hyper", "an HTTP stack the SDK never uses"),
    (
        "tracing-subscriber",
        "the subscriber is the service's choice",
    ),
    (
        "runtime",
        "the consumer runtime: connect, bind, settle, health endpoints",
    ),
];

#[test]
fn the_sdk_links_no_allocator_no_otel_sdk_and_no_http_client() {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--package",
            "sdk",
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
    for expected in ["sdk", "publish", "events", "async-nats", "opentelemetry"] {
        assert!(
            names.contains(&expected),
            "{expected} missing: the tree was not read\n{tree}"
        );
    }
    let found: Vec<String> = FORBIDDEN
        .iter()
        .filter(|(name, _)| names.contains(name))
        .map(|(name, why)| format!("{name} ({why})"))
        .collect();
    assert!(
        found.is_empty(),
        "the SDK links {}\n{tree}",
        found.join(", ")
    );
}
