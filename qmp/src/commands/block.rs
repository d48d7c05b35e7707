//! Block-layer commands (`qapi/block-core.json`, `qapi/transaction.json`).

use super::command;
use crate::wire::Empty;
use serde::{Deserialize, Serialize, Serializer};

/// `query-block`: the guest's block devices.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueryBlock;
command!(QueryBlock, "query-block", Vec<BlockInfo>);

/// One block device, from `query-block`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct BlockInfo {
    /// The legacy drive name; empty for devices created with `-blockdev`.
    pub device: String,
    /// The QOM path of the guest device, e.g. `/machine/peripheral/vblk0/virtio-backend`.
    #[serde(default)]
    pub qdev: Option<String>,
    /// Whether the medium can be removed.
    pub removable: bool,
    /// The inserted medium, absent for an empty drive.
    #[serde(default)]
    pub inserted: Option<BlockDeviceInfo>,
}

impl BlockInfo {
    /// The qdev id (`vblk0`) taken from [`BlockInfo::qdev`]'s
    /// `/machine/peripheral/<id>/...` path, if the device has a user-given id.
    pub fn qdev_id(&self) -> Option<&str> {
        let rest = self.qdev.as_deref()?.strip_prefix("/machine/peripheral/")?;
        rest.split('/').next().filter(|id| !id.is_empty())
    }
}

/// A block node as seen from a device (`query-block`) or listed by
/// `query-named-block-nodes`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct BlockDeviceInfo {
    /// The image filename of this node.
    pub file: String,
    /// The node name.
    #[serde(rename = "node-name", default)]
    pub node_name: Option<String>,
    /// Read-only.
    pub ro: bool,
    /// The driver, e.g. `qcow2`, `file`.
    pub drv: String,
    /// The backing file name, if any.
    #[serde(default)]
    pub backing_file: Option<String>,
    /// Length of the backing chain below this node.
    #[serde(default)]
    pub backing_file_depth: u64,
    /// Whether the node is active (not inactivated for migration).
    #[serde(default)]
    pub active: Option<bool>,
    /// The image and its backing chain.
    pub image: ImageInfo,
    /// The node's dirty bitmaps.
    #[serde(rename = "dirty-bitmaps", default)]
    pub dirty_bitmaps: Vec<super::DirtyBitmapInfo>,
}

/// An image and, recursively, its backing image.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ImageInfo {
    /// The file name.
    pub filename: String,
    /// The format, e.g. `qcow2`.
    pub format: String,
    /// The guest-visible size in bytes.
    pub virtual_size: u64,
    /// Bytes allocated on the host.
    #[serde(default)]
    pub actual_size: Option<u64>,
    /// The cluster size, for formats that have one.
    #[serde(default)]
    pub cluster_size: Option<u64>,
    /// The backing file name as recorded in the image.
    #[serde(default)]
    pub backing_filename: Option<String>,
    /// The backing file name resolved to a full path.
    #[serde(default)]
    pub full_backing_filename: Option<String>,
    /// The backing file's format as recorded in the image.
    #[serde(default)]
    pub backing_filename_format: Option<String>,
    /// The backing image.
    #[serde(default)]
    pub backing_image: Option<Box<ImageInfo>>,
}

impl ImageInfo {
    /// This image followed by its backing images, top first.
    pub fn chain(&self) -> impl Iterator<Item = &ImageInfo> {
        std::iter::successors(Some(self), |i| i.backing_image.as_deref())
    }
}

/// `query-named-block-nodes`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueryNamedBlockNodes {
    /// Omit the nested backing images (faster, smaller).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flat: Option<bool>,
}
command!(
    QueryNamedBlockNodes,
    "query-named-block-nodes",
    Vec<BlockDeviceInfo>
);

/// A `backing` reference that may be an explicit JSON `null` ("no backing file; do
/// not open the one recorded in the image").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackingRef {
    /// Use the node with this name.
    Node(String),
    /// Open no backing file (serialized as `null`).
    Null,
}

