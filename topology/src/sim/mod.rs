//! A deterministic simulator of whole overlays in virtual time, running the real state machines
//! ([`SuperPeer`], [`LeafOverlay`]) with no sockets and no clock.
//!
//! A discrete-event loop always takes the earliest event (message deliveries after a latency
//! drawn per link, dial results, timers). Everything random (latencies, capabilities, churn)
//! comes from one seed, so a failing run is repeated exactly by its seed. Role changes are
//! carried out as a node would: a leaf that says `Promote` gets a super-peer machine with its
//! role history and host cache; a super-peer that says `Demote` becomes a leaf again.
//!
//! For search studies, a super-peer can be given *stub leaves*
//! ([`Sim::attach_stub_leaf`]): a connection that says Hello as a leaf, registers files, answers
//! pings, and records the hits of the queries it sends ([`Sim::stub_query`]) in
//! [`Sim::queries`], with the query and hit messages (and their encoded bytes) each query
//! caused. A search oracle ([`Sim::set_search`]) answers the super-peers' `Search` events from
//! whatever index the study keeps. The super-peers themselves are the real machines.
//!
//! Used by the overlay tests (`topology/tests/sim.rs`), the search tests, and the scale study
//! (`cargo run --release -p topology --features sim --example scale`).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{Capability, FileId, FileRecord, Hello, Message, NodeId, Query, QueryId, Role, Search};

use crate::leaf::{LeafConfig, LeafEvent, LeafOverlay};
use crate::role::{Handover, NodeRole, RoleClock, RoleConfig};
use crate::routing::TablePool;
use crate::superpeer::{Config, Event, SuperPeer};
use crate::ConnId;

mod check;

/// A small, fast, seedable generator (SplitMix64): enough for simulation, not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// Settings of a simulation.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed everything random is drawn from.
    pub seed: u64,
    /// One-way message latency, drawn per link between these bounds.
    pub latency: (Duration, Duration),
    /// Leaves' settings.
    pub leaf: LeafConfig,
    /// Super-peers' settings (promoted ones may demote; dedicated ones never do).
    pub superpeer: Config,
    /// Role hysteresis.
    pub role: RoleConfig,
    /// Share of joining leaves that may be promoted.
    pub capable_share: f64,
    /// Share of joining leaves behind a NAT that drops unsolicited inbound connections (a
    /// home router): nobody can dial them, and a super-peer's reachability check fails. They
    /// dial out as everyone does. (Cone or symmetric makes no difference here: the kind of
    /// NAT matters to transfers, which the overlay does not carry.)
    pub nat_share: f64,
}

/// What a simulated node runs.
#[derive(Debug)]
pub enum Machine {
    /// A leaf.
    Leaf(Box<LeafOverlay>),
    /// A super-peer.
    SuperPeer(Box<SuperPeer>),
    /// A stub leaf on this connection of its super-peer-facing side (see the module docs).
    Stub(ConnId),
    /// Crashed or gone.
    Down,
}

/// What happened to one query sent by a stub leaf.
#[derive(Debug, Clone)]
pub struct QueryRecord {
    /// When the stub sent it.
    pub start: Instant,
    /// When its first hit arrived.
    pub first: Option<Instant>,
    /// When the stub had [`Sim::hit_target`] hits.
    pub target_at: Option<Instant>,
    /// Hits received.
    pub hits: u64,
    /// Each hit's (file, source node).
    pub found: Vec<(FileId, NodeId)>,
    /// The source nodes of the hits that said their source cannot be reached.
    pub unreachable: Vec<NodeId>,
    /// Query and hit messages delivered for it, on every link.
    pub messages: u64,
    /// Their encoded size in bytes (frame included).
    pub bytes: u64,
    /// Of the messages, query copies (the rest are hits).
    pub query_messages: u64,
}

