//! A whole Canopy network in one process on 127.0.0.1: three super-peers in a line (A–B–C), six
//! leaves sharing real track metadata from the corpus (several holding identical files), a
//! search from a leaf at A that finds files at C, and a download of one file from every leaf
//! that has it, verified against its BLAKE3 id.
//!
//! Run: `cargo run --example local_network` (add `--release` for realistic speeds).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use canopy::corpus;
use canopy::net;
use indicatif::HumanBytes;
use wire::{FileId, Filter, Search, Terms};

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn,lofty=error"))
        .init();
    net::run_bounded(Duration::from_secs(300), demo())
}

async fn demo() -> anyhow::Result<()> {
    let started = Instant::now();
    let tmp = tempfile::tempdir().context("making a scratch folder")?;
    let base = tmp.path();
    let source = match corpus::full_corpus_path() {
        Some(p) => format!("{}", p.display()),
        None => "the embedded sample (examples/data)".into(),
    };
    let tracks = corpus::load_tracks(1200).context("loading the corpus")?;
    println!(
        "Canopy local network demo — {} tracks from {source}",
        tracks.len()
    );
    println!("scratch folder {}\n", base.display());

    // Three super-peers in a line: A — B — C.
    let t = Instant::now();
    // A neighbour target of one keeps the line a line, so searches visibly travel two hops.
    let line = |c: &mut topology::Config| c.neighbour_target = 1;
    let a = net::superpeer_with(&[], line).await;
    let b = net::superpeer_with(&[a.listen_addr()], line).await;
    let c = net::superpeer_with(&[b.listen_addr()], line).await;
    net::wait_neighbours(&b, 2).await;
    net::wait_neighbours(&c, 1).await;
    println!(
        "super-peers  A {}  —  B {}  —  C {}   (mesh up in {} ms)",
        a.listen_addr(),
        b.listen_addr(),
        c.listen_addr(),
        t.elapsed().as_millis()
    );

    // Six leaves, two per super-peer. The leaves at B and C share overlapping slices of the
    // corpus, so many tracks have several sources; three of them also hold the same live set.
    let plan: [(&str, &superpeer::SuperPeerNode, std::ops::Range<usize>); 6] = [
        ("ana", &a, 0..150),
        ("ben", &a, 150..300),
        ("cai", &b, 300..700),
        ("dee", &b, 500..900),
        ("eli", &c, 700..1100),
        ("fay", &c, 800..1200),
    ];
    let live_set = corpus::deterministic_bytes("live set", 48 << 20);
    let live_id = FileId::from(blake3::hash(&live_set));
    let mut leaves = Vec::new();
    for (name, sp, range) in plan {
        let leaf = net::leaf(base, name, &[sp.listen_addr()]).await;
        let music = base.join(format!("{name}-music"));
        let range = range.start.min(tracks.len())..range.end.min(tracks.len());
        corpus::write_share(&music, &tracks[range]).context("writing a share")?;
        if ["dee", "eli", "fay"].contains(&name) {
            let dir = music.join("Live");
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("Festival live set 2014.flac"), &live_set)?;
        }
        let t = Instant::now();
        let s = leaf.share(&music, |_| {}).await?;
        println!(
            "leaf {name} at {}  shares {:4} files, {:>10}  (hashed in {} ms)",
            sp.listen_addr(),
            s.files,
            HumanBytes(s.bytes).to_string(),
            t.elapsed().as_millis()
        );
        leaves.push(leaf);
    }
    for sp in [&a, &b, &c] {
        let want = if std::ptr::eq(sp, &a) { 300 } else { 800 };
        net::wait_records(sp, want.min(tracks.len() as u64)).await;
    }
    let searcher = &leaves[0];

    // Searches from ana (at A) for tracks that only leaves at C hold.
    println!("\nsearching from ana at A (TTL 3):");
    let far: Vec<&corpus::Track> = tracks
        .get(900..)
        .unwrap_or_default()
        .iter()
        .step_by(97)
        .take(4)
        .collect();
    for t in far {
        let query = format!("{} {}", t.artist, t.title);
        let started = Instant::now();
        let search = Search {
            terms: Terms::Words(query.clone()),
            filter: Filter::default(),
        };
        let (qid, rx) = searcher.start_search(search, wire::DEFAULT_TTL)?;
        let first = rx.recv().await.ok();
        let first_ms = started.elapsed().as_millis();
        let mut hits = first.unwrap_or_default();
        let until = Instant::now() + Duration::from_millis(500);
        while let Some(more) = smol::future::or(async { rx.recv().await.ok() }, async {
            smol::Timer::at(until).await;
            None
        })
        .await
        {
            hits.extend(more);
        }
        searcher.end_search(qid);
        let rows = leaf::search::group_hits(hits);
        let want = FileId::from(blake3::hash(&t.contents()));
        let found = rows.iter().find(|r| r.id == want);
        ensure!(
            found.is_some(),
            "the search for {query:?} did not find its track"
        );
        println!(
            "  {query:60.60}  {} file(s), first hit after {first_ms} ms; {} from {} source(s)",
            rows.len(),
            found.map(|r| r.path.as_str()).unwrap_or(""),
            found.map(|r| r.sources.len()).unwrap_or(0)
        );
    }

    // Download the live set from every leaf that holds it.
    println!(
        "\ndownloading the live set ({}) from ana:",
        HumanBytes(live_set.len() as u64)
    );
    let out = base.join("ana-downloads");
    let report = searcher.get(live_id, &out, |_| {}).await?;
    let got = std::fs::read(&report.path)?;
    ensure!(
        FileId::from(blake3::hash(&got)) == live_id,
        "downloaded file does not match its id"
    );
    ensure!(got == live_set, "downloaded bytes differ");
    let secs = report.elapsed_ms.max(1) as f64 / 1000.0;
    println!(
        "  saved {} in {:.2} s ({}/s), BLAKE3 verified {}",
        report.path.display(),
        secs,
        HumanBytes((report.size as f64 / secs) as u64),
        report.id
    );
    for s in &report.sources {
        println!(
            "    source {}  {:3} chunks  {:>10}{}",
            s.addr,
            s.chunks,
            HumanBytes(s.bytes).to_string(),
            s.error
                .as_ref()
                .map(|e| format!("  dropped: {e}"))
                .unwrap_or_default()
        );
    }
    ensure!(
        report.sources.iter().filter(|s| s.chunks > 0).count() >= 2,
        "not multi-source"
    );

    for sp in [&a, &b, &c] {
        let s = sp.status().await;
        println!(
            "super-peer {}: {} records, {} queries answered, {} duplicates dropped, {} hits routed",
            s.listen,
            s.records,
            s.stats.queries_processed,
            s.stats.duplicates_dropped,
            s.stats.hits_routed
        );
    }
    for l in &leaves {
        l.shutdown().await;
    }
    println!("\ndone in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
