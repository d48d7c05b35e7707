//! What the simulated qemu-ga knows and does: its byte stream, its frozen state, its
//! commands and the scripted faults. Pure state; [`super::agent`] drives it.

use super::server::ClientSlot;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Whether the guest's filesystems are frozen: the truth, not what the agent says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFsStatus {
    /// Writes flow.
    Thawed,
    /// At least one filesystem is frozen: writes block.
    Frozen,
}

/// Something the simulated agent did, in order, for assertions and transcripts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SimAgentEvent {
    /// Client `connection` was accepted.
    Connected {
        /// 1 for the first connection, 2 for the second, ...
        connection: u64,
        /// When.
        at: Instant,
    },
    /// Client `connection` went away (or was dropped by QEMU).
    Disconnected {
        /// The connection number.
        connection: u64,
        /// When.
        at: Instant,
    },
    /// The agent began executing `name`, whose last byte arrived on `connection`.
    Command {
        /// The command name.
        name: String,
        /// The connection its request line was completed on.
        connection: u64,
        /// When execution began.
        at: Instant,
    },
    /// Filesystems froze.
    Froze {
        /// The mountpoints now frozen.
        mountpoints: Vec<String>,
        /// When.
        at: Instant,
    },
    /// Filesystems thawed.
    Thawed {
        /// The mountpoints that were frozen.
        mountpoints: Vec<String>,
        /// True when Windows' VSS released the writes by itself (the 10 s limit).
        by_vss_limit: bool,
        /// When.
        at: Instant,
    },
    /// qemu-ga restarted.
    Restarted {
        /// When.
        at: Instant,
    },
}

/// One unit the agent's parser takes off the stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Input {
    /// A 0xFF byte: the partial line was dropped.
    Reset,
    /// A complete line and the connection whose bytes completed it.
    Line(Vec<u8>, u64),
}

/// The one byte stream that outlives client connections, and the parser over it.
#[derive(Debug, Default)]
pub(super) struct Stream {
    chunks: VecDeque<(u64, Vec<u8>)>,
    partial: Vec<u8>,
}

impl Stream {
    /// Appends bytes read from connection `conn`.
    pub(super) fn push(&mut self, conn: u64, bytes: &[u8]) {
        self.chunks.push_back((conn, bytes.to_vec()));
    }

    /// Drops everything: unread bytes and the partial line (a restart).
    pub(super) fn clear(&mut self) {
        self.chunks.clear();
        self.partial.clear();
    }

    /// The next reset or complete non-blank line, if the stream holds one.
    pub(super) fn next(&mut self) -> Option<Input> {
        while let Some((conn, chunk)) = self.chunks.front_mut() {
            let conn = *conn;
            let Some(i) = chunk.iter().position(|&b| b == 0xFF || b == b'\n') else {
                self.partial.append(chunk);
                self.chunks.pop_front();
                continue;
            };
            let delimiter = chunk[i];
            self.partial.extend(chunk.drain(..=i).take(i));
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
            if delimiter == 0xFF {
                self.partial.clear();
                return Some(Input::Reset);
            }
            let line = std::mem::take(&mut self.partial);
            if !line.iter().all(u8::is_ascii_whitespace) {
                return Some(Input::Line(line, conn));
            }
        }
        None
    }
}

/// The scripted faults and settings of the agent.
#[derive(Debug, Clone)]
pub(super) struct Knobs {
    pub(super) freeze_hook: Duration,
    pub(super) thaw_hook: Duration,
    pub(super) fail_hook: Option<String>,
    pub(super) fail_partially: Option<String>,
    pub(super) windows: bool,
    pub(super) vss_limit: Duration,
    pub(super) stick_frozen: bool,
    pub(super) drop_reply: Vec<String>,
    pub(super) garbage: Vec<(String, Vec<u8>)>,
    /// How long a `guest-exec` program runs before `guest-exec-status` says exited.
    pub(super) exec_runs: Duration,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            freeze_hook: Duration::ZERO,
            thaw_hook: Duration::ZERO,
            fail_hook: None,
            fail_partially: None,
            windows: false,
            vss_limit: Duration::from_secs(10),
            stick_frozen: false,
            drop_reply: Vec::new(),
            garbage: Vec::new(),
            exec_runs: Duration::ZERO,
        }
    }
}

