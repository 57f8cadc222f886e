//! A small in-memory network of super-peers and scripted leaves, in virtual time: every message
//! is delivered in FIFO order, no sockets, no sleeps.
//!
//! This file holds the harness ([`Net`]) and the tests of connections, flooding and the mesh;
//! [`routes`] tests the route tables, [`dynamic`] dynamic querying, [`nat`] reachability,
//! connections back and relays (as `superpeer/` splits them).

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use wire::{
    FileId, FileRecord, Filter, Hello, Message, NodeId, Query, QueryId, Role, Search, Tags, Terms,
};

use crate::{Config, ConnId, Event, NodeRole, RoleClock, RoleConfig, SuperPeer};

mod dynamic;
mod nat;
mod routes;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum End {
    Sp(usize, ConnId),
    Leaf(usize),
}

struct Net {
    now: Instant,
    sps: Vec<SuperPeer>,
    /// Each super-peer's naive "index": (leaf conn, record).
    indexes: Vec<Vec<(ConnId, FileRecord)>>,
    links: HashMap<End, End>,
    /// Messages each leaf received.
    inbox: Vec<Vec<Message>>,
    queue: VecDeque<(End, Message)>,
    next_conn: ConnId,
    closed: Vec<(usize, ConnId, String)>,
    /// The dial-backs each super-peer asked of its driver.
    checks: Vec<(usize, Event)>,
}

fn record(name: &str, seed: u8) -> FileRecord {
    FileRecord {
        id: FileId([seed; 32]),
        size: 1000,
        path: format!("music/{name}"),
        tags: Tags::default(),
    }
}

fn words(text: &str) -> Search {
    Search {
        terms: Terms::Words(text.into()),
        filter: Filter::default(),
    }
}

/// Plain flooding: no last-hop routing, no dynamic querying.
fn flooding() -> Config {
    Config {
        last_hop_routing: false,
        dynamic: None,
        ..Config::default()
    }
}

impl Net {
    fn new(n: usize) -> Net {
        Net::with_config(n, flooding())
    }

    fn with_config(n: usize, config: Config) -> Net {
        Net {
            now: Instant::now(),
            sps: (0..n)
                .map(|i| {
                    let now = Instant::now();
                    let clock = RoleClock::new(now, NodeRole::SuperPeer, RoleConfig::default());
                    SuperPeer::new(now, NodeId([i as u8 + 1; 32]), None, config.clone(), clock)
                })
                .collect(),
            indexes: vec![Vec::new(); n],
            links: HashMap::new(),
            inbox: Vec::new(),
            queue: VecDeque::new(),
            next_conn: 1,
            closed: Vec::new(),
            checks: Vec::new(),
        }
    }

    fn conn(&mut self) -> ConnId {
        self.next_conn += 1;
        self.next_conn
    }

    fn link_sps(&mut self, a: usize, b: usize) {
        self.link_sps_at(a, b, "127.0.0.1:1");
    }

    /// Links super-peers `a` and `b`, each seeing the other come from `addr`.
    fn link_sps_at(&mut self, a: usize, b: usize, addr: &str) {
        let (ca, cb) = (self.conn(), self.conn());
        self.links.insert(End::Sp(a, ca), End::Sp(b, cb));
        self.links.insert(End::Sp(b, cb), End::Sp(a, ca));
        let addr = addr.parse().unwrap();
        self.sps[a].handle_connect(self.now, ca, addr, true);
        self.sps[b].handle_connect(self.now, cb, addr, false);
        self.run();
    }

    /// A leaf attached to super-peer `sp`, sharing `files`; returns (leaf index, its conn at sp).
    fn add_leaf(&mut self, sp: usize, files: Vec<FileRecord>) -> (usize, ConnId) {
        let leaf = self.inbox.len();
        self.inbox.push(Vec::new());
        let c = self.conn();
        self.links.insert(End::Sp(sp, c), End::Leaf(leaf));
        self.links.insert(End::Leaf(leaf), End::Sp(sp, c));
        self.sps[sp].handle_connect(self.now, c, "127.0.0.1:2".parse().unwrap(), false);
        let hello = Hello::new(
            NodeId([100 + leaf as u8; 32]),
            Role::Leaf,
            Some("0.0.0.0:9000".parse().unwrap()),
            "test",
        );
        self.queue
            .push_back((End::Sp(sp, c), Message::Hello(hello)));
        self.queue
            .push_back((End::Sp(sp, c), Message::Register { files }));
        self.run();
        (leaf, c)
    }

