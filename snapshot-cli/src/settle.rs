//! Settling a switch: keep it, undo it, or roll the overlays back — and say only what
//! was checked.
//!
//! | guest | disks | policy | result |
//! |---|---|---|---|
//! | may still be frozen | any | any | exit 5 (overlays rolled back if unused) |
//! | thawed / never frozen | unchanged | any | rollback → the error (3, 4, 130) or 7 |
//! | thawed | switched in time, thaw verified | any | quiesced snapshot (0) |
//! | never frozen | switched in time | off / preferred | crash-consistent snapshot (0) |
//! | thawed / never frozen | switched late, or thaw not verified | required, or interrupted | undo → 3 or 130, or 7 |
//! | thawed / never frozen | switched late, or thaw not verified | preferred / off | kept → 6 |
//!
//! "Nothing changed" is said only after the rollback checked that none of this run's
//! nodes or files exist and, after an undo, that each disk's active node is the one it
//! had before.

use crate::error::{Error, Result};
use crate::freeze::ThawError;
use crate::overlay::{Cleanup, Prepared};
use crate::plan::DiskPlan;
use crate::policy::{self, Action, Setback};
use crate::report::{Consistency, Report};
use crate::request::SnapshotRequest;
use crate::window::{Disks, Guest, Switch};
use qmp::commands::QueryBlock;
use tracing::warn;

/// Everything settling needs besides the switch itself.
pub(crate) struct Settle<'a> {
    pub(crate) req: &'a SnapshotRequest,
    pub(crate) disks: &'a [DiskPlan],
    pub(crate) prepared: Prepared,
    pub(crate) report: Report,
}

