//! The coordinator and the `qsnap` binary against a real QEMU running the test guest.
//!
//! They need the image from `cargo xtask guest-image`; without it they fail (never skip).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

mod app;
mod backup;
mod cli;
mod exits;
mod fake;
mod faults;
mod proxy;
mod qemu72;
mod reliability;
mod schema;
mod scope;
mod sim_backup;
mod sim_faults;
mod snapshot;
mod soak;
mod units;

use qga::commands::{FsfreezeStatus, GuestFsfreezeStatus};
use qsnap::SnapshotRequest;
use qsnap_tests::{QemuVm, VmBuilder};
use serde_json::json;
use std::time::Duration;

pub(crate) use qsnap_tests::within;

pub(crate) use qsnap_tests::AGENT_BOOT;

/// Boots a VM and waits for its agent.
pub(crate) async fn booted(builder: VmBuilder) -> QemuVm {
    let vm = builder.start().await.unwrap();
    vm.wait_for_agent(AGENT_BOOT).await.unwrap();
    vm
}

/// A request for `vm` with the agent and the real `qsnap` binary as guardian.
pub(crate) fn request(vm: &QemuVm, name: &str) -> SnapshotRequest {
    SnapshotRequest::new(vm.qmp_path())
        .qga(vm.qga_path())
        .name(name)
        .guardian(env!("CARGO_BIN_EXE_qsnap"))
}

/// A fresh agent connection (waits while another client holds the socket).
pub(crate) async fn agent(vm: &QemuVm) -> qga::Client {
    let config = qga::Config::default().sync_timeout(Duration::from_secs(20));
    qga::Client::connect(vm.qga_path(), config).await.unwrap()
}

pub(crate) async fn fsstatus(vm: &QemuVm) -> FsfreezeStatus {
    agent(vm).await.execute(&GuestFsfreezeStatus).await.unwrap()
}

/// The size of a file in the guest, through the agent.
pub(crate) async fn guest_file_size(agent: &qga::Client, path: &str) -> u64 {
    let handle = agent
        .execute_raw("guest-file-open", json!({"path": path, "mode": "r"}))
        .await
        .unwrap();
    let seek = agent
        .execute_raw(
            "guest-file-seek",
            json!({"handle": handle, "offset": 0, "whence": "end"}),
        )
        .await
        .unwrap();
    agent
        .execute_raw("guest-file-close", json!({"handle": handle}))
        .await
        .unwrap();
    seek["position"].as_u64().unwrap()
}

/// The guest's writer appends to /data/writer.log every 100 ms: it is running if the
/// file grows within a second.
pub(crate) async fn writer_runs(vm: &QemuVm) -> bool {
    let agent = agent(vm).await;
    let before = guest_file_size(&agent, "/data/writer.log").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    guest_file_size(&agent, "/data/writer.log").await > before
}

/// Node names this project's runs created and QEMU still has.
pub(crate) async fn qsnap_nodes(vm: &QemuVm) -> Vec<String> {
    let qmp = vm.qmp().await.unwrap();
    let nodes = qmp
        .execute(&qmp::commands::QueryNamedBlockNodes { flat: Some(true) })
        .await
        .unwrap();
    nodes
        .into_iter()
        .filter_map(|n| n.node_name)
        .filter(|n| n.starts_with("qsnap-"))
        .collect()
}

/// Files in the VM directory whose name contains `.{name}.`.
pub(crate) fn overlay_files(vm: &QemuVm, name: &str) -> Vec<String> {
    std::fs::read_dir(vm.dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|f| f.contains(&format!(".{name}.")))
        .collect()
}

/// The guest is thawed, and no overlay file or node of snapshot `name` is left.
pub(crate) async fn assert_nothing_left(vm: &QemuVm, name: &str) {
    assert_eq!(fsstatus(vm).await, FsfreezeStatus::Thawed);
    assert_eq!(
        overlay_files(vm, name),
        Vec::<String>::new(),
        "stray overlay files"
    );
    assert_eq!(qsnap_nodes(vm).await, Vec::<String>::new(), "stray nodes");
}
