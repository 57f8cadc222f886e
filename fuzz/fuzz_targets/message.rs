//! Fuzz target `message`: wire's message decoder ([`wire::decode`]) on arbitrary frames.
//!
//! The first input byte picks a mode. Bit 0 clear: the rest is the stream, as it came off a
//! socket. Bit 0 set: the rest is cut into a CBOR body and a raw payload
//! ([`canopy_fuzz::frame_parts`]) and sealed into a frame with a correct CRC32, so that every
//! input reaches the CBOR decoder and the payload rules.
//!
//! Checked on every input:
//! - `decode` never panics;
//! - claimed lengths (the frame header's, and CBOR's own array, map, string and byte-string
//!   lengths) do not make it allocate: the largest single allocation during a decode stays
//!   within serde's 1 MiB preallocation cap plus a small multiple of the input, and so does
//!   the peak of live bytes (a global counting allocator measures both);
//! - a decoded message encodes, and that frame decodes to an equal message using all of it
//!   (equal up to NaN scores, which never equal themselves), and encodes to the same bytes
//!   again: encode∘decode is a fixed point;
//! - chunk data and manifest chaining values come from the payload, and a payload on any
//!   other kind is refused.

#![no_main]

use canopy_fuzz::{frame_parts, CountingAlloc};
use libfuzzer_sys::fuzz_target;
use wire::frame::decode_frame;
use wire::{decode, encode, DecodeError, Message};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// serde's cap on what a sequence may preallocate from its claimed length
/// (`serde::__private::size_hint::cautious`).
const PREALLOC_CAP: usize = 1 << 20;
/// How much heap one input byte may account for (a decoded `Hit` is far larger than its
/// shortest CBOR, and vectors grow by doubling).
const PER_INPUT_BYTE: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let buf = if mode & 1 == 1 {
        frame_parts(rest)
    } else {
        rest.to_vec()
    };
    check(&buf);
});

fn check(buf: &[u8]) {
    let start = CountingAlloc::reset();
    let result = decode(buf);
    let seen = CountingAlloc::stats(start);
    let bound = PREALLOC_CAP + PER_INPUT_BYTE * buf.len();
    assert!(
        seen.largest <= bound,
        "one allocation of {} bytes decoding {} bytes",
        seen.largest,
        buf.len()
    );
    assert!(
        seen.peak_above_start <= PREALLOC_CAP + bound,
        "{} bytes live decoding {} bytes",
        seen.peak_above_start,
        buf.len()
    );

    let (msg, used) = match result {
        Ok(Some(decoded)) => decoded,
        Ok(None) => {
            assert!(matches!(decode_frame(buf), Ok(None)));
            return;
        }
        Err(DecodeError::UnexpectedPayload { len, .. }) => {
            assert!(len > 0);
            return;
        }
        Err(_) => return,
    };
    let (frame, frame_used) = decode_frame(buf)
        .expect("a decoded message's frame decodes")
        .expect("a whole frame");
    assert_eq!(used, frame_used);
    match &msg {
        Message::Chunk(c) => assert_eq!(c.data, frame.payload),
        Message::Manifest(m) => assert_eq!(m.cvs.as_flattened(), frame.payload),
        _ => assert!(frame.payload.is_empty()),
    }

    let mut first = Vec::new();
    encode(&msg, &mut first);
    let (back, n) = decode(&first)
        .unwrap_or_else(|e| panic!("{msg:?} encodes to a frame that does not decode: {e}"))
        .expect("a whole frame");
    assert_eq!(n, first.len());
    if !has_nan(&msg) {
        assert_eq!(back, msg, "message changed through encode and decode");
    }
    let mut second = Vec::new();
    encode(&back, &mut second);
    assert_eq!(first, second, "encode/decode is not a fixed point");
}

fn has_nan(msg: &Message) -> bool {
    match msg {
        Message::QueryHits(h) => h.hits.iter().any(|h| h.score.is_nan()),
        _ => false,
    }
}
