//! The simulated block graph and jobs against raw QMP: each test names the QEMU rule
//! (or data-loss trap) it proves.

use super::SimVm;
use super::tests_support::Qmp;
use crate::within;
use serde_json::json;
use std::path::Path;

async fn vm(disks: usize) -> (tempfile::TempDir, SimVm, Qmp) {
    let dir = tempfile::tempdir().unwrap();
    let vm = SimVm::start(dir.path(), disks).await.unwrap();
    let q = Qmp::open(&vm.qmp_path()).await;
    (dir, vm, q)
}

fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

#[tokio::test]
async fn transaction_on_a_non_active_node_fails_and_changes_nothing() {
    within(10, async {
        let (d, vm, mut q) = vm(2).await;
        q.overlay(d.path(), 0, "ov0").await;
        assert_eq!(q.snapshot(&[("disk0", "ov0")]).await["return"], json!({}));
        assert_eq!(vm.monitor().chain("vblk0"), ["ov0", "disk0"]);
        q.overlay(d.path(), 0, "ov0b").await;
        q.overlay(d.path(), 1, "ov1").await;
        let reply = q.snapshot(&[("disk1", "ov1"), ("disk0", "ov0b")]).await;
        assert_eq!(
            reply["error"]["desc"],
            "Node 'disk0' is busy: node is used as backing hd of 'ov0'"
        );
        assert_eq!(vm.monitor().chain("vblk0"), ["ov0", "disk0"]);
        assert_eq!(vm.monitor().chain("vblk1"), ["disk1"]);
        let blocks = q.ok("query-block", json!({})).await;
        assert_eq!(
            blocks[0]["inserted"]["image"]["backing-image"]["filename"],
            path(d.path(), "disk0.qcow2")
        );
    })
    .await;
}

#[tokio::test]
async fn transaction_with_the_same_overlay_twice_fails_atomically() {
    within(10, async {
        let (d, vm, mut q) = vm(2).await;
        q.overlay(d.path(), 0, "ov").await;
        let reply = q.snapshot(&[("disk0", "ov"), ("disk1", "ov")]).await;
        // The first action already attached it to vblk0.
        assert_eq!(reply["error"]["desc"], "The overlay is already in use");
        assert_eq!(
            (
                vm.monitor().root("vblk0").unwrap(),
                vm.monitor().root("vblk1").unwrap()
            ),
            ("disk0".into(), "disk1".into())
        );
        let missing = q.snapshot(&[("disk0", "nope")]).await;
        assert_eq!(
            missing["error"]["desc"],
            "Cannot find device='nope' nor node-name='nope'"
        );
    })
    .await;
}

#[tokio::test]
async fn blockdev_add_without_backing_null_fails() {
    within(10, async {
        let (d, vm, mut q) = vm(1).await;
        q.overlay(d.path(), 0, "ov").await;
        q.ok("blockdev-del", json!({"node-name": "ov"})).await;
        let desc = q.err("blockdev-add", json!({"driver": "qcow2", "node-name": "ov", "file": "ov-file"})).await;
        assert!(desc.starts_with("Failed to get shared \"write\" lock"), "{desc}");
        let dup = q.err("blockdev-add", json!({"driver": "qcow2", "node-name": "disk0", "file": "ov-file", "backing": null})).await;
        assert_eq!(dup, "Duplicate nodes with node-name='disk0'");
        let conflict = q.err("blockdev-add", json!({"driver": "qcow2", "node-name": "x", "file": "file0", "backing": null})).await;
        assert!(conflict.starts_with("Conflicts with use by disk0"), "{conflict}");
        assert!(!vm.monitor().nodes().contains(&"ov".to_owned()));
    })
    .await;
}