/// The search oracle: answers super-peer `node`'s search with (leaf connection, file, score).
pub type SearchFn = Box<dyn FnMut(usize, &Search) -> Vec<(ConnId, FileRecord, f32)>>;

/// One simulated node.
#[derive(Debug)]
pub struct SimNode {
    /// Its address (where it would listen).
    pub addr: SocketAddr,
    /// A dedicated super-peer (never demotes).
    pub dedicated: bool,
    /// What it runs now.
    pub machine: Machine,
    /// Its role changes: when, and to what.
    pub changes: Vec<(Instant, NodeRole)>,
    /// When it joined.
    pub joined: Instant,
    /// Behind a NAT: unsolicited inbound connections are dropped ([`SimConfig::nat_share`]).
    /// A stub leaf may be put behind one as it is attached (before its super-peer checks it).
    pub behind_nat: bool,
    upload_bps: u64,
}

impl SimNode {
    /// True unless crashed.
    pub fn alive(&self) -> bool {
        !matches!(self.machine, Machine::Down)
    }

    /// Its role, if alive.
    pub fn role(&self) -> Option<NodeRole> {
        match self.machine {
            Machine::Leaf(_) => Some(NodeRole::Leaf),
            Machine::SuperPeer(_) => Some(NodeRole::SuperPeer),
            Machine::Stub(_) | Machine::Down => None,
        }
    }
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: usize,
        conn: ConnId,
        msg: Message,
    },
    Connected {
        from: usize,
        conn: ConnId,
        addr: SocketAddr,
    },
    DialFailed {
        from: usize,
        addr: SocketAddr,
    },
    Closed {
        node: usize,
        conn: ConnId,
    },
    Reachable {
        node: usize,
        conn: ConnId,
        ok: bool,
    },
    /// A check made for a neighbour of `node` (over its connection `peer`) is done.
    ReachableFor {
        node: usize,
        peer: ConnId,
        token: u64,
        ok: bool,
    },
    Timer {
        node: usize,
        at: Instant,
    },
}

/// The simulated network; see the module docs.
pub struct Sim {
    /// Settings.
    pub config: SimConfig,
    /// Every node ever added, by index.
    pub nodes: Vec<SimNode>,
    now: Instant,
    start: Instant,
    rng: Rng,
    /// Pending events, earliest first (ties in the order they were scheduled).
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    addrs: HashMap<SocketAddr, usize>,
    /// (node, conn) → (peer node, peer conn, one-way latency).
    links: HashMap<(usize, ConnId), (usize, ConnId, Duration)>,
    next_conn: ConnId,
    /// Each node's one pending timer; earlier ones replace it, stale ones are skipped.
    timers: Vec<Option<Instant>>,
    /// Messages delivered so far.
    pub delivered: u64,
    /// Each node's connections (keys of `links`).
    conns_of: Vec<Vec<ConnId>>,
    search: Option<SearchFn>,
    /// Queries sent by stub leaves, and what came of them.
    pub queries: HashMap<QueryId, QueryRecord>,
    /// The hit count that sets [`QueryRecord::target_at`].
    pub hit_target: u64,
    /// Route messages (tables and patches) delivered, and their encoded bytes: of depth 0
    /// (own tables) and of depth 1 (aggregates).
    pub route_traffic: (u64, u64),
    /// Of them, those of depth 1.
    pub aggregate_traffic: (u64, u64),
    scratch: Vec<u8>,
    /// Neighbours' route tables, each distinct one held once.
    pool: TablePool,
}

