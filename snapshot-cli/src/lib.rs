//! qsnap: filesystem-consistent live disk snapshots of VMs run by bare QEMU.
//!
//! This crate is the snapshot coordinator (usable from Rust test rigs) and the `qsnap`
//! binary. It talks to QEMU over QMP ([`qmp`]) and to the guest agent over QGA ([`qga`]).
//!
//! # Example
//! ```no_run
//! use qsnap::{Quiesce, SnapshotRequest, snapshot};
//! use tokio_util::sync::CancellationToken;
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), qsnap::Error> {
//! let request = SnapshotRequest::new("/run/vm/qmp.sock")
//!     .qga("/run/vm/qga.sock")
//!     .name("nightly")
//!     .quiesce(Quiesce::Required);
//! let report = snapshot(&request, &CancellationToken::new()).await?;
//! println!("{:?}: froze {} filesystems for {:.1} ms",
//!     report.consistency, report.frozen_filesystems, report.timings_ms.frozen_window);
//! # Ok(())
//! # }
//! ```
//!
//! # Behavior
//! 1. **Plan** (nothing changes): lock the VM (one coordinator per QMP socket), read
//!    `query-version` and `query-block`, choose disks by node-name or qdev id, derive
//!    overlay paths (`<stem>.<name>.qcow2` beside each image, or in an overlay
//!    directory), refuse existing paths, symlinks and unwritable directories, and
//!    connect to the agent (a sync under [`SnapshotRequest::agent_timeout`]), applying
//!    the [`Quiesce`] policy.
//! 2. **Prepare** (outside the freeze): create each overlay file exclusively with the
//!    active image's owner and mode, format it through QMP (`blockdev-create` qcow2 with
//!    the backing file and format, the exact virtual size and cluster size) and
//!    `blockdev-add` it with `"backing": null`.
//! 3. **Freeze → switch → thaw**: `guest-fsfreeze-freeze` (or `-freeze-list`), one QMP
//!    `transaction` of `blockdev-snapshot` actions, thaw at once.
//! 4. **Verify**: the guest must read `thawed` and the thaw count match the freeze count.
//! 5. **Roll back** on failure: delete the added nodes and the files this run created.
//!
//! One deadline, [`SnapshotRequest::freeze_timeout`], bounds freeze-sent → thaw-sent.
//! The guest is thawed on every path: errors, the deadline, cancellation through the
//! token, a dropped future or a panic (a drop guard queues the thaw), and — with
//! [`SnapshotRequest::guardian`] — the process being killed.
//!
//! # Limits
//! Local image files only (no `json:` or network filenames). Windows guests: the
//! budget is capped below VSS's own 10-second limit.

pub mod backup;
mod bitmaps;
pub mod commit;
mod coordinator;
mod disks;
mod error;
mod flush;
mod freeze;
mod frozen;
pub mod guardian;
mod guardian_log;
mod lock;
pub mod metrics;
mod overlay;
mod plan;
mod policy;
mod regular;
mod report;
mod request;
pub mod scope;
mod settle;
mod undo;
mod window;

pub use backup::{BackupReport, BackupRequest, backup};
pub use commit::{CommitReport, CommitRequest, commit};
pub use coordinator::snapshot;

#[doc = include_str!("../../docs/library.md")]
pub mod guide {}
pub use error::{Error, Result};
pub use freeze::thaw_guest;
pub use lock::{VmLock, lock_path};
pub use report::{Consistency, DiskReport, Report, Timings};
pub use request::{BeforeFreeze, Quiesce, SnapshotRequest};
pub use tokio_util::sync::CancellationToken;
