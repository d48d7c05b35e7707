//! Backups against the simulated VM: the faults of a backup run, in milliseconds. Each
//! test checks the simulated truth — the disks' bitmaps, jobs and nodes in the monitor,
//! the agent's frozen state, the files in the backup directory.

use qsnap::backup::manifest::{Kind, State};
use qsnap::{BackupRequest, CancellationToken, Consistency, Error, Quiesce, SnapshotRequest};
use qsnap_tests::sim::{SimFsStatus, SimVm};
use qsnap_tests::within;
use std::path::Path;
use std::time::Duration;

struct Rig {
    _vm_dir: tempfile::TempDir,
    target: tempfile::TempDir,
    vm: SimVm,
}

async fn rig() -> Rig {
    rig_with(1).await
}

async fn rig_with(disks: usize) -> Rig {
    let vm_dir = tempfile::tempdir().unwrap();
    let vm = SimVm::start(vm_dir.path(), disks).await.unwrap();
    Rig {
        _vm_dir: vm_dir,
        target: tempfile::tempdir().unwrap(),
        vm,
    }
}

impl Rig {
    fn request(&self, incremental: bool) -> BackupRequest {
        let mut vm = SnapshotRequest::new(self.vm.qmp_path()).qga(self.vm.qga_path());
        vm.freeze_timeout = Duration::from_millis(800);
        vm.agent_timeout = Duration::from_secs(2);
        BackupRequest::new(vm, self.target.path()).incremental(incremental)
    }

    async fn backup(&self, incremental: bool) -> Result<qsnap::BackupReport, Error> {
        qsnap::backup(
            &self.request(incremental),
            &CancellationToken::new(),
            &mut |_| {},
        )
        .await
    }

    /// `(name, dirty bytes)` of each named bitmap on the disk.
    fn bitmaps(&self) -> Vec<(String, u64)> {
        self.vm
            .monitor()
            .bitmaps("disk0")
            .into_iter()
            .filter_map(|b| Some((b.name?, b.count)))
            .collect()
    }

    fn files(&self) -> Vec<String> {
        names(self.target.path())
    }

