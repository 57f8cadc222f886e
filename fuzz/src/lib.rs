//! Helpers shared by Canopy's fuzz targets (`fuzz_targets/`) and the seed generator
//! (`examples/gen_seeds.rs`).
//!
//! - [`seal_first_frame`]: repairs the CRC32 trailer of the first frame of a stream, so the
//!   fuzzer reaches what lies behind the checksum.
//! - [`frame_parts`]: builds a sealed frame from a body and a payload cut from fuzz input.
//! - [`sample_messages`]: one real message of every kind, the seeds of the codec targets.
//! - [`CountingAlloc`]: a global allocator that records the largest single allocation and the
//!   peak of live bytes, to check that claimed lengths do not make the decoder allocate.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use wire::frame::{encode_frame, HEADER_LEN, TRAILER_LEN};
use wire::{
    Capability, ChunkMsg, FileId, FileRecord, Filter, Hello, Hit, HostEntry, Load, ManifestMsg,
    Message, NodeId, Query, QueryHits, QueryId, RedirectReason, Role, Search, Source, Tags, Terms,
    TransferErrorKind, MAX_BODY, MAX_PAYLOAD,
};

/// If `buf` starts with a header whose frame fits in `buf`, writes the right CRC32 into that
/// frame's trailer.
pub fn seal_first_frame(buf: &mut [u8]) {
    if buf.len() < HEADER_LEN {
        return;
    }
    let body = u32::from_be_bytes(buf[0..4].try_into().expect("4 bytes"));
    let payload = u32::from_be_bytes(buf[4..8].try_into().expect("4 bytes"));
    if body > MAX_BODY || payload > MAX_PAYLOAD {
        return;
    }
    let end = HEADER_LEN + body as usize + payload as usize;
    if buf.len() < end + TRAILER_LEN {
        return;
    }
    let crc = crc32fast::hash(&buf[HEADER_LEN..end]);
    buf[end..end + TRAILER_LEN].copy_from_slice(&crc.to_be_bytes());
}

/// One sealed frame: the first two bytes of `data` (big-endian) say how many of the remaining
/// bytes are the body; the rest is the payload.
pub fn frame_parts(data: &[u8]) -> Vec<u8> {
    let (split, rest) = match data {
        [a, b, rest @ ..] => (u16::from_be_bytes([*a, *b]) as usize, rest),
        _ => (0, data),
    };
    let (body, payload) = rest.split_at(split.min(rest.len()));
    let mut out = Vec::new();
    encode_frame(body, payload, &mut out);
    out
}

