//! The out-of-process guardian: thaws the guest if the coordinator dies while frozen.
//!
//! No in-process mechanism survives SIGKILL, and qemu-ga never thaws by itself, so
//! before freezing the coordinator starts `qsnap guardian` in its own process group
//! (a Ctrl-C to the terminal does not reach it) with a pipe on its stdin, and waits
//! for it to report `armed`. Then:
//!
//! * coordinator finishes: it writes `disarm` and the guardian exits quietly;
//! * coordinator dies (even SIGKILL): the kernel closes the pipe, the guardian reads
//!   EOF, connects to the agent socket as soon as QEMU frees it (it serves one client
//!   at a time), resyncs, thaws, confirms `thawed`, and logs what it did;
//! * coordinator hangs past the freeze deadline plus a grace period: the guardian
//!   SIGKILLs it, then thaws the same way.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::{Instant, timeout, timeout_at};

/// Extra time the coordinator gets past its freeze deadline before the guardian acts.
pub const GRACE: Duration = Duration::from_secs(5);
/// How long the guardian keeps trying to reach the agent.
const RESCUE_FOR: Duration = Duration::from_secs(60);

/// An armed guardian process.
#[derive(Debug)]
pub(crate) struct Guardian {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Guardian {
    /// Starts `exe guardian ...` and waits until it is armed.
    pub(crate) async fn arm(exe: &Path, qga: &Path, deadline: Duration) -> Result<Self> {
        let failed = |e: std::io::Error| Error::Io {
            what: "cannot start the guardian",
            path: exe.to_owned(),
            source: e,
        };
        let mut child = Command::new(exe)
            .arg("guardian")
            .arg("--qga")
            .arg(qga)
            .arg("--coordinator")
            .arg(std::process::id().to_string())
            .arg("--deadline-ms")
            .arg(deadline.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(failed)?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| failed(std::io::ErrorKind::BrokenPipe.into()))?;
        let mut line = String::new();
        let read = timeout(
            Duration::from_secs(5),
            BufReader::new(stdout).read_line(&mut line),
        )
        .await;
        if !matches!(read, Ok(Ok(_))) || line.trim() != "armed" {
            let _ = child.start_kill();
            return Err(failed(std::io::Error::other(
                "the guardian did not report armed",
            )));
        }
        Ok(Self {
            stdin: child.stdin.take(),
            child,
        })
    }

    /// Tells the guardian the guest is thawed, and reaps it.
    pub(crate) async fn disarm(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"disarm\n").await;
        }
        if timeout(Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
        }
    }
}

/// The guardian's arguments (`qsnap guardian`).
#[derive(Debug, Clone)]
pub struct GuardianArgs {
    /// The agent socket to thaw through.
    pub qga: PathBuf,
    /// The coordinator's pid.
    pub coordinator: u32,
    /// The coordinator's freeze deadline.
    pub deadline: Duration,
}

/// Runs the guardian; returns its exit code (0: disarmed or thawed, 5: could not thaw).
pub async fn run(args: GuardianArgs) -> i32 {
    let tag = format!("qsnap guardian[{}]", std::process::id());
    let mut stdout = tokio::io::stdout();
    if stdout.write_all(b"armed\n").await.is_err() || stdout.flush().await.is_err() {
        return 1;
    }
    drop(stdout);
    let mut line = String::new();
    let until = Instant::now() + args.deadline + GRACE;
    let mut stdin = BufReader::new(tokio::io::stdin());
    match timeout_at(until, stdin.read_line(&mut line)).await {
        Ok(Ok(_)) if line.trim() == "disarm" => return 0,
        Ok(_) => eprintln!(
            "{tag}: coordinator {} ended while the guest may be frozen; thawing",
            args.coordinator
        ),
        Err(_) => {
            eprintln!(
                "{tag}: coordinator {} still not done {:?} after freezing; killing it and thawing",
                args.coordinator,
                args.deadline + GRACE
            );
            kill(args.coordinator);
        }
    }
    rescue(&args.qga, &tag).await
}

fn kill(pid: u32) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Connects (retrying while the socket is busy), thaws and confirms.
pub(crate) async fn rescue(qga: &Path, tag: &str) -> i32 {
    let give_up = Instant::now() + RESCUE_FOR;
    while Instant::now() < give_up {
        match crate::freeze::thaw_guest(qga, Duration::from_secs(2)).await {
            Ok(n) => {
                eprintln!("{tag}: thawed {n} filesystem(s); the guest reports thawed");
                return 0;
            }
            Err(e) => eprintln!("{tag}: not thawed yet: {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{tag}: could not thaw the guest within {RESCUE_FOR:?}; run `qsnap thaw --qga {}`",
        qga.display()
    );
    5
}
