//! `cargo xtask demo`: boots the built-in demo guest (two data disks, a writer
//! appending every 100 ms) and runs the `qsnap` binary against it, step by step.

#![allow(clippy::print_stdout, reason = "the demo prints its transcript")]

use anyhow::{Context, Result, bail};
use qsnap_tests::{QemuVm, inspect};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::process::Command;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let start = Instant::now();
    let qsnap = PathBuf::from(
        std::env::var_os("QSNAP_BIN").context("QSNAP_BIN is not set (run `cargo xtask demo`)")?,
    );
    step("booting the demo guest: 2 ext4 data disks, a writer appending every 100 ms");
    let vm = QemuVm::builder().disks(2).writer(true).start().await?;
    vm.wait_for_agent(Duration::from_secs(60)).await?;
    println!(
        "   QMP {}\n   QGA {}",
        vm.qmp_path().display(),
        vm.qga_path().display()
    );
    // Async on purpose: blocking this runtime would keep the rig's dropped agent
    // connection open, and the agent serves one client at a time.
    let run = async |args: &[&str]| -> Result<()> {
        println!("\n$ qsnap {}", args.join(" "));
        let out = Command::new(&qsnap)
            .args(args)
            .env("QSNAP_QMP", vm.qmp_path())
            .env("QSNAP_QGA", vm.qga_path())
            .output()
            .await?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("qsnap {} failed ({})", args.join(" "), out.status);
        }
        Ok(())
    };

    step("the VM before");
    run(&["info"]).await?;
    step("a quiesced snapshot of both disks");
    run(&["snapshot", "--name", "demo"]).await?;
    step("the new chains: each disk now writes to its overlay");
    run(&["info"]).await?;
    step("the images frozen in time are clean ext4 (no journal to replay)");
    for (i, image) in vm.disks().iter().enumerate() {
        let dirty = inspect::ext4_needs_recovery(image)?;
        let verdict = if dirty {
            "NEEDS RECOVERY"
        } else {
            "clean: no needs_recovery"
        };
        println!("   disk{i} {}: {verdict}", image.display());
        if dirty {
            bail!("disk{i} was not captured while frozen");
        }
    }
    step("merging the overlays back (live block-commit)");
    run(&["commit", "--disk", "vblk0"]).await?;
    run(&["commit", "--disk", "vblk1"]).await?;
    step("a full backup: standalone images of both disks at one frozen instant");
    let dir = vm.dir().join("backups");
    std::fs::create_dir(&dir)?;
    let target = dir.display().to_string();
    run(&["backup", "--target", &target]).await?;
    step("the guest writes on for 3 s; then an incremental backup copies only what changed");
    tokio::time::sleep(Duration::from_secs(3)).await;
    run(&["backup", "--target", &target, "--incremental"]).await?;
    run(&["backups", &target]).await?;
    let latest = newest_manifest(&dir)?;
    step("verify, offline: every image, the backing chain, the content checksums");
    run(&["verify", &latest]).await?;
    step("restore disk vblk0 at the incremental's instant into a standalone image");
    let restored = dir.join("restored-vblk0.qcow2");
    run(&[
        "restore",
        &latest,
        "--disk",
        "vblk0",
        "--to",
        &restored.display().to_string(),
    ])
    .await?;
    let dirty = inspect::ext4_needs_recovery(&restored)?;
    println!(
        "   {}: {}",
        restored.display(),
        if dirty {
            "NEEDS RECOVERY"
        } else {
            "clean ext4: no needs_recovery"
        }
    );
    if dirty {
        bail!("the restored image was not captured while frozen");
    }
    step("shutting down");
    run(&["qmp", "quit"]).await?;
    println!("\n== demo finished in {:.1?} ==", start.elapsed());
    Ok(())
}

/// The newest manifest in `dir` (ids sort by time).
fn newest_manifest(dir: &std::path::Path) -> Result<String> {
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| Some(e.ok()?.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    manifests.sort();
    manifests
        .pop()
        .map(|p| p.display().to_string())
        .context("no manifest written")
}

fn step(what: &str) {
    println!("\n== {what} ==");
}
