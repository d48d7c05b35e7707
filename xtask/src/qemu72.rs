//! Debian 12's own QEMU 7.2 and its qemu-ga, for the smoke tests that keep qsnap
//! working with the QEMU that bookworm hosts run (the rig itself uses 10.0 from
//! bookworm-backports).
//!
//! The packages (`qemu-system-x86`, `qemu-system-common` for its modules,
//! `qemu-guest-agent`) are downloaded from the `bookworm` suite and unpacked into
//! `target/qsnap-guest/qemu-7.2/root`, beside the installed 10.0 and in no conflict
//! with it: nothing is installed. The rig runs that emulator with
//! `QEMU_MODULE_DIR` pointing into the tree and the host's firmware (`seabios`,
//! `qemu-system-data`); the 7.2 guest image carries that qemu-ga and 7.2's own
//! fsfreeze hook dispatcher.

use crate::packages::Apt;
use crate::run::{output, status};
use anyhow::{Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

const SUITE: &str = "bookworm";
const PACKAGES: &[&str] = &["qemu-system-x86", "qemu-system-common", "qemu-guest-agent"];

/// The unpacked tree.
pub(crate) struct Qemu72 {
    root: PathBuf,
    /// The `.deb` files unpacked, which say the exact versions (for the image stamp).
    pub(crate) debs: String,
}

impl Qemu72 {
    /// The guest agent, to put in the 7.2 guest image.
    pub(crate) fn qemu_ga(&self) -> PathBuf {
        self.root.join("usr/sbin/qemu-ga")
    }

    /// 7.2's fsfreeze hook dispatcher.
    pub(crate) fn dispatcher(&self) -> PathBuf {
        self.root.join("etc/qemu/fsfreeze-hook")
    }
}

/// Downloads and unpacks the packages into `dir` unless a complete tree is there.
pub(crate) fn unpack(apt: &Apt, dir: &Path) -> Result<Qemu72> {
    let root = dir.join("root");
    let debs_dir = dir.join("debs");
    let stamp = dir.join("stamp");
    let emulator = root.join("usr/bin/qemu-system-x86_64");
    if let Ok(debs) = fs::read_to_string(&stamp)
        && emulator.exists()
    {
        return Ok(Qemu72 { root, debs });
    }
    eprintln!(
        "xtask: unpacking Debian 12's QEMU 7.2 into {}",
        dir.display()
    );
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(&debs_dir)?;
    for package in PACKAGES {
        apt.download(&format!("{package}/{SUITE}"), &debs_dir)?;
    }
    let mut debs: Vec<String> = fs::read_dir(&debs_dir)?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(".deb"))
        .collect();
    debs.sort();
    if debs.len() != PACKAGES.len() {
        bail!(
            "expected {} .deb files in {}, found {debs:?}",
            PACKAGES.len(),
            debs_dir.display()
        );
    }
    for deb in &debs {
        status(
            Command::new("dpkg-deb")
                .arg("-x")
                .arg(debs_dir.join(deb))
                .arg(&root),
        )?;
    }
    let version = output(Command::new(&emulator).arg("--version").env(
        "QEMU_MODULE_DIR",
        root.join("usr/lib/x86_64-linux-gnu/qemu"),
    ))?;
    if !version.contains("version 7.2") {
        bail!("{} says {version:?}, not 7.2", emulator.display());
    }
    let debs = debs.join("\n");
    fs::write(&stamp, &debs)?;
    Ok(Qemu72 { root, debs })
}
