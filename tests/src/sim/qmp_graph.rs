//! The block-graph commands of the simulated monitor: `blockdev-add`, `blockdev-del`
//! and `block-commit`, with QEMU's checks and error texts.

use super::args::{Args, QmpResult, generic};
use super::graph::{Graph, Kind, Parent, not_found};
use super::image::ImageMeta;
use super::jobs::{Events, JobOpts, Work};
use super::qmp_commands::MonState;
use serde_json::{Value, json};

/// QEMU's rule for node names: a letter first, then letters, digits, `-`, `_`, `.`.
fn valid_node_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.len() <= 31
}

pub(super) fn blockdev_add(graph: &mut Graph, mut a: Args) -> QmpResult {
    let driver = a.str("driver")?;
    let name = a
        .opt_str("node-name")?
        .ok_or_else(|| generic("'node-name' must be specified for the root node"))?;
    a.ignore(&[
        "discard",
        "cache",
        "read-only",
        "auto-read-only",
        "force-share",
        "detect-zeroes",
    ]);
    let kind = match driver.as_str() {
        "file" => {
            let filename = a.str("filename")?;
            a.ignore(&[
                "locking",
                "aio",
                "aio-max-batch",
                "pr-manager",
                "drop-cache",
            ]);
            a.finish()?;
            if !std::path::Path::new(&filename).exists() {
                return Err(generic(format!(
                    "Could not open '{filename}': No such file or directory"
                )));
            }
            if graph.file_open(&filename) {
                return Err(generic(format!(
                    "Failed to get \"write\" lock\nIs another process using the image [{filename}]?"
                )));
            }
            Kind::File { filename }
        }
        "qcow2" => qcow2_node(graph, a)?,
        other => {
            return Err(generic(format!(
                "sim: blockdev-add of driver '{other}' is not modelled"
            )));
        }
    };
    if !valid_node_name(&name) {
        return Err(generic(format!("Invalid node-name: '{name}'")));
    }
    if graph.node(&name).is_some() {
        return Err(generic(format!("Duplicate nodes with node-name='{name}'")));
    }
    graph.push(name, kind, true);
    Ok(json!({}))
}

fn qcow2_node(graph: &Graph, mut a: Args) -> QmpResult<Kind> {
    let file = a.str("file")?;
    let backing = a.raw("backing");
    a.ignore(&[
        "lazy-refcounts",
        "pass-discard-request",
        "pass-discard-snapshot",
        "pass-discard-other",
        "overlap-check",
        "cache-size",
        "l2-cache-size",
        "l2-cache-entry-size",
        "refcount-cache-size",
        "cache-clean-interval",
        "discard-no-unref",
    ]);
    a.finish()?;
    let Kind::File { filename } = &graph.get(&file)?.kind else {
        return Err(generic(format!("sim: '{file}' is not a file node")));
    };
    if let Some(Parent::File(user)) = graph
        .parents(&file)
        .into_iter()
        .find(|p| matches!(p, Parent::File(_)))
    {
        return Err(generic(format!(
            "Conflicts with use by {user} as 'file', which does not allow 'write' on {file}"
        )));
    }
    let meta = ImageMeta::read(std::path::Path::new(filename))
        .ok_or_else(|| generic("Image is not in qcow2 format"))?;
    let backing = match backing {
        Some(Value::Null) => None,
        Some(Value::String(b)) => Some(graph.get(&b)?.name.clone()),
        Some(_) => {
            return Err(generic(
                "Invalid parameter type for 'backing', expected: string or null",
            ));
        }
        None => match &meta.backing_file {
            None => None,
            Some(b) if graph.file_open(b) => {
                return Err(generic(format!(
                    "Failed to get shared \"write\" lock\nIs another process using the image [{b}]?"
                )));
            }
            Some(_) => {
                return Err(generic(
                    "sim: opening a backing file implicitly is not modelled; pass \"backing\"",
                ));
            }
        },
    };
    Ok(Kind::Qcow2 {
        file,
        backing,
        meta,
    })
}

pub(super) fn blockdev_del(st: &mut MonState, mut a: Args) -> QmpResult {
    let name = a.str("node-name")?;
    a.finish()?;
    let owned = st
        .graph
        .node(&name)
        .ok_or_else(|| generic(format!("Failed to find node with node-name='{name}'")))?
        .owned;
    let parents = st.graph.parents(&name);
    if parents.iter().any(|p| matches!(p, Parent::Device(_))) {
        return Err(generic(format!("Node {name} is in use")));
    }
    if let Some(e) = st.jobs.blocker(&name) {
        return Err(e);
    }
    if let Some(Parent::Backing(of)) = parents.iter().find(|p| matches!(p, Parent::Backing(_))) {
        return Err(generic(format!(
            "Node '{name}' is busy: node is used as backing hd of '{of}'"
        )));
    }
    if !owned {
        return Err(generic(format!("Node {name} is not owned by the monitor")));
    }
    if !parents.is_empty() {
        return Err(generic(format!("Block device {name} is in use")));
    }
    st.graph.nodes.retain(|n| n.name != name);
    st.graph.collect_garbage();
    Ok(json!({}))
}

pub(super) fn block_commit(st: &mut MonState, mut a: Args, ev: &mut Events) -> QmpResult {
    let id = a.opt_str("job-id")?;
    let device = a.str("device")?;
    let base = a.opt_str("base-node")?;
    let top = a.opt_str("top-node")?;
    let auto_dismiss = a.opt_bool("auto-dismiss")?.unwrap_or(true);
    if a.opt_bool("auto-finalize")? == Some(false) {
        return Err(generic("sim: auto-finalize=false is not modelled"));
    }
    a.opt_u64("speed")?;
    a.ignore(&[
        "base",
        "top",
        "backing-file",
        "backing-mask-protocol",
        "on-error",
        "filter-node-name",
    ]);
    a.finish()?;
    let g = &st.graph;
    g.node(&device).ok_or_else(|| not_found(&device))?;
    if g.parents(&device)
        .iter()
        .any(|p| !matches!(p, Parent::Device(_)))
    {
        return Err(generic("Need a root block node"));
    }
    let chain = g.chain(&device);
    let top = top.unwrap_or_else(|| device.clone());
    let t = chain
        .iter()
        .position(|n| *n == top)
        .ok_or_else(|| generic(format!("'{top}' is not in this backing file chain")))?;
    let base = base.unwrap_or_else(|| chain.last().cloned().unwrap_or_default());
    let b = chain
        .iter()
        .position(|n| *n == base)
        .ok_or_else(|| generic(format!("'{base}' is not in this backing file chain")))?;
    if b == t {
        return Err(generic("cannot commit an image into itself"));
    }
    if b < t {
        return Err(generic(format!(
            "Node '{base}' is not a backing image of '{top}'"
        )));
    }
    let nodes: Vec<String> = chain[t.saturating_sub(1)..=b].to_vec();
    if let Some(e) = nodes.iter().find_map(|n| st.jobs.blocker(n)) {
        return Err(e);
    }
    let total = match &g.get(&top)?.kind {
        Kind::Qcow2 { meta, .. } => meta.virtual_size,
        Kind::File { .. } => 0,
    };
    let work = Work::Commit {
        top,
        base,
        active: t == 0,
    };
    let opts = JobOpts {
        auto_dismiss,
        auto_finalize: true,
        group: None,
    };
    st.jobs
        .start(id.unwrap_or(device), work, total, nodes, opts, ev)?;
    Ok(json!({}))
}
