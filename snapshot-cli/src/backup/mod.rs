//! Backups: a standalone image of each chosen disk at one frozen instant, full or
//! incremental, plus restore and verify (offline).
//!
//! plan → prepare (targets created and added, outside the freeze; leftovers of dead
//! runs reaped; the manifest written `in-progress`) → freeze → **one transaction**
//! (each disk's `blockdev-backup` and its new bitmap) → thaw → follow the jobs →
//! release the targets, hash them, write the manifest `complete` → retire the
//! superseded bitmaps.
//!
//! The parent's bitmap is never touched by the jobs (`bitmap-mode: never`) and is
//! removed only after the manifest says `complete`; on any failure the new bitmap is
//! dropped instead. So at every instant some bitmap covers every change since the
//! last complete backup. Why not `completion-mode: grouped`: QEMU refuses it in a
//! transaction with bitmap actions, and it is not needed — qsnap waits for every job
//! and decides the generations itself.

pub mod content;
mod jobs;
pub mod manifest;
mod plan;
mod request;
mod restore;
mod run;

pub use content::Stop;
pub use request::{BackupReport, BackupRequest, BackupTimings};
pub use restore::{BackupList, ChainSummary, RestoreReport, VerifyReport, list, restore, verify};
pub use run::backup;
