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
//!
//! [`sim`] is the other half: a simulated VM in-process (a fake QMP monitor with a
//! block graph and a fake qemu-ga, on real Unix sockets, with scriptable faults) for
//! tests that need no QEMU.

mod error;
mod image;
pub mod inspect;
pub mod sim;
pub mod textfile;
mod vm;

pub use error::{Error, Result};
pub use image::{GuestImage, Qemu72};
pub use vm::{Agent, QemuVm, VmBuilder};

/// How long tests wait for the agent of a TCG guest that boots in ≈3 s on an idle
/// machine, with room for a loaded CI machine.
pub const AGENT_BOOT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs a test body under a deadline so no test can hang; panics when it passes.
///
/// # Panics
/// When `f` does not finish within `secs` seconds.
#[allow(clippy::panic, reason = "a test helper: failing the test is its job")]
pub async fn within<F: std::future::Future>(secs: u64, f: F) -> F::Output {
    match tokio::time::timeout(std::time::Duration::from_secs(secs), f).await {
        Ok(v) => v,
        Err(_) => panic!("test exceeded its {secs} s deadline"),
    }
}
