//! The cloneable client handle.

use crate::Config;
use crate::connection::{Connection, Op, Request};
use crate::error::{Error, GuestJsonError, Result};
use bytes::Bytes;
use qmp::Disconnect;
use qmp::wire::{Command, encode_execute};
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};

/// A handle to one guest-agent connection. Cheap to clone; requests from all clones
/// run one at a time, in order. The connection closes when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    tx: mpsc::Sender<Request>,
    urgent: mpsc::UnboundedSender<Bytes>,
    config: Config,
    /// See [`Client::peer_pid`].
    peer_pid: Option<u32>,
}

impl Client {
    /// Connects to the agent's chardev socket and synchronizes.
    ///
    /// The connection succeeds even before the agent runs in the guest (QEMU owns the
    /// socket); the sync then waits for the agent up to [`Config::sync_timeout`].
    ///
    /// # Errors
    /// [`Error::Connect`] when the socket cannot be opened; [`Error::SyncTimeout`] when
    /// the agent does not answer (not running, VM paused, socket held by another
    /// client); [`Error::Disconnected`].
    pub async fn connect(path: impl AsRef<Path>, config: Config) -> Result<Self> {
        let (read, write, pid) = open(path.as_ref(), &config).await?;
        let mut client = Self::spawn(read, write, config);
        client.peer_pid = pid;
        client.sync().await?;
        Ok(client)
    }

    /// Connects without the opening sync: the first command resyncs instead.
    ///
    /// For rescuers: a thaw queued with [`Client::execute_urgent`] right after
    /// connecting reaches an agent that cannot answer a sync yet (a slow fsfreeze hook
    /// blocks it), and runs as soon as the agent is free.
    ///
    /// # Errors
    /// [`Error::Connect`] when the socket cannot be opened.
    pub async fn connect_unsynced(path: impl AsRef<Path>, config: Config) -> Result<Self> {
        let (read, write, pid) = open(path.as_ref(), &config).await?;
        let mut client = Self::spawn(read, write, config);
        client.peer_pid = pid;
        Ok(client)
    }

    /// The process serving the agent socket (QEMU, or whatever listens on the path),
    /// from `SO_PEERCRED` when connecting; `None` over [`Client::handshake`] or when
    /// the kernel gave none.
    pub fn peer_pid(&self) -> Option<u32> {
        self.peer_pid
    }

