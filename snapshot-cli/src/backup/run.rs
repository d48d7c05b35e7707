//! The backup run, top to bottom. See the [module docs](super).

use super::content;
use super::jobs;
use super::manifest::{self, Manifest, State};
use super::plan::{self, BackupPlan, Inputs};
use super::request::{BackupReport, BackupRequest, BackupTimings};
use crate::commit::Progress;
use crate::coordinator::{self, interruptible, ms};
use crate::error::{Error, Result};
use crate::freeze;
use crate::overlay::{CreatedFile, Prepared};
use crate::policy::{self, Action, Setback};
use crate::report::Consistency;
use crate::settle::thaw_problem;
use crate::window::{Disks, Guest, Switch};
use qmp::commands::{
    BlockDirtyBitmapRemove, BlockdevDel, JobCancel, JobDismiss, QueryBlock, QueryNamedBlockNodes,
    Transaction, TransactionAction,
};
use std::path::Path;
use std::time::{Instant, SystemTime};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Makes a backup. See the [module docs](super) for the phases and guarantees.
///
/// # Errors
/// As [`crate::snapshot`]: [`Error::exit_code`] tells the state left behind. A backup
/// that fails after its jobs started is undone (jobs cancelled, the new bitmap
/// dropped, its files removed) and reported as [`Error::BackupFailed`].
pub async fn backup(
    req: &BackupRequest,
    cancel: &CancellationToken,
    progress: &mut impl FnMut(Progress),
) -> Result<BackupReport> {
    let start = Instant::now();
    let dir = req.target.as_path();
    check_dir(dir)?;
    let lock = coordinator::lock(&req.vm)?;
    let mut times = BackupTimings::default();
    let mut run = Run::plan(req, cancel).await?;
    times.common.plan = ms(start.elapsed());

    // Prepare, outside the freeze. The manifest comes first: it names everything the
    // run creates, so a later run can clean up after this one if it dies.
    let t = Instant::now();
    let mut manifest = run
        .plan
        .manifest(&run.qmp.greeting().version.qemu.to_string());
    manifest.create(dir)?;
    let prepared = Prepared::new(run.qmp.clone());
    let targets: Vec<_> = run.plan.disks.iter().map(|d| d.target.clone()).collect();
    let prep = interruptible(cancel, prepared.prepare_all(&targets)).await;
    if let Err(e) = prep.and_then(|r| r) {
        return Err(run.abort(prepared, e, dir).await);
    }
    // Each parent bitmap gathers its copies lower in the chain (left by snapshots).
    let merges: Vec<_> = run
        .plan
        .disks
        .iter()
        .filter_map(|d| d.merge_up.clone())
        .collect();
    if !merges.is_empty()
        && let Err(e) = run.qmp.execute(&Transaction { actions: merges }).await
    {
        let e = Error::failed("merging the bitmaps down the disks' chains")(e);
        return Err(run.abort(prepared, e, dir).await);
    }
    for d in &run.plan.disks {
        prepared.record_job(&d.job);
    }
    times.common.prepare = ms(t.elapsed());

    if let Some(hook) = &req.vm.before_freeze {
        (hook.0)(run.qmp.clone()).await;
    }

    // Freeze → one transaction → thaw.
    let tx = run.plan.transaction();
    let agent = run.agent.as_ref();
    let switch = coordinator::switch(
        &req.vm,
        &run.qmp,
        agent,
        &tx,
        (&mut run.warnings, &mut times.common),
        &lock,
        cancel,
    )
    .await;
    let instant = SystemTime::now();
    let mut switch = match switch {
        Ok(s) => s,
        Err(e) => return Err(run.abort(prepared, e, dir).await),
    };
    switch.fill(&mut times.common);
    let guardian = switch.guardian;
    let consistency = match run.decide(req, &mut switch).await {
        Ok(c) => c,
        Err(e) => return Err(run.abort(prepared, e, dir).await),
    };
    manifest.consistency = consistency;
    if let Guest::Thawed { frozen, .. } = switch.guest {
        manifest.frozen_filesystems = frozen;
    }
    let rfc = humantime::format_rfc3339_millis(instant).to_string();
    manifest.instant = rfc;
    manifest.instant_unix_ms = instant
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));

    // The guest runs; the jobs copy.
    let t = Instant::now();
    let ids: Vec<String> = run.plan.disks.iter().map(|d| d.job.clone()).collect();
    let ended = match jobs::follow(&run.qmp, &ids, progress, cancel).await {
        Ok(e) => e,
        Err(e) => return Err(run.abort(prepared, e, dir).await),
    };
    if ended.interrupted {
        return Err(run.abort(prepared, Error::Interrupted, dir).await);
    }
    if let Some((job, why)) = ended.failed.first() {
        let e = Error::BackupFailed {
            during: format!("copying (job {job})"),
            reason: why.clone(),
        };
        return Err(run.abort(prepared, e, dir).await);
    }
    times.copy = ms(t.elapsed());

    // Release the targets (QEMU closes them), hash them, complete the manifest.
    // QEMU flushes and closes each target when its node is deleted: an image whose
    // node could not be deleted is not certified.
    let (released, files) = prepared.release().await;
    if !released.is_complete() {
        let e = Error::BackupFailed {
            during: "closing the targets".into(),
            reason: released.left.join("; "),
        };
        // A file QEMU may still have open is never unlinked: listed instead.
        let mut left = released.left;
        left.extend(files.iter().map(|f| {
            format!(
                "file {} (its node may still be open in QEMU)",
                f.path.display()
            )
        }));
        return Err(run.abort_after_release(e, dir, &[], left).await);
    }
    let t = Instant::now();
    for (d, m) in run.plan.disks.iter().zip(manifest.disks.iter_mut()) {
        let path = d.target.path.clone();
        let hashed =
            content::stoppable(cancel, move |stop| content::hash(&path, "qcow2", stop)).await;
        let c = match hashed {
            Ok(c) => c,
            Err(e) => return Err(run.abort_after_release(e, dir, &files, vec![]).await),
        };
        m.sha256 = Some(c.sha256);
        m.data_bytes = c.data_bytes;
        m.file_bytes = std::fs::metadata(&d.target.path).map_or(0, |m| {
            use std::os::unix::fs::MetadataExt;
            m.blocks() * 512
        });
    }
    times.checksum = ms(t.elapsed());
    manifest.state = State::Complete;
    manifest.warnings.clone_from(&run.warnings);
    if let Err(e) = manifest.update(dir) {
        return Err(run.abort_after_release(e, dir, &files, vec![]).await);
    }
    let retired = run.retire().await;
    times.common.total = ms(start.elapsed());
    info!(id = manifest.id, kind = ?manifest.kind, "backup complete");
    let report = BackupReport {
        manifest_path: manifest::path(dir, &manifest.id),
        manifest,
        retired_bitmaps: retired,
        freeze_scope: run.agent.as_ref().and_then(|a| a.scope.clone()),
        guardian,
        timings_ms: times,
    };
    match run.not_consistent.take() {
        Some(reason) => Err(Error::BackupNotConsistent {
            reason,
            report: Box::new(report),
        }),
        None => Ok(report),
    }
}

