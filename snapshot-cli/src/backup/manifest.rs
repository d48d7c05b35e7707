//! The manifest: one JSON file per backup, `<DIR>/<id>.json`, the record that a backup
//! exists and what it holds. Its schema is documented in docs/operations.md.
//!
//! It is written twice: `in-progress` (exclusively, before the transaction, naming
//! what the run creates in QEMU so a later run can clean up after a killed one), then
//! `complete` (atomically, write + rename) once every job succeeded and every image
//! was checksummed. Only `complete` backups are restored, verified or built upon.

use crate::error::{Error, Result};
use crate::report::Consistency;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The manifest format this qsnap writes and reads.
pub const FORMAT: &str = "qsnap-backup/1";

/// A manifest larger than this is not one of ours.
const MAX_MANIFEST: u64 = 1 << 20;

/// How far the backup got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum State {
    /// Written before the transaction; a run that died leaves it so.
    InProgress,
    /// Every job succeeded; the images are checksummed.
    Complete,
    /// A later run found this one dead and cleaned up its bitmaps and nodes.
    Failed,
}

/// Full or incremental.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Every cluster; no parent.
    Full,
    /// The clusters changed since the parent; each image is backed by the parent's.
    Incremental,
}

/// Which VM a backup is of (a directory holds one VM's backups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    /// `-name`, if any.
    pub name: Option<String>,
    /// `-uuid` (all zeros if none).
    pub uuid: String,
    /// The QMP socket the backup was made through.
    pub qmp_socket: String,
}

impl Vm {
    /// Whether `other` is the same VM: by name and uuid when it has either, by
    /// socket otherwise.
    pub fn same(&self, other: &Vm) -> bool {
        let anonymous = |v: &Vm| v.name.is_none() && v.uuid.bytes().all(|b| b == b'0' || b == b'-');
        if anonymous(self) && anonymous(other) {
            self.qmp_socket == other.qmp_socket
        } else {
            self.name == other.name && self.uuid == other.uuid
        }
    }
}

/// One disk of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// The disk: its qdev id (or drive name).
    pub disk: String,
    /// Its active node when backed up.
    pub node: String,
    /// The image, a file name in the backup directory.
    pub image: String,
    /// The parent backup's image of this disk (the image's backing file).
    pub backing: Option<String>,
    /// Guest-visible size, bytes.
    pub virtual_size: u64,
    /// Bytes the image holds (allocated in it, not in its backing chain).
    pub data_bytes: u64,
    /// Bytes the image file takes on the host.
    pub file_bytes: u64,
    /// The bitmap that records changes since this backup's instant.
    pub bitmap: String,
    /// The bitmap an incremental copied (the parent's).
    pub from_bitmap: Option<String>,
    /// SHA-256 of the disk's guest-visible content at the instant (the whole chain),
    /// hex; `None` until complete.
    pub sha256: Option<String>,
    /// The QEMU nodes and job this run used (cleanup after a killed run).
    pub target_node: String,
    /// The target's file node.
    pub target_file_node: String,
    /// The backup job.
    pub job: String,
}

/// A backup's manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The backup's id (time-ordered).
    pub id: String,
    /// How far it got.
    pub state: State,
    /// Full or incremental.
    pub kind: Kind,
    /// The parent backup's id (incremental).
    pub parent: Option<String>,
    /// Why a backup asked to be incremental is full.
    pub full_reason: Option<String>,
    /// The VM.
    pub vm: Vm,
    /// The instant (the transaction), RFC 3339 UTC.
    pub instant: String,
    /// The instant, milliseconds since the Unix epoch.
    pub instant_unix_ms: u64,
    /// Quiesced (filesystems frozen at the instant) or crash-consistent.
    pub consistency: Consistency,
    /// Filesystems frozen at the instant.
    pub frozen_filesystems: u64,
    /// QEMU's version.
    pub qemu_version: String,
    /// qsnap's version.
    pub qsnap_version: String,
    /// The disks.
    pub disks: Vec<Disk>,
    /// Anything the user should know.
    pub warnings: Vec<String>,
}

/// A manifest's path.
pub fn path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.json"))
}

impl Manifest {
    /// Writes it for the first time: never over an existing file.
    pub(crate) fn create(&self, dir: &Path) -> Result<()> {
        self.write_new(&path(dir, &self.id))
    }

