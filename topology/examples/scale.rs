//! The search scale study: plain flooding, last-hop routing, two-hop routing (depth-1 tables)
//! and dynamic querying over 1,000 to 100,000 super-peers, in virtual time, with the real
//! `topology` machines.
//!
//! Every super-peer is a [`topology::SuperPeer`] in the simulator ([`topology::sim`]), dialling
//! its neighbours, exchanging route tables and patches, and forwarding queries itself. Leaves are
//! stub leaves (a Hello, a Register of their files, pongs), so a network of millions of leaves
//! fits in memory. Files come from the corpus of real tracks (freemusi.cc, CC BY-SA 4.0), shared
//! with Zipf popularity; leaves come and go, super-peers crash and join, latencies are drawn per
//! link, everything from one seed. Super-peers answer searches from an oracle over the leaves'
//! files, with words cut exactly as the route tables cut them.
//!
//! ```text
//! cargo run --release -p topology --features sim --example scale -- --sps 1000,10000,100000 \
//!     --corpus ../shared/corpus/freemusic-tracks.tsv --out docs/search-scale.md
//! ```

use std::cell::RefCell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use topology::routing::{file_text, simple_words};
use topology::sim::{Machine, Rng, Sim, SimConfig};
use topology::{Config, ConnId, DynamicQuerying, LeafConfig, RoleConfig};
use wire::{FileId, FileRecord, Filter, Query, QueryId, Search, Tags, Terms};

/// The system allocator, counting the bytes live on the heap, so the study can say where its
/// memory goes (RSS alone also counts what the allocator keeps after frees).
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is kept.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new, std::sync::atomic::Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { std::alloc::System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Bytes live on the heap, in MiB.
fn live_mib() -> f64 {
    LIVE.load(std::sync::atomic::Ordering::Relaxed) as f64 / (1 << 20) as f64
}

/// The search scale study: flooding, last-hop, two-hop and dynamic querying in the simulator.
#[derive(Debug, Clone, clap::Parser)]
struct Settings {
    /// Network sizes to study, in super-peers (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    sps: Vec<usize>,
    /// Seed of every random draw (network, files, churn, latencies, queries).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The corpus of tracks (tab-separated, as in ../shared/corpus).
    #[arg(long, default_value = "../shared/corpus/freemusic-tracks.tsv")]
    corpus: String,
    /// Write the results (markdown) here instead of to standard output.
    #[arg(long)]
    out: Option<String>,
    /// Queries per strategy, taken in turn from the classes (half popular, half rare by default).
    #[arg(long, default_value_t = 100)]
    queries: usize,
    /// Neighbours each super-peer keeps.
    #[arg(long, default_value_t = 32)]
    degree: usize,
    /// Query TTL (the horizon).
    #[arg(long, default_value_t = 3)]
    ttl: u8,
    /// Zipf exponent of file popularity.
    #[arg(long, default_value_t = 1.0)]
    zipf: f64,
    /// Leaves per super-peer, drawn uniformly from LO,HI.
    #[arg(long, value_parser = parse_range, default_value = "10,50")]
    leaves: (u64, u64),
    /// Mean files shared per sharing leaf.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..))]
    files: u64,
    /// Share of leaves that share nothing (0 to 1).
    #[arg(long, default_value_t = 0.25, value_parser = parse_share)]
    free_riders: f64,
    /// Mean leaf session, in minutes.
    #[arg(long = "leaf-session-min", value_parser = parse_minutes, default_value = "30")]
    leaf_session: Duration,
    /// Mean super-peer session, in minutes.
    #[arg(long = "sp-session-min", value_parser = parse_minutes, default_value = "240")]
    sp_session: Duration,
    /// Results a dynamic query stops at.
    #[arg(long, default_value_t = 150)]
    target: usize,
    /// Heading of the section written.
    #[arg(long, default_value = "Results")]
    title: String,
    /// Add the section after what --out holds instead of writing a new file.
    #[arg(long)]
    append: bool,
    /// Build the network, say where the memory goes, and stop (no queries, no output file).
    #[arg(long)]
    measure: bool,
    /// Super-peers exchange no depth-1 tables (aggregates), and the two-hop strategies do not run.
    #[arg(long = "no-aggregates", action = clap::ArgAction::SetFalse)]
    aggregates: bool,
    /// Classes of queries, taken in turn (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        value_enum,
        default_value = "popular,rare"
    )]
    classes: Vec<Class>,
    /// Route tables of `1 << BITS` slots (depth-1 tables too).
    #[arg(long = "route-bits", default_value_t = topology::routing::TABLE_BITS,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(topology::routing::MAX_TABLE_BITS)))]
    route_bits: u8,
    /// Strategies to run, in this order (comma-separated; flooding first gives the others their
    /// ratio). Default: all five, the two-hop ones only with depth-1 tables.
    #[arg(long, value_delimiter = ',', value_enum)]
    strategies: Vec<Strategy>,
}

