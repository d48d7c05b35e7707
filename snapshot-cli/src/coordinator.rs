//! The snapshot: plan → prepare → freeze → switch → thaw → verify, with one cleanup
//! path for every failure.

use crate::error::{Error, Result};
use crate::freeze::{self, Agent, FreezeGuard, ThawError};
use crate::guardian::Guardian;
use crate::lock::VmLock;
use crate::overlay::Prepared;
use crate::plan::{self, DiskPlan};
use crate::report::{Consistency, DiskReport, Report, Timings};
use crate::request::{Quiesce, SnapshotRequest};
use qmp::commands::{BlockdevSnapshot, QueryBlock, QueryVersion, Transaction, TransactionAction};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long to wait for a transaction's real outcome after its freeze deadline passed.
const LATE_TRANSACTION_WAIT: Duration = Duration::from_secs(60);

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
/// See [`Error`]; [`Error::exit_code`] tells the state the VM was left in.
///
/// # Cancel safety
/// Prefer cancelling through `cancel`: the guest is then thawed and everything this
/// run created removed before the error returns. Dropping the future instead queues
/// the thaw and the rollback on tasks of the current runtime (and the guardian, if
/// configured, covers the process dying).
pub async fn snapshot(req: &SnapshotRequest, cancel: &CancellationToken) -> Result<Report> {
    let start = Instant::now();
    let _lock = VmLock::acquire(&req.qmp)?;
    let name = req.name.clone().unwrap_or_else(plan::default_name);
    plan::validate_name(&name)?;
    let mut warnings = Vec::new();

    // Plan: nothing changes in the VM or on disk.
    let qmp_config = qmp::Config::default();
    let qmp = interruptible(cancel, qmp::Client::connect(&req.qmp, qmp_config))
        .await?
        .map_err(Error::qmp("connecting"))?;
    let version = qmp
        .execute(&QueryVersion)
        .await
        .map_err(Error::qmp("query-version"))?;
    let blocks = qmp
        .execute(&QueryBlock)
        .await
        .map_err(Error::qmp("query-block"))?;
    let tag = node_tag();
    let disks = plan::select(&blocks, &req.disks, &name, req.overlay_dir.as_deref(), &tag)?;
    plan::check_paths(&disks)?;
    let agent = interruptible(cancel, freeze::probe(req, &mut warnings)).await??;
    let t_plan = start.elapsed();

    // Prepare, outside the freeze.
    let mut prepared = Prepared::new(qmp.clone());
    let prep_start = Instant::now();
    let prep = interruptible(cancel, prepared.prepare_all(&disks))
        .await
        .and_then(|r| r);
    if let Err(e) = prep {
        prepared.rollback().await;
        return Err(e);
    }
    let t_prepare = prep_start.elapsed();
    if let Some(hook) = &req.before_freeze {
        (hook.0)(qmp.clone()).await;
    }

    let mut report = Report {
        name,
        consistency: Consistency::CrashConsistent,
        frozen_filesystems: 0,
        thawed_filesystems: 0,
        disks: disks.iter().map(disk_report).collect(),
        qemu_version: version.qemu.to_string(),
        agent_version: agent.as_ref().map(|a| a.info.version.clone()),
        guardian: false,
        warnings,
        timings_ms: Timings {
            plan: ms(t_plan),
            prepare: ms(t_prepare),
            ..Timings::default()
        },
    };
    let mut switched = match &agent {
        Some(agent) => frozen_switch(req, agent, &qmp, &disks, &mut report, cancel).await,
        None => plain_switch(&qmp, &disks, &mut report, cancel).await,
    };
    // `preferred`: a freeze that failed (and was thawed) falls back to crash-consistent.
    if let Err(Error::QuiesceFailed { reason, source }) = &switched
        && req.quiesce == Quiesce::Preferred
    {
        let detail = source
            .as_ref()
            .map(|s| format!(": {s}"))
            .unwrap_or_default();
        warn!("{reason}{detail}; taking a crash-consistent snapshot");
        report
            .warnings
            .push(format!("not quiesced: {reason}{detail}"));
        report.frozen_filesystems = 0;
        switched = plain_switch(&qmp, &disks, &mut report, cancel).await;
    }
    match switched {
        Ok(()) => prepared.keep(),
        Err(e) => {
            if !matches!(e, Error::NotConsistent { .. }) {
                prepared.rollback().await;
            } else {
                prepared.keep();
            }
            return Err(e);
        }
    }
    report.timings_ms.total = ms(start.elapsed());
    info!(name = %report.name, consistency = ?report.consistency, "snapshot taken");
    Ok(report)
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

fn transaction(disks: &[DiskPlan]) -> Transaction {
    Transaction {
        actions: disks
            .iter()
            .map(|d| {
                TransactionAction::BlockdevSnapshot(BlockdevSnapshot {
                    node: d.node.clone(),
                    overlay: d.overlay_node.clone(),
                })
            })
            .collect(),
    }
}

/// Crash-consistent: the transaction alone.
async fn plain_switch(
    qmp: &qmp::Client,
    disks: &[DiskPlan],
    report: &mut Report,
    cancel: &CancellationToken,
) -> Result<()> {
    let t = Instant::now();
    interruptible(cancel, qmp.execute(&transaction(disks)))
        .await?
        .map_err(Error::failed("switching the disks (transaction)"))?;
    report.timings_ms.transaction = ms(t.elapsed());
    Ok(())
}

/// Freeze → one transaction → thaw; the transaction is the only work while frozen.
async fn frozen_switch(
    req: &SnapshotRequest,
    agent: &Agent,
    qmp: &qmp::Client,
    disks: &[DiskPlan],
    report: &mut Report,
    cancel: &CancellationToken,
) -> Result<()> {
    let budget = agent.budget(req.freeze_timeout);
    let guardian = match &req.guardian {
        Some(exe) => Some(Guardian::arm(exe, &agent.path, budget).await?),
        None => None,
    };
    report.guardian = guardian.is_some();
    let tx = transaction(disks);
    let mut guard = FreezeGuard::arm(&agent.client);

    let freeze_sent = Instant::now();
    let deadline = tokio::time::Instant::now() + budget;
    let frozen = interruptible(cancel, agent.freeze(&req.mountpoints, budget)).await;
    let freeze_reply = Instant::now();
    let outcome = match frozen {
        Ok(Ok(n)) if n > 0 => {
            report.frozen_filesystems = n;
            switch_while_frozen(req, qmp, tx, deadline, cancel).await
        }
        Ok(Ok(_)) => Err(Error::QuiesceFailed {
            reason: "the guest froze no filesystem (check --mountpoint)".into(),
            source: None,
        }),
        Ok(Err(e)) => Err(Error::QuiesceFailed {
            reason: "guest-fsfreeze-freeze failed".into(),
            source: Some(e),
        }),
        Err(interrupted) => Err(interrupted),
    };

    // Thaw at once, whatever happened.
    let thaw_sent = Instant::now();
    let thawed = agent.thaw().await;
    let thaw_reply = Instant::now();
    let confirmed = agent.confirm_thawed().await;
    if confirmed.is_ok() {
        guard.disarm();
        if let Some(g) = guardian {
            g.disarm().await;
        }
    }
    let t = &mut report.timings_ms;
    t.freeze_call = ms(freeze_reply - freeze_sent);
    t.thaw_call = ms(thaw_reply - thaw_sent);
    t.frozen_window = ms(thaw_reply - freeze_sent);
    t.in_freeze_overhead = ms(thaw_sent - freeze_reply);

    let switch = outcome?;
    confirmed?;
    match switch {
        Switch::Done(t) => report.timings_ms.transaction = ms(t),
        Switch::Late => {
            return Err(Error::NotConsistent {
                reason: "the disks switched only after the freeze deadline; the overlays are in place but crash-consistent".into(),
                report: Box::new(report.clone()),
            });
        }
    }
    verify_thaw(req, thawed, report)
}

/// How the switch ended while frozen.
enum Switch {
    /// The transaction returned in time.
    Done(Duration),
    /// The deadline passed first, and QEMU completed the transaction later anyway.
    Late,
}

/// Runs the transaction under the freeze deadline. If the deadline passes (or the run
/// is interrupted) first, the transaction's real outcome is still awaited — QEMU may
/// complete it — so the caller knows whether the disks switched.
async fn switch_while_frozen(
    req: &SnapshotRequest,
    qmp: &qmp::Client,
    tx: Transaction,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> Result<Switch> {
    if !req.hold_frozen.is_zero() {
        info!(hold = ?req.hold_frozen, "frozen; holding (testing aid)");
        let until = deadline.min(tokio::time::Instant::now() + req.hold_frozen);
        interruptible(cancel, tokio::time::sleep_until(until)).await?;
    }
    let failed = Error::failed("switching the disks (transaction)");
    let start = Instant::now();
    let client = qmp.clone();
    let mut task = tokio::spawn(async move { client.execute(&tx).await });
    let abandoned = tokio::select! {
        biased;
        () = cancel.cancelled() => Error::Interrupted,
        () = tokio::time::sleep_until(deadline) => Error::QuiesceFailed {
            reason: format!("the freeze deadline ({:?}) passed before the disks switched", req.freeze_timeout),
            source: None,
        },
        joined = &mut task => return match joined {
            Ok(Ok(_)) => Ok(Switch::Done(start.elapsed())),
            Ok(Err(e)) => Err(failed(e)),
            Err(e) => Err(Error::failed("switching the disks (transaction)")(e)),
        },
    };
    warn!("transaction still in flight at the freeze deadline or interrupt");
    match tokio::time::timeout(LATE_TRANSACTION_WAIT, task).await {
        Ok(Ok(Ok(_))) => Ok(Switch::Late),
        _ => Err(abandoned),
    }
}

fn verify_thaw(
    req: &SnapshotRequest,
    thawed: std::result::Result<u64, ThawError>,
    report: &mut Report,
) -> Result<()> {
    let problem = match thawed {
        Ok(n) => {
            report.thawed_filesystems = n;
            (n != report.frozen_filesystems).then(|| {
                format!(
                    "thaw count {n} differs from freeze count {}: something thawed early",
                    report.frozen_filesystems
                )
            })
        }
        Err(ThawError::AutoThawed) => Some(
            "the guest thawed by itself before the thaw (Windows VSS 10-second limit)".to_owned(),
        ),
        // The status was confirmed thawed, but by a retry: the count is unknown.
        Err(ThawError::Failed(e)) => {
            report.warnings.push(format!(
                "the first thaw failed ({e}); a retry thawed the guest"
            ));
            None
        }
    };
    match problem {
        None => {
            report.consistency = Consistency::Quiesced;
            Ok(())
        }
        Some(reason) if req.quiesce == Quiesce::Preferred => {
            warn!("{reason}");
            report.warnings.push(reason);
            Ok(())
        }
        Some(reason) => Err(Error::NotConsistent {
            reason,
            report: Box::new(report.clone()),
        }),
    }
}
