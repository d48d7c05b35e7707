//! The serializable result of a snapshot.

use serde::Serialize;

/// Whether the snapshot was taken while the guest's filesystems were frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Filesystems were frozen (and the guest's fsfreeze hooks ran) at the switch.
    Quiesced,
    /// As if the power had been cut at the switch: journals will replay.
    CrashConsistent,
}

/// One disk's part of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DiskReport {
    /// The node that was active before (now the overlay's backing node).
    pub node: String,
    /// The guest device's qdev id, if it has one.
    pub device: Option<String>,
    /// The new active node.
    pub overlay_node: String,
    /// The new overlay file.
    pub overlay_file: String,
    /// The image now frozen in time (the overlay's backing file).
    pub backing_file: String,
}

/// Durations of each phase, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Timings {
    /// Querying QEMU and the agent, choosing paths.
    pub plan: f64,
    /// Creating, formatting and adding the overlays (outside the freeze).
    pub prepare: f64,
    /// The pre-flush (`sync` in the guest, before the freeze; 0 when not run).
    pub pre_flush: f64,
    /// The `guest-fsfreeze-freeze` round trip.
    pub freeze_call: f64,
    /// The QMP `transaction` round trip.
    pub transaction: f64,
    /// The `guest-fsfreeze-thaw` round trip.
    pub thaw_call: f64,
    /// From sending the freeze to the thaw's reply: how long guest writes may block.
    pub frozen_window: f64,
    /// From the freeze's reply to sending the thaw: what qsnap itself adds to the window.
    pub in_freeze_overhead: f64,
    /// Everything.
    pub total: f64,
}

/// What a snapshot did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The snapshot's name (part of each overlay's file name).
    pub name: String,
    /// Quiesced or crash-consistent.
    pub consistency: Consistency,
    /// Filesystems the freeze reported (0 when not quiesced).
    pub frozen_filesystems: u64,
    /// Filesystems the thaw reported.
    pub thawed_filesystems: u64,
    /// Per disk.
    pub disks: Vec<DiskReport>,
    /// QEMU's version.
    pub qemu_version: String,
    /// qemu-ga's version, when the agent answered.
    pub agent_version: Option<String>,
    /// Which filesystems the freeze was planned to cover, when `--disk` chose some of
    /// the disks (`None`: every filesystem, or `--mountpoint`'s). Kept when the run
    /// fell back to crash-consistent: then nothing was frozen when the disks switched.
    pub freeze_scope: Option<crate::scope::FreezeScope>,
    /// Whether an out-of-process guardian was armed while frozen.
    pub guardian: bool,
    /// Things the operator should know (fallbacks, mismatches).
    pub warnings: Vec<String>,
    /// Milliseconds per phase.
    pub timings_ms: Timings,
}
