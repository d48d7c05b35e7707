//! What to snapshot, and how.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

type HookFn = dyn Fn(qmp::Client) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

/// Testing aid: code run with the coordinator's QMP client after the overlays are
/// prepared and right before the freeze — to change the VM behind the coordinator's
/// back (QEMU serves one QMP client at a time, so a test cannot do it from outside).
#[derive(Clone)]
pub struct BeforeFreeze(pub Arc<HookFn>);

impl std::fmt::Debug for BeforeFreeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeFreeze(..)")
    }
}

/// What to do when the guest agent cannot freeze the filesystems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Quiesce {
    /// Fail before changing anything (the default: a snapshot is consistent or absent).
    #[default]
    Required,
    /// Fall back to a crash-consistent snapshot, warn, and say so in the report.
    Preferred,
    /// Do not freeze: a crash-consistent snapshot.
    Off,
}

/// A snapshot to take. `SnapshotRequest::new(qmp)` snapshots every writable disk,
/// quiesced through the agent at `qga`, with overlays beside the active images.
#[derive(Debug, Clone)]
pub struct SnapshotRequest {
    /// The VM's QMP socket.
    pub qmp: PathBuf,
    /// The guest agent's socket (none: only `Quiesce::Off` or `Preferred` can proceed).
    pub qga: Option<PathBuf>,
    /// Part of each overlay's file name; default `snap-<UTC time>`. Letters, digits,
    /// `.`, `_`, `-`; at most 64.
    pub name: Option<String>,
    /// Disks by active node-name or qdev id; empty: every writable disk.
    pub disks: Vec<String>,
    /// Where overlays go; default: beside each active image.
    pub overlay_dir: Option<PathBuf>,
    /// The quiesce policy.
    pub quiesce: Quiesce,
    /// Longest time from sending the freeze to sending the thaw.
    pub freeze_timeout: Duration,
    /// Freeze only these guest mountpoints (`guest-fsfreeze-freeze-list`); empty: all.
    pub mountpoints: Vec<String>,
    /// How long planning waits for the agent to answer a sync.
    pub agent_timeout: Duration,
    /// Run `sync` in the guest (`guest-exec`) just before the freeze, so the freeze
    /// itself has little left to write (best effort: an agent without `guest-exec`, a
    /// failing or slow `sync` only add a warning).
    pub pre_flush: bool,
    /// The longest the pre-flush may take; the freeze then goes ahead anyway.
    pub pre_flush_timeout: Duration,
    /// A `qsnap` binary to run as the out-of-process guardian that thaws the guest if
    /// this process dies while frozen. `None`: no guardian (only in-process thaws).
    pub guardian: Option<PathBuf>,
    /// Testing aid: stay frozen this long before switching (bounded by the deadline).
    pub hold_frozen: Duration,
    /// Testing aid: see [`BeforeFreeze`].
    #[doc(hidden)]
    pub before_freeze: Option<BeforeFreeze>,
    /// Testing aid: like [`BeforeFreeze`], but run once the freeze answered, right
    /// before the transaction (e.g. to panic while the guest is frozen).
    #[doc(hidden)]
    pub while_frozen: Option<BeforeFreeze>,
}

impl SnapshotRequest {
    /// Defaults: all disks, quiesce required, 10 s freeze budget, agent sync 3 s.
    pub fn new(qmp: impl Into<PathBuf>) -> Self {
        Self {
            qmp: qmp.into(),
            qga: None,
            name: None,
            disks: Vec::new(),
            overlay_dir: None,
            quiesce: Quiesce::Required,
            freeze_timeout: Duration::from_secs(10),
            mountpoints: Vec::new(),
            agent_timeout: Duration::from_secs(3),
            pre_flush: true,
            pre_flush_timeout: Duration::from_secs(10),
            guardian: None,
            hold_frozen: Duration::ZERO,
            before_freeze: None,
            while_frozen: None,
        }
    }

    /// Sets the agent socket.
    pub fn qga(mut self, path: impl Into<PathBuf>) -> Self {
        self.qga = Some(path.into());
        self
    }

    /// Sets the snapshot name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the quiesce policy.
    pub fn quiesce(mut self, quiesce: Quiesce) -> Self {
        self.quiesce = quiesce;
        self
    }

    /// Sets the guardian binary.
    pub fn guardian(mut self, exe: impl Into<PathBuf>) -> Self {
        self.guardian = Some(exe.into());
        self
    }
}
