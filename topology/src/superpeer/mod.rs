//! The super-peer's overlay state machine.
//!
//! It tracks its connections (leaves and neighbouring super-peers), turns leaf registrations into
//! index events, floods queries with a TTL and a seen-cache, and routes hits back along the path
//! each query came by. It owns no socket and no index: the driver feeds it inputs and carries out
//! its outputs (see the crate docs for the drain rule).
//!
//! The struct is one, its concerns are split by file, as quinn-proto splits its `Connection`:
//! - this file: the struct, its [`Event`]s, [`Transmit`]s and [`Stats`], connections and their
//!   handshake, keep-alives;
//! - `flood`: query flooding (TTL, seen-cache, route tables) and the routing of hits back;
//! - `config`: [`Config`] and [`DynamicQuerying`];
//! - `routes`: keyword routing, a `Routes` struct (our route table, the neighbours' tables, the
//!   depth-1 table) held as a field;
//! - `dynamic`: dynamic querying of the leaves' queries;
//! - `mesh`: the host cache, dials to keep the mesh, redirects, promotion and demotion;
//! - `reach`: dial-backs to leaves, asked of a neighbour ([`Message::CheckReach`]).

use std::cell::Cell;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use wire::{
    Capability, FileId, FileRecord, Hello, HostEntry, Message, NodeId, QueryId, RedirectReason,
    Role, Search, PROTOCOL_VERSION,
};

use crate::hostcache::HostCache;
use crate::role::{NodeRole, RoleClock};
use crate::routing;
use crate::seen::SeenCache;
use crate::ConnId;

mod config;
mod dynamic;
mod flood;
mod mesh;
mod reach;
mod relay;
mod requests;
mod routes;
mod shaping;

pub use mesh::HOSTS_SHARED;
pub use reach::{
    CHECKS_FOR_PEER, CHECKS_IN_FLIGHT, CHECKS_PER_IP, CHECK_WINDOW, REACH_ASKED_MAX, REACH_ASK_WAIT,
};
pub use relay::{RelayJoin, RELAY_JOIN_WAIT};

pub use config::{Config, DynamicQuerying};
use dynamic::Dynamic;
use routes::{Out, Routes};

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
    /// A leaf's registration took it past a limit on what one leaf may hold here
    /// ([`Config::max_files_per_leaf`], [`Config::max_record_bytes_per_leaf`]): it is closed
    /// (its files go with it), and the driver may ban its address.
    OverLimit {
        /// The leaf's connection.
        conn: ConnId,
        /// The limit's name.
        limit: &'static str,
        /// What went past it.
        detail: String,
    },
    /// A leaf withdrew files it held: remove them from the index.
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
    /// up), then call [`SuperPeer::handle_reachable`]. Whoever answers there must prove it
    /// holds `node`'s key: any other node found at the address (the leaf named another's)
    /// makes the check fail.
    CheckReachable {
        /// The leaf's connection.
        conn: ConnId,
        /// Where it says it accepts connections.
        addr: SocketAddr,
        /// The leaf's node id.
        node: NodeId,
    },
    /// A neighbour asked us to check one of its leaves ([`Message::CheckReach`]): as for
    /// [`Event::CheckReachable`], then call [`SuperPeer::handle_checked_for`] with `peer` and
    /// `token`, exactly once for each of these events, even if the neighbour has gone (the
    /// checks being made are counted until then).
    CheckReachableFor {
        /// The neighbour's connection.
        peer: ConnId,
        /// Names its request.
        token: u64,
        /// Where to connect.
        addr: SocketAddr,
        /// Who must answer there.
        node: NodeId,
    },
    /// This super-peer has handed its leaves over and closed its connections: the node becomes
    /// a leaf (its [`RoleClock`] has recorded the change; take it with
    /// [`SuperPeer::into_clock`]).
    Demote {
        /// Why.
        reason: String,
    },
    /// A relay's ends did not both join in time: drop the one waiting, if any.
    RelayExpired {
        /// The relay's token.
        token: u64,
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
    /// Queries not sent to a neighbour because its budget was spent (see `shaping`).
    pub queries_shaped: u64,
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
    /// Relays spliced (both ends joined).
    pub relays: u64,
    /// Bytes carried by relays that ended.
    pub relayed_bytes: u64,
    /// Reachability checks of our leaves asked of neighbours (a check declined by one and
    /// asked of the next counts twice).
    pub reach_checks_asked: u64,
    /// Of those, the ones the neighbour answered in time (declining included).
    pub reach_checks_answered: u64,
    /// Reachability checks made for neighbours.
    pub reach_checks_made_for: u64,
}

