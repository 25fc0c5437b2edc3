//! `jetfn new <name> --event <type>`: scaffolds a function that consumes one catalog event.
//!
//! A function is not only its own crate: the catalog row, the consumer file, the NATS user and the Deployment
//! must all name it, and `shared/provision/tests/registry.rs` fails CI until they agree. This command writes
//! all of them, so a new function starts green. It edits the shared registries (the catalog row, the permissions,
//! the Kubernetes manifests) as text, checking each edit point first and writing nothing when one is missing.
//! Everything it writes comes from the templates under `src/new/`, with `{{name}}`-style placeholders.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

const CARGO_TOML: &str = include_str!("new/Cargo.toml.tmpl");
const MAIN_RS: &str = include_str!("new/main.rs.tmpl");
const CONSUMER_JSON: &str = include_str!("new/consumer.json.tmpl");

const CATALOG_RS: &str = "shared/events/src/catalog.rs";
const CATALOG_MD: &str = "shared/events/CATALOG.md";
const ASYNCAPI: &str = "shared/events/asyncapi.json";
const PERMISSIONS: &str = "infra/deploy/nats-permissions.conf";
const KUBERNETES: &str = "infra/deploy/kubernetes.yaml";
const KUBERNETES_SETTINGS: &str = "infra/deploy/kubernetes.json";
const INFRA: &str = "infra/nats";
const CONSUMERS: &str = "infra/nats/consumers/EVENTS";

/// rustfmt's line width and its `array_width` (60% of it): a consumer list wider than either is written one
/// consumer per line, as `cargo fmt` would.
const MAX_WIDTH: usize = 100;
const ARRAY_WIDTH: usize = 60;

/// The longest name accepted: it also makes the secret `jetfn-<name>-creds` and the inbox `_INBOX_<name>`.
const MAX_NAME: usize = 40;

#[derive(Debug, clap::Args)]
pub(crate) struct NewArgs {
    /// The function's name: lowercase letters, digits and '-', starting with a letter. It names the crate, the
    /// binary, the durable consumer, the NATS user and the Deployment.
    name: String,
    /// The catalog event type it consumes, such as `users.registered` (`jetfn catalog` lists them).
    #[arg(long)]
    event: String,
}

pub(crate) fn run(args: &NewArgs) -> anyhow::Result<()> {
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let root = find_root(&cwd)?;
    let scaffold = Scaffold::plan(&root, &args.name, &args.event)?;
    scaffold.write(&root)?;
    print!("{}", scaffold.report());
    Ok(())
}

/// The project root: the nearest directory, from `start` up, with a workspace `Cargo.toml`, the event catalog
/// and the infra definitions.
fn find_root(start: &Path) -> anyhow::Result<PathBuf> {
    for dir in start.ancestors() {
        let is_workspace = std::fs::read_to_string(dir.join("Cargo.toml"))
            .is_ok_and(|text| text.lines().any(|line| line.trim() == "[workspace]"));
        if is_workspace && dir.join(CATALOG_RS).is_file() && dir.join(CONSUMERS).is_dir() {
            return Ok(dir.to_owned());
        }
    }
    anyhow::bail!(
        "cannot find the jetfn project root from {}: no directory from there up has a workspace Cargo.toml, \
         {CATALOG_RS} and {CONSUMERS}/; run `jetfn new` inside the project",
        start.display()
    )
}

/// Rust keywords and names Cargo or the standard library reserve: a crate cannot be called that.
const RESERVED: &[&str] = &[
    "as",
    "async",
    "await",
    "box",
    "break",
    "const",
    "continue",
    "crate",
    "dyn",
    "else",
    "enum",
    "extern",
    "false",
    "fn",
    "for",
    "if",
    "impl",
    "in",
    "let",
    "loop",
    "match",
    "mod",
    "move",
    "mut",
    "pub",
    "ref",
    "return",
    "self",
    "static",
    "struct",
    "super",
    "trait",
    "true",
    "type",
    "unsafe",
    "use",
    "where",
    "while",
    "abstract",
    "become",
    "do",
    "final",
    "gen",
    "macro",
    "override",
    "priv",
    "try",
    "typeof",
    "unsized",
    "virtual",
    "yield",
    "std",
    "core",
    "alloc",
    "proc-macro",
    "test",
    "build",
    "deps",
    "examples",
    "incremental",
];

