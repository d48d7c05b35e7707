//! In-freeze overhead: qsnap vs overlays created inside the freeze (libvirt's way).

use crate::stats;
use anyhow::Result;
use qga::commands::{GuestFsfreezeFreeze, GuestFsfreezeThaw};
use qmp::commands::{BlockdevSnapshotSync, Transaction, TransactionAction};
use qsnap::{CancellationToken, SnapshotRequest};
use qsnap_tests::QemuVm;
use std::time::{Duration, Instant};

/// One quiesced snapshot's figures.
struct Sample {
    /// The QMP transaction's round trip (QEMU's part of the overhead).
    transaction: Duration,
    /// Freeze reply → thaw sent: the work done while the guest cannot write.
    overhead: Duration,
    /// Freeze sent → thaw reply.
    window: Duration,
}

pub(crate) async fn in_freeze_overhead(runs: usize) -> Result<()> {
    let vm = QemuVm::builder().disks(2).start().await?;
    vm.wait_for_agent(Duration::from_secs(60)).await?;
    let (mut ours, mut base) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        // Each measurement starts from the same chain: QEMU's transaction gets slower
        // as chains grow, and the backup workflow commits after every snapshot.
        let a = qsnap_run(&vm, run).await?;
        commit_back(&vm).await?;
        let b = baseline_run(&vm, run).await?;
        commit_back(&vm).await?;
        if run > 0 {
            // Run 0 warms both paths up (first agent round trip, page cache).
            ours.push(a);
            base.push(b);
        }
    }
    let med = |v: &[Sample], f: fn(&Sample) -> Duration| {
        let mut d: Vec<Duration> = v.iter().map(f).collect();
        stats(&mut d).0
    };
    let (o_over, o_win) = (med(&ours, |s| s.overhead), med(&ours, |s| s.window));
    let (b_over, b_win) = (med(&base, |s| s.overhead), med(&base, |s| s.window));
    let o_tx = med(&ours, |s| s.transaction);
    let own = med(&ours, |s| s.overhead.saturating_sub(s.transaction));
    println!(
        "Quiesced snapshot of 2 disks, {runs} runs each, committed back after each (medians):"
    );
    println!("                                            in-freeze overhead   frozen window");
    println!("  baseline: blockdev-snapshot-sync in the freeze   {b_over:>10.2?}   {b_win:>13.1?}");
    println!("  qsnap: overlays prepared before the freeze       {o_over:>10.2?}   {o_win:>13.1?}");
    println!("  qsnap's overhead = QEMU's transaction {o_tx:.2?} + qsnap's own work {own:.3?}");
    println!(
        "  ratio qsnap / baseline: overhead {:.2}x, window {:.2}x (target: overhead <= 1.5 ms)",
        o_over.as_secs_f64() / b_over.as_secs_f64(),
        o_win.as_secs_f64() / b_win.as_secs_f64()
    );
    Ok(())
}

/// Merges each disk's active layer into its backing image (chain depth back to 1).
pub(crate) async fn commit_back(vm: &QemuVm) -> Result<()> {
    for i in 0..2 {
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
    let req = SnapshotRequest::new(vm.qmp_path())
        .qga(vm.qga_path())
        .name(format!("bench{run}"));
    let report = qsnap::snapshot(&req, &CancellationToken::new()).await?;
    let t = report.timings_ms;
    Ok(Sample {
        transaction: Duration::from_secs_f64(t.transaction / 1000.0),
        overhead: Duration::from_secs_f64(t.in_freeze_overhead / 1000.0),
        window: Duration::from_secs_f64(t.frozen_window / 1000.0),
    })
}

/// Freeze, one transaction of `blockdev-snapshot-sync` (QEMU creates and opens the
/// overlay files while the guest is frozen), thaw — with connections made and synced
/// beforehand, so only the in-freeze work differs from qsnap.
async fn baseline_run(vm: &QemuVm, run: usize) -> Result<Sample> {
    let qmp = vm.qmp().await?;
    let qga = qga::Client::connect(vm.qga_path(), qga::Config::default()).await?;
    let blocks = qmp.execute(&qmp::commands::QueryBlock).await?;
    let actions = blocks
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let node = b.inserted.as_ref()?.node_name.clone()?;
            Some(TransactionAction::BlockdevSnapshotSync(
                BlockdevSnapshotSync {
                    node_name: Some(node),
                    snapshot_file: vm
                        .dir()
                        .join(format!("baseline{run}-{i}.qcow2"))
                        .display()
                        .to_string(),
                    snapshot_node_name: Some(format!("baseline{run}-{i}")),
                    format: Some("qcow2".into()),
                    ..Default::default()
                },
            ))
        })
        .collect();
    let tx = Transaction { actions };
    let freeze_sent = Instant::now();
    qga.execute(&GuestFsfreezeFreeze).await?;
    let freeze_reply = Instant::now();
    let switched = qmp.execute(&tx).await;
    let thaw_sent = Instant::now();
    let transaction = thaw_sent - freeze_reply;
    qga.execute(&GuestFsfreezeThaw).await?;
    let thaw_reply = Instant::now();
    switched?;
    Ok(Sample {
        transaction,
        overhead: thaw_sent - freeze_reply,
        window: thaw_reply - freeze_sent,
    })
}
