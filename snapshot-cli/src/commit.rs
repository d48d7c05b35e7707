//! Live merge: commit an overlay back into its backing image while the guest runs.
//!
//! By default the active layer is committed into its **immediate** backing image, one
//! level — not QEMU's default (the bottom of the chain), which would write into base
//! images that other VMs may share. Committing the active layer is a mirror-like job:
//! it reports `ready`, then `job-complete` pivots the disk onto the base. Interrupting
//! cancels the job; QEMU then leaves the chain as it was.

use crate::disks::{self, active_node, backing_node, chain, find_disk};
use crate::error::{Error, Result};
use crate::lock::VmLock;
use qmp::commands::{
    BlockCommit, BlockdevDel, JobCancel, JobComplete, JobDismiss, QueryBlock, QueryJobs,
    QueryNamedBlockNodes,
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
    /// Allow committing an overlay qsnap did not make into its backing image (by
    /// default only qsnap's overlays are committed, so an image qsnap never touched —
    /// perhaps a base shared by other VMs — is never written).
    pub any_overlay: bool,
    /// Keep the merged overlay's file (by default a qsnap overlay's file is removed
    /// once its content is in the base and QEMU no longer holds it).
    pub keep_overlay: bool,
}

impl CommitRequest {
    /// Commits `disk`'s active overlay into the image it was made over (qsnap's
    /// overlays only), removing the merged overlay's file.
    pub fn new(qmp: impl Into<PathBuf>, disk: impl Into<String>) -> Self {
        Self {
            qmp: qmp.into(),
            disk: disk.into(),
            top: None,
            base: None,
            any_overlay: false,
            keep_overlay: false,
        }
    }
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
    /// The merged overlay's file, removed after the merge (checked gone).
    pub removed_overlay: Option<String>,
}

/// Commits `top` into `base` and waits for the job to finish, reporting progress.
///
/// # Errors
/// [`Error::DiskNotFound`], [`Error::Invalid`] (no backing file to commit into, or
/// not an overlay qsnap made and no `base`/`any_overlay`),
/// [`Error::CommitInterrupted`] (the job was cancelled), [`Error::CommitFailed`] when
/// the job fails, [`Error::Qmp`], [`Error::Busy`].
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
    let wanted = disks::resolve_names(&qmp, &blocks, std::slice::from_ref(&req.disk)).await?;
    let block = find_disk(&blocks, &wanted[0])?;
    let device = block.qdev_id().map(str::to_owned);
    let active = active_node(block)?;
    let top = req.top.clone().unwrap_or_else(|| active.clone());
    let (base, made_over) = match (req.base.clone(), backing_node(&qmp, &top).await) {
        (Some(b), made_over) => (b, made_over.ok()),
        (None, Ok(b)) => (b.clone(), Some(b)),
        (None, Err(e)) => return Err(e),
    };
    // By default only a qsnap overlay, into the image it was made over: anything else
    // may write into an image qsnap never touched (a golden base other VMs share).
    let into_its_own_base = made_over.as_deref() == Some(base.as_str());
    let ours = disks::is_qsnap_node(&top) && into_its_own_base;
    if !(req.any_overlay || ours) {
        return Err(Error::Invalid(format!(
            "committing {top} into {base} would write into an image qsnap never touched (a golden image shared by other VMs?): by default qsnap merges only its own overlays, into the image each was made over; pass --any-overlay if that is what you want"
        )));
    }
    let top_file = node_file(&qmp, &top).await;
    let job = format!("qsnap-commit-{}", std::process::id());
    let merged = live_commit(
        &qmp,
        &LiveCommit {
            job: &job,
            device: &active,
            top: &top,
            base: &base,
        },
        &mut progress,
        Some(cancel),
    )
    .await;
    // Only a merge that completed pivoted: then qsnap's nodes of the old top are
    // released, and its file — nobody's image any more — removed.
    merged?;
    let released = release(&qmp, &top).await;
    let removed_overlay = match top_file {
        Some(file) if released && !req.keep_overlay => remove_merged(&file),
        _ => None,
    };
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
        removed_overlay,
    })
}

/// The image file of node `name`, if QEMU reports one that is a local path.
async fn node_file(qmp: &qmp::Client, name: &str) -> Option<String> {
    let nodes = qmp
        .execute(&QueryNamedBlockNodes { flat: Some(true) })
        .await
        .ok()?;
    nodes
        .into_iter()
        .find(|n| n.node_name.as_deref() == Some(name))
        .map(|n| n.file)
        .filter(|f| f.starts_with('/'))
}

/// Removes the merged overlay's file; returns it if it is gone now.
fn remove_merged(file: &str) -> Option<String> {
    match std::fs::remove_file(file) {
        Ok(()) => Some(file.to_owned()),
        Err(e) => {
            warn!(file, error = %e, "the merged overlay's file could not be removed");
            None
        }
    }
}

/// One live merge: `top` into `base` on the disk whose active node is `device`.
pub(crate) struct LiveCommit<'a> {
    pub(crate) job: &'a str,
    pub(crate) device: &'a str,
    pub(crate) top: &'a str,
    pub(crate) base: &'a str,
}

