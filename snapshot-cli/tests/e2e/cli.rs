//! The built `qsnap` binary: signals, the guardian, exit codes.

use crate::*;
use serde_json::json;
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
    frozen_coordinator_with(vm, name, "90s").await
}

/// As [`frozen_coordinator`], with its own freeze deadline.
async fn frozen_coordinator_with(vm: &QemuVm, name: &str, deadline: &str) -> (Child, Lines) {
    let mut child = qsnap(vm)
        .args([
            "-v",
            "snapshot",
            "--name",
            name,
            "--debug-hold-frozen",
            "60s",
        ])
        .args(["--freeze-timeout", deadline])
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

/// The guardian's log file for `vm` (beside the VM lock).
fn guardian_log(vm: &QemuVm) -> std::path::PathBuf {
    qsnap::guardian::log_path(&qsnap::lock_path(&vm.qmp_path()).unwrap())
}

/// Waits until the guardian's log has a line containing `needle`; returns the log.
async fn wait_for_guardian(vm: &QemuVm, needle: &str) -> String {
    loop {
        let log = std::fs::read_to_string(guardian_log(vm)).unwrap_or_default();
        if log.contains(needle) {
            return log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
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
    sigkill_while_frozen_the_guardian_thaws_within_5s_on(QemuVm::builder()).await;
}

pub(crate) async fn sigkill_while_frozen_the_guardian_thaws_within_5s_on(base: VmBuilder) {
    within(180, async {
        let vm = booted(base.disks(2).writer(true)).await;
        let (mut child, _stderr) = frozen_coordinator(&vm, "k").await;
        let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
        let killed = Instant::now();
        rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
        child.wait().await.unwrap();
        // The agent serves one client at a time: let the guardian finish before looking.
        let log = wait_for_guardian(&vm, "the guest reports thawed").await;
        let took = killed.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "thawed only after {took:?}:\n{log}"
        );
        assert!(log.contains("qsnap-guardian["), "{log}");
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);
        assert!(writer_runs(&vm).await, "the writer must resume");
    })
    .await;
}

/// QEMU dies while the guest is frozen, then the coordinator: no retry can reach that
/// agent, and the guardian must not hold the VM lock for its whole rescue time
/// (15 min) — it stops once QEMU's process (pid from the agent socket, watched through
/// a pidfd) has exited and nothing has listened on the socket for `GONE_AFTER`, so the
/// restarted VM can be snapshotted again.
#[tokio::test]
async fn a_guardian_whose_vm_is_gone_stops_and_frees_the_vm_lock() {
    within(180, async {
        let mut vm = booted(QemuVm::builder().disks(1)).await;
        let (mut child, _stderr) = frozen_coordinator(&vm, "gone").await;
        let qemu_pid = vm.pid().unwrap();
        vm.kill();
        let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
        // It may already have exited on the lost connections.
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        child.wait().await.unwrap();
        let gone = Instant::now();
        let log = wait_for_guardian(&vm, "has exited and every attempt").await;
        let sockets = [vm.qmp_path(), vm.qga_path()];
        let sockets: Vec<&std::path::Path> = sockets.iter().map(|p| p.as_path()).collect();
        while qsnap::VmLock::acquire_all(&sockets).is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = gone.elapsed();
        assert!(
            took < qsnap::guardian::GONE_AFTER + Duration::from_secs(20),
            "the VM lock came free only after {took:?}:\n{log}"
        );
        assert!(
            log.contains("coordinator"),
            "the guardian never started its rescue:\n{log}"
        );
        assert!(
            log.contains(&format!("(pid {qemu_pid})")),
            "the guardian watched another process than QEMU ({qemu_pid}):\n{log}"
        );
    })
    .await;
}

async fn signal_while_frozen_thaws_rolls_back_and_exits_130(signal: rustix::process::Signal) {
    let vm = booted(QemuVm::builder().disks(2)).await;
    let (mut child, stderr) = frozen_coordinator(&vm, "int").await;
    let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
    rustix::process::kill_process(pid, signal).unwrap();
    let status = child.wait().await.unwrap();
    let log = rest(stderr).await;
    assert_eq!(status.code(), Some(130), "{log}");
    assert!(log.contains("interrupted"), "{log}");
    // The guardian holds the VM lock until it exits: only then is its log final.
    let sockets = [vm.qmp_path(), vm.qga_path()];
    let sockets: Vec<&std::path::Path> = sockets.iter().map(|p| p.as_path()).collect();
    while qsnap::VmLock::acquire_all(&sockets).is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let guardian = std::fs::read_to_string(guardian_log(&vm)).unwrap_or_default();
    assert!(
        !guardian.contains("thawing"),
        "the coordinator thawed; the guardian must not act:\n{guardian}"
    );
    assert_nothing_left(&vm, "int").await;
}

#[tokio::test]
async fn sigint_while_frozen_thaws_rolls_back_and_exits_130() {
    within(
        180,
        signal_while_frozen_thaws_rolls_back_and_exits_130(rustix::process::Signal::INT),
    )
    .await;
}

#[tokio::test]
async fn sigterm_while_frozen_thaws_rolls_back_and_exits_130() {
    within(
        180,
        signal_while_frozen_thaws_rolls_back_and_exits_130(rustix::process::Signal::TERM),
    )
    .await;
}

/// A coordinator that hangs while frozen (here: stopped with SIGSTOP) is killed by the
/// guardian once the freeze deadline plus the grace period has passed, and the guest
/// is thawed.
#[tokio::test]
async fn hung_coordinator_is_killed_by_the_guardian_which_thaws() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(1)).await;
        let (mut child, _stderr) = frozen_coordinator_with(&vm, "hang", "2s").await;
        let pid = rustix::process::Pid::from_raw(child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, rustix::process::Signal::STOP).unwrap();
        let stopped = Instant::now();
        let log = wait_for_guardian(&vm, "the guest reports thawed").await;
        assert!(log.contains("killing it"), "{log}");
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), None, "killed by a signal");
        // Deadline 2 s + grace 5 s from arming, plus the time to reach the agent.
        assert!(
            stopped.elapsed() < Duration::from_secs(12),
            "{:?}",
            stopped.elapsed()
        );
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);
    })
    .await;
}

