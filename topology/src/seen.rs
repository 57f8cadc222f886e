//! A bounded, time-limited cache of seen keys (query ids), with time passed in.
//!
//! Unlike a cache that reads the clock itself, every call takes `now`, so the simulator can run
//! it in virtual time. Entries expire `ttl` after insertion; when the cache is full the oldest
//! entry is evicted first, so memory is bounded whatever a peer sends.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Seen keys with a value each (for queries: where the query came from).
#[derive(Debug)]
pub struct SeenCache<K, V> {
    map: HashMap<K, (V, Instant)>,
    /// Insertion order with each entry's expiry; holds exactly the keys of `map`.
    order: VecDeque<(Instant, K)>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Hash + Eq + Clone, V> SeenCache<K, V> {
    /// A cache of at most `capacity` entries, each kept for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        assert!(capacity > 0, "a seen-cache needs room for one entry");
        SeenCache {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
            ttl,
        }
    }

    /// Records `key` if it is not already present; returns false for a duplicate.
    pub fn insert(&mut self, now: Instant, key: K, value: V) -> bool {
        self.expire(now);
        if self.map.contains_key(&key) {
            return false;
        }
        if self.map.len() >= self.capacity {
            if let Some((_, oldest)) = self.order.pop_front() {
                self.map.remove(&oldest);
            }
        }
        let expiry = now + self.ttl;
        self.map.insert(key.clone(), (value, expiry));
        self.order.push_back((expiry, key));
        true
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
        while let Some((expiry, _)) = self.order.front() {
            if *expiry > now {
                break;
            }
            let (_, key) = self.order.pop_front().expect("front exists");
            self.map.remove(&key);
        }
    }

    /// Entries held (expired ones may still count until the next call that expires).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// When the oldest entry expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.order.front().map(|(t, _)| *t)
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
        assert!(c.insert(t0, 1, "a"));
        assert!(!c.insert(t0 + Duration::from_secs(1), 1, "b"));
        assert_eq!(c.get(t0, &1), Some(&"a"));
        assert_eq!(c.get(t0 + Duration::from_secs(5), &1), None);
        assert!(c.insert(t0 + Duration::from_secs(6), 1, "c"));
    }

    proptest! {
        #[test]
        fn never_exceeds_capacity(keys in prop::collection::vec(0u32..50, 0..300), cap in 1usize..20) {
            let t0 = Instant::now();
            let mut c = SeenCache::new(cap, Duration::from_secs(100));
            for (i, k) in keys.iter().enumerate() {
                c.insert(t0 + Duration::from_millis(i as u64), *k, ());
                prop_assert!(c.len() <= cap);
                prop_assert_eq!(c.map.len(), c.order.len());
            }
        }
    }
}
