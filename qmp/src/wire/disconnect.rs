//! How a connection ends, and which reads end it: one mapping for QMP and the agent.

use super::Frame;
use std::io;
use std::sync::Arc;

/// Why a connection ended. Cheap to clone: every pending and later call gets a copy.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Disconnect {
    /// The peer closed the socket between messages.
    #[error("the peer closed the connection")]
    Eof,
    /// The peer closed the socket in the middle of a message.
    #[error("the peer closed the connection in the middle of a message ({len} bytes received)")]
    Truncated {
        /// Bytes of the unfinished message.
        len: usize,
    },
    /// The peer sent a message longer than the configured limit; its reply could not be
    /// matched to a command, so the connection was closed.
    #[error("the peer sent a message over the {limit}-byte limit (raise Config::max_frame)")]
    FrameTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// Reading or writing the socket failed.
    #[error("i/o error on the socket")]
    Io(#[source] Arc<io::Error>),
    /// Every [`Client`](crate::Client) handle was dropped.
    #[error("the client was dropped")]
    Closed,
}

/// Sorts one read from a [`JsonLinesCodec`](super::JsonLinesCodec) stream: the frame,
/// or the end of the connection it means (the stream ended, failed, or ended inside a
/// line). Sentinels and over-long lines are frames: whether they end the connection is
/// the protocol's call (QMP closes on an over-long line, the agent resyncs).
///
/// # Errors
/// The [`Disconnect`] the read means.
pub fn read_frame(read: Option<io::Result<Frame>>) -> Result<Frame, Disconnect> {
    match read {
        None => Err(Disconnect::Eof),
        Some(Err(e)) => Err(Disconnect::Io(Arc::new(e))),
        Some(Ok(Frame::Truncated { len })) => Err(Disconnect::Truncated { len }),
        Some(Ok(frame)) => Ok(frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_of_stream_failure_and_truncation_end_the_connection_other_frames_do_not() {
        assert!(matches!(read_frame(None), Err(Disconnect::Eof)));
        assert!(matches!(
            read_frame(Some(Err(io::ErrorKind::BrokenPipe.into()))),
            Err(Disconnect::Io(_))
        ));
        assert!(matches!(
            read_frame(Some(Ok(Frame::Truncated { len: 3 }))),
            Err(Disconnect::Truncated { len: 3 })
        ));
        let too_long = Frame::TooLong { limit: 9 };
        assert_eq!(read_frame(Some(Ok(too_long.clone()))).ok(), Some(too_long));
    }
}
