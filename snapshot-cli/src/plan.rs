//! Planning: which disks, which overlay paths and node names. Nothing changes yet.

use crate::bitmaps::Carried;
use crate::disks::{NODE_PREFIX, find};
use crate::error::{Error, Result};
use crate::overlay::NewImage;
use qmp::commands::BlockInfo;
use std::path::{Path, PathBuf};

/// One disk to snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DiskPlan {
    /// The active node now.
    pub(crate) node: String,
    /// The guest device's qdev id.
    pub(crate) device: Option<String>,
    /// The active image file.
    pub(crate) file: String,
    /// Its format (recorded as the overlay's backing format).
    pub(crate) format: String,
    /// Its exact guest-visible size: a smaller overlay would shrink the disk.
    pub(crate) virtual_size: u64,
    /// Its cluster size, copied to the overlay.
    pub(crate) cluster_size: Option<u64>,
    /// The overlay file to create.
    pub(crate) overlay: PathBuf,
    /// The overlay's qcow2 node.
    pub(crate) overlay_node: String,
    /// The overlay's file node.
    pub(crate) file_node: String,
    /// qsnap's recording bitmaps on the active node, carried onto the overlay.
    pub(crate) bitmaps: Vec<Carried>,
}

impl DiskPlan {
    /// The overlay to create: backed by the active image, with its size.
    pub(crate) fn new_image(&self) -> NewImage {
        NewImage {
            path: self.overlay.clone(),
            like: PathBuf::from(&self.file),
            node: self.overlay_node.clone(),
            file_node: self.file_node.clone(),
            size: self.virtual_size,
            backing: Some((self.file.clone(), self.format.clone())),
            cluster_size: self.cluster_size,
        }
    }
}

/// Checks a snapshot name: it becomes part of file names.
pub(crate) fn validate_name(name: &str) -> Result<()> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with(['.', '-']) {
        return Err(Error::Invalid(format!(
            "invalid snapshot name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        )));
    }
    Ok(())
}

/// `snap-YYYYmmddTHHMMSSZ` from the current UTC time.
pub(crate) fn default_name() -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let compact: String = now.chars().filter(|c| !matches!(c, '-' | ':')).collect();
    format!("snap-{compact}")
}

/// The disks `wanted` names (every writable disk when empty).
pub(crate) fn chosen<'a>(blocks: &'a [BlockInfo], wanted: &[String]) -> Result<Vec<&'a BlockInfo>> {
    let candidates: Vec<&BlockInfo> = blocks.iter().filter(|b| b.inserted.is_some()).collect();
    let chosen: Vec<&BlockInfo> = if wanted.is_empty() {
        candidates
            .iter()
            .copied()
            .filter(|b| b.inserted.as_ref().is_some_and(|i| !i.ro))
            .collect()
    } else {
        let mut chosen: Vec<&BlockInfo> = Vec::new();
        for want in wanted {
            let found = find(&candidates, want)?;
            if !chosen.iter().any(|c| std::ptr::eq(*c, found)) {
                chosen.push(found);
            }
        }
        chosen
    };
    if chosen.is_empty() {
        return Err(Error::Invalid(
            "the VM has no writable disk to snapshot or back up".into(),
        ));
    }
    Ok(chosen)
}

/// Chooses the disks and derives their overlays. `tag` makes node names unique.
pub(crate) fn select(
    blocks: &[BlockInfo],
    wanted: &[String],
    name: &str,
    overlay_dir: Option<&Path>,
    tag: &str,
) -> Result<Vec<DiskPlan>> {
    let chosen = chosen(blocks, wanted)?;
    let plans = chosen
        .iter()
        .enumerate()
        .map(|(i, b)| disk_plan(b, i, name, overlay_dir, tag))
        .collect::<Result<Vec<_>>>()?;
    for (i, p) in plans.iter().enumerate() {
        if plans[..i].iter().any(|q| q.overlay == p.overlay) {
            return Err(Error::Invalid(format!(
                "two disks would share the overlay {}; use different image names or no --overlay-dir",
                p.overlay.display()
            )));
        }
    }
    Ok(plans)
}

