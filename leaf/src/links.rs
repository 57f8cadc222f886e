//! The node's connections with other leaves, both ways, under one cap (`--max-peer-links`).
//!
//! The bounds per file (sources per download, downloaders per file, connections that have not
//! asked yet) keep a node in one swarm near 30 + 42 connections, but they are counted where
//! each connection has said what it wants: connections accepted meanwhile, and those of several
//! downloads and uploads at once, add up past them. Here connections take places:
//! - one accepted takes a place at once ([`PeerLinks::accept`]). With none free, it may still
//!   take one of [`BEYOND_CAP`] places beyond the cap, as a connection that may ask for no
//!   file: so a source connecting back as a download of ours asked, and a super-peer checking
//!   that we can be reached, still get through. Past those it is closed at once, before its
//!   handshake;
//! - a connection back or a relay someone asked for takes a place as one accepted, or is not
//!   made;
//! - a download's source takes a place before it is dialled, or waits as a candidate
//!   ([`PeerLinks::dial`]).
//!
//! Neither side may take the last places of the other ([`RESERVED_FOR_ACCEPTED`],
//! [`RESERVED_FOR_DIALLED`]): a node that downloads much still serves, and one that many
//! connect to still downloads. Not counted: the few connections a download makes to fetch its
//! manifest before it runs (at most three, and only when no place is free), `leaf browse`,
//! and links to super-peers (few, and bounded by the overlay).
//!
//! So a node holds at most `--max-peer-links` connections, [`BEYOND_CAP`] more that may ask
//! for no file, and [`LISTEN_BACKLOG`] more that the kernel has completed and the node not yet
//! taken: 80 by default (bench case 6's bound).

use std::sync::{Arc, Mutex};

/// Places that only accepted connections may take.
pub const RESERVED_FOR_ACCEPTED: usize = 8;
/// Places that only dialled connections may take.
pub const RESERVED_FOR_DIALLED: usize = 8;
/// Connections accepted past the cap that may ask for no file, at once.
pub const BEYOND_CAP: usize = 4;
/// Connections the kernel completes and queues for the node to take, at most, in all its
/// listeners (see [`listen_backlog`]).
pub const LISTEN_BACKLOG: usize = 4;

/// The backlog to ask `listen()` for to have at most `queued` connections waiting: Linux
/// queues one more than the backlog (a queue is full only once it holds more).
pub fn listen_backlog(queued: usize) -> i32 {
    queued.saturating_sub(1) as i32
}
/// The default cap: 80 connections with other leaves at once (bench case 6's bound), less
/// [`BEYOND_CAP`] and [`LISTEN_BACKLOG`].
pub const MAX_PEER_LINKS: usize = 80 - BEYOND_CAP - LISTEN_BACKLOG;

/// The node's count of connections with other leaves.
#[derive(Debug)]
pub struct PeerLinks {
    max: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    accepted: usize,
    dialled: usize,
    beyond: usize,
}

/// Which count a place is in.
#[derive(Debug, Clone, Copy)]
enum Side {
    Accepted,
    Dialled,
    Beyond,
}

/// A place among [`PeerLinks`], given back when dropped.
#[derive(Debug)]
pub struct PeerLink(Arc<PeerLinks>, Side);

impl PeerLink {
    /// Whether this is one of the [`BEYOND_CAP`] places past the cap (its connection may ask
    /// for no file).
    pub fn is_beyond(&self) -> bool {
        matches!(self.1, Side::Beyond)
    }
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        let mut c = self.0.counts.lock().unwrap_or_else(|e| e.into_inner());
        match self.1 {
            Side::Accepted => c.accepted -= 1,
            Side::Dialled => c.dialled -= 1,
            Side::Beyond => c.beyond -= 1,
        }
    }
}

