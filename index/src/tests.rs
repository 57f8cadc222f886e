//! Tests of [`Index`] through its public API, including a run on real track data.

use std::time::Instant;

use proptest::prelude::*;
use wire::{FileId, FileRecord, Filter, Search, Tags, Terms};

use crate::{Index, IndexError, IndexHit, LeafKey, MAX_QUERY_WORDS};

/// A record with id `[n; 32]`, `size` bytes and no tags.
fn rec(n: u8, size: u64, path: &str) -> FileRecord {
    FileRecord {
        id: FileId([n; 32]),
        size,
        path: path.into(),
        tags: Tags::default(),
    }
}

fn words(text: &str) -> Search {
    Search {
        terms: Terms::Words(text.into()),
        filter: Filter::default(),
    }
}

fn with_filter(terms: Terms, ext: Option<&str>, min: Option<u64>, max: Option<u64>) -> Search {
    Search {
        terms,
        filter: Filter {
            ext: ext.map(Into::into),
            min_size: min,
            max_size: max,
        },
    }
}

fn index_with(leaf: LeafKey, files: &[FileRecord]) -> Index {
    let mut index = Index::new().unwrap();
    index.add_files(leaf, files).unwrap();
    index
}

/// The paths of the hits, sorted (for tests where the order does not matter).
fn paths(hits: &[IndexHit]) -> Vec<&str> {
    let mut out: Vec<&str> = hits.iter().map(|h| h.file.path.as_str()).collect();
    out.sort_unstable();
    out
}

/// (leaf, path) of the hits, sorted.
fn leaf_paths(hits: &[IndexHit]) -> Vec<(LeafKey, &str)> {
    let mut out: Vec<_> = hits
        .iter()
        .map(|h| (h.leaf, h.file.path.as_str()))
        .collect();
    out.sort_unstable();
    out
}

fn find<'a>(index: &Index, text: &str, store: &'a mut Vec<IndexHit>) -> Vec<&'a str> {
    *store = index.search(&words(text), 100).unwrap();
    paths(store)
}

#[test]
fn index_is_send() {
    fn send<T: Send>() {}
    send::<Index>();
    send::<IndexHit>();
    send::<IndexError>();
}

#[test]
fn matching_ignores_case_and_accents() {
    let index = index_with(
        1,
        &[
            rec(1, 1, "music/Beyoncé - Halo.mp3"),
            rec(2, 1, "music/Motörhead/Ace of Spades.flac"),
            rec(3, 1, "music/Other/Song.mp3"),
        ],
    );
    let mut h = Vec::new();
    assert_eq!(
        find(&index, "beyonce", &mut h),
        ["music/Beyoncé - Halo.mp3"]
    );
    assert_eq!(
        find(&index, "BEYONCÉ halo", &mut h),
        ["music/Beyoncé - Halo.mp3"]
    );
    assert_eq!(
        find(&index, "MOTORHEAD", &mut h),
        ["music/Motörhead/Ace of Spades.flac"]
    );
    assert_eq!(
        find(&index, "motörhead ACE", &mut h),
        ["music/Motörhead/Ace of Spades.flac"]
    );
}

#[test]
fn every_word_must_match() {
    let index = index_with(
        1,
        &[
            rec(1, 1, "s/red apple.mp3"),
            rec(2, 1, "s/red car.mp3"),
            rec(3, 1, "s/green apple.mp3"),
        ],
    );
    let mut h = Vec::new();
    assert_eq!(find(&index, "red apple", &mut h), ["s/red apple.mp3"]);
    assert_eq!(
        find(&index, "apple", &mut h),
        ["s/green apple.mp3", "s/red apple.mp3"]
    );
    assert!(find(&index, "red banana", &mut h).is_empty());
}

#[test]
fn folder_words_numbers_and_extension_match() {
    let index = index_with(
        1,
        &[
            rec(1, 1, "Jazz Classics/Miles Davis/01 - So What.mp3"),
            rec(2, 1, "Rock/02 - Other.ogg"),
        ],
    );
    let mut h = Vec::new();
    let so_what = ["Jazz Classics/Miles Davis/01 - So What.mp3"];
    assert_eq!(find(&index, "classics", &mut h), so_what);
    assert_eq!(find(&index, "jazz miles what", &mut h), so_what);
    assert_eq!(find(&index, "01", &mut h), so_what);
    assert_eq!(find(&index, "mp3", &mut h), so_what);
    assert_eq!(find(&index, "02 ogg", &mut h), ["Rock/02 - Other.ogg"]);
}

