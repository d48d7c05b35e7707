//! The simulated dirty bitmaps against raw QMP: each test names the QEMU rule it proves.

use super::SimVm;
use super::tests_support::Qmp;
use crate::within;
use serde_json::json;

async fn vm(disks: usize) -> (tempfile::TempDir, SimVm, Qmp) {
    let dir = tempfile::tempdir().unwrap();
    let vm = SimVm::start(dir.path(), disks).await.unwrap();
    let q = Qmp::open(&vm.qmp_path()).await;
    (dir, vm, q)
}

const K64: u64 = 65536;

#[tokio::test]
async fn bitmaps_show_in_query_block_and_named_nodes_only_when_present() {
    within(10, async {
        let (_d, vm, mut q) = vm(1).await;
        let blocks = q.ok("query-block", json!({})).await;
        assert!(blocks[0]["inserted"].get("dirty-bitmaps").is_none());
        q.ok("block-dirty-bitmap-add", json!({"node": "disk0", "name": "b0"})).await;
        q.ok("block-dirty-bitmap-add", json!({"node": "disk0", "name": "b1", "persistent": true, "granularity": 4096, "disabled": true})).await;
        let blocks = q.ok("query-block", json!({})).await;
        // Newest first, as QEMU lists them; no "inconsistent" unless it is.
        assert_eq!(
            blocks[0]["inserted"]["dirty-bitmaps"],
            json!([{"name": "b1", "count": 0, "granularity": 4096, "recording": false, "busy": false, "persistent": true},
                {"name": "b0", "count": 0, "granularity": K64, "recording": true, "busy": false, "persistent": false}])
        );
        assert_eq!(q.dirty("disk0").await, blocks[0]["inserted"]["dirty-bitmaps"]);
        assert!(q.dirty("file0").await.is_null());
        q.ok("block-dirty-bitmap-remove", json!({"node": "disk0", "name": "b1"})).await;
        q.ok("block-dirty-bitmap-remove", json!({"node": "disk0", "name": "b0"})).await;
        assert!(q.dirty("disk0").await.is_null());
        assert!(vm.monitor().bitmaps("disk0").is_empty());
    })
    .await;
}

#[tokio::test]
async fn bitmap_commands_refuse_like_qemu() {
    within(10, async {
        let (_d, _vm, mut q) = vm(1).await;
        q.ok(
            "block-dirty-bitmap-add",
            json!({"node": "disk0", "name": "b0"}),
        )
        .await;
        let add = |node: &str, name: &str| json!({"node": node, "name": name});
        assert_eq!(
            q.err("block-dirty-bitmap-add", add("disk0", "b0")).await,
            "Bitmap already exists: b0"
        );
        assert_eq!(
            q.err("block-dirty-bitmap-add", add("nope", "b0")).await,
            "Cannot find device='nope' nor node-name='nope'"
        );
        assert_eq!(
            q.err("block-dirty-bitmap-add", add("disk0", "")).await,
            "Bitmap name cannot be empty"
        );
        assert_eq!(
            q.err(
                "block-dirty-bitmap-add",
                json!({"node": "file0", "name": "p", "persistent": true})
            )
            .await,
            "Can't store persistent bitmaps to file0: Operation not supported"
        );
        assert_eq!(
            q.err(
                "block-dirty-bitmap-add",
                json!({"node": "disk0", "name": "g", "granularity": 1000})
            )
            .await,
            "Granularity must be power of 2 and at least 512"
        );
        assert_eq!(
            q.err("block-dirty-bitmap-remove", add("disk0", "x")).await,
            "Dirty bitmap 'x' not found"
        );
        assert_eq!(
            q.err("block-dirty-bitmap-remove", add("nope", "b0")).await,
            "Node 'nope' not found"
        );
        assert_eq!(
            q.err(
                "block-dirty-bitmap-merge",
                json!({"node": "disk0", "target": "b0", "bitmaps": ["x"]})
            )
            .await,
            "Dirty bitmap 'x' not found"
        );
        assert_eq!(
            q.err(
                "block-dirty-bitmap-add",
                json!({"node": "disk0", "nmae": "b"})
            )
            .await,
            "Parameter 'name' is missing"
        );
    })
    .await;
}

