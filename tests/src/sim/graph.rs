//! The simulated block graph: file and qcow2 nodes, backing chains, devices, and the
//! image files on disk, with the refusals QEMU makes.
//!
//! A qcow2 image's metadata lives in the file itself (`super::image`), so what QEMU
//! does to files shows up in the graph: truncate an image with `blockdev-create` and a
//! later `blockdev-add` of it fails as on a real QEMU. Each node also holds its dirty
//! bitmaps and the clusters the guest wrote into it (`super::bitmap`).

use super::args::{QmpErr, QmpResult, generic};
use super::bitmap::Bitmap;
use super::chunks::Chunks;
use super::image::ImageMeta;
use std::path::Path;

/// The guest-visible size of each simulated disk.
pub(super) const DISK_SIZE: u64 = 64 << 20;
/// The qcow2 cluster size of each simulated disk.
pub(super) const CLUSTER_SIZE: u64 = 65536;

/// A node's driver and its links.
#[derive(Debug, Clone)]
pub(super) enum Kind {
    /// A host file.
    File { filename: String },
    /// A qcow2 image over the node `file`, with an optional backing node.
    Qcow2 {
        file: String,
        backing: Option<String>,
        meta: ImageMeta,
    },
}

/// One named node.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) name: String,
    pub(super) kind: Kind,
    /// Added by `-blockdev` or `blockdev-add` (the monitor holds it), not implicitly.
    pub(super) owned: bool,
    /// Its dirty bitmaps, newest first (QEMU's list order).
    pub(super) bitmaps: Vec<Bitmap>,
    /// The clusters written into it since the simulation started.
    pub(super) written: Chunks,
}

/// Who uses a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Parent {
    Device(String),
    Backing(String),
    File(String),
}

/// A guest device and its root node.
#[derive(Debug, Clone)]
pub(super) struct Device {
    pub(super) id: String,
    pub(super) root: String,
}

/// The whole graph. Cloned to try a `transaction` and dropped on failure.
#[derive(Debug, Clone, Default)]
pub(super) struct Graph {
    pub(super) nodes: Vec<Node>,
    pub(super) devices: Vec<Device>,
    implicit: u64,
    /// The last bitmap id handed out.
    pub(super) bitmap_ids: u64,
}

/// QEMU's answer to a reference to a node that does not exist.
pub(super) fn not_found(name: &str) -> QmpErr {
    generic(format!(
        "Cannot find device='{name}' nor node-name='{name}'"
    ))
}

impl Graph {
    /// `disks` qcow2 disks in `dir`, as QEMU's `-blockdev` options set them up.
    pub(super) fn new(dir: &Path, disks: usize) -> std::io::Result<Graph> {
        let mut g = Graph::default();
        for i in 0..disks {
            let path = dir.join(format!("disk{i}.qcow2"));
            let meta = ImageMeta {
                virtual_size: DISK_SIZE,
                cluster_size: CLUSTER_SIZE,
                backing_file: None,
                backing_fmt: None,
            };
            meta.write_fake(&path)?;
            let filename = path.to_string_lossy().into_owned();
            g.push(format!("file{i}"), Kind::File { filename }, true);
            g.push(
                format!("disk{i}"),
                Kind::Qcow2 {
                    file: format!("file{i}"),
                    backing: None,
                    meta,
                },
                true,
            );
            g.devices.push(Device {
                id: format!("vblk{i}"),
                root: format!("disk{i}"),
            });
        }
        Ok(g)
    }

    pub(super) fn push(&mut self, name: String, kind: Kind, owned: bool) {
        let written = match &kind {
            Kind::Qcow2 { meta, .. } => Chunks::new(meta.cluster_size, meta.virtual_size),
            Kind::File { .. } => Chunks::new(CLUSTER_SIZE, u64::MAX),
        };
        self.nodes.push(Node {
            name,
            kind,
            owned,
            bitmaps: Vec::new(),
            written,
        });
    }

    /// A fresh name for an implicitly created node.
    pub(super) fn implicit_name(&mut self) -> String {
        self.implicit += 1;
        format!("#block{}", 100 + self.implicit)
    }

    pub(super) fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub(super) fn node_mut(&mut self, name: &str) -> Option<&mut Node> {
        self.nodes.iter_mut().find(|n| n.name == name)
    }

    /// The node, or QEMU's lookup error.
    pub(super) fn get(&self, name: &str) -> QmpResult<&Node> {
        self.node(name).ok_or_else(|| not_found(name))
    }

    /// The file a node reads (a qcow2 node's is its file child's).
    pub(super) fn filename(&self, name: &str) -> String {
        match self.node(name).map(|n| &n.kind) {
            Some(Kind::File { filename }) => filename.clone(),
            Some(Kind::Qcow2 { file, .. }) => self.filename(file),
            None => String::new(),
        }
    }

