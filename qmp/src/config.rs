//! Connection settings.

use crate::wire::QMP_MAX_FRAME;
use std::time::Duration;

/// Settings for a QMP connection. `Config::default()` suits a local QEMU.
#[derive(Debug, Clone)]
pub struct Config {
    /// Deadline for opening the socket.
    pub connect_timeout: Duration,
    /// Deadline for the greeting and for `qmp_capabilities`.
    pub greeting_timeout: Duration,
    /// Default deadline for each command; override per call with
    /// [`Client::execute_with_timeout`](crate::Client::execute_with_timeout).
    pub command_timeout: Duration,
    /// Largest message accepted from QEMU, in bytes.
    pub max_frame: usize,
    /// Events buffered per subscriber before the slowest one starts missing them.
    pub event_capacity: usize,
    /// Commands queued for the writer task before callers wait.
    pub queue_depth: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            greeting_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(30),
            max_frame: QMP_MAX_FRAME,
            event_capacity: 1024,
            queue_depth: 64,
        }
    }
}

impl Config {
    /// Sets [`Config::command_timeout`].
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets [`Config::greeting_timeout`].
    pub fn greeting_timeout(mut self, timeout: Duration) -> Self {
        self.greeting_timeout = timeout;
        self
    }

    /// Sets [`Config::max_frame`].
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }

    /// Sets [`Config::event_capacity`].
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events.max(1);
        self
    }
}
