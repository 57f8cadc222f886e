//! Tags flow from files into search: `lofty` reads the corpus stand-ins' ID3v2 tags (and their
//! duration and bitrate from the MPEG frames), and a file
//! whose name says nothing is still found by its artist and title.

use std::time::Duration;

use canopy::corpus;
use canopy::net::{self, run_bounded};
use wire::{FileId, Filter, Search, Terms};

#[test]
fn lofty_reads_the_tags_of_corpus_files() {
    let tmp = tempfile::tempdir().unwrap();
    let tracks = corpus::load_tracks(200).unwrap();
    let paths = corpus::write_share(tmp.path(), &tracks).unwrap();
    let mut checked = 0;
    for (t, p) in tracks.iter().zip(&paths) {
        let tags = leaf::tags::read_tags(p);
        assert_eq!(
            tags.artist.as_deref(),
            Some(t.artist.as_str()),
            "{}",
            p.display()
        );
        assert_eq!(tags.album.as_deref(), Some(t.album.as_str()));
        assert_eq!(tags.title.as_deref(), Some(t.title.as_str()));
        assert_eq!(tags.year.map(u32::from), Some(t.year).filter(|y| *y > 0));
        if (20..2000).contains(&t.duration_s) {
            let d = tags.duration_s.expect("a duration from the MPEG frames");
            assert!(
                d.abs_diff(t.duration_s) <= 2,
                "{d} s for a {} s track",
                t.duration_s
            );
            // The stand-ins are 8 kbit/s MPEG frames (see `corpus`).
            assert_eq!(tags.bitrate_kbps, Some(8), "{}", p.display());
            checked += 1;
        }
    }
    assert!(
        checked > 100,
        "most tracks had their duration checked ({checked})"
    );
}

#[test]
fn a_file_is_found_by_the_artist_and_title_in_its_tags() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let tracks = corpus::load_tracks(50).unwrap();
        let t = &tracks[17];
        // A name and folder that say nothing about the music.
        let inbox = tmp.path().join("inbox");
        std::fs::create_dir_all(&inbox).unwrap();
        std::fs::write(inbox.join("track17.mp3"), t.contents()).unwrap();
        let sharer = net::leaf(tmp.path(), "sharer", &[sp.listen_addr()]).await;
        sharer.share(&inbox, |_| {}).await.unwrap();
        net::wait_records(&sp, 1).await;

        let asker = net::leaf(tmp.path(), "asker", &[sp.listen_addr()]).await;
        let query = format!("{} {}", t.artist, t.title);
        let search = Search {
            terms: Terms::Words(query.clone()),
            filter: Filter::default(),
        };
        let rows = asker
            .search(search, 2, Duration::from_millis(800))
            .await
            .unwrap();
        assert_eq!(
            rows.len(),
            1,
            "{query:?} finds the file by its tags: {rows:?}"
        );
        assert_eq!(rows[0].id, FileId::from(blake3::hash(&t.contents())));
        assert_eq!(rows[0].name, "track17.mp3");
        assert_eq!(rows[0].tags.artist.as_deref(), Some(t.artist.as_str()));
        assert_eq!(rows[0].tags.album.as_deref(), Some(t.album.as_str()));
    });
}
