//! Manual guest-agent commands: ping, freeze, thaw, fsstatus.

use super::args::ThawArgs;
use super::{Global, interruptible, need, output};
use anyhow::{Context, Result};
use qga::commands::{
    FsfreezeStatus, GuestFsfreezeFreeze, GuestFsfreezeFreezeList, GuestFsfreezeStatus,
    GuestFsfreezeThaw, GuestPing,
};
use qsnap::CancellationToken;
use serde_json::json;
use std::time::{Duration, Instant};

/// Connects to the agent named by `--qga`.
pub(crate) async fn connect(g: &Global) -> Result<qga::Client> {
    let path = need(&g.qga, "--qga")?;
    qga::Client::connect(&path, qga::Config::default())
        .await
        .with_context(|| format!("cannot reach the guest agent at {}", path.display()))
}

pub(crate) async fn ping(g: &Global, cancel: &CancellationToken) -> Result<()> {
    interruptible(cancel, async {
        let start = Instant::now();
        let agent = connect(g).await?;
        agent.execute(&GuestPing).await.context("guest-ping")?;
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        output::emit(g.json, &json!({"ok": true, "ms": ms}), |_| {
            format!("the guest agent answers ({ms:.1} ms)")
        });
        Ok(())
    })
    .await
}

/// Freezes, holding the VM lock while it does. Interrupted while the freeze is out,
/// it writes the thaw behind it and confirms before reporting.
pub(crate) async fn freeze(
    g: &Global,
    mountpoints: Vec<String>,
    cancel: &CancellationToken,
) -> Result<()> {
    let qga = need(&g.qga, "--qga")?;
    let _lock = lock(g, &qga)?;
    let agent = interruptible(cancel, connect(g)).await?;
    let call = async {
        if mountpoints.is_empty() {
            agent.execute(&GuestFsfreezeFreeze).await
        } else {
            let list = GuestFsfreezeFreezeList {
                mountpoints: Some(mountpoints),
            };
            agent.execute(&list).await
        }
    };
    let outcome = tokio::select! {
        r = call => Some(r),
        () = cancel.cancelled() => None,
    };
    let failure = match outcome {
        Some(Ok(0)) => {
            output::emit(g.json, &json!({"frozen_filesystems": 0}), |_| {
                "froze no filesystem (is every --mountpoint a mountpoint in the guest?): the guest is not frozen".to_owned()
            });
            return Ok(());
        }
        Some(Ok(n)) => {
            output::emit(g.json, &json!({"frozen_filesystems": n}), |_| {
                format!("froze {n} filesystem(s); guest writes now block until `qsnap thaw`")
            });
            return Ok(());
        }
        // Refused while frozen: someone else's freeze, which is not ours to thaw.
        Some(Err(e)) if e.is_disabled() => {
            return Err(anyhow::Error::from(e).context(
                "the guest's filesystems are already frozen (by another tool?); `qsnap thaw` releases them",
            ));
        }
        Some(Err(e)) => qsnap::Error::QuiesceFailed {
            reason: "guest-fsfreeze-freeze did not succeed".into(),
            source: Some(e),
        },
        None => qsnap::Error::Interrupted,
    };
    thaw_behind(agent, &qga, failure).await
}

/// After a freeze that failed, timed out or was interrupted: it may have frozen some
/// filesystems, or may still run (a slow hook). The thaw goes right behind it, then
/// the guest must read thawed before `failure` (which says so) is reported.
pub(crate) async fn thaw_behind(
    agent: qga::Client,
    qga: &std::path::Path,
    failure: qsnap::Error,
) -> Result<()> {
    agent.execute_urgent(&GuestFsfreezeThaw)?;
    drop(agent);
    qsnap::thaw_guest(qga, Duration::from_secs(30)).await?;
    Err(failure.into())
}

/// The VM's lock: keyed on the agent socket (and the QMP socket when given).
fn lock(g: &Global, qga: &std::path::Path) -> Result<qsnap::VmLock> {
    let mut sockets = vec![qga];
    sockets.extend(g.qmp.as_deref());
    Ok(qsnap::VmLock::acquire_all(&sockets)?)
}

/// Thaws and confirms; failure to confirm is exit 5.
pub(crate) async fn thaw(g: &Global, args: &ThawArgs, cancel: &CancellationToken) -> Result<()> {
    let qga = need(&g.qga, "--qga")?;
    let _lock = match lock(g, &qga) {
        Err(e) if args.force => {
            tracing::warn!("{e:#}; thawing anyway (--force)");
            None
        }
        other => Some(other?),
    };
    interruptible(cancel, async {
        let n = qsnap::thaw_guest(&qga, args.wait).await?;
        output::emit(
            g.json,
            &json!({"thawed_filesystems": n, "status": "thawed"}),
            |_| match n {
                Some(n) => format!("thawed {n} filesystem(s); the guest reports thawed"),
                None => "the guest reports thawed".to_owned(),
            },
        );
        Ok(())
    })
    .await
}

pub(crate) async fn fsstatus(g: &Global, cancel: &CancellationToken) -> Result<()> {
    interruptible(cancel, async {
        let agent = connect(g).await?;
        let status = agent
            .execute(&GuestFsfreezeStatus)
            .await
            .context("guest-fsfreeze-status")?;
        output::emit(g.json, &json!({"status": status}), |_| match status {
            FsfreezeStatus::Thawed => "thawed".to_owned(),
            FsfreezeStatus::Frozen => "frozen (run `qsnap thaw` to release it)".to_owned(),
        });
        Ok(())
    })
    .await
}
