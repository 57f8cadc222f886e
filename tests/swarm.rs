//! Swarming (issue 9) with real nodes on 127.0.0.1: a leecher serves the chunks it has verified
//! and refuses the others, advertising what it holds, and registers it with a super-peer it
//! attaches to later; a leecher that uploads nothing (a free rider) still completes, after the
//! leechers that upload.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy::corpus;
use canopy::net::{self, run_bounded, wait_until};
use transport::identity::Identity;
use transport::net::{connect_secure, write_message, FrameReader};
use transport::secure::{SecureReader, SecureWriter};
use wire::{FileId, Hello, Manifest, Message, Role, TransferErrorKind};

/// A raw transfer connection to a leaf, speaking the wire protocol as a downloader would.
struct Client {
    reader: FrameReader<SecureReader<smol::net::TcpStream>>,
    writer: SecureWriter<smol::net::TcpStream>,
    scratch: Vec<u8>,
}

impl Client {
    async fn open(addr: SocketAddr) -> Client {
        let identity = Identity::generate();
        let stream = connect_secure(addr, &identity, Duration::from_secs(5))
            .await
            .unwrap();
        let mut c = Client {
            reader: FrameReader::new(stream.reader),
            writer: stream.writer,
            scratch: Vec::new(),
        };
        let hello = Hello::new(identity.node(), Role::Transfer, None, "test");
        c.send(Message::Hello(hello)).await;
        assert!(matches!(c.recv().await, Message::Hello(_)));
        c
    }

    async fn send(&mut self, msg: Message) {
        write_message(&mut self.writer, &msg, &mut self.scratch)
            .await
            .unwrap();
    }

    /// Asks for the bitfield of `id`; its answer.
    async fn bitfield(&mut self, id: FileId) -> Message {
        self.send(Message::GetBitfield { id }).await;
        self.recv().await
    }

    /// The next message, past any telling of other peers (source exchange), which this client
    /// has no use for.
    async fn recv(&mut self) -> Message {
        loop {
            let msg = self
                .reader
                .read_message_within(Duration::from_secs(10))
                .await
                .unwrap();
            if !matches!(msg, Message::Peers { .. }) {
                return msg;
            }
        }
    }
}

