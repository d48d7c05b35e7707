//! In-freeze overhead: qsnap against three minimal clients measured in the same run —
//! overlays created inside the freeze (libvirt's way), disk by disk (Proxmox's way),
//! and pre-created overlays (the floor).

use crate::stats;
use anyhow::{Context, Result};
use qga::commands::{GuestFsfreezeFreeze, GuestFsfreezeThaw};
use qmp::commands::{BlockdevSnapshotSync, Transaction, TransactionAction};
use qsnap::{CancellationToken, SnapshotRequest};
use qsnap_tests::QemuVm;
use std::time::{Duration, Instant};

/// The freeze deadline of the baselines and of the qsnap runs beside them.
pub(crate) const FREEZE_TIMEOUT: Duration = Duration::from_secs(30);

/// One quiesced snapshot's figures.
pub(crate) struct Sample {
    /// The QMP transaction's round trip (QEMU's part of the overhead).
    pub(crate) transaction: Duration,
    /// Freeze reply → thaw sent: the work done while the guest cannot write.
    pub(crate) overhead: Duration,
    /// Freeze sent → thaw reply.
    pub(crate) window: Duration,
}

pub(crate) async fn in_freeze_overhead(runs: usize) -> Result<()> {
    let vm = QemuVm::builder().disks(2).start().await?;
    vm.wait_for_agent(qsnap_tests::AGENT_BOOT).await?;
    let (mut ours, mut libvirt, mut proxmox, mut floor) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..=runs {
        // Each measurement starts from the same chain: QEMU's transaction gets slower
        // as chains grow, and the backup workflow commits after every snapshot.
        let a = qsnap_run(&vm, run).await?;
        commit_back(&vm).await?;
        let b = baseline_run(&vm, &format!("lv{run}"), Way::Libvirt, &[0, 1]).await?;
        commit_back(&vm).await?;
        let c = baseline_run(&vm, &format!("px{run}"), Way::Proxmox, &[0, 1]).await?;
        commit_back(&vm).await?;
        let tag = format!("pc{run}");
        let d = baseline_run(&vm, &tag, Way::PreCreated, &[0, 1]).await?;
        commit_back(&vm).await?;
        drop_overlay_nodes(&vm, &tag, &[0, 1]).await?;
        if run > 0 {
            // Run 0 warms every path up (first agent round trip, page cache).
            ours.push(a);
            libvirt.push(b);
            proxmox.push(c);
            floor.push(d);
        }
    }
    let med = |v: &[Sample], f: fn(&Sample) -> Duration| {
        let mut d: Vec<Duration> = v.iter().map(f).collect();
        stats(&mut d).0
    };
    let range = |v: &[Sample]| {
        let mut d: Vec<Duration> = v.iter().map(|s| s.overhead).collect();
        d.sort_unstable();
        (d[0], d[d.len() - 1])
    };
    println!(
        "Quiesced snapshot of 2 disks, {runs} runs each, interleaved, committed back after each (medians):"
    );
    println!(
        "                                                     in-freeze overhead (range)       frozen window"
    );
    for (name, v) in [
        (
            "libvirt's way: blockdev-snapshot-sync transaction",
            &libvirt,
        ),
        (
            "Proxmox's way: one blockdev-snapshot-sync per disk",
            &proxmox,
        ),
        ("floor: pre-created overlays, minimal client", &floor),
        ("qsnap snapshot", &ours),
    ] {
        let (lo, hi) = range(v);
        println!(
            "  {name:<52} {:>9.2?} ({lo:.2?}–{hi:.2?})   {:>9.1?}",
            med(v, |s| s.overhead),
            med(v, |s| s.window)
        );
    }
    let o_over = med(&ours, |s| s.overhead);
    let o_tx = med(&ours, |s| s.transaction);
    let own = med(&ours, |s| s.overhead.saturating_sub(s.transaction));
    println!("  qsnap's overhead = QEMU's transaction {o_tx:.2?} + qsnap's own work {own:.3?}");
    let ratio = |v: &[Sample]| o_over.as_secs_f64() / med(v, |s| s.overhead).as_secs_f64();
    println!(
        "  ratio of qsnap's overhead to: the floor {:.2}x (target <= 1.0x), libvirt's way {:.2}x (target <= 0.25x), Proxmox's way {:.2}x",
        ratio(&floor),
        ratio(&libvirt),
        ratio(&proxmox)
    );
    Ok(())
}

/// Merges each disk's active layer into its backing image (chain depth back to 1).
pub(crate) async fn commit_back(vm: &QemuVm) -> Result<()> {
    commit_disks(vm, &[0, 1]).await
}

/// Merges the active layer of disks `disks` into their backing images.
pub(crate) async fn commit_disks(vm: &QemuVm, disks: &[usize]) -> Result<()> {
    for &i in disks {
        let req = qsnap::CommitRequest {
            qmp: vm.qmp_path(),
            disk: format!("vblk{i}"),
            top: None,
            base: None,
            // The baselines' overlays are not qsnap's.
            any_overlay: true,
            keep_overlay: false,
        };
        qsnap::commit(&req, |_| {}, &CancellationToken::new()).await?;
    }
    Ok(())
}

