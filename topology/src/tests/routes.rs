//! The route tables through the harness: last-hop and two-hop routing, patches, depth-1
//! tables.

use super::*;

/// Last-hop routing on, dynamic querying off, patches sent as soon as timers run.
fn last_hop() -> Config {
    Config {
        last_hop_routing: true,
        dynamic: None,
        route_delay: Duration::ZERO,
        ..Config::default()
    }
}

#[test]
fn the_last_hop_goes_only_where_the_words_are() {
    // A star: 0 in the middle; 1 has "alpha", 2 has "beta", 3 has nothing.
    let mut net = Net::with_config(4, last_hop());
    for sp in 1..4 {
        net.link_sps(0, sp);
    }
    let (asker, _) = net.add_leaf(0, vec![]);
    net.add_leaf(1, vec![record("alpha song.mp3", 1)]);
    net.add_leaf(2, vec![record("beta song.mp3", 2)]);
    net.advance(Duration::from_millis(1));
    net.leaf_query(asker, 1, 1, "alpha");
    assert_eq!(net.hits_at(asker), vec!["alpha song.mp3"]);
    let processed: Vec<u64> = net
        .sps
        .iter()
        .map(|s| s.stats().queries_processed)
        .collect();
    assert_eq!(processed, [1, 1, 0, 0]);
    assert_eq!(net.sps[0].stats().queries_filtered, 2);
    // A word both have goes to both; none goes to the empty one.
    net.inbox[asker].clear();
    net.leaf_query(asker, 2, 1, "song");
    assert_eq!(net.hits_at(asker), ["alpha song.mp3", "beta song.mp3"]);
    assert_eq!(net.sps[3].stats().queries_processed, 0);
    // Earlier hops are flooded: with TTL 2, 1 passes nothing on (it has no other neighbour),
    // but 0 sends the first hop everywhere.
    net.leaf_query(asker, 3, 2, "nowhere");
    assert_eq!(net.sps[3].stats().queries_processed, 1);
}

#[test]
fn a_leaf_that_leaves_is_patched_out_of_its_neighbours_tables() {
    let mut net = Net::with_config(2, last_hop());
    net.link_sps(0, 1);
    let (asker, _) = net.add_leaf(0, vec![]);
    let (_, conn) = net.add_leaf(1, vec![record("gamma.mp3", 3)]);
    net.advance(Duration::from_millis(1));
    let conn_at_0 = net.sps[0].neighbour_conns()[0];
    let table = |net: &Net| net.sps[0].neighbour_table(conn_at_0).unwrap().slots();
    assert_eq!(table(&net), net.sps[1].route_slots());
    assert!(!table(&net).is_empty());
    net.sps[1].handle_disconnect(net.now, conn);
    net.advance(Duration::from_millis(1));
    assert_eq!(table(&net), Vec::<u32>::new());
    net.leaf_query(asker, 4, 1, "gamma");
    assert_eq!(net.sps[1].stats().queries_processed, 0);
}

#[test]
fn a_patch_before_a_table_or_beyond_it_is_a_protocol_error() {
    let mut net = Net::with_config(2, last_hop());
    net.link_sps(0, 1);
    let c = net.sps[0].neighbour_conns()[0];
    net.sps[0].handle_message(
        net.now,
        c,
        Message::RouteTable {
            bits: 4,
            slots: wire::Slots::from(vec![16]),
            depth: 0,
        },
    );
    assert_eq!(net.sps[0].stats().protocol_errors, 1);
}

/// Last-hop and two-hop routing, no dynamic querying, tables and depth-1 tables sent as soon
/// as timers run.
fn two_hop() -> Config {
    Config {
        two_hop_routing: true,
        aggregate_delay: Duration::ZERO,
        ..last_hop()
    }
}

