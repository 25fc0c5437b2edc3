//! A job type lives in several places: the event catalog (who consumes what), the consumer files (the registry
//! `jetfn dev` runs from), the function crate, its NATS user and its Kubernetes workload. This test checks them
//! against each other, so a function missing from any of them fails CI with the function and the place named.
//! The Kubernetes manifests are generated from the consumer files (`jetfn infra kubernetes`); the committed file
//! must be that output, and the objects are checked here for what a deployment relies on.

use std::path::{Path, PathBuf};

use provision::kubernetes::Settings;
use provision::{Definitions, FUNCTION_METADATA};
use serde_json::Value;

/// Users in the permissions file that are not functions (and the publishers, `publisher-<domain>`).
const NOT_FUNCTIONS: &[&str] = &["viewer", "operator", "admin"];

const PERMISSIONS: &str = "infra/deploy/nats-permissions.conf";
const KUBERNETES: &str = "infra/deploy/kubernetes.yaml";
const CONSUMERS: &str = "infra/nats/consumers";
const KUBERNETES_SETTINGS: &str = "infra/deploy/kubernetes.json";
/// What regenerates the manifests.
const REGENERATE: &str = "cargo run -q -p jetfn -- infra kubernetes > infra/deploy/kubernetes.yaml";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Places {
    definitions: Definitions,
    permissions: String,
    /// The generator's objects.
    kubernetes: Vec<Value>,
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
        let definitions = Definitions::load(&root.join("infra/nats")).unwrap();
        let permissions = std::fs::read_to_string(root.join(PERMISSIONS)).unwrap();
        let kubernetes =
            provision::kubernetes::objects(&definitions, &settings(), &permissions).unwrap();
        Self {
            definitions,
            permissions,
            kubernetes,
            crates,
        }
    }
}

fn settings() -> Settings {
    Settings::load(&root().join(KUBERNETES_SETTINGS)).unwrap()
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

/// `(name, object)` for every Deployment and StatefulSet in the manifests.
fn workloads(kubernetes: &[Value]) -> Vec<(String, &Value)> {
    kubernetes
        .iter()
        .filter(|object| matches!(object["kind"].as_str(), Some("Deployment" | "StatefulSet")))
        .map(|object| {
            (
                object["metadata"]["name"].as_str().unwrap().to_owned(),
                object,
            )
        })
        .collect()
}

/// The object of `kind` named `name`.
fn object<'a>(kubernetes: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    kubernetes
        .iter()
        .find(|object| object["kind"] == kind && object["metadata"]["name"] == name)
}

/// The value of the variable `name` in a workload's (or Job's) first container.
fn env<'a>(workload: &'a Value, name: &str) -> Option<&'a str> {
    workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()?
        .iter()
        .find(|var| var["name"] == name)?["value"]
        .as_str()
}