    /// A scripted peer connected to super-peer `sp` from `remote`, past its `hello` and what
    /// we answer it; returns (its inbox index, its conn at sp).
    fn add_peer(&mut self, sp: usize, remote: &str, hello: Hello) -> (usize, ConnId) {
        let peer = self.inbox.len();
        self.inbox.push(Vec::new());
        let c = self.conn();
        self.links.insert(End::Sp(sp, c), End::Leaf(peer));
        self.links.insert(End::Leaf(peer), End::Sp(sp, c));
        self.sps[sp].handle_connect(self.now, c, remote.parse().unwrap(), false);
        self.queue
            .push_back((End::Sp(sp, c), Message::Hello(hello)));
        self.run();
        // Our Hello answers its own (a leaf is also told of other super-peers).
        let hello = |m: &Message| matches!(m, Message::Hello(_));
        assert!(self.inbox[peer].iter().any(hello), "{:?}", self.inbox[peer]);
        self.inbox[peer].clear();
        (peer, c)
    }

    fn leaf_query(&mut self, leaf: usize, id: u8, ttl: u8, text: &str) {
        let to = self.links[&End::Leaf(leaf)];
        let q = Query {
            id: QueryId([id; 16]),
            ttl,
            hops: 0,
            search: words(text),
        };
        self.queue.push_back((to, Message::Query(q)));
        self.run();
    }

    fn hits_at(&self, leaf: usize) -> Vec<String> {
        let mut names: Vec<String> = self.inbox[leaf]
            .iter()
            .filter_map(|m| match m {
                Message::QueryHits(h) => Some(h.hits.iter().map(|h| h.file.name().to_string())),
                _ => None,
            })
            .flatten()
            .collect();
        names.sort();
        names
    }

    /// Lets `d` pass: every super-peer's timers run, then the network settles.
    fn advance(&mut self, d: Duration) {
        self.now += d;
        for i in 0..self.sps.len() {
            self.sps[i].handle_timeout(self.now);
        }
        self.run();
    }

    /// Delivers everything until the network is idle, applying the drain rule to each node.
    fn run(&mut self) {
        for _ in 0..100_000 {
            for i in 0..self.sps.len() {
                self.drain(i);
            }
            let Some((to, msg)) = self.queue.pop_front() else {
                return;
            };
            match to {
                End::Sp(i, c) => self.sps[i].handle_message(self.now, c, msg),
                End::Leaf(l) => self.inbox[l].push(msg),
            }
        }
        panic!("network did not settle");
    }

    fn drain(&mut self, i: usize) {
        loop {
            let mut progressed = false;
            while let Some(ev) = self.sps[i].poll_event() {
                progressed = true;
                match ev {
                    Event::Register { conn, files } => {
                        self.indexes[i].extend(files.into_iter().map(|f| (conn, f)))
                    }
                    Event::LeafGone { conn } => self.indexes[i].retain(|(c, _)| *c != conn),
                    e @ (Event::CheckReachable { .. } | Event::CheckReachableFor { .. }) => {
                        self.checks.push((i, e))
                    }
                    Event::Search { query, search } => {
                        let Terms::Words(text) = search.terms else {
                            continue;
                        };
                        let hits = self.indexes[i]
                            .iter()
                            .filter(|(_, f)| {
                                text.split_whitespace()
                                    .all(|w| f.path.to_lowercase().contains(w))
                            })
                            .map(|(c, f)| (*c, f.clone(), 1.0))
                            .collect();
                        self.sps[i].handle_local_hits(self.now, query, hits);
                    }
                    Event::Close { conn, reason } => {
                        self.closed.push((i, conn, reason));
                        self.sps[i].handle_disconnect(self.now, conn);
                        if let Some(End::Sp(j, cj)) = self.links.get(&End::Sp(i, conn)).copied() {
                            self.sps[j].handle_disconnect(self.now, cj);
                        }
                    }
                    _ => {}
                }
            }
            while let Some(t) = self.sps[i].poll_transmit() {
                progressed = true;
                if let Some(&to) = self.links.get(&End::Sp(i, t.to)) {
                    self.queue.push_back((to, t.msg));
                }
            }
            if !progressed {
                return;
            }
        }
    }
}