impl Settle<'_> {
    /// Applies the table in the module docs.
    pub(crate) async fn settle(mut self, mut switch: Switch) -> Result<Report> {
        self.fill_report(&switch);
        let unresolved = self.resolve_unknown(&mut switch).await.err();
        // A guest that may still be frozen outranks everything else (exit 5).
        if let Guest::MaybeFrozen(e) = switch.guest {
            return Err(self.maybe_frozen(e, &switch.disks, unresolved).await);
        }
        if let Some(e) = unresolved {
            self.prepared.keep();
            return Err(e);
        }
        match (&switch.disks, switch.problem) {
            (Disks::Unchanged, problem) => {
                let error = problem.unwrap_or_else(|| Error::Invalid("nothing switched".into()));
                let cleanup = self.prepared.rollback().await;
                Err(after_rollback(error, cleanup))
            }
            (Disks::SwitchedInTime { .. }, None) => match thaw_problem(&switch.guest) {
                None => self.keep(),
                Some(reason) => self.late(reason, false).await,
            },
            (_, Some(Error::Interrupted)) => {
                self.late("interrupted while the disks switched".into(), true)
                    .await
            }
            (_, problem) => {
                let reason = problem.map_or_else(
                    || "the disks switched after the freeze ended".into(),
                    |p| format!("{}; the disks switched only afterwards", p.failure()),
                );
                self.late(reason, false).await
            }
        }
    }

    /// The guest may still be frozen: that is the error (exit 5), and it lists what
    /// this run leaves. A switch is never kept silently: under `required` it is merged
    /// back (QMP alone can do that), otherwise it is named with how to merge it.
    async fn maybe_frozen(self, e: Error, disks: &Disks, unresolved: Option<Error>) -> Error {
        let mut left: Vec<String> = unresolved.map(|u| u.failure()).into_iter().collect();
        let switched = !matches!(disks, Disks::Unchanged);
        let undo = policy::decide(
            self.req.quiesce,
            Setback::SwitchNotVerified { interrupted: false },
        ) == Action::Undo;
        if switched && !undo {
            left.extend(self.disks.iter().map(|d| {
                format!(
                    "disk {} may run on overlay {} (not verified consistent; `qsnap commit --disk {}` merges it back)",
                    d.node,
                    d.overlay.display(),
                    d.overlay_node
                )
            }));
            self.prepared.keep();
        } else {
            if switched {
                left.extend(crate::undo::undo_switch(self.prepared.qmp(), self.disks).await);
            }
            left.extend(self.prepared.rollback().await.left);
        }
        match e {
            Error::ThawUnconfirmed { qga, source, .. } => {
                Error::ThawUnconfirmed { qga, source, left }
            }
            other => other,
        }
    }

    fn fill_report(&mut self, switch: &Switch) {
        switch.fill(&mut self.report.timings_ms);
        self.report.guardian = switch.guardian;
        if let Guest::Thawed { frozen, thaw } = &switch.guest {
            self.report.frozen_filesystems = *frozen;
            if let Some(Ok(n)) = thaw {
                self.report.thawed_filesystems = *n;
            }
        }
    }

    /// A clean switch: the overlays stay.
    fn keep(mut self) -> Result<Report> {
        self.prepared.keep();
        if self.report.frozen_filesystems > 0 {
            self.report.consistency = Consistency::Quiesced;
        }
        Ok(self.report)
    }

    /// The disks switched, but not verifiably while frozen: undo under `required` (and
    /// on interrupt), keep and say so otherwise.
    async fn late(mut self, reason: String, interrupted: bool) -> Result<Report> {
        warn!("{reason}");
        let setback = Setback::SwitchNotVerified { interrupted };
        if policy::decide(self.req.quiesce, setback) == Action::CrashConsistent {
            self.prepared.keep();
            self.report.consistency = Consistency::CrashConsistent;
            self.report.warnings.push(reason.clone());
            return Err(Error::NotConsistent {
                reason,
                report: Box::new(self.report),
            });
        }
        let mut left = crate::undo::undo_switch(self.prepared.qmp(), self.disks).await;
        left.extend(self.prepared.rollback().await.left);
        match (left.is_empty(), interrupted) {
            (true, true) => Err(Error::Interrupted),
            (true, false) => Err(Error::QuiesceFailed {
                reason: format!("{reason}, and was undone (merged back)"),
                source: None,
            }),
            (false, _) => Err(Error::CleanupIncomplete {
                failure: reason,
                left,
            }),
        }
    }

    /// A transaction whose reply was lost: `query-block` (over a new connection if
    /// needed) says whether the disks switched. Errors when it cannot tell.
    async fn resolve_unknown(&mut self, switch: &mut Switch) -> Result<()> {
        if !matches!(switch.disks, Disks::Unknown(_)) {
            return Ok(());
        }
        let Disks::Unknown(lost) = std::mem::replace(&mut switch.disks, Disks::Unchanged) else {
            return Ok(());
        };
        match self.switched_after_all().await {
            Ok(true) => switch.disks = Disks::SwitchedLate,
            Ok(false) => {}
            Err(e) => {
                return Err(Error::CleanupIncomplete {
                    failure: format!("the QMP connection failed during the transaction: {lost}"),
                    left: vec![format!(
                        "cannot tell whether the disks switched ({e}); check with `qsnap info`"
                    )],
                });
            }
        }
        switch.problem.get_or_insert(Error::Qmp {
            during: "the transaction (its reply was lost)",
            source: lost,
        });
        Ok(())
    }

    /// After a lost transaction reply: reconnects if needed and reads `query-block`.
    async fn switched_after_all(&mut self) -> qmp::Result<bool> {
        if self.prepared.qmp().closed().is_some() {
            let qmp = qmp::Client::connect(&self.req.qmp, qmp::Config::default()).await?;
            self.prepared.reconnected(qmp);
        }
        let blocks = self.prepared.qmp().execute(&QueryBlock).await?;
        Ok(blocks.iter().any(|b| {
            b.inserted
                .as_ref()
                .and_then(|i| i.node_name.as_ref())
                .is_some_and(|n| self.disks.iter().any(|d| d.overlay_node == *n))
        }))
    }
}

/// Why a switch made in time is still not verifiably consistent.
pub(crate) fn thaw_problem(guest: &Guest) -> Option<String> {
    match guest {
        Guest::Thawed {
            frozen,
            thaw: Some(Ok(n)),
        } if n != frozen => Some(format!(
            "thaw count {n} differs from freeze count {frozen}: something thawed early"
        )),
        Guest::Thawed {
            thaw: Some(Err(ThawError::AutoThawed)),
            ..
        } => {
            Some("the guest thawed by itself before the thaw (Windows VSS 10-second limit)".into())
        }
        // A retry thawed the guest, but without the first thaw's count nothing shows
        // that no filesystem thawed before the switch.
        Guest::Thawed {
            thaw: Some(Err(ThawError::Failed(e))),
            ..
        } => Some(format!(
            "the first thaw failed ({e}), so the freeze cannot be verified to have held until the switch"
        )),
        _ => None,
    }
}

/// The error to report after a rollback: the original one when everything this run
/// created is gone (checked), else what is left.
pub(crate) fn after_rollback(error: Error, cleanup: Cleanup) -> Error {
    if cleanup.is_complete() {
        error
    } else {
        Error::CleanupIncomplete {
            failure: error.failure(),
            left: cleanup.left,
        }
    }
}
