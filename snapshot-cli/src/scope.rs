//! Which guest filesystems a snapshot of some of the disks must freeze.
//!
//! Freezing a filesystem blocks every write to it; freezing one that lives only on
//! disks the snapshot does not cover buys nothing. When `--disk` chooses a subset,
//! the guest's filesystems (`guest-get-fsinfo`: the PCI address of each filesystem's
//! disks) are matched with QEMU's devices (`query-pci`: the qdev id at each address),
//! and only the filesystems that touch a chosen disk are frozen
//! (`guest-fsfreeze-freeze-list`).
//!
//! Safety first: a filesystem is left thawed only when qsnap is sure every disk under
//! it is a disk outside the run, and qemu-ga's disk list is known to be incomplete in
//! some cases (multi-device btrfs lists one device; device-mapper/md slaves behind a
//! driver it does not know are dropped; external journals are not listed). So a
//! filesystem stays thawed only if all of these hold:
//!
//! * its type is `ext2`, `ext3`, `ext4` or `xfs`, and its device is a whole virtio disk
//!   or a partition of one (`vdX`, `vdXN`: no device-mapper, md, loop);
//! * every disk the guest lists under it is a `virtio` disk with a device node, at a
//!   PCI address (domain 0) where QEMU has exactly one disk, and that disk is not
//!   chosen;
//! * the guest is not Windows (its qemu-ga reports slot numbers that may not be PCI
//!   device numbers).
//!
//! Everything else — a filesystem touching a chosen disk, an address no disk or two
//! disks have, any other type or device — is frozen, and the report says why. Not
//! covered: an ext4/xfs whose external journal or log device is a chosen disk while
//! its main device is not (qemu-ga does not list it). Guest text is bounded (at most
//! [`MAX_FILESYSTEMS`] filesystems, mountpoints of at most [`MAX_MOUNTPOINT`] bytes)
//! or the freeze is whole. A guest that lies can only get its own filesystems left
//! thawed.

use qga::commands::{GuestFilesystemInfo, GuestPciAddress};
use qmp::commands::PciBus;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// More filesystems than this and the freeze is whole (guest text stays bounded).
pub const MAX_FILESYSTEMS: usize = 256;
/// A longer mountpoint and the freeze is whole.
pub const MAX_MOUNTPOINT: usize = 4096;
/// Filesystem types qemu-ga lists every device of (one device each).
const SIMPLE_TYPES: &[&str] = &["ext2", "ext3", "ext4", "xfs"];

/// Whether `name` (the guest's device name) is a virtio disk or a partition of one.
fn plain_virtio_device(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("vd") else {
        return false;
    };
    let letters = rest.trim_end_matches(|c: char| c.is_ascii_digit());
    !letters.is_empty() && letters.chars().all(|c| c.is_ascii_lowercase())
}

/// What to freeze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FreezeScope {
    /// The mountpoints to freeze; empty: every filesystem (`guest-fsfreeze-freeze`).
    pub frozen: Vec<String>,
    /// Mountpoints left thawed: every disk under them is one the snapshot skips.
    pub not_frozen: Vec<String>,
    /// Why a filesystem was frozen although it may not need to be, or why everything
    /// was frozen.
    pub notes: Vec<String>,
}

impl FreezeScope {
    /// Everything, for `reason`.
    pub(crate) fn all(reason: impl Into<String>) -> Self {
        Self {
            frozen: Vec::new(),
            not_frozen: Vec::new(),
            notes: vec![reason.into()],
        }
    }

    /// Whether only some filesystems are frozen.
    pub fn is_partial(&self) -> bool {
        !self.not_frozen.is_empty()
    }
}