/// `LO,HI` as a pair of counts.
fn parse_range(v: &str) -> Result<(u64, u64), String> {
    let (lo, hi) = v.split_once(',').ok_or("expected LO,HI")?;
    let lo: u64 = lo.trim().parse().map_err(|e| format!("{lo}: {e}"))?;
    let hi: u64 = hi.trim().parse().map_err(|e| format!("{hi}: {e}"))?;
    match lo <= hi {
        true => Ok((lo, hi)),
        false => Err(format!("{lo} is more than {hi}")),
    }
}

/// A fraction from 0 to 1.
fn parse_share(v: &str) -> Result<f64, String> {
    match v.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{v}: a number from 0 to 1")),
    }
}

/// Whole minutes (at least one) as a duration.
fn parse_minutes(v: &str) -> Result<Duration, String> {
    let m: u64 = v.parse().map_err(|e| format!("{v}: {e}"))?;
    match m.checked_mul(60) {
        Some(s) if m > 0 => Ok(Duration::from_secs(s)),
        _ => Err(format!("{v}: minutes from 1 to {}", u64::MAX / 60)),
    }
}

/// One track of the corpus.
struct Track {
    artist: String,
    album: String,
    number: u32,
    title: String,
    duration_s: u32,
    year: u16,
    genre: String,
}

fn load_corpus(path: &str) -> anyhow::Result<Vec<Track>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the corpus {path}"))?;
    let tracks: Vec<Track> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            (f.len() >= 11 && !f[0].trim().is_empty() && !f[5].trim().is_empty()).then(|| Track {
                artist: f[0].trim().into(),
                album: f[1].trim().into(),
                number: f[4].parse().unwrap_or(0),
                title: f[5].trim().into(),
                duration_s: f[6].parse().unwrap_or(0),
                year: f[7].parse().unwrap_or(0),
                genre: f[8].trim().into(),
            })
        })
        .collect();
    if tracks.is_empty() {
        bail!("no tracks in {path}");
    }
    Ok(tracks)
}

fn safe(s: &str) -> String {
    s.replace('/', "-")
}

/// The tracks, their words, and their popularity.
struct Catalog {
    tracks: Vec<Track>,
    /// Word → tracks holding it (ascending).
    postings: HashMap<String, Vec<u32>>,
    /// Rank (0: most popular) → track.
    by_rank: Vec<u32>,
    /// Cumulative Zipf weight by rank.
    cdf: Vec<f64>,
}

impl Catalog {
    fn new(tracks: Vec<Track>, zipf: f64, rng: &mut Rng) -> Catalog {
        let mut postings: HashMap<String, Vec<u32>> = HashMap::new();
        for (i, t) in tracks.iter().enumerate() {
            let mut words = simple_words(&file_text(&record(i as u32, t)));
            words.sort();
            words.dedup();
            for w in words {
                postings.entry(w).or_default().push(i as u32);
            }
        }
        let mut by_rank: Vec<u32> = (0..tracks.len() as u32).collect();
        for i in (1..by_rank.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            by_rank.swap(i, j);
        }
        let mut total = 0.0;
        let cdf = (0..tracks.len())
            .map(|r| {
                total += 1.0 / ((r + 1) as f64).powf(zipf);
                total
            })
            .collect();
        Catalog {
            tracks,
            postings,
            by_rank,
            cdf,
        }
    }

    /// A track drawn by popularity.
    fn draw(&self, rng: &mut Rng) -> u32 {
        let total = *self.cdf.last().expect("a corpus");
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let rank = self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1);
        self.by_rank[rank]
    }

    /// The tracks that hold every word of `text` (ascending).
    fn matching(&self, text: &str) -> Vec<u32> {
        let mut words = simple_words(text);
        words.sort();
        words.dedup();
        let mut lists: Vec<&Vec<u32>> = Vec::new();
        for w in &words {
            match self.postings.get(w) {
                Some(p) => lists.push(p),
                None => return Vec::new(),
            }
        }
        lists.sort_by_key(|l| l.len());
        let Some((first, rest)) = lists.split_first() else {
            return Vec::new();
        };
        first
            .iter()
            .copied()
            .filter(|t| rest.iter().all(|l| l.binary_search(t).is_ok()))
            .collect()
    }
}

/// The file a leaf shares for track `i`: named the way libraries name files, with its tags.
fn record(i: u32, t: &Track) -> FileRecord {
    let mut id = [0x5a; 32];
    id[..4].copy_from_slice(&i.to_be_bytes());
    FileRecord {
        id: FileId(id),
        size: (u64::from(t.duration_s) * 16_000).max(100_000),
        path: format!(
            "{}/{}/{:02} - {}.mp3",
            safe(&t.artist),
            safe(&t.album),
            t.number,
            safe(&t.title)
        ),
        tags: Tags {
            artist: Some(t.artist.clone()),
            album: Some(t.album.clone()),
            title: Some(t.title.clone()),
            genre: Some(t.genre.clone()),
            year: (t.year > 0).then_some(t.year),
            duration_s: Some(t.duration_s),
            bitrate_kbps: None,
        },
    }
}

