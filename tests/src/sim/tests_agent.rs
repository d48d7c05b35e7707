//! The simulated agent against raw sockets: each test names the qemu-ga rule it proves.

use super::tests_support::{Raw, request};
use super::{SimAgent, SimAgentEvent, SimFsStatus, SimVm};
use crate::within;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const QUIET: Duration = Duration::from_millis(150);

async fn vm(disks: usize) -> (tempfile::TempDir, SimVm) {
    let dir = tempfile::tempdir().unwrap();
    let vm = SimVm::start(dir.path(), disks).await.unwrap();
    (dir, vm)
}

fn ret(v: Value) -> Value {
    json!({"return": v})
}

fn desc(reply: &Value) -> &str {
    reply["error"]["desc"].as_str().unwrap()
}

#[tokio::test]
async fn partial_line_from_a_closed_client_corrupts_the_next_clients_first_command() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut a = Raw::connect(&vm.qga_path()).await;
        a.send(b"{\"execute\": \"guest-pi").await;
        drop(a);
        let mut b = Raw::connect(&vm.qga_path()).await;
        let first = b.qga("guest-ping", json!({})).await;
        assert!(desc(&first).starts_with("JSON parse error"), "{first}");
        // A client that opens with 0xFF is safe: the stray byte draws its own error first.
        b.send(&[0xFF]).await;
        b.send(&request("guest-ping", json!({}))).await;
        let stray = b"{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, stray '\\uFFFD'\"}}\n";
        assert_eq!(b.line().await, stray);
        assert_eq!(b.json().await, ret(json!({})));
    })
    .await;
}

#[tokio::test]
async fn sync_delimited_reply_is_preceded_by_0xff_and_carries_no_id() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut c = Raw::connect(&vm.qga_path()).await;
        c.send(&request("guest-sync-delimited", json!({"id": 749871457})))
            .await;
        assert_eq!(c.line().await, b"\xff{\"return\": 749871457}\n");
        assert_eq!(c.qga("guest-sync", json!({"id": 5})).await, ret(json!(5)));
        let unknown = c.qga("guest-frobnicate", json!({})).await;
        assert_eq!(unknown["error"]["class"], "CommandNotFound");
        assert_eq!(
            desc(&unknown),
            "The command guest-frobnicate has not been found"
        );
    })
    .await;
}

#[tokio::test]
async fn second_client_hears_nothing_until_the_first_closes() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut a = Raw::connect(&vm.qga_path()).await;
        assert_eq!(a.qga("guest-ping", json!({})).await, ret(json!({})));
        let mut b = Raw::connect(&vm.qga_path()).await;
        b.send(&request("guest-sync", json!({"id": 2}))).await;
        assert_eq!(b.line_within(QUIET).await, None);
        assert_eq!(a.qga("guest-sync", json!({"id": 1})).await, ret(json!(1)));
        drop(a);
        assert_eq!(b.json().await, ret(json!(2)));
        assert_eq!(vm.agent().connections(), 2);
    })
    .await;
}

#[tokio::test]
async fn reply_to_a_departed_client_reaches_the_next() {
    within(10, async {
        let (_d, vm) = vm(2).await;
        vm.agent().set_freeze_hook(Duration::from_millis(300));
        let mut a = Raw::connect(&vm.qga_path()).await;
        a.send(&request("guest-fsfreeze-freeze", json!({}))).await;
        drop(a);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut b = Raw::connect(&vm.qga_path()).await;
        assert_eq!(b.json().await, ret(json!(2)));
        // A client that left while frozen leaves the guest frozen.
        assert_eq!(vm.agent().status(), SimFsStatus::Frozen);
        assert_eq!(
            b.qga("guest-fsfreeze-status", json!({})).await,
            ret(json!("frozen"))
        );
    })
    .await;
}

#[tokio::test]
async fn sync_is_not_answered_while_the_hook_runs() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        vm.agent().set_freeze_hook(Duration::from_millis(400));
        let mut c = Raw::connect(&vm.qga_path()).await;
        c.send(&request("guest-fsfreeze-freeze", json!({}))).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.send(&[0xFF]).await;
        c.send(&request("guest-sync-delimited", json!({"id": 7})))
            .await;
        assert_eq!(c.line_within(Duration::from_millis(200)).await, None);
        assert_eq!(c.json().await, ret(json!(1)));
        assert!(desc(&c.json().await).contains("stray"));
        assert_eq!(c.json().await, ret(json!(7)));
    })
    .await;
}