#[test]
fn tags_match_where_the_name_does_not() {
    let mut file = rec(1, 1, "share/track01.mp3");
    file.tags = Tags {
        artist: Some("Nina Simone".into()),
        album: Some("Pastel Blues".into()),
        title: Some("Sinnerman".into()),
        genre: Some("Jazz".into()),
        year: Some(1965),
        duration_s: Some(622),
        bitrate_kbps: None,
    };
    let index = index_with(7, &[file.clone(), rec(2, 1, "share/track02.mp3")]);
    for query in [
        "simone",
        "pastel",
        "sinnerman",
        "jazz",
        "1965",
        "nina track01 blues",
    ] {
        let hits = index.search(&words(query), 10).unwrap();
        assert_eq!(hits.len(), 1, "{query}");
        assert_eq!(hits[0].file, file, "{query}: the whole record comes back");
        assert_eq!(hits[0].leaf, 7);
        assert!(hits[0].score > 0.0);
    }
}

#[test]
fn text_without_words_finds_nothing() {
    let index = index_with(1, &[rec(1, 1, "a/b.mp3")]);
    for text in ["", "   ", " -- !? ./ "] {
        assert!(
            index.search(&words(text), 10).unwrap().is_empty(),
            "{text:?}"
        );
    }
}

#[test]
fn too_many_words_is_an_error() {
    let index = index_with(1, &[rec(1, 1, "a/w1.mp3")]);
    let many: Vec<String> = (0..=MAX_QUERY_WORDS).map(|i| format!("w{i}")).collect();
    match index.search(&words(&many.join(" ")), 10) {
        Err(IndexError::QueryTooLong { words, max }) => {
            assert_eq!((words, max), (MAX_QUERY_WORDS + 1, MAX_QUERY_WORDS));
        }
        other => panic!("expected QueryTooLong, got {other:?}"),
    }
    // The maximum itself is fine, and repeated words count once.
    let enough = many[..MAX_QUERY_WORDS].join(" ");
    assert!(index.search(&words(&enough), 10).unwrap().is_empty());
    let repeated = vec!["w1"; 100].join(" ");
    assert_eq!(index.search(&words(&repeated), 10).unwrap().len(), 1);
}

#[test]
fn extension_filter_ignores_case_and_dot() {
    let index = index_with(
        1,
        &[
            rec(1, 1, "s/song.mp3"),
            rec(2, 1, "s/song.FLAC"),
            rec(3, 1, "s/song"),
        ],
    );
    let w = || Terms::Words("song".into());
    let find = |ext| {
        paths(
            &index
                .search(&with_filter(w(), Some(ext), None, None), 10)
                .unwrap(),
        )
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>()
    };
    assert_eq!(find("mp3"), ["s/song.mp3"]);
    assert_eq!(find("MP3"), ["s/song.mp3"]);
    assert_eq!(find(".mp3"), ["s/song.mp3"]);
    assert_eq!(find("flac"), ["s/song.FLAC"]);
    assert!(find("ogg").is_empty());
    // No filter, or an empty one: all three.
    assert_eq!(find("").len(), 3);
    assert_eq!(index.search(&words("song"), 10).unwrap().len(), 3);
    // The filter applies to id searches too.
    let by_id = |ext| {
        index
            .search(
                &with_filter(Terms::Id(FileId([2; 32])), Some(ext), None, None),
                10,
            )
            .unwrap()
            .len()
    };
    assert_eq!(by_id("flac"), 1);
    assert_eq!(by_id("mp3"), 0);
}

#[test]
fn size_filter_is_inclusive() {
    let index = index_with(
        1,
        &[
            rec(1, 100, "s/a 100.bin"),
            rec(2, 200, "s/a 200.bin"),
            rec(3, 300, "s/a 300.bin"),
        ],
    );
    let sizes = |min, max| {
        let search = with_filter(Terms::Words("a".into()), None, min, max);
        let mut out: Vec<u64> = index
            .search(&search, 10)
            .unwrap()
            .iter()
            .map(|h| h.file.size)
            .collect();
        out.sort_unstable();
        out
    };
    assert_eq!(sizes(None, None), [100, 200, 300]);
    assert_eq!(sizes(Some(200), None), [200, 300]);
    assert_eq!(sizes(None, Some(200)), [100, 200]);
    assert_eq!(sizes(Some(200), Some(200)), [200]);
    assert_eq!(sizes(Some(101), Some(299)), [200]);
    assert!(sizes(Some(300), Some(100)).is_empty());
    assert_eq!(sizes(Some(0), Some(u64::MAX)), [100, 200, 300]);
    let by_id = |min, max| {
        let search = with_filter(Terms::Id(FileId([3; 32])), None, min, max);
        index.search(&search, 10).unwrap().len()
    };
    assert_eq!((by_id(Some(300), None), by_id(Some(301), None)), (1, 0));
}

