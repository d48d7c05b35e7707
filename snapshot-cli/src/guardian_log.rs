//! The guardian's log: a file beside the VM lock, and syslog when there is one.
//!
//! The guardian outlives the terminal it was started from, so it never writes to
//! stderr; and a failed write is never fatal (no `eprintln!`, which panics on EIO).

use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

/// syslog priority: facility daemon (3) × 8 + severity warning (4).
const PRIORITY: u8 = 28;

/// Where the guardian's lines go.
#[derive(Debug)]
pub(crate) struct Log {
    file: Option<PathBuf>,
    syslog: Option<UnixDatagram>,
    tag: String,
}

impl Log {
    /// A log appending to `file` (if any) and sending to `/dev/log` (if present).
    pub(crate) fn open(file: Option<&Path>) -> Self {
        // Non-blocking: a stalled syslog daemon must never hold up a rescue; a line
        // it cannot take is dropped.
        let syslog = UnixDatagram::unbound()
            .and_then(|s| s.set_nonblocking(true).map(|()| s))
            .and_then(|s| s.connect("/dev/log").map(|()| s))
            .ok();
        Self {
            file: file.map(Path::to_owned),
            syslog,
            tag: format!("qsnap-guardian[{}]", std::process::id()),
        }
    }

    /// A log appending to `file` only (tests: nothing reaches the host's syslog).
    #[cfg(test)]
    pub(crate) fn file_only(file: &Path) -> Self {
        Self {
            file: Some(file.to_owned()),
            syslog: None,
            tag: format!("qsnap-guardian[{}]", std::process::id()),
        }
    }

    /// Writes one line; errors are ignored (there is nobody to tell).
    pub(crate) fn line(&self, text: &str) {
        let text = qmp::wire::escape(text);
        if let Some(path) = &self.file
            && let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
        {
            let now = humantime::format_rfc3339_millis(std::time::SystemTime::now());
            let _ = writeln!(f, "{now} {}: {text}", self.tag);
        }
        if let Some(sock) = &self.syslog {
            let _ = sock.send(format!("<{PRIORITY}>{}: {text}", self.tag).as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_appended_escaped_and_a_missing_directory_is_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.log");
        let log = Log::open(Some(&path));
        log.line("first");
        log.line("guest said \u{1b}[2J");
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.contains("first") && !text.contains('\u{1b}'), "{text}");
        Log::open(Some(&dir.path().join("missing/g.log"))).line("nowhere to go");
    }
}
