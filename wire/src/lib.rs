//! `wire`: Canopy's protocol, with no I/O and no async.
//!
//! # Layout
//! - [`ids`]: [`FileId`] (BLAKE3 content id), [`NodeId`], [`QueryId`].
//! - [`message`]: [`Message`], every message of the protocol, and the records it carries.
//! - [`frame`]: framing (length, CBOR body, raw payload, CRC32) with [`encode`] and [`decode`].
//! - [`content`]: chunk layout and [`Manifest`] verification against a file id.
//! - [`bitfield`]: [`Bitfield`], which chunks of a file a node holds.
//! - [`hello`]: the check of a peer's `Hello` against the key its handshake proved.
//! - [`text`]: [`text::terminal_safe`], how text from peers is shown on a terminal.
//!
//! # Example
//! ```
//! use wire::{decode, encode, Message};
//!
//! let mut buf = Vec::new();
//! encode(&Message::Ping { nonce: 7 }, &mut buf);
//! // Half a frame is "not yet", not an error.
//! assert_eq!(decode(&buf[..5]).unwrap(), None);
//! let (msg, used) = decode(&buf).unwrap().unwrap();
//! assert_eq!((msg, used), (Message::Ping { nonce: 7 }, buf.len()));
//! ```

pub mod bitfield;
pub mod content;
pub mod frame;
pub mod hello;
pub mod ids;
pub mod message;
pub mod text;

