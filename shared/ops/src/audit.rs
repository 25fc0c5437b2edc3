//! The audit trail: one message per change made through the CLI or the console, in the `AUDIT` stream (defined
//! in `infra/nats/streams/AUDIT.json`; limits retention, no delete or purge through the API, so an entry goes only
//! when it ages out).
//!
//! An entry's subject is `audit.<user>.<action>`: the NATS permissions let the operator and admin users publish
//! under their own user token only, so an entry's `user` is the identity the server authenticated (for the
//! generated users), while `actor` is who the caller says acted (`--actor`, a console's signed-in person).

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The audit stream.
pub const STREAM: &str = "AUDIT";
/// The first token of its subjects.
pub const PREFIX: &str = "audit";

/// The changes that are audited. Each is one subject token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// A function paused (`jetfn pause`).
    Pause,
    /// A function resumed.
    Resume,
    /// Dead letters published again.
    DlqReplay,
    /// Dead letters deleted.
    DlqPurge,
    /// A schedule added or replaced.
    ScheduleAdd,
    /// A schedule cancelled.
    ScheduleCancel,
    /// `infra/nats` applied to the server.
    InfraApply,
    /// A batch cancelled (`jetfn batch cancel`).
    BatchCancel,
}

impl Action {
    /// Every action, in the order the README lists them.
    pub const ALL: [Self; 8] = [
        Self::Pause,
        Self::Resume,
        Self::DlqReplay,
        Self::DlqPurge,
        Self::ScheduleAdd,
        Self::ScheduleCancel,
        Self::InfraApply,
        Self::BatchCancel,
    ];

    /// Its subject token and its name in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::DlqReplay => "dlq-replay",
            Self::DlqPurge => "dlq-purge",
            Self::ScheduleAdd => "schedule-add",
            Self::ScheduleCancel => "schedule-cancel",
            Self::InfraApply => "infra-apply",
            Self::BatchCancel => "batch-cancel",
        }
    }

    /// The action named `name`.
    ///
    /// # Errors
    /// No such action; the error lists them.
    pub fn parse(name: &str) -> anyhow::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|action| action.as_str() == name)
            .with_context(|| {
                format!(
                    "--action {name:?} is not an audited action; one of {}",
                    Self::ALL.map(Self::as_str).join(", ")
                )
            })
    }
}

/// One change: who, what, when, on what, and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// When the change was made (the caller's clock; the stream's own timestamp is beside it in listings).
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The NATS user the change was made as (its subject token).
    pub user: String,
    /// Who acted: `--actor`, a console's signed-in person, or the NATS user.
    pub actor: String,
    /// What was done.
    pub action: Action,
    /// What it was done to: a function, `dlq #12`, a schedule's name, the definitions folder.
    pub target: String,
    /// `ok`, `partial` (some of a selection failed) or `error`.
    pub result: Outcome,
    /// What happened, in a line: the pause's end, counts, the error. Never a payload or a secret.
    pub detail: String,
    /// The tool that made the change (`jetfn-cli 0.0.0`).
    pub tool: String,
}

/// How a change ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Done.
    Ok,
    /// Part of a selection was done, part failed.
    Partial,
    /// Nothing (or not all that was asked) was done.
    Error,
}

impl Outcome {
    /// Its name in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Partial => "partial",
            Self::Error => "error",
        }
    }
}

/// What an [`Auditor`] calls with the error when an entry cannot be written (see [`Auditor::on_unrecorded`]).
pub type Unrecorded = std::sync::Arc<dyn Fn(Action, &str, &anyhow::Error) + Send + Sync>;

/// Writes entries for one identity.
#[derive(Clone)]
pub struct Auditor {
    js: jetstream::Context,
    user: String,
    actor: String,
    tool: String,
    unrecorded: Option<Unrecorded>,
}

/// A name as one subject token: what NATS forbids in a token (`.`, `*`, `>`, spaces) becomes `_`.
pub fn token(name: &str) -> String {
    let token: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if token.is_empty() {
        "_".to_owned()
    } else {
        token
    }
}

impl Auditor {
    /// An auditor writing as NATS user `user` for `actor` (the user itself when `None`), from `tool`.
    pub fn new(js: jetstream::Context, user: &str, actor: Option<&str>, tool: &str) -> Self {
        Self {
            js,
            user: user.to_owned(),
            actor: actor.unwrap_or(user).to_owned(),
            tool: tool.to_owned(),
            unrecorded: None,
        }
    }

    /// Calls `report` (action, target, error) when an entry the ops functions write cannot be written: the change
    /// was made and stands, and ops prints nothing, so the caller says it (the CLI on stderr, a console in its log).
    #[must_use]
    pub fn on_unrecorded(mut self, report: Unrecorded) -> Self {
        self.unrecorded = Some(report);
        self
    }

