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
use crate::report::{Consistency, DiskReport, Report, Timings};
use crate::request::{Quiesce, SnapshotRequest};
use crate::settle::{Settle, after_rollback};
use crate::window;
use qmp::commands::QueryBlock;
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Runs `fut` unless `cancel` fires first.
async fn interruptible<T>(cancel: &CancellationToken, fut: impl Future<Output = T>) -> Result<T> {
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
    let sockets: Vec<&std::path::Path> = std::iter::once(req.qmp.as_path())
        .chain(req.qga.as_deref())
        .collect();
    let lock = VmLock::acquire_all(&sockets)?;
    let name = req.name.clone().unwrap_or_else(plan::default_name);
    plan::validate_name(&name)?;
    let mut warnings = Vec::new();

    // Plan: nothing changes in the VM or on disk.
    let qmp = interruptible(
        cancel,
        qmp::Client::connect(&req.qmp, qmp::Config::default()),
    )
    .await?
    .map_err(Error::qmp("connecting"))?;
    let blocks = qmp
        .execute(&QueryBlock)
        .await
        .map_err(Error::qmp("query-block"))?;
    let wanted = disks::resolve_names(&qmp, &blocks, &req.disks).await?;
    let dir = req.overlay_dir.as_deref();
    let disks = plan::select(&blocks, &wanted, &name, dir, &node_tag())?;
    plan::check_paths(&disks, req.overlay_dir.is_some())?;
    let agent = interruptible(cancel, freeze::probe(req, &mut warnings)).await??;
    let t_plan = start.elapsed();

    // Prepare, outside the freeze.
    let prepared = Prepared::new(qmp.clone());
    let prep_start = Instant::now();
    let prep = interruptible(cancel, prepared.prepare_all(&disks)).await;
    if let Err(e) = prep.and_then(|r| r) {
        return Err(after_rollback(e, prepared.rollback().await));
    }
    let t_prepare = prep_start.elapsed();
    if let Some(hook) = &req.before_freeze {
        (hook.0)(qmp.clone()).await;
    }

    // Switch: frozen when an agent can freeze; crash-consistent otherwise.
    let switched = match &agent {
        Some(agent) => window::frozen_switch(req, agent, &qmp, &disks, &lock, cancel).await,
        None => Ok(window::plain_switch(&qmp, &disks, cancel).await),
    };
    let mut switch = match switched {
        Ok(s) => s,
        Err(e) => return Err(after_rollback(e, prepared.rollback().await)),
    };
    if let Some(reason) = fallback_reason(req, &switch) {
        warn!("{reason}; taking a crash-consistent snapshot");
        warnings.push(format!("not quiesced: {reason}"));
        let guardian = switch.guardian;
        switch = window::plain_switch(&qmp, &disks, cancel).await;
        switch.guardian = guardian;
    }

    let report = Report {
        name,
        consistency: Consistency::CrashConsistent,
        frozen_filesystems: 0,
        thawed_filesystems: 0,
        disks: disks.iter().map(disk_report).collect(),
        qemu_version: qmp.greeting().version.qemu.to_string(),
        agent_version: agent.as_ref().map(|a| a.info.version.clone()),
        guardian: false,
        warnings,
        timings_ms: Timings {
            plan: ms(t_plan),
            prepare: ms(t_prepare),
            ..Timings::default()
        },
    };
    let settle = Settle {
        req,
        disks: &disks,
        prepared,
        report,
    };
    let mut report = settle.settle(switch).await?;
    report.timings_ms.total = ms(start.elapsed());
    info!(name = %report.name, consistency = ?report.consistency, "snapshot taken");
    Ok(report)
}

/// `preferred`: a freeze that failed before anything switched, on a guest confirmed
/// thawed, falls back to a crash-consistent snapshot. Returns why.
fn fallback_reason(req: &SnapshotRequest, switch: &window::Switch) -> Option<String> {
    let thawed = matches!(switch.guest, window::Guest::Thawed { .. });
    match &switch.problem {
        Some(e @ Error::QuiesceFailed { .. })
            if req.quiesce == Quiesce::Preferred
                && thawed
                && matches!(switch.disks, window::Disks::Unchanged) =>
        {
            Some(e.failure())
        }
        _ => None,
    }
}

fn node_tag() -> String {
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