/// What the leaves share, as the oracle and the ground truth see it.
struct Shares {
    catalog: Rc<Catalog>,
    /// Per node (super-peers only): (track, leaf connection), in 8 bytes (the simulator's
    /// connection numbers stay far below 2^32).
    at: Vec<Vec<(u32, u32)>>,
    /// Matching tracks per query text, cached.
    cache: HashMap<String, Rc<Vec<u32>>>,
}

impl Shares {
    fn matches(&mut self, text: &str) -> Rc<Vec<u32>> {
        if let Some(m) = self.cache.get(text) {
            return m.clone();
        }
        let m = Rc::new(self.catalog.matching(text));
        self.cache.insert(text.to_string(), m.clone());
        m
    }

    /// Super-peer `sp`'s hits for the tracks in `m`, at most `limit`.
    fn hits_at<'a>(
        &'a self,
        sp: usize,
        m: &'a [u32],
        limit: usize,
    ) -> impl Iterator<Item = &'a (u32, u32)> + 'a {
        self.at
            .get(sp)
            .into_iter()
            .flatten()
            .filter(move |(t, _)| m.binary_search(t).is_ok())
            .take(limit)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Strategy {
    Flooding,
    LastHop,
    Dynamic,
    /// Last-hop routing, and the hop before routed by neighbours' depth-1 tables.
    TwoHop,
    DynamicTwoHop,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Strategy::Flooding => "flooding",
            Strategy::LastHop => "last-hop routing",
            Strategy::Dynamic => "dynamic querying + last hop",
            Strategy::TwoHop => "two-hop routing",
            Strategy::DynamicTwoHop => "dynamic querying + two hops",
        }
    }

    /// Whether the strategy routes by depth-1 tables.
    fn two_hop(self) -> bool {
        matches!(self, Strategy::TwoHop | Strategy::DynamicTwoHop)
    }

    /// Applies the strategy to a super-peer's settings.
    fn configure(self, c: &mut Config, target: usize) {
        c.last_hop_routing = self != Strategy::Flooding;
        c.two_hop_routing = self.two_hop();
        c.dynamic = matches!(self, Strategy::Dynamic | Strategy::DynamicTwoHop).then_some(
            DynamicQuerying {
                target,
                ..DynamicQuerying::default()
            },
        );
    }
}

/// What a query asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
enum Class {
    /// A track among the 100 most popular.
    Popular,
    /// A track in the less popular half.
    Rare,
}

impl Class {
    /// The name in tables and on the command line.
    fn name(self) -> &'static str {
        match self {
            Class::Popular => "popular",
            Class::Rare => "rare",
        }
    }
}

/// One query of the workload: who asks, what, and for which class.
struct Planned {
    asker: usize,
    sp: usize,
    text: String,
    class: Class,
}

/// What one query came to.
#[derive(Debug, Clone)]
struct Outcome {
    class: Class,
    truth: u64,
    found: u64,
    messages: u64,
    query_messages: u64,
    bytes: u64,
    first: Option<Duration>,
    target: Option<Duration>,
}

struct Study {
    s: Settings,
    sim: Sim,
    shares: Rc<RefCell<Shares>>,
    /// Live stub leaves that come and go: (stub node, super-peer, its conn there).
    stubs: Vec<(usize, usize, ConnId)>,
    /// Stubs that ask (never churned), with their super-peers.
    askers: Vec<(usize, usize)>,
    protected: HashSet<usize>,
    sp_count: usize,
    route_setup: (u64, u64),
    /// Of the route setup, depth-1 tables and patches.
    route_setup_aggregates: (u64, u64),
}

fn config(s: &Settings) -> SimConfig {
    SimConfig {
        seed: s.seed,
        latency: (Duration::from_millis(10), Duration::from_millis(150)),
        leaf: LeafConfig::default(),
        superpeer: Config {
            neighbour_target: s.degree,
            dials_per_tick: s.degree / 2,
            // Quiet background: the study counts query traffic; keep-alives and host news
            // would only cost simulation time.
            keepalive_interval: Duration::from_secs(900),
            idle_timeout: Duration::from_secs(3600),
            hosts_interval: Duration::from_secs(120),
            host_cache_size: 64,
            leaf_slots: 200,
            route_delay: Duration::from_secs(5),
            route_aggregates: s.aggregates,
            route_bits: s.route_bits,
            // Recall is measured against every match within the horizon: no cap on hits.
            max_hits_per_query: usize::MAX,
            seen_capacity: 4096,
            dynamic: Some(DynamicQuerying {
                target: s.target,
                ..DynamicQuerying::default()
            }),
            ..Config::default()
        },
        role: RoleConfig::default(),
        capable_share: 0.0,
        nat_share: 0.0,
    }
}

