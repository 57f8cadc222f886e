//! The leaf's overlay logic: which super-peers to attach to, staying attached, and when to
//! become a super-peer. Sans-IO like [`crate::SuperPeer`], with the same drain rule.
//!
//! The leaf keeps `target` super-peers (2 by default), dialling the best candidates of its host
//! cache (configured bootstrap addresses, what super-peers tell it in `Hosts`, and what an
//! earlier run saved). A super-peer that is full or demoting answers `Redirect` with others to
//! try. A leaf that has found no super-peer at all for `promote_when_alone_after` promotes
//! itself (if it may, and unless the super-peers last found it unreachable: nobody could
//! connect to it); a super-peer running out of slots may ask it to (`Promote`), only if it
//! found it reachable.
//!
//! It also carries what the node says on its links, in order: the registration of every shared
//! file on a link as it attaches ([`LeafOverlay::register_all`], which the driver calls on
//! [`LeafEvent::Attached`] before any other input), later registrations and withdrawals on every
//! attached link ([`LeafOverlay::handle_share`]), and queries ([`LeafOverlay::start_query`]),
//! whose hits come back as [`LeafEvent::Hits`] until [`LeafOverlay::end_query`]. Since one
//! machine queues them all, a withdrawal never overtakes the registration it cancels.
//!
//! What it knows of its own reachability (per address family, the kind of NAT) and the rules
//! for connecting back and timing a hole punch are in `reach`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{
    Capability, FileId, FileRecord, Hello, Hit, HostEntry, Message, NodeId, Query, QueryId,
    RedirectReason, Role,
};

use crate::hostcache::HostCache;
use crate::role::RoleClock;
use crate::superpeer::Transmit;
use crate::ConnId;

mod reach;
use reach::may_connect_back;
pub use reach::{is_v6, punch_wait, NatKind, Reach};

/// Registrations are sent in batches of about this many bytes.
pub const REGISTER_BATCH_BYTES: usize = 256 << 10;
/// Withdrawals are sent in batches of this many ids (34 bytes each in CBOR).
pub const WITHDRAW_BATCH: usize = 8192;