/// The directory must exist, be writable, and not let another user swap entries.
fn check_dir(dir: &Path) -> Result<()> {
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        _ => {
            return Err(Error::Invalid(format!(
                "backup directory {} does not exist; create it first (one per VM)",
                dir.display()
            )));
        }
    }
    if rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_err() {
        return Err(Error::Invalid(format!(
            "cannot write to the backup directory {}",
            dir.display()
        )));
    }
    crate::plan::check_not_swappable(dir)
}

/// A run's state between phases.
struct Run {
    qmp: qmp::Client,
    qmp_path: std::path::PathBuf,
    agent: Option<freeze::Agent>,
    plan: BackupPlan,
    warnings: Vec<String>,
    /// Set when the backup is kept although not verifiably quiesced (exit 6).
    not_consistent: Option<String>,
}

impl Run {
    async fn plan(req: &BackupRequest, cancel: &CancellationToken) -> Result<Self> {
        let connect = qmp::Client::connect(&req.vm.qmp, qmp::Config::default());
        let qmp = interruptible(cancel, connect)
            .await?
            .map_err(Error::qmp("connecting"))?;
        let vm = plan::identity(&qmp, &req.vm.qmp).await?;
        let all = manifest::load_all(&req.target)?;
        plan::same_vm(&req.target, &all, &vm)?;
        // Before reading the disks: a dead run's job still running keeps its
        // copy-before-write filter on top of the disk.
        let mut warnings = Vec::new();
        let dead: Vec<_> = all
            .iter()
            .filter(|m| m.state == State::InProgress)
            .collect();
        if !dead.is_empty() {
            reap_dead(&qmp, &req.target, &dead, &mut warnings).await;
        }
        let all = manifest::load_all(&req.target)?;
        let blocks = qmp
            .execute(&QueryBlock)
            .await
            .map_err(Error::qmp("query-block"))?;
        // A running block job (another backup, a commit) puts its filter node on top.
        let jobs = qmp
            .execute(&qmp::commands::QueryJobs)
            .await
            .map_err(Error::qmp("query-jobs"))?;
        if let Some(j) = jobs.iter().find(|j| j.status != "concluded") {
            return Err(Error::Invalid(format!(
                "a block job ({} {}) is running on the VM; wait for it to finish",
                j.kind, j.id
            )));
        }
        let wanted = crate::disks::resolve_names(&qmp, &blocks, &req.vm.disks).await?;
        let chosen = crate::plan::chosen(&blocks, &wanted)?;
        let nodes = qmp
            .execute(&QueryNamedBlockNodes { flat: Some(true) })
            .await
            .map_err(Error::qmp("query-named-block-nodes"))?;
        let tag = coordinator::node_tag();
        let plan = plan::decide(&Inputs {
            dir: &req.target,
            chosen: &chosen,
            nodes: &nodes,
            all: &all,
            vm: &vm,
            incremental: req.incremental,
            speed: req.speed,
            tag: &tag,
        })?;
        plan.check_room(&req.target)?;
        if let Some(reason) = &plan.full_reason {
            warn!("making a full backup: {reason}");
            warnings.push(format!("full backup: {reason}"));
        }
        let mut agent = interruptible(cancel, freeze::probe(&req.vm, &mut warnings)).await??;
        if let Some(agent) = agent.as_mut() {
            interruptible(cancel, agent.narrow(&req.vm, &qmp, &blocks, &chosen)).await?;
        }
        Ok(Self {
            qmp,
            qmp_path: req.vm.qmp.clone(),
            agent,
            plan,
            warnings,
            not_consistent: None,
        })
    }

