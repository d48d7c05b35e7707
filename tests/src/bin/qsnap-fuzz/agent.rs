//! The hostile fake qemu-ga of target `qga-client`: what it reads, and the record of
//! everything it reads and writes that the oracle judges the client by (its output as
//! the frames the client's codec makes of it).
//!
//! It parses the client's bytes the way qemu-ga does: `0xFF` drops partial input, one
//! request per line. How it answers is in `actor`.

use crate::rng::Rng;
use bytes::BytesMut;
use qmp::wire::{Frame, JsonLinesCodec, Message, parse};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, DuplexStream, ReadHalf};
use tokio::sync::mpsc;
use tokio_util::codec::Decoder;

/// The longest the agent stops reading its input (a busy agent).
pub(crate) const MAX_STALL: Duration = Duration::from_millis(30);
const TRANSCRIPT_CAP: usize = 400;

/// What the agent read.
#[derive(Debug, Clone)]
pub(crate) enum Inbound {
    Sentinel,
    Request { name: String, args: Value },
    Garbage,
}

/// A frame of the agent's output, as the client decodes it.
#[derive(Debug)]
pub(crate) enum Seen {
    Sentinel,
    Return(Value),
    Other,
}

/// Everything the agent read and wrote.
pub(crate) struct Record {
    pub(crate) inbound: Vec<Inbound>,
    pub(crate) frames: Vec<Seen>,
    pub(crate) transcript: Vec<String>,
    pub(crate) bytes: u64,
    codec: JsonLinesCodec,
    buf: BytesMut,
}

impl Record {
    pub(crate) fn new(max_frame: usize) -> Self {
        Self {
            inbound: Vec::new(),
            frames: Vec::new(),
            transcript: Vec::new(),
            bytes: 0,
            codec: JsonLinesCodec::new(max_frame),
            buf: BytesMut::new(),
        }
    }

    pub(crate) fn log(&mut self, line: String) {
        if self.transcript.len() < TRANSCRIPT_CAP {
            self.transcript.push(line);
        }
    }

    /// Runs written bytes through the same codec the client uses.
    pub(crate) fn wrote(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.buf.extend_from_slice(data);
        while let Ok(Some(frame)) = self.codec.decode(&mut self.buf) {
            self.frames.push(match frame {
                Frame::Sentinel { .. } => Seen::Sentinel,
                Frame::Line(line) => match parse(&line) {
                    Ok(Message::Return { value, .. }) => Seen::Return(value),
                    _ => Seen::Other,
                },
                Frame::TooLong { .. } | Frame::Truncated { .. } => Seen::Other,
            });
        }
    }
}

pub(crate) type Shared = Arc<Mutex<Record>>;

pub(crate) fn with<T>(record: &Shared, f: impl FnOnce(&mut Record) -> T) -> Option<T> {
    record.lock().ok().map(|mut r| f(&mut r))
}

/// Reads and parses the client's bytes until EOF; `leftover` is a partial request an
/// earlier client left in the agent's parser.
pub(crate) async fn read_loop(
    mut rd: ReadHalf<DuplexStream>,
    tx: mpsc::UnboundedSender<Inbound>,
    record: Shared,
    mut rng: Rng,
    leftover: Vec<u8>,
) {
    let mut partial = leftover;
    let mut buf = vec![0u8; 4096];
    loop {
        if rng.chance(3) {
            tokio::time::sleep(MAX_STALL.mul_f64(rng.below(101) as f64 / 100.0)).await;
        }
        let n = match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            let item = match b {
                0xFF => {
                    partial.clear();
                    Inbound::Sentinel
                }
                b'\n' => match serde_json::from_slice::<Value>(&std::mem::take(&mut partial)) {
                    Ok(v) => Inbound::Request {
                        name: v["execute"].as_str().unwrap_or("").to_owned(),
                        args: v["arguments"].clone(),
                    },
                    Err(_) => Inbound::Garbage,
                },
                _ => {
                    if partial.len() < 64 * 1024 {
                        partial.push(b);
                    }
                    continue;
                }
            };
            with(&record, |r| {
                r.log(format!("agent read {item:?}"));
                r.inbound.push(item.clone());
            });
            let _ = tx.send(item);
        }
    }
}
