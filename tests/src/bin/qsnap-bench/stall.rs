//! What the guest feels: writes blocked by the freeze, read from the in-guest
//! write-stall probe (`qsnap-stall: DIR MS RUNQ_MS CPU_MS` on the serial console for
//! every write that took > 5 ms: how long, how much of it waiting for the vCPU, how
//! much running), with and without qsnap's pre-flush and freeze scope, interleaved.

use crate::snapshot::{commit_back, commit_disks};
use anyhow::Result;
use qsnap::{CancellationToken, SnapshotRequest};
use qsnap_tests::QemuVm;
use std::time::Duration;

/// One write the probe logged.
struct SlowWrite {
    dir: String,
    /// Wall time of the write, ms.
    took: f64,
    /// Of it, ms not spent waiting for or using the CPU: asleep in the kernel (what a
    /// frozen filesystem does). `took` when the guest had no schedstat.
    blocked: f64,
}

/// One snapshot as the guest felt it.
struct Felt {
    /// The writes that took > 5 ms during the run.
    stall: Vec<SlowWrite>,
    pre_flush: f64,
    freeze_call: f64,
    frozen_window: f64,
}

impl Felt {
    /// The longest write in `dir` (0: none > 5 ms).
    fn stall(&self, dir: &str) -> f64 {
        self.longest(dir, |w| w.took)
    }

    /// The longest time a write in `dir` was blocked (0: none took > 5 ms).
    fn blocked(&self, dir: &str) -> f64 {
        self.longest(dir, |w| w.blocked)
    }

    fn longest(&self, dir: &str, f: fn(&SlowWrite) -> f64) -> f64 {
        self.stall
            .iter()
            .filter(|w| w.dir == dir)
            .map(f)
            .fold(0.0, f64::max)
    }
}

/// Takes the snapshot `req` and reads the stalls the probe logged meanwhile.
async fn felt(vm: &QemuVm, req: &SnapshotRequest) -> Result<Felt> {
    let before = vm.serial_log().len();
    let report = qsnap::snapshot(req, &CancellationToken::new()).await?;
    // The probe logs a blocked write when it returns: give the last one time to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = vm.serial_log();
    let stall = log
        .get(before..)
        .unwrap_or_default()
        .split_inclusive('\n')
        // A line the probe is still writing could be cut inside a number.
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            let mut w = l.trim().strip_prefix("qsnap-stall: ")?.split_whitespace();
            let dir = w.next()?.to_owned();
            let took: f64 = w.next()?.parse().ok()?;
            let mut num = || w.next().and_then(|v| v.parse::<f64>().ok());
            let blocked = match (num(), num()) {
                (Some(runq), Some(cpu)) => (took - runq - cpu).max(0.0),
                _ => took,
            };
            Some(SlowWrite { dir, took, blocked })
        })
        .collect();
    let t = report.timings_ms;
    Ok(Felt {
        stall,
        pre_flush: t.pre_flush,
        freeze_call: t.freeze_call,
        frozen_window: t.frozen_window,
    })
}

fn show(name: &str, v: Vec<f64>) -> f64 {
    let (lo, med, hi) = crate::spread(v);
    println!("  {name:<52} median {med:>7.1} ms  (range {lo:.1}–{hi:.1})");
    med
}

