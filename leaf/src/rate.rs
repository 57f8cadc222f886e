//! Bandwidth caps: an async token bucket shared by every transfer of a node; and the parsers of
//! rates, sizes and lengths of time as people type them (`2MB/s`, `700MiB`, `3:30`).
//!
//! Each transfer takes tokens (bytes) before it sends (uploads) or after it receives
//! (downloads) a chunk. Waiters queue on an async lock that is fair (first come, first served)
//! and hold it while they sleep, so a cap is shared evenly between requesters rather than won
//! by whoever polls most. A chunk larger than the bucket is allowed: the bucket goes into debt
//! and the taker sleeps until it is paid back, so the long-run rate is exact.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// A byte rate cap, or none. Cheap to clone; clones share one bucket.
#[derive(Debug, Clone, Default)]
pub struct RateLimit {
    bucket: Option<Arc<Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// The most tokens that can pile up while idle.
    burst: f64,
    state: smol::lock::Mutex<(f64, Instant)>,
}

impl RateLimit {
    /// No cap.
    pub fn unlimited() -> Self {
        RateLimit { bucket: None }
    }

    /// A cap of `bytes_per_sec` (0 means no cap). Idle time banks at most 10 ms of traffic
    /// (16 KiB at least), so even a short transfer cannot beat the cap by much.
    pub fn new(bytes_per_sec: u64) -> Self {
        if bytes_per_sec == 0 {
            return Self::unlimited();
        }
        let rate = bytes_per_sec as f64;
        let burst = (rate / 100.0).max(16.0 * 1024.0);
        RateLimit {
            bucket: Some(Arc::new(Bucket {
                rate,
                burst,
                state: smol::lock::Mutex::new((burst, Instant::now())),
            })),
        }
    }

    /// The cap in bytes per second, if any.
    pub fn bytes_per_sec(&self) -> Option<u64> {
        self.bucket.as_ref().map(|b| b.rate as u64)
    }

    /// Waits until `n` bytes may pass.
    pub async fn take(&self, n: u64) {
        let Some(b) = &self.bucket else {
            return;
        };
        let mut state = b.state.lock().await;
        let now = Instant::now();
        let (tokens, last) = *state;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * b.rate).min(b.burst);
        let left = tokens - n as f64;
        *state = (left, now);
        if left < 0.0 {
            // Sleep off the debt while holding the lock: later takers queue behind us.
            let debt = Duration::try_from_secs_f64(-left / b.rate).unwrap_or(Duration::MAX);
            smol::Timer::after(debt).await;
        }
    }
}

/// Parses a rate such as `500K`, `2MB`, `1.5MiB/s` or `800000` into bytes per second
/// (K, M, G, T are powers of 1000; Ki, Mi, Gi, Ti powers of 1024; `0` means no cap).
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    parse_amount(text, t, "a rate such as 500K, 2MB or 1MiB/s")
}

/// Parses a size such as `10MB`, `700MiB`, `1.5G` or `800000` into bytes, in the units of
/// [`parse_rate`] (so `--min-size` reads like `--upload-rate`).
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse_amount(text, text.trim(), "a size such as 10MB, 700MiB or 1.5G")
}

/// `t` (taken from `text`, which errors quote) as a number of bytes with an optional unit.
fn parse_amount(text: &str, t: &str, example: &str) -> Result<u64, String> {
    let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        None => (t, 1.0),
        Some((i, _)) => {
            let m = match t[i..].to_ascii_lowercase().as_str() {
                "k" => 1e3,
                "m" => 1e6,
                "g" => 1e9,
                "t" => 1e12,
                "ki" => 1024.0,
                "mi" => 1024.0 * 1024.0,
                "gi" => 1024.0 * 1024.0 * 1024.0,
                "ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
                _ => {
                    return Err(format!(
                        "`{text}`: unknown unit (use K, M, G, T, KiB, MiB, GiB or TiB)"
                    ))
                }
            };
            (&t[..i], m)
        }
    };
    let value: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not {example}"))?;
    if !(value >= 0.0 && value.is_finite()) {
        return Err(format!("`{text}`: give zero or more"));
    }
    Ok((value * mult) as u64)
}

