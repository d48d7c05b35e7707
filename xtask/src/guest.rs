//! Building the test guest: a Debian cloud kernel, an initramfs with busybox, qemu-ga
//! and Debian's fsfreeze hook dispatcher, sqlite3 and a database writer, and base ext4
//! data disks, cached in `target/qsnap-guest`.
//!
//! The build is skipped when `stamp` matches the inputs (kernel package, qemu-ga and
//! sqlite3 versions, the guest's scripts and sources, this builder's version) and every
//! output exists.

use crate::packages::{self, Apt};
use crate::qemu72;
use crate::run::{output, shell, status};
use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the layout of the image changes.
const BUILDER_VERSION: &str = "4";
const INIT: &str = include_str!("../assets/init");
/// The test database's fsfreeze-hook.d script.
const HOOK_SQLITE: &str = include_str!("../assets/hook-sqlite");
/// The database writer, compiled against the host's libsqlite3 (the guest gets the
/// same library, copied from the package like qemu-ga).
const DBWRITER_C: &str = include_str!("../assets/dbwriter.c");
/// The write-stall probe (and heavy writer) the benchmarks read.
const STALLPROBE_C: &str = include_str!("../assets/stallprobe.c");
/// qsnap's strict dispatcher, offered to users in `contrib/guest/`.
const STRICT_DISPATCHER: &str = include_str!("../../contrib/guest/fsfreeze-hook");
/// Debian's dispatcher, from the qemu-guest-agent package.
const DEBIAN_DISPATCHER: &str = "/etc/qemu/fsfreeze-hook";
const QEMU_GA: &str = "/usr/sbin/qemu-ga";
/// Host programs copied into the guest with their libraries.
const PROGRAMS: &[&str] = &["/usr/bin/sqlite3", "/usr/bin/flock"];
/// The image with Debian 12's qemu-ga 7.2 (same kernel, disks and scripts).
const INITRAMFS_72: &str = "initramfs-qemu72.cpio.gz";

/// The guest agent an initramfs carries: its binary and its fsfreeze hook dispatcher,
/// installed at the usual paths in the guest.
struct AgentFiles {
    qemu_ga: PathBuf,
    dispatcher: PathBuf,
}
/// Loaded by `/init` in this order (virtio is modular in the cloud kernel; ext4 is built in).
const MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
];
/// Base data disks built (`data0.qcow2` ...); a VM may use up to this many (the
/// benchmarks snapshot 16 at once).
const DISKS: usize = 16;
const DISK_MIB: u64 = 64;

/// Where the image lives.
pub(crate) fn dir(root: &Path) -> PathBuf {
    root.join("target/qsnap-guest")
}

/// Installs missing packages and builds the guest if it is out of date.
pub(crate) fn build(root: &Path) -> Result<PathBuf> {
    let apt = Apt::new(root)?;
    packages::ensure(&apt)?;
    let out = dir(root);
    fs::create_dir_all(&out)?;
    let kernel_pkg = apt.first_dependency("linux-image-cloud-amd64")?;
    let qemu72 = qemu72::unpack(&apt, &out.join("qemu-7.2"))?;
    let sources = [
        INIT,
        HOOK_SQLITE,
        DBWRITER_C,
        STALLPROBE_C,
        STRICT_DISPATCHER,
    ]
    .concat();
    let stamp = format!(
        "builder {BUILDER_VERSION}\nkernel {kernel_pkg}\nqemu-ga {}\nsqlite3 {}\nsources {:016x}\nqemu 7.2 {}\n",
        package_version("qemu-guest-agent")?,
        package_version("sqlite3")?,
        fnv1a(sources.as_bytes()),
        qemu72.debs.replace('\n', " ")
    );
    let outputs = ["vmlinuz", "initramfs.cpio.gz", INITRAMFS_72]
        .into_iter()
        .map(String::from)
        .chain((0..DISKS).map(|i| format!("data{i}.qcow2")));
    let complete = outputs.into_iter().all(|f| out.join(f).exists());
    if complete && fs::read_to_string(out.join("stamp")).ok().as_deref() == Some(stamp.as_str()) {
        eprintln!("xtask: guest image up to date in {}", out.display());
        return Ok(out);
    }
    eprintln!("xtask: building the guest image in {}", out.display());
    let modules = unpack_kernel(&apt, &kernel_pkg, &out)?;
    let host = AgentFiles {
        qemu_ga: PathBuf::from(QEMU_GA),
        dispatcher: PathBuf::from(DEBIAN_DISPATCHER),
    };
    let built = compile_programs(&out)?;
    build_initramfs(&out, &modules, &host, &built, "initramfs.cpio.gz")?;
    let debian12 = AgentFiles {
        qemu_ga: qemu72.qemu_ga(),
        dispatcher: qemu72.dispatcher(),
    };
    build_initramfs(&out, &modules, &debian12, &built, INITRAMFS_72)?;
    build_disks(&out)?;
    fs::write(out.join("stamp"), stamp)?;
    Ok(out)
}

fn package_version(package: &str) -> Result<String> {
    output(Command::new("dpkg-query").args(["-W", "-f=${Version}", package]))
}

