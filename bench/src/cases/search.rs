//! Case 4, search: `superpeer` processes on 127.0.0.1 and leaves (in this process, speaking
//! the wire protocol: see [`crate::wirenet`]) sharing the corpus tracks with realistic
//! duplication: every album on at least one leaf, popular albums on many (Zipf). Queries drawn
//! from the corpus go one at a time from a searching leaf at each super-peer in turn; a
//! query's latency runs from sending it to the arrival of its first hit and of its last hit.
//! The last hit is known exactly: this process keeps a copy of each super-peer's index (the
//! same `index` crate, the same records) and so knows how many hits each one returns.
//!
//! The super-peers are linked two ways, one after the other: with default settings, joining
//! through the first and left to build their mesh (ten super-peers with a target of 32
//! neighbours end up fully linked: one hop to all), and with `--neighbours 3` in a ring with
//! chords (diameter 3, so the default TTL of 3 reaches all), as in a network too large for a
//! full mesh.
//!
//! Throughput: one `superpeer` holding the whole corpus answers the same queries (TTL 0) from
//! four searching leaves with eight queries each in flight, and is compared with the same
//! queries on a local tantivy index of the whole corpus on one thread (the super-peer answers
//! queries on one thread too). The floor for latency is the same local index.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use canopy::corpus::{self, Track};
use rand::rngs::StdRng;
use rand::SeedableRng;
use wire::{FileRecord, Filter, Search, Terms};

use super::{superpeer, superpeer_with, Ctx};
use crate::data::{self, Spread};
use crate::procs::{cpu_time_of, Scratch};
use crate::report::{percentile, short, Row, Verdict};
use crate::wirenet::{wait_indexed, WireLeaf};

const CASE: &str = "4 search";

/// The most hits a super-peer returns per query (topology's default `max_local_hits`).
const MAX_LOCAL_HITS: usize = 200;

/// Tracks with distinct record ids (the corpus lists a few tracks twice).
pub fn distinct_tracks(tracks: Vec<Track>) -> Vec<Track> {
    let mut seen = HashSet::new();
    tracks
        .into_iter()
        .filter(|t| seen.insert(data::record(t).id))
        .collect()
}

fn words(text: &str) -> Search {
    Search {
        terms: Terms::Words(text.to_string()),
        filter: Filter::default(),
    }
}

/// The super-peers each super-peer `i` dials: its predecessor on the ring, the last one
/// closes the ring, and with six or more each in the second half also dials its opposite.
fn dials(i: usize, n: usize) -> Vec<usize> {
    let mut d = Vec::new();
    if i > 0 {
        d.push(i - 1);
    }
    if i == n - 1 && n > 2 {
        d.push(0);
    }
    if n >= 6 && i >= n / 2 {
        d.push(i - n / 2);
    }
    d
}

