//! The rig's error type.

use std::path::PathBuf;

/// Errors from the rig.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The guest image was not built.
    #[error("guest image incomplete: {} is missing; run `cargo xtask guest-image`", .0.display())]
    NoImage(PathBuf),
    /// A VM was asked for something the image cannot give.
    #[error("bad VM configuration: {0}")]
    Config(String),
    /// A program could not be started.
    #[error("cannot run {0}")]
    Spawn(&'static str, #[source] std::io::Error),
    /// A tool failed.
    #[error("{0} failed: {1}")]
    Tool(&'static str, String),
    /// File system error.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    /// QMP failed.
    #[error("qmp")]
    Qmp(#[from] qmp::Error),
    /// The guest agent failed.
    #[error("guest agent")]
    Qga(#[from] qga::Error),
}

/// Shorthand for results of the rig.
pub type Result<T, E = Error> = std::result::Result<T, E>;
