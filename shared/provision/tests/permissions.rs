//! `infra/deploy/nats-permissions.conf` is what `jetfn infra permissions` generates from the consumer files and
//! the event catalog, so a function, consumer or event type cannot ship without its user and rights, and a hand
//! edit that widens a right is caught.

use std::path::{Path, PathBuf};

use provision::Definitions;
use provision::permissions::{self, ROLES};

const PERMISSIONS: &str = "infra/deploy/nats-permissions.conf";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn definitions() -> Definitions {
    Definitions::load(&root().join("infra/nats")).unwrap()
}

#[test]
fn the_committed_permissions_are_the_generated_ones() {
    let generated = permissions::config(&definitions(), events::CATALOG).unwrap();
    let committed = std::fs::read_to_string(root().join(PERMISSIONS)).unwrap();
    assert!(
        committed == generated,
        "{PERMISSIONS} differs from the generator's output; regenerate it with \
         `cargo run -p jetfn -- infra permissions --output {PERMISSIONS}`"
    );
}

#[test]
fn each_function_writes_only_its_own_ledger_and_journal_keys() {
    let definitions = definitions();
    let users = permissions::users(&definitions, events::CATALOG).unwrap();
    for function in definitions.functions() {
        let user = users.iter().find(|u| u.name == function.name).unwrap();
        for right in &user.publish {
            // Its own prefix, and the batches' completions (one key per batch, claimed by whoever finishes it).
            let own = [
                function.name.as_str(),
                events::batches::COMPLETED_LEDGER_PREFIX,
            ];
            if let Some(key) = right.strip_prefix("$KV.jetfn-ledger.") {
                assert!(
                    own.iter().any(|prefix| key == format!("{prefix}.>")),
                    "{}: {right}",
                    user.name
                );
            }
            if right.contains("KV_jetfn-ledger") {
                assert!(
                    right == "$JS.API.STREAM.INFO.KV_jetfn-ledger"
                        || own.iter().any(|prefix| right
                            == &format!(
                                "$JS.API.DIRECT.GET.KV_jetfn-ledger.$KV.jetfn-ledger.{prefix}.>"
                            )),
                    "{}: {right}",
                    user.name
                );
            }
            // The batch records are every holder's to read by direct get already; the leader's read of them
            // (STREAM.MSG.GET, which no subject scopes) adds nothing. Any other bucket's would read every key.
            assert!(
                !right.starts_with("$JS.API.STREAM.MSG.GET.KV_")
                    || right == &format!("$JS.API.STREAM.MSG.GET.KV_{}", permissions::BATCH_BUCKET),
                "{}: {right} would read every key of the bucket",
                user.name
            );
            if function.name != permissions::ROUTER
                && function.name != "cleanup"
                && let Some(key) = right.strip_prefix("$KV.jetfn-failures.")
            {
                assert!(
                    function
                        .consumers
                        .iter()
                        .any(|(stream, consumer)| key == format!("{stream}.{consumer}.>")),
                    "{}: {right}",
                    user.name
                );
            }
        }
    }
}

#[test]
fn only_cleanup_and_admin_may_call_the_index_purge() {
    let users = permissions::users(&definitions(), events::CATALOG).unwrap();
    let purgers: Vec<&str> = users
        .iter()
        .filter(|u| {
            u.publish
                .iter()
                .any(|s| s == events::services::index::PURGE_SUBJECT || s == ">" || s == "jetfn.>")
                || u.publish
                    .iter()
                    .any(|s| s == "jetfn.index.*" || s == "jetfn.index.>")
        })
        .map(|u| u.name.as_str())
        .collect();
    assert_eq!(purgers, ["cleanup", "admin"]);
}

