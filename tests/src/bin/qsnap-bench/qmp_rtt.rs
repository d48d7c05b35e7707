//! The QMP round trip (`query-status`): `qmp::Client` against a raw C client compiled
//! by the bench (the baseline), a raw blocking Rust socket, and a raw async socket —
//! the very halves `qmp::Client` uses (`qmp::socket::split`), read and written by the
//! calling future itself, no tasks, channels or codec: the floors of a blocking and of
//! an async client on this machine.
//!
//! The machine is shared and its speed drifts over seconds, so the clients take turns
//! in many short rounds (their order rotating each round) and the result is the median
//! of the per-round ratios, each ratio taken between figures measured a moment apart.

use crate::stats;
use anyhow::{Context, Result};
use qsnap_tests::QemuVm;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// Rounds (the first, a warm-up, is not counted) and calls per client per round.
const ROUNDS: usize = 31;
const PER_ROUND: usize = 200;

/// The raw C client, compiled by the bench with the host's gcc.
const QMP_RTT_C: &str = include_str!("c/qmp_rtt.c");

const NAMES: [&str; 4] = [
    "raw C client, blocking (baseline)",
    "raw blocking Rust socket",
    "raw async socket, no tasks",
    "qmp::Client",
];

pub(crate) async fn round_trip(vm: &QemuVm) -> Result<()> {
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
    // rounds[r][k]: client k's round trips in round r.
    let mut rounds: Vec<[Vec<Duration>; 4]> = Vec::new();
    for r in 0..ROUNDS {
        let mut this: [Vec<Duration>; 4] = Default::default();
        for turn in 0..4 {
            let k = (r + turn) % 4;
            this[k] = one_round(k, vm, &c_bin).await?;
        }
        if r > 0 {
            rounds.push(this);
        }
    }
    println!(
        "QMP query-status round trip, {} rounds of {PER_ROUND} calls per client, taking turns (order rotating):",
        rounds.len()
    );
    for (k, name) in NAMES.iter().enumerate() {
        let mut all: Vec<Duration> = rounds.iter().flat_map(|r| r[k].clone()).collect();
        let (med, p99) = stats(&mut all);
        println!("  {name:<34} median {med:>7.1?}  p99 {p99:>7.1?}");
    }
    for (k, what) in [(3, "qmp::Client"), (2, "raw async socket")] {
        let (lo, med, hi) = round_ratios(&rounds, k);
        println!(
            "  ratio {what} / C client, median of the per-round ratios {med:.3}x (quartiles {lo:.3}–{hi:.3}){}",
            if k == 3 { " (target <= 1.05x)" } else { "" }
        );
    }
    Ok(())
}

/// Median and quartiles over the rounds of client `k`'s median / the C client's.
fn round_ratios(rounds: &[[Vec<Duration>; 4]], k: usize) -> (f64, f64, f64) {
    let mut ratios: Vec<f64> = rounds
        .iter()
        .map(|r| {
            let ours = stats(&mut r[k].clone()).0;
            let c = stats(&mut r[0].clone()).0;
            ours.as_secs_f64() / c.as_secs_f64()
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    (at(0.25), at(0.5), at(0.75))
}

/// One round of `PER_ROUND` calls by client `k` (see [`NAMES`]).
async fn one_round(k: usize, vm: &QemuVm, c_bin: &Path) -> Result<Vec<Duration>> {
    match k {
        0 => {
            // Off the runtime: a QMP connection just dropped closes on a runtime task,
            // and QEMU serves one monitor client at a time.
            let mut cmd = std::process::Command::new(c_bin);
            cmd.arg(vm.qmp_path()).arg(PER_ROUND.to_string());
            let out = tokio::task::spawn_blocking(move || cmd.output()).await??;
            anyhow::ensure!(out.status.success(), "the C client failed");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(|l| Ok(Duration::from_nanos(l.trim().parse()?)))
                .collect()
        }
        1 => {
            let path = vm.qmp_path();
            tokio::task::spawn_blocking(move || raw_round(&path)).await?
        }
        2 => raw_async_round(&vm.qmp_path()).await,
        _ => {
            let client = vm.qmp().await?;
            let mut times = Vec::with_capacity(PER_ROUND);
            for _ in 0..PER_ROUND {
                let start = Instant::now();
                client.execute(&qmp::commands::QueryStatus).await?;
                times.push(start.elapsed());
            }
            Ok(times)
        }
    }
}

/// One round over a plain blocking socket: the floor of a blocking client.
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
            anyhow::ensure!(reader.read_line(&mut line)? > 0, "QEMU closed the socket");
            if line.contains("\"return\"") {
                break;
            }
        }
        times.push(start.elapsed());
    }
    Ok(times)
}

/// One round over `qmp::socket`'s halves read and written by the calling future itself
/// (no tasks, no channels, no codec): what waiting on the runtime's reactor instead of
/// a blocking `read` costs any async client.
async fn raw_async_round(path: &Path) -> Result<Vec<Duration>> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .context("raw async connect")?;
    let (read, mut writer) = qmp::socket::split(stream)?;
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
            anyhow::ensure!(
                reader.read_line(&mut line).await? > 0,
                "QEMU closed the socket"
            );
            if line.contains("\"return\"") {
                break;
            }
        }
        times.push(start.elapsed());
    }
    Ok(times)
}