/// A super-peer's address `via` as a hit names it, passed on by `from`: an unspecified IP
/// (a super-peer listening on every interface names itself so) means `from`'s.
pub fn seen_at(via: SocketAddr, from: SocketAddr) -> SocketAddr {
    if via.ip().is_unspecified() {
        SocketAddr::new(from.ip(), via.port())
    } else {
        via
    }
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
        /// Its requests for connections back ([`Message::ConnectToMe`]) in the current
        /// minute: (the minute's start, how many).
        asked: crate::per_minute::PerMinute,
    },
    /// A neighbouring super-peer.
    SuperPeer {
        node: NodeId,
        listen: Option<SocketAddr>,
    },
    /// A node (Hello role Transfer) asking for connections back from our leaves
    /// ([`Message::ConnectToMe`]); it is reached at `back` (None: it named no port).
    Requester {
        node: NodeId,
        back: Option<SocketAddr>,
        asked: u32,
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
    /// The last ping sent and not answered: its nonce, and when.
    ping: Option<(u64, Instant)>,
    /// The least round trip its pings took (hole punches are timed by it).
    rtt: Option<std::time::Duration>,
    closing: bool,
    /// We dialled this connection (to `remote`, a super-peer's listen address).
    dialed: bool,
    /// The queries we may still send it (used once it is a neighbour).
    budget: shaping::QueryBudget,
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

/// The super-peer's overlay logic. See the crate docs for the input/output discipline.
#[derive(Debug)]
pub struct SuperPeer {
    node: NodeId,
    listen: Option<SocketAddr>,
    config: Config,
    conns: HashMap<ConnId, Conn>,
    /// Queries seen, each owned by the connection it came from: a connection that floods
    /// fresh ids evicts its own entries, not the reverse paths of others' queries.
    seen: SeenCache<QueryId, Seen, ConnId>,
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
    /// Route tables: ours, our neighbours', the depth-1 table.
    routes: Routes,
    /// Leaves' queries being searched dynamically.
    dynamic: HashMap<QueryId, Dynamic>,
    /// The earliest keep-alive, idle or handshake deadline of a connection, or earlier (a
    /// lower bound: received messages only move deadlines later), so that
    /// [`SuperPeer::poll_timeout`], asked after every event, need not look at every
    /// connection; `None` until it is next worked out.
    conn_deadline: Cell<Option<Instant>>,
    /// Relays asked for and not ended, by token.
    relays: HashMap<u64, relay::Relay>,
    /// Dial-backs asked of neighbours and made for them.
    reach: reach::Reach,
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
        SuperPeer {
            node,
            listen,
            seen: SeenCache::new(config.seen_capacity, config.seen_ttl),
            hosts: HostCache::new(config.host_cache_size),
            next_tick: now,
            routes: Routes::new(config.route_bits),
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
            dynamic: HashMap::new(),
            conn_deadline: Cell::new(None),
            relays: HashMap::new(),
            reach: reach::Reach::default(),
        }
    }

    /// Connections to neighbouring super-peers.
    pub fn neighbour_conns(&self) -> Vec<ConnId> {
        neighbour_conns(&self.conns)
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
    #[cfg(any(test, feature = "sim"))]
    pub fn config_mut(&mut self) -> &mut Config {
        self.conn_deadline.set(None); // timeouts may change
        &mut self.config
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
            ping: None,
            rtt: None,
            closing: false,
            dialed,
            budget: shaping::QueryBudget::new(now, &self.config),
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

    /// The node is stopping (SIGTERM, say): every connection is told `reason` in a Goodbye and
    /// closed, so neighbours and leaves move on at once instead of waiting for a timeout.
    pub fn handle_shutdown(&mut self, reason: &str) {
        let mut conns: Vec<ConnId> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        for conn in conns {
            self.close(conn, reason.to_string(), true);
        }
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
                let (routes, mut out) = self.split_routes();
                routes.leaf_gone(now, &mut out, conn);
                self.dynamic_leaf_gone(conn);
            }
            PeerState::SuperPeer { .. } => {
                self.stats.neighbours -= 1;
                self.events.push_back(Event::NeighbourGone { conn });
                self.routes.neighbour_gone(now, &self.config, conn);
                self.reach_peer_gone(now, conn);
            }
            PeerState::AwaitingHello | PeerState::Requester { .. } => {}
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
            (_, Message::Pong { nonce }) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    if let Some((_, at)) = c.ping.filter(|(n, _)| *n == nonce) {
                        // The least seen: an answer that waited behind the peer's own
                        // messages (a leaf's registrations, as it attaches) says less.
                        let rtt = now.saturating_duration_since(at);
                        c.rtt = Some(c.rtt.map_or(rtt, |old| old.min(rtt)));
                        c.ping = None;
                    }
                }
            }
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
                let (routes, mut out) = self.split_routes();
                routes.add_files(now, &mut out, conn, &files);
                let (held, bytes) = self.routes.held(conn);
                let over = if held > self.config.max_files_per_leaf {
                    Some((
                        "max_files_per_leaf",
                        format!(
                            "{held} files registered > {}",
                            self.config.max_files_per_leaf
                        ),
                    ))
                } else if bytes > self.config.max_record_bytes_per_leaf {
                    Some((
                        "max_metadata_per_leaf",
                        format!(
                            "{bytes} bytes of records > {}",
                            self.config.max_record_bytes_per_leaf
                        ),
                    ))
                } else {
                    None
                };
                match over {
                    // The leaf goes, and everything it registered with it.
                    Some((limit, detail)) => {
                        self.events.push_back(Event::OverLimit {
                            conn,
                            limit,
                            detail: detail.clone(),
                        });
                        self.close(conn, format!("{limit}: {detail}"), true);
                    }
                    None => self.events.push_back(Event::Register { conn, files }),
                }
            }
            (PeerState::Leaf { .. }, Message::Withdraw { ids }) => {
                let (routes, mut out) = self.split_routes();
                let ids = routes.withdraw(now, &mut out, conn, &ids);
                // Only what the leaf held is withdrawn; ids it never registered cost no work.
                if !ids.is_empty() {
                    self.events.push_back(Event::Withdraw { conn, ids })
                }
            }
            (PeerState::Leaf { .. }, Message::Query(mut query)) => {
                // A leaf's query starts its trip here: hops count super-peer links only.
                query.hops = 0;
                self.on_query(now, conn, query);
            }
            (PeerState::SuperPeer { .. }, Message::Query(query)) => self.on_query(now, conn, query),
            (PeerState::SuperPeer { .. }, Message::QueryHits(mut hits)) => {
                for h in &mut hits.hits {
                    h.source.via = h.source.via.map(|v| seen_at(v, remote));
                }
                self.on_hits(now, Some(conn), hits)
            }
            (PeerState::SuperPeer { .. }, Message::RouteTable { bits, slots, depth }) => {
                let (routes, mut out) = self.split_routes();
                if let Err(e) = routes.handle_table(now, &mut out, conn, bits, &slots.0, depth) {
                    self.protocol_error(conn, e.to_string());
                }
            }
            (PeerState::SuperPeer { .. }, Message::RoutePatch { flips, depth }) => {
                let (routes, mut out) = self.split_routes();
                if let Err(e) = routes.handle_patch(now, &mut out, conn, &flips.0, depth) {
                    self.protocol_error(conn, e.to_string());
                }
            }
            (PeerState::SuperPeer { .. }, Message::CheckReach { token, addr, node }) => {
                self.on_check_reach(now, conn, token, addr, node)
            }
            (PeerState::SuperPeer { .. }, Message::ReachChecked { token, reachable }) => {
                self.on_reach_checked(now, conn, token, reachable)
            }
            (PeerState::Requester { .. }, Message::WhereAmI) => self.on_where_am_i(conn, remote),
            (PeerState::Requester { .. }, Message::RelayVia { node, token }) => {
                self.on_relay_via(now, conn, node, token)
            }
            (PeerState::Requester { .. }, Message::ConnectToMe { node, token, punch }) => {
                self.on_connect_to_me(now, conn, node, token, punch)
            }
            // A leaf may ask over its own link, which saves a connection (and its handshakes)
            // before the first byte of a download from a source behind a NAT.
            (PeerState::Leaf { .. }, Message::ConnectToMe { node, token, punch }) => {
                self.on_connect_to_me(now, conn, node, token, punch)
            }
            (PeerState::SuperPeer { listen, .. }, Message::Hosts { hosts }) => {
                // As many as we send: more from one message is not news but a push.
                for h in hosts.into_iter().take(HOSTS_SHARED) {
                    if Some(h.addr) == self.listen {
                        continue;
                    }
                    if Some(h.addr) == listen && h.addr.ip() == remote.ip() {
                        // What a neighbour at the address we see says of itself is first-hand.
                        self.hosts.heard_from(now, h.addr, h.load);
                    } else {
                        self.hosts.add_from(now, h, remote.ip());
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

    /// Time has passed: keep-alives, idle and handshake timeouts, seen-cache expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.seen.expire(now);
        self.expire_relays(now);
        self.expire_reach_asks(now);
        let (routes, mut out) = self.split_routes();
        routes.handle_timeout(now, &mut out);
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
            self.ping(now, id);
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

    /// Pings `conn`, and times the answer.
    pub(super) fn ping(&mut self, now: Instant, conn: ConnId) {
        self.ping_nonce += 1;
        let nonce = self.ping_nonce;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.ping = Some((nonce, now));
        }
        self.send(conn, Message::Ping { nonce });
    }

    /// The round trip to `conn`, in milliseconds, once a ping was answered.
    pub(super) fn rtt_ms(&self, conn: ConnId) -> Option<u32> {
        let rtt = self.conns.get(&conn)?.rtt?;
        Some(rtt.as_millis().min(u32::MAX as u128) as u32)
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
            self.routes.poll_timeout(&self.config),
            self.dynamic_due(),
            self.relay_deadline(),
            self.reach_deadline(),
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
            Some(PeerState::Requester { .. }) => "requester",
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
                // A leaf serves chunks at the address we see it at, on the port it names:
                // never at an address it claims, or any leaf could send every downloader of a
                // popular name to a victim's address.
                // (This node's own leaf link, after a promotion, comes over loopback: its
                // files are served where its leaf side listens.)
                let source = hello.listen.map(|l| match hello.node == self.node {
                    true if !l.ip().is_unspecified() => l,
                    _ => SocketAddr::new(remote.ip(), l.port()),
                });
                self.stats.leaves += 1;
                self.events.push_back(Event::LeafJoined {
                    conn,
                    node: hello.node,
                });
                if let Some(addr) = source {
                    self.check_reach(now, conn, addr, hello.node);
                }
                // Tell it which other super-peers there are, for its host cache.
                let hosts = self.hosts_to_share(now);
                self.send(conn, Message::Hosts { hosts });
                // Its round trip times the hole punches it is asked for.
                self.ping(now, conn);
                PeerState::Leaf {
                    node: hello.node,
                    source,
                    capability: hello.capability.unwrap_or_default(),
                    reachable: None,
                    joined: now,
                    asked: crate::per_minute::PerMinute::new(now),
                }
            }
            Role::SuperPeer => {
                if !dialed && self.stats.neighbours >= self.config.max_neighbours as u64 {
                    return self.redirect(now, conn, RedirectReason::Full);
                }
                if let Some(dup) = self.duplicate_of(conn, hello.node) {
                    self.close(dup, "duplicate connection".into(), true);
                    if dup == conn {
                        return;
                    }
                    // The older link goes: this one is the neighbour from now on.
                }
                if let Some(listen) = hello.listen {
                    let load = hello.load.unwrap_or_default();
                    // First-hand only at the address we see it at; any other address it names
                    // for itself is its word, not ours.
                    if listen.ip() == remote.ip() {
                        self.hosts.heard_from(now, listen, load);
                    } else {
                        let entry = HostEntry {
                            addr: listen,
                            load,
                            age_s: 0,
                        };
                        self.hosts.add_from(now, entry, remote.ip());
                    }
                }
                self.stats.neighbours += 1;
                self.events.push_back(Event::NeighbourJoined {
                    conn,
                    node: hello.node,
                });
                let hosts = self.hosts_to_share(now);
                self.send(conn, Message::Hosts { hosts });
                let (routes, mut out) = self.split_routes();
                routes.neighbour_joined(now, &mut out, conn);
                PeerState::SuperPeer {
                    node: hello.node,
                    listen: hello.listen,
                }
            }
            // It may only ask for connections back, to the address we see it at.
            Role::Transfer => PeerState::Requester {
                node: hello.node,
                back: hello.listen.map(|l| SocketAddr::new(remote.ip(), l.port())),
                asked: 0,
            },
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

    /// The route tables, and what they need of the rest for one call.
    fn split_routes(&mut self) -> (&mut Routes, Out<'_>) {
        let out = Out {
            config: &self.config,
            conns: &self.conns,
            transmits: &mut self.transmits,
        };
        (&mut self.routes, out)
    }
}

/// Connections to neighbouring super-peers (not closing), ascending.
fn neighbour_conns(conns: &HashMap<ConnId, Conn>) -> Vec<ConnId> {
    let mut v: Vec<ConnId> = conns
        .iter()
        .filter(|(_, c)| !c.closing && matches!(c.state, PeerState::SuperPeer { .. }))
        .map(|(&id, _)| id)
        .collect();
    v.sort();
    v
}
