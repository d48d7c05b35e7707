//! Backups on the real guest: what a restored image holds is exactly what the guest
//! had written at the backup's instant, and no change is ever lost between backups.

use crate::*;
use qsnap::backup::manifest::Kind;
use qsnap::{BackupReport, BackupRequest, CancellationToken, Consistency};
use qsnap_tests::inspect;
use std::path::{Path, PathBuf};

/// A backup request for `vm` into `dir`.
/// A backup request for `vm` into `dir`. The freeze budget is 30 s: these tests run
/// beside other TCG guests on 2 cores, where a freeze right after a burst of writes was
/// seen to take most of the default 10 s (and the run then honestly exits 5).
pub(crate) fn backup_request(vm: &QemuVm, dir: &Path, incremental: bool) -> BackupRequest {
    let mut vm_req = request(vm, "unused");
    vm_req.freeze_timeout = Duration::from_secs(30);
    BackupRequest::new(vm_req, dir).incremental(incremental)
}

pub(crate) async fn backup(vm: &QemuVm, dir: &Path, incremental: bool) -> BackupReport {
    let req = backup_request(vm, dir, incremental);
    qsnap::backup(&req, &CancellationToken::new(), &mut |_| {})
        .await
        .unwrap()
}

/// Runs `script` with /bin/sh in the guest (guest-exec) and waits for it.
pub(crate) async fn guest_sh(vm: &QemuVm, script: &str) {
    let agent = agent(vm).await;
    let pid = agent
        .execute_raw(
            "guest-exec",
            json!({"path": "/bin/sh", "arg": ["-c", script], "capture-output": true}),
        )
        .await
        .unwrap()["pid"]
        .as_u64()
        .unwrap();
    for _ in 0..600 {
        let st = agent
            .execute_raw("guest-exec-status", json!({"pid": pid}))
            .await
            .unwrap();
        if st["exited"] == true {
            assert_eq!(st["exitcode"], 0, "{script}: {st}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{script} did not finish");
}

/// A whole guest file, through the agent.
pub(crate) async fn guest_file(vm: &QemuVm, path: &str) -> Vec<u8> {
    let agent = agent(vm).await;
    let handle = agent
        .execute_raw("guest-file-open", json!({"path": path, "mode": "r"}))
        .await
        .unwrap();
    let mut all = Vec::new();
    loop {
        let r = agent
            .execute_raw(
                "guest-file-read",
                json!({"handle": handle, "count": 1 << 19}),
            )
            .await
            .unwrap();
        let chunk = base64_decode(r["buf-b64"].as_str().unwrap());
        all.extend_from_slice(&chunk);
        if r["eof"] == true || chunk.is_empty() {
            break;
        }
    }
    agent
        .execute_raw("guest-file-close", json!({"handle": handle}))
        .await
        .unwrap();
    all
}

/// Standard base64 (the agent's file reads), without padding checks.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').map(val).collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let n =
            chunk.iter().fold(0u32, |acc, &v| (acc << 6) | u32::from(v)) << (6 * (4 - chunk.len()));
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..chunk.len()]);
    }
    out
}

/// The guest uptimes at which the fsfreeze hook (`freeze_hook(0)`) logged `what`
/// (`freeze start`, `thaw start`), in order.
fn hook_times(vm: &QemuVm, what: &str) -> Vec<f64> {
    let tag = format!("qsnap-hook: {what} ");
    vm.serial_log()
        .lines()
        .filter_map(|l| l.split_once(&tag)?.1.trim().parse().ok())
        .collect()
}

