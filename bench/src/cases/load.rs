//! Case 7, load (issue 7): one `superpeer` process on 127.0.0.1 takes 1,000 leaf connections,
//! each registering 100 records drawn from the corpus, then 50 leaves search at once for 30 s.
//!
//! Every connection runs the Noise handshake, and the super-peer keeps its default limits but
//! three: all leaves come from one address (so `--max-per-address`), there are more than the
//! default 1,024 connections and 300 leaf slots (`--max-connections`, `--leaf-slots`). Each
//! searcher sends a query every 250 ms (4 a second, under the default limit of 5 a leaf) for
//! words of a registered track, and times its first hits. Errors are queries that got no
//! answer within 5 s and connections that closed; the super-peer's log is searched for limits
//! that tripped. Memory is the super-peer's VmRSS, sampled every second of the search phase:
//! its growth over the second half tells whether it keeps growing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use canopy::corpus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use wire::{FileRecord, Filter, Search, Terms};

use super::search::distinct_tracks;
use super::{superpeer_with, Ctx};
use crate::data;
use crate::procs::{cpu_time_of, memory_of, Scratch};
use crate::report::{percentile, Row, Verdict};
use crate::wirenet::{wait_indexed, WireLeaf};

const CASE: &str = "7 load";
/// Time between two queries of one searcher.
const PACE: Duration = Duration::from_millis(250);
/// A query unanswered for this long is an error.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

/// What one searcher saw.
#[derive(Default)]
struct Seen {
    latencies: Vec<Duration>,
    unanswered: usize,
    closed: bool,
}