fn share_file(base: &Path, name: &str, content: &[u8]) -> std::path::PathBuf {
    let dir = base.join(format!("share-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), content).unwrap();
    dir
}

/// A seeder and a leecher downloading from it, as [`leech_until`] leaves them.
struct Leeching {
    seeder: leaf::Node,
    leecher: leaf::Node,
    download: smol::Task<Result<leaf::download::DownloadReport, leaf::NodeError>>,
    /// Where the leecher serves.
    addr: SocketAddr,
}

/// Starts a slow seeder (600 KB/s) sharing `content` as `name` and a leecher downloading it,
/// both attached to super-peer `sp`; returns once the leecher has verified `chunks` chunks (the
/// download still running).
async fn leech_until(
    base: &Path,
    sp: &superpeer::SuperPeerNode,
    name: &str,
    content: &[u8],
    chunks: u32,
) -> Leeching {
    let id = FileId::from(blake3::hash(content));
    let spa = [sp.listen_addr()];
    let seeder = net::leaf_with(base, "seeder", &spa, |c| c.upload_rate = 600_000).await;
    net::share_indexed(&seeder, sp, &share_file(base, name, content)).await;
    let leecher = net::leaf(base, "leecher", &spa).await;
    let out = base.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let getter = leecher.clone();
    let mut download = smol::spawn(async move { getter.get(id, &out, |_| {}).await });
    let addr = leecher.listen_addr().unwrap();
    let what = format!("the leecher to verify {chunks} chunks");
    let verified = wait_until(&what, Duration::from_secs(30), || async {
        let mut c = Client::open(addr).await;
        c.send(Message::GetBitfield { id }).await;
        match c.recv().await {
            Message::Bitfield { bits, .. } => {
                bits.iter().map(|b| b.count_ones()).sum::<u32>() >= chunks
            }
            _ => false,
        }
    });
    // A download that ends meanwhile will verify nothing more: say why it ended.
    let ended = smol::future::or(
        async {
            verified.await;
            None
        },
        async { Some((&mut download).await) },
    )
    .await;
    if let Some(result) = ended {
        panic!("the download ended before {chunks} chunks were verified: {result:?}");
    }
    Leeching {
        seeder,
        leecher,
        download,
        addr,
    }
}

#[test]
fn a_leecher_serves_only_the_chunks_it_has_verified() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        // 16 chunks of 256 KiB, sent slowly (about 2.5 chunks a second).
        let content = corpus::deterministic_bytes("verified only", 4 << 20);
        let id = FileId::from(blake3::hash(&content));
        let Leeching {
            seeder,
            leecher,
            download,
            addr,
        } = leech_until(tmp.path(), &sp, "big.bin", &content, 3).await;
        // Once the leecher holds a few chunks, the only source goes: what it holds is frozen.
        seeder.shutdown().await;
        smol::Timer::after(Duration::from_millis(500)).await;

        let mut c = Client::open(addr).await;
        c.send(Message::GetManifest { request: 1, id }).await;
        let manifest = match c.recv().await {
            Message::Manifest(m) => Manifest {
                size: m.size,
                chunk_size: m.chunk_size,
                cvs: m.cvs,
            },
            other => panic!("a leecher answers the manifest; got {other:?}"),
        };
        manifest.verify(&id).unwrap();
        c.send(Message::GetBitfield { id }).await;
        let bits = match c.recv().await {
            Message::Bitfield { bits, .. } => bits,
            other => panic!("expected a bitfield, got {other:?}"),
        };
        let count = manifest.chunk_count();
        let bits =
            wire::Bitfield::from_bytes(bits, count).expect("a bitfield of the file's length");
        let has = |i: u64| bits.get(i);
        let held: Vec<u64> = (0..count).filter(|&i| has(i)).collect();
        let missing: Vec<u64> = (0..count).filter(|&i| !has(i)).collect();
        assert!(held.len() >= 3 && !missing.is_empty(), "held {held:?}");
        // The part file on disk must not be served where it is not verified: ask for a chunk
        // it does not hold.
        c.send(Message::GetChunk {
            request: 2,
            id,
            index: missing[0] as u32,
        })
        .await;
        match c.recv().await {
            Message::TransferError { request, kind, .. } => {
                assert_eq!(request, 2);
                assert_eq!(kind, TransferErrorKind::Unavailable);
            }
            other => panic!("an unverified chunk must be refused; got {other:?}"),
        }
        // What it holds it serves, and it verifies.
        let mut c = Client::open(addr).await;
        for (k, &i) in held.iter().enumerate() {
            c.send(Message::GetChunk {
                request: 10 + k as u32,
                id,
                index: i as u32,
            })
            .await;
            match c.recv().await {
                Message::Chunk(chunk) => {
                    assert_eq!(chunk.index as u64, i);
                    manifest.verify_chunk(i, &chunk.data).unwrap();
                }
                other => panic!("a verified chunk is served; got {other:?}"),
            }
        }
        // The download is still waiting for a source; it is not done.
        assert!(!download.is_finished());
        drop(download);
        leecher.shutdown().await;
    });
}

#[test]
fn a_leecher_registers_what_it_holds_with_a_super_peer_it_attaches_to_later() {
    run_bounded(Duration::from_secs(90), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let sp_addr = sp.listen_addr();
        let spa = [sp_addr];
        let content = corpus::deterministic_bytes("attach later", 4 << 20);
        let id = FileId::from(blake3::hash(&content));
        let Leeching {
            seeder,
            leecher,
            download,
            addr,
        } = leech_until(tmp.path(), &sp, "late.bin", &content, 1).await;
        // The only seeder goes, and so does the super-peer that heard of the leecher's copy.
        seeder.shutdown().await;
        drop(sp);
        wait_until(
            "the leecher to lose its super-peer",
            Duration::from_secs(10),
            || async { leecher.status().superpeers.is_empty() },
        )
        .await;
        // A new super-peer at the same address: it never saw the Register sent when the
        // download started, so the leecher must register its partial file when it attaches.
        let until = Instant::now() + Duration::from_secs(10);
        let fresh = loop {
            let config = superpeer::Config::new(Identity::generate(), sp_addr);
            match superpeer::SuperPeerNode::start(config).await {
                Ok(node) => break node,
                Err(e) => assert!(Instant::now() < until, "binding {sp_addr} again: {e}"),
            }
            smol::Timer::after(Duration::from_millis(50)).await;
        };
        net::wait_records(&fresh, 1).await;
        let asker = net::leaf(tmp.path(), "asker", &spa).await;
        let sources = asker
            .find_sources(id, Duration::from_secs(5))
            .await
            .unwrap();
        let addrs: Vec<SocketAddr> = sources.iter().map(|h| h.source.addr).collect();
        assert_eq!(addrs, vec![addr], "the leecher is the one source");
        assert!(!download.is_finished());
        drop(download);
        asker.shutdown().await;
        leecher.shutdown().await;
    });
}

