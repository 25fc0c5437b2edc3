//! A job type lives in several places: the event catalog (who consumes what), the consumer files (the registry
//! `jetfn dev` runs from), the function crate, its NATS user and its Kubernetes Deployment. This test checks them
//! against each other, so a function missing from any of them fails CI with the function and the place named.

use std::path::{Path, PathBuf};

use provision::{Definitions, FUNCTION_METADATA};

/// Users in the permissions file that are not functions (and the publishers, `publisher-<domain>`).
const NOT_FUNCTIONS: &[&str] = &["viewer", "operator", "admin"];

const PERMISSIONS: &str = "infra/deploy/nats-permissions.conf";
const KUBERNETES: &str = "infra/deploy/kubernetes.yaml";
const CONSUMERS: &str = "infra/nats/consumers";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Places {
    definitions: Definitions,
    permissions: String,
    kubernetes: String,
    crates: Vec<String>,
}

impl Places {
    fn shipped() -> Self {
        let root = root();
        let mut crates: Vec<String> = std::fs::read_dir(root.join("functions"))
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.join("Cargo.toml").is_file())
            .map(|path| path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        crates.sort();
        Self {
            definitions: Definitions::load(&root.join("infra/nats")).unwrap(),
            permissions: std::fs::read_to_string(root.join(PERMISSIONS)).unwrap(),
            kubernetes: std::fs::read_to_string(root.join(KUBERNETES)).unwrap(),
            crates,
        }
    }
}

/// The text between `start` and the next `end` after it.
fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let from = text.find(start)? + start.len();
    let to = text[from..].find(end)?;
    Some(text[from..from + to].trim())
}

/// `(user, its block)` for every user in the permissions file.
fn users(permissions: &str) -> Vec<(String, &str)> {
    permissions
        .split("user: ")
        .skip(1)
        .filter_map(|block| {
            let name = block.split(',').next()?.trim().to_owned();
            Some((name, block))
        })
        .collect()
}

/// `(deployment, its document)` for every Deployment in the manifests.
fn deployments(kubernetes: &str) -> Vec<(String, &str)> {
    kubernetes
        .split("\n---\n")
        .filter(|doc| doc.contains("\nkind: Deployment\n"))
        .filter_map(|doc| Some((between(doc, "metadata: {name: ", "}")?.to_owned(), doc)))
        .collect()
}

fn check(places: &Places) -> Vec<String> {
    let mut problems = Vec::new();
    let definitions = &places.definitions;

    for (stream, consumer) in &definitions.consumers {
        let name = consumer.durable_name.as_deref().unwrap_or_default();
        if !consumer.metadata.contains_key(FUNCTION_METADATA) {
            problems.push(format!(
                "consumer {stream}/{name}: no metadata.\"{FUNCTION_METADATA}\" in {CONSUMERS}/{stream}/{name}.json naming its function"
            ));
        }
    }

    // The catalog and the consumer files agree on who consumes each event type.
    for kind in events::CATALOG {
        for function in kind.consumers {
            let found = definitions.consumers.iter().any(|(stream, consumer)| {
                stream == "EVENTS"
                    && consumer.filter_subject == kind.subject
                    && provision::function_of(consumer) == *function
            });
            if !found {
                problems.push(format!(
                    "{function}: the catalog says it consumes {}, but no consumer file in {CONSUMERS}/EVENTS filters on {} for it",
                    kind.ty, kind.subject
                ));
            }
        }
    }
    for (stream, consumer) in &definitions.consumers {
        if stream != "EVENTS" {
            continue;
        }
        let function = provision::function_of(consumer);
        let listed = events::CATALOG.iter().any(|kind| {
            kind.subject == consumer.filter_subject && kind.consumers.contains(&function)
        });
        if !listed {
            problems.push(format!(
                "{function}: {CONSUMERS}/EVENTS/{}.json filters on {:?}, but the event catalog does not list {function} as a consumer of it",
                consumer.durable_name.as_deref().unwrap_or_default(),
                consumer.filter_subject
            ));
        }
    }

    let users = users(&places.permissions);
    let deployments = deployments(&places.kubernetes);
    let functions = definitions.functions();
    for function in &functions {
        let name = function.name.as_str();
        if !places.crates.iter().any(|c| c == name) {
            problems.push(format!("{name}: no crate functions/{name}"));
        }
        let deployment = deployments
            .iter()
            .find(|(d, _)| d == name)
            .map(|(_, doc)| *doc);
        let user = users
            .iter()
            .find(|(u, _)| u == name)
            .map(|(_, block)| *block);
        if deployment.is_none() {
            problems.push(format!("{name}: no Deployment in {KUBERNETES}"));
        }
        let Some(user) = user else {
            problems.push(format!("{name}: no user in {PERMISSIONS}"));
            continue;
        };
        for (stream, consumer) in &function.consumers {
            for subject in [
                format!("\"$JS.API.CONSUMER.INFO.{stream}.{consumer}\""),
                format!("\"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}\""),
                format!("\"$JS.ACK.{stream}.{consumer}.>\""),
                format!("\"$JS.ACK.*.*.{stream}.{consumer}.>\""),
            ] {
                if !user.contains(&subject) {
                    problems.push(format!(
                        "{name}: its user in {PERMISSIONS} may not publish {subject} (consumer {stream}/{consumer})"
                    ));
                }
            }
            let dlq = format!("\"dlq.{stream}.{consumer}.>\"");
            if !user.contains(&dlq) && !user.contains("\"dlq.>\"") {
                problems.push(format!(
                    "{name}: its user in {PERMISSIONS} may not publish {dlq} (its dead letters)"
                ));
            }
        }
        if let Some(deployment) = deployment {
            match between(deployment, "{name: NATS_INBOX_PREFIX, value: ", "}") {
                Some(prefix) => {
                    if !user.contains(&format!("\"{prefix}.>\"")) {
                        problems.push(format!(
                            "{name}: its Deployment's NATS_INBOX_PREFIX {prefix} is not its user's inbox in {PERMISSIONS}"
                        ));
                    }
                }
                None => problems.push(format!(
                    "{name}: its Deployment in {KUBERNETES} sets no NATS_INBOX_PREFIX"
                )),
            }
            if !deployment.contains(&format!("/{name}.creds}}")) {
                problems.push(format!(
                    "{name}: its Deployment in {KUBERNETES} does not use {name}.creds"
                ));
            }
        }
    }

    // Nothing names a function the consumer files do not know (a removed or misspelled one).
    let known = |name: &str| functions.iter().any(|f| f.name == name);
    for (user, _) in &users {
        if !known(user)
            && !NOT_FUNCTIONS.contains(&user.as_str())
            && !user.starts_with("publisher-")
        {
            problems.push(format!(
                "{user}: a user in {PERMISSIONS} but no consumer file names it"
            ));
        }
    }
    for (deployment, _) in &deployments {
        if !known(deployment) {
            problems.push(format!(
                "{deployment}: a Deployment in {KUBERNETES} but no consumer file names it"
            ));
        }
    }
    for name in &places.crates {
        if !known(name) {
            problems.push(format!(
                "{name}: a crate in functions/ but no consumer file names it (add metadata.\"{FUNCTION_METADATA}\")"
            ));
        }
    }
    problems
}

