//! Finding the guest image built by `cargo xtask guest-image`.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// The cached guest: kernel, initramfs and base data disks.
#[derive(Debug, Clone)]
pub struct GuestImage {
    dir: PathBuf,
    disks: usize,
}

impl GuestImage {
    /// `$QSNAP_GUEST_DIR`, else `target/qsnap-guest` in this workspace.
    ///
    /// # Errors
    /// [`Error::NoImage`] when the kernel, initramfs or first disk is missing: tests
    /// that need the real guest fail loudly instead of skipping.
    pub fn locate() -> Result<Self> {
        let dir = std::env::var_os("QSNAP_GUEST_DIR").map_or_else(
            || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/qsnap-guest"),
            PathBuf::from,
        );
        let required = ["vmlinuz", "initramfs.cpio.gz", "data0.qcow2"];
        if let Some(missing) = required.iter().find(|f| !dir.join(f).exists()) {
            return Err(Error::NoImage(dir.join(missing)));
        }
        let disks = (0..16)
            .take_while(|i| dir.join(format!("data{i}.qcow2")).exists())
            .count();
        Ok(Self { dir, disks })
    }

    /// The kernel.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// The initramfs.
    pub fn initramfs(&self) -> PathBuf {
        self.dir.join("initramfs.cpio.gz")
    }

    /// Base data disk `i` (read-only: VMs use overlays on it).
    pub fn disk(&self, i: usize) -> PathBuf {
        self.dir.join(format!("data{i}.qcow2"))
    }

    /// How many base disks there are.
    pub fn disks(&self) -> usize {
        self.disks
    }
}
