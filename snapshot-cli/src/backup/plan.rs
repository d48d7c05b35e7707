//! Planning a backup (nothing changes yet): which disks, full or incremental (and why
//! not incremental), the target images, the jobs, the new bitmap generation.

use super::manifest::{self, Kind, Manifest, State, Vm};
use crate::bitmaps::{BITMAP_PREFIX, Carried};
use crate::error::{Error, Result};
use crate::overlay::NewImage;
use qmp::commands::{
    BackupSync, BitmapSyncMode, BlockDeviceInfo, BlockDirtyBitmapAdd, BlockInfo, BlockdevBackup,
    QueryName, QueryUuid, Transaction, TransactionAction,
};
use std::path::{Path, PathBuf};

/// One disk to back up.
#[derive(Debug, Clone)]
pub(crate) struct DiskBackup {
    /// The disk's stable name: qdev id, else drive name.
    pub(crate) disk: String,
    /// At most how many bytes the copy writes: the parent bitmap's dirty bytes, or
    /// the host bytes of every image in the disk's chain.
    pub(crate) estimate: u64,
    /// Its active node now (the backup's source).
    pub(crate) node: String,
    /// The target image.
    pub(crate) target: NewImage,
    /// The backup job's id.
    pub(crate) job: String,
    /// The bitmap added at the instant (the next incremental copies it).
    pub(crate) bitmap: String,
    /// The parent's bitmap (incremental): what changed since the parent.
    pub(crate) from: Option<Carried>,
    /// The target's backing file (the parent's image), a name in the directory.
    pub(crate) backing: Option<String>,
    /// Merges the parent bitmap's copies lower in the chain (left by snapshots) into
    /// the active node's, before the freeze.
    pub(crate) merge_up: Option<TransactionAction>,
}

/// What planning decided.
#[derive(Debug)]
pub(crate) struct BackupPlan {
    pub(crate) id: String,
    pub(crate) kind: Kind,
    pub(crate) parent: Option<String>,
    pub(crate) full_reason: Option<String>,
    pub(crate) vm: Vm,
    pub(crate) disks: Vec<DiskBackup>,
    /// The copy's rate limit per disk, bytes per second.
    pub(crate) speed: Option<u64>,
    /// Every bitmap a manifest in the directory names (retired once this backup is
    /// complete, unless it is this backup's).
    pub(crate) known_bitmaps: Vec<String>,
}

/// The VM's identity, from QMP.
pub(crate) async fn identity(qmp: &qmp::Client, socket: &Path) -> Result<Vm> {
    let name = qmp
        .execute(&QueryName)
        .await
        .map_err(Error::qmp("query-name"))?;
    let uuid = qmp
        .execute(&QueryUuid)
        .await
        .map_err(Error::qmp("query-uuid"))?;
    Ok(Vm {
        name: name.name.filter(|n| !n.is_empty()),
        uuid: uuid.uuid,
        qmp_socket: socket.display().to_string(),
    })
}

/// A new backup id: the UTC time (sortable) and a random tag.
pub(crate) fn new_id(tag: &str) -> String {
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let compact: String = now.chars().filter(|c| !matches!(c, '-' | ':')).collect();
    format!("{}-{tag}", compact.replace('.', ""))
}

/// The disk's stable name.
pub(crate) fn disk_name(b: &BlockInfo) -> Result<String> {
    if let Some(id) = b.qdev_id() {
        return Ok(id.to_owned());
    }
    if !b.device.is_empty() {
        return Ok(b.device.clone());
    }
    Err(Error::Invalid(format!(
        "a disk ({}) has neither a device id nor a drive name: start it with -device ...,id=NAME so its backups can be matched across runs",
        b.inserted
            .as_ref()
            .and_then(|i| i.node_name.as_deref())
            .unwrap_or("?")
    )))
}

