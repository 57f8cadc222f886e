//! Dial-backs: whether a leaf accepts connections where it serves, checked from a neighbouring
//! super-peer when there is one.
//!
//! A leaf's router keeps state for the leaf's own link to us; a connection from our host may
//! pass through it (a router that filters by address only lets in anything from an address
//! the leaf has talked to) and find the leaf "reachable" where nobody else can reach it. So a
//! neighbour on another address is asked ([`Message::CheckReach`]): it connects, requires the
//! node that answers to hold the leaf's key ([`Event::CheckReachableFor`]), and tells us
//! ([`Message::ReachChecked`]). One that declines (its bounds are spent) or goes is replaced
//! by the next neighbour not yet asked, up to [`REACH_ASKED_MAX`]; without such a neighbour, or
//! without an answer within [`REACH_ASK_WAIT`], we check ourselves ([`Event::CheckReachable`]).
//!
//! A neighbour's word is not proof: one that says "reachable" is checked by us too, and the
//! leaf is reachable only if both got through. So a lying neighbour can make a leaf look
//! unreachable (it is then fetched from by connections back), never reachable where it is not.
//!
//! A neighbour names the address to connect to, so the checks made for neighbours are
//! bounded: [`CHECKS_FOR_PEER`] per neighbour and [`CHECKS_PER_IP`] to one IP address per
//! [`CHECK_WINDOW`], and [`CHECKS_IN_FLIGHT`] at once in all; no super-peer can aim another at a
//! third party. None goes to an address no leaf of a super-peer elsewhere serves at
//! (unspecified, multicast, broadcast, loopback, private or link-local, unless the neighbour
//! itself is at such an address: a test, or a private network). A check tells only whether
//! the node holding the key answered: any other service at the address makes it fail as no
//! service at all does.

use super::*;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// How long a neighbour has to answer a check before we make it ourselves.
pub const REACH_ASK_WAIT: Duration = Duration::from_secs(8);
/// Neighbours asked for one check at most (one after another, as each declines or goes).
pub const REACH_ASKED_MAX: usize = 3;
/// The window the bounds on checks made for neighbours count in.
pub const CHECK_WINDOW: Duration = Duration::from_secs(10);
/// Checks made for one neighbour per [`CHECK_WINDOW`], at most.
pub const CHECKS_FOR_PEER: usize = 50;
/// Checks made for neighbours to one IP address per [`CHECK_WINDOW`], at most.
pub const CHECKS_PER_IP: usize = 4;
/// Checks made for neighbours at once, at most.
pub const CHECKS_IN_FLIGHT: usize = 16;

/// The dial-backs asked of neighbours and made for them.
#[derive(Debug, Default)]
pub(super) struct Reach {
    next_token: u64,
    /// Checks asked of a neighbour and not answered, by token (in order: output must not
    /// depend on hash order, simulations replay from a seed).
    asked: BTreeMap<u64, Asked>,
    /// Checks made for neighbours within the last [`CHECK_WINDOW`]: when, for which, to where.
    made_for: VecDeque<(Instant, ConnId, IpAddr)>,
    /// Checks made for neighbours and not done.
    in_flight: usize,
}

/// A check asked of a neighbour.
#[derive(Debug)]
pub(super) struct Asked {
    /// The leaf's connection.
    leaf: ConnId,
    addr: SocketAddr,
    node: NodeId,
    /// When we check ourselves instead (one wait for all the neighbours asked).
    deadline: Instant,
    /// The neighbours asked so far; the last is the one asked now.
    tried: Vec<ConnId>,
}

impl Asked {
    /// Whether neighbour `peer` is the one asked now.
    fn asked_of(&self, peer: ConnId) -> bool {
        self.tried.last() == Some(&peer)
    }
}

