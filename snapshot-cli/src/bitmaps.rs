//! The dirty bitmaps qsnap keeps for incremental backups (named `qsnap-<backup id>`),
//! and how they follow a disk through `snapshot` and `commit`:
//! * a snapshot's transaction adds each recording bitmap of the active node to the
//!   new overlay and merges the old one into it, so the overlay's bitmap covers every
//!   change since the backup (the old node is read-only from then on);
//! * a commit carries the top's bitmaps down into the base (added where missing,
//!   merged where present) and drops the base's bitmaps the top no longer has (a
//!   backup retired them while the overlay was on top). QEMU's commit writes dirty the
//!   base's bitmaps as well, so a write racing the pivot is recorded either way.

use qmp::commands::{
    BitmapRef, BlockDeviceInfo, BlockDirtyBitmapAdd, BlockDirtyBitmapMerge, BlockDirtyBitmapRemove,
    DirtyBitmapInfo, QueryNamedBlockNodes, Transaction, TransactionAction,
};
use tracing::{info, warn};

/// Every bitmap qsnap adds is named `qsnap-<backup id>`.
pub(crate) const BITMAP_PREFIX: &str = "qsnap-";

/// A bitmap qsnap carries: its name and granularity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Carried {
    pub(crate) name: String,
    pub(crate) granularity: u64,
}

/// qsnap's usable bitmaps on a node: persistent, recording, consistent.
pub(crate) fn carried(bitmaps: &[DirtyBitmapInfo]) -> Vec<Carried> {
    bitmaps
        .iter()
        .filter(|b| b.name().starts_with(BITMAP_PREFIX))
        .filter(|b| b.persistent && b.recording && !b.inconsistent)
        .map(|b| Carried {
            name: b.name().to_owned(),
            granularity: b.granularity,
        })
        .collect()
}

/// Transaction actions that give `overlay` the bitmaps of `node`, each covering what
/// `node`'s covered (merged in) and recording from the switch on.
pub(crate) fn onto_overlay(
    node: &str,
    overlay: &str,
    bitmaps: &[Carried],
) -> Vec<TransactionAction> {
    bitmaps
        .iter()
        .flat_map(|b| {
            [
                TransactionAction::BlockDirtyBitmapAdd(BlockDirtyBitmapAdd {
                    node: overlay.to_owned(),
                    name: b.name.clone(),
                    granularity: Some(b.granularity),
                    persistent: true,
                }),
                TransactionAction::BlockDirtyBitmapMerge(BlockDirtyBitmapMerge {
                    node: overlay.to_owned(),
                    target: b.name.clone(),
                    bitmaps: vec![BitmapRef::Node {
                        node: node.to_owned(),
                        name: b.name.clone(),
                    }],
                }),
            ]
        })
        .collect()
}

/// The actions that carry `top`'s bitmaps down into `base` during a commit.
pub(crate) fn down_actions(
    top: &[DirtyBitmapInfo],
    base: &[DirtyBitmapInfo],
    top_node: &str,
    base_node: &str,
) -> Vec<TransactionAction> {
    let top = carried(top);
    let base_names: Vec<&str> = base.iter().map(DirtyBitmapInfo::name).collect();
    let mut actions = Vec::new();
    for b in &top {
        if !base_names.contains(&b.name.as_str()) {
            actions.push(TransactionAction::BlockDirtyBitmapAdd(
                BlockDirtyBitmapAdd {
                    node: base_node.to_owned(),
                    name: b.name.clone(),
                    granularity: Some(b.granularity),
                    persistent: true,
                },
            ));
        }
        actions.push(TransactionAction::BlockDirtyBitmapMerge(
            BlockDirtyBitmapMerge {
                node: base_node.to_owned(),
                target: b.name.clone(),
                bitmaps: vec![BitmapRef::Node {
                    node: top_node.to_owned(),
                    name: b.name.clone(),
                }],
            },
        ));
    }
    for b in base {
        let stale = b.name().starts_with(BITMAP_PREFIX)
            && !b.busy
            && !top.iter().any(|t| t.name == b.name());
        if stale {
            actions.push(TransactionAction::BlockDirtyBitmapRemove(
                BlockDirtyBitmapRemove {
                    node: base_node.to_owned(),
                    name: b.name().to_owned(),
                },
            ));
        }
    }
    actions
}

/// Carries `top`'s bitmaps down into `base` (a commit has started, so the base is
/// writable). A failure is logged, never fatal: the next backup then finds no bitmap
/// it can trust and is made full.
pub(crate) async fn carry_down(qmp: &qmp::Client, top: &str, base: &str) {
    let nodes = match qmp
        .execute(&QueryNamedBlockNodes { flat: Some(true) })
        .await
    {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "cannot read the bitmaps to carry down; the next backup will be full");
            return;
        }
    };
    let of = |name: &str| -> Vec<DirtyBitmapInfo> {
        nodes
            .iter()
            .find(|n: &&BlockDeviceInfo| n.node_name.as_deref() == Some(name))
            .map(|n| n.dirty_bitmaps.clone())
            .unwrap_or_default()
    };
    let actions = down_actions(&of(top), &of(base), top, base);
    if actions.is_empty() {
        return;
    }
    match qmp.execute(&Transaction { actions }).await {
        Ok(_) => info!(top, base, "bitmaps carried down"),
        Err(e) => warn!(error = %e, "bitmaps not carried down; the next backup will be full"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap(name: &str, recording: bool, busy: bool) -> DirtyBitmapInfo {
        DirtyBitmapInfo {
            name: Some(name.into()),
            count: 0,
            granularity: 65536,
            recording,
            busy,
            persistent: true,
            inconsistent: !recording,
        }
    }

    #[test]
    fn only_qsnaps_consistent_persistent_bitmaps_are_carried() {
        let got = carried(&[
            bitmap("qsnap-a", true, false),
            bitmap("qsnap-b", false, false),
            bitmap("theirs", true, false),
        ]);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].name, "qsnap-a");
        let actions = onto_overlay("d0", "ov", &got);
        let v = serde_json::to_value(&actions).unwrap();
        assert_eq!(v[0]["type"], "block-dirty-bitmap-add");
        assert_eq!(v[0]["data"]["node"], "ov");
        assert_eq!(v[1]["type"], "block-dirty-bitmap-merge");
        assert_eq!(v[1]["data"]["bitmaps"][0]["node"], "d0");
    }

    #[test]
    fn commit_adds_missing_merges_present_and_drops_retired_bitmaps() {
        let top = [
            bitmap("qsnap-new", true, false),
            bitmap("qsnap-kept", true, false),
        ];
        let base = [
            bitmap("qsnap-kept", true, false),
            bitmap("qsnap-retired", true, false),
            bitmap("qsnap-busy", true, true),
            bitmap("theirs", true, false),
        ];
        let v = serde_json::to_value(down_actions(&top, &base, "ov", "d0")).unwrap();
        let kinds: Vec<(String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let name = a["data"]["name"].as_str().or(a["data"]["target"].as_str());
                (a["type"].as_str().unwrap().into(), name.unwrap().into())
            })
            .collect();
        let k = |t: &str, n: &str| (t.to_owned(), n.to_owned());
        assert_eq!(
            kinds,
            [
                k("block-dirty-bitmap-add", "qsnap-new"),
                k("block-dirty-bitmap-merge", "qsnap-new"),
                k("block-dirty-bitmap-merge", "qsnap-kept"),
                k("block-dirty-bitmap-remove", "qsnap-retired"),
            ]
        );
    }
}
