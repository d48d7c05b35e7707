//! The `test`, `demo`, `bench` and `fuzz` pipelines.

use crate::guest;
use crate::run::{have, status};
use anyhow::Result;
use std::path::Path;
use std::process::Command;

fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(root);
    cmd
}

fn step(name: &str) {
    eprintln!("\nxtask: == {name} ==");
}

/// fmt check, clippy, rustdoc, then every test including the real-QEMU ones.
pub(crate) fn test(root: &Path) -> Result<()> {
    step("guest image");
    let image = guest::build(root)?;
    step("cargo fmt --check");
    status(cargo(root).args(["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy -D warnings");
    status(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("cargo doc -D warnings");
    status(
        cargo(root)
            .args(["doc", "--workspace", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    step("tests (unit, fake peers, real QEMU)");
    // The real-QEMU tests fail, never skip, when they cannot find the image.
    let tests_env = ("QSNAP_GUEST_DIR", image.as_os_str());
    if have("cargo-nextest") {
        status(
            cargo(root)
                .args(["nextest", "run", "--workspace", "--no-fail-fast"])
                .env(tests_env.0, tests_env.1),
        )?;
    } else {
        eprintln!("xtask: cargo-nextest not found; using cargo test");
        status(
            cargo(root)
                .args([
                    "test",
                    "--workspace",
                    "--no-fail-fast",
                    "--lib",
                    "--bins",
                    "--tests",
                ])
                .env(tests_env.0, tests_env.1),
        )?;
    }
    step("doctests");
    status(cargo(root).args(["test", "--workspace", "--doc"]))?;
    // A short fuzz run keeps the fuzzer and its oracles from rotting; `cargo xtask
    // fuzz` runs longer (release build).
    step("fuzz smoke (30 s: codec, envelope, qga client)");
    status(fuzzer(root, false).args(["--for", "30s"]))?;
    eprintln!("\nxtask: all checks passed");
    Ok(())
}

/// Boots the demo guest and runs the `qsnap` binary against it.
pub(crate) fn demo(root: &Path) -> Result<()> {
    let image = guest::build(root)?;
    let qsnap = build_qsnap(root, false)?;
    status(
        cargo(root)
            .args([
                "run",
                "--quiet",
                "--package",
                "qsnap-tests",
                "--bin",
                "qsnap-demo",
            ])
            .env("QSNAP_GUEST_DIR", image)
            .env("QSNAP_BIN", qsnap),
    )
}

/// Builds the `qsnap` binary (debug or release) and returns its path.
fn build_qsnap(root: &Path, release: bool) -> Result<std::path::PathBuf> {
    let mut cmd = cargo(root);
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    status(cmd.args(["--quiet", "--package", "snapshot-cli", "--bin", "qsnap"]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| root.join("target"), std::path::PathBuf::from);
    Ok(target.join(if release {
        "release/qsnap"
    } else {
        "debug/qsnap"
    }))
}

/// Runs the benchmarks (release build) against the real guest; `sections` picks some
/// (`qmp`, `qmpcpu`, `snapshot`, `backup`, `codec`, `rss`, `scale` = `disks16` + `vms8`, `stall`),
/// none means all.
pub(crate) fn bench(root: &Path, sections: &[String]) -> Result<()> {
    let image = guest::build(root)?;
    // The RSS benchmark measures the release binary users run.
    let qsnap = build_qsnap(root, true)?;
    status(
        cargo(root)
            .args([
                "run",
                "--release",
                "--quiet",
                "--package",
                "qsnap-tests",
                "--bin",
                "qsnap-bench",
                "--",
            ])
            .args(sections)
            .env("QSNAP_GUEST_DIR", image)
            .env("QSNAP_BIN", qsnap),
    )
}

/// Builds the fuzzer in release mode and runs it; `args` are passed on (`--for 60s`,
/// `--target codec`, `--seed N --iteration K` to replay). Needs no guest image.
pub(crate) fn fuzz(root: &Path, args: &[String]) -> Result<()> {
    status(fuzzer(root, true).args(args))
}

/// `cargo run` of the fuzzer (release or debug build), ready for its arguments.
fn fuzzer(root: &Path, release: bool) -> Command {
    let mut cmd = cargo(root);
    cmd.arg("run");
    if release {
        cmd.arg("--release");
    }
    cmd.args([
        "--quiet",
        "--package",
        "qsnap-tests",
        "--bin",
        "qsnap-fuzz",
        "--",
    ]);
    cmd
}
