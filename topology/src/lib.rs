//! `topology`: Canopy's overlay logic, sans-IO.
//!
//! The super-peer's behaviour in the overlay (handshake, leaf registration, query flooding with
//! a TTL and a seen-cache, reverse-path routing of hits, keep-alives) is a plain struct,
//! [`SuperPeer`], driven by inputs and the current time. It never reads the clock, opens a
//! socket or spawns a task, so a test can run many nodes in virtual time in one process.
//!
//! # Layout
//! - [`superpeer`]: [`SuperPeer`], its [`Config`], [`Event`]s, [`Transmit`]s and [`Stats`]. One
//!   struct, its concerns split by file: `superpeer/mod.rs` (connections, handshake,
//!   keep-alives, flooding, hits routed back), `config.rs`, `routes.rs` (keyword routing: a
//!   `Routes` struct holding the route tables, `RouteTable`/`RoutePatch` handling, the depth-1
//!   table), `dynamic.rs` (dynamic querying), `mesh.rs` (host cache, mesh upkeep, promotion and
//!   demotion).
//! - [`seen`]: [`SeenCache`], the bounded, time-limited duplicate filter.
//! - [`leaf`]: [`LeafOverlay`], the leaf's attachment and promotion logic.
//! - [`hostcache`]: [`HostCache`], known super-peers with load and back-off.
//! - [`role`]: [`RoleClock`], role-change hysteresis; [`Handover`] and [`Overlay`], the move from
//!   one role's machine to the other's, written once for every driver.
//! - [`routing`]: QRP-style route tables ([`LocalTable`], [`RemoteTable`]) for keyword routing.
//! - `sim` (cargo feature `sim`, off by default): a deterministic discrete-event simulator
//!   running these machines, with the accessors of [`SuperPeer`] only it and the tests read
//!   (route tables held, dynamic searches in progress, `config_mut`). The tests, the scale study
//!   and the root crate's tests turn it on; the binaries are built without it.

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
//! # Keyword routing and dynamic querying
//! Each super-peer keeps a QRP-style route table of the words its leaves' files hold
//! ([`routing`]) and sends it to its neighbours (`RouteTable`, then `RoutePatch`es). A query's
//! last hop goes only to neighbours whose table has every one of its words
//! ([`Config::last_hop_routing`]). Each super-peer also sends a depth-1 table, its own joined
//! with its neighbours' ([`routing::aggregate`], [`Config::route_aggregates`]), and a query
//! with TTL 1 goes only to neighbours whose depth-1 table has every word
//! ([`Config::two_hop_routing`]). A leaf's query is searched dynamically
//! ([`Config::dynamic`]): a probe to a few neighbours, the likeliest first, then wider steps,
//! each sized from the results per super-peer reached so far, until the leaf has the target
//! number of hits or every neighbour has had the query with its full TTL.
//!
//! # Example
//! ```
//! use std::time::Instant;
//! use topology::{Config, Event, NodeRole, RoleClock, RoleConfig, SuperPeer};
//! use wire::{Hello, Message, NodeId, Role};
//!
//! let now = Instant::now();
//! let clock = RoleClock::new(now, NodeRole::SuperPeer, RoleConfig::default());
//! let mut sp = SuperPeer::new(now, NodeId([1; 32]), None, Config::default(), clock);
//! sp.handle_connect(now, 7, "127.0.0.1:5000".parse().unwrap(), false);
//! // We greet first.
//! assert!(matches!(sp.poll_transmit().unwrap().msg, Message::Hello(_)));
//! let hello = Hello::new(NodeId([2; 32]), Role::Leaf, Some("0.0.0.0:6000".parse().unwrap()), "doc");
//! sp.handle_message(now, 7, Message::Hello(hello));
//! assert_eq!(sp.poll_event(), Some(Event::LeafJoined { conn: 7, node: NodeId([2; 32]) }));
//! assert_eq!(sp.stats().leaves, 1);
//! ```

pub mod hostcache;
pub mod leaf;
mod per_minute;
pub mod role;
pub mod routing;
pub mod seen;
#[cfg(feature = "sim")]
pub mod sim;
pub mod superpeer;

pub use hostcache::HostCache;
pub use leaf::{punch_wait, LeafConfig, LeafEvent, LeafOverlay, NatKind, Reach};
pub use role::{Handover, NodeRole, Overlay, RoleClock, RoleConfig};
pub use routing::{Analyzer, LocalTable, RemoteTable, RouteError};
pub use seen::SeenCache;
pub use superpeer::{
    Config, DynamicQuerying, Event, RelayJoin, Stats, SuperPeer, Transmit, RELAY_JOIN_WAIT,
};

/// A connection, as the driver numbers them. Unique within one node for its lifetime.
pub type ConnId = u64;

#[cfg(test)]
mod tests;
