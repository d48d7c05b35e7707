//! [`Frozen`]: a guest whose filesystems this run froze. It owns what gets the guest
//! thawed whatever happens — the drop guard (an urgent thaw on the agent connection)
//! and the out-of-process guardian — and gives them up only through
//! [`Frozen::thaw`], which returns what it verified.

use crate::error::Error;
use crate::freeze::{Agent, FreezeGuard, ThawError};
use crate::guardian::{GRACE, Guardian};
use crate::lock::VmLock;
use crate::request::SnapshotRequest;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The coordinator's own confirmation of the thaw ends this long before the guardian
/// would kill it, so it always gets to report.
const CONFIRM_MARGIN: Duration = Duration::from_millis(1500);

/// The frozen window, from the freeze being sent until [`Frozen::thaw`].
pub(crate) struct Frozen<'a> {
    agent: &'a Agent,
    guard: FreezeGuard,
    guardian: Option<Guardian>,
    /// What the freeze answered (`None`: no answer, or an error).
    pub(crate) answered: Option<u64>,
    /// When the freeze must have answered and the transaction returned.
    pub(crate) deadline: tokio::time::Instant,
    confirm_by: tokio::time::Instant,
    sent: Instant,
    /// When the freeze's answer (or its failure) came.
    pub(crate) replied: Instant,
}

/// What the thaw verified, and when.
pub(crate) struct Thawed {
    pub(crate) guest: Guest,
    pub(crate) thaw_sent: Instant,
    pub(crate) thaw_reply: Instant,
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

impl<'a> Frozen<'a> {
    /// Arms the guardian (told `frozen` before anything is sent) and the drop guard,
    /// then freezes under the deadline. An unanswered freeze gets its thaw written
    /// behind it at once. Returns the window and the freeze's result.
    pub(crate) async fn freeze(
        req: &SnapshotRequest,
        agent: &'a Agent,
        lock: &VmLock,
        cancel: &CancellationToken,
    ) -> Result<(Self, Result<u64, Error>), Error> {
        let budget = agent.budget(req.freeze_timeout);
        let mut guardian = match &req.guardian {
            Some(exe) => {
                Some(Guardian::arm(exe, &agent.path, agent.client.peer_pid(), budget, lock).await?)
            }
            None => None,
        };
        if let Some(g) = guardian.as_mut() {
            g.frozen().await?;
        }
        let guard = FreezeGuard::arm(&agent.client);
        let sent = Instant::now();
        let deadline = tokio::time::Instant::now() + budget;
        let result = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(Error::Interrupted),
            r = tokio::time::timeout_at(deadline, agent.freeze(agent.mountpoints(req), budget)) => {
                r.unwrap_or_else(|_| Err(qga::Error::Timeout {
                    command: "guest-fsfreeze-freeze".into(),
                    after: budget,
                })).map_err(freeze_failed)
            }
        };
        let answered = result.as_ref().ok().copied();
        if answered.is_none() {
            // Unanswered (deadline, interrupt) or failed part-way: the agent may
            // freeze later or be frozen already. The thaw goes out now, behind it.
            agent.thaw_behind();
        }
        let frozen = Self {
            agent,
            guard,
            guardian,
            answered,
            deadline,
            confirm_by: deadline + GRACE - CONFIRM_MARGIN,
            sent,
            replied: Instant::now(),
        };
        Ok((frozen, result))
    }

    /// When the freeze was sent.
    pub(crate) fn sent(&self) -> Instant {
        self.sent
    }

    /// Thaws (an answered freeze; an unanswered one has its thaw queued already) and
    /// confirms the guest reads `thawed`. Confirmed: the drop guard and the guardian
    /// stand down. Not confirmed: the guardian's pipe is closed, so it rescues.
    pub(crate) async fn thaw(mut self) -> Thawed {
        let thaw_sent = Instant::now();
        let thaw_bound = self
            .confirm_by
            .saturating_duration_since(tokio::time::Instant::now());
        let thaw = match self.answered {
            // Bounded by the confirmation deadline: a slow thaw hook must not run the
            // coordinator into the guardian's kill.
            Some(_) => Some(
                tokio::time::timeout_at(self.confirm_by, self.agent.thaw())
                    .await
                    .unwrap_or_else(|_| {
                        Err(ThawError::Failed(qga::Error::Timeout {
                            command: "guest-fsfreeze-thaw".into(),
                            after: thaw_bound,
                        }))
                    }),
            ),
            None => None,
        };
        let thaw_reply = Instant::now();
        let guest = match self.agent.confirm_thawed(self.confirm_by).await {
            Ok(()) => {
                self.guard.disarm();
                if let Some(g) = self.guardian.take() {
                    g.disarm().await;
                }
                Guest::Thawed {
                    frozen: self.answered.unwrap_or(0),
                    thaw,
                }
            }
            // Closing the guardian's pipe makes it rescue (it connects once this run
            // lets go of the agent socket) rather than kill a coordinator that may
            // still wait for a late transaction.
            Err(e) => {
                drop(self.guardian.take());
                Guest::MaybeFrozen(e)
            }
        };
        Thawed {
            guest,
            thaw_sent,
            thaw_reply,
        }
    }
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
