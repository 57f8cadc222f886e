//! The super-peer's overlay state machine.
//!
//! It tracks its connections (leaves and neighbouring super-peers), turns leaf registrations into
//! index events, floods queries with a TTL and a seen-cache, and routes hits back along the path
//! each query came by. It owns no socket and no index: the driver feeds it inputs and carries out
//! its outputs (see the crate docs for the drain rule).

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{
    Capability, FileId, FileRecord, Hello, Hit, HostEntry, Load, Message, NodeId, Query, QueryHits,
    QueryId, RedirectReason, Role, Search, Slots, Source, MAX_TTL, PROTOCOL_VERSION,
};

use crate::hostcache::HostCache;
use crate::role::{NodeRole, RoleClock};
use crate::routing::{self, Analyzer, LocalTable, RemoteTable};
use crate::seen::SeenCache;
use crate::ConnId;

/// Settings of a super-peer's overlay logic.
#[derive(Debug, Clone)]
pub struct Config {
    /// TTL hard cap applied to every query on receipt.
    pub max_ttl: u8,
    /// How many query ids the seen-cache holds at most.
    pub seen_capacity: usize,
    /// How long a query id is remembered (and hits for it routed back).
    pub seen_ttl: Duration,
    /// How often an idle connection is pinged.
    pub keepalive_interval: Duration,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// A connection that has not said Hello within this time is closed.
    pub hello_timeout: Duration,
    /// The most hits one super-peer returns for one query from its own index.
    pub max_local_hits: usize,
    /// The most hits carried in one QueryHits message.
    pub hits_per_message: usize,
    /// The most hits routed back for one query, from everyone; later ones are dropped.
    pub max_hits_per_query: usize,
    /// Free text sent in Hello.
    pub agent: String,
    /// Leaves accepted at most; more are redirected to other super-peers.
    pub leaf_slots: u32,
    /// Neighbouring super-peers to keep (dialled from the host cache when short).
    pub neighbour_target: usize,
    /// How often the super-peer tells neighbours and leaves which super-peers it knows, and
    /// looks after its mesh and its role.
    pub hosts_interval: Duration,
    /// Entries the host cache holds at most.
    pub host_cache_size: usize,
    /// When this share of leaf slots is taken and no known super-peer has room, the most
    /// capable leaf is asked to become a super-peer.
    pub promote_at: f32,
    /// A leaf must have been up this long to be asked.
    pub min_leaf_uptime: Duration,
    /// The least time between two such requests.
    pub promote_cooldown: Duration,
    /// Whether this super-peer may become a leaf again (a dedicated `superpeer` never does).
    pub can_demote: bool,
    /// It does when it has at most this share of its slots in use and its neighbours have room
    /// for its leaves.
    pub demote_at: f32,
    /// At most this many super-peers are dialled per tick while short of neighbours.
    pub dials_per_tick: usize,
    /// Route tables have `1 << route_bits` slots.
    pub route_bits: u8,
    /// Slots cleared in the route table (words gone with leaves) are sent to neighbours at
    /// most this long after (batched into one patch); new words are sent at once.
    pub route_delay: Duration,
    /// Forward a query's last hop only to neighbours whose route table says it can match
    /// there. Tables are kept and exchanged either way.
    pub last_hop_routing: bool,
    /// Send neighbours a depth-1 route table too: ours joined with the tables our neighbours
    /// sent us (see [`routing::aggregate`]).
    pub route_aggregates: bool,
    /// Slots cleared in the depth-1 table go out at most this long after the change that
    /// cleared them, batched (a neighbour's patch changes it at every one of that neighbour's
    /// neighbours); the first depth-1 table waits this long too.
    pub aggregate_delay: Duration,
    /// New slots of the depth-1 table go out at once (until they arrive, queries for a new file
    /// stop one hop short of it), but at most one patch of them per this interval: in a burst
    /// (a network starting, a super-peer's leaves moving at once) the rest wait for the
    /// interval's end, batched.
    pub aggregate_add_interval: Duration,
    /// Forward a query with one hop left beyond the neighbour (TTL 1) only to neighbours whose
    /// depth-1 table says it can match there or at one of their neighbours. A neighbour that
    /// sent no depth-1 table gets every query.
    pub two_hop_routing: bool,
    /// Cuts file text and queries into words for the route table: must cut exactly like the
    /// index does (the super-peer driver passes the index's analyzer).
    pub analyzer: Analyzer,
    /// Dynamic querying of the leaves' queries (`None`: flood them at once).
    pub dynamic: Option<DynamicQuerying>,
}

/// Settings of dynamic querying: the super-peer that a leaf's query starts at probes a few
/// neighbours first, then widens step by step until the leaf has `target` results or every
/// neighbour has been sent the query with the full TTL (the horizon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynamicQuerying {
    /// Results wanted: no more neighbours are asked once the leaf has this many.
    pub target: usize,
    /// Neighbours the first probe goes to.
    pub probe_width: usize,
    /// TTL of the probe (hops beyond the neighbour), at most the query's TTL minus one.
    pub probe_ttl: u8,
    /// How long to wait for results per hop of the TTL last sent before the next step.
    pub hop_wait: Duration,
}

impl Default for DynamicQuerying {
    fn default() -> Self {
        // LimeWire's dynamic querying aimed at 150 results, probed three connections first and
        // waited about 2.4 s per TTL; a super-peer mesh on today's links answers faster.
        DynamicQuerying {
            target: 150,
            probe_width: 3,
            probe_ttl: 1,
            hop_wait: Duration::from_millis(1200),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_ttl: MAX_TTL,
            seen_capacity: 65_536,
            seen_ttl: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(10),
            max_local_hits: 200,
            max_hits_per_query: 1000,
            hits_per_message: 100,
            agent: concat!("canopy/", env!("CARGO_PKG_VERSION")).to_string(),
            // Anchors: gtk-gnutella keeps 300 leaves and ~32 ultrapeer links, LimeWire 30 and
            // 32; promotion came after about an hour of uptime in long-lived networks.
            leaf_slots: 300,
            neighbour_target: 32,
            hosts_interval: Duration::from_secs(30),
            host_cache_size: 1000,
            promote_at: 0.9,
            min_leaf_uptime: Duration::from_secs(3600),
            promote_cooldown: Duration::from_secs(60),
            can_demote: false,
            demote_at: 0.1,
            dials_per_tick: 4,
            route_bits: routing::TABLE_BITS,
            route_delay: Duration::from_secs(5),
            last_hop_routing: true,
            route_aggregates: true,
            aggregate_delay: Duration::from_secs(5),
            aggregate_add_interval: Duration::from_secs(1),
            two_hop_routing: true,
            analyzer: routing::simple_words,
            dynamic: Some(DynamicQuerying::default()),
        }
    }
}

/// One message for the driver to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Transmit {
    /// The connection to send it on.
    pub to: ConnId,
    /// The message.
    pub msg: Message,
}

