//! Queries and their hits: a query flooded to the neighbours with a TTL, once per query id
//! (the seen-cache), and not to a neighbour whose route table rules out a match; hits, from
//! the local index or a neighbour, routed back the way their query came.

use std::time::Instant;

use wire::{FileRecord, Hit, Message, Query, QueryHits, QueryId, Source};

use super::*;

impl SuperPeer {
    /// The driver's answer to [`Event::Search`]: hits from the local index, as (leaf connection,
    /// file, score). Hits of leaves that have gone meanwhile are dropped.
    pub fn handle_local_hits(
        &mut self,
        now: Instant,
        query: QueryId,
        hits: Vec<(ConnId, FileRecord, f32)>,
    ) {
        let hits: Vec<Hit> = hits
            .into_iter()
            .take(self.config.max_local_hits)
            .filter_map(|(leaf, file, score)| {
                let c = self.conns.get(&leaf).filter(|c| !c.closing)?;
                let PeerState::Leaf {
                    node,
                    source: Some(addr),
                    reachable,
                    ..
                } = c.state
                else {
                    return None;
                };
                Some(Hit {
                    source: Source {
                        node,
                        addr,
                        reachable,
                        via: self.listen,
                    },
                    file,
                    score,
                })
            })
            .collect();
        if !hits.is_empty() {
            self.on_hits(now, None, QueryHits { query, hits });
        }
    }

    pub(super) fn on_query(&mut self, now: Instant, from: ConnId, mut query: Query) {
        if query.hops > self.config.max_ttl {
            log::debug!(
                "dropping query {} with {} hops",
                query.id.short(),
                query.hops
            );
            return;
        }
        query.ttl = query
            .ttl
            .min(self.config.max_ttl.saturating_sub(query.hops));
        let seen = Seen {
            origin: Origin::Conn(from),
            ttl: query.ttl,
            asked: Vec::new(),
            hits: 0,
        };
        if !self.seen.insert(now, query.id, seen, from) {
            self.stats.duplicates_dropped += 1;
            // A copy that came the short way can carry more TTL than the one that arrived
            // first the long way: forward it again (but answer only once), or super-peers
            // within reach would be missed.
            let Some(first) = self.seen.get_mut(now, &query.id) else {
                return;
            };
            if query.ttl <= first.ttl {
                return;
            }
            first.ttl = query.ttl;
        } else {
            self.stats.queries_processed += 1;
            self.events.push_back(Event::Search {
                query: query.id,
                search: query.search.clone(),
            });
        }
        if query.ttl == 0 {
            return;
        }
        let from_leaf = matches!(
            self.conns.get(&from).map(|c| &c.state),
            Some(PeerState::Leaf { .. })
        );
        if from_leaf && !self.dynamic.contains_key(&query.id) {
            if let Some(dq) = self.config.dynamic {
                return self.start_dynamic(now, from, query, dq);
            }
        }
        let forward = Query {
            ttl: query.ttl - 1,
            hops: query.hops + 1,
            ..query
        };
        // The words are needed only where a table decides: on the last two hops.
        let hashes = if (forward.ttl == 0 && self.config.last_hop_routing)
            || (forward.ttl == 1 && self.config.two_hop_routing)
        {
            routing::search_hashes(self.config.analyzer, &forward.search)
        } else {
            Vec::new()
        };
        for id in self.neighbour_conns() {
            if id != from {
                self.forward(now, id, &forward, &hashes);
            }
        }
    }

    /// Sends `query` to neighbour `to`, unless the neighbour's route table rules out a match
    /// for `hashes`: its own table on the query's last hop, its depth-1 table on the hop before
    /// (a neighbour with no such table yet gets it).
    pub(super) fn forward(&mut self, now: Instant, to: ConnId, query: &Query, hashes: &[u64]) {
        if let Some(depth) = self.routes.rules_out(&self.config, to, query.ttl, hashes) {
            self.stats.queries_filtered += 1;
            if depth == 1 {
                self.stats.queries_filtered_two_hop += 1;
            }
            return;
        }
        // A query of one of our own leaves, or relayed from a neighbour.
        let local = self.seen.get(now, &query.id).is_some_and(|s| {
            let Origin::Conn(c) = s.origin;
            self.conns
                .get(&c)
                .is_some_and(|c| matches!(c.state, PeerState::Leaf { .. }))
        });
        let config = &self.config;
        if !self
            .conns
            .get_mut(&to)
            .is_some_and(|c| c.budget.take(now, config, local))
        {
            self.stats.queries_shaped += 1;
            return;
        }
        if let Some(seen) = self.seen.get_mut(now, &query.id) {
            if !seen.asked.contains(&to) {
                seen.asked.push(to);
            }
        }
        self.stats.queries_forwarded += 1;
        self.send(to, Message::Query(query.clone()));
    }

    /// Hits for a query, from neighbour `from` (or the local index): routed back the way the
    /// query came, if they came from a neighbour it was sent to, up to
    /// [`Config::max_hits_per_query`].
    pub(super) fn on_hits(&mut self, now: Instant, from: Option<ConnId>, hits: QueryHits) {
        let QueryHits {
            query,
            hits: mut list,
        } = hits;
        let Some(seen) = self.seen.get_mut(now, &query) else {
            self.stats.hits_dropped += list.len() as u64;
            return;
        };
        if let Some(f) = from.filter(|f| !seen.asked.contains(f)) {
            log::debug!(
                "dropping {} hits for query {} from {f}, which was not asked",
                list.len(),
                query.short()
            );
            self.stats.hits_dropped += list.len() as u64;
            return;
        }
        let room = self.config.max_hits_per_query.saturating_sub(seen.hits);
        if list.len() > room {
            self.stats.hits_dropped += (list.len() - room) as u64;
            list.truncate(room);
        }
        let Origin::Conn(to) = seen.origin;
        if list.is_empty() || self.conns.get(&to).is_none_or(|c| c.closing) {
            self.stats.hits_dropped += list.len() as u64;
            return;
        }
        seen.hits += list.len();
        let n = list.len() as u64;
        self.stats.hits_routed += n;
        self.dynamic_hits(query, n as usize);
        let mut hits = list;
        while !hits.is_empty() {
            let rest = hits.split_off(hits.len().min(self.config.hits_per_message));
            self.send(to, Message::QueryHits(QueryHits { query, hits }));
            hits = rest;
        }
    }
}
