//! The NATS users of a single-account deployment, generated from the consumer files and the event catalog
//! (`jetfn infra permissions`), so a function, a consumer or an event type cannot be added without its rights,
//! and no right outlives the thing it was for. The committed `infra/deploy/nats-permissions.conf` is this
//! module's output; a test fails when they differ.
//!
//! Every function gets its own consumer(s) (INFO, MSG.NEXT and both ack subject forms: v1
//! `$JS.ACK.<stream>.<consumer>...` and v2 `$JS.ACK.<domain>.<hash>.<stream>.<consumer>...`), its own dead-letter
//! subjects, its own key prefix in the ledger (`<function>.`, which also holds the disk probe's `<function>.clock`
//! keys; the dlq-router, which claims only batch completions, has none) and in the failure journal
//! (`<stream>.<consumer>.`, one per consumer), reads of those keys by DIRECT.GET with the key in the subject (never
//! `STREAM.MSG.GET`, whose subject names no key and so would open every function's keys), and replies on its own
//! inbox prefix. What a function needs beyond that is read from its code and listed in
//! [`extras`], each with why.

use std::fmt::Write as _;

use anyhow::Context as _;

use events::batches::COMPLETED_LEDGER_PREFIX;

use crate::Definitions;

/// The ledger bucket: one key per (function, event, effect).
pub const LEDGER_BUCKET: &str = "jetfn-ledger";
/// The failure journal: one key per failing message, `<stream>.<consumer>.<sequence>`.
pub const FAILURES_BUCKET: &str = "jetfn-failures";
/// The rate-limit counters of the contact form.
pub const RATELIMIT_BUCKET: &str = "jetfn-ratelimit";
/// Progress of long jobs (`job.progress`): one key per (function, event), under the function's prefix.
pub const PROGRESS_BUCKET: &str = events::PROGRESS_BUCKET;
/// Each replica's heartbeat (`runtime::heartbeat`): one key per process, `<function>.<instance>`.
pub const REPLICAS_BUCKET: &str = "jetfn-replicas";
/// Batch records (`publish::batch`): every function gates and counts the batch items it handles, publishers
/// submit batches of their events, the operator cancels, the viewer reads progress.
pub const BATCH_BUCKET: &str = events::BATCH_BUCKET;
/// Published by whichever function finishes a batch's last item, so every function may publish it and no
/// `publisher-<domain>` user gets it.
pub const BATCH_COMPLETED: &str = "batch.completed";
/// The outcome events each function publishes (`job.publish_outcome`, `job.on_dead_letter`), read from their code:
/// every email function sends through `mailer::send_once`, which publishes `email.sent` and `email.failed`. Only
/// these functions may publish them: no `publisher-<domain>` user is given an outcome type, so no producing
/// service can forge a delivery confirmation.
pub const OUTCOMES: &[(&str, &[&str])] = &[
    ("welcome", EMAIL_OUTCOMES),
    ("password-reset", EMAIL_OUTCOMES),
    ("email-verification", EMAIL_OUTCOMES),
    ("order-confirmation", EMAIL_OUTCOMES),
    ("order-status", EMAIL_OUTCOMES),
    ("shipping-notification", EMAIL_OUTCOMES),
    ("contact", EMAIL_OUTCOMES),
    ("subscription-notification", EMAIL_OUTCOMES),
];
const EMAIL_OUTCOMES: &[&str] = &["email.sent", "email.failed"];
/// The dead-letter stream and the first token of its subjects (`dlq.<stream>.<consumer>.<sequence>`).
pub const DLQ_STREAM: &str = "DLQ";
/// The first token of dead-letter subjects.
pub const DLQ_PREFIX: &str = "dlq";
/// The dead-letter router: it writes every function's dead letters, so it is not held to one prefix.
pub const ROUTER: &str = "dlq-router";
/// The audit stream and the first token of its subjects (`audit.<user>.<action>`).
pub const AUDIT_STREAM: &str = "AUDIT";
/// The first token of audit subjects.
pub const AUDIT_PREFIX: &str = "audit";
/// The event stream: the operator reads it to find an event by id and to age the backlog.
pub const EVENTS_STREAM: &str = "EVENTS";

