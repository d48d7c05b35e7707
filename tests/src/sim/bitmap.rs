//! Dirty bitmaps as QEMU keeps them per node (`block/dirty-bitmap.c`): named or
//! anonymous, newest first; a backup freezes one behind an anonymous successor that
//! records meanwhile. Also what a guest write and a commit's copy dirty.

use super::args::{QmpResult, generic};
use super::chunks::Chunks;
use super::graph::{Graph, Kind, not_found};
use serde_json::{Value, json};

/// One bitmap of a node.
#[derive(Debug, Clone)]
pub(super) struct Bitmap {
    /// Unique in the VM, so that a parent can name its anonymous successor.
    pub(super) id: u64,
    pub(super) name: Option<String>,
    /// Granularity and size are the chunks'.
    pub(super) dirty: Chunks,
    pub(super) enabled: bool,
    pub(super) busy: bool,
    pub(super) persistent: bool,
    pub(super) inconsistent: bool,
    pub(super) successor: Option<u64>,
}

impl Bitmap {
    /// QEMU's `bdrv_dirty_bitmap_check`: busy refused, and inconsistent too with
    /// `inconsistent` (every use but removal).
    pub(super) fn check(&self, inconsistent: bool) -> QmpResult<()> {
        let name = self.name.as_deref().unwrap_or_default();
        if self.busy {
            return Err(generic(format!(
                "Bitmap '{name}' is currently in use by another operation and cannot be used"
            )));
        }
        if inconsistent && self.inconsistent {
            return Err(generic(format!(
                "Bitmap '{name}' is inconsistent and cannot be used"
            )));
        }
        Ok(())
    }
}

/// One dirty bitmap of a node, as a test sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimBitmap {
    /// `None` for the anonymous successor a backup job adds while it runs.
    pub name: Option<String>,
    /// Dirty bytes, in whole granules (QMP's `count`).
    pub count: u64,
    /// Bytes per bit.
    pub granularity: u64,
    /// Whether guest writes are recorded (by it or, while it is frozen, its successor).
    pub recording: bool,
    /// Held by a job (or a transaction): QMP cannot use it.
    pub busy: bool,
    /// Would be stored in the qcow2 image.
    pub persistent: bool,
    /// Found in use at load time (see [`super::SimMonitor::mark_bitmap_inconsistent`]).
    pub inconsistent: bool,
    /// The dirty `(offset, length)` byte ranges, merged.
    pub dirty: Vec<(u64, u64)>,
}

/// QEMU's `bdrv_dirty_bitmap_recording`: enabled, or frozen behind an enabled successor.
fn recording(list: &[Bitmap], b: &Bitmap) -> bool {
    b.enabled
        || b.successor
            .and_then(|id| list.iter().find(|s| s.id == id))
            .is_some_and(|s| s.enabled)
}

impl Graph {
    fn bitmap_list(&self, node: &str) -> &[Bitmap] {
        self.node(node).map_or(&[], |n| &n.bitmaps)
    }

    /// The `dirty-bitmaps` of `BlockDeviceInfo`, `None` when the node has none (QEMU
    /// omits the member then).
    pub(super) fn dirty_info(&self, node: &str) -> Option<Value> {
        let list = self.bitmap_list(node);
        let infos: Vec<Value> = list
            .iter()
            .map(|b| {
                let mut v = json!({"count": b.dirty.bytes(), "granularity": b.dirty.unit(),
                    "recording": recording(list, b), "busy": b.busy, "persistent": b.persistent});
                if let Some(obj) = v.as_object_mut() {
                    if let Some(name) = &b.name {
                        obj.insert("name".into(), json!(name));
                    }
                    if b.inconsistent {
                        obj.insert("inconsistent".into(), json!(true));
                    }
                }
                v
            })
            .collect();
        (!infos.is_empty()).then_some(Value::Array(infos))
    }

    /// The bitmaps of `node`, newest first.
    pub(super) fn sim_bitmaps(&self, node: &str) -> Vec<SimBitmap> {
        let list = self.bitmap_list(node);
        list.iter()
            .map(|b| SimBitmap {
                name: b.name.clone(),
                count: b.dirty.bytes(),
                granularity: b.dirty.unit(),
                recording: recording(list, b),
                busy: b.busy,
                persistent: b.persistent,
                inconsistent: b.inconsistent,
                dirty: b.dirty.ranges(),
            })
            .collect()
    }

    /// QEMU's `block_dirty_bitmap_lookup`.
    pub(super) fn lookup(&self, node: &str, name: &str) -> QmpResult<&Bitmap> {
        let n = self
            .node(node)
            .ok_or_else(|| generic(format!("Node '{node}' not found")))?;
        n.bitmaps
            .iter()
            .find(|b| b.name.as_deref() == Some(name))
            .ok_or_else(|| generic(format!("Dirty bitmap '{name}' not found")))
    }

    /// [`Graph::lookup`], to change the bitmap.
    pub(super) fn lookup_mut(&mut self, node: &str, name: &str) -> QmpResult<&mut Bitmap> {
        self.lookup(node, name)?;
        self.node_mut(node)
            .and_then(|n| {
                n.bitmaps
                    .iter_mut()
                    .find(|b| b.name.as_deref() == Some(name))
            })
            .ok_or_else(|| generic(format!("Dirty bitmap '{name}' not found")))
    }

