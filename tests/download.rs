//! The downloader against scripted sources: real leaves beside fakes that stall, answer requests
//! never made, or hand out a forged manifest. The file must complete, correct, and promptly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use canopy::corpus;
use canopy::net::{self, run_bounded};
use leaf::download::{self, DownloadOptions};
use smol::net::TcpListener;
use superpeer::net::{write_message, FrameReader};
use wire::{ChunkMsg, FileId, Hello, ManifestBuilder, ManifestMsg, Message, NodeId, Role};

#[derive(Clone, Copy, PartialEq)]
enum Fake {
    /// Honest manifest, then never answers a chunk request (but stays connected).
    Stall,
    /// Answers every chunk request with a chunk for a request number never used.
    Unrequested,
    /// A manifest that verifies against the id but claims one tiny chunk.
    ForgedManifest,
}

/// Starts a scripted source for `content`; returns its address.
async fn fake_source(kind: Fake, content: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut b = ManifestBuilder::new(content.len() as u64);
    b.update(&content);
    let (id, manifest) = b.finish().unwrap();
    smol::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let manifest = manifest.clone();
            let content = content.clone();
            smol::spawn(async move {
                let mut w = stream.clone();
                let mut r = FrameReader::new(stream);
                let mut scratch = Vec::new();
                while let Ok(Some(msg)) = r.read_message().await {
                    let reply = match msg {
                        Message::Hello(_) => Message::Hello(Hello {
                            version: wire::PROTOCOL_VERSION,
                            node: NodeId([kind as u8 + 50; 32]),
                            role: Role::Leaf,
                            listen: None,
                            agent: "fake".into(),
                        }),
                        Message::GetManifest { request, .. } if kind == Fake::ForgedManifest => {
                            Message::Manifest(ManifestMsg {
                                request,
                                id,
                                size: 5,
                                chunk_size: wire::chunk_size_for(5),
                                cvs: vec![id.0],
                            })
                        }
                        Message::GetManifest { request, .. } => Message::Manifest(ManifestMsg {
                            request,
                            id,
                            size: manifest.size,
                            chunk_size: manifest.chunk_size,
                            cvs: manifest.cvs.clone(),
                        }),
                        Message::GetChunk { .. } if kind == Fake::Stall => continue,
                        Message::GetChunk { request, index, .. } => {
                            let range = manifest.chunk_range(index as u64);
                            Message::Chunk(ChunkMsg {
                                request: request.wrapping_add(1000),
                                id,
                                index,
                                data: content[range.start as usize..range.end as usize].to_vec(),
                            })
                        }
                        _ => continue,
                    };
                    if write_message(&mut w, &reply, &mut scratch).await.is_err() {
                        return;
                    }
                }
            })
            .detach();
        }
    })
    .detach();
    addr
}

/// Two real leaves sharing `content`; returns them (keep them alive) and their addresses.
async fn honest_sources(
    base: &std::path::Path,
    content: &[u8],
) -> (Vec<leaf::Node>, Vec<SocketAddr>) {
    let sp = net::superpeer(&[]).await;
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for i in 0..2 {
        let dir = base.join(format!("share{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("set.flac"), content).unwrap();
        let n = net::leaf(base, &format!("seed{i}"), &[sp.listen_addr()]).await;
        n.share(&dir, |_| {}).await.unwrap();
        addrs.push(n.listen_addr().unwrap());
        nodes.push(n);
    }
    // The super-peer is not needed for these direct downloads; it may go.
    drop(sp);
    (nodes, addrs)
}

/// A download of `id` from exactly `sources` (the network has no others to offer).
fn job(id: FileId, sources: Vec<SocketAddr>, out: &std::path::Path) -> download::Job {
    download::Job {
        me: NodeId([9; 32]),
        id,
        name: "set.flac".into(),
        expected_size: None,
        out_dir: out.to_path_buf(),
        sources,
        find: std::sync::Arc::new(|| Box::pin(async { Vec::new() })),
        give_up_after: Some(Duration::from_secs(5)),
        opts: DownloadOptions::default(),
        cap: leaf::rate::RateLimit::unlimited(),
    }
}

fn run_case(kind: Fake, check: impl FnOnce(&download::DownloadReport, SocketAddr)) {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let content = corpus::deterministic_bytes("downloader case", 6 << 20);
        let id = FileId::from(blake3::hash(&content));
        let (_nodes, mut sources) = honest_sources(tmp.path(), &content).await;
        let fake = fake_source(kind, content.clone()).await;
        // The fake first, so it is asked for the manifest first.
        sources.insert(0, fake);
        let started = Instant::now();
        let report =
            download::download(job(id, sources, &tmp.path().join("out")), Box::new(|_| {}))
                .await
                .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the download waited on the fake source ({:?})",
            started.elapsed()
        );
        assert!(std::fs::read(&report.path).unwrap() == content);
        check(&report, fake);
    });
}

#[test]
fn a_stalled_source_does_not_hold_up_the_download() {
    run_case(Fake::Stall, |report, fake| {
        let f = report.sources.iter().find(|s| s.addr == fake).unwrap();
        assert_eq!(f.chunks, 0);
        assert_eq!(report.sources.iter().map(|s| s.chunks).sum::<u64>(), 24);
    });
}

#[test]
fn a_source_answering_requests_never_made_is_dropped() {
    run_case(Fake::Unrequested, |report, fake| {
        let f = report.sources.iter().find(|s| s.addr == fake).unwrap();
        assert_eq!(f.chunks, 0);
        let why = f.error.as_deref().unwrap_or_default();
        assert!(why.contains("never made"), "{why}");
    });
}

#[test]
fn a_forged_manifest_is_refused_and_another_source_used() {
    run_case(Fake::ForgedManifest, |report, fake| {
        let f = report.sources.iter().find(|s| s.addr == fake).unwrap();
        let why = f.error.as_deref().unwrap_or_default();
        assert!(why.contains("manifest"), "{why}");
        assert_eq!(report.size, 6 << 20);
    });
}

#[test]
fn one_download_per_file_at_a_time() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let getter = net::leaf(tmp.path(), "getter", &[sp.listen_addr()]).await;
        let id = FileId([7; 32]);
        let out = tmp.path().join("out");
        let first = {
            let (g, out) = (getter.clone(), out.clone());
            smol::spawn(async move { g.get(id, &out, |_| {}).await })
        };
        smol::Timer::after(Duration::from_millis(100)).await;
        let second = getter.get(id, &out, |_| {}).await;
        assert!(matches!(second, Err(leaf::NodeError::AlreadyDownloading(i)) if i == id));
        // The first finds no source and says so.
        let first = first.await;
        assert!(first.unwrap_err().to_string().contains("no source found"));
        let status = getter.status();
        assert!(matches!(
            status.downloads[0].state,
            leaf::control::DownloadState::Failed(_)
        ));
    });
}
