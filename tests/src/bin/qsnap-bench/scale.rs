//! Scale: 16 disks against 2 on the same guest, and 8 VMs snapshotted at once by 8
//! qsnap processes against one alone.

use crate::snapshot::{
    FREEZE_TIMEOUT, Sample, Way, baseline_run, commit_disks, drop_overlay_nodes,
};
use anyhow::{Context, Result};
use qsnap::{CancellationToken, SnapshotRequest};
use qsnap_tests::QemuVm;
use std::path::PathBuf;
use std::time::Duration;

/// One side of the 16-disk benchmark: who switched how many disks, and its figures.
#[derive(Default)]
struct Side {
    samples: Vec<Sample>,
}

impl Side {
    fn median(&self, f: fn(&Sample) -> Duration) -> Duration {
        let mut v: Vec<Duration> = self.samples.iter().map(f).collect();
        crate::stats(&mut v).0
    }
}

/// In-freeze overhead of a snapshot of 2 and of 16 disks of one 16-disk guest, by
/// qsnap and by the pre-created minimal client (the floor), interleaved.
pub(crate) async fn disks16(runs: usize) -> Result<()> {
    let vm = QemuVm::builder().disks(16).start().await?;
    vm.wait_for_agent(Duration::from_secs(120)).await?;
    let all: Vec<usize> = (0..16).collect();
    // [qsnap 2, qsnap 16, floor 2, floor 16]
    let mut sides: [Side; 4] = Default::default();
    for run in 0..=runs {
        for (k, n) in [2usize, 16].into_iter().enumerate() {
            let mut req = SnapshotRequest::new(vm.qmp_path())
                .qga(vm.qga_path())
                .name(format!("d{n}r{run}"));
            if n == 2 {
                req.disks = vec!["vblk0".into(), "vblk1".into()];
            }
            req.freeze_timeout = FREEZE_TIMEOUT;
            let report = qsnap::snapshot(&req, &CancellationToken::new()).await?;
            anyhow::ensure!(
                report.disks.len() == n,
                "{} disks switched",
                report.disks.len()
            );
            commit_disks(&vm, &all[..n]).await?;
            let t = report.timings_ms;
            let ours = Sample {
                transaction: Duration::from_secs_f64(t.transaction / 1000.0),
                overhead: Duration::from_secs_f64(t.in_freeze_overhead / 1000.0),
                window: Duration::from_secs_f64(t.frozen_window / 1000.0),
            };
            // The floor freezes every filesystem (it has no freeze scope): only its
            // in-freeze overhead is compared.
            let tag = format!("s{n}r{run}");
            let floor = baseline_run(&vm, &tag, Way::PreCreated, &all[..n]).await?;
            commit_disks(&vm, &all[..n]).await?;
            drop_overlay_nodes(&vm, &tag, &all[..n]).await?;
            if run > 0 {
                sides[k].samples.push(ours);
                sides[2 + k].samples.push(floor);
            }
        }
    }
    println!(
        "Snapshot of 2 and of 16 disks of one 16-disk guest, {runs} runs each, interleaved (medians):"
    );
    let names = [
        "qsnap, 2 disks",
        "qsnap, 16 disks",
        "floor, 2 disks",
        "floor, 16 disks",
    ];
    for (k, (name, side)) in names.iter().zip(&sides).enumerate() {
        let over = side.samples.iter().map(|s| s.overhead.as_secs_f64() * 1e3);
        let (lo, _, hi) = crate::spread(over.collect());
        // Medians do not add up: each part is its own median. The floor does nothing
        // but its transaction, and freezes every filesystem (no freeze scope), so only
        // its overhead is shown.
        let detail = if k < 2 {
            format!(
                "; its transaction {:.2?}, own work {:.1?}, frozen window {:.1?}",
                side.median(|s| s.transaction),
                side.median(|s| s.overhead.saturating_sub(s.transaction)),
                side.median(|s| s.window),
            )
        } else {
            String::new()
        };
        println!(
            "  {name:<16} in-freeze overhead {:>9.2?} (range {lo:.2}–{hi:.2} ms){detail}",
            side.median(|s| s.overhead),
        );
    }
    let ratio = |a: &Side, b: &Side| {
        a.median(|s| s.overhead).as_secs_f64() / b.median(|s| s.overhead).as_secs_f64()
    };
    println!(
        "  ratio 16 / 2 disks: qsnap {:.2}x (target <= 3x), floor {:.2}x; qsnap / floor at 16 disks {:.2}x",
        ratio(&sides[1], &sides[0]),
        ratio(&sides[3], &sides[2]),
        ratio(&sides[1], &sides[3]),
    );
    Ok(())
}