#[tokio::test]
async fn second_coordinator_on_the_same_vm_fails_at_once_without_waiting_for_the_socket() {
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
        assert!(stderr.contains("another qsnap"), "{stderr}");
        // It must not wait for the busy socket's greeting timeout (5 s) or longer.
        assert!(took < Duration::from_secs(4), "{took:?}");
        first.start_kill().unwrap();
        first.wait().await.unwrap();
    })
    .await;
}

/// Runs the built binary to completion: (exit code, stdout, stderr). With `--json`,
/// its output is checked against the published schema.
pub(crate) async fn run(vm: &QemuVm, args: &[&str]) -> (i32, String, String) {
    let out = qsnap(vm).args(args).output().await.unwrap();
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // Every `--json` run of the binary in these tests also checks the published schema.
    crate::schema::check_output(args, code, &stdout);
    (
        code,
        stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `--json` output: exactly one JSON object.
fn json_of(stdout: &str) -> serde_json::Value {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON object expected: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

#[tokio::test]
async fn read_only_commands_against_the_real_guest() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2)).await;
        let (code, out, err) = run(&vm, &["--json", "info"]).await;
        assert_eq!(code, 0, "{err}");
        let info = json_of(&out);
        assert_eq!(info["status"], "running");
        assert!(info["qemu_version"].as_str().unwrap().starts_with("10."));
        assert_eq!(info["disks"].as_array().unwrap().len(), 2);
        assert_eq!(info["disks"][1]["device"], "vblk1");
        assert_eq!(info["disks"][1]["chain"].as_array().unwrap().len(), 2);
        assert_eq!(info["agent"]["present"], true);
        assert_eq!(info["agent"]["fsfreeze"], "thawed");
        assert_eq!(info["agent"]["fsfreeze_supported"], true);

        let (code, out, _) = run(&vm, &["info"]).await;
        assert_eq!(code, 0);
        assert!(
            out.contains("disk disk0 device vblk0") && out.contains("fsfreeze supported"),
            "{out}"
        );

        let (code, out, _) = run(&vm, &["--json", "ping"]).await;
        assert_eq!((code, json_of(&out)["ok"].clone()), (0, json!(true)));
        let (code, out, _) = run(&vm, &["--json", "fsstatus"]).await;
        assert_eq!(
            (code, json_of(&out)["status"].clone()),
            (0, json!("thawed"))
        );
        let (code, out, _) = run(&vm, &["qmp", "query-status"]).await;
        assert_eq!((code, json_of(&out)["running"].clone()), (0, json!(true)));
        let (code, out, _) = run(
            &vm,
            &["qmp", "query-named-block-nodes", r#"{"flat": true}"#],
        )
        .await;
        assert_eq!(code, 0);
        assert!(json_of(&out).as_array().unwrap().len() >= 4);
        let (code, out, _) = run(&vm, &["qga", "guest-info"]).await;
        assert_eq!(code, 0);
        assert!(
            json_of(&out)["version"]
                .as_str()
                .unwrap()
                .starts_with("10.")
        );
        let (code, out, _) = run(&vm, &["completions", "bash"]).await;
        assert!(code == 0 && out.contains("_qsnap()"), "{out}");
        let (code, out, _) = run(&vm, &["man"]).await;
        assert!(code == 0 && out.contains(".TH qsnap 1") && out.contains("snapshot"));
    })
    .await;
}

