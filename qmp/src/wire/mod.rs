//! The sans-IO QAPI wire layer, shared by QMP and the guest agent (which speaks the
//! same format): a bounded codec, the message envelopes, and the [`Command`] trait.
//!
//! Nothing here does I/O; the [`Client`](crate::Client) and the `qga` crate drive it.

mod codec;
mod command;
mod disconnect;
mod error;
mod message;

pub use codec::{Frame, JsonLinesCodec, Outgoing, QGA_MAX_FRAME, QMP_MAX_FRAME, SENTINEL};
pub use command::{Command, Empty};
pub use disconnect::{Disconnect, read_frame};
pub use error::{ErrorClass, QmpError, escape};
pub use message::{
    Event, Greeting, Message, Timestamp, VersionInfo, VersionTriple, encode_execute, parse,
};
