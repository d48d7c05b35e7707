//! [`SimAgent`]: a simulated qemu-ga behind QEMU's chardev socket.

use super::agent_model::{AgentState, SimAgentEvent, SimFsStatus};
use super::agent_worker::work;
use super::server::{self, ClientSlot, Tasks, lock};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::UnixListener;
use tokio::runtime::Handle;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// State shared by the handle and the tasks.
#[derive(Debug)]
pub(super) struct AgentShared {
    pub(super) state: Mutex<AgentState>,
    /// Notified when bytes join the stream.
    pub(super) data: Notify,
    /// True while the VM is stopped: the agent reads and answers nothing.
    pub(super) paused: watch::Sender<bool>,
    /// True once the agent must end (QEMU quit, or shutdown).
    stop: Arc<watch::Sender<bool>>,
}

impl AgentShared {
    /// QEMU exits: the connection closes and the socket goes away.
    pub(super) fn quit(&self) {
        self.stop.send_replace(true);
        if let Some(c) = &lock(&self.state).client {
            c.kick.notify_one();
        }
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, AgentState> {
        let mut st = lock(&self.state);
        st.settle(Instant::now());
        st
    }
}

#[derive(Debug)]
struct Inner {
    shared: Arc<AgentShared>,
    tasks: Tasks,
    worker: Mutex<Option<JoinHandle<()>>>,
    runtime: Handle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(w) = lock(&self.worker).take() {
            w.abort();
        }
    }
}

/// A simulated qemu-ga listening on a Unix socket as QEMU's chardev does. Cheap to
/// clone; the agent stops when the last clone is dropped or [`SimAgent::shutdown`] runs.
/// See the [module docs](super) for the rules it follows.
#[derive(Debug, Clone)]
pub struct SimAgent {
    inner: Arc<Inner>,
}

impl SimAgent {
    /// Listens on `path` (which must not exist) as a thawed Linux guest with one
    /// mountpoint, `/data`.
    ///
    /// # Errors
    /// When the socket cannot be bound.
    pub async fn start(path: &Path) -> std::io::Result<SimAgent> {
        Self::start_with(path, vec!["/data".into()])
    }

    pub(super) fn start_with(path: &Path, mountpoints: Vec<String>) -> std::io::Result<SimAgent> {
        let runtime = Handle::try_current().map_err(std::io::Error::other)?;
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(watch::channel(false).0);
        let shared = Arc::new(AgentShared {
            state: Mutex::new(AgentState::new(mountpoints)),
            data: Notify::new(),
            paused: watch::channel(false).0,
            stop: stop.clone(),
        });
        let tasks = Tasks::new(path, stop.clone());
        let accept = accept_loop(listener, path.to_owned(), shared.clone(), stop.subscribe());
        tasks.push(runtime.spawn(accept));
        let worker = runtime.spawn(work(shared.clone(), 0));
        let inner = Inner {
            shared,
            tasks,
            worker: Mutex::new(Some(worker)),
            runtime,
        };
        Ok(SimAgent {
            inner: Arc::new(inner),
        })
    }

    pub(super) fn shared(&self) -> &Arc<AgentShared> {
        &self.inner.shared
    }

    fn with<T>(&self, f: impl FnOnce(&mut AgentState) -> T) -> T {
        f(&mut self.inner.shared.lock())
    }

    /// Stops the agent now: tasks end, the socket file is removed.
    pub fn shutdown(&self) {
        if let Some(w) = lock(&self.inner.worker).take() {
            w.abort();
        }
        self.inner.tasks.stop();
    }

    /// The fsfreeze hook takes this long before FIFREEZE; meanwhile the agent answers
    /// nothing, not even `guest-sync-delimited`.
    pub fn set_freeze_hook(&self, d: Duration) {
        self.with(|s| s.knobs.freeze_hook = d);
    }

    /// The thaw hook takes this long after FITHAW, blocking the agent the same way.
    pub fn set_thaw_hook(&self, d: Duration) {
        self.with(|s| s.knobs.thaw_hook = d);
    }

    /// `Some(text)`: the freeze hook fails; a freeze answers `GenericError` `text` and
    /// the guest stays thawed. `None` restores success.
    pub fn fail_freeze_hook(&self, desc: Option<String>) {
        self.with(|s| s.knobs.fail_hook = desc);
    }

    /// `Some(text)`: a freeze freezes some filesystems, then answers `GenericError`
    /// `text`, leaving the guest FROZEN.
    pub fn fail_freeze_partially(&self, desc: Option<String>) {
        self.with(|s| s.knobs.fail_partially = desc);
    }

    /// Programs started by `guest-exec` run this long (`guest-exec-status` says
    /// `exited: false` until then).
    pub fn set_exec_runs(&self, d: Duration) {
        self.with(|st| st.knobs.exec_runs = d);
    }

    /// Makes the guest Windows (`guest-get-osinfo` says `mswindows`; VSS limits the freeze).
    pub fn set_windows(&self, on: bool) {
        self.with(|s| s.knobs.windows = on);
    }

