//! Peak memory of `qsnap snapshot` (GNU time's maximum resident set size), next to the
//! same binary doing nothing (`qsnap --version`), interleaved.

use anyhow::{Context, Result};
use qsnap_tests::QemuVm;
use std::process::Command;

const RUNS: usize = 5;

/// Peak RSS in KiB of `qsnap ARGS`.
fn peak_kib(args: &[String]) -> Result<u64> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "qsnap-rss %M"])
        .arg(crate::qsnap_bin()?)
        .args(args)
        .output()
        .context("/usr/bin/time (Debian package `time`)")?;
    anyhow::ensure!(
        out.status.success(),
        "qsnap {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("qsnap-rss ")?.trim().parse().ok())
        .context("no RSS line from /usr/bin/time")
}

pub(crate) async fn peak() -> Result<()> {
    let vm = QemuVm::builder().disks(2).writer(true).start().await?;
    vm.wait_for_agent(qsnap_tests::AGENT_BOOT).await?;
    let (mut snap, mut idle) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let qmp = vm.qmp_path().display().to_string();
        let qga = vm.qga_path().display().to_string();
        let args: Vec<String> = ["--qmp", &qmp, "--qga", &qga, "snapshot", "--name"]
            .iter()
            .map(|s| (*s).to_owned())
            .chain([format!("rss{run}")])
            .collect();
        let a = tokio::task::spawn_blocking(move || peak_kib(&args)).await??;
        snap.push(a);
        idle.push(tokio::task::spawn_blocking(|| peak_kib(&["--version".to_owned()])).await??);
    }
    snap.sort_unstable();
    idle.sort_unstable();
    let mib = |k: u64| k as f64 / 1024.0;
    println!("Peak RSS, {RUNS} runs each, interleaved (GNU time %M):");
    println!(
        "  qsnap --version (the binary's floor)   median {:.1} MiB",
        mib(idle[RUNS / 2])
    );
    println!(
        "  qsnap snapshot, 2 disks, guardian      median {:.1} MiB  (max {:.1}; target <= 10 MiB)",
        mib(snap[RUNS / 2]),
        mib(snap[RUNS - 1])
    );
    Ok(())
}