/// Checks that `name` can be a crate, a binary, a durable consumer, a NATS user and a Kubernetes name at once.
fn check_name(name: &str) -> Result<(), String> {
    const RULE: &str = "use lowercase letters, digits and '-', starting with a letter (it names the crate, the \
                        binary, the durable consumer, the NATS user and the Deployment)";
    let reason = if name.is_empty() {
        "it is empty".to_owned()
    } else if name.len() > MAX_NAME {
        format!("it is longer than {MAX_NAME} characters")
    } else if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        format!("{bad:?} is not allowed")
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        "it does not start with a letter".to_owned()
    } else if name.ends_with('-') || name.contains("--") {
        "a '-' must sit between letters or digits".to_owned()
    } else if RESERVED.contains(&name) {
        "it is a Rust keyword or a name Cargo reserves".to_owned()
    } else {
        return Ok(());
    };
    Err(format!("invalid function name {name:?}: {reason}; {RULE}"))
}

/// The package names of the workspace's crates (functions/*, shared/*, tests, tests/bench).
fn package_names(root: &Path) -> Vec<String> {
    let mut manifests = Vec::new();
    for dir in ["functions", "shared"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            manifests.extend(
                entries
                    .flatten()
                    .map(|entry| entry.path().join("Cargo.toml")),
            );
        }
    }
    manifests.push(root.join("tests/Cargo.toml"));
    manifests.push(root.join("tests/bench/Cargo.toml"));
    manifests
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .filter_map(|text| {
            text.lines().find_map(|line| {
                let value = line.trim().strip_prefix("name")?.trim().strip_prefix('=')?;
                Some(value.trim().trim_matches('"').to_owned())
            })
        })
        .collect()
}

/// A file the scaffold creates or rewrites, with its new text.
#[derive(Debug)]
struct Change {
    path: &'static str,
    created: bool,
    text: String,
    what: String,
}

#[derive(Debug)]
struct Scaffold {
    name: String,
    event: &'static events::EventKind,
    changes: Vec<Change>,
    /// Set when CATALOG.md could not be regenerated here and the user must run the generator.
    catalog_md_note: Option<String>,
}

