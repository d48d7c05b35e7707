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
use qmp::commands::{BlockdevSnapshot, QueryBlock, Transaction, TransactionAction};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a transaction may take in all: past the freeze deadline it is still
/// awaited this long to learn whether the disks switched.
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
    // The greeting carries QEMU's VersionInfo, identical to `query-version`'s (a
    // real-QEMU test checks this): no extra round trip.
    let version = qmp.greeting().version.clone();
    let blocks = qmp
        .execute(&QueryBlock)
        .await
        .map_err(Error::qmp("query-block"))?;
    let wanted = resolve_names(&qmp, &blocks, &req.disks).await?;
    let tag = node_tag();
    let disks = plan::select(&blocks, &wanted, &name, req.overlay_dir.as_deref(), &tag)?;
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

/// Lets a node lower in a disk's chain (`disk0` after a snapshot) name the disk.
pub(crate) async fn resolve_names(
    qmp: &qmp::Client,
    blocks: &[qmp::commands::BlockInfo],
    wanted: &[String],
) -> Result<Vec<String>> {
    if !plan::needs_resolution(blocks, wanted) {
        return Ok(wanted.to_vec());
    }
    let nodes = qmp
        .execute(&qmp::commands::QueryNamedBlockNodes { flat: Some(true) })
        .await
        .map_err(Error::qmp("query-named-block-nodes"))?;
    Ok(plan::resolve_chain_names(blocks, &nodes, wanted))
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
    // Built before the freeze; polled only once frozen. It is not dropped at the
    // deadline: QEMU may still complete it, and we must learn whether it did.
    let call = qmp.execute_with_timeout(&tx, LATE_TRANSACTION_WAIT);
    tokio::pin!(call);
    let mut guard = FreezeGuard::arm(&agent.client);

    let freeze_sent = Instant::now();
    let deadline = tokio::time::Instant::now() + budget;
    let frozen = interruptible(cancel, agent.freeze(&req.mountpoints, budget)).await;
    let freeze_reply = Instant::now();
    let mut in_flight = false;
    let outcome = match frozen {
        Ok(Ok(n)) if n > 0 => {
            report.frozen_filesystems = n;
            match hold(req, deadline, cancel).await {
                Ok(()) => {
                    // From here the transaction may have reached QEMU.
                    in_flight = true;
                    switch_until(req, call.as_mut(), deadline, cancel).await
                }
                Err(e) => Err(e),
            }
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

    // A guest that may still be frozen outranks whatever else went wrong: report it
    // (exit 5), never "thawed" and never a fallback. The guardian, left armed, keeps
    // trying; the caller's rollback reads query-block, so an in-flight switch is kept.
    confirmed?;
    let switched = match outcome {
        Ok(took) => Some(took),
        // Abandoned while the transaction was in flight: now that the guest is
        // thawed, learn whether QEMU switched the disks after all.
        Err(abandoned) if in_flight && !matches!(abandoned, Error::SnapshotFailed { .. }) => {
            warn!("transaction still in flight when the freeze was abandoned");
            match call.await {
                Ok(_) => None,
                Err(_) => return Err(abandoned),
            }
        }
        Err(e) => return Err(e),
    };
    match switched {
        Some(took) => report.timings_ms.transaction = ms(took),
        None => {
            return Err(Error::NotConsistent {
                reason: "the disks switched only after the freeze was abandoned; the overlays are in place but crash-consistent".into(),
                report: Box::new(report.clone()),
            });
        }
    }
    verify_thaw(req, thawed, report)
}

/// Testing aid: stays frozen `hold_frozen` (bounded by the deadline) before switching.
async fn hold(
    req: &SnapshotRequest,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> Result<()> {
    if !req.hold_frozen.is_zero() {
        info!(hold = ?req.hold_frozen, "frozen; holding (testing aid)");
        let until = deadline.min(tokio::time::Instant::now() + req.hold_frozen);
        interruptible(cancel, tokio::time::sleep_until(until)).await?;
    }
    Ok(())
}

/// Polls the transaction until it returns, the deadline passes, or the run is
/// interrupted (errors; the call then stays pending for the caller).
async fn switch_until<F>(
    req: &SnapshotRequest,
    mut call: std::pin::Pin<&mut F>,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> Result<Duration>
where
    F: Future<Output = qmp::Result<qmp::wire::Empty>>,
{
    let start = Instant::now();
    tokio::select! {
        biased;
        result = &mut call => match result {
            Ok(_) => Ok(start.elapsed()),
            Err(e) => Err(Error::failed("switching the disks (transaction)")(e)),
        },
        () = cancel.cancelled() => Err(Error::Interrupted),
        () = tokio::time::sleep_until(deadline) => Err(Error::QuiesceFailed {
            reason: format!("the freeze deadline ({:?}) passed before the disks switched", req.freeze_timeout),
            source: None,
        }),
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
