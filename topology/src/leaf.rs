//! The leaf's overlay logic: which super-peers to attach to, staying attached, and when to
//! become a super-peer. Sans-IO like [`crate::SuperPeer`], with the same drain rule.
//!
//! The leaf keeps `target` super-peers (2 by default), dialling the best candidates of its host
//! cache (configured bootstrap addresses, what super-peers tell it in `Hosts`, and what an
//! earlier run saved). A super-peer that is full or demoting answers `Redirect` with others to
//! try. A leaf that has found no super-peer at all for `promote_when_alone_after` promotes
//! itself (if it may); a super-peer running out of slots may ask it to (`Promote`). The driver
//! handles everything else that travels on the links (registration, queries, hits).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{Capability, Hello, HostEntry, Message, NodeId, RedirectReason, Role};

use crate::hostcache::HostCache;
use crate::role::RoleClock;
use crate::superpeer::Transmit;
use crate::ConnId;

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeafEvent {
    /// Connect to this super-peer; then call [`LeafOverlay::handle_connect`] or
    /// [`LeafOverlay::handle_dial_failed`].
    Dial(SocketAddr),
    /// A link is up: register the shared files on it.
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
}

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
            },
        );
        let mut hello = Hello::new(self.node, Role::Leaf, self.listen, &self.config.agent);
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

    /// A link is gone.
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        let Some(link) = self.links.remove(&conn) else {
            return;
        };
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

    /// An overlay message on a link (Hello, Hosts, Redirect, Promote, Ping, Pong, Goodbye);
    /// anything else is the driver's, and ignored here, as is anything on a link being closed.
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
            }
            Message::Hello(h) => {
                self.hosts.not_superpeer(now, addr);
                self.close(conn, format!("{addr} is not a super-peer ({:?})", h.role));
            }
            Message::Hosts { hosts } => self.import_hosts(now, &hosts),
            Message::Redirect { reason, hosts } => {
                self.import_hosts(now, &hosts);
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
            Message::Promote
                if self.config.can_promote && self.clock.may_change(now) && !self.promoted =>
            {
                self.promote(format!("asked by super-peer {addr}, whose slots run out"));
            }
            Message::Ping { nonce } => self.transmits.push_back(Transmit {
                to: conn,
                msg: Message::Pong { nonce },
            }),
            Message::Goodbye { reason } => self.close(conn, format!("{addr} said: {reason}")),
            _ => {}
        }
    }

    /// Time has passed: fill missing links, drop silent ones, consider promoting when alone.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + self.config.tick;
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
            if self.config.can_promote
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

    fn fill(&mut self, now: Instant) {
        if self.promoted {
            return;
        }
        let busy = self.links.values().filter(|l| !l.closing).count() + self.dialing.len();
        if busy >= self.config.target {
            return;
        }
        let in_use: HashSet<SocketAddr> = self
            .links
            .values()
            .map(|l| l.addr)
            .chain(self.dialing.iter().copied())
            .collect();
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
        let skip = |a: &SocketAddr| in_use.contains(a) || Some(*a) == own || reserved(a);
        for addr in self
            .hosts
            .candidates(now, self.config.target - busy, true, &skip)
        {
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
}
