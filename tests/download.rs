//! The downloader against scripted sources: real leaves beside fakes that stall, answer requests
//! never made, or hand out a forged manifest. The file must complete, correct, and promptly.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy::corpus;
use canopy::net::{self, run_bounded};
use leaf::download;
use smol::net::TcpListener;
use transport::identity::Identity;
use transport::net::{write_message, FrameReader};
use wire::{ChunkMsg, FileId, Hello, ManifestBuilder, ManifestMsg, Message, Role};

#[derive(Clone, Copy, PartialEq)]
enum Fake {
    /// Honest manifest, then never answers a chunk request (but stays connected).
    Stall,
    /// Answers every chunk request with a chunk for a request number never used.
    Unrequested,
    /// A manifest that verifies against the id but claims one tiny chunk.
    ForgedManifest,
    /// Sends chunks with a flipped byte.
    Liar,
    /// Serves this many chunks honestly, then hangs up and accepts no more connections.
    DiesAfter(u32),
    /// A manifest one byte longer than the file, with the true chaining values (it verifies
    /// against the id); honest chunks.
    LongManifest,
    /// The same lie, and the last chunk (which would prove it) never sent.
    LongManifestNoTail,
    /// An honest manifest, and a bitfield of nothing: it has no chunk to give.
    Empty,
}

/// Starts a scripted source for `content`; returns its address.
async fn fake_source(kind: Fake, content: Vec<u8>) -> SocketAddr {
    fake_source_counted(kind, content, Arc::default()).await
}

