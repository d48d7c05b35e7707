//! Offline: listing the backups of a directory, restoring one disk of a backup to a
//! standalone image, verifying a backup's chain and checksums. No QEMU process runs;
//! `qemu-img` reads the images (see [`super::content`]).

use super::content::{self, Stop};
use super::manifest::{self, Kind, Manifest, State};
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// One backup in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupSummary {
    /// Its id.
    pub id: String,
    /// Full or incremental.
    pub kind: Kind,
    /// How far it got.
    pub state: State,
    /// Its instant.
    pub instant: String,
    /// Its disks.
    pub disks: Vec<String>,
    /// Bytes its images hold.
    pub data_bytes: u64,
    /// Its manifest.
    pub manifest: PathBuf,
}

/// A full backup and the incrementals built on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainSummary {
    /// Oldest first.
    pub backups: Vec<BackupSummary>,
}

/// What a backup directory holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupList {
    /// The complete chains, oldest first.
    pub chains: Vec<ChainSummary>,
    /// Backups that are not complete (in progress, or failed): not restorable.
    pub incomplete: Vec<BackupSummary>,
}

fn summary(dir: &Path, m: &Manifest) -> BackupSummary {
    BackupSummary {
        id: m.id.clone(),
        kind: m.kind,
        state: m.state,
        instant: m.instant.clone(),
        disks: m.disks.iter().map(|d| d.disk.clone()).collect(),
        data_bytes: m.disks.iter().map(|d| d.data_bytes).sum(),
        manifest: manifest::path(dir, &m.id),
    }
}

/// Lists the backups in `dir`, grouped into chains.
///
/// # Errors
/// When `dir` cannot be read.
pub fn list(dir: &Path) -> Result<BackupList> {
    let all = manifest::load_all(dir)?;
    let mut chains: Vec<ChainSummary> = Vec::new();
    let mut incomplete = Vec::new();
    for m in &all {
        if m.state != State::Complete {
            incomplete.push(summary(dir, m));
            continue;
        }
        let parent_chain = m.parent.as_ref().and_then(|p| {
            chains
                .iter_mut()
                .find(|c| c.backups.iter().any(|b| b.id == *p))
        });
        match parent_chain {
            Some(c) => c.backups.push(summary(dir, m)),
            None => chains.push(ChainSummary {
                backups: vec![summary(dir, m)],
            }),
        }
    }
    Ok(BackupList { chains, incomplete })
}

/// The manifest at `path` and every manifest beside it.
fn open(path: &Path) -> Result<(PathBuf, Manifest, Vec<Manifest>)> {
    let m = Manifest::load(path)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let all = manifest::load_all(&dir)?;
    Ok((dir, m, all))
}

/// What verifying found: nothing wrong (an error otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The backup verified.
    pub backup: String,
    /// Its chain, full first.
    pub chain: Vec<String>,
    /// Images checked (`qemu-img check`, backing chain, checksum).
    pub images: usize,
}

/// Checks a backup and every backup it builds on: each image exists, is consistent
/// (`qemu-img check`), has exactly the backing chain the manifests say, and its
/// guest-visible content hashes to the recorded SHA-256.
///
/// # Errors
/// [`Error::VerifyFailed`] listing every problem found.
pub fn verify(manifest_path: &Path, stop: &Stop) -> Result<VerifyReport> {
    let (dir, m, all) = open(manifest_path)?;
    let chain = manifest::chain(&all, &m.id).map_err(|e| Error::VerifyFailed {
        problems: vec![e.to_string()],
    })?;
    let mut problems = Vec::new();
    let mut images = 0;
    for (i, b) in chain.iter().enumerate() {
        for d in &b.disks {
            images += 1;
            if let Err(e) = verify_image(&dir, &chain[..=i], &d.disk, stop) {
                if matches!(e, Error::Interrupted) {
                    return Err(e);
                }
                problems.push(format!("backup {} disk {}: {e}", b.id, d.disk));
            }
        }
    }
    if !problems.is_empty() {
        return Err(Error::VerifyFailed { problems });
    }
    Ok(VerifyReport {
        backup: m.id.clone(),
        chain: chain.iter().map(|c| c.id.clone()).collect(),
        images,
    })
}

/// The images of `disk` along `chain` (full first), as paths in `dir`.
fn disk_images(dir: &Path, chain: &[Manifest], disk: &str) -> Result<Vec<PathBuf>> {
    chain
        .iter()
        .map(|b| {
            b.disk(disk)
                .map(|d| dir.join(&d.image))
                .ok_or_else(|| Error::Invalid(format!("backup {} has no disk {disk}", b.id)))
        })
        .collect()
}

