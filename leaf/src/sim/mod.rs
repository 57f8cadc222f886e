//! A swarm simulator that runs the real transfer code in virtual time: one seeder and N
//! leechers of one file, each leecher's download driven by the real [`SourceSession`]s over
//! one real [`Scheduler`], with the real peer-set rotation ([`Rotation`]), and each node's
//! uploads by the real [`UploadSession`]s under the real choking rules ([`UploadSlots`]:
//! tit-for-tat by [`Reciprocity`], the optimistic slot, the per-file cap), super-seeding
//! ([`Spread`]) and source exchange ([`SwarmPeers`]).
//!
//! What is simulated instead of real:
//! - **The network.** Each node has an upload link and a download link of a set rate, and a
//!   one-way latency; a message leaves the sender's link, travels both latencies, and passes
//!   the receiver's link. The upload link takes turns between the connections with something
//!   to send, as TCP connections share a capped interface ([`link`]); the download link is a
//!   FIFO of whole messages. Connecting takes two round trips (TCP, then Noise).
//! - **The disk and the hashing.** A chunk is verified and written the moment it arrives, and
//!   its bytes are zeros made at delivery (the sessions check lengths, not content).
//! - **The super-peers.** A tracker: a leecher registers when its download starts (as a leaf
//!   registers its partial file), and a search answers after a set delay with up to
//!   [`SwarmConfig::tracker_hits`] registered nodes, in random order.
//! - **The drivers.** [`download`] and [`upload`] follow `leaf::download::run` and
//!   `leaf::upload` step by step (their drain rules, the re-query schedule, retry back-off,
//!   Have and bitfield updates, source-exchange timing), without tasks or sockets.
//!
//! [`run`] returns a [`SwarmReport`]; `leaf/examples/swarm.rs` runs the settings of issue 21
//! and writes `docs/swarm-scale.md`.

mod download;
mod link;
mod upload;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use wire::{Bitfield, FileId, Message, NodeId};

use crate::download::DownloadOptions;
use crate::slots::UploadSlots;
use crate::swarm::{Reciprocity, SwarmPeers};

pub use download::Dl;

/// A swarm to simulate.
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Leechers (the seeder is one more node).
    pub leechers: usize,
    /// The file's size in bytes.
    pub size: u64,
    /// The seeder's upload rate, bytes per second.
    pub seed_up: f64,
    /// Each leecher's upload rate, bytes per second.
    pub leech_up: f64,
    /// Each node's download rate, bytes per second (None: not limited).
    pub down: Option<f64>,
    /// Each node's one-way latency is drawn from this range (a link's is the sum of its two
    /// ends').
    pub latency: (Duration, Duration),
    /// Leechers start at random within this long of the first.
    pub start_within: Duration,
    /// The share of leechers that leave the moment they finish.
    pub leave_when_done: f64,
    /// The share of leechers that go offline once, at a random time before they finish, and
    /// come back [`SwarmConfig::away`] later, resuming with the chunks they kept.
    pub restart: f64,
    /// How long a restarting leecher stays away.
    pub away: Duration,
    /// Upload slots per node (`--upload-slots`).
    pub upload_slots: usize,
    /// Downloaders served one file at once per node (`--max-downloaders-per-file`).
    pub max_downloaders_per_file: usize,
    /// The downloads' settings (`--max-peers` is `max_sources`).
    pub opts: DownloadOptions,
    /// Sources one search answers with at most.
    pub tracker_hits: usize,
    /// How long a search takes to answer.
    pub search_delay: Duration,
    /// Randomness (latencies, start times, churn, the schedulers' starting points).
    pub seed: u64,
    /// The simulation stops at this virtual time, done or not.
    pub limit: Duration,
}

impl SwarmConfig {
    /// Issue 21's real-process setting: a 32 MiB file, every node's upload 8 Mbit/s, downloads
    /// not limited, `leechers` leechers, the node's default settings.
    pub fn issue21(leechers: usize) -> Self {
        let r = 8e6 / 8.0;
        SwarmConfig {
            leechers,
            size: 32 << 20,
            seed_up: r,
            leech_up: r,
            down: None,
            latency: (Duration::from_millis(5), Duration::from_millis(40)),
            start_within: Duration::from_millis(500),
            leave_when_done: 0.0,
            restart: 0.0,
            away: Duration::from_secs(10),
            upload_slots: crate::node::NodeConfig::new("").upload_slots,
            max_downloaders_per_file: crate::node::NodeConfig::new("").max_downloaders_per_file,
            opts: DownloadOptions::default(),
            tracker_hits: 200,
            search_delay: Duration::from_millis(150),
            seed: 1,
            limit: Duration::from_secs(3600),
        }
    }

