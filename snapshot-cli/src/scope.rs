//! Which guest filesystems a snapshot of some of the disks must freeze.
//!
//! Freezing a filesystem blocks every write to it; freezing one that lives only on
//! disks the snapshot does not cover buys nothing. When `--disk` chooses a subset,
//! the guest's filesystems (`guest-get-fsinfo`: the PCI address of each filesystem's
//! disks) are matched with QEMU's devices (`query-pci`: the qdev id at each address),
//! and only the filesystems that touch a chosen disk are frozen
//! (`guest-fsfreeze-freeze-list`).
//!
//! Safety first: a filesystem is left thawed only when *every* disk under it is
//! certainly an unchosen disk — its PCI address is that of a disk QEMU lists (a
//! virtio-blk device, one disk per PCI function). A filesystem with no disk reported,
//! an address no disk has (a SCSI or SATA controller serving several disks, a
//! passthrough device), or an address two filesystems' disks could share, is frozen,
//! and the report says why. The guest's answer is only ever used to freeze *less*
//! when it names unchosen disks exactly; a lying guest can at most get its own
//! filesystems left thawed, which is its own consistency to lose.

use qga::commands::{GuestFilesystemInfo, GuestPciAddress};
use qmp::commands::PciBus;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

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
    // PCI address (domain 0: QEMU's query-pci knows no other) -> the disk there.
    let mut disk_at: BTreeMap<GuestPciAddress, &str> = BTreeMap::new();
    for device in pci
        .iter()
        .flat_map(|b| b.devices.iter().flat_map(|d| d.flatten()))
    {
        if all.contains(&device.qdev_id) {
            let at = GuestPciAddress {
                domain: 0,
                bus: device.bus,
                slot: device.slot,
                function: device.function,
            };
            disk_at.insert(at, device.qdev_id.as_str());
        }
    }
    let mut frozen = Vec::new();
    let mut not_frozen = Vec::new();
    let mut notes = Vec::new();
    for fs in filesystems {
        let mut touches_chosen = false;
        let mut unknown = None;
        for d in &fs.disk {
            match disk_at.get(&d.pci_controller) {
                Some(id) if chosen.contains(*id) => touches_chosen = true,
                Some(_) => {}
                None => {
                    let a = d.pci_controller;
                    unknown = Some(format!(
                        "{:04x}:{:02x}:{:02x}.{} is no single disk QEMU lists (a controller of several disks?)",
                        a.domain, a.bus, a.slot, a.function
                    ));
                }
            }
        }
        if fs.disk.is_empty() {
            unknown = Some("the guest reports no disk under it".to_owned());
        }
        if touches_chosen {
            frozen.push(fs.mountpoint.clone());
        } else if let Some(why) = unknown {
            notes.push(format!("{} frozen: {why}", fs.mountpoint));
            frozen.push(fs.mountpoint.clone());
        } else {
            not_frozen.push(fs.mountpoint.clone());
        }
    }
    if frozen.is_empty() {
        return FreezeScope::all(
            "no guest filesystem maps to the chosen disks: every filesystem is frozen",
        );
    }
    if not_frozen.is_empty() {
        // Everything: the plain freeze says so and freezes what the guest adds later.
        return FreezeScope {
            frozen: Vec::new(),
            not_frozen,
            notes,
        };
    }
    frozen.sort();
    frozen.dedup();
    not_frozen.sort();
    not_frozen.dedup();
    // A mountpoint listed twice (bind mounts) is frozen if any listing needs it.
    not_frozen.retain(|m| !frozen.contains(m));
    FreezeScope {
        frozen,
        not_frozen,
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
            name: "x".into(),
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
                    dev: None,
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
}