impl Serialize for BackingRef {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Node(name) => s.serialize_str(name),
            Self::Null => s.serialize_unit(),
        }
    }
}

/// Driver-specific options for [`BlockdevAdd`]; the drivers qsnap uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "driver", rename_all = "lowercase")]
pub enum BlockdevOptions {
    /// A host file.
    File {
        /// Its path.
        filename: String,
    },
    /// A qcow2 image on top of another node.
    Qcow2 {
        /// The node holding the image data (usually a `file` node).
        file: String,
        /// The backing node; `Some(BackingRef::Null)` opens none.
        #[serde(skip_serializing_if = "Option::is_none")]
        backing: Option<BackingRef>,
    },
}

/// `blockdev-add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockdevAdd {
    /// The new node's name.
    #[serde(rename = "node-name")]
    pub node_name: String,
    /// Driver and its options.
    #[serde(flatten)]
    pub options: BlockdevOptions,
}
command!(BlockdevAdd, "blockdev-add", Empty);

/// `blockdev-del`: removes a node added with `blockdev-add` that nothing uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockdevDel {
    /// The node name.
    #[serde(rename = "node-name")]
    pub node_name: String,
}
command!(BlockdevDel, "blockdev-del", Empty);

/// What [`BlockdevCreate`] creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "driver",
    rename_all = "lowercase",
    rename_all_fields = "kebab-case"
)]
pub enum BlockdevCreateOptions {
    /// A host file. **QEMU truncates an existing file** without complaint: create the
    /// file yourself with `O_EXCL` first.
    File {
        /// Its path.
        filename: String,
        /// Its size (0 for an image to format).
        size: u64,
    },
    /// A qcow2 image on an existing node.
    Qcow2 {
        /// The node to format.
        file: String,
        /// Guest-visible size. A size smaller than the backing disk is accepted and
        /// shrinks the disk: use the backing node's `virtual-size`.
        size: u64,
        /// Backing file name to record in the header.
        #[serde(skip_serializing_if = "Option::is_none")]
        backing_file: Option<String>,
        /// Backing file format to record.
        #[serde(skip_serializing_if = "Option::is_none")]
        backing_fmt: Option<String>,
        /// Cluster size in bytes.
        #[serde(skip_serializing_if = "Option::is_none")]
        cluster_size: Option<u64>,
    },
}

/// `blockdev-create`: starts a `create` job. Follow it with `query-jobs` and
/// [`JobDismiss`](super::JobDismiss).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockdevCreate {
    /// The job id.
    #[serde(rename = "job-id")]
    pub job_id: String,
    /// What to create.
    pub options: BlockdevCreateOptions,
}
command!(BlockdevCreate, "blockdev-create", Empty);

/// `blockdev-snapshot`: puts an already-added overlay node on top of `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockdevSnapshot {
    /// The active node to snapshot.
    pub node: String,
    /// The overlay node (added with `"backing": null`).
    pub overlay: String,
}
command!(BlockdevSnapshot, "blockdev-snapshot", Empty);

