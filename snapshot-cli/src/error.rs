//! The coordinator's error type, and the CLI exit code of each error.

use crate::report::Report;
use std::path::PathBuf;

/// Why a snapshot (or another coordinator operation) failed. Each variant says what
/// state the VM was left in; [`Error::exit_code`] maps it to `qsnap`'s exit codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another qsnap holds this VM's lock.
    #[error(
        "another qsnap is already working on the VM at {} (lock {}); wait for it to finish",
        qmp.display(), lock.display()
    )]
    Busy {
        /// The QMP socket.
        qmp: PathBuf,
        /// The lock file.
        lock: PathBuf,
    },
    /// Bad input; nothing was changed.
    #[error("{0}")]
    Invalid(String),
    /// A chosen disk does not exist.
    #[error("no disk `{wanted}` in the VM; its disks are: {available}")]
    DiskNotFound {
        /// What was asked for.
        wanted: String,
        /// Node names and qdev ids that exist.
        available: String,
    },
    /// An overlay path is taken; nothing was changed.
    #[error("overlay {} already exists; choose another --name or --overlay-dir (qsnap never overwrites a file)", .0.display())]
    OverlayExists(PathBuf),
    /// An overlay directory cannot be written; nothing was changed.
    #[error("cannot create overlays in {}: directory not writable", .0.display())]
    OverlayDirNotWritable(PathBuf),
    /// The quiesce policy is `required` and the guest agent cannot freeze; nothing was
    /// changed.
    #[error("quiesce required but unavailable: {reason}")]
    QuiesceUnavailable {
        /// What is missing.
        reason: String,
        /// The underlying agent error, if any.
        #[source]
        source: Option<qga::Error>,
    },
    /// The freeze failed or timed out; the guest was thawed, the overlays rolled back.
    #[error("quiesce failed: {reason}; the guest was thawed and nothing was changed")]
    QuiesceFailed {
        /// What went wrong.
        reason: String,
        /// The underlying agent error, if any.
        #[source]
        source: Option<qga::Error>,
    },
    /// Preparing or switching the disks failed; the guest was thawed and everything
    /// this run created was removed.
    #[error("snapshot failed while {during}; the guest was thawed and nothing was left behind")]
    SnapshotFailed {
        /// The step that failed.
        during: &'static str,
        /// The QMP error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The thaw could not be confirmed: the guest may still be frozen.
    #[error(
        "could not confirm the guest is thawed: it may still be frozen; run `qsnap thaw --qga {}` (and check `qsnap fsstatus`)",
        qga.display()
    )]
    ThawUnconfirmed {
        /// The agent socket, for the recovery command.
        qga: PathBuf,
        /// The agent error.
        #[source]
        source: Option<qga::Error>,
    },
    /// The disks were switched, but not while frozen (e.g. the guest thawed on its own
    /// or the deadline passed first). The overlays are in place.
    #[error("the snapshot was taken but is not filesystem-consistent: {reason}")]
    NotConsistent {
        /// Why.
        reason: String,
        /// What was done.
        report: Box<Report>,
    },
    /// Interrupted (Ctrl-C, SIGTERM); the guest was thawed and the overlays rolled back.
    #[error("interrupted; the guest was thawed and nothing was left behind")]
    Interrupted,
    /// QMP failed outside the snapshot itself (connecting, querying).
    #[error("QMP: {during}")]
    Qmp {
        /// What qsnap was doing.
        during: &'static str,
        /// The error.
        #[source]
        source: qmp::Error,
    },
    /// The guest agent failed outside the snapshot itself.
    #[error("guest agent: {during}")]
    Qga {
        /// What qsnap was doing.
        during: &'static str,
        /// The error.
        #[source]
        source: qga::Error,
    },
    /// A host file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What failed, e.g. "cannot create".
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// `qsnap`'s exit code for this error: 3 quiesce required but unavailable or failed
    /// (nothing changed), 4 snapshot failed (guest thawed, nothing left behind), 5 thaw
    /// not confirmed, 130 interrupted, 1 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::QuiesceUnavailable { .. } | Self::QuiesceFailed { .. } => 3,
            Self::SnapshotFailed { .. } | Self::NotConsistent { .. } => 4,
            Self::ThawUnconfirmed { .. } => 5,
            Self::Interrupted => 130,
            _ => 1,
        }
    }

    pub(crate) fn qmp(during: &'static str) -> impl FnOnce(qmp::Error) -> Self {
        move |source| Self::Qmp { during, source }
    }

    pub(crate) fn failed<E>(during: &'static str) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |e| Self::SnapshotFailed {
            during,
            source: Box::new(e),
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