/// Connections a set of fake sources hold open now, and the most ever at once.
#[derive(Default)]
struct Crowd {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// [`fake_source`], counting its open connections in `crowd`.
async fn fake_source_counted(kind: Fake, content: Vec<u8>, crowd: Arc<Crowd>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut b = ManifestBuilder::new(content.len() as u64);
    b.update(&content);
    let (id, manifest) = b.finish().unwrap();
    smol::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let manifest = manifest.clone();
            let content = content.clone();
            let identity = Identity::generate();
            let node = identity.node();
            let mut kind = kind;
            let crowd = crowd.clone();
            let open = crowd.now.fetch_add(1, Ordering::SeqCst) + 1;
            crowd.peak.fetch_max(open, Ordering::SeqCst);
            smol::spawn(async move {
                struct Leave(Arc<Crowd>);
                impl Drop for Leave {
                    fn drop(&mut self) {
                        self.0.now.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let _leave = Leave(crowd);
                let limit = transport::secure::HANDSHAKE_TIMEOUT;
                let Ok(secure) = transport::secure::accept(stream, &identity, limit).await else {
                    return;
                };
                let mut w = secure.writer;
                let mut r = FrameReader::new(secure.reader);
                let mut scratch = Vec::new();
                while let Ok(Some(msg)) = r.read_message().await {
                    let reply = match msg {
                        Message::Hello(_) => {
                            Message::Hello(Hello::new(node, Role::Leaf, None, "fake"))
                        }
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
                            size: manifest.size
                                + u64::from(matches!(
                                    kind,
                                    Fake::LongManifest | Fake::LongManifestNoTail
                                )),
                            chunk_size: manifest.chunk_size,
                            cvs: manifest.cvs.clone(),
                        }),
                        Message::GetBitfield { id } if kind == Fake::Empty => Message::Bitfield {
                            id,
                            bits: wire::Bitfield::new(manifest.chunk_count()).into_bytes(),
                        },
                        Message::GetBitfield { id } => Message::Bitfield {
                            id,
                            bits: wire::Bitfield::full(manifest.chunk_count()).into_bytes(),
                        },
                        Message::GetChunk { .. } if kind == Fake::Stall => continue,
                        Message::GetChunk { index, .. }
                            if kind == Fake::LongManifestNoTail
                                && u64::from(index) + 1 == manifest.chunk_count() =>
                        {
                            continue
                        }
                        Message::GetChunk { request, index, .. } => {
                            let range = manifest.chunk_range(index as u64);
                            let mut data =
                                content[range.start as usize..range.end as usize].to_vec();
                            let request = match kind {
                                Fake::Unrequested => request.wrapping_add(1000),
                                Fake::Liar => {
                                    data[100] ^= 0x55;
                                    request
                                }
                                Fake::DiesAfter(0) => return,
                                Fake::DiesAfter(ref mut n) => {
                                    *n -= 1;
                                    request
                                }
                                _ => request,
                            };
                            Message::Chunk(ChunkMsg {
                                request,
                                id,
                                index,
                                data,
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
            if matches!(kind, Fake::DiesAfter(_)) {
                break; // one connection, then the listener is gone: connections are refused
            }
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
    net::direct_job(id, sources, out)
}

/// How many chunks a file of `size` bytes is cut into.
fn chunks_of(size: u64) -> u64 {
    wire::content::chunk_count(size, wire::content::chunk_size_for(size))
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
fn a_source_with_nothing_to_give_is_let_go_for_one_that_waits() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let content = corpus::deterministic_bytes("rotation", 2 << 20);
        let id = FileId::from(blake3::hash(&content));
        let (_nodes, honest) = honest_sources(tmp.path(), &content).await;
        let empty = fake_source(Fake::Empty, content.clone()).await;
        // One place: the empty source takes it first, the honest one waits.
        let mut j = job(id, vec![empty, honest[0]], &tmp.path().join("out"));
        j.opts.max_sources = 1;
        j.opts.rotate_idle = Duration::from_secs(1);
        j.opts.rotate_every = Duration::from_secs(1);
        let report = download::download(j, Box::new(|_| {})).await.unwrap();
        assert!(std::fs::read(&report.path).unwrap() == content);
        let gone = report.sources.iter().find(|s| s.addr == empty).unwrap();
        assert_eq!(gone.chunks, 0);
        let why = gone.error.as_deref().unwrap_or_default();
        assert!(why.starts_with("let go: no chunk from it for 1 s"), "{why}");
        let served = report.sources.iter().find(|s| s.addr == honest[0]).unwrap();
        assert_eq!(served.chunks, chunks_of(2 << 20), "{report:?}");
    });
}

#[test]
fn a_stalled_source_does_not_hold_up_the_download() {
    run_case(Fake::Stall, |report, fake| {
        let f = report.sources.iter().find(|s| s.addr == fake).unwrap();
        assert_eq!(f.chunks, 0);
        let all = chunks_of(6 << 20);
        assert_eq!(report.sources.iter().map(|s| s.chunks).sum::<u64>(), all);
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
fn a_manifest_that_lies_about_the_size_is_proven_wrong_by_the_last_chunk() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        // Not a whole number of chunks: the last one is short, and the lie makes it longer.
        let content = corpus::deterministic_bytes("poisoned manifest", (3 << 20) + 1000);
        let id = FileId::from(blake3::hash(&content));
        let (_nodes, sources) = honest_sources(tmp.path(), &content).await;
        let fake = fake_source(Fake::LongManifest, content.clone()).await;
        // One liar and one honest source: the vote is a tie, and the liar's (first) wins it.
        let started = Instant::now();
        let out = tmp.path().join("out");
        let report = download::download(job(id, vec![fake, sources[0]], &out), Box::new(|_| {}))
            .await
            .unwrap();
        assert!(std::fs::read(&report.path).unwrap() == content);
        assert_eq!(report.size, content.len() as u64);
        assert!(
            report.sources.iter().all(|s| s.addr != fake),
            "the liar was asked again: {:?}",
            report.sources
        );
        let honest = report
            .sources
            .iter()
            .find(|s| s.addr == sources[0])
            .unwrap();
        assert_eq!(honest.error, None, "the honest source was blamed");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
        // Nothing of the first attempt is left behind.
        let left: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    });
}

#[test]
fn liars_that_outvote_the_honest_source_and_withhold_the_last_chunk_are_still_found_out() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let content = corpus::deterministic_bytes("outvoted", (2 << 20) + 77);
        let id = FileId::from(blake3::hash(&content));
        let (_nodes, sources) = honest_sources(tmp.path(), &content).await;
        let a = fake_source(Fake::LongManifestNoTail, content.clone()).await;
        let b = fake_source(Fake::LongManifestNoTail, content.clone()).await;
        let mut job = job(id, vec![a, b, sources[0]], &tmp.path().join("out"));
        job.opts.response_timeout = Duration::from_millis(500);
        let report = download::download(job, Box::new(|_| {})).await.unwrap();
        assert!(std::fs::read(&report.path).unwrap() == content);
        assert_eq!(report.size, content.len() as u64);
    });
}

#[test]
fn a_download_holds_at_most_max_sources_connections() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let content = corpus::deterministic_bytes("crowd", 1 << 20);
        let id = FileId::from(blake3::hash(&content));
        let (_nodes, honest) = honest_sources(tmp.path(), &content).await;
        let crowd = Arc::new(Crowd::default());
        let mut sources = Vec::new();
        for _ in 0..8 {
            sources.push(fake_source_counted(Fake::Stall, content.clone(), crowd.clone()).await);
        }
        // The one source that delivers comes last: it waits for a place.
        sources.push(honest[0]);
        let mut job = job(id, sources, &tmp.path().join("out"));
        job.opts.max_sources = 3;
        job.opts.response_timeout = Duration::from_millis(500);
        let report = download::download(job, Box::new(|_| {})).await.unwrap();
        assert!(std::fs::read(&report.path).unwrap() == content);
        let peak = crowd.peak.load(Ordering::SeqCst);
        assert!(
            peak <= 3,
            "{peak} connections at once to the stalling sources"
        );
        assert!(peak >= 2, "the stalling sources were not tried ({peak})");
    });
}

