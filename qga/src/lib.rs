//! An async client for the QEMU guest agent (qemu-ga), hardened against a hostile guest.
//!
//! # Example
//! ```no_run
//! use qga::{Client, Config, commands::{FsfreezeStatus, GuestFsfreezeFreeze,
//!     GuestFsfreezeStatus, GuestFsfreezeThaw}};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), qga::Error> {
//! let agent = Client::connect("/run/vm/qga.sock", Config::default()).await?;
//! let frozen = agent.execute(&GuestFsfreezeFreeze).await?;
//! // ... snapshot the disks ...
//! let thawed = agent.execute(&GuestFsfreezeThaw).await?;
//! assert_eq!(agent.execute(&GuestFsfreezeStatus).await?, FsfreezeStatus::Thawed);
//! println!("froze {frozen}, thawed {thawed}");
//! # Ok(())
//! # }
//! ```
//!
//! # Behavior
//! * **Resync.** The agent's socket carries whatever earlier clients left: replies to
//!   requests they never read, requests written before the agent started (all answered
//!   at once when it starts), a partial request that would corrupt our first one. So the
//!   opening, and every resync, writes `0xFF` (the agent drops partial input) and
//!   `guest-sync-delimited` with a random id, discards everything up to the `0xFF`
//!   sentinel and every reply whose id is not ours, and retries with new ids every
//!   [`Config::sync_retry`] until [`Config::sync_timeout`]. A resync runs before the next
//!   command after any timeout and after any unparseable, over-long or unsolicited frame.
//! * **One request in flight.** qemu-ga answers in order and without ids; a single task
//!   owns the socket and runs requests one at a time.
//! * **Deadlines.** Every command has one ([`Config::command_timeout`], or per call),
//!   counted from when the command starts on the connection (a needed resync first
//!   takes up to [`Config::sync_timeout`]). A timed-out command may still complete in
//!   the guest; its late reply is discarded by the next resync.
//! * **Errors** tell a command disabled now ([`Error::Disabled`], e.g. while frozen)
//!   from one the agent lacks ([`Error::NotFound`]).
//! * **Drops.** Dropping a future does not cancel a command already sent.
//!   [`Client::execute_detached`] queues one that runs even if every handle is dropped.
//!
//! # Limits
//! A reply longer than [`Config::max_frame`] (1 MiB) fails the command with
//! [`Error::FrameTooLong`] and is discarded as it streams in: no more than the limit is
//! ever buffered. Non-UTF-8 or non-JSON replies are [`Error::Malformed`]; replies of the
//! wrong type [`Error::Decode`]; nothing the guest sends can panic the client. Agent
//! error text is escaped before display. See `docs/protocol.md`.

mod client;
pub mod commands;
mod config;
mod connection;
mod error;

pub use client::Client;
pub use config::Config;
pub use error::{Error, GuestJsonError, Result};
