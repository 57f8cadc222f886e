//! Keyword routing on the real network and with the real index: super-peers on 127.0.0.1 send
//! each other route tables and patches, and a super-peer whose leaves hold none of a query's
//! words is not sent the query's last hop, nor the hop before when none of its neighbours'
//! leaves do either. And route tables cut with the index's own analyzer never rule out a query
//! that the index matches.

use std::time::Duration;

use canopy::corpus::{self, Track};
use canopy::net::{self, run_bounded, wait_until};
use index::Index;
use leaf::Node;
use topology::routing::{search_hashes, LocalTable, TABLE_BITS};
use topology::sim::Rng;
use wire::{FileId, FileRecord, Filter, Search, Tags, Terms};

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

async fn ids_found(node: &Node, query: &str, ttl: u8) -> Vec<FileId> {
    let results = node
        .search(words(query), ttl, Duration::from_millis(800))
        .await
        .unwrap();
    results.into_iter().map(|r| r.id).collect()
}

#[test]
fn a_super_peer_with_no_matching_words_gets_no_last_hop_query() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        // A star: A in the middle, B and C each linked to A only; patches go out fast.
        let quick = |c: &mut topology::Config| c.route_delay = Duration::from_millis(50);
        let arm = |c: &mut topology::Config| {
            c.route_delay = Duration::from_millis(50);
            c.neighbour_target = 1;
        };
        let a = net::superpeer_with(&[], quick).await;
        let b = net::superpeer_with(&[a.listen_addr()], arm).await;
        let c = net::superpeer_with(&[a.listen_addr()], arm).await;
        net::wait_neighbours(&a, 2).await;

        let tracks = corpus::load_tracks(40).unwrap();
        let (b_tracks, c_tracks) = tracks.split_at(20);
        let one = |c: &mut leaf::NodeConfig| c.leaf_overlay.target = 1;
        let asker = net::leaf_with(tmp.path(), "asker", &[a.listen_addr()], one).await;
        let at_b = net::leaf_with(tmp.path(), "at-b", &[b.listen_addr()], one).await;
        let at_c = net::leaf_with(tmp.path(), "at-c", &[c.listen_addr()], one).await;
        // The shared folder's name is a word of every file in it: only B's side has
        // "bravoshare", only C's "charlieshare".
        for (leaf, dir, tracks) in [
            (&at_b, "bravoshare", b_tracks),
            (&at_c, "charlieshare", c_tracks),
        ] {
            corpus::write_share(&tmp.path().join(dir), tracks).unwrap();
            leaf.share(&tmp.path().join(dir), |_| {}).await.unwrap();
        }
        net::wait_records(&b, 20).await;
        net::wait_records(&c, 20).await;
        // A holds both arms' tables, with their words (sent as patches after the shares).
        wait_until("route tables at A", Duration::from_secs(10), || async {
            a.status().await.route_tables == 2
        })
        .await;

        let found = ids_found(&asker, "Bravoshare", 1).await;
        assert!(
            found.contains(&track_id(&b_tracks[0])),
            "B's files are found"
        );
        assert!(!found.contains(&track_id(&c_tracks[0])));
        let (sa, sb, sc) = (
            a.status().await.stats,
            b.status().await.stats,
            c.status().await.stats,
        );
        assert_eq!(sb.queries_processed, 1, "B has the word: it got the query");
        assert_eq!(sc.queries_processed, 0, "C has no \"bravoshare\": no query");
        assert!(sa.queries_filtered >= 1, "A held the copy for C back");

        // And the other way round.
        let found = ids_found(&asker, "charlieshare", 1).await;
        assert!(found.contains(&track_id(&c_tracks[0])));
        assert_eq!(b.status().await.stats.queries_processed, 1);
        assert_eq!(c.status().await.stats.queries_processed, 1);

        // A query nobody can match goes to neither arm.
        let found = ids_found(&asker, "zzyzx qwghlm", 1).await;
        assert!(found.is_empty());
        assert_eq!(b.status().await.stats.queries_processed, 1);
        assert_eq!(c.status().await.stats.queries_processed, 1);

        // When C's leaf leaves, its words are patched out of A's table for C.
        at_c.shutdown().await;
        wait_until("C's words gone from A", Duration::from_secs(10), || async {
            a.status().await.route_tables == 1
        })
        .await;
        asker.shutdown().await;
        at_b.shutdown().await;
    });
}

