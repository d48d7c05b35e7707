//! Live merge: commit an overlay back into its backing image while the guest runs.
//!
//! By default the active layer is committed into its **immediate** backing image, one
//! level — not QEMU's default (the bottom of the chain), which would write into base
//! images that other VMs may share. Committing the active layer is a mirror-like job:
//! it reports `ready`, then `job-complete` pivots the disk onto the base. Interrupting
//! cancels the job; QEMU then leaves the chain as it was.

use crate::error::{Error, Result};
use crate::lock::VmLock;
use crate::plan;
use qmp::commands::{
    BlockCommit, BlockDeviceInfo, BlockInfo, BlockdevDel, JobCancel, JobComplete, JobDismiss,
    QueryBlock, QueryJobs, QueryNamedBlockNodes,
};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// How often job progress is read.
const POLL: Duration = Duration::from_millis(100);

/// What to commit.
#[derive(Debug, Clone)]
pub struct CommitRequest {
    /// The VM's QMP socket.
    pub qmp: PathBuf,
    /// The disk: its active node-name or qdev id.
    pub disk: String,
    /// The node to commit from (default: the active layer).
    pub top: Option<String>,
    /// The node to commit into (default: the backing node of `top`).
    pub base: Option<String>,
}

/// Job progress, in QEMU's units (bytes for commit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Progress {
    /// Done so far.
    pub current: u64,
    /// Estimated total.
    pub total: u64,
}

/// What a commit did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommitReport {
    /// The disk's qdev id, if any.
    pub device: Option<String>,
    /// The node committed from.
    pub top: String,
    /// The node committed into.
    pub base: String,
    /// The disk's backing chain afterwards, active image first.
    pub chain: Vec<String>,
    /// How long it took, in milliseconds.
    pub ms: f64,
}

/// Commits `top` into `base` and waits for the job to finish, reporting progress.
///
/// # Errors
/// [`Error::DiskNotFound`], [`Error::Invalid`] (no backing file to commit into),
/// [`Error::Interrupted`] (the job was cancelled), [`Error::SnapshotFailed`] when the
/// job fails, [`Error::Qmp`], [`Error::Busy`].
pub async fn commit(
    req: &CommitRequest,
    mut progress: impl FnMut(Progress),
    cancel: &CancellationToken,
) -> Result<CommitReport> {
    let start = Instant::now();
    let _lock = VmLock::acquire(&req.qmp)?;
    let qmp = qmp::Client::connect(&req.qmp, qmp::Config::default())
        .await
        .map_err(Error::qmp("connecting"))?;
    let blocks = qmp
        .execute(&QueryBlock)
        .await
        .map_err(Error::qmp("query-block"))?;
    let wanted =
        crate::coordinator::resolve_names(&qmp, &blocks, std::slice::from_ref(&req.disk)).await?;
    let block = find_disk(&blocks, &wanted[0])?;
    let device = block.qdev_id().map(str::to_owned);
    let active = active_node(block)?;
    let top = req.top.clone().unwrap_or_else(|| active.clone());
    let base = match &req.base {
        Some(b) => b.clone(),
        None => backing_node(&qmp, &top).await?,
    };
    let job = format!("qsnap-commit-{}", std::process::id());
    qmp.execute(&BlockCommit {
        job_id: Some(job.clone()),
        device: active.clone(),
        top_node: Some(top.clone()),
        base_node: Some(base.clone()),
        auto_dismiss: Some(false),
        ..Default::default()
    })
    .await
    .map_err(Error::failed("starting block-commit"))?;
    let outcome = follow(&qmp, &job, top == active, &mut progress, cancel).await;
    let _ = qmp.execute(&JobDismiss { id: job.clone() }).await;
    outcome?;
    release(&qmp, &top).await;
    let blocks = qmp
        .execute(&QueryBlock)
        .await
        .map_err(Error::qmp("query-block"))?;
    // After an active commit the base is the disk's active node.
    let block = find_disk(&blocks, device.as_deref().unwrap_or(&base))?;
    Ok(CommitReport {
        device,
        top,
        base,
        chain: chain(block),
        ms: start.elapsed().as_secs_f64() * 1000.0,
    })
}

