//! `cargo xtask bench`: qsnap's benchmarks against the real guest.
//!
//! Every figure is reported next to a baseline measured in the same run, interleaved
//! round by round, because the machine is shared and noisy: the ratio is the result.

#![allow(clippy::print_stdout, reason = "a benchmark prints its report")]

use anyhow::{Context, Result};
use qsnap_tests::QemuVm;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

const ROUNDS: usize = 6;
const PER_ROUND: usize = 1000;
const SNAPSHOT_RUNS: usize = 10;
/// Runs of each side in the 16-disk benchmark.
const SCALE_RUNS: usize = 6;
/// Runs of each side in the guest-stall benchmarks.
const STALL_RUNS: usize = 8;
/// The heavy writer's rate (the issue asks for >= 20 MB/s buffered).
const HEAVY_MBPS: u32 = 30;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    // `qsnap-bench [qmp|snapshot|backup|codec|rss|scale|disks16|vms8|stall]...`: those sections only (default all).
    let only: Vec<String> = std::env::args().skip(1).collect();
    let run = |s: &str| only.is_empty() || only.iter().any(|o| o == s);
    println!("qsnap benchmarks (baselines interleaved with qsnap in the same run)\n");
    if run("qmp") {
        let vm = QemuVm::start().await?;
        qmp_round_trip(&vm).await?;
        println!();
    }
    if run("snapshot") {
        snapshot::in_freeze_overhead(SNAPSHOT_RUNS).await?;
        println!();
    }
    if run("backup") {
        backup::in_freeze_overhead(SNAPSHOT_RUNS).await?;
        println!();
    }
    if run("codec") {
        codec::throughput()?;
        println!();
    }
    if run("rss") {
        rss::peak().await?;
        println!();
    }
    // `scale` is both `disks16` and `vms8`.
    if run("scale") || run("disks16") {
        scale::disks16(SCALE_RUNS).await?;
        println!();
    }
    if run("scale") || run("vms8") {
        scale::vms8(2).await?;
        println!();
    }
    if run("stall") {
        stall::pre_flush(STALL_RUNS, HEAVY_MBPS).await?;
        println!();
        stall::scope(STALL_RUNS).await?;
    }
    Ok(())
}

mod backup;
mod codec;
mod rss;
mod scale;
mod snapshot;
mod stall;

/// The raw C client, compiled by the bench with the host's gcc.
const QMP_RTT_C: &str = include_str!("c/qmp_rtt.c");

/// `query-status` round trips: a raw C client and a raw blocking Rust socket
/// (baselines) vs `qmp::Client`, interleaved round by round.
async fn qmp_round_trip(vm: &QemuVm) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let c_src = dir.path().join("qmp_rtt.c");
    let c_bin = dir.path().join("qmp_rtt");
    std::fs::write(&c_src, QMP_RTT_C)?;
    let built = std::process::Command::new("gcc")
        .args(["-O2", "-o"])
        .arg(&c_bin)
        .arg(&c_src)
        .status()?;
    anyhow::ensure!(built.success(), "gcc failed on the C client");
    let (mut c, mut raw, mut raw_async, mut ours) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        // Off the runtime: a QMP connection just dropped closes on a runtime task, and
        // QEMU serves one monitor client at a time.
        let mut cmd = std::process::Command::new(&c_bin);
        cmd.arg(vm.qmp_path()).arg(PER_ROUND.to_string());
        let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
        anyhow::ensure!(out.status.success(), "the C client failed");
        for l in String::from_utf8_lossy(&out.stdout).lines() {
            c.push(Duration::from_nanos(l.trim().parse()?));
        }
        let path = vm.qmp_path();
        raw.extend(tokio::task::spawn_blocking(move || raw_round(&path)).await??);
        raw_async.extend(raw_async_round(&vm.qmp_path()).await?);
        let client = vm.qmp().await?;
        for _ in 0..PER_ROUND {
            let start = Instant::now();
            client.execute(&qmp::commands::QueryStatus).await?;
            ours.push(start.elapsed());
        }
    }
    let (c_med, c_p99) = stats(&mut c);
    let (raw_med, raw_p99) = stats(&mut raw);
    let (async_med, async_p99) = stats(&mut raw_async);
    let (our_med, our_p99) = stats(&mut ours);
    println!(
        "QMP query-status round trip, {} calls each, {ROUNDS} rounds interleaved:",
        ROUNDS * PER_ROUND
    );
    println!("  raw C client, blocking (baseline)  median {c_med:>7.1?}  p99 {c_p99:>7.1?}");
    println!("  raw blocking Rust socket           median {raw_med:>7.1?}  p99 {raw_p99:>7.1?}");
    println!(
        "  raw Tokio socket, same runtime     median {async_med:>7.1?}  p99 {async_p99:>7.1?}"
    );
    println!("  qmp::Client                        median {our_med:>7.1?}  p99 {our_p99:>7.1?}");
    println!(
        "  ratio qmp::Client / C client       median {:.2}x (target <= 1.05x)",
        our_med.as_secs_f64() / c_med.as_secs_f64()
    );
    println!(
        "  ratio raw Tokio socket / C client  median {:.2}x (the floor of any async client here)",
        async_med.as_secs_f64() / c_med.as_secs_f64()
    );
    Ok(())
}

/// One round over a plain socket: the floor any client can reach.
fn raw_round(path: &Path) -> Result<Vec<Duration>> {
    let stream = UnixStream::connect(path).context("raw connect")?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader.read_line(&mut line)?; // greeting
    writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    line.clear();
    reader.read_line(&mut line)?;
    let mut times = Vec::with_capacity(PER_ROUND);
    for _ in 0..PER_ROUND {
        let start = Instant::now();
        writer.write_all(b"{\"execute\":\"query-status\",\"id\":1}\n")?;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            if line.contains("\"return\"") {
                break;
            }
        }
        times.push(start.elapsed());
    }
    Ok(times)
}

/// One round over a Tokio socket read and written by the calling future itself (no
/// tasks, no channels, no codec): what waiting on the runtime's reactor instead of a
/// blocking `read` costs any async client.
async fn raw_async_round(path: &Path) -> Result<Vec<Duration>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .context("raw async connect")?;
    let (read, mut writer) = stream.into_split();
    let mut reader = tokio::io::BufReader::new(read);
    let mut line = String::new();
    reader.read_line(&mut line).await?; // greeting
    writer
        .write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .await?;
    line.clear();
    reader.read_line(&mut line).await?;
    let mut times = Vec::with_capacity(PER_ROUND);
    for _ in 0..PER_ROUND {
        let start = Instant::now();
        writer
            .write_all(b"{\"execute\":\"query-status\",\"id\":1}\n")
            .await?;
        loop {
            line.clear();
            reader.read_line(&mut line).await?;
            if line.contains("\"return\"") {
                break;
            }
        }
        times.push(start.elapsed());
    }
    Ok(times)
}

pub(crate) fn stats(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}
