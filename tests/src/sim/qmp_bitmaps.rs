//! The dirty-bitmap commands (`block-dirty-bitmap-add`, `-remove`, `-merge`, `-clear`,
//! `-enable`, `-disable`), as commands and as transaction actions, with QEMU's checks
//! and texts (`block/monitor/bitmap-qmp-cmds.c`, `block/dirty-bitmap.c`).

use super::args::{Args, QmpResult, generic};
use super::bitmap::Bitmap;
use super::chunks::Chunks;
use super::graph::{Graph, Kind};
use serde_json::Value;

/// `BDRV_BITMAP_MAX_NAME_SIZE`.
const MAX_NAME: usize = 1023;

/// One parsed bitmap command.
#[derive(Debug, Clone)]
pub(super) enum BitmapAction {
    Add {
        node: String,
        name: String,
        granularity: Option<u64>,
        persistent: bool,
        disabled: bool,
    },
    /// `remove`, `clear`, `enable` or `disable` of one bitmap.
    One {
        verb: Verb,
        node: String,
        name: String,
    },
    /// Sources are `(node, name)`; `None`: the target's node.
    Merge {
        node: String,
        target: String,
        sources: Vec<(Option<String>, String)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verb {
    Remove,
    Clear,
    Enable,
    Disable,
}

impl BitmapAction {
    /// Reads the arguments of command `kind`; `None` when it is no bitmap command.
    pub(super) fn parse(kind: &str, mut a: Args) -> Option<QmpResult<BitmapAction>> {
        let verb = match kind {
            "block-dirty-bitmap-add" => return Some(parse_add(a)),
            "block-dirty-bitmap-merge" => return Some(parse_merge(a)),
            "block-dirty-bitmap-remove" => Verb::Remove,
            "block-dirty-bitmap-clear" => Verb::Clear,
            "block-dirty-bitmap-enable" => Verb::Enable,
            "block-dirty-bitmap-disable" => Verb::Disable,
            _ => return None,
        };
        Some((|| {
            let (node, name) = (a.str("node")?, a.str("name")?);
            a.finish()?;
            Ok(BitmapAction::One { verb, node, name })
        })())
    }

    /// Applies it to `graph`. A removal only marks the bitmap busy and returns it: the
    /// transaction removes it once every action succeeded, as QEMU does.
    pub(super) fn apply(&self, g: &mut Graph) -> QmpResult<Option<(String, String)>> {
        match self {
            BitmapAction::Add {
                node,
                name,
                granularity,
                persistent,
                disabled,
            } => add(g, node, name, *granularity, *persistent, *disabled)?,
            BitmapAction::Merge {
                node,
                target,
                sources,
            } => merge(g, node, target, sources)?,
            BitmapAction::One { verb, node, name } => {
                let b = g.lookup_mut(node, name)?;
                b.check(*verb != Verb::Remove)?;
                match verb {
                    Verb::Remove => {
                        b.busy = true;
                        return Ok(Some((node.clone(), name.clone())));
                    }
                    Verb::Clear => b.dirty.clear(),
                    Verb::Enable => b.enabled = true,
                    Verb::Disable => b.enabled = false,
                }
            }
        }
        Ok(None)
    }
}

fn parse_add(mut a: Args) -> QmpResult<BitmapAction> {
    let node = a.str("node")?;
    let name = a.str("name")?;
    let granularity = a.opt_u64("granularity")?;
    if granularity.is_some_and(|g| g > u64::from(u32::MAX)) {
        let full = a.full("granularity");
        return Err(generic(format!("Parameter '{full}' expects uint32_t")));
    }
    let persistent = a.opt_bool("persistent")?.unwrap_or(false);
    let disabled = a.opt_bool("disabled")?.unwrap_or(false);
    a.finish()?;
    Ok(BitmapAction::Add {
        node,
        name,
        granularity,
        persistent,
        disabled,
    })
}

fn parse_merge(mut a: Args) -> QmpResult<BitmapAction> {
    let node = a.str("node")?;
    let target = a.str("target")?;
    let list = a.list("bitmaps")?;
    let mut sources = Vec::new();
    for (i, v) in list.into_iter().enumerate() {
        let full = a.full(&format!("bitmaps[{i}]"));
        match v {
            Value::String(name) => sources.push((None, name)),
            v @ Value::Object(_) => {
                let mut s = Args::new(Some(v), &full)?;
                let (n, name) = (s.str("node")?, s.str("name")?);
                s.finish()?;
                sources.push((Some(n), name));
            }
            _ => {
                return Err(generic(format!(
                    "Invalid parameter type for '{full}', expected: BlockDirtyBitmapOrStr"
                )));
            }
        }
    }
    a.finish()?;
    Ok(BitmapAction::Merge {
        node,
        target,
        sources,
    })
}

/// `qmp_block_dirty_bitmap_add`.
fn add(
    g: &mut Graph,
    node: &str,
    name: &str,
    granularity: Option<u64>,
    persistent: bool,
    disabled: bool,
) -> QmpResult<()> {
    if name.is_empty() {
        return Err(generic("Bitmap name cannot be empty"));
    }
    let cluster = match &g.get(node)?.kind {
        Kind::Qcow2 { meta, .. } => Some(meta.cluster_size),
        Kind::File { .. } => None,
    };
    let granularity = match granularity {
        Some(x) if x < 512 || !x.is_power_of_two() => {
            return Err(generic("Granularity must be power of 2 and at least 512"));
        }
        Some(x) => x,
        // bdrv_get_default_bitmap_granularity: the cluster size within [4K, 64K].
        None => cluster.map_or(65536, |c| c.clamp(4096, 65536)),
    };
    if persistent && cluster.is_none() {
        return Err(generic(format!(
            "Can't store persistent bitmaps to {node}: Operation not supported"
        )));
    }
    if g.lookup(node, name).is_ok() {
        return Err(generic(format!("Bitmap already exists: {name}")));
    }
    if name.len() > MAX_NAME {
        return Err(generic(format!("Bitmap name too long: {name}")));
    }
    let bitmap = Bitmap {
        id: 0,
        name: Some(name.to_owned()),
        dirty: Chunks::new(granularity, g.length(node)),
        enabled: !disabled,
        busy: false,
        persistent,
        inconsistent: false,
        successor: None,
    };
    g.push_bitmap(node, bitmap)
}

/// `block_dirty_bitmap_merge`: the sources into an anonymous bitmap, then that into the
/// target; nothing changes on failure.
fn merge(
    g: &mut Graph,
    node: &str,
    target: &str,
    sources: &[(Option<String>, String)],
) -> QmpResult<()> {
    let unit = g.lookup(node, target)?.dirty.unit();
    let mut anon = Chunks::new(unit, g.length(node));
    let sizes = |dst: u64, src: u64| {
        generic(format!(
            "Bitmaps are of different sizes (destination size is {dst}, source size is {src}) \
             and can't be merged"
        ))
    };
    for (src_node, name) in sources {
        let src = match src_node {
            None => g
                .lookup(node, name)
                .map_err(|_| generic(format!("Dirty bitmap '{name}' not found")))?,
            Some(n) => g.lookup(n, name)?,
        };
        src.check(true)?;
        if src.dirty.size() != anon.size() {
            return Err(sizes(anon.size(), src.dirty.size()));
        }
        anon.merge(&src.dirty);
    }
    let dst = g.lookup_mut(node, target)?;
    dst.check(true)?;
    if dst.dirty.size() != anon.size() {
        return Err(sizes(dst.dirty.size(), anon.size()));
    }
    dst.dirty.merge(&anon);
    Ok(())
}
