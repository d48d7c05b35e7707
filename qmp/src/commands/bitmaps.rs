//! Dirty bitmaps (`qapi/block-core.json`): the record of which clusters changed, kept
//! in qcow2 images when persistent, and the commands that add, merge and remove them.

use super::command;
use crate::wire::Empty;
use serde::{Deserialize, Serialize};

/// One dirty bitmap as `query-block` and `query-named-block-nodes` show it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct DirtyBitmapInfo {
    /// Its name (unique per node).
    #[serde(default)]
    pub name: Option<String>,
    /// Dirty bytes.
    pub count: u64,
    /// Bytes per bit.
    pub granularity: u64,
    /// Whether writes are recorded now.
    #[serde(default)]
    pub recording: bool,
    /// In use by a job (cannot be changed or removed).
    #[serde(default)]
    pub busy: bool,
    /// Stored in the image (qcow2) when QEMU closes it.
    #[serde(default)]
    pub persistent: bool,
    /// Found "in use" when the image was opened: QEMU did not close it cleanly, so
    /// the bitmap may miss writes. It records nothing and cannot be used.
    #[serde(default)]
    pub inconsistent: bool,
}

impl DirtyBitmapInfo {
    /// Its name, or `""` for an anonymous bitmap.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
}

/// `block-dirty-bitmap-add`: a new bitmap on `node` that records from now on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockDirtyBitmapAdd {
    /// The node.
    pub node: String,
    /// The bitmap's name.
    pub name: String,
    /// Bytes per bit (QEMU's default follows the cluster size).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub granularity: Option<u64>,
    /// Stored in the qcow2 image.
    pub persistent: bool,
}
command!(BlockDirtyBitmapAdd, "block-dirty-bitmap-add", Empty);

/// `block-dirty-bitmap-remove`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockDirtyBitmapRemove {
    /// The node.
    pub node: String,
    /// The bitmap's name.
    pub name: String,
}
command!(BlockDirtyBitmapRemove, "block-dirty-bitmap-remove", Empty);

/// A bitmap named for `block-dirty-bitmap-merge`: on the target's node, or anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum BitmapRef {
    /// A bitmap of the target's node.
    Local(String),
    /// A bitmap of any node.
    Node {
        /// Its node.
        node: String,
        /// Its name.
        name: String,
    },
}

/// `block-dirty-bitmap-merge`: `target |= each of bitmaps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockDirtyBitmapMerge {
    /// The target's node.
    pub node: String,
    /// The bitmap merged into.
    pub target: String,
    /// The bitmaps merged from.
    pub bitmaps: Vec<BitmapRef>,
}
command!(BlockDirtyBitmapMerge, "block-dirty-bitmap-merge", Empty);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_names_local_and_remote_bitmaps() {
        let cmd = BlockDirtyBitmapMerge {
            node: "ov".into(),
            target: "b".into(),
            bitmaps: vec![
                BitmapRef::Local("a".into()),
                BitmapRef::Node {
                    node: "base".into(),
                    name: "b".into(),
                },
            ],
        };
        assert_eq!(
            serde_json::to_value(&cmd).unwrap(),
            json!({"node": "ov", "target": "b", "bitmaps": ["a", {"node": "base", "name": "b"}]})
        );
    }

    #[test]
    fn bitmap_info_from_qemu_10_parses_with_and_without_inconsistent() {
        let v = json!([
            {"name": "b1", "count": 0, "recording": false, "persistent": true, "busy": false,
             "granularity": 65536, "inconsistent": true},
            {"name": "b2", "count": 131072, "recording": true, "persistent": true, "busy": false,
             "granularity": 65536}]);
        let b: Vec<DirtyBitmapInfo> = serde_json::from_value(v).unwrap();
        assert!(b[0].inconsistent && !b[0].recording);
        assert_eq!(
            (b[1].name(), b[1].count, b[1].inconsistent),
            ("b2", 131072, false)
        );
    }
}