/// `blockdev-snapshot-sync`: creates an overlay file and switches the device to it.
/// **Overwrites an existing `snapshot-file`.**
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevSnapshotSync {
    /// Legacy device name (use `node_name` with `-blockdev`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// The active node to snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The overlay file to create.
    pub snapshot_file: String,
    /// Node name for the overlay.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot_node_name: Option<String>,
    /// Overlay format (default `qcow2`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}
command!(BlockdevSnapshotSync, "blockdev-snapshot-sync", Empty);

/// One action of a [`Transaction`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "data", rename_all = "kebab-case")]
pub enum TransactionAction {
    /// A `blockdev-snapshot`.
    BlockdevSnapshot(BlockdevSnapshot),
    /// A `blockdev-snapshot-sync`.
    BlockdevSnapshotSync(BlockdevSnapshotSync),
    /// Starts a backup job (its instant is the transaction's).
    BlockdevBackup(super::BlockdevBackup),
    /// Adds a dirty bitmap.
    BlockDirtyBitmapAdd(super::BlockDirtyBitmapAdd),
    /// Removes a dirty bitmap.
    BlockDirtyBitmapRemove(super::BlockDirtyBitmapRemove),
    /// Merges dirty bitmaps.
    BlockDirtyBitmapMerge(super::BlockDirtyBitmapMerge),
}

/// `transaction`: all actions take effect at one instant, or none does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transaction {
    /// The actions, applied in order.
    pub actions: Vec<TransactionAction>,
}
command!(Transaction, "transaction", Empty);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn blockdev_add_qcow2_sends_explicit_null_backing() {
        let cmd = BlockdevAdd {
            node_name: "ov0".into(),
            options: BlockdevOptions::Qcow2 {
                file: "ovf0".into(),
                backing: Some(BackingRef::Null),
            },
        };
        assert_eq!(
            serde_json::to_value(&cmd).unwrap(),
            json!({"node-name": "ov0", "driver": "qcow2", "file": "ovf0", "backing": null})
        );
    }

    #[test]
    fn blockdev_create_qcow2_uses_kebab_case() {
        let cmd = BlockdevCreate {
            job_id: "j".into(),
            options: BlockdevCreateOptions::Qcow2 {
                file: "f".into(),
                size: 1,
                backing_file: Some("/b".into()),
                backing_fmt: Some("qcow2".into()),
                cluster_size: Some(65536),
            },
        };
        assert_eq!(
            serde_json::to_value(&cmd).unwrap(),
            json!({"job-id": "j", "options": {"driver": "qcow2", "file": "f", "size": 1,
                "backing-file": "/b", "backing-fmt": "qcow2", "cluster-size": 65536}})
        );
    }

    #[test]
    fn transaction_action_is_type_and_data() {
        let cmd = Transaction {
            actions: vec![TransactionAction::BlockdevSnapshot(BlockdevSnapshot {
                node: "disk0".into(),
                overlay: "ov0".into(),
            })],
        };
        assert_eq!(
            serde_json::to_value(&cmd).unwrap(),
            json!({"actions": [{"type": "blockdev-snapshot",
                "data": {"node": "disk0", "overlay": "ov0"}}]})
        );
    }

    #[test]
    fn query_block_reply_from_qemu_10_parses() {
        let reply = json!([{"io-status": "ok", "device": "", "locked": false, "removable": false,
            "inserted": {"node-name": "snap1", "backing_file_depth": 1, "drv": "qcow2", "ro": false,
              "backing_file": "/tmp/p/d0.qcow2", "encrypted": false, "file": "/tmp/p/s1.qcow2",
              "active": true,
              "image": {"virtual-size": 67108864, "filename": "/tmp/p/s1.qcow2", "format": "qcow2",
                "cluster-size": 65536, "backing-filename": "/tmp/p/d0.qcow2",
                "backing-image": {"virtual-size": 67108864, "filename": "/tmp/p/d0.qcow2",
                   "format": "qcow2", "dirty-flag": false}}},
            "qdev": "/machine/peripheral/vblk0/virtio-backend", "type": "unknown"}]);
        let blocks: Vec<BlockInfo> = serde_json::from_value(reply).unwrap();
        assert_eq!(blocks[0].qdev_id(), Some("vblk0"));
        let inserted = blocks[0].inserted.as_ref().unwrap();
        assert_eq!(inserted.node_name.as_deref(), Some("snap1"));
        let chain: Vec<_> = inserted
            .image
            .chain()
            .map(|i| i.filename.as_str())
            .collect();
        assert_eq!(chain, ["/tmp/p/s1.qcow2", "/tmp/p/d0.qcow2"]);
    }
}
