//! Every message of the protocol.
//!
//! One enum, [`Message`], covers the overlay (handshake, share registration, queries, hits,
//! keep-alive, goodbye) and transfers (manifest and chunk requests and responses). Bulk bytes
//! (chunk data, manifest chaining values) are not CBOR fields: they travel as the frame's raw
//! payload (see [`crate::frame`]), so the fields holding them are skipped by serde.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::ids::{FileId, NodeId, QueryId};

/// The protocol version this build speaks. A peer speaking another is refused at Hello, by
/// name, rather than cut off later for a message it cannot decode.
///
/// 2: reachability, reverse connections, hole punching and relays (issue 19), source exchange
/// (issue 21), browsing (issue 22).
/// 3: dial-backs asked of a neighbouring super-peer ([`Message::CheckReach`]), which a super-peer
/// of version 2 would answer by closing the link.
/// 4: [`Message::ConnectToMe`] over a leaf's own link, which a super-peer of version 3 would
/// answer by closing the link, and a source's Hello sent first on a connection back.
pub const PROTOCOL_VERSION: u16 = 4;

/// The most addresses one [`Message::Peers`] carries.
pub const MAX_PEX: usize = 50;

/// The TTL a query starts with unless the user asks otherwise.
pub const DEFAULT_TTL: u8 = 3;

/// The largest TTL a super-peer honours; anything larger is clamped on receipt.
pub const MAX_TTL: u8 = 7;

/// What a node is in the overlay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// A leaf: shares files, asks its super-peers to search, serves and fetches chunks.
    Leaf,
    /// A super-peer: indexes its leaves' files and floods queries to its neighbours.
    SuperPeer,
    /// A short connection that only fetches chunks (a downloader talking to a source).
    Transfer,
}

/// A super-peer's load, as it announces it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Load {
    /// Leaves attached now.
    pub leaves: u32,
    /// Leaves it accepts at most.
    pub leaf_slots: u32,
    /// Neighbouring super-peers connected now.
    pub neighbours: u32,
}

impl Load {
    /// Leaf slots still free.
    pub fn free(&self) -> u32 {
        self.leaf_slots.saturating_sub(self.leaves)
    }
}

/// What a leaf brings if it were asked to become a super-peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capability {
    /// Whether it may be promoted at all (`--no-promote` says no).
    pub can_promote: bool,
    /// Seconds it has been running.
    pub uptime_s: u64,
    /// Upload bandwidth in bytes per second (measured or configured).
    pub upload_bps: u64,
    /// File descriptors it could still open.
    pub free_fds: u64,
    /// Free memory in MiB.
    pub free_mem_mb: u64,
}

impl Capability {
    /// A single figure to rank leaves by: uptime first, then bandwidth and resources.
    pub fn score(&self) -> u64 {
        let uptime = self.uptime_s.min(24 * 3600);
        let bandwidth = (self.upload_bps / 125_000).min(1000); // Mbit/s
        let resources = (self.free_fds / 100).min(100) + (self.free_mem_mb / 100).min(100);
        uptime * 4 + bandwidth * 60 + resources * 10
    }
}

/// The longest a super-peer asks a leaf to wait before dialling for a hole punch.
pub const MAX_PUNCH_WAIT_MS: u32 = 1000;

/// How a hole punch is timed (DCUtR's synchronisation, with the super-peer in the middle):
/// the super-peer passes the request on to its leaf as it answers, and knows its round trip
/// to the leaf from its keep-alives. The leaf dials `leaf_wait_ms` after the request reaches
/// it, half its round trip after the answer leaves. The requester, whose own round trip is
/// the time the answer took, dials `leaf_rtt_ms / 2 + leaf_wait_ms - its round trip / 2`
/// after the answer reaches it: at the same moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PunchSync {
    /// The super-peer's round trip to the leaf.
    pub leaf_rtt_ms: u32,
    /// How long the leaf was told to wait (`ConnectBack`'s `wait_ms`).
    pub leaf_wait_ms: u32,
}

