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

/// Clients; the last two are `qmp::Client` awaited from a spawned task (how the `qsnap`
/// binary runs its work) and from the runtime's `block_on` future (where the current-
/// thread runtime polls its reactor once more before it returns to that future).
const CLIENTS: usize = 5;
const NAMES: [&str; CLIENTS] = [
    "raw C client, blocking (baseline)",
    "raw blocking Rust socket",
    "raw async socket, no tasks",
    "qmp::Client, from a task",
    "qmp::Client, from block_on",
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
    let mut rounds: Vec<[Vec<Duration>; CLIENTS]> = Vec::new();
    for r in 0..ROUNDS {
        let mut this: [Vec<Duration>; CLIENTS] = Default::default();
        for turn in 0..CLIENTS {
            let k = (r + turn) % CLIENTS;
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
    for (k, what) in [
        (3, "qmp::Client from a task"),
        (4, "qmp::Client from block_on"),
        (2, "raw async socket"),
    ] {
        let (lo, med, hi) = round_ratios(&rounds, k);
        println!(
            "  ratio {what} / C client, median of the per-round ratios {med:.3}x (quartiles {lo:.3}–{hi:.3}){}",
            if k >= 3 { " (target <= 1.05x)" } else { "" }
        );
    }
    Ok(())
}

/// Median and quartiles over the rounds of client `k`'s median / the C client's.
fn round_ratios(rounds: &[[Vec<Duration>; CLIENTS]], k: usize) -> (f64, f64, f64) {
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
        3 => {
            let client = vm.qmp().await?;
            tokio::spawn(async move { client_calls(&client, PER_ROUND).await }).await?
        }
        _ => client_calls(&vm.qmp().await?, PER_ROUND).await,
    }
}

/// `calls` `query-status` round trips through `client`, each timed.
async fn client_calls(client: &qmp::Client, calls: usize) -> Result<Vec<Duration>> {
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        client.execute(&qmp::commands::QueryStatus).await?;
        times.push(start.elapsed());
    }
    Ok(times)
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
    raw_async_calls(path, PER_ROUND).await
}

/// `calls` round trips over `qmp::socket`'s halves, each timed.
async fn raw_async_calls(path: &Path, calls: usize) -> Result<Vec<Duration>> {
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
    let mut times = Vec::with_capacity(calls);
    for _ in 0..calls {
        let start = Instant::now();
        writer
            .write_all(b"{\"execute\":\"query-status\",\"id\":1}\n")
            .await?;
        loop {
            line.clear();
            anyhow::ensure!(
                reader.read_line(&mut line).await? > 0,
                "the peer closed the socket"
            );
            if line.contains("\"return\"") {
                break;
            }
        }
        times.push(start.elapsed());
    }
    Ok(times)
}

/// Calls per side and rounds of the CPU measurement.
const CPU_CALLS: usize = 20_000;
const CPU_ROUNDS: usize = 5;

/// CPU time per call of `qmp::Client` against the raw async socket, both on this
/// thread, against an in-process peer that answers at once (so the figure is the
/// client's own work, user and kernel, not QEMU's): what the gap to the raw clients is
/// made of. Read from `/proc/thread-self/schedstat` (ns of CPU this thread used).
pub(crate) async fn client_cpu() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("peer.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path)?;
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || instant_peer(stream));
        }
    });
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for _ in 0..CPU_ROUNDS {
        let client = qmp::Client::connect(&path, qmp::Config::default()).await?;
        let start = thread_cpu()?;
        // From a task, as the qsnap binary runs it (on this same thread).
        tokio::spawn(async move { client_calls(&client, CPU_CALLS).await }).await??;
        ours.push(per_call(thread_cpu()? - start));
        let start = thread_cpu()?;
        raw_async_calls(&path, CPU_CALLS).await?;
        raw.push(per_call(thread_cpu()? - start));
    }
    let (o, _) = stats(&mut ours);
    let (r, _) = stats(&mut raw);
    println!(
        "CPU per call against an in-process peer that answers at once ({CPU_ROUNDS} rounds of {CPU_CALLS}, median): qmp::Client from a task {o:.2?}, raw async socket {r:.2?}, difference {:.2?}",
        o.saturating_sub(r)
    );
    Ok(())
}

fn per_call(ns: u64) -> Duration {
    Duration::from_nanos(ns / CPU_CALLS as u64)
}

/// This thread's CPU time so far, ns.
fn thread_cpu() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    text.split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()
        .context("schedstat")
}

/// Greets, then answers every line at once: `{}` without an id, a `query-status`
/// reply with the request's id otherwise.
fn instant_peer(stream: UnixStream) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let greeting = b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 2, \"minor\": 0, \"major\": 10}, \"package\": \"\"}, \"capabilities\": []}}\n";
    if writer.write_all(greeting).is_err() {
        return;
    }
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
        let reply = match line.split("\"id\":").nth(1) {
            Some(id) => format!(
                "{{\"return\": {{\"status\": \"running\", \"singlestep\": false, \"running\": true}}, \"id\": {}}}\n",
                id.trim_end().trim_end_matches('}')
            ),
            None => "{\"return\": {}}\n".to_owned(),
        };
        if writer.write_all(reply.as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}