impl Study {
    fn new(s: Settings, catalog: Rc<Catalog>, n: usize) -> Study {
        let mut sim = Sim::new(config(&s), Instant::now());
        let shares = Rc::new(RefCell::new(Shares {
            catalog,
            at: Vec::new(),
            cache: HashMap::new(),
        }));
        let sh = shares.clone();
        sim.set_search(Box::new(move |sp, search| {
            let Terms::Words(text) = &search.terms else {
                return Vec::new();
            };
            let mut sh = sh.borrow_mut();
            let m = sh.matches(text);
            let cat = sh.catalog.clone();
            sh.hits_at(sp, &m, 200)
                .map(|&(t, conn)| (ConnId::from(conn), record(t, &cat.tracks[t as usize]), 1.0))
                .collect()
        }));
        Study {
            s,
            sim,
            shares,
            stubs: Vec::new(),
            askers: Vec::new(),
            protected: HashSet::new(),
            sp_count: n,
            route_setup: (0, 0),
            route_setup_aggregates: (0, 0),
        }
    }

    fn add_sp(&mut self, candidates: &[usize]) -> usize {
        let seeds: Vec<SocketAddr> = (0..self.s.degree / 2)
            .filter(|_| !candidates.is_empty())
            .map(|_| {
                let i = self.sim.rng().below(candidates.len() as u64) as usize;
                self.sim.nodes[candidates[i]].addr
            })
            .collect();
        self.sim.add_superpeer(&seeds)
    }

    fn live_sps(&self) -> Vec<usize> {
        (0..self.sim.nodes.len())
            .filter(|&n| matches!(self.sim.nodes[n].machine, Machine::SuperPeer(_)))
            .collect()
    }

    /// A leaf joins super-peer `sp` with files drawn by popularity.
    fn attach(&mut self, sp: usize) -> usize {
        let count = if self.sim.rng().chance(self.s.free_riders) {
            0
        } else {
            1 + self.sim.rng().below(self.s.files * 2 - 1)
        };
        let cat = self.shares.borrow().catalog.clone();
        let mut tracks: Vec<u32> = (0..count).map(|_| cat.draw(self.sim.rng())).collect();
        tracks.sort_unstable();
        tracks.dedup();
        let files = tracks
            .iter()
            .map(|&t| record(t, &cat.tracks[t as usize]))
            .collect();
        let (stub, conn) = self.sim.attach_stub_leaf(sp, files);
        let mut sh = self.shares.borrow_mut();
        if sh.at.len() <= sp {
            sh.at.resize_with(sp + 1, Vec::new);
        }
        let conn32 = u32::try_from(conn).expect("connection numbers below 2^32");
        sh.at[sp].extend(tracks.into_iter().map(|t| (t, conn32)));
        self.stubs.push((stub, sp, conn));
        stub
    }

    fn detach_random(&mut self) {
        if self.stubs.is_empty() {
            return;
        }
        let i = self.sim.rng().below(self.stubs.len() as u64) as usize;
        let (stub, sp, conn) = self.stubs.swap_remove(i);
        self.sim.crash(stub);
        if let Some(v) = self.shares.borrow_mut().at.get_mut(sp) {
            v.retain(|(_, c)| ConnId::from(*c) != conn);
        }
    }

    /// Builds the network: super-peers meshing, then leaves joining.
    fn build(&mut self) {
        // Super-peers, their leaves, and the leaves that churn in while the queries run.
        let (lo, hi) = self.s.leaves;
        let mean = (lo + hi) as usize / 2;
        self.sim
            .reserve_nodes(self.sp_count + self.sp_count * mean * 8 / 5);
        for _ in 0..self.sp_count {
            self.sim.add_superpeer(&[]);
        }
        // Each super-peer is seeded with random others, as a host cache from an earlier run.
        let now = self.sim.now();
        for n in 0..self.sp_count {
            let seeds: Vec<SocketAddr> = (0..self.s.degree / 2)
                .map(|_| {
                    let i = self.sim.rng().below(self.sp_count as u64) as usize;
                    self.sim.nodes[i].addr
                })
                .collect();
            if let Machine::SuperPeer(sp) = &mut self.sim.nodes[n].machine {
                sp.add_seeds(now, &seeds);
            }
        }
        self.sim.run_for(Duration::from_secs(5));
        eprintln!(
            "  meshed: RSS {} MiB, live heap {:.1} MiB",
            status_mib("VmRSS:"),
            live_mib()
        );
        // Leaves join over time (a few hundred super-peers' worth per second, at least a
        // twentieth of the network's), so the route patches that follow them are spread out
        // too. At 100,000 super-peers a fixed 500 a second made 200 s of virtual time in which
        // every super-peer also runs (quadratic: hours); up to 10,000 it is 500 as before.
        let batch = (self.sp_count / 20).max(500);
        let mut pending = 0;
        for sp in 0..self.sp_count {
            let leaves = lo + self.sim.rng().below(hi - lo + 1);
            for _ in 0..leaves {
                self.attach(sp);
            }
            pending += 1;
            if pending == batch {
                pending = 0;
                self.sim.run_for(Duration::from_secs(1));
            }
        }
        eprintln!(
            "  leaves attached: RSS {} MiB, live heap {:.1} MiB",
            status_mib("VmRSS:"),
            live_mib()
        );
        self.sim.run_for(Duration::from_secs(60));
        eprintln!(
            "  settled: RSS {} MiB, live heap {:.1} MiB",
            status_mib("VmRSS:"),
            live_mib()
        );
        self.route_setup = self.sim.route_traffic;
        self.route_setup_aggregates = self.sim.aggregate_traffic;
    }

