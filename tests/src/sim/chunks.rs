//! Sets of fixed-size chunks of a disk: what a dirty bitmap, a node's written clusters
//! and a backup's copy set hold.

use std::collections::BTreeSet;

/// Which `unit`-byte chunks of a `size`-byte disk are set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Chunks {
    unit: u64,
    size: u64,
    set: BTreeSet<u64>,
}

impl Chunks {
    /// None set.
    pub(super) fn new(unit: u64, size: u64) -> Chunks {
        Chunks {
            unit: unit.max(512),
            size,
            set: BTreeSet::new(),
        }
    }

    pub(super) fn unit(&self) -> u64 {
        self.unit
    }

    pub(super) fn size(&self) -> u64 {
        self.size
    }

    /// Sets every chunk that `offset .. offset + len` touches, within the disk.
    pub(super) fn mark(&mut self, offset: u64, len: u64) {
        let end = offset.saturating_add(len).min(self.size);
        if offset < end {
            self.set.extend(offset / self.unit..=(end - 1) / self.unit);
        }
    }

    /// The bytes set, in whole chunks (QEMU's `count`).
    pub(super) fn bytes(&self) -> u64 {
        self.set.len() as u64 * self.unit
    }

    /// The set chunks as merged `(offset, length)` byte ranges.
    pub(super) fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &c in &self.set {
            let offset = c * self.unit;
            match out.last_mut() {
                Some((o, l)) if *o + *l == offset => *l += self.unit,
                _ => out.push((offset, self.unit)),
            }
        }
        out
    }

    /// `self |= other`, whatever their units.
    pub(super) fn merge(&mut self, other: &Chunks) {
        for (o, l) in other.ranges() {
            self.mark(o, l);
        }
    }

    pub(super) fn clear(&mut self) {
        self.set.clear();
    }

    /// The set chunks after the first `n`, in order.
    pub(super) fn after(&self, n: u64) -> Chunks {
        let skip = usize::try_from(n).unwrap_or(usize::MAX);
        Chunks {
            set: self.set.iter().skip(skip).copied().collect(),
            ..self.clone()
        }
    }
}
