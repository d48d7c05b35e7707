//! The faults of "always thawed, consistent or absent, nothing lost", on the real guest.

use crate::cli::{qsnap, run};
use crate::proxy::DelayProxy;
use crate::*;
use std::process::Stdio;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The guardian's log for `vm`.
fn guardian_log(vm: &QemuVm) -> String {
    let path = qsnap::guardian::log_path(&qsnap::lock_path(&vm.qmp_path()).unwrap());
    std::fs::read_to_string(path).unwrap_or_default()
}

async fn wait_for_guardian(vm: &QemuVm, needle: &str) -> String {
    loop {
        let log = guardian_log(vm);
        if log.contains(needle) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The disks' active nodes, in order.
async fn active_nodes(vm: &QemuVm) -> Vec<String> {
    let qmp = vm.qmp().await.unwrap();
    let blocks = qmp.execute(&qmp::commands::QueryBlock).await.unwrap();
    blocks
        .iter()
        .filter_map(|b| b.inserted.as_ref()?.node_name.clone())
        .collect()
}

/// Starts `qsnap -v snapshot ARGS` in its own process group and reads its stderr until
/// `needle`; then closes that stderr (the terminal is gone).
async fn started_then_terminal_gone(
    vm: &QemuVm,
    args: &[&str],
    needle: &str,
) -> tokio::process::Child {
    let mut child = qsnap(vm)
        .arg("-v")
        .arg("snapshot")
        .args(args)
        .process_group(0)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("stderr ended early");
        if line.contains(needle) {
            break;
        }
    }
    drop(lines);
    child
}

/// A snapshot `name` held frozen (60 s of a 90 s deadline), its terminal then gone.
async fn held_frozen_then_terminal_gone(vm: &QemuVm, name: &str) -> tokio::process::Child {
    let args = [
        "--name",
        name,
        "--debug-hold-frozen",
        "60s",
        "--freeze-timeout",
        "90s",
    ];
    started_then_terminal_gone(vm, &args, "holding").await
}

/// A slow fsfreeze hook (75 s) against a 3 s deadline: qemu-ga answers nothing while
/// the hook runs, not even a sync. qsnap writes the thaw behind the freeze at once,
/// reports that it could not confirm (exit 5), and its guardian keeps confirming until
/// the hook ends: the guest is then thawed. On the old main nobody thawed.
#[tokio::test]
async fn slow_hook_past_the_deadline_is_thawed_once_the_hook_ends() {
    slow_hook_past_the_deadline_is_thawed_once_the_hook_ends_on(QemuVm::builder()).await;
}

pub(crate) async fn slow_hook_past_the_deadline_is_thawed_once_the_hook_ends_on(base: VmBuilder) {
    within(300, async {
        let vm = booted(base.disks(2).writer(true).freeze_hook(75)).await;
        let start = Instant::now();
        let (code, _, err) = run(
            &vm,
            &["snapshot", "--name", "hook", "--freeze-timeout", "3s"],
        )
        .await;
        assert_eq!(code, 5, "{err}");
        assert!(err.contains("may still be frozen"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(overlay_files(&vm, "hook"), Vec::<String>::new());
        let log = wait_for_guardian(&vm, "the guest reports thawed").await;
        assert!(
            start.elapsed() > Duration::from_secs(70),
            "thawed before the hook ended?\n{log}"
        );
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);
        assert!(writer_runs(&vm).await);
        assert_eq!(qsnap_nodes(&vm).await, Vec::<String>::new());
    })
    .await;
}

/// The SSH session drops while frozen: stderr is a dead pipe, then SIGHUP. qsnap
/// treats it like SIGTERM — thaws, rolls back, exits 130 — and writing to the dead
/// stderr does not kill it.
#[tokio::test]
async fn sighup_with_the_terminal_gone_thaws_rolls_back_and_exits_130() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2).writer(true)).await;
        let mut child = held_frozen_then_terminal_gone(&vm, "hup").await;
        let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(130));
        assert_nothing_left(&vm, "hup").await;
        assert!(writer_runs(&vm).await);
        assert!(
            !guardian_log(&vm).contains("thawing"),
            "{}",
            guardian_log(&vm)
        );
    })
    .await;
}