#[tokio::test]
async fn guest_writes_dirty_enabled_bitmaps_in_whole_granules() {
    within(10, async {
        let (_d, vm, mut q) = vm(2).await;
        let m = vm.monitor();
        q.ok(
            "block-dirty-bitmap-add",
            json!({"node": "disk0", "name": "big"}),
        )
        .await;
        q.ok(
            "block-dirty-bitmap-add",
            json!({"node": "disk0", "name": "small", "granularity": 4096}),
        )
        .await;
        q.ok(
            "block-dirty-bitmap-add",
            json!({"node": "disk0", "name": "off", "disabled": true}),
        )
        .await;
        assert!(m.guest_write("vblk0", 1000, 10));
        assert!(m.guest_write("vblk0", K64 - 10, 20)); // straddles two granules
        assert!(m.guest_write("vblk0", (64 << 20) - 1, 100)); // clipped at the disk's end
        let big = m.bitmap("disk0", "big").unwrap();
        assert_eq!(
            (big.count, big.dirty.clone()),
            (3 * K64, vec![(0, 2 * K64), ((64 << 20) - K64, K64)])
        );
        assert_eq!(m.bitmap("disk0", "small").unwrap().count, 4 * 4096);
        assert_eq!(m.bitmap("disk0", "off").unwrap().count, 0);
        let names: Vec<_> = m
            .bitmaps("disk0")
            .into_iter()
            .map(|b| b.name.unwrap())
            .collect();
        assert_eq!(names, ["off", "small", "big"]);
        assert!(!m.guest_write("vblk9", 0, 1));
        q.ok("stop", json!({})).await;
        assert!(
            !m.guest_write("vblk0", 0, 1),
            "a paused guest writes nothing"
        );
        q.ok("cont", json!({})).await;
        // Clear, and enable/disable switch recording.
        q.ok(
            "block-dirty-bitmap-clear",
            json!({"node": "disk0", "name": "big"}),
        )
        .await;
        q.ok(
            "block-dirty-bitmap-enable",
            json!({"node": "disk0", "name": "off"}),
        )
        .await;
        q.ok(
            "block-dirty-bitmap-disable",
            json!({"node": "disk0", "name": "small"}),
        )
        .await;
        assert!(m.guest_write("vblk0", 5 * K64, 1));
        let counts: Vec<_> = m.bitmaps("disk0").into_iter().map(|b| b.count).collect();
        assert_eq!(counts, [K64, 4 * 4096, K64]);
        assert_eq!(q.dirty("disk0").await[2]["count"], K64);
    })
    .await;
}

#[tokio::test]
async fn merge_unions_local_and_remote_bitmaps_and_changes_nothing_on_failure() {
    within(10, async {
        let (_d, vm, mut q) = vm(2).await;
        let m = vm.monitor();
        for (node, name) in [("disk0", "t"), ("disk0", "a"), ("disk1", "r")] {
            q.ok("block-dirty-bitmap-add", json!({"node": node, "name": name})).await;
        }
        q.ok("block-dirty-bitmap-disable", json!({"node": "disk0", "name": "t"})).await;
        m.guest_write("vblk0", 0, 1);
        m.guest_write("vblk1", 7 * K64, 1);
        let bad = json!({"node": "disk0", "target": "t", "bitmaps": ["a", {"node": "nope", "name": "r"}]});
        assert_eq!(q.err("block-dirty-bitmap-merge", bad).await, "Node 'nope' not found");
        assert_eq!(m.bitmap("disk0", "t").unwrap().count, 0);
        let good = json!({"node": "disk0", "target": "t", "bitmaps": ["a", {"node": "disk1", "name": "r"}]});
        q.ok("block-dirty-bitmap-merge", good).await;
        assert_eq!(m.bitmap("disk0", "t").unwrap().dirty, [(0, K64), (7 * K64, K64)]);
        assert_eq!(m.bitmap("disk0", "a").unwrap().count, K64, "sources unchanged");
    })
    .await;
}