/// A super-peer somebody knows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostEntry {
    /// Where it accepts connections.
    pub addr: SocketAddr,
    /// Its load when last heard of.
    pub load: Load,
    /// Seconds since it was last heard of.
    pub age_s: u32,
}

/// Why a super-peer sends a leaf elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RedirectReason {
    /// Its leaf slots are all taken.
    Full,
    /// It is becoming a leaf and hands its leaves over.
    Demoting,
}

/// The first message on every connection, in both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's protocol version ([`PROTOCOL_VERSION`]).
    pub version: u16,
    /// The sender's node id.
    pub node: NodeId,
    /// The role the sender takes on this connection.
    pub role: Role,
    /// Where the sender accepts connections (for a leaf: where it serves chunks). An unspecified
    /// IP (`0.0.0.0`) means "the address you see me at, on this port".
    pub listen: Option<SocketAddr>,
    /// Free text naming the software, for logs.
    pub agent: String,
    /// A super-peer's load.
    #[serde(default)]
    pub load: Option<Load>,
    /// A leaf's capability, should it be asked to become a super-peer.
    #[serde(default)]
    pub capability: Option<Capability>,
}

impl Hello {
    /// A Hello of this protocol version, with no load or capability.
    pub fn new(node: NodeId, role: Role, listen: Option<SocketAddr>, agent: &str) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            node,
            role,
            listen,
            agent: agent.to_string(),
            load: None,
            capability: None,
        }
    }
}

/// Tags read from a file (audio files mostly); every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tags {
    /// Performing artist.
    pub artist: Option<String>,
    /// Album or release.
    pub album: Option<String>,
    /// Track title.
    pub title: Option<String>,
    /// Genre.
    pub genre: Option<String>,
    /// Year of release.
    pub year: Option<u16>,
    /// Duration in whole seconds.
    pub duration_s: Option<u32>,
    /// Audio bitrate in kbit/s. Absent in records from nodes before it was added (and in their
    /// share caches), so a reader takes it as optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bitrate_kbps: Option<u32>,
}

impl Tags {
    /// True when no tag is set.
    pub fn is_empty(&self) -> bool {
        *self == Tags::default()
    }
}

/// One shared file as a leaf registers it with its super-peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// Content id (BLAKE3 of the bytes).
    pub id: FileId,
    /// Size in bytes.
    pub size: u64,
    /// Path below the shared folder, `/`-separated, ending in the file name. The shared folder's
    /// own name is the first component, so its words are searchable too.
    pub path: String,
    /// Tags where the file has them.
    pub tags: Tags,
}

impl FileRecord {
    /// Bytes of text the record carries: its path and its tags' strings (what it costs to
    /// send and to index, before the fixed fields).
    pub fn text_len(&self) -> usize {
        let t = &self.tags;
        self.path.len()
            + [&t.artist, &t.album, &t.title, &t.genre]
                .iter()
                .map(|s| s.as_ref().map_or(0, |s| s.len()))
                .sum::<usize>()
    }

    /// The file name: the last component of [`FileRecord::path`].
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// The lower-case extension of the name, without the dot, if it has one.
    pub fn extension(&self) -> Option<String> {
        let name = self.name();
        let (stem, ext) = name.rsplit_once('.')?;
        (!stem.is_empty() && !ext.is_empty()).then(|| ext.to_lowercase())
    }
}

/// What a query looks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Terms {
    /// Free text: every word must match (names, path words, tags).
    Words(String),
    /// One exact content id: used to find sources for a download.
    Id(FileId),
}

/// Filters that apply on top of the terms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Only files with this extension (case-insensitive, no dot).
    pub ext: Option<String>,
    /// Only files at least this large, in bytes.
    pub min_size: Option<u64>,
    /// Only files at most this large, in bytes.
    pub max_size: Option<u64>,
}

/// The search a query carries: terms and filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Search {
    /// What to look for.
    pub terms: Terms,
    /// Filters.
    pub filter: Filter,
}

