//! Getting through NATs, through the harness: what a super-peer tells a leaf of its
//! reachability, hits naming the super-peer that holds a leaf, connections back asked by a
//! requester (Hello role Transfer), and relays.

use super::*;

/// Where the scripted requesters connect from.
const REQUESTER: &str = "203.0.113.9:40000";

/// A requester's Hello: node `id`, reached at `listen`'s port.
fn transfer(id: u8, listen: Option<std::net::SocketAddr>) -> Hello {
    Hello::new(NodeId([id; 32]), Role::Transfer, listen, "test")
}

#[test]
fn a_leaf_that_cannot_be_reached_is_asked_to_connect_back_to_the_address_seen() {
    let mut net = Net::new(1);
    let listen: std::net::SocketAddr = "198.51.100.1:7700".parse().unwrap();
    let clock = RoleClock::new(net.now, NodeRole::SuperPeer, RoleConfig::default());
    net.sps[0] = SuperPeer::new(net.now, NodeId([1; 32]), Some(listen), flooding(), clock);
    let (asker, _) = net.add_leaf(0, vec![]);
    let (behind, conn) = net.add_leaf(0, vec![record("behind nat.flac", 7)]);
    let behind_node = NodeId([100 + behind as u8; 32]);
    // The dial-back failed: the leaf hears so, with the address it was tried at.
    net.sps[0].handle_reachable(net.now, conn, false);
    net.run();
    let told = net.inbox[behind].iter().any(|m| {
        *m == Message::Reachability {
            observed: "127.0.0.1:9000".parse().unwrap(),
            reachable: false,
        }
    });
    assert!(told, "{:?}", net.inbox[behind]);
    // Its hits say so, and name the super-peer that holds it.
    net.leaf_query(asker, 1, 2, "behind");
    let source = net.inbox[asker]
        .iter()
        .find_map(|m| match m {
            Message::QueryHits(h) => Some(h.hits[0].source.clone()),
            _ => None,
        })
        .expect("a hit");
    assert_eq!(source.reachable, Some(false));
    assert_eq!(source.via, Some(listen));

    // A requester (Hello role Transfer) asks for a connection back; the leaf is told where
    // the requester is as the super-peer sees it, on the port it named.
    let requester = |net: &mut Net, listen: Option<&str>| {
        let listen = listen.map(|l| l.parse().unwrap());
        net.add_peer(0, REQUESTER, transfer(50, listen))
    };
    let (r, rc) = requester(&mut net, Some("0.0.0.0:7001"));
    let ask = |net: &mut Net, c: ConnId, node: NodeId, token: u64| {
        net.queue.push_back((
            End::Sp(0, c),
            Message::ConnectToMe {
                node,
                token,
                punch: token == 77,
            },
        ));
        net.run();
    };
    ask(&mut net, rc, behind_node, 77);
    assert!(net.inbox[behind].contains(&Message::ConnectBack {
        node: NodeId([50; 32]),
        addr: "203.0.113.9:7001".parse().unwrap(),
        token: 77,
        punch: true,
        wait_ms: 0,
    }));
    assert_eq!(
        net.inbox[r],
        vec![Message::ConnectAsked {
            token: 77,
            error: None,
            sync: None,
        }]
    );
    // A leaf not attached here: a clear answer, not silence.
    ask(&mut net, rc, NodeId([222; 32]), 78);
    assert!(matches!(
        &net.inbox[r][1],
        Message::ConnectAsked { token: 78, error: Some(e), .. } if e.contains("not attached here")
    ));
    // A requester with no port to connect back to is told so, and the leaf hears nothing.
    let before = net.inbox[behind].len();
    let (r2, rc2) = requester(&mut net, None);
    ask(&mut net, rc2, behind_node, 79);
    assert!(matches!(
        &net.inbox[r2][0],
        Message::ConnectAsked { token: 79, error: Some(e), .. } if e.contains("no listen port")
    ));
    assert_eq!(net.inbox[behind].len(), before);
    // A requester may not search, and one that asks without end is dropped.
    let (_, rc3) = requester(&mut net, Some("0.0.0.0:7002"));
    for token in 0..=u64::from(flooding().max_connect_requests) {
        ask(&mut net, rc3, behind_node, token);
    }
    assert!(
        net.closed
            .iter()
            .any(|(_, c, why)| *c == rc3 && why.contains("ConnectToMe")),
        "{:?}",
        net.closed
    );
    net.queue.push_back((
        End::Sp(0, rc),
        Message::Query(Query {
            id: QueryId([9; 16]),
            ttl: 2,
            hops: 0,
            search: words("behind"),
        }),
    ));
    net.run();
    assert!(net
        .closed
        .iter()
        .any(|(_, c, why)| *c == rc && why.contains("unexpected Query on a requester")));
}

