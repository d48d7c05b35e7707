//! `query-pci`: where each PCI device sits, to match the guest's view of its disks
//! (`guest-get-fsinfo` reports PCI addresses) with QEMU's devices.

use super::command;
use serde::{Deserialize, Serialize};

/// `query-pci`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct QueryPci;
command!(QueryPci, "query-pci", Vec<PciBus>);

/// A PCI root bus and the devices on it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PciBus {
    /// Its number.
    pub bus: i64,
    /// Its devices.
    pub devices: Vec<PciDevice>,
}

/// One PCI function.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PciDevice {
    /// Bus number, as the guest configured it.
    pub bus: i64,
    /// Slot.
    pub slot: i64,
    /// Function.
    pub function: i64,
    /// The device's qdev id (`-device …,id=`); empty when it has none.
    #[serde(default)]
    pub qdev_id: String,
    /// For a bridge: the devices behind it.
    #[serde(default)]
    pub pci_bridge: Option<PciBridge>,
}

/// What is behind a PCI bridge.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct PciBridge {
    /// The devices on its secondary bus.
    #[serde(default)]
    pub devices: Vec<PciDevice>,
}

impl PciDevice {
    /// This device and every device behind it, depth first.
    pub fn flatten(&self) -> Vec<&PciDevice> {
        let mut all = vec![self];
        if let Some(bridge) = &self.pci_bridge {
            all.extend(bridge.devices.iter().flat_map(PciDevice::flatten));
        }
        all
    }
}
