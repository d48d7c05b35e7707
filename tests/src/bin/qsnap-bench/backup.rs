//! In-freeze overhead of `qsnap backup` against `qsnap snapshot`, interleaved on one
//! VM: the backup's transaction (a `blockdev-backup` and a bitmap per disk) must cost
//! the frozen guest no more than the snapshot's switch (target: ≤ 1.2×).

use crate::stats;
use anyhow::Result;
use qsnap::{BackupRequest, CancellationToken, SnapshotRequest};
use qsnap_tests::QemuVm;
use std::time::Duration;

pub(crate) async fn in_freeze_overhead(runs: usize) -> Result<()> {
    let vm = QemuVm::builder().disks(2).start().await?;
    vm.wait_for_agent(qsnap_tests::AGENT_BOOT).await?;
    let dir = tempfile::tempdir()?;
    let (mut snap, mut back, mut snap_win, mut back_win) = (vec![], vec![], vec![], vec![]);
    for run in 0..=runs {
        let req = SnapshotRequest::new(vm.qmp_path())
            .qga(vm.qga_path())
            .name(format!("bb{run}"));
        let s = qsnap::snapshot(&req, &CancellationToken::new()).await?;
        crate::snapshot::commit_back(&vm).await?;
        // Incremental after the first: the steady state of a backup schedule.
        let breq = BackupRequest::new(
            SnapshotRequest::new(vm.qmp_path()).qga(vm.qga_path()),
            dir.path(),
        )
        .incremental(true);
        let b = qsnap::backup(&breq, &CancellationToken::new(), &mut |_| {}).await?;
        if run > 0 {
            let ms = |v: f64| Duration::from_secs_f64(v / 1000.0);
            snap.push(ms(s.timings_ms.in_freeze_overhead));
            snap_win.push(ms(s.timings_ms.frozen_window));
            back.push(ms(b.timings_ms.common.in_freeze_overhead));
            back_win.push(ms(b.timings_ms.common.frozen_window));
        }
    }
    let (s, s_spread) = stats(&mut snap);
    let (b, b_spread) = stats(&mut back);
    let (sw, _) = stats(&mut snap_win);
    let (bw, _) = stats(&mut back_win);
    println!(
        "Quiesced backup vs snapshot of 2 disks, {runs} runs each, interleaved (median, p99):"
    );
    println!("                      in-freeze overhead          frozen window");
    println!("  qsnap snapshot      {s:>10.2?} (p99 {s_spread:>8.2?})   {sw:>13.1?}");
    println!("  qsnap backup        {b:>10.2?} (p99 {b_spread:>8.2?})   {bw:>13.1?}");
    println!(
        "  ratio backup / snapshot: overhead {:.2}x (target <= 1.2x), window {:.2}x",
        b.as_secs_f64() / s.as_secs_f64(),
        bw.as_secs_f64() / sw.as_secs_f64()
    );
    Ok(())
}