    /// Where the memory of a built network goes: live heap bytes per super-peer, and what a
    /// super-peer's own route table takes (rebuilt outside the simulation for a sample).
    fn measure(&mut self) {
        let sps = self.live_sps();
        let n = sps.len() as f64;
        let live = LIVE.load(std::sync::atomic::Ordering::Relaxed) as f64;
        eprintln!("  live heap {:.0} B per super-peer", live / n);
        let sh = self.shares.borrow();
        let cat = sh.catalog.clone();
        let sample: Vec<usize> = sps
            .iter()
            .copied()
            .step_by((sps.len() / 200).max(1))
            .collect();
        let before = LIVE.load(std::sync::atomic::Ordering::Relaxed);
        let mut tables = Vec::new();
        let (mut slots, mut files) = (0usize, 0usize);
        for &sp in &sample {
            let mut t = topology::routing::LocalTable::new(16);
            let mut by_leaf: HashMap<ConnId, Vec<FileRecord>> = HashMap::new();
            for &(tr, conn) in sh.at.get(sp).into_iter().flatten() {
                by_leaf
                    .entry(ConnId::from(conn))
                    .or_default()
                    .push(record(tr, &cat.tracks[tr as usize]));
                files += 1;
            }
            for (conn, f) in by_leaf {
                t.add_files(simple_words, conn, &f);
            }
            t.take_flips();
            slots += t.len();
            tables.push(t);
        }
        let after = LIVE.load(std::sync::atomic::Ordering::Relaxed);
        let k = sample.len() as f64;
        eprintln!(
            "  local route table: {:.0} B per super-peer ({:.0} files, {:.0} set slots; remote copies at 2 B a slot: {:.0} B per super-peer)",
            (after - before) as f64 / k,
            files as f64 / k,
            slots as f64 / k,
            slots as f64 / k * 2.0 * self.s.degree as f64,
        );
        drop(tables);
        eprintln!("  {}", self.sim.memory_report());
        eprintln!(
            "  sizes: Message {} B, Transmit {} B, Event {} B, Host {} B, SuperPeer {} B",
            std::mem::size_of::<wire::Message>(),
            std::mem::size_of::<topology::Transmit>(),
            std::mem::size_of::<topology::Event>(),
            std::mem::size_of::<topology::hostcache::Host>(),
            std::mem::size_of::<topology::SuperPeer>(),
        );
        eprintln!(
            "  sim: {} nodes of {} B, {} stubs; oracle shares {:.0} B per super-peer",
            self.sim.nodes.len(),
            std::mem::size_of::<topology::sim::SimNode>(),
            self.stubs.len(),
            sh.at.iter().map(|v| v.capacity() * 8).sum::<usize>() as f64 / n,
        );
    }

    /// One second of churn: leaves leave and join, super-peers crash and join.
    fn churn_second(&mut self) {
        let leaves = self.stubs.len() as f64;
        let go = leaves / self.s.leaf_session.as_secs_f64();
        let n = go.floor() as u64 + u64::from(self.sim.rng().chance(go.fract()));
        let live = self.live_sps();
        for _ in 0..n {
            self.detach_random();
            let sp = live[self.sim.rng().below(live.len() as u64) as usize];
            self.attach(sp);
        }
        let sp_go = live.len() as f64 / self.s.sp_session.as_secs_f64();
        let n = sp_go.floor() as u64 + u64::from(self.sim.rng().chance(sp_go.fract()));
        for _ in 0..n {
            let sp = live[self.sim.rng().below(live.len() as u64) as usize];
            if self.protected.contains(&sp) {
                continue;
            }
            self.sim.crash(sp);
            // Its leaves are cut off (the study does not re-attach them; they count as gone)
            // and a fresh super-peer joins in its place.
            if let Some(v) = self.shares.borrow_mut().at.get_mut(sp) {
                v.clear();
            }
            let new = self.add_sp(&live);
            for _ in 0..self.s.leaves.0 {
                self.attach(new);
            }
        }
    }

    fn run_with_churn(&mut self, d: Duration) {
        let steps = d.as_secs().max(1);
        for _ in 0..steps {
            self.churn_second();
            self.sim.run_for(Duration::from_secs(1));
        }
    }

    /// The workload: askers (leaves that never leave) and what they ask.
    fn plan(&mut self) -> Vec<Planned> {
        let cat = self.shares.borrow().catalog.clone();
        let tracks = cat.tracks.len() as u64;
        let mut out = Vec::new();
        for i in 0..self.s.queries {
            let class = self.s.classes[i % self.s.classes.len()];
            let rank = match class {
                Class::Popular => self.sim.rng().below(100),
                Class::Rare => tracks / 2 + self.sim.rng().below(tracks / 2),
            };
            let t = &cat.tracks[cat.by_rank[rank as usize] as usize];
            let live = self.live_sps();
            let sp = live[self.sim.rng().below(live.len() as u64) as usize];
            let asker = self.attach(sp);
            // Askers stay.
            self.stubs.pop();
            self.protected.insert(sp);
            self.askers.push((asker, sp));
            out.push(Planned {
                asker,
                sp,
                text: format!("{} {}", t.artist, t.title),
                class,
            });
        }
        out
    }

