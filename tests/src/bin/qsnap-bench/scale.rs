//! Scale: 16 disks against 2 on the same guest, and 8 VMs snapshotted at once by 8
//! qsnap processes against one alone.

use crate::snapshot::commit_disks;
use anyhow::{Context, Result};
use qsnap::{CancellationToken, SnapshotRequest};
use qsnap_tests::QemuVm;
use std::path::PathBuf;
use std::time::Duration;

fn median(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// In-freeze overhead of a snapshot of 2 and of 16 disks of one 16-disk guest,
/// interleaved.
pub(crate) async fn disks16(runs: usize) -> Result<()> {
    let vm = QemuVm::builder().disks(16).start().await?;
    vm.wait_for_agent(Duration::from_secs(120)).await?;
    let all: Vec<usize> = (0..16).collect();
    let (mut two, mut sixteen) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        for n in [2usize, 16] {
            let mut req = SnapshotRequest::new(vm.qmp_path())
                .qga(vm.qga_path())
                .name(format!("d{n}r{run}"));
            if n == 2 {
                req.disks = vec!["vblk0".into(), "vblk1".into()];
            }
            req.freeze_timeout = Duration::from_secs(30);
            let report = qsnap::snapshot(&req, &CancellationToken::new()).await?;
            anyhow::ensure!(
                report.disks.len() == n,
                "{} disks switched",
                report.disks.len()
            );
            commit_disks(&vm, &all[..n]).await?;
            if run > 0 {
                let v = if n == 2 { &mut two } else { &mut sixteen };
                v.push((
                    report.timings_ms.in_freeze_overhead,
                    report.timings_ms.frozen_window,
                ));
            }
        }
    }
    println!("Snapshot of 2 and of 16 disks of one 16-disk guest, {runs} runs each, interleaved:");
    let show = |name: &str, v: &[(f64, f64)]| {
        let (lo, med, hi) = median(v.iter().map(|s| s.0).collect());
        let (_, win, _) = median(v.iter().map(|s| s.1).collect());
        println!(
            "  {name:<10} in-freeze overhead median {med:>6.2} ms (range {lo:.2}–{hi:.2}), frozen window {win:.1} ms"
        );
        med
    };
    let a = show("2 disks", &two);
    let b = show("16 disks", &sixteen);
    println!("  ratio 16 / 2 disks: {:.2}x (target <= 3x)", b / a);
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
    let qsnap = PathBuf::from(std::env::var_os("QSNAP_BIN").context("QSNAP_BIN")?);
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
    let (lo, a, hi) = median(alone);
    println!("  one VM at a time   in-freeze overhead median {a:>6.2} ms (range {lo:.2}–{hi:.2})");
    let (lo, t, hi) = median(together);
    println!("  8 VMs at once      in-freeze overhead median {t:>6.2} ms (range {lo:.2}–{hi:.2})");
    println!("  ratio at once / alone: {:.2}x", t / a);
    Ok(())
}
