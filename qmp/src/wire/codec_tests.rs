//! Edge cases after `tokio-util/tests/codecs.rs`, plus property tests.

use super::*;
use proptest::prelude::*;

fn line(s: &[u8]) -> Frame {
    Frame::Line(Bytes::copy_from_slice(s))
}

/// Feeds `chunks` one after another, then EOF; returns every frame.
fn decode_chunks(max: usize, chunks: &[&[u8]]) -> Vec<Frame> {
    let mut codec = JsonLinesCodec::new(max);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            out.push(frame);
        }
    }
    while let Some(frame) = codec.decode_eof(&mut buf).unwrap() {
        out.push(frame);
    }
    out
}

#[test]
fn line_of_exactly_max_is_accepted() {
    let frames = decode_chunks(5, &[b"12345\n"]);
    assert_eq!(frames, vec![line(b"12345")]);
}

#[test]
fn line_of_exactly_max_with_crlf_counts_the_cr() {
    let frames = decode_chunks(5, &[b"1234\r\n", b"12345\r\n"]);
    assert_eq!(frames, vec![line(b"1234"), Frame::TooLong { limit: 5 }]);
}

#[test]
fn line_of_max_plus_one_is_too_long() {
    let frames = decode_chunks(5, &[b"123456\n"]);
    assert_eq!(frames, vec![Frame::TooLong { limit: 5 }]);
}

#[test]
fn overlong_then_good_frame_recovers() {
    let frames = decode_chunks(4, &[b"aaaaaaaaaa", b"aaaa\n{}\n"]);
    assert_eq!(frames, vec![Frame::TooLong { limit: 4 }, line(b"{}")]);
}

#[test]
fn overlong_is_reported_before_its_newline_arrives() {
    let mut codec = JsonLinesCodec::new(4);
    let mut buf = BytesMut::from(&b"abcdefgh"[..]);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Frame::TooLong { limit: 4 })
    );
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    assert!(buf.is_empty(), "discarded bytes must not stay buffered");
}

#[test]
fn burst_of_frames_in_one_read() {
    let frames = decode_chunks(64, &[b"{\"a\":1}\r\n{\"b\":2}\n\n{\"c\":3}\n"]);
    assert_eq!(
        frames,
        vec![line(b"{\"a\":1}"), line(b"{\"b\":2}"), line(b"{\"c\":3}")]
    );
}

#[test]
fn newline_split_across_reads() {
    let frames = decode_chunks(64, &[b"{\"a\":1}\r", b"\n{\"b\"", b":2}", b"\n"]);
    assert_eq!(frames, vec![line(b"{\"a\":1}"), line(b"{\"b\":2}")]);
}

#[test]
fn partial_frame_at_eof_is_truncated() {
    let frames = decode_chunks(64, &[b"{\"a\":1}\n{\"ret"]);
    assert_eq!(
        frames,
        vec![line(b"{\"a\":1}"), Frame::Truncated { len: 5 }]
    );
}

#[test]
fn trailing_whitespace_at_eof_is_not_a_frame() {
    assert_eq!(decode_chunks(64, &[b"{}\n\r"]), vec![line(b"{}")]);
}

#[test]
fn sentinel_mid_frame_drops_the_partial_line() {
    let frames = decode_chunks(64, &[b"{\"ret\xffurn\":1}\n"]);
    assert_eq!(
        frames,
        vec![Frame::Sentinel { discarded: 5 }, line(b"urn\":1}")]
    );
}

#[test]
fn sentinel_after_a_partial_frame_in_an_earlier_read() {
    let frames = decode_chunks(64, &[b"garbage", b" more", b"\xff{\"return\": 7}\n"]);
    assert_eq!(
        frames,
        vec![Frame::Sentinel { discarded: 12 }, line(b"{\"return\": 7}")]
    );
}

#[test]
fn sentinel_ends_an_overlong_line() {
    let frames = decode_chunks(4, &[b"aaaaaaaaaaaa\xff{}\n"]);
    assert_eq!(
        frames,
        vec![
            Frame::TooLong { limit: 4 },
            Frame::Sentinel { discarded: 0 },
            line(b"{}")
        ]
    );
}

#[test]
fn non_utf8_is_passed_through_as_bytes() {
    let frames = decode_chunks(64, &[b"\xc3\x28\x80\n"]);
    assert_eq!(frames, vec![line(b"\xc3\x28\x80")]);
}

#[test]
fn hundred_mib_without_newline_stays_within_the_limit() {
    const MAX: usize = QGA_MAX_FRAME;
    let mut codec = JsonLinesCodec::new(MAX);
    let mut buf = BytesMut::new();
    let chunk = vec![b'x'; 64 * 1024];
    let mut too_long = 0;
    for _ in 0..(100 * 1024 * 1024 / chunk.len()) {
        buf.extend_from_slice(&chunk);
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            assert_eq!(frame, Frame::TooLong { limit: MAX });
            too_long += 1;
        }
        assert!(buf.len() <= MAX + 1, "buffered {} bytes", buf.len());
    }
    assert_eq!(too_long, 1, "an over-long line is reported once");
}

#[test]
fn encoder_appends_newline_and_writes_raw_sentinel() {
    let mut codec = JsonLinesCodec::new(64);
    let mut dst = BytesMut::new();
    codec.encode(Outgoing::Sentinel, &mut dst).unwrap();
    codec
        .encode(Outgoing::Message(Bytes::from_static(b"{}")), &mut dst)
        .unwrap();
    assert_eq!(&dst[..], b"\xff{}\n");
}

/// Cuts `data` at the given (sorted, deduplicated) positions.
fn cut<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts {
        let c = c.min(data.len());
        if c > start {
            out.push(&data[start..c]);
            start = c;
        }
    }
    out.push(&data[start..]);
    out
}

fn transcript() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"{\"return\": {}}\n".to_vec()),
        Just(b"{\"event\": \"STOP\"}\r\n".to_vec()),
        Just(b"\xff".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(b'a'..=b'z', 10..60),
    ];
    proptest::collection::vec(piece, 0..20).prop_map(|p| p.concat())
}

proptest! {
    #[test]
    fn any_chunking_decodes_the_same(
        data in transcript(),
        max in 1usize..48,
        mut cuts in proptest::collection::vec(0usize..1200, 0..30),
    ) {
        cuts.sort_unstable();
        cuts.dedup();
        let whole = decode_chunks(max, &[&data]);
        let pieces = decode_chunks(max, &cut(&data, &cuts));
        prop_assert_eq!(whole, pieces);
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        max in 0usize..64,
    ) {
        let mut codec = JsonLinesCodec::new(max);
        let mut buf = BytesMut::new();
        for chunk in data.chunks(7) {
            buf.extend_from_slice(chunk);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                if let Frame::Line(l) = frame {
                    prop_assert!(l.len() <= max);
                }
            }
            prop_assert!(buf.len() <= max + 7);
        }
        while codec.decode_eof(&mut buf).unwrap().is_some() {}
    }
}