#[tokio::test]
async fn freeze_and_thaw_from_the_command_line() {
    within(180, async {
        let vm = booted(QemuVm::builder().disks(2)).await;
        let (code, out, err) = run(&vm, &["--json", "freeze"]).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(json_of(&out)["frozen_filesystems"], 2);
        let (_, out, _) = run(&vm, &["fsstatus"]).await;
        assert!(out.starts_with("frozen"), "{out}");
        let (code, out, _) = run(&vm, &["--json", "thaw"]).await;
        assert_eq!(code, 0);
        assert_eq!(
            json_of(&out),
            json!({"thawed_filesystems": 2, "status": "thawed"})
        );
        let (_, out, _) = run(&vm, &["freeze", "--mountpoint", "/data"]).await;
        assert!(out.starts_with("froze 1 filesystem"), "{out}");
        let (_, out, _) = run(&vm, &["thaw"]).await;
        assert!(out.starts_with("thawed 1 filesystem"), "{out}");
    })
    .await;
}

#[tokio::test]
async fn snapshot_report_then_info_then_commit_restores_each_chain() {
    snapshot_report_then_info_then_commit_restores_each_chain_on(QemuVm::builder()).await;
}

pub(crate) async fn snapshot_report_then_info_then_commit_restores_each_chain_on(base: VmBuilder) {
    within(180, async {
        let vm = booted(base.disks(2).writer(true)).await;
        let (code, out, err) = run(&vm, &["--json", "snapshot", "--name", "cli1"]).await;
        assert_eq!(code, 0, "{err}");
        let r = json_of(&out);
        assert_eq!(r["name"], "cli1");
        assert_eq!(r["consistency"], "quiesced");
        assert_eq!(
            (
                r["frozen_filesystems"].as_u64(),
                r["thawed_filesystems"].as_u64()
            ),
            (Some(2), Some(2))
        );
        for (i, d) in r["disks"].as_array().unwrap().iter().enumerate() {
            assert_eq!(d["node"], format!("disk{i}"));
            assert!(d["overlay_node"].as_str().unwrap().starts_with("qsnap-"));
            assert!(
                d["overlay_file"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("disk{i}.cli1.qcow2"))
            );
            assert_eq!(d["backing_file"], vm.disks()[i].display().to_string());
        }
        // The end state, read from QEMU and the disk rather than from the report.
        assert_eq!(overlay_files(&vm, "cli1").len(), 2);
        assert_eq!(
            qsnap_nodes(&vm).await.len(),
            4,
            "two overlay nodes + two file nodes"
        );
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);

        let (_, out, _) = run(&vm, &["--json", "info"]).await;
        let info = json_of(&out);
        assert_eq!(info["disks"][0]["chain"].as_array().unwrap().len(), 3);

        for (i, disk) in ["vblk0", "vblk1"].iter().enumerate() {
            let (code, out, err) = run(&vm, &["--json", "commit", "--disk", disk]).await;
            assert_eq!(code, 0, "{err}");
            let c = json_of(&out);
            assert_eq!(c["base"], format!("disk{i}"));
            let chain: Vec<String> = serde_json::from_value(c["chain"].clone()).unwrap();
            assert_eq!(
                chain,
                [
                    vm.disks()[i].display().to_string(),
                    vm.base(i).display().to_string()
                ]
            );
            assert_eq!(
                c["removed_overlay"],
                vm.dir()
                    .join(format!("disk{i}.cli1.qcow2"))
                    .display()
                    .to_string()
            );
        }
        assert_eq!(
            overlay_files(&vm, "cli1"),
            Vec::<String>::new(),
            "merged files removed"
        );
        assert_eq!(
            qsnap_nodes(&vm).await,
            Vec::<String>::new(),
            "nodes released"
        );
        // The chain is as before, so the same disks can be snapshotted again.
        let (code, out, _) = run(&vm, &["snapshot", "--name", "cli2"]).await;
        assert_eq!(code, 0);
        assert!(
            out.contains("snapshot cli2: quiesced: 2 filesystem(s)"),
            "{out}"
        );
    })
    .await;
}

#[tokio::test]
async fn events_prints_qmp_events_as_json_lines_until_qemu_exits() {
    within(90, async {
        let vm = booted(QemuVm::builder().disks(1)).await;
        let events = qsnap(&vm).arg("events").spawn().unwrap();
        // Give `events` the QMP socket first (QEMU serves one client at a time).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let poweroff = r#"{"path": "/bin/busybox", "arg": ["poweroff", "-f"]}"#;
        let (code, _, err) = run(&vm, &["qga", "guest-exec", poweroff]).await;
        assert_eq!(code, 0, "{err}");
        let out = events.wait_with_output().await.unwrap();
        assert_eq!(out.status.code(), Some(0));
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let event = serde_json::from_str::<serde_json::Value>(l).unwrap();
                // `events` prints JSON lines with or without --json: the contract.
                crate::schema::valid("event", &event);
                event["event"].as_str().unwrap().to_owned()
            })
            .collect();
        assert!(names.contains(&"SHUTDOWN".to_owned()), "{names:?}");
    })
    .await;
}
