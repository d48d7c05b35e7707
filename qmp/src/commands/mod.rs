//! Typed QMP commands, named as in QEMU's schema (`qapi/*.json`).
//!
//! Each command is a struct whose fields are its arguments; its reply type is
//! [`Command::Output`](crate::wire::Command::Output). Fields were checked against
//! QEMU 10.0's `qapi/block-core.json`, `qapi/transaction.json`, `qapi/job.json`,
//! `qapi/control.json`, `qapi/run-state.json` and `qapi/char.json`, and against the
//! replies of a live QEMU 10.0.2. Optional members QEMU may add later are ignored.

mod backup;
mod bitmaps;
mod block;
mod jobs;
mod machine;
mod pci;

pub use backup::*;
pub use bitmaps::*;
pub use block::*;
pub use jobs::*;
pub use machine::*;
pub use pci::*;

pub(crate) use crate::command;
