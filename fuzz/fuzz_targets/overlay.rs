//! Fuzz target `overlay`: the overlay state machines of `topology` ([`SuperPeer`] and
//! [`LeafOverlay`]) fed arbitrary sequences of inputs, the way a driver feeds them.
//!
//! The input is an arbitrary [`Setup`] (small slot counts, caches and timeouts, so that limits
//! and timers are reached) and a list of [`Op`]s: connections opening (inbound, or dials the
//! machine asked for), dials failing, connections closing, messages from several fake
//! connections (built from small pools of node ids, addresses, query ids and files, so that
//! they meet: duplicates, self-connections, reverse paths), raw frames through `wire::decode`
//! (garbage becomes `handle_invalid`), answers to searches and reachability checks, and time
//! passing. The node starts as a super-peer or a leaf and changes role when the machine says
//! so (`Event::Demote`, `LeafEvent::Promote`), through `topology::Overlay`, which hands the role
//! clock and host cache over as every driver does.
//!
//! After every input the harness drains the outputs (the crate's drain rule) and checks:
//! - nothing panics (arithmetic overflow included: fuzz builds keep debug assertions);
//! - every transmit and every event names a connection that is open now (for the "gone"
//!   events: the one just disconnected); the first message on a connection is our Hello;
//!   `Close` comes at most once per connection;
//! - the machine's counters and lists agree with the join and gone events it emitted, leaves
//!   stay within their slots, the host cache within its size, pending dials within the targets;
//! - nothing is sent on a connection after its `Close`, and no two live links lead to the same
//!   super-peer (`topology/STATE.md`);
//! - a connection that said Hello is, right after, joined or being closed (never left waiting),
//!   and one that sent garbage, a Goodbye or its frame to `handle_invalid` is being closed;
//! - forwarded queries respect the TTL cap, hits go out in batches of the configured size, and
//!   every message the machine sends encodes and decodes back to itself;
//! - after `handle_timeout(now)`, the next timeout is in the future (no busy loop).

#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use topology::{
    Config, ConnId, Event, LeafConfig, LeafEvent, LeafOverlay, NodeRole, Overlay, RoleClock,
    RoleConfig, SuperPeer, Transmit,
};
use wire::{
    Capability, ChunkMsg, FileId, FileRecord, Filter, Hello, Hit, HostEntry, Load, ManifestMsg,
    Message, NodeId, Query, QueryHits, QueryId, RedirectReason, Role, Search, Source, Tags, Terms,
    TransferErrorKind, PROTOCOL_VERSION,
};

/// This node's id; index 0 of the node pool, so peers may claim it.
const OWN: NodeId = NodeId([0; 32]);

fn node(i: u8) -> NodeId {
    NodeId([i % 4; 32])
}

/// Eight addresses: four hosts, two ports each.
fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1 + i % 4], 4000 + u16::from(i / 4 % 2)))
}

fn query_id(i: u8) -> QueryId {
    QueryId([i % 4; 16])
}

fn file(i: u8) -> FileRecord {
    let i = i % 4;
    FileRecord {
        id: FileId([i; 32]),
        size: u64::from(i) * 1000,
        path: format!("share/file {i}.mp3"),
        tags: Tags::default(),
    }
}

/// The node's settings, kept small so limits and timers come into play.
#[derive(Debug, Arbitrary)]
struct Setup {
    start_as_leaf: bool,
    listen: Option<u8>,
    leaf_slots: u8,
    neighbour_target: u8,
    seen_capacity: u8,
    seen_ttl_s: u8,
    host_cache_size: u8,
    hits_per_message: u8,
    max_local_hits: u8,
    max_ttl: u8,
    can_demote: bool,
    promote_at_tenths: u8,
    demote_at_tenths: u8,
    min_leaf_uptime_s: u8,
    leaf_target: u8,
    can_promote: bool,
    min_role_s: u8,
    backoff_s: u8,
    seeds: Vec<u8>,
}

impl Setup {
    fn listen(&self) -> Option<SocketAddr> {
        self.listen.map(|i| match i % 9 {
            8 => "0.0.0.0:4000".parse().expect("address"),
            i => addr(i),
        })
    }