/// A QAPI error: `(class, desc)`.
pub(super) type AgentError = (&'static str, String);

/// Everything the simulated agent holds.
#[derive(Debug)]
pub(super) struct AgentState {
    /// Bumped on restart: a worker of an older epoch must not touch anything.
    pub(super) epoch: u64,
    pub(super) stream: Stream,
    pub(super) client: Option<ClientSlot>,
    /// Replies produced while no client was connected, for the next one.
    pub(super) backlog: VecDeque<Vec<u8>>,
    pub(super) knobs: Knobs,
    pub(super) mountpoints: Vec<String>,
    /// The truth: mountpoints whose filesystems are frozen.
    pub(super) frozen: Vec<String>,
    pub(super) frozen_at: Option<Instant>,
    /// qemu-ga's own flag (its state file on Linux): commands disabled, status "frozen".
    pub(super) agent_frozen: bool,
    /// Windows: VSS released the writes after the limit; the next thaw reports it.
    pub(super) vss_expired: bool,
    pub(super) log: Vec<SimAgentEvent>,
    pub(super) freezes: u64,
    pub(super) thaws: u64,
    pub(super) connections: u64,
    pub(super) next_pid: u64,
    /// When each `guest-exec` program started (pid order, from pid 1001).
    pub(super) exec_started: Vec<std::time::Instant>,
}

impl AgentState {
    /// A thawed Linux guest with these mountpoints.
    pub(super) fn new(mountpoints: Vec<String>) -> Self {
        Self {
            epoch: 0,
            stream: Stream::default(),
            client: None,
            backlog: VecDeque::new(),
            knobs: Knobs::default(),
            mountpoints,
            frozen: Vec::new(),
            frozen_at: None,
            agent_frozen: false,
            vss_expired: false,
            log: Vec::new(),
            freezes: 0,
            thaws: 0,
            connections: 0,
            next_pid: 1000,
            exec_started: Vec::new(),
        }
    }

    /// Sends bytes to the connected client, or keeps them for the next one: the guest's
    /// output waits in the virtio-serial queue while no client is connected.
    pub(super) fn output(&mut self, bytes: Vec<u8>) {
        match &self.client {
            Some(c) => {
                let _ = c.out.send(bytes);
            }
            None => self.backlog.push_back(bytes),
        }
    }

    /// Applies what time did by itself: Windows' VSS lets writes flow again once the
    /// limit passes (qemu-ga still believes it is frozen until the next thaw).
    pub(super) fn settle(&mut self, now: Instant) {
        let Some(at) = self.frozen_at else { return };
        if self.knobs.windows && !self.frozen.is_empty() && now >= at + self.knobs.vss_limit {
            let mountpoints = std::mem::take(&mut self.frozen);
            self.frozen_at = None;
            self.vss_expired = true;
            self.thaws += 1;
            self.log.push(SimAgentEvent::Thawed {
                mountpoints,
                by_vss_limit: true,
                at: at + self.knobs.vss_limit,
            });
        }
    }

    /// The truth about the guest's filesystems.
    pub(super) fn status(&self) -> SimFsStatus {
        if self.frozen.is_empty() {
            SimFsStatus::Thawed
        } else {
            SimFsStatus::Frozen
        }
    }

    /// Freezes `targets` (after the hook ran): the reply to a freeze.
    pub(super) fn finish_freeze(
        &mut self,
        targets: Option<Vec<String>>,
        now: Instant,
    ) -> Result<Value, AgentError> {
        if let Some(desc) = self.knobs.fail_hook.clone() {
            return Err(("GenericError", desc));
        }
        let wanted: Vec<String> = match targets {
            None => self.mountpoints.clone(),
            Some(list) => self
                .mountpoints
                .iter()
                .filter(|m| list.contains(m))
                .cloned()
                .collect(),
        };
        if wanted.is_empty() {
            return Ok(json!(0));
        }
        if let Some(desc) = self.knobs.fail_partially.clone() {
            let some = wanted[..wanted.len().div_ceil(2)].to_vec();
            self.freeze(some, now);
            return Err(("GenericError", desc));
        }
        let count = wanted.len();
        self.freeze(wanted, now);
        Ok(json!(count))
    }

    fn freeze(&mut self, mountpoints: Vec<String>, now: Instant) {
        self.frozen = mountpoints.clone();
        self.frozen_at = Some(now);
        self.agent_frozen = true;
        self.freezes += 1;
        self.log.push(SimAgentEvent::Froze {
            mountpoints,
            at: now,
        });
    }

    /// Thaws: the reply, and whether the thaw hook must run after it.
    pub(super) fn thaw(&mut self, now: Instant) -> (Result<Value, AgentError>, bool) {
        if self.vss_expired && self.agent_frozen {
            self.vss_expired = false;
            self.agent_frozen = false;
            let desc =
                "couldn't hold writes: fsfreeze is limited up to 10 seconds: (error: 80042314)";
            return (Err(("GenericError", desc.to_owned())), false);
        }
        if self.frozen.is_empty() {
            self.agent_frozen = false;
            return (Ok(json!(0)), false);
        }
        let count = self.frozen.len();
        if self.knobs.stick_frozen {
            return (Ok(json!(count)), true);
        }
        let mountpoints = std::mem::take(&mut self.frozen);
        self.frozen_at = None;
        self.agent_frozen = false;
        self.thaws += 1;
        self.log.push(SimAgentEvent::Thawed {
            mountpoints,
            by_vss_limit: false,
            at: now,
        });
        (Ok(json!(count)), true)
    }
}
