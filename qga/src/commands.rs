//! Typed guest-agent commands, named and shaped as in QEMU's `qga/qapi-schema.json`.
//!
//! Every reply comes from the guest and is untrusted: types are strict (a wrong type is
//! [`Error::Decode`](crate::Error::Decode)), and optional members default when absent.

use qmp::command;
use qmp::wire::Empty;
use serde::{Deserialize, Serialize};

/// `guest-sync-delimited`: echoes `id` after a `0xFF` byte. The client uses it to
/// resync; calling it directly is rarely useful.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GuestSyncDelimited {
    /// Echoed back.
    pub id: i64,
}
command!(GuestSyncDelimited, "guest-sync-delimited", i64);

/// `guest-sync`: echoes `id` (no delimiter).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GuestSync {
    /// Echoed back.
    pub id: i64,
}
command!(GuestSync, "guest-sync", i64);

/// `guest-ping`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GuestPing;
command!(GuestPing, "guest-ping", Empty);

/// `guest-info`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GuestInfo;
command!(GuestInfo, "guest-info", GuestAgentInfo);

/// The reply to `guest-info`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct GuestAgentInfo {
    /// qemu-ga's version.
    pub version: String,
    /// Every command the agent has, and whether it is enabled now.
    pub supported_commands: Vec<GuestAgentCommandInfo>,
}

impl GuestAgentInfo {
    /// Whether the agent has `name` and has it enabled.
    pub fn is_enabled(&self, name: &str) -> bool {
        self.supported_commands
            .iter()
            .any(|c| c.name == name && c.enabled)
    }
}

/// One entry of [`GuestAgentInfo::supported_commands`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestAgentCommandInfo {
    /// The command name.
    pub name: String,
    /// Whether it can be called now (while frozen most are disabled).
    pub enabled: bool,
    /// Whether it sends a reply on success.
    pub success_response: bool,
}

/// `guest-get-osinfo`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GuestGetOsinfo;
command!(GuestGetOsinfo, "guest-get-osinfo", GuestOsInfo);

/// The reply to `guest-get-osinfo`; every member is optional in the schema.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestOsInfo {
    /// `uname -r`, or the Windows build.
    #[serde(default)]
    pub kernel_release: Option<String>,
    /// `uname -v`, or the Windows version.
    #[serde(default)]
    pub kernel_version: Option<String>,
    /// `uname -m`.
    #[serde(default)]
    pub machine: Option<String>,
    /// `ID` from os-release, e.g. `debian`; `mswindows` on Windows.
    #[serde(default)]
    pub id: Option<String>,
    /// `NAME` from os-release.
    #[serde(default)]
    pub name: Option<String>,
    /// `PRETTY_NAME` from os-release.
    #[serde(default)]
    pub pretty_name: Option<String>,
    /// `VERSION` from os-release.
    #[serde(default)]
    pub version: Option<String>,
    /// `VERSION_ID` from os-release.
    #[serde(default)]
    pub version_id: Option<String>,
}

impl GuestOsInfo {
    /// Whether the guest says it runs Windows (whose VSS thaws by itself after 10 s).
    pub fn is_windows(&self) -> bool {
        self.id.as_deref() == Some("mswindows")
    }
}

/// `guest-get-fsinfo`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GuestGetFsinfo;
command!(GuestGetFsinfo, "guest-get-fsinfo", Vec<GuestFilesystemInfo>);

/// One mounted filesystem, from `guest-get-fsinfo`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestFilesystemInfo {
    /// The device name in the guest, e.g. `vda`.
    pub name: String,
    /// Where it is mounted.
    pub mountpoint: String,
    /// The filesystem type, e.g. `ext4`.
    #[serde(rename = "type")]
    pub fs_type: String,
    /// Bytes used, when the agent reports it.
    #[serde(default)]
    pub used_bytes: Option<u64>,
    /// Bytes in total, when the agent reports it.
    #[serde(default)]
    pub total_bytes: Option<u64>,
    /// The disks backing it (PCI address, serial, ...), as the agent reports them.
    #[serde(default)]
    pub disk: Vec<GuestDiskAddress>,
}