    fn superpeer(&self) -> Config {
        Config {
            max_ttl: self.max_ttl % 9,
            seen_capacity: usize::from(self.seen_capacity % 8) + 1,
            seen_ttl: Duration::from_secs(u64::from(self.seen_ttl_s % 60) + 1),
            keepalive_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(10),
            max_local_hits: usize::from(self.max_local_hits % 6),
            hits_per_message: usize::from(self.hits_per_message % 4) + 1,
            agent: "fuzz".into(),
            leaf_slots: u32::from(self.leaf_slots % 6),
            neighbour_target: usize::from(self.neighbour_target % 4),
            hosts_interval: Duration::from_secs(30),
            host_cache_size: usize::from(self.host_cache_size % 6),
            promote_at: f32::from(self.promote_at_tenths % 11) / 10.0,
            min_leaf_uptime: Duration::from_secs(u64::from(self.min_leaf_uptime_s)),
            promote_cooldown: Duration::from_secs(60),
            can_demote: self.can_demote,
            demote_at: f32::from(self.demote_at_tenths % 11) / 10.0,
            // Route tables, last-hop routing and dynamic querying (issue 8), switched by bits
            // the older settings leave unused.
            max_hits_per_query: usize::from(self.max_local_hits % 6) * 2,
            last_hop_routing: self.max_ttl & 0x10 != 0,
            dynamic: (self.max_ttl & 0x20 != 0).then(topology::DynamicQuerying::default),
            route_aggregates: self.max_ttl & 0x40 != 0,
            two_hop_routing: self.max_ttl & 0x80 != 0,
            aggregate_delay: Duration::from_millis(u64::from(self.seen_ttl_s & 0x3f) * 100),
            aggregate_add_interval: Duration::from_millis(u64::from(self.seen_ttl_s & 0x7) * 200),
            route_delay: Duration::from_secs(u64::from(self.seen_ttl_s >> 6)),
            ..Config::default()
        }
    }

    fn leaf(&self) -> LeafConfig {
        LeafConfig {
            target: usize::from(self.leaf_target % 4),
            promote_when_alone_after: Duration::from_secs(5),
            can_promote: self.can_promote,
            tick: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(60),
            full_backoff: Duration::from_secs(60),
            host_cache_size: usize::from(self.host_cache_size % 6),
            agent: "fuzz".into(),
        }
    }

    fn role(&self) -> RoleConfig {
        RoleConfig {
            min_role_time: Duration::from_secs(u64::from(self.min_role_s)),
            demotion_backoff: Duration::from_secs(u64::from(self.backoff_s)),
            max_backoff: Duration::from_secs(3600),
        }
    }

    fn seeds(&self) -> Vec<SocketAddr> {
        self.seeds.iter().take(4).map(|&i| addr(i)).collect()
    }
}

/// Which connection an op is for: with the top bit clear, one of the open connections (by
/// rank); with it set, one that is closed or was never opened (the machine must ignore it).
#[derive(Debug, Clone, Copy, Arbitrary)]
struct Pick(u8);

