//! Decoding throughput: qsnap's QMP wire layer (the bounded, sentinel-aware
//! `JsonLinesCodec` + `wire::parse` into a typed envelope) against plain line
//! splitting + `serde_json::from_slice` into a `Value`, on the same bytes, interleaved.

use anyhow::Result;
use bytes::BytesMut;
use qmp::wire::{Frame, JsonLinesCodec, QMP_MAX_FRAME};
use std::time::{Duration, Instant};
use tokio_util::codec::Decoder;

/// A stream of QMP traffic: small returns, events, and a large `query-block` reply.
fn corpus(target: usize) -> Vec<u8> {
    let small = br#"{"return": {}, "id": 17}"#.to_vec();
    let event = br#"{"timestamp": {"seconds": 1764322800, "microseconds": 123456}, "event": "JOB_STATUS_CHANGE", "data": {"status": "concluded", "id": "qsnap-1a2b3c-b0-backup"}}"#.to_vec();
    let mut block = br#"{"return": ["#.to_vec();
    for i in 0..8 {
        if i > 0 {
            block.push(b',');
        }
        block.extend(format!(
            r#"{{"io-status": "ok", "device": "", "locked": false, "removable": false, "inserted": {{"iops_rd": 0, "detect_zeroes": "off", "image": {{"virtual-size": 68719476736, "filename": "/var/lib/vm/disk{i}.qcow2", "cluster-size": 65536, "format": "qcow2", "actual-size": 1052672, "format-specific": {{"type": "qcow2", "data": {{"compat": "1.1", "compression-type": "zlib", "lazy-refcounts": false, "refcount-bits": 16, "corrupt": false, "extended-l2": false}}}}, "dirty-flag": false}}, "iops_wr": 0, "ro": false, "node-name": "disk{i}", "backing_file_depth": 1, "drv": "qcow2", "iops": 0, "bps_wr": 0, "write_threshold": 0, "encrypted": false, "bps": 0, "bps_rd": 0, "cache": {{"no-flush": false, "direct": false, "writeback": true}}, "file": "/var/lib/vm/disk{i}.qcow2"}}, "qdev": "/machine/peripheral/vblk{i}/virtio-backend", "type": "unknown"}}"#
        ).bytes());
    }
    block.extend(br#"], "id": 18}"#);
    let mut out = Vec::with_capacity(target + block.len());
    let mut n = 0u64;
    while out.len() < target {
        let line: &[u8] = match n % 10 {
            0 => &block,
            1..=3 => &event,
            _ => &small,
        };
        out.extend_from_slice(line);
        out.push(b'\n');
        n += 1;
    }
    out
}

fn baseline(bytes: &[u8]) -> Result<usize> {
    let mut n = 0;
    for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let _: serde_json::Value = serde_json::from_slice(line)?;
        n += 1;
    }
    Ok(n)
}

fn ours(bytes: &[u8]) -> Result<usize> {
    let mut codec = JsonLinesCodec::new(QMP_MAX_FRAME);
    // The connection reads 8 KiB at a time; feed the codec the same way.
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut n = 0;
    for chunk in bytes.chunks(8192) {
        buf.extend_from_slice(chunk);
        while let Some(frame) = codec.decode(&mut buf)? {
            if let Frame::Line(line) = frame {
                qmp::wire::parse(&line)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

pub(crate) fn throughput() -> Result<()> {
    let bytes = corpus(32 << 20);
    let mb = bytes.len() as f64 / f64::from(1 << 20);
    let (mut base, mut mine) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let t = Instant::now();
        let a = baseline(&bytes)?;
        base.push(t.elapsed());
        let t = Instant::now();
        let b = ours(&bytes)?;
        mine.push(t.elapsed());
        anyhow::ensure!(a == b, "the two decoders saw {a} and {b} lines");
    }
    let rate = |v: &mut Vec<Duration>| {
        v.sort_unstable();
        (
            mb / v[v.len() / 2].as_secs_f64(),
            mb / v[v.len() - 1].as_secs_f64(),
            mb / v[0].as_secs_f64(),
        )
    };
    let (b_med, b_lo, b_hi) = rate(&mut base);
    let (o_med, o_lo, o_hi) = rate(&mut mine);
    println!(
        "QMP decoding, {mb:.0} MiB of mixed replies and events, 7 rounds interleaved (MiB/s):"
    );
    println!(
        "  baseline: split on \\n + serde_json::from_slice::<Value>  median {b_med:>6.0} (range {b_lo:.0}–{b_hi:.0})"
    );
    println!(
        "  qmp::wire: JsonLinesCodec (8 KiB reads) + wire::parse  median {o_med:>6.0} (range {o_lo:.0}–{o_hi:.0})"
    );
    println!(
        "  ratio qsnap / baseline: {:.2}x (higher is faster)",
        o_med / b_med
    );
    Ok(())
}