    /// Rewrites it atomically (a temporary file renamed over it).
    pub(crate) fn update(&self, dir: &Path) -> Result<()> {
        let path = path(dir, &self.id);
        let tmp = dir.join(format!(".{}.json.tmp", self.id));
        let _ = std::fs::remove_file(&tmp);
        self.write_new(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(io("cannot replace the manifest", &path))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Writes it to a new file at `path` (`O_EXCL`) and syncs it.
    fn write_new(&self, path: &Path) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(path)
            .map_err(io("cannot create the manifest", path))?;
        file.write_all(&self.bytes())
            .and_then(|()| file.sync_all())
            .map_err(io("cannot write the manifest", path))
    }

    fn bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// Reads one manifest.
    ///
    /// # Errors
    /// It cannot be read, is larger than 1 MiB, is not JSON of this format, its id
    /// differs from its file name, or it names an image outside its directory.
    pub fn load(path: &Path) -> Result<Self> {
        // Not through a symlink, not a FIFO or device: a regular file, read bounded.
        let bytes = crate::regular::read_regular(path, MAX_MANIFEST)
            .map_err(io("cannot read the manifest", path))?
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{} is not a qsnap manifest (not a regular file of at most 1 MiB)",
                    path.display()
                ))
            })?;
        let m: Self = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Invalid(format!("{} is not a qsnap manifest: {e}", path.display()))
        })?;
        if m.format != FORMAT {
            return Err(Error::Invalid(format!(
                "{}: manifest format {:?}, this qsnap reads {FORMAT:?}",
                path.display(),
                m.format
            )));
        }
        if path.file_stem().and_then(|s| s.to_str()) != Some(m.id.as_str()) {
            return Err(Error::Invalid(format!(
                "{}: its id {:?} does not match its file name",
                path.display(),
                m.id
            )));
        }
        let generation = format!("qsnap-{}", m.id);
        for d in &m.disks {
            // Names qsnap acts on in QEMU (cleanup, retiring): only its own.
            let ours = d.bitmap == generation
                && d.target_node.starts_with(crate::disks::NODE_PREFIX)
                && d.target_file_node == format!("{}-f", d.target_node)
                && d.job == format!("{}-backup", d.target_node)
                && d.from_bitmap
                    .as_ref()
                    .is_none_or(|b| b.starts_with(crate::bitmaps::BITMAP_PREFIX));
            if !ours {
                return Err(Error::Invalid(format!(
                    "{}: disk {:?} names bitmaps, nodes or jobs that are not this backup's",
                    path.display(),
                    d.disk
                )));
            }
            for name in std::iter::once(&d.image).chain(&d.backing) {
                if !is_plain_file_name(name) {
                    return Err(Error::Invalid(format!(
                        "{}: image {name:?} is not a file name in the backup directory",
                        path.display()
                    )));
                }
            }
        }
        Ok(m)
    }

    /// The disk named `disk`.
    pub fn disk(&self, disk: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.disk == disk)
    }
}

/// A name without a directory part (manifests may only name files beside them).
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && name != "." && name != ".."
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_owned();
    move |source| Error::Io { what, path, source }
}

/// Every manifest in `dir`, oldest first; files that are not manifests are skipped.
///
/// # Errors
/// `dir` cannot be listed.
pub fn load_all(dir: &Path) -> Result<Vec<Manifest>> {
    let entries = std::fs::read_dir(dir).map_err(io("cannot list the backup directory", dir))?;
    let mut all = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let json = path.extension().is_some_and(|e| e == "json");
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if json && !hidden {
            match Manifest::load(&path) {
                Ok(m) => all.push(m),
                Err(e) => tracing::warn!(error = %e, "skipped"),
            }
        }
    }
    all.sort_by(|a, b| (a.instant_unix_ms, &a.id).cmp(&(b.instant_unix_ms, &b.id)));
    Ok(all)
}

