//! A bounded, time-limited cache of seen keys (query ids), with time passed in.
//!
//! Unlike a cache that reads the clock itself, every call takes `now`, so the simulator can run
//! it in virtual time. Entries expire `ttl` after insertion.
//!
//! Each entry has an owner (for queries: the connection it came from). When the cache is full,
//! the oldest entry of the owner holding the most goes: a peer that floods fresh keys evicts
//! its own entries, never the others' (whose reverse paths would otherwise be lost), and every
//! owner keeps at least an equal share. Memory stays bounded whatever a peer sends.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Seen keys with a value each (for queries: where the query came from), by owner.
#[derive(Debug)]
pub struct SeenCache<K, V, O> {
    map: HashMap<K, (V, Instant)>,
    /// Each owner's keys in insertion order with their expiry; together they hold exactly the
    /// keys of `map`. An owner with none is removed.
    owners: HashMap<O, VecDeque<(Instant, K)>>,
    capacity: usize,
    ttl: Duration,
    /// No entry expires before this (a lower bound: an eviction may leave it early), so
    /// `expire` scans the owners only when something may be due, not on every insert.
    due: Option<Instant>,
}

impl<K: Hash + Eq + Clone, V, O: Hash + Eq + Clone> SeenCache<K, V, O> {
    /// A cache of at most `capacity` entries, each kept for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        assert!(capacity > 0, "a seen-cache needs room for one entry");
        SeenCache {
            map: HashMap::new(),
            owners: HashMap::new(),
            due: None,
            capacity,
            ttl,
        }
    }

    /// Records `key` for `owner` if it is not already present; returns false for a duplicate.
    pub fn insert(&mut self, now: Instant, key: K, value: V, owner: O) -> bool {
        self.expire(now);
        if self.map.contains_key(&key) {
            return false;
        }
        if self.map.len() >= self.capacity {
            self.evict_from_largest(&owner);
        }
        let expiry = now + self.ttl;
        self.due = Some(self.due.map_or(expiry, |t| t.min(expiry)));
        self.map.insert(key.clone(), (value, expiry));
        self.owners
            .entry(owner)
            .or_default()
            .push_back((expiry, key));
        true
    }

    /// Drops the oldest entry of the owner that holds the most: `inserting`'s own if it is
    /// one of those.
    fn evict_from_largest(&mut self, inserting: &O) {
        let most = self.owners.values().map(|k| k.len()).max().unwrap_or(0);
        let owner = if self.held_by(inserting) == most {
            inserting.clone()
        } else {
            let Some(o) = self.owners.iter().find(|(_, k)| k.len() == most) else {
                return;
            };
            o.0.clone()
        };
        let keys = self.owners.get_mut(&owner).expect("just found");
        if let Some((_, key)) = keys.pop_front() {
            self.map.remove(&key);
        }
        if keys.is_empty() {
            self.owners.remove(&owner);
        }
    }

    /// The value recorded for `key`, if it is present and not expired.
    pub fn get(&self, now: Instant, key: &K) -> Option<&V> {
        self.map
            .get(key)
            .filter(|(_, expiry)| *expiry > now)
            .map(|(v, _)| v)
    }

    /// The value recorded for `key`, to update, if it is present and not expired.
    pub fn get_mut(&mut self, now: Instant, key: &K) -> Option<&mut V> {
        self.map
            .get_mut(key)
            .filter(|(_, expiry)| *expiry > now)
            .map(|(v, _)| v)
    }

    /// Drops expired entries.
    pub fn expire(&mut self, now: Instant) {
        if self.due.is_none_or(|t| t > now) {
            return;
        }
        let map = &mut self.map;
        self.owners.retain(|_, keys| {
            while let Some((expiry, _)) = keys.front() {
                if *expiry > now {
                    break;
                }
                let (_, key) = keys.pop_front().expect("front exists");
                map.remove(&key);
            }
            !keys.is_empty()
        });
        self.due = self.next_expiry();
    }

    /// Entries held (expired ones may still count until the next call that expires).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Entries `owner` holds.
    pub fn held_by(&self, owner: &O) -> usize {
        self.owners.get(owner).map_or(0, |k| k.len())
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// When the oldest entry expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.owners
            .values()
            .filter_map(|k| k.front().map(|(t, _)| *t))
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duplicates_are_refused_until_expiry() {
        let t0 = Instant::now();
        let mut c = SeenCache::new(10, Duration::from_secs(5));
        assert!(c.insert(t0, 1, "a", ()));
        assert!(!c.insert(t0 + Duration::from_secs(1), 1, "b", ()));
        assert_eq!(c.get(t0, &1), Some(&"a"));
        assert_eq!(c.get(t0 + Duration::from_secs(5), &1), None);
        assert!(c.insert(t0 + Duration::from_secs(6), 1, "c", ()));
    }

    #[test]
    fn a_flood_from_one_owner_evicts_only_its_own() {
        let t0 = Instant::now();
        let mut c = SeenCache::new(100, Duration::from_secs(120));
        for k in 0..30u32 {
            assert!(c.insert(t0, k, (), "honest"));
        }
        for k in 1000..100_000u32 {
            c.insert(
                t0 + Duration::from_millis(u64::from(k) / 100),
                k,
                (),
                "flood",
            );
        }
        assert_eq!(c.len(), 100);
        assert_eq!(c.held_by(&"honest"), 30, "the flood evicted honest entries");
        assert!((0..30).all(|k| c.get(t0 + Duration::from_secs(60), &k).is_some()));
        // Both at capacity: each keeps at least an equal share.
        for k in 200_000..200_100u32 {
            c.insert(t0 + Duration::from_secs(2), k, (), "honest");
        }
        assert_eq!(c.held_by(&"honest"), 50);
        assert_eq!(c.held_by(&"flood"), 50);
    }

    proptest! {
        #[test]
        fn never_exceeds_capacity(keys in prop::collection::vec(0u32..50, 0..300), cap in 1usize..20) {
            let t0 = Instant::now();
            let mut c = SeenCache::new(cap, Duration::from_secs(100));
            for (i, k) in keys.iter().enumerate() {
                c.insert(t0 + Duration::from_millis(i as u64), *k, (), k % 3);
                prop_assert!(c.len() <= cap);
                prop_assert_eq!(c.map.len(), c.owners.values().map(|k| k.len()).sum::<usize>());
            }
        }
    }
}