#[test]
fn only_verified_chunks_earn_credit() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let content = corpus::deterministic_bytes("credit", 3 << 20);
        let id = FileId::from(blake3::hash(&content));
        let (nodes, honest) = honest_sources(tmp.path(), &content).await;
        let liar = fake_source(Fake::Liar, content.clone()).await;
        let reciprocity = Arc::new(leaf::swarm::Reciprocity::default());
        let mut job = job(id, vec![liar, honest[0]], &tmp.path().join("out"));
        job.swarm = Some(download::SwarmHooks {
            publish: Box::new(|_| {}),
            unpublish: Box::new(|_| {}),
            reciprocity: reciprocity.clone(),
            listen: None,
            peers: Default::default(),
            links: leaf::links::PeerLinks::new(leaf::links::MAX_PEER_LINKS),
        });
        let report = download::download(job, Box::new(|_| {})).await.unwrap();
        let liar_report = report.sources.iter().find(|s| s.addr == liar).unwrap();
        assert!(
            liar_report.error.is_some(),
            "the liar sent something: {report:?}"
        );
        let now = Instant::now();
        let total = reciprocity.total(now);
        let earned = reciprocity.score(&nodes[0].node_id(), now);
        // All the credit is the honest source's: the liar's bad chunk earned none.
        assert!(earned > 0.0);
        assert!(
            (total - earned).abs() < 1.0,
            "total {total}, honest {earned}"
        );
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