#[test]
fn every_catalog_subject_has_exactly_one_publisher_and_every_role_a_user() {
    let users = permissions::users(&definitions(), events::CATALOG).unwrap();
    for kind in events::CATALOG {
        let publishers: Vec<&str> = users
            .iter()
            .filter(|u| {
                u.name.starts_with("publisher-") && u.publish.iter().any(|s| s == kind.subject)
            })
            .map(|u| u.name.as_str())
            .collect();
        let outcome_of: Vec<&str> = permissions::OUTCOMES
            .iter()
            .filter(|(_, types)| types.contains(&kind.ty))
            .map(|(function, _)| *function)
            .collect();
        if kind.ty == permissions::BATCH_COMPLETED {
            // Whichever function finishes a batch's last item publishes it; no producing service may.
            assert!(publishers.is_empty(), "{}: {publishers:?}", kind.subject);
            for function in definitions()
                .functions()
                .iter()
                .filter(|f| f.name != permissions::ROUTER)
            {
                let user = users.iter().find(|u| u.name == function.name).unwrap();
                assert!(
                    user.publish.iter().any(|s| s == kind.subject),
                    "{} may publish {}",
                    function.name,
                    kind.subject
                );
            }
        } else if outcome_of.is_empty() {
            assert_eq!(publishers.len(), 1, "{}: {publishers:?}", kind.subject);
        } else {
            // An outcome event (email.sent) only its functions publish: no producing service may forge one.
            assert!(publishers.is_empty(), "{}: {publishers:?}", kind.subject);
            let functions: Vec<&str> = users
                .iter()
                .filter(|u| {
                    !u.name.starts_with("publisher-")
                        && !ROLES.contains(&u.name.as_str())
                        && u.publish.iter().any(|s| s == kind.subject)
                })
                .map(|u| u.name.as_str())
                .collect();
            let mut expected = outcome_of.clone();
            expected.sort_unstable();
            let mut functions = functions;
            functions.sort_unstable();
            assert_eq!(functions, expected, "{}", kind.subject);
        }
    }
    // A catalog subject, or one of its priority classes that a consumer serves (`events.<type>.high`).
    let served_class = |subject: &str| {
        definitions()
            .consumers
            .iter()
            .any(|(_, consumer)| consumer.filter_subject == subject)
            && events::CATALOG
                .iter()
                .any(|k| events::Priority::of_subject(subject, k.ty).is_some())
    };
    // Beyond its events, a publisher holds the batch records only (it submits batches of its events).
    let batch_rights = [
        format!("$JS.API.STREAM.INFO.KV_{}", permissions::BATCH_BUCKET),
        format!("$KV.{}.>", permissions::BATCH_BUCKET),
        format!("$JS.API.DIRECT.GET.KV_{}.>", permissions::BATCH_BUCKET),
        format!("$JS.API.STREAM.MSG.GET.KV_{}", permissions::BATCH_BUCKET),
    ];
    for user in users.iter().filter(|u| u.name.starts_with("publisher-")) {
        assert!(
            user.publish
                .iter()
                .all(|s| events::CATALOG.iter().any(|k| k.subject == s)
                    || served_class(s)
                    || batch_rights.contains(s)),
            "{}: {:?}",
            user.name,
            user.publish
        );
    }
    for role in ROLES {
        assert!(users.iter().any(|u| u.name == role), "{role}");
    }
}

#[test]
fn a_right_naming_an_undefined_bucket_is_refused() {
    let mut definitions = definitions();
    definitions.buckets.retain(|b| b.bucket != "jetfn-ledger");
    let err = permissions::users(&definitions, events::CATALOG).unwrap_err();
    assert!(err.to_string().contains("jetfn-ledger"), "{err}");
}

/// A function named like the batches' completion prefix would own every batch's completion key.
#[test]
fn a_function_named_like_the_batch_completions_prefix_is_refused() {
    let mut definitions = definitions();
    let (stream, mut consumer) = definitions
        .consumers
        .iter()
        .find(|(_, c)| c.durable_name.as_deref() == Some("welcome"))
        .cloned()
        .unwrap();
    consumer.durable_name = Some(events::batches::COMPLETED_LEDGER_PREFIX.to_owned());
    consumer.metadata.remove(provision::FUNCTION_METADATA);
    definitions.consumers.push((stream, consumer));
    let err = permissions::users(&definitions, events::CATALOG).unwrap_err();
    assert!(err.to_string().contains("batch completions"), "{err}");
}

/// The audit trail: every role reads it, each writing role writes under its own user token only (so an entry's user
/// is the one the server authenticated), and nobody but the admin may delete or purge (the stream denies both
/// anyway).
#[test]
fn the_audit_trail_is_read_by_every_role_and_written_under_ones_own_name() {
    let users = permissions::users(&definitions(), events::CATALOG).unwrap();
    let user = |name: &str| users.iter().find(|u| u.name == name).unwrap();
    for role in ["viewer", "operator"] {
        let rights = &user(role).publish;
        assert!(
            rights.iter().any(|r| r == "$JS.API.CONSUMER.CREATE.AUDIT"),
            "{role}"
        );
        assert!(
            rights.iter().any(|r| r == "$JS.API.DIRECT.GET.AUDIT.>"),
            "{role}"
        );
        assert!(
            !rights
                .iter()
                .any(|r| r.contains("MSG.DELETE.AUDIT") || r.contains("PURGE.AUDIT")),
            "{role}"
        );
    }
    let writes = |name: &str| -> Vec<&String> {
        user(name)
            .publish
            .iter()
            .filter(|r| r.starts_with("audit."))
            .collect()
    };
    assert!(writes("viewer").is_empty());
    assert_eq!(writes("operator"), ["audit.operator.>"]);
    for function in definitions().functions() {
        assert!(writes(&function.name).is_empty(), "{}", function.name);
    }
    // The operator reads the event stream only through an unnamed ephemeral consumer: the named form would also
    // let it change a function's durable consumer.
    assert!(
        !user("operator")
            .publish
            .iter()
            .any(|r| r.starts_with("$JS.API.CONSUMER.CREATE.EVENTS.")
                || r.starts_with("$JS.API.CONSUMER.DELETE.EVENTS")),
        "{:?}",
        user("operator").publish
    );
}
