//! Framing: a length-prefixed CBOR body, an optional raw payload, and a CRC32.
//!
//! ```text
//! +----------------+-------------------+------------+----------------+-----------------------+
//! | body len (u32) | payload len (u32) | CBOR body  | raw payload    | CRC32(body ‖ payload) |
//! +----------------+-------------------+------------+----------------+-----------------------+
//! ```
//!
//! All integers are big-endian. Both lengths are checked against [`MAX_BODY`] and
//! [`MAX_PAYLOAD`] from the 8-byte header, before a single byte of the frame is buffered or
//! allocated for. [`decode_frame`] tells "not all here yet" (`Ok(None)`) from "invalid"
//! (`Err`), so a reader knows whether to read more or to close the connection.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::message::{ChunkMsg, ManifestMsg, Message};

/// Header bytes before the body: the two lengths.
pub const HEADER_LEN: usize = 8;
/// Trailer bytes after the payload: the CRC32.
pub const TRAILER_LEN: usize = 4;
/// The largest CBOR body accepted.
pub const MAX_BODY: u32 = 1 << 20;
/// The largest raw payload accepted (one chunk of the largest chunk size, or a manifest).
pub const MAX_PAYLOAD: u32 = 16 << 20;

/// Why a frame or message could not be decoded. Every variant means the stream is broken: the
/// connection should be closed with the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header announces a body or payload larger than the maximum.
    #[error("frame {part} of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// "body" or "payload".
        part: &'static str,
        /// The announced length.
        len: u32,
        /// The maximum.
        max: u32,
    },
    /// The CRC32 in the trailer does not match the body and payload.
    #[error("frame checksum mismatch: trailer says {expected:08x}, content gives {actual:08x}")]
    Checksum {
        /// The CRC in the trailer.
        expected: u32,
        /// The CRC computed over the content.
        actual: u32,
    },
    /// The body is not valid CBOR for the expected type.
    #[error("invalid frame body: {0}")]
    Body(String),
    /// A message that carries no payload arrived with one.
    #[error("{kind} message carries an unexpected payload of {len} bytes")]
    UnexpectedPayload {
        /// The message kind.
        kind: &'static str,
        /// The payload length.
        len: usize,
    },
    /// A manifest payload whose length is not a multiple of 32.
    #[error("manifest payload of {len} bytes is not a whole number of 32-byte chaining values")]
    BadManifest {
        /// The payload length.
        len: usize,
    },
}

/// One decoded frame, borrowing from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The CBOR body.
    pub body: &'a [u8],
    /// The raw payload (empty for most messages).
    pub payload: &'a [u8],
}

/// How many bytes the frame at the start of `buf` occupies, once its header is here.
///
/// `Ok(None)`: fewer than [`HEADER_LEN`] bytes. `Err`: the header announces too much.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, DecodeError> {
    frame_len_within(buf, MAX_BODY, MAX_PAYLOAD)
}

/// [`frame_len`] against tighter bounds than the protocol's: a connection that never carries
/// chunks takes no payload, and one that carries only small requests no large body. Bounds
/// above [`MAX_BODY`] and [`MAX_PAYLOAD`] are held to those.
pub fn frame_len_within(
    buf: &[u8],
    max_body: u32,
    max_payload: u32,
) -> Result<Option<usize>, DecodeError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let (max_body, max_payload) = (max_body.min(MAX_BODY), max_payload.min(MAX_PAYLOAD));
    let body = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes"));
    let payload = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
    if body > max_body {
        return Err(DecodeError::TooLarge {
            part: "body",
            len: body,
            max: max_body,
        });
    }
    if payload > max_payload {
        return Err(DecodeError::TooLarge {
            part: "payload",
            len: payload,
            max: max_payload,
        });
    }
    Ok(Some(
        HEADER_LEN + body as usize + payload as usize + TRAILER_LEN,
    ))
}

/// Decodes the frame at the start of `buf`: `Ok(None)` if it is not all here yet, otherwise the
/// frame and how many bytes it used.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    let Some(total) = frame_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    let body_len = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let content = &buf[HEADER_LEN..total - TRAILER_LEN];
    let expected = u32::from_be_bytes(buf[total - TRAILER_LEN..total].try_into().expect("4"));
    let actual = crc32fast::hash(content);
    if expected != actual {
        return Err(DecodeError::Checksum { expected, actual });
    }
    let (body, payload) = content.split_at(body_len);
    Ok(Some((Frame { body, payload }, total)))
}

/// Appends one frame holding `body` and `payload` to `out`.
///
/// # Panics
/// If `body` or `payload` exceeds its maximum: that is a bug in the sender, not bad input.
pub fn encode_frame(body: &[u8], payload: &[u8], out: &mut Vec<u8>) {
    let trailer = frame_head(body, payload, out);
    out.extend_from_slice(payload);
    out.extend_from_slice(&trailer);
}

