//! Every limit of a super-peer, tripped by a hostile peer while a well-behaved one searches: the
//! limit trips, the offender is cut off (and, where the limit calls for it, banned), and the
//! node goes on serving the well-behaved leaves at the same time.
//!
//! Offenders connect from 127.0.0.2 and up (each test its own address), so a ban falls on them
//! and not on the well-behaved leaves at 127.0.0.1.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use canopy::corpus::{self, Track};
use canopy::net::{self, run_bounded, Raw};
use leaf::Node;
use smol::io::AsyncWriteExt;
use superpeer::SuperPeerNode;
use transport::net::FrameReader;
use wire::{
    FileId, FileRecord, Filter, Hit, Message, NodeId, Query, QueryHits, QueryId, Role, Search,
    Source, Tags, Terms,
};

const LIMIT: Duration = Duration::from_secs(60);

/// A super-peer with a sharer and an asker attached, all well-behaved.
struct World {
    tmp: tempfile::TempDir,
    sp: SuperPeerNode,
    sharer: Node,
    asker: Node,
    track: Track,
}

async fn world(adjust: impl FnOnce(&mut superpeer::Config)) -> World {
    let _ = env_logger::builder().is_test(true).try_init();
    let tmp = tempfile::tempdir().unwrap();
    let sp = net::superpeer_config(adjust).await;
    let tracks = corpus::load_tracks(5).unwrap();
    let sharer = net::leaf(tmp.path(), "sharer", &[sp.listen_addr()]).await;
    let dir = tmp.path().join("music");
    corpus::write_share(&dir, &tracks).unwrap();
    sharer.share(&dir, |_| {}).await.unwrap();
    net::wait_records(&sp, 5).await;
    let asker = net::leaf(tmp.path(), "asker", &[sp.listen_addr()]).await;
    World {
        tmp,
        sp,
        sharer,
        asker,
        track: tracks[2].clone(),
    }
}

fn words(text: &str) -> Search {
    Search {
        terms: Terms::Words(text.into()),
        filter: Filter::default(),
    }
}

impl World {
    /// The asker finds the sharer's track: the node still serves well-behaved peers.
    async fn still_serves(&self) {
        let id = FileId::from(blake3::hash(&self.track.contents()));
        let query = format!("{} {}", self.track.artist, self.track.title);
        let found = self
            .asker
            .search(words(&query), 1, Duration::from_millis(800))
            .await
            .unwrap();
        assert!(
            found.iter().any(|r| r.id == id),
            "the well-behaved asker no longer finds {query:?}"
        );
    }
}

/// Whether a new connection from 127.0.0.`from` is refused (banned or over a count).
async fn refused(from: u8, sp: SocketAddr) -> bool {
    net::secure_from([127, 0, 0, from].into(), sp)
        .await
        .is_err()
}

fn query(text: &str) -> Message {
    Message::Query(Query {
        id: QueryId(rand::random()),
        ttl: 1,
        hops: 0,
        search: words(text),
    })
}

fn record(i: u32, path: String) -> FileRecord {
    FileRecord {
        id: FileId(*blake3::hash(&i.to_be_bytes()).as_bytes()),
        size: 1000 + i as u64,
        path,
        tags: Tags::default(),
    }
}

const CUT: Duration = Duration::from_secs(5);
const SOURCE: &str = "127.0.0.1:9";

#[test]
fn oversized_frames_cut_off_and_ban() {
    run_bounded(LIMIT, async {
        let w = world(|_| {}).await;
        let addr = w.sp.listen_addr();
        let mut raw = Raw::connect(2, addr, Role::Leaf, None).await;
        // A header announcing a body one byte over the maximum.
        let mut header = (wire::MAX_BODY + 1).to_be_bytes().to_vec();
        header.extend_from_slice(&0u32.to_be_bytes());
        raw.writer.write_all(&header).await.unwrap();
        raw.writer.flush().await.unwrap();
        assert!(raw.cut_off_within(CUT).await);
        assert!(
            refused(2, addr).await,
            "the offender's address is not banned"
        );
        w.still_serves().await;
        // Bans are per address: a newcomer from elsewhere is welcome.
        let _fresh = Raw::connect(3, addr, Role::Leaf, None).await;
        w.still_serves().await;
    });
}

