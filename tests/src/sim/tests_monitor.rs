//! The simulated monitor's protocol and faults against raw sockets, plus interop with
//! the project's own clients.

use super::tests_support::{Qmp, Raw};
use super::{SimFsStatus, SimVm};
use crate::within;
use serde_json::json;
use std::time::{Duration, Instant};

async fn vm(disks: usize) -> (tempfile::TempDir, SimVm) {
    let dir = tempfile::tempdir().unwrap();
    let vm = SimVm::start(dir.path(), disks).await.unwrap();
    (dir, vm)
}

#[tokio::test]
async fn greeting_then_commands_before_capabilities_are_refused() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut q = Qmp::connect(&vm.qmp_path()).await;
        let version = json!({"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": "sim"});
        assert_eq!(
            q.greeting,
            json!({"QMP": {"version": version, "capabilities": ["oob"]}})
        );
        let early = q.cmd("query-status", json!({})).await;
        assert_eq!(early["error"]["class"], "CommandNotFound");
        assert_eq!(early["id"], 1);
        q.ok("qmp_capabilities", json!({})).await;
        assert_eq!(
            q.ok("query-status", json!({})).await,
            json!({"running": true, "status": "running"})
        );
        q.raw.send(b"{\"execute\": \"query-version\"}\r\n").await;
        let line = q.raw.line().await;
        assert!(
            line.starts_with(b"{\"return\": {") && line.ends_with(b"}}\r\n"),
            "QEMU's separators and line end"
        );
        let unknown = q.cmd("frobnicate", json!({})).await;
        assert_eq!(
            unknown["error"]["desc"],
            "The command frobnicate has not been found"
        );
        assert_eq!(
            q.err("query-block", json!({"flat": true})).await,
            "Parameter 'flat' is unexpected"
        );
        assert_eq!(
            vm.monitor().log()[..3],
            ["query-status", "qmp_capabilities", "query-status"]
        );
    })
    .await;
}

#[tokio::test]
async fn second_monitor_client_gets_no_greeting_until_the_first_closes() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let first = Qmp::open(&vm.qmp_path()).await;
        let mut second = Raw::connect(&vm.qmp_path()).await;
        assert_eq!(second.line_within(Duration::from_millis(150)).await, None);
        drop(first);
        assert!(second.json().await.get("QMP").is_some());
    })
    .await;
}

#[tokio::test]
async fn query_block_shows_an_empty_device_name_and_the_active_node() {
    within(10, async {
        let (dir, vm) = vm(2).await;
        let mut q = Qmp::open(&vm.qmp_path()).await;
        let blocks = q.ok("query-block", json!({})).await;
        assert_eq!(blocks[1]["device"], "");
        assert_eq!(
            blocks[1]["qdev"],
            "/machine/peripheral/vblk1/virtio-backend"
        );
        let inserted = &blocks[1]["inserted"];
        assert_eq!(inserted["node-name"], "disk1");
        assert_eq!(
            inserted["file"],
            dir.path().join("disk1.qcow2").to_str().unwrap()
        );
        assert_eq!(inserted["image"]["virtual-size"], 64 << 20);
        assert_eq!(inserted["image"]["cluster-size"], 65536);
        let nodes = q.ok("query-named-block-nodes", json!({"flat": true})).await;
        let names: Vec<_> = nodes
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node-name"].clone())
            .collect();
        assert_eq!(
            names,
            [
                json!("file0"),
                json!("disk0"),
                json!("file1"),
                json!("disk1")
            ]
        );
        assert_eq!(nodes[0]["drv"], "file");
        let desc = q
            .err(
                "blockdev-snapshot-sync",
                json!({"device": "vblk0", "snapshot-file": "/tmp/x"}),
            )
            .await;
        assert_eq!(desc, "Cannot find device='vblk0' nor node-name=''");
    })
    .await;
}

#[tokio::test]
async fn delay_holds_the_reply_and_the_clients_later_commands_wait_behind_it() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut q = Qmp::open(&vm.qmp_path()).await;
        vm.monitor().delay("stop", Duration::from_millis(200));
        let start = Instant::now();
        q.raw.send(b"{\"execute\": \"stop\", \"id\": \"a\"}\r\n{\"execute\": \"query-status\", \"id\": \"b\"}\r\n").await;
        // The effect (and its event) come at once, the reply later: `event` would
        // panic on a reply arriving first.
        assert_eq!(q.event("STOP").await, serde_json::Value::Null);
        assert!(!vm.monitor().running());
        assert_eq!(q.raw.json().await["id"], "a");
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert_eq!(q.raw.json().await, json!({"return": {"running": false, "status": "paused"}, "id": "b"}));
    })
    .await;
}

#[tokio::test]
async fn delay_effect_and_reply_postpones_the_effect_too() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut q = Qmp::open(&vm.qmp_path()).await;
        vm.monitor()
            .delay_effect_and_reply("stop", Duration::from_millis(200));
        q.raw.send(b"{\"execute\": \"stop\"}\r\n").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(vm.monitor().running());
        q.event("STOP").await;
        assert!(!vm.monitor().running());
    })
    .await;
}