/// Appends a frame's header and `body` to `out`, and returns its trailer: the frame is these
/// bytes, then `payload`, then the trailer. A sender writes the three in turn, so a chunk's
/// bytes are not copied into a frame buffer first.
///
/// # Panics
/// As [`encode_frame`].
fn frame_head(body: &[u8], payload: &[u8], out: &mut Vec<u8>) -> [u8; TRAILER_LEN] {
    assert!(
        body.len() <= MAX_BODY as usize,
        "frame body of {} bytes too large",
        body.len()
    );
    assert!(
        payload.len() <= MAX_PAYLOAD as usize,
        "payload of {} bytes too large",
        payload.len()
    );
    out.reserve(HEADER_LEN + body.len() + payload.len() + TRAILER_LEN);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    let mut crc = crc32fast::Hasher::new();
    crc.update(body);
    crc.update(payload);
    crc.finalize().to_be_bytes()
}

/// Serializes any serde value as one frame with no payload (used by the local control
/// protocol, which shares this framing).
pub fn encode_value<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    let mut body = Vec::new();
    ciborium::into_writer(value, &mut body).expect("CBOR encoding into a Vec cannot fail");
    encode_frame(&body, &[], out);
}

/// [`encode_value`], or the size of the body if it is over [`MAX_BODY`] (nothing is written).
pub fn try_encode_value<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), usize> {
    let mut body = Vec::new();
    ciborium::into_writer(value, &mut body).expect("CBOR encoding into a Vec cannot fail");
    if body.len() > MAX_BODY as usize {
        return Err(body.len());
    }
    encode_frame(&body, &[], out);
    Ok(())
}

/// Decodes one frame holding a serde value (the counterpart of [`encode_value`]).
pub fn decode_value<T: DeserializeOwned>(buf: &[u8]) -> Result<Option<(T, usize)>, DecodeError> {
    let Some((frame, used)) = decode_frame(buf)? else {
        return Ok(None);
    };
    if !frame.payload.is_empty() {
        return Err(DecodeError::UnexpectedPayload {
            kind: "control",
            len: frame.payload.len(),
        });
    }
    let value = ciborium::from_reader(frame.body).map_err(|e| DecodeError::Body(e.to_string()))?;
    Ok(Some((value, used)))
}

/// Appends `msg` as one frame to `out`. Chunk data and manifest chaining values go into the raw
/// payload, not the CBOR body.
pub fn encode(msg: &Message, out: &mut Vec<u8>) {
    let (payload, trailer) = encode_parts(msg, out);
    out.extend_from_slice(payload);
    out.extend_from_slice(&trailer);
}

/// `msg` as one frame in three parts, for a writer that sends them in turn without copying a
/// chunk: appends the header and body to `head`, and returns the payload (the message's own
/// bytes) and the trailer to write after it. [`encode`] gives the same bytes in one buffer.
pub fn encode_parts<'a>(msg: &'a Message, head: &mut Vec<u8>) -> (&'a [u8], [u8; TRAILER_LEN]) {
    let mut body = Vec::new();
    ciborium::into_writer(msg, &mut body).expect("CBOR encoding into a Vec cannot fail");
    let payload: &[u8] = match msg {
        Message::Chunk(ChunkMsg { data, .. }) => data,
        Message::Manifest(ManifestMsg { cvs, .. }) => cvs.as_flattened(),
        _ => &[],
    };
    (payload, frame_head(&body, payload, head))
}

/// Decodes the message at the start of `buf`: `Ok(None)` if it is not all here yet, otherwise
/// the message and how many bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, DecodeError> {
    let Some((frame, used)) = decode_frame(buf)? else {
        return Ok(None);
    };
    let mut msg: Message =
        ciborium::from_reader(frame.body).map_err(|e| DecodeError::Body(e.to_string()))?;
    match &mut msg {
        Message::Chunk(chunk) => chunk.data = frame.payload.to_vec(),
        Message::Manifest(manifest) => {
            if frame.payload.len() % 32 != 0 {
                return Err(DecodeError::BadManifest {
                    len: frame.payload.len(),
                });
            }
            manifest.cvs =
                crate::Manifest::from_flat(manifest.size, manifest.chunk_size, frame.payload).cvs;
        }
        other if !frame.payload.is_empty() => {
            return Err(DecodeError::UnexpectedPayload {
                kind: other.kind(),
                len: frame.payload.len(),
            })
        }
        _ => {}
    }
    Ok(Some((msg, used)))
}