    /// The least time in which every leecher can have the file:
    /// max(F/u_seed, F/d, N·F/(u_seed + Σ u_leechers)). The seeder must send every byte once,
    /// every leecher must receive the file, and all N copies come out of the swarm's upload.
    pub fn bound(&self) -> Duration {
        let f = self.size as f64;
        let n = self.leechers as f64;
        let mut b = (f / self.seed_up).max(n * f / (self.seed_up + n * self.leech_up));
        if let Some(d) = self.down {
            b = b.max(f / d);
        }
        Duration::from_secs_f64(b)
    }
}

/// What a simulation found.
#[derive(Debug, Clone)]
pub struct SwarmReport {
    /// The lower bound ([`SwarmConfig::bound`]).
    pub bound: Duration,
    /// When each leecher finished, from the first start (None: not within the limit).
    pub finished: Vec<Option<Duration>>,
    /// Bytes the seeder uploaded.
    pub seeder_sent: u64,
    /// Bytes all nodes uploaded.
    pub total_sent: u64,
    /// The most connections to other nodes one node held at once (both directions, those
    /// being refused included).
    pub max_sockets: usize,
    /// The largest peer set of one node at once: its sources, and the downloaders admitted
    /// for the file (bounded by `max_sources` + `max_downloaders_per_file`).
    pub max_peer_set: usize,
    /// Sources a download let go as hostile: the real rules found the simulated peers lying,
    /// which is a fault of the simulator (none expected).
    pub hostile: Vec<String>,
    /// Events processed.
    pub events: u64,
    /// Chunk bytes all nodes put on their upload links, by second.
    pub sent_by_second: Vec<u64>,
    /// The file's size.
    pub size: u64,
}

impl SwarmReport {
    /// When the last leecher finished (None if one did not).
    pub fn all_done(&self) -> Option<Duration> {
        self.finished
            .iter()
            .copied()
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()
    }

    /// All-done time over the bound.
    pub fn over_bound(&self) -> Option<f64> {
        Some(self.all_done()?.as_secs_f64() / self.bound.as_secs_f64())
    }

    /// The seeder's upload over the file's size.
    pub fn seeder_copies(&self) -> f64 {
        self.seeder_sent as f64 / self.size as f64
    }

    /// The `q`-quantile (0 to 1) of the finishing times of the leechers that finished.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let mut t: Vec<Duration> = self.finished.iter().flatten().copied().collect();
        t.sort();
        let i = ((t.len() as f64 - 1.0) * q).round() as usize;
        t.get(i).copied()
    }
}

/// A message in flight: chunk bytes are made only when it arrives.
#[derive(Debug)]
pub(crate) enum Msg {
    M(Message),
    Chunk { request: u32, index: u32, len: u32 },
}

