//! An async client for the QEMU Machine Protocol (QMP), with a bounded wire layer.
//!
//! # Example
//! ```no_run
//! use qmp::{Client, Config, commands::{QueryBlock, QueryStatus}};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), qmp::Error> {
//! let client = Client::connect("/run/vm/qmp.sock", Config::default()).await?;
//! println!("QEMU {}", client.greeting().version.qemu);
//! let status = client.execute(&QueryStatus).await?;
//! for block in client.execute(&QueryBlock).await? {
//!     let node = block.inserted.and_then(|i| i.node_name);
//!     println!("{} {node:?} ({})", block.device, status.status);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Behavior
//! * [`Client::connect`] opens the socket, reads the greeting (its version is in
//!   [`Client::greeting`]) and sends `qmp_capabilities`, each under a deadline.
//! * Every command gets a fresh numeric `id`; any number may be in flight and replies
//!   may come in any order. A caller is registered *before* its command is written.
//! * Every command has a deadline ([`Config::command_timeout`], or per call with
//!   [`Client::execute_with_timeout`]). A reply that arrives after its deadline is
//!   discarded and the connection goes on.
//! * Events ([`Client::events`]) go to a bounded broadcast channel: the reader never
//!   waits for a subscriber; a slow one gets [`EventsError::Lagged`].
//! * When the connection ends, the cause ([`Disconnect`]) is recorded once and every
//!   pending and later call fails with [`Error::Disconnected`].
//! * The connection closes when the last [`Client`] clone is dropped.
//!
//! # Limits
//! A message from QEMU longer than [`Config::max_frame`] (8 MiB by default) closes the
//! connection with [`Disconnect::FrameTooLong`]; at most that many bytes are buffered.
//! QEMU serves one client per monitor socket: a second client waits for the greeting
//! until [`Config::greeting_timeout`].

mod client;
pub mod commands;
mod config;
mod connection;
mod error;
mod events;
pub mod socket;
pub mod wire;

pub use client::Client;
pub use config::Config;
pub use error::{Disconnect, Error, Result};
pub use events::{Events, EventsError};
pub use wire::{ErrorClass, Event, Greeting, QmpError};