impl Scaffold {
    /// Checks everything and computes every file's new text; writes nothing.
    fn plan(root: &Path, name: &str, event: &str) -> anyhow::Result<Self> {
        check_name(name).map_err(anyhow::Error::msg)?;
        let Some(kind) = events::kind_by_type(event) else {
            let known: Vec<&str> = events::CATALOG.iter().map(|kind| kind.ty).collect();
            anyhow::bail!(
                "--event: unknown event type {event:?}; the catalog has {}. A new event type needs its payload \
                 and catalog row first (README, \"Add a function\")",
                known.join(", ")
            );
        };
        let read = |path: &str| {
            std::fs::read_to_string(root.join(path))
                .with_context(|| format!("reading {}", root.join(path).display()))
        };

        // Not an existing function, consumer or crate.
        let crate_dir = format!("functions/{name}");
        anyhow::ensure!(
            !root.join(&crate_dir).exists(),
            "{crate_dir} already exists; choose another name"
        );
        anyhow::ensure!(
            !package_names(root).iter().any(|package| package == name),
            "a crate named {name} already exists in the workspace; choose another name"
        );
        let definitions = provision::Definitions::load(&root.join(INFRA))
            .with_context(|| format!("loading {INFRA} (fix it before adding a function)"))?;
        if let Some((stream, consumer)) = definitions.consumers.iter().find(|(_, consumer)| {
            consumer.durable_name.as_deref() == Some(name)
                || provision::function_of(consumer) == name
        }) {
            anyhow::bail!(
                "{INFRA}/consumers/{stream}/{}.json already defines the consumer or function {name}; choose another name",
                consumer.durable_name.as_deref().unwrap_or_default()
            );
        }
        let consumer_file = format!("{CONSUMERS}/{name}.json");
        anyhow::ensure!(
            !root.join(&consumer_file).exists(),
            "{consumer_file} already exists; choose another name"
        );
        let permissions = read(PERMISSIONS)?;
        anyhow::ensure!(
            !permissions.contains(&format!("user: {name},")),
            "{PERMISSIONS} already has a user {name}; choose another name"
        );

        let catalog_rs = read(CATALOG_RS)?;
        let row = add_consumer(&catalog_rs, kind.ty, name)
            .map_err(|err| anyhow::anyhow!("{CATALOG_RS}: {err}"))?;
        // The permissions are generated from the consumer files: with the new consumer file, the new user.
        let consumer_json = fill(CONSUMER_JSON, name, kind, &row.payload);
        let mut with_new = definitions.clone();
        let new_consumer: async_nats::jetstream::consumer::pull::Config =
            serde_json::from_str(&consumer_json)
                .context("the consumer template is a consumer configuration")?;
        // Where loading the folder would put it: by stream folder, then by file name.
        let file = |stream: &str, consumer: &str| (stream.to_owned(), format!("{consumer}.json"));
        let at = with_new
            .consumers
            .iter()
            .position(|(stream, config)| {
                file(stream, config.durable_name.as_deref().unwrap_or_default())
                    > file("EVENTS", name)
            })
            .unwrap_or(with_new.consumers.len());
        with_new
            .consumers
            .insert(at, ("EVENTS".to_owned(), new_consumer));
        let permissions = provision::permissions::config(&with_new, events::CATALOG)?;
        // The manifests are generated from the consumer files and the users: rendered again with both added.
        let settings = provision::kubernetes::Settings::load(&root.join(KUBERNETES_SETTINGS))?;
        let kubernetes = provision::kubernetes::render(&with_new, &settings, &permissions)
            .with_context(|| format!("rendering {KUBERNETES}"))?;

        let mut changes = vec![
            Change {
                path: leak(format!("{crate_dir}/Cargo.toml")),
                created: true,
                text: fill(CARGO_TOML, name, kind, &row.payload),
                what: String::new(),
            },
            Change {
                path: leak(format!("{crate_dir}/src/main.rs")),
                created: true,
                text: fill(MAIN_RS, name, kind, &row.payload),
                what: " (the handler and its tests)".to_owned(),
            },
            Change {
                path: leak(consumer_file),
                created: true,
                text: consumer_json,
                what: " (the durable consumer)".to_owned(),
            },
            Change {
                path: CATALOG_RS,
                created: false,
                text: row.source,
                what: format!(" ({name} added to the consumers of {})", kind.ty),
            },
            Change {
                path: PERMISSIONS,
                created: false,
                text: permissions,
                what: format!(" (the NATS user {name})"),
            },
            Change {
                path: KUBERNETES,
                created: false,
                text: kubernetes,
                what: format!(
                    " (regenerated: the Deployment, PodDisruptionBudget and ScaledObject {name})"
                ),
            },
        ];

        // The page is rendered by the events crate this binary was built with. When that is the catalog on
        // disk (its page is current), render it with the new consumer; otherwise the generator must run.
        let catalog_md = read(CATALOG_MD)?;
        let catalog_md_note = if catalog_md == events::catalog_markdown() {
            let rows = catalog_with(kind.ty, name);
            changes.push(Change {
                path: CATALOG_MD,
                created: false,
                text: events::catalog_markdown_of(&rows),
                what: " (regenerated)".to_owned(),
            });
            // The AsyncAPI document names each consuming function's operation; it is generated with the page.
            changes.push(Change {
                path: ASYNCAPI,
                created: false,
                text: serde_json::to_string_pretty(&events::asyncapi::asyncapi_of(&rows))? + "\n",
                what: " (regenerated)".to_owned(),
            });
            None
        } else {
            Some(format!(
                "{CATALOG_MD} and {ASYNCAPI} were not regenerated: this jetfn was built from another catalog. \
                 Run `cargo run -p events --example write_schemas`."
            ))
        };

        Ok(Self {
            name: name.to_owned(),
            event: kind,
            changes,
            catalog_md_note,
        })
    }