#[test]
fn four_sources_one_dies_one_stalls_one_lies_and_the_file_completes() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        // Large enough (96 chunks) that the honest source's window (at most 32) cannot take
        // every chunk at once, and capped (24 MiB/s: about a second) so that the machine's
        // speed does not decide whether the dying source is asked for its fourth chunk before
        // the download ends: uncapped, it once ended in 77 ms (6 MiB), and in 120 ms (24 MiB,
        // once the transfer path got faster) with that source asked for two.
        let content = corpus::deterministic_bytes("four sources", 24 << 20);
        let id = FileId::from(blake3::hash(&content));
        let (_nodes, honest) = honest_sources(tmp.path(), &content).await;
        let liar = fake_source(Fake::Liar, content.clone()).await;
        let staller = fake_source(Fake::Stall, content.clone()).await;
        let dies = fake_source(Fake::DiesAfter(3), content.clone()).await;
        let sources = vec![dies, liar, staller, honest[0]];
        let started = Instant::now();
        let mut capped = job(id, sources, &tmp.path().join("out"));
        capped.cap = leaf::rate::RateLimit::new(24 << 20);
        let report = download::download(capped, Box::new(|_| {})).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "took {:?}",
            started.elapsed()
        );
        assert!(
            std::fs::read(&report.path).unwrap() == content,
            "bytes differ"
        );
        let of = |addr| report.sources.iter().filter(move |s| s.addr == addr);
        assert!(of(liar).all(|s| s.chunks == 0), "{report:?}");
        assert!(of(liar).any(|s| s.error.as_deref().unwrap_or("").contains("bad chunk")));
        assert!(of(staller).all(|s| s.chunks == 0));
        // It served three chunks before it died (one may have lost an endgame race).
        assert!(of(dies).map(|s| s.chunks).sum::<u64>() <= 3, "{report:?}");
        assert!(
            of(dies).any(|s| s.error.as_deref().unwrap_or("").contains("connection")),
            "the dead source is noted: {report:?}"
        );
        let all = chunks_of(content.len() as u64);
        assert_eq!(report.sources.iter().map(|s| s.chunks).sum::<u64>(), all);
    });
}

#[test]
fn ten_requesters_against_two_upload_slots_all_complete_in_order() {
    run_bounded(Duration::from_secs(90), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let content = corpus::deterministic_bytes("slots", 2 << 20);
        let id = FileId::from(blake3::hash(&content));
        let dir = tmp.path().join("share");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("popular.ogg"), &content).unwrap();
        // Two slots and a cap, so requesters overlap and queue.
        let seeder = net::leaf_with(tmp.path(), "seeder", &[sp.listen_addr()], |c| {
            c.upload_slots = 2;
            c.upload_rate = 8_000_000;
        })
        .await;
        seeder.share(&dir, |_| {}).await.unwrap();
        let addr = seeder.listen_addr().unwrap();
        let mut tasks = Vec::new();
        let mut who = Vec::new();
        for i in 0..10u8 {
            let me = Identity::generate();
            who.push(me.node());
            let mut j = job(id, vec![addr], &tmp.path().join(format!("out{i}")));
            j.me = std::sync::Arc::new(me);
            j.give_up_after = None;
            tasks.push(smol::spawn(download::download(j, Box::new(|_| {}))));
            // Requests arrive in this order.
            smol::Timer::after(Duration::from_millis(100)).await;
        }
        let mut reports = Vec::new();
        for t in tasks {
            let r = t.await.expect("every requester completes");
            assert!(std::fs::read(&r.path).unwrap() == content);
            reports.push(r);
        }
        assert_eq!(
            seeder.upload_grants(),
            who,
            "slots were granted first come, first served"
        );
        let last = reports[9].sources.iter().find_map(|s| s.queued_at);
        assert!(
            last.is_some_and(|p| p >= 2),
            "the last requester learned its place: {last:?}"
        );
        assert!(reports[0].sources.iter().all(|s| s.queued_at.is_none()));
    });
}