impl PeerLinks {
    /// At most `max` connections at once (at least both reserves and one more, so that each
    /// side may have one).
    pub fn new(max: usize) -> Arc<PeerLinks> {
        Arc::new(PeerLinks {
            max: max.max(RESERVED_FOR_ACCEPTED.max(RESERVED_FOR_DIALLED) + 1),
            counts: Mutex::default(),
        })
    }

    /// A place for a connection accepted, if fewer than the cap are open and the accepted ones
    /// leave [`RESERVED_FOR_DIALLED`].
    pub fn accept(self: &Arc<Self>) -> Option<PeerLink> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let free =
            c.accepted + c.dialled < self.max && c.accepted < self.max - RESERVED_FOR_DIALLED;
        free.then(|| {
            c.accepted += 1;
            PeerLink(self.clone(), Side::Accepted)
        })
    }

    /// As [`PeerLinks::accept`], or else one of the [`BEYOND_CAP`] places past the cap.
    pub fn accept_or_beyond(self: &Arc<Self>) -> Option<PeerLink> {
        self.accept().or_else(|| {
            let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
            (c.beyond < BEYOND_CAP).then(|| {
                c.beyond += 1;
                PeerLink(self.clone(), Side::Beyond)
            })
        })
    }

    /// A place for a connection to dial, if fewer than the cap are open and the dialled ones
    /// leave [`RESERVED_FOR_ACCEPTED`].
    pub fn dial(self: &Arc<Self>) -> Option<PeerLink> {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        self.dial_free(&c).then(|| {
            c.dialled += 1;
            PeerLink(self.clone(), Side::Dialled)
        })
    }

    fn dial_free(&self, c: &Counts) -> bool {
        c.accepted + c.dialled < self.max && c.dialled < self.max - RESERVED_FOR_ACCEPTED
    }

    /// Whether [`PeerLinks::dial`] would give a place now.
    pub fn may_dial(&self) -> bool {
        self.dial_free(&self.counts.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Connections holding a place now, beyond the cap included.
    pub fn open(&self) -> usize {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.accepted + c.dialled + c.beyond
    }

    /// The cap.
    pub fn max(&self) -> usize {
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neither_side_takes_the_others_last_places_and_places_come_back() {
        let links = PeerLinks::new(20);
        let dialled: Vec<_> = std::iter::from_fn(|| links.dial()).collect();
        assert_eq!(dialled.len(), 20 - RESERVED_FOR_ACCEPTED);
        let accepted: Vec<_> = std::iter::from_fn(|| links.accept()).collect();
        assert_eq!(accepted.len(), RESERVED_FOR_ACCEPTED);
        assert_eq!(links.open(), 20);
        assert!(links.accept().is_none() && links.dial().is_none() && !links.may_dial());
        // Past the cap: a few places for connections that may ask for no file.
        let beyond: Vec<_> = std::iter::from_fn(|| links.accept_or_beyond()).collect();
        assert_eq!(beyond.len(), BEYOND_CAP);
        assert!(beyond.iter().all(|l| l.is_beyond()));
        assert_eq!(links.open(), 20 + BEYOND_CAP);
        drop((dialled, accepted, beyond));
        assert_eq!(links.open(), 0);
        // The other way round: accepted connections leave the dialled their reserve.
        let accepted: Vec<_> = std::iter::from_fn(|| links.accept()).collect();
        assert_eq!(accepted.len(), 20 - RESERVED_FOR_DIALLED);
        assert!(!accepted.iter().any(|l| l.is_beyond()));
        assert!(links.may_dial());
        let dialled: Vec<_> = std::iter::from_fn(|| links.dial()).collect();
        assert_eq!(dialled.len(), RESERVED_FOR_DIALLED);
        drop(accepted);
        assert_eq!(links.open(), RESERVED_FOR_DIALLED);
        // A cap too small for both reserves is raised to one that leaves each side a place.
        let tiny = PeerLinks::new(0);
        assert!(tiny.dial().is_some() && tiny.accept().is_some());
    }
}
