//! The guest-agent client against qemu-ga in the real guest.

use crate::{AGENT_BOOT, within};
use qga::commands::*;
use qsnap_tests::{Agent, QemuVm};
use std::time::{Duration, Instant};

async fn agent(vm: &QemuVm) -> qga::Client {
    let config = qga::Config::default().sync_timeout(AGENT_BOOT);
    qga::Client::connect(vm.qga_path(), config).await.unwrap()
}

#[tokio::test]
async fn ping_and_info_list_fsfreeze_as_enabled() {
    within(120, async {
        let vm = QemuVm::start().await.unwrap();
        let qga = agent(&vm).await;
        qga.execute(&GuestPing).await.unwrap();
        let info = qga.execute(&GuestInfo).await.unwrap();
        assert!(info.is_enabled("guest-fsfreeze-freeze"), "{info:?}");
        assert!(info.version.starts_with("10."), "{}", info.version);
        let os = qga.execute(&GuestGetOsinfo).await.unwrap();
        assert!(!os.is_windows());
        assert_eq!(os.machine.as_deref(), Some("x86_64"));
    })
    .await;
}

#[tokio::test]
async fn freeze_status_disabled_thaw_on_two_disks() {
    within(120, async {
        let vm = QemuVm::start().await.unwrap();
        let qga = agent(&vm).await;
        assert_eq!(qga.execute(&GuestFsfreezeFreeze).await.unwrap(), 2);
        assert_eq!(
            qga.execute(&GuestFsfreezeStatus).await.unwrap(),
            FsfreezeStatus::Frozen
        );
        let err = qga.execute(&GuestGetFsinfo).await.unwrap_err();
        assert!(err.is_disabled(), "{err:?}");
        let unknown = qga
            .execute_raw("guest-no-such-thing", serde_json::Value::Null)
            .await;
        assert!(
            matches!(unknown, Err(qga::Error::NotFound { .. })),
            "{unknown:?}"
        );
        assert_eq!(qga.execute(&GuestFsfreezeThaw).await.unwrap(), 2);
        assert_eq!(
            qga.execute(&GuestFsfreezeStatus).await.unwrap(),
            FsfreezeStatus::Thawed
        );
        let fs = qga.execute(&GuestGetFsinfo).await.unwrap();
        let mut mounts: Vec<_> = fs.iter().map(|f| f.mountpoint.as_str()).collect();
        mounts.sort_unstable();
        assert_eq!(mounts, ["/data", "/data2"]);
    })
    .await;
}

#[tokio::test]
async fn freeze_list_of_one_mountpoint_freezes_one() {
    within(120, async {
        let vm = QemuVm::start().await.unwrap();
        let qga = agent(&vm).await;
        let list = GuestFsfreezeFreezeList {
            mountpoints: Some(vec!["/data".into()]),
        };
        assert_eq!(qga.execute(&list).await.unwrap(), 1);
        assert_eq!(qga.execute(&GuestFsfreezeThaw).await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn client_connected_before_a_late_agent_reaches_it() {
    within(120, async {
        let vm = QemuVm::builder()
            .agent(Agent::Late(5))
            .start()
            .await
            .unwrap();
        let start = Instant::now();
        let qga = agent(&vm).await;
        let waited = start.elapsed();
        qga.execute(&GuestPing).await.unwrap();
        let id = qga.execute(&GuestSync { id: 77 }).await.unwrap();
        assert_eq!(id, 77);
        assert!(
            waited >= Duration::from_secs(5),
            "agent answered after {waited:?}"
        );
        assert!(vm.serial_log().contains("starting qemu-ga"));
    })
    .await;
}

#[tokio::test]
async fn after_stop_a_command_times_out_and_after_cont_the_next_gets_its_own_reply() {
    within(120, async {
        let vm = QemuVm::start().await.unwrap();
        let qga = agent(&vm).await;
        let qmp = vm.qmp().await.unwrap();
        qmp.execute(&qmp::commands::Stop).await.unwrap();
        let stale = qga
            .execute_with_timeout(&GuestSync { id: 1 }, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(stale, qga::Error::Timeout { .. }), "{stale:?}");
        qmp.execute(&qmp::commands::Cont).await.unwrap();
        // The stale reply (1) is queued ahead of ours; the resync must discard it.
        assert_eq!(qga.execute(&GuestSync { id: 2 }).await.unwrap(), 2);
        qga.execute(&GuestPing).await.unwrap();
    })
    .await;
}
