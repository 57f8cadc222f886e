//! Fuzz target `upload_session`: the uploader's side of the transfer protocol
//! ([`transfer::UploadSession`]) fed arbitrary sequences of what a downloader could send, with
//! time passing and requests served in between, as the driver in `leaf::upload` does.
//!
//! Checked after every step:
//! - nothing panics;
//! - no request is served before the downloader's Hello was accepted, and none after the
//!   session ended;
//! - at most `MAX_PENDING` requests ever wait;
//! - every chunk request served was received and not cancelled while it waited, and is served
//!   once;
//! - our Hello goes out once, and only after theirs.

#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use transfer::upload::MAX_PENDING;
use transfer::{ShownTo, UploadEvent, UploadSession};
use wire::{FileId, Hello, Message, NodeId, Role};

const PEER: NodeId = NodeId([3; 32]);
const ID: FileId = FileId([4; 32]);

#[derive(Arbitrary, Debug)]
enum Op {
    Hello { honest: bool, listen: bool },
    GetManifest { request: u8 },
    GetChunk { request: u8, index: u8 },
    GetBitfield,
    Cancel { request: u8 },
    Bitfield { bytes: Vec<u8> },
    Have { index: u16 },
    Ping { nonce: u64 },
    Pong,
    Goodbye,
    Unexpected,
    Serve,
    View { chunks: u8 },
    Time { ms: u32 },
    Closed,
}

fuzz_target!(|ops: Vec<Op>| {
    let mut now = Instant::now();
    let mine = Hello::new(NodeId([1; 32]), Role::Leaf, None, "fuzz");
    let mut s = UploadSession::new(now, PEER, mine);
    let mut hello_accepted = false;
    let mut our_hellos = 0;
    // Chunk requests waiting, by number, as the rules say they should be.
    let mut waiting: HashMap<u32, usize> = HashMap::new();
    for op in ops {
        let ended_before = s.end().is_some();
        let msg = match op {
            Op::Hello { honest, listen } => {
                let node = if honest { PEER } else { NodeId([8; 32]) };
                let listen = listen.then(|| "127.0.0.1:1".parse().unwrap());
                Some(Message::Hello(Hello::new(
                    node,
                    Role::Transfer,
                    listen,
                    "f",
                )))
            }
            Op::GetManifest { request } => Some(Message::GetManifest {
                request: request as u32,
                id: ID,
            }),
            Op::GetChunk { request, index } => Some(Message::GetChunk {
                request: request as u32,
                id: ID,
                index: index as u32,
            }),
            Op::GetBitfield => Some(Message::GetBitfield { id: ID }),
            Op::Cancel { request } => Some(Message::Cancel {
                request: request as u32,
            }),
            Op::Bitfield { bytes } => Some(Message::Bitfield {
                id: ID,
                bits: bytes,
            }),
            Op::Have { index } => Some(Message::Have {
                id: ID,
                index: index as u32,
            }),
            Op::Ping { nonce } => Some(Message::Ping { nonce }),
            Op::Pong => Some(Message::Pong { nonce: 1 }),
            Op::Goodbye => Some(Message::Goodbye { reason: "x".into() }),
            Op::Unexpected => Some(Message::Withdraw { ids: vec![ID] }),
            Op::Serve => {
                if let Some(request) = s.poll_request() {
                    assert!(hello_accepted, "served {request:?} before Hello");
                    assert!(!ended_before, "served {request:?} after the end");
                    if let UploadEvent::Chunk { request, .. } = request {
                        let n = waiting
                            .get_mut(&request)
                            .expect("served a request never made");
                        *n -= 1;
                        if *n == 0 {
                            waiting.remove(&request);
                        }
                    }
                }
                None
            }
            Op::View { chunks } => {
                s.set_view(ShownTo::new(ID, chunks as u64));
                None
            }
            Op::Time { ms } => {
                now += Duration::from_millis(ms as u64);
                s.handle_timeout(now);
                None
            }
            Op::Closed => {
                s.handle_closed(None);
                None
            }
        };
        if let Some(msg) = msg {
            let live = !ended_before && hello_accepted;
            match &msg {
                Message::GetChunk { request, .. } if live => {
                    *waiting.entry(*request).or_default() += 1;
                }
                Message::Cancel { request } if live => {
                    waiting.remove(request);
                }
                _ => {}
            }
            s.handle_message(now, msg);
        }
        while let Some(out) = s.poll_transmit() {
            if let Message::Hello(_) = out {
                our_hellos += 1;
                hello_accepted = true;
                assert_eq!(our_hellos, 1, "our Hello went out twice");
            }
        }
        assert!(s.pending() <= MAX_PENDING, "{} requests wait", s.pending());
        if ended_before {
            assert!(
                s.poll_request().is_none(),
                "a request came out after the end"
            );
        }
    }
});
