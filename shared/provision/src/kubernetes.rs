//! The Kubernetes manifests, rendered from the registry rather than written by hand: every function the consumer
//! files name (`metadata."jetfn.function"`) gets its workload, its PodDisruptionBudget and its KEDA ScaledObject,
//! so a new function cannot be left out. `infra/deploy/kubernetes.json` holds what the registry cannot know (a
//! function's extra settings, its replica bounds and why); the NATS user and password variable of each function
//! come from `infra/deploy/nats-permissions.conf`, so the manifests and the server's users cannot drift apart.
//! `jetfn infra kubernetes` prints the result; a test keeps the committed `infra/deploy/kubernetes.yaml` equal
//! to it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Definitions;

/// Where a pod finds its NATS password (the `_FILE` convention of `runtime::config`).
const PASSWORD_DIR: &str = "/var/run/secrets/jetfn/nats";
/// Where a pod finds the CA that signed the NATS server's certificate.
const CA_DIR: &str = "/var/run/secrets/jetfn/nats-ca";
/// Where a mail function finds `SMTP_URL` (it carries the SMTP password).
const SMTP_DIR: &str = "/var/run/secrets/jetfn/smtp";
/// Where a mail function finds the CA of a relay with a private certificate (`SMTP_TLS_CA_FILE`).
const SMTP_CA_DIR: &str = "/var/run/secrets/jetfn/smtp-ca";
/// The health port every function serves `/livez` and `/readyz` on (`JOB_HEALTH_ADDR`).
const HEALTH_PORT: u16 = 8080;
/// The user the images run as.
const NOBODY: u32 = 65534;
/// Seconds the kubelet waits beyond the drain timeout before it kills a pod: the process also closes its NATS
/// connection and flushes its spans after draining.
const GRACE_MARGIN_SECS: u64 = 10;