/// Two arms from 0: 0–1–2 and 0–3–4; `files` go to a leaf at 2.
fn two_arms(config: Config, files: Vec<FileRecord>) -> (Net, usize, ConnId) {
    let mut net = Net::with_config(5, config);
    for (a, b) in [(0, 1), (1, 2), (0, 3), (3, 4)] {
        net.link_sps(a, b);
    }
    let (asker, _) = net.add_leaf(0, vec![]);
    let (_, conn) = net.add_leaf(2, files);
    net.advance(Duration::from_millis(1));
    net.advance(Duration::from_millis(1));
    (net, asker, conn)
}

#[test]
fn the_hop_before_the_last_goes_only_where_words_are_one_hop_on() {
    let (mut net, asker, _) = two_arms(two_hop(), vec![record("delta song.mp3", 4)]);
    // TTL 2: 0 sends it with TTL 1 to 1 (whose neighbour 2 has "delta") but not to 3 (neither
    // it nor 4 has it).
    net.leaf_query(asker, 1, 2, "delta");
    assert_eq!(net.hits_at(asker), vec!["delta song.mp3"]);
    let processed: Vec<u64> = net
        .sps
        .iter()
        .map(|s| s.stats().queries_processed)
        .collect();
    assert_eq!(processed, [1, 1, 1, 0, 0]);
    assert_eq!(net.sps[0].stats().queries_filtered_two_hop, 1);
    // Without depth-1 routing, 3 gets it (and holds back the last hop to 4, which has nothing).
    for sp in &mut net.sps {
        sp.config_mut().two_hop_routing = false;
    }
    net.inbox[asker].clear();
    net.leaf_query(asker, 2, 2, "delta");
    assert_eq!(net.hits_at(asker), vec!["delta song.mp3"]);
    assert_eq!(net.sps[3].stats().queries_processed, 1);
    assert_eq!(net.sps[4].stats().queries_processed, 0);
}

#[test]
fn depth_one_tables_follow_a_leaf_two_hops_away() {
    let (mut net, asker, conn) = two_arms(two_hop(), vec![record("epsilon.mp3", 5)]);
    let at_0 = |net: &Net, sp: usize| {
        // 0's link to 1 was made first, to 3 second.
        let conns = net.sps[0].neighbour_conns();
        let c = conns[usize::from(sp == 3)];
        net.sps[0].neighbour_aggregate(c).unwrap().slots()
    };
    let held = at_0(&net, 1);
    assert_eq!(Some(held.clone()), net.sps[1].aggregate_slots());
    assert_eq!(
        net.sps[1].aggregate_slots(),
        Some(net.sps[1].aggregate_now())
    );
    let hashes = crate::routing::search_hashes(crate::routing::simple_words, &words("epsilon"));
    let c1 = net.sps[0].neighbour_conns()[0];
    assert!(net.sps[0]
        .neighbour_aggregate(c1)
        .unwrap()
        .may_match(&hashes));
    // The leaf at 2 goes: 2 patches its table to 1, 1 its depth-1 table to 0 and 2.
    net.sps[2].handle_disconnect(net.now, conn);
    net.advance(Duration::from_millis(1));
    net.advance(Duration::from_millis(1));
    assert!(!net.sps[0]
        .neighbour_aggregate(c1)
        .unwrap()
        .may_match(&hashes));
    assert_eq!(Some(at_0(&net, 1)), net.sps[1].aggregate_slots());
    assert_eq!(Some(at_0(&net, 3)), net.sps[3].aggregate_slots());
    assert_ne!(at_0(&net, 1), held);
    net.leaf_query(asker, 3, 2, "epsilon");
    assert!(net.hits_at(asker).is_empty());
    assert_eq!(net.sps[1].stats().queries_processed, 0);
    // It comes back at 4 this time: 3's depth-1 table learns of it.
    net.add_leaf(4, vec![record("epsilon.mp3", 5)]);
    net.advance(Duration::from_millis(1));
    net.advance(Duration::from_millis(1));
    net.leaf_query(asker, 4, 2, "epsilon");
    assert_eq!(net.hits_at(asker), vec!["epsilon.mp3"]);
    assert_eq!(net.sps[1].stats().queries_processed, 0);
    assert_eq!(net.sps[3].stats().queries_processed, 1);
}