#[test]
fn ttl_bounds_the_reach_of_a_query_in_a_line() {
    let mut net = Net::new(3);
    net.link_sps(0, 1);
    net.link_sps(1, 2);
    let (asker, _) = net.add_leaf(0, vec![]);
    net.add_leaf(2, vec![record("far away song.mp3", 1)]);
    net.add_leaf(1, vec![record("middle song.mp3", 2)]);

    net.leaf_query(asker, 1, 1, "song");
    assert_eq!(net.hits_at(asker), vec!["middle song.mp3"]);
    net.inbox[asker].clear();
    net.leaf_query(asker, 2, 2, "song");
    assert_eq!(
        net.hits_at(asker),
        vec!["far away song.mp3", "middle song.mp3"]
    );
}

#[test]
fn a_triangle_processes_each_query_once_and_delivers_hits_once() {
    let mut net = Net::new(3);
    net.link_sps(0, 1);
    net.link_sps(1, 2);
    net.link_sps(2, 0);
    let (asker, _) = net.add_leaf(0, vec![]);
    for sp in 0..3 {
        net.add_leaf(sp, vec![record(&format!("tune {sp}.ogg"), sp as u8 + 1)]);
    }
    net.leaf_query(asker, 9, 7, "tune");
    for sp in &net.sps {
        assert_eq!(sp.stats().queries_processed, 1);
    }
    let dups: u64 = net.sps.iter().map(|s| s.stats().duplicates_dropped).sum();
    assert!(
        dups >= 1,
        "the triangle must have produced a duplicate to drop"
    );
    assert_eq!(
        net.hits_at(asker),
        vec!["tune 0.ogg", "tune 1.ogg", "tune 2.ogg"]
    );
}

#[test]
fn oversized_ttl_is_clamped_on_receipt() {
    let n = 10;
    let mut net = Net::new(n);
    for i in 0..n - 1 {
        net.link_sps(i, i + 1);
    }
    let (asker, _) = net.add_leaf(0, vec![]);
    for sp in 0..n {
        net.add_leaf(sp, vec![record(&format!("x{sp}.mp3"), sp as u8 + 1)]);
    }
    net.leaf_query(asker, 3, 255, "x");
    // Super-peer 0 plus 7 hops: 8 super-peers answer.
    let reached = net
        .sps
        .iter()
        .filter(|s| s.stats().queries_processed == 1)
        .count();
    assert_eq!(reached, 8);
    assert_eq!(net.hits_at(asker).len(), 8);
}

#[test]
fn a_leaf_that_leaves_takes_its_files_with_it() {
    let mut net = Net::new(1);
    let (asker, _) = net.add_leaf(0, vec![]);
    let (_, conn) = net.add_leaf(0, vec![record("gone.flac", 4)]);
    net.leaf_query(asker, 1, 2, "gone");
    assert_eq!(net.hits_at(asker), vec!["gone.flac"]);
    net.sps[0].handle_disconnect(net.now, conn);
    net.run();
    assert!(net.indexes[0].is_empty());
    assert_eq!(net.sps[0].stats().leaves, 1);
    net.inbox[asker].clear();
    net.leaf_query(asker, 2, 2, "gone");
    assert!(net.hits_at(asker).is_empty());
}