/// Restores `disk` of the backup to a raw image in `into` and checks it: a clean
/// ext4 whose writer.log is a prefix of the live one that ends between the freeze
/// and the thaw of backup number `n` (0-based) — every line written before the
/// freeze, none written after the thaw. Returns the restored image.
fn check_restored(
    vm: &QemuVm,
    report: &BackupReport,
    disk: &str,
    mountpoint_log: &[u8],
    n: usize,
    into: &Path,
) -> PathBuf {
    let to = into.join(format!("{}-{disk}.raw", report.manifest.id));
    let r = qsnap::backup::restore(
        &report.manifest_path,
        Some(disk),
        &to,
        "raw",
        &Default::default(),
    )
    .unwrap();
    assert_eq!(
        Some(&r.sha256),
        report.manifest.disk(disk).unwrap().sha256.as_ref()
    );
    assert!(
        inspect::ext4_clean(&to).unwrap(),
        "{disk}: not a clean ext4"
    );
    let log = inspect::ext4_file(&to, "/writer.log").unwrap();
    assert!(
        !log.is_empty() && log.ends_with(b"\n"),
        "{disk}: torn writer.log"
    );
    assert!(
        mountpoint_log.starts_with(&log),
        "{disk}: not a prefix of the live log"
    );
    let freeze = hook_times(vm, "freeze start")[n];
    let thaw = hook_times(vm, "thaw start")[n];
    let text = String::from_utf8(log.clone()).unwrap();
    let last: f64 = text.lines().last().unwrap().parse().unwrap();
    assert!(last <= thaw, "{disk}: line {last} after the thaw at {thaw}");
    let live = String::from_utf8(mountpoint_log.to_vec()).unwrap();
    let next: f64 = live
        .lines()
        .nth(text.lines().count())
        .unwrap()
        .parse()
        .unwrap();
    // A line computed just before the freeze may block in write() until the thaw:
    // one writer period (100 ms) of slack.
    assert!(
        next >= freeze - 0.25,
        "{disk}: line {next} written well before the freeze at {freeze} is missing"
    );
    to
}

#[tokio::test]
async fn full_then_incremental_each_restore_exactly_the_writers_lines_at_their_instant() {
    within(300, async {
        let vm = booted(QemuVm::builder().disks(2).writer(true).freeze_hook(0)).await;
        // Realistic data: 8 MiB on each disk before the full backup.
        guest_sh(&vm, "head -c 8388608 /dev/urandom > /data/bulk && head -c 8388608 /dev/urandom > /data2/bulk && sync").await;
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let full = backup(&vm, dir.path(), true).await;
        assert_eq!(full.manifest.kind, Kind::Full);
        assert!(full.manifest.full_reason.as_deref().unwrap().contains("no complete earlier backup"));
        assert_eq!(full.manifest.consistency, Consistency::Quiesced);
        assert_eq!(full.manifest.frozen_filesystems, 2);
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let inc = backup(&vm, dir.path(), true).await;
        assert_eq!(inc.manifest.kind, Kind::Incremental);
        assert_eq!(inc.manifest.parent.as_deref(), Some(full.manifest.id.as_str()));
        assert_eq!(inc.retired_bitmaps.len(), 2, "{:?}", inc.retired_bitmaps);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let logs = [
            guest_file(&vm, "/data/writer.log").await,
            guest_file(&vm, "/data2/writer.log").await,
        ];
        for (i, disk) in ["vblk0", "vblk1"].iter().enumerate() {
            let f = full.manifest.disk(disk).unwrap();
            let n = inc.manifest.disk(disk).unwrap();
            eprintln!("{disk}: full {} B, incremental {} B", f.data_bytes, n.data_bytes);
            assert!(
                n.data_bytes * 8 < f.data_bytes,
                "{disk}: the incremental holds {} of the full's {} bytes",
                n.data_bytes,
                f.data_bytes
            );
            let a = check_restored(&vm, &full, disk, &logs[i], 0, out.path());
            let b = check_restored(&vm, &inc, disk, &logs[i], 1, out.path());
            let (la, lb) = (
                inspect::ext4_file(&a, "/writer.log").unwrap().len(),
                inspect::ext4_file(&b, "/writer.log").unwrap().len(),
            );
            assert!(lb > la, "{disk}: the incremental's log must be longer");
        }
        let v = qsnap::backup::verify(&inc.manifest_path, &Default::default()).unwrap();
        assert_eq!(v.chain, [full.manifest.id.clone(), inc.manifest.id.clone()]);
        assert_eq!(v.images, 4);
        // Only the newest generation of bitmaps is left on the disks.
        let qmp = vm.qmp().await.unwrap();
        for b in qmp.execute(&qmp::commands::QueryBlock).await.unwrap() {
            let names: Vec<_> = b.inserted.unwrap().dirty_bitmaps.iter().map(|x| x.name().to_owned()).collect();
            assert_eq!(names, [format!("qsnap-{}", inc.manifest.id)]);
        }
    })
    .await;
}