    /// How long VSS holds writes on a Windows guest before releasing them by itself
    /// (default 10 s). The next thaw then answers `GenericError` "couldn't hold writes".
    pub fn set_vss_limit(&self, d: Duration) {
        self.with(|s| s.knobs.vss_limit = d);
    }

    /// A thaw answers a count but the guest stays frozen (and reports "frozen").
    pub fn stick_frozen(&self, on: bool) {
        self.with(|s| s.knobs.stick_frozen = on);
    }

    /// The VM stops: the agent reads and answers nothing until [`SimAgent::resume`].
    pub fn pause(&self) {
        self.inner.shared.paused.send_replace(true);
    }

    /// The VM runs again: queued requests are served in order.
    pub fn resume(&self) {
        self.inner.shared.paused.send_replace(false);
    }

    /// The next reply to `command` is lost (its effect still happens).
    pub fn drop_reply_to(&self, command: &str) {
        self.with(|s| s.knobs.drop_reply.push(command.to_owned()));
    }

    /// `bytes` are written just before the next reply to `command`.
    pub fn garbage_before_reply_to(&self, command: &str, bytes: impl Into<Vec<u8>>) {
        self.with(|s| s.knobs.garbage.push((command.to_owned(), bytes.into())));
    }

    /// Writes `bytes` now, to the connected client or (none connected) to the next one.
    pub fn send_unsolicited(&self, bytes: impl Into<Vec<u8>>) {
        self.with(|s| s.output(bytes.into()));
    }

    /// QEMU closes the current client connection (if any).
    pub fn disconnect_client(&self) {
        self.with(|s| {
            if let Some(c) = &s.client {
                c.kick.notify_one();
            }
        });
    }

    /// qemu-ga restarts: the parser is reset, unread and in-progress requests are lost,
    /// the filesystems stay as they are (a frozen guest stays frozen and says so).
    pub fn restart(&self) {
        let epoch = self.with(|s| {
            s.epoch += 1;
            s.stream.clear();
            s.log.push(SimAgentEvent::Restarted { at: Instant::now() });
            s.epoch
        });
        let mut worker = lock(&self.inner.worker);
        if let Some(old) = worker.take() {
            old.abort();
        }
        *worker = Some(
            self.inner
                .runtime
                .spawn(work(self.inner.shared.clone(), epoch)),
        );
    }

    /// Sets the guest's mountpoints (`/data`, `/data2`, ... by default in a `SimVm`).
    pub fn mountpoints(&self, list: Vec<String>) {
        self.with(|s| s.mountpoints = list);
    }

    /// Whether the filesystems are frozen now: the truth, whatever the agent reports.
    pub fn status(&self) -> SimFsStatus {
        self.with(|s| s.status())
    }

    /// The mountpoints frozen now.
    pub fn frozen_mountpoints(&self) -> Vec<String> {
        self.with(|s| s.frozen.clone())
    }

    /// Everything the agent did so far, in order.
    pub fn log(&self) -> Vec<SimAgentEvent> {
        self.with(|s| s.log.clone())
    }

    /// How many times the filesystems went from thawed to frozen.
    pub fn freeze_count(&self) -> u64 {
        self.with(|s| s.freezes)
    }

    /// How many times they went from frozen to thawed (by a thaw or the VSS limit).
    pub fn thaw_count(&self) -> u64 {
        self.with(|s| s.thaws)
    }

    /// How many client connections were accepted so far.
    pub fn connections(&self) -> u64 {
        self.with(|s| s.connections)
    }
}

/// Accepts one client at a time and feeds its bytes into the shared stream.
async fn accept_loop(
    listener: UnixListener,
    path: PathBuf,
    shared: Arc<AgentShared>,
    mut stop: watch::Receiver<bool>,
) {
    while !*stop.borrow() {
        let stream = tokio::select! {
            // `accept` is cancel-safe.
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            () = server::stopped(&mut stop) => break,
        };
        let (slot, rx) = {
            let mut st = shared.lock();
            st.connections += 1;
            let (slot, rx) = ClientSlot::new(st.connections);
            for bytes in st.backlog.drain(..) {
                let _ = slot.out.send(bytes);
            }
            st.log.push(SimAgentEvent::Connected {
                connection: slot.number,
                at: Instant::now(),
            });
            st.client = Some(slot.clone());
            (slot, rx)
        };
        tracing::debug!(connection = slot.number, "sim agent: client connected");
        server::pump(stream, rx, slot.kick.clone(), |bytes| {
            shared.lock().stream.push(slot.number, bytes);
            shared.data.notify_one();
        })
        .await;
        let mut st = shared.lock();
        if st.client.as_ref().is_some_and(|c| c.number == slot.number) {
            st.client = None;
        }
        st.log.push(SimAgentEvent::Disconnected {
            connection: slot.number,
            at: Instant::now(),
        });
    }
    let _ = std::fs::remove_file(&path);
}
