//! The `qmp` crate's error type.

pub use crate::wire::Disconnect;
use crate::wire::QmpError;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Errors from the QMP client.
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
    /// QEMU did not greet in time. QEMU serves one monitor client per socket: a second
    /// client is accepted but hears nothing until the first leaves.
    #[error(
        "no QMP greeting within {after:?}: is another client connected to this socket? (QEMU serves one at a time)"
    )]
    GreetingTimeout {
        /// How long we waited.
        after: Duration,
    },
    /// A command got no reply within its deadline. QEMU may still carry it out; its late
    /// reply is discarded.
    #[error("{command} got no reply within {after:?} (QEMU may still carry it out)")]
    Timeout {
        /// The command name.
        command: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// QEMU answered the command with an error.
    #[error("QEMU rejected {command}")]
    Command {
        /// The command name.
        command: String,
        /// QEMU's error class and description.
        #[source]
        error: QmpError,
    },
    /// The connection is gone; the source says why.
    #[error("the QMP connection is closed")]
    Disconnected(#[source] Disconnect),
    /// The reply did not have the type the command declares.
    #[error("unexpected reply to {command}")]
    Decode {
        /// The command name.
        command: String,
        /// What did not match.
        #[source]
        source: serde_json::Error,
    },
    /// The command's arguments could not be encoded.
    #[error("cannot encode the arguments of {command}")]
    Encode {
        /// The command name.
        command: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// The peer broke the protocol (for example, no greeting).
    #[error("protocol violation: {0}")]
    Protocol(String),
}

impl Error {
    /// True for [`Error::Timeout`] and [`Error::GreetingTimeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::GreetingTimeout { .. })
    }

    /// True when the connection is gone.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, Self::Disconnected(_))
    }

    /// QEMU's error, when QEMU rejected the command.
    pub fn qmp_error(&self) -> Option<&QmpError> {
        match self {
            Self::Command { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
