//! A count of events in the current minute, for caps of so many a minute.

use std::time::{Duration, Instant};

/// Events counted since the start of the current minute (a minute starts at the first event
/// after the last one ended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PerMinute {
    start: Instant,
    count: u32,
}

impl PerMinute {
    /// None counted yet; the first minute starts at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        PerMinute {
            start: now,
            count: 0,
        }
    }

    /// Counts one event at `now`: true while the minute's count is within `limit`.
    pub(crate) fn take(&mut self, now: Instant, limit: u32) -> bool {
        if now >= self.start + Duration::from_secs(60) {
            *self = PerMinute::new(now);
        }
        self.count += 1;
        self.count <= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minute_allows_the_limit_and_the_next_starts_afresh() {
        let t0 = Instant::now();
        let mut m = PerMinute::new(t0);
        assert!((0..3).all(|_| m.take(t0, 3)));
        assert!(!m.take(t0 + Duration::from_secs(59), 3));
        assert!(m.take(t0 + Duration::from_secs(60), 3));
    }
}