#[test]
fn payloads_are_refused_where_none_belongs() {
    run_bounded(LIMIT, async {
        let w = world(|_| {}).await;
        // Before Hello and after: a super-peer never buffers a payload (16 MiB each, were it
        // taken), and a leaf's chunk server takes none from a downloader either.
        let targets = [w.sp.listen_addr(), w.sharer.listen_addr().unwrap()];
        for (i, addr) in targets.into_iter().enumerate() {
            let (mut secure, _) = net::secure_from([127, 0, 0, 40 + i as u8].into(), addr)
                .await
                .expect("the handshake completes");
            let mut header = 16u32.to_be_bytes().to_vec();
            header.extend_from_slice(&(1u32 << 20).to_be_bytes());
            secure.writer.write_all(&header).await.unwrap();
            secure.writer.flush().await.unwrap();
            let mut reader = FrameReader::new(secure.reader);
            let closed = loop {
                match reader.read_message_within(CUT).await {
                    Ok(_) => continue,
                    Err(transport::net::ReadError::Timeout(_)) => break false,
                    Err(_) => break true,
                }
            };
            assert!(closed, "{addr} waited for a 1 MiB payload");
        }
        w.still_serves().await;
    });
}

#[test]
fn long_and_wordy_queries_cut_off() {
    run_bounded(LIMIT, async {
        let w = world(|c| {
            c.limits.max_query_bytes = 40;
            c.limits.max_query_words = 4;
        })
        .await;
        let addr = w.sp.listen_addr();
        let mut long = Raw::connect(4, addr, Role::Leaf, None).await;
        long.send(&query(&"x".repeat(41))).await.unwrap();
        assert!(
            long.cut_off_within(CUT).await,
            "max_query_bytes did not trip"
        );
        let mut wordy = Raw::connect(5, addr, Role::Leaf, None).await;
        wordy.send(&query("a b c d e")).await.unwrap();
        assert!(
            wordy.cut_off_within(CUT).await,
            "max_query_words did not trip"
        );
        // Four words is fine.
        let mut fine = Raw::connect(6, addr, Role::Leaf, None).await;
        fine.send(&query("a b c d")).await.unwrap();
        assert!(!fine.cut_off_within(Duration::from_millis(500)).await);
        w.still_serves().await;
    });
}

#[test]
fn query_floods_cut_off() {
    run_bounded(LIMIT, async {
        let w = world(|c| {
            c.limits.leaf_queries_per_second = 2.0;
            c.limits.query_burst_seconds = 2.0;
        })
        .await;
        let addr = w.sp.listen_addr();
        let mut flood = Raw::connect(7, addr, Role::Leaf, None).await;
        for _ in 0..10 {
            if flood.send(&query("anything")).await.is_err() {
                break;
            }
        }
        assert!(
            flood.cut_off_within(CUT).await,
            "queries_per_second did not trip"
        );
        assert!(refused(7, addr).await);
        w.still_serves().await;
    });
}

#[test]
fn oversized_hit_messages_cut_off() {
    run_bounded(LIMIT, async {
        let w = world(|c| c.limits.max_hits_per_message = 10).await;
        let addr = w.sp.listen_addr();
        let listen: SocketAddr = "127.0.0.8:7700".parse().unwrap();
        let mut peer = Raw::connect(8, addr, Role::SuperPeer, Some(listen)).await;
        let hit = |i| Hit {
            source: Source {
                node: NodeId([7; 32]),
                addr: SOURCE.parse().unwrap(),
                reachable: None,
                via: None,
            },
            file: record(i, format!("music/{i}.mp3")),
            score: 1.0,
        };
        let hits = QueryHits {
            query: QueryId(rand::random()),
            hits: (0..11).map(hit).collect(),
        };
        peer.send(&Message::QueryHits(hits)).await.unwrap();
        assert!(
            peer.cut_off_within(CUT).await,
            "max_hits_per_message did not trip"
        );
        w.still_serves().await;
    });
}

