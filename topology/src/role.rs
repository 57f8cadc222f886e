//! Role changes: hysteresis ([`RoleClock`]: a minimum time in a role, and a growing back-off
//! after each demotion, so that nodes do not flap between leaf and super-peer), and the handover
//! from one role's machine to the other's ([`Handover`], [`Overlay`]).
//!
//! A leaf is promoted on [`LeafEvent::Promote`](crate::LeafEvent::Promote); a super-peer that
//! may demote becomes a leaf on [`Event::Demote`](crate::Event::Demote). Either way the new
//! machine starts with the old one's role history and the super-peers it knew; the old role's
//! connections are closed by the driver and unknown to the new machine.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{HostEntry, NodeId};

use crate::hostcache::HostCache;
use crate::leaf::{LeafConfig, LeafOverlay};
use crate::superpeer::{Config, SuperPeer, Transmit};

/// Settings of role hysteresis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleConfig {
    /// The least time a node stays in a role before it may change again (except a leaf that
    /// finds no super-peer at all, which may promote itself at once).
    pub min_role_time: Duration,
    /// How long a demoted node waits before it may be promoted again; doubles with every
    /// demotion.
    pub demotion_backoff: Duration,
    /// The longest that back-off grows to.
    pub max_backoff: Duration,
}

impl Default for RoleConfig {
    fn default() -> Self {
        RoleConfig {
            min_role_time: Duration::from_secs(20 * 60),
            demotion_backoff: Duration::from_secs(10 * 60),
            max_backoff: Duration::from_secs(24 * 3600),
        }
    }
}

/// Which role a node has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// A leaf.
    Leaf,
    /// A super-peer.
    SuperPeer,
}

/// A node's role history, carried from one role's state machine to the next.
#[derive(Debug, Clone)]
pub struct RoleClock {
    config: RoleConfig,
    role: NodeRole,
    since: Instant,
    not_before: Instant,
    backoff: Duration,
    changes: u32,
}

impl RoleClock {
    /// A node that started at `now` in `role`.
    pub fn new(now: Instant, role: NodeRole, config: RoleConfig) -> Self {
        RoleClock {
            config,
            role,
            since: now,
            not_before: now,
            backoff: config.demotion_backoff,
            changes: 0,
        }
    }

    /// The current role.
    pub fn role(&self) -> NodeRole {
        self.role
    }

    /// When the current role began.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Role changes so far.
    pub fn changes(&self) -> u32 {
        self.changes
    }

    /// The settings.
    pub fn config(&self) -> RoleConfig {
        self.config
    }

    /// Whether the node has been in its role long enough, and out of any back-off, to change.
    pub fn may_change(&self, now: Instant) -> bool {
        now >= self.since + self.config.min_role_time && now >= self.not_before
    }

    /// Whether a leaf that finds no super-peer may promote itself: only the back-off applies.
    pub fn may_promote_alone(&self, now: Instant) -> bool {
        self.role == NodeRole::Leaf && now >= self.not_before
    }

    /// Records a change to `role` at `now`; a demotion starts (and doubles) the back-off.
    pub fn changed(&mut self, now: Instant, role: NodeRole) {
        if role == self.role {
            return;
        }
        if role == NodeRole::Leaf {
            self.not_before = now + self.backoff;
            self.backoff = (self.backoff * 2).min(self.config.max_backoff);
        }
        self.role = role;
        self.since = now;
        self.changes += 1;
    }
}

/// What a node carries from one role's machine to the other's: its role history and the
/// super-peers it knows.
#[derive(Debug, Clone)]
pub struct Handover {
    /// The role history (the new machine records the change).
    pub clock: RoleClock,
    /// The host cache's entries, as [`HostCache::export`] gives them.
    pub hosts: Vec<HostEntry>,
}

impl Handover {
    /// What leaf `leaf` hands on when it is promoted. The leaf is left as it was (a driver whose
    /// super-peer fails to start keeps it).
    pub fn of_leaf(leaf: &LeafOverlay, now: Instant) -> Self {
        Handover {
            clock: leaf.clock().clone(),
            hosts: leaf.hosts().export(now),
        }
    }

    /// What super-peer `sp` hands on when it demotes (after [`Event::Demote`](crate::Event)).
    pub fn of_superpeer(sp: &SuperPeer, now: Instant) -> Self {
        Handover {
            clock: sp.clock().clone(),
            hosts: sp.hosts().export(now),
        }
    }

    /// The super-peer node `node` becomes, accepting connections at `listen`; `seeds` (its
    /// configured bootstrap addresses, if any) go into the host cache before the hosts handed
    /// over.
    pub fn into_superpeer(
        self,
        now: Instant,
        node: NodeId,
        listen: Option<SocketAddr>,
        config: Config,
        seeds: &[SocketAddr],
    ) -> SuperPeer {
        let mut sp = SuperPeer::new(now, node, listen, config, self.clock);
        sp.add_seeds(now, seeds);
        sp.import_hosts(now, &self.hosts);
        sp
    }

    /// The leaf node `node` becomes, serving at `listen`; `seeds` (its configured bootstrap
    /// addresses, if any) go into the host cache before the hosts handed over.
    pub fn into_leaf(
        self,
        now: Instant,
        node: NodeId,
        listen: Option<SocketAddr>,
        config: LeafConfig,
        seeds: &[SocketAddr],
    ) -> LeafOverlay {
        let mut leaf = LeafOverlay::new(now, node, listen, config, self.clock);
        leaf.add_seeds(now, seeds);
        leaf.import_hosts(now, &self.hosts);
        leaf
    }
}