#[test]
fn a_leaf_asks_over_its_own_link_for_a_connection_back_to_where_it_is_seen() {
    let mut net = Net::new(1);
    let (asker, ac) = net.add_leaf(0, vec![]);
    let (behind, _) = net.add_leaf(0, vec![record("behind nat.flac", 7)]);
    let behind_node = NodeId([100 + behind as u8; 32]);
    let ask = |net: &mut Net, node: NodeId, token: u64| {
        net.queue.push_back((
            End::Sp(0, ac),
            Message::ConnectToMe {
                node,
                token,
                punch: false,
            },
        ));
        net.run();
    };
    ask(&mut net, behind_node, 5);
    // The leaf said it listens on 0.0.0.0:9000; the super-peer saw its link from 127.0.0.1.
    assert!(net.inbox[behind].contains(&Message::ConnectBack {
        node: NodeId([100 + asker as u8; 32]),
        addr: "127.0.0.1:9000".parse().unwrap(),
        token: 5,
        punch: false,
        wait_ms: 0,
    }));
    let answers = |net: &Net| -> Vec<(u64, Option<String>)> {
        net.inbox[asker]
            .iter()
            .filter_map(|m| match m {
                Message::ConnectAsked { token, error, .. } => Some((*token, error.clone())),
                _ => None,
            })
            .collect()
    };
    assert_eq!(answers(&net), vec![(5, None)]);
    // Not of itself.
    ask(&mut net, NodeId([100 + asker as u8; 32]), 6);
    assert!(answers(&net)[1]
        .1
        .as_deref()
        .is_some_and(|e| e.contains("itself")));
    // Past the minute's allowance it is refused with a reason, and the leaf keeps its link
    // (its files stay searchable).
    let limit = u64::from(flooding().max_connect_requests);
    let before = net.inbox[behind].len();
    for token in 7..7 + limit {
        ask(&mut net, behind_node, token);
    }
    let got = answers(&net);
    let refused: Vec<_> = got.iter().filter(|(_, e)| e.is_some()).collect();
    assert_eq!(got.len() as u64, 2 + limit);
    // The one of itself, and the two past the allowance (two were asked before the loop).
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert!(refused[1..]
        .iter()
        .all(|(_, e)| e.as_deref().unwrap().contains("in a minute")));
    assert_eq!(net.inbox[behind].len() as u64, before as u64 + limit - 2);
    assert!(
        !net.closed.iter().any(|(_, c, _)| *c == ac),
        "{:?}",
        net.closed
    );
    // A minute on, it may ask again.
    net.now += std::time::Duration::from_secs(61);
    ask(&mut net, behind_node, 500);
    assert_eq!(answers(&net).last(), Some(&(500, None)));
}

#[test]
fn a_hit_names_its_super_peer_at_the_address_the_next_hop_sees_it_at() {
    let mut net = Net::new(2);
    // The super-peer holding the source listens on every interface, as most do.
    let clock = RoleClock::new(net.now, NodeRole::SuperPeer, RoleConfig::default());
    let any: std::net::SocketAddr = "0.0.0.0:7700".parse().unwrap();
    net.sps[1] = SuperPeer::new(net.now, NodeId([2; 32]), Some(any), flooding(), clock);
    net.link_sps(0, 1);
    let (asker, _) = net.add_leaf(0, vec![]);
    net.add_leaf(1, vec![record("far away.ogg", 3)]);
    net.leaf_query(asker, 1, 2, "far");
    let via: Vec<_> = net.inbox[asker]
        .iter()
        .filter_map(|m| match m {
            Message::QueryHits(h) => Some(h.hits.iter().map(|h| h.source.via)),
            _ => None,
        })
        .flatten()
        .collect();
    // Net links every pair of super-peers from 127.0.0.1.
    assert_eq!(via, vec![Some("127.0.0.1:7700".parse().unwrap())]);
}

