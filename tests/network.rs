//! Whole networks of real nodes on 127.0.0.1 (ephemeral ports, in one process): flooding and
//! TTL, duplicate suppression, multi-source downloads, a corrupt source, a leaf leaving, and
//! malformed frames. Every test is bounded in time and cleans up its temporary folders.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Duration;

use canopy::corpus::{self, Track};
use canopy::net::{self, run_bounded, wait_until};
use leaf::Node;
use smol::io::AsyncWriteExt;
use transport::net::FrameReader;
use wire::{FileId, Filter, Message, Search, Terms};

const LIMIT: Duration = Duration::from_secs(60);

fn words(text: &str) -> Search {
    Search {
        terms: Terms::Words(text.into()),
        filter: Filter::default(),
    }
}

fn track_id(t: &Track) -> FileId {
    FileId::from(blake3::hash(&t.contents()))
}

async fn share_tracks(node: &Node, dir: &Path, tracks: &[Track]) {
    corpus::write_share(dir, tracks).unwrap();
    let summary = node.share(dir, |_| {}).await.unwrap();
    assert_eq!(summary.files, tracks.len() as u64);
}

async fn ids_found(node: &Node, query: &str, ttl: u8) -> Vec<FileId> {
    let results = node
        .search(words(query), ttl, Duration::from_millis(800))
        .await
        .unwrap();
    results.into_iter().map(|r| r.id).collect()
}

/// The words of a track as a person would type them: artist and title.
fn query_for(t: &Track) -> String {
    format!("{} {}", t.artist, t.title)
}

#[test]
fn ttl_bounds_how_far_a_search_travels_in_a_line() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        // One neighbour each keeps the line a line (A would otherwise learn of C through B).
        let line = |c: &mut topology::Config| c.neighbour_target = 1;
        let a = net::superpeer_with(&[], line).await;
        let b = net::superpeer_with(&[a.listen_addr()], line).await;
        let c = net::superpeer_with(&[b.listen_addr()], line).await;
        net::wait_neighbours(&b, 2).await;
        net::wait_neighbours(&c, 1).await;

        let tracks = corpus::load_tracks(40).unwrap();
        let (mid_tracks, far_tracks) = tracks.split_at(20);
        // And each leaf on one super-peer only (by default a leaf keeps two).
        let one = |c: &mut leaf::NodeConfig| c.leaf_overlay.target = 1;
        let asker = net::leaf_with(tmp.path(), "asker", &[a.listen_addr()], one).await;
        let middle = net::leaf_with(tmp.path(), "middle", &[b.listen_addr()], one).await;
        let far = net::leaf_with(tmp.path(), "far", &[c.listen_addr()], one).await;
        share_tracks(&middle, &tmp.path().join("mid-music"), mid_tracks).await;
        share_tracks(&far, &tmp.path().join("far-music"), far_tracks).await;
        net::wait_records(&b, 20).await;
        net::wait_records(&c, 20).await;

        let far_track = &far_tracks[3];
        let mid_track = &mid_tracks[5];
        assert!(ids_found(&asker, &query_for(far_track), 2)
            .await
            .contains(&track_id(far_track)));
        assert!(!ids_found(&asker, &query_for(far_track), 1)
            .await
            .contains(&track_id(far_track)));
        // TTL 1 does travel one hop: the negative above is the TTL, not a broken link.
        assert!(ids_found(&asker, &query_for(mid_track), 1)
            .await
            .contains(&track_id(mid_track)));
        assert!(!ids_found(&asker, &query_for(mid_track), 0)
            .await
            .contains(&track_id(mid_track)));
        asker.shutdown().await;
        middle.shutdown().await;
        far.shutdown().await;
    });
}

