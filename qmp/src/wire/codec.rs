//! The bounded, sentinel-aware JSON-lines codec (see [`JsonLinesCodec`]).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io;
use tokio_util::codec::{Decoder, Encoder};

/// Default maximum frame length for QMP: 8 MiB.
///
/// `query-named-block-nodes` on a VM with many disks and long backing chains is the
/// largest reply we expect; it stays far below this.
pub const QMP_MAX_FRAME: usize = 8 * 1024 * 1024;

/// Default maximum frame length for the guest agent: 1 MiB.
///
/// Every reply qsnap asks the agent for is a few KiB at most; the guest is untrusted.
pub const QGA_MAX_FRAME: usize = 1024 * 1024;

/// The byte that `guest-sync-delimited` sends before its reply, and that resets the
/// agent's parser when a client sends it.
pub const SENTINEL: u8 = 0xFF;

/// One item read from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A complete line without its terminating `\n` (or `\r\n`). Blank lines are skipped.
    Line(Bytes),
    /// A `0xFF` byte. `discarded` bytes of an unfinished line before it were dropped.
    Sentinel {
        /// Length of the partial line dropped before the sentinel.
        discarded: usize,
    },
    /// A line grew past the limit. Its bytes are being discarded up to the next `\n`
    /// or `0xFF`; decoding then resumes normally.
    TooLong {
        /// The limit that was exceeded, in bytes.
        limit: usize,
    },
    /// The stream ended inside a line of `len` bytes.
    Truncated {
        /// How many bytes of the unfinished line were received.
        len: usize,
    },
}

/// A frame to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// One serialized JSON document; the codec appends `\n`. It must not contain a raw
    /// newline (compact `serde_json` output never does).
    Message(Bytes),
    /// A single `0xFF` byte, which makes the guest agent drop any partial input.
    Sentinel,
}

/// A bounded, sentinel-aware codec for newline-framed JSON.
///
/// QMP and the guest agent both send one JSON document per line. The peer may be
/// hostile (the guest agent is written by the guest), so the decoder:
///
/// * never holds more than `max_length + 1` bytes of an unfinished line: a longer line
///   is reported once as [`Frame::TooLong`] and then discarded up to its end;
/// * treats the byte `0xFF` — never valid UTF-8, and what `guest-sync-delimited` puts
///   before its reply — as a frame of its own, [`Frame::Sentinel`], dropping any partial
///   line before it (the agent itself resets its parser on `0xFF`);
/// * makes no UTF-8 assumption: lines are [`Bytes`], validated later by serde;
/// * reports recoverable problems as frames, so `Err` means only an I/O error.
///
/// The state machine follows `tokio_util::codec::LinesCodec::new_with_max_length`:
/// a resume offset so no byte is scanned twice, and a discarding state.
#[derive(Debug, Clone)]
pub struct JsonLinesCodec {
    max_length: usize,
    /// Where to resume scanning for a terminator in the buffer.
    next_index: usize,
    /// True while skipping the rest of an over-long line.
    discarding: bool,
}

impl JsonLinesCodec {
    /// A codec that accepts lines of at most `max_length` bytes (terminator excluded).
    pub fn new(max_length: usize) -> Self {
        Self {
            max_length,
            next_index: 0,
            discarding: false,
        }
    }

    /// The configured limit.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Skip bytes of an over-long line; `Some` when a sentinel ended the skipping.
    fn discard(&mut self, buf: &mut BytesMut) -> Option<Frame> {
        match buf.iter().position(|&b| b == b'\n' || b == SENTINEL) {
            Some(i) => {
                let byte = buf[i];
                buf.advance(i + 1);
                self.discarding = false;
                (byte == SENTINEL).then_some(Frame::Sentinel { discarded: 0 })
            }
            None => {
                buf.clear();
                None
            }
        }
    }
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

fn strip_cr(mut line: Bytes) -> Bytes {
    if line.last() == Some(&b'\r') {
        line.truncate(line.len() - 1);
    }
    line
}

impl Decoder for JsonLinesCodec {
    type Item = Frame;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, io::Error> {
        loop {
            if self.discarding {
                if let Some(frame) = self.discard(buf) {
                    return Ok(Some(frame));
                }
                if self.discarding {
                    return Ok(None);
                }
                continue;
            }
            // A line of max_length bytes plus its terminator fits in max_length + 1.
            let read_to = buf.len().min(self.max_length.saturating_add(1));
            let found = buf[self.next_index..read_to]
                .iter()
                .position(|&b| b == b'\n' || b == SENTINEL);
            let Some(offset) = found else {
                if buf.len() > self.max_length {
                    buf.advance(read_to);
                    self.next_index = 0;
                    self.discarding = true;
                    return Ok(Some(Frame::TooLong {
                        limit: self.max_length,
                    }));
                }
                self.next_index = read_to;
                return Ok(None);
            };
            let end = self.next_index + offset;
            self.next_index = 0;
            if buf[end] == SENTINEL {
                buf.advance(end + 1);
                return Ok(Some(Frame::Sentinel { discarded: end }));
            }
            let line = strip_cr(buf.split_to(end + 1).freeze().slice(..end));
            if !is_blank(&line) {
                return Ok(Some(Frame::Line(line)));
            }
        }
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, io::Error> {
        if let Some(frame) = self.decode(buf)? {
            return Ok(Some(frame));
        }
        let rest = std::mem::take(buf);
        self.next_index = 0;
        if std::mem::take(&mut self.discarding) || is_blank(&rest) {
            // An over-long line was already reported; whitespace is not a frame.
            return Ok(None);
        }
        Ok(Some(Frame::Truncated { len: rest.len() }))
    }
}

impl Encoder<Outgoing> for JsonLinesCodec {
    type Error = io::Error;

    fn encode(&mut self, item: Outgoing, dst: &mut BytesMut) -> Result<(), io::Error> {
        match item {
            Outgoing::Message(bytes) => {
                dst.reserve(bytes.len() + 1);
                dst.put_slice(&bytes);
                dst.put_u8(b'\n');
            }
            Outgoing::Sentinel => dst.put_u8(SENTINEL),
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
