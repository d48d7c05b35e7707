//! The frozen window: freeze → one `transaction` (a snapshot's switch, or a backup's
//! start) → thaw → confirm, and what each step verifiably did.
//!
//! Nothing here decides what to keep or undo; it returns a [`Switch`] that says what
//! happened to the disks ([`Disks`]) and to the guest ([`Guest`]), and the coordinator
//! settles from that. Rules:
//! * the guardian hears `frozen` before the freeze is sent, so a death at any later
//!   instant is covered;
//! * a freeze that did not answer (deadline, Ctrl-C) gets its thaw written at once,
//!   behind it (`0xFF` + thaw), before anything else;
//! * the transaction is never *sent* after the deadline or an interrupt; once sent it is
//!   not abandoned: after the thaw, its reply is awaited to learn whether the disks
//!   switched (late);
//! * the guest is "thawed" only once `guest-fsfreeze-status` said so.

use crate::error::Error;
use crate::freeze::Agent;
use crate::frozen::Frozen;
pub(crate) use crate::frozen::Guest;
use crate::lock::VmLock;
use crate::plan::DiskPlan;
use crate::request::SnapshotRequest;
use qmp::commands::{BlockdevSnapshot, Transaction, TransactionAction};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// How long a transaction may take in all: past the freeze deadline it is still
/// awaited this long to learn whether the disks switched.
pub(crate) const LATE_TRANSACTION_WAIT: Duration = Duration::from_secs(60);

/// What happened to the disks.
#[derive(Debug)]
pub(crate) enum Disks {
    /// The transaction was not sent, or QEMU refused it (it is atomic).
    Unchanged,
    /// The transaction's reply came in time: while the guest was frozen (before the
    /// thaw was sent), or, without a freeze, before any interrupt.
    SwitchedInTime {
        /// Its round trip.
        took: Duration,
    },
    /// The transaction's reply came after the thaw was sent (deadline, interrupt) or
    /// without a freeze at all.
    SwitchedLate,
    /// The reply never came (QMP gone, or no reply within [`LATE_TRANSACTION_WAIT`]):
    /// only `query-block` can tell.
    Unknown(qmp::Error),
}

/// The result of the frozen (or plain) switch, before anything is kept or undone.
#[derive(Debug)]
pub(crate) struct Switch {
    pub(crate) disks: Disks,
    pub(crate) guest: Guest,
    /// Why the switch did not go as planned (freeze failed, deadline, interrupt,
    /// transaction error); `None` when it did.
    pub(crate) problem: Option<Error>,
    pub(crate) guardian: bool,
    pub(crate) timings: WindowTimings,
}

/// Durations inside the window, in milliseconds.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct WindowTimings {
    pub(crate) freeze_call: f64,
    pub(crate) thaw_call: f64,
    pub(crate) frozen_window: f64,
    pub(crate) in_freeze_overhead: f64,
}

impl Switch {
    /// Copies the window's durations into a report's timings.
    pub(crate) fn fill(&self, t: &mut crate::report::Timings) {
        t.freeze_call = self.timings.freeze_call;
        t.thaw_call = self.timings.thaw_call;
        t.frozen_window = self.timings.frozen_window;
        t.in_freeze_overhead = self.timings.in_freeze_overhead;
        if let Disks::SwitchedInTime { took } = self.disks {
            t.transaction = ms(took);
        }
    }
}