impl SuperPeer {
    /// Leaf `conn` (node `node`) serves at `addr`: checked by a neighbour that is not at the
    /// leaf's own IP address (one behind the same router would connect from inside it), or
    /// by us if there is none.
    pub(super) fn check_reach(
        &mut self,
        now: Instant,
        conn: ConnId,
        addr: SocketAddr,
        node: NodeId,
    ) {
        let a = Asked {
            leaf: conn,
            addr,
            node,
            deadline: now,
            tried: Vec::new(),
        };
        // (The leaf is being attached: not yet a leaf for `check_here`.)
        if let Some(a) = self.ask_next(now, a) {
            self.events.push_back(Event::CheckReachable {
                conn: a.leaf,
                addr: a.addr,
                node: a.node,
            });
        }
    }

    /// Check `a` asked of the next neighbour not at the leaf's IP address and not asked
    /// before (each in turn); given back if there is none or [`REACH_ASKED_MAX`] were asked.
    fn ask_next(&mut self, now: Instant, mut a: Asked) -> Option<Asked> {
        let peers: Vec<ConnId> = self
            .neighbour_conns()
            .into_iter()
            .filter(|c| {
                !a.tried.contains(c)
                    && self
                        .conns
                        .get(c)
                        .is_some_and(|p| p.remote.ip() != a.addr.ip())
            })
            .collect();
        if peers.is_empty() || a.tried.len() >= REACH_ASKED_MAX {
            return Some(a);
        }
        let token = self.reach.next_token;
        self.reach.next_token += 1;
        let peer = peers[(token % peers.len() as u64) as usize];
        // One wait for the whole check, however many neighbours are asked in turn.
        if a.tried.is_empty() {
            a.deadline = now + REACH_ASK_WAIT;
        }
        a.tried.push(peer);
        let (addr, node) = (a.addr, a.node);
        self.reach.asked.insert(token, a);
        self.stats.reach_checks_asked += 1;
        self.send(peer, Message::CheckReach { token, addr, node });
        None
    }

    /// Neighbour `peer` asks us to check leaf `node` at `addr`: made unless the bounds say no
    /// (then answered `None`, so that it checks itself).
    pub(super) fn on_check_reach(
        &mut self,
        now: Instant,
        peer: ConnId,
        token: u64,
        addr: SocketAddr,
        node: NodeId,
    ) {
        // An IPv4 address however written, an IPv6 address by its /64 (as bans count).
        let ip = wire::network_of(addr.ip());
        let made = &mut self.reach.made_for;
        while made.front().is_some_and(|(t, ..)| now >= *t + CHECK_WINDOW) {
            made.pop_front();
        }
        let for_peer = made.iter().filter(|(_, p, _)| *p == peer).count();
        let to_ip = made.iter().filter(|(.., i)| *i == ip).count();
        let asker_local = self.conns.get(&peer).is_some_and(|c| local(c.remote.ip()));
        let why = if nowhere(ip) || (local(ip) && !asker_local) {
            Some("no leaf of a neighbour serves there".to_string())
        } else if self.reach.in_flight >= CHECKS_IN_FLIGHT {
            Some(format!("{CHECKS_IN_FLIGHT} checks are being made"))
        } else if for_peer >= CHECKS_FOR_PEER || to_ip >= CHECKS_PER_IP {
            Some(format!(
                "{for_peer} checks for it, {to_ip} to that address in {CHECK_WINDOW:?}"
            ))
        } else {
            None
        };
        if let Some(why) = why {
            log::info!("not checking {addr} for neighbour {peer}: {why}");
            self.send(
                peer,
                Message::ReachChecked {
                    token,
                    reachable: None,
                },
            );
            return;
        }
        made.push_back((now, peer, ip));
        self.reach.in_flight += 1;
        self.stats.reach_checks_made_for += 1;
        self.events.push_back(Event::CheckReachableFor {
            peer,
            token,
            addr,
            node,
        });
    }

