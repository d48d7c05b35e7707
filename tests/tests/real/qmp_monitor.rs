//! The QMP client against real QEMU.

use crate::within;
use qmp::commands::*;
use qsnap_tests::{QemuVm, inspect};
use std::process::Command;

#[tokio::test]
async fn greeting_version_matches_the_qemu_binary() {
    within(60, async {
        let vm = QemuVm::start().await.unwrap();
        let qmp = vm.qmp().await.unwrap();
        let out = Command::new("qemu-system-x86_64")
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        // "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2...)"
        let first = text.lines().next().unwrap();
        let version = first.split_whitespace().nth(3).unwrap();
        let greeting = qmp.greeting();
        assert_eq!(greeting.version.qemu.to_string(), version);
        assert!(
            first.contains(&format!("({})", greeting.version.package)),
            "{first}"
        );
        assert_eq!(qmp.execute(&QueryVersion).await.unwrap(), greeting.version);
    })
    .await;
}

#[tokio::test]
async fn query_block_lists_the_data_disks_by_node_name() {
    within(60, async {
        let vm = QemuVm::builder().disks(3).start().await.unwrap();
        let qmp = vm.qmp().await.unwrap();
        let blocks = qmp.execute(&QueryBlock).await.unwrap();
        let found: Vec<(String, String, String)> = blocks
            .iter()
            .map(|b| {
                let inserted = b.inserted.as_ref().unwrap();
                (
                    inserted.node_name.clone().unwrap(),
                    b.qdev_id().unwrap().to_owned(),
                    inserted.file.clone(),
                )
            })
            .collect();
        let expected: Vec<_> = (0..3)
            .map(|i| {
                let file = vm.disks()[i].display().to_string();
                (QemuVm::node(i), format!("vblk{i}"), file)
            })
            .collect();
        assert_eq!(found, expected);
    })
    .await;
}

#[tokio::test]
async fn stop_and_cont_produce_stop_and_resume_events() {
    within(60, async {
        let vm = QemuVm::start().await.unwrap();
        let qmp = vm.qmp().await.unwrap();
        let mut events = qmp.events();
        qmp.execute(&Stop).await.unwrap();
        events.next_named("STOP").await.unwrap();
        assert_eq!(qmp.execute(&QueryStatus).await.unwrap().status, "paused");
        qmp.execute(&Cont).await.unwrap();
        events.next_named("RESUME").await.unwrap();
        assert!(qmp.execute(&QueryStatus).await.unwrap().running);
    })
    .await;
}

#[tokio::test]
async fn blockdev_snapshot_sync_creates_an_overlay_on_the_active_image() {
    within(60, async {
        let vm = QemuVm::start().await.unwrap();
        let qmp = vm.qmp().await.unwrap();
        let overlay = vm.dir().join("snap0.qcow2");
        qmp.execute(&BlockdevSnapshotSync {
            node_name: Some(QemuVm::node(0)),
            snapshot_file: overlay.display().to_string(),
            snapshot_node_name: Some("snap0".into()),
            format: Some("qcow2".into()),
            ..Default::default()
        })
        .await
        .unwrap();
        let chain = inspect::backing_chain(&overlay).unwrap();
        assert_eq!(chain.len(), 3, "{chain:?}");
        assert_eq!(chain[0], overlay.display().to_string());
        assert_eq!(chain[1], vm.disks()[0].display().to_string());
        let blocks = qmp.execute(&QueryBlock).await.unwrap();
        let active = blocks[0].inserted.as_ref().unwrap();
        assert_eq!(active.node_name.as_deref(), Some("snap0"));
        assert_eq!(
            active.backing_file.as_deref(),
            chain.get(1).map(String::as_str)
        );
    })
    .await;
}

#[tokio::test]
async fn two_disk_transaction_switches_both_disks() {
    within(60, async {
        let vm = QemuVm::start().await.unwrap();
        let qmp = vm.qmp().await.unwrap();
        let overlay = |i: usize| vm.dir().join(format!("tx{i}.qcow2"));
        let actions = (0..2)
            .map(|i| {
                TransactionAction::BlockdevSnapshotSync(BlockdevSnapshotSync {
                    node_name: Some(QemuVm::node(i)),
                    snapshot_file: overlay(i).display().to_string(),
                    snapshot_node_name: Some(format!("tx{i}")),
                    format: Some("qcow2".into()),
                    ..Default::default()
                })
            })
            .collect();
        qmp.execute(&Transaction { actions }).await.unwrap();
        let blocks = qmp.execute(&QueryBlock).await.unwrap();
        assert_eq!(blocks.len(), 2);
        for (i, block) in blocks.iter().enumerate() {
            let node = block.inserted.as_ref().unwrap().node_name.clone();
            assert_eq!(node, Some(format!("tx{i}")));
            let chain = inspect::backing_chain(&overlay(i)).unwrap();
            assert_eq!(chain[1], vm.disks()[i].display().to_string());
        }
    })
    .await;
}

#[tokio::test]
async fn failed_transaction_changes_no_disk() {
    within(60, async {
        let vm = QemuVm::start().await.unwrap();
        let qmp = vm.qmp().await.unwrap();
        let actions = ["disk0", "no-such-node"]
            .iter()
            .enumerate()
            .map(|(i, node)| {
                TransactionAction::BlockdevSnapshotSync(BlockdevSnapshotSync {
                    node_name: Some((*node).into()),
                    snapshot_file: vm.dir().join(format!("f{i}.qcow2")).display().to_string(),
                    snapshot_node_name: Some(format!("f{i}")),
                    format: Some("qcow2".into()),
                    ..Default::default()
                })
            })
            .collect();
        let err = qmp.execute(&Transaction { actions }).await.unwrap_err();
        assert!(err.qmp_error().is_some(), "{err:?}");
        let blocks = qmp.execute(&QueryBlock).await.unwrap();
        let node = blocks[0].inserted.as_ref().unwrap().node_name.clone();
        assert_eq!(node.as_deref(), Some("disk0"));
    })
    .await;
}

#[tokio::test]
async fn active_block_commit_is_followed_to_completion_through_events() {
    within(90, async {
        let vm = QemuVm::start().await.unwrap();
        let qmp = vm.qmp().await.unwrap();
        let overlay = vm.dir().join("top.qcow2");
        qmp.execute(&BlockdevSnapshotSync {
            node_name: Some(QemuVm::node(0)),
            snapshot_file: overlay.display().to_string(),
            snapshot_node_name: Some("top".into()),
            format: Some("qcow2".into()),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut events = qmp.events();
        qmp.execute(&BlockCommit {
            job_id: Some("commit0".into()),
            device: "top".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let ready = events.next_named("BLOCK_JOB_READY").await.unwrap();
        assert_eq!(ready.data["device"], "commit0");
        qmp.execute(&JobComplete {
            id: "commit0".into(),
        })
        .await
        .unwrap();
        let done = events.next_named("BLOCK_JOB_COMPLETED").await.unwrap();
        assert_eq!(done.data["device"], "commit0");
        assert!(done.data.get("error").is_none(), "{done:?}");
        let blocks = qmp.execute(&QueryBlock).await.unwrap();
        // With no base given, QEMU commits down to the bottom of the chain: the VM's
        // private base image, now the only layer.
        let active = blocks[0].inserted.as_ref().unwrap();
        assert_eq!(active.file, vm.base(0).display().to_string());
        assert_eq!(active.backing_file_depth, 0);
        assert!(qmp.execute(&QueryJobs).await.unwrap().is_empty());
    })
    .await;
}
