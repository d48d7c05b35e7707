//! `transaction` (`qapi/transaction.json`, `blockdev.c`): every action is checked and
//! applied in order to a copy of the graph and the jobs, which replaces them only when
//! all succeed. The same actions run alone as commands (one-action transactions).

use super::args::{Args, QmpResult, generic};
use super::backup::BackupArgs;
use super::jobs::Events;
use super::qmp_bitmaps::BitmapAction;
use super::qmp_commands::MonState;
use super::qmp_snapshot::{Snapshot, SnapshotSync};
use serde_json::{Value, json};

/// The action types QEMU 10.0 knows; the simulator models all but two.
const KNOWN: &[&str] = &[
    "abort",
    "block-dirty-bitmap-add",
    "block-dirty-bitmap-remove",
    "block-dirty-bitmap-clear",
    "block-dirty-bitmap-enable",
    "block-dirty-bitmap-disable",
    "block-dirty-bitmap-merge",
    "blockdev-backup",
    "blockdev-snapshot",
    "blockdev-snapshot-sync",
    "blockdev-snapshot-internal-sync",
    "drive-backup",
];

/// One parsed action.
#[derive(Debug, Clone)]
pub(super) enum Action {
    Snapshot(Snapshot),
    SnapshotSync(SnapshotSync),
    Bitmap(BitmapAction),
    Backup(BackupArgs),
    Abort,
}

impl Action {
    /// Reads the arguments of `kind`; `None` when it is not modelled.
    fn parse(kind: &str, a: Args) -> Option<QmpResult<Action>> {
        Some(match kind {
            "blockdev-snapshot" => Snapshot::parse(a).map(Action::Snapshot),
            "blockdev-snapshot-sync" => SnapshotSync::parse(a).map(Action::SnapshotSync),
            "blockdev-backup" => BackupArgs::parse(a).map(Action::Backup),
            "abort" => a.finish().map(|()| Action::Abort),
            _ => return BitmapAction::parse(kind, a).map(|r| r.map(Action::Bitmap)),
        })
    }
}

/// The `transaction` command.
pub(super) fn transaction(st: &mut MonState, mut a: Args, ev: &mut Events) -> QmpResult {
    let list = a.list("actions")?;
    let grouped = grouped(a.raw("properties"))?;
    a.finish()?;
    let mut actions = Vec::new();
    for (i, v) in list.into_iter().enumerate() {
        let mut act = Args::new(Some(v), &format!("actions[{i}]"))?;
        let kind = act.str("type")?;
        if !KNOWN.contains(&kind.as_str()) {
            return Err(generic(format!(
                "Parameter 'actions[{i}].type' does not accept value '{kind}'"
            )));
        }
        let data = act.obj("data")?;
        act.finish()?;
        let action = Action::parse(&kind, data).unwrap_or_else(|| {
            Err(generic(format!(
                "sim: transaction action '{kind}' is not modelled"
            )))
        })?;
        actions.push((kind, action));
    }
    if let Some((kind, _)) = actions
        .iter()
        .find(|(k, _)| grouped && k != "blockdev-backup")
    {
        return Err(generic(format!(
            "Action '{kind}' does not support transaction property completion-mode = grouped"
        )));
    }
    run(st, actions.into_iter().map(|a| a.1).collect(), grouped, ev)
}

/// Runs a transaction-able command alone; `None` when `name` is none.
pub(super) fn single(st: &mut MonState, name: &str, a: Args, ev: &mut Events) -> Option<QmpResult> {
    if name == "abort" {
        return None;
    }
    let action = Action::parse(name, a)?;
    Some(action.and_then(|action| run(st, vec![action], false, ev)))
}

/// `properties.completion-mode`: true for `grouped`.
fn grouped(properties: Option<Value>) -> QmpResult<bool> {
    let mut p = Args::new(properties, "properties")?;
    let mode = p.opt_str("completion-mode")?;
    p.finish()?;
    match mode.as_deref() {
        None | Some("individual") => Ok(false),
        Some("grouped") => Ok(true),
        Some(other) => Err(generic(format!(
            "Parameter 'properties.completion-mode' does not accept value '{other}'"
        ))),
    }
}

/// All or nothing: jobs start (and their events go out) only when every action
/// succeeded; a bitmap removed by an action goes only then too. Files written on the
/// way stay, as on a real QEMU.
fn run(st: &mut MonState, actions: Vec<Action>, grouped: bool, ev: &mut Events) -> QmpResult {
    let mut graph = st.graph.clone();
    let mut jobs = st.jobs.clone();
    let mut events = Vec::new();
    let group = grouped.then(|| jobs.new_group());
    let mut removals = Vec::new();
    for action in &actions {
        match action {
            Action::Snapshot(s) => s.apply(&mut graph, &jobs)?,
            Action::SnapshotSync(s) => s.apply(&mut graph, &jobs, &mut st.files)?,
            Action::Bitmap(b) => removals.extend(b.apply(&mut graph)?),
            Action::Backup(b) => b.start(&mut graph, &mut jobs, group, &mut events)?,
            Action::Abort => return Err(generic("Transaction aborted using Abort action")),
        }
    }
    for (node, name) in removals {
        graph.drop_bitmap(&node, &name);
    }
    st.graph = graph;
    st.jobs = jobs;
    ev.extend(events);
    Ok(json!({}))
}