/// A small tmpfs mounted for one test, unmounted however the test ends.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(dir: &std::path::Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "this test mounts a {size} tmpfs at {} and needs root",
            dir.display()
        );
        SmallDisk(dir.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A progress callback that, once 1 MiB is done, fills the 8 MiB disk at `dir` with someone
/// else's 7 MiB file; and that file's path.
fn fill_after_1_mib(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    Box<dyn Fn(download::Progress) + Send + Sync>,
) {
    let filler = dir.join("someone else's file");
    let fill = std::sync::Mutex::new(Some(filler.clone()));
    let progress = Box::new(move |p: download::Progress| {
        if p.done_bytes >= 1 << 20 {
            if let Some(path) = fill.lock().unwrap().take() {
                let _ = std::fs::write(&path, vec![1u8; 7 << 20]);
            }
        }
    });
    (filler, progress)
}

#[test]
fn a_damaged_record_is_rebuilt_from_the_part_file() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let content = corpus::deterministic_bytes("damaged record", 6 << 20);
        let id = FileId::from(blake3::hash(&content));
        let (_nodes, honest) = honest_sources(tmp.path(), &content).await;
        // An earlier attempt left the first half on disk, and a record that is now garbage.
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        let part = out.join(format!("set.flac.{}.part", id.short()));
        let mut partial = content.clone();
        partial[3 << 20..].fill(0);
        std::fs::write(&part, &partial).unwrap();
        std::fs::write(part.with_extension("part.state"), b"CNPY\x01 torn").unwrap();
        let report = download::download(job(id, honest, &out), Box::new(|_| {}))
            .await
            .unwrap();
        // The chunks of the first half were found good on disk.
        let chunk = wire::content::chunk_size_for(content.len() as u64) as u64;
        assert_eq!(report.resumed_chunks, (3 << 20) / chunk, "{report:?}");
        assert!(std::fs::read(&report.path).unwrap() == content);
    });
}

#[test]
fn a_full_disk_stops_the_download_keeps_what_was_verified_and_it_resumes() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let content = corpus::deterministic_bytes("full disk", 6 << 20);
        let id = FileId::from(blake3::hash(&content));
        let (_nodes, honest) = honest_sources(tmp.path(), &content).await;

        // Too small from the start: refused before anything is written.
        let tiny = SmallDisk::mount(&tmp.path().join("tiny"), "2m");
        let err = download::download(job(id, honest.clone(), &tiny.0), Box::new(|_| {}))
            .await
            .unwrap_err();
        assert!(
            matches!(err, download::DownloadError::NoSpace { .. }),
            "{err}"
        );
        assert!(err.to_string().contains("not enough space"), "{err}");
        assert_eq!(
            std::fs::read_dir(&tiny.0).unwrap().count(),
            0,
            "nothing left behind"
        );

        // Room at the start, then something else fills the disk mid-way.
        let disk = SmallDisk::mount(&tmp.path().join("disk"), "8m");
        let (filler, progress) = fill_after_1_mib(&disk.0);
        let err = download::download(job(id, honest.clone(), &disk.0), progress)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, download::DownloadError::Io { .. }), "{text}");
        assert!(
            text.contains("No space left") && text.contains("resume"),
            "{text}"
        );
        let kept: Vec<String> = std::fs::read_dir(&disk.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(kept.iter().any(|n| n.ends_with(".part")), "{kept:?}");
        assert!(kept.iter().any(|n| n.ends_with(".part.state")), "{kept:?}");
        assert!(
            !kept.iter().any(|n| n == "set.flac"),
            "no final name for an incomplete file"
        );

        // Space again: the same download resumes from the verified chunks and completes.
        std::fs::remove_file(&filler).unwrap();
        let report = download::download(job(id, honest, &disk.0), Box::new(|_| {}))
            .await
            .unwrap();
        assert!(report.resumed_chunks >= 4, "{report:?}");
        assert!(std::fs::read(&report.path).unwrap() == content);
        assert!(!disk
            .0
            .join(format!("set.flac.{}.part.state", id.short()))
            .exists());
    });
}