/// The scope for a snapshot of the disks with qdev ids `chosen`, out of every disk
/// `all` (qdev ids of every disk QEMU lists), given QEMU's PCI buses and the guest's
/// filesystems.
pub(crate) fn scope(
    chosen: &BTreeSet<String>,
    all: &BTreeSet<String>,
    pci: &[PciBus],
    filesystems: &[GuestFilesystemInfo],
) -> FreezeScope {
    if filesystems.len() > MAX_FILESYSTEMS
        || filesystems
            .iter()
            .any(|f| f.mountpoint.len() > MAX_MOUNTPOINT)
    {
        return FreezeScope::all(format!(
            "the guest lists more than {MAX_FILESYSTEMS} filesystems or an over-long mountpoint: every filesystem is frozen"
        ));
    }
    // PCI address (domain 0: QEMU's query-pci knows no other) -> the one disk there;
    // an address two devices share (several root buses) maps to none.
    let mut disk_at: BTreeMap<GuestPciAddress, Option<&str>> = BTreeMap::new();
    for device in pci
        .iter()
        .flat_map(|b| b.devices.iter().flat_map(|d| d.flatten()))
    {
        let at = GuestPciAddress {
            domain: 0,
            bus: device.bus,
            slot: device.slot,
            function: device.function,
        };
        let here = all
            .contains(&device.qdev_id)
            .then_some(device.qdev_id.as_str());
        disk_at.entry(at).and_modify(|d| *d = None).or_insert(here);
    }
    let mut frozen = BTreeSet::new();
    let mut not_frozen = BTreeSet::new();
    let mut notes = Vec::new();
    for fs in filesystems {
        let mut touches_chosen = false;
        let mut unsure = None;
        if !SIMPLE_TYPES.contains(&fs.fs_type.as_str()) {
            unsure = Some(format!(
                "{} filesystems may span disks qemu-ga does not list",
                fs.fs_type
            ));
        } else if !plain_virtio_device(&fs.name) {
            unsure = Some("not directly on a virtio disk (device-mapper, md, loop...)".to_owned());
        } else if fs.disk.is_empty() {
            unsure = Some("the guest reports no disk under it".to_owned());
        }
        for d in &fs.disk {
            let a = d.pci_controller;
            match disk_at.get(&a).copied().flatten() {
                Some(id) if chosen.contains(id) => touches_chosen = true,
                Some(_) if d.bus_type.as_deref() == Some("virtio") && d.dev.is_some() => {}
                Some(_) => {
                    unsure =
                        Some("a disk not reported as a virtio disk with a device node".to_owned())
                }
                None => {
                    unsure = Some(format!(
                        "{:04x}:{:02x}:{:02x}.{} is not exactly one disk QEMU lists",
                        a.domain, a.bus, a.slot, a.function
                    ));
                }
            }
        }
        if touches_chosen {
            frozen.insert(fs.mountpoint.clone());
        } else if let Some(why) = unsure {
            notes.push(format!("{} frozen: {why}", fs.mountpoint));
            frozen.insert(fs.mountpoint.clone());
        } else {
            not_frozen.insert(fs.mountpoint.clone());
        }
    }
    // A mountpoint listed twice (bind mounts) is frozen if any listing needs it.
    not_frozen.retain(|m| !frozen.contains(m));
    if frozen.is_empty() {
        return FreezeScope::all(
            "no guest filesystem maps to the chosen disks: every filesystem is frozen",
        );
    }
    if not_frozen.is_empty() {
        // Everything: the plain freeze says so and freezes what the guest adds later.
        return FreezeScope {
            frozen: Vec::new(),
            not_frozen: Vec::new(),
            notes,
        };
    }
    FreezeScope {
        frozen: frozen.into_iter().collect(),
        not_frozen: not_frozen.into_iter().collect(),
        notes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qga::commands::GuestDiskAddress;
    use qmp::commands::{PciBridge, PciDevice};

    fn device(bus: i64, slot: i64, id: &str) -> PciDevice {
        PciDevice {
            bus,
            slot,
            function: 0,
            qdev_id: id.into(),
            pci_bridge: None,
        }
    }

    fn fs(mountpoint: &str, slots: &[(i64, i64)]) -> GuestFilesystemInfo {
        GuestFilesystemInfo {
            name: "vda1".into(),
            mountpoint: mountpoint.into(),
            fs_type: "ext4".into(),
            used_bytes: None,
            total_bytes: None,
            disk: slots
                .iter()
                .map(|&(bus, slot)| GuestDiskAddress {
                    pci_controller: GuestPciAddress {
                        domain: 0,
                        bus,
                        slot,
                        function: 0,
                    },
                    bus_type: Some("virtio".into()),
                    bus: Some(0),
                    target: Some(0),
                    unit: Some(0),
                    serial: None,
                    dev: Some("/dev/vda".into()),
                })
                .collect(),
        }
    }

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|s| (*s).to_owned()).collect()
    }

    /// Two virtio-blk disks on the root bus, a third behind a bridge, a SCSI
    /// controller with no qdev id of a disk.
    fn pci() -> Vec<PciBus> {
        let mut bridge = device(0, 5, "bridge0");
        bridge.pci_bridge = Some(PciBridge {
            devices: vec![device(1, 0, "vblk2")],
        });
        vec![PciBus {
            bus: 0,
            devices: vec![
                device(0, 1, "vblk0"),
                device(0, 2, "vblk1"),
                device(0, 3, "scsi0"),
                bridge,
            ],
        }]
    }

    #[test]
    fn only_the_filesystems_on_chosen_disks_are_frozen() {
        let all = set(&["vblk0", "vblk1", "vblk2"]);
        let filesystems = [
            fs("/data", &[(0, 1)]),
            fs("/data2", &[(0, 2)]),
            fs("/data3", &[(1, 0)]),
        ];
        let s = scope(&set(&["vblk1"]), &all, &pci(), &filesystems);
        assert_eq!(s.frozen, ["/data2"]);
        assert_eq!(s.not_frozen, ["/data", "/data3"]);
        assert!(s.notes.is_empty());
        // Behind a bridge too.
        let s = scope(&set(&["vblk2"]), &all, &pci(), &filesystems);
        assert_eq!(s.frozen, ["/data3"]);
    }

    #[test]
    fn a_filesystem_spanning_a_chosen_and_an_unchosen_disk_is_frozen() {
        let all = set(&["vblk0", "vblk1"]);
        let filesystems = [fs("/lvm", &[(0, 1), (0, 2)]), fs("/data", &[(0, 1)])];
        let s = scope(&set(&["vblk1"]), &all, &pci(), &filesystems);
        assert_eq!(
            (s.frozen, s.not_frozen),
            (vec!["/lvm".to_owned()], vec!["/data".to_owned()])
        );
    }

    #[test]
    fn an_uncertain_filesystem_is_frozen_and_the_report_says_why() {
        let all = set(&["vblk0", "vblk1"]);
        let filesystems = [
            fs("/data", &[(0, 1)]),
            fs("/scsi", &[(0, 3)]),
            fs("/nodisk", &[]),
            fs("/data2", &[(0, 2)]),
        ];
        let s = scope(&set(&["vblk1"]), &all, &pci(), &filesystems);
        assert_eq!(s.frozen, ["/data2", "/nodisk", "/scsi"]);
        assert_eq!(s.not_frozen, ["/data"]);
        assert_eq!(s.notes.len(), 2, "{:?}", s.notes);
        assert!(
            s.notes
                .iter()
                .any(|n| n.starts_with("/scsi frozen: 0000:00:03.0"))
        );
        assert!(s.notes.iter().any(|n| n.contains("no disk under it")));
    }

    #[test]
    fn nothing_on_the_chosen_disks_or_nothing_to_leave_means_a_plain_freeze() {
        let all = set(&["vblk0", "vblk1"]);
        let s = scope(&set(&["vblk1"]), &all, &pci(), &[fs("/data", &[(0, 1)])]);
        assert!(s.frozen.is_empty() && !s.is_partial(), "{s:?}");
        assert_eq!(s.notes.len(), 1);
        let s = scope(&set(&["vblk1"]), &all, &pci(), &[fs("/data2", &[(0, 2)])]);
        assert!(s.frozen.is_empty() && !s.is_partial(), "{s:?}");
    }

    #[test]
    fn a_disk_without_a_qdev_id_is_never_taken_for_another() {
        // QEMU lists a device with an empty id at slot 1; `all` holds only real ids.
        let mut buses = pci();
        buses[0].devices[0].qdev_id = String::new();
        let all = set(&["vblk1"]);
        let s = scope(
            &set(&["vblk1"]),
            &all,
            &buses,
            &[fs("/data", &[(0, 1)]), fs("/data2", &[(0, 2)])],
        );
        assert!(
            !s.is_partial(),
            "an unknown disk's filesystem is frozen: {s:?}"
        );
    }

    #[test]
    fn filesystems_qemu_ga_may_list_incompletely_are_frozen() {
        let all = set(&["vblk0", "vblk1"]);
        let mut btrfs = fs("/btrfs", &[(0, 1)]);
        btrfs.fs_type = "btrfs".into();
        let mut lvm = fs("/lvm", &[(0, 1)]);
        lvm.name = "dm-0".into();
        let mut scsi = fs("/sd", &[(0, 1)]);
        scsi.disk[0].bus_type = Some("scsi".into());
        let filesystems = [
            btrfs,
            lvm,
            scsi,
            fs("/data", &[(0, 1)]),
            fs("/data2", &[(0, 2)]),
        ];
        let s = scope(&set(&["vblk1"]), &all, &pci(), &filesystems);
        assert_eq!(s.not_frozen, ["/data"]);
        assert_eq!(s.frozen, ["/btrfs", "/data2", "/lvm", "/sd"]);
        assert_eq!(s.notes.len(), 3, "{:?}", s.notes);
    }

    #[test]
    fn an_address_two_root_buses_share_maps_to_no_disk() {
        // Two PHBs, each with a bus 0: vblk0 and vblk1 both at 00:01.0.
        let buses = vec![
            PciBus {
                bus: 0,
                devices: vec![device(0, 1, "vblk0")],
            },
            PciBus {
                bus: 0,
                devices: vec![device(0, 1, "vblk1")],
            },
        ];
        let all = set(&["vblk0", "vblk1"]);
        let s = scope(
            &set(&["vblk1"]),
            &all,
            &buses,
            &[fs("/a", &[(0, 1)]), fs("/b", &[(0, 1)])],
        );
        assert!(!s.is_partial(), "{s:?}");
    }

    #[test]
    fn too_much_guest_text_means_a_whole_freeze() {
        let all = set(&["vblk0", "vblk1"]);
        let many: Vec<_> = (0..=MAX_FILESYSTEMS)
            .map(|i| fs(&format!("/m{i}"), &[(0, 1)]))
            .collect();
        assert!(!scope(&set(&["vblk1"]), &all, &pci(), &many).is_partial());
        let long = fs(&"/x".repeat(MAX_MOUNTPOINT), &[(0, 1)]);
        assert!(
            !scope(
                &set(&["vblk1"]),
                &all,
                &pci(),
                &[long, fs("/data2", &[(0, 2)])]
            )
            .is_partial()
        );
    }

    #[test]
    fn only_plain_virtio_device_names_count() {
        for ok in ["vda", "vdb1", "vdaa3"] {
            assert!(plain_virtio_device(ok), "{ok}");
        }
        for no in ["dm-0", "md0", "loop1", "sda1", "vd", "vd1", "vdA"] {
            assert!(!plain_virtio_device(no), "{no}");
        }
    }
}