    fn write(&self, root: &Path) -> anyhow::Result<()> {
        for change in &self.changes {
            let path = root.join(change.path);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&path, &change.text)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    fn report(&self) -> String {
        let name = &self.name;
        let mut out = String::new();
        for change in &self.changes {
            let verb = if change.created { "created" } else { "updated" };
            let _ = writeln!(out, "{verb} {}{}", change.path, change.what);
        }
        if let Some(note) = &self.catalog_md_note {
            let _ = writeln!(out, "note: {note}");
        }
        let _ = write!(
            out,
            "\nA function touches shared places too: this edited the catalog row, the NATS permissions and the \
             Kubernetes manifests\nfor you (a test checks them against each other). Review them in your diff.\n\
             \nNext:\n\
             1. Fill in `work` in functions/{name}/src/main.rs (the side effect, run once per event) and the \
             descriptions in\n   functions/{name}/Cargo.toml and {CONSUMERS}/{name}.json; tune its max_deliver, \
             backoff and max_ack_pending.\n\
             2. Settings: read them in main, add them to its entry's env in {KUBERNETES_SETTINGS} and regenerate \
             {KUBERNETES}\n   (`jetfn infra kubernetes > {KUBERNETES}`); a KV bucket or subject it uses goes into \
             its extra rights in\n   shared/provision/src/permissions.rs, then `jetfn infra permissions --output \
             {PERMISSIONS}` and the manifests again.\n\
             3. cargo test -p {name}\n\
             4. bash infra/dev.sh   (jetfn dev runs it with the others), then `jetfn publish {} --example`\n",
            self.event.ty
        );
        out
    }
}

/// Static paths keep [`Change`] simple; a CLI run leaks a handful of short strings.
fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// A template with its placeholders filled.
fn fill(template: &str, name: &str, kind: &events::EventKind, payload: &str) -> String {
    template
        .replace("{{name}}", name)
        .replace("{{env}}", &name.to_ascii_uppercase().replace('-', "_"))
        .replace("{{event}}", kind.ty)
        .replace("{{subject}}", kind.subject)
        .replace("{{payload}}", payload)
}

/// The catalog rows as the generator would see them once `name` consumes `ty`.
fn catalog_with(ty: &str, name: &str) -> Vec<events::EventKind> {
    events::CATALOG
        .iter()
        .map(|kind| {
            let mut kind = *kind;
            if kind.ty == ty {
                let mut consumers = kind.consumers.to_vec();
                consumers.push(leak(name.to_owned()));
                kind.consumers = Box::leak(consumers.into_boxed_slice());
            }
            kind
        })
        .collect()
}

/// The catalog source with a consumer added to one row, and that row's payload type.
#[derive(Debug, PartialEq, Eq)]
struct RowEdit {
    source: String,
    payload: String,
}

/// Adds `name` to the consumers of the `kind!(Payload, "<ty>", [..], "..")` row in the catalog source.
fn add_consumer(source: &str, ty: &str, name: &str) -> Result<RowEdit, String> {
    const OPEN: &str = "kind!(";
    let literal = format!("\"{ty}\"");
    let mut rows = Vec::new();
    let mut i = 0;
    while i < source.len() {
        if let Some(next) = skip_literal_or_comment(source, i) {
            i = next;
        } else if source.as_bytes()[i..].starts_with(OPEN.as_bytes()) {
            let start = i + OPEN.len();
            let args = macro_args(source, start)
                .ok_or_else(|| format!("cannot read the `kind!(` call at byte {i}"))?;
            i = args.end;
            if args.spans.get(1).map(|&(a, b)| source[a..b].trim()) == Some(literal.as_str()) {
                rows.push(args);
            }
        } else {
            i += 1;
        }
    }
    let row = match rows.as_slice() {
        [row] => row,
        [] => {
            return Err(format!(
                "no `kind!(<payload>, {literal}, [..], \"..\")` row found"
            ));
        }
        _ => {
            return Err(format!(
                "{} `kind!` rows for {literal}; expected one",
                rows.len()
            ));
        }
    };
    if row.spans.len() != 4 {
        return Err(format!(
            "the `kind!` row of {literal} has {} arguments; expected 4 (payload, type, [consumers], description)",
            row.spans.len()
        ));
    }
    let trimmed = |(a, b): (usize, usize)| {
        let text = &source[a..b];
        let lead = text.len() - text.trim_start().len();
        (a + lead, a + lead + text.trim().len())
    };
    let payload_text = {
        let (a, b) = trimmed(row.spans[0]);
        &source[a..b]
    };
    let payload = payload_text.rsplit("::").next().unwrap_or_default().trim();
    if payload.is_empty()
        || !payload
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(format!(
            "the payload type of the {literal} row, {payload_text:?}, is not a type name"
        ));
    }
    let (list_start, list_end) = trimmed(row.spans[2]);
    let list = &source[list_start..list_end];
    let inner = list
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .ok_or_else(|| {
            format!("the consumers of the {literal} row, {list:?}, are not a [..] list")
        })?;
    let mut consumers = Vec::new();
    for item in inner
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
    {
        let consumer = item
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix('"'))
            .ok_or_else(|| {
                format!("the consumer {item} of the {literal} row is not a string literal")
            })?;
        consumers.push(consumer.to_owned());
    }
    if consumers.iter().any(|consumer| consumer == name) {
        return Err(format!("the {literal} row already lists {name}"));
    }
    consumers.push(name.to_owned());
    let quoted: Vec<String> = consumers.iter().map(|c| format!("\"{c}\"")).collect();
    let line_start = source[..list_start].rfind('\n').map_or(0, |at| at + 1);
    let indent: String = source[line_start..]
        .chars()
        .take_while(|c| *c == ' ')
        .collect();
    let one_line = format!("[{}]", quoted.join(", "));
    let column = list_start - line_start;
    let replacement = if one_line.len() <= ARRAY_WIDTH && column + one_line.len() < MAX_WIDTH {
        one_line
    } else {
        let items: Vec<String> = quoted
            .iter()
            .map(|consumer| format!("{indent}    {consumer}"))
            .collect();
        let mut vertical = format!("[\n{}\n", items.join(",\n"));
        vertical.push_str(&indent);
        vertical.push(']');
        vertical
    };
    let mut edited = source.to_owned();
    edited.replace_range(list_start..list_end, &replacement);
    Ok(RowEdit {
        source: edited,
        payload: payload.to_owned(),
    })
}