    /// From what the window verified: the backup's consistency, or why it must be
    /// undone.
    async fn decide(&mut self, req: &BackupRequest, switch: &mut Switch) -> Result<Consistency> {
        // A guest that may still be frozen outranks everything else (exit 5).
        if matches!(switch.guest, Guest::MaybeFrozen(_))
            && let Guest::MaybeFrozen(e) = std::mem::replace(&mut switch.guest, Guest::NotFrozen)
        {
            return Err(e);
        }
        if matches!(switch.disks, Disks::Unknown(_))
            && let Disks::Unknown(lost) = std::mem::replace(&mut switch.disks, Disks::Unchanged)
        {
            // The reply was lost: whether the jobs started or not, undo.
            if self.qmp.closed().is_some()
                && let Ok(q) = qmp::Client::connect(&self.qmp_path, qmp::Config::default()).await
            {
                self.qmp = q;
            }
            return Err(switch.problem.take().unwrap_or(Error::Qmp {
                during: "the backup transaction (its reply was lost)",
                source: lost,
            }));
        }
        let frozen = matches!(switch.guest, Guest::Thawed { frozen, .. } if frozen > 0);
        match (&switch.disks, switch.problem.take()) {
            (Disks::Unchanged, problem) => {
                Err(problem.unwrap_or_else(|| Error::Invalid("the backup did not start".into())))
            }
            (Disks::SwitchedInTime { .. }, None) => match thaw_problem(&switch.guest) {
                None if frozen => Ok(Consistency::Quiesced),
                None => Ok(Consistency::CrashConsistent),
                Some(reason) => self.late(req, reason, false),
            },
            (_, Some(Error::Interrupted)) => {
                self.late(req, "interrupted while the backup started".into(), true)
            }
            (_, problem) => {
                let reason = problem.map_or_else(
                    || "the backup started after the freeze ended".into(),
                    |p| format!("{}; the backup started only afterwards", p.failure()),
                );
                self.late(req, reason, false)
            }
        }
    }

    /// Started, but not verifiably while frozen: undone under `required` (and on
    /// interrupt), kept as crash-consistent (exit 6) otherwise.
    fn late(
        &mut self,
        req: &BackupRequest,
        reason: String,
        interrupted: bool,
    ) -> Result<Consistency> {
        warn!("{reason}");
        let setback = Setback::SwitchNotVerified { interrupted };
        if policy::decide(req.vm.quiesce, setback) == Action::CrashConsistent {
            self.warnings.push(reason.clone());
            self.not_consistent = Some(reason);
            return Ok(Consistency::CrashConsistent);
        }
        if interrupted {
            return Err(Error::Interrupted);
        }
        Err(Error::QuiesceFailed {
            reason: format!("{reason}, and was undone"),
            source: None,
        })
    }

