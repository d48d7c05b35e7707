//! `blockdev-snapshot` and `blockdev-snapshot-sync`, as commands and transaction
//! actions, with QEMU's checks and error texts.

use super::args::{Args, QmpResult, generic};
use super::graph::{Graph, Kind};
use super::image::{Content, FileLog, ImageMeta};
use super::jobs::Jobs;

/// A parsed `blockdev-snapshot`.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    node: String,
    overlay: String,
}

impl Snapshot {
    pub(super) fn parse(mut d: Args) -> QmpResult<Snapshot> {
        let node = d.str("node")?;
        let overlay = d.str("overlay")?;
        d.finish()?;
        Ok(Snapshot { node, overlay })
    }

    pub(super) fn apply(&self, graph: &mut Graph, jobs: &Jobs) -> QmpResult<()> {
        if let Some(e) = jobs.blocker(&self.node) {
            return Err(e);
        }
        graph.snapshot(&self.node, &self.overlay)
    }
}

/// A parsed `blockdev-snapshot-sync`.
#[derive(Debug, Clone)]
pub(super) struct SnapshotSync {
    device: Option<String>,
    node_name: Option<String>,
    file: String,
    new_name: Option<String>,
    format: String,
    mode: String,
}

impl SnapshotSync {
    pub(super) fn parse(mut d: Args) -> QmpResult<SnapshotSync> {
        let device = d.opt_str("device")?;
        let node_name = d.opt_str("node-name")?;
        let file = d.str("snapshot-file")?;
        let new_name = d.opt_str("snapshot-node-name")?;
        let format = d.opt_str("format")?.unwrap_or_else(|| "qcow2".into());
        let mode = d
            .opt_str("mode")?
            .unwrap_or_else(|| "absolute-paths".into());
        d.finish()?;
        Ok(SnapshotSync {
            device,
            node_name,
            file,
            new_name,
            format,
            mode,
        })
    }

    /// Writes the overlay file (it stays even when the transaction fails) and puts it
    /// on top.
    pub(super) fn apply(
        &self,
        graph: &mut Graph,
        jobs: &Jobs,
        files: &mut FileLog,
    ) -> QmpResult<()> {
        let node = match self
            .node_name
            .as_deref()
            .filter(|n| graph.node(n).is_some())
        {
            Some(n) => n.to_owned(),
            None => {
                let dev = self.device.as_deref().unwrap_or_default();
                let n = self.node_name.as_deref().unwrap_or_default();
                return Err(generic(format!(
                    "Cannot find device='{dev}' nor node-name='{n}'"
                )));
            }
        };
        if let Some(e) = jobs.blocker(&node).or_else(|| graph.busy_as_child(&node)) {
            return Err(e);
        }
        if self.format != "qcow2" || self.mode != "absolute-paths" {
            return Err(generic(
                "sim: only qcow2 overlays in mode absolute-paths are modelled",
            ));
        }
        if self
            .new_name
            .as_deref()
            .is_some_and(|n| graph.node(n).is_some())
        {
            return Err(generic("New overlay node-name already in use"));
        }
        let file = self.file.clone();
        if graph.file_open(&file) {
            return Err(generic(format!(
                "Failed to get \"write\" lock\nIs another process using the image [{file}]?"
            )));
        }
        let Some(Kind::Qcow2 { meta: base, .. }) = graph.node(&node).map(|n| n.kind.clone()) else {
            return Err(generic(format!("sim: '{node}' is not a qcow2 node")));
        };
        let meta = ImageMeta {
            backing_file: Some(graph.filename(&node)),
            backing_fmt: Some("qcow2".into()),
            ..base
        };
        files.write(std::path::Path::new(&file), Content::FakeQcow2(&meta))?;
        let file_node = graph.implicit_name();
        graph.push(file_node.clone(), Kind::File { filename: file }, false);
        let overlay = self
            .new_name
            .clone()
            .unwrap_or_else(|| graph.implicit_name());
        graph.push(
            overlay.clone(),
            Kind::Qcow2 {
                file: file_node,
                backing: None,
                meta,
            },
            false,
        );
        graph.snapshot(&node, &overlay)
    }
}