/// `path` (under /data, the first disk's mountpoint) in the restored raw image equals
/// the guest's live file.
async fn same_file(vm: &QemuVm, raw: &Path, path: &str) {
    let in_fs = path.strip_prefix("/data").unwrap();
    let restored = inspect::ext4_file(raw, in_fs).unwrap();
    let live = guest_file(vm, path).await;
    assert!(!live.is_empty(), "{path} is empty in the guest");
    let first = restored.iter().zip(&live).position(|(a, b)| a != b);
    assert!(
        restored == live,
        "{path}: the restored copy differs from the guest's ({} vs {} bytes, first difference at {first:?})",
        restored.len(),
        live.len()
    );
}

pub(crate) fn restore_raw(report: &BackupReport, into: &Path) -> PathBuf {
    let to = into.join(format!("{}.raw", report.manifest.id));
    qsnap::backup::restore(
        &report.manifest_path,
        Some("vblk0"),
        &to,
        "raw",
        &Default::default(),
    )
    .unwrap();
    assert!(inspect::ext4_clean(&to).unwrap());
    to
}

fn bitmaps(blocks: &[qmp::commands::BlockInfo]) -> Vec<String> {
    blocks[0]
        .inserted
        .as_ref()
        .unwrap()
        .dirty_bitmaps
        .iter()
        .map(|b| b.name().to_owned())
        .collect()
}

async fn disk_bitmaps(vm: &QemuVm) -> Vec<String> {
    let qmp = vm.qmp().await.unwrap();
    bitmaps(&qmp.execute(&qmp::commands::QueryBlock).await.unwrap())
}

