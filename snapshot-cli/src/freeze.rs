//! The guest agent's side of a snapshot: probing, freezing, thawing, confirming.

use crate::error::{Error, Result};
use crate::policy::{self, Action, Setback};
use crate::request::{Quiesce, SnapshotRequest};
use qga::commands::{
    FsfreezeStatus, GuestAgentInfo, GuestFsfreezeFreeze, GuestFsfreezeFreezeList,
    GuestFsfreezeStatus, GuestFsfreezeThaw, GuestGetOsinfo, GuestInfo,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, warn};

/// What Windows' VSS provider answers when it already thawed by itself (10 s limit).
const WINDOWS_AUTO_THAW: &str = "fsfreeze is limited up to 10 seconds";
/// Longest budget for a Windows guest: VSS thaws by itself after 10 s.
const WINDOWS_BUDGET: Duration = Duration::from_millis(9_000);
/// Deadline for each thaw-side call.
const THAW_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between confirmation attempts after a failure or a guest still frozen.
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// How long a rescuer waits for a sync before it writes the thaw behind whatever the
/// agent is busy with.
const RESCUE_SYNC: Duration = Duration::from_secs(2);

/// A connected agent that can freeze.
#[derive(Debug, Clone)]
pub(crate) struct Agent {
    pub(crate) client: qga::Client,
    pub(crate) path: PathBuf,
    pub(crate) info: GuestAgentInfo,
    pub(crate) windows: bool,
    /// Which filesystems to freeze, when `--disk` chose some of the disks.
    pub(crate) scope: Option<crate::scope::FreezeScope>,
}

