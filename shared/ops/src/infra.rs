//! Provisioning from a console: the plan of the infra definitions as data, and an apply that records itself in the
//! audit trail. The same `provision` calls as `jetfn infra plan|apply` (load, plan, apply the plan), so a console
//! admin and a terminal see and make the same changes.

use std::path::Path;

use anyhow::Context as _;
use async_nats::jetstream;
use provision::{Action as PlanAction, Plan};
use serde::Serialize;

use crate::audit::{Action, Auditor, Outcome};

/// One object of a plan, as `--json` or an API prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    /// `stream`, `kv`, `consumer` or `schedule`.
    pub kind: String,
    /// Its name; a consumer's is `<stream>/<consumer>`.
    pub name: String,
    /// `create`, `update`, `unchanged` or `impossible` (the server would refuse it: recreate it or revert the file).
    pub action: &'static str,
    /// The fields that differ (update, impossible).
    pub fields: Vec<Field>,
}

/// One field that differs.
#[derive(Debug, Clone, Serialize)]
pub struct Field {
    /// The key, as the file spells it.
    pub field: String,
    /// What the server has.
    pub old: String,
    /// What the file says.
    pub new: String,
    /// Why the server would refuse it, if it would.
    pub refused: Option<&'static str>,
}

/// A plan as data: every object, and the counts.
#[derive(Debug, Clone, Serialize)]
pub struct PlanView {
    /// The definitions folder.
    pub dir: String,
    /// Every object in apply order (streams, buckets, consumers, schedules).
    pub changes: Vec<Change>,
    /// `2 to create, 1 to update, 20 unchanged, 0 impossible`.
    pub summary: String,
    /// Whether apply would refuse (a change the server cannot make), applying nothing.
    pub refused: bool,
}

impl PlanView {
    /// The view of `plan`, made from the definitions in `dir`.
    pub fn of(dir: &Path, plan: &Plan) -> Self {
        let changes = plan
            .changes
            .iter()
            .map(|change| {
                let (action, fields) = match &change.action {
                    PlanAction::Create => ("create", &[][..]),
                    PlanAction::Update(fields) => ("update", &fields[..]),
                    PlanAction::Unchanged => ("unchanged", &[][..]),
                    PlanAction::Impossible(fields) => ("impossible", &fields[..]),
                };
                Change {
                    kind: change.kind.to_string(),
                    name: change.name.clone(),
                    action,
                    fields: fields
                        .iter()
                        .map(|field| Field {
                            field: field.field.clone(),
                            old: field.old.clone(),
                            new: field.new.clone(),
                            refused: field.refused,
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            dir: dir.display().to_string(),
            changes,
            summary: plan.summary(),
            refused: !plan.impossible().is_empty(),
        }
    }
}

/// The definitions in `dir` and what applying them would change on the server; changes nothing.
///
/// # Errors
/// The files do not load (the error names the file), or the server cannot be asked.
pub async fn plan(
    js: &jetstream::Context,
    dir: &Path,
) -> anyhow::Result<(provision::Definitions, Plan)> {
    let definitions = provision::Definitions::load(dir)
        .with_context(|| format!("loading the infra definitions in {}", dir.display()))?;
    let plan = definitions.plan(js).await?;
    Ok((definitions, plan))
}

/// Plans and applies the definitions in `dir` (nothing when the server would refuse a change), and records the
/// result in the audit trail as `infra-apply` on `dir`, with the same detail as `jetfn infra apply`. Returns the
/// plan it applied and the counts line.
///
/// # Errors
/// The files do not load, the server cannot be asked, a change the server cannot make (nothing applied), or the
/// first object the server refuses.
pub async fn apply(
    js: &jetstream::Context,
    auditor: &Auditor,
    dir: &Path,
) -> anyhow::Result<(PlanView, String)> {
    let (definitions, plan) = plan(js, dir).await?;
    let counts = apply_planned(
        js,
        auditor,
        &dir.display().to_string(),
        &definitions,
        &plan,
        |_| {},
    )
    .await?;
    Ok((PlanView::of(dir, &plan), counts))
}

/// Applies `plan`, made from `definitions`, calling `applied` after each change, and records the result in the
/// audit trail as `infra-apply` on `target`: the one apply-and-record that the console ([`apply`]) and
/// `jetfn infra apply` (which may first change the definitions' replicas) share, so both leave the same entry.
/// Returns the counts line.
///
/// # Errors
/// A change the server cannot make (nothing applied), or the first object the server refuses.
pub async fn apply_planned(
    js: &jetstream::Context,
    auditor: &Auditor,
    target: &str,
    definitions: &provision::Definitions,
    plan: &Plan,
    applied: impl FnMut(&provision::Change),
) -> anyhow::Result<String> {
    let result = definitions.apply_plan(js, plan, applied).await;
    let [created, updated, unchanged, impossible] = plan.counts();
    let counts = format!("{created} created, {updated} updated, {unchanged} unchanged");
    match result {
        Ok(()) => {
            auditor
                .record_reported(Action::InfraApply, target, Outcome::Ok, &counts)
                .await;
            Ok(counts)
        }
        Err(err) => {
            auditor
                .record_reported(
                    Action::InfraApply,
                    target,
                    Outcome::Error,
                    &format!(
                        "{impossible} change(s) the server cannot make, or a refusal: {err:#}"
                    ),
                )
                .await;
            Err(err)
        }
    }
}
