//! The simulated `blockdev-backup` jobs against raw QMP: each test names the QEMU rule
//! it proves.

use super::SimVm;
use super::tests_support::Qmp;
use crate::within;
use serde_json::{Value, json};

async fn vm(disks: usize) -> (tempfile::TempDir, SimVm, Qmp) {
    let dir = tempfile::tempdir().unwrap();
    let vm = SimVm::start(dir.path(), disks).await.unwrap();
    let q = Qmp::open(&vm.qmp_path()).await;
    (dir, vm, q)
}

const K64: u64 = 65536;
const DISK: u64 = 64 << 20;

fn backup(id: &str, device: &str, target: &str, more: Value) -> Value {
    let mut v = json!({"job-id": id, "device": device, "target": target});
    v.as_object_mut()
        .unwrap()
        .extend(more.as_object().unwrap().clone());
    v
}

#[tokio::test]
async fn full_backup_goes_through_the_job_states_into_a_real_qcow2_target() {
    within(20, async {
        let (d, vm, mut q) = vm(1).await;
        let file = q.target(d.path(), "t0", DISK).await;
        let out = std::process::Command::new("qemu-img")
            .args(["info", "--output=json", &file])
            .output()
            .unwrap();
        let info: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((info["format"].clone(), info["virtual-size"].clone()), (json!("qcow2"), json!(DISK)));
        q.ok("blockdev-backup", backup("j", "disk0", "t0", json!({"sync": "full", "auto-dismiss": false}))).await;
        let done = q.event("BLOCK_JOB_COMPLETED").await;
        assert_eq!(done, json!({"type": "backup", "device": "j", "len": DISK, "offset": DISK, "speed": 0}));
        let job = q.concluded("j").await;
        assert_eq!((job["type"].clone(), job["total-progress"].clone()), (json!("backup"), json!(DISK)));
        assert_eq!(q.statuses("j"), ["created", "running", "waiting", "pending", "concluded"]);
        let busy = q.err("blockdev-del", json!({"node-name": "t0"})).await;
        assert_eq!(busy, "Node 't0' is busy: block device is in use by block job: backup");
        q.ok("job-dismiss", json!({"id": "j"})).await;
        q.ok("blockdev-del", json!({"node-name": "t0"})).await;
        assert!(vm.monitor().jobs().is_empty());
        // blockdev-create of a qcow2 with a backing file: qemu-img records it.
        let backed = d.path().join("b.qcow2");
        std::fs::File::create_new(&backed).unwrap();
        q.ok("blockdev-add", json!({"driver": "file", "node-name": "bf", "filename": backed})).await;
        let options = json!({"driver": "qcow2", "file": "bf", "size": DISK, "backing-file": file, "backing-fmt": "qcow2"});
        q.create("bc", options).await;
        let out = std::process::Command::new("qemu-img").args(["info", "--output=json"]).arg(&backed).output().unwrap();
        let info: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["backing-filename"], json!(file));
    })
    .await;
}

#[tokio::test]
async fn incremental_backup_holds_its_bitmap_busy_and_leaves_only_the_new_writes() {
    within(20, async {
        let (d, vm, mut q) = vm(1).await;
        let m = vm.monitor();
        q.target(d.path(), "t0", DISK).await;
        q.target(d.path(), "t1", DISK).await;
        q.ok(
            "block-dirty-bitmap-add",
            json!({"node": "disk0", "name": "b0"}),
        )
        .await;
        m.guest_write("vblk0", 0, 3 * K64);
        m.set_job_speed(1);
        q.ok(
            "blockdev-backup",
            backup(
                "j",
                "disk0",
                "t0",
                json!({"sync": "incremental", "bitmap": "b0"}),
            ),
        )
        .await;
        let jobs = m.jobs();
        assert_eq!(
            (jobs[0].total_progress, jobs[0].status.as_str()),
            (3 * K64, "running")
        );
        let b0 = m.bitmap("disk0", "b0").unwrap();
        assert!(b0.busy && b0.recording && b0.count == 3 * K64);
        let bitmaps = m.bitmaps("disk0");
        assert!(bitmaps[0].name.is_none() && bitmaps[0].recording && !bitmaps[0].busy);
        assert_eq!(q.dirty("disk0").await[1]["busy"], true);
        let in_use = "Bitmap 'b0' is currently in use by another operation and cannot be used";
        assert_eq!(
            q.err(
                "block-dirty-bitmap-remove",
                json!({"node": "disk0", "name": "b0"})
            )
            .await,
            in_use
        );
        let again = backup(
            "k",
            "disk0",
            "t1",
            json!({"sync": "bitmap", "bitmap": "b0", "bitmap-mode": "never"}),
        );
        assert_eq!(q.err("blockdev-backup", again).await, in_use);
        let merge = json!({"node": "disk0", "target": "b0", "bitmaps": []});
        assert_eq!(q.err("block-dirty-bitmap-merge", merge).await, in_use);
        m.guest_write("vblk0", 10 * K64, 1); // recorded by the successor
        m.set_job_speed(0);
        assert!(q.event("BLOCK_JOB_COMPLETED").await.get("error").is_none());
        let bitmaps = m.bitmaps("disk0");
        assert_eq!(bitmaps.len(), 1, "the successor took over: {bitmaps:?}");
        assert_eq!(
            (bitmaps[0].name.as_deref(), bitmaps[0].busy),
            (Some("b0"), false)
        );
        assert_eq!(bitmaps[0].dirty, [(10 * K64, K64)]);
        assert!(m.jobs().is_empty(), "auto-dismissed");
    })
    .await;
}