#[test]
fn a_leecher_tells_of_chunks_as_it_verifies_them() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let spa = [sp.listen_addr()];
        let content = corpus::deterministic_bytes("haves", 3 << 20);
        let id = FileId::from(blake3::hash(&content));
        let seeder =
            net::leaf_with(tmp.path(), "seeder", &spa, |c| c.upload_rate = 1_000_000).await;
        net::share_indexed(&seeder, &sp, &share_file(tmp.path(), "f.bin", &content)).await;
        let leecher = net::leaf(tmp.path(), "leecher", &spa).await;
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let getter = leecher.clone();
        let download = smol::spawn(async move { getter.get(id, &out, |_| {}).await });
        let addr = leecher.listen_addr().unwrap();
        // Subscribe as soon as the leecher serves the file.
        let (mut c, known) = loop {
            assert!(
                !download.is_finished(),
                "the download ended before it served"
            );
            let mut c = Client::open(addr).await;
            c.send(Message::GetBitfield { id }).await;
            if let Message::Bitfield { bits, .. } = c.recv().await {
                break (c, bits);
            }
            smol::Timer::after(Duration::from_millis(20)).await;
        };
        // Every chunk it lacked is announced by a Have, each once.
        let total =
            (content.len() as u64).div_ceil(wire::chunk_size_for(content.len() as u64) as u64);
        let mut known =
            wire::Bitfield::from_bytes(known, total).expect("a bitfield of the file's length");
        while (0..total).any(|i| !known.get(i)) {
            match c.recv().await {
                Message::Have { id: hid, index } => {
                    assert_eq!(hid, id);
                    assert!(known.set(index as u64), "chunk {index} announced twice");
                }
                other => panic!("expected Have, got {other:?}"),
            }
        }
        let report = download.await.unwrap();
        assert_eq!(std::fs::read(&report.path).unwrap(), content);
        leecher.shutdown().await;
        seeder.shutdown().await;
    });
}

#[test]
fn a_downloader_learns_of_other_leechers_from_its_source_without_searching() {
    run_bounded(Duration::from_secs(90), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let content = corpus::deterministic_bytes("source exchange", 4 << 20);
        let id = FileId::from(blake3::hash(&content));
        // A leecher with some of the file, from a slow seeder.
        let Leeching {
            seeder,
            leecher,
            download,
            addr,
        } = leech_until(tmp.path(), &sp, "pex.bin", &content, 2).await;
        let seeder_addr = seeder.listen_addr().unwrap();
        // A downloader told of the seeder alone, whose searches find nothing: only the seeder
        // can tell it of the leecher.
        let mut job = net::direct_job(id, vec![seeder_addr], &tmp.path().join("late"));
        job.give_up_after = Some(Duration::from_secs(30));
        let report = leaf::download::download(job, Box::new(|_| {}))
            .await
            .unwrap();
        assert!(std::fs::read(&report.path).unwrap() == content);
        let from_leecher = report.sources.iter().find(|s| s.addr == addr);
        assert!(
            from_leecher.is_some(),
            "never connected to the leecher at {addr}: {report:?}"
        );
        drop(download);
        leecher.shutdown().await;
        seeder.shutdown().await;
    });
}