/// Inputs to [`decide`].
pub(crate) struct Inputs<'a> {
    pub(crate) dir: &'a Path,
    pub(crate) chosen: &'a [&'a BlockInfo],
    /// `query-named-block-nodes`: the bitmaps lower in each disk's chain.
    pub(crate) nodes: &'a [BlockDeviceInfo],
    pub(crate) all: &'a [Manifest],
    pub(crate) vm: &'a Vm,
    pub(crate) incremental: bool,
    pub(crate) speed: Option<u64>,
    pub(crate) tag: &'a str,
}

/// A directory holds one VM's backups.
pub(crate) fn same_vm(dir: &Path, all: &[Manifest], vm: &Vm) -> Result<()> {
    match all.iter().find(|m| !m.vm.same(vm)) {
        Some(other) => Err(Error::Invalid(format!(
            "{} holds backups of another VM ({}, backup {}); use one backup directory per VM",
            dir.display(),
            other.vm.name.as_deref().unwrap_or(&other.vm.qmp_socket),
            other.id
        ))),
        None => Ok(()),
    }
}

/// Decides full or incremental and lays out the targets.
pub(crate) fn decide(i: &Inputs<'_>) -> Result<BackupPlan> {
    same_vm(i.dir, i.all, i.vm)?;
    let id = new_id(i.tag);
    let parent = manifest::latest(i.all, i.vm);
    let (parent, full_reason) = match (i.incremental, parent) {
        (false, _) => (None, None),
        (true, None) => (
            None,
            Some(format!(
                "no complete earlier backup of this VM in {}",
                i.dir.display()
            )),
        ),
        (true, Some(p)) => match incremental_blocker(i, p) {
            None => (Some(p), None),
            Some(reason) => (None, Some(reason)),
        },
    };
    let mut disks = Vec::new();
    for (n, b) in i.chosen.iter().enumerate() {
        disks.push(disk_backup(i, b, n, &id, parent)?);
    }
    Ok(BackupPlan {
        kind: if parent.is_some() {
            Kind::Incremental
        } else {
            Kind::Full
        },
        parent: parent.map(|p| p.id.clone()),
        full_reason,
        vm: i.vm.clone(),
        known_bitmaps: i
            .all
            .iter()
            .flat_map(|m| m.disks.iter().map(|d| d.bitmap.clone()))
            .collect(),
        disks,
        speed: i.speed,
        id,
    })
}

/// Why an incremental on top of `parent` is impossible, if it is.
fn incremental_blocker(i: &Inputs<'_>, parent: &Manifest) -> Option<String> {
    // Built only on a chain that restores: every member complete, every image there.
    match manifest::chain(i.all, &parent.id) {
        Err(e) => return Some(format!("the last backup's chain is broken: {e}")),
        Ok(chain) => {
            let missing = chain
                .iter()
                .flat_map(|m| m.disks.iter().map(|d| &d.image))
                .find(|img| !i.dir.join(img).is_file());
            if let Some(img) = missing {
                return Some(format!("image {img} of the last backup's chain is missing"));
            }
        }
    }
    if parent.disks.len() != i.chosen.len() {
        return Some(format!(
            "the last backup ({}) has {} disks, this one {}",
            parent.id,
            parent.disks.len(),
            i.chosen.len()
        ));
    }
    for b in i.chosen {
        let Ok(name) = disk_name(b) else {
            return Some("a disk has no stable name".into());
        };
        let Some(pd) = parent.disk(&name) else {
            return Some(format!(
                "disk {name} is not in the last backup ({})",
                parent.id
            ));
        };
        let inserted = b.inserted.as_ref()?;
        if inserted.image.virtual_size != pd.virtual_size {
            return Some(format!("disk {name} was resized since the last backup"));
        }
        if !i.dir.join(&pd.image).exists() {
            return Some(format!("the last backup's image {} is missing", pd.image));
        }
        let found = inserted
            .dirty_bitmaps
            .iter()
            .find(|x| x.name() == pd.bitmap);
        match found {
            None => {
                return Some(format!(
                    "disk {name} has no bitmap {} (it records the changes since the last backup): QEMU stores a new bitmap in the image only when it closes it, so QEMU was killed since that backup, or the image was replaced outside qsnap",
                    pd.bitmap
                ));
            }
            Some(x) if x.inconsistent => {
                return Some(format!(
                    "bitmap {} of disk {name} is inconsistent: QEMU did not shut down cleanly since the last backup, so it may miss writes",
                    pd.bitmap
                ));
            }
            Some(x) if !x.persistent || !x.recording || x.busy => {
                return Some(format!(
                    "bitmap {} of disk {name} is not usable (persistent {}, recording {}, busy {})",
                    pd.bitmap, x.persistent, x.recording, x.busy
                ));
            }
            Some(_) => {}
        }
        for (lower, copy) in crate::bitmaps::lower_copies(i.nodes, inserted, &pd.bitmap) {
            if copy.inconsistent {
                return Some(format!(
                    "bitmap {} of disk {name} is inconsistent on node {lower} (lower in its chain): QEMU did not shut down cleanly since the last backup, so it may miss writes",
                    pd.bitmap
                ));
            }
        }
    }
    None
}