#[test]
fn the_catalog_consumer_files_permissions_and_deployments_agree() {
    let problems = check(&Places::shipped());
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

#[test]
fn every_function_has_a_user_and_a_deployment() {
    let places = Places::shipped();
    let names: Vec<String> = places
        .definitions
        .functions()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names.len(), places.crates.len(), "{names:?}");
    for name in &names {
        assert!(users(&places.permissions).iter().any(|(u, _)| u == name));
        assert!(
            deployments(&places.kubernetes)
                .iter()
                .any(|(d, _)| d == name)
        );
    }
}

#[test]
fn a_function_missing_from_any_place_is_named_with_the_place() {
    // No Deployment.
    let mut places = Places::shipped();
    let start = places
        .kubernetes
        .find("metadata: {name: order-status}")
        .unwrap();
    let doc_start = places.kubernetes[..start].rfind("\n---\n").unwrap();
    let doc_end = start + places.kubernetes[start..].find("\n---\n").unwrap();
    places.kubernetes.replace_range(doc_start..doc_end, "");
    assert_eq!(
        check(&places),
        [format!("order-status: no Deployment in {KUBERNETES}")]
    );

    // No user.
    let mut places = Places::shipped();
    places.permissions = places
        .permissions
        .replace("user: contact,", "user: kontakt,");
    let problems = check(&places);
    assert!(
        problems.contains(&format!("contact: no user in {PERMISSIONS}")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("kontakt: a user in")),
        "{problems:?}"
    );

    // A consumer right missing from its user.
    let mut places = Places::shipped();
    let right = "\"$JS.API.CONSUMER.MSG.NEXT.EVENTS.indexing-deleted\",";
    assert!(places.permissions.contains(right));
    places.permissions = places.permissions.replacen(right, "", 1);
    assert_eq!(
        check(&places),
        [format!(
            "indexing: its user in {PERMISSIONS} may not publish \"$JS.API.CONSUMER.MSG.NEXT.EVENTS.indexing-deleted\" (consumer EVENTS/indexing-deleted)"
        )]
    );

    // No consumer file: the catalog still names the function, and its crate, user and Deployment are orphans.
    let mut places = Places::shipped();
    places
        .definitions
        .consumers
        .retain(|(_, c)| provision::function_of(c) != "shipping-notification");
    let problems = check(&places);
    assert!(
        problems.iter().any(|p| p.starts_with(
            "shipping-notification: the catalog says it consumes orders.shipped, but no consumer file"
        )),
        "{problems:?}"
    );
    assert!(
        problems.contains(&format!(
            "shipping-notification: a Deployment in {KUBERNETES} but no consumer file names it"
        )),
        "{problems:?}"
    );
}