impl Msg {
    /// Bytes on the wire, roughly (frame, encryption tag and CBOR header included).
    fn size(&self) -> u64 {
        match self {
            Msg::Chunk { len, .. } => *len as u64 + 64,
            Msg::M(Message::Bitfield { bits, .. }) => bits.len() as u64 + 64,
            Msg::M(Message::Peers { addrs, .. }) => addrs.len() as u64 * 20 + 64,
            Msg::M(_) => 64,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Ev {
    Start(usize),
    /// A message reached the receiver's download link.
    Arrive {
        conn: usize,
        to_up: bool,
        msg: Msg,
    },
    /// It passed the link: the receiver reads it.
    Deliver {
        conn: usize,
        to_up: bool,
        msg: Msg,
    },
    /// Node `node`'s upload link ended a turn (if `gen` is still its latest).
    TurnDone {
        node: usize,
        gen: u64,
    },
    /// The other end of `conn` closed.
    Closed {
        conn: usize,
        to_up: bool,
    },
    /// Node `node`'s dial of its source `src` is done (or failed). Events of a download
    /// carry its `epoch`: one a node's earlier download left is ignored.
    Connected {
        node: usize,
        src: usize,
        epoch: u64,
    },
    /// Node `node`'s download looks at the time (if `gen` is still its latest wake).
    Wake {
        node: usize,
        gen: u64,
        epoch: u64,
    },
    /// Upload connection `conn` looks at the time.
    UpWake {
        conn: usize,
        gen: u64,
    },
    /// Node `node`'s search answers.
    Found {
        node: usize,
        epoch: u64,
    },
    Leave(usize),
    Return(usize),
}

struct Item {
    at: Duration,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Item {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Item {}
impl PartialOrd for Item {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Item {
    /// Earliest first out of the (max-)heap.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// One node: its links, its upload side, the chunks it holds, and its download.
pub(crate) struct Node {
    pub(crate) id: NodeId,
    pub(crate) addr: SocketAddr,
    up: f64,
    down: Option<f64>,
    lat: Duration,
    uplink: link::Uplink,
    down_free: Duration,
    pub(crate) slots: UploadSlots,
    pub(crate) reciprocity: Arc<Reciprocity>,
    pub(crate) spread: transfer::view::Spread,
    pub(crate) swarm_peers: SwarmPeers,
    /// Verified chunks held.
    pub(crate) has: Bitfield,
    /// Shares the whole file (the seeder); others serve it as a partial file.
    pub(crate) seeder: bool,
    pub(crate) online: bool,
    pub(crate) download: Option<Dl>,
    /// How many downloads the node started (one more each time it comes back).
    pub(crate) epoch: u64,
    pub(crate) done_at: Option<Duration>,
    /// Upload connections open here.
    pub(crate) uploads: Vec<usize>,
    pub(crate) uploaded: u64,
    sockets: usize,
    max_sockets: usize,
    /// Incoming connections not admitted for the file (yet): refused ones, and those that
    /// have not asked for it.
    unadmitted: usize,
    max_peer_set: usize,
    leaves_when_done: bool,
    restart_at: Option<Duration>,
}

/// One connection from a downloader to a source.
pub(crate) struct Conn {
    pub(crate) down: usize,
    pub(crate) up: usize,
    /// The source's number in the downloader's download.
    pub(crate) src: usize,
    pub(crate) session: transfer::UploadSession,
    pub(crate) slot_conn: u64,
    /// The chunks the downloader was told the uploader holds (a partial file).
    pub(crate) subscribed: Option<Bitfield>,
    pub(crate) pex: Option<Duration>,
    pub(crate) admitted: bool,
    pub(crate) open_down: bool,
    pub(crate) open_up: bool,
    pub(crate) up_gen: u64,
}

/// The simulation.
pub struct Sim {
    pub(crate) cfg: SwarmConfig,
    pub(crate) rng: StdRng,
    pub(crate) base: Instant,
    pub(crate) now: Duration,
    queue: BinaryHeap<Item>,
    seq: u64,
    pub(crate) nodes: Vec<Node>,
    pub(crate) conns: Vec<Conn>,
    /// Nodes registered with the "super-peers" as holding the file (whole or partly).
    pub(crate) tracker: Vec<usize>,
    pub(crate) by_addr: HashMap<SocketAddr, usize>,
    pub(crate) file: FileId,
    pub(crate) count: u64,
    pub(crate) chunk: u64,
    pub(crate) hostile: Vec<String>,
    events: u64,
    pub(crate) sent_by_second: Vec<u64>,
}

/// Runs the swarm `cfg` describes to the end (every leecher done) or its time limit.
pub fn run(cfg: SwarmConfig) -> SwarmReport {
    let mut sim = Sim::new(cfg);
    sim.run();
    sim.report()
}

impl Sim {
    /// The swarm at time zero, leechers' starts scheduled.
    pub fn new(cfg: SwarmConfig) -> Self {
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let chunk = wire::content::chunk_size_for(cfg.size) as u64;
        let count = wire::content::chunk_count(cfg.size, chunk as u32);
        let mut file = [0u8; 32];
        rng.fill(&mut file);
        let mut nodes = Vec::new();
        let mut by_addr = HashMap::new();
        for i in 0..=cfg.leechers {
            let mut id = [0u8; 32];
            id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            let ip = Ipv4Addr::from(0x0a00_0000 + i as u32 + 1);
            let addr = SocketAddr::new(ip.into(), 7000);
            by_addr.insert(addr, i);
            let lat = rng.random_range(cfg.latency.0..=cfg.latency.1);
            let reciprocity: Arc<Reciprocity> = Arc::default();
            let seeder = i == 0;
            nodes.push(Node {
                id: NodeId(id),
                addr,
                up: if seeder { cfg.seed_up } else { cfg.leech_up },
                down: cfg.down,
                lat,
                uplink: link::Uplink::default(),
                down_free: Duration::ZERO,
                slots: UploadSlots::new(cfg.upload_slots, reciprocity.clone())
                    .with_per_file(cfg.max_downloaders_per_file),
                reciprocity,
                spread: transfer::view::Spread::with_seed(cfg.seed ^ (i as u64 + 7)),
                swarm_peers: SwarmPeers::default(),
                has: if seeder {
                    Bitfield::full(count)
                } else {
                    Bitfield::new(count)
                },
                seeder,
                online: true,
                download: None,
                epoch: 0,
                done_at: None,
                uploads: Vec::new(),
                uploaded: 0,
                sockets: 0,
                max_sockets: 0,
                unadmitted: 0,
                max_peer_set: 0,
                leaves_when_done: !seeder && rng.random_bool(cfg.leave_when_done.clamp(0.0, 1.0)),
                restart_at: None,
            });
        }
        let mut sim = Sim {
            rng,
            base: Instant::now(),
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes,
            conns: Vec::new(),
            tracker: vec![0],
            by_addr,
            file: FileId(file),
            count,
            chunk,
            hostile: Vec::new(),
            events: 0,
            sent_by_second: Vec::new(),
            cfg,
        };
        let bound = sim.cfg.bound();
        for i in 1..=sim.cfg.leechers {
            let start = sim.rng.random_range(Duration::ZERO..=sim.cfg.start_within);
            sim.at(start, Ev::Start(i));
            if sim.rng.random_bool(sim.cfg.restart.clamp(0.0, 1.0)) {
                // Away once, at a time it is likely still downloading.
                let when = start + bound.mul_f64(sim.rng.random_range(0.1..0.8));
                sim.nodes[i].restart_at = Some(when);
                sim.at(when, Ev::Leave(i));
            }
        }
        sim
    }

    /// Processes events until every leecher is done or the limit.
    pub fn run(&mut self) {
        while let Some(item) = self.queue.pop() {
            if item.at > self.cfg.limit {
                break;
            }
            self.now = self.now.max(item.at);
            self.events += 1;
            self.handle(item.ev);
            if self.nodes[1..].iter().all(|n| n.done_at.is_some()) {
                break;
            }
        }
    }

    /// What happened.
    pub fn report(&self) -> SwarmReport {
        SwarmReport {
            bound: self.cfg.bound(),
            finished: self.nodes[1..].iter().map(|n| n.done_at).collect(),
            seeder_sent: self.nodes[0].uploaded,
            total_sent: self.nodes.iter().map(|n| n.uploaded).sum(),
            max_sockets: self.nodes.iter().map(|n| n.max_sockets).max().unwrap_or(0),
            max_peer_set: self.nodes.iter().map(|n| n.max_peer_set).max().unwrap_or(0),
            hostile: self.hostile.clone(),
            events: self.events,
            sent_by_second: self.sent_by_second.clone(),
            size: self.cfg.size,
        }
    }

    /// The virtual clock as an `Instant`, for the real rules.
    pub(crate) fn instant(&self) -> Instant {
        self.base + self.now
    }

    pub(crate) fn at(&mut self, at: Duration, ev: Ev) {
        self.seq += 1;
        self.queue.push(Item {
            at: at.max(self.now),
            seq: self.seq,
            ev,
        });
    }

    fn handle(&mut self, ev: Ev) {
        match ev {
            Ev::Start(n) => self.start(n),
            Ev::Arrive { conn, to_up, msg } => {
                let to = if to_up {
                    self.conns[conn].up
                } else {
                    self.conns[conn].down
                };
                let node = &mut self.nodes[to];
                match node.down {
                    None => self.deliver(conn, to_up, msg),
                    Some(rate) => {
                        let done = node.down_free.max(self.now)
                            + Duration::from_secs_f64(msg.size() as f64 / rate);
                        node.down_free = done;
                        self.at(done, Ev::Deliver { conn, to_up, msg });
                    }
                }
            }
            Ev::Deliver { conn, to_up, msg } => self.deliver(conn, to_up, msg),
            Ev::TurnDone { node, gen } => {
                if self.nodes[node].uplink.gen == gen {
                    self.turn_done(node);
                }
            }
            Ev::Closed { conn, to_up } => {
                if to_up {
                    if self.conns[conn].open_up {
                        self.conns[conn].session.handle_closed(None);
                        self.pump(conn);
                    }
                } else if self.conns[conn].open_down {
                    let (n, src) = (self.conns[conn].down, self.conns[conn].src);
                    self.with_download(n, |_, dl| dl.closed(src));
                }
            }
            Ev::Connected { node, src, epoch } if epoch == self.nodes[node].epoch => {
                self.with_download(node, |sim, dl| dl.connected(sim, node, src))
            }
            Ev::Wake { node, gen, epoch } if epoch == self.nodes[node].epoch => {
                let current = self.nodes[node]
                    .download
                    .as_ref()
                    .is_some_and(|d| d.wake_gen == gen);
                if current {
                    self.with_download(node, |sim, dl| dl.tick(sim));
                }
            }
            Ev::UpWake { conn, gen } => {
                let c = &mut self.conns[conn];
                if c.open_up && c.up_gen == gen {
                    c.session.handle_timeout(self.base + self.now);
                    self.pump(conn);
                }
            }
            Ev::Found { node, epoch } if epoch == self.nodes[node].epoch => {
                self.with_download(node, |sim, dl| dl.found(sim, node))
            }
            // Left by a download that is over (the node went away since).
            Ev::Connected { .. } | Ev::Wake { .. } | Ev::Found { .. } => {}
            Ev::Leave(n) => self.leave(n),
            Ev::Return(n) => {
                self.nodes[n].online = true;
                if self.nodes[n].done_at.is_none() {
                    self.start(n);
                } else {
                    self.tracker.push(n);
                }
            }
        }
    }

    fn deliver(&mut self, conn: usize, to_up: bool, msg: Msg) {
        if to_up {
            if !self.conns[conn].open_up {
                return;
            }
            let Msg::M(m) = msg else {
                unreachable!("downloaders send no chunks")
            };
            let now = self.instant();
            self.conns[conn].session.handle_message(now, m);
            self.pump(conn);
        } else {
            if !self.conns[conn].open_down {
                return;
            }
            let (n, src) = (self.conns[conn].down, self.conns[conn].src);
            let m = match msg {
                Msg::M(m) => m,
                Msg::Chunk {
                    request,
                    index,
                    len,
                } => Message::Chunk(wire::ChunkMsg {
                    request,
                    id: self.file,
                    index,
                    data: vec![0; len as usize],
                }),
            };
            self.with_download(n, |sim, dl| dl.message(sim, n, src, m));
        }
    }

    /// Runs `f` on node `n`'s download (taken out of the node meanwhile), if it has one.
    pub(crate) fn with_download(&mut self, n: usize, f: impl FnOnce(&mut Sim, &mut Dl)) {
        let Some(mut dl) = self.nodes[n].download.take() else {
            return;
        };
        f(self, &mut dl);
        dl.after(self, n);
        if self.nodes[n].online && self.nodes[n].done_at.is_none() {
            self.nodes[n].download = Some(dl);
        }
    }

    /// Sends `msg` over `conn`: through the sender's upload link (in turns with its other
    /// connections), both latencies, and the receiver's download link, in order.
    pub(crate) fn send(&mut self, conn: usize, to_up: bool, msg: Msg) {
        let c = &self.conns[conn];
        // The other end closed: the socket takes nothing more.
        if (to_up && !c.open_up) || (!to_up && !c.open_down) {
            return;
        }
        let from = if to_up { c.down } else { c.up };
        if self.nodes[from].uplink.push((conn, to_up), msg) {
            self.next_turn(from);
        }
    }

    /// Node `n`'s upload link starts its next turn, if anything waits.
    fn next_turn(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let Some((bytes, chunk)) = node.uplink.start(node.up) else {
            return;
        };
        let gen = node.uplink.gen;
        let end = self.now + Duration::from_secs_f64(bytes as f64 / node.up);
        if chunk {
            let s = end.as_secs() as usize;
            if self.sent_by_second.len() <= s {
                self.sent_by_second.resize(s + 1, 0);
            }
            self.sent_by_second[s] += bytes;
        }
        self.at(end, Ev::TurnDone { node: n, gen });
    }

    /// Node `n`'s link ended a turn: a message it finished travels on, and the next turn
    /// starts.
    fn turn_done(&mut self, n: usize) {
        if let Some(((conn, to_up), msg)) = self.nodes[n].uplink.finish() {
            let c = &self.conns[conn];
            let to = if to_up { c.up } else { c.down };
            let arrive = self.now + self.nodes[n].lat + self.nodes[to].lat;
            self.at(arrive, Ev::Arrive { conn, to_up, msg });
        }
        self.next_turn(n);
    }

    /// The downloader's side of `conn` closed: nobody reads what the uploader still sends.
    pub(crate) fn close_down(&mut self, conn: usize) {
        let c = &mut self.conns[conn];
        c.open_down = false;
        let (down, up) = (c.down, c.up);
        self.socket_closed(down, false);
        self.nodes[up].uplink.drop_flow((conn, false));
    }

    /// One side of `conn` closed: the other hears of it after the latency.
    pub(crate) fn notify_closed(&mut self, conn: usize, to_up: bool) {
        let c = &self.conns[conn];
        let lat = self.nodes[c.down].lat + self.nodes[c.up].lat;
        self.at(self.now + lat, Ev::Closed { conn, to_up });
    }

    /// How long dialling from `a` to `b` takes: TCP's and Noise's round trips.
    pub(crate) fn dial_time(&self, a: usize, b: usize) -> Duration {
        (self.nodes[a].lat + self.nodes[b].lat) * 4
    }

    /// Node `n` opened a connection (`incoming`: not admitted for the file yet).
    pub(crate) fn socket_opened(&mut self, n: usize, incoming: bool) {
        let node = &mut self.nodes[n];
        node.sockets += 1;
        node.unadmitted += incoming as usize;
        node.max_sockets = node.max_sockets.max(node.sockets);
    }

    /// An incoming connection of node `n` was admitted for the file.
    pub(crate) fn socket_admitted(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.unadmitted -= 1;
        node.max_peer_set = node.max_peer_set.max(node.sockets - node.unadmitted);
    }

    /// Node `n` closed a connection (`unadmitted`: an incoming one never admitted).
    pub(crate) fn socket_closed(&mut self, n: usize, unadmitted: bool) {
        let node = &mut self.nodes[n];
        node.sockets -= 1;
        node.unadmitted -= unadmitted as usize;
    }

    /// Leecher `n` starts (or resumes) its download and registers with the tracker.
    fn start(&mut self, n: usize) {
        if !self.nodes[n].online || self.nodes[n].done_at.is_some() {
            return;
        }
        if !self.tracker.contains(&n) {
            self.tracker.push(n);
        }
        self.nodes[n].epoch += 1;
        let seed = self.cfg.seed ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let dl = Dl::new(self, n, seed);
        self.nodes[n].download = Some(dl);
        // The first search goes out at once (`Dl::after`).
        self.with_download(n, |_, _| {});
    }

    /// Up to `tracker_hits` registered nodes other than `n`, in random order.
    pub(crate) fn search(&mut self, n: usize) -> Vec<usize> {
        let mut found: Vec<usize> = self.tracker.iter().copied().filter(|&t| t != n).collect();
        found.shuffle(&mut self.rng);
        found.truncate(self.cfg.tracker_hits);
        found
    }

    /// Node `n` goes offline: every connection of it closes, its download stops (keeping its
    /// chunks), and a restarting leecher comes back later.
    fn leave(&mut self, n: usize) {
        // The seeder stays: churn is the leechers'.
        if !self.nodes[n].online || n == 0 {
            return;
        }
        self.nodes[n].online = false;
        self.nodes[n].uplink.clear();
        self.tracker.retain(|&t| t != n);
        let uploads = std::mem::take(&mut self.nodes[n].uploads);
        for c in uploads {
            if self.conns[c].open_up {
                self.close_up(c, false);
                self.notify_closed(c, false);
            }
        }
        if let Some(mut dl) = self.nodes[n].download.take() {
            dl.drop_all(self, n);
        }
        let gone_for_good = self.nodes[n].leaves_when_done && self.nodes[n].done_at.is_some();
        if let Some(back) = self.nodes[n].restart_at.take().filter(|_| !gone_for_good) {
            let at = self.now.max(back) + self.cfg.away;
            self.at(at, Ev::Return(n));
        }
    }
}

#[cfg(test)]
mod tests;