    /// Undoes the run: jobs cancelled and dismissed, targets deleted (nodes and
    /// files), the new bitmaps dropped, the manifest removed. Returns `error`, or what
    /// could not be undone.
    async fn abort(&mut self, mut prepared: Prepared, error: Error, dir: &Path) -> Error {
        if prepared.qmp().closed().is_some() {
            prepared.reconnected(self.qmp.clone());
        }
        let mut left = prepared.rollback().await.left;
        left.extend(self.drop_new_bitmaps().await);
        self.finish_abort(error, left, dir)
    }

    /// Undoes a run whose targets are already released: drops the new bitmaps and
    /// removes the images this run created (only if each path still names the file it
    /// created) and the manifest. `left` is what is already known to be left.
    async fn abort_after_release(
        &mut self,
        error: Error,
        dir: &Path,
        files: &[CreatedFile],
        mut left: Vec<String>,
    ) -> Error {
        left.extend(self.drop_new_bitmaps().await);
        for f in files {
            if let Err(e) = f.remove() {
                left.push(format!("file {}: {e}", f.path.display()));
            }
        }
        self.finish_abort(error, left, dir)
    }

    fn finish_abort(&self, error: Error, left: Vec<String>, dir: &Path) -> Error {
        let path = manifest::path(dir, &self.plan.id);
        let mut left = left;
        if left.is_empty()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            left.push(format!("manifest {}: {e}", path.display()));
        }
        match error {
            Error::ThawUnconfirmed {
                qga,
                source,
                left: mut l,
            } => {
                l.extend(left);
                Error::ThawUnconfirmed {
                    qga,
                    source,
                    left: l,
                }
            }
            other if !left.is_empty() => Error::CleanupIncomplete {
                failure: other.failure(),
                left,
            },
            // Their own words are right for a backup too.
            e @ (Error::Interrupted
            | Error::QuiesceFailed { .. }
            | Error::QuiesceUnavailable { .. }
            | Error::BackupFailed { .. }) => e,
            Error::SnapshotFailed { during, source } => Error::BackupFailed {
                during: during.replace("overlay", "target"),
                reason: source.to_string(),
            },
            Error::Qmp { during, source } => Error::BackupFailed {
                during: during.into(),
                reason: source.to_string(),
            },
            // Anything else (I/O, hashing): the backup failed, undone.
            other => Error::BackupFailed {
                during: "running".into(),
                reason: other.failure(),
            },
        }
    }

    /// Removes this run's bitmaps where they exist; lists what could not be removed.
    async fn drop_new_bitmaps(&self) -> Vec<String> {
        let names: Vec<&str> = self.plan.disks.iter().map(|d| d.bitmap.as_str()).collect();
        match remove_bitmaps(&self.qmp, |n| names.contains(&n)).await {
            Ok(_) => Vec::new(),
            Err(e) => vec![format!("this backup's bitmaps ({}): {e}", names.join(", "))],
        }
    }

    /// Removes the bitmaps this backup superseded (named by older manifests in the
    /// directory). A failure is only a warning: they are retired by the next run.
    async fn retire(&mut self) -> Vec<String> {
        let mine: Vec<&str> = self.plan.disks.iter().map(|d| d.bitmap.as_str()).collect();
        let known = &self.plan.known_bitmaps;
        let old = |n: &str| known.iter().any(|k| k == n) && !mine.contains(&n);
        match remove_bitmaps(&self.qmp, old).await {
            Ok(removed) => removed,
            Err(e) => {
                warn!(error = %e, "superseded bitmaps not removed; the next backup retries");
                Vec::new()
            }
        }
    }
}

/// Removes, in one transaction, every bitmap on a disk's active node whose name
/// `pick` accepts (busy ones excepted). Returns their names.
async fn remove_bitmaps(
    qmp: &qmp::Client,
    pick: impl Fn(&str) -> bool,
) -> qmp::Result<Vec<String>> {
    let blocks = qmp.execute(&QueryBlock).await?;
    let mut actions = Vec::new();
    let mut names = Vec::new();
    for b in &blocks {
        let Some(i) = &b.inserted else { continue };
        let Some(node) = &i.node_name else { continue };
        for bm in i.dirty_bitmaps.iter().filter(|x| pick(x.name()) && !x.busy) {
            names.push(bm.name().to_owned());
            actions.push(TransactionAction::BlockDirtyBitmapRemove(
                BlockDirtyBitmapRemove {
                    node: node.clone(),
                    name: bm.name().to_owned(),
                },
            ));
        }
    }
    if !actions.is_empty() {
        qmp.execute(&Transaction { actions }).await?;
    }
    Ok(names)
}

