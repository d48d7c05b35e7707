//! `qsnap info`: QEMU, the disks and their chains, the agent.

use super::raw::connect_qmp;
use super::{Global, interruptible, output};
use anyhow::Result;
use qga::commands::{GuestFsfreezeStatus, GuestInfo};
use qmp::commands::{QueryBlock, QueryStatus};
use qsnap::CancellationToken;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

#[derive(Serialize)]
struct Info {
    qemu_version: String,
    qemu_package: String,
    status: String,
    running: bool,
    disks: Vec<Disk>,
    agent: Agent,
}

#[derive(Serialize)]
struct Disk {
    node: Option<String>,
    device: Option<String>,
    read_only: bool,
    virtual_size: u64,
    /// Image files, active first.
    chain: Vec<Image>,
}

#[derive(Serialize)]
struct Image {
    file: String,
    format: String,
}

#[derive(Serialize, Default)]
struct Agent {
    present: bool,
    version: Option<String>,
    fsfreeze: Option<qga::commands::FsfreezeStatus>,
    fsfreeze_supported: Option<bool>,
    /// Why the agent is not present.
    error: Option<String>,
}

pub(crate) async fn run(g: &Global, cancel: &CancellationToken) -> Result<()> {
    interruptible(cancel, async {
        let qmp = connect_qmp(g).await?;
        let status = qmp.execute(&QueryStatus).await?;
        let disks = qmp
            .execute(&QueryBlock)
            .await?
            .into_iter()
            .filter_map(|b| {
                let device = b.qdev_id().map(str::to_owned);
                let i = b.inserted?;
                Some(Disk {
                    node: i.node_name,
                    device,
                    read_only: i.ro,
                    virtual_size: i.image.virtual_size,
                    chain: i
                        .image
                        .chain()
                        .map(|img| Image {
                            file: img.filename.clone(),
                            format: img.format.clone(),
                        })
                        .collect(),
                })
            })
            .collect();
        let version = &qmp.greeting().version;
        let info = Info {
            qemu_version: version.qemu.to_string(),
            qemu_package: version.package.clone(),
            status: status.status,
            running: status.running,
            disks,
            agent: agent(g).await,
        };
        output::emit(g.json, &info, human);
        Ok(())
    })
    .await
}

async fn agent(g: &Global) -> Agent {
    let Some(path) = &g.qga else {
        return Agent {
            error: Some("no --qga socket given".into()),
            ..Agent::default()
        };
    };
    let config = qga::Config::default().sync_timeout(Duration::from_secs(2));
    let probe = async {
        let client = qga::Client::connect(path, config).await?;
        let info = client.execute(&GuestInfo).await?;
        let status = client.execute(&GuestFsfreezeStatus).await?;
        Ok::<_, qga::Error>(Agent {
            present: true,
            fsfreeze_supported: Some(
                info.is_enabled("guest-fsfreeze-freeze")
                    || status == qga::commands::FsfreezeStatus::Frozen,
            ),
            version: Some(info.version),
            fsfreeze: Some(status),
            error: None,
        })
    };
    probe.await.unwrap_or_else(|e| Agent {
        error: Some(format!("{e}")),
        ..Agent::default()
    })
}

fn human(i: &Info) -> String {
    let mut s = format!(
        "QEMU {} ({}), {}\n",
        i.qemu_version, i.qemu_package, i.status
    );
    for d in &i.disks {
        let name = d.node.as_deref().unwrap_or("?");
        let dev = d
            .device
            .as_deref()
            .map(|id| format!(" device {id}"))
            .unwrap_or_default();
        let ro = if d.read_only { " read-only" } else { "" };
        let _ = writeln!(s, "disk {name}{dev}{ro}, {} bytes", d.virtual_size);
        for (depth, img) in d.chain.iter().enumerate() {
            let _ = writeln!(
                s,
                "  {:w$}└ {} ({})",
                "",
                img.file,
                img.format,
                w = depth * 2
            );
        }
    }
    let a = &i.agent;
    match (&a.version, &a.fsfreeze) {
        (Some(v), Some(st)) => {
            let sup = if a.fsfreeze_supported == Some(true) {
                "supported"
            } else {
                "NOT supported"
            };
            // The version string is written by the guest: escape it for the terminal.
            let v = qmp::wire::escape(v);
            let _ = write!(s, "agent qemu-ga {v}: filesystems {st:?}, fsfreeze {sup}");
        }
        _ => {
            let why = a.error.as_deref().unwrap_or("unknown");
            let _ = write!(s, "agent: not available ({why})");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_supplied_version_is_escaped() {
        let info = Info {
            qemu_version: "10.0.2".into(),
            qemu_package: "p".into(),
            status: "running".into(),
            running: true,
            disks: Vec::new(),
            agent: Agent {
                present: true,
                version: Some("1\x1b]0;owned\x07".into()),
                fsfreeze: Some(qga::commands::FsfreezeStatus::Thawed),
                fsfreeze_supported: Some(true),
                error: None,
            },
        };
        let text = human(&info);
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
        assert!(text.contains("owned"));
    }
}
