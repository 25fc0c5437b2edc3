//! ARCHITECTURE.md's invariant "only `runtime` acks, NAKs or TERMs", kept true: the settle module is the one
//! place in the workspace that settles a JetStream message. Any other Rust file that acks, NAKs, TERMs or sends a
//! progress ack fails this test, which names the file and the line.

use std::path::{Path, PathBuf};

/// What settling a message looks like in code: async-nats' ack calls, and the ack protocol's bodies.
const SETTLING: &[&str] = &[
    "ack_with(",
    "double_ack(",
    ".ack()",
    "AckKind::",
    "+ACK",
    "+NAK",
    "+TERM",
    "+WPI",
];

/// The files allowed to settle messages, relative to the workspace root, and why.
const ALLOWED: &[(&str, &str)] = &[
    ("shared/runtime/src/settle.rs", "the settle layer itself"),
    (
        "tests/bench/",
        "the benchmark's raw async-nats baseline, which measures JetStream without the runtime",
    ),
    (
        "tests/it/backoff.rs",
        "pins with raw NAKs what the server does with a NAK's delay, which settle's arithmetic relies on",
    ),
    (
        "shared/runtime/tests/settle_is_the_only_acker.rs",
        "this test's own patterns",
    ),
];

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("shared/runtime sits two levels below the workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        if path.is_dir() {
            // Build output, VCS data, tool installs and dependencies are not the workspace's code.
            if !(name.starts_with('.') || name == "target" || name == "node_modules") {
                rust_files(&path, found);
            }
        } else if name.ends_with(".rs") {
            found.push(path);
        }
    }
}

/// Every line outside the allowed files that settles a message, as `path:line: code`.
fn offenders(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(
        files.len() > 20,
        "found only {} Rust files under {}: is the root right?",
        files.len(),
        root.display()
    );
    let mut offenders = Vec::new();
    for file in files {
        let relative = file
            .strip_prefix(root)
            .expect("under the root")
            .to_string_lossy()
            .replace('\\', "/");
        if ALLOWED
            .iter()
            .any(|(allowed, _)| relative.starts_with(allowed))
        {
            continue;
        }
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|err| panic!("reading {relative}: {err}"));
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if SETTLING.iter().any(|pattern| code.contains(pattern)) {
                offenders.push(format!("{relative}:{}: {}", number + 1, code.trim_end()));
            }
        }
    }
    offenders
}

#[test]
fn only_the_settle_layer_acks_naks_or_terms() {
    let offenders = offenders(&workspace_root());
    let allowed: Vec<String> = ALLOWED
        .iter()
        .map(|(path, why)| format!("  {path} ({why})"))
        .collect();
    assert!(
        offenders.is_empty(),
        "only shared/runtime/src/settle.rs may ack, NAK, TERM or send progress acks (ARCHITECTURE.md: \"only \
         runtime acks, NAKs or TERMs\"). A handler returns its outcome (`Result<(), JobError>`, or an `Outcome` from \
         a raw handler) and settle acts on it. Found:\n  {}\nAllowed:\n{}",
        offenders.join("\n  "),
        allowed.join("\n")
    );
}

#[test]
fn the_scan_finds_a_settling_call() {
    // A scan that finds nothing because it looks nowhere would pass the test above for the wrong reason.
    let dir = std::env::temp_dir().join(format!("settle-scan-{}", std::process::id()));
    let functions = dir.join("functions/rogue/src");
    std::fs::create_dir_all(&functions).unwrap();
    for index in 0..21 {
        std::fs::write(dir.join(format!("filler{index}.rs")), "fn main() {}\n").unwrap();
    }
    std::fs::write(
        functions.join("main.rs"),
        "// message.ack() in a comment is fine\nasync fn f(m: Message) { let _ = m.ack_with(AckKind::Term).await; }\n",
    )
    .unwrap();
    let found = offenders(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(
        found,
        [
            "functions/rogue/src/main.rs:2: async fn f(m: Message) { let _ = m.ack_with(AckKind::Term).await; }"
        ]
    );
}