#[test]
fn registering_too_much_cuts_off() {
    run_bounded(LIMIT, async {
        let w = world(|c| {
            c.limits.max_files_per_leaf = 20;
            c.limits.max_metadata_per_leaf = 5_000;
        })
        .await;
        let addr = w.sp.listen_addr();
        let before = w.sp.status_committed().await.records;
        let source = Some(SOURCE.parse().unwrap());
        let mut many = Raw::connect(9, addr, Role::Leaf, source).await;
        let files = (0..21).map(|i| record(i, format!("m/{i}.mp3"))).collect();
        many.send(&Message::Register { files }).await.unwrap();
        assert!(
            many.cut_off_within(CUT).await,
            "max_files_per_leaf did not trip"
        );
        let mut wordy = Raw::connect(10, addr, Role::Leaf, source).await;
        let files = (0..10).map(|i| record(i, "w/".repeat(300))).collect();
        wordy.send(&Message::Register { files }).await.unwrap();
        assert!(
            wordy.cut_off_within(CUT).await,
            "max_metadata_per_leaf did not trip"
        );
        // Nothing of theirs stays in the index.
        assert_eq!(w.sp.status_committed().await.records, before);
        // Within the limits is fine.
        let mut fine = Raw::connect(11, addr, Role::Leaf, source).await;
        let files = (0..20).map(|i| record(i, format!("ok/{i}.mp3"))).collect();
        fine.send(&Message::Register { files }).await.unwrap();
        assert!(!fine.cut_off_within(Duration::from_millis(500)).await);
        w.still_serves().await;
    });
}

#[test]
fn the_per_leaf_limits_count_what_is_held() {
    run_bounded(LIMIT, async {
        let w = world(|c| c.limits.max_files_per_leaf = 20).await;
        let addr = w.sp.listen_addr();
        let before = w.sp.status_committed().await.records;
        let source = Some(SOURCE.parse().unwrap());
        // The same files registered again and again are held once.
        let mut again = Raw::connect(15, addr, Role::Leaf, source).await;
        for _ in 0..3 {
            let files = (0..15).map(|i| record(i, format!("a/{i}.mp3"))).collect();
            again.send(&Message::Register { files }).await.unwrap();
        }
        assert!(!again.cut_off_within(Duration::from_millis(500)).await);
        assert_eq!(w.sp.status_committed().await.records, before + 15);
        // Withdrawing ids never registered gives nothing back: 15 held, 15 more is over 20.
        let mut cheat = Raw::connect(16, addr, Role::Leaf, source).await;
        let files = (100..115)
            .map(|i| record(i, format!("c/{i}.mp3")))
            .collect();
        cheat.send(&Message::Register { files }).await.unwrap();
        let ids = (0..1000).map(|_| FileId(rand::random())).collect();
        cheat.send(&Message::Withdraw { ids }).await.unwrap();
        let files = (200..215)
            .map(|i| record(i, format!("c/{i}.mp3")))
            .collect();
        cheat.send(&Message::Register { files }).await.unwrap();
        assert!(
            cheat.cut_off_within(CUT).await,
            "withdrawing unknown ids made room"
        );
        // Withdrawing what it holds does make room.
        let mut honest = Raw::connect(17, addr, Role::Leaf, source).await;
        let files: Vec<FileRecord> = (300..315)
            .map(|i| record(i, format!("h/{i}.mp3")))
            .collect();
        let ids = files.iter().map(|f| f.id).collect();
        honest.send(&Message::Register { files }).await.unwrap();
        honest.send(&Message::Withdraw { ids }).await.unwrap();
        let files = (400..415)
            .map(|i| record(i, format!("h/{i}.mp3")))
            .collect();
        honest.send(&Message::Register { files }).await.unwrap();
        assert!(!honest.cut_off_within(Duration::from_millis(500)).await);
        assert_eq!(w.sp.status_committed().await.records, before + 30);
        w.still_serves().await;
    });
}