/// The chain that ends at `id`: its full backup first. Every member must be
/// complete and present.
///
/// # Errors
/// A member is missing or not complete, the parents loop, or the first is not full.
pub fn chain(all: &[Manifest], id: &str) -> Result<Vec<Manifest>> {
    let mut chain = Vec::new();
    let mut next = Some(id.to_owned());
    while let Some(id) = next {
        let m = all
            .iter()
            .find(|m| m.id == id)
            .ok_or_else(|| Error::Invalid(format!("backup {id} is missing from the directory")))?;
        if m.state != State::Complete {
            return Err(Error::Invalid(format!(
                "backup {id} is {:?}, not complete",
                m.state
            )));
        }
        if chain.iter().any(|c: &Manifest| c.id == m.id) || chain.len() > 10_000 {
            return Err(Error::Invalid(format!(
                "backup {id}: its parents form a loop"
            )));
        }
        next = m.parent.clone();
        chain.push(m.clone());
    }
    chain.reverse();
    if chain.first().is_some_and(|m| m.kind != Kind::Full) {
        return Err(Error::Invalid(format!(
            "the chain of {id} does not start with a full backup"
        )));
    }
    Ok(chain)
}

/// The newest complete backup of `vm` in `all`.
pub fn latest<'a>(all: &'a [Manifest], vm: &Vm) -> Option<&'a Manifest> {
    all.iter()
        .rev()
        .find(|m| m.state == State::Complete && m.vm.same(vm))
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(id: &str, parent: Option<&str>, state: State) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            id: id.into(),
            state,
            kind: if parent.is_some() {
                Kind::Incremental
            } else {
                Kind::Full
            },
            parent: parent.map(Into::into),
            full_reason: None,
            vm: Vm {
                name: Some("vm".into()),
                uuid: "0".into(),
                qmp_socket: "/q".into(),
            },
            instant: String::new(),
            instant_unix_ms: id.len() as u64,
            consistency: Consistency::Quiesced,
            frozen_filesystems: 1,
            qemu_version: "10.0.2".into(),
            qsnap_version: "0".into(),
            disks: vec![],
            warnings: vec![],
        }
    }

    #[test]
    fn create_never_overwrites_and_update_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = sample("b1", None, State::InProgress);
        m.create(dir.path()).unwrap();
        assert!(m.create(dir.path()).is_err());
        m.state = State::Complete;
        m.update(dir.path()).unwrap();
        let back = Manifest::load(&path(dir.path(), "b1")).unwrap();
        assert_eq!(back, m);
        assert_eq!(load_all(dir.path()).unwrap(), vec![m]);
    }

    /// Disk `vda` with this image and bitmap, and qsnap's own node and job names.
    fn disk(image: &str, bitmap: &str) -> Disk {
        Disk {
            disk: "vda".into(),
            node: "n".into(),
            image: image.into(),
            backing: None,
            virtual_size: 1,
            data_bytes: 0,
            file_bytes: 0,
            bitmap: bitmap.into(),
            from_bitmap: None,
            sha256: None,
            target_node: "qsnap-t".into(),
            target_file_node: "qsnap-t-f".into(),
            job: "qsnap-t-backup".into(),
        }
    }

    #[test]
    fn a_manifest_naming_a_path_outside_its_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = sample("b1", None, State::Complete);
        m.disks.push(disk("../../etc/passwd", "qsnap-b1"));
        m.create(dir.path()).unwrap();
        let err = Manifest::load(&path(dir.path(), "b1")).unwrap_err();
        assert!(err.to_string().contains("not a file name"), "{err}");
    }

    #[test]
    fn a_manifest_naming_foreign_bitmaps_or_a_fifo_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = sample("b2", None, State::InProgress);
        m.disks.push(disk("b2.vda.qcow2", "libvirt-checkpoint"));
        m.create(dir.path()).unwrap();
        let err = Manifest::load(&path(dir.path(), "b2")).unwrap_err();
        assert!(err.to_string().contains("not this backup's"), "{err}");
        let fifo = dir.path().join("f.json");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(Manifest::load(&fifo).is_err());
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("z.json")).unwrap();
        assert!(Manifest::load(&dir.path().join("z.json")).is_err());
        assert!(load_all(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn chains_start_full_and_skip_nothing_incomplete() {
        let all = vec![
            sample("a", None, State::Complete),
            sample("ab", Some("a"), State::Complete),
            sample("abc", Some("ab"), State::InProgress),
        ];
        let ids: Vec<_> = chain(&all, "ab")
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, ["a", "ab"]);
        assert!(chain(&all, "abc").is_err());
        assert!(chain(&all[1..], "ab").is_err());
        let vm = all[0].vm.clone();
        assert_eq!(latest(&all, &vm).map(|m| m.id.as_str()), Some("ab"));
    }
}