/// One message of every kind, with small but realistic contents.
pub fn sample_messages() -> Vec<Message> {
    let file = FileRecord {
        id: FileId([7; 32]),
        size: 3_500_000,
        path: "music/Artist/01 - Song.mp3".into(),
        tags: Tags {
            artist: Some("Artist".into()),
            album: Some("Album".into()),
            title: Some("Song".into()),
            genre: None,
            year: Some(1999),
            duration_s: Some(215),
            bitrate_kbps: None,
        },
    };
    let host = HostEntry {
        addr: "10.0.0.2:4000".parse().expect("address"),
        load: Load {
            leaves: 12,
            leaf_slots: 300,
            neighbours: 4,
        },
        age_s: 30,
    };
    let mut hello = Hello::new(
        NodeId([1; 32]),
        Role::Leaf,
        Some("0.0.0.0:6000".parse().expect("address")),
        "canopy/seed",
    );
    hello.capability = Some(Capability {
        can_promote: true,
        uptime_s: 4000,
        upload_bps: 1_000_000,
        free_fds: 1000,
        free_mem_mb: 2048,
    });
    let mut sp_hello = Hello::new(
        NodeId([2; 32]),
        Role::SuperPeer,
        Some("10.0.0.2:4000".parse().expect("address")),
        "canopy/seed",
    );
    sp_hello.load = Some(host.load);
    vec![
        Message::Hello(hello),
        Message::Hello(sp_hello),
        Message::Register {
            files: vec![file.clone()],
        },
        Message::Withdraw {
            ids: vec![FileId([7; 32])],
        },
        Message::Query(Query {
            id: QueryId([3; 16]),
            ttl: 3,
            hops: 0,
            search: Search {
                terms: Terms::Words("artist song".into()),
                filter: Filter {
                    ext: Some("mp3".into()),
                    min_size: Some(1000),
                    max_size: None,
                },
            },
        }),
        Message::Query(Query {
            id: QueryId([4; 16]),
            ttl: 1,
            hops: 2,
            search: Search {
                terms: Terms::Id(FileId([7; 32])),
                filter: Filter::default(),
            },
        }),
        Message::QueryHits(QueryHits {
            query: QueryId([3; 16]),
            hits: vec![Hit {
                source: Source {
                    node: NodeId([1; 32]),
                    addr: "10.0.0.9:6000".parse().expect("address"),
                    reachable: Some(false),
                    via: Some("10.0.0.1:7700".parse().expect("address")),
                },
                file,
                score: 1.5,
            }],
        }),
        Message::Ping { nonce: 42 },
        Message::Pong { nonce: 42 },
        Message::Hosts { hosts: vec![host] },
        Message::Redirect {
            reason: RedirectReason::Full,
            hosts: vec![host],
        },
        Message::Promote,
        Message::Goodbye {
            reason: "shutting down".into(),
        },
        Message::GetManifest {
            request: 1,
            id: FileId([7; 32]),
        },
        Message::Manifest(ManifestMsg {
            request: 1,
            id: FileId([7; 32]),
            size: 600_000,
            chunk_size: 262_144,
            cvs: vec![[1; 32], [2; 32], [3; 32]],
        }),
        Message::GetChunk {
            request: 2,
            id: FileId([7; 32]),
            index: 1,
        },
        Message::Chunk(ChunkMsg {
            request: 2,
            id: FileId([7; 32]),
            index: 1,
            data: b"chunk bytes".to_vec(),
        }),
        Message::Queued {
            request: 3,
            position: 2,
        },
        Message::Cancel { request: 3 },
        Message::TransferError {
            request: 4,
            id: FileId([7; 32]),
            kind: TransferErrorKind::NotShared,
            message: "not shared".into(),
        },
        Message::ConnectToMe {
            node: NodeId([1; 32]),
            token: 77,
            punch: true,
        },
        Message::ConnectAsked {
            token: 77,
            error: Some("not attached".into()),
            sync: Some(wire::PunchSync {
                leaf_rtt_ms: 40,
                leaf_wait_ms: 30,
            }),
        },
        Message::ConnectBack {
            node: NodeId([2; 32]),
            addr: "10.0.0.8:7001".parse().expect("address"),
            token: 77,
            punch: false,
            wait_ms: 30,
        },
        Message::Reversed { token: 77 },
        Message::RelayVia {
            node: NodeId([1; 32]),
            token: 78,
        },
        Message::RelayBack {
            node: NodeId([2; 32]),
            token: 78,
        },
        Message::RelayJoin { token: 78 },
        Message::RelayReady,
        Message::RelayGo,
        Message::Reachability {
            observed: "10.0.0.9:6000".parse().expect("address"),
            reachable: false,
        },
        Message::WhereAmI,
        Message::SeenAt {
            addr: "10.0.0.9:7001".parse().expect("address"),
        },
        Message::CheckReach {
            token: 5,
            addr: "10.0.0.9:7001".parse().expect("address"),
            node: NodeId([3; 32]),
        },
        Message::ReachChecked {
            token: 5,
            reachable: Some(true),
        },
    ]
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting: live bytes, their peak and the largest single request since
/// the last [`CountingAlloc::reset`]. Install it with `#[global_allocator]` in a target.
pub struct CountingAlloc;

/// What [`CountingAlloc`] saw since the last reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocStats {
    /// Peak of live bytes above the level at the reset.
    pub peak_above_start: usize,
    /// The largest single allocation or reallocation asked for.
    pub largest: usize,
}

impl CountingAlloc {
    /// Starts a new measurement at the current level.
    pub fn reset() -> usize {
        let live = LIVE.load(Ordering::Relaxed);
        PEAK.store(live, Ordering::Relaxed);
        LARGEST.store(0, Ordering::Relaxed);
        live
    }

    /// What was seen since `reset` returned `start`.
    pub fn stats(start: usize) -> AllocStats {
        AllocStats {
            peak_above_start: PEAK.load(Ordering::Relaxed).saturating_sub(start),
            largest: LARGEST.load(Ordering::Relaxed),
        }
    }

    fn grew(size: usize) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
    }

    fn add(size: usize) {
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to `System`; only counters are updated besides.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::grew(layout.size());
        let p = System.alloc(layout);
        if !p.is_null() {
            Self::add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::grew(layout.size());
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            Self::add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::grew(new_size);
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            Self::add(new_size);
        }
        p
    }
}