#[test]
fn remove_leaf_removes_only_that_leaf() {
    let mut index = Index::new().unwrap();
    assert!(index.is_empty());
    let shared = rec(9, 1, "s/shared song.mp3");
    index
        .add_files(1, &[shared.clone(), rec(1, 1, "s/song one.mp3")])
        .unwrap();
    index
        .add_files(2, &[shared.clone(), rec(2, 1, "s/song two.mp3")])
        .unwrap();
    assert_eq!(index.len(), 4);
    index.remove_leaf(1).unwrap();
    assert_eq!(index.len(), 2);
    let hits = index.search(&words("song"), 10).unwrap();
    assert_eq!(
        leaf_paths(&hits),
        [(2, "s/shared song.mp3"), (2, "s/song two.mp3")]
    );
    // Removing an unknown leaf, or the same one again, changes nothing.
    index.remove_leaf(1).unwrap();
    index.remove_leaf(77).unwrap();
    assert_eq!(index.len(), 2);
    index.remove_leaf(2).unwrap();
    assert!(index.is_empty());
    assert!(index.search(&words("song"), 10).unwrap().is_empty());
}

#[test]
fn remove_files_removes_only_those_of_that_leaf() {
    let mut index = Index::new().unwrap();
    let shared = rec(9, 1, "s/shared song.mp3");
    index
        .add_files(
            1,
            &[
                shared.clone(),
                rec(1, 1, "s/song one.mp3"),
                rec(3, 1, "s/song three.mp3"),
            ],
        )
        .unwrap();
    index.add_files(2, std::slice::from_ref(&shared)).unwrap();
    index
        .remove_files(1, &[shared.id, FileId([3; 32]), FileId([200; 32])])
        .unwrap();
    index.remove_files(1, &[]).unwrap();
    assert_eq!(index.len(), 2);
    let hits = index.search(&words("song"), 10).unwrap();
    assert_eq!(
        leaf_paths(&hits),
        [(1, "s/song one.mp3"), (2, "s/shared song.mp3")]
    );
}

#[test]
fn queued_changes_apply_in_order_and_a_commit_waits_for_all_of_them() {
    let mut index = Index::new().unwrap();
    // Many small changes queued at once are committed together, in the order made.
    for n in 0..200u8 {
        index.queue_add(1, vec![rec(n, 1, &format!("q/tune {n}.mp3"))]);
    }
    index.queue_add(2, vec![rec(7, 1, "other/tune seven.mp3")]);
    index.queue_remove(1, (0..100u8).map(|n| FileId([n; 32])).collect());
    index.queue_add(1, vec![rec(5, 1, "q/tune 5 again.mp3")]);
    index.queue_remove_leaf(2);
    index.commit().unwrap();
    assert_eq!(index.len(), 101, "100 left of leaf 1's 200, one added back");
    let mut store = Vec::new();
    assert_eq!(find(&index, "again", &mut store), ["q/tune 5 again.mp3"]);
    assert!(find(&index, "seven", &mut store).is_empty(), "leaf 2 went");
    assert!(find(&index, "tune 50", &mut store).is_empty());
    assert_eq!(find(&index, "tune 150", &mut store), ["q/tune 150.mp3"]);
}