/// Connects to the agent and checks it can freeze, applying the quiesce policy.
/// `Ok(None)`: proceed crash-consistent (a warning was pushed).
pub(crate) async fn probe(
    req: &SnapshotRequest,
    warnings: &mut Vec<String>,
) -> Result<Option<Agent>> {
    if req.quiesce == Quiesce::Off {
        return Ok(None);
    }
    match try_probe(req).await {
        Ok(agent) => Ok(Some(agent)),
        Err(Error::QuiesceUnavailable { reason, source })
            if policy::decide(req.quiesce, Setback::AgentUnavailable)
                == Action::CrashConsistent =>
        {
            let detail = source.map(|s| format!(": {s}")).unwrap_or_default();
            warn!("{reason}{detail}; taking a crash-consistent snapshot");
            warnings.push(format!("not quiesced: {reason}{detail}"));
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

async fn try_probe(req: &SnapshotRequest) -> Result<Agent> {
    let unavailable = |reason: &str, source| Error::QuiesceUnavailable {
        reason: reason.to_owned(),
        source,
    };
    let path = req
        .qga
        .clone()
        .ok_or_else(|| unavailable("no guest-agent socket given (--qga)", None))?;
    let config = qga::Config::default().sync_timeout(req.agent_timeout);
    let client = qga::Client::connect(&path, config)
        .await
        .map_err(|e| unavailable("the guest agent does not answer", Some(e)))?;
    let info = client
        .execute(&GuestInfo)
        .await
        .map_err(|e| unavailable("guest-info failed", Some(e)))?;
    let needed = if req.mountpoints.is_empty() {
        "guest-fsfreeze-freeze"
    } else {
        "guest-fsfreeze-freeze-list"
    };
    if !info.is_enabled(needed) {
        return Err(unavailable(
            &format!("the guest agent has no {needed}"),
            None,
        ));
    }
    let status = client
        .execute(&GuestFsfreezeStatus)
        .await
        .map_err(|e| unavailable("guest-fsfreeze-status failed", Some(e)))?;
    if status == FsfreezeStatus::Frozen {
        return Err(Error::Invalid(format!(
            "the guest's filesystems are already frozen (by another tool?); if nothing uses that freeze, run `qsnap thaw --qga {}`",
            path.display()
        )));
    }
    // Optional: an agent may have guest-get-osinfo disabled.
    let windows = client
        .execute(&GuestGetOsinfo)
        .await
        .is_ok_and(|os| os.is_windows());
    Ok(Agent {
        client,
        path,
        info,
        windows,
        scope: None,
    })
}

impl Agent {
    /// The mountpoints to freeze: `--mountpoint`'s, else the scope's; empty: all.
    pub(crate) fn mountpoints<'a>(&'a self, req: &'a SnapshotRequest) -> &'a [String] {
        if req.mountpoints.is_empty() {
            self.scope.as_ref().map_or(&[], |s| s.frozen.as_slice())
        } else {
            &req.mountpoints
        }
    }

    /// When `--disk` chose some of the disks (and `--mountpoint` named none), narrows
    /// the freeze to the guest filesystems on them (see [`crate::scope`]). Anything
    /// it cannot establish leaves the freeze whole, and the scope says why.
    pub(crate) async fn narrow(
        &mut self,
        req: &SnapshotRequest,
        qmp: &qmp::Client,
        blocks: &[qmp::commands::BlockInfo],
        chosen: &[&qmp::commands::BlockInfo],
    ) {
        let disks: Vec<_> = blocks.iter().filter(|b| b.inserted.is_some()).collect();
        if req.disks.is_empty() || !req.mountpoints.is_empty() || chosen.len() == disks.len() {
            return; // Every disk, or the user's mountpoints: nothing to narrow.
        }
        // qdev id -> how many disks carry it: one that stands for two (nested
        // devices) identifies neither.
        let mut count = std::collections::BTreeMap::new();
        for id in disks.iter().filter_map(|b| b.qdev_id()) {
            *count.entry(id.to_owned()).or_insert(0) += 1;
        }
        let all = count
            .into_iter()
            .filter_map(|(id, n)| (n == 1).then_some(id))
            .collect();
        let chosen_ids = chosen
            .iter()
            .filter_map(|b| b.qdev_id().map(str::to_owned))
            .collect();
        let scope = if self.windows {
            crate::scope::FreezeScope::all(
                "Windows guest (its agent's PCI slot numbers may not be QEMU's): every volume is frozen",
            )
        } else if !self.info.is_enabled("guest-fsfreeze-freeze-list")
            || !self.info.is_enabled("guest-get-fsinfo")
        {
            crate::scope::FreezeScope::all(
                "the guest agent has no guest-get-fsinfo or guest-fsfreeze-freeze-list: every filesystem is frozen",
            )
        } else {
            // The guest is asked only once QEMU has answered.
            match qmp.execute(&qmp::commands::QueryPci).await {
                Err(e) => crate::scope::FreezeScope::all(format!(
                    "query-pci failed ({e}): every filesystem is frozen"
                )),
                Ok(pci) => match self.client.execute(&qga::commands::GuestGetFsinfo).await {
                    Ok(fs) => crate::scope::scope(&chosen_ids, &all, &pci, &fs),
                    Err(e) => crate::scope::FreezeScope::all(format!(
                        "guest-get-fsinfo failed ({e}): every filesystem is frozen"
                    )),
                },
            }
        };
        tracing::info!(frozen = ?scope.frozen, not_frozen = ?scope.not_frozen, "freeze scope");
        self.scope = Some(scope);
    }

    /// The freeze budget, capped for Windows guests.
    pub(crate) fn budget(&self, requested: Duration) -> Duration {
        budget(self.windows, requested)
    }

    /// `guest-fsfreeze-freeze`, or `-freeze-list` for chosen mountpoints.
    pub(crate) async fn freeze(
        &self,
        mountpoints: &[String],
        within: Duration,
    ) -> qga::Result<u64> {
        if mountpoints.is_empty() {
            self.client
                .execute_with_timeout(&GuestFsfreezeFreeze, within)
                .await
        } else {
            let list = GuestFsfreezeFreezeList {
                mountpoints: Some(mountpoints.to_vec()),
            };
            self.client.execute_with_timeout(&list, within).await
        }
    }

    /// Sends the thaw and waits for its count. Distinguishes Windows' own early thaw.
    pub(crate) async fn thaw(&self) -> std::result::Result<u64, ThawError> {
        match self
            .client
            .execute_with_timeout(&GuestFsfreezeThaw, THAW_TIMEOUT)
            .await
        {
            Ok(n) => Ok(n),
            Err(e)
                if e.agent_error()
                    .is_some_and(|a| a.desc.contains(WINDOWS_AUTO_THAW)) =>
            {
                Err(ThawError::AutoThawed)
            }
            Err(e) => Err(ThawError::Failed(e)),
        }
    }

    /// Writes `0xFF` + thaw at once, behind a freeze that has not answered.
    pub(crate) fn thaw_behind(&self) {
        if let Err(e) = self.client.execute_urgent(&GuestFsfreezeThaw) {
            warn!(error = %e, "could not queue the thaw");
        }
    }

    /// After a thaw attempt: makes sure the guest reads `thawed` before `until`.
    pub(crate) async fn confirm_thawed(&self, until: Instant) -> Result<()> {
        confirm_thawed(&self.client, until)
            .await
            .map(drop)
            .map_err(|source| Error::ThawUnconfirmed {
                qga: self.path.clone(),
                source: source.map(Box::new),
                left: Vec::new(),
            })
    }
}

/// Reads `guest-fsfreeze-status` (thawing again while it says `frozen`) until the guest
/// reads `thawed` or `until` passes. Returns the count of the last thaw it sent.
async fn confirm_thawed(
    client: &qga::Client,
    until: Instant,
) -> std::result::Result<Option<u64>, Option<qga::Error>> {
    let mut count = None;
    let mut last = None;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(last);
        }
        let step = left.min(THAW_TIMEOUT);
        let status = tokio::time::timeout_at(
            until,
            client.execute_with_timeout(&GuestFsfreezeStatus, step),
        )
        .await
        .unwrap_or_else(|_| {
            Err(qga::Error::Timeout {
                command: "guest-fsfreeze-status".into(),
                after: step,
            })
        });
        match status {
            Ok(FsfreezeStatus::Thawed) => return Ok(count),
            Ok(FsfreezeStatus::Frozen) => {
                debug!("still frozen; thawing again");
                match client.execute_with_timeout(&GuestFsfreezeThaw, step).await {
                    Ok(n) => count = Some(n),
                    Err(e) => last = Some(e),
                }
                tokio::time::sleep_until(until.min(Instant::now() + RETRY_PAUSE)).await;
            }
            Err(e) if e.is_disconnected() => return Err(Some(e)),
            Err(e) => {
                debug!(error = %e, "status unknown; asking again");
                last = Some(e);
                // An agent that fails at once must not be hammered.
                tokio::time::sleep_until(until.min(Instant::now() + RETRY_PAUSE)).await;
            }
        }
    }
}

/// Connects to the agent at `path`, thaws, and reads the status until the guest
/// reports `thawed`, within `within`: what `qsnap thaw` and the guardian run to rescue a
/// guest left frozen by anything. An agent that cannot answer a sync within 2 s (a
/// slow fsfreeze hook holds it) gets `0xFF` + thaw written behind whatever it is busy
/// with; that thaw runs as soon as the agent is free. Returns the count of a thaw that
/// answered, if one did.
///
/// # Errors
/// [`Error::ThawUnconfirmed`] when the agent cannot be reached or the guest does not
/// read `thawed` in time.
pub async fn thaw_guest(path: &Path, within: Duration) -> Result<Option<u64>> {
    let until = Instant::now() + within;
    let unconfirmed = |source: Option<qga::Error>| Error::ThawUnconfirmed {
        qga: path.to_owned(),
        source: source.map(Box::new),
        left: Vec::new(),
    };
    let config = qga::Config::default().sync_timeout(within.min(RESCUE_SYNC));
    let client = qga::Client::connect_unsynced(path, config)
        .await
        .map_err(|e| unconfirmed(Some(e)))?;
    let first = client
        .execute_with_timeout(&GuestFsfreezeThaw, within.min(THAW_TIMEOUT))
        .await;
    let count = match first {
        Ok(n) => Some(n),
        Err(e) if e.is_disconnected() => return Err(unconfirmed(Some(e))),
        Err(e) => {
            debug!(error = %e, "the agent is busy; writing the thaw behind what it is doing");
            client
                .execute_urgent(&GuestFsfreezeThaw)
                .map_err(|e| unconfirmed(Some(e)))?;
            None
        }
    };
    let later = confirm_thawed(&client, until).await.map_err(unconfirmed)?;
    Ok(later.or(count))
}

/// Windows' VSS thaws by itself after 10 s: keep the budget below that.
fn budget(windows: bool, requested: Duration) -> Duration {
    if windows {
        requested.min(WINDOWS_BUDGET)
    } else {
        requested
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_budget_stays_under_vss_ten_seconds() {
        assert_eq!(
            budget(true, Duration::from_secs(30)),
            Duration::from_secs(9)
        );
        assert_eq!(budget(true, Duration::from_secs(2)), Duration::from_secs(2));
        assert_eq!(
            budget(false, Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }
}

/// Why a thaw call did not return a count.
#[derive(Debug)]
pub(crate) enum ThawError {
    /// The guest (Windows VSS) had already thawed by itself.
    AutoThawed,
    /// The call failed.
    Failed(qga::Error),
}

/// Thaws on drop unless disarmed: the freeze's safety net for errors, panics and
/// cancelled futures. The thaw is written at once by the agent connection's task —
/// behind a freeze still in flight — even after every handle is gone (as long as the
/// runtime lives).
pub(crate) struct FreezeGuard {
    client: Option<qga::Client>,
}

impl FreezeGuard {
    /// Arm before sending the freeze: a freeze can complete even if its call fails.
    pub(crate) fn arm(client: &qga::Client) -> Self {
        Self {
            client: Some(client.clone()),
        }
    }

    /// The thaw was confirmed by the normal path.
    pub(crate) fn disarm(&mut self) {
        self.client = None;
    }
}

impl Drop for FreezeGuard {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            // The thaw first: logging may block on a stalled stderr.
            match client.execute_urgent(&GuestFsfreezeThaw) {
                Ok(()) => warn!(
                    "left the frozen window abnormally: a thaw was queued to be written at once"
                ),
                Err(e) => warn!(error = %e, "could not queue the thaw"),
            }
        }
    }
}