#[test]
fn a_relay_pairs_its_two_ends_only_within_its_caps_and_its_time() {
    let mut net = Net::new(1);
    let (_, leaf_conn) = net.add_leaf(0, vec![record("far.flac", 1)]);
    let leaf_node = NodeId([100; 32]);
    net.sps[0].handle_reachable(net.now, leaf_conn, false);
    net.run();
    let requester = |net: &mut Net, id: u8| net.add_peer(0, REQUESTER, transfer(id, None));
    let ask = |net: &mut Net, c: ConnId, node: NodeId, token: u64| {
        net.queue
            .push_back((End::Sp(0, c), Message::RelayVia { node, token }));
        net.run();
    };
    let (r, rc) = requester(&mut net, 50);
    ask(&mut net, rc, leaf_node, 1);
    assert_eq!(
        net.inbox[r],
        vec![Message::ConnectAsked {
            token: 1,
            error: None,
            sync: None,
        }]
    );
    let told = |net: &Net| {
        net.inbox[0].contains(&Message::RelayBack {
            node: NodeId([50; 32]),
            token: 1,
        })
    };
    assert!(
        !told(&net),
        "the leaf hears nothing before the requester joins"
    );
    // Only the two parties may join, once each, the requester first; the leaf is told when
    // the requester is in, and its joining pairs them.
    let now = net.now;
    let sp = &mut net.sps[0];
    for who in [NodeId([77; 32]), leaf_node] {
        assert!(matches!(
            sp.handle_relay_join(now, 1, who),
            crate::RelayJoin::Refused(_)
        ));
    }
    assert!(sp.relay_requester(1, NodeId([50; 32])));
    assert_eq!(
        sp.handle_relay_join(now, 1, NodeId([50; 32])),
        crate::RelayJoin::Wait
    );
    net.run();
    assert!(told(&net));
    let sp = &mut net.sps[0];
    assert!(matches!(
        sp.handle_relay_join(now, 1, NodeId([50; 32])),
        crate::RelayJoin::Refused(_)
    ));
    assert_eq!(
        sp.handle_relay_join(now, 1, leaf_node),
        crate::RelayJoin::Paired
    );
    assert_eq!(sp.stats().relays, 1);
    sp.handle_relay_ended(1, 4096);
    assert_eq!(sp.stats().relayed_bytes, 4096);
    // At most relays_per_leaf for one leaf at once.
    let per_leaf = flooding().relays_per_leaf as u64;
    for token in 10..10 + per_leaf {
        ask(&mut net, rc, leaf_node, token);
    }
    net.inbox[r].clear();
    ask(&mut net, rc, leaf_node, 99);
    assert!(matches!(
        &net.inbox[r][0],
        Message::ConnectAsked { token: 99, error: Some(e), .. } if e.contains("relays_per_leaf")
    ));
    // A relay whose ends do not both join in time is dropped, and its waiting end with it.
    net.advance(crate::RELAY_JOIN_WAIT + Duration::from_secs(1));
    let now = net.now;
    assert!(matches!(
        net.sps[0].handle_relay_join(now, 10, leaf_node),
        crate::RelayJoin::Refused(_)
    ));
    // Unknown leaves get a clear answer.
    net.inbox[r].clear();
    ask(&mut net, rc, NodeId([201; 32]), 5);
    assert!(matches!(
        &net.inbox[r][0],
        Message::ConnectAsked { token: 5, error: Some(e), .. } if e.contains("not attached")
    ));
}