async fn qsnap_run(vm: &QemuVm, run: usize) -> Result<Sample> {
    let mut req = SnapshotRequest::new(vm.qmp_path())
        .qga(vm.qga_path())
        .name(format!("bench{run}"));
    req.freeze_timeout = FREEZE_TIMEOUT;
    let report = qsnap::snapshot(&req, &CancellationToken::new())
        .await
        .map_err(|e| anyhow::anyhow!("qsnap snapshot (run {run}): {e:?}"))?;
    let t = report.timings_ms;
    Ok(Sample {
        transaction: Duration::from_secs_f64(t.transaction / 1000.0),
        overhead: Duration::from_secs_f64(t.in_freeze_overhead / 1000.0),
        window: Duration::from_secs_f64(t.frozen_window / 1000.0),
    })
}

/// How a baseline client switches the disks inside the freeze.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// One `transaction` of `blockdev-snapshot-sync`: QEMU creates and opens the
    /// overlay files while the guest is frozen (libvirt's external snapshots).
    Libvirt,
    /// One `blockdev-snapshot-sync` per disk, one after the other (disk by disk, as
    /// Proxmox's snapshot code drives its drives).
    Proxmox,
    /// Overlays created with `qemu-img` and added with `blockdev-add` before the
    /// freeze; inside it one `transaction` of `blockdev-snapshot`: the least any
    /// client can do in the freeze.
    PreCreated,
}

/// Deletes the overlay nodes a pre-created baseline added (after their commit): nodes
/// added with `blockdev-add` stay until deleted, holding their backing.
pub(crate) async fn drop_overlay_nodes(vm: &QemuVm, tag: &str, disks: &[usize]) -> Result<()> {
    let qmp = vm.qmp().await?;
    for i in disks {
        let node = format!("baseline{tag}-{i}");
        qmp.execute_raw("blockdev-del", serde_json::json!({"node-name": node}))
            .await
            .with_context(|| format!("blockdev-del {node}: a baseline's node leaked"))?;
    }
    Ok(())
}

/// Freeze, switch the disks `vblkN` for N in `disks` `way`, thaw — with connections
/// made and synced beforehand, so only the in-freeze work differs from qsnap. `tag`
/// names this run's overlay files and nodes.
pub(crate) async fn baseline_run(
    vm: &QemuVm,
    tag: &str,
    way: Way,
    disks: &[usize],
) -> Result<Sample> {
    let qmp = vm.qmp().await?;
    let qga = qga::Client::connect(vm.qga_path(), qga::Config::default()).await?;
    let blocks = qmp.execute(&qmp::commands::QueryBlock).await?;
    let mut actions = Vec::new();
    for &i in disks {
        let qdev = format!("vblk{i}");
        let Some(inserted) = blocks
            .iter()
            .find(|b| b.qdev_id() == Some(qdev.as_str()))
            .and_then(|b| b.inserted.as_ref())
        else {
            anyhow::bail!("no disk {qdev} in query-block");
        };
        let Some(node) = inserted.node_name.clone() else {
            anyhow::bail!("{qdev} has no node name");
        };
        let file = vm.dir().join(format!("baseline{tag}-{i}.qcow2"));
        let overlay = format!("baseline{tag}-{i}");
        if way == Way::PreCreated {
            let status = std::process::Command::new("qemu-img")
                .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
                .arg(&inserted.file)
                .arg(&file)
                .status()?;
            anyhow::ensure!(status.success(), "qemu-img create failed");
            qmp.execute_raw(
                "blockdev-add",
                serde_json::json!({"driver": "qcow2", "node-name": overlay, "backing": null,
                    "file": {"driver": "file", "filename": file}}),
            )
            .await?;
            actions.push(TransactionAction::BlockdevSnapshot(
                qmp::commands::BlockdevSnapshot { node, overlay },
            ));
        } else {
            actions.push(TransactionAction::BlockdevSnapshotSync(
                BlockdevSnapshotSync {
                    node_name: Some(node),
                    snapshot_file: file.display().to_string(),
                    snapshot_node_name: Some(overlay),
                    format: Some("qcow2".into()),
                    ..Default::default()
                },
            ));
        }
    }
    let freeze_sent = Instant::now();
    // The bound qsnap is given beside it; a freeze that fails or answers late still
    // gets its thaw (queued behind it), so the bench never leaves the guest frozen.
    if let Err(e) = qga
        .execute_with_timeout(&GuestFsfreezeFreeze, FREEZE_TIMEOUT)
        .await
    {
        qga.execute_urgent(&GuestFsfreezeThaw)?;
        return Err(anyhow::anyhow!("baseline freeze: {e}"));
    }
    let freeze_reply = Instant::now();
    let switched = if way == Way::Proxmox {
        let mut result = Ok(());
        for action in actions {
            let TransactionAction::BlockdevSnapshotSync(cmd) = action else {
                continue;
            };
            if let Err(e) = qmp.execute(&cmd).await {
                result = Err(e);
                break;
            }
        }
        result
    } else {
        qmp.execute(&Transaction { actions }).await.map(drop)
    };
    let thaw_sent = Instant::now();
    let transaction = thaw_sent - freeze_reply;
    if let Err(e) = qga.execute(&GuestFsfreezeThaw).await {
        qga.execute_urgent(&GuestFsfreezeThaw)?;
        return Err(anyhow::anyhow!("baseline thaw: {e}"));
    }
    let thaw_reply = Instant::now();
    switched?;
    Ok(Sample {
        transaction,
        overhead: thaw_sent - freeze_reply,
        window: thaw_reply - freeze_sent,
    })
}