    /// A node's length: a bitmap's size.
    pub(super) fn length(&self, node: &str) -> u64 {
        match self.node(node).map(|n| &n.kind) {
            Some(Kind::Qcow2 { meta, .. }) => meta.virtual_size,
            Some(Kind::File { filename }) => std::fs::metadata(filename).map_or(0, |m| m.len()),
            None => 0,
        }
    }

    /// A new bitmap at the head of `node`'s list (no checks).
    pub(super) fn push_bitmap(&mut self, node: &str, mut b: Bitmap) -> QmpResult<()> {
        self.bitmap_ids += 1;
        b.id = self.bitmap_ids;
        let n = self.node_mut(node).ok_or_else(|| not_found(node))?;
        n.bitmaps.insert(0, b);
        Ok(())
    }

    /// Removes the bitmap `name` of `node` (no checks).
    pub(super) fn drop_bitmap(&mut self, node: &str, name: &str) {
        if let Some(n) = self.node_mut(node) {
            n.bitmaps.retain(|b| b.name.as_deref() != Some(name));
        }
    }

    /// As QEMU loads a persistent bitmap stored "in use" after an unclean exit:
    /// inconsistent, not recording, empty. False when there is no such persistent,
    /// idle bitmap.
    pub(super) fn mark_inconsistent(&mut self, node: &str, name: &str) -> bool {
        match self.lookup_mut(node, name) {
            Ok(b) if b.persistent && !b.busy => {
                b.inconsistent = true;
                b.enabled = false;
                b.dirty.clear();
                true
            }
            _ => false,
        }
    }

    /// A guest write into `node`: its clusters count as written, and every enabled
    /// bitmap of the node is dirtied. False when there is no such node.
    pub(super) fn write(&mut self, node: &str, offset: u64, len: u64) -> bool {
        let Some(n) = self.node_mut(node) else {
            return false;
        };
        n.written.mark(offset, len);
        for b in n.bitmaps.iter_mut().filter(|b| b.enabled) {
            b.dirty.mark(offset, len);
        }
        true
    }

    /// What a commit of `top` .. `base` (exclusive) writes into `base`: whatever was
    /// written into those nodes, which dirties `base`'s enabled bitmaps as any write.
    pub(super) fn copy_down(&mut self, top: &str, base: &str) {
        let ranges: Vec<(u64, u64)> = self
            .chain(top)
            .iter()
            .take_while(|n| *n != base)
            .filter_map(|n| self.node(n))
            .flat_map(|n| n.written.ranges())
            .collect();
        for (o, l) in ranges {
            self.write(base, o, l);
        }
    }

    /// QEMU's `bdrv_dirty_bitmap_create_successor`: `name` becomes busy and stops
    /// recording; a new anonymous bitmap records instead, if `name` did.
    pub(super) fn freeze(&mut self, node: &str, name: &str) -> QmpResult<()> {
        let parent = self.lookup(node, name)?;
        if parent.busy {
            return Err(generic(
                "Cannot create a successor for a bitmap that is in-use by an operation",
            ));
        }
        let child = Bitmap {
            id: 0,
            name: None,
            dirty: Chunks::new(parent.dirty.unit(), parent.dirty.size()),
            enabled: parent.enabled,
            busy: false,
            persistent: false,
            inconsistent: false,
            successor: None,
        };
        self.push_bitmap(node, child)?;
        let id = self.bitmap_ids;
        let parent = self.lookup_mut(node, name)?;
        parent.enabled = false;
        parent.busy = true;
        parent.successor = Some(id);
        Ok(())
    }

    /// Ends a freeze: with `abdicate` the successor takes over the name (QEMU's
    /// `bdrv_dirty_bitmap_abdicate`), else it is merged back into `name`
    /// (`bdrv_reclaim_dirty_bitmap`). `extra` is then merged into the result.
    pub(super) fn thaw(&mut self, node: &str, name: &str, abdicate: bool, extra: Option<&Chunks>) {
        let Some(n) = self.node_mut(node) else {
            return;
        };
        let list = &mut n.bitmaps;
        let Some(p) = list.iter().position(|b| b.name.as_deref() == Some(name)) else {
            return;
        };
        let successor = list[p].successor.take();
        list[p].busy = false;
        if let Some(s) = successor.and_then(|id| list.iter().position(|b| b.id == id)) {
            let child = list.remove(s);
            let p = list
                .iter()
                .position(|b| b.name.as_deref() == Some(name))
                .unwrap_or(p);
            if abdicate {
                let parent = list.remove(p);
                let child = Bitmap {
                    name: parent.name,
                    persistent: parent.persistent,
                    ..child
                };
                list.insert(s.min(list.len()), child);
            } else {
                list[p].dirty.merge(&child.dirty);
                list[p].enabled = child.enabled;
            }
        }
        if let (Some(extra), Some(b)) = (
            extra,
            list.iter_mut().find(|b| b.name.as_deref() == Some(name)),
        ) {
            b.dirty.merge(extra);
        }
    }
}
