//! The tasks that own the socket, and the state they share with client handles.
//!
//! The reader task owns the read half: it routes replies to waiting callers by `id`
//! and events to the broadcast channel, so it never waits on a write or on a slow
//! subscriber. The writer task owns the write half and drains a bounded queue of
//! already-serialized commands. When the reader stops it records the cause once and
//! wakes every pending caller.

use crate::error::Disconnect;
use crate::wire::{Event, Frame, JsonLinesCodec, Message, Outgoing, QmpError, parse, read_frame};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, trace, warn};

/// What the reader sends a waiting caller.
pub(crate) type Reply = Result<Value, QmpError>;

struct State {
    pending: HashMap<u64, oneshot::Sender<Reply>>,
    closed: Option<Disconnect>,
    /// Dropped when the connection closes, so subscribers see the end of the stream
    /// (after the events still buffered).
    events: Option<broadcast::Sender<Event>>,
}

/// State shared by the handles and the two tasks.
pub(crate) struct Shared {
    state: Mutex<State>,
    next_id: AtomicU64,
}

impl Shared {
    pub(crate) fn new(event_capacity: usize) -> Self {
        let state = State {
            pending: HashMap::new(),
            closed: None,
            events: Some(broadcast::channel(event_capacity).0),
        };
        Self {
            state: Mutex::new(state),
            next_id: AtomicU64::new(1),
        }
    }

    /// A new subscription; one that ends at once when the connection is closed.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Event> {
        match &self.lock().events {
            Some(tx) => tx.subscribe(),
            None => broadcast::channel(1).1,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of a map of
        // senders; the map itself is still valid.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a call before its command is written, so its reply cannot race it.
    pub(crate) fn register(&self, id: u64) -> Result<oneshot::Receiver<Reply>, Disconnect> {
        let mut state = self.lock();
        if let Some(cause) = &state.closed {
            return Err(cause.clone());
        }
        let (tx, rx) = oneshot::channel();
        state.pending.insert(id, tx);
        Ok(rx)
    }

    /// Forgets a call (it timed out or was dropped); a late reply is then discarded.
    pub(crate) fn forget(&self, id: u64) {
        self.lock().pending.remove(&id);
    }

    /// The reason the connection closed, if it has.
    pub(crate) fn closed(&self) -> Option<Disconnect> {
        self.lock().closed.clone()
    }

    /// Records the first cause and fails every pending call (their senders drop).
    pub(crate) fn close(&self, cause: Disconnect) {
        let (pending, events) = {
            let mut state = self.lock();
            state.closed.get_or_insert(cause);
            (std::mem::take(&mut state.pending), state.events.take())
        };
        debug!(pending = pending.len(), "qmp connection closed");
        drop((pending, events));
    }

    fn complete(&self, id: Option<Value>, reply: Reply) {
        let Some(id) = id.as_ref().and_then(Value::as_u64) else {
            warn!(?id, "reply without a usable id, discarded");
            return;
        };
        match self.lock().pending.remove(&id) {
            // The caller may have given up between our lookup and this send: fine.
            Some(tx) => drop(tx.send(reply)),
            None => debug!(id, "late reply to a call that timed out or was dropped"),
        }
    }

    fn dispatch(&self, line: &[u8]) {
        match parse(line) {
            Ok(Message::Return { id, value }) => self.complete(id, Ok(value)),
            Ok(Message::Error { id, error }) => self.complete(id, Err(error)),
            Ok(Message::Event(event)) => {
                trace!(event = %event.event, "event");
                // No subscriber is not an error: events are optional.
                if let Some(tx) = &self.lock().events {
                    drop(tx.send(event));
                }
            }
            Ok(Message::Greeting(_)) => warn!("unexpected second greeting, ignored"),
            Err(e) => warn!(error = %e, len = line.len(), "unparseable message, ignored"),
        }
    }
}

/// Starts the reader and writer tasks; returns the queue to the writer.
pub(crate) fn spawn<R, W>(
    reader: FramedRead<R, JsonLinesCodec>,
    writer: W,
    shared: Arc<Shared>,
    queue_depth: usize,
) -> mpsc::Sender<Bytes>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(queue_depth.max(1));
    // Each task holds a sender the other watches, so either one ending ends both and
    // the socket closes whole: no half-dead connection.
    let (writer_alive, writer_gone) = oneshot::channel();
    let (reader_alive, reader_gone) = oneshot::channel();
    let codec = JsonLinesCodec::new(reader.decoder().max_length());
    let sink = FramedWrite::new(writer, codec);
    tokio::spawn(write_task(
        sink,
        rx,
        shared.clone(),
        writer_alive,
        reader_gone,
    ));
    tokio::spawn(read_task(reader, shared, writer_gone, reader_alive));
    tx
}

async fn write_task<W: AsyncWrite + Unpin>(
    mut sink: FramedWrite<W, JsonLinesCodec>,
    mut rx: mpsc::Receiver<Bytes>,
    shared: Arc<Shared>,
    _alive: oneshot::Sender<()>,
    mut reader_gone: oneshot::Receiver<()>,
) {
    loop {
        let first = tokio::select! {
            // In order (no random pick per poll): the reader's end first, so that a
            // queue that never empties cannot hide it.
            biased;
            // Cancel-safe: a oneshot receiver can be polled again. The reader has
            // recorded the cause already.
            _ = &mut reader_gone => return,
            // Cancel-safe: mpsc::Receiver::recv loses no message when dropped.
            first = rx.recv() => match first {
                Some(first) => first,
                None => break,
            },
        };
        let mut result = sink.feed(Outgoing::Message(first)).await;
        // Batch whatever else is queued into the same flush.
        while let (Ok(()), Ok(next)) = (&result, rx.try_recv()) {
            result = sink.feed(Outgoing::Message(next)).await;
        }
        if let Err(e) = result.and(sink.flush().await) {
            shared.close(Disconnect::Io(Arc::new(e)));
            return;
        }
    }
    // Every handle is gone: dropping `_alive` ends the reader, which closes the socket.
    shared.close(Disconnect::Closed);
}

async fn read_task<R: AsyncRead + Unpin>(
    mut stream: FramedRead<R, JsonLinesCodec>,
    shared: Arc<Shared>,
    mut writer_gone: oneshot::Receiver<()>,
    _alive: oneshot::Sender<()>,
) {
    let cause = loop {
        tokio::select! {
            // In order (no random pick per poll): the writer's end first, so that a
            // peer flooding events cannot hide it.
            biased;
            // Cancel-safe: a oneshot receiver can be polled again after a lost race.
            _ = &mut writer_gone => break Disconnect::Closed,
            // Cancel-safe: FramedRead keeps a partial frame in its buffer between polls.
            frame = stream.next() => match read_frame(frame) {
                Err(cause) => break cause,
                Ok(Frame::Line(line)) => shared.dispatch(&line),
                Ok(Frame::TooLong { limit }) => break Disconnect::FrameTooLong { limit },
                Ok(Frame::Sentinel { .. }) => debug!("0xFF byte from QMP peer ignored"),
                Ok(Frame::Truncated { len }) => break Disconnect::Truncated { len },
            },
        }
    };
    shared.close(cause);
}