    /// Matches within `ttl` hops of `origin`, as the super-peers would return them (at most
    /// 200 each).
    fn truth(&mut self, origin: usize, text: &str) -> u64 {
        let mut dist: HashMap<usize, u8> = HashMap::new();
        dist.insert(origin, 0);
        let mut queue = VecDeque::from([origin]);
        while let Some(n) = queue.pop_front() {
            let d = dist[&n];
            if d == self.s.ttl {
                continue;
            }
            for p in self.sim.neighbours(n) {
                if let std::collections::hash_map::Entry::Vacant(e) = dist.entry(p) {
                    e.insert(d + 1);
                    queue.push_back(p);
                }
            }
        }
        let mut sh = self.shares.borrow_mut();
        let m = sh.matches(text);
        dist.keys()
            .map(|&sp| sh.hits_at(sp, &m, 200).count() as u64)
            .sum()
    }

    fn set_strategy(&mut self, st: Strategy) {
        for n in self.live_sps() {
            if let Machine::SuperPeer(s) = &mut self.sim.nodes[n].machine {
                st.configure(s.config_mut(), self.s.target);
            }
        }
        // Super-peers that join later take the settings from the simulation's config.
        st.configure(&mut self.sim.config.superpeer, self.s.target);
    }

    fn run_queries(&mut self, st: Strategy, plan: &[Planned], round: u8) -> Vec<Outcome> {
        self.set_strategy(st);
        let mut started = Vec::new();
        for (i, p) in plan.iter().enumerate() {
            if !matches!(self.sim.nodes[p.sp].machine, Machine::SuperPeer(_)) {
                continue;
            }
            let truth = self.truth(p.sp, &p.text);
            let mut id = [0u8; 16];
            id[0] = round;
            id[1..9].copy_from_slice(&(i as u64).to_be_bytes());
            let query = Query {
                id: QueryId(id),
                ttl: self.s.ttl,
                hops: 0,
                search: Search {
                    terms: Terms::Words(p.text.clone()),
                    filter: Filter::default(),
                },
            };
            self.sim.stub_query(p.asker, query);
            started.push((QueryId(id), p.class, truth));
            // A query every half second, churn every second.
            self.sim.run_for(Duration::from_millis(500));
            if i % 2 == 1 {
                self.churn_second();
            }
        }
        // Dynamic queries take several steps: let all of them finish (at most a minute), then
        // the hits of the last step come back (a hit crosses at most TTL links of ≤150 ms).
        for _ in 0..60 {
            let busy = plan.iter().any(|p| match &self.sim.nodes[p.sp].machine {
                Machine::SuperPeer(s) => s.dynamic_in_progress() > 0,
                _ => false,
            });
            if !busy {
                break;
            }
            self.run_with_churn(Duration::from_secs(1));
        }
        self.run_with_churn(Duration::from_secs(3));
        started
            .into_iter()
            .map(|(id, class, truth)| {
                let r = &self.sim.queries[&id];
                let mut found = r.found.clone();
                found.sort();
                found.dedup();
                Outcome {
                    class,
                    truth,
                    found: found.len() as u64,
                    messages: r.messages,
                    query_messages: r.query_messages,
                    bytes: r.bytes,
                    first: r.first.map(|t| t - r.start),
                    target: r.target_at.map(|t| t - r.start),
                }
            })
            .collect()
    }
}

fn peak_rss_mib() -> u64 {
    status_mib("VmHWM:")
}

fn status_mib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0, 0);
    for x in v {
        sum += x;
        n += 1;
    }
    if n == 0 {
        f64::NAN
    } else {
        sum / n as f64
    }
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    v.sort();
    v.get(v.len() / 2).copied()
}

fn fmt_ms(d: Option<Duration>) -> String {
    d.map_or("–".into(), |d| format!("{:.2} s", d.as_secs_f64()))
}