#[test]
fn a_file_is_served_to_at_most_its_share_of_downloaders_at_once() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let content = corpus::deterministic_bytes("per file", 1 << 20);
        let id = FileId::from(blake3::hash(&content));
        let seeder = net::leaf_with(tmp.path(), "seeder", &[sp.listen_addr()], |c| {
            c.max_downloaders_per_file = 2;
        })
        .await;
        net::share_indexed(&seeder, &sp, &share_file(tmp.path(), "f.bin", &content)).await;
        let addr = seeder.listen_addr().unwrap();
        let mut first = Client::open(addr).await;
        let mut second = Client::open(addr).await;
        assert!(matches!(first.bitfield(id).await, Message::Bitfield { .. }));
        assert!(matches!(
            second.bitfield(id).await,
            Message::Bitfield { .. }
        ));
        // A third is told to come back later, for the bitfield as for the manifest or a
        // chunk, and the connection is closed: it asked for nothing else.
        let third_asks = [
            Message::GetBitfield { id },
            Message::GetManifest { request: 5, id },
            Message::GetChunk {
                request: 7,
                id,
                index: 0,
            },
        ];
        for ask in third_asks {
            let mut third = Client::open(addr).await;
            let request = match &ask {
                Message::GetManifest { request, .. } | Message::GetChunk { request, .. } => {
                    *request
                }
                _ => 0,
            };
            third.send(ask).await;
            match third.recv().await {
                Message::TransferError {
                    kind,
                    message,
                    request: r,
                    ..
                } => {
                    assert_eq!((kind, r), (TransferErrorKind::Busy, request));
                    assert!(message.contains("2 downloaders of this file"), "{message}");
                }
                other => panic!("a third downloader was served: {other:?}"),
            }
            let closed =
                smol::future::or(async { Some(third.reader.read_message().await) }, async {
                    smol::Timer::after(Duration::from_secs(10)).await;
                    None
                })
                .await;
            assert!(
                matches!(closed, Some(Ok(None) | Err(_))),
                "not closed after the refusal: {closed:?}"
            );
        }
        // The two admitted go on being served.
        first
            .send(Message::GetChunk {
                request: 1,
                id,
                index: 0,
            })
            .await;
        assert!(matches!(first.recv().await, Message::Chunk(_)));
        // One leaves: there is room again.
        drop(first);
        wait_until("a place for the third", Duration::from_secs(10), || async {
            let mut c = Client::open(addr).await;
            matches!(c.bitfield(id).await, Message::Bitfield { .. })
        })
        .await;
        drop(second);
        seeder.shutdown().await;
    });
}

#[test]
fn a_download_whose_only_source_is_busy_waits_for_it() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let content = corpus::deterministic_bytes("busy", 1 << 20);
        let id = FileId::from(blake3::hash(&content));
        let seeder = net::leaf_with(tmp.path(), "seeder", &[sp.listen_addr()], |c| {
            c.max_downloaders_per_file = 1;
        })
        .await;
        net::share_indexed(&seeder, &sp, &share_file(tmp.path(), "f.bin", &content)).await;
        let addr = seeder.listen_addr().unwrap();
        // Another downloader holds the file's only place.
        let mut other = Client::open(addr).await;
        assert!(matches!(other.bitfield(id).await, Message::Bitfield { .. }));
        let mut job = net::direct_job(id, vec![addr], &tmp.path().join("out"));
        job.give_up_after = Some(Duration::from_secs(30));
        let download = smol::spawn(leaf::download::download(job, Box::new(|_| {})));
        // Refused the manifest (busy), it asks again instead of failing.
        smol::Timer::after(Duration::from_millis(1500)).await;
        assert!(
            !download.is_finished(),
            "the download ended while its source was busy"
        );
        drop(other);
        let report = download.await.expect("fetched once the place was free");
        assert!(std::fs::read(&report.path).unwrap() == content);
        seeder.shutdown().await;
    });
}

