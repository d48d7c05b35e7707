//! A simulated VM, in-process: a fake QEMU QMP monitor with a block graph and a fake
//! qemu-ga, each on a real Unix socket, modelled on QEMU 10.0.2 and qemu-ga 10.0.2 as
//! observed on the rig (`docs/protocol.md`), so that a client wrong the way production
//! is wrong fails against it — and every fault is scriptable.
//!
//! # Example
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use qsnap_tests::sim::{SimFsStatus, SimVm};
//! use std::time::Duration;
//! let dir = tempfile::tempdir()?;
//! let vm = SimVm::start(dir.path(), 2).await?;
//! vm.agent().set_freeze_hook(Duration::from_millis(300)); // a slow fsfreeze hook
//! vm.monitor().delay("transaction", Duration::from_secs(2)); // a slow transaction reply
//!
//! let agent = qga::Client::connect(vm.qga_path(), qga::Config::default()).await?;
//! let frozen = agent.execute(&qga::commands::GuestFsfreezeFreeze).await?;
//! assert_eq!(vm.agent().status(), SimFsStatus::Frozen);
//! agent.execute(&qga::commands::GuestFsfreezeThaw).await?;
//! assert_eq!(vm.agent().status(), SimFsStatus::Thawed);
//! assert_eq!(vm.monitor().chain("vblk0"), ["disk0"]);
//! println!("froze {frozen} filesystems; agent saw {:?}", vm.agent().log());
//! # Ok(())
//! # }
//! ```
//!
//! # Behavior
//! **Both sockets** serve one client at a time: a second client's `connect` succeeds
//! but it hears nothing (not even the QMP greeting) until the first one closes. A
//! client's EOF, half-close included, ends its connection.
//!
//! **The agent** ([`SimAgent`]) reads ONE byte stream that outlives connections: a
//! partial line left by a departed client is prefixed to the next client's bytes. A
//! 0xFF byte drops the partial line and draws `{"error": {"class": "GenericError",
//! "desc": "JSON parse error, stray '\uFFFD'"}}`; an invalid line draws a parse error
//! too. Requests run strictly one at a time, in order; replies (no id, `\n`-terminated;
//! `guest-sync-delimited`'s preceded by 0xFF) go to whichever client is connected when
//! they are produced, or wait for the next one. The fsfreeze hook runs before the freeze
//! and the thaw hook after the thaw, and nothing is answered meanwhile — not even a
//! sync; what arrives queues and runs after. While frozen only ping, info, sync,
//! sync-delimited, fsfreeze-status and fsfreeze-thaw work, the rest answer
//! `CommandNotFound` "Command X has been disabled: the command is not allowed". A
//! client leaving while frozen leaves the guest frozen; `freeze-list` of mountpoints
//! that do not exist answers 0 and stays thawed; a thaw when thawed answers 0.
//! Knobs: [`SimAgent::set_freeze_hook`], [`set_thaw_hook`](SimAgent::set_thaw_hook),
//! [`fail_freeze_hook`](SimAgent::fail_freeze_hook),
//! [`fail_freeze_partially`](SimAgent::fail_freeze_partially) (stays frozen),
//! [`set_windows`](SimAgent::set_windows) + [`set_vss_limit`](SimAgent::set_vss_limit)
//! (writes resume by themselves after the limit; qemu-ga still says "frozen" and the
//! next thaw answers "couldn't hold writes ... (error: 80042314)"),
//! [`stick_frozen`](SimAgent::stick_frozen), [`pause`](SimAgent::pause) /
//! [`resume`](SimAgent::resume) (also driven by QMP `stop`/`cont` in a [`SimVm`]),
//! [`drop_reply_to`](SimAgent::drop_reply_to),
//! [`garbage_before_reply_to`](SimAgent::garbage_before_reply_to),
//! [`send_unsolicited`](SimAgent::send_unsolicited),
//! [`disconnect_client`](SimAgent::disconnect_client), [`restart`](SimAgent::restart)
//! (unread and running requests are lost; a frozen guest stays frozen and says so),
//! [`mountpoints`](SimAgent::mountpoints).
//!
//! **The monitor** ([`SimMonitor`]) greets with QEMU 10.0.2's greeting, refuses commands
//! before `qmp_capabilities` (`CommandNotFound`), echoes `id`, ends lines with `\r\n`
//! and interleaves events (`JOB_STATUS_CHANGE` on every job transition,
//! `BLOCK_JOB_READY`, `BLOCK_JOB_PENDING`, `BLOCK_JOB_COMPLETED`, `BLOCK_JOB_CANCELLED`,
//! `STOP`, `RESUME`, `SHUTDOWN`). Arguments are checked strictly ("Parameter 'x' is
//! unexpected"). It serves a client's commands one at a time; a departed client's
//! queued commands are dropped. `query-name` (`sim`), `query-uuid` (all zeros). The
//! graph: `query-block` (`"device": ""`, the active node in `inserted`),
//! `query-named-block-nodes`, both with a node's `dirty-bitmaps` when it has any;
//! `blockdev-create` jobs (`file` creates or TRUNCATES an unrelated file; `qcow2` runs
//! `qemu-img create`, so the image is real); `blockdev-add` (a qcow2 image with a
//! backing file needs `"backing": null`, else `Failed to get shared "write" lock`;
//! duplicate node names refused); `blockdev-del` (refuses a node attached, used as
//! backing or file, or held by a job); `blockdev-snapshot` (the node must not be a
//! backing node, the overlay must exist, have no backing and be unused) and
//! `blockdev-snapshot-sync` (overwrites an existing file, which stays even when the
//! transaction fails); `block-dirty-bitmap-add`/`-remove`/`-merge`/`-clear`/`-enable`/
//! `-disable` (newest first; guest writes, see [`SimMonitor::guest_write`], dirty the
//! enabled bitmaps of the device's active node); `blockdev-backup` (`full`, `top`,
//! `bitmap`, `incremental`, `none`; the sync bitmap is frozen behind an anonymous
//! successor that records meanwhile, then handed over per `bitmap-mode`; the job holds
//! its target); an atomic `transaction` of all of these (and `abort`), whose
//! `completion-mode: grouped` accepts only backups, which then wait for each other and
//! fail together; `block-commit` (active: `ready` then `job-complete` pivots; otherwise
//! completes by itself; what the guest wrote into the committed nodes dirties the
//! base's enabled bitmaps), `query-jobs`, `job-complete`, `job-cancel`,
//! `job-finalize`, `job-dismiss`; unique job ids among undismissed jobs; an
//! undismissed commit or backup job keeps its nodes busy.
//! Knobs: [`SimMonitor::delay`] (effect now, reply later),
//! [`delay_effect_and_reply`](SimMonitor::delay_effect_and_reply),
//! [`fail_next`](SimMonitor::fail_next), [`disconnect_on`](SimMonitor::disconnect_on),
//! [`fail_job`](SimMonitor::fail_job), [`set_job_speed`](SimMonitor::set_job_speed),
//! [`mark_bitmap_inconsistent`](SimMonitor::mark_bitmap_inconsistent),
//! [`set_name`](SimMonitor::set_name), [`pause`](SimMonitor::pause) (the monitor hangs).
//!
//! # Limits
//! Request lines are parsed line by line (qemu-ga's streaming JSON parser is not
//! reproduced byte for byte); the VM's disks and `blockdev-snapshot-sync` overlays hold
//! a fake header, not qcow2; no job writes data into an image; a qcow2 node's backing
//! file is never opened implicitly; only `file` and `qcow2` drivers, `create`, `commit`
//! and `backup` jobs exist; no copy-before-write filter node appears; a `top` backup
//! copies what the guest wrote into the node; persistent bitmaps are not stored in
//! images (they go with their node); a failed transaction emits no events for the jobs
//! it would have started. Texts marked `sim:` are the simulator's own.

