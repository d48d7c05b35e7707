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

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let vm = QemuVm::start().await?;
    println!("qsnap benchmarks (baselines interleaved with qsnap in the same run)\n");
    qmp_round_trip(&vm).await?;
    drop(vm);
    println!();
    snapshot::in_freeze_overhead(SNAPSHOT_RUNS).await?;
    println!();
    backup::in_freeze_overhead(SNAPSHOT_RUNS).await?;
    Ok(())
}

mod backup;
mod snapshot;

/// `query-status` round trips: raw blocking socket (baseline) vs `qmp::Client`.
async fn qmp_round_trip(vm: &QemuVm) -> Result<()> {
    let mut raw = Vec::new();
    let mut ours = Vec::new();
    for _ in 0..ROUNDS {
        let path = vm.qmp_path();
        raw.extend(tokio::task::spawn_blocking(move || raw_round(&path)).await??);
        let client = vm.qmp().await?;
        for _ in 0..PER_ROUND {
            let start = Instant::now();
            client.execute(&qmp::commands::QueryStatus).await?;
            ours.push(start.elapsed());
        }
    }
    let (raw_med, raw_p99) = stats(&mut raw);
    let (our_med, our_p99) = stats(&mut ours);
    println!(
        "QMP query-status round trip, {} calls each:",
        ROUNDS * PER_ROUND
    );
    println!("  raw blocking socket (baseline)  median {raw_med:>7.1?}  p99 {raw_p99:>7.1?}");
    println!("  qmp::Client                     median {our_med:>7.1?}  p99 {our_p99:>7.1?}");
    println!(
        "  ratio qmp::Client / baseline    median {:.2}x",
        our_med.as_secs_f64() / raw_med.as_secs_f64()
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

pub(crate) fn stats(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize];
    (at(0.5), at(0.99))
}
