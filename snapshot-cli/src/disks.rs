//! Naming disks: a disk is chosen by its active node-name, qdev id, legacy drive name,
//! or any node lower in its backing chain; its chain is read from `query-block`. One
//! place for what `snapshot`, `commit` and the reports call a disk.

use crate::error::{Error, Result};
use qmp::commands::{BlockDeviceInfo, BlockInfo, QueryNamedBlockNodes};

/// Every node qsnap adds is named `qsnap-<tag>-<disk>` (and `...-f` for its file).
pub(crate) const NODE_PREFIX: &str = "qsnap-";

/// Whether qsnap created the node (by its name).
pub(crate) fn is_qsnap_node(name: &str) -> bool {
    name.starts_with(NODE_PREFIX)
}

/// Lets a node lower in a disk's chain (`disk0` after a snapshot) name the disk.
pub(crate) async fn resolve_names(
    qmp: &qmp::Client,
    blocks: &[qmp::commands::BlockInfo],
    wanted: &[String],
) -> Result<Vec<String>> {
    if !needs_resolution(blocks, wanted) {
        return Ok(wanted.to_vec());
    }
    let nodes = qmp
        .execute(&qmp::commands::QueryNamedBlockNodes { flat: Some(true) })
        .await
        .map_err(Error::qmp("query-named-block-nodes"))?;
    Ok(resolve_chain_names(blocks, &nodes, wanted))
}

/// Rewrites names that are not a disk's active node, qdev id or drive name but a node
/// lower in some disk's backing chain (`disk0` after a snapshot) to that disk's active
/// node. `nodes` is `query-named-block-nodes`; names found nowhere stay as they are.
pub(crate) fn resolve_chain_names(
    blocks: &[BlockInfo],
    nodes: &[BlockDeviceInfo],
    wanted: &[String],
) -> Vec<String> {
    let candidates: Vec<&BlockInfo> = blocks.iter().filter(|b| b.inserted.is_some()).collect();
    wanted
        .iter()
        .map(|want| {
            if candidates.iter().any(|b| matches(b, want)) {
                return want.clone();
            }
            let file = nodes
                .iter()
                .find(|n| n.node_name.as_deref() == Some(want.as_str()))
                .map(|n| n.image.filename.as_str());
            let owner = file.and_then(|file| {
                candidates.iter().find_map(|b| {
                    let inserted = b.inserted.as_ref()?;
                    inserted
                        .image
                        .chain()
                        .any(|img| img.filename == file)
                        .then(|| inserted.node_name.clone())?
                })
            });
            owner.unwrap_or_else(|| want.clone())
        })
        .collect()
}

/// True when some wanted name is not directly a disk (resolution needs the node list).
pub(crate) fn needs_resolution(blocks: &[BlockInfo], wanted: &[String]) -> bool {
    wanted
        .iter()
        .any(|w| !blocks.iter().any(|b| b.inserted.is_some() && matches(b, w)))
}

/// The disk named `want` (active node-name, qdev id, or legacy drive name).
pub(crate) fn find<'a>(candidates: &[&'a BlockInfo], want: &str) -> Result<&'a BlockInfo> {
    candidates
        .iter()
        .copied()
        .find(|b| matches(b, want))
        .ok_or_else(|| not_found(want, candidates))
}

fn matches(block: &BlockInfo, want: &str) -> bool {
    let node = block.inserted.as_ref().and_then(|i| i.node_name.as_deref());
    node == Some(want)
        || block.qdev_id() == Some(want)
        || (!block.device.is_empty() && block.device == want)
}

fn not_found(want: &str, blocks: &[&BlockInfo]) -> Error {
    let available = blocks
        .iter()
        .map(|b| {
            let node = b.inserted.as_ref().and_then(|i| i.node_name.clone());
            match (node, b.qdev_id()) {
                (Some(n), Some(id)) => format!("{n} (device {id})"),
                (Some(n), None) => n,
                (None, Some(id)) => format!("device {id}"),
                (None, None) => b.device.clone(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    Error::DiskNotFound {
        wanted: want.to_owned(),
        available,
    }
}

pub(crate) fn find_disk<'a>(blocks: &'a [BlockInfo], want: &str) -> Result<&'a BlockInfo> {
    let candidates: Vec<&BlockInfo> = blocks.iter().filter(|b| b.inserted.is_some()).collect();
    find(&candidates, want)
}

pub(crate) fn active_node(block: &BlockInfo) -> Result<String> {
    block
        .inserted
        .as_ref()
        .and_then(|i| i.node_name.clone())
        .ok_or_else(|| Error::Invalid("the disk has no node-name".into()))
}

/// The disk's chain of image files, active first.
pub(crate) fn chain(block: &BlockInfo) -> Vec<String> {
    block
        .inserted
        .as_ref()
        .map(|i| i.image.chain().map(|img| img.filename.clone()).collect())
        .unwrap_or_default()
}

/// The format node backing `top`, found by its image file name.
pub(crate) async fn backing_node(qmp: &qmp::Client, top: &str) -> Result<String> {
    let nodes = qmp
        .execute(&QueryNamedBlockNodes { flat: Some(true) })
        .await
        .map_err(Error::qmp("query-named-block-nodes"))?;
    let find = |name: &str| nodes.iter().find(|n| n.node_name.as_deref() == Some(name));
    let top_info = find(top).ok_or_else(|| Error::Invalid(format!("no node {top}")))?;
    let backing = top_info.backing_file.clone().ok_or_else(|| {
        Error::Invalid(format!(
            "{top} has no backing image: there is nothing to commit"
        ))
    })?;
    // A raw block device has no format node: its protocol node is the image.
    nodes
        .iter()
        .filter(|n| n.file == backing && n.node_name.is_some())
        .max_by_key(|n| is_format_node(n))
        .and_then(|n| n.node_name.clone())
        .ok_or_else(|| Error::Invalid(format!("no node holds {top}'s backing image {backing}")))
}

fn is_format_node(n: &BlockDeviceInfo) -> bool {
    !matches!(n.drv.as_str(), "file" | "host_device" | "nbd" | "throttle")
}