#[test]
fn a_triangle_processes_each_query_once_and_hits_arrive_once() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let a = net::superpeer(&[]).await;
        let b = net::superpeer(&[a.listen_addr()]).await;
        let c = net::superpeer(&[a.listen_addr(), b.listen_addr()]).await;
        for sp in [&a, &b, &c] {
            net::wait_neighbours(sp, 2).await;
        }
        let tracks = corpus::load_tracks(15).unwrap();
        let mut leaves = Vec::new();
        for (i, sp) in [&a, &b, &c].into_iter().enumerate() {
            let l = net::leaf(tmp.path(), &format!("leaf{i}"), &[sp.listen_addr()]).await;
            share_tracks(
                &l,
                &tmp.path().join(format!("music{i}")),
                &tracks[i * 5..i * 5 + 5],
            )
            .await;
            net::wait_records(sp, 5).await;
            leaves.push(l);
        }
        let asker = net::leaf(tmp.path(), "asker", &[a.listen_addr()]).await;
        let (qid, rx) = asker.start_search(words("mp3"), 3).unwrap();
        let mut arrivals: HashMap<(FileId, std::net::SocketAddr), usize> = HashMap::new();
        let until = std::time::Instant::now() + Duration::from_millis(1500);
        while let Some(batch) = smol::future::or(async { rx.recv().await.ok() }, async {
            smol::Timer::at(until).await;
            None
        })
        .await
        {
            for h in batch {
                *arrivals.entry((h.file.id, h.source.addr)).or_default() += 1;
            }
        }
        asker.end_search(qid);
        assert_eq!(arrivals.len(), 15, "every file of every leaf is found");
        assert!(
            arrivals.values().all(|&n| n == 1),
            "a hit arrived twice: {arrivals:?}"
        );
        let mut dropped = 0;
        for sp in [&a, &b, &c] {
            let s = sp.status().await.stats;
            assert_eq!(
                s.queries_processed,
                1,
                "{} processed the query once",
                sp.listen_addr()
            );
            dropped += s.duplicates_dropped;
        }
        assert!(
            dropped >= 1,
            "the triangle's second copies were dropped as duplicates"
        );
    });
}

/// A file big enough for many chunks, the same bytes for every leaf that shares it.
fn big_file(dir: &Path, name: &str, len: usize) -> (std::path::PathBuf, Vec<u8>) {
    fs::create_dir_all(dir).unwrap();
    let bytes = corpus::deterministic_bytes("big file", len);
    let path = dir.join(name);
    fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[test]
fn a_file_held_by_three_leaves_downloads_from_all_three() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let mut sources = Vec::new();
        let mut content = Vec::new();
        for i in 0..3 {
            let l = net::leaf(tmp.path(), &format!("seed{i}"), &[sp.listen_addr()]).await;
            let dir = tmp.path().join(format!("share{i}"));
            let (_, bytes) = big_file(&dir, "Concert Recording.flac", 16 << 20);
            l.share(&dir, |_| {}).await.unwrap();
            content = bytes;
            sources.push(l);
        }
        net::wait_records(&sp, 3).await;
        let id = FileId::from(blake3::hash(&content));
        let getter = net::leaf(tmp.path(), "getter", &[sp.listen_addr()]).await;
        let out = tmp.path().join("downloads");
        let report = getter.get(id, &out, |_| {}).await.unwrap();

        assert_eq!(report.sources.len(), 3, "{report:?}");
        for s in &report.sources {
            assert!(s.error.is_none(), "{s:?}");
            assert!(
                s.chunks > 0,
                "source {} served no chunk: {report:?}",
                s.addr
            );
        }
        let size = content.len() as u64;
        let all = wire::content::chunk_count(size, wire::content::chunk_size_for(size));
        assert_eq!(report.sources.iter().map(|s| s.chunks).sum::<u64>(), all);
        let got = fs::read(&report.path).unwrap();
        assert_eq!(report.path, out.join("Concert Recording.flac"));
        assert_eq!(FileId::from(blake3::hash(&got)), id);
        assert!(got == content, "downloaded bytes differ");
        assert!(!out.join("Concert Recording.flac.part").exists());

        // Asked for again, the node says where it has the file and fetches nothing; searches
        // mark it too, as they mark what a node shares.
        let had = getter.get(id, &out, |_| {}).await.unwrap();
        assert!(had.already_had && had.sources.is_empty(), "{had:?}");
        assert_eq!(had.path, report.path);
        let found = getter
            .search(words("concert recording"), 3, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(found[0].have.as_ref(), Some(&report.path));
        let at_source = sources[0]
            .search(words("concert recording"), 3, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            at_source[0].have.as_ref(),
            Some(&tmp.path().join("share0/Concert Recording.flac")),
            "a source has its shared copy"
        );
        // Another copy only when asked for: a new name, never a replacement.
        let again = getter.get_again(id, &out, |_| {}).await.unwrap();
        assert!(!again.already_had);
        assert_eq!(again.path, out.join("Concert Recording (1).flac"));
        assert_eq!(fs::read(&report.path).unwrap().len(), content.len());

        // The record of finished downloads outlives the node; a file changed since is no
        // longer taken for the download.
        getter.shutdown().await;
        let getter = net::leaf(tmp.path(), "getter", &[sp.listen_addr()]).await;
        assert_eq!(getter.already_have(id), Some(again.path.clone()));
        fs::write(&again.path, b"changed").unwrap();
        assert_eq!(getter.already_have(id), Some(report.path.clone()));
        fs::remove_file(&report.path).unwrap();
        assert_eq!(getter.already_have(id), None);
    });
}