#[test]
fn messages_before_hello_close_the_connection_with_a_reason() {
    let mut net = Net::new(1);
    let c = net.conn();
    net.inbox.push(Vec::new());
    net.links.insert(End::Sp(0, c), End::Leaf(0));
    net.sps[0].handle_connect(net.now, c, "127.0.0.1:3".parse().unwrap(), false);
    net.queue
        .push_back((End::Sp(0, c), Message::Register { files: vec![] }));
    net.run();
    assert_eq!(net.closed.len(), 1);
    assert!(
        net.closed[0].2.contains("Register before Hello"),
        "{:?}",
        net.closed
    );
    let bye = net.inbox[0]
        .iter()
        .any(|m| matches!(m, Message::Goodbye { reason } if reason.contains("before Hello")));
    assert!(bye, "the peer is told why: {:?}", net.inbox[0]);
    assert_eq!(net.sps[0].stats().protocol_errors, 1);
}

#[test]
fn a_stopping_super_peer_says_goodbye_to_every_neighbour_and_leaf() {
    let mut net = Net::new(3);
    net.link_sps(0, 1);
    net.link_sps(0, 2);
    let (leaf, _) = net.add_leaf(0, vec![record("kept.mp3", 1)]);
    assert_eq!(net.sps[1].stats().neighbours, 1);
    net.sps[0].handle_shutdown("stopping (SIGTERM)");
    net.run();
    let told = net.inbox[leaf]
        .iter()
        .any(|m| matches!(m, Message::Goodbye { reason } if reason.contains("SIGTERM")));
    assert!(told, "the leaf is told why: {:?}", net.inbox[leaf]);
    let closed_at_0 = net.closed.iter().filter(|(i, _, _)| *i == 0).count();
    assert_eq!(
        closed_at_0, 3,
        "two neighbours and a leaf: {:?}",
        net.closed
    );
    assert_eq!(net.sps[0].stats().neighbours, 0);
    assert_eq!(net.sps[0].stats().leaves, 0);
    for i in [1, 2] {
        assert_eq!(net.sps[i].stats().neighbours, 0, "super-peer {i} saw it go");
    }
}

#[test]
fn silent_connections_are_pinged_then_closed() {
    let mut net = Net::new(1);
    let (leaf, _) = net.add_leaf(0, vec![]);
    let cfg = Config::default();
    let t = net.now + cfg.keepalive_interval;
    assert!(net.sps[0].poll_timeout().unwrap() <= t);
    net.sps[0].handle_timeout(t);
    net.drain(0);
    net.run();
    assert!(net.inbox[leaf]
        .iter()
        .any(|m| matches!(m, Message::Ping { .. })));
    let later = net.now + cfg.idle_timeout + Duration::from_secs(1);
    net.sps[0].handle_timeout(later);
    net.drain(0);
    assert!(net
        .closed
        .iter()
        .any(|(_, _, r)| r.contains("idle_timeout")));
    assert_eq!(net.sps[0].stats().leaves, 0);
}

#[test]
fn the_deadline_asked_for_counts_connections_opened_and_timeouts_changed_since() {
    let mut net = Net::new(1);
    let (_, leaf) = net.add_leaf(0, vec![]);
    let cfg = Config::default();
    let t0 = net.now;
    // The first host tick (the super-peer was made a moment after `t0`): the next is far off.
    net.sps[0].handle_timeout(t0 + Duration::from_millis(500));
    // Worked out once: the leaf's keep-alive.
    assert_eq!(net.sps[0].poll_timeout(), Some(t0 + cfg.keepalive_interval));
    // A connection opened since that never greets is closed at its handshake timeout.
    let t1 = t0 + Duration::from_secs(1);
    net.sps[0].handle_connect(t1, 99, "127.0.0.1:3".parse().unwrap(), false);
    assert_eq!(net.sps[0].poll_timeout(), Some(t1 + cfg.hello_timeout));
    net.sps[0].handle_timeout(t1 + cfg.hello_timeout);
    net.drain(0);
    assert!(net
        .closed
        .iter()
        .any(|(_, c, r)| *c == 99 && r.contains("hello_timeout")));
    assert_eq!(net.sps[0].poll_timeout(), Some(t0 + cfg.keepalive_interval));
    // A shorter idle timeout counts at once.
    net.sps[0].config_mut().idle_timeout = Duration::from_secs(5);
    assert_eq!(net.sps[0].poll_timeout(), Some(t0 + Duration::from_secs(5)));
    net.sps[0].handle_timeout(t0 + Duration::from_secs(5));
    net.drain(0);
    assert!(net
        .closed
        .iter()
        .any(|(_, c, r)| *c == leaf && r.contains("idle_timeout")));
}

