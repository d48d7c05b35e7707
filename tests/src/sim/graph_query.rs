//! The graph as QEMU reports it: `query-block` (`BlockInfo`) and
//! `query-named-block-nodes` (`BlockDeviceInfo` with its `ImageInfo`), shaped after
//! `qapi/block-core.json` and the replies of QEMU 10.0.2.

use super::graph::{Graph, Kind};
use serde_json::{Map, Value, json};

impl Graph {
    /// `ImageInfo` of a node; without `flat`, with its backing images nested.
    pub(super) fn image_info(&self, name: &str, flat: bool) -> Value {
        let filename = self.filename(name);
        let actual = std::fs::metadata(&filename).map(|m| m.len()).unwrap_or(0);
        let Some(node) = self.node(name) else {
            return Value::Null;
        };
        let mut info = Map::new();
        info.insert("filename".into(), json!(filename));
        info.insert("actual-size".into(), json!(actual));
        info.insert("dirty-flag".into(), json!(false));
        match &node.kind {
            Kind::File { .. } => {
                info.insert("format".into(), json!("file"));
                info.insert("virtual-size".into(), json!(actual));
            }
            Kind::Qcow2 { backing, meta, .. } => {
                info.insert("format".into(), json!("qcow2"));
                info.insert("virtual-size".into(), json!(meta.virtual_size));
                info.insert("cluster-size".into(), json!(meta.cluster_size));
                info.insert(
                    "format-specific".into(),
                    json!({"type": "qcow2", "data": {"compat": "1.1",
                    "compression-type": "zlib", "lazy-refcounts": false, "refcount-bits": 16,
                    "corrupt": false, "extended-l2": false}}),
                );
                let recorded = meta
                    .backing_file
                    .clone()
                    .or_else(|| backing.as_deref().map(|b| self.filename(b)));
                if let Some(b) = recorded {
                    info.insert("backing-filename".into(), json!(b));
                    info.insert("full-backing-filename".into(), json!(b));
                    let fmt = meta.backing_fmt.clone().unwrap_or_else(|| "qcow2".into());
                    info.insert("backing-filename-format".into(), json!(fmt));
                }
                if let (false, Some(b)) = (flat, backing) {
                    info.insert("backing-image".into(), self.image_info(b, false));
                }
            }
        }
        Value::Object(info)
    }

    /// `BlockDeviceInfo` of a node, with its `dirty-bitmaps` when it has any.
    pub(super) fn device_info(&self, name: &str, flat: bool) -> Value {
        let (drv, backing_file) = match self.node(name).map(|n| &n.kind) {
            Some(Kind::Qcow2 { backing, meta, .. }) => (
                "qcow2",
                meta.backing_file
                    .clone()
                    .or_else(|| backing.as_deref().map(|b| self.filename(b))),
            ),
            _ => ("file", None),
        };
        let mut info = json!({"file": self.filename(name), "node-name": name, "ro": false, "drv": drv,
            "backing_file_depth": self.chain(name).len() - 1, "encrypted": false, "detect_zeroes": "off",
            "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
            "write_threshold": 0, "active": true,
            "cache": {"writeback": true, "direct": false, "no-flush": false},
            "image": self.image_info(name, flat)});
        if let Some(obj) = info.as_object_mut() {
            if let Some(b) = backing_file {
                obj.insert("backing_file".into(), json!(b));
            }
            if let Some(bitmaps) = self.dirty_info(name) {
                obj.insert("dirty-bitmaps".into(), bitmaps);
            }
        }
        info
    }

    /// The reply to `query-block`: `-blockdev` devices have an empty legacy name.
    pub(super) fn query_block(&self) -> Value {
        let devices: Vec<Value> = self
            .devices
            .iter()
            .map(|d| {
                json!({"device": "", "qdev": format!("/machine/peripheral/{}/virtio-backend", d.id),
                    "locked": false, "removable": false, "type": "unknown", "io-status": "ok",
                    "inserted": self.device_info(&d.root, false)})
            })
            .collect();
        Value::Array(devices)
    }

    /// The reply to `query-named-block-nodes`, in creation order.
    pub(super) fn named_nodes(&self, flat: bool) -> Value {
        Value::Array(
            self.nodes
                .iter()
                .map(|n| self.device_info(&n.name, flat))
                .collect(),
        )
    }
}
