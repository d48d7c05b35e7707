//! Target `codec`: byte streams, cut at random points, through
//! `qmp::wire::JsonLinesCodec`.
//!
//! Checks: no panic; after every `decode` call the buffer holds at most
//! `max + 1` bytes plus the chunk just read (and at most `max + 1` once `decode` has
//! nothing more to give); the frames do not depend on where the stream was cut; they
//! equal those of a byte-at-a-time model of the documented rules; and each frame
//! respects the limit.

use crate::harness::{Failure, guarded, show_bytes, shrink_bytes};
use crate::mutate::{Mutator, random_bytes};
use crate::rng::Rng;
use bytes::{Bytes, BytesMut};
use qmp::wire::{Frame, JsonLinesCodec, SENTINEL};
use tokio_util::codec::Decoder;

/// One input: the bytes, the codec's limit, and the read sizes (cycled).
#[derive(Debug, Clone)]
pub(crate) struct Case {
    data: Vec<u8>,
    max: usize,
    chunks: Vec<usize>,
}

pub(crate) fn generate(rng: &mut Rng, mutator: &Mutator) -> Case {
    let max = match rng.below(10) {
        0 => rng.below(8),
        1 | 2 => rng.range(8, 64),
        _ => rng.range(64, 4097),
    };
    let mut data = mutator.transcript(rng, 64 * 1024);
    if rng.chance(15) {
        // A line around the limit or far past it, ended one way or another.
        let n = rng.range(max.saturating_sub(2), max * 3 + 3);
        let at = rng.below(data.len() + 1);
        let mut long = vec![b'x'; n];
        long.extend(random_bytes(rng, 2));
        data.splice(at..at, long);
    }
    let chunks = match rng.below(5) {
        0 => vec![1],
        1 => (0..8).map(|_| rng.range(1, 16)).collect(),
        2 => (0..8).map(|_| rng.range(1, max * 2 + 3)).collect(),
        3 => vec![rng.range(1, data.len() + 2)],
        _ => (0..16).map(|_| rng.small_len(data.len() + 1)).collect(),
    };
    Case { data, max, chunks }
}

/// Checks one case; on success names the rarest frame it produced (for the report).
pub(crate) fn run(case: &Case) -> Result<&'static str, String> {
    guarded(|| check(case))
}

fn check(case: &Case) -> Result<&'static str, String> {
    let whole = decode(&case.data, case.max, &[case.data.len().max(1)])?;
    let split = decode(&case.data, case.max, &case.chunks)?;
    if whole != split {
        return Err(format!(
            "frames depend on the split:\n  whole: {whole:?}\n  split: {split:?}"
        ));
    }
    let model = model(&case.data, case.max);
    if whole != model {
        return Err(format!(
            "frames differ from the model of the documented rules:\n  codec: {whole:?}\n  model: {model:?}"
        ));
    }
    frame_rules(&whole, case.max)?;
    let has = |f: fn(&Frame) -> bool| whole.iter().any(f);
    Ok(if has(|f| matches!(f, Frame::TooLong { .. })) {
        "too_long"
    } else if has(|f| matches!(f, Frame::Sentinel { .. })) {
        "sentinel"
    } else if has(|f| matches!(f, Frame::Truncated { .. })) {
        "truncated"
    } else {
        "lines_only"
    })
}

/// Feeds `data` in reads of the sizes in `chunks` (cycled), then EOF.
fn decode(data: &[u8], max: usize, chunks: &[usize]) -> Result<Vec<Frame>, String> {
    let mut codec = JsonLinesCodec::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut rest = data;
    for &size in chunks.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.clamp(1, rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        loop {
            let frame = codec.decode(&mut buf).map_err(|e| format!("decode: {e}"))?;
            let bound = max + 1 + if frame.is_some() { chunk.len() } else { 0 };
            if buf.len() > bound {
                return Err(format!(
                    "too many bytes buffered: {} after decode returned {frame:?} (limit {max}, read {})",
                    buf.len(),
                    chunk.len()
                ));
            }
            match frame {
                Some(frame) => out.push(frame),
                None => break,
            }
        }
    }
    while let Some(frame) = codec
        .decode_eof(&mut buf)
        .map_err(|e| format!("eof: {e}"))?
    {
        out.push(frame);
        if out.len() > data.len() + 2 {
            return Err("decode_eof keeps yielding frames".into());
        }
    }
    Ok(out)
}

