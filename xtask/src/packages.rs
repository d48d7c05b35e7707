//! Installing the Debian packages the rig needs.
//!
//! QEMU comes from bookworm-backports: the machine image ships `qemu-utils` 10.0 from
//! backports, and bookworm's own `qemu-system-x86` 7.2 conflicts with it. So that
//! /etc/apt stays untouched, a private sources list (the four suites) and a private
//! lists directory under `target/` are used.

use crate::run::{have, output, status};
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the rig needs, as (file that proves it is installed, package).
const NEEDED: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("/usr/sbin/qemu-ga", "qemu-guest-agent"),
    ("qemu-img", "qemu-utils"),
    ("/bin/busybox", "busybox-static"),
    ("cpio", "cpio"),
    ("mkfs.ext4", "e2fsprogs"),
    ("dumpe2fs", "e2fsprogs"),
    ("gzip", "gzip"),
    // The test database: the guest's sqlite3 and the writer's library come from these
    // packages; the host's sqlite3 opens the images the tests take.
    ("/usr/bin/sqlite3", "sqlite3"),
    ("/usr/include/sqlite3.h", "libsqlite3-dev"),
    ("/usr/bin/flock", "util-linux"),
    ("gcc", "gcc"),
    // The metrics file is read back by node_exporter's textfile collector.
    ("prometheus-node-exporter", "prometheus-node-exporter"),
    // `systemd-analyze verify` checks contrib/systemd's units.
    ("systemd-analyze", "systemd"),
];

const SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
";

/// A private apt configuration rooted in `target/qsnap-apt`.
pub(crate) struct Apt {
    dir: PathBuf,
}

impl Apt {
    pub(crate) fn new(root: &Path) -> Result<Self> {
        let dir = root.join("target/qsnap-apt");
        std::fs::create_dir_all(dir.join("lists/partial"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(dir.join("sources.list"), SOURCES)?;
        Ok(Self { dir })
    }

    fn options(&self) -> Vec<String> {
        vec![
            format!(
                "-o=Dir::Etc::SourceList={}",
                self.dir.join("sources.list").display()
            ),
            "-o=Dir::Etc::SourceParts=/dev/null".into(),
            // Downloads land in our own directory, which the _apt user cannot write.
            "-o=APT::Sandbox::User=root".into(),
            format!("-o=Dir::State::Lists={}", self.dir.join("lists").display()),
        ]
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(self.options())
            .env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// `apt-get update` on the private lists, once (when they are empty).
    pub(crate) fn update_once(&self) -> Result<()> {
        let lists = std::fs::read_dir(self.dir.join("lists"))?.count();
        if lists > 2 {
            return Ok(());
        }
        eprintln!("xtask: apt-get update (private lists with bookworm-backports)");
        status(self.command("apt-get").args(["update", "-q"]))
    }

    /// The concrete package a virtual/meta package depends on first.
    pub(crate) fn first_dependency(&self, package: &str) -> Result<String> {
        self.update_once()?;
        let out = output(self.command("apt-cache").args(["depends", package]))?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("Depends: "))
            .map(str::to_owned)
            .with_context(|| format!("apt-cache depends {package}: no dependency listed"))
    }

    /// `apt-get download` into `dir`.
    pub(crate) fn download(&self, package: &str, dir: &Path) -> Result<()> {
        self.update_once()?;
        status(
            self.command("apt-get")
                .args(["download", "-q", package])
                .current_dir(dir),
        )
    }

    fn install(&self, packages: &[&str]) -> Result<()> {
        self.update_once()?;
        let mut cmd = self.command("apt-get");
        cmd.args(["install", "-y", "-q", "--no-install-recommends"])
            .args(["-t", "bookworm-backports"])
            .args(packages);
        status(&mut cmd)
    }
}

/// Installs whatever of [`NEEDED`] is missing.
pub(crate) fn ensure(apt: &Apt) -> Result<()> {
    let mut missing: Vec<&str> = NEEDED
        .iter()
        .filter(|(file, _)| !have(file) || (*file == "/bin/busybox" && !busybox_is_static()))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing packages: {}; run `cargo xtask guest-image` as root once (it installs them)",
            missing.join(" ")
        );
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    // qemu-utils is named too so apt upgrades it together with qemu-system-x86.
    missing.push("qemu-utils");
    apt.install(&missing)
}

fn busybox_is_static() -> bool {
    // `ldd` exits non-zero for a static binary ("not a dynamic executable").
    Command::new("ldd")
        .arg("/bin/busybox")
        .output()
        .is_ok_and(|o| !o.status.success())
}

fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|uid| uid.trim() == "0")
}
