//! Dynamic querying: a leaf's query goes to a few neighbours first, then wider, step by step,
//! until the leaf has [`DynamicQuerying::target`] results or every neighbour has had it with the
//! full TTL.
//!
//! Each step forwards the query through the flooding core ([`SuperPeer::forward`], which keeps
//! the seen-cache's record of who was asked), so this is an `impl SuperPeer` block over the
//! super-peer's map of [`Dynamic`] searches rather than a struct of its own.

use std::time::Instant;

use wire::{Query, QueryId};

use super::{DynamicQuerying, SuperPeer};
use crate::routing;
use crate::ConnId;

/// A leaf's query being searched dynamically by this super-peer.
#[derive(Debug)]
pub(super) struct Dynamic {
    /// The leaf that asked.
    leaf: ConnId,
    /// The query as the leaf sent it (its TTL is the horizon).
    query: Query,
    hashes: Vec<u64>,
    /// Results routed to the leaf so far (local ones included).
    hits: usize,
    /// Neighbours not yet sent the query, the likeliest first.
    todo: Vec<ConnId>,
    /// Neighbours sent it with less than the full TTL (asked again at the end).
    shallow: Vec<ConnId>,
    /// Super-peers reached so far, estimated.
    reached: f64,
    /// When to take the next step.
    next: Instant,
    /// Gives up after this (the seen-cache forgets the query then too).
    until: Instant,
}

impl SuperPeer {
    /// Leaves' queries still being searched dynamically.
    #[cfg(any(test, feature = "sim"))]
    pub fn dynamic_in_progress(&self) -> usize {
        self.dynamic.len()
    }

    /// Leaf `conn` is gone: its searches end.
    pub(super) fn dynamic_leaf_gone(&mut self, conn: ConnId) {
        self.dynamic.retain(|_, d| d.leaf != conn);
    }

    /// `n` hits for `query` went back to its leaf: a dynamic search of it ends once the leaf
    /// has the target.
    pub(super) fn dynamic_hits(&mut self, query: QueryId, n: usize) {
        if let Some(d) = self.dynamic.get_mut(&query) {
            d.hits += n;
            if self.config.dynamic.is_none_or(|dq| d.hits >= dq.target) {
                // The leaf has enough: ask nobody else.
                self.dynamic.remove(&query);
            }
        }
    }

    /// When the next step of a dynamic search is due.
    pub(super) fn dynamic_due(&self) -> Option<Instant> {
        self.dynamic.values().map(|d| d.next).min()
    }

    /// Super-peers a query sent to one neighbour with `ttl` reaches, estimated from our own
    /// degree (each reached super-peer passes it to all its neighbours but one).
    fn reach(&self, ttl: u8) -> f64 {
        let fan = (self.stats.neighbours.max(2) - 1) as f64;
        (0..=ttl).map(|i| fan.powi(i32::from(i))).sum()
    }

    /// Starts searching a leaf's query dynamically: a probe with a short TTL to a few
    /// neighbours, the ones whose tables match first; [`SuperPeer::dynamic_step`] widens.
    pub(super) fn start_dynamic(
        &mut self,
        now: Instant,
        leaf: ConnId,
        query: Query,
        dq: DynamicQuerying,
    ) {
        self.stats.dynamic_queries += 1;
        let hashes = routing::search_hashes(self.config.analyzer, &query.search);
        let mut todo = self.neighbour_conns();
        // Neighbours that can answer themselves first, then those with an answer one hop on
        // (a stable sort keeps the order of ids).
        todo.sort_by_key(|&c| {
            let (here, next) = self.routes.may_match(&self.config, c, &hashes);
            (!here, !next)
        });
        let horizon = query.ttl - 1;
        let ttl = dq.probe_ttl.min(horizon);
        let probe: Vec<ConnId> = todo.drain(..dq.probe_width.min(todo.len())).collect();
        let forward = Query {
            ttl,
            hops: query.hops + 1,
            ..query.clone()
        };
        for &c in &probe {
            self.forward(now, c, &forward, &hashes);
        }
        let reached = 1.0 + probe.len() as f64 * self.reach(ttl);
        let shallow = if ttl < horizon { probe } else { Vec::new() };
        let d = Dynamic {
            leaf,
            query,
            hashes,
            hits: 0,
            todo,
            shallow,
            reached,
            next: now + dq.hop_wait * (u32::from(ttl) + 1),
            until: now + self.config.seen_ttl,
        };
        self.dynamic.insert(forward.id, d);
    }

    /// Takes the steps of dynamic queries that are due.
    pub(super) fn dynamic_steps(&mut self, now: Instant) {
        let mut due: Vec<QueryId> = self
            .dynamic
            .iter()
            .filter(|(_, d)| d.next <= now)
            .map(|(&id, _)| id)
            .collect();
        due.sort();
        for id in due {
            self.dynamic_step(now, id);
        }
    }

    /// One step of a dynamic query: from the results per super-peer reached so far, estimate
    /// how far the query must still go, and send it to the next neighbour(s) with the TTL that
    /// should bring the rest, or (nothing found yet) to twice as many neighbours as before with
    /// the full TTL. Ends when the leaf has the target or every neighbour had the full TTL.
    fn dynamic_step(&mut self, now: Instant, id: QueryId) {
        let Some(mut d) = self.dynamic.remove(&id) else {
            return;
        };
        let Some(dq) = self.config.dynamic else {
            return;
        };
        let leaf_here = self.conns.get(&d.leaf).is_some_and(|c| !c.closing);
        if d.hits >= dq.target || now >= d.until || !leaf_here {
            return;
        }
        let live = self.neighbour_conns();
        d.todo.retain(|c| live.contains(c));
        d.shallow.retain(|c| live.contains(c));
        let horizon = d.query.ttl - 1;
        let needed = (dq.target - d.hits) as f64;
        let rate = d.hits as f64 / d.reached;
        let (next, ttl): (Vec<ConnId>, u8) = if !d.todo.is_empty() {
            if rate > 0.0 {
                let k = (needed / (rate * self.reach(horizon))).ceil() as usize;
                if k <= 1 {
                    let ttl = (0..=horizon)
                        .find(|&t| rate * self.reach(t) >= needed)
                        .unwrap_or(horizon);
                    (vec![d.todo.remove(0)], ttl)
                } else {
                    (d.todo.drain(..k.min(d.todo.len())).collect(), horizon)
                }
            } else {
                let asked = (live.len() - d.todo.len()).max(1);
                (d.todo.drain(..asked.min(d.todo.len())).collect(), horizon)
            }
        } else if !d.shallow.is_empty() {
            (std::mem::take(&mut d.shallow), horizon)
        } else {
            return; // the horizon is reached
        };
        let forward = Query {
            ttl,
            hops: d.query.hops + 1,
            ..d.query.clone()
        };
        for &c in &next {
            self.forward(now, c, &forward, &d.hashes);
        }
        d.reached += next.len() as f64 * self.reach(ttl);
        if ttl < horizon {
            d.shallow.extend(next);
        }
        d.next = now + dq.hop_wait * (u32::from(ttl) + 1);
        self.dynamic.insert(id, d);
    }
}