/// Runs the case.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let (n_sp, n_leaves, n_tracks, n_queries, qps_secs) = if ctx.quick {
        (3, 24, 2_000, 100, 1.0)
    } else {
        (10, 200, usize::MAX, 1_000, 8.0)
    };
    let tracks = distinct_tracks(corpus::load_tracks(n_tracks).context("loading the corpus")?);
    let records: Vec<FileRecord> = tracks.iter().map(data::record).collect();
    let mut rng = StdRng::seed_from_u64(6);

    // The floor: the whole corpus in one local index.
    eprintln!("case {CASE}: indexing {} tracks locally", records.len());
    let mut floor = index::Index::new().context("creating the local index")?;
    floor
        .add_files(0, &records)
        .context("indexing the corpus locally")?;
    let mut queries: Vec<(String, usize)> = Vec::new();
    while queries.len() < n_queries {
        for text in data::query_texts(&tracks, n_queries - queries.len(), &mut rng) {
            if let Ok(hits) = floor.search(&words(&text), MAX_LOCAL_HITS) {
                if !hits.is_empty() {
                    queries.push((text, hits.len()));
                }
            }
        }
    }
    let mut floor_times = Vec::new();
    for pass in 0..2 {
        for (q, _) in &queries {
            let t = Instant::now();
            floor.search(&words(q), MAX_LOCAL_HITS)?;
            if pass == 1 {
                floor_times.push(t.elapsed());
            }
        }
    }
    let floor_total: Duration = floor_times.iter().sum();
    let floor_qps = queries.len() as f64 / floor_total.as_secs_f64();

    // The network, and a copy of each super-peer's index to know every query's hit count.
    let libs = data::spread(
        &tracks,
        Spread {
            leaves: n_leaves,
            cover_all: true,
            extra_per_leaf: 2 * tracks.len() / n_leaves,
        },
        &mut rng,
    );
    let total_records: usize = libs.iter().map(|l| l.len()).sum();
    let max_copies = {
        let mut count = vec![0usize; tracks.len()];
        for l in &libs {
            for &t in l {
                count[t] += 1;
            }
        }
        count.into_iter().max().unwrap_or(0)
    };
    let mut mirror: Vec<index::Index> = (0..n_sp)
        .map(|_| index::Index::new())
        .collect::<Result<_, _>>()?;
    for (j, lib) in libs.iter().enumerate() {
        let files: Vec<FileRecord> = lib.iter().map(|&t| records[t].clone()).collect();
        mirror[j % n_sp].add_files(j as u64, &files)?;
    }
    // Hits each super-peer returns for each query.
    let expected: Vec<Vec<usize>> = queries
        .iter()
        .map(|(q, _)| {
            mirror
                .iter()
                .map(|m| m.search(&words(q), MAX_LOCAL_HITS).map(|h| h.len()))
                .collect::<Result<Vec<usize>, _>>()
        })
        .collect::<Result<_, _>>()?;
    drop(mirror);

    let scratch = Scratch::create(ctx.scratch.join("search"))?;
    let logs = ctx.log_dir("4-search")?;
    eprintln!(
        "case {CASE}: {n_sp} super-peers, {n_leaves} leaves, {total_records} records \
         ({} distinct, the most copied on {max_copies} leaves)",
        tracks.len()
    );
    let net = Network {
        n_sp,
        libs: &libs,
        records: &records,
        queries: &queries,
        expected: &expected,
        settle: Duration::from_secs(if ctx.quick { 5 } else { 180 }),
    };
    let full = net.measure(ctx, &scratch, &logs, Mesh::Default)?;
    let sparse = net.measure(ctx, &scratch, &logs, Mesh::Sparse)?;

    // Throughput of one super-peer holding the whole corpus.
    let qps = throughput(ctx, &scratch, &logs, &records, &queries, qps_secs)?;

    let ratio =
        |a: Duration, b: Duration| format!("{:.0}× the floor", a.as_secs_f64() / b.as_secs_f64());
    let (f50, f99) = (
        percentile(&floor_times, 50.0),
        percentile(&floor_times, 99.0),
    );
    let floor = format!("local index {} / {}", short(f50), short(f99));
    let mut rows = Vec::new();
    for (m, r) in [(Mesh::Default, &full), (Mesh::Sparse, &sparse)] {
        let complete: Vec<&QueryResult> = r.results.iter().filter(|q| q.complete).collect();
        let over = r.results.iter().filter(|q| q.received > q.expected).count();
        let firsts: Vec<Duration> = r.results.iter().filter_map(|q| q.first).collect();
        let lasts: Vec<Duration> = complete.iter().filter_map(|q| q.last).collect();
        let (l50, l99) = (percentile(&lasts, 50.0), percentile(&lasts, 99.0));
        let (h50, h99) = (percentile(&firsts, 50.0), percentile(&firsts, 99.0));
        let head = format!(
            "{n_sp} super-peers, {n_leaves} leaves, {total_records} records, {}",
            r.mesh
        );
        rows.push(Row::info(
            CASE,
            &format!(
                "{head}: latency p50 / p99 to the last hit, {} queries",
                queries.len()
            ),
            format!("{} / {}", short(l50), short(l99)),
            floor.clone(),
            format!("p50 {}, p99 {}", ratio(l50, f50), ratio(l99, f99)),
        ));
        rows.push(Row::info(
            CASE,
            &format!("{}: p50 / p99 to the first hit", m.short()),
            format!("{} / {}", short(h50), short(h99)),
            floor.clone(),
            format!("p50 {}, p99 {}", ratio(h50, f50), ratio(h99, f99)),
        ));
        rows.push(Row {
            case: CASE.into(),
            what: format!("{}: queries that got every expected hit", m.short()),
            ours: format!(
                "{} of {}{}",
                complete.len(),
                r.results.len(),
                if over > 0 {
                    format!(" ({over} got more)")
                } else {
                    String::new()
                }
            ),
            reference: "—".into(),
            ratio: "—".into(),
            target: "all (a check of the harness's own)".into(),
            verdict: Verdict::of(complete.len() == r.results.len()),
        });
    }
    rows.push(Row::info(
        CASE,
        &format!(
            "queries/s of one super-peer holding the whole corpus ({} records), TTL 0, \
             4×8 in flight",
            records.len()
        ),
        format!(
            "{:.0} q/s (super-peer used {:.2} CPUs: {:.0} q per CPU-second)",
            qps.per_second,
            qps.cpu_share,
            qps.per_second / qps.cpu_share.max(1e-9)
        ),
        format!("local index {floor_qps:.0} q/s (1 thread)"),
        format!("{:.2}× the floor", qps.per_second / floor_qps),
    ));
    Ok(rows)
}

