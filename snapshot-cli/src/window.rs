//! The frozen window: freeze → one `transaction` → thaw → confirm, and what each step
//! verifiably did.
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
use crate::freeze::{Agent, FreezeGuard, ThawError};
use crate::guardian::{GRACE, Guardian};
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
/// The coordinator's own confirmation of the thaw ends this long before the guardian
/// would kill it, so it always gets to report.
const CONFIRM_MARGIN: Duration = Duration::from_millis(1500);

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

/// What happened to the guest.
#[derive(Debug)]
pub(crate) enum Guest {
    /// Never frozen by this run (no agent, or quiesce off).
    NotFrozen,
    /// Confirmed thawed by `guest-fsfreeze-status`. `thaw` is the first thaw's result
    /// (`None` when it was written behind an unanswered freeze and its count is unknown).
    Thawed {
        /// What the freeze reported (0 when it did not answer).
        frozen: u64,
        /// The first thaw's count, or why there is none.
        thaw: Option<Result<u64, ThawError>>,
    },
    /// Not confirmed: the guest may still be frozen.
    MaybeFrozen(Error),
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
    disks: &[DiskPlan],
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
    let result = qmp
        .execute_with_timeout(&transaction(disks), LATE_TRANSACTION_WAIT)
        .await;
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
    disks: &[DiskPlan],
    lock: &VmLock,
    cancel: &CancellationToken,
) -> Result<Switch, Error> {
    let budget = agent.budget(req.freeze_timeout);
    let mut guardian = match &req.guardian {
        Some(exe) => Some(Guardian::arm(exe, &agent.path, budget, lock).await?),
        None => None,
    };
    if let Some(g) = guardian.as_mut() {
        g.frozen().await?;
    }
    let tx = transaction(disks);
    // Built before the freeze; polled only once frozen and in time. Once polled it is
    // never dropped early: QEMU may still complete it, and we must learn whether it did.
    let call = qmp.execute_with_timeout(&tx, LATE_TRANSACTION_WAIT);
    tokio::pin!(call);
    let mut guard = FreezeGuard::arm(&agent.client);

    let freeze_sent = Instant::now();
    let deadline = tokio::time::Instant::now() + budget;
    let confirm_by = deadline + GRACE - CONFIRM_MARGIN;
    let frozen = tokio::select! {
        biased;
        () = cancel.cancelled() => Err(Error::Interrupted),
        r = tokio::time::timeout_at(deadline, agent.freeze(&req.mountpoints, budget)) => {
            r.unwrap_or_else(|_| Err(qga::Error::Timeout {
                command: "guest-fsfreeze-freeze".into(),
                after: budget,
            })).map_err(freeze_failed)
        }
    };
    let freeze_reply = Instant::now();
    let answered = frozen.as_ref().ok().copied();
    if answered.is_none() {
        // Unanswered (deadline, interrupt) or failed part-way: the agent may freeze
        // later or be frozen already. The thaw goes out now, behind the freeze.
        agent.thaw_behind();
    }
    let mut problem = None;
    let mut sent = false;
    let mut disks_outcome = Disks::Unchanged;
    match frozen {
        Ok(0) => {
            problem = Some(Error::QuiesceFailed {
                reason: "the guest froze no filesystem (check --mountpoint)".into(),
                source: None,
            });
        }
        Ok(n) if n < wanted_filesystems(&req.mountpoints) => {
            problem = Some(Error::QuiesceFailed {
                reason: format!(
                    "the guest froze {n} of the {} filesystems asked for (is every --mountpoint a mountpoint in the guest?)",
                    wanted_filesystems(&req.mountpoints)
                ),
                source: None,
            });
        }
        Ok(n) => {
            info!(filesystems = n, "frozen");
            if let Some(hook) = &req.while_frozen {
                (hook.0)(qmp.clone()).await;
            }
            match switch_in_time(req, call.as_mut(), deadline, cancel).await {
                Ok(took) => disks_outcome = Disks::SwitchedInTime { took },
                Err(SwitchFail::Refused(e)) => problem = Some(e),
                Err(SwitchFail::Lost(e)) => disks_outcome = Disks::Unknown(e),
                Err(SwitchFail::Abandoned(e)) => {
                    sent = true;
                    problem = Some(e);
                }
                Err(SwitchFail::NotSent(e)) => problem = Some(e),
            }
        }
        Err(e) => problem = Some(e),
    }

    // Thaw at once, whatever happened.
    let thaw_sent = Instant::now();
    let thaw = match answered {
        // Bounded by the confirmation deadline too: a slow thaw hook must not run the
        // coordinator into the guardian's kill.
        Some(_) => Some(
            tokio::time::timeout_at(confirm_by, agent.thaw())
                .await
                .unwrap_or_else(|_| {
                    Err(ThawError::Failed(qga::Error::Timeout {
                        command: "guest-fsfreeze-thaw".into(),
                        after: confirm_by.saturating_duration_since(tokio::time::Instant::now()),
                    }))
                }),
        ),
        None => None,
    };
    let thaw_reply = Instant::now();
    let confirmed = agent.confirm_thawed(confirm_by).await;
    let guest = match confirmed {
        Ok(()) => {
            guard.disarm();
            if let Some(g) = guardian.take() {
                g.disarm().await;
            }
            Guest::Thawed {
                frozen: answered.unwrap_or(0),
                thaw,
            }
        }
        // The guardian, told `frozen` and never `thawed`, takes over: closing its pipe
        // now makes it rescue (it connects once this run lets go of the agent socket)
        // instead of killing a coordinator that may still wait for a late transaction.
        Err(e) => {
            drop(guardian.take());
            Guest::MaybeFrozen(e)
        }
    };
    let timings = WindowTimings {
        freeze_call: ms(freeze_reply - freeze_sent),
        thaw_call: ms(thaw_reply - thaw_sent),
        frozen_window: ms(thaw_reply - freeze_sent),
        in_freeze_overhead: ms(thaw_sent - freeze_reply),
    };

    // A transaction abandoned in flight: the guest is thawed (or given up on); now
    // learn whether QEMU switched the disks after all.
    if sent {
        warn!("the transaction was in flight when the freeze was abandoned; awaiting its reply");
        disks_outcome = transaction_disks(call.await, &mut problem, || Disks::SwitchedLate);
    }
    Ok(Switch {
        disks: disks_outcome,
        guest,
        problem,
        guardian: req.guardian.is_some(),
        timings,
    })
}

/// How many filesystems `--mountpoint` asks for (0: all, whatever their number).
fn wanted_filesystems(mountpoints: &[String]) -> u64 {
    let distinct: std::collections::BTreeSet<_> = mountpoints.iter().collect();
    distinct.len() as u64
}

fn freeze_failed(e: qga::Error) -> Error {
    let reason = if e.is_timeout() {
        "guest-fsfreeze-freeze did not answer before the freeze deadline (a slow fsfreeze hook?)"
    } else {
        "guest-fsfreeze-freeze failed"
    };
    Error::QuiesceFailed {
        reason: reason.into(),
        source: Some(e),
    }
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
