//! The host cache: super-peers a node knows of, with their load, how fresh the news is, and how
//! often they failed to answer. Time is passed in.
//!
//! Entries come from configured bootstrap addresses (seeds, never evicted for age), from
//! `Hosts` messages, and from direct contact.
//!
//! Entries are trusted in proportion to their source. What a peer tells us ([`HostCache::add_from`])
//! is hearsay: it never changes the load of a super-peer we talked to ourselves, it is evicted
//! before anything we heard first-hand, one peer's hearsay holds at most
//! [`HostCache::share`] of the cache (its own oldest goes first), and first-hand entries are
//! offered to dial and passed on before any hearsay. So a hostile peer can add addresses, but
//! not push out the super-peers this node knows, nor get its own tried or spread before them
//! by calling them fresh. A failed dial backs the entry off (1 s, doubling,
//! up to 5 min) and after [`MAX_FAILURES`] in a row drops it (seeds excepted). When full, the
//! stalest non-seed entry goes. The driver saves [`HostCache::export`] on disk so a restart needs
//! no bootstrap address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use wire::{HostEntry, Load};

/// Consecutive failures after which a (non-seed) entry is forgotten.
pub const MAX_FAILURES: u32 = 6;

/// One known super-peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Where it accepts connections.
    pub addr: SocketAddr,
    /// Its load when last heard of.
    pub load: Load,
    /// When it was last heard of (directly or through others).
    pub heard: Instant,
    /// Failed dials in a row.
    pub failures: u32,
    /// Not to be dialled before this time.
    pub retry_at: Instant,
    /// A configured bootstrap address: kept whatever happens.
    pub seed: bool,
    /// We talked to it ourselves (not only heard of it).
    pub direct: bool,
    /// Who told us of it, for hearsay (`None`: ourselves, or a file we saved).
    pub source: Option<IpAddr>,
}

impl Host {
    /// This host as news to pass on at `now`.
    pub fn entry(&self, now: Instant) -> HostEntry {
        let age = now.saturating_duration_since(self.heard).as_secs();
        HostEntry {
            addr: self.addr,
            load: self.load,
            age_s: age.min(u32::MAX as u64) as u32,
        }
    }
}

/// Known super-peers; see the module docs.
#[derive(Debug, Clone)]
pub struct HostCache {
    hosts: HashMap<SocketAddr, Host>,
    capacity: usize,
}

impl HostCache {
    /// An empty cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        HostCache {
            hosts: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Adds a bootstrap address (kept even when it fails).
    pub fn add_seed(&mut self, now: Instant, addr: SocketAddr) {
        let h = self.hosts.entry(addr).or_insert_with(|| Host {
            addr,
            load: Load::default(),
            heard: now,
            failures: 0,
            retry_at: now,
            seed: true,
            direct: false,
            source: None,
        });
        h.seed = true;
    }

    /// News of a super-peer from a file we saved; fresher news replaces older.
    pub fn add(&mut self, now: Instant, entry: HostEntry) {
        self.add_entry(now, entry, None);
    }

    /// News of a super-peer from the peer at `from` (hearsay; see the module docs).
    pub fn add_from(&mut self, now: Instant, entry: HostEntry, from: IpAddr) {
        // One teller per network (an IPv6 /64), as bans count them.
        let from = wire::network_of(from);
        if !self.hosts.contains_key(&entry.addr) {
            // At its share: the teller's own oldest hearsay makes room.
            let told: Vec<&Host> = self
                .hosts
                .values()
                .filter(|h| !h.direct && !h.seed && h.source == Some(from))
                .collect();
            if told.len() >= self.share() {
                let oldest = told
                    .iter()
                    .min_by_key(|h| (h.heard, h.addr))
                    .map(|h| h.addr)
                    .expect("at least one");
                self.hosts.remove(&oldest);
            }
        }
        self.add_entry(now, entry, Some(from));
    }

    /// How many hearsay entries one peer may hold: a tenth of the cache, and at least a whole
    /// `Hosts` message.
    pub fn share(&self) -> usize {
        (self.capacity / 10).max(crate::superpeer::HOSTS_SHARED)
    }