#[derive(Debug, Clone, Copy, Arbitrary)]
enum RoleArb {
    Leaf,
    SuperPeer,
    Transfer,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
struct HostArb {
    addr: u8,
    leaves: u8,
    slots: u8,
    neighbours: u8,
    age_s: u16,
}

impl HostArb {
    fn entry(self) -> HostEntry {
        HostEntry {
            addr: addr(self.addr),
            load: Load {
                leaves: u32::from(self.leaves % 8),
                leaf_slots: u32::from(self.slots % 8),
                neighbours: u32::from(self.neighbours % 4),
            },
            age_s: u32::from(self.age_s),
        }
    }
}

/// A message a fake peer sends, from small pools of values.
#[derive(Debug, Arbitrary)]
enum Msg {
    Hello {
        version_ok: bool,
        node: u8,
        role: RoleArb,
        listen: Option<u8>,
        unspecified_listen: bool,
        load: Option<(u8, u8, u8)>,
        capability: Option<(bool, u16)>,
    },
    Register(Vec<u8>),
    Withdraw(Vec<u8>),
    Query {
        id: u8,
        ttl: u8,
        hops: u8,
        by_id: bool,
    },
    QueryHits {
        query: u8,
        hits: Vec<(u8, u8, u8, f32)>,
    },
    Ping(u64),
    Pong(u64),
    Hosts(Vec<HostArb>),
    Redirect {
        full: bool,
        hosts: Vec<HostArb>,
    },
    Promote,
    Goodbye,
    /// A transfer message, which has no business on an overlay link.
    Transfer(u8),
}

impl Msg {
    fn build(self) -> Message {
        match self {
            Msg::Hello {
                version_ok,
                node: n,
                role,
                listen,
                unspecified_listen,
                load,
                capability,
            } => Message::Hello(Hello {
                version: if version_ok {
                    PROTOCOL_VERSION
                } else {
                    PROTOCOL_VERSION + 1
                },
                node: node(n),
                role: match role {
                    RoleArb::Leaf => Role::Leaf,
                    RoleArb::SuperPeer => Role::SuperPeer,
                    RoleArb::Transfer => Role::Transfer,
                },
                listen: listen.map(|i| {
                    if unspecified_listen {
                        SocketAddr::from(([0, 0, 0, 0], 6000 + u16::from(i % 2)))
                    } else {
                        addr(i)
                    }
                }),
                agent: "peer".into(),
                load: load.map(|(leaves, slots, neighbours)| Load {
                    leaves: u32::from(leaves % 8),
                    leaf_slots: u32::from(slots % 8),
                    neighbours: u32::from(neighbours % 4),
                }),
                capability: capability.map(|(can_promote, uptime_min)| Capability {
                    can_promote,
                    uptime_s: u64::from(uptime_min) * 60,
                    upload_bps: 1_000_000,
                    free_fds: 1000,
                    free_mem_mb: 1000,
                }),
            }),
            Msg::Register(files) => Message::Register {
                files: files.into_iter().take(8).map(file).collect(),
            },
            Msg::Withdraw(ids) => Message::Withdraw {
                ids: ids.into_iter().take(8).map(|i| file(i).id).collect(),
            },
            Msg::Query {
                id,
                ttl,
                hops,
                by_id,
            } => Message::Query(Query {
                id: query_id(id),
                ttl,
                hops,
                search: Search {
                    terms: if by_id {
                        Terms::Id(file(id).id)
                    } else {
                        Terms::Words("file".into())
                    },
                    filter: Filter::default(),
                },
            }),
            Msg::QueryHits { query, hits } => Message::QueryHits(QueryHits {
                query: query_id(query),
                hits: hits
                    .into_iter()
                    .take(8)
                    .map(|(n, a, f, score)| Hit {
                        source: Source {
                            node: node(n),
                            addr: addr(a),
                            reachable: (a % 3 != 0).then_some(a % 2 == 0),
                            via: (a % 2 == 0).then(|| addr(a / 2)),
                        },
                        file: file(f),
                        score,
                    })
                    .collect(),
            }),
            Msg::Ping(nonce) => Message::Ping { nonce },
            Msg::Pong(nonce) => Message::Pong { nonce },
            Msg::Hosts(hosts) => Message::Hosts {
                hosts: hosts.into_iter().take(8).map(HostArb::entry).collect(),
            },
            Msg::Redirect { full, hosts } => Message::Redirect {
                reason: if full {
                    RedirectReason::Full
                } else {
                    RedirectReason::Demoting
                },
                hosts: hosts.into_iter().take(8).map(HostArb::entry).collect(),
            },
            Msg::Promote => Message::Promote,
            Msg::Goodbye => Message::Goodbye {
                reason: "bye".into(),
            },
            Msg::Transfer(k) => {
                let id = file(k).id;
                match k % 17 {
                    0 => Message::GetManifest { request: 1, id },
                    1 => Message::Manifest(ManifestMsg {
                        request: 1,
                        id,
                        size: 10,
                        chunk_size: 1 << 18,
                        cvs: vec![[k; 32]],
                    }),
                    2 => Message::GetChunk {
                        request: 2,
                        id,
                        index: 0,
                    },
                    3 => Message::Chunk(ChunkMsg {
                        request: 2,
                        id,
                        index: 0,
                        data: vec![k; 10],
                    }),
                    4 => Message::Cancel { request: 2 },
                    // Connections back: asked of a super-peer, passed to a leaf, named, told.
                    6 => Message::ConnectToMe {
                        node: node(k / 11),
                        token: u64::from(k),
                        punch: k % 2 == 0,
                    },
                    7 => Message::ConnectAsked {
                        token: u64::from(k),
                        error: None,
                        sync: (k % 3 == 0).then_some(wire::PunchSync {
                            leaf_rtt_ms: u32::from(k),
                            leaf_wait_ms: u32::from(k) * 7,
                        }),
                    },
                    8 => Message::ConnectBack {
                        node: node(k / 11),
                        addr: addr(k),
                        token: u64::from(k),
                        punch: k % 2 == 0,
                        wait_ms: u32::from(k) * 13,
                    },
                    9 => Message::Reversed {
                        token: u64::from(k),
                    },
                    10 => Message::Reachability {
                        observed: addr(k),
                        reachable: k % 2 == 0,
                    },
                    // Relays: asked of a super-peer, passed to a leaf.
                    11 => Message::RelayVia {
                        node: node(k / 13),
                        token: u64::from(k % 4),
                    },
                    12 => Message::RelayBack {
                        node: node(k / 13),
                        token: u64::from(k % 4),
                    },
                    13 => Message::WhereAmI,
                    14 => Message::SeenAt { addr: addr(k) },
                    // Dial-backs asked of a neighbour, and their answers.
                    15 => Message::CheckReach {
                        token: u64::from(k % 4),
                        addr: addr(k),
                        node: node(k / 17),
                    },
                    16 => Message::ReachChecked {
                        token: u64::from(k % 4),
                        reachable: [None, Some(true), Some(false)][k as usize % 3],
                    },
                    _ => Message::TransferError {
                        request: 2,
                        id,
                        kind: TransferErrorKind::Busy,
                        message: "busy".into(),
                    },
                }
            }
        }
    }
}

/// One input to the node.
#[derive(Debug, Arbitrary)]
enum Op {
    /// An inbound connection from `addr(remote)` (a leaf accepts none: ignored there).
    Connect { remote: u8 },
    /// One of the dials the machine asked for connected.
    Dialed { pick: u8 },
    /// One of the dials the machine asked for failed.
    DialFailed { pick: u8 },
    /// A connection is gone.
    Disconnect { pick: Pick },
    /// A message arrived.
    Send { pick: Pick, msg: Msg },
    /// Bytes arrived: decoded by `wire`, or reported invalid. `seal` frames them with a
    /// correct CRC first.
    Raw {
        pick: Pick,
        seal: bool,
        bytes: Vec<u8>,
    },
    /// The connection's bytes did not decode.
    Invalid { pick: Pick },
    /// The local index answered a search (or one it never asked: `pick` past the pending).
    LocalHits {
        pick: u8,
        hits: Vec<(Pick, u8, f32)>,
    },
    /// A reachability check finished.
    Reachable { pick: u8, ok: bool },
    /// Time passes, then `handle_timeout`.
    Advance { ms: u32 },
    /// Time jumps to the machine's own timeout, then `handle_timeout`.
    Tick,
    /// Host cache entries from disk or a role change.
    ImportHosts(Vec<HostArb>),
    /// The leaf's capability changes.
    Capability { uptime_s: u32, upload_bps: u32 },
}

#[derive(Debug, Arbitrary)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

/// The driver, and what it has learnt from the machine's outputs.
struct Harness {
    setup: Setup,
    now: Instant,
    machine: Overlay,
    next_conn: ConnId,
    /// Connected and not yet disconnected (this role's connections).
    open: BTreeSet<ConnId>,
    /// Connections disconnected, or left behind by a role change.
    gone: Vec<ConnId>,
    /// Connections the machine asked to close.
    closing: BTreeSet<ConnId>,
    /// Connections that got their first message (our Hello).
    greeted: BTreeSet<ConnId>,
    /// Dials asked for and not yet answered.
    dials: Vec<SocketAddr>,
    /// Searches asked for and not yet answered.
    searches: Vec<QueryId>,
    /// Reachability checks asked for and not yet answered.
    reach: Vec<ConnId>,
    /// Checks asked for on behalf of a neighbour (its connection, its token), not answered.
    reach_for: Vec<(ConnId, u64)>,
    /// Super-peer: joined leaves and neighbours. Leaf: attached super-peers (in `joined`).
    leaves: BTreeSet<ConnId>,
    neighbours: BTreeMap<ConnId, NodeId>,
    attached: BTreeSet<ConnId>,
    /// Super-peer: connections whose Hello said Transfer (they may only ask for connections
    /// back and relays; no event marks them).
    requesters: BTreeSet<ConnId>,
    /// The connection just disconnected (its "gone" event may name it).
    just_gone: Option<ConnId>,
    /// Distinct seed addresses (never evicted from a host cache).
    seeds: usize,
    switch_to: Option<NodeRole>,
}

impl Harness {
    fn new(setup: Setup) -> Self {
        let now = Instant::now();
        let role = if setup.start_as_leaf {
            NodeRole::Leaf
        } else {
            NodeRole::SuperPeer
        };
        let clock = RoleClock::new(now, role, setup.role());
        let seeds = setup.seeds();
        let machine = if setup.start_as_leaf {
            let mut l = LeafOverlay::new(now, OWN, setup.listen(), setup.leaf(), clock);
            l.add_seeds(now, &seeds);
            Overlay::Leaf(Box::new(l))
        } else {
            let mut s = SuperPeer::new(now, OWN, setup.listen(), setup.superpeer(), clock);
            s.add_seeds(now, &seeds);
            Overlay::SuperPeer(Box::new(s))
        };
        let seeds = seeds.iter().collect::<BTreeSet<_>>().len();
        Harness {
            setup,
            now,
            machine,
            next_conn: 1,
            open: BTreeSet::new(),
            gone: Vec::new(),
            closing: BTreeSet::new(),
            greeted: BTreeSet::new(),
            dials: Vec::new(),
            searches: Vec::new(),
            reach: Vec::new(),
            reach_for: Vec::new(),
            leaves: BTreeSet::new(),
            neighbours: BTreeMap::new(),
            attached: BTreeSet::new(),
            requesters: BTreeSet::new(),
            just_gone: None,
            seeds,
            switch_to: None,
        }
    }