#[test]
fn recorded_chunks_altered_between_runs_are_fetched_again_on_resume() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let content = corpus::deterministic_bytes("altered part", 6 << 20);
        let id = FileId::from(blake3::hash(&content));
        let (_nodes, honest) = honest_sources(tmp.path(), &content).await;
        // A first attempt stops on a full disk, leaving verified chunks and their record.
        let disk = SmallDisk::mount(&tmp.path().join("disk"), "8m");
        let (filler, progress) = fill_after_1_mib(&disk.0);
        download::download(job(id, honest.clone(), &disk.0), progress)
            .await
            .unwrap_err();
        std::fs::remove_file(&filler).unwrap();
        // Between the runs every byte written to the part file changes (in place: its holes
        // stay holes, so the small disk keeps its room): the record still lists the chunks,
        // none of which is what it was.
        let part = disk.0.join(format!("set.flac.{}.part", id.short()));
        let bytes = std::fs::read(&part).unwrap();
        let file = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
        let mut altered = 0;
        for (i, block) in bytes.chunks(64 << 10).enumerate() {
            if block.iter().any(|&b| b != 0) {
                let flipped: Vec<u8> = block.iter().map(|b| b ^ 0x5a).collect();
                std::os::unix::fs::FileExt::write_all_at(&file, &flipped, (i << 16) as u64)
                    .unwrap();
                altered += 1;
            }
        }
        assert!(altered > 0, "chunks were written");
        drop(file);
        // The resume trusts none of them and completes with the right bytes.
        let report = download::download(job(id, honest, &disk.0), Box::new(|_| {}))
            .await
            .unwrap();
        assert_eq!(report.resumed_chunks, 0, "{report:?}");
        assert!(std::fs::read(&report.path).unwrap() == content);
    });
}

#[test]
fn an_output_folder_that_cannot_be_made_is_named() {
    run_bounded(Duration::from_secs(30), async {
        let tmp = tempfile::tempdir().unwrap();
        let content = corpus::deterministic_bytes("bad folder", 300_000);
        let id = FileId::from(blake3::hash(&content));
        let (_nodes, honest) = honest_sources(tmp.path(), &content).await;
        std::fs::write(tmp.path().join("a-file"), b"x").unwrap();
        let out = tmp.path().join("a-file/sub");
        let err = download::download(job(id, honest, &out), Box::new(|_| {}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("a-file/sub"), "{err}");
    });
}

#[test]
fn downloads_beyond_the_limit_wait_their_turn() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let dir = tmp.path().join("share");
        std::fs::create_dir_all(&dir).unwrap();
        let a = corpus::deterministic_bytes("first", 4 << 20);
        let b = corpus::deterministic_bytes("second", 1 << 20);
        std::fs::write(dir.join("a.bin"), &a).unwrap();
        std::fs::write(dir.join("b.bin"), &b).unwrap();
        let seeder = net::leaf_with(tmp.path(), "seeder", &[sp.listen_addr()], |c| {
            c.upload_rate = 4_000_000;
        })
        .await;
        seeder.share(&dir, |_| {}).await.unwrap();
        net::wait_records(&sp, 2).await;
        let getter = net::leaf_with(tmp.path(), "getter", &[sp.listen_addr()], |c| {
            c.max_downloads = 1;
        })
        .await;
        let out = tmp.path().join("out");
        let (ida, idb) = (
            FileId::from(blake3::hash(&a)),
            FileId::from(blake3::hash(&b)),
        );
        let first = {
            let (g, out) = (getter.clone(), out.clone());
            smol::spawn(async move { g.get(ida, &out, |_| {}).await })
        };
        smol::Timer::after(Duration::from_millis(100)).await;
        let second = {
            let (g, out) = (getter.clone(), out.clone());
            smol::spawn(async move { g.get(idb, &out, |_| {}).await })
        };
        smol::Timer::after(Duration::from_millis(300)).await;
        let states: Vec<_> = getter
            .status()
            .downloads
            .into_iter()
            .map(|d| (d.id, d.state))
            .collect();
        assert!(
            states.contains(&(idb, leaf::control::DownloadState::Queued)),
            "{states:?}"
        );
        first.await.unwrap();
        second.await.unwrap();
        let done = getter.status().downloads;
        assert!(done
            .iter()
            .all(|d| matches!(d.state, leaf::control::DownloadState::Done(_))));
    });
}