#[test]
fn hits_for_unknown_queries_are_dropped() {
    let mut net = Net::new(2);
    net.link_sps(0, 1);
    let (_, _) = net.add_leaf(0, vec![]);
    let stray = wire::QueryHits {
        query: QueryId([77; 16]),
        hits: vec![],
    };
    let to = *net
        .links
        .keys()
        .find(|e| matches!(e, End::Sp(0, _)))
        .unwrap();
    net.queue.push_back((to, Message::QueryHits(stray)));
    net.run();
    assert_eq!(net.sps[0].stats().hits_routed, 0);
}

mod flood_props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// On any connected graph of super-peers, a query with enough TTL is processed exactly once
        /// by every super-peer, and the asking leaf receives each file's hit exactly once.
        #[test]
        fn flooding_reaches_everyone_once(n in 2usize..9, extra in prop::collection::vec((0usize..9, 0usize..9), 0..12)) {
            let mut net = Net::new(n);
            for i in 1..n {
                net.link_sps(i - 1, i);
            }
            for (a, b) in extra {
                let (a, b) = (a % n, b % n);
                if a != b { net.link_sps(a, b); }
            }
            let (asker, _) = net.add_leaf(0, vec![]);
            for sp in 0..n {
                net.add_leaf(sp, vec![record(&format!("f{sp}.mp3"), sp as u8 + 1)]);
            }
            net.leaf_query(asker, 5, 7, "f");
            for sp in &net.sps {
                prop_assert_eq!(sp.stats().queries_processed, 1);
            }
            prop_assert_eq!(net.hits_at(asker).len(), n);
        }
    }
}

#[test]
fn a_later_copy_with_more_ttl_is_forwarded_again_but_answered_once() {
    // A–B, A–C, B–C, C–D: D is two hops from A.
    let mut net = Net::new(4);
    net.link_sps(0, 1);
    net.link_sps(0, 2);
    net.link_sps(1, 2);
    net.link_sps(2, 3);
    let conn_at = |net: &Net, at: usize, peer: usize| -> ConnId {
        net.links
            .iter()
            .find_map(|(k, v)| match (k, v) {
                (End::Sp(a, c), End::Sp(p, _)) if *a == at && *p == peer => Some(*c),
                _ => None,
            })
            .expect("linked")
    };
    let (from_b, from_a) = (conn_at(&net, 2, 1), conn_at(&net, 2, 0));
    let q = |ttl, hops| Query {
        id: QueryId([42; 16]),
        ttl,
        hops,
        search: words("x"),
    };
    // The long way round (A→B→C) arrives first, with no TTL left...
    net.sps[2].handle_message(net.now, from_b, Message::Query(q(0, 2)));
    net.run();
    assert_eq!(net.sps[3].stats().queries_processed, 0);
    // ...then the short way (A→C) with a hop to spare: C forwards it to D, and answers once.
    net.sps[2].handle_message(net.now, from_a, Message::Query(q(1, 1)));
    net.run();
    assert_eq!(net.sps[3].stats().queries_processed, 1, "D is reached");
    assert_eq!(net.sps[2].stats().queries_processed, 1, "C answered once");
    // A third copy with no more TTL than the best so far goes nowhere.
    net.sps[2].handle_message(net.now, from_b, Message::Query(q(1, 1)));
    net.run();
    assert_eq!(net.sps[3].stats().duplicates_dropped, 0);
}