#[test]
fn hits_carry_the_address_a_leaf_is_seen_at_not_the_one_it_claims() {
    run_bounded(LIMIT, async {
        let w = world(|_| {}).await;
        let addr = w.sp.listen_addr();
        // A leaf at 127.0.0.50 says it serves at a victim's address.
        let victim: SocketAddr = "127.0.0.99:4444".parse().unwrap();
        let mut bait = Raw::connect(50, addr, Role::Leaf, Some(victim)).await;
        let files = vec![record(7, "bait/victim magnet.mp3".into())];
        bait.send(&Message::Register { files }).await.unwrap();
        let mut found = Vec::new();
        for _ in 0..20 {
            found = w
                .asker
                .search(words("victim magnet"), 1, Duration::from_millis(300))
                .await
                .unwrap();
            if !found.is_empty() {
                break;
            }
        }
        assert_eq!(found.len(), 1, "{found:?}");
        let seen: Vec<SocketAddr> = found[0].sources.iter().map(|s| s.addr).collect();
        assert_eq!(seen, vec!["127.0.0.50:4444".parse::<SocketAddr>().unwrap()]);
    });
}

#[test]
fn manifests_count_against_the_upload_cap() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        // 64 MiB in 256 KiB chunks: an 8 KiB manifest.
        let content = corpus::deterministic_bytes("capped manifests", 64 << 20);
        let id = FileId::from(blake3::hash(&content));
        let dir = tmp.path().join("share");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("big.bin"), &content).unwrap();
        let sp = net::superpeer(&[]).await;
        let capped = net::leaf_with(tmp.path(), "capped", &[sp.listen_addr()], |c| {
            c.upload_rate = 16 << 10;
        })
        .await;
        capped.share(&dir, |_| {}).await.unwrap();
        let addr = capped.listen_addr().unwrap();
        let mut raw = Raw::connect(60, addr, Role::Transfer, None).await;
        let _hello = raw.reader.read_message_within(CUT).await.unwrap();
        // Six manifests, 48 KiB: past the cap's 16 KiB of slack, 2 s at 16 KiB/s.
        let started = Instant::now();
        for request in 1..=6 {
            raw.send(&Message::GetManifest { request, id })
                .await
                .unwrap();
            match raw.reader.read_message_within(CUT).await.unwrap() {
                Message::Manifest(m) => assert_eq!(m.cvs.len(), 256),
                other => panic!("answered {}", other.kind()),
            }
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(1500),
            "6 manifests in {took:?}: uncapped"
        );
    });
}

#[test]
fn connection_counts_per_address_and_in_total() {
    run_bounded(LIMIT, async {
        // The sharer and the asker hold two connections of the five.
        let w = world(|c| {
            c.limits.max_per_address = 2;
            c.limits.max_connections = 5;
        })
        .await;
        let addr = w.sp.listen_addr();
        let a = Raw::connect(12, addr, Role::Leaf, None).await;
        let _b = Raw::connect(12, addr, Role::Leaf, None).await;
        assert!(refused(12, addr).await, "max_per_address did not trip");
        // Counts are given back when a connection ends.
        drop(a);
        smol::Timer::after(Duration::from_millis(300)).await;
        let _c = Raw::connect(12, addr, Role::Leaf, None).await;
        let _d = Raw::connect(13, addr, Role::Leaf, None).await;
        assert!(refused(14, addr).await, "max_connections did not trip");
        w.still_serves().await;
    });
}

