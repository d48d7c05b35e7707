//! Monitor, run-state and character-device commands.

use super::command;
use crate::wire::{Empty, VersionInfo};
use serde::{Deserialize, Serialize};

/// `qmp_capabilities`: leaves capability negotiation mode. The client sends it itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QmpCapabilities {
    /// Capabilities to enable (qsnap enables none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable: Option<Vec<String>>,
}
command!(QmpCapabilities, "qmp_capabilities", Empty);

/// `query-version`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueryVersion;
command!(QueryVersion, "query-version", VersionInfo);

/// `query-status`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueryStatus;
command!(QueryStatus, "query-status", StatusInfo);

/// The reply to `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct StatusInfo {
    /// True when the guest CPUs run.
    pub running: bool,
    /// The run state, e.g. `running`, `paused`, `prelaunch`, `shutdown`.
    pub status: String,
}

/// `stop`: pauses the guest CPUs (emits `STOP`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Stop;
command!(Stop, "stop", Empty);

/// `cont`: resumes the guest CPUs (emits `RESUME`).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cont;
command!(Cont, "cont", Empty);

/// `quit`: QEMU exits (emits `SHUTDOWN`, then closes the socket).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Quit;
command!(Quit, "quit", Empty);

/// `query-chardev`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueryChardev;
command!(QueryChardev, "query-chardev", Vec<ChardevInfo>);

/// One character device, from `query-chardev`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct ChardevInfo {
    /// The chardev id, e.g. `qga0`.
    pub label: String,
    /// Its backend, e.g. `unix:/run/qga.sock,server=on`, or `disconnected:...`.
    pub filename: String,
    /// Whether the guest side has the device open.
    pub frontend_open: bool,
}

/// `query-name`: the VM's `-name`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueryName;
command!(QueryName, "query-name", NameInfo);

/// The reply to [`QueryName`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct NameInfo {
    /// The name, if the VM was given one.
    #[serde(default)]
    pub name: Option<String>,
}

/// `query-uuid`: the VM's `-uuid` (all zeros when none was given).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueryUuid;
command!(QueryUuid, "query-uuid", UuidInfo);

/// The reply to [`QueryUuid`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct UuidInfo {
    /// The UUID.
    #[serde(rename = "UUID")]
    pub uuid: String,
}
