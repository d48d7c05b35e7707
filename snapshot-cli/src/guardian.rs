//! The out-of-process guardian: thaws the guest if the coordinator dies while frozen.
//!
//! No in-process mechanism survives SIGKILL, and qemu-ga never thaws by itself, so
//! before freezing the coordinator starts `qsnap guardian`, waits for `armed`, and
//! tells it its phase over a pipe on the guardian's stdin:
//!
//! * `frozen` — written *before* the freeze is sent. From now on, EOF on the pipe (the
//!   coordinator died, even by SIGKILL, or gave up with the thaw unconfirmed) makes the
//!   guardian rescue the guest. If the coordinator is still not `thawed` at the freeze
//!   deadline plus [`GRACE`], it is hung while holding the agent socket (qemu-ga's
//!   chardev serves one client): the guardian SIGKILLs it, then rescues.
//! * `thawed` — the coordinator confirmed the guest reads `thawed`. Nothing is killed
//!   after this, however long the cleanup takes.
//! * `done` or EOF after `thawed` — the guardian exits quietly.
//!
//! A rescue connects without waiting for a sync, writes `0xFF` + thaw at once (it
//! queues behind a freeze a slow fsfreeze hook still holds), then resyncs and reads
//! `guest-fsfreeze-status` until the guest reports `thawed`, for up to [`RESCUE_FOR`] —
//! unless the process that served the agent socket when the coordinator connected
//! (QEMU; its pid from `SO_PEERCRED`, watched through a pidfd opened when armed) has
//! exited and nothing has answered on the socket path for [`GONE_AFTER`]. Then no
//! retry can reach that agent any more: the guardian says so (the guest may still be
//! frozen if the VM went on elsewhere — migrated, restored) and stops with exit 5,
//! freeing the VM lock for a restarted VM.
//!
//! The guardian survives what kills a coordinator: it starts its own session
//! (`setsid`: no controlling terminal, so a closed SSH session sends it no SIGHUP),
//! ignores SIGHUP, SIGINT and SIGTERM, never writes to the terminal (its log goes to a
//! file beside the VM lock and to syslog), and renames itself `fsthaw-guard` so that
//! `pkill qsnap` does not take it along. It inherits the coordinator's VM lock, so no
//! other qsnap can freeze the VM (and have that freeze thawed by this guardian) until
//! it has finished.

use crate::error::{Error, Result};
use crate::lock::VmLock;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::time::{Instant, sleep_until, timeout};

/// Extra time the coordinator gets past its freeze deadline before the guardian acts.
pub const GRACE: Duration = Duration::from_secs(5);
/// How long a rescue keeps trying to see the guest thawed (a slow fsfreeze hook can
/// hold the agent for minutes).
pub const RESCUE_FOR: Duration = Duration::from_secs(15 * 60);
/// How long every attempt must find nothing listening on the agent socket — with the
/// process that served it exited — before a rescue stops.
pub const GONE_AFTER: Duration = Duration::from_secs(10);
/// The guardian's process name (`comm`), chosen so `pkill qsnap` does not match it.
pub const PROCESS_NAME: &std::ffi::CStr = c"fsthaw-guard";