#[test]
fn new_files_reach_depth_one_tables_at_once_gone_ones_after_the_delay() {
    let delay = Duration::from_secs(3600);
    let config = Config {
        aggregate_delay: delay,
        // Nothing here pings: keep the links up through the delay.
        idle_timeout: delay * 3,
        keepalive_interval: delay * 3,
        ..two_hop()
    };
    let (mut net, asker, conn) = two_arms(config, vec![record("epsilon.mp3", 5)]);
    // The first depth-1 tables are made whole after the delay.
    assert_eq!(net.sps[1].aggregate_slots(), None);
    net.advance(delay);
    // Whether the depth-1 table the neighbour on `c` sent 0 may match `word`; and whether it
    // equals what that neighbour (`sp`) would send now.
    let may_match = |net: &Net, c: ConnId, word: &str| {
        let hashes = crate::routing::search_hashes(crate::routing::simple_words, &words(word));
        net.sps[0]
            .neighbour_aggregate(c)
            .unwrap()
            .may_match(&hashes)
    };
    let current = |net: &Net, c: ConnId, sp: usize| {
        net.sps[0].neighbour_aggregate(c).unwrap().slots() == net.sps[sp].aggregate_now()
    };
    let (c1, c3) = (
        net.sps[0].neighbour_conns()[0],
        net.sps[0].neighbour_conns()[1],
    );
    assert!(!may_match(&net, c3, "zeta"));
    // A file at 4 is in 3's depth-1 table at 0 as soon as the patches have travelled, long
    // before the delay: a query for it from 0 goes through 3 to 4.
    net.add_leaf(4, vec![record("zeta.mp3", 6)]);
    net.advance(Duration::from_millis(1));
    assert!(may_match(&net, c3, "zeta"));
    assert!(current(&net, c3, 3));
    net.leaf_query(asker, 1, 2, "zeta");
    assert_eq!(net.hits_at(asker), vec!["zeta.mp3"]);
    assert_eq!(net.sps[1].stats().queries_processed, 0);
    // Another within `aggregate_add_interval` of that patch waits for the interval's end.
    net.add_leaf(4, vec![record("eta.mp3", 7)]);
    net.advance(Duration::from_millis(1));
    assert!(!may_match(&net, c3, "eta"));
    net.advance(Config::default().aggregate_add_interval);
    assert!(may_match(&net, c3, "eta"));
    // The leaf at 2 goes: 1's depth-1 table at 0 still holds its words (a query for them
    // costs a message, finds nothing) until the delay has passed.
    net.sps[2].handle_disconnect(net.now, conn);
    net.advance(Duration::from_millis(1));
    assert!(may_match(&net, c1, "epsilon"));
    net.advance(delay);
    assert!(!may_match(&net, c1, "epsilon"));
    assert!(current(&net, c1, 1));
}

#[test]
fn route_messages_of_an_unknown_depth_are_ignored() {
    let mut net = Net::with_config(2, two_hop());
    net.link_sps(0, 1);
    let c = net.sps[0].neighbour_conns()[0];
    let before = net.sps[0].neighbour_table(c).map(|t| t.slots());
    for msg in [
        Message::RouteTable {
            bits: 8,
            slots: wire::Slots::from(vec![1, 2]),
            depth: 7,
        },
        Message::RoutePatch {
            flips: wire::Slots::from(vec![3]),
            depth: 7,
        },
    ] {
        net.sps[0].handle_message(net.now, c, msg);
    }
    assert_eq!(net.sps[0].stats().protocol_errors, 0);
    assert_eq!(net.sps[0].neighbour_table(c).map(|t| t.slots()), before);
}
