//! Fuzz target `frame`: wire's frame decoder ([`wire::frame`]) on arbitrary bytes.
//!
//! The first input byte picks a mode; the rest is the stream. With bit 0 set, the CRC32 trailer
//! of the first frame is repaired when its header fits the stream (so that the fuzzer gets past
//! the checksum to what follows it); otherwise the bytes go in as they are.
//!
//! Checked on every input:
//! - `frame_len`, `frame_len_within`, `decode_frame` and `decode_value` never panic, and
//!   `frame_len_within` refuses exactly the headers over its bounds;
//! - "incomplete" (`Ok(None)`) exactly when fewer bytes are here than the header announces, and
//!   `TooLarge` exactly when the header announces more than `MAX_BODY` / `MAX_PAYLOAD`;
//! - a decoded frame used exactly the bytes its header announced, and encoding its body and
//!   payload again gives those bytes back (the framing has one encoding);
//! - every strict prefix of a decoded frame is "incomplete", never an error;
//! - a frame whose body is any CBOR value (the control protocol's `decode_value`) re-encodes to
//!   a fixed point.

#![no_main]

use libfuzzer_sys::fuzz_target;
use wire::frame::{
    decode_frame, decode_value, encode_frame, encode_value, frame_len, frame_len_within,
    DecodeError, HEADER_LEN, TRAILER_LEN,
};
use wire::{MAX_BODY, MAX_PAYLOAD};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut buf = rest.to_vec();
    if mode & 1 == 1 {
        canopy_fuzz::seal_first_frame(&mut buf);
    }
    check(&buf);
});

fn check(buf: &[u8]) {
    let header = (buf.len() >= HEADER_LEN).then(|| {
        let body = u32::from_be_bytes(buf[0..4].try_into().unwrap());
        let payload = u32::from_be_bytes(buf[4..8].try_into().unwrap());
        (body, payload)
    });
    let too_large = header.is_some_and(|(b, p)| b > MAX_BODY || p > MAX_PAYLOAD);
    let total = header.map(|(b, p)| HEADER_LEN + b as usize + p as usize + TRAILER_LEN);

    match frame_len(buf) {
        Ok(None) => assert!(header.is_none()),
        Ok(Some(n)) => assert_eq!(Some(n), total.filter(|_| !too_large)),
        Err(DecodeError::TooLarge { .. }) => assert!(too_large),
        Err(e) => panic!("frame_len gave {e:?}"),
    }

    // Tighter bounds (a connection that takes no payload, or small bodies only): TooLarge
    // exactly when the header passes them, the same length otherwise.
    for (max_body, max_payload) in [(MAX_BODY, 0), (256 << 10, 0), (16, 16)] {
        let over = header
            .is_some_and(|(b, p)| b > max_body.min(MAX_BODY) || p > max_payload.min(MAX_PAYLOAD));
        match frame_len_within(buf, max_body, max_payload) {
            Ok(None) => assert!(header.is_none()),
            Ok(Some(n)) => assert_eq!(Some(n), total.filter(|_| !over)),
            Err(DecodeError::TooLarge { .. }) => assert!(over),
            Err(e) => panic!("frame_len_within gave {e:?}"),
        }
    }

    match decode_frame(buf) {
        Ok(None) => assert!(!too_large && total.is_none_or(|t| buf.len() < t)),
        Ok(Some((frame, used))) => {
            assert!(!too_large);
            assert_eq!(Some(used), total);
            assert!(used <= buf.len());
            assert!(frame.body.len() <= MAX_BODY as usize);
            assert!(frame.payload.len() <= MAX_PAYLOAD as usize);
            let mut again = Vec::new();
            encode_frame(frame.body, frame.payload, &mut again);
            assert_eq!(again, &buf[..used], "re-encoded frame differs");
            for cut in [0, HEADER_LEN - 1, HEADER_LEN, used / 2, used - 1] {
                assert_eq!(decode_frame(&buf[..cut.min(used - 1)]), Ok(None));
            }
        }
        Err(DecodeError::TooLarge { .. }) => assert!(too_large),
        Err(DecodeError::Checksum { expected, actual }) => {
            assert!(!too_large && expected != actual);
            assert!(total.is_some_and(|t| t <= buf.len()));
        }
        Err(e) => panic!("decode_frame gave {e:?}"),
    }

    // The control protocol's path: any CBOR value, no payload.
    if let Ok(Some((value, used))) = decode_value::<ciborium::Value>(buf) {
        assert_eq!(Some(used), total);
        let mut first = Vec::new();
        encode_value(&value, &mut first);
        let (back, used) = decode_value::<ciborium::Value>(&first)
            .expect("a value we encoded decodes")
            .expect("a whole frame");
        assert_eq!(used, first.len());
        let mut second = Vec::new();
        encode_value(&back, &mut second);
        // ciborium may normalise once (a bignum tag of a small number comes back as a plain
        // integer), so the fixed point is reached by the second encoding.
        let (again, _) = decode_value::<ciborium::Value>(&second)
            .expect("a value we encoded decodes")
            .expect("a whole frame");
        let mut third = Vec::new();
        encode_value(&again, &mut third);
        assert_eq!(
            second, third,
            "CBOR value is not a fixed point of encode/decode"
        );
    }
}