#[tokio::test]
async fn bitmaps_survive_snapshot_commit_and_a_clean_restart_and_an_unclean_exit_means_full() {
    within(420, async {
        let mut vm = booted(QemuVm::builder().disks(1).writer(true)).await;
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let full = backup(&vm, dir.path(), false).await;
        assert_eq!(full.manifest.kind, Kind::Full);
        assert!(full.manifest.full_reason.is_none());

        // Changes before a snapshot, while on the overlay, and then merged back.
        guest_sh(&vm, "head -c 1048576 /dev/urandom > /data/a && sync").await;
        qsnap::snapshot(&request(&vm, "mid"), &CancellationToken::new())
            .await
            .unwrap();
        guest_sh(&vm, "head -c 1048576 /dev/urandom > /data/b && sync").await;
        // A backup while the disk runs on the overlay gathers the bitmap's copies.
        let on_overlay = backup(&vm, dir.path(), true).await;
        assert_eq!(
            on_overlay.manifest.kind,
            Kind::Incremental,
            "{:?}",
            on_overlay.manifest.full_reason
        );
        let raw = restore_raw(&on_overlay, out.path());
        same_file(&vm, &raw, "/data/a").await;
        same_file(&vm, &raw, "/data/b").await;
        guest_sh(&vm, "head -c 1048576 /dev/urandom > /data/a2 && sync").await;
        let commit = qsnap::CommitRequest::new(vm.qmp_path(), "vblk0");
        qsnap::commit(&commit, |_| {}, &CancellationToken::new())
            .await
            .unwrap();
        let inc1 = backup(&vm, dir.path(), true).await;
        assert_eq!(
            inc1.manifest.kind,
            Kind::Incremental,
            "{:?}",
            inc1.manifest.full_reason
        );
        let raw = restore_raw(&inc1, out.path());
        for f in ["/data/a", "/data/b", "/data/a2"] {
            same_file(&vm, &raw, f).await;
        }

        // A clean QEMU restart keeps the bitmap (stored in the qcow2 image).
        vm.restart(true).await.unwrap();
        vm.wait_for_agent(AGENT_BOOT).await.unwrap();
        assert_eq!(
            disk_bitmaps(&vm).await,
            [format!("qsnap-{}", inc1.manifest.id)]
        );
        guest_sh(&vm, "head -c 1048576 /dev/urandom > /data/c && sync").await;
        let inc2 = backup(&vm, dir.path(), true).await;
        assert_eq!(
            inc2.manifest.kind,
            Kind::Incremental,
            "{:?}",
            inc2.manifest.full_reason
        );
        assert_eq!(
            inc2.manifest.parent.as_deref(),
            Some(inc1.manifest.id.as_str())
        );
        let raw = restore_raw(&inc2, out.path());
        for f in ["/data/a", "/data/b", "/data/a2", "/data/c"] {
            same_file(&vm, &raw, f).await;
        }
        qsnap::backup::verify(&inc2.manifest_path, &Default::default()).unwrap();

        // QEMU killed: the bitmap (stored by a clean close, then marked in use when
        // opened) is inconsistent, so the next backup is full, and says why.
        vm.restart(true).await.unwrap();
        vm.wait_for_agent(AGENT_BOOT).await.unwrap();
        vm.restart(false).await.unwrap();
        vm.wait_for_agent(AGENT_BOOT).await.unwrap();
        let after = backup(&vm, dir.path(), true).await;
        assert_eq!(after.manifest.kind, Kind::Full);
        let why = after.manifest.full_reason.clone().unwrap();
        assert!(
            why.contains("inconsistent") && why.contains("did not shut down cleanly"),
            "{why}"
        );
        assert!(
            after
                .manifest
                .warnings
                .iter()
                .any(|w| w.contains("inconsistent"))
        );
        // The inconsistent generation was retired along with the chain it served.
        assert_eq!(
            disk_bitmaps(&vm).await,
            [format!("qsnap-{}", after.manifest.id)]
        );
        let raw = restore_raw(&after, out.path());
        same_file(&vm, &raw, "/data/c").await;
    })
    .await;
}

/// A size-limited tmpfs mounted over a fresh directory, unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(
            st.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Self(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.0.path())
            .status();
    }
}