#[test]
fn a_source_that_sends_corrupt_chunks_is_dropped_and_the_download_completes() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let mut leaves = Vec::new();
        let mut bad_addr = None;
        let mut content = Vec::new();
        for i in 0..3 {
            let l = net::leaf(tmp.path(), &format!("seed{i}"), &[sp.listen_addr()]).await;
            let dir = tmp.path().join(format!("share{i}"));
            let (path, bytes) = big_file(&dir, "album.zip", 4 << 20);
            l.share(&dir, |_| {}).await.unwrap();
            content = bytes;
            if i == 0 {
                // Rot every chunk of this copy on disk, keeping size and mtime, so the leaf
                // still believes it holds the file and serves bad bytes.
                let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                let mtime = fs::metadata(&path).unwrap().modified().unwrap();
                let size = content.len() as u64;
                let chunk_size = wire::content::chunk_size_for(size) as u64;
                for chunk in 0..size.div_ceil(chunk_size) {
                    f.write_all_at(b"\x00rot\x00", chunk * chunk_size + 1000)
                        .unwrap();
                }
                f.set_modified(mtime).unwrap();
                bad_addr = l.listen_addr();
            }
            leaves.push(l);
        }
        net::wait_records(&sp, 3).await;
        let id = FileId::from(blake3::hash(&content));
        let getter = net::leaf(tmp.path(), "getter", &[sp.listen_addr()]).await;
        let report = getter
            .get(id, &tmp.path().join("dl"), |_| {})
            .await
            .unwrap();

        let bad = report
            .sources
            .iter()
            .find(|s| Some(s.addr) == bad_addr)
            .unwrap();
        assert_eq!(
            bad.chunks, 0,
            "no chunk of the corrupt source was kept: {report:?}"
        );
        let why = bad.error.as_deref().unwrap_or_default();
        assert!(
            why.contains("bad chunk"),
            "dropped for the right reason: {why}"
        );
        let size = content.len() as u64;
        let all = wire::content::chunk_count(size, wire::content::chunk_size_for(size));
        assert_eq!(report.sources.iter().map(|s| s.chunks).sum::<u64>(), all);
        assert!(fs::read(&report.path).unwrap() == content);
    });
}

#[test]
fn a_leaf_that_disconnects_disappears_from_results() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let tracks = corpus::load_tracks(10).unwrap();
        let sharer = net::leaf(tmp.path(), "sharer", &[sp.listen_addr()]).await;
        share_tracks(&sharer, &tmp.path().join("music"), &tracks).await;
        net::wait_records(&sp, 10).await;
        let asker = net::leaf(tmp.path(), "asker", &[sp.listen_addr()]).await;
        let t = &tracks[2];
        assert!(ids_found(&asker, &query_for(t), 2)
            .await
            .contains(&track_id(t)));

        sharer.shutdown().await;
        wait_until(
            "the super-peer to drop the leaf's files",
            Duration::from_secs(10),
            || async { sp.status().await.records == 0 },
        )
        .await;
        assert!(ids_found(&asker, &query_for(t), 2).await.is_empty());
        assert_eq!(sp.status().await.stats.leaves, 1);
    });
}

