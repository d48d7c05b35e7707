//! The pre-flush: `sync` in the guest just before the freeze.
//!
//! FIFREEZE writes out every dirty page of the filesystems it freezes, and guest
//! writes block until it is done: the more dirty data, the longer the stall. A `sync`
//! run through `guest-exec` right before the freeze writes most of it out while the
//! guest still runs, so FIFREEZE has little left. It is best effort: an agent that
//! does not allow `guest-exec` (many hardened guests), a Windows guest (no `sync`),
//! a `sync` that fails or outlasts its own timeout, each only costs the benefit — a
//! warning in the report, never a failed run. When the freeze covers some
//! filesystems only, only those are synced (`sync -f MOUNTPOINT…`).

use crate::freeze::Agent;
use crate::request::SnapshotRequest;
use qga::commands::{GuestExec, GuestExecStatusOf};
use std::time::{Duration, Instant};

/// How often `guest-exec-status` is asked while `sync` runs.
const POLL: Duration = Duration::from_millis(10);

/// What the pre-flush did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Flushed {
    /// Milliseconds it took (0 when not run).
    pub(crate) ms: f64,
    /// Why it did not flush, or did not finish: for the report's warnings.
    pub(crate) warning: Option<String>,
}

/// Runs `sync` in the guest, bounded by `req.pre_flush_timeout`.
pub(crate) async fn pre_flush(req: &SnapshotRequest, agent: &Agent) -> Flushed {
    let skipped = |why: &str| Flushed {
        ms: 0.0,
        warning: Some(format!("no pre-flush: {why}")),
    };
    if !req.pre_flush {
        return Flushed {
            ms: 0.0,
            warning: None,
        };
    }
    if agent.windows {
        return Flushed {
            ms: 0.0,
            warning: None, // VSS flushes on its own; there is no sync to run.
        };
    }
    if !agent.info.is_enabled("guest-exec") || !agent.info.is_enabled("guest-exec-status") {
        return skipped("the guest agent does not allow guest-exec");
    }
    let mountpoints = agent.mountpoints(req);
    let arg = if mountpoints.is_empty() {
        Vec::new()
    } else {
        std::iter::once("-f".to_owned())
            .chain(mountpoints.iter().cloned())
            .collect()
    };
    let start = Instant::now();
    let deadline = start + req.pre_flush_timeout;
    let mut outcome = tokio::time::timeout(
        req.pre_flush_timeout,
        run_sync(agent, arg.clone(), deadline),
    )
    .await;
    // A `sync` without `-f` (old busybox, BSD) exits non-zero: a plain one then.
    if !arg.is_empty() && matches!(outcome, Ok(Ok(code)) if code != 0) {
        let left = deadline.saturating_duration_since(Instant::now());
        outcome = tokio::time::timeout(left, run_sync(agent, Vec::new(), deadline)).await;
    }
    let ms = crate::coordinator::ms(start.elapsed());
    let warning = match outcome {
        Ok(Ok(0)) => None,
        Ok(Ok(code)) => Some(format!("the pre-flush `sync` exited {code}")),
        Ok(Err(e)) => Some(format!("no pre-flush: {e}")),
        Err(_) => Some(format!(
            "the pre-flush `sync` did not finish within {:?}; freezing anyway",
            req.pre_flush_timeout
        )),
    };
    if let Some(w) = &warning {
        tracing::warn!("{w}");
    } else {
        tracing::info!(ms, "pre-flush done");
    }
    Flushed { ms, warning }
}

/// Starts `sync ARG…` and waits for its exit code (-1: ended by a signal). Each agent
/// call is bounded by `deadline` too, so a stuck agent frees the connection for the
/// freeze (a dropped call would otherwise hold it until its own timeout).
async fn run_sync(agent: &Agent, arg: Vec<String>, deadline: Instant) -> qga::Result<i64> {
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let exec = GuestExec {
        path: "sync".into(),
        arg,
        capture_output: false,
    };
    let pid = agent.client.execute_with_timeout(&exec, left()).await?.pid;
    loop {
        let st = agent
            .client
            .execute_with_timeout(&GuestExecStatusOf { pid }, left())
            .await?;
        if st.exited {
            return Ok(st.exitcode.unwrap_or(-1));
        }
        tokio::time::sleep(POLL).await;
    }
}