mod agent;
mod agent_commands;
mod agent_model;
mod agent_worker;
mod args;
mod backup;
mod bitmap;
mod chunks;
mod graph;
mod graph_query;
mod image;
mod job_steps;
mod jobs;
mod monitor;
mod monitor_conn;
mod qmp_bitmaps;
mod qmp_commands;
mod qmp_graph;
mod qmp_snapshot;
mod server;
#[cfg(test)]
mod tests_agent;
#[cfg(test)]
mod tests_backup;
#[cfg(test)]
mod tests_bitmaps;
#[cfg(test)]
mod tests_graph;
#[cfg(test)]
mod tests_monitor;
#[cfg(test)]
mod tests_support;
mod transaction;

pub use agent::SimAgent;
pub use agent_model::{SimAgentEvent, SimFsStatus};
pub use bitmap::SimBitmap;
pub use jobs::SimJob;
pub use monitor::SimMonitor;

use std::path::{Path, PathBuf};

/// A simulated VM: a [`SimMonitor`] on `dir/qmp.sock` and a [`SimAgent`] on
/// `dir/qga.sock`, linked so that QMP `stop`/`cont` pause and resume the agent and
/// `quit` ends both. Dropping it (or [`SimVm::shutdown`]) stops both and removes the
/// sockets.
#[derive(Debug)]
pub struct SimVm {
    dir: PathBuf,
    agent: SimAgent,
    monitor: SimMonitor,
}

impl SimVm {
    /// Creates `dir/qmp.sock`, `dir/qga.sock`, and for each disk `i` the image
    /// `dir/disk{i}.qcow2`. Graph: node `file{i}` (driver `file`) under node `disk{i}`
    /// (qcow2, virtual size 64 MiB, cluster size 65536) attached to device `vblk{i}`
    /// (qdev `/machine/peripheral/vblk{i}/virtio-backend`). The guest mounts `/data`,
    /// `/data2`, ... one per disk.
    ///
    /// # Errors
    /// When a socket cannot be bound or an image file cannot be written.
    pub async fn start(dir: &Path, disks: usize) -> std::io::Result<SimVm> {
        let monitor = SimMonitor::start(&dir.join("qmp.sock"), dir, disks).await?;
        let mountpoints = (0..disks)
            .map(|i| {
                if i == 0 {
                    "/data".to_owned()
                } else {
                    format!("/data{}", i + 1)
                }
            })
            .collect();
        let agent = SimAgent::start_with(&dir.join("qga.sock"), mountpoints)?;
        monitor.link_agent(&agent);
        Ok(SimVm {
            dir: dir.to_owned(),
            agent,
            monitor,
        })
    }

    /// The QMP socket.
    pub fn qmp_path(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// The guest agent's socket.
    pub fn qga_path(&self) -> PathBuf {
        self.dir.join("qga.sock")
    }

    /// The guest agent: faults to script, truth to inspect.
    pub fn agent(&self) -> &SimAgent {
        &self.agent
    }

    /// The QMP monitor: faults to script, the graph to inspect.
    pub fn monitor(&self) -> &SimMonitor {
        &self.monitor
    }

    /// Stops both peers now and removes the sockets (the image files stay).
    pub fn shutdown(&self) {
        self.monitor.shutdown();
        self.agent.shutdown();
    }
}

impl Drop for SimVm {
    fn drop(&mut self) {
        self.shutdown();
    }
}
