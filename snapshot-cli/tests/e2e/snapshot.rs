//! The happy paths, and the consistency oracle.

use crate::*;
use qsnap::{CancellationToken, Consistency, Quiesce};
use qsnap_tests::inspect;

#[tokio::test]
async fn two_disk_snapshot_with_the_writer_running_is_quiesced() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2).writer(true)).await;
        assert!(
            writer_runs(&vm).await,
            "the writer must run before the snapshot"
        );
        let report = qsnap::snapshot(&request(&vm, "q1"), &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.consistency, Consistency::Quiesced);
        assert_eq!(
            (report.frozen_filesystems, report.thawed_filesystems),
            (2, 2)
        );
        assert!(report.guardian);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        for (i, disk) in report.disks.iter().enumerate() {
            let active = vm.disks()[i].display().to_string();
            assert_eq!(disk.node, QemuVm::node(i));
            assert_eq!(disk.backing_file, active);
            let chain = inspect::backing_chain(disk.overlay_file.as_ref()).unwrap();
            assert_eq!(chain[..2], [disk.overlay_file.clone(), active]);
            // The image frozen in time: a clean ext4, no journal to replay.
            assert!(
                !inspect::ext4_needs_recovery(&vm.disks()[i]).unwrap(),
                "disk {i} was not captured while frozen"
            );
        }
        let t = report.timings_ms;
        assert!(t.in_freeze_overhead <= t.frozen_window && t.frozen_window <= t.total);
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);
        assert!(
            writer_runs(&vm).await,
            "the writer must resume after the thaw"
        );
        let qmp = vm.qmp().await.unwrap();
        let blocks = qmp.execute(&qmp::commands::QueryBlock).await.unwrap();
        let active: Vec<_> = blocks
            .iter()
            .map(|b| b.inserted.as_ref().unwrap().node_name.clone().unwrap())
            .collect();
        let expected: Vec<_> = report
            .disks
            .iter()
            .map(|d| d.overlay_node.clone())
            .collect();
        assert_eq!(active, expected);
    })
    .await;
}

/// Control for the oracle above: without the freeze, the same images need recovery.
#[tokio::test]
async fn crash_consistent_snapshot_of_a_writing_guest_needs_journal_recovery() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(1).writer(true)).await;
        let req = request(&vm, "c1").quiesce(Quiesce::Off);
        let report = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.consistency, Consistency::CrashConsistent);
        assert_eq!(report.frozen_filesystems, 0);
        assert!(inspect::ext4_needs_recovery(&vm.disks()[0]).unwrap());
    })
    .await;
}

#[tokio::test]
async fn chosen_disk_by_qdev_id_into_an_overlay_dir() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2)).await;
        let out = vm.dir().join("overlays");
        std::fs::create_dir(&out).unwrap();
        let mut req = request(&vm, "one");
        req.disks = vec!["vblk1".into()];
        req.overlay_dir = Some(out.clone());
        req.mountpoints = vec!["/data2".into()];
        let report = qsnap::snapshot(&req, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(report.disks.len(), 1);
        assert_eq!(report.disks[0].node, "disk1");
        assert_eq!(report.frozen_filesystems, 1);
        assert_eq!(
            report.disks[0].overlay_file,
            out.join("disk1.one.qcow2").display().to_string()
        );
    })
    .await;
}

/// A scheduled job names its disk once; after the first snapshot that node is no
/// longer the active one, but still names the same disk.
#[tokio::test]
async fn a_disk_keeps_its_node_name_across_snapshots_and_commits() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2)).await;
        for name in ["n1", "n2"] {
            let mut req = request(&vm, name);
            req.disks = vec!["disk1".into()];
            let report = qsnap::snapshot(&req, &CancellationToken::new())
                .await
                .unwrap();
            assert_eq!(report.disks.len(), 1);
            assert_eq!(report.disks[0].device.as_deref(), Some("vblk1"));
        }
        let commit = qsnap::CommitRequest {
            qmp: vm.qmp_path(),
            disk: "disk1".into(),
            top: None,
            base: None,
            any_overlay: false,
            keep_overlay: false,
        };
        let done = qsnap::commit(&commit, |_| {}, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(done.device.as_deref(), Some("vblk1"));
        assert_eq!(done.chain.len(), 3, "{:?}", done.chain);
    })
    .await;
}
