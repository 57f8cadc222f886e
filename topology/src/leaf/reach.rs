//! What a leaf knows of its reachability, per address family: the super-peers' findings on
//! its links (`Reachability`), the kind of NAT its probes tell, which family is the main one,
//! and the rules for connecting back and timing a hole punch.

use std::net::SocketAddr;
use std::time::Duration;

use super::{LeafEvent, LeafOverlay};

/// Whether a leaf should connect back to `addr`, passed on by its super-peer at `from`: a
/// unicast address with a port, and a loopback one only from a super-peer on loopback.
pub(super) fn may_connect_back(addr: SocketAddr, from: SocketAddr) -> bool {
    // (An IPv4 address written as IPv6 is judged as the IPv4 one: `[::ffff:127.0.0.1]` is
    // loopback.)
    let ip = addr.ip().to_canonical();
    let unicast = match ip {
        std::net::IpAddr::V4(v4) => !v4.is_broadcast() && !v4.is_multicast(),
        std::net::IpAddr::V6(v6) => !v6.is_multicast(),
    };
    addr.port() != 0
        && unicast
        && !ip.is_unspecified()
        && (!ip.is_loopback() || from.ip().to_canonical().is_loopback())
}

/// How long a requester waits, after the answer to its request for a hole punch came back in
/// `rtt`, before dialling: so as to dial when the source does ([`wire::PunchSync`]). The
/// source dials half its round trip to the super-peer after the answer left, plus the wait
/// the super-peer gave it; the answer reached us half our round trip after it left.
pub fn punch_wait(rtt: Duration, sync: Option<wire::PunchSync>) -> Duration {
    let Some(s) = sync else {
        return Duration::ZERO;
    };
    let source = Duration::from_millis(
        (u64::from(s.leaf_rtt_ms) / 2) + u64::from(s.leaf_wait_ms.min(wire::MAX_PUNCH_WAIT_MS)),
    );
    source
        .saturating_sub(rtt / 2)
        .min(Duration::from_millis(wire::MAX_PUNCH_WAIT_MS.into()))
}

/// Whether `a` is an IPv6 address (an IPv4 one written as IPv6 is IPv4).
pub fn is_v6(a: &SocketAddr) -> bool {
    a.ip().to_canonical().is_ipv6()
}

/// Whether others can connect to this leaf, as its super-peers found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reach {
    /// Our listen address as a super-peer sees it.
    pub observed: SocketAddr,
    /// Whether some super-peer's connection to it got through.
    pub reachable: bool,
    /// How our NAT maps a port, when two super-peers have said where our links (dialled
    /// from one port) come from.
    pub nat: Option<NatKind>,
}

/// How a NAT maps one local port, as two super-peers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// The same external address whoever we talk to: hole punching can work.
    EndpointIndependent,
    /// Another external port for each destination (a symmetric NAT): hole punching cannot
    /// work; only a relay could.
    Symmetric,
}

impl LeafOverlay {
    /// Once found unreachable with two super-peers attached, asks the driver to probe them
    /// from our listen port ([`LeafEvent::Probe`]), once per listen address. Only after the
    /// verdict: a probe's traffic would let a super-peer's check through a router that filters
    /// by address alone.
    pub(super) fn maybe_probe(&mut self) {
        if self.probed || self.listen.is_none() || !matches!(self.reach(), Some(r) if !r.reachable)
        {
            return;
        }
        let v6 = self.main_family_v6();
        let mut superpeers: Vec<SocketAddr> = self
            .links
            .values()
            .filter(|l| l.node.is_some() && !l.closing && is_v6(&l.addr) == v6)
            .map(|l| l.addr)
            .collect();
        superpeers.sort();
        if superpeers.len() >= 2 {
            superpeers.truncate(2);
            self.probed = true;
            self.events.push_back(LeafEvent::Probe { superpeers });
        }
    }

    /// A probe's answer: super-peer `superpeer` saw our listen port's connection come from
    /// `seen` (None: the probe failed).
    pub fn handle_probe(&mut self, superpeer: SocketAddr, seen: Option<SocketAddr>) {
        if let Some(seen) = seen {
            self.probes.insert(superpeer, seen);
        }
    }

    /// Whether others can reach us over our main family, as the super-peers attached now
    /// found: reachable if any of them got through (its observed address first), else the
    /// first one's finding. The main family is IPv4 while a link over it is up (what most
    /// peers have), else IPv6; [`LeafOverlay::reach_over`] tells each. It decides whether
    /// we may promote and whether a connection back to us needs a punched hole.
    pub fn reach(&self) -> Option<Reach> {
        self.reach_over(self.main_family_v6())
    }

    /// As [`LeafOverlay::reach`], over the other family than the main one (IPv6 beside IPv4):
    /// a node with a global IPv6 address behind an IPv4 NAT is reachable there.
    pub fn reach_other(&self) -> Option<Reach> {
        self.reach_over(!self.main_family_v6())
    }

    /// Whether the main family is IPv6: no link over IPv4 is up.
    pub(super) fn main_family_v6(&self) -> bool {
        !self
            .links
            .values()
            .any(|l| l.node.is_some() && !l.closing && !is_v6(&l.addr))
    }

    /// As [`LeafOverlay::reach`], over IPv6 (`v6`) or IPv4: as the super-peers linked over
    /// that family found.
    pub fn reach_over(&self, v6: bool) -> Option<Reach> {
        let live = || {
            self.links
                .values()
                .filter(move |l| l.node.is_some() && !l.closing && is_v6(&l.addr) == v6)
        };
        // Seen at other addresses altogether (another route out, a super-peer behind a proxy,
        // IPv4 against IPv6): nothing to say. Only probes of super-peers of this family count.
        let seen_all: Vec<SocketAddr> = self
            .probes
            .iter()
            .filter(|(sp, _)| is_v6(sp) == v6)
            .map(|(_, s)| SocketAddr::new(s.ip().to_canonical(), s.port()))
            .collect();
        let mut seen = seen_all.clone();
        seen.sort();
        seen.dedup();
        let nat = match seen.as_slice() {
            [] | [_] if seen_all.len() < 2 => None,
            [_] => Some(NatKind::EndpointIndependent),
            [first, rest @ ..] if rest.iter().any(|s| s.ip() != first.ip()) => None,
            _ => Some(NatKind::Symmetric),
        };
        let mut found: Vec<(SocketAddr, Reach)> = live()
            .filter_map(|l| {
                let (observed, reachable) = l.reach?;
                Some((
                    l.addr,
                    Reach {
                        observed,
                        reachable,
                        nat,
                    },
                ))
            })
            .collect();
        found.sort_by_key(|(sp, r)| (!r.reachable, *sp));
        found.first().map(|(_, r)| *r)
    }
}