/// The snapshot's transaction: each disk switches onto its overlay (which already
/// has the disk's recording bitmaps, see [`crate::bitmaps`]).
pub(crate) fn transaction(disks: &[DiskPlan]) -> Transaction {
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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Crash-consistent: the transaction alone. An interrupt before it is sent stops it;
/// once sent it is awaited (the reply says whether the disks switched).
pub(crate) async fn plain_switch(
    qmp: &qmp::Client,
    tx: &Transaction,
    cancel: &CancellationToken,
) -> Switch {
    let mut switch = Switch {
        disks: Disks::Unchanged,
        guest: Guest::NotFrozen,
        problem: None,
        guardian: false,
        timings: WindowTimings::default(),
    };
    if cancel.is_cancelled() {
        switch.problem = Some(Error::Interrupted);
        return switch;
    }
    let t = Instant::now();
    let result = qmp.execute_with_timeout(tx, LATE_TRANSACTION_WAIT).await;
    switch.disks = transaction_disks(result, &mut switch.problem, || Disks::SwitchedInTime {
        took: t.elapsed(),
    });
    if cancel.is_cancelled() {
        switch.problem.get_or_insert(Error::Interrupted);
        if matches!(switch.disks, Disks::SwitchedInTime { .. }) {
            switch.disks = Disks::SwitchedLate;
        }
    }
    switch
}

/// Sorts a transaction's result into what the disks did.
fn transaction_disks(
    result: qmp::Result<qmp::wire::Empty>,
    problem: &mut Option<Error>,
    ok: impl FnOnce() -> Disks,
) -> Disks {
    match result {
        Ok(_) => ok(),
        Err(e) if e.qmp_error().is_some() => {
            problem.get_or_insert(Error::failed("switching the disks (transaction)")(e));
            Disks::Unchanged
        }
        Err(e) => Disks::Unknown(e),
    }
}

/// Freeze → one transaction → thaw → confirm.
pub(crate) async fn frozen_switch(
    req: &SnapshotRequest,
    agent: &Agent,
    qmp: &qmp::Client,
    tx: &Transaction,
    lock: &VmLock,
    cancel: &CancellationToken,
) -> Result<Switch, Error> {
    // Built before the freeze; polled only once frozen and in time. Once polled it is
    // never dropped early: QEMU may still complete it, and we must learn whether it did.
    let call = qmp.execute_with_timeout(tx, LATE_TRANSACTION_WAIT);
    tokio::pin!(call);

    let (frozen, freeze) = Frozen::freeze(req, agent, lock, cancel).await?;
    let mut problem = None;
    let mut sent = false;
    let mut disks_outcome = Disks::Unchanged;
    match freeze.and_then(|n| enough(&req.mountpoints, n)) {
        Ok(n) => {
            info!(filesystems = n, "frozen");
            if let Some(hook) = &req.while_frozen {
                (hook.0)(qmp.clone()).await;
            }
            match switch_in_time(req, call.as_mut(), frozen.deadline, cancel).await {
                Ok(took) => disks_outcome = Disks::SwitchedInTime { took },
                Err(SwitchFail::Refused(e) | SwitchFail::NotSent(e)) => problem = Some(e),
                Err(SwitchFail::Lost(e)) => disks_outcome = Disks::Unknown(e),
                Err(SwitchFail::Abandoned(e)) => {
                    sent = true;
                    problem = Some(e);
                }
            }
        }
        Err(e) => problem = Some(e),
    }

    // Thaw at once, whatever happened.
    let (freeze_sent, freeze_reply) = (frozen.sent(), frozen.replied);
    let thawed = frozen.thaw().await;
    let timings = WindowTimings {
        freeze_call: ms(freeze_reply - freeze_sent),
        thaw_call: ms(thawed.thaw_reply - thawed.thaw_sent),
        frozen_window: ms(thawed.thaw_reply - freeze_sent),
        in_freeze_overhead: ms(thawed.thaw_sent - freeze_reply),
    };

    // A transaction abandoned in flight: the guest is thawed (or given up on); now
    // learn whether QEMU switched the disks after all.
    if sent {
        warn!("the transaction was in flight when the freeze was abandoned; awaiting its reply");
        disks_outcome = transaction_disks(call.await, &mut problem, || Disks::SwitchedLate);
    }
    Ok(Switch {
        disks: disks_outcome,
        guest: thawed.guest,
        problem,
        guardian: req.guardian.is_some(),
        timings,
    })
}

/// A freeze that froze nothing, or fewer filesystems than `--mountpoint` names, is a
/// failed quiesce. A freeze scope (`--disk`) is held to the whole freeze's rule (at
/// least one): qemu-ga skips, uncounted, what cannot be frozen (vfat, squashfs, a
/// bind mount's second listing), in a list as in a whole freeze.
fn enough(mountpoints: &[String], n: u64) -> Result<u64, Error> {
    let wanted = wanted_filesystems(mountpoints);
    let reason = match n {
        0 => "the guest froze no filesystem (check --mountpoint, or the report's freeze_scope)"
            .to_owned(),
        n if n < wanted => format!(
            "the guest froze {n} of the {wanted} filesystems asked for (is every --mountpoint a mountpoint in the guest?)"
        ),
        n => return Ok(n),
    };
    Err(Error::QuiesceFailed {
        reason,
        source: None,
    })
}

/// How many filesystems `--mountpoint` asks for (0: all, whatever their number).
fn wanted_filesystems(mountpoints: &[String]) -> u64 {
    let distinct: std::collections::BTreeSet<_> = mountpoints.iter().collect();
    distinct.len() as u64
}

/// Why the transaction did not switch the disks in time.
enum SwitchFail {
    /// Not sent: the deadline passed or the run was interrupted first.
    NotSent(Error),
    /// QEMU refused it (it is atomic: nothing changed).
    Refused(Error),
    /// Sent, but the deadline passed or the run was interrupted before the reply.
    Abandoned(Error),
    /// Sent, and the connection failed before a reply.
    Lost(qmp::Error),
}

/// Holds (testing aid), then sends the transaction — never after the deadline or an
/// interrupt — and polls it until it answers, the deadline passes, or the run is
/// interrupted.
async fn switch_in_time<F>(
    req: &SnapshotRequest,
    mut call: std::pin::Pin<&mut F>,
    deadline: tokio::time::Instant,
    cancel: &CancellationToken,
) -> Result<Duration, SwitchFail>
where
    F: Future<Output = qmp::Result<qmp::wire::Empty>>,
{
    let late = || Error::QuiesceFailed {
        reason: format!(
            "the freeze deadline ({:?}) passed before the disks switched",
            req.freeze_timeout
        ),
        source: None,
    };
    if !req.hold_frozen.is_zero() {
        info!(hold = ?req.hold_frozen, "frozen; holding (testing aid)");
        let until = deadline.min(tokio::time::Instant::now() + req.hold_frozen);
        tokio::select! {
            () = cancel.cancelled() => return Err(SwitchFail::NotSent(Error::Interrupted)),
            () = tokio::time::sleep_until(until) => {}
        }
    }
    // Checked before the first poll, which is what sends the transaction.
    if cancel.is_cancelled() {
        return Err(SwitchFail::NotSent(Error::Interrupted));
    }
    if tokio::time::Instant::now() >= deadline {
        return Err(SwitchFail::NotSent(late()));
    }
    let start = Instant::now();
    tokio::select! {
        // The call first: a reply that is ready counts even if the deadline is too.
        biased;
        result = &mut call => match result {
            Ok(_) => Ok(start.elapsed()),
            Err(e) if e.qmp_error().is_some() => Err(SwitchFail::Refused(
                Error::failed("switching the disks (transaction)")(e),
            )),
            Err(e) => Err(SwitchFail::Lost(e)),
        },
        () = cancel.cancelled() => Err(SwitchFail::Abandoned(Error::Interrupted)),
        () = tokio::time::sleep_until(deadline) => Err(SwitchFail::Abandoned(late())),
    }
}