/// Downloads and unpacks the kernel package; copies `vmlinuz`; returns the module dir.
fn unpack_kernel(apt: &Apt, package: &str, out: &Path) -> Result<PathBuf> {
    let kdir = out.join("kernel");
    let _ = fs::remove_dir_all(&kdir);
    fs::create_dir_all(&kdir)?;
    apt.download(package, &kdir)?;
    let deb = fs::read_dir(&kdir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download produced no .deb")?;
    status(Command::new("dpkg").arg("-x").arg(&deb).arg(kdir.join("x")))?;
    let boot = kdir.join("x/boot");
    let vmlinuz = find_prefixed(&boot, "vmlinuz-")?;
    fs::copy(&vmlinuz, out.join("vmlinuz"))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("odd vmlinuz name")?
        .to_owned();
    Ok(kdir.join("x/lib/modules").join(release))
}

fn find_prefixed(dir: &Path, prefix: &str) -> Result<PathBuf> {
    fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .with_context(|| format!("no {prefix}* in {}", dir.display()))
}

/// The guest's own programs, compiled once for every initramfs: (binary on the host,
/// its path in the guest).
fn compile_programs(out: &Path) -> Result<Vec<(PathBuf, &'static str)>> {
    let dbwriter = out.join("qsnap-dbwriter");
    compile(out, "dbwriter.c", DBWRITER_C, &["-lsqlite3"], &dbwriter)?;
    let probe = out.join("qsnap-stallprobe");
    compile(out, "stallprobe.c", STALLPROBE_C, &["-pthread"], &probe)?;
    Ok(vec![
        (dbwriter, "/usr/bin/qsnap-dbwriter"),
        (probe, "/usr/bin/qsnap-stallprobe"),
    ])
}

/// Builds `out/name` with `agent` as the guest's qemu-ga and dispatcher, and the
/// compiled `built` programs.
fn build_initramfs(
    out: &Path,
    modules: &Path,
    agent: &AgentFiles,
    built: &[(PathBuf, &str)],
    name: &str,
) -> Result<()> {
    let stage = out.join("initramfs");
    let _ = fs::remove_dir_all(&stage);
    for d in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "lib/modules",
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "var/log",
        "etc/qemu/fsfreeze-hook.d",
        "usr/share/qsnap",
    ] {
        fs::create_dir_all(stage.join(d))?;
    }
    copy_into(&stage, Path::new("/bin/busybox"))?;
    copy_to(&stage, &agent.dispatcher, Path::new(DEBIAN_DISPATCHER))?;
    copy_to(&stage, &agent.qemu_ga, Path::new(QEMU_GA))?;
    for lib in shared_libraries(&agent.qemu_ga)? {
        copy_into(&stage, &lib)?;
    }
    for program in PROGRAMS.iter().map(Path::new) {
        copy_into(&stage, program)?;
        for lib in shared_libraries(program)? {
            copy_into(&stage, &lib)?;
        }
    }
    for (binary, guest) in built {
        copy_to(&stage, binary, Path::new(guest))?;
        for lib in shared_libraries(binary)? {
            copy_into(&stage, &lib)?;
        }
    }
    for (file, text) in [
        ("hook-sqlite", HOOK_SQLITE),
        ("fsfreeze-hook-strict", STRICT_DISPATCHER),
    ] {
        let path = stage.join("usr/share/qsnap").join(file);
        fs::write(&path, text)?;
        set_executable(&path)?;
    }
    for name in MODULES {
        let found = find_module(modules, name)?;
        fs::copy(&found, stage.join(format!("lib/modules/{name}.ko")))?;
    }
    let init = stage.join("init");
    fs::write(&init, INIT)?;
    set_executable(&init)?;
    shell(
        &stage,
        &format!("find . | cpio -o -H newc --quiet | gzip -1 > ../{name}"),
    )
}

/// Builds one of the guest's programs with the host's gcc (and the host's libraries,
/// which the guest gets copies of).
fn compile(out: &Path, name: &str, source: &str, libs: &[&str], binary: &Path) -> Result<()> {
    let path = out.join(name);
    fs::write(&path, source)?;
    status(
        Command::new("gcc")
            .args(["-O2", "-Wall", "-Werror", "-o"])
            .arg(binary)
            .arg(&path)
            .args(libs),
    )
}

/// Copies `file` to the same absolute path under `stage`.
fn copy_into(stage: &Path, file: &Path) -> Result<()> {
    copy_to(stage, file, file)
}

/// Copies `file` to the absolute path `guest` under `stage`.
fn copy_to(stage: &Path, file: &Path, guest: &Path) -> Result<()> {
    let rel = guest.strip_prefix("/").unwrap_or(guest);
    let dest = stage.join(rel);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(file, &dest).with_context(|| format!("cannot copy {}", file.display()))?;
    Ok(())
}

/// Every library `ldd` lists for `binary`, and the loader.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let listing = output(Command::new("ldd").arg(binary))?;
    let libs: Vec<PathBuf> = listing
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=> ").map_or(l, |(_, p)| p);
            path.split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
        })
        .map(PathBuf::from)
        .collect();
    if libs.is_empty() {
        bail!("ldd {} listed no libraries", binary.display());
    }
    Ok(libs)
}

fn find_module(dir: &Path, name: &str) -> Result<PathBuf> {
    let wanted = format!("{name}.ko");
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d)?.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().is_some_and(|n| n == wanted.as_str()) {
                return Ok(path);
            }
        }
    }
    bail!("module {wanted} not found under {}", dir.display())
}

fn build_disks(out: &Path) -> Result<()> {
    for i in 0..DISKS {
        let raw = out.join(format!("data{i}.raw"));
        let qcow = out.join(format!("data{i}.qcow2"));
        let _ = fs::remove_file(&qcow);
        let file = fs::File::create(&raw)?;
        file.set_len(DISK_MIB << 20)?;
        drop(file);
        status(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L"])
                .arg(format!("data{i}"))
                .arg(&raw),
        )?;
        status(
            Command::new("qemu-img")
                .args(["convert", "-q", "-O", "qcow2"])
                .arg(&raw)
                .arg(&qcow),
        )?;
        fs::remove_file(&raw)?;
    }
    Ok(())
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// A stable hash for the stamp (std's hasher is randomly seeded).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
