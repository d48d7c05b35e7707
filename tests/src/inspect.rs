//! Looking at disk images from the host: backing chains and ext4 state.

use crate::error::{Error, Result};
use std::path::Path;
use std::process::Command;

fn run(tool: &'static str, cmd: &mut Command) -> Result<String> {
    let out = cmd.output().map_err(|e| Error::Spawn(tool, e))?;
    if !out.status.success() {
        return Err(Error::Tool(
            tool,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The filenames of `image`'s backing chain, top first, from
/// `qemu-img info -U --backing-chain` (works while QEMU has the image open).
///
/// # Errors
/// `qemu-img` fails or prints something unexpected.
pub fn backing_chain(image: &Path) -> Result<Vec<String>> {
    let json = run(
        "qemu-img info",
        Command::new("qemu-img")
            .args(["info", "-U", "--backing-chain", "--output=json"])
            .arg(image),
    )?;
    let infos: Vec<serde_json::Value> =
        serde_json::from_str(&json).map_err(|e| Error::Tool("qemu-img info", e.to_string()))?;
    Ok(infos
        .iter()
        .filter_map(|i| i["filename"].as_str().map(str::to_owned))
        .collect())
}

/// Whether the ext4 file system in `image` (qcow2, read through its backing chain)
/// has `needs_recovery` set: a copy taken while mounted and not frozen has it, one
/// taken while frozen does not. The image is copied to a raw temp file first.
///
/// # Errors
/// `qemu-img convert` or `dumpe2fs` fails.
pub fn ext4_needs_recovery(image: &Path) -> Result<bool> {
    raw_needs_recovery(raw_copy(image)?.path())
}

/// Whether the ext4 filesystem of the raw image `raw` has a journal to replay.
fn raw_needs_recovery(raw: &Path) -> Result<bool> {
    let header = run("dumpe2fs", Command::new("dumpe2fs").arg("-h").arg(raw))?;
    let features = header
        .lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .ok_or_else(|| Error::Tool("dumpe2fs", "no feature line".into()))?;
    Ok(features.split_whitespace().any(|f| f == "needs_recovery"))
}

/// A raw copy of `image` (through its backing chain) in a temporary file.
///
/// # Errors
/// `qemu-img convert` failed.
pub fn raw_copy(image: &Path) -> Result<tempfile::NamedTempFile> {
    let tmp = tempfile::Builder::new().suffix(".raw").tempfile()?;
    run(
        "qemu-img convert",
        Command::new("qemu-img")
            .args(["convert", "-U", "-O", "raw"])
            .arg(image)
            .arg(tmp.path()),
    )?;
    Ok(tmp)
}

/// A file's content in the ext4 filesystem of the raw image `raw` (`debugfs`).
///
/// # Errors
/// `debugfs` failed.
pub fn ext4_file(raw: &Path, path: &str) -> Result<Vec<u8>> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(raw)
        .output()
        .map_err(|e| Error::Spawn("debugfs", e))?;
    // debugfs exits 0 even when the file is missing; it says so on stderr.
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() || stderr.contains("not found") {
        return Err(Error::Tool("debugfs", stderr.into_owned()));
    }
    Ok(out.stdout)
}

/// Whether `e2fsck -fn` finds the ext4 filesystem of the raw image `raw` clean and
/// without a journal to replay (`needs_recovery`).
///
/// # Errors
/// A tool could not run.
pub fn ext4_clean(raw: &Path) -> Result<bool> {
    let recovery = raw_needs_recovery(raw)?;
    let fsck = Command::new("e2fsck")
        .args(["-f", "-n"])
        .arg(raw)
        .output()
        .map_err(|e| Error::Spawn("e2fsck", e))?;
    Ok(!recovery && fsck.status.success())
}

/// A SQLite database as stored in an ext4 filesystem image, read without the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteState {
    /// What `PRAGMA integrity_check` answers (`ok` when sound).
    pub integrity: String,
    /// The size of the write-ahead log stored beside the database (`None`: no WAL
    /// file). Frames left in it are commits not yet in the database file.
    pub wal_bytes: Option<usize>,
    /// `SELECT coalesce(max(n), 0) FROM rows`: the last committed row.
    pub last_row: i64,
}

/// Opens the database `path` (and its `-wal`) found in the ext4 filesystem of the raw
/// image `raw` with the host's `sqlite3`, on copies in a temporary directory. The WAL's
/// size is taken before SQLite opens it (opening replays and may remove it).
///
/// # Errors
/// `debugfs` or `sqlite3` failed, or `sqlite3` printed something unexpected.
pub fn sqlite_in_ext4(raw: &Path, path: &str) -> Result<SqliteState> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("db.sqlite");
    std::fs::write(&db, ext4_file(raw, path)?)?;
    let wal = ext4_file(raw, &format!("{path}-wal")).ok();
    if let Some(wal) = &wal {
        std::fs::write(dir.path().join("db.sqlite-wal"), wal)?;
    }
    let out = run(
        "sqlite3",
        Command::new("sqlite3")
            .arg(&db)
            .arg("PRAGMA integrity_check; SELECT 'last=' || coalesce(max(n), 0) FROM rows;"),
    )?;
    let mut integrity = Vec::new();
    let mut last_row = None;
    for line in out.lines() {
        match line.strip_prefix("last=") {
            Some(n) => last_row = n.parse().ok(),
            None => integrity.push(line),
        }
    }
    Ok(SqliteState {
        integrity: integrity.join("\n"),
        wal_bytes: wal.map(|w| w.len()),
        last_row: last_row.ok_or_else(|| Error::Tool("sqlite3", out.clone()))?,
    })
}