    fn pick(&self, p: Pick) -> ConnId {
        if p.0 & 0x80 == 0 && !self.open.is_empty() {
            let i = usize::from(p.0) % self.open.len();
            *self.open.iter().nth(i).expect("in range")
        } else if !self.gone.is_empty() && p.0 & 1 == 0 {
            self.gone[usize::from(p.0 >> 1) % self.gone.len()]
        } else {
            ConnId::MAX
        }
    }

    fn new_conn(&mut self) -> ConnId {
        let c = self.next_conn;
        self.next_conn += 1;
        self.open.insert(c);
        c
    }

    /// Whether the conn is open, not closing and not joined: the machine awaits its Hello.
    fn awaiting_hello(&self, c: ConnId) -> bool {
        self.open.contains(&c)
            && !self.closing.contains(&c)
            && !self.leaves.contains(&c)
            && !self.neighbours.contains_key(&c)
            && !self.attached.contains(&c)
            && !self.requesters.contains(&c)
    }

    fn live(&self, c: ConnId) -> bool {
        self.open.contains(&c) && !self.closing.contains(&c)
    }

    fn apply(&mut self, op: Op) {
        let now = self.now;
        self.just_gone = None;
        // What must hold right after this op, besides the general invariants.
        let mut must_close = None;
        let mut must_settle = None;
        let mut timed_out = false;
        match op {
            Op::Connect { remote } => {
                if let Overlay::SuperPeer(s) = &mut self.machine {
                    let c = self.next_conn;
                    self.next_conn += 1;
                    self.open.insert(c);
                    s.handle_connect(now, c, addr(remote), false);
                }
            }
            Op::Dialed { pick } => {
                if self.dials.is_empty() {
                    return;
                }
                let a = self.dials.remove(usize::from(pick) % self.dials.len());
                let c = self.new_conn();
                match &mut self.machine {
                    Overlay::SuperPeer(s) => s.handle_connect(now, c, a, true),
                    Overlay::Leaf(l) => l.handle_connect(now, c, a),
                }
            }
            Op::DialFailed { pick } => {
                if self.dials.is_empty() {
                    return;
                }
                let a = self.dials.remove(usize::from(pick) % self.dials.len());
                match &mut self.machine {
                    Overlay::SuperPeer(s) => s.handle_dial_failed(now, a),
                    Overlay::Leaf(l) => l.handle_dial_failed(now, a),
                }
            }
            Op::Disconnect { pick } => {
                let c = self.pick(pick);
                if self.open.remove(&c) {
                    self.closing.remove(&c);
                    self.requesters.remove(&c);
                    self.reach.retain(|&r| r != c);
                    self.gone.push(c);
                    self.just_gone = Some(c);
                }
                match &mut self.machine {
                    Overlay::SuperPeer(s) => s.handle_disconnect(now, c),
                    Overlay::Leaf(l) => l.handle_disconnect(now, c),
                }
            }
            Op::Send { pick, msg } => {
                let c = self.pick(pick);
                self.deliver(c, msg.build(), &mut must_close, &mut must_settle);
            }
            Op::Raw { pick, seal, bytes } => {
                let c = self.pick(pick);
                let bytes = if seal {
                    canopy_fuzz::frame_parts(&bytes)
                } else {
                    bytes
                };
                match wire::decode(&bytes) {
                    Ok(Some((msg, _))) => {
                        self.deliver(c, msg, &mut must_close, &mut must_settle);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        if let Overlay::SuperPeer(s) = &mut self.machine {
                            s.handle_invalid(now, c, &e.to_string());
                            must_close = self.live(c).then_some(c);
                        }
                    }
                }
            }
            Op::Invalid { pick } => {
                let c = self.pick(pick);
                if let Overlay::SuperPeer(s) = &mut self.machine {
                    s.handle_invalid(now, c, "fuzz: bad frame");
                    must_close = self.live(c).then_some(c);
                }
            }
            Op::LocalHits { pick, hits } => {
                let query = if self.searches.is_empty() || usize::from(pick) >= 200 {
                    query_id(pick)
                } else {
                    self.searches
                        .remove(usize::from(pick) % self.searches.len())
                };
                let hits = hits
                    .into_iter()
                    .take(16)
                    .map(|(p, f, score)| (self.pick(p), file(f), score))
                    .collect();
                if let Overlay::SuperPeer(s) = &mut self.machine {
                    s.handle_local_hits(now, query, hits);
                }
            }
            // Odd picks answer a check made for a neighbour, if one waits (the neighbour may
            // have gone since: the answer is then dropped).
            Op::Reachable { pick, ok } if pick % 2 == 1 && !self.reach_for.is_empty() => {
                let (peer, token) = self
                    .reach_for
                    .remove(usize::from(pick) % self.reach_for.len());
                // (Every eighth pick: not checked after all, no route to that family.)
                let ok = (pick % 8 != 7).then_some(ok);
                if let Overlay::SuperPeer(s) = &mut self.machine {
                    s.handle_checked_for(now, peer, token, ok);
                }
            }
            Op::Reachable { pick, ok } => {
                let c = if self.reach.is_empty() {
                    self.pick(Pick(pick))
                } else {
                    self.reach.remove(usize::from(pick) % self.reach.len())
                };
                if let Overlay::SuperPeer(s) = &mut self.machine {
                    s.handle_reachable(now, c, ok);
                }
            }
            Op::Advance { ms } => {
                self.now += Duration::from_millis(u64::from(ms) % (3 * 3600 * 1000));
                timed_out = true;
            }
            Op::Tick => {
                let next = self.machine.poll_timeout();
                if let Some(t) = next {
                    self.now = self.now.max(t);
                }
                timed_out = true;
            }
            Op::ImportHosts(hosts) => {
                let hosts: Vec<HostEntry> = hosts.into_iter().take(8).map(HostArb::entry).collect();
                match &mut self.machine {
                    Overlay::SuperPeer(s) => s.import_hosts(now, &hosts),
                    Overlay::Leaf(l) => l.import_hosts(now, &hosts),
                }
            }
            Op::Capability {
                uptime_s,
                upload_bps,
            } => {
                if let Overlay::Leaf(l) = &mut self.machine {
                    l.set_capability(Capability {
                        can_promote: true,
                        uptime_s: u64::from(uptime_s),
                        upload_bps: u64::from(upload_bps),
                        free_fds: 1000,
                        free_mem_mb: 1000,
                    });
                }
            }
        }
        if timed_out {
            let now = self.now;
            self.machine.handle_timeout(now);
        }
        self.drain();
        if let Some(c) = must_close {
            assert!(
                !self.open.contains(&c) || self.closing.contains(&c),
                "connection {c} broke the protocol but is not being closed"
            );
        }
        if let Some(c) = must_settle {
            assert!(
                !self.awaiting_hello(c),
                "connection {c} said Hello but is neither joined nor being closed"
            );
        }
        self.check(timed_out);
        if let Some(role) = self.switch_to.take() {
            self.change_role(role);
        }
    }

