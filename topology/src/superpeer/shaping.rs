//! Outbound query shaping: a super-peer never sends a neighbour more queries than that
//! neighbour's limit allows (it would cut the link and ban this node for the burst, and a
//! flood relayed that way partitions the mesh).
//!
//! Each neighbour link has a token bucket at [`Config::neighbour_query_rate`] with a burst of
//! [`Config::neighbour_query_burst`]; a query that finds it empty is not forwarded there.
//! Queries of this super-peer's own leaves may use the whole bucket; queries relayed from other
//! neighbours only its upper half, so a flood relayed through here cannot crowd out the
//! searches of the leaves attached here.
//!
//! Invariant: at most `burst + rate × t` queries go to one neighbour in any span of `t`.

use std::time::Instant;

use super::Config;

/// One neighbour link's query budget.
#[derive(Debug, Clone)]
pub(super) struct QueryBudget {
    tokens: f64,
    at: Instant,
}

impl QueryBudget {
    /// A full budget.
    pub(super) fn new(now: Instant, config: &Config) -> Self {
        QueryBudget {
            tokens: config.neighbour_query_burst,
            at: now,
        }
    }

    /// Takes one query's worth if there is room: all of the bucket for a query of our own
    /// leaves (`local`), its upper half for a relayed one.
    pub(super) fn take(&mut self, now: Instant, config: &Config, local: bool) -> bool {
        let burst = config.neighbour_query_burst;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * config.neighbour_query_rate).min(burst);
        self.at = now;
        let floor = if local { 0.0 } else { burst / 2.0 };
        if self.tokens - 1.0 >= floor {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn relayed_queries_leave_half_for_local_ones_and_the_rate_holds() {
        let config = Config {
            neighbour_query_rate: 10.0,
            neighbour_query_burst: 20.0,
            ..Config::default()
        };
        let t0 = Instant::now();
        let mut b = QueryBudget::new(t0, &config);
        let relayed = (0..100).filter(|_| b.take(t0, &config, false)).count();
        assert_eq!(relayed, 10, "relayed queries stop at half the burst");
        let local = (0..100).filter(|_| b.take(t0, &config, true)).count();
        assert_eq!(local, 10, "local ones use the rest");
        // Over ten seconds: at most the rate, whoever asks.
        let sent: usize = (1..=100)
            .map(|i| {
                let t = t0 + Duration::from_millis(100 * i);
                (0..10).filter(|_| b.take(t, &config, true)).count()
            })
            .sum();
        assert!(sent <= 100 + 1, "{sent}");
        assert!(sent >= 99, "{sent}");
    }
}