/// A query flooded between super-peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Random id: duplicate suppression and the reverse path for hits.
    pub id: QueryId,
    /// How many more super-peer to super-peer hops the query may take.
    pub ttl: u8,
    /// How many super-peer to super-peer hops it has taken.
    pub hops: u8,
    /// What it looks for.
    pub search: Search,
}

/// A leaf that holds a file, as a hit names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Source {
    /// The leaf's node id.
    pub node: NodeId,
    /// Where the leaf serves chunks: the address its super-peer sees it at, on the port it
    /// names.
    pub addr: SocketAddr,
    /// Whether its super-peer could connect to that address (None: not known yet). A leaf
    /// that cannot be reached is asked to connect out instead ([`Message::ConnectToMe`]).
    #[serde(default)]
    pub reachable: Option<bool>,
    /// The listen address of the super-peer that holds the leaf, which relays requests for a
    /// connection back.
    #[serde(default)]
    pub via: Option<SocketAddr>,
}

/// One file found by a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Who holds it.
    pub source: Source,
    /// The file.
    pub file: FileRecord,
    /// The answering super-peer's relevance score (higher is better; comparable only roughly
    /// between super-peers).
    pub score: f32,
}

/// Hits for one query, travelling back along the query's path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryHits {
    /// The query they answer.
    pub query: QueryId,
    /// The hits.
    pub hits: Vec<Hit>,
}

/// Why a transfer request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferErrorKind {
    /// The node does not share a file with that id (any more).
    NotShared,
    /// The chunk index is outside the file.
    BadIndex,
    /// The node could not read the file (changed or unreadable on its disk).
    Unavailable,
    /// All upload slots are busy; try again later.
    Busy,
}

/// Manifest response: the chunk layout of a file and the chaining value of every chunk. The
/// chaining values travel as the frame payload, 32 bytes each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestMsg {
    /// The request this answers.
    pub request: u32,
    /// The file.
    pub id: FileId,
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes (a power of two).
    pub chunk_size: u32,
    /// One chaining value per chunk (the payload; not a CBOR field).
    #[serde(skip)]
    pub cvs: Vec<[u8; 32]>,
}