    /// Runs the opening sync over any byte stream (what tests and fake agents use).
    ///
    /// # Errors
    /// As [`Client::connect`], without [`Error::Connect`].
    pub async fn handshake<IO>(io: IO, config: Config) -> Result<Self>
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (read, write) = tokio::io::split(io);
        Self::start(read, write, config).await
    }

    async fn start<R, W>(read: R, write: W, config: Config) -> Result<Self>
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let client = Self::spawn(read, write, config);
        client.sync().await?;
        Ok(client)
    }

    fn spawn<R, W>(read: R, write: W, config: Config) -> Self
    where
        R: AsyncRead + Send + Unpin + 'static,
        W: AsyncWrite + Send + Unpin + 'static,
    {
        let (tx, rx) = mpsc::channel(16);
        let (urgent, urgent_rx) = mpsc::unbounded_channel();
        tokio::spawn(Connection::new(read, write, config.clone(), urgent_rx).run(rx));
        Self {
            tx,
            urgent,
            config,
            peer_pid: None,
        }
    }

    /// Resynchronizes now (0xFF + `guest-sync-delimited`), under [`Config::sync_timeout`].
    ///
    /// # Errors
    /// [`Error::SyncTimeout`], [`Error::Disconnected`].
    ///
    /// # Cancel safety
    /// Dropping the future lets a sync already started finish on the connection task.
    pub async fn sync(&self) -> Result<()> {
        self.request(Op::Sync, self.config.sync_timeout, false)
            .await
            .map(drop)
    }

    /// Runs a typed command with the default deadline.
    ///
    /// # Errors
    /// [`Error::Disabled`], [`Error::NotFound`], [`Error::Command`] for agent errors;
    /// [`Error::Timeout`] (the command may still complete in the guest);
    /// [`Error::SyncTimeout`] when a needed resync fails; [`Error::Malformed`],
    /// [`Error::Decode`], [`Error::FrameTooLong`] for bad replies; [`Error::Disconnected`].
    ///
    /// # Cancel safety
    /// Dropping the future does not cancel a command already sent: it completes in the
    /// guest and its reply is discarded. A command not yet sent is skipped.
    pub async fn execute<C: Command>(&self, cmd: &C) -> Result<C::Output> {
        self.execute_with_timeout(cmd, self.config.command_timeout)
            .await
    }

    /// Runs a typed command with its own deadline.
    ///
    /// # Errors
    /// As [`Client::execute`].
    ///
    /// # Cancel safety
    /// As [`Client::execute`].
    pub async fn execute_with_timeout<C: Command>(
        &self,
        cmd: &C,
        deadline: Duration,
    ) -> Result<C::Output> {
        let value = self.call(C::NAME, cmd, deadline, false).await?;
        decode::<C>(value)
    }

    /// Queues a command that runs even if every handle and future is dropped — what a
    /// drop guard uses to thaw. The returned receiver may be ignored.
    ///
    /// # Errors
    /// [`Error::Encode`], or [`Error::Disconnected`] when the connection task is gone.
    pub fn execute_detached<C: Command>(
        &self,
        cmd: &C,
    ) -> Result<oneshot::Receiver<Result<Value>>> {
        let op = execute_op(C::NAME, cmd)?;
        let (reply, rx) = oneshot::channel();
        let request = Request {
            op,
            deadline: self.config.command_timeout,
            detached: true,
            reply,
        };
        self.tx
            .try_send(request)
            .map_err(|_| Error::Disconnected(Disconnect::Closed))?;
        Ok(rx)
    }

    /// Writes `0xFF` and `cmd` at once — even while another request waits for its
    /// reply, and without a resync first — and does not wait for a reply (the next
    /// resync discards it).
    ///
    /// This is how a thaw reaches an agent that is still busy with a freeze (qemu-ga
    /// serves one request at a time; a slow fsfreeze hook blocks even a resync): the
    /// agent runs the thaw right after the freeze. Confirm the outcome afterwards with
    /// an ordinary call (`guest-fsfreeze-status`). Usable from `Drop`.
    ///
    /// # Errors
    /// [`Error::Encode`], or [`Error::Disconnected`] when the connection task is gone.
    pub fn execute_urgent<C: Command>(&self, cmd: &C) -> Result<()> {
        let message = encode_execute(C::NAME, cmd, None).map_err(|source| Error::Encode {
            command: C::NAME.to_owned(),
            source,
        })?;
        self.urgent
            .send(message)
            .map_err(|_| Error::Disconnected(Disconnect::Closed))
    }

    /// Runs any command by name with JSON arguments (`Value::Null` for none).
    ///
    /// # Errors
    /// As [`Client::execute`], without [`Error::Decode`].
    ///
    /// # Cancel safety
    /// As [`Client::execute`].
    pub async fn execute_raw(&self, name: &str, arguments: Value) -> Result<Value> {
        self.call(name, &arguments, self.config.command_timeout, false)
            .await
    }

    /// [`Client::execute_raw`] with its own deadline.
    ///
    /// # Errors
    /// As [`Client::execute_raw`].
    ///
    /// # Cancel safety
    /// As [`Client::execute`].
    pub async fn execute_raw_with_timeout(
        &self,
        name: &str,
        arguments: Value,
        deadline: Duration,
    ) -> Result<Value> {
        self.call(name, &arguments, deadline, false).await
    }

    async fn call(
        &self,
        name: &str,
        args: &impl Serialize,
        deadline: Duration,
        detached: bool,
    ) -> Result<Value> {
        let op = execute_op(name, args)?;
        self.request(op, deadline, detached).await
    }

    async fn request(&self, op: Op, deadline: Duration, detached: bool) -> Result<Value> {
        let (reply, rx) = oneshot::channel();
        let request = Request {
            op,
            deadline,
            detached,
            reply,
        };
        let gone = || Error::Disconnected(Disconnect::Closed);
        self.tx.send(request).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())?
    }
}

/// Opens the agent socket under the connect deadline.
async fn open(
    path: &Path,
    config: &Config,
) -> Result<(qmp::socket::ReadHalf, qmp::socket::WriteHalf, Option<u32>)> {
    let connect_error = |source| Error::Connect {
        path: path.to_owned(),
        source,
    };
    let stream = qmp::socket::connect_unix(path, config.connect_timeout)
        .await
        .map_err(connect_error)?;
    let pid = qmp::socket::peer_pid(&stream);
    let (read, write) = qmp::socket::split(stream).map_err(connect_error)?;
    Ok((read, write, pid))
}

fn execute_op(name: &str, args: &impl Serialize) -> Result<Op> {
    let message = encode_execute(name, args, None).map_err(|source| Error::Encode {
        command: name.to_owned(),
        source,
    })?;
    Ok(Op::Execute {
        name: name.to_owned(),
        message,
    })
}

fn decode<C: Command>(value: Value) -> Result<C::Output> {
    serde_json::from_value(value).map_err(|source| Error::Decode {
        command: C::NAME.to_owned(),
        source: GuestJsonError(source),
    })
}