/// Splits records into Register batches that stay well under the frame limit (about 256 KiB
/// each, whatever the length of the names and tags).
pub fn register_batches(files: &[FileRecord]) -> Vec<Vec<FileRecord>> {
    let mut batches = Vec::new();
    let mut batch = Vec::new();
    let mut bytes = 0;
    for f in files {
        let size = 120 + f.text_len();
        if bytes + size > REGISTER_BATCH_BYTES && !batch.is_empty() {
            batches.push(std::mem::take(&mut batch));
            bytes = 0;
        }
        bytes += size;
        batch.push(f.clone());
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

/// How soon a leaf with no super-peer at all asks a full one again.
const ALONE_RETRY: Duration = Duration::from_secs(5);

/// Settings of a leaf's overlay logic.
#[derive(Debug, Clone)]
pub struct LeafConfig {
    /// Super-peers to stay attached to.
    pub target: usize,
    /// A leaf that finds no super-peer for this long becomes one (if it may).
    pub promote_when_alone_after: Duration,
    /// Whether this node may become a super-peer (`--no-promote` says no).
    pub can_promote: bool,
    /// How often the links are checked and gaps filled.
    pub tick: Duration,
    /// A link silent for this long is closed (super-peers ping every 15 s).
    pub idle_timeout: Duration,
    /// How long a super-peer that said it is full is left alone (by a leaf that has another
    /// link; a leaf with none asks again after 5 s).
    pub full_backoff: Duration,
    /// Entries the host cache holds at most.
    pub host_cache_size: usize,
    /// Free text sent in Hello.
    pub agent: String,
}

impl Default for LeafConfig {
    fn default() -> Self {
        LeafConfig {
            target: 2,
            promote_when_alone_after: Duration::from_secs(5),
            can_promote: true,
            tick: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(60),
            full_backoff: Duration::from_secs(60),
            host_cache_size: 1000,
            agent: concat!("canopy/", env!("CARGO_PKG_VERSION")).to_string(),
        }
    }
}

/// What the driver must act on, besides sending messages.
#[derive(Debug, Clone, PartialEq)]
pub enum LeafEvent {
    /// Connect to this super-peer; then call [`LeafOverlay::handle_connect`] or
    /// [`LeafOverlay::handle_dial_failed`].
    Dial(SocketAddr),
    /// A link is up: call [`LeafOverlay::register_all`] with every shared file, before any
    /// other input.
    Attached {
        /// The connection.
        conn: ConnId,
        /// The super-peer's address.
        addr: SocketAddr,
        /// Its node id.
        node: NodeId,
    },
    /// A link that was up is gone.
    Detached {
        /// The connection.
        conn: ConnId,
        /// The super-peer's address.
        addr: SocketAddr,
    },
    /// Close this connection once its queued messages are sent.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        reason: String,
    },
    /// Hits for a query started with [`LeafOverlay::start_query`] and not ended.
    Hits {
        /// The query.
        query: QueryId,
        /// The hits.
        hits: Vec<Hit>,
    },
    /// The answer to a request sent with [`LeafOverlay::ask_connect_back`]: the source was
    /// asked, or why not (the super-peer's word).
    ConnectAsked {
        /// The request's token.
        token: u64,
        /// Why the source was not asked (None: it was).
        error: Option<String>,
        /// For a hole punch: how long to wait before dialling, so as to dial when the source
        /// does ([`punch_wait`], from the answer's round trip).
        wait: Duration,
    },
    /// The link a request was sent on ([`LeafOverlay::ask_connect_back`]) went before the
    /// answer came: ask again on a connection of its own.
    AskLost {
        /// The request's token.
        token: u64,
    },
    /// A super-peer we are attached to asks us to connect to `addr` (whose key must be that of
    /// `node`), send [`Message::Reversed`] with `token`, and serve it chunks: it cannot reach
    /// us. The driver bounds how many it makes at once.
    ConnectBack {
        /// Who asked.
        node: NodeId,
        /// Where it is, as the super-peer saw it.
        addr: SocketAddr,
        /// Names the connection.
        token: u64,
        /// The super-peer that passed the request on.
        via: SocketAddr,
        /// Dial from the listen port and keep trying: the requester is dialling us too.
        punch: bool,
        /// For a hole punch: how long to wait before dialling, so that the requester, farther
        /// from the super-peer, dials at the same moment.
        wait: Duration,
    },
    /// A super-peer we are attached to relays for `node`, which cannot reach us nor we it:
    /// open a connection to the super-peer at `via` (node `superpeer`), join relay `token`,
    /// and serve `node` through it. Counted with [`LeafEvent::ConnectBack`] against
    /// [`CONNECT_BACKS_PER_MINUTE`].
    RelayBack {
        /// Who asked.
        node: NodeId,
        /// The relay's token.
        token: u64,
        /// The super-peer that relays.
        via: SocketAddr,
        /// Its node id (its key is checked when joining).
        superpeer: NodeId,
    },
    /// We cannot be reached: connect to these super-peers from our listen port, ask each
    /// [`Message::WhereAmI`], and pass the answers to [`LeafOverlay::handle_probe`]. Two seeing
    /// one port mean the router keeps a port's mapping whoever we talk to.
    Probe {
        /// Two attached super-peers.
        superpeers: Vec<SocketAddr>,
    },
    /// Become a super-peer (the [`RoleClock`] allowed it). The driver starts the super-peer
    /// role and passes [`LeafOverlay::into_parts`] on to it.
    Promote {
        /// Why.
        reason: String,
    },
}

#[derive(Debug)]
struct Link {
    addr: SocketAddr,
    node: Option<NodeId>,
    last_rx: Instant,
    closing: bool,
    /// What the super-peer found when it connected back: our address as it sees it, and
    /// whether the connection got through.
    reach: Option<(SocketAddr, bool)>,
    /// Requests to connect back passed on by this link in the current minute: (its start,
    /// how many).
    connect_backs: crate::per_minute::PerMinute,
    /// Tokens of our own requests for connections back sent on this link and not answered
    /// yet ([`LeafOverlay::ask_connect_back`]), with when each was sent.
    asks: Vec<(u64, Instant)>,
}

/// A request for a connection back not answered in this long is given up (as lost).
const ASK_EXPIRY: Duration = Duration::from_secs(30);

/// Our requests for connections back awaiting an answer on one link; more go on connections
/// of their own.
const ASKS_PER_LINK: usize = 256;

/// Requests to connect back one super-peer may pass on in a minute; more are ignored (a
/// super-peer must not be able to aim its leaves at a third party).
pub const CONNECT_BACKS_PER_MINUTE: u32 = 30;

/// The leaf's overlay state machine; see the module docs.
#[derive(Debug)]
pub struct LeafOverlay {
    node: NodeId,
    listen: Option<SocketAddr>,
    config: LeafConfig,
    capability: Capability,
    hosts: HostCache,
    links: HashMap<ConnId, Link>,
    dialing: HashSet<SocketAddr>,
    alone_since: Option<Instant>,
    clock: RoleClock,
    next_tick: Instant,
    promoted: bool,
    /// Queries whose hits are wanted.
    searches: HashSet<QueryId>,
    /// Where super-peers saw probes from our listen port come from, by super-peer.
    probes: std::collections::BTreeMap<SocketAddr, SocketAddr>,
    /// A probe was asked for since the listen address was last set.
    probed: bool,
    /// The last word of the super-peers on our reachability at this listen address: `Some(false)`
    /// once one found us unreachable and none reachable (kept when the links go, so that a
    /// leaf left alone remembers it is behind a NAT); `None` until one said, or since the
    /// listen address changed.
    last_reachable: Option<bool>,
    /// Whether this node can reach super-peers over IPv6 (it has a route there, and serves
    /// over IPv6 if it serves at all); without, IPv6 ones are not dialled (but on loopback).
    ipv6: bool,
    /// The port it serves on over IPv6, named in Hello on IPv6 links (the port mapped on an
    /// IPv4 router is no IPv6 port).
    port6: Option<u16>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<LeafEvent>,
}

impl LeafOverlay {
    /// A leaf with id `node`, serving chunks at `listen`, starting at `now`. `clock` carries
    /// the node's role history; it is set to leaf.
    pub fn new(
        now: Instant,
        node: NodeId,
        listen: Option<SocketAddr>,
        config: LeafConfig,
        mut clock: RoleClock,
    ) -> Self {
        clock.changed(now, crate::NodeRole::Leaf);
        LeafOverlay {
            node,
            listen,
            capability: Capability {
                can_promote: config.can_promote,
                ..Default::default()
            },
            hosts: HostCache::new(config.host_cache_size),
            config,
            links: HashMap::new(),
            dialing: HashSet::new(),
            alone_since: Some(now),
            clock,
            next_tick: now,
            promoted: false,
            searches: HashSet::new(),
            probes: Default::default(),
            probed: false,
            last_reachable: None,
            ipv6: true,
            port6: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Bootstrap addresses (configured).
    pub fn add_seeds(&mut self, now: Instant, addrs: &[SocketAddr]) {
        for a in addrs {
            self.hosts.add_seed(now, *a);
        }
    }

    /// Whether this node can reach IPv6 addresses (true unless told otherwise), and the port
    /// it serves on over IPv6 (`port6`; a node that serves must have one to link over IPv6).
    /// A node that can keeps a link over IPv6 beside its IPv4 ones, where super-peers of both
    /// are known, so that each family's address is seen, checked and named in hits by a
    /// super-peer of that family.
    pub fn set_ipv6(&mut self, ipv6: bool, port6: Option<u16>) {
        self.ipv6 = ipv6 && (self.listen.is_none() || port6.is_some());
        self.port6 = port6;
    }

    /// Super-peers remembered from an earlier run or handed over on a role change.
    pub fn import_hosts(&mut self, now: Instant, entries: &[HostEntry]) {
        for e in entries {
            self.hosts.add(now, *e);
        }
    }

    /// What the leaf tells super-peers about itself (uptime is filled in from `now`).
    pub fn set_capability(&mut self, capability: Capability) {
        self.capability = Capability {
            can_promote: self.config.can_promote,
            ..capability
        };
    }

    /// The host cache (to save it).
    pub fn hosts(&self) -> &HostCache {
        &self.hosts
    }

    /// The role history.
    pub fn clock(&self) -> &RoleClock {
        &self.clock
    }

    /// Ends the leaf role: its role history and host cache, for the super-peer role.
    pub fn into_parts(self) -> (RoleClock, HostCache) {
        (self.clock, self.hosts)
    }

    /// Super-peers attached now: (connection, address).
    pub fn attached(&self) -> Vec<(ConnId, SocketAddr)> {
        let mut v: Vec<_> = self
            .links
            .iter()
            .filter(|(_, l)| l.node.is_some() && !l.closing)
            .map(|(&c, l)| (c, l.addr))
            .collect();
        v.sort();
        v
    }

    /// Super-peers attached now: (address, node id), by address.
    pub fn superpeers(&self) -> Vec<(SocketAddr, NodeId)> {
        let mut v: Vec<_> = self
            .links
            .values()
            .filter(|l| !l.closing)
            .filter_map(|l| l.node.map(|n| (l.addr, n)))
            .collect();
        v.sort();
        v
    }

    /// Where we serve changed, or a port mapping for it came or went: every link is closed and
    /// dialled again, so each super-peer hears the new address in Hello and connects back to
    /// it. With the address unchanged and a mapping gained (`lost` false), only links whose
    /// super-peer did not find us reachable (or has not said yet) are, to be checked again;
    /// with a mapping lost, all are.
    pub fn set_listen(&mut self, now: Instant, listen: Option<SocketAddr>, lost: bool) {
        let same = listen == self.listen && !lost;
        self.listen = listen;
        // Whether we can be reached is to be found again, whatever changed (a mapping gained
        // included).
        self.last_reachable = None;
        if !same {
            // Another port, or a mapping gone: how it is mapped is to be found again.
            self.probes.clear();
            self.probed = false;
        }
        let mut conns: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| !same || !matches!(l.reach, Some((_, true))))
            .map(|(&c, _)| c)
            .collect();
        conns.sort_unstable();
        let reason = match same {
            true => "a port mapping appeared: attaching again to be checked",
            false => "our listen address changed: attaching again",
        };
        for c in conns {
            self.close(c, reason.into());
        }
        self.fill(now);
    }

    /// A link attached ([`LeafEvent::Attached`]): registers `files`, every file the node
    /// shares, on it. A node that serves nobody (no listen address) registers nothing.
    pub fn register_all(&mut self, conn: ConnId, files: &[FileRecord]) {
        let attached = self
            .links
            .get(&conn)
            .is_some_and(|l| l.node.is_some() && !l.closing);
        if !attached || self.listen.is_none() {
            return;
        }
        for files in register_batches(files) {
            self.transmits.push_back(Transmit {
                to: conn,
                msg: Message::Register { files },
            });
        }
    }

    /// The node's shared files changed: registers `added` and withdraws `removed` on every
    /// attached link, after whatever was queued before.
    pub fn handle_share(&mut self, added: &[FileRecord], removed: &[FileId]) {
        if self.listen.is_none() {
            return;
        }
        for (conn, _) in self.attached() {
            for files in register_batches(added) {
                self.transmits.push_back(Transmit {
                    to: conn,
                    msg: Message::Register { files },
                });
            }
            for ids in removed.chunks(WITHDRAW_BATCH) {
                self.transmits.push_back(Transmit {
                    to: conn,
                    msg: Message::Withdraw { ids: ids.to_vec() },
                });
            }
        }
    }

    /// Sends `query` to every attached super-peer; its hits come back as [`LeafEvent::Hits`]
    /// until [`LeafOverlay::end_query`]. Returns how many super-peers it went to (none: the
    /// query is not kept).
    pub fn start_query(&mut self, query: Query) -> usize {
        let links = self.attached();
        for (conn, _) in &links {
            self.transmits.push_back(Transmit {
                to: *conn,
                msg: Message::Query(query.clone()),
            });
        }
        if !links.is_empty() {
            self.searches.insert(query.id);
        }
        links.len()
    }

    /// Hits of `query` are no longer wanted: later ones are dropped.
    pub fn end_query(&mut self, query: QueryId) {
        self.searches.remove(&query);
    }

    /// A dial asked for by [`LeafEvent::Dial`] connected.
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId, addr: SocketAddr) {
        self.dialing.remove(&addr);
        self.links.insert(
            conn,
            Link {
                addr,
                node: None,
                last_rx: now,
                closing: false,
                reach: None,
                connect_backs: crate::per_minute::PerMinute::new(now),
                asks: Vec::new(),
            },
        );
        // Over IPv6, the port of the IPv6 listener ("the address you see me at, on this port").
        let listen = match (is_v6(&addr) && !addr.ip().is_loopback(), self.port6) {
            (true, Some(port)) => self
                .listen
                .map(|_| SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port))),
            _ => self.listen,
        };
        let mut hello = Hello::new(self.node, Role::Leaf, listen, &self.config.agent);
        hello.capability = Some(self.capability);
        self.transmits.push_back(Transmit {
            to: conn,
            msg: Message::Hello(hello),
        });
    }

    /// A dial asked for by [`LeafEvent::Dial`] failed.
    pub fn handle_dial_failed(&mut self, now: Instant, addr: SocketAddr) {
        self.dialing.remove(&addr);
        self.hosts.failed(now, addr);
    }

    /// Asks the super-peer at `via`, over our link to it, that its leaf `node` connect to us
    /// ([`Message::ConnectToMe`] with `token` and `punch`): it connects to where it sees the
    /// link come from, on our listen port. The answer comes as [`LeafEvent::ConnectAsked`].
    /// False (nothing sent) if no link to `via` is attached, or too many requests on it await
    /// their answer: then the driver asks on a connection of its own. One not answered within
    /// 30 s is given up ([`LeafEvent::AskLost`]).
    pub fn ask_connect_back(
        &mut self,
        now: Instant,
        via: SocketAddr,
        node: NodeId,
        token: u64,
        punch: bool,
    ) -> bool {
        let Some((&conn, link)) = self
            .links
            .iter_mut()
            .filter(|(_, l)| l.addr == via && l.node.is_some() && !l.closing)
            .min_by_key(|(&c, _)| c)
        else {
            return false;
        };
        if link.asks.len() >= ASKS_PER_LINK || link.asks.iter().any(|&(t, _)| t == token) {
            return false;
        }
        link.asks.push((token, now));
        self.transmits.push_back(Transmit {
            to: conn,
            msg: Message::ConnectToMe { node, token, punch },
        });
        true
    }

    /// The requests awaiting an answer on `link` are lost.
    fn lose_asks(events: &mut VecDeque<LeafEvent>, link: &mut Link) {
        for (token, _) in link.asks.drain(..) {
            events.push_back(LeafEvent::AskLost { token });
        }
    }

    /// A link is gone.
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        let Some(mut link) = self.links.remove(&conn) else {
            return;
        };
        Self::lose_asks(&mut self.events, &mut link);
        match link.node {
            Some(_) => self.events.push_back(LeafEvent::Detached {
                conn,
                addr: link.addr,
            }),
            None if !link.closing => self.hosts.failed(now, link.addr),
            None => {}
        }
        if self.attached().is_empty() {
            self.alone_since.get_or_insert(now);
        }
    }

    /// A message on a link (Hello, Hosts, Redirect, Promote, Ping, Pong, Goodbye, QueryHits,
    /// Reachability, ConnectBack, RelayBack, ConnectAsked);
    /// anything else is ignored, as is anything on a link being closed.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: Message) {
        let Some(link) = self.links.get_mut(&conn) else {
            return;
        };
        if link.closing {
            // Already given up (silent, redirected, promoting): a late Hello must not attach it.
            return;
        }
        link.last_rx = now;
        let addr = link.addr;
        match msg {
            Message::Hello(h) if h.role == Role::SuperPeer && link.node.is_none() => {
                // (A super-peer with our own id is this node's own super-peer role, which the
                // node attaches to as a leaf once promoted.)
                link.node = Some(h.node);
                self.hosts.heard_from(now, addr, h.load.unwrap_or_default());
                self.alone_since = None;
                self.events.push_back(LeafEvent::Attached {
                    conn,
                    addr,
                    node: h.node,
                });
                self.maybe_probe();
            }
            Message::Hello(h) => {
                self.hosts.not_superpeer(now, addr);
                self.close(conn, format!("{addr} is not a super-peer ({:?})", h.role));
            }
            Message::Hosts { hosts } => {
                for h in hosts.into_iter().take(crate::superpeer::HOSTS_SHARED) {
                    if h.addr == addr {
                        // What our super-peer says of itself is first-hand.
                        self.hosts.heard_from(now, h.addr, h.load);
                    } else {
                        self.hosts.add_from(now, h, addr.ip());
                    }
                }
            }
            Message::Redirect { reason, hosts } => {
                for h in hosts.into_iter().take(crate::superpeer::HOSTS_SHARED) {
                    self.hosts.add_from(now, h, addr.ip());
                }
                match reason {
                    RedirectReason::Full => {
                        // A leaf with another link can wait; a leaf with none must keep trying.
                        let others = self
                            .links
                            .iter()
                            .any(|(&c, l)| c != conn && l.node.is_some());
                        let wait = if others {
                            self.config.full_backoff
                        } else {
                            ALONE_RETRY
                        };
                        self.hosts.full(now, addr, wait)
                    }
                    RedirectReason::Demoting => self.hosts.remove(&addr),
                }
                self.close(conn, format!("redirected by {addr}: {reason:?}"));
                // Fill the gap now rather than at the next tick.
                self.fill(now);
            }
            // Asked by the super-peer we are attached to through this link, when we may and
            // only as often as the role clock allows; a node that is no candidate (it may not
            // promote, or serves nobody: no reachable listener) ignores it.
            Message::Promote
                if self.config.can_promote
                    && self.listen.is_some()
                    && self.clock.may_change(now)
                    && !self.promoted =>
            {
                self.promote(format!("asked by super-peer {addr}, whose slots run out"));
            }
            Message::Ping { nonce } => self.transmits.push_back(Transmit {
                to: conn,
                msg: Message::Pong { nonce },
            }),
            Message::Goodbye { reason } => self.close(conn, format!("{addr} said: {reason}")),
            Message::ConnectAsked { token, error, sync } => {
                // Only answers to what we asked on this link.
                if let Some(i) = link.asks.iter().position(|&(t, _)| t == token) {
                    let (_, sent) = link.asks.swap_remove(i);
                    let wait = punch_wait(now.saturating_duration_since(sent), sync);
                    self.events
                        .push_back(LeafEvent::ConnectAsked { token, error, wait });
                }
            }
            Message::QueryHits(mut h) if self.searches.contains(&h.query) => {
                for hit in &mut h.hits {
                    hit.source.via = hit.source.via.map(|v| crate::superpeer::seen_at(v, addr));
                }
                self.events.push_back(LeafEvent::Hits {
                    query: h.query,
                    hits: h.hits,
                });
            }
            Message::Reachability {
                observed,
                reachable,
            } if link.node.is_some() => {
                link.reach = Some((observed, reachable));
                // Only the main family's word decides (promotion when alone among them).
                if is_v6(&addr) == self.main_family_v6() {
                    self.last_reachable = self.reach().map(|r| r.reachable);
                }
                self.maybe_probe();
            }
            // Only from a super-peer we attached to, and only if we serve at all.
            Message::ConnectBack {
                node,
                addr,
                token,
                punch,
                wait_ms,
            } if link.node.is_some() && self.listen.is_some() => {
                let allowed = link.connect_backs.take(now, CONNECT_BACKS_PER_MINUTE);
                if allowed && may_connect_back(addr, link.addr) {
                    let wait = match punch {
                        true => Duration::from_millis(wait_ms.min(wire::MAX_PUNCH_WAIT_MS).into()),
                        false => Duration::ZERO,
                    };
                    self.events.push_back(LeafEvent::ConnectBack {
                        node,
                        addr,
                        token,
                        via: link.addr,
                        punch,
                        wait,
                    });
                }
            }
            Message::RelayBack { node, token } if self.listen.is_some() => {
                let Some(superpeer) = link.node else { return };
                if link.connect_backs.take(now, CONNECT_BACKS_PER_MINUTE) {
                    self.events.push_back(LeafEvent::RelayBack {
                        node,
                        token,
                        via: link.addr,
                        superpeer,
                    });
                }
            }
            _ => {}
        }
    }

    /// Time has passed: fill missing links, drop silent ones, consider promoting when alone.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + self.config.tick;
        let mut ids: Vec<ConnId> = self.links.keys().copied().collect();
        ids.sort();
        for c in ids {
            let link = self.links.get_mut(&c).expect("listed");
            let events = &mut self.events;
            link.asks.retain(|&(token, sent)| {
                let keep = now < sent + ASK_EXPIRY;
                if !keep {
                    events.push_back(LeafEvent::AskLost { token });
                }
                keep
            });
        }
        let mut silent: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| !l.closing && now >= l.last_rx + self.config.idle_timeout)
            .map(|(&c, _)| c)
            .collect();
        silent.sort();
        for c in silent {
            self.close(c, "super-peer silent".into());
        }
        self.fill(now);
        if let Some(since) = self.alone_since {
            // A leaf the super-peers found unreachable does not make itself one when they are
            // gone: nobody could connect to it. It keeps looking for super-peers instead.
            if self.config.can_promote
                && self.last_reachable != Some(false)
                && !self.promoted
                && now >= since + self.config.promote_when_alone_after
                && self.clock.may_promote_alone(now)
            {
                let tried = self.hosts.len();
                self.promote(format!(
                    "no super-peer answered for {:?} ({tried} known)",
                    self.config.promote_when_alone_after
                ));
            }
        }
    }

    /// When [`LeafOverlay::handle_timeout`] wants to run next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.promoted).then_some(self.next_tick)
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event to act on.
    pub fn poll_event(&mut self) -> Option<LeafEvent> {
        self.events.pop_front()
    }

    /// Dials super-peers while short of links: `target` over the main family (IPv4 where
    /// any IPv4 super-peer is known), and one more over IPv6 beside them when this node can
    /// reach IPv6, so that its address of each family is seen and checked.
    fn fill(&mut self, now: Instant) {
        if self.promoted {
            return;
        }
        let in_use: HashSet<SocketAddr> = self
            .links
            .values()
            .map(|l| l.addr)
            .chain(self.dialing.iter().copied())
            .collect();
        let busy = |v6: bool| {
            self.links
                .values()
                .filter(|l| !l.closing && is_v6(&l.addr) == v6)
                .count()
                + self.dialing.iter().filter(|a| is_v6(a) == v6).count()
        };
        let (busy4, busy6) = (busy(false), busy(true));
        let own = self.listen;
        // A leaf that has a link leaves a super-peer's last slots (a tenth) to leaves that
        // have none, which would otherwise lose every race for a new super-peer's room.
        let attached = self.links.values().any(|l| l.node.is_some() && !l.closing);
        let hosts = &self.hosts;
        let reserved = |a: &SocketAddr| {
            attached
                && hosts.get(a).is_some_and(|h| {
                    h.load.leaf_slots > 0 && h.load.free() <= (h.load.leaf_slots / 10).max(1)
                })
        };
        let ipv6 = self.ipv6;
        let skip = |a: &SocketAddr| {
            in_use.contains(a)
                || Some(*a) == own
                || reserved(a)
                || (is_v6(a) && !ipv6 && !a.ip().is_loopback())
        };
        let target = self.config.target;
        let of = |v6: bool, n: usize| -> Vec<SocketAddr> {
            self.hosts
                .candidates(now, n, true, &|a| skip(a) || is_v6(a) != v6)
        };
        // The main family is IPv4 unless no IPv4 super-peer is known at all.
        let four = of(false, target.saturating_sub(busy4));
        let main_v4 = busy4 > 0 || !four.is_empty() || !ipv6;
        let six = match main_v4 {
            true => of(true, 1usize.saturating_sub(busy6)),
            false => of(true, target.saturating_sub(busy6)),
        };
        for addr in four.into_iter().chain(six) {
            self.dialing.insert(addr);
            self.events.push_back(LeafEvent::Dial(addr));
        }
    }

    fn promote(&mut self, reason: String) {
        log::info!("becoming a super-peer: {reason}");
        self.promoted = true;
        let mut ids: Vec<ConnId> = self.links.keys().copied().collect();
        ids.sort();
        for id in ids {
            self.close(id, "becoming a super-peer".into());
        }
        self.events.push_back(LeafEvent::Promote { reason });
    }

    fn close(&mut self, conn: ConnId, reason: String) {
        if let Some(l) = self.links.get_mut(&conn) {
            if !l.closing {
                l.closing = true;
                Self::lose_asks(&mut self.events, l);
                self.events.push_back(LeafEvent::Close { conn, reason });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NodeRole;
    use crate::RoleConfig;

    /// Found by the `overlay` fuzz target: a link closed for silence before its super-peer said
    /// Hello was attached by that late Hello.
    #[test]
    fn a_hello_on_a_closing_link_does_not_attach_it() {
        let t0 = Instant::now();
        let clock = RoleClock::new(t0, NodeRole::Leaf, RoleConfig::default());
        let config = LeafConfig {
            can_promote: false,
            ..LeafConfig::default()
        };
        let mut leaf = LeafOverlay::new(t0, NodeId([1; 32]), None, config, clock);
        let sp: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        leaf.add_seeds(t0, &[sp]);
        leaf.handle_timeout(t0);
        assert_eq!(leaf.poll_event(), Some(LeafEvent::Dial(sp)));
        leaf.handle_connect(t0, 7, sp);
        assert!(matches!(
            leaf.poll_transmit().unwrap().msg,
            Message::Hello(_)
        ));

        let late = t0 + Duration::from_secs(61);
        leaf.handle_timeout(late);
        assert!(matches!(
            leaf.poll_event(),
            Some(LeafEvent::Close { conn: 7, .. })
        ));
        while leaf.poll_event().is_some() {}

        let hello = Hello::new(NodeId([2; 32]), Role::SuperPeer, Some(sp), "test");
        leaf.handle_message(late, 7, Message::Hello(hello));
        assert_eq!(leaf.poll_event(), None);
        assert!(leaf.attached().is_empty());
    }

    /// A leaf with `listen`, attached on link 7 to a super-peer.
    fn attached_leaf(listen: Option<SocketAddr>) -> (LeafOverlay, Instant) {
        let t0 = Instant::now();
        let clock = RoleClock::new(t0, NodeRole::Leaf, RoleConfig::default());
        let config = LeafConfig {
            can_promote: false,
            target: 1,
            ..LeafConfig::default()
        };
        let mut leaf = LeafOverlay::new(t0, NodeId([1; 32]), listen, config, clock);
        let sp: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        leaf.add_seeds(t0, &[sp]);
        leaf.handle_timeout(t0);
        assert_eq!(leaf.poll_event(), Some(LeafEvent::Dial(sp)));
        leaf.handle_connect(t0, 7, sp);
        let hello = Hello::new(NodeId([2; 32]), Role::SuperPeer, Some(sp), "test");
        leaf.handle_message(t0, 7, Message::Hello(hello));
        assert!(matches!(
            leaf.poll_event(),
            Some(LeafEvent::Attached { conn: 7, .. })
        ));
        assert_eq!(leaf.superpeers(), vec![(sp, NodeId([2; 32]))]);
        while leaf.poll_transmit().is_some() {}
        (leaf, t0)
    }

    fn record(n: u8) -> FileRecord {
        FileRecord {
            id: FileId([n; 32]),
            size: 10,
            path: format!("file {n}.mp3"),
            tags: Default::default(),
        }
    }

    fn sent(leaf: &mut LeafOverlay) -> Vec<(ConnId, Message)> {
        std::iter::from_fn(|| leaf.poll_transmit())
            .map(|t| (t.to, t.msg))
            .collect()
    }

    #[test]
    fn registrations_and_withdrawals_go_out_in_the_order_they_were_made() {
        let (mut leaf, _) = attached_leaf(Some("10.0.0.9:6000".parse().unwrap()));
        leaf.register_all(7, &[record(1), record(2)]);
        leaf.handle_share(&[record(3)], &[FileId([1; 32])]);
        leaf.handle_share(&[], &[FileId([3; 32])]);
        let out = sent(&mut leaf);
        assert_eq!(
            out,
            vec![
                (
                    7,
                    Message::Register {
                        files: vec![record(1), record(2)]
                    }
                ),
                (
                    7,
                    Message::Register {
                        files: vec![record(3)]
                    }
                ),
                (
                    7,
                    Message::Withdraw {
                        ids: vec![FileId([1; 32])]
                    }
                ),
                (
                    7,
                    Message::Withdraw {
                        ids: vec![FileId([3; 32])]
                    }
                ),
            ]
        );
        // A link that is not attached gets nothing.
        leaf.register_all(8, &[record(4)]);
        assert!(sent(&mut leaf).is_empty());
        // Many records are cut into batches under the frame limit.
        let many: Vec<FileRecord> = (0..3000u32)
            .map(|i| FileRecord {
                path: "x".repeat(200) + &i.to_string(),
                ..record(5)
            })
            .collect();
        leaf.handle_share(&many, &[]);
        let batches = sent(&mut leaf);
        assert!(batches.len() > 1, "{} batch(es)", batches.len());
        let total: usize = batches
            .iter()
            .map(|(_, m)| match m {
                Message::Register { files } => files.len(),
                other => panic!("{other:?}"),
            })
            .sum();
        assert_eq!(total, 3000);
    }

    #[test]
    fn a_request_for_a_connection_back_goes_over_the_link_and_is_answered_once() {
        let (mut leaf, t0) = attached_leaf(Some("0.0.0.0:6000".parse().unwrap()));
        let sp: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let source = NodeId([9; 32]);
        // No link to another super-peer: the driver asks on a connection of its own.
        assert!(!leaf.ask_connect_back(t0, "10.0.0.2:4000".parse().unwrap(), source, 1, false));
        assert!(sent(&mut leaf).is_empty());
        assert!(leaf.ask_connect_back(t0, sp, source, 1, true));
        assert_eq!(
            sent(&mut leaf),
            vec![(
                7,
                Message::ConnectToMe {
                    node: source,
                    token: 1,
                    punch: true
                }
            )]
        );
        // The same token twice is refused: its answer could not be told apart.
        assert!(!leaf.ask_connect_back(t0, sp, source, 1, false));
        let answer = |token, error: Option<&str>| Message::ConnectAsked {
            token,
            error: error.map(String::from),
            sync: None,
        };
        leaf.handle_message(t0, 7, answer(1, None));
        assert_eq!(
            leaf.poll_event(),
            Some(LeafEvent::ConnectAsked {
                token: 1,
                error: None,
                wait: Duration::ZERO,
            })
        );
        // An answer again, or to what we never asked, is nobody's.
        leaf.handle_message(t0, 7, answer(1, None));
        leaf.handle_message(t0, 7, answer(2, Some("no")));
        assert_eq!(leaf.poll_event(), None);
        // One never answered is given up after a while, and its answer is nobody's after.
        assert!(leaf.ask_connect_back(t0, sp, source, 2, false));
        while leaf.poll_transmit().is_some() {}
        let later = t0 + Duration::from_secs(31);
        leaf.handle_message(later, 7, Message::Ping { nonce: 1 });
        leaf.handle_timeout(later);
        let events: Vec<_> = std::iter::from_fn(|| leaf.poll_event()).collect();
        assert!(
            events.contains(&LeafEvent::AskLost { token: 2 }),
            "{events:?}"
        );
        leaf.handle_message(later, 7, answer(2, None));
        assert_eq!(leaf.poll_event(), None);
        // A request whose link goes before the answer is lost at once, not at the caller's
        // deadline (the driver then asks on a connection of its own).
        assert!(leaf.ask_connect_back(t0, sp, source, 3, false));
        leaf.handle_message(
            t0,
            7,
            Message::Goodbye {
                reason: "bye".into(),
            },
        );
        let events: Vec<_> = std::iter::from_fn(|| leaf.poll_event()).collect();
        assert!(
            events.contains(&LeafEvent::AskLost { token: 3 }),
            "{events:?}"
        );
        assert!(
            !leaf.ask_connect_back(t0, sp, source, 4, false),
            "the link is closing"
        );
    }

    /// A leaf that has IPv6 keeps a link over IPv6 beside its IPv4 ones, and each family's
    /// super-peer tells its own finding: the main one (IPv4) decides, the other is told apart.
    #[test]
    fn a_dual_stack_leaf_links_over_each_family_and_learns_each_ones_reach() {
        let t0 = Instant::now();
        let clock = RoleClock::new(t0, NodeRole::Leaf, RoleConfig::default());
        let v4: Vec<SocketAddr> = ["10.0.0.1:4000", "10.0.0.2:4000", "10.0.0.3:4000"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let v6: SocketAddr = "[2001:db8::1]:4000".parse().unwrap();
        let dials = |ipv6: bool| {
            let config = LeafConfig {
                can_promote: false,
                target: 2,
                ..LeafConfig::default()
            };
            // Port 7100 mapped on the IPv4 router; 6000 the IPv6 listener's.
            let listen = Some("0.0.0.0:7100".parse().unwrap());
            let mut leaf = LeafOverlay::new(t0, NodeId([1; 32]), listen, config, clock.clone());
            leaf.set_ipv6(ipv6, Some(6000));
            // The IPv6 super-peer is known last and by hearsay: it still goes first among
            // its family.
            leaf.add_seeds(t0, &v4);
            leaf.add_seeds(t0, &[v6]);
            leaf.handle_timeout(t0);
            let mut dialled = Vec::new();
            while let Some(e) = leaf.poll_event() {
                if let LeafEvent::Dial(a) = e {
                    dialled.push(a);
                }
            }
            (leaf, dialled)
        };
        let (_, only_v4) = dials(false);
        assert_eq!(only_v4.len(), 2);
        assert!(!only_v4.contains(&v6), "no IPv6 route: {only_v4:?}");
        // Two over IPv4 (two super-peers tell the kind of NAT), one more over IPv6.
        let (mut leaf, both) = dials(true);
        assert_eq!(both.len(), 3, "{both:?}");
        assert!(both.contains(&v6), "{both:?}");
        let four = *both.iter().find(|a| a.is_ipv4()).unwrap();

        for (conn, addr, id) in [(1, four, 2), (2, v6, 3)] {
            leaf.handle_connect(t0, conn, addr);
            let hello = Hello::new(NodeId([id; 32]), Role::SuperPeer, Some(addr), "test");
            leaf.handle_message(t0, conn, Message::Hello(hello));
        }
        // Each Hello names where we serve over its family: the IPv4 port (which a router may
        // map to another), or the IPv6 listener's.
        let hellos: Vec<(ConnId, Option<SocketAddr>)> = std::iter::from_fn(|| leaf.poll_transmit())
            .filter_map(|t| match t.msg {
                Message::Hello(h) => Some((t.to, h.listen)),
                _ => None,
            })
            .collect();
        assert_eq!(
            hellos,
            [
                (1, Some("0.0.0.0:7100".parse().unwrap())),
                (2, Some("[::]:6000".parse().unwrap()))
            ]
        );
        let behind_nat: SocketAddr = "198.51.100.7:6000".parse().unwrap();
        let global: SocketAddr = "[2001:db8:77::2]:6000".parse().unwrap();
        // The IPv6 super-peer says first: the main family is still IPv4, unknown yet.
        let said = |observed, reachable| Message::Reachability {
            observed,
            reachable,
        };
        leaf.handle_message(t0, 2, said(global, true));
        assert_eq!(leaf.reach(), None);
        leaf.handle_message(t0, 1, said(behind_nat, false));
        let reach = |observed, reachable| {
            Some(Reach {
                observed,
                reachable,
                nat: None,
            })
        };
        assert_eq!(leaf.reach(), reach(behind_nat, false));
        assert_eq!(leaf.reach_over(false), reach(behind_nat, false));
        assert_eq!(leaf.reach_over(true), reach(global, true));
        // With the IPv4 link gone, IPv6 is the main family.
        leaf.handle_disconnect(t0, 1);
        assert_eq!(leaf.reach(), reach(global, true));
    }

    #[test]
    fn a_super_peer_tells_the_leaf_its_reach_and_asks_it_to_connect_back() {
        let (mut leaf, t0) = attached_leaf(Some("0.0.0.0:6000".parse().unwrap()));
        assert_eq!(leaf.reach(), None, "not known before a super-peer says");
        let observed: SocketAddr = "198.51.100.7:6000".parse().unwrap();
        let said = Message::Reachability {
            observed,
            reachable: false,
        };
        leaf.handle_message(t0, 7, said);
        assert_eq!(
            leaf.reach(),
            Some(Reach {
                observed,
                reachable: false,
                nat: None,
            })
        );
        let back = |token| Message::ConnectBack {
            node: NodeId([5; 32]),
            addr: "203.0.113.5:7001".parse().unwrap(),
            token,
            punch: false,
            wait_ms: 500,
        };
        leaf.handle_message(t0, 7, back(9));
        assert_eq!(
            leaf.poll_event(),
            Some(LeafEvent::ConnectBack {
                node: NodeId([5; 32]),
                addr: "203.0.113.5:7001".parse().unwrap(),
                token: 9,
                via: "10.0.0.1:4000".parse().unwrap(),
                punch: false,
                wait: Duration::ZERO,
            })
        );
        // A link that is up but has not said it is a super-peer is not listened to.
        leaf.handle_connect(t0, 8, "10.0.0.3:4000".parse().unwrap());
        while leaf.poll_transmit().is_some() {}
        leaf.handle_message(t0, 8, back(10));
        assert_eq!(leaf.poll_event(), None);
        // Nowhere a leaf should be sent: no port, broadcast, multicast, unspecified, or
        // loopback from a super-peer that is not on loopback.
        for bad in [
            "203.0.113.5:0",
            "255.255.255.255:7001",
            "224.0.0.1:7001",
            "0.0.0.0:7001",
            "127.0.0.1:22",
            "[::1]:22",
            "[ff02::1]:7001",
        ] {
            leaf.handle_message(
                t0,
                7,
                Message::ConnectBack {
                    node: NodeId([5; 32]),
                    addr: bad.parse().unwrap(),
                    token: 11,
                    punch: false,
                    wait_ms: 0,
                },
            );
            assert_eq!(leaf.poll_event(), None, "{bad}");
        }
        assert!(may_connect_back(
            "127.0.0.1:7001".parse().unwrap(),
            "127.0.0.1:7700".parse().unwrap()
        ));
        // At most CONNECT_BACKS_PER_MINUTE a minute from one super-peer; the 7 refused above
        // count too.
        let mut passed = 1 + 7;
        for t in 0..100 {
            leaf.handle_message(t0, 7, back(100 + t));
            passed += std::iter::from_fn(|| leaf.poll_event()).count() as u32;
        }
        assert_eq!(passed, CONNECT_BACKS_PER_MINUTE);
        let later = t0 + Duration::from_secs(61);
        leaf.handle_message(later, 7, back(999));
        assert!(matches!(
            leaf.poll_event(),
            Some(LeafEvent::ConnectBack { token: 999, .. })
        ));
        // A hit's super-peer listening on every interface is where its hits came from.
        let query = Query {
            id: QueryId([4; 16]),
            ttl: 2,
            hops: 0,
            search: wire::Search {
                terms: wire::Terms::Words("tune".into()),
                filter: Default::default(),
            },
        };
        leaf.start_query(query.clone());
        let hit = |via: &str| wire::Hit {
            source: wire::Source {
                node: NodeId([6; 32]),
                addr: "203.0.113.6:7001".parse().unwrap(),
                reachable: Some(false),
                via: Some(via.parse().unwrap()),
            },
            file: record(1),
            score: 1.0,
        };
        let hits = vec![hit("0.0.0.0:7700"), hit("198.51.100.2:7700")];
        leaf.handle_message(
            t0,
            7,
            Message::QueryHits(wire::QueryHits {
                query: query.id,
                hits,
            }),
        );
        let Some(LeafEvent::Hits { hits, .. }) = leaf.poll_event() else {
            panic!("hits expected");
        };
        let via: Vec<String> = hits
            .iter()
            .map(|h| h.source.via.unwrap().to_string())
            .collect();
        assert_eq!(via, ["10.0.0.1:7700", "198.51.100.2:7700"]);
        // A leaf that serves nobody has nothing to connect back with.
        let (mut quiet, t0) = attached_leaf(None);
        quiet.handle_message(t0, 7, back(12));
        assert_eq!(quiet.poll_event(), None);
    }

    #[test]
    fn a_leaf_found_unreachable_does_not_promote_itself_when_left_alone() {
        // Attached to one super-peer that says whether it got through, then left alone:
        // whether the leaf promotes itself within a minute.
        let alone_promotes = |reachable: Option<bool>| {
            let t0 = Instant::now();
            let clock = RoleClock::new(t0, NodeRole::Leaf, RoleConfig::default());
            let listen = Some("0.0.0.0:7001".parse().unwrap());
            let mut leaf =
                LeafOverlay::new(t0, NodeId([1; 32]), listen, LeafConfig::default(), clock);
            let sp: SocketAddr = "10.0.0.1:4000".parse().unwrap();
            leaf.handle_connect(t0, 7, sp);
            let hello = Hello::new(NodeId([2; 32]), Role::SuperPeer, Some(sp), "test");
            leaf.handle_message(t0, 7, Message::Hello(hello));
            if let Some(reachable) = reachable {
                let said = Message::Reachability {
                    observed: "198.51.100.7:7001".parse().unwrap(),
                    reachable,
                };
                leaf.handle_message(t0, 7, said);
            }
            leaf.handle_disconnect(t0, 7);
            let mut promoted = false;
            for s in 1..=60 {
                let now = t0 + Duration::from_secs(s);
                leaf.handle_timeout(now);
                while let Some(e) = leaf.poll_event() {
                    promoted |= matches!(e, LeafEvent::Promote { .. });
                }
            }
            promoted
        };
        assert!(alone_promotes(None), "nobody said: it may be reachable");
        assert!(alone_promotes(Some(true)));
        assert!(!alone_promotes(Some(false)), "nobody could reach it");
    }

    #[test]
    fn once_unreachable_two_super_peers_are_probed_and_tell_the_kind_of_nat() {
        let t0 = Instant::now();
        let clock = RoleClock::new(t0, NodeRole::Leaf, RoleConfig::default());
        let config = LeafConfig {
            can_promote: false,
            target: 2,
            ..LeafConfig::default()
        };
        let listen = Some("0.0.0.0:7001".parse().unwrap());
        let kind = |seen: [&str; 2]| {
            let clock = clock.clone();
            let mut leaf = LeafOverlay::new(t0, NodeId([1; 32]), listen, config.clone(), clock);
            let sps: Vec<SocketAddr> = (1..=2)
                .map(|i| format!("10.0.0.{i}:4000").parse().unwrap())
                .collect();
            for (i, &sp) in sps.iter().enumerate() {
                let conn = 7 + i as ConnId;
                leaf.handle_connect(t0, conn, sp);
                let hello = Hello::new(NodeId([2 + i as u8; 32]), Role::SuperPeer, Some(sp), "t");
                leaf.handle_message(t0, conn, Message::Hello(hello));
            }
            while leaf.poll_event().is_some() {}
            // Reachable: nothing to probe. Unreachable: the two are probed, once.
            let said = |reachable| Message::Reachability {
                observed: "198.51.100.7:7001".parse().unwrap(),
                reachable,
            };
            leaf.handle_message(t0, 7, said(true));
            assert_eq!(leaf.poll_event(), None);
            leaf.handle_message(t0, 7, said(false));
            leaf.handle_message(t0, 8, said(false));
            let events: Vec<LeafEvent> = std::iter::from_fn(|| leaf.poll_event()).collect();
            assert_eq!(
                events,
                vec![LeafEvent::Probe {
                    superpeers: sps.clone()
                }]
            );
            assert_eq!(leaf.reach().and_then(|r| r.nat), None, "not known yet");
            leaf.handle_probe(sps[0], Some(seen[0].parse().unwrap()));
            assert_eq!(
                leaf.reach().and_then(|r| r.nat),
                None,
                "one answer says nothing"
            );
            leaf.handle_probe(sps[1], Some(seen[1].parse().unwrap()));
            leaf.reach().and_then(|r| r.nat)
        };
        let same = ["198.51.100.7:7001", "198.51.100.7:7001"];
        let differ = ["198.51.100.7:40001", "198.51.100.7:52113"];
        assert_eq!(kind(same), Some(NatKind::EndpointIndependent));
        assert_eq!(kind(differ), Some(NatKind::Symmetric));
        // Two routes out, or one seen as IPv6-mapped: nothing is said, or the same address.
        assert_eq!(kind(["198.51.100.7:7001", "203.0.113.1:7001"]), None);
        assert_eq!(
            kind(["198.51.100.7:7001", "[::ffff:198.51.100.7]:7001"]),
            Some(NatKind::EndpointIndependent)
        );
    }

    #[test]
    fn a_new_listen_address_attaches_again_to_say_it() {
        let (mut leaf, t0) = attached_leaf(Some("0.0.0.0:6000".parse().unwrap()));
        let said = |reachable| Message::Reachability {
            observed: "198.51.100.7:6000".parse().unwrap(),
            reachable,
        };
        leaf.handle_message(t0, 7, said(true));
        leaf.set_listen(t0, Some("0.0.0.0:6000".parse().unwrap()), false);
        assert_eq!(
            leaf.poll_event(),
            None,
            "unchanged and reachable: nothing happens"
        );
        // A mapping of the same port that went away: reachable may not hold any more.
        leaf.set_listen(t0, Some("0.0.0.0:6000".parse().unwrap()), true);
        assert!(matches!(
            leaf.poll_event(),
            Some(LeafEvent::Close { conn: 7, .. })
        ));
        // Found unreachable (or not yet checked) before the router forwarded the port:
        // checked again.
        for reach in [Some(false), None] {
            let (mut leaf, t0) = attached_leaf(Some("0.0.0.0:6000".parse().unwrap()));
            if let Some(r) = reach {
                leaf.handle_message(t0, 7, said(r));
            }
            leaf.set_listen(t0, Some("0.0.0.0:6000".parse().unwrap()), false);
            assert!(matches!(
                leaf.poll_event(),
                Some(LeafEvent::Close { conn: 7, reason }) if reason.contains("checked")
            ));
        }
        let (mut leaf, t0) = attached_leaf(Some("0.0.0.0:6000".parse().unwrap()));
        leaf.set_listen(t0, Some("0.0.0.0:40001".parse().unwrap()), false);
        assert!(matches!(
            leaf.poll_event(),
            Some(LeafEvent::Close { conn: 7, reason }) if reason.contains("listen address changed")
        ));
        leaf.handle_disconnect(t0, 7);
        let dial =
            std::iter::from_fn(|| leaf.poll_event()).find(|e| matches!(e, LeafEvent::Dial(_)));
        leaf.handle_timeout(t0 + Duration::from_secs(5));
        let dial = dial.or_else(|| {
            std::iter::from_fn(|| leaf.poll_event()).find(|e| matches!(e, LeafEvent::Dial(_)))
        });
        assert_eq!(
            dial,
            Some(LeafEvent::Dial("10.0.0.1:4000".parse().unwrap()))
        );
        leaf.handle_connect(t0, 8, "10.0.0.1:4000".parse().unwrap());
        let hello = std::iter::from_fn(|| leaf.poll_transmit())
            .find_map(|t| match t.msg {
                Message::Hello(h) => Some(h),
                _ => None,
            })
            .expect("Hello on the new link");
        assert_eq!(hello.listen, Some("0.0.0.0:40001".parse().unwrap()));
    }

    #[test]
    fn a_leaf_that_serves_nobody_registers_nothing() {
        let (mut leaf, _) = attached_leaf(None);
        leaf.register_all(7, &[record(1)]);
        leaf.handle_share(&[record(2)], &[FileId([2; 32])]);
        assert!(sent(&mut leaf).is_empty());
    }

    #[test]
    fn hits_are_passed_on_only_for_queries_started_and_not_ended() {
        let (mut leaf, t0) = attached_leaf(None);
        let query = Query {
            id: QueryId([3; 16]),
            ttl: 2,
            hops: 0,
            search: wire::Search {
                terms: wire::Terms::Words("tune".into()),
                filter: Default::default(),
            },
        };
        let hits = |q: QueryId| {
            Message::QueryHits(wire::QueryHits {
                query: q,
                hits: Vec::new(),
            })
        };
        leaf.handle_message(t0, 7, hits(query.id));
        assert_eq!(leaf.poll_event(), None, "no query of ours");
        assert_eq!(leaf.start_query(query.clone()), 1);
        assert_eq!(sent(&mut leaf), vec![(7, Message::Query(query.clone()))]);
        leaf.handle_message(t0, 7, hits(query.id));
        assert_eq!(
            leaf.poll_event(),
            Some(LeafEvent::Hits {
                query: query.id,
                hits: Vec::new()
            })
        );
        leaf.handle_message(t0, 7, hits(QueryId([4; 16])));
        assert_eq!(leaf.poll_event(), None, "another node's query");
        leaf.end_query(query.id);
        leaf.handle_message(t0, 7, hits(query.id));
        assert_eq!(leaf.poll_event(), None, "ended");
        // With no link, a query goes nowhere and is not kept.
        leaf.handle_disconnect(t0, 7);
        while leaf.poll_event().is_some() {}
        assert_eq!(leaf.start_query(query), 0);
    }
}