/// Chunk response: the bytes of one chunk, as the frame payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkMsg {
    /// The request this answers.
    pub request: u32,
    /// The file.
    pub id: FileId,
    /// Which chunk.
    pub index: u32,
    /// The bytes (the payload; not a CBOR field).
    #[serde(skip)]
    pub data: Vec<u8>,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Handshake; the first message in each direction.
    Hello(Hello),
    /// A leaf adds files to its registration with a super-peer (sent in batches).
    Register {
        /// The files.
        files: Vec<FileRecord>,
    },
    /// A leaf withdraws files it no longer shares.
    Withdraw {
        /// Their content ids.
        ids: Vec<FileId>,
    },
    /// A search, from a leaf to its super-peer or between super-peers.
    Query(Query),
    /// Hits for a query, travelling back along its path.
    QueryHits(QueryHits),
    /// Keep-alive probe.
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
    /// Keep-alive answer.
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Super-peers the sender knows, with their load (exchanged between super-peers and given to
    /// leaves, which keep them in their host caches).
    Hosts {
        /// The super-peers, the sender itself first when it is one.
        hosts: Vec<HostEntry>,
    },
    /// A super-peer will not keep this leaf: try these instead. The connection closes after.
    Redirect {
        /// Why.
        reason: RedirectReason,
        /// Super-peers to try.
        hosts: Vec<HostEntry>,
    },
    /// A super-peer asks this leaf to become a super-peer (its slots are running out).
    Promote,
    /// The sender is closing the connection, and why.
    Goodbye {
        /// Human-readable reason.
        reason: String,
    },
    /// Ask a source for a file's manifest.
    GetManifest {
        /// Request number, echoed in the answer.
        request: u32,
        /// The file.
        id: FileId,
    },
    /// A file's manifest.
    Manifest(ManifestMsg),
    /// Ask a source for one chunk.
    GetChunk {
        /// Request number, echoed in the answer.
        request: u32,
        /// The file.
        id: FileId,
        /// Which chunk.
        index: u32,
    },
    /// One chunk's bytes.
    Chunk(ChunkMsg),
    /// All upload slots are taken: the requester is queued at `position` (1 is next) and
    /// should ask again shortly, keeping the connection open to keep its place.
    Queued {
        /// The chunk request that was not served.
        request: u32,
        /// Place in the queue, 1-based.
        position: u32,
    },
    /// The requester no longer wants the answer to this request (an endgame spare).
    Cancel {
        /// The request to drop.
        request: u32,
    },
    /// A transfer request that cannot be served.
    TransferError {
        /// The request.
        request: u32,
        /// The file.
        id: FileId,
        /// Why.
        kind: TransferErrorKind,
        /// Detail for logs.
        message: String,
    },
    /// Ask a leaf for the list of what it shares, in path order, from the `offset`th file.
    /// Answered with [`Message::Listing`] or [`Message::BrowseRefused`].
    Browse {
        /// Request number, echoed in the answer.
        request: u32,
        /// The first file wanted.
        offset: u32,
    },
    /// To a super-peer, on a connection with [`Role::Transfer`]: ask its leaf `node` to
    /// connect to the sender (at the address the super-peer sees it at, on the port of its
    /// Hello's `listen`), naming `token`. Answered with [`Message::ConnectAsked`].
    ConnectToMe {
        /// The leaf asked to connect.
        node: NodeId,
        /// Names the connection when it arrives ([`Message::Reversed`]).
        token: u64,
        /// The sender cannot be reached either and dials the leaf at the same time: the leaf
        /// should dial from its listen port, and keep trying a few seconds (hole punching).
        #[serde(default)]
        punch: bool,
    },
    /// The super-peer's answer to [`Message::ConnectToMe`]: the leaf was asked, or why not.
    ConnectAsked {
        /// The request's token.
        token: u64,
        /// Why the leaf was not asked (None: it was).
        error: Option<String>,
        /// For a hole punch: when the leaf will dial, so that the sender dials at the same
        /// moment.
        #[serde(default)]
        sync: Option<PunchSync>,
    },
    /// From a super-peer to its leaf: connect to `addr`, whose key is that of `node`, and
    /// serve it as if it had connected, naming `token` first.
    ConnectBack {
        /// Who asked (its key is checked by the handshake).
        node: NodeId,
        /// Where it is, as the super-peer sees it.
        addr: SocketAddr,
        /// Sent back in [`Message::Reversed`].
        token: u64,
        /// As in [`Message::ConnectToMe`].
        #[serde(default)]
        punch: bool,
        /// For a hole punch: wait this long before dialling, so that the requester, farther
        /// from the super-peer, dials at the same moment (at most [`MAX_PUNCH_WAIT_MS`]).
        #[serde(default)]
        wait_ms: u32,
    },
    /// To a super-peer, on a connection with [`Role::Transfer`]: relay a connection between
    /// the sender and its leaf `node`, named `token` (the last resort, when neither can reach
    /// the other). Answered with [`Message::ConnectAsked`].
    RelayVia {
        /// The leaf.
        node: NodeId,
        /// Names the relay in both ends' [`Message::RelayJoin`].
        token: u64,
    },
    /// From a super-peer to its leaf: `node` asked for a relay; join it with `token` and serve
    /// `node` through it.
    RelayBack {
        /// Who asked (checked by the Noise session run through the relay).
        node: NodeId,
        /// The relay's token.
        token: u64,
    },
    /// The first message on a fresh connection to a super-peer: this connection is one end of
    /// relay `token`.
    RelayJoin {
        /// The relay's token.
        token: u64,
    },
    /// From the super-peer on a relay's end: both ends are in. To the requester first, which
    /// answers [`Message::RelayGo`] and then speaks only to the other end; then to the leaf.
    RelayReady,
    /// The requester's end is ready for the other's bytes.
    RelayGo,
    /// The first message on a connection made because of [`Message::ConnectBack`]: the
    /// connecting node serves chunks on it, and the other side asks.
    Reversed {
        /// The token of the request.
        token: u64,
    },
    /// From a super-peer to a leaf: the address it sees the leaf's listen port at, and whether
    /// a connection to it got through (the super-peer's, or a neighbouring one's it asked:
    /// [`Message::CheckReach`]).
    Reachability {
        /// The leaf's listen address as others should reach it.
        observed: SocketAddr,
        /// Whether the connection to it was accepted by the leaf.
        reachable: bool,
    },
    /// To a super-peer, on a connection with [`Role::Transfer`]: where do you see this
    /// connection come from? Answered with [`Message::SeenAt`]. A leaf asks two super-peers
    /// over connections from its listen port to learn how its NAT maps that port.
    WhereAmI,
    /// The answer to [`Message::WhereAmI`].
    SeenAt {
        /// The connection's remote address, as the super-peer sees it.
        addr: SocketAddr,
    },
    /// From a super-peer to a neighbouring one: connect to leaf `node` at `addr` (where the
    /// asker sees it serve) and say whether it answered holding `node`'s key
    /// ([`Message::ReachChecked`]). A connection from another host cannot pass through the
    /// state the leaf's router keeps for the leaf's own link to the asker.
    CheckReach {
        /// Names the answer.
        token: u64,
        /// Where to connect.
        addr: SocketAddr,
        /// Who must answer there.
        node: NodeId,
    },
    /// The answer to [`Message::CheckReach`]: whether the leaf answered, or `None` if the
    /// check was not made (too many asked, by the asker or for the address, or an address
    /// that no leaf of a super-peer elsewhere serves at: unspecified, multicast, loopback or
    /// private).
    ReachChecked {
        /// The token of the request.
        token: u64,
        /// The outcome.
        reachable: Option<bool>,
    },
    /// A page of a leaf's shares: files `offset..offset + files.len()` of `total`.
    Listing {
        /// The request this answers.
        request: u32,
        /// The first file's place in the list.
        offset: u32,
        /// Files shared in all.
        total: u32,
        /// The files, as registered with super-peers (paths below the shared folders).
        files: Vec<FileRecord>,
    },
    /// The leaf does not let others browse its shares.
    BrowseRefused {
        /// The request this answers.
        request: u32,
        /// Why, for the person browsing.
        reason: String,
    },
    /// Ask a source which chunks of a file it holds verified. It answers [`Message::Bitfield`]
    /// and from then on sends [`Message::Have`] for every chunk it verifies while the
    /// connection lasts (a source still downloading the file gains chunks as it goes), except
    /// those the downloader told it it holds (its [`Message::Bitfield`] and `Have`s).
    GetBitfield {
        /// The file.
        id: FileId,
    },
    /// The chunks of a file the sender holds verified: bit `c % 8` of byte `c / 8` for chunk
    /// `c`, one bit per chunk of the manifest.
    Bitfield {
        /// The file.
        id: FileId,
        /// The bits.
        bits: Vec<u8>,
    },
    /// The sender has verified one more chunk of a file (after a [`Message::Bitfield`]).
    Have {
        /// The file.
        id: FileId,
        /// The chunk.
        index: u32,
    },
    /// Source exchange, from a source to a downloader: other peers of the file's swarm that
    /// the sender connected to, or was asked by, at the addresses it saw them at (at most
    /// [`MAX_PEX`]). The downloader may try them without waiting for a search.
    Peers {
        /// The file.
        id: FileId,
        /// Where they serve chunks.
        addrs: Vec<SocketAddr>,
    },
    /// A super-peer's whole route table (QRP-style): the slots of a hashed word table that its
    /// leaves' files set. Sent to a neighbour when the connection is made; replaces any table
    /// of the same depth the receiver held for this connection.
    RouteTable {
        /// The table has `1 << bits` slots.
        bits: u8,
        /// The slots that are set.
        slots: Slots,
        /// What the table covers: 0, the sender's own leaves (it routes a query's last hop);
        /// 1, those and the depth-0 tables of the sender's neighbours (it routes the hop before
        /// the last). A receiver ignores depths it does not know.
        #[serde(default, skip_serializing_if = "is_zero")]
        depth: u8,
    },
    /// The slots of the sender's route table of this depth that flipped since its last
    /// `RouteTable` or `RoutePatch` of that depth on this connection.
    RoutePatch {
        /// The slots that flip (set becomes clear, clear becomes set).
        flips: Slots,
        /// The table's depth (see [`Message::RouteTable`]).
        #[serde(default, skip_serializing_if = "is_zero")]
        depth: u8,
    },
}