/// Found by the `overlay` fuzz target: a dial-back that answered after the leaf's connection
/// began closing sent it Reachability (STATE.md: a closing connection is sent nothing more).
#[test]
fn a_reachability_answer_for_a_closing_leaf_sends_nothing() {
    let now = Instant::now();
    let clock = RoleClock::new(now, NodeRole::SuperPeer, RoleConfig::default());
    let mut sp = SuperPeer::new(now, NodeId([1; 32]), None, flooding(), clock);
    sp.handle_connect(now, 1, "10.0.0.2:50000".parse().unwrap(), false);
    let hello = Hello::new(
        NodeId([2; 32]),
        Role::Leaf,
        Some("0.0.0.0:7001".parse().unwrap()),
        "test",
    );
    sp.handle_message(now, 1, Message::Hello(hello));
    let bye = Message::Goodbye {
        reason: "leaving".into(),
    };
    sp.handle_message(now, 1, bye);
    while sp.poll_transmit().is_some() {}
    // The connection is closing, not gone yet, when the dial-back answers.
    sp.handle_reachable(now, 1, true);
    assert!(sp.poll_transmit().is_none());
}

#[test]
fn no_relay_for_a_leaf_that_can_be_reached_or_serves_nothing() {
    let mut net = Net::new(1);
    let (_, reachable) = net.add_leaf(0, vec![record("near.flac", 1)]);
    net.sps[0].handle_reachable(net.now, reachable, true);
    // A leaf that only searches (no listen address).
    let searcher = Hello::new(NodeId([150; 32]), Role::Leaf, None, "test");
    net.add_peer(0, "127.0.0.1:3", searcher);
    let (r, rc) = net.add_peer(0, REQUESTER, transfer(50, None));
    for (token, node) in [(1, NodeId([100; 32])), (2, NodeId([150; 32]))] {
        net.queue
            .push_back((End::Sp(0, rc), Message::RelayVia { node, token }));
    }
    net.run();
    let errors: Vec<String> = net.inbox[r]
        .iter()
        .filter_map(|m| match m {
            Message::ConnectAsked { error, .. } => error.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 2, "{:?}", net.inbox[r]);
    assert!(errors[0].contains("can be reached"), "{errors:?}");
    assert!(errors[1].contains("serves nothing"), "{errors:?}");
}

#[test]
fn a_leaf_is_checked_by_a_neighbour_on_another_address_and_here_without_its_answer() {
    use crate::superpeer::REACH_ASK_WAIT;
    let mut net = Net::new(2);
    net.link_sps_at(0, 1, "192.0.2.7:7700");
    let served: std::net::SocketAddr = "198.51.100.20:9000".parse().unwrap();
    let node = NodeId([70; 32]);
    let (leaf, _) = net.add_peer(0, "198.51.100.20:40000", leaf_hello(node));
    // Asked of the neighbour (with who must answer, and where), not made here.
    let (peer, token) = match net.checks.as_slice() {
        [(
            1,
            Event::CheckReachableFor {
                peer,
                token,
                addr,
                node: n,
            },
        )] => {
            assert_eq!((*addr, *n), (served, node));
            (*peer, *token)
        }
        other => panic!("{other:?}"),
    };
    net.checks.clear();
    net.sps[1].handle_checked_for(net.now, peer, token, Some(false));
    net.run();
    let told = Message::Reachability {
        observed: served,
        reachable: false,
    };
    assert!(net.inbox[leaf].contains(&told), "{:?}", net.inbox[leaf]);
    // The same answer again (a replay, or a late one) changes nothing.
    let to_sp0 = End::Sp(0, net.sps[0].neighbour_conns()[0]);
    let before = net.inbox[leaf].len();
    net.queue.push_back((
        to_sp0,
        Message::ReachChecked {
            token,
            reachable: Some(true),
        },
    ));
    net.run();
    assert_eq!(net.inbox[leaf].len(), before, "{:?}", net.inbox[leaf]);

    // A neighbour that says "reachable" is not taken at its word: checked here too.
    let (_, third) = net.add_peer(0, "198.51.100.22:40000", leaf_hello(NodeId([72; 32])));
    let (peer, token) = match net.checks.as_slice() {
        [(1, Event::CheckReachableFor { peer, token, .. })] => (*peer, *token),
        other => panic!("{other:?}"),
    };
    net.checks.clear();
    net.sps[1].handle_checked_for(net.now, peer, token, Some(true));
    net.run();
    assert!(
        matches!(net.checks.as_slice(), [(0, Event::CheckReachable { conn, .. })] if *conn == third),
        "{:?}",
        net.checks
    );
    net.checks.clear();

    // A neighbour that does not answer: checked here once the wait is over.
    let (_, conn) = net.add_peer(0, "198.51.100.21:40000", leaf_hello(NodeId([71; 32])));
    assert!(
        matches!(
            net.checks.as_slice(),
            [(1, Event::CheckReachableFor { .. })]
        ),
        "{:?}",
        net.checks
    );
    net.checks.clear();
    net.advance(REACH_ASK_WAIT);
    assert!(
        net.checks
            .iter()
            .any(|(i, e)| *i == 0
                && matches!(e, Event::CheckReachable { conn: c, .. } if *c == conn)),
        "{:?}",
        net.checks
    );
}

#[test]
fn a_neighbour_at_the_leafs_own_address_is_not_asked_to_check_it() {
    let mut net = Net::new(2);
    // The harness's leaves and this neighbour come from 127.0.0.1: a check from there could
    // come from behind the leaf's own router.
    net.link_sps(0, 1);
    let (_, conn) = net.add_leaf(0, vec![]);
    assert!(
        matches!(net.checks.as_slice(), [(0, Event::CheckReachable { conn: c, .. })] if *c == conn),
        "{:?}",
        net.checks
    );
}

/// The Hello of leaf `node`, serving on port 9000.
fn leaf_hello(node: NodeId) -> Hello {
    Hello::new(
        node,
        Role::Leaf,
        Some("0.0.0.0:9000".parse().unwrap()),
        "test",
    )
}

/// A scripted neighbouring super-peer of super-peer 0, at 192.0.2.9: its inbox index and
/// its connection.
fn scripted_neighbour(net: &mut Net) -> (usize, ConnId) {
    let hello = Hello::new(NodeId([60; 32]), Role::SuperPeer, None, "test");
    net.add_peer(0, "192.0.2.9:7700", hello)
}

/// Super-peer 0 is asked on `conn` to check a leaf at `addr`.
fn ask_check(net: &mut Net, conn: ConnId, token: u64, addr: &str) {
    let msg = Message::CheckReach {
        token,
        addr: addr.parse().unwrap(),
        node: NodeId([61; 32]),
    };
    net.queue.push_back((End::Sp(0, conn), msg));
    net.run();
}

/// The checks super-peer 0 made for neighbours.
fn made_for(net: &Net) -> usize {
    let made = |(i, e): &&(usize, Event)| *i == 0 && matches!(e, Event::CheckReachableFor { .. });
    net.checks.iter().filter(made).count()
}

/// The answer declining check `token`.
fn declined(token: u64) -> Message {
    Message::ReachChecked {
        token,
        reachable: None,
    }
}

#[test]
fn checks_made_for_a_neighbour_are_bounded_per_address() {
    use crate::superpeer::{CHECKS_PER_IP, CHECK_WINDOW};
    let mut net = Net::new(1);
    let (peer, conn) = scripted_neighbour(&mut net);
    for token in 0..=CHECKS_PER_IP as u64 {
        ask_check(
            &mut net,
            conn,
            token,
            &format!("198.51.100.4:{}", 1000 + token),
        );
    }
    assert_eq!(made_for(&net), CHECKS_PER_IP, "{:?}", net.checks);
    // The one beyond is declined, so that the asker checks itself.
    let beyond = declined(CHECKS_PER_IP as u64);
    assert!(net.inbox[peer].contains(&beyond), "{:?}", net.inbox[peer]);
    // A window later, one more is made.
    net.advance(CHECK_WINDOW);
    ask_check(&mut net, conn, 99, "198.51.100.4:2000");
    assert_eq!(made_for(&net), CHECKS_PER_IP + 1);
    // Never to our own loopback address for a neighbour elsewhere, nor into a private network.
    ask_check(&mut net, conn, 100, "127.0.0.1:22");
    ask_check(&mut net, conn, 101, "10.1.2.3:7000");
    assert_eq!(made_for(&net), CHECKS_PER_IP + 1);
    assert!(net.inbox[peer].contains(&declined(100)) && net.inbox[peer].contains(&declined(101)));
    // A leaf may not ask for one.
    let (_, leaf) = net.add_leaf(0, vec![]);
    ask_check(&mut net, leaf, 1, "198.51.100.5:1");
    assert!(
        net.closed
            .iter()
            .any(|(_, c, why)| *c == leaf && why.contains("unexpected CheckReach")),
        "{:?}",
        net.closed
    );
}

#[test]
fn checks_made_for_neighbours_are_bounded_in_flight() {
    use crate::superpeer::CHECKS_IN_FLIGHT;
    let mut net = Net::new(1);
    let (peer, conn) = scripted_neighbour(&mut net);
    // Each to another address: only the bound on checks at once stops them.
    for token in 0..=CHECKS_IN_FLIGHT as u64 {
        ask_check(
            &mut net,
            conn,
            token,
            &format!("198.51.100.{}:7000", token + 1),
        );
    }
    assert_eq!(made_for(&net), CHECKS_IN_FLIGHT);
    assert!(net.inbox[peer].contains(&declined(CHECKS_IN_FLIGHT as u64)));
    // One done: room for another.
    net.sps[0].handle_checked_for(net.now, conn, 0, Some(true));
    ask_check(&mut net, conn, 50, "198.51.100.60:7000");
    assert_eq!(made_for(&net), CHECKS_IN_FLIGHT + 1);
}

#[test]
fn the_checks_asked_of_a_neighbour_that_goes_are_made_here_at_once() {
    let mut net = Net::new(2);
    net.link_sps_at(0, 1, "192.0.2.7:7700");
    let (_, leaf_conn) = net.add_peer(0, "198.51.100.20:40000", leaf_hello(NodeId([70; 32])));
    assert!(
        matches!(
            net.checks.as_slice(),
            [(1, Event::CheckReachableFor { .. })]
        ),
        "{:?}",
        net.checks
    );
    let to_1 = net.sps[0].neighbour_conns()[0];
    net.sps[0].handle_disconnect(net.now, to_1);
    net.run();
    assert!(
        net.checks.iter().any(|(i, e)| *i == 0
            && matches!(e, Event::CheckReachable { conn, .. } if *conn == leaf_conn)),
        "{:?}",
        net.checks
    );
}

#[test]
fn a_check_a_neighbour_declines_goes_to_the_next_then_is_made_here() {
    use crate::superpeer::REACH_ASKED_MAX;
    // More neighbours than are asked for one check.
    let mut net = Net::new(REACH_ASKED_MAX + 2);
    for n in 1..=REACH_ASKED_MAX + 1 {
        net.link_sps_at(0, n, &format!("192.0.2.{n}:7700"));
    }
    let (_, leaf_conn) = net.add_peer(0, "198.51.100.20:40000", leaf_hello(NodeId([70; 32])));
    // Whichever neighbour is asked declines (as one whose bounds are spent does): another is
    // asked at once, never one asked before; after REACH_ASKED_MAX, the check is made here.
    let mut asked = Vec::new();
    for _ in 0..REACH_ASKED_MAX {
        let (sp, peer, token) = match net.checks.as_slice() {
            [(sp, Event::CheckReachableFor { peer, token, .. })] => (*sp, *peer, *token),
            other => panic!("{other:?}"),
        };
        assert!(!asked.contains(&sp), "{sp} asked twice");
        asked.push(sp);
        net.checks.clear();
        let to_sp0 = net.links[&End::Sp(sp, peer)];
        net.queue.push_back((to_sp0, declined(token)));
        net.run();
    }
    assert!(
        matches!(net.checks.as_slice(), [(0, Event::CheckReachable { conn, .. })] if *conn == leaf_conn),
        "{:?}",
        net.checks
    );
    assert_eq!(
        net.sps[0].stats().reach_checks_asked,
        REACH_ASKED_MAX as u64
    );
}

/// A hole punch is timed (DCUtR's synchronisation, the super-peer in the middle): from the
/// round trips its pings measured, the super-peer has the nearer side wait, so that the
/// requester and the leaf dial at the same moment.
#[test]
fn a_hole_punch_is_timed_by_the_round_trips_the_super_peer_measured() {
    let mut net = Net::new(1);
    let (asker, ac) = net.add_leaf(0, vec![]);
    let (behind, bc) = net.add_leaf(0, vec![record("behind nat.flac", 7)]);
    let behind_node = NodeId([100 + behind as u8; 32]);
    // Each was pinged as it attached; the answers come back 100 ms (the requester) and 40 ms
    // (the leaf) later.
    let ping = |net: &Net, leaf: usize| -> u64 {
        net.inbox[leaf]
            .iter()
            .rev()
            .find_map(|m| match m {
                Message::Ping { nonce } => Some(*nonce),
                _ => None,
            })
            .expect("pinged as it attached")
    };
    let t0 = net.now;
    let (a_nonce, b_nonce) = (ping(&net, asker), ping(&net, behind));
    // A pong for another nonce times nothing (it would say 10 ms).
    net.sps[0].handle_message(t0 + ms(10), bc, Message::Pong { nonce: a_nonce });
    net.sps[0].handle_message(t0 + ms(40), bc, Message::Pong { nonce: b_nonce });
    net.sps[0].handle_message(t0 + ms(100), ac, Message::Pong { nonce: a_nonce });
    let ask = |net: &mut Net, token: u64, punch: bool| {
        net.queue.push_back((
            End::Sp(0, ac),
            Message::ConnectToMe {
                node: behind_node,
                token,
                punch,
            },
        ));
        net.run();
    };
    ask(&mut net, 1, true);
    let asker_node = NodeId([100 + asker as u8; 32]);
    // The leaf, nearer by 60 ms of round trip, waits 30 ms.
    assert!(net.inbox[behind].contains(&Message::ConnectBack {
        node: asker_node,
        addr: "127.0.0.1:9000".parse().unwrap(),
        token: 1,
        punch: true,
        wait_ms: 30,
    }));
    let sync = wire::PunchSync {
        leaf_rtt_ms: 40,
        leaf_wait_ms: 30,
    };
    assert!(net.inbox[asker].contains(&Message::ConnectAsked {
        token: 1,
        error: None,
        sync: Some(sync),
    }));
    // The leaf dials 20 + 30 ms after the answer leaves, which reaches the requester 50 ms
    // after it left: it dials at once.
    assert_eq!(crate::leaf::punch_wait(ms(100), Some(sync)), ms(0));
    // Had the requester been the nearer (20 ms against 100 ms), the leaf would dial at once,
    // 50 ms after the answer left, and the requester 40 ms after the answer reached it.
    let far = wire::PunchSync {
        leaf_rtt_ms: 100,
        leaf_wait_ms: 0,
    };
    assert_eq!(crate::leaf::punch_wait(ms(20), Some(far)), ms(40));
    // Never longer than the cap, whatever a super-peer says.
    let absurd = wire::PunchSync {
        leaf_rtt_ms: u32::MAX,
        leaf_wait_ms: u32::MAX,
    };
    let cap = ms(u64::from(wire::MAX_PUNCH_WAIT_MS));
    assert_eq!(crate::leaf::punch_wait(ms(0), Some(absurd)), cap);
    assert_eq!(crate::leaf::punch_wait(ms(10), None), ms(0));
    // A connection back that is no punch is neither timed nor delayed.
    ask(&mut net, 2, false);
    assert!(net.inbox[behind].contains(&Message::ConnectBack {
        node: asker_node,
        addr: "127.0.0.1:9000".parse().unwrap(),
        token: 2,
        punch: false,
        wait_ms: 0,
    }));
    assert!(net.inbox[asker].contains(&Message::ConnectAsked {
        token: 2,
        error: None,
        sync: None,
    }));
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