#[test]
fn a_queued_change_becomes_searchable_without_anyone_waiting_for_it() {
    let mut index = Index::new().unwrap();
    index.queue_add(3, vec![rec(1, 1, "x/quiet song.mp3")]);
    let started = Instant::now();
    while index.is_empty() {
        assert!(
            started.elapsed().as_secs() < 10,
            "the writer thread never committed"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut store = Vec::new();
    assert_eq!(find(&index, "quiet", &mut store), ["x/quiet song.mp3"]);
}

#[test]
fn adding_again_replaces_instead_of_duplicating() {
    let mut index = Index::new().unwrap();
    let first = rec(1, 1, "s/old name.mp3");
    index.add_files(1, std::slice::from_ref(&first)).unwrap();
    index.add_files(1, std::slice::from_ref(&first)).unwrap();
    assert_eq!(index.len(), 1);
    assert_eq!(index.search(&words("old"), 10).unwrap().len(), 1);

    // Same id, new path: the new record replaces the old one.
    let renamed = FileRecord {
        path: "s/new name.mp3".into(),
        ..first.clone()
    };
    index.add_files(1, std::slice::from_ref(&renamed)).unwrap();
    assert_eq!(index.len(), 1);
    assert!(index.search(&words("old"), 10).unwrap().is_empty());
    assert_eq!(index.search(&words("name"), 10).unwrap()[0].file, renamed);

    // The same id twice in one batch: the last one stays.
    index
        .add_files(2, &[first.clone(), renamed.clone(), first.clone()])
        .unwrap();
    assert_eq!(index.len(), 2);
    let hits = index.search(&words("name"), 10).unwrap();
    assert_eq!(
        leaf_paths(&hits),
        [(1, "s/new name.mp3"), (2, "s/old name.mp3")]
    );
    index.add_files(3, &[]).unwrap();
    assert_eq!(index.len(), 2);
}

#[test]
fn id_search_finds_every_leaf_with_a_constant_score() {
    let mut index = Index::new().unwrap();
    let wanted = FileId([5; 32]);
    for leaf in [10, 20, 30] {
        let mut file = rec(5, 1000, &format!("share{leaf}/copy of the file.mp3"));
        file.id = wanted;
        index
            .add_files(leaf, &[file, rec(6, 1, "s/other.mp3")])
            .unwrap();
    }
    let search = Search {
        terms: Terms::Id(wanted),
        filter: Filter::default(),
    };
    let hits = index.search(&search, 10).unwrap();
    let mut leaves: Vec<LeafKey> = hits.iter().map(|h| h.leaf).collect();
    leaves.sort_unstable();
    assert_eq!(leaves, [10, 20, 30]);
    assert!(hits.iter().all(|h| h.file.id == wanted));
    assert!(hits.iter().all(|h| h.score == hits[0].score));
    assert!(index
        .search(
            &Search {
                terms: Terms::Id(FileId([99; 32])),
                filter: Filter::default()
            },
            10
        )
        .unwrap()
        .is_empty());
}

#[test]
fn name_matches_rank_above_folder_matches() {
    let index = index_with(
        1,
        &[
            rec(1, 1, "share/Blue Monday/01 - Track.mp3"),
            rec(2, 1, "share/Misc/Blue Monday.mp3"),
            rec(3, 1, "share/Blue/Monday Mix/Intro.mp3"),
        ],
    );
    let hits = index.search(&words("blue monday"), 10).unwrap();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0].file.path, "share/Misc/Blue Monday.mp3");
    assert!(hits[0].score > hits[1].score, "{hits:?}");
    assert!(hits.windows(2).all(|w| w[0].score >= w[1].score));
}

#[test]
fn limit_caps_the_hits() {
    let files: Vec<FileRecord> = (0..20)
        .map(|n| rec(n, 1, &format!("s/song {n}.mp3")))
        .collect();
    let index = index_with(1, &files);
    assert_eq!(index.search(&words("song"), 0).unwrap().len(), 0);
    assert_eq!(index.search(&words("song"), 5).unwrap().len(), 5);
    assert_eq!(index.search(&words("song"), usize::MAX).unwrap().len(), 20);
    assert!(Index::new()
        .unwrap()
        .search(&words("song"), usize::MAX)
        .unwrap()
        .is_empty());
}

fn arb_word() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9àéöüßÅÑç]{1,10}"
}

/// A record whose name is made of random words and separators, with an extension.
fn arb_named_record() -> impl Strategy<Value = (FileRecord, Vec<String>)> {
    (
        prop::collection::vec(arb_word(), 1..6),
        prop::collection::vec(prop_oneof![Just(" "), Just(" - "), Just("_"), Just(".")], 6),
        "[a-z0-9]{1,4}",
        any::<[u8; 32]>(),
        any::<u64>(),
    )
        .prop_map(|(words, seps, ext, id, size)| {
            let mut name = String::new();
            for (i, w) in words.iter().enumerate() {
                if i > 0 {
                    name.push_str(seps[i]);
                }
                name.push_str(w);
            }
            let record = FileRecord {
                id: FileId(id),
                size,
                path: format!("share/{name}.{ext}"),
                tags: Tags::default(),
            };
            (record, words)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any word of any record's name finds that record, whatever its case.
    #[test]
    fn any_word_of_a_name_finds_the_record(
        records in prop::collection::vec(arb_named_record(), 1..8),
        pick in any::<prop::sample::Index>(),
        word_pick in any::<prop::sample::Index>(),
        upper in any::<bool>(),
    ) {
        let files: Vec<FileRecord> = records.iter().map(|(r, _)| r.clone()).collect();
        let index = index_with(1, &files);
        let (target, words_of) = &records[pick.index(records.len())];
        let word = &words_of[word_pick.index(words_of.len())];
        let query = if upper { word.to_uppercase() } else { word.clone() };
        let hits = index.search(&words(&query), files.len()).unwrap();
        prop_assert!(
            hits.iter().any(|h| h.file == *target),
            "`{}` did not find {:?}; hits: {:?}", query, target.path, hits
        );
    }
}

/// The project's corpus of real track metadata (the freemusi.cc track list, CC BY-SA 4.0; see
/// the README and licence beside it), kept in `shared/` beside the repository.
const CORPUS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../shared/corpus/freemusic-tracks.tsv"
);
/// Every tenth track of the same list, kept in the repository for clones without `shared/`.
const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/data/freemusic-sample.tsv"
);