/// Sends `bytes` on a fresh connection to `addr` (after reading the super-peer's Hello) and
/// returns the reason of the Goodbye that comes back, if any, once the connection closes.
async fn send_raw(addr: std::net::SocketAddr, bytes: &[u8], close_after: bool) -> Option<String> {
    // From another loopback address each time: an offender is banned, the other peers are not.
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(2);
    let from = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (stream, _) = net::secure_from([127, 0, 0, from].into(), addr)
        .await
        .unwrap();
    let mut writer = stream.writer;
    let mut reader = FrameReader::new(stream.reader);
    assert!(matches!(
        reader.read_message().await,
        Ok(Some(Message::Hello(_)))
    ));
    writer.write_all(bytes).await.unwrap();
    // An encrypting writer holds a short write until flushed.
    writer.flush().await.unwrap();
    if close_after {
        writer.close().await.unwrap();
    }
    let mut reason = None;
    loop {
        match reader.read_message().await {
            Ok(Some(Message::Goodbye { reason: r })) => reason = Some(r),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return reason,
        }
    }
}

#[test]
fn malformed_frames_close_only_the_offending_connection() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let addr = sp.listen_addr();
        let tracks = corpus::load_tracks(5).unwrap();
        let sharer = net::leaf(tmp.path(), "sharer", &[addr]).await;
        share_tracks(&sharer, &tmp.path().join("music"), &tracks).await;
        net::wait_records(&sp, 5).await;

        let mut ping = Vec::new();
        wire::encode(&Message::Ping { nonce: 1 }, &mut ping);
        let mut bad_crc = ping.clone();
        *bad_crc.last_mut().unwrap() ^= 0xff;
        let why = send_raw(addr, &bad_crc, false)
            .await
            .expect("a goodbye with a reason");
        assert!(why.contains("checksum"), "{why}");

        let mut oversized = (wire::MAX_BODY + 1).to_be_bytes().to_vec();
        oversized.extend_from_slice(&0u32.to_be_bytes());
        let why = send_raw(addr, &oversized, false)
            .await
            .expect("a goodbye with a reason");
        assert!(why.contains("exceeds the maximum"), "{why}");

        let mut garbage = Vec::new();
        wire::frame::encode_frame(&[0xff, 0x00, 0x13, 0x37], &[], &mut garbage);
        let why = send_raw(addr, &garbage, false)
            .await
            .expect("a goodbye with a reason");
        assert!(why.contains("invalid frame body"), "{why}");

        // Half a frame, then the sender hangs up: closed without a fuss.
        send_raw(addr, &ping[..ping.len() / 2], true).await;

        // The super-peer still serves everyone else.
        let asker = net::leaf(tmp.path(), "asker", &[addr]).await;
        let t = &tracks[1];
        assert!(ids_found(&asker, &query_for(t), 2)
            .await
            .contains(&track_id(t)));
        let stats = sp.status().await.stats;
        assert_eq!(stats.protocol_errors, 3);
        assert_eq!(stats.leaves, 2);
    });
}

#[test]
fn a_restarted_leaf_needs_no_bootstrap_address_and_a_bootstrap_file_works() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let first = net::leaf(tmp.path(), "returning", &[sp.listen_addr()]).await;
        first.shutdown().await;
        // Same data directory, no address given: the host cache it saved is enough.
        let again = net::leaf(tmp.path(), "returning", &[]).await;
        assert_eq!(again.status().superpeers[0].addr, sp.listen_addr());
        // A second node on the same data directory is refused while this one runs.
        let mut twin = leaf::node::NodeConfig::new(tmp.path().join("returning"));
        twin.listen = Some("127.0.0.1:0".parse().unwrap());
        let err = leaf::node::Node::start(twin)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another node is running"), "{err}");
        again.shutdown().await;

        // A node whose only configuration is the bootstrap file in its data directory.
        let dir = tmp.path().join("configured");
        std::fs::create_dir_all(&dir).unwrap();
        let file = format!("# my super-peer\n{}\nnot an address\n", sp.listen_addr());
        std::fs::write(dir.join(leaf::node::BOOTSTRAP_FILE), file).unwrap();
        let configured = net::leaf(tmp.path(), "configured", &[]).await;
        assert_eq!(configured.status().superpeers[0].addr, sp.listen_addr());
    });
}

