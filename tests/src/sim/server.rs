//! The socket side shared by both simulated peers: one client at a time, and a pump
//! that moves bytes between that client and the peer.
//!
//! QEMU serves a chardev socket and a QMP monitor socket to one client at a time: it
//! does not `accept()` the next connection until the current one ends, so a second
//! client's `connect()` succeeds (the kernel queues it) but it hears nothing. Serving
//! each connection inline in the accept loop gives exactly that.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

/// The client currently connected to a simulated peer: where its output goes and how to
/// drop it.
#[derive(Debug, Clone)]
pub(super) struct ClientSlot {
    /// 1 for the first connection, 2 for the second, ...
    pub(super) number: u64,
    /// Bytes queued here are written to the client in order.
    pub(super) out: mpsc::UnboundedSender<Vec<u8>>,
    /// Notified to make the peer close this connection.
    pub(super) kick: Arc<Notify>,
}

impl ClientSlot {
    /// A slot for connection `number` and the receiving end of its output queue.
    pub(super) fn new(number: u64) -> (Self, mpsc::UnboundedReceiver<Vec<u8>>) {
        let (out, rx) = mpsc::unbounded_channel();
        let kick = Arc::new(Notify::new());
        (Self { number, out, kick }, rx)
    }
}

/// Locks a simulator mutex; a panic elsewhere (only possible in a test) must not make
/// every later call fail too, so poisoning is ignored.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Moves bytes for one connection until the client closes (EOF, including a
/// half-close, which QEMU treats as the end), an I/O error, or a kick.
pub(super) async fn pump(
    stream: UnixStream,
    mut out: mpsc::UnboundedReceiver<Vec<u8>>,
    kick: Arc<Notify>,
    mut on_read: impl FnMut(&[u8]),
) {
    let (mut rd, mut wr) = stream.into_split();
    let mut buf = vec![0u8; 8192];
    loop {
        tokio::select! {
            // `read` is cancel-safe: no bytes are consumed when another arm wins.
            r = rd.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => on_read(&buf[..n]),
            },
            // `recv` is cancel-safe: a message is either returned or left queued.
            Some(bytes) = out.recv() => {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            // `notified` is cancel-safe: a stored permit survives a lost race.
            () = kick.notified() => {
                // What the peer wrote before closing still goes out, as QEMU flushes.
                while let Ok(bytes) = out.try_recv() {
                    if wr.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                break;
            }
        }
    }
}

/// Owns a simulated peer's background tasks and its socket file: stopping (or dropping)
/// it aborts the tasks and removes the socket.
#[derive(Debug)]
pub(super) struct Tasks {
    socket: PathBuf,
    stop: Arc<watch::Sender<bool>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl Tasks {
    /// A guard for the peer listening on `socket`; `stop` tells its loops to end.
    pub(super) fn new(socket: &Path, stop: Arc<watch::Sender<bool>>) -> Self {
        Self {
            socket: socket.to_owned(),
            stop,
            handles: Mutex::new(Vec::new()),
        }
    }

    /// Adds a task to abort on stop.
    pub(super) fn push(&self, handle: JoinHandle<()>) {
        lock(&self.handles).push(handle);
    }

    /// Aborts every task and removes the socket file. Idempotent.
    pub(super) fn stop(&self) {
        self.stop.send_replace(true);
        for handle in lock(&self.handles).drain(..) {
            handle.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `stop` turns true (or its sender is gone).
pub(super) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Splits a byte stream into lines (without the `\n` and a trailing `\r`), keeping a
/// partial line for the next push.
#[derive(Debug, Default)]
pub(super) struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// Appends `bytes` and returns every line they complete; blank lines are skipped.
    pub(super) fn push(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        for &b in bytes {
            if b == b'\n' {
                let mut line = std::mem::take(&mut self.partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if !line.iter().all(u8::is_ascii_whitespace) {
                    lines.push(line);
                }
            } else {
                self.partial.push(b);
            }
        }
        lines
    }
}

/// Serializes like QEMU's JSON writer: `": "` and `", "` separators, non-ASCII
/// characters escaped as `\uXXXX` (so 0xFF's replacement character reads `\uFFFD`).
pub(super) fn qemu_json(value: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, QemuFormatter);
    // Writing a `Value` into a Vec cannot fail.
    let _ = serde::Serialize::serialize(value, &mut ser);
    out
}

struct QemuFormatter;

impl serde_json::ser::Formatter for QemuFormatter {
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    write!(w, "\\u{u:04X}")?;
                }
            }
        }
        Ok(())
    }
}
