//! Where log lines go: stderr, through a bounded queue and a thread of their own.
//!
//! A stalled stderr (a paused terminal, a pipe nobody reads) must never block the
//! runtime while the guest is frozen, so the writer only ever offers a line to the
//! queue; a line the queue cannot take is dropped and counted. At exit the queue gets a
//! bounded time to drain, and the number of dropped lines is reported through it if it
//! drained — never with a blocking write, and never on stdout (which carries results).
//!
//! (This replaces tracing-appender's non-blocking writer, whose default queue is an
//! array channel of 128 000 slots allocated and touched at start — 4 MiB of a 10 MiB
//! peak — and whose guard prints to stdout when it cannot hand over its shutdown.)

use std::io::{self, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Log lines waiting for stderr. Even `-vv` on a whole run stays far below it unless
/// stderr stalls, which is when dropping is the point.
const QUEUE_LINES: usize = 4096;

/// How long the exit waits for the queued lines to reach stderr.
const DRAIN: Duration = Duration::from_millis(500);

enum Msg {
    Line(Vec<u8>),
    /// Answered once every line queued before it has been written.
    Flush(mpsc::Sender<()>),
}

/// The `io::Write` that tracing formats each event into (one `write` per event).
#[derive(Clone)]
pub(crate) struct Writer {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.tx.try_send(Msg::Line(buf.to_vec())) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Drains the queue (for at most [`DRAIN`]) when dropped.
pub(crate) struct Guard {
    tx: SyncSender<Msg>,
    dropped: Arc<AtomicU64>,
}

/// Starts the log thread writing to stderr.
pub(crate) fn start() -> (Writer, Guard) {
    start_with(io::stderr(), QUEUE_LINES)
}

fn start_with(sink: impl Write + Send + 'static, capacity: usize) -> (Writer, Guard) {
    let (tx, rx) = mpsc::sync_channel(capacity);
    let dropped = Arc::new(AtomicU64::new(0));
    // Never joined: a thread stuck on a stalled stderr must not keep the process alive.
    // If it cannot start, every line counts as dropped (the channel is disconnected).
    drop(
        std::thread::Builder::new()
            .name("qsnap-log".into())
            .spawn(move || drain(rx, sink)),
    );
    let writer = Writer {
        tx: tx.clone(),
        dropped: dropped.clone(),
    };
    (writer, Guard { tx, dropped })
}

fn drain(rx: Receiver<Msg>, mut sink: impl Write) {
    for msg in rx {
        match msg {
            // A failing stderr (closed terminal: EIO) just loses the line.
            Msg::Line(line) => drop(sink.write_all(&line)),
            Msg::Flush(done) => drop(done.send(())),
        }
    }
}

impl Guard {
    /// Offers a flush marker and waits for it until `deadline`; true when every line
    /// queued before it was written.
    fn flushed_by(&self, deadline: Instant) -> bool {
        let (done_tx, done_rx) = mpsc::channel();
        let mut marker = Msg::Flush(done_tx);
        loop {
            match self.tx.try_send(marker) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    marker = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        done_rx.recv_timeout(left).is_ok()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let deadline = Instant::now() + DRAIN;
        if !self.flushed_by(deadline) {
            // stderr is not being read: saying so would only join the queue.
            return;
        }
        let dropped = self.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            let note = format!(
                "qsnap: {dropped} log line(s) were dropped while stderr was not being read\n"
            );
            drop(self.tx.try_send(Msg::Line(note.into_bytes())));
            // Give the note the rest of the drain time.
            let _ = self.flushed_by(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that records what reached it, and can be held shut.
    #[derive(Clone, Default)]
    struct Sink {
        got: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.got.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_order_and_the_guard_waits_for_them() {
        let sink = Sink::default();
        let (mut w, guard) = start_with(sink.clone(), 16);
        for i in 0..10 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(guard);
        let got = String::from_utf8(sink.got.lock().unwrap().clone()).unwrap();
        let want: String = (0..10).map(|i| format!("line {i}\n")).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_stalled_sink_never_blocks_a_write_and_the_exit_is_bounded() {
        let sink = Sink::default();
        let held = sink.gate.lock().unwrap();
        let (mut w, guard) = start_with(sink.clone(), 4);
        let start = Instant::now();
        for i in 0..1000 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        assert!(start.elapsed() < Duration::from_secs(1), "a write blocked");
        assert!(guard.dropped.load(Ordering::Relaxed) >= 1000 - 4 - 1);
        let start = Instant::now();
        drop(guard);
        let took = start.elapsed();
        assert!(
            took >= DRAIN - Duration::from_millis(50) && took < DRAIN * 4,
            "the exit waited {took:?}"
        );
        drop(held);
    }

    #[test]
    fn dropped_lines_are_reported_once_stderr_drains() {
        let sink = Sink::default();
        let held = sink.gate.lock().unwrap();
        let (mut w, guard) = start_with(sink.clone(), 2);
        for i in 0..50 {
            w.write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        drop(held); // the reader comes back before the exit
        drop(guard);
        let got = String::from_utf8(sink.got.lock().unwrap().clone()).unwrap();
        assert!(got.starts_with("line 0\n"), "{got}");
        let note = got.lines().last().unwrap();
        assert!(
            note.starts_with("qsnap: ") && note.contains("log line(s) were dropped"),
            "{got}"
        );
    }
}
