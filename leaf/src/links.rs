//! The node's connections with other leaves, both ways, under one cap (`--max-peer-links`).
//!
//! The bounds per file (sources per download, downloaders per file, connections that have not
//! asked yet) keep a node in one swarm near 30 + 42 connections, but they are counted where
//! each connection has said what it wants: connections accepted meanwhile, and those of several
//! downloads and uploads at once, add up past them. Here every connection with another leaf
//! takes a place for as long as it lasts, and none is made or kept without one:
//! - one accepted takes a place at once, or is closed at once ([`PeerLinks::accept`]);
//! - one dialled (a download's source, a connection back someone asked for) takes a place
//!   before it is dialled, or waits ([`PeerLinks::dial`]). Dialling leaves the last
//!   [`RESERVED_FOR_ACCEPTED`] places to those who connect to us, so that a node that
//!   downloads much still serves.
//!
//! Connections to super-peers are not counted: they are few and bounded by the overlay.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Places that only accepted connections may take.
pub const RESERVED_FOR_ACCEPTED: usize = 8;
/// The default cap: 80 connections with other leaves at once (bench case 6's bound), less
/// [`LISTEN_BACKLOG`] for those the kernel has accepted and the node not yet taken.
pub const MAX_PEER_LINKS: usize = 80 - LISTEN_BACKLOG;
/// Connections the kernel completes and queues for the node to take (the listener's backlog).
pub const LISTEN_BACKLOG: usize = 8;

/// The node's count of connections with other leaves.
#[derive(Debug)]
pub struct PeerLinks {
    max: usize,
    open: AtomicUsize,
}

/// A place among [`PeerLinks`], given back when dropped.
#[derive(Debug)]
pub struct PeerLink(Arc<PeerLinks>);

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl PeerLinks {
    /// At most `max` connections at once (at least [`RESERVED_FOR_ACCEPTED`] + 1, so that
    /// dialling is possible at all).
    pub fn new(max: usize) -> Arc<PeerLinks> {
        Arc::new(PeerLinks {
            max: max.max(RESERVED_FOR_ACCEPTED + 1),
            open: AtomicUsize::new(0),
        })
    }

    /// A place for a connection accepted, if fewer than the cap are open.
    pub fn accept(self: &Arc<Self>) -> Option<PeerLink> {
        self.take(self.max)
    }

    /// A place for a connection to dial, if fewer than the cap less
    /// [`RESERVED_FOR_ACCEPTED`] are open.
    pub fn dial(self: &Arc<Self>) -> Option<PeerLink> {
        self.take(self.max - RESERVED_FOR_ACCEPTED)
    }

    fn take(self: &Arc<Self>, below: usize) -> Option<PeerLink> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < below).then_some(n + 1)
            })
            .ok()
            .map(|_| PeerLink(self.clone()))
    }

    /// Whether [`PeerLinks::dial`] would give a place now.
    pub fn may_dial(&self) -> bool {
        self.open() < self.max - RESERVED_FOR_ACCEPTED
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
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
    fn dialling_leaves_the_last_places_to_accepted_connections_and_places_come_back() {
        let links = PeerLinks::new(12);
        let dialled: Vec<_> = std::iter::from_fn(|| links.dial()).collect();
        assert_eq!(dialled.len(), 12 - RESERVED_FOR_ACCEPTED);
        let accepted: Vec<_> = std::iter::from_fn(|| links.accept()).collect();
        assert_eq!(accepted.len(), RESERVED_FOR_ACCEPTED);
        assert_eq!(links.open(), 12);
        assert!(links.accept().is_none() && links.dial().is_none());
        drop(accepted);
        // Freed places are anyone's, up to each side's limit.
        assert_eq!(std::iter::from_fn(|| links.dial()).count(), 0);
        drop(dialled);
        assert_eq!(links.open(), 0);
        assert!(links.dial().is_some());
        // A cap too small to dial under is raised to one that can.
        let tiny = PeerLinks::new(0);
        assert_eq!(tiny.max(), RESERVED_FOR_ACCEPTED + 1);
        assert!(tiny.dial().is_some());
    }
}