/// The top-level arguments of a macro call whose `(` ends right before `start`.
#[derive(Debug)]
struct MacroArgs {
    /// Byte ranges of the arguments, separators excluded.
    spans: Vec<(usize, usize)>,
    /// Just past the closing `)`.
    end: usize,
}

/// Splits a call's arguments at top-level commas, skipping string literals and `//` comments, so a description
/// with a comma or a parenthesis stays one argument.
fn macro_args(source: &str, start: usize) -> Option<MacroArgs> {
    let bytes = source.as_bytes();
    let mut spans = Vec::new();
    let mut depth = 0usize;
    let mut arg_start = start;
    let mut i = start;
    while i < bytes.len() {
        if let Some(next) = skip_literal_or_comment(source, i) {
            i = next;
            continue;
        }
        match bytes[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' if depth > 0 => depth -= 1,
            b')' => {
                if !source[arg_start..i].trim().is_empty() {
                    spans.push((arg_start, i));
                }
                return Some(MacroArgs { spans, end: i + 1 });
            }
            b',' if depth == 0 => {
                spans.push((arg_start, i));
                arg_start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// When a string or character literal or a comment starts at byte `i`, the index just past it.
fn skip_literal_or_comment(source: &str, i: usize) -> Option<usize> {
    let bytes = source.as_bytes();
    let rest = &bytes[i..];
    let past = |pattern: &[u8], from: usize| {
        bytes[from..]
            .windows(pattern.len())
            .position(|window| window == pattern)
            .map_or(bytes.len(), |at| from + at + pattern.len())
    };
    if rest.starts_with(b"//") {
        return Some(past(b"\n", i));
    }
    if rest.starts_with(b"/*") {
        return Some(past(b"*/", i + 2));
    }
    match rest {
        [b'"', ..] => {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                if bytes[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            Some((j + 1).min(bytes.len()))
        }
        // '\n', '\'', '\u{..}'
        [b'\'', b'\\', ..] => Some(past(b"'", i + 3)),
        // 'x' (a lifetime such as 'static has no closing quote there)
        [b'\'', _, b'\'', ..] => Some(i + 3),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_names_pass() {
        for name in ["audit", "demo-fn", "order-v2", "a1-b2-c3"] {
            assert_eq!(check_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn bad_names_are_refused_with_the_reason() {
        for (name, reason) in [
            ("", "it is empty"),
            ("Demo", "'D' is not allowed"),
            ("demo_fn", "'_' is not allowed"),
            ("demo.fn", "'.' is not allowed"),
            ("demo fn", "' ' is not allowed"),
            ("démo", "'é' is not allowed"),
            ("9lives", "it does not start with a letter"),
            ("-demo", "it does not start with a letter"),
            ("demo-", "a '-' must sit between letters or digits"),
            ("demo--fn", "a '-' must sit between letters or digits"),
            ("self", "it is a Rust keyword or a name Cargo reserves"),
            ("test", "it is a Rust keyword or a name Cargo reserves"),
        ] {
            let err = check_name(name).unwrap_err();
            assert!(
                err.starts_with(&format!(
                    "invalid function name {name:?}: {reason}; use lowercase"
                )),
                "{name}: {err}"
            );
        }
        let long = "a".repeat(MAX_NAME + 1);
        assert!(
            check_name(&long)
                .unwrap_err()
                .contains("longer than 40 characters")
        );
    }

    const CATALOG: &str = r#"pub static CATALOG: &[EventKind] = &[
    kind!(
        UserRegistered,
        "users.registered",
        ["welcome"],
        "A user created an account (a welcome, a \"hello\"); the welcome email goes out."
    ),
    // kind!(Commented, "users.commented", [], "a comment, with a ( in it")
    kind!(
        CleanupCompleted,
        "cleanup.completed",
        [],
        "A cleanup run finished; how many (index entries, dead letters) it removed."
    ),
    kind!(
        MessageCreated,
        "messages.created",
        ["indexing", "search-analytics-long-name", "another-rather-long-consumer"],
        "A message was written."
    ),
];
"#;

    #[test]
    fn a_consumer_is_added_to_its_row_only() {
        let edit = add_consumer(CATALOG, "users.registered", "demo-fn").unwrap();
        assert_eq!(edit.payload, "UserRegistered");
        assert_eq!(
            edit.source,
            CATALOG.replacen(r#"["welcome"]"#, r#"["welcome", "demo-fn"]"#, 1)
        );
        let edit = add_consumer(CATALOG, "cleanup.completed", "audit").unwrap();
        assert_eq!(edit.payload, "CleanupCompleted");
        assert_eq!(
            edit.source,
            CATALOG.replacen(
                "[],\n        \"A cleanup",
                "[\"audit\"],\n        \"A cleanup",
                1
            )
        );
    }

    #[test]
    fn a_row_too_long_for_one_line_is_written_one_consumer_per_line() {
        let edit = add_consumer(CATALOG, "messages.created", "message-audit-trail").unwrap();
        assert!(
            edit.source.contains(
                "        [\n            \"indexing\",\n            \"search-analytics-long-name\",\n            \
                 \"another-rather-long-consumer\",\n            \"message-audit-trail\"\n        ],\n"
            ),
            "{}",
            edit.source
        );
    }

    #[test]
    fn a_missing_or_doubled_row_or_consumer_is_an_error() {
        assert_eq!(
            add_consumer(CATALOG, "orders.placed", "x").unwrap_err(),
            r#"no `kind!(<payload>, "orders.placed", [..], "..")` row found"#
        );
        assert_eq!(
            add_consumer(CATALOG, "users.commented", "x").unwrap_err(),
            r#"no `kind!(<payload>, "users.commented", [..], "..")` row found"#,
            "a commented-out row does not count"
        );
        assert_eq!(
            add_consumer(CATALOG, "users.registered", "welcome").unwrap_err(),
            r#"the "users.registered" row already lists welcome"#
        );
        let doubled = CATALOG.replace("cleanup.completed", "users.registered");
        assert_eq!(
            add_consumer(&doubled, "users.registered", "x").unwrap_err(),
            r#"2 `kind!` rows for "users.registered"; expected one"#
        );
        let broken = CATALOG.replace(r#"["welcome"],"#, "");
        assert!(
            add_consumer(&broken, "users.registered", "x")
                .unwrap_err()
                .contains("has 3 arguments; expected 4"),
        );
    }

    #[test]
    fn quotes_in_character_literals_and_block_comments_do_not_confuse_the_scan() {
        let source = "const Q: char = '\"'; /* kind!(Y, \"a.b\", [], \"\") */ fn f<'a>(x: &'a str) {}\n\
                      static C: &[EventKind] = &[kind!(X, \"a.b\", [\"q\"], \"say \\\"hi\\\" (twice)\")];\n";
        let edit = add_consumer(source, "a.b", "z").unwrap();
        assert_eq!(edit.payload, "X");
        assert_eq!(edit.source, source.replace(r#"["q"]"#, r#"["q", "z"]"#));
    }

    #[test]
    fn the_real_catalog_row_can_be_edited_for_every_event_type() {
        let source = include_str!("../../events/src/catalog.rs");
        for kind in events::CATALOG {
            let edit = add_consumer(source, kind.ty, "demo-fn").unwrap();
            assert_eq!(
                edit.source.len(),
                source.len() + "\"demo-fn\"".len() + if kind.consumers.is_empty() { 0 } else { 2 }
            );
            assert!((kind.type_matches)(kind.ty));
        }
    }

    #[test]
    fn templates_are_filled_completely() {
        let kind = events::kind_by_type("users.registered").unwrap();
        for template in [CARGO_TOML, MAIN_RS, CONSUMER_JSON] {
            let filled = fill(template, "demo-fn", kind, "UserRegistered");
            assert!(!filled.contains("{{"), "{filled}");
        }
        let consumer: serde_json::Value =
            serde_json::from_str(&fill(CONSUMER_JSON, "demo-fn", kind, "")).unwrap();
        assert_eq!(consumer["filter_subject"], "events.users.registered");
        assert_eq!(consumer["metadata"]["jetfn.function"], "demo-fn");
    }

    #[test]
    fn no_project_root_is_a_clear_error() {
        let err = find_root(Path::new("/")).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot find the jetfn project root from /"),
            "{err}"
        );
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(find_root(here).unwrap(), here.ancestors().nth(2).unwrap());
    }

    #[test]
    fn an_unknown_event_or_a_taken_name_is_refused_before_anything_is_written() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let err = Scaffold::plan(&root, "demo-fn", "users.deleted")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "--event: unknown event type \"users.deleted\"; the catalog has users.registered, "
            ),
            "{err}"
        );
        for (name, expected) in [
            ("welcome", "functions/welcome already exists"),
            ("events", "a crate named events already exists"),
            ("jetfn", "a crate named jetfn already exists"),
            (
                "indexing-created",
                "infra/nats/consumers/EVENTS/indexing-created.json already defines",
            ),
            (
                "viewer",
                "infra/deploy/nats-permissions.conf already has a user viewer",
            ),
            ("Demo", "invalid function name"),
        ] {
            let err = format!(
                "{:#}",
                Scaffold::plan(&root, name, "users.registered").unwrap_err()
            );
            assert!(err.starts_with(expected), "{name}: {err}");
        }
    }
}