/// One NATS user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The user name (a function's is its binary's name).
    pub name: String,
    /// What it is and why it holds what it holds.
    pub comment: String,
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
    /// Whether it may answer requests on whatever reply subject they name (a service).
    pub allow_responses: bool,
}

impl User {
    /// `$<NAME>_PASSWORD`: the server reads the password from its environment, never from this file.
    pub fn password_variable(&self) -> String {
        format!(
            "${}_PASSWORD",
            self.name.to_ascii_uppercase().replace('-', "_")
        )
    }
}

/// The inbox prefix a user's client sets (`NATS_INBOX_PREFIX`), so no user needs the shared `_INBOX.>`.
pub fn inbox_prefix(user: &str) -> String {
    // The router's Deployment has always used `_INBOX_dlq`; kept so running deployments need no change.
    if user == ROUTER {
        "_INBOX_dlq".to_owned()
    } else {
        format!("_INBOX_{user}")
    }
}

/// The operator roles, least to most.
pub const ROLES: [&str; 3] = ["viewer", "operator", "admin"];

/// Every user: the functions in consumer-file order, the publishers, then the operator roles.
///
/// # Errors
/// A bucket or stream the rights name is not defined, a function name is not a valid subject token, or a
/// function's extra rights name a function the consumer files do not know.
pub fn users(
    definitions: &Definitions,
    catalog: &[events::EventKind],
) -> anyhow::Result<Vec<User>> {
    for bucket in [
        LEDGER_BUCKET,
        FAILURES_BUCKET,
        RATELIMIT_BUCKET,
        PROGRESS_BUCKET,
        REPLICAS_BUCKET,
        BATCH_BUCKET,
    ] {
        anyhow::ensure!(
            definitions.buckets.iter().any(|b| b.bucket == bucket),
            "the permissions name the KV bucket {bucket}, but infra/nats/kv defines no such bucket"
        );
    }
    for stream in [DLQ_STREAM, AUDIT_STREAM, EVENTS_STREAM] {
        anyhow::ensure!(
            definitions.streams.iter().any(|s| s.name == stream),
            "the permissions name the stream {stream}, but infra/nats/streams defines no such stream"
        );
    }
    let functions = definitions.functions();
    for name in EXTRAS
        .iter()
        .map(|(n, _)| n)
        .chain(OUTCOMES.iter().map(|(n, _)| n))
    {
        anyhow::ensure!(
            functions.iter().any(|f| f.name == *name),
            "the permissions grant extra rights to {name}, but no consumer file names that function"
        );
    }
    // The streams functions consume from: their dead messages are the router's to copy, their first sequence is
    // what cleanup checks orphan journal records against.
    let mut consumed: Vec<&str> = Vec::new();
    for (stream, _) in &definitions.consumers {
        if !consumed.contains(&stream.as_str()) {
            consumed.push(stream);
        }
    }
    let subject_of = |ty: &str| -> anyhow::Result<&'static str> {
        catalog
            .iter()
            .find(|kind| kind.ty == ty)
            .map(|kind| kind.subject)
            .with_context(|| format!("the event catalog has no type {ty}"))
    };

    let mut users = Vec::new();
    for function in &functions {
        let name = function.name.as_str();
        anyhow::ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "function {name:?}: a function name must be a single subject token ([A-Za-z0-9_-]) to be a key prefix"
        );
        anyhow::ensure!(
            name != COMPLETED_LEDGER_PREFIX,
            "function {name:?}: the name is the ledger prefix of batch completions; choose another"
        );
        let mut publish = Vec::new();
        for (stream, consumer) in &function.consumers {
            publish.extend([
                format!("$JS.API.CONSUMER.INFO.{stream}.{consumer}"),
                format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
                format!("$JS.ACK.{stream}.{consumer}.>"),
                format!("$JS.ACK.*.*.{stream}.{consumer}.>"),
            ]);
            if name != ROUTER {
                publish.push(format!("{DLQ_PREFIX}.{stream}.{consumer}.>"));
            }
        }
        let mut subscribe = vec![format!("{}.>", inbox_prefix(name))];
        let mut comment = format!(
            "{name}: {}",
            function
                .consumers
                .iter()
                .map(|(stream, consumer)| format!("{stream}/{consumer}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut allow_responses = false;
        if name == ROUTER {
            comment.push_str(
                ". Reads MAX_DELIVERIES advisories and copies the dead event (read by sequence from its stream, then \
                 deleted there) to the DLQ, for every function, so it may read and delete any message of a consumed \
                 stream and write every dead letter and journal record.",
            );
            for stream in consumed.iter().filter(|s| **s != "ADVISORIES") {
                publish.extend([
                    format!("$JS.API.STREAM.INFO.{stream}"),
                    format!("$JS.API.STREAM.MSG.GET.{stream}"),
                    format!("$JS.API.STREAM.MSG.DELETE.{stream}"),
                ]);
            }
            publish.extend([
                format!("$JS.API.STREAM.INFO.{DLQ_STREAM}"),
                format!("$JS.API.DIRECT.GET.{DLQ_STREAM}.>"),
                format!("{DLQ_PREFIX}.>"),
                format!("$JS.API.STREAM.INFO.KV_{FAILURES_BUCKET}"),
                format!("$KV.{FAILURES_BUCKET}.>"),
                format!("$JS.API.DIRECT.GET.KV_{FAILURES_BUCKET}.>"),
            ]);
            comment.push_str(
                " A dead message that is a batch item counts failed in its batch's record, and when it finishes the \
                 batch the router publishes batch.completed, claimed in the ledger under the batches' prefix (no key \
                 of its own: it judges a claim's age by the ledger stream's info).",
            );
            publish.extend(batch_rights());
            publish.push(subject_of(BATCH_COMPLETED)?.to_owned());
            // Its ledger makes no write of its own (no disk probe: that is the typed consumers'), and reads the
            // server's clock from the bucket's STREAM.INFO, which `own_keys` grants.
            publish.extend(own_keys(
                LEDGER_BUCKET,
                &[COMPLETED_LEDGER_PREFIX.to_owned()],
            ));
        } else {
            comment.push_str(
                ". Its own ledger keys, progress keys, rate-limit logs and failure-journal records only.",
            );
            publish.extend(own_keys(
                LEDGER_BUCKET,
                &[name.to_owned(), COMPLETED_LEDGER_PREFIX.to_owned()],
            ));
            publish.extend(own_keys(PROGRESS_BUCKET, &[name.to_owned()]));
            publish.extend(own_keys(RATELIMIT_BUCKET, &[name.to_owned()]));
            let journal: Vec<String> = function
                .consumers
                .iter()
                .map(|(stream, consumer)| format!("{stream}.{consumer}"))
                .collect();
            publish.extend(own_keys(FAILURES_BUCKET, &journal));
            comment.push_str(
                " Any batch's record (an item of any batch may reach it: it gates and counts it) and batch.completed, \
             claimed in the ledger under the batches' prefix (one key per batch, whichever process finishes it).",
            );
            publish.extend(batch_rights());
            publish.push(subject_of(BATCH_COMPLETED)?.to_owned());
        }
        // Every replica writes its own heartbeat, under its function's prefix only.
        comment.push_str(" Its replicas' heartbeats (jetfn-replicas, its own prefix).");
        publish.extend(own_keys(REPLICAS_BUCKET, &[name.to_owned()]));
        if let Some((_, outcomes)) = OUTCOMES.iter().find(|(n, _)| *n == name) {
            comment.push_str(" It publishes its outcome events (");
            comment.push_str(&outcomes.join(", "));
            comment.push_str(").");
            for ty in *outcomes {
                publish.push(subject_of(ty)?.to_owned());
            }
        }
        if let Some((_, extra)) = EXTRAS.iter().find(|(n, _)| *n == name) {
            let extra = extra(&Context {
                consumed: &consumed,
                subject_of: &subject_of,
            })?;
            comment.push(' ');
            comment.push_str(extra.why);
            publish.extend(extra.publish);
            subscribe.extend(extra.subscribe);
            allow_responses |= extra.allow_responses;
        }
        users.push(User {
            name: name.to_owned(),
            comment,
            publish,
            subscribe,
            allow_responses,
        });
    }

    // One publisher per event domain (the first token of the type: users, orders, ...): a producing service owns
    // one domain (the signup API its users, the shop its orders), and a leaked password then forges only that
    // domain's events. Each lists its subjects one by one, so a new event type is granted by its catalog row.
    // A priority class's subject (`events.<type>.high`) is granted only when a consumer serves it, so a publisher
    // cannot leave events at a class no function pulls from.
    let mut domains: Vec<(&str, Vec<String>)> = Vec::new();
    let outcome = |ty: &str| OUTCOMES.iter().any(|(_, types)| types.contains(&ty));
    let served = |subject: &str| {
        definitions
            .consumers
            .iter()
            .any(|(stream, consumer)| stream == EVENTS_STREAM && consumer.filter_subject == subject)
    };
    for kind in catalog
        .iter()
        .filter(|kind| !outcome(kind.ty) && kind.ty != BATCH_COMPLETED)
    {
        let domain = kind.ty.split('.').next().unwrap_or(kind.ty);
        let mut granted = vec![kind.subject.to_owned()];
        granted.extend(
            [events::Priority::High, events::Priority::Low]
                .map(|class| class.subject(kind.ty))
                .into_iter()
                .filter(|subject| served(subject)),
        );
        match domains.iter_mut().find(|(d, _)| *d == domain) {
            Some((_, subjects)) => subjects.extend(granted),
            None => domains.push((domain, granted)),
        }
    }
    for (domain, subjects) in &domains {
        let name = format!("publisher-{domain}");
        users.push(User {
            subscribe: vec![format!("{}.>", inbox_prefix(&name))],
            comment: format!(
                "{name}: publishes the {domain}.* events of the catalog, alone or as batches (the batch records), \
                 nothing else (its inbox takes the stream's acks)."
            ),
            publish: subjects.iter().cloned().chain(batch_rights()).collect(),
            name,
            allow_responses: false,
        });
    }

    let all_events: Vec<String> = catalog.iter().map(|k| k.subject.to_owned()).collect();
    let viewer = viewer_rights();
    users.push(User {
        name: "viewer".to_owned(),
        comment: "viewer: jetfn status, jetfn dlq list|show, jetfn audit: stream and consumer info and lists, the DLQ's \
                  records and the audit trail. Changes nothing, reads no event stream's messages and no KV bucket's \
                  values but job progress and the replicas' heartbeats (so jetfn status shows no oldest age, and jetfn event is the operator's)."
            .to_owned(),
        publish: viewer.clone(),
        subscribe: vec![format!("{}.>", inbox_prefix("viewer"))],
        allow_responses: false,
    });
    let mut operator = viewer;
    operator.extend([
        format!("$JS.API.STREAM.MSG.DELETE.{DLQ_STREAM}"),
        format!("$JS.API.STREAM.PURGE.{DLQ_STREAM}"),
        "$JS.API.CONSUMER.PAUSE.*.*".to_owned(),
        events::services::index::SEARCH_SUBJECT.to_owned(),
        // Its own audit entries only: the subject's user token is the one the server authenticated.
        format!("{AUDIT_PREFIX}.operator.>"),
        // jetfn event and the oldest age in jetfn status: the event stream's messages by sequence (jetfn event's
        // direct get has its "none" confirmed by the leader, and the oldest age is read from the leader alone,
        // STREAM.MSG.GET: the same messages), an unnamed ephemeral consumer (the
        // named form would also let it change a function's durable), and the ledger's and failure journal's
        // entries by key (hashes and reasons, no personal data; a ledger key's "none" confirmed by the leader:
        // every key its direct gets already read).
        format!("$JS.API.DIRECT.GET.{EVENTS_STREAM}"),
        format!("$JS.API.DIRECT.GET.{EVENTS_STREAM}.>"),
        format!("$JS.API.STREAM.MSG.GET.{EVENTS_STREAM}"),
        format!("$JS.API.CONSUMER.CREATE.{EVENTS_STREAM}"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{EVENTS_STREAM}.*"),
        format!("$JS.API.DIRECT.GET.KV_{LEDGER_BUCKET}.>"),
        format!("$JS.API.STREAM.MSG.GET.KV_{LEDGER_BUCKET}"),
        format!("$JS.API.DIRECT.GET.KV_{FAILURES_BUCKET}.>"),
        // jetfn batch cancel: a compare-and-set write of the batch's record.
        format!("$KV.{BATCH_BUCKET}.>"),
    ]);
    operator.extend(all_events);
    users.push(User {
        name: "operator".to_owned(),
        comment: "operator: the viewer's rights, plus jetfn dlq replay|purge (a replay republishes to the event's \
                  own subject), pausing and resuming consumers, jetfn search, jetfn event (reads the event stream, \
                  the ledger and the failure journal), and its own audit entries (audit.operator.>). Not the index \
                  purge."
            .to_owned(),
        publish: operator,
        subscribe: vec![format!("{}.>", inbox_prefix("operator"))],
        allow_responses: false,
    });
    users.push(User {
        name: "admin".to_owned(),
        comment: "admin: everything (jetfn infra plan|apply, schedules, the index purge; its audit entries are \
                  audit.admin.>). Never given to a function."
            .to_owned(),
        publish: vec![">".to_owned()],
        subscribe: vec![">".to_owned()],
        allow_responses: false,
    });
    Ok(users)
}

/// The JetStream API calls that only read: server, stream and consumer info and lists, and the DLQ's records and
/// the audit trail (by sequence, by DIRECT.GET, or with an ephemeral ordered consumer as `jetfn dlq list` reads
/// them).
fn viewer_rights() -> Vec<String> {
    let mut rights: Vec<String> = [
        "$JS.API.INFO",
        "$JS.API.STREAM.NAMES",
        "$JS.API.STREAM.LIST",
        "$JS.API.STREAM.INFO.*",
        "$JS.API.CONSUMER.NAMES.*",
        "$JS.API.CONSUMER.LIST.*",
        "$JS.API.CONSUMER.INFO.*.*",
    ]
    .map(str::to_owned)
    .to_vec();
    rights.extend([
        format!("$JS.API.STREAM.MSG.GET.{DLQ_STREAM}"),
        format!("$JS.API.DIRECT.GET.{DLQ_STREAM}"),
        format!("$JS.API.DIRECT.GET.{DLQ_STREAM}.>"),
        format!("$JS.API.CONSUMER.CREATE.{DLQ_STREAM}"),
        format!("$JS.API.CONSUMER.CREATE.{DLQ_STREAM}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{DLQ_STREAM}.*"),
        format!("$JS.API.CONSUMER.DELETE.{DLQ_STREAM}.*"),
        // Job progress (`jetfn event`, an operator's KV get): counts and a short note, no personal data.
        format!("$JS.API.DIRECT.GET.KV_{PROGRESS_BUCKET}.>"),
        // The replicas' heartbeats (`jetfn status`, the console): readiness, breaker, counts; no event data.
        format!("$JS.API.DIRECT.GET.KV_{REPLICAS_BUCKET}.>"),
        // Batch progress (`jetfn batch status`): counters, no personal data; a record read as absent is asked
        // again of the leader.
        format!("$JS.API.DIRECT.GET.KV_{BATCH_BUCKET}.>"),
        format!("$JS.API.STREAM.MSG.GET.KV_{BATCH_BUCKET}"),
    ]);
    // The audit trail, read the same ways.
    rights.extend([
        format!("$JS.API.DIRECT.GET.{AUDIT_STREAM}"),
        format!("$JS.API.DIRECT.GET.{AUDIT_STREAM}.>"),
        format!("$JS.API.CONSUMER.CREATE.{AUDIT_STREAM}"),
        format!("$JS.API.CONSUMER.CREATE.{AUDIT_STREAM}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{AUDIT_STREAM}.*"),
        format!("$JS.API.CONSUMER.DELETE.{AUDIT_STREAM}.*"),
    ]);
    rights
}

/// Read and write of the keys under each prefix in `bucket`, and the bucket's info (binding a KV store reads it).
fn own_keys(bucket: &str, prefixes: &[String]) -> Vec<String> {
    let mut rights = vec![format!("$JS.API.STREAM.INFO.KV_{bucket}")];
    for prefix in prefixes {
        rights.push(format!("$KV.{bucket}.{prefix}.>"));
        rights.push(format!(
            "$JS.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.{prefix}.>"
        ));
    }
    rights
}

/// Reading and writing any batch record (compare-and-set writes; the bucket's info binds the store). A record
/// read as absent, or a submitter's own, is read again from the leader (`STREAM.MSG.GET`): on an R3 bucket a
/// follower may answer a direct get from before the record's last write.
fn batch_rights() -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.KV_{BATCH_BUCKET}"),
        format!("$KV.{BATCH_BUCKET}.>"),
        format!("$JS.API.DIRECT.GET.KV_{BATCH_BUCKET}.>"),
        format!("$JS.API.STREAM.MSG.GET.KV_{BATCH_BUCKET}"),
    ]
}