    fn deliver(
        &mut self,
        c: ConnId,
        msg: Message,
        must_close: &mut Option<ConnId>,
        must_settle: &mut Option<ConnId>,
    ) {
        let now = self.now;
        let hello = matches!(msg, Message::Hello(_));
        let goodbye = matches!(msg, Message::Goodbye { .. });
        let awaiting = self.awaiting_hello(c);
        let live = self.live(c);
        if awaiting && hello {
            *must_settle = Some(c);
        }
        match &mut self.machine {
            Overlay::SuperPeer(s) => {
                // Anything before Hello, a second Hello, and a Goodbye close the connection.
                if (awaiting && !hello) || (live && !awaiting && hello) || (live && goodbye) {
                    *must_close = Some(c);
                }
                if awaiting && matches!(&msg, Message::Hello(h) if h.role == Role::Transfer) {
                    self.requesters.insert(c);
                }
                s.handle_message(now, c, msg);
            }
            Overlay::Leaf(l) => {
                // A leaf closes on Goodbye; a second Hello is "not a super-peer".
                if live && (goodbye || (hello && !awaiting)) {
                    *must_close = Some(c);
                }
                l.handle_message(now, c, msg);
            }
        }
    }

    /// The drain rule: outputs until there are none, each checked.
    fn drain(&mut self) {
        loop {
            let mut any = false;
            loop {
                let t = self.machine.poll_transmit();
                let Some(t) = t else { break };
                any = true;
                self.on_transmit(t);
            }
            match &mut self.machine {
                Overlay::SuperPeer(s) => {
                    let mut events = Vec::new();
                    while let Some(e) = s.poll_event() {
                        events.push(e);
                    }
                    any |= !events.is_empty();
                    for e in events {
                        self.on_event(e);
                    }
                }
                Overlay::Leaf(l) => {
                    let mut events = Vec::new();
                    while let Some(e) = l.poll_event() {
                        events.push(e);
                    }
                    any |= !events.is_empty();
                    for e in events {
                        self.on_leaf_event(e);
                    }
                }
            }
            if !any {
                break;
            }
        }
    }