/// What the restricted Pod Security profile asks of a pod template, each missing piece named.
fn restricted_problems(name: &str, template: &Value) -> Vec<String> {
    let pod = &template["spec"];
    let mut problems = Vec::new();
    let mut need = |ok: bool, what: &str| {
        if !ok {
            problems.push(format!("{name}: its pod in {KUBERNETES} lacks {what}"));
        }
    };
    need(
        pod["securityContext"]["runAsNonRoot"] == true,
        "runAsNonRoot",
    );
    need(
        pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
        "seccompProfile RuntimeDefault",
    );
    for container in pod["containers"].as_array().into_iter().flatten() {
        let context = &container["securityContext"];
        need(
            context["allowPrivilegeEscalation"] == false,
            "allowPrivilegeEscalation: false",
        );
        need(
            context["readOnlyRootFilesystem"] == true,
            "readOnlyRootFilesystem",
        );
        need(
            context["capabilities"]["drop"] == serde_json::json!(["ALL"]),
            "capabilities drop ALL",
        );
    }
    problems
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
        // A priority class's consumer filters on its type's subject and the class (`events.<type>.high`).
        let listed = events::CATALOG.iter().any(|kind| {
            events::Priority::of_subject(&consumer.filter_subject, kind.ty).is_some()
                && kind.consumers.contains(&function)
        });
        if !listed {
            problems.push(format!(
                "{function}: {CONSUMERS}/EVENTS/{}.json filters on {:?}, but the event catalog does not list {function} as a consumer of it",
                consumer.durable_name.as_deref().unwrap_or_default(),
                consumer.filter_subject
            ));
        }
    }

    // A main consumer's `jetfn.priority.<class>` names a consumer of the same function on the class's subject.
    for (stream, consumer) in &definitions.consumers {
        for class in [events::Priority::High, events::Priority::Low] {
            let Some(name) = consumer.metadata.get(&format!("jetfn.priority.{class}")) else {
                continue;
            };
            let subject = format!("{}.{class}", consumer.filter_subject);
            let agrees = definitions.consumers.iter().any(|(other_stream, other)| {
                other_stream == stream
                    && other.durable_name.as_deref() == Some(name.as_str())
                    && other.filter_subject == subject
                    && provision::function_of(other) == provision::function_of(consumer)
                    && other.metadata.get("jetfn.priority").map(String::as_str)
                        == Some(class.as_str())
            });
            if !agrees {
                problems.push(format!(
                    "consumer {stream}/{}: metadata names {name} as its {class} class, but no consumer file {name} of the same function filters on {subject} with metadata.\"jetfn.priority\": \"{class}\"",
                    consumer.durable_name.as_deref().unwrap_or_default()
                ));
            }
        }
    }

    let users = users(&places.permissions);
    let workloads = workloads(&places.kubernetes);
    let functions = definitions.functions();
    for function in &functions {
        let name = function.name.as_str();
        if !places.crates.iter().any(|c| c == name) {
            problems.push(format!("{name}: no crate functions/{name}"));
        }
        let workload = workloads
            .iter()
            .find(|(d, _)| d == name)
            .map(|(_, object)| *object);
        let user = users
            .iter()
            .find(|(u, _)| u == name)
            .map(|(_, block)| *block);
        if workload.is_none() {
            problems.push(format!(
                "{name}: no Deployment or StatefulSet in {KUBERNETES}"
            ));
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
        if let Some(workload) = workload {
            match env(workload, "NATS_INBOX_PREFIX") {
                Some(prefix) => {
                    if !user.contains(&format!("\"{prefix}.>\"")) {
                        problems.push(format!(
                            "{name}: its workload's NATS_INBOX_PREFIX {prefix} is not its user's inbox in {PERMISSIONS}"
                        ));
                    }
                }
                None => problems.push(format!(
                    "{name}: its workload in {KUBERNETES} sets no NATS_INBOX_PREFIX"
                )),
            }
            if env(workload, "NATS_USER") != Some(name) {
                problems.push(format!(
                    "{name}: its workload in {KUBERNETES} does not connect as the NATS user {name}"
                ));
            }
            problems.extend(restricted_problems(name, &workload["spec"]["template"]));
            let drain: u64 = env(workload, "JOB_DRAIN_TIMEOUT_SECS")
                .and_then(|secs| secs.parse().ok())
                .unwrap_or(20);
            let grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
                .as_u64()
                .unwrap_or(30);
            if grace <= drain {
                problems.push(format!(
                    "{name}: its grace period ({grace} s) is not longer than JOB_DRAIN_TIMEOUT_SECS ({drain} s)"
                ));
            }
            if object(&places.kubernetes, "PodDisruptionBudget", name).is_none() {
                problems.push(format!("{name}: no PodDisruptionBudget in {KUBERNETES}"));
            }
            let fixed = workload["kind"] == "StatefulSet";
            match object(&places.kubernetes, "ScaledObject", name) {
                // One writer per volume: a StatefulSet keeps its one replica, KEDA does not scale it.
                Some(_) if fixed => problems.push(format!(
                    "{name}: a StatefulSet with one writer per volume, yet KEDA scales it"
                )),
                None if !fixed => problems.push(format!("{name}: no ScaledObject in {KUBERNETES}")),
                Some(scaled) => {
                    for (stream, consumer) in &function.consumers {
                        let triggered = scaled["spec"]["triggers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|t| {
                                t["type"] == "nats-jetstream"
                                    && t["metadata"]["stream"] == stream.as_str()
                                    && t["metadata"]["consumer"] == consumer.as_str()
                            });
                        if !triggered {
                            problems.push(format!(
                                "{name}: its ScaledObject has no nats-jetstream trigger on {stream}/{consumer}"
                            ));
                        }
                    }
                }
                None => {}
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
    for (workload, _) in &workloads {
        if !known(workload) {
            problems.push(format!(
                "{workload}: a workload in {KUBERNETES} but no consumer file names it"
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
        assert!(workloads(&places.kubernetes).iter().any(|(d, _)| d == name));
    }
}

#[test]
fn a_function_missing_from_any_place_is_named_with_the_place() {
    // No workload.
    let mut places = Places::shipped();
    places
        .kubernetes
        .retain(|o| !(o["kind"] == "Deployment" && o["metadata"]["name"] == "order-status"));
    assert_eq!(
        check(&places),
        [format!(
            "order-status: no Deployment or StatefulSet in {KUBERNETES}"
        )]
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
            "shipping-notification: a workload in {KUBERNETES} but no consumer file names it"
        )),
        "{problems:?}"
    );
}

#[test]
fn the_committed_manifests_are_the_generators_output() {
    let places = Places::shipped();
    let rendered =
        provision::kubernetes::render(&places.definitions, &settings(), &places.permissions)
            .unwrap();
    let committed = std::fs::read_to_string(root().join(KUBERNETES)).unwrap();
    assert!(
        committed == rendered,
        "{KUBERNETES} is not what the generator makes from the consumer files, {KUBERNETES_SETTINGS} and \
         {PERMISSIONS}; regenerate it: {REGENERATE}"
    );
}

#[test]
fn indexing_is_one_stateful_replica_with_a_volume_and_the_job_provisions_a_cluster() {
    let places = Places::shipped();
    let indexing = object(&places.kubernetes, "StatefulSet", "indexing").unwrap();
    assert_eq!(indexing["spec"]["replicas"], 1);
    assert_eq!(
        indexing["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "data"
    );
    assert_eq!(env(indexing, "INDEX_DIR"), Some("/index"));
    assert!(object(&places.kubernetes, "Deployment", "indexing").is_none());
    let job = object(&places.kubernetes, "Job", "jetfn-infra-apply").unwrap();
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        serde_json::json!(["infra", "apply", "--replicas", "3"])
    );
    assert_eq!(env(job, "NATS_USER"), Some("admin"));
    assert!(restricted_problems("jetfn-infra-apply", &job["spec"]["template"]).is_empty());
    let namespace = &places.kubernetes[0];
    assert_eq!(namespace["kind"], "Namespace");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
}

#[test]
fn a_pod_outside_the_restricted_profile_or_a_short_grace_period_is_named() {
    let mut places = Places::shipped();
    for object in &mut places.kubernetes {
        if object["kind"] == "Deployment" && object["metadata"]["name"] == "contact" {
            let spec = &mut object["spec"]["template"]["spec"];
            spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] =
                serde_json::json!(false);
            spec["terminationGracePeriodSeconds"] = serde_json::json!(20);
        }
    }
    assert_eq!(
        check(&places),
        [
            format!("contact: its pod in {KUBERNETES} lacks readOnlyRootFilesystem"),
            "contact: its grace period (20 s) is not longer than JOB_DRAIN_TIMEOUT_SECS (20 s)"
                .to_owned(),
        ]
    );
}

/// A relay with a private CA: `smtp_tls_ca_secret` mounts its `ca.crt` into every mail function, and only
/// there, as `SMTP_TLS_CA_FILE`; unset (the shipped settings), no pod has it.
#[test]
fn the_smtp_ca_secret_reaches_the_mail_functions_only() {
    let places = Places::shipped();
    let mut with_ca = settings();
    with_ca.smtp_tls_ca_secret = Some("jetfn-smtp-ca".to_owned());
    let objects =
        provision::kubernetes::objects(&places.definitions, &with_ca, &places.permissions).unwrap();
    let mut mailers = 0;
    for ((name, shipped), (_, configured)) in workloads(&places.kubernetes)
        .into_iter()
        .zip(workloads(&objects))
    {
        assert_eq!(env(shipped, "SMTP_TLS_CA_FILE"), None, "{name}");
        let pod = &configured["spec"]["template"]["spec"];
        let mounted = pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|volume| volume["secret"]["secretName"] == "jetfn-smtp-ca");
        if env(configured, "SMTP_URL_FILE").is_some() {
            mailers += 1;
            assert_eq!(
                env(configured, "SMTP_TLS_CA_FILE"),
                Some("/var/run/secrets/jetfn/smtp-ca/ca.crt"),
                "{name}"
            );
            assert!(mounted, "{name}: the CA Secret is not mounted");
            assert!(restricted_problems(&name, &configured["spec"]["template"]).is_empty());
        } else {
            assert_eq!(env(configured, "SMTP_TLS_CA_FILE"), None, "{name}");
            assert!(!mounted, "{name} sends no email");
        }
    }
    assert!(mailers >= 8, "{mailers} mail functions");
}

/// None can be forgotten: a function the consumer files name gets its workload, budget and scaler with no
/// entry of its own in the settings, and a settings entry for a function nobody names is refused.
#[test]
fn a_new_function_gets_every_object_without_a_settings_entry() {
    let mut places = Places::shipped();
    let mut consumer = places
        .definitions
        .consumer("EVENTS", "welcome")
        .unwrap()
        .clone();
    consumer.durable_name = Some("invoicing".to_owned());
    consumer
        .metadata
        .insert(FUNCTION_METADATA.to_owned(), "invoicing".to_owned());
    places
        .definitions
        .consumers
        .push(("EVENTS".to_owned(), consumer));
    let permissions = places.permissions.replace(
        "user: welcome, password: $WELCOME_PASSWORD",
        "user: invoicing, password: $INVOICING_PASSWORD\n subscribe: { allow: [\"_INBOX_invoicing.>\"] } },\n { user: welcome, password: $WELCOME_PASSWORD",
    );
    let objects =
        provision::kubernetes::objects(&places.definitions, &settings(), &permissions).unwrap();
    for kind in ["Deployment", "PodDisruptionBudget", "ScaledObject"] {
        assert!(object(&objects, kind, "invoicing").is_some(), "{kind}");
    }
    let deployment = object(&objects, "Deployment", "invoicing").unwrap();
    assert_eq!(
        env(deployment, "NATS_INBOX_PREFIX"),
        Some("_INBOX_invoicing")
    );
    let volumes = &deployment["spec"]["template"]["spec"]["volumes"];
    assert_eq!(volumes[0]["secret"]["secretName"], "jetfn-invoicing-nats");
    assert_eq!(
        volumes[0]["secret"]["items"][0]["key"],
        "INVOICING_PASSWORD"
    );

    // Without its user, generation fails naming it.
    let err = provision::kubernetes::objects(&places.definitions, &settings(), &places.permissions)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "invoicing: no user with a `password: $VARIABLE` in the NATS permissions"
    );

    // A settings entry for a function no consumer file names.
    let mut settings = settings();
    let entry = settings.functions["welcome"].clone();
    settings.functions.insert("welcom".to_owned(), entry);
    let err = provision::kubernetes::objects(
        &Places::shipped().definitions,
        &settings,
        &Places::shipped().permissions,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("functions.welcom: no consumer file names"),
        "{err}"
    );
}
