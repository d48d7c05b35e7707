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
        "another qsnap (or its guardian, which thaws the guest after a failed run) is working on the VM at {} (lock {}); wait for it to finish",
        qmp.display(), lock.display()
    )]
    Busy {
        /// The socket the lock is keyed on.
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
        "could not confirm the guest is thawed: it may still be frozen; qsnap's guardian (if armed) keeps trying — to thaw now run `qsnap thaw --force --qga {}` (and check `qsnap fsstatus`){}",
        qga.display(),
        left_text(left)
    )]
    ThawUnconfirmed {
        /// The agent socket, for the recovery command.
        qga: PathBuf,
        /// The agent error.
        #[source]
        source: Option<Box<qga::Error>>,
        /// What this run left on the VM (disks on unverified overlays, leftovers of
        /// the rollback), each with what to do; empty when nothing.
        left: Vec<String>,
    },
    /// The disks were switched, but not verifiably while frozen (the transaction
    /// answered after the freeze deadline, or the guest thawed early), and the quiesce
    /// policy (`preferred`, `off`) keeps such a snapshot: the overlays are in place and
    /// the snapshot is crash-consistent. Under `required` such a switch is undone
    /// instead.
    #[error("the snapshot was taken and kept, but it is only crash-consistent: {reason}")]
    NotConsistent {
        /// Why.
        reason: String,
        /// What was done.
        report: Box<Report>,
    },
    /// Interrupted (Ctrl-C, SIGTERM, SIGHUP); the guest was thawed and the overlays
    /// rolled back (both checked).
    #[error("interrupted; the guest was thawed and nothing was left behind")]
    Interrupted,
    /// A backup failed after its jobs started; it was undone: the jobs cancelled,
    /// this backup's bitmaps dropped (the previous ones kept, so the next incremental
    /// still covers every change) and its files removed — all checked.
    #[error(
        "backup failed while {during}: {reason}; this backup's files, nodes and bitmaps were removed (the earlier bitmaps were not touched)"
    )]
    BackupFailed {
        /// The phase.
        during: String,
        /// QEMU's or the host's reason.
        reason: String,
    },
    /// `qsnap verify` found problems.
    #[error("verify failed: {}", problems.join("; "))]
    VerifyFailed {
        /// Every problem found.
        problems: Vec<String>,
    },
    /// The backup was made and kept, but it is only crash-consistent.
    #[error("the backup was made and kept, but it is only crash-consistent: {reason}")]
    BackupNotConsistent {
        /// Why.
        reason: String,
        /// The backup.
        report: Box<crate::backup::BackupReport>,
    },
    /// A live commit failed. QEMU keeps the disk on its overlay when a commit job
    /// fails, so the guest sees no change; the backing image may already hold part of
    /// the overlay's data.
    #[error("commit failed while {during}")]
    CommitFailed {
        /// The step that failed.
        during: &'static str,
        /// The QMP or job error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A live commit was interrupted before it was told to complete, and its job was
    /// cancelled (QEMU then keeps the disk on its overlay).
    #[error("interrupted; the commit job was cancelled and the disk stays on its overlay")]
    CommitInterrupted,
    /// The run failed and its cleanup could not remove everything (or could not check
    /// that it did): each leftover is listed with what to do about it.
    #[error("{failure}; cleanup incomplete, left behind: {}", left.join("; "))]
    CleanupIncomplete {
        /// What went wrong first (no claim about the VM's state).
        failure: String,
        /// What is left, each with what to do.
        left: Vec<String>,
    },
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
    /// not confirmed, 6 taken and kept but only crash-consistent, 7 cleanup incomplete,
    /// 130 interrupted, 1 anything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::QuiesceUnavailable { .. } | Self::QuiesceFailed { .. } => 3,
            Self::SnapshotFailed { .. } | Self::CommitFailed { .. } | Self::BackupFailed { .. } => {
                4
            }
            Self::ThawUnconfirmed { .. } => 5,
            Self::NotConsistent { .. } | Self::BackupNotConsistent { .. } => 6,
            Self::CleanupIncomplete { .. } => 7,
            Self::VerifyFailed { .. } => 8,
            Self::Interrupted | Self::CommitInterrupted => 130,
            _ => 1,
        }
    }

    /// What went wrong, without this variant's claim about the VM's state: for an
    /// error whose claim a failed cleanup no longer backs.
    pub(crate) fn failure(&self) -> String {
        match self {
            Self::QuiesceFailed { reason, source } => match source {
                Some(s) => format!("quiesce failed: {reason}: {}", chain(s)),
                None => format!("quiesce failed: {reason}"),
            },
            Self::SnapshotFailed { during, source } => {
                format!("snapshot failed while {during}: {}", chain(source.as_ref()))
            }
            Self::Interrupted | Self::CommitInterrupted => "interrupted".to_owned(),
            Self::BackupFailed { during, reason } => {
                format!("backup failed while {during}: {reason}")
            }
            Self::CommitFailed { during, source } => {
                format!("commit failed while {during}: {}", chain(source.as_ref()))
            }
            other => chain(other),
        }
    }

    pub(crate) fn qmp(during: &'static str) -> impl FnOnce(qmp::Error) -> Self {
        move |source| Self::Qmp { during, source }
    }

    pub(crate) fn commit_failed<E>(during: &'static str) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |e| Self::CommitFailed {
            during,
            source: Box::new(e),
        }
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

fn left_text(left: &[String]) -> String {
    if left.is_empty() {
        String::new()
    } else {
        format!("; also left behind: {}", left.join("; "))
    }
}

/// An error and its sources, `: `-separated.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