/// Serde's test for a field left out when it holds its default.
fn is_zero(v: &u8) -> bool {
    *v == 0
}

/// Slots of a route table, strictly ascending. They travel as one CBOR byte string of LEB128
/// gaps (the first slot, then each slot minus the one before), about one or two bytes a slot.
/// Held behind an `Arc`: a super-peer sends the same table or patch to every neighbour (32
/// clones), and a simulation of 100,000 super-peers holds those in flight.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots(pub std::sync::Arc<[u32]>);

impl From<Vec<u32>> for Slots {
    fn from(v: Vec<u32>) -> Slots {
        Slots(v.into())
    }
}

impl Slots {
    /// The gap encoding of the slots (which must be strictly ascending).
    pub fn to_gaps(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() * 2);
        let mut prev = 0u32;
        for (i, &s) in self.0.iter().enumerate() {
            let mut gap = if i == 0 { s } else { s.wrapping_sub(prev) };
            prev = s;
            loop {
                let byte = (gap & 0x7f) as u8;
                gap >>= 7;
                if gap == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
        }
        out
    }

    /// The slots of a gap encoding; `None` if it is cut short, overflows, or is not strictly
    /// ascending.
    pub fn from_gaps(bytes: &[u8]) -> Option<Slots> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let mut gap: u64 = 0;
            let mut shift = 0;
            loop {
                let b = *bytes.get(i)?;
                i += 1;
                if shift > 28 {
                    return None;
                }
                gap |= u64::from(b & 0x7f) << shift;
                shift += 7;
                if b & 0x80 == 0 {
                    break;
                }
            }
            let slot = match out.last() {
                None => gap,
                Some(&prev) if gap > 0 => u64::from(prev) + gap,
                Some(_) => return None,
            };
            out.push(u32::try_from(slot).ok()?);
        }
        Some(Slots(out.into()))
    }
}

