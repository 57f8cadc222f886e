//! Fuzz target `browse_session`: the browsing side of a leaf's listing
//! ([`transfer::BrowseSession`]) fed arbitrary sequences of what a browsed leaf could send.
//!
//! Checked after every step:
//! - nothing panics;
//! - a browse that ended stays ended with the same outcome, and sends nothing more after its
//!   last Goodbye;
//! - a finished list never holds more than `MAX_FILES` files, nor more than the peer's total;
//! - every `Browse` asked for continues where the files taken so far end.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use transfer::browse::{MAX_FILES, MAX_PAGE};
use transfer::{BrowseEnd, BrowseSession};
use wire::{FileId, FileRecord, Hello, Message, NodeId, Role, Tags};

const PEER: NodeId = NodeId([3; 32]);

#[derive(Arbitrary, Debug)]
enum Op {
    Hello {
        honest: bool,
    },
    Listing {
        request: u8,
        offset: u32,
        total: u32,
        files: u16,
    },
    Refused {
        request: u8,
    },
    Ping {
        nonce: u64,
    },
    Goodbye,
    Unexpected,
    Closed,
}

fuzz_target!(|ops: Vec<Op>| {
    let mine = Hello::new(NodeId([1; 32]), Role::Leaf, None, "fuzz");
    let mut s = BrowseSession::new(PEER, mine);
    let mut taken: u32 = 0;
    let mut ended: Option<BrowseEnd> = None;
    for op in ops {
        let msg = match op {
            Op::Hello { honest } => {
                let node = if honest { PEER } else { NodeId([8; 32]) };
                Message::Hello(Hello::new(node, Role::Leaf, None, "peer"))
            }
            Op::Listing {
                request,
                offset,
                total,
                files,
            } => {
                let n = u32::from(files) % (MAX_PAGE + 2);
                Message::Listing {
                    request: u32::from(request),
                    offset,
                    total,
                    files: (0..n)
                        .map(|i| FileRecord {
                            id: FileId([i as u8; 32]),
                            size: u64::from(i),
                            path: format!("f/{i}"),
                            tags: Tags::default(),
                        })
                        .collect(),
                }
            }
            Op::Refused { request } => Message::BrowseRefused {
                request: u32::from(request),
                reason: "no".into(),
            },
            Op::Ping { nonce } => Message::Ping { nonce },
            Op::Goodbye => Message::Goodbye {
                reason: "bye".into(),
            },
            Op::Unexpected => Message::Promote,
            Op::Closed => {
                s.handle_closed("fuzz");
                Message::Pong { nonce: 0 }
            }
        };
        s.handle_message(msg);
        let mut goodbye = false;
        while let Some(out) = s.poll_transmit() {
            assert!(!goodbye, "nothing after a Goodbye");
            match out {
                Message::Browse { offset, .. } => {
                    assert!(ended.is_none(), "asked after the end");
                    assert!(offset >= taken, "went back: {offset} < {taken}");
                    taken = offset;
                }
                Message::Goodbye { .. } => goodbye = true,
                _ => {}
            }
        }
        if let Some(e) = &ended {
            assert_eq!(Some(e), s.end(), "an ended browse changed its outcome");
        }
        if let Some(end) = s.end() {
            if let BrowseEnd::Done { files, total } = end {
                assert!(files.len() as u32 <= MAX_FILES);
                assert!(files.len() as u32 <= *total);
            }
            ended = Some(end.clone());
        }
    }
});