/// A heavy buffered writer on /data: the longest blocked write with and without the
/// pre-flush, interleaved.
pub(crate) async fn pre_flush(runs: usize, heavy_mbps: u32) -> Result<()> {
    let vm = QemuVm::builder()
        .disks(2)
        .stall_probe(heavy_mbps)
        .start()
        .await?;
    vm.wait_for_agent(qsnap_tests::AGENT_BOOT).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        for flush in [true, false] {
            let mut req = SnapshotRequest::new(vm.qmp_path())
                .qga(vm.qga_path())
                .name(format!("flush{run}{flush}"));
            req.pre_flush = flush;
            req.freeze_timeout = Duration::from_secs(30);
            let f = felt(&vm, &req).await?;
            commit_back(&vm).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            if run > 0 {
                if flush { with.push(f) } else { without.push(f) }
            }
        }
    }
    println!(
        "Guest stall with a {heavy_mbps} MB/s buffered writer on /data, 2 disks, {runs} runs each (interleaved):"
    );
    let w = show(
        "longest write on /data, pre-flush",
        with.iter().map(|f| f.stall("/data")).collect(),
    );
    let wo = show(
        "longest write on /data, no pre-flush",
        without.iter().map(|f| f.stall("/data")).collect(),
    );
    show(
        "pre-flush (sync in the guest, before the freeze)",
        with.iter().map(|f| f.pre_flush).collect(),
    );
    show(
        "freeze round trip, pre-flush",
        with.iter().map(|f| f.freeze_call).collect(),
    );
    show(
        "freeze round trip, no pre-flush",
        without.iter().map(|f| f.freeze_call).collect(),
    );
    show(
        "frozen window, pre-flush",
        with.iter().map(|f| f.frozen_window).collect(),
    );
    show(
        "frozen window, no pre-flush",
        without.iter().map(|f| f.frozen_window).collect(),
    );
    println!(
        "  ratio of the stall, pre-flush / none: {:.2}x (target <= 0.5x)",
        w / wo
    );
    Ok(())
}

/// A snapshot of one disk of two: freeze scope (only /data2) against the whole
/// freeze (`--mountpoint` of both, the behaviour before the scope), interleaved.
pub(crate) async fn scope(runs: usize) -> Result<()> {
    let vm = QemuVm::builder().disks(2).stall_probe(0).start().await?;
    vm.wait_for_agent(qsnap_tests::AGENT_BOOT).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut scoped, mut whole) = (Vec::new(), Vec::new());
    for run in 0..=runs {
        for narrow in [true, false] {
            let mut req = SnapshotRequest::new(vm.qmp_path())
                .qga(vm.qga_path())
                .name(format!("scope{run}{narrow}"));
            req.disks = vec!["vblk1".into()];
            if !narrow {
                req.mountpoints = vec!["/data".into(), "/data2".into()];
            }
            let f = felt(&vm, &req).await?;
            commit_disks(&vm, &[1]).await?;
            // The commit's own graph change pauses the disks too: let a write it
            // delayed be logged before the next run starts listening.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if run > 0 {
                if narrow {
                    scoped.push(f)
                } else {
                    whole.push(f)
                }
            }
        }
    }
    println!("A snapshot of vblk1 (/data2) of a 2-disk guest, {runs} runs each (interleaved):");
    let longest =
        |v: &[Felt], f: fn(&Felt, &str) -> f64| v.iter().map(|x| f(x, "/data")).fold(0.0, f64::max);
    println!(
        "  longest write on /data (not in the snapshot): scoped {:.1} ms, whole freeze {:.1} ms (0: none > 5 ms)",
        longest(&scoped, Felt::stall),
        longest(&whole, Felt::stall)
    );
    println!(
        "  longest time any write on /data was blocked (not waiting for or using the vCPU): scoped {:.1} ms, whole freeze {:.1} ms (target: none > 5 ms)",
        longest(&scoped, Felt::blocked),
        longest(&whole, Felt::blocked)
    );
    show(
        "longest write on /data2, scoped",
        scoped.iter().map(|f| f.stall("/data2")).collect(),
    );
    show(
        "longest write on /data2, whole freeze",
        whole.iter().map(|f| f.stall("/data2")).collect(),
    );
    let s = show(
        "frozen window, scoped (freeze-list of /data2)",
        scoped.iter().map(|f| f.frozen_window).collect(),
    );
    let w = show(
        "frozen window, whole freeze",
        whole.iter().map(|f| f.frozen_window).collect(),
    );
    println!(
        "  ratio of the frozen window, scoped / whole: {:.2}x (target <= 0.6x)",
        s / w
    );
    Ok(())
}