/// `infra/deploy/kubernetes.json`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The namespace everything goes in; it enforces the restricted Pod Security profile.
    pub namespace: String,
    /// The image of a function, `{function}` replaced by its name (`jetfn` for the provisioning Job).
    pub image: String,
    /// `NATS_URL` of every pod.
    pub nats_url: String,
    /// The Secret holding `ca.crt`, the CA that signed the NATS server's certificate.
    pub nats_tls_ca_secret: String,
    /// `host:port` of the NATS monitoring endpoint KEDA reads consumer lag from.
    pub nats_monitoring_endpoint: String,
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` of every function.
    pub otlp_endpoint: String,
    /// `MAIL_FROM` of the mail functions.
    pub mail_from: String,
    /// The Secret holding `ca.crt`, the CA that signed the SMTP relay's certificate, for a relay a public root
    /// does not vouch for: mounted into the mail functions as `SMTP_TLS_CA_FILE`. Unset: the public roots only.
    #[serde(default)]
    pub smtp_tls_ca_secret: Option<String>,
    /// `JOB_DRAIN_TIMEOUT_SECS`; the grace period is longer.
    pub drain_timeout_secs: u64,
    /// `jetfn infra apply --replicas` in the provisioning Job.
    pub provision_replicas: u16,
    /// Pending messages per replica KEDA aims for (`lagThreshold`).
    pub lag_threshold: u32,
    /// Per function; a function without an entry gets the defaults.
    #[serde(default)]
    pub functions: BTreeMap<String, FunctionSettings>,
}

/// One function's entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionSettings {
    /// It sends email: `MAIL_FROM` and `SMTP_URL_FILE` from the `jetfn-smtp` Secret.
    #[serde(default)]
    pub mail: bool,
    /// KEDA's `minReplicaCount`; 0 lets an idle function scale to zero.
    #[serde(default)]
    pub min_replicas: u32,
    /// KEDA's `maxReplicaCount`; with a volume, the fixed replica count.
    #[serde(default = "five")]
    pub max_replicas: u32,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A persistent volume: the function becomes a StatefulSet with one replica.
    pub volume: Option<Volume>,
    /// Requests and limits; unset, a mail function's.
    pub resources: Option<Resources>,
    /// Why the replica bounds are what they are (shown on the objects).
    #[serde(default)]
    pub why: String,
}

/// A volume claim per replica.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// The variable naming the directory.
    pub env: String,
    /// Where it is mounted.
    pub path: String,
    /// Its size, as Kubernetes writes quantities.
    pub size: String,
}

/// CPU and memory.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// CPU request.
    pub cpu: String,
    /// Memory request.
    pub memory: String,
    /// Memory limit.
    pub memory_limit: String,
}

fn five() -> u32 {
    5
}

impl Default for FunctionSettings {
    fn default() -> Self {
        Self {
            mail: false,
            min_replicas: 0,
            max_replicas: five(),
            env: BTreeMap::new(),
            volume: None,
            resources: None,
            why: "Scales to zero: an event waits in its stream until KEDA starts a pod.".to_owned(),
        }
    }
}

impl Settings {
    /// Reads `path` strictly (an unknown key is an error).
    ///
    /// # Errors
    /// The file cannot be read or does not match [`Settings`].
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
    }
}

/// A NATS user of the permissions file, as a pod needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// `NATS_USER`.
    pub user: String,
    /// The server's variable holding the password (`WELCOME_PASSWORD`); also the key in the pod's Secret.
    pub password_var: String,
    /// `NATS_INBOX_PREFIX`, the first `_INBOX` subject the user may subscribe to; `None` for `_INBOX.>`.
    pub inbox_prefix: Option<String>,
}

/// The user `user` of a permissions file (`user: <name>, password: $<VAR>` blocks).
pub fn identity(permissions: &str, user: &str) -> Option<Identity> {
    let start = permissions
        .match_indices("user: ")
        .map(|(at, _)| at + "user: ".len())
        .find(|&at| {
            let rest = &permissions[at..];
            let name = rest.trim_start_matches('"');
            name.starts_with(user) && name[user.len()..].starts_with([',', '"', ' '])
        })?;
    let block = &permissions[start..];
    let block = &block[..block.find("user: ").unwrap_or(block.len())];
    let var = &block[block.find("password: $")? + "password: $".len()..];
    let password_var: String = var
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let inbox_prefix = block.find("\"_INBOX").and_then(|at| {
        let subject = &block[at + 1..];
        let subject = &subject[..subject.find('"')?];
        let prefix = subject.strip_suffix(".>")?;
        (prefix != "_INBOX").then(|| prefix.to_owned())
    });
    Some(Identity {
        user: user.to_owned(),
        password_var,
        inbox_prefix,
    })
}

/// The manifests, as objects in apply order: the namespace, the provisioning Job, then per function its
/// workload, PodDisruptionBudget and ScaledObject.
///
/// # Errors
/// A function, or the operator `admin`, with no user in `permissions`; an entry in `settings` for a function the
/// consumer files do not name.
pub fn objects(
    definitions: &Definitions,
    settings: &Settings,
    permissions: &str,
) -> anyhow::Result<Vec<Value>> {
    // By name, not file order: the same functions give the same file however they were loaded or added.
    let mut functions = definitions.functions();
    functions.sort_by(|a, b| a.name.cmp(&b.name));
    let mut problems = Vec::new();
    for name in settings.functions.keys() {
        if !functions.iter().any(|f| &f.name == name) {
            problems.push(format!(
                "functions.{name}: no consumer file names this function (metadata.\"{}\")",
                crate::FUNCTION_METADATA
            ));
        }
    }
    let mut identities = BTreeMap::new();
    for name in functions
        .iter()
        .map(|f| f.name.as_str())
        .chain(std::iter::once("admin"))
    {
        match identity(permissions, name) {
            Some(id) if !id.password_var.is_empty() => {
                identities.insert(name.to_owned(), id);
            }
            _ => problems.push(format!(
                "{name}: no user with a `password: $VARIABLE` in the NATS permissions"
            )),
        }
    }
    if !problems.is_empty() {
        anyhow::bail!("{}", problems.join("\n"));
    }

    let ns = settings.namespace.as_str();
    let mut out = vec![json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": ns,
            "labels": {
                "pod-security.kubernetes.io/enforce": "restricted",
                "pod-security.kubernetes.io/warn": "restricted",
                "pod-security.kubernetes.io/audit": "restricted",
            },
        },
    })];

    let admin = &identities["admin"];
    let replicas = settings.provision_replicas.to_string();
    let mut job_pod = pod(
        settings,
        "jetfn",
        admin,
        vec![json!({"name": "LOG_FORMAT", "value": "json"})],
        &[],
    );
    job_pod["restartPolicy"] = json!("OnFailure");
    job_pod["containers"][0]["args"] = json!(["infra", "apply", "--replicas", replicas]);
    job_pod["containers"][0]["resources"] = resources(&default_resources());
    out.push(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta(ns, "jetfn-infra-apply", "jetfn"),
        "spec": {
            "backoffLimit": 10,
            "template": {"metadata": {"labels": labels("jetfn")}, "spec": job_pod},
        },
    }));

    let default = FunctionSettings::default();
    for function in &functions {
        let name = function.name.as_str();
        let own = settings.functions.get(name).unwrap_or(&default);
        let id = &identities[name];
        let mut env = vec![
            json!({"name": "LOG_FORMAT", "value": "json"}),
            json!({"name": "JOB_HEALTH_ADDR", "value": format!("0.0.0.0:{HEALTH_PORT}")}),
            json!({"name": "JOB_DRAIN_TIMEOUT_SECS", "value": settings.drain_timeout_secs.to_string()}),
            json!({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": settings.otlp_endpoint}),
        ];
        let mut mounts = Vec::new();
        if own.mail {
            env.push(json!({"name": "MAIL_FROM", "value": settings.mail_from}));
            env.push(json!({"name": "SMTP_URL_FILE", "value": format!("{SMTP_DIR}/url")}));
            mounts.push((
                json!({"name": "smtp", "secret": {"secretName": "jetfn-smtp", "items": [{"key": "url", "path": "url"}]}}),
                json!({"name": "smtp", "mountPath": SMTP_DIR, "readOnly": true}),
            ));
            if let Some(secret) = &settings.smtp_tls_ca_secret {
                env.push(
                    json!({"name": "SMTP_TLS_CA_FILE", "value": format!("{SMTP_CA_DIR}/ca.crt")}),
                );
                mounts.push((
                    json!({"name": "smtp-ca", "secret": {"secretName": secret, "items": [{"key": "ca.crt", "path": "ca.crt"}]}}),
                    json!({"name": "smtp-ca", "mountPath": SMTP_CA_DIR, "readOnly": true}),
                ));
            }
        }
        if let Some(volume) = &own.volume {
            env.push(json!({"name": volume.env, "value": volume.path}));
        }
        for (key, value) in &own.env {
            env.push(json!({"name": key, "value": value}));
        }
        let mut spec = pod(settings, name, id, env, &mounts);
        spec["terminationGracePeriodSeconds"] =
            json!(settings.drain_timeout_secs + GRACE_MARGIN_SECS);
        let container = &mut spec["containers"][0];
        container["ports"] = json!([{"name": "health", "containerPort": HEALTH_PORT}]);
        container["livenessProbe"] =
            json!({"httpGet": {"path": "/livez", "port": "health"}, "periodSeconds": 10});
        container["readinessProbe"] =
            json!({"httpGet": {"path": "/readyz", "port": "health"}, "periodSeconds": 5});
        container["resources"] = resources(own.resources.as_ref().unwrap_or(&default_resources()));
        let template = json!({"metadata": {"labels": labels(name)}, "spec": spec});
        let selector = json!({"matchLabels": labels(name)});
        let mut metadata = meta(ns, name, name);
        metadata["annotations"] = json!({"jetfn.dev/scaling": own.why});
        let kind = if let Some(volume) = &own.volume {
            let mut template = template;
            template["spec"]["containers"][0]["volumeMounts"]
                .as_array_mut()
                .expect("mounts")
                .push(json!({"name": "data", "mountPath": volume.path}));
            out.push(json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": meta(ns, name, name),
                "spec": {
                    "clusterIP": "None",
                    "selector": labels(name),
                    "ports": [{"name": "health", "port": HEALTH_PORT, "targetPort": "health"}],
                },
            }));
            out.push(json!({
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": metadata,
                "spec": {
                    "serviceName": name,
                    "replicas": own.max_replicas,
                    "selector": selector,
                    "template": template,
                    "volumeClaimTemplates": [{
                        "metadata": {"name": "data"},
                        "spec": {
                            "accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": volume.size}},
                        },
                    }],
                },
            }));
            "StatefulSet"
        } else {
            out.push(json!({
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": metadata,
                "spec": {"selector": selector, "template": template},
            }));
            "Deployment"
        };
        out.push(json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": meta(ns, name, name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": labels(name)}},
        }));
        if own.volume.is_none() {
            let triggers: Vec<Value> = function
                .consumers
                .iter()
                .map(|(stream, consumer)| {
                    json!({
                        "type": "nats-jetstream",
                        "metadata": {
                            "natsServerMonitoringEndpoint": settings.nats_monitoring_endpoint,
                            "account": "$G",
                            "stream": stream,
                            "consumer": consumer,
                            "lagThreshold": settings.lag_threshold.to_string(),
                            "activationLagThreshold": "0",
                        },
                    })
                })
                .collect();
            let mut metadata = meta(ns, name, name);
            metadata["annotations"] = json!({"jetfn.dev/scaling": own.why});
            out.push(json!({
                "apiVersion": "keda.sh/v1alpha1",
                "kind": "ScaledObject",
                "metadata": metadata,
                "spec": {
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": name},
                    "minReplicaCount": own.min_replicas,
                    "maxReplicaCount": own.max_replicas,
                    "pollingInterval": 10,
                    "cooldownPeriod": 300,
                    "triggers": triggers,
                },
            }));
        }
    }
    Ok(out)
}

/// [`objects`] as a YAML stream, with a header saying where it comes from.
///
/// # Errors
/// As [`objects`].
pub fn render(
    definitions: &Definitions,
    settings: &Settings,
    permissions: &str,
) -> anyhow::Result<String> {
    let mut out = String::from(
        "# Generated by `jetfn infra kubernetes` from infra/nats (the consumer files name the functions),\n\
         # infra/deploy/kubernetes.json and infra/deploy/nats-permissions.conf. Do not edit: change those and\n\
         # regenerate (a test fails while this file differs from the generator's output).\n",
    );
    for object in objects(definitions, settings, permissions)? {
        out.push_str("---\n");
        yaml(&object, 0, &mut out);
    }
    Ok(out)
}

fn labels(name: &str) -> Value {
    json!({"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "jetfn"})
}

fn meta(namespace: &str, name: &str, app: &str) -> Value {
    json!({"name": name, "namespace": namespace, "labels": labels(app)})
}

fn default_resources() -> Resources {
    Resources {
        cpu: "50m".to_owned(),
        memory: "32Mi".to_owned(),
        memory_limit: "128Mi".to_owned(),
    }
}

fn resources(r: &Resources) -> Value {
    json!({"requests": {"cpu": r.cpu, "memory": r.memory}, "limits": {"memory": r.memory_limit}})
}

/// A pod spec under the restricted Pod Security profile, connecting to NATS as `id` over TLS: the password is a
/// file from the Secret `jetfn-<user>-nats` (its key is the server's variable, so the server can load the same
/// Secrets with `envFrom`), never an environment value.
fn pod(
    settings: &Settings,
    image_of: &str,
    id: &Identity,
    extra_env: Vec<Value>,
    mounts: &[(Value, Value)],
) -> Value {
    let mut env = vec![
        json!({"name": "NATS_URL", "value": settings.nats_url}),
        json!({"name": "NATS_USER", "value": id.user}),
        json!({"name": "NATS_PASSWORD_FILE", "value": format!("{PASSWORD_DIR}/password")}),
        json!({"name": "NATS_TLS_CA_FILE", "value": format!("{CA_DIR}/ca.crt")}),
    ];
    if let Some(prefix) = &id.inbox_prefix {
        env.push(json!({"name": "NATS_INBOX_PREFIX", "value": prefix}));
    }
    env.extend(extra_env);
    let mut volumes = vec![
        json!({"name": "nats-password", "secret": {
            "secretName": format!("jetfn-{}-nats", id.user),
            "items": [{"key": id.password_var, "path": "password"}],
        }}),
        json!({"name": "nats-ca", "secret": {
            "secretName": settings.nats_tls_ca_secret,
            "items": [{"key": "ca.crt", "path": "ca.crt"}],
        }}),
        json!({"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}),
    ];
    let mut volume_mounts = vec![
        json!({"name": "nats-password", "mountPath": PASSWORD_DIR, "readOnly": true}),
        json!({"name": "nats-ca", "mountPath": CA_DIR, "readOnly": true}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    for (volume, mount) in mounts {
        volumes.push(volume.clone());
        volume_mounts.push(mount.clone());
    }
    json!({
        "automountServiceAccountToken": false,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": NOBODY,
            "runAsGroup": NOBODY,
            "fsGroup": NOBODY,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{
            "name": image_of,
            "image": settings.image.replace("{function}", image_of),
            "env": env,
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "runAsNonRoot": true,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": volume_mounts,
        }],
        "volumes": volumes,
    })
}

/// Block-style YAML for a JSON value. A string is written plain only when YAML cannot read it as anything else
/// (a word, a path, a label key); otherwise double-quoted (a JSON string is a valid YAML double-quoted scalar), so
/// `"20"` stays a string and `true` a boolean.
fn yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, item) in map {
                let _ = write!(out, "{pad}{}:", key_text(key));
                child(item, indent, out);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            for item in items {
                let _ = write!(out, "{pad}-");
                match item {
                    Value::Object(map) if !map.is_empty() => {
                        // The first key on the dash's line, the rest under it.
                        let mut nested = String::new();
                        yaml(item, indent + 2, &mut nested);
                        out.push(' ');
                        out.push_str(&nested[indent + 2..]);
                    }
                    _ => child(item, indent, out),
                }
            }
        }
        scalar => {
            let _ = writeln!(out, "{pad}{}", scalar_text(scalar));
        }
    }
}

/// What follows `key:` or `-`: a scalar on the same line, a collection on the next ones.
fn child(item: &Value, indent: usize, out: &mut String) {
    match item {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            yaml(item, indent + 2, out);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            yaml(item, indent + 2, out);
        }
        scalar => {
            let _ = writeln!(out, " {}", scalar_text(scalar));
        }
    }
}

fn scalar_text(value: &Value) -> String {
    match value {
        Value::Object(_) => "{}".to_owned(),
        Value::Array(_) => "[]".to_owned(),
        Value::String(text) => key_text(text),
        other => other.to_string(),
    }
}

/// Words YAML 1.1 parsers (PyYAML, which kubectl's tooling shares the rules of) read as booleans or null.
const YAML_WORDS: &[&str] = &["y", "n", "yes", "no", "on", "off", "true", "false", "null"];

fn key_text(text: &str) -> String {
    let plain = text
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
        && text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '/')
        && !YAML_WORDS.contains(&text.to_ascii_lowercase().as_str());
    if plain {
        text.to_owned()
    } else {
        Value::String(text.to_owned()).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_of_nested_values() {
        let mut out = String::new();
        yaml(
            &json!({"a": {"b": [1, "x", "20", "no"], "c": []}, "d": [{"e": true, "f": {"g": null}}]}),
            0,
            &mut out,
        );
        assert_eq!(
            out,
            "a:\n  b:\n    - 1\n    - x\n    - \"20\"\n    - \"no\"\n  c: []\nd:\n  - e: true\n    f:\n      g: null\n"
        );
    }

    #[test]
    fn identity_reads_the_user_its_password_variable_and_its_inbox() {
        let conf = "users = [\n { user: a-b, password: $A_B_PASSWORD\n  subscribe: { allow: [\"_INBOX_ab.>\"] } },\n \
                    { user: a, password: $A\n  subscribe: { allow: [\"_INBOX.>\"] } } ]";
        assert_eq!(
            identity(conf, "a-b"),
            Some(Identity {
                user: "a-b".to_owned(),
                password_var: "A_B_PASSWORD".to_owned(),
                inbox_prefix: Some("_INBOX_ab".to_owned()),
            })
        );
        assert_eq!(identity(conf, "a").unwrap().inbox_prefix, None);
        assert_eq!(identity(conf, "a").unwrap().password_var, "A");
        assert_eq!(identity(conf, "b"), None);
    }
}