    /// Nothing of a failed run is left: guest thawed, no job, no node, no bitmap but
    /// `bitmaps`, the directory as `files`.
    fn assert_undone(&self, bitmaps: &[(String, u64)], files: &[String]) {
        assert_eq!(self.vm.agent().status(), SimFsStatus::Thawed);
        assert_eq!(self.vm.monitor().jobs(), vec![], "jobs left");
        let ours: Vec<_> = self
            .vm
            .monitor()
            .nodes()
            .into_iter()
            .filter(|n| n.starts_with("qsnap-"))
            .collect();
        assert_eq!(ours, Vec::<String>::new(), "nodes left");
        assert_eq!(self.bitmaps(), bitmaps, "the bitmaps changed");
        assert_eq!(self.files(), files, "files left");
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

fn generation(r: &qsnap::BackupReport) -> String {
    format!("qsnap-{}", r.manifest.id)
}

#[tokio::test]
async fn an_incremental_copies_what_the_guest_wrote_and_retires_the_old_generation() {
    within(30, async {
        let r = rig().await;
        let full = r.backup(false).await.unwrap();
        assert_eq!(
            (full.manifest.kind, full.manifest.consistency),
            (Kind::Full, Consistency::Quiesced)
        );
        assert_eq!(r.bitmaps(), [(generation(&full), 0)]);
        assert!(r.vm.monitor().guest_write("vblk0", 1 << 20, 200_000));
        let inc = r.backup(true).await.unwrap();
        assert_eq!(inc.manifest.kind, Kind::Incremental);
        assert_eq!(inc.manifest.disks[0].from_bitmap, Some(generation(&full)));
        assert_eq!(
            inc.manifest.disks[0].backing,
            Some(full.manifest.disks[0].image.clone())
        );
        assert_eq!(inc.retired_bitmaps, [generation(&full)]);
        assert_eq!(r.bitmaps(), [(generation(&inc), 0)]);
        assert_eq!(inc.manifest.state, State::Complete);
        assert_eq!(
            (r.vm.agent().freeze_count(), r.vm.agent().thaw_count()),
            (2, 2)
        );
        assert_eq!(r.vm.monitor().jobs(), vec![]);
    })
    .await;
}

#[tokio::test]
async fn a_job_failing_mid_copy_keeps_the_old_generation_and_removes_everything_new() {
    within(30, async {
        let r = rig().await;
        let full = r.backup(false).await.unwrap();
        r.vm.monitor().guest_write("vblk0", 0, 1 << 20);
        let (bitmaps, files) = (r.bitmaps(), r.files());
        assert_eq!(bitmaps, [(generation(&full), 1 << 20)]);
        r.vm.monitor().fail_job("backup", 65536);
        let err = r.backup(true).await.unwrap_err();
        assert!(matches!(err, Error::BackupFailed { .. }), "{err}");
        assert_eq!(err.exit_code(), 4);
        r.assert_undone(&bitmaps, &files);
        // The next incremental still covers the write.
        let inc = r.backup(true).await.unwrap();
        assert_eq!(inc.manifest.kind, Kind::Incremental);
        assert_eq!(inc.manifest.disks[0].from_bitmap, Some(generation(&full)));
    })
    .await;
}

#[tokio::test]
async fn ctrl_c_mid_copy_cancels_the_jobs_and_keeps_the_old_generation() {
    within(30, async {
        let r = rig().await;
        r.backup(false).await.unwrap();
        r.vm.monitor().guest_write("vblk0", 0, 4 << 20);
        let (bitmaps, files) = (r.bitmaps(), r.files());
        r.vm.monitor().set_job_speed(1);
        let cancel = CancellationToken::new();
        let req = r.request(true);
        let mut copying = false;
        let mut on_progress = |p: qsnap::commit::Progress| {
            if p.current > 0 && !copying {
                copying = true;
                cancel.cancel();
            }
        };
        let err = qsnap::backup(&req, &cancel, &mut on_progress)
            .await
            .unwrap_err();
        assert!(copying, "the copy never started");
        assert!(matches!(err, Error::Interrupted), "{err}");
        assert_eq!(err.exit_code(), 130);
        r.assert_undone(&bitmaps, &files);
    })
    .await;
}

#[tokio::test]
async fn a_transaction_answering_after_the_deadline_is_undone_under_required_and_kept_under_preferred()
 {
    within(30, async {
        let r = rig().await;
        let full = r.backup(false).await.unwrap();
        r.vm.monitor().guest_write("vblk0", 0, 65536);
        let (bitmaps, files) = (r.bitmaps(), r.files());
        r.vm.monitor()
            .delay_effect_and_reply("transaction", Duration::from_millis(1500));
        let err = r.backup(true).await.unwrap_err();
        assert!(matches!(err, Error::QuiesceFailed { .. }), "{err}");
        assert_eq!(err.exit_code(), 3);
        r.assert_undone(&bitmaps, &files);

        let mut req = r.request(true);
        req.vm.quiesce = Quiesce::Preferred;
        let err = qsnap::backup(&req, &CancellationToken::new(), &mut |_| {})
            .await
            .unwrap_err();
        let Error::BackupNotConsistent { report, .. } = err else {
            panic!("{err}")
        };
        assert_eq!(report.manifest.consistency, Consistency::CrashConsistent);
        assert_eq!(report.manifest.state, State::Complete);
        assert_eq!(
            report.manifest.parent.as_deref(),
            Some(full.manifest.id.as_str())
        );
        assert_eq!(r.bitmaps(), [(generation(&report), 0)]);
    })
    .await;
}

#[tokio::test]
async fn a_lost_transaction_reply_undoes_whatever_started() {
    within(30, async {
        let r = rig().await;
        r.backup(false).await.unwrap();
        r.vm.monitor().guest_write("vblk0", 0, 65536);
        let (bitmaps, files) = (r.bitmaps(), r.files());
        r.vm.monitor().set_job_speed(1);
        r.vm.monitor().disconnect_on("transaction", false);
        let err = r.backup(true).await.unwrap_err();
        assert!(matches!(err, Error::BackupFailed { .. }), "{err}");
        assert_eq!(err.exit_code(), 4);
        r.assert_undone(&bitmaps, &files);
    })
    .await;
}

#[tokio::test]
async fn an_inconsistent_bitmap_means_a_full_backup_that_says_why() {
    within(30, async {
        let r = rig().await;
        let full = r.backup(false).await.unwrap();
        assert!(
            r.vm.monitor()
                .mark_bitmap_inconsistent("disk0", &generation(&full))
        );
        let next = r.backup(true).await.unwrap();
        assert_eq!(next.manifest.kind, Kind::Full);
        assert!(
            next.manifest
                .full_reason
                .as_deref()
                .unwrap()
                .contains("inconsistent")
        );
        assert_eq!(r.bitmaps(), [(generation(&next), 0)]);
    })
    .await;
}

#[tokio::test]
async fn a_directory_of_another_vm_is_refused_before_anything_changes() {
    within(30, async {
        let r = rig().await;
        r.backup(false).await.unwrap();
        let (bitmaps, files) = (r.bitmaps(), r.files());
        r.vm.monitor().set_name(Some("another"));
        let err = r.backup(true).await.unwrap_err();
        assert!(err.to_string().contains("another VM"), "{err}");
        assert_eq!(r.vm.agent().freeze_count(), 1);
        r.assert_undone(&bitmaps, &files);
    })
    .await;
}

#[tokio::test]
async fn a_backup_while_on_a_snapshot_overlay_copies_the_writes_from_before_and_after_it() {
    within(30, async {
        // Two disks: the generation's name is the same on both, its changes are not.
        let r = rig_with(2).await;
        let full = r.backup(false).await.unwrap();
        r.vm.monitor().guest_write("vblk0", 0, 65536);
        let mut snap = SnapshotRequest::new(r.vm.qmp_path())
            .qga(r.vm.qga_path())
            .name("s");
        snap.agent_timeout = Duration::from_secs(2);
        let report = qsnap::snapshot(&snap, &CancellationToken::new())
            .await
            .unwrap();
        let overlay = report.disks[0].overlay_node.clone();
        // The overlay got the generation, empty; the old node keeps its copy.
        let on_overlay = r.vm.monitor().bitmap(&overlay, &generation(&full)).unwrap();
        assert_eq!((on_overlay.count, on_overlay.persistent), (0, true));
        r.vm.monitor().guest_write("vblk0", 1 << 20, 65536);
        let mut total = 0;
        let inc = qsnap::backup(&r.request(true), &CancellationToken::new(), &mut |p| {
            total = total.max(p.total);
        })
        .await
        .unwrap();
        assert_eq!(inc.manifest.kind, Kind::Incremental);
        assert_eq!(
            total,
            2 * 65536,
            "the copy must hold the writes before and after the snapshot"
        );
    })
    .await;
}