#[tokio::test]
async fn fail_next_and_disconnect_on_script_one_command_each() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut q = Qmp::open(&vm.qmp_path()).await;
        vm.monitor().fail_next("stop", "GenericError", "no");
        assert_eq!(q.err("stop", json!({})).await, "no");
        assert!(vm.monitor().running());
        vm.monitor().disconnect_on("stop", false);
        q.raw.send(b"{\"execute\": \"stop\"}\r\n").await;
        assert!(q.raw.closed_within(Duration::from_secs(2)).await);
        assert!(!vm.monitor().running());
        let mut q = Qmp::open(&vm.qmp_path()).await;
        vm.monitor().disconnect_on("cont", true);
        q.raw.send(b"{\"execute\": \"cont\"}\r\n").await;
        assert!(q.raw.closed_within(Duration::from_secs(2)).await);
        assert!(!vm.monitor().running());
        assert_eq!(vm.monitor().connections(), 2);
    })
    .await;
}

#[tokio::test]
async fn stop_pauses_the_agent_until_cont_then_its_replies_arrive() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut q = Qmp::open(&vm.qmp_path()).await;
        let mut agent = Raw::connect(&vm.qga_path()).await;
        q.ok("stop", json!({})).await;
        agent
            .send(&super::tests_support::request("guest-ping", json!({})))
            .await;
        assert_eq!(agent.line_within(Duration::from_millis(150)).await, None);
        q.ok("cont", json!({})).await;
        assert_eq!(q.event("RESUME").await, serde_json::Value::Null);
        assert_eq!(agent.json().await, json!({"return": {}}));
    })
    .await;
}

#[tokio::test]
async fn quit_replies_emits_shutdown_and_removes_both_sockets() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut q = Qmp::open(&vm.qmp_path()).await;
        q.ok("quit", json!({})).await;
        assert_eq!(q.event("SHUTDOWN").await["reason"], "host-qmp-quit");
        assert!(q.raw.closed_within(Duration::from_secs(2)).await);
        for _ in 0..100 {
            if !vm.qmp_path().exists() && !vm.qga_path().exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!vm.qmp_path().exists() && !vm.qga_path().exists());
    })
    .await;
}

#[tokio::test]
async fn project_clients_interoperate_with_the_simulator() {
    within(10, async {
        let (_d, vm) = vm(2).await;
        let agent = qga::Client::connect(vm.qga_path(), qga::Config::default())
            .await
            .unwrap();
        let status = agent
            .execute(&qga::commands::GuestFsfreezeStatus)
            .await
            .unwrap();
        assert_eq!(status, qga::commands::FsfreezeStatus::Thawed);
        assert_eq!(
            agent
                .execute(&qga::commands::GuestFsfreezeFreeze)
                .await
                .unwrap(),
            2
        );
        assert_eq!(vm.agent().status(), SimFsStatus::Frozen);
        assert_eq!(
            agent
                .execute(&qga::commands::GuestFsfreezeThaw)
                .await
                .unwrap(),
            2
        );
        let info = agent.execute(&qga::commands::GuestInfo).await.unwrap();
        assert!(info.is_enabled("guest-fsfreeze-freeze-list"));
        let fs = agent.execute(&qga::commands::GuestGetFsinfo).await.unwrap();
        assert_eq!(fs.len(), 2);

        let qmp = qmp::Client::connect(vm.qmp_path(), qmp::Config::default())
            .await
            .unwrap();
        let blocks = qmp.execute(&qmp::commands::QueryBlock).await.unwrap();
        assert_eq!(blocks[0].qdev_id(), Some("vblk0"));
        let inserted = blocks[0].inserted.as_ref().unwrap();
        assert_eq!(inserted.node_name.as_deref(), Some("disk0"));
        assert_eq!(inserted.image.virtual_size, 64 << 20);
        let nodes = qmp
            .execute(&qmp::commands::QueryNamedBlockNodes { flat: Some(true) })
            .await
            .unwrap();
        assert_eq!(nodes.len(), 4);
        assert!(
            qmp.execute(&qmp::commands::QueryJobs)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            qmp.execute(&qmp::commands::QueryStatus)
                .await
                .unwrap()
                .running
        );
    })
    .await;
}

#[tokio::test]
async fn query_name_and_uuid_answer_like_qemu() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut q = Qmp::open(&vm.qmp_path()).await;
        assert_eq!(q.ok("query-name", json!({})).await, json!({"name": "sim"}));
        vm.monitor().set_name(None);
        assert_eq!(q.ok("query-name", json!({})).await, json!({}));
        assert_eq!(
            q.ok("query-uuid", json!({})).await,
            json!({"UUID": "00000000-0000-0000-0000-000000000000"})
        );
    })
    .await;
}
