//! `cargo xtask fuzz`: a stable-toolchain fuzzer for qsnap's wire layer and guest-agent
//! client, driven by a seeded PRNG over a corpus of real QMP and qemu-ga transcripts.
//!
//! Targets (each gets an equal share of `--for`): `codec` (the bounded JSON-lines
//! codec), `envelope` (message parsing and typed reply decoding), `qga-client` (the
//! agent client's state machine against a hostile fake agent). Each iteration's input
//! depends only on the run's seed, the target and the iteration number, so
//! `--seed S --target T --iteration K` replays one input. See `docs/fuzzing.md`.

#![allow(clippy::print_stdout, reason = "the fuzzer prints its report")]

mod actor;
mod agent;
mod codec;
mod corpus;
mod driver;
mod envelope;
mod harness;
mod mutate;
mod oracle;
mod rng;
mod session;

use clap::{Parser, ValueEnum};
use harness::{Failure, Report};
use mutate::Mutator;
use rng::{Rng, iteration_seed};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Fuzz the QMP codec, envelope parsing and the QGA client; exit 1 on any failure.
#[derive(Debug, Parser)]
#[command(name = "qsnap-fuzz")]
struct Args {
    /// Total run time, shared evenly by the targets (e.g. 60s, 5m).
    #[arg(long = "for", default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Run only this target.
    #[arg(long, value_enum)]
    target: Option<Target>,
    /// The run's seed (default: a fresh one from the OS, printed at start).
    #[arg(long)]
    seed: Option<u64>,
    /// Replay only this iteration of --target under --seed.
    #[arg(long, requires_all = ["target", "seed"])]
    iteration: Option<u64>,
    /// Fail when the peak resident size grows by more than this many MiB.
    #[arg(long, default_value_t = 64)]
    max_rss_growth_mib: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Target {
    Codec,
    Envelope,
    QgaClient,
}

impl Target {
    const ALL: [Target; 3] = [Target::Codec, Target::Envelope, Target::QgaClient];

    fn name(self) -> &'static str {
        match self {
            Target::Codec => "codec",
            Target::Envelope => "envelope",
            Target::QgaClient => "qga-client",
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    harness::install_panic_hook();
    let seed = args.seed.unwrap_or_else(rng::fresh_seed);
    let targets = args.target.map_or(Target::ALL.to_vec(), |t| vec![t]);
    let share = args.duration / targets.len() as u32;
    let names: Vec<&str> = targets.iter().map(|t| t.name()).collect();
    match args.iteration {
        Some(k) => println!(
            "qsnap-fuzz: replaying iteration {k} of seed {seed} ({})",
            names.join(", ")
        ),
        None => println!(
            "qsnap-fuzz: seed {seed}; {} per target ({})",
            humantime::format_duration(Duration::from_millis(share.as_millis() as u64)),
            names.join(", ")
        ),
    }
    let before = memory();
    let mut failed = false;
    for target in targets {
        let report = run(target, seed, share, args.iteration);
        print_report(target, seed, &report);
        failed |= report.failures > 0;
    }
    let after = memory();
    let growth = after.hwm_kib.saturating_sub(before.hwm_kib);
    println!(
        "memory: VmHWM {} -> {} KiB (grew {growth} KiB), VmRSS {} -> {} KiB",
        before.hwm_kib, after.hwm_kib, before.rss_kib, after.rss_kib
    );
    if growth > args.max_rss_growth_mib * 1024 {
        println!(
            "FAILED: peak RSS grew by {growth} KiB, over {} MiB (seed {seed})",
            args.max_rss_growth_mib
        );
        failed = true;
    }
    if failed {
        return ExitCode::FAILURE;
    }
    println!("qsnap-fuzz: no failures");
    ExitCode::SUCCESS
}

fn run(target: Target, seed: u64, share: Duration, only: Option<u64>) -> Report {
    let until = Instant::now() + share;
    let mutator = Mutator::new();
    let started = Instant::now();
    let mut report = Report::default();
    match target {
        Target::Codec => sync_loop(
            &mut report,
            (seed, "codec", until, only),
            |rng| codec::generate(rng, &mutator),
            codec::run,
            codec::minimize,
        ),
        Target::Envelope => sync_loop(
            &mut report,
            (seed, "envelope", until, only),
            |rng| envelope::generate(rng, &mutator),
            |line| envelope::run(line),
            envelope::minimize,
        ),
        Target::QgaClient => {
            if let Err(e) = session::fuzz(seed, until, only, &mut report) {
                let message = format!("cannot start the runtime: {e}");
                let failure = Failure {
                    message: message.clone(),
                    input: String::new(),
                };
                report.fail(0, &message, Some(failure));
            }
        }
    }
    report.elapsed = started.elapsed();
    report
}

/// The loop of the synchronous targets: generate, check, minimize the first failure.
fn sync_loop<C: AsRef<[u8]> + Clone>(
    report: &mut Report,
    (seed, name, until, only): (u64, &str, Instant, Option<u64>),
    generate: impl Fn(&mut Rng) -> C,
    check: impl Fn(&C) -> Result<&'static str, String>,
    minimize: impl Fn(C, String) -> Failure,
) {
    let mut k = only.unwrap_or(0);
    while only.map_or(Instant::now() < until, |o| k == o) {
        let input = generate(&mut Rng::new(iteration_seed(seed, name, k)));
        report.iterations += 1;
        report.bytes += input.as_ref().len() as u64;
        match check(&input) {
            Ok(kind) => report.note(kind, 1),
            Err(message) if report.is_new(&message) => {
                let failure = minimize(input, message.clone());
                report.fail(k, &message, Some(failure));
            }
            Err(message) => report.fail(k, &message, None),
        }
        k += 1;
    }
}

fn print_report(target: Target, seed: u64, report: &Report) {
    let secs = report.elapsed.as_secs_f64().max(1e-9);
    let notes: Vec<String> = report
        .notes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!(
        "{:<10} {:>9} iterations in {:>5.1} s = {:>9.0}/s, {:>8.1} MiB in, {} failing; {}",
        target.name(),
        report.iterations,
        secs,
        report.iterations as f64 / secs,
        report.bytes as f64 / (1024.0 * 1024.0),
        report.failures,
        notes.join(" ")
    );
    for kind in &report.kinds {
        println!("  {} failing: {}", kind.count, kind.name);
        let Some((k, failure)) = &kind.example else {
            continue;
        };
        println!(
            "\nFAILED {} at iteration {k} of seed {seed}:\n  {}",
            target.name(),
            failure.message
        );
        println!("input:\n{}", failure.input);
        println!(
            "replay: cargo xtask fuzz --target {} --seed {seed} --iteration {k}\n",
            target.name()
        );
    }
}

struct Memory {
    hwm_kib: u64,
    rss_kib: u64,
}

/// Peak and current resident size from /proc/self/status (0 when unreadable).
fn memory() -> Memory {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    Memory {
        hwm_kib: field("VmHWM:"),
        rss_kib: field("VmRSS:"),
    }
}
