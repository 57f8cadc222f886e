//! What the node's parts share: its identity and settings, its shares and the files it serves,
//! its upload slots and counters, and what the overlay actor publishes about the overlay. The
//! node ([`crate::node`]), the overlay actor (`crate::overlay`) and the upload connections
//! ([`crate::upload`]) each hold an `Arc` of it, so none of them needs the others.
//!
//! One writer for each piece: `shares` is changed by the node's share and unshare, `partials` by
//! its downloads, `role` by the overlay actor; the counters by the upload connections.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use std::time::Instant;

use wire::NodeId;

use crate::control::{self, LinkStatus};
use crate::rate::RateLimit;
use crate::share::Shares;
use crate::slots::UploadSlots;
use crate::swarm::{Partials, Spread};

/// What the node is in the overlay, for status.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct RoleStatus {
    /// "leaf" or "super-peer".
    pub(crate) role: String,
    /// Why it has that role.
    pub(crate) why: String,
    /// Super-peers in the host cache.
    pub(crate) hosts: usize,
    /// The in-process super-peer's figures, when promoted.
    pub(crate) superpeer: Option<control::SuperPeerStatus>,
    /// Super-peers attached now, by address.
    pub(crate) links: Vec<LinkStatus>,
    /// Whether others can connect to this node, as its super-peers found.
    pub(crate) reach: Option<control::Reach>,
    /// The same over the node's other address family (IPv6 beside IPv4).
    pub(crate) reach_also: Option<control::Reach>,
    /// Recent overlay events (attachments, promotion, demotion), newest last.
    pub(crate) events: VecDeque<String>,
}

/// See the module docs.
pub(crate) struct NodeState {
    pub(crate) node_id: NodeId,
    /// The key pair the node id derives from.
    pub(crate) identity: Arc<transport::identity::Identity>,
    pub(crate) limits: transport::limits::Limits,
    /// Where chunks are served.
    pub(crate) listen: Option<SocketAddr>,
    /// Whether this node links to super-peers over IPv6 too: the host has a route to IPv6
    /// addresses, and the node serves over IPv6 if it serves at all (see
    /// `topology::LeafOverlay::set_ipv6`).
    pub(crate) ipv6: bool,
    /// The port it serves on over IPv6, when it does.
    pub(crate) port6: Option<u16>,
    pub(crate) shares: RwLock<Shares>,
    pub(crate) uploaded_chunks: AtomicU64,
    pub(crate) uploaded_bytes: AtomicU64,
    pub(crate) data_dir: PathBuf,
    /// Bootstrap super-peer addresses.
    pub(crate) seeds: Vec<SocketAddr>,
    /// What the overlay actor publishes of itself for status: it alone stores here, a whole
    /// new status at a time; readers never wait on it.
    pub(crate) role: ArcSwap<RoleStatus>,
    pub(crate) started: Instant,
    pub(crate) slots: UploadSlots,
    /// The connections with other leaves, both ways, under the node's cap.
    pub(crate) links: Arc<crate::links::PeerLinks>,
    /// Files being downloaded, or seeded after, served from their verified chunks.
    pub(crate) partials: Partials,
    /// The peers of each file's swarm met first-hand, for source exchange.
    pub(crate) swarm_peers: crate::swarm::SwarmPeers,
    /// Whole files being fetched by several downloaders at once, shown a few chunks at a time.
    pub(crate) spread: Spread,
    pub(crate) upload_cap: RateLimit,
    /// Whether others may list what this node shares (`--no-browse` turns it off).
    pub(crate) browsable: bool,
    /// Routes to sources that may not be reachable, and the connections back awaited.
    pub(crate) reverse: crate::reverse::Reverse,
    /// The sources this node's searches met, by node id (`leaf browse NODE`).
    pub(crate) seen: std::sync::Mutex<crate::seen::Seen>,
    /// The port others should connect to when it is not the listen port (a router's mapping, a
    /// forwarded port); 0: the listen port. Written by the node's external-port task only.
    pub(crate) external_port: std::sync::atomic::AtomicU16,
    /// Open upload connections (accepted, or made because someone asked), so shutdown can
    /// close them.
    pub(crate) upload_streams:
        std::sync::Mutex<std::collections::HashMap<u64, smol::net::TcpStream>>,
    pub(crate) upload_keys: AtomicU64,
}

impl NodeState {
    /// Where others should connect to us, as Hello says it: the listen address, with the
    /// external port if there is one.
    pub(crate) fn advertised(&self) -> Option<SocketAddr> {
        let port = self
            .external_port
            .load(std::sync::atomic::Ordering::Acquire);
        self.listen
            .map(|l| SocketAddr::new(l.ip(), if port == 0 { l.port() } else { port }))
    }
}