/// Cleans up after runs that died mid-backup (their manifests still say
/// `in-progress`; the VM lock proves they are gone): cancels and dismisses their jobs,
/// deletes their target nodes, drops their new bitmaps, marks them `failed`. Their
/// image files stay, named in the manifest, for the user to delete.
async fn reap_dead(qmp: &qmp::Client, dir: &Path, dead: &[&Manifest], warnings: &mut Vec<String>) {
    for m in dead {
        warn!(
            id = m.id,
            "an earlier backup run died; cleaning up after it"
        );
        for d in &m.disks {
            let _ = qmp.execute(&JobCancel { id: d.job.clone() }).await;
        }
        for _ in 0..100 {
            let Ok(jobs) = qmp.execute(&qmp::commands::QueryJobs).await else {
                break;
            };
            let theirs: Vec<_> = jobs
                .iter()
                .filter(|j| m.disks.iter().any(|d| d.job == j.id))
                .collect();
            if theirs.is_empty() {
                break;
            }
            for j in theirs.iter().filter(|j| j.status == "concluded") {
                let _ = qmp.execute(&JobDismiss { id: j.id.clone() }).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        for d in &m.disks {
            for node in [&d.target_node, &d.target_file_node] {
                let _ = qmp
                    .execute(&BlockdevDel {
                        node_name: node.clone(),
                    })
                    .await;
            }
        }
        let names: Vec<&str> = m.disks.iter().map(|d| d.bitmap.as_str()).collect();
        if let Err(e) = remove_bitmaps(qmp, |n| names.contains(&n)).await {
            warn!(error = %e, "bitmaps of the dead run not removed");
        }
        // Checked, not assumed: only a run whose jobs, nodes and bitmaps are all gone
        // is marked failed; otherwise it stays in progress and the next run retries.
        let left = dead_leftovers(qmp, m).await;
        let images: Vec<&str> = m.disks.iter().map(|d| d.image.as_str()).collect();
        if !left.is_empty() {
            warnings.push(format!(
                "backup {} had died mid-copy; cleaning up after it left: {} (the next backup retries)",
                m.id,
                left.join("; ")
            ));
            continue;
        }
        let mut failed = (*m).clone();
        failed.state = State::Failed;
        match failed.update(dir) {
            Ok(()) => warnings.push(format!(
                "backup {} had died mid-copy: its jobs, nodes and bitmaps are gone, it is marked failed; its incomplete images can be deleted: {}",
                m.id,
                images.join(", ")
            )),
            Err(e) => warnings.push(format!(
                "backup {} had died mid-copy: its jobs, nodes and bitmaps are gone, but it could not be marked failed: {e}",
                m.id
            )),
        }
    }
}

/// What of a dead run QEMU still has: its jobs, nodes, bitmaps.
async fn dead_leftovers(qmp: &qmp::Client, m: &Manifest) -> Vec<String> {
    let mut left = Vec::new();
    match qmp.execute(&qmp::commands::QueryJobs).await {
        Ok(jobs) => left.extend(
            jobs.iter()
                .filter(|j| m.disks.iter().any(|d| d.job == j.id))
                .map(|j| format!("job {} ({})", j.id, j.status)),
        ),
        Err(e) => left.push(format!("cannot read the jobs: {e}")),
    }
    match qmp
        .execute(&QueryNamedBlockNodes { flat: Some(true) })
        .await
    {
        Ok(nodes) => {
            for n in &nodes {
                let name = n.node_name.as_deref().unwrap_or("");
                if m.disks
                    .iter()
                    .any(|d| d.target_node == name || d.target_file_node == name)
                {
                    left.push(format!("node {name}"));
                }
                for b in &n.dirty_bitmaps {
                    if m.disks.iter().any(|d| d.bitmap == b.name()) {
                        left.push(format!("bitmap {} on {name}", b.name()));
                    }
                }
            }
        }
        Err(e) => left.push(format!("cannot read the nodes: {e}")),
    }
    left.sort();
    left.dedup();
    left
}