/// Found by the `overlay` fuzz target: when the link that stays was the second to say Hello, the
/// older one was closed but the new one was never registered, and its next message was a
/// protocol error (both links lost).
#[test]
fn the_link_kept_between_two_super_peers_becomes_the_neighbour() {
    let now = Instant::now();
    let clock = RoleClock::new(now, NodeRole::SuperPeer, RoleConfig::default());
    let listen = "10.0.0.1:4000".parse().unwrap();
    let mut sp = SuperPeer::new(now, NodeId([1; 32]), Some(listen), Config::default(), clock);
    let other = "10.0.0.2:4000".parse().unwrap();
    let hello = || {
        Message::Hello(Hello::new(
            NodeId([2; 32]),
            Role::SuperPeer,
            Some(other),
            "test",
        ))
    };
    // It dialled us; then we dialled it. The link dialled by the smaller id (ours) stays.
    sp.handle_connect(now, 1, "10.0.0.2:50000".parse().unwrap(), false);
    sp.handle_message(now, 1, hello());
    sp.handle_connect(now, 2, other, true);
    sp.handle_message(now, 2, hello());
    let events: Vec<Event> = std::iter::from_fn(|| sp.poll_event()).collect();
    assert!(events.contains(&Event::Close {
        conn: 1,
        reason: "duplicate connection".into()
    }));
    assert!(
        events.contains(&Event::NeighbourJoined {
            conn: 2,
            node: NodeId([2; 32])
        }),
        "{events:?}"
    );
    assert_eq!(sp.neighbour_conns(), vec![2]);
    sp.handle_disconnect(now, 1);
    sp.handle_message(now, 2, Message::Hosts { hosts: vec![] });
    assert_eq!(sp.stats().protocol_errors, 0);
    assert_eq!(sp.stats().neighbours, 1);
}

/// STATE.md: a closing connection sends nothing more. A super-peer that demoted redirected
/// every leaf, those it was already closing included.
#[test]
fn a_demoting_super_peer_sends_nothing_on_a_connection_it_is_closing() {
    let t0 = Instant::now();
    let role = RoleConfig {
        min_role_time: Duration::ZERO,
        ..RoleConfig::default()
    };
    let clock = RoleClock::new(t0, NodeRole::SuperPeer, role);
    let config = Config {
        can_demote: true,
        demote_at: 1.0,
        leaf_slots: 10,
        ..Config::default()
    };
    let listen = "10.0.0.1:4000".parse().unwrap();
    let mut sp = SuperPeer::new(t0, NodeId([1; 32]), Some(listen), config, clock);
    // A neighbour with room for our leaves and other neighbours of its own.
    sp.handle_connect(t0, 1, "10.0.0.2:50000".parse().unwrap(), false);
    let mut hello = Hello::new(
        NodeId([2; 32]),
        Role::SuperPeer,
        Some("10.0.0.2:4000".parse().unwrap()),
        "test",
    );
    hello.load = Some(wire::Load {
        leaves: 0,
        leaf_slots: 100,
        neighbours: 3,
    });
    sp.handle_message(t0, 1, Message::Hello(hello));
    // A leaf that says goodbye: its connection is closing (its disconnect not yet reported).
    sp.handle_connect(t0, 2, "10.0.0.3:50000".parse().unwrap(), false);
    let leaf = Hello::new(NodeId([3; 32]), Role::Leaf, None, "test");
    sp.handle_message(t0, 2, Message::Hello(leaf));
    sp.handle_message(
        t0,
        2,
        Message::Goodbye {
            reason: "bye".into(),
        },
    );
    while sp.poll_transmit().is_some() {}
    while sp.poll_event().is_some() {}

    sp.handle_timeout(t0 + Duration::from_secs(1));
    let events: Vec<Event> = std::iter::from_fn(|| sp.poll_event()).collect();
    assert!(
        events.iter().any(|e| matches!(e, Event::Demote { .. })),
        "{events:?}"
    );
    let sent: Vec<crate::Transmit> = std::iter::from_fn(|| sp.poll_transmit()).collect();
    assert!(sent.iter().all(|t| t.to != 2), "{sent:?}");
}

