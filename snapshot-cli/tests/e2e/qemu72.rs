//! The QEMU that Debian 12 hosts run: a smoke subset of the real-guest tests against
//! bookworm's own QEMU 7.2 and qemu-ga 7.2 (with 7.2's fsfreeze hook dispatcher),
//! unpacked beside the image by `cargo xtask guest-image`. The rest of the suite runs
//! on bookworm-backports' 10.0.

use crate::*;

fn qemu72() -> VmBuilder {
    QemuVm::builder().qemu72(true)
}

/// The versions are the ones this file claims to test.
#[tokio::test]
async fn the_vm_runs_qemu_7_2_with_qemu_ga_7_2() {
    within(120, async {
        let vm = booted(qemu72()).await;
        let qmp = vm.qmp().await.unwrap();
        let v = qmp.execute(&qmp::commands::QueryVersion).await.unwrap();
        assert_eq!((v.qemu.major, v.qemu.minor), (7, 2), "{v:?}");
        let info = agent(&vm)
            .await
            .execute(&qga::commands::GuestInfo)
            .await
            .unwrap();
        assert!(info.version.starts_with("7.2."), "{}", info.version);
    })
    .await;
}

#[tokio::test]
async fn snapshot_info_and_commit_on_qemu_7_2() {
    crate::cli::snapshot_report_then_info_then_commit_restores_each_chain_on(qemu72()).await;
}

#[tokio::test]
async fn sigkill_while_frozen_on_qemu_7_2_the_guardian_thaws() {
    crate::cli::sigkill_while_frozen_the_guardian_thaws_within_5s_on(qemu72()).await;
}

#[tokio::test]
async fn a_freeze_answered_past_the_deadline_on_qemu_7_2_is_thawed_once_the_hook_ends() {
    crate::reliability::slow_hook_past_the_deadline_is_thawed_once_the_hook_ends_on(qemu72()).await;
}

#[tokio::test]
async fn a_database_in_a_snapshot_and_in_backups_on_qemu_7_2_opens_at_the_row_its_hook_logged() {
    crate::app::a_live_database_in_a_snapshot_and_in_backups_opens_with_an_empty_wal_at_the_row_its_hook_logged_on(qemu72()).await;
}