/// An event in the queue, ordered by its time, then by when it was scheduled.
#[derive(Debug)]
struct Queued {
    at: Instant,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Queued {}

impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Queued {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl Sim {
    /// An empty network whose virtual clock starts at `start`.
    pub fn new(config: SimConfig, start: Instant) -> Self {
        Sim {
            rng: Rng::new(config.seed),
            config,
            nodes: Vec::new(),
            now: start,
            start,
            queue: BinaryHeap::new(),
            pool: TablePool::new(),
            seq: 0,
            addrs: HashMap::new(),
            links: HashMap::new(),
            next_conn: 1,
            timers: Vec::new(),
            delivered: 0,
            conns_of: Vec::new(),
            search: None,
            queries: HashMap::new(),
            hit_target: 150,
            route_traffic: (0, 0),
            aggregate_traffic: (0, 0),
            scratch: Vec::new(),
        }
    }

    /// What the simulator's own bookkeeping holds on the heap, roughly (capacities times entry
    /// sizes, hash tables counted at one control byte per bucket), and what the super-peers'
    /// copies of their neighbours' route tables take: a line to print.
    pub fn memory_report(&self) -> String {
        use std::mem::size_of;
        let map = |cap: usize, entry: usize| cap * (entry + 1);
        let queue = self.queue.capacity() * size_of::<Reverse<Queued>>();
        let links = map(
            self.links.capacity(),
            size_of::<((usize, ConnId), (usize, ConnId, Duration))>(),
        );
        let addrs = map(self.addrs.capacity(), size_of::<(SocketAddr, usize)>());
        let nodes = self.nodes.capacity() * size_of::<SimNode>();
        let conns: usize = self.conns_of.iter().map(|c| c.capacity() * 8 + 24).sum();
        let (mut remote, mut tables) = (0usize, 0usize);
        for (n, node) in self.nodes.iter().enumerate() {
            if let Machine::SuperPeer(s) = &node.machine {
                for &c in &self.conns_of[n] {
                    if let Some(t) = s.neighbour_table(c) {
                        remote += t.heap_bytes();
                        tables += 1;
                    }
                }
            }
        }
        format!(
            "sim queue {} KiB ({} in flight, capacity {}), links {} KiB, addrs {} KiB, nodes {} KiB, conn lists {} KiB; neighbour route tables {} KiB ({} tables, {} distinct lists)",
            queue >> 10,
            self.queue.len(),
            self.queue.capacity(),
            links >> 10,
            addrs >> 10,
            nodes >> 10,
            conns >> 10,
            remote >> 10,
            tables,
            self.pool.len()
        )
    }

    /// Makes room for `more` nodes at once (a large simulation that knows its size spares the
    /// doubling of its node lists).
    pub fn reserve_nodes(&mut self, more: usize) {
        self.nodes.reserve_exact(more);
        self.timers.reserve_exact(more);
        self.conns_of.reserve_exact(more);
    }

    /// Sets the search oracle (without one, searches find nothing).
    pub fn set_search(&mut self, f: SearchFn) {
        self.search = Some(f);
    }

    fn link(&mut self, a: usize, ca: ConnId, b: usize, cb: ConnId, lat: Duration) {
        self.links.insert((a, ca), (b, cb, lat));
        self.links.insert((b, cb), (a, ca, lat));
        self.conns_of[a].push(ca);
        self.conns_of[b].push(cb);
    }

    fn unlink(&mut self, n: usize, c: ConnId) -> Option<(usize, ConnId, Duration)> {
        let v = self.links.remove(&(n, c))?;
        if let Some(i) = self.conns_of[n].iter().position(|&x| x == c) {
            self.conns_of[n].swap_remove(i);
        }
        Some(v)
    }

    /// Attaches a stub leaf sharing `files` to super-peer `sp` (see the module docs); returns
    /// the stub's node index and its connection at the super-peer.
    pub fn attach_stub_leaf(&mut self, sp: usize, files: Vec<FileRecord>) -> (usize, ConnId) {
        let n = self.nodes.len();
        let addr = Self::addr_of(n);
        let (sc, tc) = (self.next_conn, self.next_conn + 1);
        self.next_conn += 2;
        self.push_node(addr, false, Machine::Stub(sc), NodeRole::Leaf);
        let lat = self.latency();
        self.link(n, sc, sp, tc, lat);
        let now = self.now;
        if let Machine::SuperPeer(s) = &mut self.nodes[sp].machine {
            s.handle_connect(now, tc, addr, false);
        }
        let hello = Hello::new(Self::id(n), Role::Leaf, Some(addr), "sim-stub");
        for msg in [Message::Hello(hello), Message::Register { files }] {
            self.schedule(
                now + lat,
                Ev::Deliver {
                    to: sp,
                    conn: tc,
                    msg,
                },
            );
        }
        self.after(sp);
        (n, tc)
    }

    /// Stub leaf `n` sends `query` to its super-peer; what comes of it is kept in
    /// [`Sim::queries`].
    pub fn stub_query(&mut self, n: usize, query: Query) {
        let Machine::Stub(sc) = self.nodes[n].machine else {
            return;
        };
        let Some(&(peer, pconn, lat)) = self.links.get(&(n, sc)) else {
            return;
        };
        self.queries.insert(
            query.id,
            QueryRecord {
                start: self.now,
                first: None,
                target_at: None,
                hits: 0,
                found: Vec::new(),
                unreachable: Vec::new(),
                messages: 0,
                bytes: 0,
                query_messages: 0,
            },
        );
        let msg = Message::Query(query);
        self.schedule(
            self.now + lat,
            Ev::Deliver {
                to: peer,
                conn: pconn,
                msg,
            },
        );
    }

    /// Counts a delivered message against its query, or as route traffic.
    fn account(&mut self, msg: &Message) {
        let id = match msg {
            Message::Query(q) => q.id,
            Message::QueryHits(h) => h.query,
            Message::RouteTable { depth, .. } | Message::RoutePatch { depth, .. } => {
                self.scratch.clear();
                wire::encode(msg, &mut self.scratch);
                let len = self.scratch.len() as u64;
                self.route_traffic.0 += 1;
                self.route_traffic.1 += len;
                if *depth > 0 {
                    self.aggregate_traffic.0 += 1;
                    self.aggregate_traffic.1 += len;
                }
                return;
            }
            _ => return,
        };
        if let Some(r) = self.queries.get_mut(&id) {
            self.scratch.clear();
            wire::encode(msg, &mut self.scratch);
            r.messages += 1;
            r.bytes += self.scratch.len() as u64;
            r.query_messages += u64::from(matches!(msg, Message::Query(_)));
        }
    }

    /// A message for stub leaf `n`.
    fn stub_message(&mut self, n: usize, conn: ConnId, msg: Message) {
        match msg {
            Message::Ping { nonce } => {
                if let Some(&(peer, pconn, lat)) = self.links.get(&(n, conn)) {
                    let msg = Message::Pong { nonce };
                    self.schedule(
                        self.now + lat,
                        Ev::Deliver {
                            to: peer,
                            conn: pconn,
                            msg,
                        },
                    );
                }
            }
            Message::QueryHits(h) => {
                let (now, target) = (self.now, self.hit_target);
                if let Some(r) = self.queries.get_mut(&h.query) {
                    r.first.get_or_insert(now);
                    r.hits += h.hits.len() as u64;
                    if r.hits >= target && r.target_at.is_none() {
                        r.target_at = Some(now);
                    }
                    r.found
                        .extend(h.hits.iter().map(|h| (h.file.id, h.source.node)));
                    r.unreachable.extend(
                        h.hits
                            .iter()
                            .filter(|h| h.source.reachable == Some(false))
                            .map(|h| h.source.node),
                    );
                }
            }
            _ => {}
        }
    }

    /// The virtual time now.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The random generator (for churn decisions in tests).
    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// The node id of node `n`.
    pub fn id(n: usize) -> NodeId {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&(n as u64 + 1).to_be_bytes());
        NodeId(b)
    }

    fn addr_of(n: usize) -> SocketAddr {
        let n = n as u32 + 1;
        SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 7700))
    }

    /// Adds a dedicated super-peer that knows `seeds`; returns its index.
    pub fn add_superpeer(&mut self, seeds: &[SocketAddr]) -> usize {
        let n = self.nodes.len();
        let addr = Self::addr_of(n);
        let clock = RoleClock::new(self.now, NodeRole::SuperPeer, self.config.role);
        let cfg = Config {
            can_demote: false,
            ..self.config.superpeer.clone()
        };
        let mut sp = SuperPeer::new(self.now, Self::id(n), Some(addr), cfg, clock);
        sp.add_seeds(self.now, seeds);
        self.push_node(
            addr,
            true,
            Machine::SuperPeer(Box::new(sp)),
            NodeRole::SuperPeer,
        );
        n
    }

    /// Adds a leaf that knows `seeds`; whether it may be promoted is drawn from the seed
    /// (`capable_share`). Returns its index.
    pub fn add_leaf(&mut self, seeds: &[SocketAddr]) -> usize {
        let capable = self.rng.chance(self.config.capable_share);
        // Drawn only when some leaves are behind NAT, so that runs without keep their seeds'
        // sequences.
        let behind_nat = self.config.nat_share > 0.0 && self.rng.chance(self.config.nat_share);
        let n = self.add_leaf_with(seeds, capable);
        self.nodes[n].behind_nat = behind_nat;
        n
    }

    /// Adds a leaf that knows `seeds` and may (or may not) be promoted.
    pub fn add_leaf_with(&mut self, seeds: &[SocketAddr], capable: bool) -> usize {
        let n = self.nodes.len();
        let addr = Self::addr_of(n);
        let clock = RoleClock::new(self.now, NodeRole::Leaf, self.config.role);
        let cfg = LeafConfig {
            can_promote: capable,
            ..self.config.leaf.clone()
        };
        let mut leaf = LeafOverlay::new(self.now, Self::id(n), Some(addr), cfg, clock);
        leaf.add_seeds(self.now, seeds);
        self.push_node(addr, false, Machine::Leaf(Box::new(leaf)), NodeRole::Leaf);
        self.nodes[n].upload_bps = 100_000 + self.rng.below(10_000_000);
        n
    }

    fn push_node(&mut self, addr: SocketAddr, dedicated: bool, machine: Machine, role: NodeRole) {
        let n = self.nodes.len();
        self.nodes.push(SimNode {
            addr,
            dedicated,
            machine,
            changes: vec![(self.now, role)],
            joined: self.now,
            behind_nat: false,
            upload_bps: 0,
        });
        self.addrs.insert(addr, n);
        self.timers.push(None);
        self.conns_of.push(Vec::new());
        self.after(n);
    }

    /// Crashes node `n`: its connections break (peers see them close after the latency).
    pub fn crash(&mut self, n: usize) {
        self.nodes[n].machine = Machine::Down;
        let mut conns = std::mem::take(&mut self.conns_of[n]);
        conns.sort();
        for c in conns {
            let Some((peer, pc, lat)) = self.links.remove(&(n, c)) else {
                continue;
            };
            self.schedule(
                self.now + lat,
                Ev::Closed {
                    node: peer,
                    conn: pc,
                },
            );
        }
    }

    /// Addresses of live super-peers.
    pub fn superpeer_addrs(&self) -> Vec<SocketAddr> {
        self.nodes
            .iter()
            .filter(|n| n.role() == Some(NodeRole::SuperPeer))
            .map(|n| n.addr)
            .collect()
    }

    /// Runs every event up to `until`.
    pub fn run_until(&mut self, until: Instant) {
        while self.queue.peek().is_some_and(|Reverse(q)| q.at <= until) {
            let Some(Reverse(Queued { at, ev, .. })) = self.queue.pop() else {
                break;
            };
            self.now = at;
            self.apply(ev);
            // Give back what a burst took (a queue keeps its largest size otherwise).
            if self.queue.capacity() > 4096 && self.queue.len() < self.queue.capacity() / 8 {
                self.queue.shrink_to(self.queue.len() * 2);
            }
        }
        self.now = until;
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn latency(&mut self) -> Duration {
        let (lo, hi) = self.config.latency;
        let span = (hi - lo).as_micros() as u64;
        lo + Duration::from_micros(self.rng.below(span + 1))
    }

    fn apply(&mut self, ev: Ev) {
        let now = self.now;
        let node = match ev {
            Ev::Deliver { to, conn, msg } => {
                self.delivered += 1;
                self.account(&msg);
                let route = match msg {
                    Message::RouteTable { depth, .. } | Message::RoutePatch { depth, .. } => {
                        Some(depth)
                    }
                    _ => None,
                };
                match &mut self.nodes[to].machine {
                    Machine::Leaf(l) => l.handle_message(now, conn, msg),
                    Machine::SuperPeer(s) => {
                        s.handle_message(now, conn, msg);
                        // Every neighbour of a super-peer holds the same table: keep it once.
                        if let Some(depth) = route {
                            s.share_table(conn, depth, &mut self.pool);
                        }
                    }
                    Machine::Stub(_) => self.stub_message(to, conn, msg),
                    Machine::Down => {}
                }
                to
            }
            Ev::Connected { from, conn, addr } => {
                if !self.nodes[from].alive() {
                    return;
                }
                // A NAT drops what nobody inside asked for: the dial times out.
                let target = self
                    .addrs
                    .get(&addr)
                    .copied()
                    .filter(|&t| self.nodes[t].alive() && !self.nodes[t].behind_nat);
                let Some(target) = target else {
                    return self.apply(Ev::DialFailed { from, addr });
                };
                let lat = self.latency();
                let tconn = self.next_conn;
                self.next_conn += 1;
                self.link(from, conn, target, tconn, lat);
                let from_addr = self.nodes[from].addr;
                match &mut self.nodes[from].machine {
                    Machine::Leaf(l) => l.handle_connect(now, conn, addr),
                    Machine::SuperPeer(s) => s.handle_connect(now, conn, addr, true),
                    Machine::Stub(_) | Machine::Down => {}
                }
                match &mut self.nodes[target].machine {
                    Machine::SuperPeer(s) => s.handle_connect(now, tconn, from_addr, false),
                    // A leaf's listen port serves transfers: it answers Hello as a leaf.
                    _ => {
                        let hello = Hello::new(Self::id(target), Role::Leaf, Some(addr), "sim");
                        self.schedule(
                            now + lat,
                            Ev::Deliver {
                                to: from,
                                conn,
                                msg: Message::Hello(hello),
                            },
                        );
                    }
                }
                self.after(target);
                from
            }
            Ev::DialFailed { from, addr } => {
                match &mut self.nodes[from].machine {
                    Machine::Leaf(l) => l.handle_dial_failed(now, addr),
                    Machine::SuperPeer(s) => s.handle_dial_failed(now, addr),
                    Machine::Stub(_) | Machine::Down => {}
                }
                from
            }
            Ev::Closed { node, conn } => {
                self.unlink(node, conn);
                match &mut self.nodes[node].machine {
                    Machine::Leaf(l) => l.handle_disconnect(now, conn),
                    Machine::SuperPeer(s) => s.handle_disconnect(now, conn),
                    Machine::Stub(_) | Machine::Down => {}
                }
                node
            }
            Ev::Reachable { node, conn, ok } => {
                if let Machine::SuperPeer(s) = &mut self.nodes[node].machine {
                    s.handle_reachable(now, conn, ok);
                }
                node
            }
            Ev::ReachableFor {
                node,
                peer,
                token,
                ok,
            } => {
                if let Machine::SuperPeer(s) = &mut self.nodes[node].machine {
                    s.handle_checked_for(now, peer, token, Some(ok));
                }
                node
            }
            Ev::Timer { node, at } => {
                if self.timers[node] != Some(at) {
                    return; // replaced by an earlier timer
                }
                self.timers[node] = None;
                match &mut self.nodes[node].machine {
                    Machine::Leaf(l) => l.handle_timeout(now),
                    Machine::SuperPeer(s) => s.handle_timeout(now),
                    Machine::Stub(_) | Machine::Down => {}
                }
                node
            }
        };
        self.after(node);
    }

    /// The drain rule for node `n`, then its next timer.
    fn after(&mut self, n: usize) {
        let now = self.now;
        let uptime = now.duration_since(self.nodes[n].joined).as_secs();
        let upload_bps = self.nodes[n].upload_bps;
        if let Machine::Leaf(l) = &mut self.nodes[n].machine {
            l.set_capability(Capability {
                can_promote: true,
                uptime_s: uptime,
                upload_bps,
                free_fds: 10_000,
                free_mem_mb: 4096,
            });
        }
        enum Out {
            Dial(SocketAddr),
            Reach(ConnId),
            ReachFor(ConnId, u64, NodeId),
            Close(ConnId),
            Search(wire::QueryId, Search),
            Role(NodeRole),
        }
        let mut role_change = None;
        loop {
            // Take everything the machine has to say, then act on it.
            let mut outbox = VecDeque::new();
            let mut todo = Vec::new();
            match &mut self.nodes[n].machine {
                Machine::Leaf(l) => {
                    while let Some(t) = l.poll_transmit() {
                        outbox.push_back((t.to, t.msg));
                    }
                    while let Some(e) = l.poll_event() {
                        match e {
                            LeafEvent::Dial(addr) => todo.push(Out::Dial(addr)),
                            LeafEvent::Close { conn, .. } => todo.push(Out::Close(conn)),
                            LeafEvent::Promote { .. } => todo.push(Out::Role(NodeRole::SuperPeer)),
                            LeafEvent::Attached { .. }
                            | LeafEvent::Detached { .. }
                            | LeafEvent::Hits { .. }
                            // The simulation moves no chunks.
                            | LeafEvent::ConnectBack { .. }
                            | LeafEvent::RelayBack { .. }
                            | LeafEvent::ConnectAsked { .. }
                            | LeafEvent::AskLost { .. }
                            | LeafEvent::Probe { .. } => {}
                        }
                    }
                }
                Machine::SuperPeer(s) => {
                    while let Some(t) = s.poll_transmit() {
                        outbox.push_back((t.to, t.msg));
                    }
                    while let Some(e) = s.poll_event() {
                        match e {
                            Event::Dial(addr) => todo.push(Out::Dial(addr)),
                            Event::CheckReachable { conn, .. } => todo.push(Out::Reach(conn)),
                            Event::CheckReachableFor {
                                peer, token, node, ..
                            } => todo.push(Out::ReachFor(peer, token, node)),
                            Event::Close { conn, .. } => todo.push(Out::Close(conn)),
                            Event::Demote { .. } => todo.push(Out::Role(NodeRole::Leaf)),
                            Event::Search { query, search } => {
                                todo.push(Out::Search(query, search))
                            }
                            _ => {}
                        }
                    }
                }
                Machine::Stub(_) | Machine::Down => return,
            }
            if outbox.is_empty() && todo.is_empty() {
                break;
            }
            // Messages go out in order; each link keeps its latency, so order is kept.
            while let Some((conn, msg)) = outbox.pop_front() {
                if let Some(&(peer, pconn, lat)) = self.links.get(&(n, conn)) {
                    self.schedule(
                        now + lat,
                        Ev::Deliver {
                            to: peer,
                            conn: pconn,
                            msg,
                        },
                    );
                }
            }
            for out in todo {
                match out {
                    Out::Dial(addr) => {
                        let conn = self.next_conn;
                        self.next_conn += 1;
                        let lat = self.latency();
                        self.schedule(
                            now + lat,
                            Ev::Connected {
                                from: n,
                                conn,
                                addr,
                            },
                        );
                    }
                    Out::Reach(conn) => {
                        // The dial-back reaches the node at the other end unless a NAT drops
                        // it.
                        let ok = self
                            .links
                            .get(&(n, conn))
                            .is_some_and(|&(peer, _, _)| !self.nodes[peer].behind_nat);
                        let lat = self.latency();
                        self.schedule(now + lat * 2, Ev::Reachable { node: n, conn, ok });
                    }
                    Out::ReachFor(peer, token, target) => {
                        // Made for a neighbour: it reaches the node with that id, if it is
                        // alive and no NAT drops it.
                        let index = u64::from_be_bytes(target.0[..8].try_into().expect("8 bytes"));
                        let ok = index
                            .checked_sub(1)
                            .and_then(|i| self.nodes.get(i as usize))
                            .is_some_and(|t| t.alive() && !t.behind_nat);
                        let lat = self.latency();
                        self.schedule(
                            now + lat * 2,
                            Ev::ReachableFor {
                                node: n,
                                peer,
                                token,
                                ok,
                            },
                        );
                    }
                    Out::Close(conn) => self.close(n, conn),
                    // Without an oracle there is no index: queries find nothing.
                    Out::Search(query, search) => {
                        let hits = match self.search.as_mut() {
                            Some(f) => f(n, &search),
                            None => Vec::new(),
                        };
                        if let Machine::SuperPeer(s) = &mut self.nodes[n].machine {
                            s.handle_local_hits(now, query, hits);
                        }
                    }
                    Out::Role(r) => role_change = Some(r),
                }
            }
        }
        if let Some(role) = role_change {
            self.change_role(n, role);
        }
        let next = match &self.nodes[n].machine {
            Machine::Leaf(l) => l.poll_timeout(),
            Machine::SuperPeer(s) => s.poll_timeout(),
            Machine::Stub(_) | Machine::Down => None,
        };
        if let Some(t) = next {
            let at = t.max(now + Duration::from_millis(1));
            if self.timers[n].is_none_or(|pending| at < pending) {
                self.timers[n] = Some(at);
                self.schedule(at, Ev::Timer { node: n, at });
            }
        }
    }

    fn close(&mut self, n: usize, conn: ConnId) {
        if let Some((peer, pconn, lat)) = self.unlink(n, conn) {
            self.unlink(peer, pconn);
            // After the messages already on their way.
            self.schedule(
                self.now + lat,
                Ev::Closed {
                    node: peer,
                    conn: pconn,
                },
            );
        }
        self.schedule(self.now, Ev::Closed { node: n, conn });
    }

    fn change_role(&mut self, n: usize, role: NodeRole) {
        let now = self.now;
        let addr = self.nodes[n].addr;
        let machine = std::mem::replace(&mut self.nodes[n].machine, Machine::Down);
        let machine = match (machine, role) {
            (Machine::Leaf(l), NodeRole::SuperPeer) => {
                let cfg = Config {
                    can_demote: true,
                    ..self.config.superpeer.clone()
                };
                let sp = Handover::of_leaf(&l, now).into_superpeer(
                    now,
                    Self::id(n),
                    Some(addr),
                    cfg,
                    &[],
                );
                Machine::SuperPeer(Box::new(sp))
            }
            (Machine::SuperPeer(s), NodeRole::Leaf) => {
                let leaf = Handover::of_superpeer(&s, now).into_leaf(
                    now,
                    Self::id(n),
                    Some(addr),
                    self.config.leaf.clone(),
                    &[],
                );
                Machine::Leaf(Box::new(leaf))
            }
            (m, _) => m,
        };
        self.nodes[n].machine = machine;
        self.nodes[n].changes.push((now, role));
        // Connections of the old role are closing (their Closed events are queued); the new
        // machine does not know them, so they are ignored when they arrive.
    }
}
