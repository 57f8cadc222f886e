//! The mesh under attack for a minute (issue 13's load): ten super-peers, a hostile "neighbour"
//! that floods one of them with 1,000 fresh queries a second (coming back from a new address
//! each time it is cut off and banned), and a leaf that withdraws ids it never registered and
//! registers again, over and over. Throughout, every honest leaf's search must find every
//! honest match; at the end no honest super-peer may be banned by another, and the process
//! (all ten super-peers and the leaves) must stay under [`RSS_BOUND_MB`] of resident memory.
//!
//! `CANOPY_SURVIVAL_SECS` sets the attack's length (60 by default).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use canopy::corpus::{self, Track};
use canopy::net::{self, run_bounded, Raw};
use leaf::Node;
use transport::net::{write_message, FrameReader};
use wire::{FileId, FileRecord, Filter, Message, Query, QueryId, Role, Search, Tags, Terms};

/// Resident memory of the whole test process, bounded.
const RSS_BOUND_MB: u64 = 1024;

fn words(text: &str) -> Search {
    Search {
        terms: Terms::Words(text.into()),
        filter: Filter::default(),
    }
}

fn rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

/// The flood: 1,000 queries a second at `target`, as a super-peer, from 127.0.0.`n` and up.
async fn flood(target: SocketAddr, text: String, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) {
    let mut from = 2u8;
    while !stop.load(Ordering::Relaxed) {
        let Ok((secure, identity)) =
            net::secure_from(IpAddr::from([127, 0, 0, from]), target).await
        else {
            from = from.wrapping_add(1).max(2);
            continue;
        };
        let mut writer = secure.writer;
        let mut reader = FrameReader::new(secure.reader);
        let mut scratch = Vec::new();
        let hello = wire::Hello::new(identity.node(), Role::SuperPeer, None, "flood");
        if write_message(&mut writer, &Message::Hello(hello), &mut scratch)
            .await
            .is_err()
        {
            from = from.wrapping_add(1).max(2);
            continue;
        }
        // Reads what comes back (hits), so it is cut off for its rate, not for not reading.
        let _drain =
            smol::spawn(async move { while let Ok(Some(_)) = reader.read_message().await {} });
        let mut tick = Instant::now();
        'link: while !stop.load(Ordering::Relaxed) {
            for _ in 0..10 {
                let q = Message::Query(Query {
                    id: QueryId(rand::random()),
                    ttl: 4,
                    hops: 0,
                    search: words(&text),
                });
                if write_message(&mut writer, &q, &mut scratch).await.is_err() {
                    break 'link;
                }
                sent.fetch_add(1, Ordering::Relaxed);
            }
            tick += Duration::from_millis(10);
            smol::Timer::at(tick).await;
        }
        from = from.wrapping_add(1).max(2);
    }
}

fn record(i: u64) -> FileRecord {
    FileRecord {
        id: FileId(*blake3::hash(&i.to_be_bytes()).as_bytes()),
        size: 1000,
        path: format!("churn/file {i}.mp3"),
        tags: Tags::default(),
    }
}

/// The churning leaf: registers, withdraws a thousand ids it never registered, registers
/// again, as fast as it may, from 127.0.0.200 and up.
async fn churn(target: SocketAddr, stop: Arc<AtomicBool>, rounds: Arc<AtomicU64>) {
    let mut from = 200u8;
    let mut next = 0u64;
    let source = Some("127.0.0.1:9".parse().unwrap());
    while !stop.load(Ordering::Relaxed) {
        let mut raw = Raw::connect(from, target, Role::Leaf, source).await;
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let files = (next..next + 200).map(record).collect();
            next += 200;
            let ids = (0..1000).map(|_| FileId(rand::random())).collect();
            if raw.send(&Message::Register { files }).await.is_err()
                || raw.send(&Message::Withdraw { ids }).await.is_err()
            {
                break;
            }
            rounds.fetch_add(1, Ordering::Relaxed);
            smol::Timer::after(Duration::from_millis(5)).await;
        }
        from = from.wrapping_add(1).max(200);
    }
}

async fn share(node: &Node, dir: &Path, tracks: &[Track]) {
    corpus::write_share(dir, tracks).unwrap();
    node.share(dir, |_| {}).await.unwrap();
}