    /// The outcome of an [`Event::CheckReachableFor`]: told to the neighbour that asked, if it
    /// is still connected. `None`: not checked after all (this host has no route to the
    /// address's family, IPv6 say): the neighbour asks another, or checks itself.
    pub fn handle_checked_for(
        &mut self,
        _now: Instant,
        peer: ConnId,
        token: u64,
        ok: Option<bool>,
    ) {
        debug_assert!(
            self.reach.in_flight > 0,
            "a check done that was never asked for"
        );
        self.reach.in_flight = self.reach.in_flight.saturating_sub(1);
        let open = self
            .conns
            .get(&peer)
            .is_some_and(|c| !c.closing && matches!(c.state, PeerState::SuperPeer { .. }));
        if open {
            self.send(
                peer,
                Message::ReachChecked {
                    token,
                    reachable: ok,
                },
            );
        }
    }

    /// Neighbour `peer` answers the check named `token`. An answer to a check it was not asked
    /// (or one answered late, after we checked ourselves) is dropped.
    pub(super) fn on_reach_checked(
        &mut self,
        now: Instant,
        peer: ConnId,
        token: u64,
        reachable: Option<bool>,
    ) {
        if self
            .reach
            .asked
            .get(&token)
            .is_none_or(|a| !a.asked_of(peer))
        {
            return;
        }
        let Some(a) = self.reach.asked.remove(&token) else {
            return;
        };
        self.stats.reach_checks_answered += 1;
        match reachable {
            // Not reachable from there: not reachable.
            Some(false) => self.handle_reachable(now, a.leaf, false),
            // Reachable from there, if also from here (a neighbour's word is no proof).
            Some(true) => self.check_here(a),
            // Declined: another neighbour, or here.
            None => self.ask_next_if_attached(now, a),
        }
    }

    /// Neighbour `peer` is gone: the checks it was asked go to the next neighbour at once,
    /// or are made here.
    pub(super) fn reach_peer_gone(&mut self, now: Instant, peer: ConnId) {
        for a in self.take_asked(|a| a.asked_of(peer)) {
            self.ask_next_if_attached(now, a);
        }
    }

    /// The checks asked of neighbours that `which` picks, taken out, in token order.
    fn take_asked(&mut self, which: impl Fn(&Asked) -> bool) -> Vec<Asked> {
        let picked: Vec<u64> = self
            .reach
            .asked
            .iter()
            .filter(|(_, a)| which(a))
            .map(|(&t, _)| t)
            .collect();
        picked
            .into_iter()
            .filter_map(|t| self.reach.asked.remove(&t))
            .collect()
    }

    /// Whether the leaf of check `a` is still attached.
    fn leaf_attached(&self, a: &Asked) -> bool {
        self.conns
            .get(&a.leaf)
            .is_some_and(|c| !c.closing && matches!(c.state, PeerState::Leaf { .. }))
    }

    /// [`SuperPeer::ask_next`], or made here if no neighbour is left to ask, if the leaf is
    /// still attached.
    fn ask_next_if_attached(&mut self, now: Instant, a: Asked) {
        if self.leaf_attached(&a) {
            if let Some(a) = self.ask_next(now, a) {
                self.check_here(a);
            }
        }
    }

    /// A check asked of a neighbour, made here instead if the leaf is still attached.
    fn check_here(&mut self, a: Asked) {
        if self.leaf_attached(&a) {
            self.events.push_back(Event::CheckReachable {
                conn: a.leaf,
                addr: a.addr,
                node: a.node,
            });
        }
    }

    /// Checks asked of neighbours that did not answer in time: made here.
    pub(super) fn expire_reach_asks(&mut self, now: Instant) {
        for a in self.take_asked(|a| now >= a.deadline) {
            self.check_here(a);
        }
    }

    /// When the next check asked of a neighbour is due.
    pub(super) fn reach_deadline(&self) -> Option<Instant> {
        self.reach.asked.values().map(|a| a.deadline).min()
    }
}

/// Whether no leaf serves at `ip` at all.
fn nowhere(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// Whether `ip` is reached only from the host itself or its own network (loopback, private,
/// link-local): a super-peer elsewhere has no leaf there.
fn local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                // Unique local (fc00::/7) and link-local (fe80::/10).
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}