#[tokio::test]
async fn blockdev_create_file_truncates_an_existing_file() {
    within(10, async {
        let (d, vm, mut q) = vm(1).await;
        let precious = path(d.path(), "precious.txt");
        std::fs::write(&precious, "years of work").unwrap();
        q.create("c", json!({"driver": "file", "filename": precious, "size": 0})).await;
        assert_eq!(std::fs::metadata(&precious).unwrap().len(), 0);
        assert_eq!(vm.monitor().files_clobbered(), [d.path().join("precious.txt")]);
        // A truncated image is no image any more.
        q.ok("blockdev-add", json!({"driver": "file", "node-name": "pf", "filename": precious})).await;
        let desc = q.err("blockdev-add", json!({"driver": "qcow2", "node-name": "p", "file": "pf", "backing": null})).await;
        assert_eq!(desc, "Image is not in qcow2 format");
        // A file QEMU has open is locked, though: the job fails instead.
        q.ok("blockdev-create", json!({"job-id": "c2", "options": {"driver": "file", "filename": path(d.path(), "disk0.qcow2"), "size": 0}})).await;
        assert_eq!(q.concluded("c2").await["error"], "Failed to get \"write\" lock");
    })
    .await;
}

#[tokio::test]
async fn blockdev_snapshot_sync_overwrites_an_existing_file_even_when_the_transaction_fails() {
    within(10, async {
        let (d, vm, mut q) = vm(1).await;
        let file = path(d.path(), "old.qcow2");
        std::fs::write(&file, "someone's data").unwrap();
        let actions = json!([{"type": "blockdev-snapshot-sync", "data": {"node-name": "disk0", "snapshot-file": file}},
            {"type": "blockdev-snapshot", "data": {"node": "disk0", "overlay": "nope"}}]);
        assert!(q.cmd("transaction", json!({"actions": actions})).await.get("error").is_some());
        assert_eq!(vm.monitor().chain("vblk0"), ["disk0"]);
        assert_eq!(vm.monitor().files_clobbered().len(), 1);
        q.ok("blockdev-snapshot-sync", json!({"node-name": "disk0", "snapshot-file": path(d.path(), "s.qcow2"), "snapshot-node-name": "s"})).await;
        assert_eq!(vm.monitor().chain("vblk0"), ["s", "disk0"]);
        assert_eq!(vm.monitor().files_created(), [d.path().join("s.qcow2")]);
    })
    .await;
}

#[tokio::test]
async fn active_commit_pivots_on_job_complete() {
    within(10, async {
        let (d, vm, mut q) = vm(1).await;
        vm.monitor().set_job_speed(64 << 10);
        q.overlay(d.path(), 0, "ov").await;
        q.snapshot(&[("disk0", "ov")]).await;
        q.ok("block-commit", json!({"job-id": "j", "device": "ov", "top-node": "ov", "base-node": "disk0", "auto-dismiss": false})).await;
        assert_eq!(q.err("job-complete", json!({"id": "j"})).await, "Job 'j' in state 'running' cannot accept command verb 'complete'");
        assert_eq!(q.event("BLOCK_JOB_READY").await["device"], "j");
        assert_eq!(vm.monitor().chain("vblk0"), ["ov", "disk0"]);
        q.ok("job-complete", json!({"id": "j"})).await;
        assert_eq!(q.concluded("j").await["current-progress"], 64 << 20);
        assert_eq!(q.event("BLOCK_JOB_COMPLETED").await["offset"], 64 << 20);
        let statuses: Vec<_> = q.events.iter().filter(|e| e["event"] == "JOB_STATUS_CHANGE" && e["data"]["id"] == "j").map(|e| e["data"]["status"].clone()).collect();
        assert_eq!(statuses, ["created", "running", "ready", "waiting", "pending", "concluded"]);
        assert_eq!(vm.monitor().chain("vblk0"), ["disk0"]);
        // Concluded but not dismissed: the job still holds its nodes.
        let busy = q.err("blockdev-del", json!({"node-name": "ov"})).await;
        assert_eq!(busy, "Node 'ov' is busy: block device is in use by block job: commit");
        q.ok("job-dismiss", json!({"id": "j"})).await;
        q.ok("blockdev-del", json!({"node-name": "ov"})).await;
        q.ok("blockdev-del", json!({"node-name": "ov-file"})).await;
        assert_eq!(vm.monitor().nodes(), ["file0", "disk0"]);
    })
    .await;
}

