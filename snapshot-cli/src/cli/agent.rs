//! Manual guest-agent commands: ping, freeze, thaw, fsstatus.

use super::{Global, interruptible, need, output};
use anyhow::{Context, Result};
use qga::commands::{
    FsfreezeStatus, GuestFsfreezeFreeze, GuestFsfreezeFreezeList, GuestFsfreezeStatus, GuestPing,
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

pub(crate) async fn freeze(
    g: &Global,
    mountpoints: Vec<String>,
    cancel: &CancellationToken,
) -> Result<()> {
    interruptible(cancel, async {
        let agent = connect(g).await?;
        let n = if mountpoints.is_empty() {
            agent.execute(&GuestFsfreezeFreeze).await
        } else {
            let list = GuestFsfreezeFreezeList {
                mountpoints: Some(mountpoints),
            };
            agent.execute(&list).await
        }
        .context("guest-fsfreeze-freeze")?;
        output::emit(g.json, &json!({"frozen_filesystems": n}), |_| {
            format!("froze {n} filesystem(s); guest writes now block until `qsnap thaw`")
        });
        Ok(())
    })
    .await
}

/// Thaws and confirms; failure to confirm is exit 5.
pub(crate) async fn thaw(g: &Global, cancel: &CancellationToken) -> Result<()> {
    interruptible(cancel, async {
        let qga = need(&g.qga, "--qga")?;
        let n = qsnap::thaw_guest(&qga, Duration::from_secs(10)).await?;
        output::emit(
            g.json,
            &json!({"thawed_filesystems": n, "status": "thawed"}),
            |_| format!("thawed {n} filesystem(s); the guest reports thawed"),
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