#[test]
fn silent_and_slow_handshakes_cut_off() {
    run_bounded(LIMIT, async {
        let w = world(|c| c.limits.handshake_timeout = Duration::from_millis(300)).await;
        let addr = w.sp.listen_addr();
        // Silent.
        let mut silent = net::dial_from([127, 0, 0, 15].into(), addr).await.unwrap();
        // Slow drip: the first handshake message one byte at a time.
        let mut drip = net::dial_from([127, 0, 0, 15].into(), addr).await.unwrap();
        let started = Instant::now();
        // A length that announces a whole first message, then its bytes one at a time.
        drip.write_all(&[0, 32]).await.unwrap();
        let mut closed = false;
        for _ in 0..40 {
            if drip.write_all(&[0]).await.is_err() {
                closed = true;
                break;
            }
            smol::Timer::after(Duration::from_millis(100)).await;
        }
        assert!(closed, "a slow-drip handshake was not cut off");
        assert!(started.elapsed() < Duration::from_secs(3));
        let mut buf = [0; 16];
        let n = smol::io::AsyncReadExt::read(&mut silent, &mut buf).await;
        assert!(matches!(n, Ok(0) | Err(_)), "a silent peer was not cut off");
        w.still_serves().await;
    });
}

#[test]
fn slow_drip_messages_cut_off_at_the_idle_timeout() {
    run_bounded(LIMIT, async {
        let w = world(|c| {
            c.overlay.idle_timeout = Duration::from_secs(1);
            c.overlay.keepalive_interval = Duration::from_millis(300);
        })
        .await;
        let addr = w.sp.listen_addr();
        let mut raw = Raw::connect(16, addr, Role::Leaf, None).await;
        let mut ping = Vec::new();
        wire::encode(&query("drip"), &mut ping);
        let started = Instant::now();
        let mut closed = false;
        // One byte every 100 ms: the message would take seconds to arrive.
        for b in ping {
            if raw.writer.write_all(&[b]).await.is_err() || raw.writer.flush().await.is_err() {
                closed = true;
                break;
            }
            smol::Timer::after(Duration::from_millis(100)).await;
            if started.elapsed() > Duration::from_secs(6) {
                break;
            }
        }
        assert!(
            closed || raw.cut_off_within(Duration::from_secs(1)).await,
            "a slow-drip sender was not cut off"
        );
        w.still_serves().await;
    });
}

#[test]
fn a_peer_that_does_not_read_is_cut_off_at_the_pending_limit() {
    run_bounded(LIMIT, async {
        let w = world(|c| {
            c.limits.max_pending_bytes = 256 << 10;
            c.limits.leaf_queries_per_second = 10_000.0;
        })
        .await;
        let addr = w.sp.listen_addr();
        let source = Some(SOURCE.parse().unwrap());
        let mut hog = Raw::connect(17, addr, Role::Leaf, source).await;
        // 200 records that all match "flood", each hit about 600 bytes: 120 KB per query.
        let files = (0..200)
            .map(|i| {
                record(
                    i,
                    format!("flood/{}/{i}.mp3", "long-folder-name-".repeat(30)),
                )
            })
            .collect();
        hog.send(&Message::Register { files }).await.unwrap();
        net::wait_records(&w.sp, 205).await;
        // Ask and never read: about 24 MB of hits, far past any socket buffers.
        let mut cut = false;
        for _ in 0..200 {
            if hog.send(&query("flood")).await.is_err() {
                cut = true;
                break;
            }
            smol::Timer::after(Duration::from_millis(5)).await;
        }
        // What is in flight drains into the reader now; then the connection is gone.
        assert!(
            cut || hog.cut_off_within(CUT).await,
            "max_pending_bytes did not trip"
        );
        // A slow reader is cut off, not banned.
        assert!(!refused(17, addr).await);
        w.still_serves().await;
        drop(w.tmp);
    });
}

