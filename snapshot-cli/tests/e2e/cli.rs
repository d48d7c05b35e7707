//! The built `qsnap` binary: signals, the guardian, exit codes.

use crate::*;
use std::process::Stdio;
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) fn qsnap(vm: &QemuVm) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qsnap"));
    cmd.env("QSNAP_QMP", vm.qmp_path())
        .env("QSNAP_QGA", vm.qga_path())
        .env_remove("QSNAP_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

type Lines = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// Starts a snapshot that holds the guest frozen, and returns once it is frozen, with
/// the rest of its stderr (which the guardian shares).
async fn frozen_coordinator(vm: &QemuVm, name: &str) -> (Child, Lines) {
    let mut child = qsnap(vm)
        .args([
            "-v",
            "snapshot",
            "--name",
            name,
            "--debug-hold-frozen",
            "60s",
            "--freeze-timeout",
            "90s",
        ])
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    wait_for_line(&mut lines, "holding").await;
    (child, lines)
}

/// Reads stderr until a line contains `needle`; returns everything read.
async fn wait_for_line(lines: &mut Lines, needle: &str) -> String {
    let mut seen = String::new();
    loop {
        let Some(line) = lines.next_line().await.unwrap() else {
            panic!("stderr ended before {needle:?}:\n{seen}");
        };
        seen.push_str(&line);
        seen.push('\n');
        if line.contains(needle) {
            return seen;
        }
    }
}

async fn rest(mut lines: Lines) -> String {
    let mut all = String::new();
    while let Ok(Some(line)) = lines.next_line().await {
        all.push_str(&line);
        all.push('\n');
    }
    all
}

#[tokio::test]
async fn sigkill_while_frozen_the_guardian_thaws_within_5s() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2).writer(true)).await;
        let (mut child, mut stderr) = frozen_coordinator(&vm, "k").await;
        let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
        let killed = Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        child.wait().await.unwrap();
        // The agent serves one client at a time: let the guardian finish before looking.
        let log = wait_for_line(&mut stderr, "the guest reports thawed").await;
        let took = killed.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "thawed only after {took:?}:\n{log}"
        );
        assert!(log.contains("qsnap guardian"), "{log}");
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);
        assert!(writer_runs(&vm).await, "the writer must resume");
    })
    .await;
}

#[tokio::test]
async fn sigint_while_frozen_thaws_rolls_back_and_exits_130() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2)).await;
        let (mut child, stderr) = frozen_coordinator(&vm, "int").await;
        let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
        let status = child.wait().await.unwrap();
        let log = rest(stderr).await;
        assert_eq!(status.code(), Some(130), "{log}");
        assert!(log.contains("interrupted"), "{log}");
        assert!(
            !log.contains("qsnap guardian"),
            "the coordinator thawed; the guardian must not act:\n{log}"
        );
        assert_nothing_left(&vm, "int").await;
    })
    .await;
}

#[tokio::test]
async fn second_coordinator_on_the_same_vm_fails_within_1s() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(1)).await;
        let (mut first, _stderr) = frozen_coordinator(&vm, "one").await;
        let start = Instant::now();
        let second = qsnap(&vm)
            .args(["snapshot", "--name", "two"])
            .output()
            .await
            .unwrap();
        let took = start.elapsed();
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("another qsnap is already working"),
            "{stderr}"
        );
        assert!(took < Duration::from_secs(1), "{took:?}");
        first.start_kill().unwrap();
        first.wait().await.unwrap();
    })
    .await;
}
