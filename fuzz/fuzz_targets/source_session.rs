//! Fuzz target `source_session`: the download side of the transfer protocol
//! ([`transfer::SourceSession`] around a shared [`transfer::Scheduler`]) fed arbitrary
//! sequences of what up to four sources could send, with time passing, chunks checked good or
//! bad, stalls, and sources closed and reconnected, as the driver in `leaf::download` does.
//!
//! Checked after every step:
//! - nothing panics;
//! - every session's and the scheduler's invariants hold (`check_invariants`);
//! - a session asks only for chunks of the file, and only of a source that said it holds them;
//! - a chunk is reported `Completed` at most once over all sessions, and the scheduler's done
//!   count is exactly the chunks reported;
//! - a closed session holds no chunk, and an ended one changes nothing more.

#![no_main]

use std::collections::HashSet;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use transfer::{Checked, Scheduler, SourceEvent, SourceOptions, SourceSession};
use wire::{Bitfield, ChunkMsg, FileId, Message, TransferErrorKind};

const ID: FileId = FileId([9; 32]);

#[derive(Arbitrary, Debug)]
enum Op {
    Chunk {
        src: u8,
        request: u8,
        index: u8,
        wrong_id: bool,
    },
    Bitfield {
        src: u8,
        bytes: Vec<u8>,
    },
    Full {
        src: u8,
    },
    Have {
        src: u8,
        index: u8,
    },
    Queued {
        src: u8,
        request: u8,
        position: u8,
    },
    Refuse {
        src: u8,
    },
    Ping {
        src: u8,
        nonce: u64,
    },
    Goodbye {
        src: u8,
    },
    Unexpected {
        src: u8,
    },
    Check {
        src: u8,
        good: bool,
    },
    Time {
        src: u8,
        ms: u16,
    },
    Stall {
        src: u8,
    },
    Reconnect {
        src: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    chunks: u8,
    sources: u8,
    inflight: u8,
    seed: u64,
    ops: Vec<Op>,
}

struct Source {
    session: SourceSession,
    /// Chunks handed out to verify, not yet checked: (request, chunk).
    verify: Vec<(u32, u64)>,
    /// Chunks it said it holds (for the "asked only for held chunks" check).
    holds: Bitfield,
    closed: bool,
}

fuzz_target!(|input: Input| {
    let count = 1 + input.chunks as u64 % 40;
    let n = 1 + input.sources as usize % 4;
    let opts = SourceOptions {
        inflight: 1 + input.inflight as usize % 6,
        max_inflight: 1 + input.inflight as usize % 12,
        response_timeout: Duration::from_secs(30),
        queued_retry: Duration::from_millis(500),
    };
    let mut sched = Scheduler::with_seed(count, input.seed);
    let mut now = Instant::now();
    let mut next_number = 0;
    let open = |number: &mut usize| {
        let s = Source {
            session: SourceSession::new(ID, count, *number, opts.clone()),
            verify: Vec::new(),
            holds: Bitfield::new(count),
            closed: false,
        };
        *number += 1;
        s
    };
    let mut sources: Vec<Source> = (0..n).map(|_| open(&mut next_number)).collect();
    let mut completed = HashSet::new();
    for op in input.ops {
        let pick = |src: u8| src as usize % n;
        match op {
            Op::Chunk {
                src,
                request,
                index,
                wrong_id,
            } => {
                let id = if wrong_id { FileId([1; 32]) } else { ID };
                let msg = Message::Chunk(ChunkMsg {
                    request: request as u32,
                    id,
                    index: index as u32,
                    data: vec![0; 16],
                });
                sources[pick(src)]
                    .session
                    .handle_message(now, msg, &mut sched);
            }
            Op::Bitfield { src, bytes } => {
                let s = &mut sources[pick(src)];
                if let Ok(b) = Bitfield::from_bytes(bytes.clone(), count) {
                    if s.session.end().is_none() {
                        s.holds = b;
                    }
                }
                let msg = Message::Bitfield {
                    id: ID,
                    bits: bytes,
                };
                s.session.handle_message(now, msg, &mut sched);
            }
            Op::Full { src } => {
                let s = &mut sources[pick(src)];
                if s.session.end().is_none() {
                    s.holds = Bitfield::full(count);
                }
                let bits = Bitfield::full(count).into_bytes();
                s.session
                    .handle_message(now, Message::Bitfield { id: ID, bits }, &mut sched);
            }
            Op::Have { src, index } => {
                let s = &mut sources[pick(src)];
                if s.session.end().is_none() {
                    s.holds.set(index as u64);
                }
                let msg = Message::Have {
                    id: ID,
                    index: index as u32,
                };
                s.session.handle_message(now, msg, &mut sched);
            }
            Op::Queued {
                src,
                request,
                position,
            } => {
                let msg = Message::Queued {
                    request: request as u32,
                    position: position as u32,
                };
                sources[pick(src)]
                    .session
                    .handle_message(now, msg, &mut sched);
            }
            Op::Refuse { src } => {
                let msg = Message::TransferError {
                    request: 1,
                    id: ID,
                    kind: TransferErrorKind::Unavailable,
                    message: "no".into(),
                };
                sources[pick(src)]
                    .session
                    .handle_message(now, msg, &mut sched);
            }
            Op::Ping { src, nonce } => {
                let msg = Message::Ping { nonce };
                sources[pick(src)]
                    .session
                    .handle_message(now, msg, &mut sched);
            }
            Op::Goodbye { src } => {
                let msg = Message::Goodbye { reason: "x".into() };
                sources[pick(src)]
                    .session
                    .handle_message(now, msg, &mut sched);
            }
            Op::Unexpected { src } => {
                let msg = Message::GetBitfield { id: ID };
                sources[pick(src)]
                    .session
                    .handle_message(now, msg, &mut sched);
            }
            Op::Check { src, good } => {
                let s = &mut sources[pick(src)];
                if let Some((request, _)) = s.verify.pop() {
                    let checked = if good {
                        Checked::Kept
                    } else {
                        Checked::Bad("does not match".into())
                    };
                    s.session
                        .handle_checked(now, request, 16, checked, &mut sched);
                }
            }
            Op::Time { src, ms } => {
                now += Duration::from_millis(ms as u64);
                sources[pick(src)].session.handle_timeout(now, &mut sched);
            }
            Op::Stall { src } => {
                let s = &mut sources[pick(src)];
                if let Some(limit) = s.session.read_idle() {
                    s.session.handle_stalled(limit);
                }
            }
            Op::Reconnect { src } => {
                let i = pick(src);
                if sources[i].closed {
                    sources[i] = open(&mut next_number);
                }
            }
        }
        for s in sources.iter_mut() {
            while let Some(msg) = s.session.poll_transmit() {
                if let Message::GetChunk { index, id, .. } = msg {
                    assert_eq!(id, ID);
                    assert!((index as u64) < count, "asked for chunk {index} of {count}");
                    assert!(
                        s.holds.get(index as u64),
                        "asked for chunk {index}, which the source never said it holds"
                    );
                }
            }
            while let Some(event) = s.session.poll_event() {
                match event {
                    SourceEvent::Verify { request, chunk, .. } => s.verify.push((request, chunk)),
                    SourceEvent::Completed { chunk, .. } => {
                        assert!(completed.insert(chunk), "chunk {chunk} completed twice");
                    }
                    _ => {}
                }
            }
            // The driver closes a session once it has ended.
            if s.session.end().is_some() && !s.closed {
                s.session.close(&mut sched);
                s.closed = true;
                s.verify.clear();
                while s.session.poll_transmit().is_some() {}
            }
            s.session.check_invariants(&sched);
        }
        sched.check_invariants();
        assert_eq!(sched.done_chunks(), completed.len() as u64);
    }
});