    fn add_entry(&mut self, now: Instant, entry: HostEntry, from: Option<IpAddr>) {
        let heard = now
            .checked_sub(Duration::from_secs(entry.age_s as u64))
            .unwrap_or(now);
        match self.hosts.get_mut(&entry.addr) {
            Some(h) => {
                if heard >= h.heard {
                    h.heard = heard;
                    // What we saw ourselves is not overwritten by what others say.
                    if !h.direct {
                        h.load = entry.load;
                    }
                }
            }
            None => {
                self.hosts.insert(
                    entry.addr,
                    Host {
                        addr: entry.addr,
                        load: entry.load,
                        heard,
                        failures: 0,
                        retry_at: now,
                        seed: false,
                        direct: false,
                        source: from,
                    },
                );
                self.evict();
            }
        }
    }

    /// We talked to it: its load now, and no failures.
    pub fn heard_from(&mut self, now: Instant, addr: SocketAddr, load: Load) {
        let h = self.hosts.entry(addr).or_insert_with(|| Host {
            addr,
            load,
            heard: now,
            failures: 0,
            retry_at: now,
            seed: false,
            direct: true,
            source: None,
        });
        h.direct = true;
        h.source = None;
        h.load = load;
        h.heard = now;
        h.failures = 0;
        h.retry_at = now;
        self.evict();
    }

    /// A dial failed (or it refused us): back off, and forget it after repeated failures.
    pub fn failed(&mut self, now: Instant, addr: SocketAddr) {
        let Some(h) = self.hosts.get_mut(&addr) else {
            return;
        };
        h.failures += 1;
        let backoff = Duration::from_secs(1) * 2u32.saturating_pow(h.failures - 1);
        h.retry_at = now + backoff.min(Duration::from_secs(300));
        if h.failures >= MAX_FAILURES && !h.seed {
            self.hosts.remove(&addr);
        }
    }

    /// It said it is full: try it again only after `wait`.
    pub fn full(&mut self, now: Instant, addr: SocketAddr, wait: Duration) {
        if let Some(h) = self.hosts.get_mut(&addr) {
            h.load.leaves = h.load.leaf_slots;
            h.retry_at = now + wait;
        }
    }

    /// The node at `addr` answered, but not as a super-peer (it demoted, or never was one):
    /// forgotten, or for a seed (which stays) backed off like a failure.
    pub fn not_superpeer(&mut self, now: Instant, addr: SocketAddr) {
        if self.hosts.get(&addr).is_some_and(|h| h.seed) {
            self.failed(now, addr);
        } else {
            self.hosts.remove(&addr);
        }
    }

    /// Forgets an entry (a node that is no longer a super-peer). Seeds stay.
    pub fn remove(&mut self, addr: &SocketAddr) {
        if self.hosts.get(addr).is_some_and(|h| !h.seed) {
            self.hosts.remove(addr);
        }
    }

    /// Up to `n` addresses to dial now, best first. For a leaf looking for a super-peer
    /// (`want_room`): free slots first, then fewest failures, freshest news, most free slots.
    /// For a super-peer looking for neighbours: fewest failures, then freshest news. `skip`
    /// excludes addresses already in use.
    pub fn candidates(
        &self,
        now: Instant,
        n: usize,
        want_room: bool,
        skip: &dyn Fn(&SocketAddr) -> bool,
    ) -> Vec<SocketAddr> {
        let mut ready: Vec<&Host> = self
            .hosts
            .values()
            .filter(|h| h.retry_at <= now && !skip(&h.addr))
            .collect();
        let key = |h: &&Host| {
            let unknown = h.load.leaf_slots == 0; // a seed never heard from: worth a try
            let has_room = want_room && (unknown || h.load.free() > 0);
            (
                std::cmp::Reverse(has_room),
                std::cmp::Reverse(h.direct || h.seed),
                h.failures,
                std::cmp::Reverse(h.heard),
                std::cmp::Reverse(h.load.free()),
                h.addr,
            )
        };
        // Only the best `n` need an order: select them in linear time, then sort those (the
        // key ends in the address, so ties cannot make the choice depend on hash order).
        if n == 0 {
            return Vec::new();
        }
        if ready.len() > n {
            ready.select_nth_unstable_by_key(n - 1, key);
            ready.truncate(n);
        }
        ready.sort_by_key(key);
        ready.into_iter().map(|h| h.addr).collect()
    }

