//! What to back up, and the report of a backup.

use super::manifest::Manifest;
use crate::request::SnapshotRequest;
use serde::Serialize;
use std::path::PathBuf;

/// A backup to make. The VM, the disks, the quiesce policy, the freeze deadline and
/// the guardian come from [`BackupRequest::vm`] exactly as for a snapshot (its `name`
/// and `overlay_dir` are not used).
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// The VM and how to quiesce it.
    pub vm: SnapshotRequest,
    /// The backup directory (one per VM): images and manifests.
    pub target: PathBuf,
    /// Copy only what changed since the last complete backup in `target`, when its
    /// bitmaps allow; otherwise a full backup, saying why.
    pub incremental: bool,
    /// Limit each disk's copy to this many bytes per second (spares the host's
    /// storage; the guest runs meanwhile). `None`: as fast as QEMU can.
    pub speed: Option<u64>,
}

impl BackupRequest {
    /// A full backup of every writable disk, quiesced through the agent at `qga`.
    pub fn new(vm: SnapshotRequest, target: impl Into<PathBuf>) -> Self {
        Self {
            vm,
            target: target.into(),
            incremental: false,
            speed: None,
        }
    }

    /// Asks for an incremental backup.
    pub fn incremental(mut self, yes: bool) -> Self {
        self.incremental = yes;
        self
    }
}

/// Durations, milliseconds: a snapshot's (the same phases and window), plus the copy
/// and the hashing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct BackupTimings {
    /// Plan, prepare, the frozen window, total: as for a snapshot.
    #[serde(flatten)]
    pub common: crate::report::Timings,
    /// The jobs' copy (the guest runs meanwhile).
    pub copy: f64,
    /// Hashing the images.
    pub checksum: f64,
}

/// The result of a backup.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BackupReport {
    /// Where its manifest is.
    pub manifest_path: PathBuf,
    /// The manifest as written.
    pub manifest: Manifest,
    /// Bitmaps removed because this backup superseded them.
    pub retired_bitmaps: Vec<String>,
    /// Which filesystems the freeze was planned to cover, when `--disk` chose some of
    /// the disks (`None`: every filesystem, or `--mountpoint`'s). Kept when the run
    /// fell back to crash-consistent: then nothing was frozen when the disks switched.
    pub freeze_scope: Option<crate::scope::FreezeScope>,
    /// Whether a guardian covered the freeze.
    pub guardian: bool,
    /// Durations.
    pub timings_ms: BackupTimings,
}