/// Runs the case.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let (n_leaves, per_leaf, n_searchers, secs) = if ctx.quick {
        (100, 100, 10, 5)
    } else {
        (1_000, 100, 50, 30)
    };
    let tracks = distinct_tracks(corpus::load_tracks(usize::MAX).context("loading the corpus")?);
    let records: Vec<FileRecord> = tracks.iter().map(data::record).collect();
    let mut rng = StdRng::seed_from_u64(6);
    // Each leaf holds 100 records at random: popular and rare ones recur across leaves.
    let libs: Vec<Vec<FileRecord>> = (0..n_leaves)
        .map(|_| {
            (0..per_leaf)
                .map(|_| records[rng.random_range(0..records.len())].clone())
                .collect()
        })
        .collect();
    // What searchers type: artist and title of registered tracks.
    let queries: Vec<String> = libs
        .iter()
        .flatten()
        .step_by(7)
        .filter_map(|r| {
            let t = &r.tags;
            Some(format!("{} {}", t.artist.as_ref()?, t.title.as_ref()?))
        })
        .filter(|q| q.split_whitespace().count() <= 16 && q.len() <= 256)
        .collect();
    let queries = Arc::new(queries);

    let scratch = Scratch::create(ctx.scratch.join("load"))?;
    let logs = ctx.log_dir("7-load")?;
    let log = logs.join("superpeer.log");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let room = (n_leaves + n_searchers + 100).to_string();
    let extra: Vec<String> = [
        "--max-per-address",
        &room,
        "--max-connections",
        &room,
        "--leaf-slots",
        &room,
    ]
    .map(String::from)
    .to_vec();
    let (sp, addr) = superpeer_with(&ctx.bins, None, any, &[], &extra, &scratch.dir("sp")?, &log)?;
    eprintln!(
        "case {CASE}: {n_leaves} leaves register {per_leaf} records each; \
         then {n_searchers} searchers for {secs} s"
    );
    let pid = sp.pid();
    let out = smol::block_on(async {
        let started = Instant::now();
        let mut leaves = Vec::new();
        for lib in &libs {
            let leaf = WireLeaf::connect(addr, true).await?;
            leaf.register(lib)?;
            leaves.push(leaf);
        }
        let pairs: Vec<(&WireLeaf, &FileRecord)> = leaves
            .iter()
            .zip(&libs)
            .map(|(l, f)| (l, f.last().expect("libraries are not empty")))
            .collect();
        wait_indexed(&pairs, Duration::from_secs(300)).await?;
        let connected = started.elapsed();
        let mut searchers = Vec::new();
        for _ in 0..n_searchers {
            searchers.push(Arc::new(WireLeaf::connect(addr, false).await?));
        }
        let rss_start = memory_of(pid)?.0;
        let cpu_before = cpu_time_of(pid)?;
        let stop_at = Instant::now() + Duration::from_secs(secs);
        let tasks: Vec<_> = searchers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (s, queries) = (s.clone(), queries.clone());
                smol::spawn(async move { search_for(&s, &queries, i, stop_at).await })
            })
            .collect();
        // Memory every second while they search.
        let mut rss = Vec::new();
        while Instant::now() < stop_at {
            smol::Timer::after(Duration::from_secs(1)).await;
            rss.push(memory_of(pid)?.0);
        }
        let mut seen = Vec::new();
        for t in tasks {
            seen.push(t.await);
        }
        let cpu = cpu_time_of(pid)? - cpu_before;
        drop(leaves);
        Ok::<_, anyhow::Error>((connected, rss_start, rss, seen, cpu))
    })?;
    let (connected, rss_start, rss, seen, cpu) = out;
    let peak = memory_of(pid).map(|m| m.1).unwrap_or(0);
    drop(sp);

    let latencies: Vec<Duration> = seen.iter().flat_map(|s| s.latencies.clone()).collect();
    let unanswered: usize = seen.iter().map(|s| s.unanswered).sum();
    let closed = seen.iter().filter(|s| s.closed).count();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let tripped = log_text
        .lines()
        .filter(|l| l.contains("went past") || l.contains("refusing"))
        .count();
    let errors = unanswered + closed + tripped;
    let answered = latencies.len();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let half = rss.len() / 2;
    let (mid, end) = (
        rss.get(half).copied().unwrap_or(rss_start),
        rss.last().copied().unwrap_or(rss_start),
    );
    // Bounded: the second half of the run adds under 5% to what the first half reached.
    let growth = end as f64 / mid.max(1) as f64 - 1.0;
    let what = format!(
        "{n_leaves} leaves × {per_leaf} records, {n_searchers} searchers × {secs} s at 4 queries/s"
    );
    Ok(vec![
        Row {
            case: CASE.into(),
            what: format!("{what}: errors (unanswered, closed, limits tripped)"),
            ours: format!(
                "{errors} ({unanswered} unanswered, {closed} closed, {tripped} tripped) of {} queries",
                answered + unanswered
            ),
            reference: "—".into(),
            ratio: "—".into(),
            target: "0".into(),
            verdict: if errors == 0 {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        },
        Row::info(
            CASE,
            "same: time to first hit, p50 / p99 / max",
            format!(
                "{:.1} / {:.1} / {:.1} ms",
                ms(percentile(&latencies, 50.0)),
                ms(percentile(&latencies, 99.0)),
                ms(latencies.iter().max().copied().unwrap_or_default())
            ),
            "—".into(),
            format!(
                "{:.0} queries/s answered; super-peer CPU {:.0}%",
                answered as f64 / secs as f64,
                100.0 * cpu.as_secs_f64() / secs as f64
            ),
        ),
        Row {
            case: CASE.into(),
            what: "same: super-peer VmRSS at the start / half-way / end of the searches".into(),
            ours: format!(
                "{:.0} / {:.0} / {:.0} MiB (peak {:.0} MiB); connected and indexed in {:.1} s",
                mib(rss_start),
                mib(mid),
                mib(end),
                mib(peak),
                connected.as_secs_f64()
            ),
            reference: "—".into(),
            ratio: format!("{:+.1}% over the second half", growth * 100.0),
            target: "under +5% over the second half".into(),
            verdict: if growth < 0.05 {
                Verdict::Met
            } else {
                Verdict::Missed
            },
        },
    ])
}

/// One searcher: a query every [`PACE`] until `stop_at`, each timed to its first hits.
async fn search_for(leaf: &WireLeaf, queries: &[String], who: usize, stop_at: Instant) -> Seen {
    let mut seen = Seen::default();
    let mut next = Instant::now();
    let mut k = who * 7919;
    while Instant::now() < stop_at {
        smol::Timer::at(next).await;
        next += PACE;
        let text = &queries[k % queries.len()];
        k += 1;
        let search = Search {
            terms: Terms::Words(text.clone()),
            filter: Filter::default(),
        };
        let sent = Instant::now();
        let Ok(id) = leaf.query(search, 0) else {
            seen.closed = true;
            break;
        };
        match leaf.first_hits(id, ANSWER_WITHIN).await {
            Ok((at, _)) => seen.latencies.push(at - sent),
            Err(_) => seen.unanswered += 1,
        }
    }
    seen
}
