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

    /// Debian 12's QEMU 7.2 as unpacked beside the image (`qemu-7.2/root`), with the
    /// initramfs that carries its qemu-ga.
    ///
    /// # Errors
    /// [`Error::NoImage`] when the tree or that initramfs is missing.
    pub fn qemu72(&self) -> Result<Qemu72> {
        let root = self.dir.join("qemu-7.2/root");
        let q = Qemu72 {
            emulator: root.join("usr/bin/qemu-system-x86_64"),
            module_dir: root.join("usr/lib/x86_64-linux-gnu/qemu"),
            initramfs: self.dir.join("initramfs-qemu72.cpio.gz"),
        };
        for p in [&q.emulator, &q.module_dir, &q.initramfs] {
            if !p.exists() {
                return Err(Error::NoImage(p.clone()));
            }
        }
        Ok(q)
    }

    /// How many base disks there are.
    pub fn disks(&self) -> usize {
        self.disks
    }
}

/// QEMU 7.2 from Debian 12, unpacked (not installed) by `cargo xtask guest-image`.
#[derive(Debug, Clone)]
pub struct Qemu72 {
    /// `qemu-system-x86_64` 7.2.
    pub emulator: PathBuf,
    /// Its modules (the TCG accelerator is one): `QEMU_MODULE_DIR`.
    pub module_dir: PathBuf,
    /// The guest image's initramfs with qemu-ga 7.2 and 7.2's hook dispatcher.
    pub initramfs: PathBuf,
}

impl Qemu72 {
    /// Where 7.2 finds the firmware it needs, installed with the host's QEMU: SeaBIOS
    /// and the option ROMs (`-L` directories, searched in order).
    pub const FIRMWARE: [&'static str; 2] = ["/usr/share/seabios", "/usr/share/qemu"];
}