/// What the driver must act on, besides sending messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A leaf completed its handshake.
    LeafJoined {
        /// Its connection.
        conn: ConnId,
        /// Its node id.
        node: NodeId,
    },
    /// A neighbouring super-peer completed its handshake.
    NeighbourJoined {
        /// Its connection.
        conn: ConnId,
        /// Its node id.
        node: NodeId,
    },
    /// A leaf registered files: add them to the index under `conn`.
    Register {
        /// The leaf's connection (the index's leaf key).
        conn: ConnId,
        /// The files.
        files: Vec<FileRecord>,
    },
    /// A leaf withdrew files: remove them from the index.
    Withdraw {
        /// The leaf's connection.
        conn: ConnId,
        /// The content ids.
        ids: Vec<FileId>,
    },
    /// A leaf is gone: remove all its files from the index.
    LeafGone {
        /// The leaf's connection.
        conn: ConnId,
    },
    /// A neighbouring super-peer is gone.
    NeighbourGone {
        /// Its connection.
        conn: ConnId,
    },
    /// Answer this query from the local index, then call [`SuperPeer::handle_local_hits`].
    Search {
        /// The query id to answer.
        query: QueryId,
        /// What to search for.
        search: Search,
    },
    /// Connect to this super-peer, then call [`SuperPeer::handle_connect`] with `dialed`, or
    /// [`SuperPeer::handle_dial_failed`].
    Dial(SocketAddr),
    /// Check that the leaf on `conn` accepts connections at `addr` (connect, say Hello, hang
    /// up), then call [`SuperPeer::handle_reachable`].
    CheckReachable {
        /// The leaf's connection.
        conn: ConnId,
        /// Where it says it accepts connections.
        addr: SocketAddr,
    },
    /// This super-peer has handed its leaves over and closed its connections: the node becomes
    /// a leaf (its [`RoleClock`] has recorded the change; take it with
    /// [`SuperPeer::into_clock`]).
    Demote {
        /// Why.
        reason: String,
    },
    /// Close this connection once the messages queued for it are sent.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why (already logged, and sent to the peer in a Goodbye).
        reason: String,
    },
}

/// Counters, for status displays and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Queries answered from the local index (once per query id).
    pub queries_processed: u64,
    /// Queries dropped because their id was already seen.
    pub duplicates_dropped: u64,
    /// Query copies forwarded to neighbours.
    pub queries_forwarded: u64,
    /// Hits sent back towards their origin (own and relayed).
    pub hits_routed: u64,
    /// Hits dropped because their query was unknown or its origin gone.
    pub hits_dropped: u64,
    /// Connections closed for breaking the protocol.
    pub protocol_errors: u64,
    /// Leaves connected now.
    pub leaves: u64,
    /// Neighbouring super-peers connected now.
    pub neighbours: u64,
    /// Query copies not sent to a neighbour because its route table rules out a match.
    pub queries_filtered: u64,
    /// Of them, copies with TTL 1 that a neighbour's depth-1 table ruled out.
    pub queries_filtered_two_hop: u64,
    /// Leaves' queries searched dynamically (probe first, then wider).
    pub dynamic_queries: u64,
}

/// What a connection is, once its peer has said Hello.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PeerState {
    /// Connected, waiting for the peer's Hello.
    AwaitingHello,
    /// A leaf, serving chunks at `source` (None: it only searches).
    Leaf {
        node: NodeId,
        source: Option<SocketAddr>,
        capability: Capability,
        /// Whether it accepted our connection back (None: not known yet).
        reachable: Option<bool>,
        joined: Instant,
    },
    /// A neighbouring super-peer.
    SuperPeer {
        node: NodeId,
        listen: Option<SocketAddr>,
    },
}

#[derive(Debug)]
struct Conn {
    /// The address the connection comes from, as the socket sees it.
    remote: SocketAddr,
    state: PeerState,
    opened: Instant,
    last_rx: Instant,
    next_ping: Instant,
    closing: bool,
    /// We dialled this connection (to `remote`, a super-peer's listen address).
    dialed: bool,
}

/// Where a query came from: hits for it go back there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Conn(ConnId),
}

/// What the seen-cache remembers of a query: where it came from (hits go back there), the
/// most TTL it has been forwarded with, which neighbours it was sent to (only their hits are
/// routed: hits must come back along the query's path) and how many hits went back.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    origin: Origin,
    ttl: u8,
    asked: Vec<ConnId>,
    hits: usize,
}

/// A leaf's query being searched dynamically by this super-peer.
#[derive(Debug)]
struct Dynamic {
    /// The leaf that asked.
    leaf: ConnId,
    /// The query as the leaf sent it (its TTL is the horizon).
    query: Query,
    hashes: Vec<u64>,
    /// Results routed to the leaf so far (local ones included).
    hits: usize,
    /// Neighbours not yet sent the query, the likeliest first.
    todo: Vec<ConnId>,
    /// Neighbours sent it with less than the full TTL (asked again at the end).
    shallow: Vec<ConnId>,
    /// Super-peers reached so far, estimated.
    reached: f64,
    /// When to take the next step.
    next: Instant,
    /// Gives up after this (the seen-cache forgets the query then too).
    until: Instant,
}

/// The super-peer's overlay logic. See the crate docs for the input/output discipline.
#[derive(Debug)]
pub struct SuperPeer {
    node: NodeId,
    listen: Option<SocketAddr>,
    config: Config,
    conns: HashMap<ConnId, Conn>,
    seen: SeenCache<QueryId, Seen>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    ping_nonce: u64,
    hosts: HostCache,
    /// Addresses being dialled.
    dialing: HashSet<SocketAddr>,
    clock: RoleClock,
    next_tick: Instant,
    last_promote: Option<Instant>,
    demoting: bool,
    /// What our leaves' files hold, as sent to neighbours.
    table: LocalTable,
    /// When the table's flips are due to go out.
    route_due: Option<Instant>,
    /// Neighbours' route tables, by connection.
    remote: HashMap<ConnId, RemoteTable>,
    /// Neighbours' depth-1 route tables, by connection.
    remote_aggregates: HashMap<ConnId, RemoteTable>,
    /// Our depth-1 table as last sent to neighbours (`None` until first made).
    aggregate: Option<RemoteTable>,
    /// When the depth-1 table is due to be made again and its flips sent.
    aggregate_due: Option<Instant>,
    /// Slots of the depth-1 table that may have flipped since it was last sent (a part of it
    /// changed there): only they are looked at again.
    aggregate_dirty: Vec<u32>,
    /// When new slots of the depth-1 table last went out, and slots set since that wait for
    /// `aggregate_add_interval` after it (see [`SuperPeer::send_aggregate_additions`]).
    aggregate_added_at: Option<Instant>,
    aggregate_added: Vec<u32>,
    /// Leaves' queries being searched dynamically.
    dynamic: HashMap<QueryId, Dynamic>,
    /// The earliest keep-alive, idle or handshake deadline of a connection, or earlier (a
    /// lower bound: received messages only move deadlines later), so that
    /// [`SuperPeer::poll_timeout`], asked after every event, need not look at every
    /// connection; `None` until it is next worked out.
    conn_deadline: Cell<Option<Instant>>,
}

impl SuperPeer {
    /// A super-peer with id `node` that accepts connections at `listen`, starting at `now`.
    /// `clock` carries the node's role history (see [`RoleClock`]); it is set to super-peer.
    pub fn new(
        now: Instant,
        node: NodeId,
        listen: Option<SocketAddr>,
        config: Config,
        mut clock: RoleClock,
    ) -> Self {
        clock.changed(now, NodeRole::SuperPeer);
        let table = LocalTable::new(config.route_bits);
        SuperPeer {
            node,
            listen,
            seen: SeenCache::new(config.seen_capacity, config.seen_ttl),
            hosts: HostCache::new(config.host_cache_size),
            next_tick: now,
            config,
            conns: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            ping_nonce: 0,
            dialing: HashSet::new(),
            clock,
            last_promote: None,
            demoting: false,
            table,
            route_due: None,
            remote: HashMap::new(),
            remote_aggregates: HashMap::new(),
            aggregate: None,
            aggregate_due: None,
            aggregate_dirty: Vec::new(),
            aggregate_added_at: None,
            aggregate_added: Vec::new(),
            dynamic: HashMap::new(),
            conn_deadline: Cell::new(None),
        }
    }

