//! Connection settings.

use qmp::wire::QGA_MAX_FRAME;
use std::time::Duration;

/// Settings for a guest-agent connection. `Config::default()` suits a local VM.
#[derive(Debug, Clone)]
pub struct Config {
    /// Deadline for opening the socket.
    pub connect_timeout: Duration,
    /// Deadline for a whole resync (the opening one included).
    pub sync_timeout: Duration,
    /// How long one `guest-sync-delimited` attempt waits before a new one (with a new
    /// id) is sent. Retrying reaches an agent that starts after we connected.
    pub sync_retry: Duration,
    /// Default deadline for each command (write and reply).
    pub command_timeout: Duration,
    /// Largest reply accepted from the guest, in bytes.
    pub max_frame: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            sync_timeout: Duration::from_secs(5),
            sync_retry: Duration::from_millis(500),
            command_timeout: Duration::from_secs(10),
            max_frame: QGA_MAX_FRAME,
        }
    }
}

impl Config {
    /// Sets [`Config::sync_timeout`].
    pub fn sync_timeout(mut self, timeout: Duration) -> Self {
        self.sync_timeout = timeout;
        self
    }

    /// Sets [`Config::command_timeout`].
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets [`Config::max_frame`].
    pub fn max_frame(mut self, bytes: usize) -> Self {
        self.max_frame = bytes;
        self
    }
}