/// How the super-peers are linked.
#[derive(Debug, Clone, Copy)]
enum Mesh {
    /// Default settings: each joins through the first, then the overlay builds its mesh
    /// (with ten super-peers and a target of 32 neighbours, every one links to every other);
    /// measured once every super-peer reaches all others in one hop.
    Default,
    /// `--neighbours 3`, linked in a ring with chords: queries cross up to three hops, as in a
    /// network too large for a full mesh.
    Sparse,
}

impl Mesh {
    fn short(self) -> &'static str {
        match self {
            Mesh::Default => "default mesh",
            Mesh::Sparse => "3 neighbours each",
        }
    }
}

struct Network<'a> {
    n_sp: usize,
    libs: &'a [Vec<usize>],
    records: &'a [FileRecord],
    queries: &'a [(String, usize)],
    expected: &'a [Vec<usize>],
    /// How long to wait for the default mesh to link every pair.
    settle: Duration,
}

struct NetResult {
    /// The mesh as measured.
    mesh: String,
    results: Vec<QueryResult>,
}

impl Network<'_> {
    /// Starts the super-peers linked as `mesh` and the leaves, then sends every query once.
    fn measure(
        &self,
        ctx: &Ctx,
        scratch: &Scratch,
        logs: &std::path::Path,
        mesh: Mesh,
    ) -> anyhow::Result<NetResult> {
        let n_sp = self.n_sp;
        let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
        let tag = match mesh {
            Mesh::Default => "default",
            Mesh::Sparse => "sparse",
        };
        let mut sps = Vec::new();
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for i in 0..n_sp {
            let (peers, extra): (Vec<SocketAddr>, Vec<String>) = match mesh {
                Mesh::Default => (addrs.first().copied().into_iter().collect(), vec![]),
                Mesh::Sparse => (
                    dials(i, n_sp).into_iter().map(|j| addrs[j]).collect(),
                    vec!["--neighbours".into(), "3".into()],
                ),
            };
            let (p, addr) = superpeer_with(
                &ctx.bins,
                None,
                any,
                &peers,
                &extra,
                &scratch.dir(&format!("sp-{tag}-{i}"))?,
                &logs.join(format!("superpeer-{tag}-{i}.log")),
            )?;
            sps.push(p);
            addrs.push(addr);
        }
        let started = Instant::now();
        let out = smol::block_on(async {
            let mut leaves = Vec::new();
            for (j, lib) in self.libs.iter().enumerate() {
                let leaf = WireLeaf::connect(addrs[j % n_sp], true).await?;
                let files: Vec<FileRecord> = lib.iter().map(|&t| self.records[t].clone()).collect();
                leaf.register(&files)?;
                leaves.push((
                    leaf,
                    files.last().cloned().expect("libraries are not empty"),
                ));
            }
            let pairs: Vec<(&WireLeaf, &FileRecord)> = leaves.iter().map(|(l, r)| (l, r)).collect();
            wait_indexed(&pairs, Duration::from_secs(60)).await?;
            let mut clients = Vec::new();
            for a in &addrs {
                clients.push(WireLeaf::connect(*a, false).await?);
            }
            // Every record's path starts with "Music": a query for it gets every super-peer's
            // 200 best, so it tells which super-peers a query reaches.
            let per_sp: Vec<usize> = (0..n_sp)
                .map(|s| {
                    let n: usize = self
                        .libs
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| j % n_sp == s)
                        .map(|(_, l)| l.len())
                        .sum();
                    n.min(MAX_LOCAL_HITS)
                })
                .collect();
            let everyone: usize = per_sp.iter().sum();
            let mesh_note = match mesh {
                Mesh::Default => {
                    // Settled when a TTL-1 query from every super-peer reaches all of them.
                    let until = Instant::now() + self.settle;
                    loop {
                        let mut reached = 0;
                        for c in &clients {
                            let r = timed_query(c, "music", everyone, 1).await?;
                            reached += usize::from(r.complete);
                        }
                        if reached == n_sp {
                            break format!(
                                "default mesh (full after {:.0} s: one hop to all)",
                                started.elapsed().as_secs_f64()
                            );
                        }
                        if Instant::now() > until {
                            break format!(
                                "default mesh ({reached} of {n_sp} reach all in one hop \
                                 after {:.0} s)",
                                started.elapsed().as_secs_f64()
                            );
                        }
                        smol::Timer::after(Duration::from_secs(1)).await;
                    }
                }
                Mesh::Sparse => {
                    let until = Instant::now() + Duration::from_secs(30);
                    loop {
                        let r =
                            timed_query(&clients[0], "music", everyone, wire::DEFAULT_TTL).await?;
                        if r.complete {
                            break "--neighbours 3, ring with chords (up to 3 hops)".to_string();
                        }
                        if Instant::now() > until {
                            bail!(
                                "the sparse mesh did not come up: a probe got {} of {} hits",
                                r.received,
                                everyone
                            );
                        }
                        smol::Timer::after(Duration::from_millis(200)).await;
                    }
                }
            };
            // Which super-peer each hit comes from, by its leaf's address.
            let home: HashMap<SocketAddr, usize> = leaves
                .iter()
                .enumerate()
                .filter_map(|(j, (l, _))| l.listen.map(|a| (a, j % n_sp)))
                .collect();
            let mut results = Vec::new();
            for (i, (q, _)) in self.queries.iter().enumerate() {
                let want: usize = self.expected[i].iter().sum();
                let mut r = timed_query(&clients[i % n_sp], q, want, wire::DEFAULT_TTL).await?;
                if !r.complete {
                    let mut got = vec![0usize; n_sp];
                    for a in &r.sources {
                        if let Some(&s) = home.get(a) {
                            got[s] += 1;
                        }
                    }
                    let short: Vec<String> = (0..n_sp)
                        .filter(|&s| got[s] < self.expected[i][s])
                        .map(|s| format!("super-peer {s} ({} of {})", got[s], self.expected[i][s]))
                        .collect();
                    eprintln!(
                        "  incomplete: {q:?} sent at super-peer {}: {} of {want} hits; short: {}",
                        i % n_sp,
                        r.received,
                        short.join(", ")
                    );
                }
                r.sources.clear();
                results.push(r);
            }
            drop(leaves);
            Ok::<_, anyhow::Error>(NetResult {
                mesh: mesh_note,
                results,
            })
        })?;
        drop(sps);
        let complete = out.results.iter().filter(|r| r.complete).count();
        if complete * 2 < out.results.len() {
            bail!(
                "{}: only {complete} of {} queries got every expected hit: the network loses hits",
                out.mesh,
                out.results.len()
            );
        }
        Ok(out)
    }
}

