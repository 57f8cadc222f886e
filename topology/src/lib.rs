//! `topology`: Canopy's overlay logic, sans-IO.
//!
//! The super-peer's behaviour in the overlay (handshake, leaf registration, query flooding with
//! a TTL and a seen-cache, reverse-path routing of hits, keep-alives) is a plain struct,
//! [`SuperPeer`], driven by inputs and the current time. It never reads the clock, opens a
//! socket or spawns a task, so a test can run many nodes in virtual time in one process.
//!
//! # Layout
//! - [`superpeer`]: [`SuperPeer`], its [`Config`], [`Event`]s, [`Transmit`]s and [`Stats`].
//! - [`seen`]: [`SeenCache`], the bounded, time-limited duplicate filter.
//!
//! # The drain rule
//! After **every** input (`handle_connect`, `handle_message`, `handle_invalid`,
//! `handle_disconnect`, `handle_local_hits`, `handle_timeout`), the driver drains the outputs:
//! `poll_event()` until `None` (acting on each: an [`Event::Search`] is answered with
//! `handle_local_hits`, which is itself an input, so drain again), and `poll_transmit()` until
//! `None`, sending each message on its connection. Then it sleeps until `poll_timeout()` or the
//! next input, whichever comes first, and calls `handle_timeout(now)` when the timeout passes.
//!
//! # TTL
//! A query's TTL counts super-peer to super-peer hops. A leaf's query with TTL 2 is answered by
//! its super-peer, by that super-peer's neighbours (TTL 1 on arrival) and by theirs (TTL 0 on
//! arrival, not forwarded further). TTLs above [`Config::max_ttl`] are clamped on receipt.
//!
//! # Example
//! ```
//! use std::time::Instant;
//! use topology::{Config, Event, SuperPeer};
//! use wire::{Hello, Message, NodeId, Role, PROTOCOL_VERSION};
//!
//! let now = Instant::now();
//! let mut sp = SuperPeer::new(NodeId([1; 32]), None, Config::default());
//! sp.handle_connect(now, 7, "127.0.0.1:5000".parse().unwrap());
//! // We greet first.
//! assert!(matches!(sp.poll_transmit().unwrap().msg, Message::Hello(_)));
//! let hello = Hello { version: PROTOCOL_VERSION, node: NodeId([2; 32]), role: Role::Leaf,
//!                     listen: Some("0.0.0.0:6000".parse().unwrap()), agent: "doc".into() };
//! sp.handle_message(now, 7, Message::Hello(hello));
//! assert_eq!(sp.poll_event(), Some(Event::LeafJoined { conn: 7, node: NodeId([2; 32]) }));
//! assert_eq!(sp.stats().leaves, 1);
//! ```

pub mod seen;
pub mod superpeer;

pub use seen::SeenCache;
pub use superpeer::{Config, Event, Stats, SuperPeer, Transmit};

/// A connection, as the driver numbers them. Unique within one node for its lifetime.
pub type ConnId = u64;

#[cfg(test)]
mod tests;