#[test]
fn a_cancelled_download_leaves_no_partial_file() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let content = corpus::deterministic_bytes("discard", 8 << 20);
        let id = FileId::from(blake3::hash(&content));
        let dir = tmp.path().join("share");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("slow.bin"), &content).unwrap();
        let seeder = net::leaf_with(tmp.path(), "seeder", &[sp.listen_addr()], |c| {
            c.upload_rate = 1_000_000;
        })
        .await;
        seeder.share(&dir, |_| {}).await.unwrap();
        net::wait_records(&sp, 1).await;
        let getter = net::leaf(tmp.path(), "getter", &[sp.listen_addr()]).await;
        let out = tmp.path().join("out");
        let running = {
            let (g, out) = (getter.clone(), out.clone());
            smol::spawn(async move { g.get(id, &out, |_| {}).await })
        };
        net::wait_until("some progress", Duration::from_secs(20), || async {
            getter
                .status()
                .downloads
                .first()
                .is_some_and(|d| d.done_bytes > 0)
        })
        .await;
        assert!(
            std::fs::read_dir(&out).unwrap().count() >= 2,
            "a .part file and its record"
        );
        assert_eq!(getter.discard(id).await.unwrap(), 2);
        assert!(
            running.await.is_err(),
            "the download reports that it was cancelled"
        );
        assert_eq!(
            std::fs::read_dir(&out).unwrap().count(),
            0,
            "nothing left behind"
        );
        let state = &getter.status().downloads[0].state;
        assert_eq!(
            *state,
            leaf::control::DownloadState::Failed("cancelled; partial file deleted".into())
        );
    });
}

/// A source known at two addresses (IPv6 beside IPv4, as hits name them) whose first address
/// takes the connection and never answers: its other address, dialled a moment later (Happy
/// Eyeballs), serves the file, and the report names the address it came from.
#[test]
fn a_source_silent_at_one_address_is_reached_at_its_other() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let content = corpus::deterministic_bytes("two addresses", 2 << 20);
        let id = FileId::from(blake3::hash(&content));
        let (_nodes, honest) = honest_sources(tmp.path(), &content).await;
        // Accepts, holds the connections, says nothing.
        let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let first = silent.local_addr().unwrap();
        let _held = smol::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let other = honest[0];
        let mut j = job(id, vec![first], &tmp.path().join("out"));
        j.ways = Some(Arc::new(move |addr| match addr == first {
            true => download::Way {
                addr,
                other: Some(other),
                node: None,
                other_first: false,
                back_later: false,
            },
            false => download::Way::to(addr),
        }));
        let report = download::download(j, Box::new(|_| {})).await.unwrap();
        assert!(std::fs::read(&report.path).unwrap() == content);
        // One source, known by the address it was found at, reached at its other.
        assert_eq!(report.sources.len(), 1, "{report:?}");
        let s = &report.sources[0];
        assert_eq!((s.addr, s.at), (first, Some(other)), "{report:?}");
        assert_eq!(s.chunks, chunks_of(2 << 20));
        assert_eq!(s.reached, Some(download::Reached::Direct));

        // Where the hits named another node at the other address (a super-peer's word), the
        // node that answers there is not taken for it.
        let mut j = job(id, vec![first], &tmp.path().join("out2"));
        j.ways = Some(Arc::new(move |addr| download::Way {
            addr,
            other: Some(other),
            node: Some(wire::NodeId([9; 32])),
            other_first: true,
            back_later: false,
        }));
        let err = download::download(j, Box::new(|_| {}))
            .await
            .expect_err("the node at the other address is not the one named");
        assert!(err.to_string().contains(", not 09090909"), "{err}");
    });
}