impl Serialize for Slots {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.to_gaps())
    }
}

impl<'de> Deserialize<'de> for Slots {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct GapVisitor;
        impl serde::de::Visitor<'_> for GapVisitor {
            type Value = Slots;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a byte string of ascending LEB128 gaps")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Slots, E> {
                Slots::from_gaps(v).ok_or_else(|| E::custom("malformed route table slots"))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Slots, E> {
                self.visit_bytes(&v)
            }
        }
        // `deserialize_byte_buf`, not `deserialize_bytes`: ciborium reads `bytes` only into its
        // 4 KiB scratch buffer and refuses a longer string (a table of a few thousand slots).
        d.deserialize_byte_buf(GapVisitor)
    }
}

impl Message {
    /// A short name of the message kind, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Register { .. } => "Register",
            Message::Withdraw { .. } => "Withdraw",
            Message::Query(_) => "Query",
            Message::QueryHits(_) => "QueryHits",
            Message::Ping { .. } => "Ping",
            Message::Pong { .. } => "Pong",
            Message::Goodbye { .. } => "Goodbye",
            Message::Hosts { .. } => "Hosts",
            Message::Redirect { .. } => "Redirect",
            Message::Promote => "Promote",
            Message::GetManifest { .. } => "GetManifest",
            Message::Manifest(_) => "Manifest",
            Message::GetChunk { .. } => "GetChunk",
            Message::Chunk(_) => "Chunk",
            Message::Queued { .. } => "Queued",
            Message::Cancel { .. } => "Cancel",
            Message::TransferError { .. } => "TransferError",
            Message::GetBitfield { .. } => "GetBitfield",
            Message::Browse { .. } => "Browse",
            Message::Listing { .. } => "Listing",
            Message::ConnectToMe { .. } => "ConnectToMe",
            Message::RelayVia { .. } => "RelayVia",
            Message::RelayBack { .. } => "RelayBack",
            Message::RelayJoin { .. } => "RelayJoin",
            Message::RelayReady => "RelayReady",
            Message::RelayGo => "RelayGo",
            Message::ConnectAsked { .. } => "ConnectAsked",
            Message::ConnectBack { .. } => "ConnectBack",
            Message::Reversed { .. } => "Reversed",
            Message::Reachability { .. } => "Reachability",
            Message::WhereAmI => "WhereAmI",
            Message::SeenAt { .. } => "SeenAt",
            Message::CheckReach { .. } => "CheckReach",
            Message::ReachChecked { .. } => "ReachChecked",
            Message::BrowseRefused { .. } => "BrowseRefused",
            Message::Bitfield { .. } => "Bitfield",
            Message::Have { .. } => "Have",
            Message::Peers { .. } => "Peers",
            Message::RouteTable { .. } => "RouteTable",
            Message::RoutePatch { .. } => "RoutePatch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode};
    use proptest::prelude::*;