#[tokio::test]
async fn transaction_whose_second_action_is_refused_changes_nothing() {
    within(10, async {
        let (d, vm, mut q) = vm(1).await;
        let m = vm.monitor();
        q.ok("block-dirty-bitmap-add", json!({"node": "disk0", "name": "b0"})).await;
        q.overlay(d.path(), 0, "ov").await;
        let actions = json!([
            {"type": "blockdev-snapshot", "data": {"node": "disk0", "overlay": "ov"}},
            {"type": "block-dirty-bitmap-add", "data": {"node": "ov", "name": "b0"}},
            {"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "b0"}}]);
        let desc = q.err("transaction", json!({"actions": actions})).await;
        assert_eq!(desc, "Bitmap already exists: b0");
        assert_eq!(m.chain("vblk0"), ["disk0"]);
        assert!(m.bitmaps("ov").is_empty());
        // A removal is seen by later actions as busy, and happens only on success.
        let actions = json!([
            {"type": "block-dirty-bitmap-remove", "data": {"node": "disk0", "name": "b0"}},
            {"type": "block-dirty-bitmap-clear", "data": {"node": "disk0", "name": "b0"}}]);
        let desc = q.err("transaction", json!({"actions": actions})).await;
        assert_eq!(desc, "Bitmap 'b0' is currently in use by another operation and cannot be used");
        assert!(!m.bitmap("disk0", "b0").unwrap().busy);
        let abort = json!([{"type": "block-dirty-bitmap-remove", "data": {"node": "disk0", "name": "b0"}},
            {"type": "abort", "data": {}}]);
        assert_eq!(q.err("transaction", json!({"actions": abort})).await, "Transaction aborted using Abort action");
        // The same snapshot plus a new bitmap on the overlay, all at once.
        let actions = json!([
            {"type": "blockdev-snapshot", "data": {"node": "disk0", "overlay": "ov"}},
            {"type": "block-dirty-bitmap-add", "data": {"node": "ov", "name": "b0"}},
            {"type": "block-dirty-bitmap-remove", "data": {"node": "disk0", "name": "b0"}}]);
        q.ok("transaction", json!({"actions": actions})).await;
        assert_eq!(m.chain("vblk0"), ["ov", "disk0"]);
        assert!(m.bitmap("ov", "b0").is_some() && m.bitmaps("disk0").is_empty());
    })
    .await;
}

#[tokio::test]
async fn grouped_completion_mode_refuses_every_action_but_backup() {
    within(10, async {
        let (d, vm, mut q) = vm(1).await;
        let grouped = json!({"completion-mode": "grouped"});
        let actions = json!([{"type": "block-dirty-bitmap-add", "data": {"node": "disk0", "name": "b"}}]);
        assert_eq!(
            q.err("transaction", json!({"actions": actions, "properties": grouped})).await,
            "Action 'block-dirty-bitmap-add' does not support transaction property completion-mode = grouped"
        );
        q.overlay(d.path(), 0, "ov").await;
        let snap = json!([{"type": "blockdev-snapshot", "data": {"node": "disk0", "overlay": "ov"}}]);
        assert_eq!(
            q.err("transaction", json!({"actions": snap, "properties": grouped})).await,
            "Action 'blockdev-snapshot' does not support transaction property completion-mode = grouped"
        );
        assert!(vm.monitor().bitmaps("disk0").is_empty());
        assert_eq!(vm.monitor().chain("vblk0"), ["disk0"]);
        let individual = json!({"completion-mode": "individual"});
        q.ok("transaction", json!({"actions": actions, "properties": individual})).await;
        let bad = json!({"completion-mode": "sometimes"});
        assert_eq!(
            q.err("transaction", json!({"actions": [], "properties": bad})).await,
            "Parameter 'properties.completion-mode' does not accept value 'sometimes'"
        );
    })
    .await;
}

#[tokio::test]
async fn inconsistent_bitmap_records_nothing_and_can_only_be_removed() {
    within(10, async {
        let (d, vm, mut q) = vm(1).await;
        let m = vm.monitor();
        q.ok("block-dirty-bitmap-add", json!({"node": "disk0", "name": "p", "persistent": true})).await;
        q.ok("block-dirty-bitmap-add", json!({"node": "disk0", "name": "t"})).await;
        assert!(!m.mark_bitmap_inconsistent("disk0", "t"), "only persistent bitmaps are loaded");
        m.guest_write("vblk0", 0, 1);
        assert!(m.mark_bitmap_inconsistent("disk0", "p"));
        m.guest_write("vblk0", K64, 1);
        assert_eq!(
            q.dirty("disk0").await[1],
            json!({"name": "p", "count": 0, "granularity": K64, "recording": false, "busy": false,
                "persistent": true, "inconsistent": true})
        );
        let refused = "Bitmap 'p' is inconsistent and cannot be used";
        let merge = json!({"node": "disk0", "target": "t", "bitmaps": ["p"]});
        assert_eq!(q.err("block-dirty-bitmap-merge", merge).await, refused);
        assert_eq!(q.err("block-dirty-bitmap-enable", json!({"node": "disk0", "name": "p"})).await, refused);
        q.target(d.path(), "tgt", 64 << 20).await;
        let backup = json!({"job-id": "j", "device": "disk0", "target": "tgt", "sync": "incremental", "bitmap": "p"});
        assert_eq!(q.err("blockdev-backup", backup).await, refused);
        q.ok("block-dirty-bitmap-remove", json!({"node": "disk0", "name": "p"})).await;
        assert!(m.bitmap("disk0", "p").is_none());
    })
    .await;
}

#[tokio::test]
async fn commit_dirties_the_base_bitmaps_with_what_the_top_held() {
    within(10, async {
        let (d, vm, mut q) = vm(1).await;
        let m = vm.monitor();
        q.ok(
            "block-dirty-bitmap-add",
            json!({"node": "disk0", "name": "b"}),
        )
        .await;
        q.ok(
            "block-dirty-bitmap-add",
            json!({"node": "disk0", "name": "old", "disabled": true}),
        )
        .await;
        m.guest_write("vblk0", 0, 1);
        q.overlay(d.path(), 0, "ov").await;
        let actions = json!([
            {"type": "blockdev-snapshot", "data": {"node": "disk0", "overlay": "ov"}},
            {"type": "block-dirty-bitmap-add", "data": {"node": "ov", "name": "b"}}]);
        q.ok("transaction", json!({"actions": actions})).await;
        m.guest_write("vblk0", 3 * K64, 2 * K64);
        assert_eq!(m.bitmap("ov", "b").unwrap().dirty, [(3 * K64, 2 * K64)]);
        assert_eq!(
            m.bitmap("disk0", "b").unwrap().dirty,
            [(0, K64)],
            "writes go to the top"
        );
        q.ok("block-commit", json!({"job-id": "c", "device": "ov"}))
            .await;
        assert_eq!(q.event("BLOCK_JOB_READY").await["device"], "c");
        q.ok("job-complete", json!({"id": "c"})).await;
        q.event("BLOCK_JOB_COMPLETED").await;
        assert_eq!(m.chain("vblk0"), ["disk0"]);
        assert_eq!(
            m.bitmap("disk0", "b").unwrap().dirty,
            [(0, K64), (3 * K64, 2 * K64)]
        );
        assert_eq!(
            m.bitmap("disk0", "old").unwrap().count,
            0,
            "a disabled bitmap records no write"
        );
        assert_eq!(m.bitmaps("disk0").len(), 2, "nothing new on the base");
        m.guest_write("vblk0", 9 * K64, 1);
        assert_eq!(m.bitmap("disk0", "b").unwrap().count, 4 * K64);
    })
    .await;
}