fn disk_plan(
    block: &BlockInfo,
    i: usize,
    name: &str,
    overlay_dir: Option<&Path>,
    tag: &str,
) -> Result<DiskPlan> {
    let inserted = block
        .inserted
        .as_ref()
        .ok_or_else(|| Error::Invalid("no medium".into()))?;
    let node = inserted.node_name.clone().ok_or_else(|| {
        Error::Invalid(format!(
            "disk {} has no node-name; start QEMU with -blockdev ...,node-name=NAME",
            block.device
        ))
    })?;
    let file = inserted.image.filename.clone();
    let image = Path::new(&file);
    if !image.is_absolute() {
        return Err(Error::Invalid(format!(
            "disk {node}'s image {file:?} is not a local file; qsnap snapshots local images only"
        )));
    }
    let stem = image.file_stem().and_then(|s| s.to_str()).unwrap_or("disk");
    let dir = overlay_dir.unwrap_or_else(|| image.parent().unwrap_or(Path::new("/")));
    Ok(DiskPlan {
        device: block.qdev_id().map(str::to_owned),
        format: inserted.image.format.clone(),
        virtual_size: inserted.image.virtual_size,
        cluster_size: inserted.image.cluster_size,
        overlay: dir.join(format!("{stem}.{name}.qcow2")),
        overlay_node: format!("{NODE_PREFIX}{tag}-{i}"),
        file_node: format!("{NODE_PREFIX}{tag}-{i}-f"),
        bitmaps: crate::bitmaps::carried(&inserted.dirty_bitmaps),
        node,
        file,
    })
}

/// Filesystems that live in RAM: an overlay there loses every write made after the
/// snapshot at the next reboot, and fills memory meanwhile.
const RAM_FILESYSTEMS: &[(i64, &str)] = &[(0x0102_1994, "tmpfs/devtmpfs"), (0x8584_58f6, "ramfs")];

/// The RAM filesystem `dir` is on, if it is on one.
pub(crate) fn ram_filesystem(dir: &Path) -> Option<&'static str> {
    let fs = rustix::fs::statfs(dir).ok()?;
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is i64 here but narrower on other targets"
    )]
    let kind = i64::from(fs.f_type);
    RAM_FILESYSTEMS
        .iter()
        .find(|(magic, _)| *magic == kind)
        .map(|(_, name)| *name)
}