/// Fills the filesystem of `dir` with a file `filler` until `leave` bytes are free.
fn fill(dir: &Path, leave: u64) {
    let free = rustix::fs::statvfs(dir).unwrap();
    let len = (free.f_bavail * free.f_frsize).saturating_sub(leave);
    std::fs::write(dir.join("filler"), vec![1u8; usize::try_from(len).unwrap()]).unwrap();
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_copy_that_fails_on_a_full_target_and_a_qsnap_killed_mid_copy_lose_no_change() {
    within(420, async {
        let vm = booted(QemuVm::builder().disks(1)).await;
        guest_sh(&vm, "head -c 8388608 /dev/urandom > /data/bulk && sync").await;
        let fs = SmallFs::mount("32m");
        let dir = fs.path();
        let out = tempfile::tempdir().unwrap();
        let full = backup(&vm, dir, false).await;
        let before = names(dir);

        // No room for the copy: refused before anything changes.
        guest_sh(&vm, "head -c 6291456 /dev/urandom > /data/big && sync").await;
        fill(dir, 1 << 20);
        let req = backup_request(&vm, dir, true);
        let err = qsnap::backup(&req, &CancellationToken::new(), &mut |_| {})
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 1, "{err:?}");
        assert!(err.to_string().contains("MiB free"), "{err}");
        std::fs::remove_file(dir.join("filler")).unwrap();
        assert_eq!(names(dir), before);

        // Room when qsnap looked, but another writer fills the filesystem while the
        // (rate-limited) copy runs: the copy fails mid-way. The filesystem fills only
        // once the copy is under way and the guest quiet (its writer is off): a guest
        // write that needs a cluster copied while the target is failing fails itself —
        // right at the thaw, that was seen to stall the guest's agent (exit 5).
        let mut req = backup_request(&vm, dir, true);
        req.speed = Some(256 << 10);
        let d = dir.to_owned();
        let mut filled = false;
        let mut on_progress = |p: qsnap::commit::Progress| {
            if p.current > 0 && !filled {
                filled = true;
                fill(&d, 64 << 10);
            }
        };
        let err = qsnap::backup(&req, &CancellationToken::new(), &mut on_progress)
            .await
            .unwrap_err();
        assert!(filled, "the copy never started");
        assert_eq!(err.exit_code(), 4, "{err:?}");
        assert!(matches!(err, qsnap::Error::BackupFailed { .. }), "{err}");
        std::fs::remove_file(dir.join("filler")).unwrap();
        assert_eq!(names(dir), before, "the failed backup left files");
        assert_eq!(
            disk_bitmaps(&vm).await,
            [format!("qsnap-{}", full.manifest.id)]
        );
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);
        assert!(qsnap_nodes(&vm).await.is_empty());

        // qsnap killed mid-copy (a slow copy, SIGKILL once it runs).
        guest_sh(&vm, "head -c 2097152 /dev/urandom > /data/more && sync").await;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_qsnap"))
            .args([
                "backup",
                "--incremental",
                "--freeze-timeout",
                "30s",
                "--speed",
                "256K",
                "--target",
            ])
            .arg(dir)
            .env("QSNAP_QMP", vm.qmp_path())
            .env("QSNAP_QGA", vm.qga_path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while names(dir).len() == before.len() && started.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(fsstatus(&vm).await, FsfreezeStatus::Thawed);

        // The next incremental cleans up after the dead run and covers every change.
        let inc = backup(&vm, dir, true).await;
        assert_eq!(
            inc.manifest.kind,
            Kind::Incremental,
            "{:?}",
            inc.manifest.full_reason
        );
        assert_eq!(
            inc.manifest.parent.as_deref(),
            Some(full.manifest.id.as_str())
        );
        assert!(
            inc.manifest
                .warnings
                .iter()
                .any(|w| w.contains("died mid-copy")),
            "{:?}",
            inc.manifest.warnings
        );
        let listed = qsnap::backup::list(dir).unwrap();
        assert_eq!(listed.incomplete.len(), 1);
        assert_eq!(
            listed.incomplete[0].state,
            qsnap::backup::manifest::State::Failed
        );
        assert_eq!(
            disk_bitmaps(&vm).await,
            [format!("qsnap-{}", inc.manifest.id)]
        );
        assert!(qsnap_nodes(&vm).await.is_empty());
        let raw = restore_raw(&inc, out.path());
        for f in ["/data/bulk", "/data/big", "/data/more"] {
            same_file(&vm, &raw, f).await;
        }
        qsnap::backup::verify(&inc.manifest_path, &Default::default()).unwrap();
    })
    .await;
}