/// Checks the last backup of `chain`'s image of `disk`.
fn verify_image(dir: &Path, chain: &[Manifest], disk: &str, stop: &Stop) -> Result<()> {
    let Some(last) = chain.last() else {
        return Ok(());
    };
    let d = last
        .disk(disk)
        .ok_or_else(|| Error::Invalid(format!("no disk {disk}")))?;
    let expected = disk_images(dir, chain, disk)?;
    let top = dir.join(&d.image);
    content::check(&top)?;
    let found = content::chain(&top, "qcow2")?;
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned());
    let found_paths: Vec<PathBuf> = found
        .iter()
        .map(|c| canon(Path::new(&c.filename)))
        .collect();
    let want: Vec<PathBuf> = expected.iter().rev().map(|p| canon(p)).collect();
    if found_paths != want {
        return Err(Error::Invalid(format!(
            "its backing chain is {found_paths:?}, the manifests say {want:?}"
        )));
    }
    if found
        .iter()
        .any(|c| c.format != "qcow2" || c.virtual_size != d.virtual_size)
    {
        return Err(Error::Invalid(
            "a chain member has another format or size".into(),
        ));
    }
    let got = content::hash(&top, "qcow2", stop)?;
    match &d.sha256 {
        Some(want) if *want == got.sha256 => Ok(()),
        Some(want) => Err(Error::Invalid(format!(
            "content SHA-256 {} differs from the manifest's {want}",
            got.sha256
        ))),
        None => Err(Error::Invalid("the manifest has no checksum".into())),
    }
}

/// The result of a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    /// The backup restored.
    pub backup: String,
    /// The disk.
    pub disk: String,
    /// The new image.
    pub to: PathBuf,
    /// Its format.
    pub format: String,
    /// The SHA-256 of its content, equal to the manifest's.
    pub sha256: String,
    /// The images read, full first.
    pub chain: Vec<PathBuf>,
}

/// Builds a standalone image of `disk` (optional when the backup has one disk) at the
/// backup's instant, at `to` (never an existing path), in `format` (`qcow2` or
/// `raw`), and checks its content against the manifest before it appears at `to`.
///
/// # Errors
/// When `to` exists, the chain is incomplete or broken, or the content differs.
pub fn restore(
    manifest_path: &Path,
    disk: Option<&str>,
    to: &Path,
    format: &str,
    stop: &Stop,
) -> Result<RestoreReport> {
    if !matches!(format, "qcow2" | "raw") {
        return Err(Error::Invalid(format!(
            "--format {format}: use qcow2 or raw"
        )));
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(Error::Invalid(format!(
            "{} exists; qsnap never overwrites a file: choose a new path",
            to.display()
        )));
    }
    let (dir, m, all) = open(manifest_path)?;
    let disk = match disk {
        Some(d) => d.to_owned(),
        None if m.disks.len() == 1 => m.disks[0].disk.clone(),
        None => {
            let names: Vec<_> = m.disks.iter().map(|d| d.disk.as_str()).collect();
            return Err(Error::Invalid(format!(
                "backup {} has {} disks ({}): choose one with --disk",
                m.id,
                names.len(),
                names.join(", ")
            )));
        }
    };
    let chain = manifest::chain(&all, &m.id)?;
    let images = disk_images(&dir, &chain, &disk)?;
    let d = m
        .disk(&disk)
        .ok_or_else(|| Error::Invalid(format!("backup {} has no disk {disk}", m.id)))?;
    let want = d
        .sha256
        .clone()
        .ok_or_else(|| Error::Invalid("the manifest has no checksum".into()))?;
    let to_dir = to
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    crate::plan::check_not_swappable(to_dir)?;
    let name = to
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("{} is not a file path", to.display())))?;
    let tmp = to_dir.join(format!(
        ".{}.qsnap-restore-{}",
        name.to_string_lossy(),
        crate::coordinator::node_tag()
    ));
    let created = crate::overlay::create_exclusive(&tmp, &dir.join(&d.image))?;
    let result = (|| {
        content::convert(&dir.join(&d.image), &tmp, format)?;
        let got = content::hash(&tmp, format, stop)?;
        if got.sha256 != want {
            return Err(Error::Invalid(format!(
                "the restored content's SHA-256 {} differs from the manifest's {want}",
                got.sha256
            )));
        }
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|source| Error::Io {
                what: "cannot sync",
                path: tmp.clone(),
                source,
            })?;
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &tmp,
            rustix::fs::CWD,
            to,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| {
            Error::Invalid(format!(
                "cannot move the restored image to {} (it must not exist): {e}",
                to.display()
            ))
        })?;
        Ok(got.sha256)
    })();
    match result {
        Ok(sha256) => Ok(RestoreReport {
            backup: m.id.clone(),
            disk,
            to: to.to_owned(),
            format: format.to_owned(),
            sha256,
            chain: images,
        }),
        Err(e) => {
            let _ = created.remove();
            Err(e)
        }
    }
}
