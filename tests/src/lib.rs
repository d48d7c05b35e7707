//! The real-QEMU test rig: a [`QemuVm`] guard that boots qsnap's test guest (a Debian
//! cloud kernel, busybox, qemu-ga and ext4 data disks, built by
//! `cargo xtask guest-image`) under TCG, plus helpers for inspecting disk images.
//!
//! # Example
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), qsnap_tests::Error> {
//! use qsnap_tests::{Agent, QemuVm};
//! let vm = QemuVm::builder().disks(2).writer(true).agent(Agent::AtBoot).start().await?;
//! let qmp = vm.qmp().await?;
//! println!("{:?}", qmp.execute(&qmp::commands::QueryStatus).await?);
//! # Ok(())
//! # }
//! ```
//!
//! # Behavior
//! Each VM gets its own short directory under `/tmp` holding its QMP and QGA sockets,
//! one throw-away qcow2 overlay per data disk (node `disk{i}`, device `vblk{i}`) and the
//! guest's serial log. Dropping the guard kills QEMU; a panicking test prints the
//! serial log and QEMU's stderr first.

mod error;
mod image;
pub mod inspect;
mod vm;

pub use error::{Error, Result};
pub use image::GuestImage;
pub use vm::{Agent, QemuVm, VmBuilder};