/// `kill -9` of qsnap's whole process group with the terminal gone (what a closed
/// session or `pkill -9 qsnap` does): the guardian left that group and session, is not
/// named qsnap, logs to a file, and thaws.
#[tokio::test]
async fn sigkill_of_the_process_group_with_the_terminal_gone_the_guardian_thaws() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2).writer(true)).await;
        let mut child = held_frozen_then_terminal_gone(&vm, "kill").await;
        let guardians: Vec<_> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| {
                let dir = e.ok()?.path();
                let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
                let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
                let mine =
                    String::from_utf8_lossy(&cmdline).contains(&*vm.qga_path().to_string_lossy());
                (mine && Some(comm.trim()) == qsnap::guardian::PROCESS_NAME.to_str().ok())
                    .then_some(dir)
            })
            .collect();
        assert_eq!(
            guardians.len(),
            1,
            "one guardian named {:?}",
            qsnap::guardian::PROCESS_NAME
        );
        let pgid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL).unwrap();
        child.wait().await.unwrap();
        let log = wait_for_guardian(&vm, "the guest reports thawed").await;
        assert!(log.contains("ended while the guest may be frozen"), "{log}");
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);
        assert!(writer_runs(&vm).await);
    })
    .await;
}

/// A proxy in front of `vm`'s QMP socket that holds each `transaction` back `secs`
/// seconds; returns it (it stops when dropped) and its socket path.
fn slow_transactions(vm: &QemuVm, secs: u64) -> (DelayProxy, std::path::PathBuf) {
    let path = vm.dir().join("slow-qmp.sock");
    let proxy = DelayProxy::start(
        &path,
        &vm.qmp_path(),
        "transaction",
        Duration::from_secs(secs),
    );
    (proxy, path)
}

/// Runs a snapshot through a proxy that holds the transaction back 6 s, with a 3 s
/// deadline: the disks switch after the thaw.
async fn late_transaction(vm: &QemuVm, name: &str, extra: &[&str]) -> (i32, String) {
    let (_proxy, proxy_path) = slow_transactions(vm, 6);
    let proxy = proxy_path.display().to_string();
    let mut args = vec![
        "--qmp",
        &proxy,
        "snapshot",
        "--name",
        name,
        "--freeze-timeout",
        "3s",
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = run(vm, &args).await;
    (code, err)
}

/// Under `required`, a switch that came after the freeze deadline is merged back: the
/// chains are as before, no file or node is left, exit 3. (Old main kept both disks
/// on crash-consistent overlays and said "nothing was left behind".)
#[tokio::test]
async fn late_transaction_under_required_is_merged_back_and_exits_3() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2).writer(true)).await;
        let (code, err) = late_transaction(&vm, "late", &[]).await;
        assert_eq!(code, 3, "{err}");
        assert!(err.contains("undone"), "{err}");
        assert_eq!(active_nodes(&vm).await, ["disk0", "disk1"]);
        assert_nothing_left(&vm, "late").await;
        assert!(writer_runs(&vm).await);
    })
    .await;
}

/// Under `preferred` the late switch is kept, and said to be crash-consistent (exit 6).
#[tokio::test]
async fn late_transaction_under_preferred_is_kept_and_exits_6() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2)).await;
        let (code, err) = late_transaction(&vm, "latep", &["--quiesce", "preferred"]).await;
        assert_eq!(code, 6, "{err}");
        assert!(err.contains("only crash-consistent"), "{err}");
        assert_eq!(overlay_files(&vm, "latep").len(), 2);
        let active = active_nodes(&vm).await;
        assert!(active.iter().all(|n| n.starts_with("qsnap-")), "{active:?}");
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);
    })
    .await;
}

/// Ctrl-C while the (slow) transaction is in flight: thaw at once, then the switch
/// that still happens is merged back; exit 130 with the chains as before.
#[tokio::test]
async fn ctrl_c_during_a_late_transaction_merges_back_and_exits_130() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2)).await;
        let (_proxy, proxy_path) = slow_transactions(&vm, 6);
        let mut child = qsnap(&vm)
            .env("QSNAP_QMP", &proxy_path)
            .args([
                "-v",
                "snapshot",
                "--name",
                "intr",
                "--freeze-timeout",
                "30s",
            ])
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        loop {
            let line = lines
                .next_line()
                .await
                .unwrap()
                .expect("stderr ended early");
            if line.contains("frozen") && line.contains("filesystems") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
        let status = child.wait().await.unwrap();
        let mut rest = String::new();
        while let Ok(Some(l)) = lines.next_line().await {
            rest.push_str(&l);
            rest.push('\n');
        }
        assert_eq!(status.code(), Some(130), "{rest}");
        assert_eq!(active_nodes(&vm).await, ["disk0", "disk1"]);
        assert_nothing_left(&vm, "intr").await;
    })
    .await;
}