    /// Forgets (non-seed) entries not heard of for `max_age`: a super-peer that stopped
    /// announcing itself has gone or demoted.
    pub fn expire(&mut self, now: Instant, max_age: Duration) {
        self.hosts
            .retain(|_, h| h.seed || now.saturating_duration_since(h.heard) <= max_age);
    }

    /// Entries to tell others about: the freshest `limit` heard of within `max_age`, with
    /// their age (stale news is not passed on).
    pub fn entries(&self, now: Instant, limit: usize, max_age: Duration) -> Vec<HostEntry> {
        let mut all: Vec<&Host> = self
            .hosts
            .values()
            .filter(|h| {
                h.failures == 0
                    && h.load.leaf_slots > 0
                    && now.saturating_duration_since(h.heard) <= max_age
            })
            .collect();
        all.sort_by_key(|h| {
            (
                std::cmp::Reverse(h.direct),
                std::cmp::Reverse(h.heard),
                h.addr,
            )
        });
        all.into_iter().take(limit).map(|h| h.entry(now)).collect()
    }

    /// Every entry, for saving (seeds included; ages relative to `now`).
    pub fn export(&self, now: Instant) -> Vec<HostEntry> {
        let mut all: Vec<HostEntry> = self.hosts.values().map(|h| h.entry(now)).collect();
        all.sort_by_key(|e| (e.age_s, e.addr));
        all
    }

    /// The entry for `addr`.
    pub fn get(&self, addr: &SocketAddr) -> Option<&Host> {
        self.hosts.get(addr)
    }

    /// Every entry.
    pub fn iter(&self) -> impl Iterator<Item = &Host> {
        self.hosts.values()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    fn evict(&mut self) {
        while self.hosts.len() > self.capacity {
            let stalest = self
                .hosts
                .values()
                .filter(|h| !h.seed)
                .min_by_key(|h| (h.direct, std::cmp::Reverse(h.failures), h.heard, h.addr))
                .map(|h| h.addr);
            match stalest {
                Some(addr) => {
                    self.hosts.remove(&addr);
                }
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(n: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], n))
    }

    fn entry(n: u16, leaves: u32, age_s: u32) -> HostEntry {
        HostEntry {
            addr: addr(n),
            load: Load {
                leaves,
                leaf_slots: 10,
                neighbours: 2,
            },
            age_s,
        }
    }

    #[test]
    fn candidates_prefer_room_then_reliability_then_freshness() {
        let t = Instant::now() + Duration::from_secs(1000);
        let mut c = HostCache::new(10);
        c.add(t, entry(1, 10, 5)); // full
        c.add(t, entry(2, 3, 50)); // room, older news
        c.add(t, entry(3, 3, 5)); // room, fresh
        c.add(t, entry(4, 1, 1)); // room, fresh, but fails
        c.failed(t, addr(4));
        assert_eq!(
            c.candidates(t, 10, true, &|_| false),
            vec![addr(3), addr(2), addr(1)]
        );
        // After its back-off the failing one is tried again, after the reliable ones.
        let later = t + Duration::from_secs(2);
        assert_eq!(c.candidates(later, 10, true, &|_| false)[2], addr(4));
        assert_eq!(
            c.candidates(later, 1, true, &|a| *a == addr(3)),
            vec![addr(2)]
        );
    }

    #[test]
    fn repeated_failures_forget_all_but_seeds() {
        let t = Instant::now();
        let mut c = HostCache::new(10);
        c.add(t, entry(1, 0, 0));
        c.add_seed(t, addr(2));
        for _ in 0..MAX_FAILURES {
            c.failed(t, addr(1));
            c.failed(t, addr(2));
        }
        assert!(c.get(&addr(1)).is_none());
        assert!(c.get(&addr(2)).is_some());
    }

    #[test]
    fn bounded_and_the_stalest_goes_first() {
        let t = Instant::now() + Duration::from_secs(1000);
        let mut c = HostCache::new(3);
        c.add_seed(t, addr(9));
        for n in 1..=5 {
            c.add(t, entry(n, 0, 100 - n as u32));
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&addr(9)).is_some(), "seeds are not evicted");
        assert!(c.get(&addr(5)).is_some() && c.get(&addr(4)).is_some());
    }

