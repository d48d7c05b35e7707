//! Installing the Debian packages the rig needs.
//!
//! QEMU comes from `<codename>-backports`: the machine image ships `qemu-utils` 10.0 from
//! bookworm-backports, and bookworm's own `qemu-system-x86` 7.2 conflicts with it. So that
//! /etc/apt stays untouched, apt runs on a private configuration under `target/`: the
//! host's own sources (its mirror or proxy) plus the backports suite where the host lacks
//! it (see [`crate::sources`]), and a private lists directory.

use crate::run::{have, output, status};
use crate::sources::{self, Private};
use anyhow::{Context, Result, bail};
use std::fs;
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
    // The benchmarks' peak-RSS figure (GNU time's %M).
    ("/usr/bin/time", "time"),
    // `systemd-analyze verify` checks contrib/systemd's units.
    ("systemd-analyze", "systemd"),
];

/// A private apt configuration rooted in `target/qsnap-apt`.
pub(crate) struct Apt {
    dir: PathBuf,
    /// The `-t` release for installs, `<codename>-backports`, when there is one.
    backports: Option<String>,
    /// The private sources as one text; the lists are refreshed when it changes.
    fingerprint: String,
    /// Set once [`Apt::update_once`] has looked (the lists stay as they are for the
    /// rest of this xtask run).
    checked: std::cell::Cell<bool>,
}

impl Apt {
    /// Writes the private configuration from the host's apt sources.
    pub(crate) fn new(root: &Path) -> Result<Self> {
        let dir = root.join("target/qsnap-apt");
        fs::create_dir_all(dir.join("lists/partial"))
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let host = sources::read_host(Path::new("/etc/apt"))?;
        let private = sources::plan(&host, &sources::read_os_release()?);
        if let Some(note) = &private.note {
            eprintln!("xtask: note: {note}");
        }
        write_private(&dir, &private)?;
        Ok(Self {
            dir,
            backports: private.backports.clone(),
            fingerprint: private.fingerprint(),
            checked: std::cell::Cell::new(false),
        })
    }

    /// The backports suite installs target (`<codename>-backports`), if any.
    pub(crate) fn backports(&self) -> Option<&str> {
        self.backports.as_deref()
    }

    fn options(&self) -> Vec<String> {
        vec![
            format!(
                "-o=Dir::Etc::SourceList={}",
                self.dir.join("sources.list").display()
            ),
            format!(
                "-o=Dir::Etc::SourceParts={}",
                self.dir.join("sources.list.d").display()
            ),
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

    /// `apt-get update` on the private lists, when they are empty or were fetched for
    /// other sources (the host's changed, or an older xtask wrote different ones).
    pub(crate) fn update_once(&self) -> Result<()> {
        if self.checked.replace(true) {
            return Ok(());
        }
        let lists = self.dir.join("lists");
        // `lock` and `partial/` are there even before the first update.
        let populated = fs::read_dir(&lists)
            .with_context(|| format!("cannot list {}", lists.display()))?
            .count()
            > 2;
        let stamp = self.dir.join("sources.updated");
        let current = fs::read_to_string(&stamp).ok().as_deref() == Some(&*self.fingerprint);
        if populated && current {
            return Ok(());
        }
        if populated && !is_root() {
            // Only root can refresh them (apt's sandbox user is root here); stale lists
            // still download and resolve, and a root run refreshes them.
            eprintln!(
                "xtask: note: the apt sources changed since {} was fetched; run `cargo xtask \
                 guest-image` as root to refresh it",
                lists.display()
            );
            return Ok(());
        }
        let extra = self
            .backports()
            .map_or(String::new(), |suite| format!(" + {suite}"));
        eprintln!("xtask: apt-get update (private lists: the host's apt sources{extra})");
        status(self.command("apt-get").args(["update", "-q"]))?;
        fs::write(&stamp, &self.fingerprint)
            .with_context(|| format!("cannot write {}", stamp.display()))
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
        cmd.args(["install", "-y", "-q", "--no-install-recommends"]);
        if let Some(suite) = self.backports() {
            cmd.args(["-t", suite]);
        }
        cmd.args(packages);
        status(&mut cmd)
    }
}

/// Writes the private `sources.list` and `sources.list.d/`, leaving unchanged files
/// alone (a non-root run can then still read a root-owned configuration).
fn write_private(dir: &Path, private: &Private) -> Result<()> {
    write_if_changed(&dir.join("sources.list"), &private.list)?;
    let parts = dir.join("sources.list.d");
    fs::create_dir_all(&parts).with_context(|| format!("cannot create {}", parts.display()))?;
    for entry in fs::read_dir(&parts).with_context(|| format!("cannot list {}", parts.display()))? {
        let path = entry?.path();
        // A host file since removed (or renamed) must not linger in the private copy.
        let wanted = private
            .parts
            .iter()
            .any(|(name, _)| path.file_name().is_some_and(|n| n == name.as_str()));
        if !wanted {
            fs::remove_file(&path)
                .with_context(|| format!("cannot remove the stale {}", path.display()))?;
        }
    }
    for (name, contents) in &private.parts {
        write_if_changed(&parts.join(name), contents)?;
    }
    Ok(())
}

fn write_if_changed(path: &Path, contents: &str) -> Result<()> {
    if fs::read_to_string(path).ok().as_deref() == Some(contents) {
        return Ok(());
    }
    fs::write(path, contents).with_context(|| {
        format!(
            "cannot write {}; run `cargo xtask guest-image` as the user who owns target/",
            path.display()
        )
    })
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
