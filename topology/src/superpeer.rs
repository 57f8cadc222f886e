//! The super-peer's overlay state machine.
//!
//! It tracks its connections (leaves and neighbouring super-peers), turns leaf registrations into
//! index events, floods queries with a TTL and a seen-cache, and routes hits back along the path
//! each query came by. It owns no socket and no index: the driver feeds it inputs and carries out
//! its outputs (see the crate docs for the drain rule).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{
    FileId, FileRecord, Hello, Hit, Message, NodeId, Query, QueryHits, QueryId, Role, Search,
    Source, MAX_TTL, PROTOCOL_VERSION,
};

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
    /// Free text sent in Hello.
    pub agent: String,
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
            hits_per_message: 100,
            agent: concat!("canopy/", env!("CARGO_PKG_VERSION")).to_string(),
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
    },
    /// A neighbouring super-peer.
    SuperPeer { node: NodeId },
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
}

/// Where a query came from: hits for it go back there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Conn(ConnId),
}

/// The super-peer's overlay logic. See the crate docs for the input/output discipline.
#[derive(Debug)]
pub struct SuperPeer {
    node: NodeId,
    listen: Option<SocketAddr>,
    config: Config,
    conns: HashMap<ConnId, Conn>,
    seen: SeenCache<QueryId, Origin>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
    ping_nonce: u64,
}

impl SuperPeer {
    /// A super-peer with id `node` that accepts connections at `listen`.
    pub fn new(node: NodeId, listen: Option<SocketAddr>, config: Config) -> Self {
        SuperPeer {
            node,
            listen,
            seen: SeenCache::new(config.seen_capacity, config.seen_ttl),
            config,
            conns: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            ping_nonce: 0,
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

    /// A connection opened (inbound or outbound): we greet first, whichever side dialled.
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId, remote: SocketAddr) {
        self.conns.insert(
            conn,
            Conn {
                remote,
                state: PeerState::AwaitingHello,
                opened: now,
                last_rx: now,
                next_ping: now + self.config.keepalive_interval,
                closing: false,
            },
        );
        self.send(
            conn,
            Message::Hello(Hello {
                version: PROTOCOL_VERSION,
                node: self.node,
                role: Role::SuperPeer,
                listen: self.listen,
                agent: self.config.agent.clone(),
            }),
        );
    }

    /// A connection is gone (closed by either side, or failed).
    pub fn handle_disconnect(&mut self, _now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        match c.state {
            PeerState::Leaf { .. } => {
                self.stats.leaves -= 1;
                self.events.push_back(Event::LeafGone { conn });
            }
            PeerState::SuperPeer { .. } => {
                self.stats.neighbours -= 1;
                self.events.push_back(Event::NeighbourGone { conn });
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
            (PeerState::AwaitingHello, Message::Hello(hello)) => self.on_hello(conn, remote, hello),
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
                self.events.push_back(Event::Register { conn, files })
            }
            (PeerState::Leaf { .. }, Message::Withdraw { ids }) => {
                self.events.push_back(Event::Withdraw { conn, ids })
            }
            (PeerState::Leaf { .. }, Message::Query(mut query)) => {
                // A leaf's query starts its trip here: hops count super-peer links only.
                query.hops = 0;
                self.on_query(now, conn, query);
            }
            (PeerState::SuperPeer { .. }, Message::Query(query)) => self.on_query(now, conn, query),
            (PeerState::SuperPeer { .. }, Message::QueryHits(hits)) => self.on_hits(now, hits),
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
            self.on_hits(now, QueryHits { query, hits });
        }
    }

    /// Time has passed: keep-alives, idle and handshake timeouts, seen-cache expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.seen.expire(now);
        let mut to_close = Vec::new();
        let mut to_ping = Vec::new();
        for (&id, c) in &mut self.conns {
            if c.closing {
                continue;
            }
            if c.state == PeerState::AwaitingHello && now >= c.opened + self.config.hello_timeout {
                to_close.push((id, "no Hello within the handshake timeout".to_string()));
            } else if now >= c.last_rx + self.config.idle_timeout {
                to_close.push((id, format!("silent for {:?}", self.config.idle_timeout)));
            } else if now >= c.next_ping {
                c.next_ping = now + self.config.keepalive_interval;
                to_ping.push(id);
            }
        }
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
            log::info!("closing {id}: {reason}");
            self.close(id, reason, true);
        }
    }

    /// The next time [`SuperPeer::handle_timeout`] should be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conn_deadline = self
            .conns
            .values()
            .filter(|c| !c.closing)
            .map(|c| {
                let idle = c.last_rx + self.config.idle_timeout;
                let first = c.next_ping.min(idle);
                if c.state == PeerState::AwaitingHello {
                    first.min(c.opened + self.config.hello_timeout)
                } else {
                    first
                }
            })
            .min();
        match (conn_deadline, self.seen.next_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
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

    fn on_hello(&mut self, conn: ConnId, remote: SocketAddr, hello: Hello) {
        if hello.version != PROTOCOL_VERSION {
            return self.protocol_error(
                conn,
                format!(
                    "protocol version {} (we speak {PROTOCOL_VERSION})",
                    hello.version
                ),
            );
        }
        if hello.node == self.node {
            return self.close(conn, "connected to ourselves".into(), true);
        }
        let state = match hello.role {
            Role::Leaf => {
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
                PeerState::Leaf {
                    node: hello.node,
                    source,
                }
            }
            Role::SuperPeer => {
                self.stats.neighbours += 1;
                self.events.push_back(Event::NeighbourJoined {
                    conn,
                    node: hello.node,
                });
                PeerState::SuperPeer { node: hello.node }
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
        if !self.seen.insert(now, query.id, Origin::Conn(from)) {
            self.stats.duplicates_dropped += 1;
            return;
        }
        self.stats.queries_processed += 1;
        self.events.push_back(Event::Search {
            query: query.id,
            search: query.search.clone(),
        });
        if query.ttl == 0 {
            return;
        }
        let forward = Query {
            ttl: query.ttl - 1,
            hops: query.hops + 1,
            ..query
        };
        let neighbours: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(&id, c)| {
                id != from && !c.closing && matches!(c.state, PeerState::SuperPeer { .. })
            })
            .map(|(&id, _)| id)
            .collect();
        for id in neighbours {
            self.stats.queries_forwarded += 1;
            self.send(id, Message::Query(forward.clone()));
        }
    }

    fn on_hits(&mut self, now: Instant, hits: QueryHits) {
        let n = hits.hits.len() as u64;
        let to = match self.seen.get(now, &hits.query) {
            Some(Origin::Conn(c)) if self.conns.get(c).is_some_and(|c| !c.closing) => *c,
            _ => {
                self.stats.hits_dropped += n;
                return;
            }
        };
        self.stats.hits_routed += n;
        let query = hits.query;
        let mut hits = hits.hits;
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