/// Parses a length of time such as `90`, `90s`, `3m`, `3:30` or `1h` into whole seconds.
pub fn parse_seconds(text: &str) -> Result<u32, String> {
    let t = text.trim().to_ascii_lowercase();
    let bad = || format!("`{text}` is not a duration such as 90, 90s, 3m, 3:30 or 1h");
    let secs: f64 = if let Some((m, s)) = t.split_once(':') {
        let (m, s): (u32, u32) = (m.parse().map_err(|_| bad())?, s.parse().map_err(|_| bad())?);
        if s >= 60 {
            return Err(bad());
        }
        f64::from(m) * 60.0 + f64::from(s)
    } else {
        let (num, mult) = match t.strip_suffix('h') {
            Some(n) => (n, 3600.0),
            None => match t.strip_suffix('m') {
                Some(n) => (n, 60.0),
                None => (t.strip_suffix('s').unwrap_or(&t), 1.0),
            },
        };
        let v: f64 = num.trim().parse().map_err(|_| bad())?;
        v * mult
    };
    if !(secs >= 0.0 && secs <= f64::from(u32::MAX)) {
        return Err(bad());
    }
    Ok(secs.round() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_units() {
        assert_eq!(parse_rate("800000"), Ok(800_000));
        assert_eq!(parse_rate("500K"), Ok(500_000));
        assert_eq!(parse_rate("2MB"), Ok(2_000_000));
        assert_eq!(parse_rate("1MiB/s"), Ok(1 << 20));
        assert_eq!(parse_rate("1.5 M"), Ok(1_500_000));
        assert_eq!(parse_rate("0"), Ok(0));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("-3M").is_err());
        assert!(parse_rate("3X").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn sizes_parse_in_the_units_of_rates() {
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("700MiB"), Ok(700 << 20));
        assert_eq!(parse_size("1.5G"), Ok(1_500_000_000));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size(" 4096 "), Ok(4096));
        assert!(parse_size("10MB/s").is_err(), "a rate is not a size");
        assert!(parse_size("big").unwrap_err().contains("unknown unit"));
        assert!(parse_size("1.2.3M").unwrap_err().contains("is not a size"));
        assert!(parse_size("-1K").is_err());
    }

    #[test]
    fn lengths_of_time_parse_as_people_write_them() {
        assert_eq!(parse_seconds("90"), Ok(90));
        assert_eq!(parse_seconds("90s"), Ok(90));
        assert_eq!(parse_seconds("3m"), Ok(180));
        assert_eq!(parse_seconds("2.5m"), Ok(150));
        assert_eq!(parse_seconds("3:30"), Ok(210));
        assert_eq!(parse_seconds("1H"), Ok(3600));
        for bad in ["", "3:75", "-5", "ten", "1:2:3", "1e20"] {
            assert!(parse_seconds(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cap_holds_the_long_run_rate() {
        smol::block_on(async {
            let cap = RateLimit::new(4 << 20);
            let start = Instant::now();
            // 2 MiB beyond the initial burst at 4 MiB/s: about half a second.
            for _ in 0..8 {
                cap.take(256 << 10).await;
            }
            let secs = start.elapsed().as_secs_f64();
            assert!(secs >= 0.4, "8 x 256 KiB at 4 MiB/s took only {secs:.3} s");
        })
    }

    #[test]
    fn unlimited_never_waits() {
        smol::block_on(async {
            // Completes at the first poll: no timer, whatever the amount.
            let once =
                |cap: RateLimit, n| async move { smol::future::poll_once(cap.take(n)).await };
            assert!(once(RateLimit::unlimited(), u64::MAX / 2).await.is_some());
            assert!(once(RateLimit::new(0), 1 << 40).await.is_some());
            // A capped bucket does make a large take wait.
            assert!(once(RateLimit::new(1000), 1 << 20).await.is_none());
        })
    }
}