fn disk_backup(
    i: &Inputs<'_>,
    b: &BlockInfo,
    n: usize,
    id: &str,
    parent: Option<&Manifest>,
) -> Result<DiskBackup> {
    let disk = disk_name(b)?;
    let inserted = b
        .inserted
        .as_ref()
        .ok_or_else(|| Error::Invalid(format!("disk {disk} has no medium")))?;
    let node = inserted.node_name.clone().ok_or_else(|| {
        Error::Invalid(format!(
            "disk {disk} has no node-name; start QEMU with -blockdev ...,node-name=NAME"
        ))
    })?;
    if inserted.drv != "qcow2" || inserted.ro {
        return Err(Error::Invalid(format!(
            "disk {disk} ({node}) is {}{}: backups keep their bitmaps in a writable qcow2 image; leave it out with --disk",
            inserted.drv,
            if inserted.ro { ", read-only" } else { "" }
        )));
    }
    let safe: String = disk
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let image = format!("{id}.{safe}.qcow2");
    let pd = parent.and_then(|p| p.disk(&disk));
    let from = pd.and_then(|pd| {
        inserted
            .dirty_bitmaps
            .iter()
            .find(|x| x.name() == pd.bitmap)
            .map(|x| Carried {
                name: pd.bitmap.clone(),
                granularity: x.granularity,
            })
    });
    let estimate = match (&from, pd) {
        (Some(_), Some(pd)) => {
            let top = inserted
                .dirty_bitmaps
                .iter()
                .find(|x| x.name() == pd.bitmap);
            let lower = crate::bitmaps::lower_copies(i.nodes, inserted, &pd.bitmap);
            top.map_or(0, |b| b.count) + lower.iter().map(|(_, b)| b.count).sum::<u64>()
        }
        _ => inserted
            .image
            .chain()
            .map(|img| img.actual_size.unwrap_or(img.virtual_size))
            .sum::<u64>()
            .min(inserted.image.virtual_size),
    };
    let node_base = format!("{}{}-b{n}", crate::disks::NODE_PREFIX, i.tag);
    Ok(DiskBackup {
        target: NewImage {
            path: i.dir.join(&image),
            like: PathBuf::from(&inserted.image.filename),
            node: node_base.clone(),
            file_node: format!("{node_base}-f"),
            size: inserted.image.virtual_size,
            backing: pd.map(|pd| (pd.image.clone(), "qcow2".to_owned())),
            cluster_size: inserted.image.cluster_size,
        },
        job: format!("{node_base}-backup"),
        bitmap: format!("{BITMAP_PREFIX}{id}"),
        backing: pd.map(|pd| pd.image.clone()),
        merge_up: from
            .as_ref()
            .and_then(|f| crate::bitmaps::merge_up_actions(i.nodes, inserted, &f.name)),
        from,
        estimate,
        disk,
        node,
    })
}

