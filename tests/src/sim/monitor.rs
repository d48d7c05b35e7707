//! [`SimMonitor`]: a simulated QEMU QMP monitor over a block graph.

use super::agent::SimAgent;
use super::args::QmpErr;
use super::bitmap::SimBitmap;
use super::graph::Graph;
use super::jobs::{Jobs, SimJob};
use super::monitor_conn::{Faults, Shared, accept_loop, engine};
use super::qmp_commands::MonState;
use super::server::{Tasks, lock};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::sync::{Notify, watch};

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    tasks: Tasks,
}

/// A simulated QEMU monitor listening on a Unix socket. Cheap to clone; it stops when
/// the last clone is dropped or [`SimMonitor::shutdown`] runs. See the
/// [module docs](super) for the rules it follows.
#[derive(Debug, Clone)]
pub struct SimMonitor {
    inner: Arc<Inner>,
}

impl SimMonitor {
    /// Listens on `path` (which must not exist) with `disks` disks whose image files
    /// are created in `dir` (see [`super::SimVm::start`] for the graph).
    ///
    /// # Errors
    /// When the socket cannot be bound or an image file cannot be written.
    pub async fn start(path: &Path, dir: &Path, disks: usize) -> std::io::Result<SimMonitor> {
        let graph = Graph::new(dir, disks)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(std::io::Error::other)?;
        let listener = UnixListener::bind(path)?;
        let stop = Arc::new(watch::channel(false).0);
        let state = MonState {
            graph,
            jobs: Jobs::default(),
            files: Default::default(),
            client: None,
            log: Vec::new(),
            running: true,
            name: Some("sim".into()),
            agent: None,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            faults: Mutex::new(Faults::default()),
            engine: Notify::new(),
            hung: watch::channel(false).0,
            stop: stop.clone(),
            connections: Mutex::new(0),
        });
        let tasks = Tasks::new(path, stop.clone());
        tasks.push(runtime.spawn(accept_loop(
            listener,
            path.to_owned(),
            shared.clone(),
            stop.subscribe(),
        )));
        tasks.push(runtime.spawn(engine(shared.clone())));
        Ok(SimMonitor {
            inner: Arc::new(Inner { shared, tasks }),
        })
    }

    /// Makes `stop`/`cont` pause and resume `agent`, and `quit` stop it.
    pub(super) fn link_agent(&self, agent: &SimAgent) {
        self.with(|s| s.agent = Some(agent.shared().clone()));
    }

    fn with<T>(&self, f: impl FnOnce(&mut MonState) -> T) -> T {
        f(&mut lock(&self.inner.shared.state))
    }

    fn faults(&self, f: impl FnOnce(&mut Faults)) {
        f(&mut lock(&self.inner.shared.faults));
    }

    /// Stops the monitor now: tasks end, the socket file is removed.
    pub fn shutdown(&self) {
        self.inner.tasks.stop();
    }

    /// Every later `command` takes effect at once but its reply is held for `d`
    /// (`Duration::ZERO` clears); the client's later commands wait behind it.
    pub fn delay(&self, command: &str, d: Duration) {
        self.faults(|f| f.delay_reply.push((command.to_owned(), d)));
    }

    /// Every later `command` waits `d` before taking effect and replying
    /// (`Duration::ZERO` clears); the client's later commands wait behind it.
    pub fn delay_effect_and_reply(&self, command: &str, d: Duration) {
        self.faults(|f| f.delay_all.push((command.to_owned(), d)));
    }

    /// The next `command` fails with `class`/`desc` and changes nothing.
    pub fn fail_next(&self, command: &str, class: &str, desc: &str) {
        let err = QmpErr {
            class: class.to_owned(),
            desc: desc.to_owned(),
        };
        self.faults(|f| f.fail.push((command.to_owned(), err)));
    }

    /// QEMU drops the connection on the next `command`: before its effect (nothing
    /// happens) or after it (it happened, but no reply comes).
    pub fn disconnect_on(&self, command: &str, before_effect: bool) {
        self.faults(|f| f.disconnect.push((command.to_owned(), before_effect)));
    }

    /// The next job of `job_kind` (`create`, `commit` or `backup`) concludes with an
    /// error ("Input/output error") once its progress reaches `at_progress`.
    pub fn fail_job(&self, job_kind: &str, at_progress: u64) {
        self.with(|s| s.jobs.fail.push((job_kind.to_owned(), at_progress)));
    }

    /// Commit and backup jobs copy this many bytes per millisecond (0: at once, the
    /// default).
    pub fn set_job_speed(&self, bytes_per_ms: u64) {
        self.with(|s| s.jobs.speed = (bytes_per_ms > 0).then_some(bytes_per_ms));
    }

    /// What `query-name` answers (`-name`; the default is `sim`); `None`: no name, as
    /// QEMU without `-name` (`{}`).
    pub fn set_name(&self, name: Option<&str>) {
        self.with(|s| s.name = name.map(str::to_owned));
    }

    /// The guest writes `len` bytes at `offset` of `device` (e.g. `vblk0`): into its
    /// active node, whose enabled bitmaps get the range dirty (in whole granules).
    /// False, and nothing written, when there is no such device or the guest is paused
    /// (`stop`).
    pub fn guest_write(&self, device: &str, offset: u64, len: u64) -> bool {
        let Some(root) = self.root(device) else {
            return false;
        };
        self.with(|s| s.running && s.graph.write(&root, offset, len))
    }

    /// The dirty bitmaps of `node`, newest first (QEMU's order), anonymous ones included.
    pub fn bitmaps(&self, node: &str) -> Vec<SimBitmap> {
        self.with(|s| s.graph.sim_bitmaps(node))
    }

    /// The bitmap `name` of `node`.
    pub fn bitmap(&self, node: &str, name: &str) -> Option<SimBitmap> {
        self.bitmaps(node)
            .into_iter()
            .find(|b| b.name.as_deref() == Some(name))
    }

    /// Makes a persistent bitmap what QEMU loads after an unclean exit: inconsistent,
    /// not recording, empty; it can only be removed. False, and nothing changed, when
    /// `node` has no such persistent bitmap or a job holds it.
    pub fn mark_bitmap_inconsistent(&self, node: &str, name: &str) -> bool {
        self.with(|s| s.graph.mark_inconsistent(node, name))
    }

    /// The monitor hangs: commands are read but not executed until [`SimMonitor::resume`].
    pub fn pause(&self) {
        self.inner.shared.hung.send_replace(true);
    }

    /// The monitor answers again, in order.
    pub fn resume(&self) {
        self.inner.shared.hung.send_replace(false);
    }

    /// QEMU closes the current client connection (if any).
    pub fn disconnect_client(&self) {
        self.with(|s| s.client.as_ref().map(|c| c.kick.notify_one()));
    }

    /// Whether the guest CPUs run (`stop` pauses them).
    pub fn running(&self) -> bool {
        self.with(|s| s.running)
    }

    /// The node attached to `device` (e.g. `vblk0`).
    pub fn root(&self, device: &str) -> Option<String> {
        self.with(|s| {
            s.graph
                .devices
                .iter()
                .find(|d| d.id == device)
                .map(|d| d.root.clone())
        })
    }

    /// `device`'s backing chain, active node first.
    pub fn chain(&self, device: &str) -> Vec<String> {
        self.root(device)
            .map(|r| self.with(|s| s.graph.chain(&r)))
            .unwrap_or_default()
    }

    /// Every node, in creation order.
    pub fn nodes(&self) -> Vec<String> {
        self.with(|s| s.graph.nodes.iter().map(|n| n.name.clone()).collect())
    }

    /// Jobs not yet dismissed.
    pub fn jobs(&self) -> Vec<SimJob> {
        self.with(|s| s.jobs.infos())
    }

    /// Names of the commands received, in order.
    pub fn log(&self) -> Vec<String> {
        self.with(|s| s.log.clone())
    }

    /// Files QEMU created that did not exist before.
    pub fn files_created(&self) -> Vec<PathBuf> {
        self.with(|s| s.files.created.clone())
    }

    /// Existing non-empty files QEMU truncated or overwrote: the data-loss traps.
    pub fn files_clobbered(&self) -> Vec<PathBuf> {
        self.with(|s| s.files.clobbered.clone())
    }

    /// How many client connections were accepted so far.
    pub fn connections(&self) -> u64 {
        *lock(&self.inner.shared.connections)
    }
}
