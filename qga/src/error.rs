//! The `qga` crate's error type.

use qmp::Disconnect;
use qmp::wire::QmpError;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Errors from the guest-agent client. Guest-supplied text is escaped in `Display`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket could not be opened.
    #[error("cannot connect to {}", path.display())]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The OS error (missing socket, permission denied, ...).
        #[source]
        source: io::Error,
    },
    /// No matching `guest-sync-delimited` reply within the deadline.
    #[error(
        "the guest agent did not answer guest-sync-delimited within {after:?}: is qemu-ga running in the guest, is the VM paused, or is another client connected to this socket? (it serves one at a time)"
    )]
    SyncTimeout {
        /// The deadline that passed.
        after: Duration,
    },
    /// A command got no reply in time. The command may still complete in the guest; the
    /// next call resyncs first so its late reply is never taken for another's.
    #[error("{command} got no reply within {after:?} (it may still complete in the guest)")]
    Timeout {
        /// The command name.
        command: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The agent has the command but refuses it now, e.g. while filesystems are frozen.
    #[error("the guest agent has {command} disabled")]
    Disabled {
        /// The command name.
        command: String,
        /// The agent's error.
        #[source]
        error: QmpError,
    },
    /// The agent does not know the command (older qemu-ga, or blocked by its config).
    #[error("the guest agent does not have {command}")]
    NotFound {
        /// The command name.
        command: String,
        /// The agent's error.
        #[source]
        error: QmpError,
    },
    /// The agent answered with another error.
    #[error("the guest agent rejected {command}")]
    Command {
        /// The command name.
        command: String,
        /// The agent's error.
        #[source]
        error: QmpError,
    },
    /// The reply was not a QAPI message (not JSON, not UTF-8, unknown shape).
    #[error("unparseable reply from the guest agent to {command}")]
    Malformed {
        /// The command name.
        command: String,
        /// What was wrong.
        #[source]
        source: GuestJsonError,
    },
    /// The reply did not have the type the command declares.
    #[error("reply to {command} from the guest agent has an unexpected type")]
    Decode {
        /// The command name.
        command: String,
        /// What did not match.
        #[source]
        source: GuestJsonError,
    },
    /// The reply was longer than [`Config::max_frame`](crate::Config::max_frame).
    #[error("reply to {command} from the guest agent exceeds the {limit}-byte limit")]
    FrameTooLong {
        /// The command name.
        command: String,
        /// The limit in bytes.
        limit: usize,
    },
    /// The arguments could not be encoded.
    #[error("cannot encode the arguments of {command}")]
    Encode {
        /// The command name.
        command: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The connection is gone; the source says why.
    #[error("the guest-agent connection is closed")]
    Disconnected(#[source] Disconnect),
}

impl Error {
    /// True for [`Error::Timeout`] and [`Error::SyncTimeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::SyncTimeout { .. })
    }

    /// True when the connection is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Self::Disconnected(_))
    }

    /// True for [`Error::Disabled`].
    pub fn is_disabled(&self) -> bool {
        matches!(self, Self::Disabled { .. })
    }

    /// The agent's error, when it answered with one.
    pub fn agent_error(&self) -> Option<&QmpError> {
        match self {
            Self::Disabled { error, .. }
            | Self::NotFound { error, .. }
            | Self::Command { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Sorts an error reply: qemu-ga answers both "has been disabled" and "has not
    /// been found" with class `CommandNotFound`; only the text tells them apart.
    pub(crate) fn from_reply(command: &str, error: QmpError) -> Self {
        let command = command.to_owned();
        if error.desc.contains("has been disabled") {
            Self::Disabled { command, error }
        } else if error.desc.contains("has not been found") {
            Self::NotFound { command, error }
        } else {
            Self::Command { command, error }
        }
    }
}

/// A JSON error about bytes the guest wrote. serde quotes the offending input in its
/// message (``unknown variant `…` ``), so the text is escaped before display.
#[derive(Debug)]
pub struct GuestJsonError(pub serde_json::Error);

impl std::fmt::Display for GuestJsonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&qmp::wire::escape(&self.0.to_string()))
    }
}

impl std::error::Error for GuestJsonError {}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