/// A loop device with the ext4 data disk on it.
struct Loop(String);

impl Loop {
    fn new(vm_dir: &std::path::Path) -> Self {
        let image = qsnap_tests::GuestImage::locate().unwrap();
        let raw = vm_dir.join("blockdev.raw");
        let ok = std::process::Command::new("qemu-img")
            .args(["convert", "-q", "-O", "raw"])
            .arg(image.disk(0))
            .arg(&raw)
            .status()
            .unwrap();
        assert!(ok.success());
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&raw)
            .stderr(Stdio::inherit())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "losetup failed (this test needs root and loop devices)"
        );
        Self(String::from_utf8(out.stdout).unwrap().trim().to_owned())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.0])
            .status();
    }
}

/// A disk on a host block device: its default overlay directory would be /dev (RAM).
/// Refused, with the way out named; with --overlay-dir the snapshot is quiesced and
/// the device becomes the frozen-in-time image.
#[tokio::test]
async fn loop_device_disk_is_refused_without_overlay_dir_and_correct_with_it() {
    within(180, async {
        let dir = tempfile::tempdir().unwrap();
        let dev = Loop::new(dir.path());
        let vm = booted(QemuVm::builder().disks(2).block_device_disk(&dev.0)).await;
        let (code, _, err) = run(&vm, &["snapshot", "--name", "blk"]).await;
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("--overlay-dir") && err.contains("RAM"),
            "{err}"
        );
        assert!(!std::path::Path::new(&format!("{}.blk.qcow2", dev.0)).exists());
        assert_nothing_left(&vm, "blk").await;
        let out = vm.dir().display().to_string();
        let (code, json, err) = run(
            &vm,
            &["--json", "snapshot", "--name", "blk", "--overlay-dir", &out],
        )
        .await;
        assert_eq!(code, 0, "{err}");
        let report: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(report["consistency"], "quiesced");
        assert_eq!(report["disks"][0]["backing_file"], dev.0.as_str());
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);
        let (code, _, err) = run(&vm, &["commit", "--disk", "vblk0"]).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(active_nodes(&vm).await[0], "disk0");
    })
    .await;
}

/// On a VM qsnap never snapshotted, `qsnap commit` would merge the VM's own overlay
/// into its base — on a host where that base is a golden image shared by other VMs,
/// that corrupts them. Refused by default, naming the flag; the chain is unchanged.
#[tokio::test]
async fn commit_refuses_an_overlay_qsnap_did_not_make() {
    within(120, async {
        let vm = booted(QemuVm::builder().disks(1)).await;
        let base = std::fs::read(vm.base(0)).unwrap();
        let (code, _, err) = run(&vm, &["commit", "--disk", "vblk0"]).await;
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains("--any-overlay") && err.contains("never touched"),
            "{err}"
        );
        assert_eq!(active_nodes(&vm).await, ["disk0"]);
        assert_eq!(
            std::fs::read(vm.base(0)).unwrap(),
            base,
            "the base was written"
        );
    })
    .await;
}

/// The cleanup after a late switch (here: the merge-back after a transaction held
/// back 9 s, with a 2 s deadline) runs past deadline + the guardian's 5 s grace. The
/// guest was confirmed thawed long before, so the guardian must not kill the
/// coordinator (old main: exit 137, no report, overlays left).
#[tokio::test]
async fn a_long_cleanup_after_the_thaw_is_not_killed_by_the_guardian() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2)).await;
        let (_proxy, proxy_path) = slow_transactions(&vm, 9);
        let proxy = proxy_path.display().to_string();
        let args = [
            "--qmp",
            &proxy,
            "snapshot",
            "--name",
            "long",
            "--freeze-timeout",
            "2s",
        ];
        let start = Instant::now();
        let (code, _, err) = run(&vm, &args).await;
        assert!(
            start.elapsed() > Duration::from_secs(8),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(code, 3, "{err}");
        assert_eq!(active_nodes(&vm).await, ["disk0", "disk1"]);
        assert_nothing_left(&vm, "long").await;
    })
    .await;
}
