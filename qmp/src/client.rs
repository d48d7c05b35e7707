//! The cloneable client handle.

use crate::Config;
use crate::commands::QmpCapabilities;
use crate::connection::{Reply, Shared, spawn};
use crate::error::{Disconnect, Error, Result};
use crate::events::Events;
use crate::wire::{
    Command, Frame, Greeting, JsonLinesCodec, Message, encode_execute, parse, read_frame,
};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tokio_util::codec::FramedRead;

/// A handle to one QMP connection. Cheap to clone; all clones share the connection,
/// and any number of commands may be in flight at once.
///
/// The connection closes when the last handle is dropped.
#[derive(Clone)]
pub struct Client {
    tx: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
    greeting: Arc<Greeting>,
    command_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("qemu", &self.greeting.version.qemu)
            .field("closed", &self.shared.closed())
            .finish_non_exhaustive()
    }
}

/// Removes a pending call when its future ends or is dropped, so a late reply is dropped.
struct PendingGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl PendingGuard<'_> {
    /// The reply came: the reader already removed the call, nothing to forget.
    fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.forget(self.id);
    }
}

impl Client {
    /// Connects to a QMP Unix socket, reads the greeting and negotiates capabilities.
    ///
    /// # Errors
    /// [`Error::Connect`] when the socket cannot be opened, [`Error::GreetingTimeout`]
    /// when QEMU does not greet (usually: another client holds the socket), and the
    /// errors of [`Client::handshake`].
    pub async fn connect(path: impl AsRef<Path>, config: Config) -> Result<Self> {
        let path = path.as_ref();
        let connect_error = |source| Error::Connect {
            path: path.to_owned(),
            source,
        };
        let stream = crate::socket::connect_unix(path, config.connect_timeout)
            .await
            .map_err(connect_error)?;
        let (read, write) = crate::socket::split(stream).map_err(connect_error)?;
        Self::start(read, write, config).await
    }

    /// Runs the QMP opening over any byte stream: reads the greeting, starts the
    /// connection tasks, and sends `qmp_capabilities`.
    ///
    /// # Errors
    /// [`Error::GreetingTimeout`], [`Error::Protocol`] when the first message is not a
    /// greeting, [`Error::Disconnected`] when the peer leaves, or the error QEMU gives
    /// `qmp_capabilities`.
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
        let mut reader = FramedRead::new(read, JsonLinesCodec::new(config.max_frame));
        let after = config.greeting_timeout;
        let greeting = timeout(after, read_greeting(&mut reader))
            .await
            .map_err(|_| Error::GreetingTimeout { after })??;
        let shared = Arc::new(Shared::new(config.event_capacity));
        let tx = spawn(reader, write, shared.clone(), config.queue_depth);
        let client = Self {
            tx,
            shared,
            greeting: Arc::new(greeting),
            command_timeout: config.command_timeout,
        };
        client
            .execute_with_timeout(&QmpCapabilities::default(), after)
            .await?;
        Ok(client)
    }

    /// The greeting QEMU sent: its version and capabilities.
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// Subscribes to events. Only events that arrive after this call are seen.
    pub fn events(&self) -> Events {
        Events::new(self.shared.subscribe())
    }

    /// Why the connection closed, or `None` while it is open.
    pub fn closed(&self) -> Option<Disconnect> {
        self.shared.closed()
    }

    /// Runs a typed command with the default deadline.
    ///
    /// # Errors
    /// [`Error::Command`] when QEMU rejects it, [`Error::Timeout`], [`Error::Disconnected`],
    /// [`Error::Decode`] when the reply has another type, [`Error::Encode`].
    ///
    /// # Cancel safety
    /// Dropping the future does not cancel the command in QEMU; its reply is discarded.
    pub async fn execute<C: Command>(&self, cmd: &C) -> Result<C::Output> {
        self.execute_with_timeout(cmd, self.command_timeout).await
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
        let value = self.call(C::NAME, cmd, deadline).await?;
        serde_json::from_value(value).map_err(|source| Error::Decode {
            command: C::NAME.to_owned(),
            source,
        })
    }

    /// Runs any command by name with JSON arguments (`Value::Null` for none).
    ///
    /// # Errors
    /// As [`Client::execute`], without [`Error::Decode`].
    ///
    /// # Cancel safety
    /// As [`Client::execute`].
    pub async fn execute_raw(&self, name: &str, arguments: Value) -> Result<Value> {
        self.call(name, &arguments, self.command_timeout).await
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
        self.call(name, &arguments, deadline).await
    }

    async fn call(&self, name: &str, args: &impl Serialize, deadline: Duration) -> Result<Value> {
        let id = self.shared.next_id();
        let message = encode_execute(name, args, Some(id)).map_err(|source| Error::Encode {
            command: name.to_owned(),
            source,
        })?;
        let rx = self.shared.register(id).map_err(Error::Disconnected)?;
        let guard = PendingGuard {
            shared: &self.shared,
            id,
        };
        let reply = timeout(deadline, self.send_and_wait(message, rx)).await;
        if matches!(reply, Ok(Ok(_))) {
            guard.disarm();
        }
        match reply {
            Err(_) => Err(Error::Timeout {
                command: name.to_owned(),
                after: deadline,
            }),
            Ok(Err(cause)) => Err(Error::Disconnected(cause)),
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(Error::Command {
                command: name.to_owned(),
                error,
            }),
        }
    }

    async fn send_and_wait(
        &self,
        message: Bytes,
        rx: oneshot::Receiver<Reply>,
    ) -> Result<Reply, Disconnect> {
        let gone = || self.shared.closed().unwrap_or(Disconnect::Closed);
        self.tx.send(message).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

async fn read_greeting<R: AsyncRead + Unpin>(
    reader: &mut FramedRead<R, JsonLinesCodec>,
) -> Result<Greeting> {
    let frame = read_frame(reader.next().await).map_err(Error::Disconnected)?;
    let line = match frame {
        Frame::Line(line) => line,
        Frame::TooLong { limit } => {
            return Err(Error::Disconnected(Disconnect::FrameTooLong { limit }));
        }
        Frame::Truncated { len } => return Err(Error::Disconnected(Disconnect::Truncated { len })),
        Frame::Sentinel { .. } => {
            return Err(Error::Protocol("0xFF byte instead of a greeting".into()));
        }
    };
    match parse(&line) {
        Ok(Message::Greeting(greeting)) => Ok(greeting),
        Ok(other) => Err(Error::Protocol(format!(
            "expected the QMP greeting, got {}",
            kind(&other)
        ))),
        Err(e) => Err(Error::Protocol(format!("unparseable greeting: {e}"))),
    }
}

fn kind(message: &Message) -> &'static str {
    match message {
        Message::Greeting(_) => "a greeting",
        Message::Return { .. } => "a reply",
        Message::Error { .. } => "an error",
        Message::Event(_) => "an event",
    }
}