/// Runs `block-commit`, completes it when ready (active commit), follows it to its
/// end and dismisses it. `cancel` (when given) cancels the job — unless it was already
/// told to complete: then the commit finishes and is reported as done.
///
/// # Errors
/// [`Error::CommitInterrupted`] when the job was cancelled (QEMU leaves the chain as
/// it was), [`Error::CommitFailed`] when it failed, [`Error::Qmp`] when QMP failed.
pub(crate) async fn live_commit(
    qmp: &qmp::Client,
    c: &LiveCommit<'_>,
    progress: &mut impl FnMut(Progress),
    cancel: Option<&CancellationToken>,
) -> Result<()> {
    qmp.execute(&BlockCommit {
        job_id: Some(c.job.to_owned()),
        device: c.device.to_owned(),
        top_node: Some(c.top.to_owned()),
        base_node: Some(c.base.to_owned()),
        auto_dismiss: Some(false),
        ..Default::default()
    })
    .await
    .map_err(Error::commit_failed("starting block-commit"))?;
    // The base is writable now: it takes over the top's bitmaps.
    crate::bitmaps::carry_down(qmp, c.top, c.base).await;
    let never = CancellationToken::new();
    let outcome = follow(
        qmp,
        c.job,
        c.top == c.device,
        progress,
        cancel.unwrap_or(&never),
    )
    .await;
    if let Err(e) = qmp
        .execute(&JobDismiss {
            id: c.job.to_owned(),
        })
        .await
    {
        debug!(job = c.job, error = %e, "not dismissed");
    }
    outcome
}

/// Polls the job until it concludes: completes it when `ready` (active commit),
/// cancels it when interrupted before completing. A failed `query-jobs` is retried
/// (the job must never be left `ready` forever).
async fn follow(
    qmp: &qmp::Client,
    job: &str,
    active: bool,
    progress: &mut impl FnMut(Progress),
    cancel: &CancellationToken,
) -> Result<()> {
    let mut completing = false;
    let mut cancelled = false;
    let mut query_errors = 0;
    let mut complete_errors = 0;
    let mut failed_complete: Option<qmp::Error> = None;
    loop {
        let jobs = match qmp.execute(&QueryJobs).await {
            Ok(jobs) => {
                query_errors = 0;
                jobs
            }
            Err(e) if e.is_disconnected() || query_errors >= 50 => {
                return Err(Error::qmp("query-jobs")(e));
            }
            Err(e) => {
                query_errors += 1;
                debug!(job, error = %e, "query-jobs failed; retrying");
                tokio::time::sleep(POLL).await;
                continue;
            }
        };
        let Some(info) = jobs.into_iter().find(|j| j.id == job) else {
            return Err(Error::commit_failed("committing")(JobGone));
        };
        progress(Progress {
            current: info.current_progress,
            total: info.total_progress,
        });
        match info.status.as_str() {
            "concluded" | "null" => {
                if let Some(e) = failed_complete {
                    return Err(Error::commit_failed("completing block-commit")(e));
                }
                return match (info.error, cancelled) {
                    (Some(e), false) => Err(Error::commit_failed("committing")(JobFailed(e))),
                    // A cancel that lost the race to the job's own end is not an
                    // interruption: report what the job did.
                    (Some(_), true) => Err(Error::CommitInterrupted),
                    (None, true) if !completing => Err(Error::CommitInterrupted),
                    (None, _) => Ok(()),
                };
            }
            "ready" if active && !completing && !cancelled && !cancel.is_cancelled() => {
                debug!(job, "ready; completing");
                match qmp.execute(&JobComplete { id: job.to_owned() }).await {
                    Ok(_) => completing = true,
                    // Refused (e.g. the job went to standby) or no reply: try again on
                    // the next poll; a job must never be left `ready` for good.
                    Err(e) if complete_errors < 20 && !e.is_disconnected() => {
                        complete_errors += 1;
                        debug!(job, error = %e, "job-complete refused; retrying");
                    }
                    Err(e) => {
                        warn!(job, error = %e, "job-complete keeps failing: cancelling the job");
                        if let Err(e) = qmp.execute(&JobCancel { id: job.to_owned() }).await {
                            debug!(job, error = %e, "cancel refused");
                        }
                        cancelled = true;
                        failed_complete = Some(e);
                    }
                }
            }
            _ => {}
        }
        // Once told to complete, the pivot is under way: let it finish.
        if cancel.is_cancelled() && !cancelled && !completing {
            warn!(job, "interrupted: cancelling the commit job");
            if let Err(e) = qmp.execute(&JobCancel { id: job.to_owned() }).await {
                debug!(job, error = %e, "cancel refused");
            }
            cancelled = true;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = cancel.cancelled(), if !cancelled && !completing => {}
        }
    }
}

/// Deletes the merged-away top node and its file node when qsnap added them: QEMU
/// keeps monitor-owned nodes alive after the pivot, and they keep claiming the base as
/// their backing, which blocks the next snapshot of it. Nodes qsnap did not create are
/// left alone. Returns whether both of qsnap's nodes are gone.
pub(crate) async fn release(qmp: &qmp::Client, top: &str) -> bool {
    let nodes = released_nodes(top);
    let mut all = !nodes.is_empty();
    for node in nodes {
        match qmp
            .execute(&BlockdevDel {
                node_name: node.clone(),
            })
            .await
        {
            Ok(_) => debug!(node, "released"),
            Err(e) => {
                debug!(node, error = %e, "not released");
                all = false;
            }
        }
    }
    all
}

/// The nodes a commit of `top` releases: only qsnap's own overlay pair.
fn released_nodes(top: &str) -> Vec<String> {
    if disks::is_qsnap_node(top) {
        vec![top.to_owned(), format!("{top}-f")]
    } else {
        Vec::new()
    }
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