    #[test]
    fn stale_news_is_neither_shared_nor_kept() {
        let t = Instant::now() + Duration::from_secs(1000);
        let mut c = HostCache::new(10);
        c.add_seed(t, addr(9));
        c.add(t, entry(1, 1, 5));
        c.add(t, entry(2, 1, 500));
        let shared: Vec<_> = c
            .entries(t, 10, Duration::from_secs(60))
            .iter()
            .map(|e| e.addr)
            .collect();
        assert_eq!(shared, vec![addr(1)]);
        c.expire(t, Duration::from_secs(60));
        assert!(c.get(&addr(2)).is_none());
        assert!(c.get(&addr(9)).is_some(), "seeds stay");
        // A super-peer looking for neighbours ranks freshness before room.
        let mut d = HostCache::new(10);
        d.add(t, entry(3, 10, 1)); // full, fresh
        d.add(t, entry(4, 0, 90)); // empty, stale
        assert_eq!(
            d.candidates(t, 2, false, &|_| false),
            vec![addr(3), addr(4)]
        );
        assert_eq!(d.candidates(t, 2, true, &|_| false), vec![addr(4), addr(3)]);
    }

    #[test]
    fn fresher_news_wins_and_export_round_trips() {
        let t = Instant::now() + Duration::from_secs(1000);
        let mut c = HostCache::new(10);
        c.add(t, entry(1, 1, 10));
        c.add(t, entry(1, 7, 30)); // older news: ignored
        assert_eq!(c.get(&addr(1)).unwrap().load.leaves, 1);
        let mut d = HostCache::new(10);
        for e in c.export(t) {
            d.add(t, e);
        }
        assert_eq!(d.get(&addr(1)).unwrap().load.leaves, 1);
    }

    fn at(addr: SocketAddr) -> HostEntry {
        HostEntry {
            addr,
            load: Load::default(),
            age_s: 0,
        }
    }

    #[test]
    fn hearsay_cannot_push_out_what_we_know_or_look_fresher() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(3600);
        let mut c = HostCache::new(300);
        let mine: Vec<SocketAddr> = (0..50)
            .map(|i| SocketAddr::from(([10, 0, 0, i], 7000)))
            .collect();
        for &a in &mine {
            c.heard_from(t0, a, Load::default());
        }
        let liar = IpAddr::from([6, 6, 6, 6]);
        let honest = IpAddr::from([10, 0, 0, 1]);
        c.add_from(now, at(SocketAddr::from(([10, 1, 0, 1], 7000))), honest);
        // A thousand fresh entries from one peer.
        for i in 0..1000u32 {
            let addr = SocketAddr::from(([66, (i >> 8) as u8, i as u8, 1], 7000));
            c.add_from(now, at(addr), liar);
        }
        let told = c.iter().filter(|h| h.source == Some(liar)).count();
        assert_eq!(
            told,
            c.share(),
            "one peer's hearsay holds at most its share"
        );
        assert!(
            mine.iter().all(|a| c.get(a).is_some()),
            "first-hand entries were pushed out"
        );
        assert!(c.get(&SocketAddr::from(([10, 1, 0, 1], 7000))).is_some());
        // Fresh hearsay is neither dialled nor passed on before what we know first-hand.
        let first = c.candidates(now, 50, false, &|_| false);
        assert!(first.iter().all(|a| mine.contains(a)), "{first:?}");
        let passed = c.entries(now, 50, Duration::from_secs(7200));
        assert!(passed.iter().all(|e| mine.contains(&e.addr)));
        // A peer cannot rewrite the load we saw.
        let full = Load {
            leaves: 300,
            leaf_slots: 300,
            ..Load::default()
        };
        c.heard_from(now, mine[0], full);
        let lie = HostEntry {
            addr: mine[0],
            load: Load {
                leaves: 0,
                leaf_slots: 300,
                ..Load::default()
            },
            age_s: 0,
        };
        c.add_from(now + Duration::from_secs(120), lie, liar);
        assert_eq!(c.get(&mine[0]).unwrap().load, full);
    }
}