#[tokio::test]
async fn thaw_written_behind_a_slow_freeze_hook_runs_right_after_it() {
    within(10, async {
        let (_d, vm) = vm(2).await;
        vm.agent().set_freeze_hook(Duration::from_millis(300));
        let mut c = Raw::connect(&vm.qga_path()).await;
        c.send(&request("guest-fsfreeze-freeze", json!({}))).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.send(b"\xff").await;
        c.send(&request("guest-fsfreeze-thaw", json!({}))).await;
        drop(c);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(vm.agent().status(), SimFsStatus::Thawed);
        let log = vm.agent().log();
        let froze = log.iter().find_map(|e| match e {
            SimAgentEvent::Froze { at, .. } => Some(*at),
            _ => None,
        });
        let thawed = log.iter().find_map(|e| match e {
            SimAgentEvent::Thawed { at, .. } => Some(*at),
            _ => None,
        });
        assert!(
            thawed.unwrap() - froze.unwrap() < Duration::from_millis(100),
            "{log:?}"
        );
        assert_eq!((vm.agent().freeze_count(), vm.agent().thaw_count()), (1, 1));
    })
    .await;
}

#[tokio::test]
async fn while_frozen_only_the_allowed_commands_work() {
    within(10, async {
        let (_d, vm) = vm(2).await;
        let mut c = Raw::connect(&vm.qga_path()).await;
        assert_eq!(
            c.qga("guest-fsfreeze-freeze", json!({})).await,
            ret(json!(2))
        );
        assert_eq!(vm.agent().frozen_mountpoints(), ["/data", "/data2"]);
        for name in ["guest-fsfreeze-freeze", "guest-get-fsinfo", "guest-exec"] {
            let r = c.qga(name, json!({})).await;
            assert_eq!(r["error"]["class"], "CommandNotFound");
            assert_eq!(
                desc(&r),
                format!("Command {name} has been disabled: the command is not allowed")
            );
        }
        let info = c.qga("guest-info", json!({})).await;
        let enabled = |n: &str| {
            info["return"]["supported_commands"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == n && c["enabled"] == true)
        };
        assert!(enabled("guest-fsfreeze-thaw") && !enabled("guest-get-fsinfo"));
        assert_eq!(c.qga("guest-ping", json!({})).await, ret(json!({})));
        assert_eq!(c.qga("guest-fsfreeze-thaw", json!({})).await, ret(json!(2)));
        assert_eq!(c.qga("guest-fsfreeze-thaw", json!({})).await, ret(json!(0)));
        assert_eq!(
            c.qga("guest-fsfreeze-status", json!({})).await,
            ret(json!("thawed"))
        );
    })
    .await;
}

#[tokio::test]
async fn freeze_list_freezes_only_existing_mountpoints_and_zero_stays_thawed() {
    within(10, async {
        let (_d, vm) = vm(2).await;
        let mut c = Raw::connect(&vm.qga_path()).await;
        let none = c
            .qga(
                "guest-fsfreeze-freeze-list",
                json!({"mountpoints": ["/nonexistent"]}),
            )
            .await;
        assert_eq!(none, ret(json!(0)));
        assert_eq!(vm.agent().status(), SimFsStatus::Thawed);
        let one = c
            .qga(
                "guest-fsfreeze-freeze-list",
                json!({"mountpoints": ["/data2", "/x"]}),
            )
            .await;
        assert_eq!(one, ret(json!(1)));
        assert_eq!(vm.agent().frozen_mountpoints(), ["/data2"]);
    })
    .await;
}

#[tokio::test]
async fn restarted_agent_keeps_the_guest_frozen_and_loses_queued_requests() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut c = Raw::connect(&vm.qga_path()).await;
        assert_eq!(
            c.qga("guest-fsfreeze-freeze", json!({})).await,
            ret(json!(1))
        );
        vm.agent().pause();
        c.send(&request("guest-fsfreeze-thaw", json!({}))).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        vm.agent().restart();
        vm.agent().resume();
        assert_eq!(c.line_within(QUIET).await, None);
        assert_eq!(
            c.qga("guest-fsfreeze-status", json!({})).await,
            ret(json!("frozen"))
        );
        assert_eq!(vm.agent().status(), SimFsStatus::Frozen);
    })
    .await;
}

#[tokio::test]
async fn windows_guest_thaws_itself_after_the_vss_limit_and_the_next_thaw_fails() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        vm.agent().set_windows(true);
        vm.agent().set_vss_limit(Duration::from_millis(100));
        let mut c = Raw::connect(&vm.qga_path()).await;
        assert_eq!(
            c.qga("guest-get-osinfo", json!({})).await["return"]["id"],
            "mswindows"
        );
        assert_eq!(
            c.qga("guest-fsfreeze-freeze", json!({})).await,
            ret(json!(1))
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(vm.agent().status(), SimFsStatus::Thawed);
        assert_eq!(
            c.qga("guest-fsfreeze-status", json!({})).await,
            ret(json!("frozen"))
        );
        let thaw = c.qga("guest-fsfreeze-thaw", json!({})).await;
        assert_eq!(
            desc(&thaw),
            "couldn't hold writes: fsfreeze is limited up to 10 seconds: (error: 80042314)"
        );
        assert_eq!(
            c.qga("guest-fsfreeze-status", json!({})).await,
            ret(json!("thawed"))
        );
    })
    .await;
}