#[test]
fn a_free_rider_completes_after_the_leechers_that_upload() {
    run_bounded(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let spa = [sp.listen_addr()];
        // 24 chunks. The seeder uploads 2 MB/s to two peers at a time, each leecher 500 kB/s
        // to one: the leechers' trade is the bottleneck, so what a free rider gets is what
        // uploaders spare. (With the seeder the bottleneck, 1 MB/s for all, every node spared
        // enough to keep up with it, and the free rider finished within a chunk of the
        // leechers, before one of them in 1 run of 6 here and in CI.)
        let content = corpus::deterministic_bytes("free rider", 6 << 20);
        let id = FileId::from(blake3::hash(&content));
        let seeder = net::leaf_with(tmp.path(), "seeder", &spa, |c| {
            c.upload_rate = 2_000_000;
            c.upload_slots = 2;
        })
        .await;
        net::share_indexed(&seeder, &sp, &share_file(tmp.path(), "f.bin", &content)).await;
        let mut nodes = Vec::new();
        for i in 0..3 {
            nodes.push(
                net::leaf_with(tmp.path(), &format!("leecher{i}"), &spa, |c| {
                    c.upload_rate = 500_000;
                    c.upload_slots = 1;
                })
                .await,
            );
        }
        // The free rider serves nothing: no listen address, so it uploads to nobody.
        nodes.push(net::leaf_with(tmp.path(), "freerider", &spa, |c| c.listen = None).await);
        let start = Instant::now();
        let finished = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let (n, finished) = (n.clone(), finished.clone());
            let out = tmp.path().join(format!("out{i}"));
            std::fs::create_dir_all(&out).unwrap();
            tasks.push(smol::spawn(async move {
                let r = n
                    .get(id, &out, |_| {})
                    .await
                    .expect("every leecher completes");
                finished.lock().unwrap().push((i, start.elapsed()));
                r
            }));
        }
        for t in tasks {
            let r = t.await;
            assert_eq!(std::fs::read(&r.path).unwrap(), content);
        }
        let order = finished.lock().unwrap().clone();
        let (last, _) = *order.iter().max_by_key(|(_, t)| *t).unwrap();
        assert_eq!(
            last, 3,
            "the free rider (3) finishes last; finish times {order:?}"
        );
        // The leechers uploaded to one another: the seeder did not send everything to all.
        let leecher_uploads: u64 = nodes[..3].iter().map(|n| n.status().uploaded_bytes).sum();
        assert!(
            leecher_uploads > 0,
            "leechers uploaded {leecher_uploads} bytes"
        );
        assert_eq!(nodes[3].status().uploaded_bytes, 0);
        for n in &nodes {
            n.shutdown().await;
        }
        seeder.shutdown().await;
    });
}