#[test]
fn an_unshared_folder_disappears_from_the_network() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let tracks = corpus::load_tracks(6).unwrap();
        let sharer = net::leaf(tmp.path(), "sharer", &[sp.listen_addr()]).await;
        let music = tmp.path().join("music");
        share_tracks(&sharer, &music, &tracks).await;
        net::wait_records(&sp, 6).await;
        assert_eq!(sharer.unshare(&music).await.unwrap(), 6);
        wait_until(
            "the super-peer to drop the files",
            Duration::from_secs(10),
            || async { sp.status().await.records == 0 },
        )
        .await;
        assert!(sharer.status().folders.is_empty());
        let err = sharer.unshare(&music).await.unwrap_err().to_string();
        assert!(err.contains("is not shared"), "{err}");
    });
}

#[test]
fn a_wish_finds_a_file_shared_after_it_was_made_and_downloads_it() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let wishing = |c: &mut leaf::NodeConfig| {
            c.control = true;
            c.wish_interval = Duration::from_secs(3);
        };
        let wisher = net::leaf_with(tmp.path(), "wisher", &[sp.listen_addr()], wishing).await;
        let out = tmp.path().join("wished");
        fs::create_dir_all(&out).unwrap();
        let flac_only = wire::Filter {
            ext: Some("flac".into()),
            ..wire::Filter::default()
        };
        wisher
            .wish_add("aurora borealis", flac_only, true, out.clone())
            .unwrap();
        // Nothing has it yet: the first search finds nothing.
        wait_until(
            "the wish's first search",
            Duration::from_secs(15),
            || async { wisher.wishes()[0].last_run.is_some() },
        )
        .await;
        assert!(wisher.wishes()[0].matches.is_empty());

        // Then a leaf shares it, and an mp3 of the same words that the wish's filter leaves out.
        let sharer = net::leaf(tmp.path(), "sharer", &[sp.listen_addr()]).await;
        let music = tmp.path().join("music");
        let (_, flac) = big_file(&music, "Aurora Borealis.flac", 3 << 20);
        fs::write(music.join("Aurora Borealis (radio).mp3"), b"an mp3").unwrap();
        sharer.share(&music, |_| {}).await.unwrap();
        net::wait_records(&sp, 2).await;
        let target = out.join("Aurora Borealis.flac");
        wait_until(
            "the wish to find and fetch it",
            Duration::from_secs(30),
            || async { fs::read(&target).is_ok_and(|b| b == flac) },
        )
        .await;
        let wish = &wisher.status().wishes[0];
        assert_eq!(wish.matches.len(), 1, "{wish:?}");
        assert_eq!(wish.matches[0].name, "Aurora Borealis.flac");

        // Wishes outlive the node, with what they found: it is not found (or fetched) again.
        wisher.shutdown().await;
        let wisher = net::leaf_with(tmp.path(), "wisher", &[sp.listen_addr()], wishing).await;
        let before = wisher.wishes()[0].last_run;
        wait_until(
            "a search after the restart",
            Duration::from_secs(15),
            || async { wisher.wishes()[0].last_run != before },
        )
        .await;
        assert_eq!(wisher.wishes()[0].matches.len(), 1);
        let files = fs::read_dir(&out).unwrap().count();
        assert_eq!(files, 1, "nothing fetched again");
    });
}