/// A node's overlay machine in whichever role it has now, for a driver that runs both roles
/// itself (the simulator, the fuzz target).
#[derive(Debug)]
pub enum Overlay {
    /// A leaf.
    Leaf(Box<LeafOverlay>),
    /// A super-peer.
    SuperPeer(Box<SuperPeer>),
}

impl Overlay {
    /// The role it has.
    pub fn role(&self) -> NodeRole {
        match self {
            Overlay::Leaf(_) => NodeRole::Leaf,
            Overlay::SuperPeer(_) => NodeRole::SuperPeer,
        }
    }

    /// The role history.
    pub fn clock(&self) -> &RoleClock {
        match self {
            Overlay::Leaf(l) => l.clock(),
            Overlay::SuperPeer(s) => s.clock(),
        }
    }

    /// The host cache.
    pub fn hosts(&self) -> &HostCache {
        match self {
            Overlay::Leaf(l) => l.hosts(),
            Overlay::SuperPeer(s) => s.hosts(),
        }
    }

    /// What it would hand on to the other role now.
    pub fn handover(&self, now: Instant) -> Handover {
        match self {
            Overlay::Leaf(l) => Handover::of_leaf(l, now),
            Overlay::SuperPeer(s) => Handover::of_superpeer(s, now),
        }
    }

    /// A leaf becomes super-peer `node` at `listen`, with `seeds` first in its host cache (a
    /// super-peer stays as it is).
    pub fn promote(
        &mut self,
        now: Instant,
        node: NodeId,
        listen: Option<SocketAddr>,
        config: Config,
        seeds: &[SocketAddr],
    ) {
        if let Overlay::Leaf(l) = self {
            let sp = Handover::of_leaf(l, now).into_superpeer(now, node, listen, config, seeds);
            *self = Overlay::SuperPeer(Box::new(sp));
        }
    }

    /// A super-peer becomes leaf `node` at `listen`, with `seeds` first in its host cache (a
    /// leaf stays as it is).
    pub fn demote(
        &mut self,
        now: Instant,
        node: NodeId,
        listen: Option<SocketAddr>,
        config: LeafConfig,
        seeds: &[SocketAddr],
    ) {
        if let Overlay::SuperPeer(s) = self {
            let leaf = Handover::of_superpeer(s, now).into_leaf(now, node, listen, config, seeds);
            *self = Overlay::Leaf(Box::new(leaf));
        }
    }

    /// Time has passed (see the machines' `handle_timeout`).
    pub fn handle_timeout(&mut self, now: Instant) {
        match self {
            Overlay::Leaf(l) => l.handle_timeout(now),
            Overlay::SuperPeer(s) => s.handle_timeout(now),
        }
    }

    /// The next time [`Overlay::handle_timeout`] should be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Overlay::Leaf(l) => l.poll_timeout(),
            Overlay::SuperPeer(s) => s.poll_timeout(),
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        match self {
            Overlay::Leaf(l) => l.poll_transmit(),
            Overlay::SuperPeer(s) => s.poll_transmit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimum_time_and_growing_backoff() {
        let t = Instant::now();
        let cfg = RoleConfig {
            min_role_time: Duration::from_secs(10),
            demotion_backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(100),
        };
        let mut c = RoleClock::new(t, NodeRole::Leaf, cfg);
        assert!(c.may_promote_alone(t));
        assert!(!c.may_change(t + Duration::from_secs(9)));
        c.changed(t + Duration::from_secs(10), NodeRole::SuperPeer);
        assert!(!c.may_change(t + Duration::from_secs(19)));
        c.changed(t + Duration::from_secs(20), NodeRole::Leaf);
        // Demoted: 30 s before it may be promoted again, even alone.
        assert!(!c.may_promote_alone(t + Duration::from_secs(49)));
        assert!(c.may_promote_alone(t + Duration::from_secs(50)));
        c.changed(t + Duration::from_secs(50), NodeRole::SuperPeer);
        c.changed(t + Duration::from_secs(60), NodeRole::Leaf);
        assert!(
            !c.may_promote_alone(t + Duration::from_secs(119)),
            "back-off doubled to 60 s"
        );
        assert!(c.may_promote_alone(t + Duration::from_secs(120)));
        assert_eq!(c.changes(), 4);
    }

    #[test]
    fn the_overlay_hands_its_clock_and_hosts_over_both_ways() {
        let t = Instant::now();
        let node = NodeId([1; 32]);
        let clock = RoleClock::new(t, NodeRole::Leaf, RoleConfig::default());
        let mut leaf = LeafOverlay::new(t, node, None, LeafConfig::default(), clock);
        let (seed, known): (SocketAddr, SocketAddr) = (
            "10.0.0.1:5000".parse().unwrap(),
            "10.0.0.2:5000".parse().unwrap(),
        );
        leaf.add_seeds(t, &[seed]);
        let mut o = Overlay::Leaf(Box::new(leaf));
        o.promote(t, node, None, Config::default(), &[known]);
        assert_eq!(o.role(), NodeRole::SuperPeer);
        assert_eq!(o.clock().role(), NodeRole::SuperPeer);
        assert!(o.hosts().get(&seed).is_some() && o.hosts().get(&known).is_some());
        // A super-peer is not promoted again: the same machine stays.
        o.promote(t, node, None, Config::default(), &[]);
        assert_eq!(o.clock().changes(), 1);
        let later = t + Duration::from_secs(3600);
        o.demote(later, node, None, LeafConfig::default(), &[]);
        assert_eq!(o.role(), NodeRole::Leaf);
        assert_eq!(
            (o.clock().role(), o.clock().since()),
            (NodeRole::Leaf, later)
        );
        assert_eq!(o.clock().changes(), 2);
        assert_eq!(o.hosts().len(), 2);
    }
}
