//! A download's bounded peer set: which connected source to let go when the set is full and
//! other sources wait to be tried, as BitTorrent clients keep a bounded, rotating peer set per
//! torrent.
//!
//! A source is useless when it has delivered nothing for [`Rotation::idle`] (counted from when
//! it connected, its last verified chunk, or the last bytes it sent while our requests were
//! out, since a large chunk takes a while at a slow source): it holds nothing this download
//! lacks, or is slow beyond use. A source that keeps us queued is waiting for its turn, not
//! useless: it keeps its place (it would lose its place in the uploader's queue if let go).
//! When the set is full and a candidate waits, the most useless source goes: first one that
//! holds nothing we lack, then the one idle longest. At most one goes every
//! [`Rotation::every`], so the set turns over slowly.
//!
//! The rule is sans IO: the driver passes the facts of its sources and the time, and lets go
//! the source named.

use std::time::{Duration, Instant};

/// What the rule needs to know of one connected source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerFacts {
    /// The source's number.
    pub source: usize,
    /// When its connection came up.
    pub connected: Instant,
    /// When it last delivered: a chunk verified and kept, or bytes while requests were out.
    pub last_active: Option<Instant>,
    /// Whether it keeps us in its upload queue.
    pub queued: bool,
    /// Whether it holds a chunk this download lacks (`None`: it has not said what it holds).
    pub has_wanted: Option<bool>,
}

impl PeerFacts {
    /// Since when it has delivered nothing.
    fn idle_since(&self) -> Instant {
        self.last_active
            .map_or(self.connected, |t| t.max(self.connected))
    }
}

/// The rotation of one download's peer set; see the module docs.
#[derive(Debug, Clone)]
pub struct Rotation {
    idle: Duration,
    every: Duration,
    last: Option<Instant>,
}

impl Default for Rotation {
    /// 30 s without a chunk makes a source useless; one goes every 10 s at most.
    fn default() -> Self {
        Rotation::new(Duration::from_secs(30), Duration::from_secs(10))
    }
}

impl Rotation {
    /// A source with no chunk for `idle` is useless; at most one goes every `every`.
    pub fn new(idle: Duration, every: Duration) -> Self {
        Rotation {
            idle,
            every,
            last: None,
        }
    }

    /// How long a source may deliver nothing before it may be let go.
    pub fn idle(&self) -> Duration {
        self.idle
    }

    /// How often a source may be let go.
    pub fn every(&self) -> Duration {
        self.every
    }

    /// The set is full and a candidate waits: the source to let go now, if one is useless and
    /// the last went long enough ago. The caller lets it go.
    pub fn handle_full(&mut self, now: Instant, peers: &[PeerFacts]) -> Option<usize> {
        if self.last.is_some_and(|t| now < t + self.every) {
            return None;
        }
        let useless = peers
            .iter()
            .filter(|p| !p.queued && now.saturating_duration_since(p.idle_since()) >= self.idle);
        // Nothing wanted first, then the longest idle (then the lowest number, so the choice
        // does not depend on the order given).
        let pick =
            useless.min_by_key(|p| (p.has_wanted != Some(false), p.idle_since(), p.source))?;
        self.last = Some(now);
        Some(pick.source)
    }

    /// When [`Rotation::handle_full`] could next name a source, given these peers (None: none
    /// of them could become useless; a new peer brings its own time).
    pub fn poll_timeout(&self, peers: &[PeerFacts]) -> Option<Instant> {
        let soonest = peers
            .iter()
            .filter(|p| !p.queued)
            .map(|p| p.idle_since() + self.idle)
            .min()?;
        Some(match self.last {
            Some(t) => soonest.max(t + self.every),
            None => soonest,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(source: usize, connected: Instant) -> PeerFacts {
        PeerFacts {
            source,
            connected,
            last_active: None,
            queued: false,
            has_wanted: Some(true),
        }
    }

    #[test]
    fn a_source_that_delivers_is_kept_and_an_idle_one_goes() {
        let t0 = Instant::now();
        let mut r = Rotation::new(Duration::from_secs(30), Duration::from_secs(10));
        let mut busy = peer(0, t0);
        let idle = peer(1, t0);
        // Too soon for anyone.
        assert_eq!(
            r.handle_full(t0 + Duration::from_secs(29), &[busy, idle]),
            None
        );
        busy.last_active = Some(t0 + Duration::from_secs(25));
        assert_eq!(
            r.handle_full(t0 + Duration::from_secs(31), &[busy, idle]),
            Some(1)
        );
    }

    #[test]
    fn nothing_wanted_goes_first_and_a_queued_source_keeps_its_place() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_secs(100);
        let old_idle = peer(0, t0);
        let queued = PeerFacts {
            queued: true,
            ..peer(1, t0)
        };
        let useless = PeerFacts {
            has_wanted: Some(false),
            ..peer(2, t0 + Duration::from_secs(60))
        };
        let mut r = Rotation::default();
        assert_eq!(r.handle_full(now, &[old_idle, queued, useless]), Some(2));
        let mut r = Rotation::default();
        assert_eq!(r.handle_full(now, &[queued, old_idle]), Some(0));
        // Queued for ever so long: still waiting its turn, not let go.
        let mut r = Rotation::default();
        assert_eq!(r.handle_full(now, &[queued]), None);
        assert_eq!(r.poll_timeout(&[queued]), None);
        // Not said what it holds yet: not counted as holding nothing.
        let unknown = PeerFacts {
            has_wanted: None,
            ..peer(3, t0 + Duration::from_secs(10))
        };
        let mut r = Rotation::default();
        assert_eq!(r.handle_full(now, &[unknown, useless]), Some(2));
    }

    #[test]
    fn one_goes_per_interval() {
        let t0 = Instant::now();
        let mut r = Rotation::new(Duration::from_secs(30), Duration::from_secs(10));
        let peers = [peer(0, t0), peer(1, t0), peer(2, t0)];
        let at = t0 + Duration::from_secs(40);
        assert_eq!(r.handle_full(at, &peers), Some(0));
        assert_eq!(
            r.handle_full(at + Duration::from_secs(9), &peers[1..]),
            None
        );
        assert_eq!(
            r.poll_timeout(&peers[1..]),
            Some(at + Duration::from_secs(10))
        );
        assert_eq!(
            r.handle_full(at + Duration::from_secs(10), &peers[1..]),
            Some(1)
        );
    }

    #[test]
    fn the_next_look_is_when_the_first_could_become_idle() {
        let t0 = Instant::now();
        let r = Rotation::new(Duration::from_secs(30), Duration::from_secs(10));
        let mut a = peer(0, t0);
        a.last_active = Some(t0 + Duration::from_secs(5));
        let b = peer(1, t0 + Duration::from_secs(2));
        assert_eq!(r.poll_timeout(&[a, b]), Some(t0 + Duration::from_secs(32)));
        assert_eq!(r.poll_timeout(&[]), None);
    }
}