#[tokio::test]
async fn failed_hook_stays_thawed_partial_failure_stays_frozen_stuck_thaw_stays_frozen() {
    within(10, async {
        let (_d, vm) = vm(2).await;
        let mut c = Raw::connect(&vm.qga_path()).await;
        vm.agent().fail_freeze_hook(Some("hook said no".into()));
        assert_eq!(
            desc(&c.qga("guest-fsfreeze-freeze", json!({})).await),
            "hook said no"
        );
        assert_eq!(vm.agent().status(), SimFsStatus::Thawed);
        vm.agent().fail_freeze_hook(None);
        vm.agent()
            .fail_freeze_partially(Some("failed to freeze /data2".into()));
        assert_eq!(
            desc(&c.qga("guest-fsfreeze-freeze", json!({})).await),
            "failed to freeze /data2"
        );
        assert_eq!(vm.agent().frozen_mountpoints(), ["/data"]);
        vm.agent().fail_freeze_partially(None);
        vm.agent().stick_frozen(true);
        assert_eq!(c.qga("guest-fsfreeze-thaw", json!({})).await, ret(json!(1)));
        assert_eq!(vm.agent().status(), SimFsStatus::Frozen);
        assert_eq!(
            c.qga("guest-fsfreeze-status", json!({})).await,
            ret(json!("frozen"))
        );
    })
    .await;
}

#[tokio::test]
async fn paused_agent_answers_nothing_until_resumed_then_catches_up_in_order() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut c = Raw::connect(&vm.qga_path()).await;
        vm.agent().pause();
        c.send(&request("guest-sync", json!({"id": 1}))).await;
        c.send(&request("guest-sync", json!({"id": 2}))).await;
        assert_eq!(c.line_within(QUIET).await, None);
        vm.agent().resume();
        assert_eq!(c.json().await, ret(json!(1)));
        assert_eq!(c.json().await, ret(json!(2)));
    })
    .await;
}

#[tokio::test]
async fn scripted_garbage_lost_replies_and_unsolicited_bytes_reach_the_client() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut c = Raw::connect(&vm.qga_path()).await;
        vm.agent().drop_reply_to("guest-ping");
        vm.agent()
            .garbage_before_reply_to("guest-sync", b"{\"return\": 99}\n".to_vec());
        c.send(&request("guest-ping", json!({}))).await;
        assert_eq!(c.qga("guest-sync", json!({"id": 3})).await, ret(json!(99)));
        assert_eq!(c.json().await, ret(json!(3)));
        vm.agent()
            .send_unsolicited(b"{\"return\": \"boo\"}\n".to_vec());
        assert_eq!(c.json().await, ret(json!("boo")));
    })
    .await;
}

#[tokio::test]
async fn half_close_and_disconnect_client_end_the_connection() {
    within(10, async {
        let (_d, vm) = vm(1).await;
        let mut c = Raw::connect(&vm.qga_path()).await;
        c.stream.shutdown().await.unwrap();
        assert!(c.closed_within(Duration::from_secs(2)).await);
        let mut d = Raw::connect(&vm.qga_path()).await;
        assert_eq!(d.qga("guest-ping", json!({})).await, ret(json!({})));
        vm.agent().disconnect_client();
        assert!(d.closed_within(Duration::from_secs(2)).await);
        let fsinfo = Raw::connect(&vm.qga_path())
            .await
            .qga("guest-get-fsinfo", json!({}))
            .await;
        assert_eq!(fsinfo["return"][0]["disk"][0]["dev"], "/dev/vda");
        assert_eq!(fsinfo["return"][0]["mountpoint"], "/data");
    })
    .await;
}

#[tokio::test]
async fn standalone_agent_stops_and_removes_its_socket_when_dropped() {
    within(10, async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qga.sock");
        let agent = SimAgent::start(&path).await.unwrap();
        let started = Instant::now();
        assert_eq!(
            Raw::connect(&path).await.qga("guest-ping", json!({})).await,
            ret(json!({}))
        );
        drop(agent);
        assert!(!path.exists());
        assert!(started.elapsed() < Duration::from_secs(5));
    })
    .await;
}