#[test]
fn a_hello_that_claims_another_nodes_id_is_refused() {
    run_bounded(LIMIT, async {
        let w = world(|_| {}).await;
        let addr = w.sp.listen_addr();
        let victim = w.asker.node_id();
        let mut liar = Raw::connect_as(18, addr, Role::Leaf, None, Some(victim)).await;
        assert!(
            liar.cut_off_within(CUT).await,
            "an impersonator was accepted"
        );
        assert!(refused(18, addr).await);
        w.still_serves().await;
    });
}

#[test]
fn a_shared_file_swapped_for_a_link_is_not_served() {
    run_bounded(LIMIT, async {
        let w = world(|_| {}).await;
        let dir = w.tmp.path().join("swapped");
        std::fs::create_dir_all(&dir).unwrap();
        let content = vec![7u8; 100_000];
        std::fs::write(dir.join("song.mp3"), &content).unwrap();
        let sharer = net::leaf(w.tmp.path(), "swapper", &[w.sp.listen_addr()]).await;
        sharer.share(&dir, |_| {}).await.unwrap();
        // After sharing, the file becomes a link to something never shared.
        let secret = w.tmp.path().join("secret.txt");
        std::fs::write(&secret, vec![b's'; 100_000]).unwrap();
        std::fs::remove_file(dir.join("song.mp3")).unwrap();
        std::os::unix::fs::symlink(&secret, dir.join("song.mp3")).unwrap();
        let id = FileId::from(blake3::hash(&content));
        let mut raw = Raw::connect(19, sharer.listen_addr().unwrap(), Role::Transfer, None).await;
        let hello = raw.reader.read_message_within(CUT).await.unwrap();
        assert!(matches!(hello, Message::Hello(_)), "{hello:?}");
        raw.send(&Message::GetChunk {
            request: 1,
            id,
            index: 0,
        })
        .await
        .unwrap();
        match raw.reader.read_message_within(CUT).await.unwrap() {
            Message::TransferError { request: 1, .. } => {}
            other => panic!("expected a TransferError, got {}", other.kind()),
        }
        w.still_serves().await;
    });
}

#[test]
fn message_floods_of_any_kind_cut_off() {
    run_bounded(LIMIT, async {
        let w = world(|c| c.limits.leaf_messages_per_second = 20.0).await;
        let addr = w.sp.listen_addr();
        let mut flood = Raw::connect(20, addr, Role::Leaf, None).await;
        // Burst of 10 s at 20 a second is 200: a thousand pings is a flood.
        for nonce in 0..1000 {
            if flood.send(&Message::Ping { nonce }).await.is_err() {
                break;
            }
        }
        assert!(
            flood.cut_off_within(CUT).await,
            "messages_per_second did not trip"
        );
        assert!(refused(20, addr).await);
        w.still_serves().await;
    });
}

#[test]
fn a_leaf_that_names_another_nodes_address_is_not_found_reachable_there() {
    run_bounded(LIMIT, async {
        let w = world(|_| {}).await;
        let sharer = w.sharer.listen_addr().unwrap();
        // From the sharer's own IP, naming its port: the super-peer's check connects to the
        // sharer, which answers, but with its own key.
        let from = match sharer.ip() {
            std::net::IpAddr::V4(v4) => v4.octets()[3],
            other => panic!("the test leaf listens at {other}"),
        };
        let mut raw = Raw::connect(from, w.sp.listen_addr(), Role::Leaf, Some(sharer)).await;
        let until = Instant::now() + Duration::from_secs(10);
        let found = loop {
            let left = until.saturating_duration_since(Instant::now());
            match raw.reader.read_message_within(left).await {
                Ok(Message::Reachability {
                    observed,
                    reachable,
                }) => break (observed, reachable),
                Ok(_) => continue,
                Err(e) => panic!("no Reachability within 10 s: {e}"),
            }
        };
        assert_eq!(
            found,
            (sharer, false),
            "found reachable at another's address"
        );
        w.still_serves().await;
    });
}
