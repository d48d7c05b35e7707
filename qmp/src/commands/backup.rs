//! `blockdev-backup` (`qapi/block-core.json`): a job that copies a node's content, as
//! of the instant the job starts, to a target node (copy-before-write keeps that
//! instant while the guest writes on).

use super::command;
use crate::wire::Empty;
use serde::Serialize;

/// What a backup copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupSync {
    /// Everything.
    Full,
    /// The clusters dirty in `bitmap`.
    Bitmap,
}

/// What a `sync: bitmap` backup does to its bitmap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BitmapSyncMode {
    /// Cleared if the job succeeds.
    OnSuccess,
    /// Never changed (the caller manages generations).
    Never,
    /// Cleared of what was copied, success or not.
    Always,
}

/// `blockdev-backup`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct BlockdevBackup {
    /// The job's id.
    pub job_id: String,
    /// The source node.
    pub device: String,
    /// The target node.
    pub target: String,
    /// What to copy.
    pub sync: BackupSync,
    /// The bitmap for `sync: bitmap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitmap: Option<String>,
    /// What the job does to `bitmap`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bitmap_mode: Option<BitmapSyncMode>,
    /// Rate limit, bytes per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<u64>,
    /// Keep the concluded job until `job-dismiss` (so its result can be read).
    pub auto_dismiss: bool,
}
command!(BlockdevBackup, "blockdev-backup", Empty);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn incremental_backup_with_a_never_changed_bitmap() {
        let cmd = BlockdevBackup {
            job_id: "j".into(),
            device: "d0".into(),
            target: "t0".into(),
            sync: BackupSync::Bitmap,
            bitmap: Some("b1".into()),
            bitmap_mode: Some(BitmapSyncMode::Never),
            speed: None,
            auto_dismiss: false,
        };
        assert_eq!(
            serde_json::to_value(&cmd).unwrap(),
            json!({"job-id": "j", "device": "d0", "target": "t0", "sync": "bitmap",
                "bitmap": "b1", "bitmap-mode": "never", "auto-dismiss": false})
        );
    }
}
