//! The task that owns the agent socket.
//!
//! qemu-ga answers one request at a time, in order, and its replies carry no id. So one
//! task owns both halves and runs one request at a time; a reply is simply the next
//! message after the request. That is only safe on a clean stream, so the task keeps a
//! `needs_sync` flag — set at the start, after any timeout, after any unparseable or
//! over-long frame, after anything unsolicited — and before the next request runs the
//! resync: write `0xFF` (resets the agent's parser, dropping a partial request left by
//! an earlier client) and `guest-sync-delimited` with a random id, then discard every
//! frame until the `0xFF` sentinel followed by that id. Attempts repeat with new ids
//! every `sync_retry` until the sync deadline, which reaches an agent that starts late.
//!
//! One thing does not wait its turn: an *urgent* command (the thaw after a freeze that
//! did not answer). qemu-ga serves one request at a time, and a slow fsfreeze hook
//! blocks it — even a resync goes unanswered — so a thaw that waited for a resync would
//! never be written. An urgent command is written at once, `0xFF` first, even while a
//! request waits for its reply: the agent runs it right after the request before it.
//! Its reply (and the parse error the `0xFF` draws) are left for the next resync.

use crate::Config;
use crate::error::{Error, GuestJsonError, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use qmp::Disconnect;
use qmp::wire::{Frame, JsonLinesCodec, Message, Outgoing, encode_execute, parse, read_frame};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::{FramedRead, FramedWrite};
use tracing::{debug, trace};

/// What a caller asks the task to do.
pub(crate) enum Op {
    /// Run a command: its name and its encoded `execute` line.
    Execute { name: String, message: Bytes },
    /// Resync now.
    Sync,
}

pub(crate) struct Request {
    pub(crate) op: Op,
    pub(crate) deadline: Duration,
    /// Runs even if the caller is gone (a thaw queued from a drop guard).
    pub(crate) detached: bool,
    pub(crate) reply: oneshot::Sender<Result<Value>>,
}

pub(crate) struct Connection<R, W> {
    reader: FramedRead<R, JsonLinesCodec>,
    writer: FramedWrite<W, JsonLinesCodec>,
    config: Config,
    needs_sync: bool,
    closed: Option<Disconnect>,
    /// Encoded commands to write at once (see the module docs).
    urgent: mpsc::UnboundedReceiver<Bytes>,
    /// How many urgent commands were written: each leaves replies nobody reads.
    urgent_writes: u64,
}

/// The end of the connection a read that is not a usable frame means.
fn frame_error(frame: Option<std::io::Result<Frame>>) -> Disconnect {
    match read_frame(frame) {
        Err(cause) => cause,
        Ok(other) => {
            debug!(?other, "not a disconnect");
            Disconnect::Eof
        }
    }
}

impl<R, W> Connection<R, W>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    pub(crate) fn new(
        read: R,
        write: W,
        config: Config,
        urgent: mpsc::UnboundedReceiver<Bytes>,
    ) -> Self {
        Self {
            reader: FramedRead::new(read, JsonLinesCodec::new(config.max_frame)),
            writer: FramedWrite::new(write, JsonLinesCodec::new(config.max_frame)),
            config,
            needs_sync: true,
            closed: None,
            urgent,
            urgent_writes: 0,
        }
    }

    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        loop {
            tokio::select! {
                biased;
                // Cancel-safe: UnboundedReceiver::recv loses no message. A closed
                // channel yields None, which disables the branch for this round.
                Some(message) = self.urgent.recv(), if self.closed.is_none() => {
                    if let Err(e) = self.write_urgent(message).await {
                        self.close(e);
                    }
                }
                // Cancel-safe: mpsc::Receiver::recv loses no message.
                request = rx.recv() => match request {
                    Some(request) => self.serve(request).await,
                    None => return,
                },
                // Cancel-safe: FramedRead keeps partial frames buffered. Only polled
                // when closed is None, so EOF is not seen twice.
                frame = self.reader.next(), if self.closed.is_none() => self.idle_frame(frame),
            }
        }
    }

    /// Writes `0xFF` and an urgent command now. The replies it draws are unread, so a
    /// resync must come before the next command.
    async fn write_urgent(&mut self, message: Bytes) -> std::result::Result<(), Disconnect> {
        self.needs_sync = true;
        self.urgent_writes += 1;
        let written = async {
            self.writer.feed(Outgoing::Sentinel).await?;
            self.writer.feed(Outgoing::Message(message)).await?;
            self.writer.flush().await
        };
        let written = written.await.map_err(|e| Disconnect::Io(Arc::new(e)));
        debug!(
            ok = written.is_ok(),
            "urgent command written behind whatever is in flight"
        );
        written
    }

    /// The next frame from the agent; urgent commands that arrive meanwhile are
    /// written at once.
    async fn next_frame(&mut self) -> Option<std::io::Result<Frame>> {
        loop {
            let message = tokio::select! {
                biased;
                // Cancel-safe: UnboundedReceiver::recv loses no message.
                Some(message) = self.urgent.recv() => message,
                // Cancel-safe: FramedRead keeps partial frames buffered.
                frame = self.reader.next() => return frame,
            };
            if let Err(cause) = self.write_urgent(message).await {
                return Some(Err(std::io::Error::other(cause.to_string())));
            }
        }
    }

    /// Something arrived while no request was out: a late reply, or guest noise.
    fn idle_frame(&mut self, frame: Option<std::io::Result<Frame>>) {
        match frame {
            Some(Ok(Frame::Line(_) | Frame::Sentinel { .. } | Frame::TooLong { .. })) => {
                trace!("unsolicited data from the guest agent discarded");
                self.needs_sync = true;
            }
            other => self.close(frame_error(other)),
        }
    }

    fn close(&mut self, cause: Disconnect) {
        debug!(%cause, "guest-agent connection closed");
        self.closed.get_or_insert(cause);
    }

    async fn serve(&mut self, request: Request) {
        if request.reply.is_closed() && !request.detached {
            return; // The caller gave up before its turn came.
        }
        let result = match &self.closed {
            Some(cause) => Err(Error::Disconnected(cause.clone())),
            None => {
                let gone = || !request.detached && request.reply.is_closed();
                self.perform(&request.op, request.deadline, gone).await
            }
        };
        if let Err(Error::Disconnected(cause)) = &result {
            self.close(cause.clone());
        }
        // The caller may be gone (dropped future); the reply is then discarded.
        let _ = request.reply.send(result);
    }

    /// Runs one request. `gone` says whether its caller has given up: checked again
    /// after a resync, which can take long (a busy agent), so that a command whose
    /// caller left — a freeze abandoned at its deadline, with its thaw already written
    /// urgently — is never written after it.
    async fn perform(
        &mut self,
        op: &Op,
        deadline: Duration,
        gone: impl Fn() -> bool,
    ) -> Result<Value> {
        match op {
            Op::Sync => {
                self.sync(deadline).await?;
                Ok(Value::Null)
            }
            Op::Execute { name, message } => {
                if self.needs_sync {
                    self.sync(self.config.sync_timeout).await?;
                    if gone() {
                        debug!(command = %name, "caller left during the resync; not sent");
                        return Err(Error::Timeout {
                            command: name.clone(),
                            after: deadline,
                        });
                    }
                }
                match timeout(deadline, self.execute(name, message.clone())).await {
                    Ok(result) => result,
                    Err(_) => {
                        self.abandon_write();
                        Err(Error::Timeout {
                            command: name.clone(),
                            after: deadline,
                        })
                    }
                }
            }
        }
    }

    /// After a timeout: drop any unwritten rest of a request, so it can never be
    /// completed by a later write (the agent drops the part it has at our next 0xFF),
    /// and resync before the next request.
    fn abandon_write(&mut self) {
        self.writer.write_buffer_mut().clear();
        self.needs_sync = true;
    }

    async fn write(&mut self, items: Vec<Outgoing>) -> Result<()> {
        for item in items {
            self.writer.feed(item).await.map_err(io_disconnect)?;
        }
        self.writer.flush().await.map_err(io_disconnect)
    }

    async fn execute(&mut self, name: &str, message: Bytes) -> Result<Value> {
        self.write(vec![Outgoing::Message(message)]).await?;
        let mut after_sentinel = false;
        loop {
            let frame = self.next_frame().await;
            let line = match frame {
                Some(Ok(Frame::Line(_))) if after_sentinel => {
                    after_sentinel = false;
                    continue;
                }
                Some(Ok(Frame::Line(line))) => line,
                Some(Ok(Frame::TooLong { limit })) => {
                    self.needs_sync = true;
                    return Err(Error::FrameTooLong {
                        command: name.to_owned(),
                        limit,
                    });
                }
                Some(Ok(Frame::Sentinel { .. })) => {
                    // Only a sync reply follows a sentinel: not ours, and neither is
                    // the line after it.
                    self.needs_sync = true;
                    after_sentinel = true;
                    continue;
                }
                other => return Err(Error::Disconnected(frame_error(other))),
            };
            match parse(&line) {
                Ok(Message::Return { value, .. }) => return Ok(value),
                Ok(Message::Error { error, .. }) => return Err(Error::from_reply(name, error)),
                Ok(Message::Event(_) | Message::Greeting(_)) => {
                    trace!("non-reply message from the guest agent skipped");
                }
                Err(source) => {
                    self.needs_sync = true;
                    return Err(Error::Malformed {
                        command: name.to_owned(),
                        source: GuestJsonError(source),
                    });
                }
            }
        }
    }

    /// The resync described in the module docs.
    async fn sync(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let mut urgent_before = self.urgent_writes;
        loop {
            let id = random_id();
            let message = encode_execute("guest-sync-delimited", &json!({ "id": id }), None)
                .map_err(|source| Error::Encode {
                    command: "guest-sync-delimited".into(),
                    source,
                })?;
            let attempt_end = deadline.min(Instant::now() + self.config.sync_retry);
            let attempt = async {
                self.write(vec![Outgoing::Sentinel, Outgoing::Message(message)])
                    .await?;
                self.await_sync_reply(id).await
            };
            match timeout_at(attempt_end, attempt).await {
                // An urgent command written during this attempt drew replies that
                // may still be on their way: the stream is not clean yet; go again.
                Ok(Ok(())) if self.urgent_writes != urgent_before => {
                    urgent_before = self.urgent_writes;
                    debug!("urgent write during the resync; resyncing again");
                }
                Ok(Ok(())) => {
                    self.needs_sync = false;
                    return Ok(());
                }
                Ok(Err(e)) => return Err(e),
                Err(_) if Instant::now() >= deadline => {
                    self.abandon_write();
                    return Err(Error::SyncTimeout { after: within });
                }
                Err(_) => {
                    self.abandon_write();
                    debug!(id, "no sync reply yet; trying a new id");
                }
            }
        }
    }

    async fn await_sync_reply(&mut self, id: u64) -> Result<()> {
        let mut after_sentinel = false;
        loop {
            let frame = self.next_frame().await;
            match frame {
                Some(Ok(Frame::Sentinel { .. })) => after_sentinel = true,
                Some(Ok(Frame::Line(line))) if after_sentinel => {
                    after_sentinel = false;
                    match parse(&line) {
                        Ok(Message::Return { value, .. }) if value.as_u64() == Some(id) => {
                            return Ok(());
                        }
                        _ => debug!("stale sync reply discarded"),
                    }
                }
                Some(Ok(Frame::Line(_) | Frame::TooLong { .. })) => {
                    after_sentinel = false;
                    trace!("data before the sync sentinel discarded");
                }
                other => return Err(Error::Disconnected(frame_error(other))),
            }
        }
    }
}

fn io_disconnect(e: std::io::Error) -> Error {
    Error::Disconnected(Disconnect::Io(Arc::new(e)))
}

/// A random id in qemu-ga's `int` (int64) range. A collision with a stale reply's id
/// is what the randomness guards against; falling back to the clock is still unique
/// enough for that.
fn random_id() -> u64 {
    let raw = getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
    });
    raw & (i64::MAX as u64)
}