/// One query's fate.
#[derive(Debug)]
struct QueryResult {
    expected: usize,
    received: usize,
    /// The source of every hit (kept until the result is checked).
    sources: Vec<SocketAddr>,
    complete: bool,
    first: Option<Duration>,
    last: Option<Duration>,
}

/// Sends one query and waits for all `expected` hits, or five seconds.
async fn timed_query(
    client: &WireLeaf,
    text: &str,
    expected: usize,
    ttl: u8,
) -> anyhow::Result<QueryResult> {
    let sent = Instant::now();
    let id = client.query(words(text), ttl)?;
    let until = sent + Duration::from_secs(5);
    let mut r = QueryResult {
        expected,
        received: 0,
        sources: Vec::new(),
        complete: false,
        first: None,
        last: None,
    };
    while r.received < expected {
        let next = smol::future::or(async { client.hits.recv().await.ok() }, async {
            smol::Timer::at(until).await;
            None
        })
        .await;
        let Some((at, hits)) = next else {
            break;
        };
        if hits.query != id {
            continue; // a late answer to an earlier query
        }
        r.received += hits.hits.len();
        r.sources.extend(hits.hits.iter().map(|h| h.source.addr));
        r.first.get_or_insert(at - sent);
        r.last = Some(at - sent);
    }
    r.complete = r.received >= expected;
    Ok(r)
}

