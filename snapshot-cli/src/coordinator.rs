//! The snapshot, top to bottom: plan → prepare → freeze → switch → thaw → settle.
//! Each phase is a value that owns its cleanup ([`Prepared`] rolls back unless kept;
//! the frozen window thaws on every path); [`Settle`] decides, from what was checked,
//! what to keep, undo or report.

use crate::disks;
use crate::error::{Error, Result};
use crate::freeze;
use crate::lock::VmLock;
use crate::overlay::Prepared;
use crate::plan::{self, DiskPlan};
use crate::policy::{self, Action, Setback};
use crate::report::{Consistency, DiskReport, Report, Timings};
use crate::request::SnapshotRequest;
use crate::settle::{Settle, after_rollback};
use crate::window;
use qmp::commands::QueryBlock;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `fut` unless `cancel` fires first.
pub(crate) async fn interruptible<T>(
    cancel: &CancellationToken,
    fut: impl Future<Output = T>,
) -> Result<T> {
    tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Error::Interrupted),
        v = fut => Ok(v),
    }
}

/// Takes a snapshot. See the [crate docs](crate) for the phases and guarantees.
///
/// # Errors
/// See [`Error`]; [`Error::exit_code`] tells the state the VM was left in, and each
/// claim in an error's message was checked just before it was made.
///
/// # Cancel safety
/// Prefer cancelling through `cancel`: the guest is then thawed, and everything this
/// run created removed (or a switch already made undone), before the error returns.
/// Dropping the future instead writes the thaw and queues the rollback on tasks of
/// the current runtime (and the guardian, if configured, covers the process dying).
pub async fn snapshot(req: &SnapshotRequest, cancel: &CancellationToken) -> Result<Report> {
    let start = Instant::now();
    let lock = lock(req)?;
    // Plan: nothing changes in the VM or on disk.
    let mut plan = Plan::make(req, cancel).await?;
    plan.times.plan = ms(start.elapsed());

    // Prepare, outside the freeze. Each overlay is rolled back unless kept.
    let prepared = Prepared::new(plan.qmp.clone());
    let t = Instant::now();
    let images: Vec<_> = plan.disks.iter().map(DiskPlan::new_image).collect();
    let prep = interruptible(cancel, prepared.prepare_all(&images)).await;
    if let Err(e) = prep.and_then(|r| r) {
        return Err(after_rollback(e, prepared.rollback().await));
    }
    // The overlays record the backup bitmaps' changes from the switch on.
    let carried: Vec<_> = plan
        .disks
        .iter()
        .map(|d| (d.overlay_node.clone(), d.bitmaps.clone()))
        .collect();
    if let Err(e) = crate::bitmaps::add_to_overlays(&plan.qmp, &carried).await {
        let e = Error::failed("adding the backup bitmaps to the overlays")(e);
        return Err(after_rollback(e, prepared.rollback().await));
    }
    plan.times.prepare = ms(t.elapsed());
    if let Some(hook) = &req.before_freeze {
        (hook.0)(plan.qmp.clone()).await;
    }

    // Freeze → switch → thaw (or a plain switch), reporting what was verified.
    let tx = window::transaction(&plan.disks);
    let agent = plan.agent.as_ref();
    let switch = switch(
        req,
        &plan.qmp,
        agent,
        &tx,
        (&mut plan.warnings, &mut plan.times),
        &lock,
        cancel,
    )
    .await;
    let switch = match switch {
        Ok(s) => s,
        Err(e) => return Err(after_rollback(e, prepared.rollback().await)),
    };

    // Settle: keep, undo or roll back, from what was checked; the report, once.
    let report = plan.report();
    let settle = Settle {
        req,
        disks: &plan.disks,
        prepared,
        report,
    };
    let mut report = settle.settle(switch).await?;
    report.timings_ms.total = ms(start.elapsed());
    info!(name = %report.name, consistency = ?report.consistency, "snapshot taken");
    Ok(report)
}

/// One qsnap per VM: the lock keyed on the QMP and the agent sockets.
pub(crate) fn lock(req: &SnapshotRequest) -> Result<VmLock> {
    let sockets: Vec<&std::path::Path> = std::iter::once(req.qmp.as_path())
        .chain(req.qga.as_deref())
        .collect();
    VmLock::acquire_all(&sockets)
}

/// What planning found: the connection, the disks and their overlays, the agent.
struct Plan {
    name: String,
    qmp: qmp::Client,
    disks: Vec<DiskPlan>,
    agent: Option<freeze::Agent>,
    warnings: Vec<String>,
    times: Timings,
}