/// The rows of one scale.
fn rows(n: usize, results: &[(Strategy, Vec<Outcome>)], target: usize, out: &mut String) {
    let flood_msgs: HashMap<Class, f64> = results
        .iter()
        .filter(|(st, _)| *st == Strategy::Flooding)
        .flat_map(|(_, o)| {
            [Class::Popular, Class::Rare].map(|c| {
                (
                    c,
                    mean(o.iter().filter(|x| x.class == c).map(|x| x.messages as f64)),
                )
            })
        })
        .collect();
    for (st, outcomes) in results {
        for class in [Class::Popular, Class::Rare] {
            let o: Vec<&Outcome> = outcomes.iter().filter(|x| x.class == class).collect();
            if o.is_empty() {
                continue;
            }
            let with: Vec<&&Outcome> = o.iter().filter(|x| x.truth > 0).collect();
            let msgs = mean(o.iter().map(|x| x.messages as f64));
            let ratio = flood_msgs.get(&class).map_or(f64::NAN, |f| f / msgs);
            let recall = mean(
                with.iter()
                    .map(|x| (x.found as f64 / x.truth as f64).min(1.0)),
            );
            let t = target as f64;
            let recall_target = mean(
                with.iter()
                    .map(|x| ((x.found as f64).min(t) / (x.truth as f64).min(t)).min(1.0)),
            );
            let reached = o.iter().filter(|x| x.target.is_some()).count();
            let _ = writeln!(
                out,
                "| {n} | {} | {} | {}/{} | {:.0} | {:.0} ({:.0}) | {:.1}× | {:.1} KiB | {:.0} | {:.3} | {:.3} | {} | {} ({reached}) |",
                st.name(),
                class.name(),
                with.len(),
                o.len(),
                mean(with.iter().map(|x| x.truth as f64)),
                msgs,
                mean(o.iter().map(|x| x.query_messages as f64)),
                ratio,
                mean(o.iter().map(|x| x.bytes as f64)) / 1024.0,
                mean(o.iter().map(|x| x.found as f64)),
                recall,
                recall_target,
                fmt_ms(median(o.iter().filter_map(|x| x.first).collect())),
                fmt_ms(median(o.iter().filter_map(|x| x.target).collect())),
            );
        }
    }
}

fn main() -> anyhow::Result<()> {
    let s = <Settings as clap::Parser>::parse();
    let tracks = load_corpus(&s.corpus)?;
    let mut rng = Rng::new(s.seed ^ 0xC0_FFEE);
    let catalog = Rc::new(Catalog::new(tracks, s.zipf, &mut rng));
    // The command as a shell would take it back: arguments with spaces quoted.
    let command: String = std::env::args()
        .skip(1)
        .map(|a| match a.contains(' ') {
            true => format!("'{a}'"),
            false => a,
        })
        .collect::<Vec<_>>()
        .join(" ");
    let mut table = String::new();
    let mut notes = String::new();
    for &n in &s.sps {
        let wall = Instant::now();
        let mut study = Study::new(s.clone(), catalog.clone(), n);
        study.build();
        let built = wall.elapsed();
        let (leaves, files) = {
            let sh = study.shares.borrow();
            (
                study.stubs.len(),
                sh.at.iter().map(|v| v.len()).sum::<usize>(),
            )
        };
        let degree = mean(
            study
                .live_sps()
                .into_iter()
                .map(|sp| study.sim.neighbours(sp).len() as f64),
        );
        let (rm, rb) = study.route_setup;
        eprintln!(
            "{n} super-peers: built in {built:?}: {leaves} leaves, {files} files, mean degree {degree:.1}, route setup {rm} messages {:.1} MiB, peak RSS {} MiB",
            rb as f64 / (1 << 20) as f64,
            peak_rss_mib()
        );
        if s.measure {
            study.measure();
            continue;
        }
        let plan = study.plan();
        study.sim.run_for(Duration::from_secs(10));
        let route_before = study.sim.route_traffic;
        let aggregate_before = study.sim.aggregate_traffic;
        let churn_start = study.sim.elapsed();
        let mut results = Vec::new();
        let mut strategies = s.strategies.clone();
        if strategies.is_empty() {
            strategies = vec![Strategy::Flooding, Strategy::LastHop, Strategy::Dynamic];
            if s.aggregates {
                strategies.extend([Strategy::TwoHop, Strategy::DynamicTwoHop]);
            }
        }
        if !s.aggregates && strategies.iter().any(|st| st.two_hop()) {
            bail!("two-hop strategies need depth-1 tables: drop --no-aggregates");
        }
        for (round, st) in strategies.into_iter().enumerate() {
            let t = Instant::now();
            let o = study.run_queries(st, &plan, round as u8);
            eprintln!("  {}: {} queries in {:?}", st.name(), o.len(), t.elapsed());
            results.push((st, o));
        }
        let churn_time = (study.sim.elapsed() - churn_start).as_secs_f64();
        let (pm, pb) = (
            study.sim.route_traffic.0 - route_before.0,
            study.sim.route_traffic.1 - route_before.1,
        );
        let (am, ab) = (
            study.sim.aggregate_traffic.0 - aggregate_before.0,
            study.sim.aggregate_traffic.1 - aggregate_before.1,
        );
        let sps_live = study.live_sps().len() as f64;
        let per_min = |x: u64| x as f64 / sps_live / (churn_time / 60.0);
        rows(n, &results, s.target, &mut table);
        let _ = writeln!(
            notes,
            "| {n} | {leaves} | {files} | {degree:.1} | {:.1} MiB ({:.1} MiB) | {:.2} ({:.2}) | {:.0} B ({:.0} B) | {:.0} s | {} MiB |",
            rb as f64 / (1 << 20) as f64,
            study.route_setup_aggregates.1 as f64 / (1 << 20) as f64,
            per_min(pm),
            per_min(am),
            per_min(pb),
            per_min(ab),
            wall.elapsed().as_secs_f64(),
            peak_rss_mib(),
        );
        eprintln!(
            "  done in {:?}, peak RSS {} MiB",
            wall.elapsed(),
            peak_rss_mib()
        );
    }
    let section = render(&s, &command, &table, &notes);
    match &s.out {
        Some(path) => {
            // With --append, the section goes after what the file holds (an earlier run's).
            let mut doc = match s.append {
                true => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
                false => render_intro(&s),
            };
            doc.push_str(&section);
            std::fs::write(path, doc).with_context(|| format!("writing {path}"))?
        }
        None => print!("{}{section}", render_intro(&s)),
    }
    Ok(())
}