    fn on_transmit(&mut self, t: Transmit) {
        assert!(
            self.open.contains(&t.to),
            "{} addressed to connection {}, which is not open",
            t.msg.kind(),
            t.to
        );
        // Transmits are drained before events, so `closing` holds only connections closed by
        // an earlier input: nothing more may be sent on them (topology/STATE.md).
        assert!(
            !self.closing.contains(&t.to),
            "{} sent on connection {} after its Close",
            t.msg.kind(),
            t.to
        );
        if self.greeted.insert(t.to) {
            assert!(
                matches!(t.msg, Message::Hello(_)),
                "first message on {} is {}",
                t.to,
                t.msg.kind()
            );
        }
        match (&self.machine, &t.msg) {
            (Overlay::SuperPeer(_), Message::Query(q)) => {
                let max = self.setup.superpeer().max_ttl;
                assert!(
                    u16::from(q.ttl) + u16::from(q.hops) <= u16::from(max),
                    "forwarded query with ttl {} and hops {} (cap {max})",
                    q.ttl,
                    q.hops
                );
                assert!(
                    self.neighbours.contains_key(&t.to),
                    "query sent to a non-neighbour"
                );
            }
            (Overlay::SuperPeer(_), Message::QueryHits(h)) => {
                let per = self.setup.superpeer().hits_per_message;
                assert!(
                    !h.hits.is_empty() && h.hits.len() <= per,
                    "{} hits in one message",
                    h.hits.len()
                );
            }
            (Overlay::SuperPeer(_), Message::Hosts { hosts } | Message::Redirect { hosts, .. }) => {
                assert!(hosts.len() <= 21, "{} hosts in one message", hosts.len());
            }
            (Overlay::Leaf(_), m) => assert!(
                matches!(m, Message::Hello(_) | Message::Pong { .. }),
                "a leaf's overlay sent {}",
                m.kind()
            ),
            _ => {}
        }
        let mut buf = Vec::new();
        wire::encode(&t.msg, &mut buf);
        let (back, used) = wire::decode(&buf)
            .expect("our own message decodes")
            .expect("a whole frame");
        assert_eq!(used, buf.len());
        let nan =
            matches!(&t.msg, Message::QueryHits(h) if h.hits.iter().any(|h| h.score.is_nan()));
        if !nan {
            assert_eq!(back, t.msg);
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::LeafJoined { conn, .. } => {
                assert!(self.live(conn), "LeafJoined for {conn}, not open");
                assert!(!self.neighbours.contains_key(&conn));
                assert!(self.leaves.insert(conn), "LeafJoined twice for {conn}");
            }
            Event::NeighbourJoined { conn, node } => {
                assert!(self.live(conn), "NeighbourJoined for {conn}, not open");
                assert!(!self.leaves.contains(&conn));
                assert!(
                    self.neighbours.insert(conn, node).is_none(),
                    "NeighbourJoined twice for {conn}"
                );
            }
            Event::Register { conn, .. } | Event::Withdraw { conn, .. } => {
                assert!(self.leaves.contains(&conn) && self.open.contains(&conn));
            }
            Event::OverLimit { conn, .. } => {
                // The leaf is closed at once: its Close follows.
                assert!(self.leaves.contains(&conn) && self.open.contains(&conn));
            }
            Event::LeafGone { conn } => {
                assert_eq!(self.just_gone, Some(conn), "LeafGone for {conn}");
                assert!(self.leaves.remove(&conn), "LeafGone for {conn}, not a leaf");
            }
            Event::NeighbourGone { conn } => {
                assert_eq!(self.just_gone, Some(conn), "NeighbourGone for {conn}");
                assert!(
                    self.neighbours.remove(&conn).is_some(),
                    "NeighbourGone for {conn}, not one"
                );
            }
            Event::Search { query, .. } => self.searches.push(query),
            // The harness joins no relay: every one it asks for expires.
            Event::RelayExpired { .. } => {}
            Event::Dial(a) => {
                assert_ne!(Some(a), self.setup.listen(), "dialling ourselves");
                assert!(!self.dials.contains(&a), "dialling {a} twice at once");
                self.dials.push(a);
                let target = self.setup.superpeer().neighbour_target;
                assert!(
                    self.dials.len() <= target,
                    "{} dials for a target of {target}",
                    self.dials.len()
                );
            }
            Event::CheckReachable { conn, .. } => {
                assert!(self.leaves.contains(&conn) && self.live(conn));
                self.reach.push(conn);
            }
            Event::CheckReachableFor { peer, token, .. } => {
                assert!(
                    self.neighbours.contains_key(&peer) && self.live(peer),
                    "CheckReachableFor on {peer}, no neighbour"
                );
                self.reach_for.push((peer, token));
            }
            Event::Demote { .. } => {
                assert!(
                    self.setup.can_demote,
                    "a super-peer that may not demote did"
                );
                self.switch_to = Some(NodeRole::Leaf);
            }
            Event::Close { conn, .. } => {
                assert!(self.open.contains(&conn), "Close for {conn}, not open");
                assert!(self.closing.insert(conn), "Close twice for {conn}");
            }
        }
    }