/// Refuses overlay paths that exist (files, symlinks, even dangling ones),
/// directories that are missing or cannot be written, and — unless the directory was
/// chosen explicitly — directories in RAM (the parent of a disk on a block device is
/// `/dev`, a devtmpfs). Creation with `O_EXCL` checks again, atomically.
pub(crate) fn check_paths(plans: &[DiskPlan], dir_chosen: bool) -> Result<()> {
    for plan in plans {
        let dir = plan.overlay.parent().unwrap_or(Path::new("/"));
        if !dir_chosen && let Some(fs) = ram_filesystem(dir) {
            return Err(Error::Invalid(format!(
                "disk {} ({}): the overlay would go to {}, a {fs} in RAM — every write after the snapshot would be lost at reboot; choose a directory on persistent storage with --overlay-dir DIR",
                plan.node,
                plan.file,
                dir.display()
            )));
        }
        if std::fs::symlink_metadata(&plan.overlay).is_ok() {
            return Err(Error::OverlayExists(plan.overlay.clone()));
        }
        let dir = plan.overlay.parent().unwrap_or(Path::new("/"));
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(Error::Invalid(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            Err(_) => {
                return Err(Error::Invalid(format!(
                    "overlay directory {} does not exist; create it first",
                    dir.display()
                )));
            }
        }
        // access() answers yes to root everywhere but on a read-only filesystem.
        let read_only = rustix::fs::statvfs(dir)
            .is_ok_and(|v| v.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
        if read_only || rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_err() {
            return Err(Error::OverlayDirNotWritable(dir.to_owned()));
        }
        check_not_swappable(dir)?;
    }
    Ok(())
}

/// qsnap creates each overlay with `O_EXCL`, then QEMU opens it *by path*. In a
/// directory another user can write (without the sticky bit) or owns, that user could
/// replace the file in between and have QEMU format theirs. Refused: only this user
/// and root may be able to rename or unlink entries of an overlay directory.
pub(crate) fn check_not_swappable(dir: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir).map_err(|source| Error::Io {
        what: "cannot inspect",
        path: dir.to_owned(),
        source,
    })?;
    let me = rustix::process::geteuid().as_raw();
    if let Some(why) = swappable(meta.mode(), meta.uid(), me) {
        return Err(Error::Invalid(format!(
            "overlay directory {} {why}: another user could replace an overlay between its creation and QEMU opening it; use a directory only you (or root) can write, or one with the sticky bit",
            dir.display()
        )));
    }
    Ok(())
}

/// Why a directory with `mode` owned by `owner` lets users other than `me` and root
/// replace its entries, if it does.
fn swappable(mode: u32, owner: u32, me: u32) -> Option<String> {
    const STICKY: u32 = 0o1000;
    if owner != me && owner != 0 {
        return Some(format!("is owned by uid {owner}"));
    }
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        return Some(format!(
            "is writable by its group or others (mode {:o}) without the sticky bit",
            mode & 0o7777
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disks::{needs_resolution, resolve_chain_names};
    use qmp::commands::BlockDeviceInfo;
    use serde_json::json;
    use std::os::unix::fs::PermissionsExt;

    fn blocks() -> Vec<BlockInfo> {
        let disk = |i: u32, ro: bool| {
            json!({"device": "", "removable": false,
                "qdev": format!("/machine/peripheral/vblk{i}/virtio-backend"),
                "inserted": {"node-name": format!("disk{i}"), "file": format!("/vm/disk{i}.qcow2"),
                    "ro": ro, "drv": "qcow2",
                    "image": {"filename": format!("/vm/disk{i}.qcow2"), "format": "qcow2",
                        "virtual-size": 1 << 26, "cluster-size": 65536}}})
        };
        let empty = json!({"device": "cd0", "removable": true});
        serde_json::from_value(json!([
            disk(0, false),
            disk(1, false),
            disk(2, true),
            empty
        ]))
        .unwrap()
    }

    #[test]
    fn default_selects_every_writable_disk_with_overlays_beside_the_images() {
        let plans = select(&blocks(), &[], "s1", None, "ab").unwrap();
        assert_eq!(plans.len(), 2);
        assert_eq!(plans[1].node, "disk1");
        assert_eq!(plans[1].device.as_deref(), Some("vblk1"));
        assert_eq!(plans[1].overlay, Path::new("/vm/disk1.s1.qcow2"));
        assert_eq!(plans[1].overlay_node, "qsnap-ab-1");
        assert_eq!(plans[1].virtual_size, 1 << 26);
        assert_eq!(plans[1].cluster_size, Some(65536));
    }

    #[test]
    fn disks_are_chosen_by_node_or_qdev_id_without_duplicates() {
        let wanted = ["vblk1".to_owned(), "disk1".to_owned(), "disk0".to_owned()];
        let plans = select(&blocks(), &wanted, "s", Some(Path::new("/o")), "t").unwrap();
        let nodes: Vec<_> = plans.iter().map(|p| p.node.as_str()).collect();
        assert_eq!(nodes, ["disk1", "disk0"]);
        assert_eq!(plans[0].overlay, Path::new("/o/disk1.s.qcow2"));
    }

    #[test]
    fn a_node_lower_in_a_chain_names_its_disk() {
        let mut blocks = blocks();
        // disk1 was snapshotted: its active node is now an overlay on disk1.
        let inserted = blocks[1].inserted.as_mut().unwrap();
        inserted.node_name = Some("qsnap-ab-1".into());
        let base = inserted.image.clone();
        inserted.image.filename = "/vm/disk1.s.qcow2".into();
        inserted.image.backing_image = Some(Box::new(base));
        let nodes: Vec<BlockDeviceInfo> = serde_json::from_value(json!([
            {"node-name": "disk1", "file": "/vm/disk1.qcow2", "ro": true, "drv": "qcow2",
             "image": {"filename": "/vm/disk1.qcow2", "format": "qcow2", "virtual-size": 1}}
        ]))
        .unwrap();
        let wanted = ["disk1".to_owned(), "vblk0".to_owned(), "nope".to_owned()];
        assert!(needs_resolution(&blocks, &wanted));
        let resolved = resolve_chain_names(&blocks, &nodes, &wanted);
        assert_eq!(resolved, ["qsnap-ab-1", "vblk0", "nope"]);
    }

    #[test]
    fn unknown_disk_lists_the_real_ones() {
        let err = select(&blocks(), &["vda".to_owned()], "s", None, "t").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("no disk `vda`") && text.contains("disk0 (device vblk0)"),
            "{text}"
        );
    }

    #[test]
    fn names_that_could_escape_a_file_name_are_refused() {
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        validate_name("nightly-2026.11_27").unwrap();
        validate_name(&default_name()).unwrap();
    }

    #[test]
    fn existing_file_dangling_symlink_and_missing_dir_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = select(&blocks(), &[], "s", Some(dir.path()), "t")
            .unwrap()
            .remove(0);
        check_paths(std::slice::from_ref(&plan), true).unwrap();
        std::os::unix::fs::symlink("/nonexistent", &plan.overlay).unwrap();
        assert!(matches!(
            check_paths(std::slice::from_ref(&plan), true),
            Err(Error::OverlayExists(_))
        ));
        plan.overlay = dir.path().join("missing/x.qcow2");
        let err = check_paths(std::slice::from_ref(&plan), true).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        std::fs::write(dir.path().join("missing"), b"a file").unwrap();
        let err = check_paths(&[plan], true).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }

    #[test]
    fn a_disk_on_a_block_device_is_refused_an_overlay_in_dev_unless_a_dir_is_chosen() {
        let mut blocks = blocks();
        let inserted = blocks[0].inserted.as_mut().unwrap();
        inserted.image.filename = "/dev/loop0".into();
        inserted.image.format = "raw".into();
        let plans = select(&blocks[..1], &[], "s", None, "t").unwrap();
        assert_eq!(plans[0].overlay, Path::new("/dev/loop0.s.qcow2"));
        let err = check_paths(&plans, false).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("--overlay-dir") && text.contains("/dev"),
            "{text}"
        );
        assert!(!Path::new("/dev/loop0.s.qcow2").exists());
        assert_eq!(ram_filesystem(Path::new("/dev")), Some("tmpfs/devtmpfs"));
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        assert_eq!(ram_filesystem(dir.path()), None);
        let plans = select(&blocks[..1], &[], "s", Some(dir.path()), "t").unwrap();
        check_paths(&plans, true).unwrap();
    }

    #[test]
    fn directories_where_others_could_swap_an_overlay_are_refused() {
        assert_eq!(swappable(0o40755, 1000, 1000), None);
        assert_eq!(swappable(0o40755, 0, 1000), None, "root's directory");
        assert_eq!(swappable(0o41777, 0, 1000), None, "/tmp: sticky");
        assert!(swappable(0o40777, 0, 1000).unwrap().contains("sticky"));
        assert!(swappable(0o40775, 1000, 1000).unwrap().contains("group"));
        assert!(swappable(0o40700, 1001, 1000).unwrap().contains("uid 1001"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let plans = select(&blocks(), &[], "s", Some(dir.path()), "t").unwrap();
        let err = check_paths(&plans, true).unwrap_err();
        assert!(err.to_string().contains("replace an overlay"), "{err}");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        check_paths(&plans, true).unwrap();
    }
}