impl Plan {
    /// Connects, reads `query-block`, chooses disks and overlay paths, probes the
    /// agent under the quiesce policy. Changes nothing.
    async fn make(req: &SnapshotRequest, cancel: &CancellationToken) -> Result<Self> {
        let name = req.name.clone().unwrap_or_else(plan::default_name);
        plan::validate_name(&name)?;
        let connect = qmp::Client::connect(&req.qmp, qmp::Config::default());
        let qmp = interruptible(cancel, connect)
            .await?
            .map_err(Error::qmp("connecting"))?;
        let blocks = qmp
            .execute(&QueryBlock)
            .await
            .map_err(Error::qmp("query-block"))?;
        let wanted = disks::resolve_names(&qmp, &blocks, &req.disks).await?;
        let dir = req.overlay_dir.as_deref();
        let disks = plan::select(&blocks, &wanted, &name, dir, &node_tag())?;
        plan::check_paths(&disks, dir.is_some())?;
        let mut warnings = Vec::new();
        let mut agent = interruptible(cancel, freeze::probe(req, &mut warnings)).await??;
        if let Some(agent) = agent.as_mut() {
            let chosen = plan::chosen(&blocks, &wanted)?;
            interruptible(cancel, agent.narrow(req, &qmp, &blocks, &chosen)).await?;
        }
        Ok(Self {
            name,
            qmp,
            disks,
            agent,
            warnings,
            times: Timings::default(),
        })
    }

    /// The report as planned; settling fills in what happened.
    fn report(&self) -> Report {
        Report {
            name: self.name.clone(),
            consistency: Consistency::CrashConsistent,
            frozen_filesystems: 0,
            thawed_filesystems: 0,
            disks: self.disks.iter().map(disk_report).collect(),
            qemu_version: self.qmp.greeting().version.qemu.to_string(),
            agent_version: self.agent.as_ref().map(|a| a.info.version.clone()),
            freeze_scope: self.agent.as_ref().and_then(|a| a.scope.clone()),
            guardian: false,
            warnings: self.warnings.clone(),
            timings_ms: self.times,
        }
    }
}

/// The switch: frozen when an agent can freeze, crash-consistent otherwise; under
/// `preferred` a freeze that failed before anything switched falls back to a plain one.
/// The pre-flush before the freeze adds its duration to `times` and any warning to
/// `warnings`.
pub(crate) async fn switch(
    req: &SnapshotRequest,
    qmp: &qmp::Client,
    agent: Option<&freeze::Agent>,
    tx: &qmp::commands::Transaction,
    (warnings, times): (&mut Vec<String>, &mut Timings),
    lock: &VmLock,
    cancel: &CancellationToken,
) -> Result<window::Switch> {
    let Some(agent) = agent else {
        return Ok(window::plain_switch(qmp, tx, cancel).await);
    };
    // Outside the freeze, as late as possible: the guest writes most of its dirty
    // data out while it still runs.
    let flushed = interruptible(cancel, crate::flush::pre_flush(req, agent)).await?;
    warnings.extend(flushed.warning);
    times.pre_flush = flushed.ms;
    let switch = window::frozen_switch(req, agent, qmp, tx, lock, cancel).await?;
    let Some(reason) = fallback_reason(req, &switch) else {
        return Ok(switch);
    };
    warn!("{reason}; going on crash-consistent");
    warnings.push(format!("not quiesced: {reason}"));
    let mut plain = window::plain_switch(qmp, tx, cancel).await;
    plain.guardian = switch.guardian;
    Ok(plain)
}

/// `preferred`: a freeze that failed before anything switched, on a guest confirmed
/// thawed, falls back to a crash-consistent snapshot. Returns why.
fn fallback_reason(req: &SnapshotRequest, switch: &window::Switch) -> Option<String> {
    let thawed = matches!(switch.guest, window::Guest::Thawed { .. });
    match &switch.problem {
        Some(e @ Error::QuiesceFailed { .. })
            if policy::decide(req.quiesce, Setback::FreezeFailed) == Action::CrashConsistent
                && thawed
                && matches!(switch.disks, window::Disks::Unchanged) =>
        {
            Some(e.failure())
        }
        _ => None,
    }
}

pub(crate) fn node_tag() -> String {
    let n = getrandom::u32().unwrap_or_else(|_| std::process::id());
    format!("{:06x}", n & 0xff_ffff)
}

fn disk_report(d: &DiskPlan) -> DiskReport {
    DiskReport {
        node: d.node.clone(),
        device: d.device.clone(),
        overlay_node: d.overlay_node.clone(),
        overlay_file: d.overlay.display().to_string(),
        backing_file: d.file.clone(),
    }
}