    fn on_leaf_event(&mut self, e: LeafEvent) {
        match e {
            LeafEvent::Dial(a) => {
                assert_ne!(Some(a), self.setup.listen(), "dialling ourselves");
                assert!(!self.dials.contains(&a), "dialling {a} twice at once");
                self.dials.push(a);
            }
            LeafEvent::Attached { conn, .. } => {
                assert!(self.live(conn), "Attached on {conn}, not open");
                assert!(self.attached.insert(conn), "Attached twice on {conn}");
            }
            LeafEvent::Detached { conn, .. } => {
                assert_eq!(self.just_gone, Some(conn), "Detached for {conn}");
                assert!(
                    self.attached.remove(&conn),
                    "Detached for {conn}, not attached"
                );
            }
            LeafEvent::Close { conn, .. } => {
                assert!(self.open.contains(&conn), "Close for {conn}, not open");
                assert!(self.closing.insert(conn), "Close twice for {conn}");
            }
            LeafEvent::Hits { query, .. } => {
                // The target starts no query: hits must not get through.
                panic!("hits passed on for query {query:?}, which was never started");
            }
            LeafEvent::Probe { superpeers } => {
                assert!(
                    self.setup.listen().is_some(),
                    "a probe from a leaf that serves nobody"
                );
                assert_eq!(superpeers.len(), 2, "{superpeers:?}");
            }
            LeafEvent::ConnectBack { via, .. } | LeafEvent::RelayBack { via, .. } => {
                assert!(
                    self.setup.listen().is_some(),
                    "asked to connect back (through {via}) by a leaf that serves nobody"
                );
            }
            // The harness never asks for connections back: a super-peer's answer to a token
            // nobody asked must not reach the driver.
            LeafEvent::ConnectAsked { token, .. } | LeafEvent::AskLost { token } => {
                panic!("an answer to request {token}, which was never asked")
            }
            LeafEvent::Promote { .. } => {
                assert!(self.setup.can_promote, "a leaf that may not promote did");
                self.switch_to = Some(NodeRole::SuperPeer);
            }
        }
    }

