//! A super-peer's settings: [`Config`], and [`DynamicQuerying`] for the leaves' queries.

use std::time::Duration;

use wire::MAX_TTL;

use crate::routing::{self, Analyzer};

/// Settings of a super-peer's overlay logic.
#[derive(Debug, Clone)]
pub struct Config {
    /// TTL hard cap applied to every query on receipt.
    pub max_ttl: u8,
    /// How many query ids the seen-cache holds at most.
    pub seen_capacity: usize,
    /// How long a query id is remembered (and hits for it routed back).
    pub seen_ttl: Duration,
    /// How often an idle connection is pinged.
    pub keepalive_interval: Duration,
    /// A connection silent for this long is closed.
    pub idle_timeout: Duration,
    /// A connection that has not said Hello within this time is closed.
    pub hello_timeout: Duration,
    /// The most hits one super-peer returns for one query from its own index.
    pub max_local_hits: usize,
    /// Requests for a connection back ([`wire::Message::ConnectToMe`]) one requester connection
    /// may make before it is dropped; also those one leaf may make over its link in a minute
    /// (more are refused).
    pub max_connect_requests: u32,
    /// Relays one leaf may take part in at once (0 in [`Config::max_relays`]: none at all).
    pub relays_per_leaf: usize,
    /// Relays at once, in all.
    pub max_relays: usize,
    /// Bytes one relay carries (both ways together) before it is closed.
    pub relay_max_bytes: u64,
    /// How long one relay lasts at most.
    pub relay_max_time: Duration,
    /// The most hits carried in one QueryHits message.
    pub hits_per_message: usize,
    /// The most hits routed back for one query, from everyone; later ones are dropped.
    pub max_hits_per_query: usize,
    /// Free text sent in Hello.
    pub agent: String,
    /// Leaves accepted at most; more are redirected to other super-peers.
    pub leaf_slots: u32,
    /// Neighbouring super-peers to keep (dialled from the host cache when short).
    pub neighbour_target: usize,
    /// How often the super-peer tells neighbours and leaves which super-peers it knows, and
    /// looks after its mesh and its role.
    pub hosts_interval: Duration,
    /// Entries the host cache holds at most.
    pub host_cache_size: usize,
    /// When this share of leaf slots is taken and no known super-peer has room, the most
    /// capable leaf is asked to become a super-peer.
    pub promote_at: f32,
    /// A leaf must have been up this long to be asked.
    pub min_leaf_uptime: Duration,
    /// The least time between two such requests.
    pub promote_cooldown: Duration,
    /// Whether this super-peer may become a leaf again (a dedicated `superpeer` never does).
    pub can_demote: bool,
    /// It does when it has at most this share of its slots in use and its neighbours have room
    /// for its leaves.
    pub demote_at: f32,
    /// At most this many super-peers are dialled per tick while short of neighbours.
    pub dials_per_tick: usize,
    /// Route tables have `1 << route_bits` slots.
    pub route_bits: u8,
    /// Slots cleared in the route table (words gone with leaves) are sent to neighbours at
    /// most this long after (batched into one patch); new words are sent at once.
    pub route_delay: Duration,
    /// Forward a query's last hop only to neighbours whose route table says it can match
    /// there. Tables are kept and exchanged either way.
    pub last_hop_routing: bool,
    /// Send neighbours a depth-1 route table too: ours joined with the tables our neighbours
    /// sent us (see [`routing::aggregate`]).
    pub route_aggregates: bool,
    /// Slots cleared in the depth-1 table go out at most this long after the change that
    /// cleared them, batched (a neighbour's patch changes it at every one of that neighbour's
    /// neighbours); the first depth-1 table waits this long too.
    pub aggregate_delay: Duration,
    /// New slots of the depth-1 table go out at once (until they arrive, queries for a new file
    /// stop one hop short of it), but at most one patch of them per this interval: in a burst
    /// (a network starting, a super-peer's leaves moving at once) the rest wait for the
    /// interval's end, batched.
    pub aggregate_add_interval: Duration,
    /// Forward a query with one hop left beyond the neighbour (TTL 1) only to neighbours whose
    /// depth-1 table says it can match there or at one of their neighbours. A neighbour that
    /// sent no depth-1 table gets every query.
    pub two_hop_routing: bool,
    /// Cuts file text and queries into words for the route table: must cut exactly like the
    /// index does (the super-peer driver passes the index's analyzer).
    pub analyzer: Analyzer,
    /// Dynamic querying of the leaves' queries (`None`: flood them at once).
    pub dynamic: Option<DynamicQuerying>,
    /// Neighbours (dialled and inbound together) past which a new inbound neighbour is
    /// redirected. Anyone can claim to be a super-peer; this bounds how many such claims get a
    /// neighbour's rates.
    pub max_neighbours: usize,
    /// Queries per second this super-peer sends one neighbour at most (below what a neighbour
    /// accepts: `transport::limits::Limits::peer_queries_per_second`).
    pub neighbour_query_rate: f64,
    /// Queries it may send one neighbour at once, above the rate.
    pub neighbour_query_burst: f64,
    /// Files one leaf may hold registered here at once, counted as held: a re-registered
    /// file counts once, and withdrawing a file never registered gives nothing back.
    pub max_files_per_leaf: u64,
    /// Bytes of records one leaf may hold registered here at once
    /// ([`crate::routing::record_cost`] of each).
    pub max_record_bytes_per_leaf: u64,
}