    fn round_trip(msg: &Message) -> Message {
        let mut buf = Vec::new();
        encode(msg, &mut buf);
        let (back, used) = decode(&buf).unwrap().unwrap();
        assert_eq!(used, buf.len());
        back
    }

    fn ascending() -> impl Strategy<Value = Vec<u32>> {
        prop::collection::btree_set(any::<u32>(), 0..300).prop_map(|s| s.into_iter().collect())
    }

    proptest! {
        #[test]
        fn route_messages_round_trip(bits in 1u8..=32, slots in ascending(), flips in ascending()) {
            let table = Message::RouteTable { bits, slots: slots.into(), depth: bits % 2 };
            prop_assert_eq!(round_trip(&table), table);
            let patch = Message::RoutePatch { flips: flips.into(), depth: 1 };
            prop_assert_eq!(round_trip(&patch), patch);
        }

        #[test]
        fn slot_gaps_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Some(s) = Slots::from_gaps(&bytes) {
                prop_assert!(s.0.windows(2).all(|w| w[0] < w[1]));
                prop_assert_eq!(Slots::from_gaps(&s.to_gaps()), Some(s));
            }
        }
    }

    #[test]
    fn slots_are_a_compact_byte_string() {
        let slots = Slots((0..1000).map(|i| i * 60).collect());
        // 60 fits one LEB128 byte: one byte a slot, not a CBOR integer array.
        assert_eq!(slots.to_gaps().len(), 1000);
        let mut buf = Vec::new();
        encode(
            &Message::RoutePatch {
                flips: slots,
                depth: 0,
            },
            &mut buf,
        );
        assert!(buf.len() < 1100, "{} bytes", buf.len());
    }

    #[test]
    fn a_table_longer_than_the_decoders_scratch_buffer_round_trips() {
        // 30,000 of 65,536 slots (a joined depth-1 table is about this full): ~30 KB of gaps,
        // far beyond ciborium's 4 KiB scratch buffer.
        let slots = Slots((0..30_000u32).map(|i| i * 2 + i % 2).collect());
        assert!(slots.to_gaps().len() > 8 * 1024);
        for depth in [0, 1] {
            let table = Message::RouteTable {
                bits: 16,
                slots: slots.clone(),
                depth,
            };
            assert_eq!(round_trip(&table), table);
        }
        let patch = Message::RoutePatch {
            flips: slots,
            depth: 1,
        };
        assert_eq!(round_trip(&patch), patch);
    }

    #[test]
    fn descending_or_repeated_slots_are_refused() {
        // 5, then a gap of 0 (5 again).
        assert_eq!(Slots::from_gaps(&[5, 0]), None);
        // A varint cut short.
        assert_eq!(Slots::from_gaps(&[0x80]), None);
        // Beyond u32.
        assert_eq!(Slots::from_gaps(&[0xff, 0xff, 0xff, 0xff, 0x7f]), None);
    }
}