pub use bitfield::{Bitfield, BitfieldLenError};
pub use content::{chunk_size_for, ChunkError, Manifest, ManifestBuilder, ManifestError};
pub use frame::{decode, encode, DecodeError, MAX_BODY, MAX_PAYLOAD};
pub use ids::{network_of, FileId, NodeId, ParseIdError, QueryId};
pub use message::{
    Capability, ChunkMsg, FileRecord, Filter, Hello, Hit, HostEntry, Load, ManifestMsg, Message,
    PunchSync, Query, QueryHits, RedirectReason, Role, Search, Slots, Source, Tags, Terms,
    TransferErrorKind, DEFAULT_TTL, MAX_PEX, MAX_PUNCH_WAIT_MS, MAX_TTL, PROTOCOL_VERSION,
};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::SocketAddr;

    fn arb_bytes<const N: usize>() -> impl Strategy<Value = [u8; N]> {
        prop::collection::vec(any::<u8>(), N).prop_map(|v| v.try_into().unwrap())
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::from((ip, port)))
    }

    fn arb_tags() -> impl Strategy<Value = Tags> {
        (
            prop::option::of(".{0,20}"),
            prop::option::of(".{0,20}"),
            prop::option::of(".{0,20}"),
            prop::option::of(".{0,10}"),
            prop::option::of(any::<u16>()),
            prop::option::of(any::<u32>()),
            prop::option::of(any::<u32>()),
        )
            .prop_map(
                |(artist, album, title, genre, year, duration_s, bitrate_kbps)| Tags {
                    artist,
                    album,
                    title,
                    genre,
                    year,
                    duration_s,
                    bitrate_kbps,
                },
            )
    }

    fn arb_record() -> impl Strategy<Value = FileRecord> {
        (arb_bytes::<32>(), any::<u64>(), ".{0,60}", arb_tags()).prop_map(
            |(id, size, path, tags)| FileRecord {
                id: FileId(id),
                size,
                path,
                tags,
            },
        )
    }

    fn arb_search() -> impl Strategy<Value = Search> {
        let terms = prop_oneof![
            ".{0,40}".prop_map(Terms::Words),
            arb_bytes::<32>().prop_map(|b| Terms::Id(FileId(b))),
        ];
        let filter = (
            prop::option::of("[a-z0-9]{1,5}"),
            prop::option::of(any::<u64>()),
            prop::option::of(any::<u64>()),
        )
            .prop_map(|(ext, min_size, max_size)| Filter {
                ext,
                min_size,
                max_size,
            });
        (terms, filter).prop_map(|(terms, filter)| Search { terms, filter })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let role = prop_oneof![
            Just(Role::Leaf),
            Just(Role::SuperPeer),
            Just(Role::Transfer)
        ];
        prop_oneof![
            (
                any::<u16>(),
                arb_bytes::<32>(),
                role,
                prop::option::of(arb_addr()),
                ".{0,20}"
            )
                .prop_map(|(version, node, role, listen, agent)| Message::Hello(
                    Hello {
                        version,
                        node: NodeId(node),
                        role,
                        listen,
                        agent,
                        load: Some(Load {
                            leaves: version as u32,
                            leaf_slots: 30,
                            neighbours: 3
                        }),
                        capability: None,
                    }
                )),
            (
                prop::collection::vec((arb_addr(), any::<u32>(), any::<u32>(), any::<u32>()), 0..5),
                any::<bool>()
            )
                .prop_map(|(hosts, full)| {
                    let hosts: Vec<HostEntry> = hosts
                        .into_iter()
                        .map(|(addr, leaves, age_s, n)| HostEntry {
                            addr,
                            load: Load {
                                leaves,
                                leaf_slots: n,
                                neighbours: n / 7,
                            },
                            age_s,
                        })
                        .collect();
                    if full {
                        Message::Redirect {
                            reason: RedirectReason::Full,
                            hosts,
                        }
                    } else {
                        Message::Hosts { hosts }
                    }
                }),
            Just(Message::Promote),
            prop::collection::vec(arb_record(), 0..5).prop_map(|files| Message::Register { files }),
            prop::collection::vec(arb_bytes::<32>(), 0..5).prop_map(|ids| Message::Withdraw {
                ids: ids.into_iter().map(FileId).collect()
            }),
            (arb_bytes::<16>(), any::<u8>(), any::<u8>(), arb_search()).prop_map(
                |(id, ttl, hops, search)| Message::Query(Query {
                    id: QueryId(id),
                    ttl,
                    hops,
                    search
                })
            ),
            (
                arb_bytes::<16>(),
                prop::collection::vec(
                    (
                        arb_bytes::<32>(),
                        arb_addr(),
                        arb_record(),
                        -1e6f32..1e6,
                        any::<Option<bool>>(),
                        prop::option::of(arb_addr())
                    ),
                    0..4
                )
            )
                .prop_map(|(q, hits)| Message::QueryHits(QueryHits {
                    query: QueryId(q),
                    hits: hits
                        .into_iter()
                        .map(|(node, addr, file, score, reachable, via)| Hit {
                            source: Source {
                                node: NodeId(node),
                                addr,
                                reachable,
                                via
                            },
                            file,
                            score
                        })
                        .collect()
                })),
            any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
            any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
            ".{0,40}".prop_map(|reason| Message::Goodbye { reason }),
            (any::<u32>(), any::<u32>())
                .prop_map(|(request, offset)| Message::Browse { request, offset }),
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                prop::collection::vec(arb_record(), 0..4)
            )
                .prop_map(|(request, offset, total, files)| Message::Listing {
                    request,
                    offset,
                    total,
                    files
                }),
            (any::<u32>(), ".{0,40}")
                .prop_map(|(request, reason)| Message::BrowseRefused { request, reason }),
            (arb_bytes::<32>(), any::<u64>(), any::<bool>()).prop_map(|(node, token, punch)| {
                Message::ConnectToMe {
                    node: NodeId(node),
                    token,
                    punch,
                }
            }),
            (
                any::<u64>(),
                prop::option::of(".{0,40}"),
                prop::option::of((any::<u32>(), any::<u32>()))
            )
                .prop_map(|(token, error, sync)| Message::ConnectAsked {
                    token,
                    error,
                    sync: sync.map(|(leaf_rtt_ms, leaf_wait_ms)| PunchSync {
                        leaf_rtt_ms,
                        leaf_wait_ms,
                    }),
                }),
            (
                arb_bytes::<32>(),
                arb_addr(),
                any::<u64>(),
                any::<bool>(),
                any::<u32>()
            )
                .prop_map(|(node, addr, token, punch, wait_ms)| Message::ConnectBack {
                    node: NodeId(node),
                    addr,
                    token,
                    punch,
                    wait_ms,
                }),
            any::<u64>().prop_map(|token| Message::Reversed { token }),
            (arb_bytes::<32>(), any::<u64>()).prop_map(|(node, token)| Message::RelayVia {
                node: NodeId(node),
                token
            }),
            (arb_bytes::<32>(), any::<u64>()).prop_map(|(node, token)| Message::RelayBack {
                node: NodeId(node),
                token
            }),
            any::<u64>().prop_map(|token| Message::RelayJoin { token }),
            Just(Message::RelayReady),
            Just(Message::RelayGo),
            (arb_addr(), any::<bool>()).prop_map(|(observed, reachable)| Message::Reachability {
                observed,
                reachable
            }),
            Just(Message::WhereAmI),
            arb_addr().prop_map(|addr| Message::SeenAt { addr }),
            (any::<u64>(), arb_addr(), arb_bytes::<32>()).prop_map(|(token, addr, node)| {
                Message::CheckReach {
                    token,
                    addr,
                    node: NodeId(node),
                }
            }),
            (any::<u64>(), any::<Option<bool>>())
                .prop_map(|(token, reachable)| Message::ReachChecked { token, reachable }),
            (any::<u32>(), arb_bytes::<32>()).prop_map(|(request, id)| Message::GetManifest {
                request,
                id: FileId(id)
            }),
            (
                any::<u32>(),
                arb_bytes::<32>(),
                any::<u64>(),
                any::<u32>(),
                prop::collection::vec(arb_bytes::<32>(), 0..20)
            )
                .prop_map(|(request, id, size, chunk_size, cvs)| Message::Manifest(
                    ManifestMsg {
                        request,
                        id: FileId(id),
                        size,
                        chunk_size,
                        cvs
                    }
                )),
            (any::<u32>(), arb_bytes::<32>(), any::<u32>()).prop_map(|(request, id, index)| {
                Message::GetChunk {
                    request,
                    id: FileId(id),
                    index,
                }
            }),
            (
                any::<u32>(),
                arb_bytes::<32>(),
                any::<u32>(),
                prop::collection::vec(any::<u8>(), 0..3000)
            )
                .prop_map(|(request, id, index, data)| Message::Chunk(ChunkMsg {
                    request,
                    id: FileId(id),
                    index,
                    data
                })),
            (any::<u32>(), any::<u32>())
                .prop_map(|(request, position)| Message::Queued { request, position }),
            any::<u32>().prop_map(|request| Message::Cancel { request }),
            (any::<u32>(), arb_bytes::<32>(), ".{0,20}").prop_map(|(request, id, message)| {
                Message::TransferError {
                    request,
                    id: FileId(id),
                    kind: TransferErrorKind::NotShared,
                    message,
                }
            }),
            arb_bytes::<32>().prop_map(|id| Message::GetBitfield { id: FileId(id) }),
            (
                arb_bytes::<32>(),
                prop::collection::vec(any::<u8>(), 0..600)
            )
                .prop_map(|(id, bits)| Message::Bitfield {
                    id: FileId(id),
                    bits
                }),
            (arb_bytes::<32>(), any::<u32>()).prop_map(|(id, index)| Message::Have {
                id: FileId(id),
                index
            }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips(msg in arb_message()) {
            let mut buf = Vec::new();
            encode(&msg, &mut buf);
            // Every strict prefix is "incomplete", never an error or a message.
            for cut in [0, 1, 7, 8, buf.len() / 2, buf.len() - 1] {
                prop_assert_eq!(decode(&buf[..cut]), Ok(None));
            }
            buf.extend_from_slice(b"next");
            let (back, used) = decode(&buf).unwrap().unwrap();
            prop_assert_eq!(back, msg);
            prop_assert_eq!(used, buf.len() - 4);
        }

        #[test]
        fn any_corruption_is_an_error_not_a_panic(msg in arb_message(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut buf = Vec::new();
            encode(&msg, &mut buf);
            let at = pos.index(buf.len());
            buf[at] ^= 1 << bit;
            // A flipped length may make the frame look incomplete or too large; anything in the
            // body, payload or trailer must be caught by the CRC.
            match decode(&buf) {
                Ok(None) => prop_assert!(at < frame::HEADER_LEN),
                Ok(Some(_)) => prop_assert!(false, "corruption at {} went unnoticed", at),
                Err(_) => {}
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn valid_crc_over_garbage_body_is_a_body_error(body in prop::collection::vec(any::<u8>(), 1..200)) {
            let mut buf = Vec::new();
            frame::encode_frame(&body, &[], &mut buf);
            if let Err(e) = decode(&buf) {
                prop_assert!(matches!(e, DecodeError::Body(_) | DecodeError::UnexpectedPayload { .. }), "{e}");
            }
        }
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header() {
        let mut buf = Vec::new();
        buf.extend_from_slice(&(MAX_BODY + 1).to_be_bytes());
        buf.extend_from_slice(&0u32.to_be_bytes());
        assert_eq!(
            decode(&buf),
            Err(DecodeError::TooLarge {
                part: "body",
                len: MAX_BODY + 1,
                max: MAX_BODY
            })
        );
        let mut buf = Vec::new();
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode(&buf),
            Err(DecodeError::TooLarge {
                part: "payload",
                ..
            })
        ));
    }

    #[test]
    fn wrong_crc_is_reported() {
        let mut buf = Vec::new();
        encode(&Message::Ping { nonce: 1 }, &mut buf);
        let n = buf.len();
        buf[n - 1] ^= 0xff;
        assert!(matches!(decode(&buf), Err(DecodeError::Checksum { .. })));
    }

    #[test]
    fn payload_on_a_plain_message_is_refused() {
        let mut body = Vec::new();
        ciborium::into_writer(&Message::Ping { nonce: 1 }, &mut body).unwrap();
        let mut buf = Vec::new();
        frame::encode_frame(&body, b"extra", &mut buf);
        assert_eq!(
            decode(&buf),
            Err(DecodeError::UnexpectedPayload {
                kind: "Ping",
                len: 5
            })
        );
    }

    #[test]
    fn chunk_bytes_are_not_cbor_encoded() {
        let msg = Message::Chunk(ChunkMsg {
            request: 1,
            id: FileId([9; 32]),
            index: 0,
            data: vec![0xAB; 1000],
        });
        let mut buf = Vec::new();
        encode(&msg, &mut buf);
        assert!(
            buf.len() < 1000 + 120,
            "frame of {} bytes for 1000 payload bytes",
            buf.len()
        );
    }

    #[test]
    fn file_id_prints_like_b3sum() {
        let id = FileId::from(blake3::hash(b"abc"));
        assert_eq!(
            id.to_string(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert_eq!(id.to_string().parse::<FileId>().unwrap(), id);
        assert!("xyz".parse::<FileId>().is_err());
    }

    #[test]
    fn record_name_and_extension() {
        let r = FileRecord {
            id: FileId([0; 32]),
            size: 1,
            path: "music/A/01 - Song.MP3".into(),
            tags: Tags::default(),
        };
        assert_eq!(r.name(), "01 - Song.MP3");
        assert_eq!(r.extension().as_deref(), Some("mp3"));
        let r = FileRecord {
            path: ".hidden".into(),
            ..r
        };
        assert_eq!(r.extension(), None);
    }
}