    /// Invariants that hold between inputs.
    fn check(&self, timed_out: bool) {
        match &self.machine {
            Overlay::SuperPeer(s) => {
                let cfg = self.setup.superpeer();
                let stats = s.stats();
                assert_eq!(stats.leaves, self.leaves.len() as u64, "leaf count");
                assert_eq!(
                    stats.neighbours,
                    self.neighbours.len() as u64,
                    "neighbour count"
                );
                assert!(
                    stats.leaves <= u64::from(cfg.leaf_slots),
                    "more leaves than slots"
                );
                let live_leaves: Vec<ConnId> = self
                    .leaves
                    .iter()
                    .copied()
                    .filter(|&c| self.live(c))
                    .collect();
                assert_eq!(s.leaf_conns(), live_leaves);
                let live_neighbours: Vec<ConnId> = self
                    .neighbours
                    .keys()
                    .copied()
                    .filter(|&c| self.live(c))
                    .collect();
                assert_eq!(s.neighbour_conns(), live_neighbours);
                let nodes: BTreeSet<NodeId> =
                    live_neighbours.iter().map(|c| self.neighbours[c]).collect();
                assert_eq!(
                    nodes.len(),
                    live_neighbours.len(),
                    "two live links to one super-peer"
                );
                assert!(s.hosts().len() <= cfg.host_cache_size.max(1).max(self.seeds));
                if timed_out {
                    if let Some(t) = s.poll_timeout() {
                        assert!(t > self.now, "timeout in the past after handle_timeout");
                    }
                }
            }
            Overlay::Leaf(l) => {
                let cfg = self.setup.leaf();
                let attached: Vec<ConnId> = l.attached().into_iter().map(|(c, _)| c).collect();
                let live: Vec<ConnId> = self
                    .attached
                    .iter()
                    .copied()
                    .filter(|&c| self.live(c))
                    .collect();
                assert_eq!(attached, live, "attached links");
                let busy = self.open.iter().filter(|&&c| self.live(c)).count() + self.dials.len();
                assert!(
                    busy <= cfg.target,
                    "{busy} links and dials for a target of {}",
                    cfg.target
                );
                assert!(l.hosts().len() <= cfg.host_cache_size.max(1).max(self.seeds));
                if timed_out {
                    if let Some(t) = l.poll_timeout() {
                        assert!(t > self.now, "timeout in the past after handle_timeout");
                    }
                }
            }
        }
    }

    /// The role change, as the driver does it: the old role's connections are closed and
    /// forgotten; the new machine takes the role clock and the host cache.
    fn change_role(&mut self, role: NodeRole) {
        let now = self.now;
        let listen = self.setup.listen();
        match role {
            NodeRole::Leaf => self
                .machine
                .demote(now, OWN, listen, self.setup.leaf(), &[]),
            NodeRole::SuperPeer => {
                self.machine
                    .promote(now, OWN, listen, self.setup.superpeer(), &[])
            }
        }
        self.gone.extend(std::mem::take(&mut self.open));
        self.closing.clear();
        self.dials.clear();
        self.searches.clear();
        self.reach.clear();
        self.reach_for.clear();
        self.leaves.clear();
        self.neighbours.clear();
        self.attached.clear();
        // Imported hosts are not seeds: the bound is the cache size alone from here on.
        self.seeds = 0;
        self.drain();
        self.check(false);
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(input.setup);
    h.drain();
    h.check(false);
    for op in input.ops {
        h.apply(op);
    }
});