/// Where a disk behind a guest filesystem sits, from `guest-get-fsinfo`. Every member
/// but the PCI address is optional here (agents differ by version and OS).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct GuestDiskAddress {
    /// The PCI function of the disk's controller (for virtio-blk: the disk itself).
    pub pci_controller: GuestPciAddress,
    /// `virtio`, `scsi`, `ide`, `sata`, ...
    #[serde(default)]
    pub bus_type: Option<String>,
    /// Bus, target and unit on that controller (SCSI addressing).
    #[serde(default)]
    pub bus: Option<i64>,
    /// See `bus`.
    #[serde(default)]
    pub target: Option<i64>,
    /// See `bus`.
    #[serde(default)]
    pub unit: Option<i64>,
    /// The disk's serial number, when it has one.
    #[serde(default)]
    pub serial: Option<String>,
    /// The guest's device node, e.g. `/dev/vda`.
    #[serde(default)]
    pub dev: Option<String>,
}

/// A PCI address as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
pub struct GuestPciAddress {
    /// PCI domain (segment).
    pub domain: i64,
    /// Bus number.
    pub bus: i64,
    /// Slot (device) number.
    pub slot: i64,
    /// Function number.
    pub function: i64,
}

/// `guest-fsfreeze-status`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GuestFsfreezeStatus;
command!(GuestFsfreezeStatus, "guest-fsfreeze-status", FsfreezeStatus);

/// Whether the guest's filesystems are frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsfreezeStatus {
    /// Not frozen.
    Thawed,
    /// Frozen: writes block.
    Frozen,
}

/// `guest-fsfreeze-freeze`: freezes every freezable filesystem (running the guest's
/// fsfreeze hooks first). Returns how many were frozen.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GuestFsfreezeFreeze;
command!(GuestFsfreezeFreeze, "guest-fsfreeze-freeze", u64);

/// `guest-fsfreeze-freeze-list`: freezes the filesystems at `mountpoints` (all when
/// `None`). Returns how many were frozen; a mountpoint that does not exist is skipped.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuestFsfreezeFreezeList {
    /// Mountpoints to freeze.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mountpoints: Option<Vec<String>>,
}
command!(GuestFsfreezeFreezeList, "guest-fsfreeze-freeze-list", u64);

/// `guest-fsfreeze-thaw`: thaws everything; returns how many were thawed (0 when
/// nothing was frozen).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct GuestFsfreezeThaw;
command!(GuestFsfreezeThaw, "guest-fsfreeze-thaw", u64);

/// `guest-exec`: starts a program in the guest and returns at once with its pid.
#[derive(Debug, Clone, Serialize)]
pub struct GuestExec {
    /// The program (looked up in the agent's `PATH` when it has no `/`).
    pub path: String,
    /// Its arguments.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub arg: Vec<String>,
    /// Whether the agent keeps its stdout/stderr for `guest-exec-status`.
    #[serde(rename = "capture-output")]
    pub capture_output: bool,
}
command!(GuestExec, "guest-exec", GuestExecPid);

/// The reply to `guest-exec`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct GuestExecPid {
    /// The process, for `guest-exec-status`.
    pub pid: i64,
}

/// `guest-exec-status`: whether a `guest-exec` process has ended, and how.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct GuestExecStatusOf {
    /// From `guest-exec`.
    pub pid: i64,
}
command!(GuestExecStatusOf, "guest-exec-status", GuestExecStatus);

/// The reply to `guest-exec-status` (output members are not read: qsnap never asks
/// for output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub struct GuestExecStatus {
    /// Whether it has ended.
    pub exited: bool,
    /// Its exit code, once ended normally.
    #[serde(default)]
    pub exitcode: Option<i64>,
    /// The signal that ended it, if one did.
    #[serde(default)]
    pub signal: Option<i64>,
}
