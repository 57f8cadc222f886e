//! The simulator's checks of network-wide invariants (see `topology/STATE.md`), and the
//! look-ups they are made of.

use std::time::Duration;

use super::{Machine, Sim};
use crate::role::NodeRole;

impl Sim {
    /// Checks that every super-peer holds, for each neighbour, exactly the route table that
    /// neighbour has and the depth-1 table it last sent, and that every super-peer's depth-1
    /// table as sent is its table joined with its neighbours' as they are now (after patches
    /// are out: call it with the network settled).
    pub fn check_routes(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (a, node) in self.nodes.iter().enumerate() {
            let Machine::SuperPeer(s) = &node.machine else {
                continue;
            };
            for conn in s.neighbour_conns() {
                let Some(&(b, _, _)) = self.links.get(&(a, conn)) else {
                    continue;
                };
                let Machine::SuperPeer(peer) = &self.nodes[b].machine else {
                    continue;
                };
                let held = s.neighbour_table(conn).map(|t| t.slots());
                let has = peer.route_slots();
                if held.as_ref() != Some(&has) {
                    problems.push(format!(
                        "super-peer {a} holds {:?} slots for neighbour {b}, which has {}",
                        held.map(|h| h.len()),
                        has.len()
                    ));
                }
                // Depth 1: the table the neighbour sent last.
                if let Some(has) = peer.aggregate_slots() {
                    let held = s.neighbour_aggregate(conn).map(|t| t.slots());
                    if held.as_ref() != Some(&has) {
                        problems.push(format!(
                            "super-peer {a} holds {:?} depth-1 slots for neighbour {b}, which sent {}",
                            held.map(|h| h.len()),
                            has.len()
                        ));
                    }
                }
            }
            // What it sent last is what it is made of now.
            if let Some(sent) = s.aggregate_slots() {
                let now = s.aggregate_now();
                if sent != now {
                    problems.push(format!(
                        "super-peer {a} sent a depth-1 table of {} slots; it is now {}",
                        sent.len(),
                        now.len()
                    ));
                }
            }
        }
        problems
    }

    /// The live super-peers that node `n` is attached to (empty for a super-peer).
    pub fn attachments(&self, n: usize) -> Vec<usize> {
        let Machine::Leaf(l) = &self.nodes[n].machine else {
            return Vec::new();
        };
        l.attached()
            .into_iter()
            .filter_map(|(conn, _)| self.links.get(&(n, conn)).map(|(p, _, _)| *p))
            .filter(|&p| self.nodes[p].role() == Some(NodeRole::SuperPeer))
            .collect()
    }

    /// The live super-peers neighbouring super-peer `n`.
    pub fn neighbours(&self, n: usize) -> Vec<usize> {
        let Machine::SuperPeer(s) = &self.nodes[n].machine else {
            return Vec::new();
        };
        s.neighbour_conns()
            .into_iter()
            .filter_map(|conn| self.links.get(&(n, conn)).map(|(p, _, _)| *p))
            .filter(|&p| self.nodes[p].role() == Some(NodeRole::SuperPeer))
            .collect()
    }

    /// Checks the overlay's invariants; returns what is wrong (empty: all hold).
    /// - every live leaf is attached to at least one live super-peer;
    /// - the live super-peers form one connected mesh;
    /// - no super-peer serves more leaves than its slots;
    /// - every node kept each role at least as long as hysteresis demands.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let sps: Vec<usize> = (0..self.nodes.len())
            .filter(|&n| self.nodes[n].role() == Some(NodeRole::SuperPeer))
            .collect();
        for n in 0..self.nodes.len() {
            if self.nodes[n].role() == Some(NodeRole::Leaf) && self.attachments(n).is_empty() {
                problems.push(format!("leaf {n} is attached to no live super-peer"));
            }
        }
        if let Some(&first) = sps.first() {
            let mut seen = vec![first];
            let mut i = 0;
            while i < seen.len() {
                for p in self.neighbours(seen[i]) {
                    if !seen.contains(&p) {
                        seen.push(p);
                    }
                }
                i += 1;
            }
            if seen.len() != sps.len() {
                problems.push(format!(
                    "the mesh is split: {} of {} super-peers reachable from {first}",
                    seen.len(),
                    sps.len()
                ));
            }
        }
        for &n in &sps {
            if let Machine::SuperPeer(s) = &self.nodes[n].machine {
                let leaves = s.leaf_conns().len() as u32;
                if leaves > self.config.superpeer.leaf_slots {
                    problems.push(format!(
                        "super-peer {n} serves {leaves} leaves with {} slots",
                        self.config.superpeer.leaf_slots
                    ));
                }
            }
        }
        let role = self.config.role;
        for (n, node) in self.nodes.iter().enumerate() {
            for w in node.changes.windows(2) {
                let ((t0, r0), (t1, _)) = (w[0], w[1]);
                let stint = t1 - t0;
                let first = t0 == node.joined;
                // A super-peer stint lasts at least the minimum; a leaf stint after a demotion
                // lasts at least the back-off. (A node's first leaf stint may end early: a
                // leaf that finds no super-peer promotes itself.)
                let need = match r0 {
                    NodeRole::SuperPeer => role.min_role_time,
                    NodeRole::Leaf if first => Duration::ZERO,
                    NodeRole::Leaf => role.demotion_backoff,
                };
                if stint < need {
                    problems.push(format!(
                        "node {n} left role {r0:?} after {stint:?} (< {need:?})"
                    ));
                }
            }
        }
        problems
    }

    /// Counts: (live leaves, live super-peers).
    pub fn census(&self) -> (usize, usize) {
        let leaves = self
            .nodes
            .iter()
            .filter(|n| n.role() == Some(NodeRole::Leaf))
            .count();
        let sps = self
            .nodes
            .iter()
            .filter(|n| n.role() == Some(NodeRole::SuperPeer))
            .count();
        (leaves, sps)
    }
}