/// An armed guardian process. Dropping it closes the pipe: the guardian then rescues
/// the guest if it was told `frozen` and never `thawed`.
#[derive(Debug)]
pub(crate) struct Guardian {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl Guardian {
    /// Starts `exe guardian ...`, hands it the VM lock, and waits until it is armed.
    pub(crate) async fn arm(
        exe: &Path,
        qga: &Path,
        server_pid: Option<u32>,
        deadline: Duration,
        lock: &VmLock,
    ) -> Result<Self> {
        let failed = |e: std::io::Error| Error::Io {
            what: "cannot start the guardian",
            path: exe.to_owned(),
            source: e,
        };
        // The child holds this duplicate (no close-on-exec) for its whole life.
        let inherited = lock.inheritable().map_err(failed)?;
        let mut command = Command::new(exe);
        command.arg("guardian");
        if let Some(pid) = server_pid {
            command.arg("--server-pid").arg(pid.to_string());
        }
        let spawned = command
            .arg("--qga")
            .arg(qga)
            .arg("--coordinator")
            .arg(std::process::id().to_string())
            .arg("--deadline-ms")
            .arg(deadline.as_millis().to_string())
            .arg("--log")
            .arg(log_path(lock.path()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        drop(inherited);
        let mut child = spawned.map_err(failed)?;
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

    /// Tells the guardian a phase. Fails if the guardian is gone.
    async fn tell(&mut self, phase: &str) -> std::io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        stdin.write_all(format!("{phase}\n").as_bytes()).await?;
        stdin.flush().await
    }

    /// Before the freeze is sent. An error means nobody would rescue the guest: do not
    /// freeze.
    pub(crate) async fn frozen(&mut self) -> Result<()> {
        self.tell("frozen").await.map_err(|e| Error::Io {
            what: "the guardian is gone; not freezing without it",
            path: PathBuf::from("qsnap guardian"),
            source: e,
        })
    }

    /// The guest was confirmed thawed: the guardian stands down.
    pub(crate) async fn disarm(mut self) {
        let _ = self.tell("thawed").await;
        let _ = self.tell("done").await;
        self.stdin = None;
        if timeout(Duration::from_secs(2), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
        }
    }
}

/// The guardian's log, beside the VM lock.
pub fn log_path(lock: &Path) -> PathBuf {
    lock.with_extension("guardian.log")
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
    /// Where to log (appended); syslog gets the same lines.
    pub log: Option<PathBuf>,
    /// The process that served the agent socket (QEMU), if known.
    pub server_pid: Option<u32>,
}

/// The coordinator's phase, as told over the pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Armed,
    Frozen(Instant),
    Thawed,
}

/// Runs the guardian; returns its exit code (0: nothing to do or thawed, 5: could not
/// confirm a thaw).
pub async fn run(args: GuardianArgs) -> i32 {
    detach();
    let log = crate::guardian_log::Log::open(args.log.as_deref());
    // Opened while it surely runs (the coordinator is connected to it), so a later pid
    // reuse cannot fool the check.
    let server = args.server_pid.and_then(Server::watch);
    let mut stdout = tokio::io::stdout();
    if stdout.write_all(b"armed\n").await.is_err() || stdout.flush().await.is_err() {
        return 1;
    }
    drop(stdout);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut phase = Phase::Armed;
    loop {
        let kill_at = match phase {
            Phase::Frozen(since) => Some(since + args.deadline + GRACE),
            _ => None,
        };
        let line = tokio::select! {
            // Cancel-safe: Lines keeps a partial line buffered.
            line = lines.next_line() => line.ok().flatten(),
            () = sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                log.line(&format!(
                    "coordinator {} still not thawed {:?} after freezing; killing it and thawing",
                    args.coordinator, args.deadline + GRACE
                ));
                kill(args.coordinator);
                return rescue(&args.qga, server.as_ref(), &log).await;
            }
        };
        phase = match (phase, line.as_deref().map(str::trim)) {
            (_, Some("frozen")) => Phase::Frozen(Instant::now()),
            (_, Some("thawed")) => Phase::Thawed,
            (Phase::Frozen(_), None | Some("done")) => {
                log.line(&format!(
                    "coordinator {} ended while the guest may be frozen; thawing",
                    args.coordinator
                ));
                return rescue(&args.qga, server.as_ref(), &log).await;
            }
            (_, None | Some("done")) => return 0,
            (p, Some(_)) => p,
        };
    }
}

/// Leaves the coordinator's session and terminal behind.
fn detach() {
    // Fails only if already a group leader; then the terminal may still reach us, but
    // the signals below are handled anyway.
    let _ = rustix::process::setsid();
    let _ = rustix::thread::set_name(PROCESS_NAME);
    for kind in [
        tokio::signal::unix::SignalKind::hangup(),
        tokio::signal::unix::SignalKind::interrupt(),
        tokio::signal::unix::SignalKind::terminate(),
    ] {
        // tokio keeps a registered handler for the life of the process, so the
        // default action (exit) is gone even after the stream is dropped.
        drop(tokio::signal::unix::signal(kind));
    }
}

fn kill(pid: u32) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// The process that served the agent socket, watched through a pidfd.
#[derive(Debug)]
pub(crate) struct Server {
    pid: u32,
    fd: std::os::fd::OwnedFd,
}

impl Server {
    /// Starts watching `pid`; `None` when it cannot be watched (already gone, or no
    /// pidfd support): then a rescue never concludes that it exited.
    pub(crate) fn watch(pid: u32) -> Option<Self> {
        let raw = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
        let fd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).ok()?;
        Some(Self { pid, fd })
    }