struct Throughput {
    per_second: f64,
    cpu_share: f64,
}

/// Queries per second of one super-peer holding `records`, answering `queries` (TTL 0) from
/// four searching leaves with eight queries each in flight, for `secs` seconds.
fn throughput(
    ctx: &Ctx,
    scratch: &Scratch,
    logs: &std::path::Path,
    records: &[FileRecord],
    queries: &[(String, usize)],
    secs: f64,
) -> anyhow::Result<Throughput> {
    const CLIENTS: usize = 4;
    const IN_FLIGHT: usize = 8;
    const LEAVES: usize = 20;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let (sp, addr) = superpeer(
        &ctx.bins,
        None,
        any,
        &scratch.dir("sp-qps")?,
        &logs.join("superpeer-qps.log"),
    )?;
    let queries = Arc::new(queries.to_vec());
    smol::block_on(async {
        let mut leaves = Vec::new();
        for j in 0..LEAVES {
            let files: Vec<FileRecord> = records.iter().skip(j).step_by(LEAVES).cloned().collect();
            let leaf = WireLeaf::connect(addr, true).await?;
            leaf.register(&files)?;
            leaves.push((leaf, files.last().cloned().expect("enough records")));
        }
        let pairs: Vec<(&WireLeaf, &FileRecord)> = leaves.iter().map(|(l, r)| (l, r)).collect();
        wait_indexed(&pairs, Duration::from_secs(60)).await?;
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(Arc::new(WireLeaf::connect(addr, false).await?));
        }
        let next = Arc::new(AtomicUsize::new(0));
        let cpu_before = cpu_time_of(sp.pid())?;
        let started = Instant::now();
        let stop_at = started + Duration::from_secs_f64(secs);
        let tasks: Vec<_> = clients
            .iter()
            .map(|c| {
                let (c, next, queries) = (c.clone(), next.clone(), queries.clone());
                smol::spawn(async move { load(&c, &next, &queries, IN_FLIGHT, stop_at).await })
            })
            .collect();
        let mut done = 0;
        let mut last = started;
        for t in tasks {
            let (n, at) = t.await?;
            done += n;
            last = last.max(at);
        }
        let elapsed = last - started;
        let cpu = cpu_time_of(sp.pid())? - cpu_before;
        drop(leaves);
        Ok(Throughput {
            per_second: done as f64 / elapsed.as_secs_f64(),
            cpu_share: cpu.as_secs_f64() / elapsed.as_secs_f64(),
        })
    })
}

/// Keeps `in_flight` queries going on `client` until `stop_at`, then waits for the last
/// answers. Returns the queries answered in full and when the last one was.
async fn load(
    client: &WireLeaf,
    next: &AtomicUsize,
    queries: &[(String, usize)],
    in_flight: usize,
    stop_at: Instant,
) -> anyhow::Result<(usize, Instant)> {
    let mut pending: HashMap<wire::QueryId, usize> = HashMap::new();
    let mut done = 0;
    let mut last = Instant::now();
    loop {
        while pending.len() < in_flight && Instant::now() < stop_at {
            let i = next.fetch_add(1, Ordering::Relaxed) % queries.len();
            let (text, floor_hits) = &queries[i];
            let id = client.query(words(text), 0)?;
            pending.insert(id, *floor_hits);
        }
        if pending.is_empty() {
            return Ok((done, last));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let got = smol::future::or(async { client.hits.recv().await.ok() }, async {
            smol::Timer::at(deadline).await;
            None
        })
        .await;
        let Some((at, hits)) = got else {
            bail!(
                "{} queries went unanswered for 10 s under load",
                pending.len()
            );
        };
        if let Some(left) = pending.get_mut(&hits.query) {
            *left = left.saturating_sub(hits.hits.len());
            if *left == 0 {
                pending.remove(&hits.query);
                done += 1;
                last = at;
            }
        }
    }
}