/// The study's description and the meaning of the columns (once, at the top of the file).
fn render_intro(s: &Settings) -> String {
    format!(
        "# Search at scale: flooding, last-hop routing, two-hop routing, dynamic querying

Generated by `topology/examples/scale.rs` (each section by the command above its tables); do not
edit by hand.

Every super-peer is the real `topology::SuperPeer` state machine in the deterministic simulator
(`topology::sim`), in virtual time, from a seed: super-peers dial each other from their host
caches (mean degree near {degree}), exchange QRP-style route tables ({bits}-bit, 65,536 slots)
and patches, and forward queries themselves. Leaves are stub leaves (a Hello, a Register of their
files, pongs), {fr:.0}% of them sharing nothing, the others 1–{fmax} tracks drawn with Zipf
popularity (exponent {zipf}) from the 21,502 real tracks of the freemusi.cc corpus (CC BY-SA 4.0,
see `../shared/corpus/README.md`). One-way latency 10–150 ms per link. Churn while the queries
run: leaves leave and join (mean session {ls} min), super-peers crash and are replaced (mean
session {ss} min). Queries are \"artist title\" of a track, TTL {ttl}: *popular* = one of the 100
most popular tracks, *rare* = one in the less popular half. Each strategy runs the same queries
from the same leaves on the same network, one after the other, a query every half second; after
a strategy's last query the run goes on for a fixed minute, or, where a section says so, until
no dynamic query is in progress (at most a minute) and 3 s more for the last hits (only the
churn between strategies differs). Dynamic querying: target
{target} hits, a probe to 3 neighbours with TTL 1, 1.2 s per hop between steps.

*Two hops*: besides its own table, each super-peer sends its neighbours a depth-1 table, the
union of its own and of the tables its neighbours sent it (new slots at once, at most one patch
of them a second; cleared slots batched, at most one patch in 5 s), and a query is sent with
TTL 1 only to neighbours whose depth-1 table can match (the last hop as before, by their own
tables). Unless the section says `--no-aggregates`, depth-1 tables are
exchanged throughout the run (their traffic is in the route columns, in brackets), and only the
two-hop strategies use them.

- **with matches**: queries with at least one match within the horizon / queries.
- **matches**: (file, source) pairs within the TTL horizon when the query starts, counting at
  most 200 per super-peer as the super-peers return them; recall is over queries with matches.
- **msgs/query**, **bytes/query**: query and hit messages delivered on super-peer links and to the
  asking leaf (in brackets: of them, query copies), and their encoded frame sizes
  (`wire::encode`).
- **vs flood**: flooding's messages per query divided by this row's.
- **recall**: distinct (file, source) found / matches (capped at 1). **recall@{target}**: found
  capped at the target / matches capped at the target: what dynamic querying aims for.
- **first** / **target**: median time from the query to its first hit / to {target} hits (in
  brackets, how many queries got {target}).
- Route messages count tables and patches on super-peer links. Setup: all of them while the
  network is built. Under churn: per live super-peer per minute while the queries ran. In
  brackets: of them, depth-1 tables and patches.

",
        degree = s.degree,
        bits = topology::routing::TABLE_BITS,
        fmax = s.files * 2 - 1,
        zipf = s.zipf,
        ls = s.leaf_session.as_secs() / 60,
        ss = s.sp_session.as_secs() / 60,
        fr = s.free_riders * 100.0,
        ttl = s.ttl,
        target = s.target,
    )
}

/// One run's tables.
fn render(s: &Settings, command: &str, table: &str, notes: &str) -> String {
    format!(
        "## {title}

```text
cargo run --release -p topology --features sim --example scale -- {command}
```

Seed {seed}; {llo}–{lhi} leaves per super-peer; {q} queries per strategy; after each strategy,
until its dynamic queries end.{classes}{bits}

| super-peers | strategy | class | with matches | matches | msgs/query | vs flood | bytes/query | found | recall | recall@{target} | first | target |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{table}
| super-peers | leaves | files shared | mean degree | route setup | route msgs /SP/min | route bytes /SP/min | wall time | peak RSS |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{notes}
",
        title = s.title,
        seed = s.seed,
        llo = s.leaves.0,
        lhi = s.leaves.1,
        q = s.queries,
        target = s.target,
        classes = match s.classes.as_slice() {
            [Class::Popular, Class::Rare] => String::new(),
            c => format!(
                " Queries: {}.",
                c.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
            ),
        },
        bits = match s.route_bits == topology::routing::TABLE_BITS {
            true => String::new(),
            false => format!(" Route tables of 2^{} slots.", s.route_bits),
        },
    )
}
