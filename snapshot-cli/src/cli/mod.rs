//! The `qsnap` command line: run a command, print its result, map errors to exit codes.

mod agent;
mod args;
mod backup;
mod commit;
mod docs;
mod info;
mod log;
mod metrics;
mod output;
mod raw;
mod snapshot;

use anyhow::{Context, Result};
pub(crate) use args::{Cli, Cmd, Global};
use clap::Parser;
use qsnap::CancellationToken;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// After a panic, how long the runtime keeps running the cleanup that the drop guards
/// queued (the thaw written behind a freeze, the overlay rollback).
const PANIC_DRAIN: std::time::Duration = std::time::Duration::from_secs(3);

pub(crate) fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_guard = init_logging(&cli.global);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::stderr(&format!(
                "qsnap: error: cannot start the async runtime: {e}"
            ));
            return ExitCode::from(1);
        }
    };
    let json = cli.global.json;
    // Run as a task, so that a panic unwinds the task, not the runtime: the thaw and
    // the rollback its drop guards queued on other tasks still get to run.
    let outcome = runtime.block_on(runtime.spawn(run(cli)));
    let code = match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            let code = exit_code(&e);
            drop(log_guard);
            output::error(json, &e, code);
            return ExitCode::from(code);
        }
        Err(e) => {
            runtime.block_on(tokio::time::sleep(PANIC_DRAIN));
            // The queued log lines first, then the last word.
            drop(log_guard);
            output::stderr(&format!(
                "qsnap: internal error ({e}); a thaw and a rollback were queued before exiting: check `qsnap fsstatus` and `qsnap info`"
            ));
            return ExitCode::from(101);
        }
    };
    drop(log_guard);
    ExitCode::from(code)
}

/// Logging goes through [`log`]'s lossy queue: a stalled stderr (a paused terminal, a
/// pipe nobody reads) must never block the runtime while the guest is frozen.
fn init_logging(global: &Global) -> log::Guard {
    let level = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_env("QSNAP_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let (writer, guard) = log::start();
    // A closed terminal makes every stderr write fail: tracing must not report that
    // through eprintln!, which panics.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || writer.clone())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .log_internal_errors(false)
        .with_target(false)
        .init();
    guard
}

/// The exit code documented in `--help` for this error.
fn exit_code(e: &anyhow::Error) -> u8 {
    let code = match e.downcast_ref::<qsnap::Error>() {
        Some(e) => e.exit_code(),
        None if e.is::<Interrupted>() => 130,
        None => 1,
    };
    u8::try_from(code).unwrap_or(1)
}

/// A command that changes nothing was interrupted.
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub(crate) struct Interrupted;

/// Cancels the token on Ctrl-C, SIGTERM or SIGHUP (a closed terminal or SSH session),
/// so every command leaves through its normal cleanup path (thaw, rollback, job
/// cancel) rather than dying mid-way.
fn cancel_on_signals() -> CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let cancel = token.clone();
    // Registered now, before any work: a signal arriving later cannot kill us.
    let mut streams: Vec<_> = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
    ]
    .into_iter()
    .filter_map(|kind| signal(kind).ok())
    .collect();
    tokio::spawn(async move {
        if streams.is_empty() {
            return; // Nothing registered: signals keep their default action.
        }
        // select_all panics on an empty list, hence the check above.
        futures_util::future::select_all(streams.iter_mut().map(|s| Box::pin(s.recv()))).await;
        tracing::warn!("interrupted: cleaning up");
        cancel.cancel();
    });
    token
}

async fn run(cli: Cli) -> Result<()> {
    let cancel = cancel_on_signals();
    let g = &cli.global;
    match cli.command {
        Cmd::Snapshot(args) => snapshot::run(g, args, &cancel).await,
        Cmd::Info => info::run(g, &cancel).await,
        Cmd::Ping => agent::ping(g, &cancel).await,
        Cmd::Commit(args) => commit::run(g, args, &cancel).await,
        Cmd::Backup(args) => backup::run(g, args, &cancel).await,
        Cmd::Restore(args) => backup::restore(g, args, &cancel).await,
        Cmd::Verify { backup } => backup::verify(g, &backup, &cancel).await,
        Cmd::Backups { dir } => backup::list(g, &dir),
        Cmd::Qmp { command, args } => raw::qmp(g, &command, args.as_deref(), &cancel).await,
        Cmd::Qga { command, args } => raw::qga(g, &command, args.as_deref(), &cancel).await,
        Cmd::Events => raw::events(g, &cancel).await,
        Cmd::Completions { shell } => docs::completions(shell),
        Cmd::Man => docs::man(),
        Cmd::Freeze { mountpoints } => agent::freeze(g, mountpoints, &cancel).await,
        Cmd::Thaw(args) => agent::thaw(g, &args, &cancel).await,
        Cmd::Fsstatus => agent::fsstatus(g, &cancel).await,
        Cmd::Guardian(args) => {
            let qga = need(&g.qga, "--qga")?;
            let code = qsnap::guardian::run(qsnap::guardian::GuardianArgs {
                qga,
                coordinator: args.coordinator,
                deadline: std::time::Duration::from_millis(args.deadline_ms),
                log: args.log,
                server_pid: args.server_pid,
            })
            .await;
            if code == 0 {
                Ok(())
            } else {
                std::process::exit(code)
            }
        }
    }
}

/// A socket option the command cannot do without.
fn need(path: &Option<PathBuf>, flag: &str) -> Result<PathBuf> {
    path.clone().with_context(|| {
        format!(
            "{flag} PATH is required for this command (or set QSNAP_{})",
            flag.trim_start_matches('-').to_uppercase()
        )
    })
}

/// Runs `fut` unless interrupted (exit 130).
async fn interruptible<T>(
    cancel: &CancellationToken,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        () = cancel.cancelled() => Err(Interrupted.into()),
        r = fut => r,
    }
}