#[test]
fn a_super_peer_whose_neighbours_have_no_matching_words_gets_no_query_with_ttl_1() {
    run_bounded(LIMIT, async {
        let tmp = tempfile::tempdir().unwrap();
        // Two arms from X: X–A–B and X–D–E. Every super-peer but X dials one neighbour and
        // stops; tables and depth-1 tables go out fast.
        let quick = |c: &mut topology::Config| {
            c.route_delay = Duration::from_millis(50);
            c.aggregate_delay = Duration::from_millis(50);
            c.neighbour_target = 1;
        };
        let x = net::superpeer_with(&[], quick).await;
        let a = net::superpeer_with(&[x.listen_addr()], quick).await;
        let d = net::superpeer_with(&[x.listen_addr()], quick).await;
        net::wait_neighbours(&x, 2).await;
        let b = net::superpeer_with(&[a.listen_addr()], quick).await;
        let e = net::superpeer_with(&[d.listen_addr()], quick).await;
        net::wait_neighbours(&a, 2).await;
        net::wait_neighbours(&d, 2).await;

        let tracks = corpus::load_tracks(10).unwrap();
        let one = |c: &mut leaf::NodeConfig| c.leaf_overlay.target = 1;
        let asker = net::leaf_with(tmp.path(), "asker", &[x.listen_addr()], one).await;
        let at_b = net::leaf_with(tmp.path(), "at-b", &[b.listen_addr()], one).await;
        let at_e = net::leaf_with(tmp.path(), "at-e", &[e.listen_addr()], one).await;
        // Only B's leaf has "bravoshare"; E's leaf shares other words.
        for (leaf, dir, part) in [(&at_b, "bravoshare", 0..5), (&at_e, "echoshare", 5..10)] {
            corpus::write_share(&tmp.path().join(dir), &tracks[part]).unwrap();
            leaf.share(&tmp.path().join(dir), |_| {}).await.unwrap();
        }
        net::wait_records(&b, 5).await;
        net::wait_records(&e, 5).await;
        // X holds both arms' depth-1 tables, with the words two hops away.
        wait_until("depth-1 tables at X", Duration::from_secs(10), || async {
            x.status().await.route_aggregates == 2
        })
        .await;

        // TTL 2: X sends it with TTL 1 to A (B, beyond it, has the word), not to D.
        let found = ids_found(&asker, "bravoshare", 2).await;
        assert!(found.contains(&track_id(&tracks[0])), "B's files are found");
        let processed = |s: superpeer::Status| s.stats.queries_processed;
        assert_eq!(processed(a.status().await), 1);
        assert_eq!(processed(b.status().await), 1);
        assert_eq!(
            processed(d.status().await),
            0,
            "D's side has no \"bravoshare\""
        );
        assert_eq!(processed(e.status().await), 0);
        assert!(x.status().await.stats.queries_filtered_two_hop >= 1);

        // And the other way round.
        let found = ids_found(&asker, "echoshare", 2).await;
        assert!(found.contains(&track_id(&tracks[5])));
        assert_eq!(processed(a.status().await), 1);
        assert_eq!(processed(d.status().await), 1);
        assert_eq!(processed(e.status().await), 1);
        for leaf in [asker, at_b, at_e] {
            leaf.shutdown().await;
        }
    });
}

/// Text with the awkward parts of real names: case, accents, ligatures, digits, punctuation.
fn random_text(rng: &mut Rng) -> String {
    const PARTS: [&str; 16] = [
        "Motörhead",
        "BJÖRK",
        "straße",
        "Æther",
        "café",
        "naïve",
        "SIGUR",
        "rós",
        "ﬁne",
        "x-ray",
        "2009",
        "AC/DC",
        "Œuvre",
        "déjà",
        "vu",
        "Ñandú",
    ];
    let n = 1 + rng.below(4);
    (0..n)
        .map(|_| PARTS[rng.below(PARTS.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join(if rng.chance(0.5) { " " } else { "_" })
}

#[test]
fn tables_cut_with_the_index_analyzer_never_rule_out_an_index_match() {
    let mut rng = Rng::new(8);
    let mut checked = 0;
    for case in 0..300u32 {
        let mut index = Index::new().unwrap();
        let mut table = LocalTable::new(TABLE_BITS);
        let files: Vec<FileRecord> = (0..1 + rng.below(4))
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&case.to_be_bytes());
                id[4] = i as u8;
                FileRecord {
                    id: FileId(id),
                    size: 1000,
                    path: format!("{}/{}.mp3", random_text(&mut rng), random_text(&mut rng)),
                    tags: Tags {
                        artist: rng.chance(0.5).then(|| random_text(&mut rng)),
                        album: rng.chance(0.5).then(|| random_text(&mut rng)),
                        genre: rng.chance(0.3).then(|| random_text(&mut rng)),
                        year: rng.chance(0.3).then(|| 1990 + rng.below(30) as u16),
                        ..Tags::default()
                    },
                }
            })
            .collect();
        index.add_files(1, &files).unwrap();
        table.add_files(index::words, 1, &files);
        for _ in 0..10 {
            let search = words(&random_text(&mut rng));
            let matched = !index.search(&search, 10).unwrap().is_empty();
            let may = table.may_match(&search_hashes(index::words, &search));
            assert!(
                may || !matched,
                "case {case}: the table rules out {search:?}, which the index matches in {files:#?}"
            );
            checked += usize::from(matched);
        }
    }
    // The random texts share words often enough for the check to bite.
    assert!(checked > 100, "only {checked} queries matched");
}