struct Track {
    artist: String,
    album: String,
    track: u32,
    title: String,
    duration_s: Option<u32>,
    year: Option<u16>,
    genre: String,
}

fn read_corpus() -> Vec<Track> {
    let path = if std::path::Path::new(CORPUS).exists() {
        CORPUS
    } else {
        SAMPLE
    };
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("the corpus test needs {CORPUS} or {SAMPLE}: {e}"));
    let mut lines = text.lines();
    let header = lines.next().expect("corpus has a header line");
    assert!(
        header.starts_with("artist\talbum\t"),
        "unexpected header in {CORPUS}: {header}"
    );
    lines
        .filter_map(|line| {
            let c: Vec<&str> = line.split('\t').collect();
            (c.len() == 11).then(|| Track {
                artist: c[0].into(),
                album: c[1].into(),
                track: c[4].parse().unwrap_or(0),
                title: c[5].into(),
                duration_s: c[6].parse().ok(),
                year: c[7].parse().ok(),
                genre: c[8].into(),
            })
        })
        .collect()
}

/// A path component: no `/` inside.
fn component(s: &str) -> String {
    s.replace('/', " ")
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

#[test]
fn corpus_artist_and_title_find_the_track() {
    let tracks = read_corpus();
    assert!(
        tracks.len() > 10_000,
        "{CORPUS} has only {} rows",
        tracks.len()
    );
    // About 2000 rows spread over the whole file.
    let step = tracks.len() / 2000;
    let chosen: Vec<&Track> = tracks.iter().step_by(step).take(2000).collect();
    let records: Vec<FileRecord> = chosen
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64).to_le_bytes());
            FileRecord {
                id: FileId(id),
                size: 3_000_000 + i as u64,
                path: format!(
                    "{}/{}/{:02} - {}.mp3",
                    component(&t.artist),
                    component(&t.album),
                    t.track,
                    component(&t.title)
                ),
                tags: Tags {
                    artist: non_empty(&t.artist),
                    album: non_empty(&t.album),
                    title: non_empty(&t.title),
                    genre: non_empty(&t.genre),
                    year: t.year,
                    duration_s: t.duration_s,
                    bitrate_kbps: None,
                },
            }
        })
        .collect();

    let mut index = Index::new().unwrap();
    // Four leaves, registering in batches of 500 (the size a leaf sends).
    for (n, batch) in records.chunks(500).enumerate() {
        let started = Instant::now();
        index.add_files(n as LeafKey % 4, batch).unwrap();
        println!(
            "add_files of {} records: {:?}",
            batch.len(),
            started.elapsed()
        );
    }
    assert_eq!(index.len(), records.len() as u64);
    for record in &records[..3] {
        let started = Instant::now();
        let mut one = record.clone();
        one.id = FileId([0xee; 32]);
        index.add_files(99, &[one]).unwrap();
        println!("add_files of 1 record: {:?}", started.elapsed());
    }
    index.remove_leaf(99).unwrap();

    let (mut first, mut found, mut asked) = (0, 0, 0);
    let started = Instant::now();
    for (i, (t, r)) in chosen.iter().zip(&records).enumerate().step_by(37) {
        if t.artist.is_empty() || t.title.is_empty() {
            continue;
        }
        asked += 1;
        let query = format!("{} {}", t.artist, t.title);
        let hits = index.search(&words(&query), 20).unwrap();
        let rank = hits
            .iter()
            .position(|h| h.file == *r && h.leaf == (i / 500) as LeafKey);
        assert!(
            rank.is_some(),
            "`{query}` did not find {:?}: {hits:#?}",
            r.path
        );
        found += 1;
        // Equal scores (the same artist and title on two releases) may come in either order.
        if rank == Some(0) || hits[rank.unwrap()].score == hits[0].score {
            first += 1;
        }
    }
    println!(
        "corpus: {asked} queries, {found} found, {first} ranked first, {:?} per search",
        started.elapsed() / asked.max(1)
    );
    assert!(asked >= 40, "only {asked} usable rows sampled");
    assert!(
        first * 10 >= asked * 9,
        "only {first} of {asked} ranked first"
    );
}