    /// [`Auditor::record`] for a change already made: a failure to write goes to [`Auditor::on_unrecorded`]'s
    /// report and does not fail or undo the change.
    pub async fn record_reported(
        &self,
        action: Action,
        target: &str,
        result: Outcome,
        detail: &str,
    ) {
        if let Err(err) = self.record(action, target, result, detail).await
            && let Some(report) = &self.unrecorded
        {
            report(action, target, &err);
        }
    }

    /// Appends an entry and waits for the stream's ack.
    ///
    /// # Errors
    /// The stream is missing (run `jetfn infra apply`), the user may not write there, or the server did not ack.
    pub async fn record(
        &self,
        action: Action,
        target: &str,
        result: Outcome,
        detail: &str,
    ) -> anyhow::Result<Entry> {
        let entry = Entry {
            time: OffsetDateTime::now_utc(),
            user: self.user.clone(),
            actor: self.actor.clone(),
            action,
            target: target.to_owned(),
            result,
            detail: detail.to_owned(),
            tool: self.tool.clone(),
        };
        let subject = format!("{PREFIX}.{}.{}", token(&self.user), action.as_str());
        self.js
            .publish(subject, serde_json::to_vec(&entry)?.into())
            .await
            .context("writing the audit entry")?
            .await
            .context("writing the audit entry (is the AUDIT stream there? `jetfn infra apply` creates it)")?;
        Ok(entry)
    }
}

/// Which entries to list.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this action.
    pub action: Option<Action>,
    /// Only entries whose target contains this text.
    pub target: Option<String>,
    /// Only this NATS user's or actor's entries.
    pub who: Option<String>,
    /// Only entries stored at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only entries stored before this time.
    pub until: Option<OffsetDateTime>,
    /// The newest this many (all when `None`).
    pub last: Option<usize>,
}

/// A stored entry with its place in the stream.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    /// Its sequence in `AUDIT`.
    pub sequence: u64,
    /// The entry.
    #[serde(flatten)]
    pub entry: Entry,
}

/// The entries that match, oldest first. Reads with an ordered consumer from `since` (the server skips the rest)
/// filtered to the action's subjects, so a long trail is not read whole for a recent question.
///
/// # Errors
/// The stream is missing or cannot be read, or stops answering before every entry asked for has been read.
pub async fn list(js: &jetstream::Context, filter: &Filter) -> anyhow::Result<Vec<Stored>> {
    let stream = js
        .get_stream(STREAM)
        .await
        .context("the AUDIT stream (run `jetfn infra apply`)")?;
    let deliver_policy = match filter.since {
        Some(since) => consumer::DeliverPolicy::ByStartTime { start_time: since },
        None => consumer::DeliverPolicy::All,
    };
    let mut ordered = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: match filter.action {
                Some(action) => format!("{PREFIX}.*.{}", action.as_str()),
                None => format!("{PREFIX}.>"),
            },
            deliver_policy,
            ..Default::default()
        })
        .await
        .context("reading the AUDIT stream")?;
    let mut found = Vec::new();
    let mut pending = ordered
        .info()
        .await
        .context("reading the AUDIT stream")?
        .num_pending;
    if pending == 0 {
        return Ok(found);
    }
    let mut messages = ordered
        .messages()
        .await
        .context("reading the AUDIT stream")?;
    let mut read = 0usize;
    loop {
        // A stall with entries still to come is an error, never a shorter trail: "who changed this" answered from
        // part of the trail reads as "nobody".
        let Some(message) = crate::ordered::next(&mut messages).await else {
            anyhow::bail!(
                "the AUDIT stream stopped answering after {read} entries read with {pending} more to read; the \
                 trail would be incomplete, try again"
            );
        };
        let message = message.context("reading the AUDIT stream")?;
        read += 1;
        let info = message.info().map_err(|err| anyhow::anyhow!("{err}"))?;
        let (sequence, stored) = (info.stream_sequence, info.published);
        pending = info.pending;
        if filter.until.is_some_and(|until| stored >= until) {
            break;
        }
        if let Ok(entry) = serde_json::from_slice::<Entry>(&message.payload) {
            let wanted = filter
                .target
                .as_ref()
                .is_none_or(|target| entry.target.contains(target.as_str()))
                && filter
                    .who
                    .as_ref()
                    .is_none_or(|who| entry.user == *who || entry.actor == *who);
            if wanted {
                found.push(Stored { sequence, entry });
            }
        }
        if pending == 0 {
            break;
        }
    }
    if let Some(last) = filter.last {
        let skip = found.len().saturating_sub(last);
        found.drain(..skip);
    }
    Ok(found)
}