#[test]
fn a_leaf_is_browsed_and_a_folder_of_it_fetched_with_its_layout_and_names_made_safe() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let sharer = net::leaf(tmp.path(), "sharer", &[sp.listen_addr()]).await;
        let music = tmp.path().join("music");
        let album = music.join("Album");
        let (_, one) = big_file(&album.join("CD 1"), "01 - Opening.flac", 1 << 20);
        // A folder whose name would reorder text in a file manager.
        let sneaky = album.join("Bonus\u{202e}3pm.exe");
        fs::create_dir_all(&sneaky).unwrap();
        fs::write(sneaky.join("02 - Coda.flac"), b"a short coda").unwrap();
        fs::write(music.join("elsewhere.mp3"), b"not in the album").unwrap();
        sharer.share(&music, |_| {}).await.unwrap();
        net::wait_records(&sp, 3).await;

        let browser = net::leaf(tmp.path(), "browser", &[sp.listen_addr()]).await;
        let addr = sharer.listen_addr().unwrap();
        let listing = browser.browse(addr).await.unwrap();
        // By node id, whoever answers must prove to be that node.
        let same = browser.browse_node(addr, Some(sharer.node_id())).await;
        assert_eq!(same.unwrap().files.len(), listing.files.len());
        let other = wire::NodeId([0xab; 32]);
        let refused = browser.browse_node(addr, Some(other)).await.unwrap_err();
        assert!(refused.to_string().contains("not abababab"), "{refused}");
        let mut paths: Vec<&str> = listing.files.iter().map(|f| f.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "music/Album/Bonus\u{202e}3pm.exe/02 - Coda.flac",
                "music/Album/CD 1/01 - Opening.flac",
                "music/elsewhere.mp3",
            ]
        );
        assert_eq!(listing.total, 3);

        let out = tmp.path().join("got");
        let done = browser
            .get_folder(addr, None, "music/Album", &out, false, |_, r| {
                assert!(r.is_ok(), "{r:?}");
            })
            .await
            .unwrap();
        assert_eq!(done, 2);
        assert!(fs::read(out.join("Album/CD 1/01 - Opening.flac")).unwrap() == one);
        assert_eq!(
            fs::read(out.join("Album/Bonus3pm.exe/02 - Coda.flac")).unwrap(),
            b"a short coda"
        );
        assert!(!out.join("elsewhere.mp3").exists());
        let missing = browser.get_folder(addr, None, "music/Nope", &out, false, |_, _| {});
        assert!(missing.await.unwrap_err().to_string().contains("no folder"));

        // A leaf that does not allow browsing says so.
        let private = net::leaf_with(tmp.path(), "private", &[sp.listen_addr()], |c| {
            c.browsable = false
        })
        .await;
        let err = browser
            .browse(private.listen_addr().unwrap())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("does not allow browsing"), "{err}");
    });
}

#[test]
fn a_neighbouring_super_peer_on_another_address_checks_that_a_leaf_is_reachable() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        // The checker listens on 127.0.0.2; the leaf's super-peer (127.0.0.1) dials it, so it
        // sees its neighbour at another address than the leaf's.
        let id = transport::identity::Identity::generate();
        let mut config = superpeer::Config::new(id, "127.0.0.2:0".parse().unwrap());
        // It never dials: the link stays the one the leaf's super-peer dialled.
        config.overlay.neighbour_target = 0;
        let checker = superpeer::SuperPeerNode::start(config).await.unwrap();
        let sp = net::superpeer(&[checker.listen_addr()]).await;
        net::wait_neighbours(&sp, 1).await;
        let leaf = net::leaf(tmp.path(), "leaf", &[sp.listen_addr()]).await;
        wait_until(
            "the leaf is found reachable",
            Duration::from_secs(30),
            || async { leaf.status().reach.is_some_and(|r| r.reachable) },
        )
        .await;
        // Asked of the neighbour, which connected to the leaf and answered; then confirmed
        // here.
        let asker = sp.status().await.stats;
        assert!(asker.reach_checks_asked >= 1, "{asker:?}");
        assert!(asker.reach_checks_answered >= 1, "{asker:?}");
        assert!(checker.status().await.stats.reach_checks_made_for >= 1);
        leaf.shutdown().await;
        sp.shutdown("test over").await;
        checker.shutdown("test over").await;
    });
}