/// The node-wide cap on links with other leaves (`--max-peer-links`): past it, a few
/// connections may still come in but ask for no file (a connection back the node asked for, a
/// reachability check); past those, a connection is closed at once, before any handshake; and
/// a place freed is taken again.
#[test]
fn a_node_accepts_no_connection_with_another_leaf_past_its_cap() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let content = corpus::deterministic_bytes("links cap", 1 << 20);
        let id = FileId::from(blake3::hash(&content));
        // 20 places: 12 for connections accepted (8 are kept for the node's own dials).
        let seeder = net::leaf_with(tmp.path(), "seeder", &[sp.listen_addr()], |c| {
            c.max_peer_links = 20;
        })
        .await;
        net::share_indexed(&seeder, &sp, &share_file(tmp.path(), "f.bin", &content)).await;
        let addr = seeder.listen_addr().unwrap();
        let accepted = 20 - leaf::links::RESERVED_FOR_DIALLED;
        let mut held = Vec::new();
        for _ in 0..accepted {
            // Each asks for the file at once (so it holds none of the places of connections
            // that have not asked yet, three per address).
            let mut c = Client::open(addr).await;
            assert!(matches!(c.bitfield(id).await, Message::Bitfield { .. }));
            held.push(c);
        }
        assert_eq!(seeder.status().peer_links, (accepted, 20));
        // Past the cap, one more gets through its handshake, but a request for a file is
        // refused and the connection closed.
        let mut beyond = Client::open(addr).await;
        assert!(
            matches!(
                beyond.bitfield(id).await,
                Message::TransferError {
                    kind: TransferErrorKind::Busy,
                    ..
                }
            ),
            "a connection past the cap was served a file"
        );
        drop(beyond);
        let seen = |n| {
            let seeder = &seeder;
            move || {
                let open = seeder.status().peer_links.0;
                async move { open == n }
            }
        };
        // (Its place is given back once the node has seen it go.)
        wait_until(
            "the place beyond the cap to be given back",
            Duration::from_secs(5),
            seen(accepted),
        )
        .await;
        // The places beyond the cap taken by connections that never say a word, the next is
        // closed at once, without a byte.
        let mut silent = Vec::new();
        for _ in 0..leaf::links::BEYOND_CAP {
            silent.push(smol::net::TcpStream::connect(addr).await.unwrap());
        }
        let full = accepted + leaf::links::BEYOND_CAP;
        wait_until(
            "the places beyond the cap to be taken",
            Duration::from_secs(5),
            seen(full),
        )
        .await;
        let closed_at_once = |addr| async move {
            use smol::io::AsyncReadExt;
            let mut raw = smol::net::TcpStream::connect(addr).await.unwrap();
            let mut buf = [0u8; 64];
            let read = smol::future::or(async { Some(raw.read(&mut buf).await) }, async {
                smol::Timer::after(Duration::from_secs(3)).await;
                None
            })
            .await;
            matches!(read, Some(Ok(0)) | Some(Err(_)))
        };
        assert!(
            closed_at_once(addr).await,
            "a connection past every place was kept"
        );
        assert_eq!(seeder.status().peer_links.0, full);
        drop(silent);
        // One goes: its place is anyone's again, and served.
        held.pop();
        wait_until(
            "the places to be given back",
            Duration::from_secs(5),
            seen(accepted - 1),
        )
        .await;
        let mut again = Client::open(addr).await;
        assert!(matches!(again.bitfield(id).await, Message::Bitfield { .. }));
        held.push(again);
        drop(held);
        wait_until(
            "every place to be given back",
            Duration::from_secs(5),
            seen(0),
        )
        .await;
        seeder.shutdown().await;
    });
}

/// A download dials no more sources than the node's cap lets it (the cap less the places kept
/// for connections accepted), however many it knows of, and completes with them.
#[test]
fn a_download_connects_to_no_more_sources_than_the_nodes_cap_allows() {
    run_bounded(Duration::from_secs(90), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let spa = [sp.listen_addr()];
        let content = corpus::deterministic_bytes("links cap download", 2 << 20);
        let id = FileId::from(blake3::hash(&content));
        let path = share_file(tmp.path(), "f.bin", &content);
        let mut seeders = Vec::new();
        for i in 0..6 {
            // Slow enough that the download lasts a couple of seconds.
            let s = net::leaf_with(tmp.path(), &format!("seeder{i}"), &spa, |c| {
                c.upload_rate = 300_000;
            })
            .await;
            net::share_indexed(&s, &sp, &path).await;
            seeders.push(s);
        }
        let downloader = net::leaf_with(tmp.path(), "downloader", &spa, |c| {
            c.max_peer_links = 12;
        })
        .await;
        let dial_cap = 12 - leaf::links::RESERVED_FOR_ACCEPTED;
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let get = {
            let (d, out) = (downloader.clone(), out.clone());
            smol::spawn(async move { d.get(id, &out, |_| {}).await })
        };
        // Counted where the connections arrive, at the seeders (which connect to nobody),
        // and by the downloader itself.
        let (mut most, mut most_counted) = (0, 0);
        while !get.is_finished() {
            let arrived: usize = seeders.iter().map(|s| s.status().peer_links.0).sum();
            most = most.max(arrived);
            most_counted = most_counted.max(downloader.status().peer_links.0);
            smol::Timer::after(Duration::from_millis(20)).await;
        }
        let report = get.await.expect("the download completes");
        assert_eq!(std::fs::read(&report.path).unwrap(), content);
        assert!(
            (1..=dial_cap).contains(&most),
            "{most} links at once at the seeders (the node may dial {dial_cap})"
        );
        assert!(most_counted <= dial_cap, "{most_counted} counted");
        downloader.shutdown().await;
        for s in seeders {
            s.shutdown().await;
        }
    });
}