/// Hits must come back along the query's path (from a neighbour it was sent to), and no more
/// than `max_hits_per_query` of them go back for one query.
#[test]
fn hits_off_the_querys_path_or_over_the_cap_are_dropped() {
    let now = Instant::now();
    let clock = RoleClock::new(now, NodeRole::SuperPeer, RoleConfig::default());
    let config = Config {
        max_hits_per_query: 5,
        ..flooding()
    };
    let listen = "10.0.0.1:4000".parse().unwrap();
    let mut sp = SuperPeer::new(now, NodeId([1; 32]), Some(listen), config, clock);
    let neighbour = |sp: &mut SuperPeer, conn: ConnId, n: u8| {
        let addr = format!("10.0.0.{n}:4000").parse().unwrap();
        sp.handle_connect(now, conn, addr, false);
        let hello = Hello::new(NodeId([n; 32]), Role::SuperPeer, Some(addr), "test");
        sp.handle_message(now, conn, Message::Hello(hello));
    };
    sp.handle_connect(now, 1, "10.0.0.9:5000".parse().unwrap(), false);
    let leaf = Hello::new(NodeId([9; 32]), Role::Leaf, None, "test");
    sp.handle_message(now, 1, Message::Hello(leaf));
    neighbour(&mut sp, 2, 2);
    neighbour(&mut sp, 3, 3);
    let id = QueryId([5; 16]);
    let query = Query {
        id,
        ttl: 2,
        hops: 0,
        search: words("anything"),
    };
    sp.handle_message(now, 1, Message::Query(query));
    // A neighbour that joins later was never asked.
    neighbour(&mut sp, 4, 4);
    while sp.poll_transmit().is_some() {}
    let hits = |n: u8| wire::QueryHits {
        query: id,
        hits: (0..n)
            .map(|i| wire::Hit {
                source: wire::Source {
                    node: NodeId([i; 32]),
                    addr: "10.0.1.1:6000".parse().unwrap(),
                    reachable: None,
                    via: None,
                },
                file: record(&format!("{i}.mp3"), i),
                score: 1.0,
            })
            .collect(),
    };
    let to_leaf = |sp: &mut SuperPeer| -> usize {
        std::iter::from_fn(|| sp.poll_transmit())
            .filter(|t| t.to == 1)
            .map(|t| match t.msg {
                Message::QueryHits(h) => h.hits.len(),
                _ => 0,
            })
            .sum()
    };
    sp.handle_message(now, 4, Message::QueryHits(hits(1)));
    assert_eq!(
        to_leaf(&mut sp),
        0,
        "hits from a neighbour never asked went back"
    );
    sp.handle_message(now, 2, Message::QueryHits(hits(3)));
    assert_eq!(to_leaf(&mut sp), 3);
    sp.handle_message(now, 3, Message::QueryHits(hits(3)));
    assert_eq!(
        to_leaf(&mut sp),
        2,
        "more than max_hits_per_query went back"
    );
    assert_eq!(sp.stats().hits_routed, 5);
    assert_eq!(sp.stats().hits_dropped, 2);
    assert_eq!(sp.stats().protocol_errors, 0);
}

#[test]
fn inbound_neighbours_past_the_cap_are_redirected() {
    let now = Instant::now();
    let clock = RoleClock::new(now, NodeRole::SuperPeer, RoleConfig::default());
    let config = Config {
        max_neighbours: 2,
        ..flooding()
    };
    let mut sp = SuperPeer::new(now, NodeId([1; 32]), None, config, clock);
    for c in 1..=3u64 {
        let remote = format!("127.0.0.{}:7000", c + 1).parse().unwrap();
        sp.handle_connect(now, c, remote, false);
        let hello = Hello::new(
            NodeId([c as u8 + 10; 32]),
            Role::SuperPeer,
            Some(remote),
            "t",
        );
        sp.handle_message(now, c, Message::Hello(hello));
    }
    assert_eq!(sp.stats().neighbours, 2);
    let redirected: Vec<ConnId> = std::iter::from_fn(|| sp.poll_transmit())
        .filter(|t| matches!(t.msg, Message::Redirect { .. }))
        .map(|t| t.to)
        .collect();
    assert_eq!(redirected, vec![3]);
}