/// Polls the job until it concludes: completes it when `ready` (active commit),
/// cancels it when interrupted.
async fn follow(
    qmp: &qmp::Client,
    job: &str,
    active: bool,
    progress: &mut impl FnMut(Progress),
    cancel: &CancellationToken,
) -> Result<()> {
    let mut completing = false;
    let mut cancelled = false;
    loop {
        let jobs = qmp
            .execute(&QueryJobs)
            .await
            .map_err(Error::qmp("query-jobs"))?;
        let Some(info) = jobs.into_iter().find(|j| j.id == job) else {
            return Err(Error::failed("committing")(JobGone));
        };
        progress(Progress {
            current: info.current_progress,
            total: info.total_progress,
        });
        match info.status.as_str() {
            "concluded" | "null" => {
                return match (info.error, cancelled) {
                    (_, true) => Err(Error::Interrupted),
                    (Some(e), false) => Err(Error::failed("committing")(JobFailed(e))),
                    (None, false) => Ok(()),
                };
            }
            "ready" if active && !completing && !cancelled => {
                debug!(job, "ready; completing");
                qmp.execute(&JobComplete { id: job.to_owned() })
                    .await
                    .map_err(Error::failed("completing block-commit"))?;
                completing = true;
            }
            _ => {}
        }
        if cancel.is_cancelled() && !cancelled {
            warn!(job, "interrupted: cancelling the commit job");
            let _ = qmp.execute(&JobCancel { id: job.to_owned() }).await;
            cancelled = true;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = cancel.cancelled(), if !cancelled => {}
        }
    }
}

fn find_disk<'a>(blocks: &'a [BlockInfo], want: &str) -> Result<&'a BlockInfo> {
    let candidates: Vec<&BlockInfo> = blocks.iter().filter(|b| b.inserted.is_some()).collect();
    plan::find(&candidates, want)
}

/// Deletes the merged-away top node and its file node when qsnap added them: QEMU
/// keeps monitor-owned nodes alive after the pivot, and they keep claiming the base as
/// their backing, which blocks the next snapshot of it. Nodes qsnap did not create are
/// left alone, and the overlay file itself stays on disk.
async fn release(qmp: &qmp::Client, top: &str) {
    for node in released_nodes(top) {
        match qmp
            .execute(&BlockdevDel {
                node_name: node.clone(),
            })
            .await
        {
            Ok(_) => debug!(node, "released"),
            Err(e) => debug!(node, error = %e, "not released"),
        }
    }
}

/// The nodes a commit of `top` releases: only qsnap's own overlay pair.
fn released_nodes(top: &str) -> Vec<String> {
    if plan::is_qsnap_node(top) {
        vec![top.to_owned(), format!("{top}-f")]
    } else {
        Vec::new()
    }
}

fn active_node(block: &BlockInfo) -> Result<String> {
    block
        .inserted
        .as_ref()
        .and_then(|i| i.node_name.clone())
        .ok_or_else(|| Error::Invalid("the disk has no node-name".into()))
}

/// The disk's chain of image files, active first.
pub fn chain(block: &BlockInfo) -> Vec<String> {
    block
        .inserted
        .as_ref()
        .map(|i| i.image.chain().map(|img| img.filename.clone()).collect())
        .unwrap_or_default()
}

/// The format node backing `top`, found by its image file name.
async fn backing_node(qmp: &qmp::Client, top: &str) -> Result<String> {
    let nodes = qmp
        .execute(&QueryNamedBlockNodes { flat: Some(true) })
        .await
        .map_err(Error::qmp("query-named-block-nodes"))?;
    let find = |name: &str| nodes.iter().find(|n| n.node_name.as_deref() == Some(name));
    let top_info = find(top).ok_or_else(|| Error::Invalid(format!("no node {top}")))?;
    let backing = top_info.backing_file.clone().ok_or_else(|| {
        Error::Invalid(format!(
            "{top} has no backing image: there is nothing to commit"
        ))
    })?;
    nodes
        .iter()
        .filter(|n| is_format_node(n) && n.file == backing)
        .find_map(|n| n.node_name.clone())
        .ok_or_else(|| Error::Invalid(format!("no node holds {top}'s backing image {backing}")))
}

fn is_format_node(n: &BlockDeviceInfo) -> bool {
    !matches!(n.drv.as_str(), "file" | "host_device" | "nbd" | "throttle")
}

#[derive(Debug, thiserror::Error)]
#[error("the job disappeared before it concluded")]
struct JobGone;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct JobFailed(String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_qsnap_overlay_nodes_are_released() {
        assert_eq!(
            released_nodes("qsnap-ab12cd-0"),
            ["qsnap-ab12cd-0", "qsnap-ab12cd-0-f"]
        );
        assert!(
            released_nodes("disk0").is_empty(),
            "a user's node and its -f twin stay"
        );
    }
}