    pub(super) fn backing(&self, name: &str) -> Option<&str> {
        match self.node(name).map(|n| &n.kind) {
            Some(Kind::Qcow2 { backing, .. }) => backing.as_deref(),
            _ => None,
        }
    }

    /// `top` and the backing nodes below it, top first.
    pub(super) fn chain(&self, top: &str) -> Vec<String> {
        let mut chain = vec![top.to_owned()];
        while let Some(b) = chain.last().and_then(|n| self.backing(n)) {
            if chain.iter().any(|c| c == b) {
                break;
            }
            chain.push(b.to_owned());
        }
        chain
    }

    /// Everything that uses `name`.
    pub(super) fn parents(&self, name: &str) -> Vec<Parent> {
        let mut out: Vec<Parent> = self
            .devices
            .iter()
            .filter(|d| d.root == name)
            .map(|d| Parent::Device(d.id.clone()))
            .collect();
        for n in &self.nodes {
            if let Kind::Qcow2 { file, backing, .. } = &n.kind {
                if file == name {
                    out.push(Parent::File(n.name.clone()));
                }
                if backing.as_deref() == Some(name) {
                    out.push(Parent::Backing(n.name.clone()));
                }
            }
        }
        out
    }

    /// Whether a file node has `filename` open.
    pub(super) fn file_open(&self, filename: &str) -> bool {
        self.nodes
            .iter()
            .any(|n| matches!(&n.kind, Kind::File { filename: f } if f == filename))
    }

    /// QEMU's refusal to snapshot (or otherwise modify) a node another node depends on.
    pub(super) fn busy_as_child(&self, name: &str) -> Option<QmpErr> {
        self.parents(name).into_iter().find_map(|p| match p {
            Parent::Backing(of) => Some(generic(format!(
                "Node '{name}' is busy: node is used as backing hd of '{of}'"
            ))),
            // Not QEMU's text: the simulator refuses to put an overlay under a format node.
            Parent::File(of) => Some(generic(format!(
                "Node '{name}' is busy: node is used as file of '{of}'"
            ))),
            Parent::Device(_) => None,
        })
    }

    /// `blockdev-snapshot`: puts `overlay` on top of `node` (checks included).
    pub(super) fn snapshot(&mut self, node: &str, overlay: &str) -> QmpResult<()> {
        self.get(node)?;
        if let Some(e) = self.busy_as_child(node) {
            return Err(e);
        }
        let ov = self.get(overlay)?;
        if self
            .parents(overlay)
            .iter()
            .any(|p| matches!(p, Parent::Device(_)))
        {
            return Err(generic("The overlay is already in use"));
        }
        if let Some(e) = self.busy_as_child(overlay) {
            return Err(e);
        }
        match &ov.kind {
            Kind::File { .. } => {
                return Err(generic("The overlay does not support backing images"));
            }
            Kind::Qcow2 {
                backing: Some(_), ..
            } => return Err(generic("The overlay already has a backing image")),
            Kind::Qcow2 { .. } => {}
        }
        if let Some(Node {
            kind: Kind::Qcow2 { backing, .. },
            ..
        }) = self.node_mut(overlay)
        {
            *backing = Some(node.to_owned());
        }
        for d in self.devices.iter_mut().filter(|d| d.root == node) {
            d.root = overlay.to_owned();
        }
        Ok(())
    }

    /// Copies `top` .. `base` (exclusive) into `base` ([`Graph::copy_down`]), then drops
    /// them from the chain that holds them: the device or the node above `top` now uses
    /// `base`. Nodes the monitor holds stay (keeping their own backing link and bitmaps);
    /// implicit ones go.
    pub(super) fn commit(&mut self, top: &str, base: &str) {
        self.copy_down(top, base);
        let removed: Vec<String> = self
            .chain(top)
            .into_iter()
            .take_while(|n| n != base)
            .collect();
        for d in self.devices.iter_mut().filter(|d| d.root == top) {
            d.root = base.to_owned();
        }
        for n in &mut self.nodes {
            if let Kind::Qcow2 { backing, .. } = &mut n.kind
                && backing.as_deref() == Some(top)
                && !removed.contains(&n.name)
            {
                *backing = Some(base.to_owned());
            }
        }
        self.collect_garbage();
    }

    /// Removes implicit nodes nothing uses any more, and then their children.
    pub(super) fn collect_garbage(&mut self) {
        while let Some(i) = self
            .nodes
            .iter()
            .position(|n| !n.owned && self.parents(&n.name).is_empty())
        {
            self.nodes.remove(i);
        }
    }
}