/// Settings of dynamic querying: the super-peer that a leaf's query starts at probes a few
/// neighbours first, then widens step by step until the leaf has `target` results or every
/// neighbour has been sent the query with the full TTL (the horizon).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DynamicQuerying {
    /// Results wanted: no more neighbours are asked once the leaf has this many.
    pub target: usize,
    /// Neighbours the first probe goes to.
    pub probe_width: usize,
    /// TTL of the probe (hops beyond the neighbour), at most the query's TTL minus one.
    pub probe_ttl: u8,
    /// How long to wait for results per hop of the TTL last sent before the next step.
    pub hop_wait: Duration,
}

impl Default for DynamicQuerying {
    fn default() -> Self {
        // LimeWire's dynamic querying aimed at 150 results, probed three connections first and
        // waited about 2.4 s per TTL; a super-peer mesh on today's links answers faster.
        DynamicQuerying {
            target: 150,
            probe_width: 3,
            probe_ttl: 1,
            hop_wait: Duration::from_millis(1200),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_ttl: MAX_TTL,
            max_files_per_leaf: 100_000,
            max_neighbours: 48,
            // 90% of the 500 queries/s (burst of 4 s) a neighbour accepts by default.
            neighbour_query_rate: 450.0,
            neighbour_query_burst: 1800.0,
            max_record_bytes_per_leaf: 32 << 20,
            seen_capacity: 65_536,
            seen_ttl: Duration::from_secs(120),
            keepalive_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(10),
            max_local_hits: 200,
            max_connect_requests: 64,
            relays_per_leaf: 2,
            max_relays: 32,
            relay_max_bytes: 64 << 20,
            relay_max_time: Duration::from_secs(600),
            max_hits_per_query: 1000,
            hits_per_message: 100,
            agent: concat!("canopy/", env!("CARGO_PKG_VERSION")).to_string(),
            // Anchors: gtk-gnutella keeps 300 leaves and ~32 ultrapeer links, LimeWire 30 and
            // 32; promotion came after about an hour of uptime in long-lived networks.
            leaf_slots: 300,
            neighbour_target: 32,
            hosts_interval: Duration::from_secs(30),
            host_cache_size: 1000,
            promote_at: 0.9,
            min_leaf_uptime: Duration::from_secs(3600),
            promote_cooldown: Duration::from_secs(60),
            can_demote: false,
            demote_at: 0.1,
            dials_per_tick: 4,
            route_bits: routing::TABLE_BITS,
            route_delay: Duration::from_secs(5),
            last_hop_routing: true,
            route_aggregates: true,
            aggregate_delay: Duration::from_secs(5),
            aggregate_add_interval: Duration::from_secs(1),
            two_hop_routing: true,
            analyzer: routing::simple_words,
            dynamic: Some(DynamicQuerying::default()),
        }
    }
}