    /// Bootstrap addresses of other super-peers (configured, or saved from an earlier run).
    pub fn add_seeds(&mut self, now: Instant, addrs: &[SocketAddr]) {
        for a in addrs {
            if Some(*a) != self.listen {
                self.hosts.add_seed(now, *a);
            }
        }
    }

    /// Super-peers remembered from an earlier run (or handed over by a leaf that became this
    /// super-peer).
    pub fn import_hosts(&mut self, now: Instant, entries: &[HostEntry]) {
        for e in entries {
            if Some(e.addr) != self.listen {
                self.hosts.add(now, *e);
            }
        }
    }

    /// The host cache (to save it on disk).
    pub fn hosts(&self) -> &HostCache {
        &self.hosts
    }

    /// The role history.
    pub fn clock(&self) -> &RoleClock {
        &self.clock
    }

    /// Ends this super-peer, handing over its role history.
    pub fn into_clock(self) -> RoleClock {
        self.clock
    }

    /// Connections to neighbouring super-peers.
    pub fn neighbour_conns(&self) -> Vec<ConnId> {
        let mut v: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.closing && matches!(c.state, PeerState::SuperPeer { .. }))
            .map(|(&id, _)| id)
            .collect();
        v.sort();
        v
    }

    /// Connections to attached leaves.
    pub fn leaf_conns(&self) -> Vec<ConnId> {
        let mut v: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.closing && matches!(c.state, PeerState::Leaf { .. }))
            .map(|(&id, _)| id)
            .collect();
        v.sort();
        v
    }

    /// The settings (a simulation switches search strategies between runs).
    pub fn config_mut(&mut self) -> &mut Config {
        self.conn_deadline.set(None); // timeouts may change
        &mut self.config
    }

    /// Our route table's set slots, ascending (what neighbours hold once patches are out).
    pub fn route_slots(&self) -> Vec<u32> {
        self.table.slots()
    }

    /// Whether route table changes are waiting to go out.
    pub fn route_pending(&self) -> bool {
        self.table.has_flips()
    }

    /// The route table the neighbour on `conn` sent us, if any.
    pub fn neighbour_table(&self, conn: ConnId) -> Option<&RemoteTable> {
        self.remote.get(&conn)
    }

    /// The depth-1 route table the neighbour on `conn` sent us, if any.
    pub fn neighbour_aggregate(&self, conn: ConnId) -> Option<&RemoteTable> {
        self.remote_aggregates.get(&conn)
    }

    /// Our depth-1 route table as last sent to neighbours, if one was made.
    pub fn aggregate_slots(&self) -> Option<Vec<u32>> {
        self.aggregate.as_ref().map(RemoteTable::slots)
    }

    /// Our depth-1 route table as it would be made now: our table joined with the tables our
    /// neighbours sent us (see [`routing::aggregate`]).
    pub fn aggregate_now(&self) -> Vec<u32> {
        routing::aggregate(self.table.bits(), &self.table.slots(), self.remote.values())
    }

    /// Holds neighbour `conn`'s route table of this depth in `pool`: a simulation of many
    /// super-peers keeps each distinct table once (every neighbour of a super-peer holds the
    /// same one).
    pub fn share_table(&mut self, conn: ConnId, depth: u8, pool: &mut routing::TablePool) {
        let table = match depth {
            0 => self.remote.get_mut(&conn),
            _ => self.remote_aggregates.get_mut(&conn),
        };
        if let Some(t) = table {
            t.share(pool);
        }
    }

    /// Neighbours whose route table we hold and has at least one slot set.
    pub fn neighbour_tables_with_words(&self) -> usize {
        self.live_with_words(&self.remote)
    }

    /// Neighbours whose depth-1 route table we hold and has at least one slot set.
    pub fn neighbour_aggregates_with_words(&self) -> usize {
        self.live_with_words(&self.remote_aggregates)
    }

    fn live_with_words(&self, tables: &HashMap<ConnId, RemoteTable>) -> usize {
        tables
            .iter()
            .filter(|(c, t)| !t.is_empty() && self.conns.get(c).is_some_and(|c| !c.closing))
            .count()
    }

    /// Leaves' queries still being searched dynamically.
    pub fn dynamic_in_progress(&self) -> usize {
        self.dynamic.len()
    }

    /// The load it announces.
    pub fn load(&self) -> Load {
        Load {
            leaves: self.stats.leaves as u32,
            leaf_slots: self.config.leaf_slots,
            neighbours: self.stats.neighbours as u32,
        }
    }

    /// A dial asked for by [`Event::Dial`] failed.
    pub fn handle_dial_failed(&mut self, now: Instant, addr: SocketAddr) {
        self.dialing.remove(&addr);
        self.hosts.failed(now, addr);
    }

    /// The result of an [`Event::CheckReachable`].
    pub fn handle_reachable(&mut self, _now: Instant, conn: ConnId, ok: bool) {
        if let Some(Conn {
            state: PeerState::Leaf { reachable, .. },
            ..
        }) = self.conns.get_mut(&conn)
        {
            *reachable = Some(ok);
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// A connection opened: inbound, or `dialed` by us after an [`Event::Dial`] (then `remote`
    /// is the address dialled). We greet first, whichever side dialled.
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId, remote: SocketAddr, dialed: bool) {
        if dialed {
            self.dialing.remove(&remote);
        }
        let c = Conn {
            remote,
            state: PeerState::AwaitingHello,
            opened: now,
            last_rx: now,
            next_ping: now + self.config.keepalive_interval,
            closing: false,
            dialed,
        };
        if let Some(d) = self.conn_deadline.get() {
            self.conn_deadline
                .set(Some(d.min(self.deadline_of(&c).unwrap_or(d))));
        }
        self.conns.insert(conn, c);
        let mut hello = Hello::new(self.node, Role::SuperPeer, self.listen, &self.config.agent);
        hello.load = Some(self.load());
        self.send(conn, Message::Hello(hello));
    }

    /// A connection is gone (closed by either side, or failed).
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if c.dialed && c.state == PeerState::AwaitingHello {
            self.hosts.failed(now, c.remote);
        }
        match c.state {
            PeerState::Leaf { .. } => {
                self.stats.leaves -= 1;
                self.events.push_back(Event::LeafGone { conn });
                self.table.remove_leaf(conn);
                self.route_changed(now);
                self.dynamic.retain(|_, d| d.leaf != conn);
            }
            PeerState::SuperPeer { .. } => {
                self.stats.neighbours -= 1;
                self.events.push_back(Event::NeighbourGone { conn });
                if let Some(t) = self.remote.remove(&conn) {
                    self.mark_table(&t);
                    self.aggregate_changed(now);
                }
                self.remote_aggregates.remove(&conn);
            }
            PeerState::AwaitingHello => {}
        }
    }

    /// The peer on `conn` sent bytes that do not decode: close it with the reason.
    pub fn handle_invalid(&mut self, _now: Instant, conn: ConnId, reason: &str) {
        self.protocol_error(conn, format!("invalid frame: {reason}"));
    }

    /// A message arrived on `conn`.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: Message) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        c.last_rx = now;
        let state = c.state.clone();
        let remote = c.remote;
        match (state, msg) {
            (PeerState::AwaitingHello, Message::Hello(hello)) => {
                self.on_hello(now, conn, remote, hello)
            }
            (PeerState::AwaitingHello, other) => {
                self.protocol_error(conn, format!("{} before Hello", other.kind()))
            }
            (_, Message::Hello(_)) => self.protocol_error(conn, "second Hello".into()),
            (_, Message::Ping { nonce }) => self.send(conn, Message::Pong { nonce }),
            (_, Message::Pong { .. }) => {}
            (_, Message::Goodbye { reason }) => {
                log::info!("peer {remote} ({conn}) says goodbye: {reason}");
                self.close(conn, format!("peer said goodbye: {reason}"), false);
            }
            (PeerState::Leaf { source: None, .. }, Message::Register { .. }) => self
                .protocol_error(
                    conn,
                    "Register from a leaf that gave no listen address".into(),
                ),
            (PeerState::Leaf { .. }, Message::Register { files }) => {
                self.table.add_files(self.config.analyzer, conn, &files);
                self.route_changed(now);
                self.events.push_back(Event::Register { conn, files })
            }
            (PeerState::Leaf { .. }, Message::Withdraw { ids }) => {
                self.table.withdraw(conn, &ids);
                self.route_changed(now);
                self.events.push_back(Event::Withdraw { conn, ids })
            }
            (PeerState::Leaf { .. }, Message::Query(mut query)) => {
                // A leaf's query starts its trip here: hops count super-peer links only.
                query.hops = 0;
                self.on_query(now, conn, query);
            }
            (PeerState::SuperPeer { .. }, Message::Query(query)) => self.on_query(now, conn, query),
            (PeerState::SuperPeer { .. }, Message::QueryHits(hits)) => {
                self.on_hits(now, Some(conn), hits)
            }
            (PeerState::SuperPeer { .. }, Message::RouteTable { bits, slots, depth }) => {
                match RemoteTable::new(bits, &slots.0) {
                    Ok(t) => match depth {
                        0 => {
                            // Its slots are additions (out at once); the slots of a table it
                            // replaces may be removals (checked at `aggregate_delay`).
                            let mut set = Vec::new();
                            t.for_each_slot(|s| set.push(s));
                            if let Some(old) = self.remote.insert(conn, t) {
                                self.mark_table(&old);
                            }
                            self.send_aggregate_additions(now, bits, &set);
                            self.aggregate_changed(now);
                        }
                        1 => {
                            self.remote_aggregates.insert(conn, t);
                        }
                        _ => log::debug!("{conn}: route table of depth {depth} ignored"),
                    },
                    Err(e) => self.protocol_error(conn, e.to_string()),
                }
            }
            (PeerState::SuperPeer { .. }, Message::RoutePatch { flips, depth }) => {
                let table = match depth {
                    0 => self.remote.get_mut(&conn),
                    1 => self.remote_aggregates.get_mut(&conn),
                    _ => return log::debug!("{conn}: route patch of depth {depth} ignored"),
                };
                let applied = match table {
                    Some(t) => t.apply(&flips.0).map(|()| {
                        let bits = t.bits();
                        let (set, cleared): (Vec<u32>, Vec<u32>) =
                            flips.0.iter().copied().partition(|&s| t.covers(bits, s));
                        (bits, set, cleared)
                    }),
                    None => Err(routing::RouteError::PatchFirst),
                };
                match applied {
                    Err(e) => self.protocol_error(conn, e.to_string()),
                    Ok((bits, set, cleared)) if depth == 0 => {
                        self.mark_slots(bits, &cleared);
                        self.send_aggregate_additions(now, bits, &set);
                        self.aggregate_changed(now);
                    }
                    Ok(_) => {}
                }
            }
            (PeerState::SuperPeer { .. }, Message::Hosts { hosts }) => {
                for h in hosts {
                    if Some(h.addr) != self.listen {
                        self.hosts.add(now, h);
                    }
                }
            }
            (_, other) => self.protocol_error(
                conn,
                format!(
                    "unexpected {} on a {} connection",
                    other.kind(),
                    self.kind_of(conn)
                ),
            ),
        }
    }

    /// The driver's answer to [`Event::Search`]: hits from the local index, as (leaf connection,
    /// file, score). Hits of leaves that have gone meanwhile are dropped.
    pub fn handle_local_hits(
        &mut self,
        now: Instant,
        query: QueryId,
        hits: Vec<(ConnId, FileRecord, f32)>,
    ) {
        let hits: Vec<Hit> = hits
            .into_iter()
            .take(self.config.max_local_hits)
            .filter_map(|(leaf, file, score)| {
                let c = self.conns.get(&leaf).filter(|c| !c.closing)?;
                let PeerState::Leaf {
                    node,
                    source: Some(addr),
                    ..
                } = c.state
                else {
                    return None;
                };
                Some(Hit {
                    source: Source { node, addr },
                    file,
                    score,
                })
            })
            .collect();
        if !hits.is_empty() {
            self.on_hits(now, None, QueryHits { query, hits });
        }
    }

    /// Time has passed: keep-alives, idle and handshake timeouts, seen-cache expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.seen.expire(now);
        if self.route_due.is_some_and(|t| now >= t) {
            self.send_route_patch(now);
        }
        if self.aggregate_due.is_some_and(|t| now >= t) {
            self.send_aggregate_patch();
        }
        if self.aggregate_additions_due().is_some_and(|t| now >= t) {
            self.send_aggregate_additions(now, self.table.bits(), &[]);
        }
        self.dynamic_steps(now);
        let mut to_close = Vec::new();
        let mut to_ping = Vec::new();
        for (&id, c) in &mut self.conns {
            if c.closing {
                continue;
            }
            if c.state == PeerState::AwaitingHello && now >= c.opened + self.config.hello_timeout {
                let why = format!(
                    "{}: no Hello within {:?} (hello_timeout)",
                    c.remote, self.config.hello_timeout
                );
                to_close.push((id, why));
            } else if now >= c.last_rx + self.config.idle_timeout {
                // Also a slow-drip sender's fate: only whole messages count.
                let why = format!(
                    "{}: no whole message for {:?} (idle_timeout)",
                    c.remote, self.config.idle_timeout
                );
                to_close.push((id, why));
            } else if now >= c.next_ping {
                c.next_ping = now + self.config.keepalive_interval;
                to_ping.push(id);
            }
        }
        // Sorted: output order must not depend on hash order (simulations replay from a seed).
        to_ping.sort();
        to_close.sort();
        for id in to_ping {
            self.ping_nonce += 1;
            self.send(
                id,
                Message::Ping {
                    nonce: self.ping_nonce,
                },
            );
        }
        for (id, reason) in to_close {
            log::warn!("closing connection {id} from {reason}");
            self.close(id, reason, true);
        }
        self.conn_deadline.set(None);
        if now >= self.next_tick {
            self.next_tick = now + self.config.hosts_interval;
            self.tick(now);
        }
    }

    /// The next time [`SuperPeer::handle_timeout`] should be called: never late, now and then
    /// early (after a connection's deadline moved on, nothing may be due yet).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn_deadline = self.conn_deadline.get().or_else(|| {
            let d = self
                .conns
                .values()
                .filter_map(|c| self.deadline_of(c))
                .min();
            self.conn_deadline.set(d);
            d
        });
        [
            conn_deadline,
            self.seen.next_expiry(),
            (!self.demoting).then_some(self.next_tick),
            self.route_due,
            self.aggregate_due,
            self.aggregate_additions_due(),
            self.dynamic.values().map(|d| d.next).min(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When connection `c` next needs looking at: a keep-alive, or its idle or handshake
    /// timeout (`None` once it is closing).
    fn deadline_of(&self, c: &Conn) -> Option<Instant> {
        if c.closing {
            return None;
        }
        let first = c.next_ping.min(c.last_rx + self.config.idle_timeout);
        Some(match c.state {
            PeerState::AwaitingHello => first.min(c.opened + self.config.hello_timeout),
            _ => first,
        })
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmits.pop_front();
        // A burst (a query to every neighbour) leaves no spare capacity behind: a simulation
        // holds many idle super-peers.
        if self.transmits.is_empty() && self.transmits.capacity() > 64 {
            self.transmits = VecDeque::new();
        }
        t
    }

    /// The next event to act on.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn kind_of(&self, conn: ConnId) -> &'static str {
        match self.conns.get(&conn).map(|c| &c.state) {
            Some(PeerState::Leaf { .. }) => "leaf",
            Some(PeerState::SuperPeer { .. }) => "super-peer",
            _ => "new",
        }
    }

    fn on_hello(&mut self, now: Instant, conn: ConnId, remote: SocketAddr, hello: Hello) {
        if hello.version != PROTOCOL_VERSION {
            return self.protocol_error(
                conn,
                format!(
                    "protocol version {} (we speak {PROTOCOL_VERSION})",
                    hello.version
                ),
            );
        }
        // Our own node's leaf (a promoted node keeps one, for its own files) is welcome; a
        // super-peer with our id, or an address we dialled, is ourselves by another path.
        if hello.node == self.node && (hello.role != Role::Leaf || self.conns[&conn].dialed) {
            if let Some(c) = self.conns.get(&conn).filter(|c| c.dialed) {
                // Our own address came back through the host cache: never dial it again.
                let addr = c.remote;
                self.hosts.remove(&addr);
            }
            return self.close(conn, "connected to ourselves".into(), true);
        }
        let dialed = self.conns.get(&conn).is_some_and(|c| c.dialed);
        if dialed && hello.role != Role::SuperPeer {
            // An old host-cache entry: that node is no super-peer (any more).
            let addr = self.conns[&conn].remote;
            self.hosts.not_superpeer(now, addr);
            return self.close(conn, format!("{addr} is not a super-peer"), true);
        }
        let state = match hello.role {
            Role::Leaf => {
                if self.demoting {
                    return self.redirect(now, conn, RedirectReason::Demoting);
                }
                if self.stats.leaves >= self.config.leaf_slots as u64 {
                    return self.redirect(now, conn, RedirectReason::Full);
                }
                // A leaf listening on an unspecified address is reachable where we see it.
                let source = hello.listen.map(|l| {
                    if l.ip().is_unspecified() {
                        SocketAddr::new(remote.ip(), l.port())
                    } else {
                        l
                    }
                });
                self.stats.leaves += 1;
                self.events.push_back(Event::LeafJoined {
                    conn,
                    node: hello.node,
                });
                if let Some(addr) = source {
                    self.events.push_back(Event::CheckReachable { conn, addr });
                }
                // Tell it which other super-peers there are, for its host cache.
                let hosts = self.hosts_to_share(now);
                self.send(conn, Message::Hosts { hosts });
                PeerState::Leaf {
                    node: hello.node,
                    source,
                    capability: hello.capability.unwrap_or_default(),
                    reachable: None,
                    joined: now,
                }
            }
            Role::SuperPeer => {
                if let Some(dup) = self.duplicate_of(conn, hello.node) {
                    self.close(dup, "duplicate connection".into(), true);
                    if dup == conn {
                        return;
                    }
                    // The older link goes: this one is the neighbour from now on.
                }
                if let Some(listen) = hello.listen {
                    let load = hello.load.unwrap_or_default();
                    self.hosts.heard_from(now, listen, load);
                }
                self.stats.neighbours += 1;
                self.events.push_back(Event::NeighbourJoined {
                    conn,
                    node: hello.node,
                });
                let hosts = self.hosts_to_share(now);
                self.send(conn, Message::Hosts { hosts });
                // Neighbours we have get what changed first, so the whole table we send the
                // new one is the state everybody is at.
                self.send_route_patch(now);
                let slots = Slots::from(self.table.slots());
                let bits = self.table.bits();
                self.send(
                    conn,
                    Message::RouteTable {
                        bits,
                        slots,
                        depth: 0,
                    },
                );
                // The depth-1 table as the others hold it: changes pending go to all at once.
                if let Some(t) = &self.aggregate {
                    let (bits, slots) = (t.bits(), Slots::from(t.slots()));
                    self.send(
                        conn,
                        Message::RouteTable {
                            bits,
                            slots,
                            depth: 1,
                        },
                    );
                }
                PeerState::SuperPeer {
                    node: hello.node,
                    listen: hello.listen,
                }
            }
            Role::Transfer => {
                return self.protocol_error(conn, "a super-peer serves no transfers".into())
            }
        };
        log::debug!(
            "{conn} from {remote} is {:?} {}",
            hello.role,
            hello.node.short()
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = state;
        }
    }

    /// If another connection already links us to super-peer `node`, the one of the two to
    /// close. Both ends pick the same: the connection dialled by the smaller node id stays.
    fn duplicate_of(&self, conn: ConnId, node: NodeId) -> Option<ConnId> {
        let (&other, o) = self.conns.iter().find(|(&id, c)| {
            id != conn && matches!(c.state, PeerState::SuperPeer { node: n, .. } if n == node)
        })?;
        let dialer = |c: &Conn| if c.dialed { self.node } else { node };
        let this = self.conns.get(&conn)?;
        let keep_other = (dialer(o), other) <= (dialer(this), conn) || dialer(o) == dialer(this);
        Some(if keep_other { conn } else { other })
    }

    /// Sends a leaf elsewhere and closes its connection.
    fn redirect(&mut self, now: Instant, conn: ConnId, reason: RedirectReason) {
        let hosts: Vec<HostEntry> = self
            .hosts
            .entries(now, 20, self.fresh_age())
            .into_iter()
            .filter(|h| h.load.free() > 0)
            .collect();
        self.send(conn, Message::Redirect { reason, hosts });
        self.close(conn, format!("redirected: {reason:?}"), false);
    }

    /// What we tell others: ourselves first, then the freshest super-peers we know.
    fn hosts_to_share(&self, now: Instant) -> Vec<HostEntry> {
        let mut out = Vec::new();
        if let Some(addr) = self.listen.filter(|a| !a.ip().is_unspecified()) {
            out.push(HostEntry {
                addr,
                load: self.load(),
                age_s: 0,
            });
        }
        out.extend(self.hosts.entries(now, 20, self.fresh_age()));
        out
    }

    /// News of a super-peer older than this is not passed on (it announces itself every
    /// `hosts_interval`, so live ones stay fresh).
    fn fresh_age(&self) -> Duration {
        self.config.hosts_interval * 4
    }

    /// The periodic part of [`SuperPeer::handle_timeout`]: share hosts, keep the mesh, and
    /// consider promoting a leaf or demoting ourselves.
    fn tick(&mut self, now: Instant) {
        if self.demoting {
            return;
        }
        self.hosts.expire(now, self.config.hosts_interval * 60);
        let hosts = self.hosts_to_share(now);
        let mut peers: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.closing && !matches!(c.state, PeerState::AwaitingHello))
            .map(|(&id, _)| id)
            .collect();
        peers.sort();
        for id in peers {
            self.send(
                id,
                Message::Hosts {
                    hosts: hosts.clone(),
                },
            );
        }
        self.keep_mesh(now);
        self.consider_promotion(now);
        self.consider_demotion(now);
    }

    /// Dials super-peers from the host cache while short of the neighbour target.
    fn keep_mesh(&mut self, now: Instant) {
        let have = self.stats.neighbours as usize + self.dialing.len();
        if have >= self.config.neighbour_target {
            return;
        }
        let connected: HashSet<SocketAddr> = self
            .conns
            .values()
            .filter_map(|c| match c.state {
                PeerState::SuperPeer { listen, .. } => listen,
                _ if c.dialed => Some(c.remote),
                _ => None,
            })
            .collect();
        let own = self.listen;
        let skip =
            |a: &SocketAddr| connected.contains(a) || self.dialing.contains(a) || Some(*a) == own;
        // A few at a time: the rest follow on the next ticks.
        let want = (self.config.neighbour_target - have).min(self.config.dials_per_tick);
        for addr in self.hosts.candidates(now, want, false, &skip) {
            self.dialing.insert(addr);
            self.events.push_back(Event::Dial(addr));
        }
    }

    /// Asks the most capable leaf to become a super-peer when our slots run out and no known
    /// super-peer has room.
    fn consider_promotion(&mut self, now: Instant) {
        let slots = self.config.leaf_slots as f32;
        if (self.stats.leaves as f32) < (slots * self.config.promote_at).ceil() {
            return;
        }
        if self
            .last_promote
            .is_some_and(|t| now < t + self.config.promote_cooldown)
        {
            return;
        }
        let fresh = self.config.hosts_interval * 3;
        let room_elsewhere = self.hosts.iter().any(|h| {
            Some(h.addr) != self.listen
                && h.failures == 0
                && h.load.free() > 0
                && now.saturating_duration_since(h.heard) <= fresh
        });
        if room_elsewhere {
            return;
        }
        let best = self
            .conns
            .iter()
            .filter_map(|(&id, c)| match &c.state {
                PeerState::Leaf {
                    capability,
                    reachable: Some(true),
                    joined,
                    ..
                } if capability.can_promote
                    && !c.closing
                    && Duration::from_secs(capability.uptime_s)
                        .max(now.saturating_duration_since(*joined))
                        >= self.config.min_leaf_uptime =>
                {
                    Some((capability.score(), id))
                }
                _ => None,
            })
            .max();
        if let Some((_, conn)) = best {
            log::info!("leaf slots running out: asking leaf {conn} to become a super-peer");
            self.last_promote = Some(now);
            self.send(conn, Message::Promote);
        }
    }

    /// Becomes a leaf when we serve few leaves, our neighbours have room for them, and leaving
    /// does not cut a neighbour off the mesh.
    fn consider_demotion(&mut self, now: Instant) {
        if !self.config.can_demote || !self.clock.may_change(now) {
            return;
        }
        let slots = self.config.leaf_slots as f32;
        if self.stats.leaves as f32 > (slots * self.config.demote_at).floor() {
            return;
        }
        let neighbours: Vec<Load> = self
            .conns
            .values()
            .filter_map(|c| match c.state {
                PeerState::SuperPeer {
                    listen: Some(l), ..
                } if !c.closing => Some(self.hosts.get(&l).map(|h| h.load).unwrap_or_default()),
                _ => None,
            })
            .collect();
        let room: u64 = neighbours.iter().map(|l| l.free() as u64).sum();
        let safe = !neighbours.is_empty() && neighbours.iter().all(|l| l.neighbours >= 2);
        if !safe || room < self.stats.leaves * 2 {
            return;
        }
        self.demoting = true;
        let reason = format!(
            "{} of {} leaf slots used while neighbours have {room} free",
            self.stats.leaves, self.config.leaf_slots
        );
        log::info!("demoting to leaf: {reason}");
        let mut ids: Vec<ConnId> = self.conns.keys().copied().collect();
        ids.sort();
        for id in ids {
            if self.conns[&id].closing {
                // Already told to close: nothing more goes out on it (STATE.md).
                continue;
            }
            let is_leaf = matches!(self.conns[&id].state, PeerState::Leaf { .. });
            if is_leaf {
                self.redirect(now, id, RedirectReason::Demoting);
            } else {
                self.close(id, "becoming a leaf".into(), true);
            }
        }
        self.clock.changed(now, NodeRole::Leaf);
        self.events.push_back(Event::Demote { reason });
    }

    fn on_query(&mut self, now: Instant, from: ConnId, mut query: Query) {
        if query.hops > self.config.max_ttl {
            log::debug!(
                "dropping query {} with {} hops",
                query.id.short(),
                query.hops
            );
            return;
        }
        query.ttl = query
            .ttl
            .min(self.config.max_ttl.saturating_sub(query.hops));
        let seen = Seen {
            origin: Origin::Conn(from),
            ttl: query.ttl,
            asked: Vec::new(),
            hits: 0,
        };
        if !self.seen.insert(now, query.id, seen) {
            self.stats.duplicates_dropped += 1;
            // A copy that came the short way can carry more TTL than the one that arrived
            // first the long way: forward it again (but answer only once), or super-peers
            // within reach would be missed.
            let Some(first) = self.seen.get_mut(now, &query.id) else {
                return;
            };
            if query.ttl <= first.ttl {
                return;
            }
            first.ttl = query.ttl;
        } else {
            self.stats.queries_processed += 1;
            self.events.push_back(Event::Search {
                query: query.id,
                search: query.search.clone(),
            });
        }
        if query.ttl == 0 {
            return;
        }
        let from_leaf = matches!(
            self.conns.get(&from).map(|c| &c.state),
            Some(PeerState::Leaf { .. })
        );
        if from_leaf && !self.dynamic.contains_key(&query.id) {
            if let Some(dq) = self.config.dynamic {
                return self.start_dynamic(now, from, query, dq);
            }
        }
        let forward = Query {
            ttl: query.ttl - 1,
            hops: query.hops + 1,
            ..query
        };
        // The words are needed only where a table decides: on the last two hops.
        let hashes = if (forward.ttl == 0 && self.config.last_hop_routing)
            || (forward.ttl == 1 && self.config.two_hop_routing)
        {
            routing::search_hashes(self.config.analyzer, &forward.search)
        } else {
            Vec::new()
        };
        for id in self.neighbour_conns() {
            if id != from {
                self.forward(now, id, &forward, &hashes);
            }
        }
    }

    /// Sends `query` to neighbour `to`, unless the neighbour's route table rules out a match
    /// for `hashes`: its own table on the query's last hop, its depth-1 table on the hop before
    /// (a neighbour with no such table yet gets it).
    fn forward(&mut self, now: Instant, to: ConnId, query: &Query, hashes: &[u64]) {
        if query.ttl == 0
            && self.config.last_hop_routing
            && self.remote.get(&to).is_some_and(|t| !t.may_match(hashes))
        {
            self.stats.queries_filtered += 1;
            return;
        }
        if query.ttl == 1
            && self.config.two_hop_routing
            && self
                .remote_aggregates
                .get(&to)
                .is_some_and(|t| !t.may_match(hashes))
        {
            self.stats.queries_filtered += 1;
            self.stats.queries_filtered_two_hop += 1;
            return;
        }
        if let Some(seen) = self.seen.get_mut(now, &query.id) {
            if !seen.asked.contains(&to) {
                seen.asked.push(to);
            }
        }
        self.stats.queries_forwarded += 1;
        self.send(to, Message::Query(query.clone()));
    }

    /// The route table changed: new words go out at once (until neighbours know them, they
    /// would hold queries for them back); cleared slots only cost false positives, so they are
    /// batched for `route_delay`.
    fn route_changed(&mut self, now: Instant) {
        if self.table.has_new_slots() {
            self.send_route_patch(now);
        } else if self.table.has_flips() && self.route_due.is_none() {
            self.route_due = Some(now + self.config.route_delay);
        }
    }

    /// Something the depth-1 table is made of changed: before the first depth-1 table, make it
    /// within `aggregate_delay`; after, re-check the slots noted as maybe cleared within it.
    fn aggregate_changed(&mut self, now: Instant) {
        let pending = self.aggregate.is_none() || !self.aggregate_dirty.is_empty();
        if self.config.route_aggregates && pending && self.aggregate_due.is_none() {
            self.aggregate_due = Some(now + self.config.aggregate_delay);
        }
    }

    /// Slots `set` of a `bits` table (ours or a neighbour's) are set now: the depth-1 slots
    /// they fall in that the neighbours do not hold yet go out at once, as new depth-0 slots
    /// do, unless new slots went out less than `aggregate_add_interval` ago: then they wait for
    /// the interval's end (when this is called with `set` empty), with those that came since.
    /// Until they arrive, a neighbour two hops from a new file holds queries for it back (a
    /// stale 0 costs a match; a stale 1 only a message, so cleared slots wait longer).
    fn send_aggregate_additions(&mut self, now: Instant, bits: u8, set: &[u32]) {
        let to = self.table.bits();
        let Some(sent) = self.aggregate.as_ref().filter(|t| t.bits() == to) else {
            return; // the first table (or one of a new size) is made whole
        };
        let waited = !self.aggregate_added.is_empty();
        for &s in set {
            routing::fold_slot(bits, to, s, |x| {
                if !sent.covers(to, x) {
                    self.aggregate_added.push(x);
                }
            });
        }
        if self.aggregate_added.is_empty() || self.aggregate_additions_due() > Some(now) {
            return;
        }
        let mut add = std::mem::take(&mut self.aggregate_added);
        add.sort_unstable();
        add.dedup();
        // Slots of `set` are set now and were not sent; some that waited may have been cleared
        // (or sent by `send_aggregate_patch`) since: only then is each checked again, against
        // every neighbour's table.
        if waited {
            let Some(sent) = self.aggregate.as_ref() else {
                return;
            };
            add.retain(|&x| !sent.covers(to, x));
            let set = self.aggregate_covered(&add);
            add = add
                .into_iter()
                .zip(set)
                .filter(|&(_, c)| c)
                .map(|(x, _)| x)
                .collect();
        }
        if !add.is_empty() {
            self.aggregate_added_at = Some(now);
            self.send_aggregate_flips(add);
        }
    }

    /// When the depth-1 slots waiting in `aggregate_added` may go out.
    fn aggregate_additions_due(&self) -> Option<Instant> {
        if self.aggregate_added.is_empty() {
            return None;
        }
        let at = self.aggregate_added_at?;
        Some(at + self.config.aggregate_add_interval)
    }

    /// Which of depth-1 slots `slots` are set now: in our table or, folded, in a neighbour's.
    /// Each neighbour's table is looked at once for all of them (and not at all once every
    /// slot is known set).
    fn aggregate_covered(&self, slots: &[u32]) -> Vec<bool> {
        let bits = self.table.bits();
        let mut covered: Vec<bool> = slots.iter().map(|&s| self.table.contains(s)).collect();
        let mut open = covered.iter().filter(|&&c| !c).count();
        for t in self.remote.values() {
            if open == 0 {
                break;
            }
            for (c, &s) in covered.iter_mut().zip(slots) {
                if !*c && t.covers(bits, s) {
                    *c = true;
                    open -= 1;
                }
            }
        }
        covered
    }

    /// Slots `slots` of a `bits` table (ours or a neighbour's) changed: the depth-1 slots they
    /// fall in may flip. (Nothing to note before the first depth-1 table: it is made whole.)
    fn mark_slots(&mut self, bits: u8, slots: &[u32]) {
        if !self.config.route_aggregates || self.aggregate.is_none() {
            return;
        }
        let to = self.table.bits();
        for &s in slots {
            routing::fold_slot(bits, to, s, |x| self.aggregate_dirty.push(x));
        }
    }

    /// Every slot of a neighbour's table changed (it came, went or was replaced).
    fn mark_table(&mut self, t: &RemoteTable) {
        if !self.config.route_aggregates || self.aggregate.is_none() {
            return;
        }
        let to = self.table.bits();
        t.for_each_slot(|s| routing::fold_slot(t.bits(), to, s, |x| self.aggregate_dirty.push(x)));
    }

    /// Sends the flips of the depth-1 table since it was last sent to every neighbour: only the
    /// slots noted as changed are looked at again (each against our table and every
    /// neighbour's), so a patch costs what changed, not the table's size. The first time, the
    /// whole table is made and sent.
    fn send_aggregate_patch(&mut self) {
        self.aggregate_due = None;
        let bits = self.table.bits();
        let mut dirty = std::mem::take(&mut self.aggregate_dirty);
        match &self.aggregate {
            Some(sent) if sent.bits() == bits => {
                dirty.sort_unstable();
                dirty.dedup();
                let set = self.aggregate_covered(&dirty);
                let flips = dirty
                    .into_iter()
                    .zip(set)
                    .filter(|&(s, c)| c != sent.covers(bits, s))
                    .map(|(s, _)| s)
                    .collect();
                self.send_aggregate_flips(flips);
            }
            _ => {
                let new = self.aggregate_now();
                self.aggregate = RemoteTable::new(bits, &new).ok();
                let msg = Message::RouteTable {
                    bits,
                    slots: Slots::from(new),
                    depth: 1,
                };
                for id in self.neighbour_conns() {
                    self.send(id, msg.clone());
                }
            }
        }
    }

    /// Applies `flips` (slots that differ from it) to the depth-1 table as sent and sends them
    /// to every neighbour.
    fn send_aggregate_flips(&mut self, flips: Vec<u32>) {
        let Some(sent) = self.aggregate.as_mut() else {
            return;
        };
        if flips.is_empty() || sent.apply(&flips).is_err() {
            return; // (an error cannot be: every slot is below 1 << bits)
        }
        let msg = Message::RoutePatch {
            flips: Slots::from(flips),
            depth: 1,
        };
        for id in self.neighbour_conns() {
            self.send(id, msg.clone());
        }
    }

    /// Sends the route table's flips (if any) to every neighbour; what they add to the depth-1
    /// table follows at once, what they clear within `aggregate_delay`.
    fn send_route_patch(&mut self, now: Instant) {
        self.route_due = None;
        if !self.table.has_flips() {
            return;
        }
        let flips = Slots::from(self.table.take_flips());
        let bits = self.table.bits();
        let (set, cleared): (Vec<u32>, Vec<u32>) = flips
            .0
            .iter()
            .copied()
            .partition(|&s| self.table.contains(s));
        for id in self.neighbour_conns() {
            self.send(
                id,
                Message::RoutePatch {
                    flips: flips.clone(),
                    depth: 0,
                },
            );
        }
        self.mark_slots(bits, &cleared);
        self.send_aggregate_additions(now, bits, &set);
        self.aggregate_changed(now);
    }

    /// Super-peers a query sent to one neighbour with `ttl` reaches, estimated from our own
    /// degree (each reached super-peer passes it to all its neighbours but one).
    fn reach(&self, ttl: u8) -> f64 {
        let fan = (self.stats.neighbours.max(2) - 1) as f64;
        (0..=ttl).map(|i| fan.powi(i32::from(i))).sum()
    }

    /// Starts searching a leaf's query dynamically: a probe with a short TTL to a few
    /// neighbours, the ones whose tables match first; [`SuperPeer::dynamic_step`] widens.
    fn start_dynamic(&mut self, now: Instant, leaf: ConnId, query: Query, dq: DynamicQuerying) {
        self.stats.dynamic_queries += 1;
        let hashes = routing::search_hashes(self.config.analyzer, &query.search);
        let mut todo = self.neighbour_conns();
        // Neighbours that can answer themselves first, then those with an answer one hop on
        // (a stable sort keeps the order of ids).
        todo.sort_by_key(|c| {
            let here = self.remote.get(c).is_none_or(|t| t.may_match(&hashes));
            let next = !self.config.two_hop_routing
                || (self.remote_aggregates.get(c)).is_none_or(|t| t.may_match(&hashes));
            (!here, !next)
        });
        let horizon = query.ttl - 1;
        let ttl = dq.probe_ttl.min(horizon);
        let probe: Vec<ConnId> = todo.drain(..dq.probe_width.min(todo.len())).collect();
        let forward = Query {
            ttl,
            hops: query.hops + 1,
            ..query.clone()
        };
        for &c in &probe {
            self.forward(now, c, &forward, &hashes);
        }
        let reached = 1.0 + probe.len() as f64 * self.reach(ttl);
        let shallow = if ttl < horizon { probe } else { Vec::new() };
        let d = Dynamic {
            leaf,
            query,
            hashes,
            hits: 0,
            todo,
            shallow,
            reached,
            next: now + dq.hop_wait * (u32::from(ttl) + 1),
            until: now + self.config.seen_ttl,
        };
        self.dynamic.insert(forward.id, d);
    }

    /// Takes the steps of dynamic queries that are due.
    fn dynamic_steps(&mut self, now: Instant) {
        let mut due: Vec<QueryId> = self
            .dynamic
            .iter()
            .filter(|(_, d)| d.next <= now)
            .map(|(&id, _)| id)
            .collect();
        due.sort();
        for id in due {
            self.dynamic_step(now, id);
        }
    }

    /// One step of a dynamic query: from the results per super-peer reached so far, estimate
    /// how far the query must still go, and send it to the next neighbour(s) with the TTL that
    /// should bring the rest, or (nothing found yet) to twice as many neighbours as before with
    /// the full TTL. Ends when the leaf has the target or every neighbour had the full TTL.
    fn dynamic_step(&mut self, now: Instant, id: QueryId) {
        let Some(mut d) = self.dynamic.remove(&id) else {
            return;
        };
        let Some(dq) = self.config.dynamic else {
            return;
        };
        let leaf_here = self.conns.get(&d.leaf).is_some_and(|c| !c.closing);
        if d.hits >= dq.target || now >= d.until || !leaf_here {
            return;
        }
        let live = self.neighbour_conns();
        d.todo.retain(|c| live.contains(c));
        d.shallow.retain(|c| live.contains(c));
        let horizon = d.query.ttl - 1;
        let needed = (dq.target - d.hits) as f64;
        let rate = d.hits as f64 / d.reached;
        let (next, ttl): (Vec<ConnId>, u8) = if !d.todo.is_empty() {
            if rate > 0.0 {
                let k = (needed / (rate * self.reach(horizon))).ceil() as usize;
                if k <= 1 {
                    let ttl = (0..=horizon)
                        .find(|&t| rate * self.reach(t) >= needed)
                        .unwrap_or(horizon);
                    (vec![d.todo.remove(0)], ttl)
                } else {
                    (d.todo.drain(..k.min(d.todo.len())).collect(), horizon)
                }
            } else {
                let asked = (live.len() - d.todo.len()).max(1);
                (d.todo.drain(..asked.min(d.todo.len())).collect(), horizon)
            }
        } else if !d.shallow.is_empty() {
            (std::mem::take(&mut d.shallow), horizon)
        } else {
            return; // the horizon is reached
        };
        let forward = Query {
            ttl,
            hops: d.query.hops + 1,
            ..d.query.clone()
        };
        for &c in &next {
            self.forward(now, c, &forward, &d.hashes);
        }
        d.reached += next.len() as f64 * self.reach(ttl);
        if ttl < horizon {
            d.shallow.extend(next);
        }
        d.next = now + dq.hop_wait * (u32::from(ttl) + 1);
        self.dynamic.insert(id, d);
    }

    /// Hits for a query, from neighbour `from` (or the local index): routed back the way the
    /// query came, if they came from a neighbour it was sent to, up to
    /// [`Config::max_hits_per_query`].
    fn on_hits(&mut self, now: Instant, from: Option<ConnId>, hits: QueryHits) {
        let QueryHits {
            query,
            hits: mut list,
        } = hits;
        let Some(seen) = self.seen.get_mut(now, &query) else {
            self.stats.hits_dropped += list.len() as u64;
            return;
        };
        if let Some(f) = from.filter(|f| !seen.asked.contains(f)) {
            log::debug!(
                "dropping {} hits for query {} from {f}, which was not asked",
                list.len(),
                query.short()
            );
            self.stats.hits_dropped += list.len() as u64;
            return;
        }
        let room = self.config.max_hits_per_query.saturating_sub(seen.hits);
        if list.len() > room {
            self.stats.hits_dropped += (list.len() - room) as u64;
            list.truncate(room);
        }
        let Origin::Conn(to) = seen.origin;
        if list.is_empty() || self.conns.get(&to).is_none_or(|c| c.closing) {
            self.stats.hits_dropped += list.len() as u64;
            return;
        }
        seen.hits += list.len();
        let n = list.len() as u64;
        self.stats.hits_routed += n;
        if let Some(d) = self.dynamic.get_mut(&query) {
            d.hits += n as usize;
            if self.config.dynamic.is_none_or(|dq| d.hits >= dq.target) {
                // The leaf has enough: ask nobody else.
                self.dynamic.remove(&query);
            }
        }
        let mut hits = list;
        while !hits.is_empty() {
            let rest = hits.split_off(hits.len().min(self.config.hits_per_message));
            self.send(to, Message::QueryHits(QueryHits { query, hits }));
            hits = rest;
        }
    }

    fn send(&mut self, to: ConnId, msg: Message) {
        self.transmits.push_back(Transmit { to, msg });
    }

    fn protocol_error(&mut self, conn: ConnId, reason: String) {
        let remote = self
            .conns
            .get(&conn)
            .map(|c| c.remote.to_string())
            .unwrap_or_default();
        log::warn!("closing connection {conn} from {remote}: {reason}");
        self.stats.protocol_errors += 1;
        self.close(conn, reason, true);
    }

    /// Marks `conn` closing: a Goodbye (if `say_goodbye`) then [`Event::Close`]. The connection's
    /// state is dropped when the driver reports the disconnect.
    fn close(&mut self, conn: ConnId, reason: String, say_goodbye: bool) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.closing {
            return;
        }
        c.closing = true;
        if say_goodbye {
            self.send(
                conn,
                Message::Goodbye {
                    reason: reason.clone(),
                },
            );
        }
        self.events.push_back(Event::Close { conn, reason });
    }
}