#[tokio::test]
async fn failed_backup_reports_its_error_and_gives_the_bitmap_back() {
    within(20, async {
        let (d, vm, mut q) = vm(1).await;
        let m = vm.monitor();
        q.target(d.path(), "t0", DISK).await;
        q.ok("block-dirty-bitmap-add", json!({"node": "disk0", "name": "b0"})).await;
        m.guest_write("vblk0", 0, 4 * K64);
        // on-success: a failure merges the successor back, nothing is lost.
        m.fail_job("backup", K64);
        let args = json!({"sync": "bitmap", "bitmap": "b0", "bitmap-mode": "on-success", "auto-dismiss": false});
        q.ok("blockdev-backup", backup("j", "disk0", "t0", args)).await;
        let done = q.event("BLOCK_JOB_COMPLETED").await;
        assert_eq!((done["error"].clone(), done["offset"].clone()), (json!("Input/output error"), json!(K64)));
        assert_eq!(q.concluded("j").await["error"], "Input/output error");
        assert_eq!(q.statuses("j"), ["created", "running", "aborting", "concluded"]);
        assert_eq!(m.bitmaps("disk0").len(), 1);
        let b0 = m.bitmap("disk0", "b0").unwrap();
        assert_eq!((b0.count, b0.busy, b0.recording), (4 * K64, false, true));
        q.ok("job-dismiss", json!({"id": "j"})).await;
        // always: a failure still clears what was copied (the first two granules).
        m.fail_job("backup", 2 * K64);
        let args = json!({"sync": "bitmap", "bitmap": "b0", "bitmap-mode": "always"});
        q.ok("blockdev-backup", backup("k", "disk0", "t0", args)).await;
        assert_eq!(q.event("BLOCK_JOB_COMPLETED").await["error"], "Input/output error");
        assert_eq!(m.bitmap("disk0", "b0").unwrap().dirty, [(2 * K64, 2 * K64)]);
        // never: success leaves the bitmap as it was.
        let args = json!({"sync": "bitmap", "bitmap": "b0", "bitmap-mode": "never"});
        q.ok("blockdev-backup", backup("n", "disk0", "t0", args)).await;
        assert!(q.event("BLOCK_JOB_COMPLETED").await.get("error").is_none());
        assert_eq!(m.bitmap("disk0", "b0").unwrap().dirty, [(2 * K64, 2 * K64)]);
    })
    .await;
}

