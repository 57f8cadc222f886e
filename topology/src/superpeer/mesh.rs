//! Mesh upkeep and roles: the host cache (seeds, hosts shared by others, what we share), dials
//! while short of neighbours, redirects, asking a leaf to promote when our slots run out, and
//! demoting ourselves when we serve few leaves.
//!
//! An `impl SuperPeer` block: each step looks at the connections, the host cache and the role
//! clock together.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use wire::{Capability, HostEntry, Load, Message, RedirectReason};

use super::{Conn, Event, PeerState, SuperPeer};
use crate::hostcache::HostCache;
use crate::role::{NodeRole, RoleClock};
use crate::ConnId;

/// Host entries a super-peer sends in one `Hosts` message (itself and the freshest others),
/// and the most taken from one.
pub const HOSTS_SHARED: usize = 21;

impl SuperPeer {
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
    /// The leaf is told what we found, and at which address.
    pub fn handle_reachable(&mut self, _now: Instant, conn: ConnId, ok: bool) {
        if let Some(Conn {
            state: PeerState::Leaf {
                reachable, source, ..
            },
            closing,
            ..
        }) = self.conns.get_mut(&conn)
        {
            *reachable = Some(ok);
            // A connection being closed is sent nothing more (STATE.md).
            if let (Some(observed), false) = (*source, *closing) {
                self.send(
                    conn,
                    Message::Reachability {
                        observed,
                        reachable: ok,
                    },
                );
            }
        }
    }

    /// Sends a leaf elsewhere and closes its connection.
    pub(super) fn redirect(&mut self, now: Instant, conn: ConnId, reason: RedirectReason) {
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
    pub(super) fn hosts_to_share(&self, now: Instant) -> Vec<HostEntry> {
        let mut out = Vec::new();
        if let Some(addr) = self.listen.filter(|a| !a.ip().is_unspecified()) {
            out.push(HostEntry {
                addr,
                load: self.load(),
                age_s: 0,
            });
        }
        out.extend(self.hosts.entries(now, HOSTS_SHARED - 1, self.fresh_age()));
        out
    }

    /// News of a super-peer older than this is not passed on (it announces itself every
    /// `hosts_interval`, so live ones stay fresh).
    fn fresh_age(&self) -> Duration {
        self.config.hosts_interval * 4
    }

    /// The periodic part of [`SuperPeer::handle_timeout`]: share hosts, keep the mesh, and
    /// consider promoting a leaf or demoting ourselves.
    pub(super) fn tick(&mut self, now: Instant) {
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
        // Uptime counts as seen here, never as claimed: a leaf that says it has run for a day
        // would otherwise win every election the moment it attaches.
        let best = self
            .conns
            .iter()
            .filter_map(|(&id, c)| match &c.state {
                PeerState::Leaf {
                    capability,
                    reachable: Some(true),
                    joined,
                    ..
                } if capability.can_promote && !c.closing => {
                    let seen = now.saturating_duration_since(*joined);
                    let ranked = Capability {
                        uptime_s: capability.uptime_s.min(seen.as_secs()),
                        ..*capability
                    };
                    (seen >= self.config.min_leaf_uptime).then(|| (ranked.score(), id))
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
}
