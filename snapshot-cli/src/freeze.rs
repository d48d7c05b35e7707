//! The guest agent's side of a snapshot: probing, freezing, thawing, confirming.

use crate::error::{Error, Result};
use crate::request::{Quiesce, SnapshotRequest};
use qga::commands::{
    FsfreezeStatus, GuestAgentInfo, GuestFsfreezeFreeze, GuestFsfreezeFreezeList,
    GuestFsfreezeStatus, GuestFsfreezeThaw, GuestGetOsinfo, GuestInfo,
};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tracing::{debug, warn};

/// What Windows' VSS provider answers when it already thawed by itself (10 s limit).
const WINDOWS_AUTO_THAW: &str = "fsfreeze is limited up to 10 seconds";
/// Longest budget for a Windows guest: VSS thaws by itself after 10 s.
const WINDOWS_BUDGET: Duration = Duration::from_millis(9_000);
/// Deadline for each thaw-side call.
const THAW_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected agent that can freeze.
#[derive(Debug, Clone)]
pub(crate) struct Agent {
    pub(crate) client: qga::Client,
    pub(crate) path: PathBuf,
    pub(crate) info: GuestAgentInfo,
    pub(crate) windows: bool,
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
        Err(Error::QuiesceUnavailable { reason, source }) if req.quiesce == Quiesce::Preferred => {
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
    })
}

impl Agent {
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

    /// Sends the thaw; returns its count. Distinguishes Windows' own early thaw.
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

    /// After a thaw attempt: makes sure the guest reads `thawed`.
    pub(crate) async fn confirm_thawed(&self) -> Result<()> {
        confirm_thawed(&self.client, &self.path).await
    }
}

/// Makes sure the guest reads `thawed`, thawing again up to twice (a freeze that
/// timed out may have completed since).
async fn confirm_thawed(client: &qga::Client, path: &Path) -> Result<()> {
    let status = || client.execute_with_timeout(&GuestFsfreezeStatus, THAW_TIMEOUT);
    let unconfirmed = |source| Error::ThawUnconfirmed {
        qga: path.to_owned(),
        source,
    };
    for attempt in 0..2 {
        match status().await {
            Ok(FsfreezeStatus::Thawed) => return Ok(()),
            Ok(FsfreezeStatus::Frozen) => debug!(attempt, "still frozen; thawing again"),
            Err(e) => debug!(attempt, error = %e, "status unknown; thawing again"),
        }
        let _ = client
            .execute_with_timeout(&GuestFsfreezeThaw, THAW_TIMEOUT)
            .await;
    }
    match status().await {
        Ok(FsfreezeStatus::Thawed) => Ok(()),
        Ok(FsfreezeStatus::Frozen) => Err(unconfirmed(None)),
        Err(e) => Err(unconfirmed(Some(e))),
    }
}

/// Connects to the agent at `path`, thaws, and confirms the guest reads `thawed`:
/// what `qsnap thaw` and the guardian run to rescue a guest left frozen by anything.
/// Returns the first thaw's count.
///
/// # Errors
/// [`Error::ThawUnconfirmed`] when the agent cannot be reached or the guest still
/// reads frozen.
pub async fn thaw_guest(path: &Path, sync_timeout: Duration) -> Result<u64> {
    let unconfirmed = |source| Error::ThawUnconfirmed {
        qga: path.to_owned(),
        source,
    };
    let config = qga::Config::default().sync_timeout(sync_timeout);
    let client = qga::Client::connect(path, config)
        .await
        .map_err(|e| unconfirmed(Some(e)))?;
    let n = client
        .execute_with_timeout(&GuestFsfreezeThaw, THAW_TIMEOUT)
        .await
        .map_err(|e| unconfirmed(Some(e)))?;
    confirm_thawed(&client, path).await?;
    Ok(n)
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
/// cancelled futures. The thaw is queued on the agent connection's task, which runs it
/// even after every handle is gone (as long as the runtime lives).
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
            warn!("leaving the frozen window abnormally: queueing a thaw");
            if let Err(e) = client.execute_detached(&GuestFsfreezeThaw) {
                warn!(error = %e, "could not queue the thaw");
            }
        }
    }
}