#[tokio::test]
async fn cancelled_backup_emits_block_job_cancelled_and_keeps_the_bitmap() {
    within(20, async {
        let (d, vm, mut q) = vm(1).await;
        let m = vm.monitor();
        q.target(d.path(), "t0", DISK).await;
        q.ok(
            "block-dirty-bitmap-add",
            json!({"node": "disk0", "name": "b0"}),
        )
        .await;
        m.guest_write("vblk0", 0, K64);
        m.set_job_speed(1);
        let args = json!({"sync": "incremental", "bitmap": "b0", "auto-dismiss": false});
        q.ok("blockdev-backup", backup("j", "disk0", "t0", args))
            .await;
        q.ok("job-cancel", json!({"id": "j"})).await;
        let cancelled = q.event("BLOCK_JOB_CANCELLED").await;
        assert_eq!(
            (cancelled["type"].clone(), cancelled["device"].clone()),
            (json!("backup"), json!("j"))
        );
        assert_eq!(q.concluded("j").await["error"], "Operation canceled");
        assert_eq!(m.bitmap("disk0", "b0").unwrap().count, K64);
        assert_eq!(
            q.err("job-cancel", json!({"id": "j"})).await,
            "Job 'j' in state 'concluded' cannot accept command verb 'cancel'"
        );
        q.ok("job-dismiss", json!({"id": "j"})).await;
        // sync none never ends by itself: cancelling is how it ends.
        m.set_job_speed(0);
        q.ok(
            "blockdev-backup",
            backup("f", "disk0", "t0", json!({"sync": "none"})),
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert_eq!(m.jobs()[0].status, "running");
        q.ok("job-cancel", json!({"id": "f"})).await;
        assert_eq!(q.event("BLOCK_JOB_CANCELLED").await["device"], "f");
    })
    .await;
}

#[tokio::test]
async fn backup_arguments_are_checked_like_qemu() {
    within(20, async {
        let (d, vm, mut q) = vm(1).await;
        q.target(d.path(), "t0", DISK).await;
        q.target(d.path(), "t1", DISK).await;
        q.ok("block-dirty-bitmap-add", json!({"node": "disk0", "name": "b0"})).await;
        let cases = [
            (json!({"sync": "bitmap"}), "must provide a valid bitmap name for 'bitmap' sync mode"),
            (json!({"sync": "bitmap", "bitmap": "b0"}), "Bitmap sync mode must be given when providing a bitmap"),
            (json!({"sync": "incremental", "bitmap": "b0", "bitmap-mode": "never"}),
                "Bitmap sync mode must be 'on-success' when using sync mode 'incremental'"),
            (json!({"sync": "incremental", "bitmap": "nope"}), "Bitmap 'nope' could not be found"),
            (json!({"sync": "none", "bitmap": "b0", "bitmap-mode": "always"}),
                "sync mode 'none' does not produce meaningful bitmap outputs"),
            (json!({"sync": "full", "bitmap": "b0", "bitmap-mode": "never"}),
                "Bitmap sync mode 'never' has no meaningful effect when combined with sync mode 'full'"),
            (json!({"sync": "full", "bitmap-mode": "always"}), "Cannot specify bitmap sync mode without a bitmap"),
            (json!({"sync": "sideways"}), "Parameter 'sync' does not accept value 'sideways'"),
        ];
        for (args, desc) in cases {
            assert_eq!(q.err("blockdev-backup", backup("j", "disk0", "t0", args)).await, desc);
        }
        let full = json!({"sync": "full"});
        assert_eq!(q.err("blockdev-backup", backup("j", "disk0", "nope", full.clone())).await, "Cannot find device='nope' nor node-name='nope'");
        assert_eq!(q.err("blockdev-backup", backup("j", "disk0", "disk0", full.clone())).await, "Source and target cannot be the same");
        let no_id = json!({"device": "disk0", "target": "t0", "sync": "full"});
        assert_eq!(q.err("blockdev-backup", no_id).await, "Invalid job ID ''");
        vm.monitor().set_job_speed(1);
        q.ok("blockdev-backup", backup("j", "disk0", "t0", full.clone())).await;
        assert_eq!(q.err("blockdev-backup", backup("k", "disk0", "t0", full.clone())).await, "Node 't0' is busy: block device is in use by block job: backup");
        assert_eq!(q.err("blockdev-backup", backup("j", "disk0", "t1", full.clone())).await, "Job ID 'j' already in use");
        assert_eq!(vm.monitor().jobs().len(), 1);
        assert_eq!(q.err("job-complete", json!({"id": "j"})).await, "Job 'j' in state 'running' cannot accept command verb 'complete'");
    })
    .await;
}

#[tokio::test]
async fn backup_in_a_transaction_starts_only_when_every_action_succeeds() {
    within(20, async {
        let (d, vm, mut q) = vm(1).await;
        let m = vm.monitor();
        q.target(d.path(), "t0", DISK).await;
        q.ok("block-dirty-bitmap-add", json!({"node": "disk0", "name": "b0"})).await;
        m.guest_write("vblk0", 0, K64);
        m.set_job_speed(1);
        // A full backup and a fresh bitmap at one instant: the usual start of a chain.
        let actions = json!([
            {"type": "blockdev-backup", "data": backup("full", "disk0", "t0", json!({"sync": "full"}))},
            {"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "b1"}},
            {"type": "blockdev-backup", "data": backup("again", "disk0", "t0", json!({"sync": "full"}))}]);
        let desc = q.err("transaction", json!({"actions": actions})).await;
        assert_eq!(desc, "Node 't0' is busy: block device is in use by block job: backup");
        assert!(m.jobs().is_empty() && m.bitmap("disk0", "b1").is_none());
        assert!(q.statuses("full").is_empty(), "no job was seen");
        let actions = json!([
            {"type": "blockdev-backup", "data": backup("inc", "disk0", "t0",
                json!({"sync": "incremental", "bitmap": "b0"}))},
            {"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "b1"}},
            {"type": "block-dirty-bitmap-remove", "data": {"node": "disk0", "name": "b0"}}]);
        let desc = q.err("transaction", json!({"actions": actions})).await;
        assert_eq!(desc, "Bitmap 'b0' is currently in use by another operation and cannot be used");
        assert!(!m.bitmap("disk0", "b0").unwrap().busy && m.bitmaps("disk0").len() == 1);
        let actions = json!([
            {"type": "blockdev-backup", "data": backup("inc", "disk0", "t0",
                json!({"sync": "incremental", "bitmap": "b0"}))},
            {"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "b1"}}]);
        q.ok("transaction", json!({"actions": actions})).await;
        assert_eq!(m.jobs()[0].total_progress, K64);
        assert!(m.bitmap("disk0", "b1").unwrap().recording);
    })
    .await;
}

#[tokio::test]
async fn grouped_backups_wait_for_each_other_and_fail_together() {
    within(20, async {
        let (d, vm, mut q) = vm(2).await;
        let m = vm.monitor();
        q.target(d.path(), "t0", DISK).await;
        q.target(d.path(), "t1", DISK).await;
        let grouped = json!({"completion-mode": "grouped"});
        let pair = |more: Value| {
            json!([{"type": "blockdev-backup", "data": backup("a", "disk0", "t0", more.clone())},
                {"type": "blockdev-backup", "data": backup("b", "disk1", "t1", more)}])
        };
        // One fails: the other is cancelled.
        m.fail_job("backup", 0);
        let actions = pair(json!({"sync": "full", "auto-dismiss": false}));
        q.ok(
            "transaction",
            json!({"actions": actions, "properties": grouped}),
        )
        .await;
        assert_eq!(q.concluded("a").await["error"], "Input/output error");
        assert_eq!(q.concluded("b").await["error"], "Operation canceled");
        assert_eq!(q.event("BLOCK_JOB_CANCELLED").await["device"], "b");
        for id in ["a", "b"] {
            q.ok("job-dismiss", json!({"id": id})).await;
        }
        // auto-finalize off: both wait in pending, one job-finalize concludes both.
        let actions = pair(json!({"sync": "full", "auto-finalize": false}));
        q.ok(
            "transaction",
            json!({"actions": actions, "properties": grouped}),
        )
        .await;
        assert_eq!(
            q.event("BLOCK_JOB_PENDING").await,
            json!({"type": "backup", "id": "a"})
        );
        assert_eq!(q.event("BLOCK_JOB_PENDING").await["id"], "b");
        let statuses: Vec<_> = m.jobs().into_iter().map(|j| j.status).collect();
        assert_eq!(statuses, ["pending", "pending"]);
        q.ok("job-finalize", json!({"id": "b"})).await;
        assert!(m.jobs().is_empty(), "both concluded and were dismissed");
        assert_eq!(q.statuses("a").last().unwrap(), "null");
    })
    .await;
}

#[tokio::test]
async fn top_copies_what_was_written_and_full_with_a_bitmap_restarts_it() {
    within(20, async {
        let (d, vm, mut q) = vm(1).await;
        let m = vm.monitor();
        q.target(d.path(), "t0", DISK).await;
        q.ok(
            "block-dirty-bitmap-add",
            json!({"node": "disk0", "name": "b0"}),
        )
        .await;
        m.guest_write("vblk0", 4 * K64, 2 * K64);
        m.set_job_speed(1);
        q.ok(
            "blockdev-backup",
            backup("top", "disk0", "t0", json!({"sync": "top"})),
        )
        .await;
        assert_eq!(m.jobs()[0].total_progress, 2 * K64);
        q.ok("job-cancel", json!({"id": "top"})).await;
        q.event("BLOCK_JOB_CANCELLED").await;
        m.set_job_speed(0);
        let args = json!({"sync": "full", "bitmap": "b0", "bitmap-mode": "on-success"});
        q.ok("blockdev-backup", backup("full", "disk0", "t0", args))
            .await;
        q.event("BLOCK_JOB_COMPLETED").await;
        assert_eq!(
            m.bitmap("disk0", "b0").unwrap().count,
            0,
            "a new generation starts"
        );
    })
    .await;
}
