//! The dirty bitmaps qsnap keeps for incremental backups (named `qsnap-<backup id>`),
//! and how they follow a disk through `snapshot` and `commit`. A generation's changes
//! are the union of the same-named bitmaps down the disk's chain:
//! * a snapshot adds each recording bitmap of the active node, empty, to the new
//!   overlay before the freeze (nothing writes to the overlay until the switch, and it
//!   records every write from the switch on); the old node keeps its own, read-only;
//! * a backup merges the lower nodes' copies into the active node's before the freeze
//!   ([`merge_up_actions`]): the old nodes are read-only, so the union is final;
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

/// Adds each disk's carried bitmaps, empty, to its new overlay (prepared, not yet
/// switched to). Rolled back with the overlay nodes.
pub(crate) async fn add_to_overlays(
    qmp: &qmp::Client,
    disks: &[(String, Vec<Carried>)],
) -> qmp::Result<()> {
    let actions: Vec<_> = disks
        .iter()
        .flat_map(|(overlay, bitmaps)| {
            bitmaps.iter().map(move |b| {
                TransactionAction::BlockDirtyBitmapAdd(BlockDirtyBitmapAdd {
                    node: overlay.clone(),
                    name: b.name.clone(),
                    granularity: Some(b.granularity),
                    persistent: true,
                })
            })
        })
        .collect();
    if !actions.is_empty() {
        qmp.execute(&Transaction { actions }).await?;
    }
    Ok(())
}

/// The copies of bitmap `name` on the nodes below `top` in its backing chain (by image
/// file; the other disks' nodes carry the same generation's name but not its changes).
pub(crate) fn lower_copies<'a>(
    nodes: &'a [BlockDeviceInfo],
    top: &BlockDeviceInfo,
    name: &str,
) -> Vec<(&'a str, &'a DirtyBitmapInfo)> {
    let below: Vec<&str> = top
        .image
        .chain()
        .skip(1)
        .map(|i| i.filename.as_str())
        .collect();
    nodes
        .iter()
        .filter_map(|n| Some((n.node_name.as_deref()?, n)))
        .filter(|(node, n)| {
            Some(*node) != top.node_name.as_deref() && below.contains(&n.image.filename.as_str())
        })
        .flat_map(|(node, n)| {
            n.dirty_bitmaps
                .iter()
                .filter(|b| b.name() == name)
                .map(move |b| (node, b))
        })
        .collect()
}

/// Merges the lower copies of `name` into `top`'s: `top`'s then covers every change
/// since the generation began (the lower nodes are read-only: the union is final).
pub(crate) fn merge_up_actions(
    nodes: &[BlockDeviceInfo],
    top: &BlockDeviceInfo,
    name: &str,
) -> Option<TransactionAction> {
    let target = top.node_name.clone()?;
    let lower: Vec<BitmapRef> = lower_copies(nodes, top, name)
        .into_iter()
        .map(|(node, _)| BitmapRef::Node {
            node: node.to_owned(),
            name: name.to_owned(),
        })
        .collect();
    (!lower.is_empty()).then(|| {
        TransactionAction::BlockDirtyBitmapMerge(BlockDirtyBitmapMerge {
            node: target,
            target: name.to_owned(),
            bitmaps: lower,
        })
    })
}

/// The actions that carry `top`'s bitmaps down into `base` during a commit.
///
/// `between` are the nodes between top and base (a commit of several layers): their
/// copies are merged as well — they hold the writes made while each was on top.
pub(crate) fn down_actions(
    top: &[DirtyBitmapInfo],
    between: &[(&str, &[DirtyBitmapInfo])],
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
                bitmaps: std::iter::once(top_node)
                    .chain(
                        between
                            .iter()
                            .filter(|(_, bs)| bs.iter().any(|x| x.name() == b.name))
                            .map(|(n, _)| *n),
                    )
                    .map(|node| BitmapRef::Node {
                        node: node.to_owned(),
                        name: b.name.clone(),
                    })
                    .collect(),
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
    let node = |name: &str| nodes.iter().find(|n| n.node_name.as_deref() == Some(name));
    let of = |name: &str| {
        node(name)
            .map(|n| n.dirty_bitmaps.clone())
            .unwrap_or_default()
    };
    // The layers strictly between top and base, by image file, top down.
    let base_file = node(base).map(|n| n.image.filename.clone());
    let mut between: Vec<(&str, &[DirtyBitmapInfo])> = Vec::new();
    if let Some(t) = node(top) {
        for img in t.image.chain().skip(1) {
            if Some(&img.filename) == base_file.as_ref() {
                break;
            }
            let layer = nodes
                .iter()
                .find(|n| n.image.filename == img.filename && !n.dirty_bitmaps.is_empty());
            if let Some(n) = layer
                && let Some(name) = n.node_name.as_deref()
            {
                between.push((name, &n.dirty_bitmaps));
            }
        }
    }
    let actions = down_actions(&of(top), &between, &of(base), top, base);
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
        assert_eq!(got[0].granularity, 65536);
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
        let mid = [bitmap("qsnap-new", false, false)];
        let between: [(&str, &[DirtyBitmapInfo]); 1] = [("mid", &mid)];
        let actions = down_actions(&top, &between, &base, "ov", "d0");
        let v = serde_json::to_value(&actions).unwrap();
        assert_eq!(
            v[1]["data"]["bitmaps"][1]["node"], "mid",
            "the layer between merged too"
        );
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