impl BackupPlan {
    /// Refuses, before anything changes, a backup the directory has no room for: a
    /// copy that fails on a full target fails the guest's writes meanwhile (QEMU's
    /// backup filter copies a cluster to the target before a guest write may change
    /// it, and fails that write if the copy fails).
    pub(crate) fn check_room(&self, dir: &Path) -> Result<()> {
        // qcow2 metadata: an L2 table per 512 MiB, refcounts; 2 % is ample.
        let need: u64 = self
            .disks
            .iter()
            .map(|d| d.estimate + d.estimate / 50 + (1 << 20))
            .sum();
        let fs = rustix::fs::statvfs(dir).map_err(|e| {
            Error::Invalid(format!(
                "cannot read the free space of {}: {e}",
                dir.display()
            ))
        })?;
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        if free < need {
            return Err(Error::Invalid(format!(
                "{} has {} MiB free; this backup may write up to {} MiB: free some space or choose another directory (a copy that fails on a full target fails the guest's writes while it runs)",
                dir.display(),
                free >> 20,
                need.div_ceil(1 << 20)
            )));
        }
        Ok(())
    }

    /// The transaction inside the freeze: per disk, the backup job and the new
    /// bitmap generation (recording from the same instant). The parent's bitmap is
    /// left alone (`bitmap-mode: never`): it is retired only once this backup is
    /// complete.
    pub(crate) fn transaction(&self) -> Transaction {
        let actions = self
            .disks
            .iter()
            .flat_map(|d| {
                let backup = TransactionAction::BlockdevBackup(BlockdevBackup {
                    job_id: d.job.clone(),
                    device: d.node.clone(),
                    target: d.target.node.clone(),
                    sync: if d.from.is_some() {
                        BackupSync::Bitmap
                    } else {
                        BackupSync::Full
                    },
                    bitmap: d.from.as_ref().map(|f| f.name.clone()),
                    bitmap_mode: d.from.as_ref().map(|_| BitmapSyncMode::Never),
                    speed: self.speed,
                    auto_dismiss: false,
                });
                let add = TransactionAction::BlockDirtyBitmapAdd(BlockDirtyBitmapAdd {
                    node: d.node.clone(),
                    name: d.bitmap.clone(),
                    granularity: d.from.as_ref().map(|f| f.granularity),
                    persistent: true,
                });
                [backup, add]
            })
            .collect();
        Transaction { actions }
    }

    /// The manifest as planned (`in-progress`).
    pub(crate) fn manifest(&self, qemu_version: &str) -> Manifest {
        Manifest {
            format: manifest::FORMAT.into(),
            id: self.id.clone(),
            state: State::InProgress,
            kind: self.kind,
            parent: self.parent.clone(),
            full_reason: self.full_reason.clone(),
            vm: self.vm.clone(),
            instant: String::new(),
            instant_unix_ms: 0,
            consistency: crate::report::Consistency::CrashConsistent,
            frozen_filesystems: 0,
            qemu_version: qemu_version.to_owned(),
            qsnap_version: env!("CARGO_PKG_VERSION").to_owned(),
            disks: self
                .disks
                .iter()
                .map(|d| manifest::Disk {
                    disk: d.disk.clone(),
                    node: d.node.clone(),
                    image: d
                        .target
                        .path
                        .file_name()
                        .map(|f| f.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    backing: d.backing.clone(),
                    virtual_size: d.target.size,
                    data_bytes: 0,
                    file_bytes: 0,
                    bitmap: d.bitmap.clone(),
                    from_bitmap: d.from.as_ref().map(|f| f.name.clone()),
                    sha256: None,
                    target_node: d.target.node.clone(),
                    target_file_node: d.target.file_node.clone(),
                    job: d.job.clone(),
                })
                .collect(),
            warnings: Vec::new(),
        }
    }
}