/// One `qsnap --json snapshot` of `vm` as a separate process: its in-freeze overhead
/// (ms), after checking it exited 0 quiesced.
async fn process_run(qsnap: PathBuf, qmp: PathBuf, qga: PathBuf, name: String) -> Result<f64> {
    let out = tokio::process::Command::new(qsnap)
        .arg("--qmp")
        .arg(&qmp)
        .arg("--qga")
        .arg(&qga)
        .args(["--json", "snapshot", "--name", &name])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "qsnap on {}: {}",
        qmp.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    anyhow::ensure!(report["consistency"] == "quiesced", "{report}");
    report["timings_ms"]["in_freeze_overhead"]
        .as_f64()
        .context("no in_freeze_overhead")
}

/// 8 VMs, each snapshotted by its own qsnap process, all at once, against one VM
/// alone (the same VMs, one at a time), interleaved; every guest checked thawed.
pub(crate) async fn vms8(rounds: usize) -> Result<()> {
    let qsnap = crate::qsnap_bin()?;
    let mut vms = Vec::new();
    for _ in 0..8 {
        vms.push(QemuVm::builder().disks(2).writer(true).start().await?);
    }
    for vm in &vms {
        vm.wait_for_agent(Duration::from_secs(180)).await?;
    }
    let (mut alone, mut together) = (Vec::new(), Vec::new());
    for round in 0..=rounds {
        // One at a time.
        for (i, vm) in vms.iter().enumerate() {
            let o = process_run(
                qsnap.clone(),
                vm.qmp_path(),
                vm.qga_path(),
                format!("a{round}v{i}"),
            )
            .await?;
            commit_disks(vm, &[0, 1]).await?;
            if round > 0 {
                alone.push(o);
            }
        }
        // All at once.
        let tasks: Vec<_> = vms
            .iter()
            .enumerate()
            .map(|(i, vm)| {
                tokio::spawn(process_run(
                    qsnap.clone(),
                    vm.qmp_path(),
                    vm.qga_path(),
                    format!("t{round}v{i}"),
                ))
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await?);
        }
        for (vm, r) in vms.iter().zip(results) {
            let o = r?;
            let status = qga::Client::connect(vm.qga_path(), qga::Config::default())
                .await?
                .execute(&qga::commands::GuestFsfreezeStatus)
                .await?;
            anyhow::ensure!(
                status == qga::commands::FsfreezeStatus::Thawed,
                "a guest left frozen"
            );
            commit_disks(vm, &[0, 1]).await?;
            if round > 0 {
                together.push(o);
            }
        }
    }
    println!(
        "8 VMs (2 disks each, a writer running), {rounds} rounds: each alone, then all 8 at once by 8 qsnap processes (all exit 0, quiesced, every guest thawed):"
    );
    let (lo, a, hi) = crate::spread(alone);
    println!("  one VM at a time   in-freeze overhead median {a:>6.2} ms (range {lo:.2}–{hi:.2})");
    let (lo, t, hi) = crate::spread(together);
    println!("  8 VMs at once      in-freeze overhead median {t:>6.2} ms (range {lo:.2}–{hi:.2})");
    println!("  ratio at once / alone: {:.2}x", t / a);
    Ok(())
}