/// The codec's documented rules, one byte at a time.
fn model(data: &[u8], max: usize) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut partial = Vec::new();
    let mut discarding = false;
    for &b in data {
        if discarding {
            discarding = b != b'\n' && b != SENTINEL;
            if b == SENTINEL {
                out.push(Frame::Sentinel { discarded: 0 });
            }
            continue;
        }
        match b {
            SENTINEL => {
                out.push(Frame::Sentinel {
                    discarded: partial.len(),
                });
                partial.clear();
            }
            b'\n' => {
                let mut line = std::mem::take(&mut partial);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if !is_blank(&line) {
                    out.push(Frame::Line(Bytes::from(line)));
                }
            }
            _ => {
                partial.push(b);
                if partial.len() > max {
                    out.push(Frame::TooLong { limit: max });
                    partial.clear();
                    discarding = true;
                }
            }
        }
    }
    if !discarding && !is_blank(&partial) {
        out.push(Frame::Truncated { len: partial.len() });
    }
    out
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

fn frame_rules(frames: &[Frame], max: usize) -> Result<(), String> {
    for (i, frame) in frames.iter().enumerate() {
        let ok = match frame {
            Frame::Line(l) => {
                l.len() <= max && !is_blank(l) && !l.iter().any(|&b| b == b'\n' || b == SENTINEL)
            }
            Frame::Sentinel { discarded } => *discarded <= max,
            Frame::TooLong { limit } => *limit == max,
            Frame::Truncated { len } => *len <= max && i + 1 == frames.len(),
        };
        if !ok {
            return Err(format!(
                "a frame breaks the limit or the framing: frame {i} is {frame:?}, limit {max}"
            ));
        }
    }
    Ok(())
}

/// Shrinks a failing case: simpler reads, fewer bytes, a smaller limit, plain bytes.
pub(crate) fn minimize(case: Case, message: String) -> Failure {
    let mut budget = 20_000;
    let mut best = simpler_reads(case);
    loop {
        let before = (best.data.len(), best.max);
        best = shrink_data(best, &mut budget);
        best = shrink_max(best, &mut budget);
        if (best.data.len(), best.max) == before || budget == 0 {
            break;
        }
    }
    best = plain_bytes(best, &mut budget);
    let mut message = message;
    still(&best, &mut message);
    Failure {
        message,
        input: format!(
            "max_length {}, {}, input {} bytes:\n{}",
            best.max,
            match best.chunks[..] {
                [n] if n >= best.data.len() => "in one read".to_owned(),
                _ => format!("reads of {:?} bytes (cycled)", best.chunks),
            },
            best.data.len(),
            show_bytes(&best.data)
        ),
    }
}

/// One read of everything, or one byte at a time, if the failure stays.
fn simpler_reads(case: Case) -> Case {
    for chunks in [vec![case.data.len().max(1)], vec![1]] {
        let candidate = Case {
            chunks,
            ..case.clone()
        };
        if still(&candidate, &mut String::new()) {
            return candidate;
        }
    }
    case
}

fn shrink_data(case: Case, budget: &mut usize) -> Case {
    let data = shrink_bytes(case.data.clone(), budget, |d| {
        let c = Case {
            data: d.to_vec(),
            ..case.clone()
        };
        still(&c, &mut String::new())
    });
    Case { data, ..case }
}

fn shrink_max(mut case: Case, budget: &mut usize) -> Case {
    while case.max > 0 && *budget > 0 {
        *budget -= 1;
        let smaller = [case.max / 2, case.max - 1].into_iter().find_map(|max| {
            let candidate = Case {
                max,
                ..case.clone()
            };
            still(&candidate, &mut String::new()).then_some(candidate)
        });
        match smaller {
            Some(candidate) => case = candidate,
            None => break,
        }
    }
    case
}

/// Replaces bytes that are not framing (newline, CR, sentinel, whitespace) by `a`.
fn plain_bytes(mut case: Case, budget: &mut usize) -> Case {
    for i in 0..case.data.len() {
        let b = case.data[i];
        if *budget == 0 || b == b'a' || b == SENTINEL || b.is_ascii_whitespace() {
            continue;
        }
        *budget -= 1;
        case.data[i] = b'a';
        if !still(&case, &mut String::new()) {
            case.data[i] = b;
        }
    }
    case
}

/// Whether `case` still fails; if so, its message goes to `message`.
fn still(case: &Case, message: &mut String) -> bool {
    match run(case) {
        Err(m) => {
            *message = m;
            true
        }
        Ok(_) => false,
    }
}

impl AsRef<[u8]> for Case {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}