#[test]
fn the_mesh_survives_a_query_flood_and_share_churn() {
    let secs: u64 = std::env::var("CANOPY_SURVIVAL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let _ = env_logger::builder().is_test(true).try_init();
    run_bounded(Duration::from_secs(secs + 120), async {
        let tmp = tempfile::tempdir().unwrap();
        let mut sps = Vec::new();
        for _ in 0..10 {
            let peers: Vec<SocketAddr> = sps
                .iter()
                .map(|s: &superpeer::SuperPeerNode| s.listen_addr())
                .collect();
            sps.push(net::superpeer(&peers).await);
        }
        for sp in &sps {
            net::wait_neighbours(sp, 3).await;
        }
        let tracks = corpus::load_tracks(12).unwrap();
        let mut leaves = Vec::new();
        for (i, part) in tracks.chunks(4).enumerate() {
            let sp = sps[3 * i + 3].listen_addr();
            let node = net::leaf(tmp.path(), &format!("honest{i}"), &[sp]).await;
            share(&node, &tmp.path().join(format!("music{i}")), part).await;
            leaves.push(node);
        }
        let want: Vec<(String, FileId)> = tracks
            .iter()
            .map(|t| {
                (
                    format!("{} {}", t.artist, t.title),
                    FileId::from(blake3::hash(&t.contents())),
                )
            })
            .collect();
        // Every leaf searches for every track, all at once.
        let search_all = || {
            let tasks: Vec<_> = leaves
                .iter()
                .enumerate()
                .flat_map(|(n, leaf)| {
                    // The tracks the other leaves share: 8 searches a round, within a leaf's
                    // query rate (5 a second).
                    let others = want
                        .iter()
                        .enumerate()
                        .filter(move |(t, _)| t / 4 != n)
                        .map(|(_, w)| w);
                    others.map(move |(q, id)| {
                        let (leaf, q, id) = (leaf.clone(), q.clone(), *id);
                        smol::spawn(async move {
                            let found = leaf
                                .search(words(&q), 4, Duration::from_millis(2000))
                                .await
                                .unwrap_or_default();
                            (!found.iter().any(|r| r.id == id)).then(|| format!("leaf {n}: {q}"))
                        })
                    })
                })
                .collect();
            async move {
                let mut missed = Vec::new();
                for t in tasks {
                    missed.extend(t.await);
                }
                missed
            }
        };
        // Before the attack, everything is found.
        net::wait_until(
            "every honest match before the attack",
            Duration::from_secs(20),
            || async { search_all().await.is_empty() },
        )
        .await;

        let stop = Arc::new(AtomicBool::new(false));
        let (sent, rounds) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        // The flood asks for something that is everywhere, so it is forwarded everywhere.
        let text = tracks[0].artist.clone();
        let attack = [
            smol::spawn(flood(
                sps[0].listen_addr(),
                text,
                stop.clone(),
                sent.clone(),
            )),
            smol::spawn(churn(sps[1].listen_addr(), stop.clone(), rounds.clone())),
        ];
        let started = Instant::now();
        let mut misses = Vec::new();
        let mut checks = 0;
        while started.elapsed() < Duration::from_secs(secs) {
            smol::Timer::after(Duration::from_secs(4)).await;
            let missed = search_all().await;
            checks += 1;
            if !missed.is_empty() {
                misses.push((started.elapsed().as_secs(), missed));
            }
        }
        stop.store(true, Ordering::Relaxed);
        for t in attack {
            t.cancel().await;
        }
        let rss = rss_mb();
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "survival: {secs} s, {:.0} flood queries/s sent, {} churn rounds, {checks} rounds of \
             {} searches, {} missed, RSS at the end {rss} MB",
            sent.load(Ordering::Relaxed) as f64 / elapsed,
            rounds.load(Ordering::Relaxed),
            leaves.len() * (want.len() - 4),
            misses.len()
        );
        for sp in &sps {
            let s = sp.status().await;
            println!(
                "  {}: {} neighbours, {} queries processed, {} shaped, {} shed when behind, \
                 {} hits dropped, {} records",
                sp.listen_addr(),
                s.stats.neighbours,
                s.stats.queries_processed,
                s.stats.queries_shaped,
                s.queries_dropped_busy,
                s.stats.hits_dropped,
                s.records
            );
        }
        if !misses.is_empty() {
            // What the honest leaves saw of the overlay, for whoever reads a failure.
            for (n, leaf) in leaves.iter().enumerate() {
                let s = leaf.status();
                println!(
                    "  leaf {n}: {} ({}), links {:?}",
                    s.role, s.role_reason, s.superpeers
                );
                for e in s.events.iter().rev().take(12).rev() {
                    println!("    {e}");
                }
            }
        }
        assert!(
            misses.is_empty(),
            "honest searches missed matches: {misses:?}"
        );
        // The flood was seen for what it is: it went past the query rate (the rate it arrived
        // at, not the rate the node got round to reading it), and an address it came from is
        // banned (each for 300 s; it moves to the next every few seconds).
        assert!(
            (2..=255).any(|n| sps[0].is_banned(IpAddr::from([127, 0, 0, n]))),
            "the flood was never cut off"
        );
        let loopback = IpAddr::from([127, 0, 0, 1]);
        for sp in &sps {
            assert!(
                !sp.is_banned(loopback),
                "{} banned the honest super-peers' address",
                sp.listen_addr()
            );
        }
        assert!(
            sent.load(Ordering::Relaxed) as f64 / elapsed > 500.0,
            "the flood did not run"
        );
        assert!(rss > 0, "no resident memory figure from /proc/self/status");
        assert!(rss < RSS_BOUND_MB, "{rss} MB resident");
    });
}
