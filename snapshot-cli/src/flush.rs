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
    // Off, or a Windows guest (VSS flushes on its own; there is no sync to run).
    if !req.pre_flush || agent.windows {
        return Flushed {
            ms: 0.0,
            warning: None,
        };
    }
    if !agent.info.is_enabled("guest-exec") || !agent.info.is_enabled("guest-exec-status") {
        return Flushed {
            ms: 0.0,
            warning: Some("no pre-flush: the guest agent does not allow guest-exec".into()),
        };
    }
    let mountpoints = agent.mountpoints(req);
    let arg: Vec<String> = if mountpoints.is_empty() {
        Vec::new()
    } else {
        std::iter::once("-f".to_owned())
            .chain(mountpoints.iter().cloned())
            .collect()
    };
    let start = Instant::now();
    let deadline = start + req.pre_flush_timeout;
    let mut outcome = run_sync(agent, arg.clone(), deadline).await;
    // A `sync` without `-f` (old busybox, BSD) exits non-zero: a plain one then.
    if !arg.is_empty() && matches!(outcome, Ok(Synced::Exited(code)) if code != 0) {
        outcome = run_sync(agent, Vec::new(), deadline).await;
    }
    let ms = crate::coordinator::ms(start.elapsed());
    let warning = match outcome {
        Ok(Synced::Exited(0)) => None,
        Ok(Synced::Exited(code)) => Some(format!("the pre-flush `sync` exited {code}")),
        Ok(Synced::TimedOut) => Some(format!(
            "the pre-flush `sync` did not finish within {:?}; freezing anyway",
            req.pre_flush_timeout
        )),
        Err(e) => Some(format!("no pre-flush: {e}")),
    };
    if let Some(w) = &warning {
        tracing::warn!("{w}");
    } else {
        tracing::info!(ms, "pre-flush done");
    }
    Flushed { ms, warning }
}

/// How a `sync` run ended, as far as qsnap waited.
enum Synced {
    /// With this exit code (-1: ended by a signal).
    Exited(i64),
    /// Still running at the deadline (it goes on in the guest, harmlessly).
    TimedOut,
}

/// Starts `sync ARG…` and waits for it until `deadline`. Each agent call is bounded by
/// the time left too, so a stuck agent frees the connection for the freeze.
async fn run_sync(agent: &Agent, arg: Vec<String>, deadline: Instant) -> qga::Result<Synced> {
    let left = || deadline.saturating_duration_since(Instant::now());
    if left().is_zero() {
        return Ok(Synced::TimedOut);
    }
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
            return Ok(Synced::Exited(st.exitcode.unwrap_or(-1)));
        }
        if left() < POLL {
            return Ok(Synced::TimedOut);
        }
        tokio::time::sleep(POLL).await;
    }
}