/// What the extra rights of a function are derived from.
struct Context<'a> {
    consumed: &'a [&'a str],
    subject_of: &'a dyn Fn(&str) -> anyhow::Result<&'static str>,
}

/// A function's rights beyond its consumers and its own keys.
struct Extra {
    why: &'static str,
    publish: Vec<String>,
    subscribe: Vec<String>,
    allow_responses: bool,
}

type ExtraFn = fn(&Context<'_>) -> anyhow::Result<Extra>;

/// The functions that need more than their consumers and their own keys, read from their code.
const EXTRAS: &[(&str, ExtraFn)] = &[
    ("contact", |_| {
        Ok(Extra {
            why: "Also the rate-limit counters (one per hashed sender and window); it is the bucket's only user.",
            publish: vec![
                format!("$JS.API.STREAM.INFO.KV_{RATELIMIT_BUCKET}"),
                format!("$KV.{RATELIMIT_BUCKET}.>"),
                format!("$JS.API.DIRECT.GET.KV_{RATELIMIT_BUCKET}.>"),
            ],
            subscribe: Vec::new(),
            allow_responses: false,
        })
    }),
    ("indexing", |_| {
        use events::services::index::{GROUP, SERVICE};
        Ok(Extra {
            why: "It serves the jetfn-index service (search, purge) and its $SRV discovery, answering on whatever reply \
                  subject a request names; who may call purge is decided by who may publish to it (cleanup, admin).",
            publish: Vec::new(),
            subscribe: vec![
                format!("{GROUP}.*"),
                "$SRV.*".to_owned(),
                format!("$SRV.*.{SERVICE}"),
                format!("$SRV.*.{SERVICE}.*"),
            ],
            allow_responses: true,
        })
    }),
    ("cleanup", |context| {
        let mut publish = vec![
            events::services::index::PURGE_SUBJECT.to_owned(),
            (context.subject_of)("cleanup.completed")?.to_owned(),
            format!("$JS.API.STREAM.INFO.{DLQ_STREAM}"),
            format!("$JS.API.STREAM.PURGE.{DLQ_STREAM}"),
            // The newest record's time, from the leader, before a purge of everything: its probe consumer may sit
            // on a follower that lags. It can read the records through that consumer already.
            format!("$JS.API.STREAM.MSG.GET.{DLQ_STREAM}"),
            format!("$JS.API.CONSUMER.CREATE.{DLQ_STREAM}"),
            format!("$JS.API.CONSUMER.MSG.NEXT.{DLQ_STREAM}.*"),
            format!("$JS.API.CONSUMER.DELETE.{DLQ_STREAM}.*"),
            format!("$KV.{FAILURES_BUCKET}.>"),
            format!("$JS.API.CONSUMER.CREATE.KV_{FAILURES_BUCKET}"),
            format!("$JS.FC.KV_{FAILURES_BUCKET}.>"),
        ];
        publish.extend(
            context
                .consumed
                .iter()
                .map(|stream| format!("$JS.API.STREAM.INFO.{stream}")),
        );
        Ok(Extra {
            why: "Retention: asks indexing to purge (the only function that may), purges old DLQ records (a probe \
                  consumer finds the cut-off; the leader confirms a purge of all) and orphan failure-journal records of every consumer (listing their \
                  keys takes an ordered consumer; it purges them, it reads none), then publishes cleanup.completed.",
            publish,
            subscribe: Vec::new(),
            allow_responses: false,
        })
    }),
];

/// The `authorization { users = [...] }` block, with a header saying where it comes from.
pub fn render(users: &[User]) -> String {
    let mut out = String::new();
    out.push_str(
        "# Generated by `jetfn infra permissions` from infra/nats (the consumer files) and the event catalog: do not\n\
         # edit; change those and regenerate (a test fails when this file differs from the generator's output).\n\
         # Least-privilege users for a single-account deployment; include it from the server config. Each password\n\
         # comes from the server's environment ($<USER>_PASSWORD, dashes as underscores). Each client sets its own\n\
         # inbox prefix (NATS_INBOX_PREFIX=_INBOX_<user>; the router's is _INBOX_dlq).\n\
         authorization {\n  users = [\n",
    );
    for (index, user) in users.iter().enumerate() {
        let _ = writeln!(out, "    {{");
        for line in wrap(&user.comment, 110) {
            let _ = writeln!(out, "      # {line}");
        }
        let _ = writeln!(
            out,
            "      user: {}, password: {}",
            user.name,
            user.password_variable()
        );
        let _ = writeln!(out, "      permissions: {{");
        let _ = writeln!(out, "        publish: {{");
        let _ = writeln!(out, "          allow: [");
        let list = |subjects: &[String], indent: &str| -> String {
            subjects
                .iter()
                .map(|s| format!("{indent}\"{s}\""))
                .collect::<Vec<_>>()
                .join(",\n")
        };
        let _ = writeln!(out, "{}", list(&user.publish, "            "));
        let _ = writeln!(out, "          ]");
        let _ = writeln!(out, "        }}");
        let _ = writeln!(
            out,
            "        subscribe: {{ allow: [{}] }}",
            user.subscribe
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        if user.allow_responses {
            let _ = writeln!(out, "        allow_responses: true");
        }
        let _ = writeln!(out, "      }}");
        let _ = writeln!(
            out,
            "    }}{}",
            if index + 1 < users.len() { "," } else { "" }
        );
    }
    out.push_str("  ]\n}\n");
    out
}

/// The permissions file for `definitions` and `catalog`.
///
/// # Errors
/// As [`users`].
pub fn config(definitions: &Definitions, catalog: &[events::EventKind]) -> anyhow::Result<String> {
    Ok(render(&users(definitions, catalog)?))
}

/// `text` in lines of at most `width` characters, broken at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split_whitespace() {
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}