    /// True once the process has exited (its pidfd reads ready).
    fn exited(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &self.fd,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
    }
}

/// Since when every attempt has found nothing listening on the agent socket.
#[derive(Debug, Default)]
struct Unheard {
    since: Option<Instant>,
}

impl Unheard {
    /// Records one attempt at `now`; true once nothing has listened for [`GONE_AFTER`].
    fn note(&mut self, no_listener: bool, now: Instant) -> bool {
        if !no_listener {
            self.since = None;
            return false;
        }
        let since = *self.since.get_or_insert(now);
        now.duration_since(since) >= GONE_AFTER
    }
}

/// Queues a thaw at once, then keeps confirming until the guest reads thawed — or until
/// `server` (the process that served the agent socket) has exited and nothing has
/// listened on the socket for [`GONE_AFTER`]: then no retry can reach that agent, and
/// the VM lock is freed (exit 5, the thaw unconfirmed).
pub(crate) async fn rescue(
    qga: &Path,
    server: Option<&Server>,
    log: &crate::guardian_log::Log,
) -> i32 {
    let give_up = Instant::now() + RESCUE_FOR;
    let mut last_error = String::new();
    let mut unheard = Unheard::default();
    while Instant::now() < give_up {
        match crate::freeze::thaw_guest(qga, give_up - Instant::now()).await {
            Ok(_) => {
                log.line("the guest reports thawed");
                return 0;
            }
            Err(e) => {
                let long_unheard = unheard.note(no_listener(&e), Instant::now());
                if let Some(server) = server.filter(|s| long_unheard && s.exited()) {
                    log.line(&format!(
                        "the process that served {} (pid {}) has exited and every attempt for {GONE_AFTER:?} found nothing listening there ({e:#}): no retry can reach that agent; stopping. If the VM runs on elsewhere (migrated, restored), it may still be frozen: run `qsnap thaw --qga <its agent socket>` there",
                        qga.display(),
                        server.pid
                    ));
                    return 5;
                }
                let text = format!("{e:#}");
                if text != last_error {
                    log.line(&format!("not thawed yet: {text}"));
                    last_error = text;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    log.line(&format!(
        "could not confirm a thaw within {RESCUE_FOR:?}; run `qsnap thaw --qga {}`",
        qga.display()
    ));
    5
}

/// True when connecting to the agent socket found no listener: the path is gone, or
/// it refuses connections (a Unix socket refuses only when nobody listens; a QEMU that
/// is busy with another client still queues the connection).
fn no_listener(e: &Error) -> bool {
    let Error::ThawUnconfirmed {
        source: Some(source),
        ..
    } = e
    else {
        return false;
    };
    matches!(
        source.as_ref(),
        qga::Error::Connect { source, .. }
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardian_log::Log;

    fn logged(path: &Path) -> String {
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// A process that has exited (watched while it ran) and one that still runs.
    fn exited_server() -> Server {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let server = Server::watch(child.id()).expect("pidfd");
        child.kill().unwrap();
        child.wait().unwrap();
        server
    }

    #[tokio::test(start_paused = true)]
    async fn a_rescue_stops_when_the_server_exited_and_its_socket_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("g.log");
        let server = exited_server();
        assert!(server.exited());
        let start = Instant::now();
        let code = rescue(
            &dir.path().join("no-such.sock"),
            Some(&server),
            &Log::file_only(&log_path),
        )
        .await;
        assert_eq!(code, 5, "the thaw was not confirmed");
        let took = start.elapsed();
        assert!(took >= GONE_AFTER && took < GONE_AFTER * 2, "{took:?}");
        assert!(
            logged(&log_path).contains("has exited"),
            "{}",
            logged(&log_path)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rescue_stops_when_the_server_exited_and_its_socket_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qga.sock");
        // Bound, then closed: the file stays, nobody listens (a QEMU that was killed).
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        let log_path = dir.path().join("g.log");
        let code = rescue(&sock, Some(&exited_server()), &Log::file_only(&log_path)).await;
        assert_eq!(code, 5);
        assert!(
            logged(&log_path).contains("has exited"),
            "{}",
            logged(&log_path)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_rescue_goes_on_while_the_server_runs_even_if_its_socket_is_gone() {
        // The socket path removed under a QEMU that still runs: no proof the guest is
        // unreachable for good, so the rescue keeps its whole time.
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let running = Server::watch(child.id()).expect("pidfd");
        let log_path = dir.path().join("g.log");
        let log = Log::file_only(&log_path);
        let still = tokio::time::timeout(
            GONE_AFTER * 6,
            rescue(&dir.path().join("no-such.sock"), Some(&running), &log),
        )
        .await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(still.is_err(), "gave up while the server still ran");
        assert!(!logged(&log_path).contains("has exited"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_rescue_without_a_known_server_never_stops_early() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::file_only(&dir.path().join("g.log"));
        let still = tokio::time::timeout(
            GONE_AFTER * 6,
            rescue(&dir.path().join("gone.sock"), None, &log),
        )
        .await;
        assert!(still.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_still_accepts_keeps_the_rescue_going() {
        // Each attempt connects, then finds the peer gone at once (not "nobody
        // listens"): even with the server's process gone, the rescue goes on.
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qga.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let acceptor = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                drop(stream);
            }
        });
        let log_path = dir.path().join("g.log");
        let log = Log::file_only(&log_path);
        let still =
            tokio::time::timeout(GONE_AFTER * 6, rescue(&sock, Some(&exited_server()), &log)).await;
        acceptor.abort();
        assert!(still.is_err(), "gave up on a socket that still accepts");
        assert!(
            !logged(&log_path).contains("has exited"),
            "{}",
            logged(&log_path)
        );
    }

    #[test]
    fn one_answer_restarts_the_unheard_time() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut u = Unheard::default();
        assert!(!u.note(true, t0));
        assert!(!u.note(true, t0 + s(8)));
        assert!(!u.note(false, t0 + s(9)), "something answered");
        assert!(!u.note(true, t0 + s(10)));
        assert!(!u.note(true, t0 + s(18)), "only 8 s since the last answer");
        assert!(u.note(true, t0 + s(20)));
    }

    #[test]
    fn only_a_missing_or_refusing_socket_counts_as_no_listener() {
        let unconfirmed = |kind: std::io::ErrorKind| Error::ThawUnconfirmed {
            qga: "q".into(),
            source: Some(Box::new(qga::Error::Connect {
                path: "q".into(),
                source: kind.into(),
            })),
            left: Vec::new(),
        };
        assert!(no_listener(&unconfirmed(std::io::ErrorKind::NotFound)));
        assert!(no_listener(&unconfirmed(
            std::io::ErrorKind::ConnectionRefused
        )));
        assert!(!no_listener(&unconfirmed(
            std::io::ErrorKind::PermissionDenied
        )));
        assert!(!no_listener(&unconfirmed(std::io::ErrorKind::WouldBlock)));
        assert!(!no_listener(&unconfirmed(std::io::ErrorKind::TimedOut)));
        assert!(!no_listener(&Error::ThawUnconfirmed {
            qga: "q".into(),
            source: None,
            left: Vec::new(),
        }));
    }
}
