//! Dynamic querying through the harness: the probe, widening to the horizon, matching
//! neighbours first.

use super::*;

/// Dynamic querying with a small target, a probe of two, one second per hop.
fn dynamic(target: usize) -> Config {
    Config {
        last_hop_routing: true,
        route_delay: Duration::ZERO,
        dynamic: Some(crate::DynamicQuerying {
            target,
            probe_width: 2,
            probe_ttl: 1,
            hop_wait: Duration::from_secs(1),
        }),
        ..Config::default()
    }
}

/// A star of `arms` super-peers around 0; `holders` of them (the first ones) have a leaf
/// sharing "gamma"; 0 has the asking leaf.
fn star(arms: usize, holders: usize, config: Config) -> (Net, usize) {
    let mut net = Net::with_config(arms + 1, config);
    for sp in 1..=arms {
        net.link_sps(0, sp);
    }
    let (asker, _) = net.add_leaf(0, vec![]);
    for sp in 1..=holders {
        net.add_leaf(sp, vec![record(&format!("gamma {sp}.mp3"), sp as u8)]);
    }
    net.advance(Duration::from_millis(1));
    (net, asker)
}

#[test]
fn dynamic_querying_stops_at_the_target() {
    let (mut net, asker) = star(8, 8, dynamic(3));
    net.leaf_query(asker, 7, 2, "gamma");
    // The probe: the two likeliest neighbours, two hits.
    assert_eq!(net.hits_at(asker).len(), 2);
    for _ in 0..20 {
        net.advance(Duration::from_secs(1));
    }
    let hits = net.hits_at(asker).len();
    assert!((3..8).contains(&hits), "{hits} hits: stopped at the target");
    let asked: u64 = net.sps[1..]
        .iter()
        .map(|s| s.stats().queries_processed)
        .sum();
    assert_eq!(
        asked as usize, hits,
        "nobody was asked after the target was met"
    );
    assert_eq!(net.sps[0].dynamic_in_progress(), 0);
    assert_eq!(net.sps[0].stats().dynamic_queries, 1);
}

#[test]
fn dynamic_querying_widens_to_the_horizon_when_results_are_few() {
    // Only one arm has the file, and the tables cannot tell with TTL 2 (the first hop is not
    // filtered without depth-1 tables): the query must still reach it, and every arm in the
    // end.
    let config = Config {
        two_hop_routing: false,
        ..dynamic(150)
    };
    let (mut net, asker) = star(8, 1, config);
    net.leaf_query(asker, 8, 2, "gamma");
    for _ in 0..60 {
        net.advance(Duration::from_secs(1));
    }
    assert_eq!(net.hits_at(asker), ["gamma 1.mp3"]);
    for sp in &net.sps {
        assert_eq!(sp.stats().queries_processed, 1);
    }
    assert_eq!(net.sps[0].dynamic_in_progress(), 0, "ended at the horizon");
}

#[test]
fn dynamic_querying_asks_matching_neighbours_first() {
    // Arms 1..=4 share nothing, 5 and 6 share "gamma": the probe goes to 5 and 6 (TTL 1).
    let mut net = Net::with_config(7, dynamic(2));
    for sp in 1..=6 {
        net.link_sps(0, sp);
    }
    let (asker, _) = net.add_leaf(0, vec![]);
    net.add_leaf(5, vec![record("gamma 5.mp3", 5)]);
    net.add_leaf(6, vec![record("gamma 6.mp3", 6)]);
    net.advance(Duration::from_millis(1));
    net.leaf_query(asker, 9, 2, "gamma");
    for _ in 0..20 {
        net.advance(Duration::from_secs(1));
    }
    assert_eq!(net.hits_at(asker), ["gamma 5.mp3", "gamma 6.mp3"]);
    let processed: Vec<u64> = net
        .sps
        .iter()
        .map(|s| s.stats().queries_processed)
        .collect();
    assert_eq!(processed, [1, 0, 0, 0, 0, 1, 1]);
}
