//! `--disk` of some disks freezes only the guest filesystems on them: on the real
//! guest, a filesystem on a disk outside the snapshot keeps taking writes while the
//! chosen one is frozen.

use crate::backup::guest_file;
use crate::cli::run;
use crate::*;
use qsnap_tests::inspect;
use std::path::Path;

/// The guest uptimes a writer.log holds (one a line, appended every 100 ms).
fn times(log: &[u8]) -> Vec<f64> {
    String::from_utf8_lossy(log)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The longest pause between two lines written from `since` (guest uptime) on.
fn longest_gap_since(log: &[u8], since: f64) -> f64 {
    let t: Vec<f64> = times(log).into_iter().filter(|&t| t >= since).collect();
    t.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max)
}

#[tokio::test]
async fn a_snapshot_of_one_disk_of_two_freezes_only_its_filesystem() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2).writer(true)).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Only the run's own window counts (a loaded host may pause the guest before).
        let since = times(&guest_file(&vm, "/data/writer.log").await)
            .last()
            .copied()
            .unwrap_or(0.0);
        // Held frozen for 2 s: /data2 (vblk1) must show that gap, /data none.
        let (code, out, err) = run(
            &vm,
            &[
                "--json",
                "snapshot",
                "--name",
                "one",
                "--disk",
                "vblk1",
                "--debug-hold-frozen",
                "2s",
            ],
        )
        .await;
        assert_eq!(code, 0, "{out}\n{err}");
        let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(report["consistency"], "quiesced");
        assert_eq!(report["frozen_filesystems"], 1);
        assert_eq!(report["freeze_scope"]["frozen"], json!(["/data2"]));
        assert_eq!(report["freeze_scope"]["not_frozen"], json!(["/data"]));
        assert_eq!(report["disks"].as_array().unwrap().len(), 1);
        // The pre-flush ran (`sync -f /data2` through guest-exec) and succeeded.
        assert!(report["timings_ms"]["pre_flush"].as_f64().unwrap() > 0.0);
        assert_eq!(report["warnings"], json!([]), "{out}");
        let frozen = report["disks"][0]["backing_file"].as_str().unwrap();
        assert!(!inspect::ext4_needs_recovery(Path::new(frozen)).unwrap());

        tokio::time::sleep(Duration::from_millis(500)).await;
        let chosen = longest_gap_since(&guest_file(&vm, "/data2/writer.log").await, since);
        let other = longest_gap_since(&guest_file(&vm, "/data/writer.log").await, since);
        assert!(
            chosen >= 1.9,
            "/data2 was frozen for the hold: longest gap {chosen} s"
        );
        // Frozen, /data would show the same >= 2 s gap; what a loaded host may add
        // stays well under it.
        assert!(
            other < chosen - 0.8,
            "/data kept taking writes: longest gap {other} s against {chosen} s"
        );
    })
    .await;
}