#[tokio::test]
async fn non_active_commit_completes_by_itself_and_cancel_keeps_the_chain() {
    within(10, async {
        let (d, vm, mut q) = vm(1).await;
        q.overlay(d.path(), 0, "a").await;
        q.snapshot(&[("disk0", "a")]).await;
        q.ok("blockdev-snapshot-sync", json!({"node-name": "a", "snapshot-file": path(d.path(), "b.qcow2"), "snapshot-node-name": "b"})).await;
        assert_eq!(vm.monitor().chain("vblk0"), ["b", "a", "disk0"]);
        vm.monitor().set_job_speed(1);
        q.ok("block-commit", json!({"job-id": "slow", "device": "b"})).await;
        q.ok("job-cancel", json!({"id": "slow"})).await;
        assert_eq!(q.event("BLOCK_JOB_CANCELLED").await["device"], "slow");
        assert_eq!(vm.monitor().chain("vblk0"), ["b", "a", "disk0"]);
        vm.monitor().set_job_speed(0);
        q.ok("block-commit", json!({"job-id": "mid", "device": "b", "top-node": "a", "base-node": "disk0"})).await;
        assert!(q.event("BLOCK_JOB_COMPLETED").await.get("error").is_none());
        assert_eq!(vm.monitor().chain("vblk0"), ["b", "disk0"]);
        assert!(vm.monitor().jobs().is_empty(), "auto-dismissed");
    })
    .await;
}

#[tokio::test]
async fn job_id_stays_in_use_until_dismissed_and_failed_jobs_report_their_error() {
    within(10, async {
        let (d, vm, mut q) = vm(1).await;
        let file = path(d.path(), "n.qcow2");
        vm.monitor().fail_job("create", 0);
        q.ok(
            "blockdev-create",
            json!({"job-id": "j", "options": {"driver": "file", "filename": file, "size": 0}}),
        )
        .await;
        assert_eq!(q.concluded("j").await["error"], "Input/output error");
        let again = q
            .err(
                "blockdev-create",
                json!({"job-id": "j", "options": {"driver": "file", "filename": file, "size": 0}}),
            )
            .await;
        assert_eq!(again, "Job ID 'j' already in use");
        assert_eq!(
            q.err("job-cancel", json!({"id": "j"})).await,
            "Job 'j' in state 'concluded' cannot accept command verb 'cancel'"
        );
        q.ok("job-dismiss", json!({"id": "j"})).await;
        assert_eq!(
            q.err("job-dismiss", json!({"id": "j"})).await,
            "Job not found"
        );
        assert!(!Path::new(&file).exists());
        let typo = q
            .err("blockdev-create", json!({"job_id": "k", "options": {}}))
            .await;
        assert_eq!(typo, "Parameter 'job-id' is missing");
    })
    .await;
}

#[tokio::test]
async fn del_of_a_node_in_use_fails() {
    within(10, async {
        let (d, vm, mut q) = vm(1).await;
        assert_eq!(
            q.err("blockdev-del", json!({"node-name": "disk0"})).await,
            "Node disk0 is in use"
        );
        assert_eq!(
            q.err("blockdev-del", json!({"node-name": "file0"})).await,
            "Block device file0 is in use"
        );
        assert_eq!(
            q.err("blockdev-del", json!({"node-name": "x"})).await,
            "Failed to find node with node-name='x'"
        );
        q.overlay(d.path(), 0, "ov").await;
        assert_eq!(
            q.err("blockdev-del", json!({"node-name": "ov-file"})).await,
            "Block device ov-file is in use"
        );
        q.snapshot(&[("disk0", "ov")]).await;
        let busy = q.err("blockdev-del", json!({"node-name": "disk0"})).await;
        assert_eq!(
            busy,
            "Node 'disk0' is busy: node is used as backing hd of 'ov'"
        );
        assert_eq!(vm.monitor().nodes().len(), 4);
    })
    .await;
}