/// The `qsnap` binary's backup commands: JSON events and report, listing, verify
/// catching a corrupted image (exit 8), restore refusing to overwrite.
#[tokio::test]
async fn the_backup_commands_of_the_binary_keep_their_contract() {
    within(300, async {
        let vm = booted(QemuVm::builder().disks(2).writer(true)).await;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().display().to_string();
        let (code, out, err) =
            crate::cli::run(&vm, &["--json", "backup", "--target", &target]).await;
        assert_eq!(code, 0, "{err}");
        let lines: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let report = lines.last().unwrap();
        assert!(
            lines[..lines.len() - 1]
                .iter()
                .all(|l| l["event"] == "progress"),
            "{out}"
        );
        assert_eq!(report["manifest"]["state"], "complete");
        assert_eq!(report["manifest"]["consistency"], "quiesced");
        assert_eq!(report["manifest"]["disks"].as_array().unwrap().len(), 2);
        let full_manifest = report["manifest_path"].as_str().unwrap().to_owned();

        tokio::time::sleep(Duration::from_secs(1)).await;
        let metrics = tempfile::tempdir().unwrap();
        let prom = metrics.path().join("qsnap-backup.prom");
        let (code, out, err) = crate::cli::run(
            &vm,
            &[
                "backup",
                "--target",
                &target,
                "--incremental",
                "--metrics-file",
                prom.to_str().unwrap(),
            ],
        )
        .await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("(incremental on "), "{out}");
        let samples = crate::app::Samples::scrape(metrics.path(), &vm, "backup");
        assert_eq!(samples.get("qsnap_last_backup_incremental"), 1.0);
        assert_eq!(samples.consistency("quiesced"), 1.0);

        let (code, out, _) = crate::cli::run(&vm, &["--json", "backups", &target]).await;
        assert_eq!(code, 0);
        let listed: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let chain = listed["chains"][0]["backups"].as_array().unwrap();
        assert_eq!(chain.len(), 2);
        let inc_manifest = chain[1]["manifest"].as_str().unwrap().to_owned();
        let written: u64 = qsnap::backup::manifest::Manifest::load(Path::new(&inc_manifest))
            .unwrap()
            .disks
            .iter()
            .map(|d| d.file_bytes)
            .sum();
        #[allow(clippy::cast_precision_loss, reason = "small test images")]
        let written = written as f64;
        assert_eq!(samples.get("qsnap_last_backup_bytes"), written);

        let (code, out, err) = crate::cli::run(&vm, &["verify", &inc_manifest]).await;
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("checksums match"), "{out}");

        // Restore: a disk must be named when there are two; an existing path is refused.
        let taken = dir.path().join("taken.qcow2");
        std::fs::write(&taken, b"mine").unwrap();
        let taken_s = taken.display().to_string();
        let fresh = dir.path().join("fresh.qcow2").display().to_string();
        let (code, _, err) =
            crate::cli::run(&vm, &["restore", &inc_manifest, "--to", &fresh]).await;
        assert_eq!(code, 1);
        assert!(err.contains("--disk"), "{err}");
        let (code, _, err) = crate::cli::run(
            &vm,
            &[
                "restore",
                &inc_manifest,
                "--disk",
                "vblk1",
                "--to",
                &taken_s,
            ],
        )
        .await;
        assert_eq!(code, 1);
        assert!(err.contains("never overwrites"), "{err}");
        assert_eq!(std::fs::read(&taken).unwrap(), b"mine");

        // Corrupt one data cluster of the full backup's first image: verify of the chain
        // says so, and a restore of the full refuses to produce that content.
        let full: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&full_manifest).unwrap()).unwrap();
        let image = dir.path().join(full["disks"][0]["image"].as_str().unwrap());
        let map = std::process::Command::new("qemu-img")
            .args(["map", "--output=json"])
            .arg(&image)
            .output()
            .unwrap();
        let extents: Vec<serde_json::Value> = serde_json::from_slice(&map.stdout).unwrap();
        let data = extents
            .iter()
            .find(|e| e["data"] == true && e["depth"] == 0)
            .unwrap();
        let offset = data["offset"].as_u64().unwrap();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&image)
            .unwrap();
        std::os::unix::fs::FileExt::write_all_at(&file, b"corrupted by the test", offset).unwrap();
        drop(file);
        let (code, _, err) = crate::cli::run(&vm, &["verify", &inc_manifest]).await;
        assert_eq!(code, 8, "{err}");
        assert!(err.contains("differs from the manifest"), "{err}");
        let restored = dir.path().join("r.qcow2").display().to_string();
        let (code, _, err) = crate::cli::run(
            &vm,
            &[
                "restore",
                &full_manifest,
                "--disk",
                "vblk0",
                "--to",
                &restored,
            ],
        )
        .await;
        assert_eq!(code, 1, "{err}");
        assert!(err.contains("differs from the manifest"), "{err}");
        assert!(!dir.path().join("r.qcow2").exists());
        let leftovers: Vec<_> = names(dir.path())
            .into_iter()
            .filter(|n| n.contains("qsnap-restore"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    })
    .await;
}
