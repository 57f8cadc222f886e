//! What a node accepts from the network, and what it does when a peer goes past it.
//!
//! [`Limits`] holds every bound as a setting with a default. [`Gate`] is shared by a node's
//! accept loop and its connections: it counts connections in total and per address, and keeps
//! the list of banned addresses (a peer that breaks the protocol or floods is cut off and
//! banned for [`Limits::ban_duration`]). [`TokenBucket`] limits queries per second per
//! connection. Every trip is logged at `warn` with the peer and the limit's name, so an operator
//! can tell which setting to change.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
pub use wire::network_of;

use wire::{Message, Role, Terms};

/// Every bound on what peers may send or make a node hold, with defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections accepted at once, from everyone.
    pub max_connections: usize,
    /// Connections accepted at once from one IP address.
    pub max_per_address: usize,
    /// Time a peer has to complete the Noise handshake.
    pub handshake_timeout: Duration,
    /// Queries per second a leaf may send (sustained).
    pub leaf_queries_per_second: f64,
    /// Queries per second a neighbouring super-peer may forward (sustained).
    pub peer_queries_per_second: f64,
    /// How many queries over the rate a connection may send in a burst (in seconds of rate).
    pub query_burst_seconds: f64,
    /// Messages of any kind per second a leaf may send (sustained; bursts of 10 s).
    pub leaf_messages_per_second: f64,
    /// Messages of any kind per second a neighbouring super-peer may send.
    pub peer_messages_per_second: f64,
    /// Bytes in a query's text.
    pub max_query_bytes: usize,
    /// Words in a query's text.
    pub max_query_words: usize,
    /// Hits in one QueryHits message.
    pub max_hits_per_message: usize,
    /// Register and Withdraw messages per second a leaf may send, sustained, after a burst
    /// of [`SHARE_UPDATE_BURST`]. Each costs the super-peer work in proportion to what the
    /// leaf holds (its route-table entry is rebuilt, the index committed).
    pub leaf_share_updates_per_second: f64,
    /// Files one leaf may register.
    pub max_files_per_leaf: u64,
    /// Bytes of metadata (names, folders, tags) one leaf may register.
    pub max_metadata_per_leaf: u64,
    /// Encoded bytes queued for one connection that it has not read yet.
    pub max_pending_bytes: usize,
    /// How long an offender's address is refused.
    pub ban_duration: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A super-peer serves 300 leaves and 32 neighbours by default; room for transients.
            max_connections: 1024,
            // A household behind one NAT, not a botnet behind one address.
            max_per_address: 32,
            handshake_timeout: crate::secure::HANDSHAKE_TIMEOUT,
            // People type queries; a client streaming a search sends one, not dozens.
            leaf_queries_per_second: 5.0,
            // A neighbour forwards the queries of all its leaves and neighbours.
            peer_queries_per_second: 500.0,
            query_burst_seconds: 4.0,
            // Registering 100,000 files takes a few hundred messages: a burst holds them.
            leaf_messages_per_second: 200.0,
            peer_messages_per_second: 5_000.0,
            max_query_bytes: 256,
            max_query_words: 16,
            max_hits_per_message: 256,
            // A share of 100,000 files registers in a few hundred messages (the burst); then a
            // change now and then: a download done, a folder added.
            leaf_share_updates_per_second: 5.0,
            // Large Soulseek shares run to tens of thousands of files.
            max_files_per_leaf: 100_000,
            max_metadata_per_leaf: 32 << 20,
            max_pending_bytes: 8 << 20,
            ban_duration: Duration::from_secs(300),
        }
    }
}

/// A limit that a peer went past.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{limit} ({detail})")]
pub struct Tripped {
    /// The limit's name, as in the settings.
    pub limit: &'static str,
    /// What the peer did.
    pub detail: String,
    /// Whether the peer's address is banned for it (a slow reader is cut off, not banned).
    pub ban: bool,
}

impl Tripped {
    /// A trip that bans.
    pub fn ban(limit: &'static str, detail: String) -> Self {
        Tripped {
            limit,
            detail,
            ban: true,
        }
    }
}

impl Limits {
    /// Checks one message from a peer against the limits that apply to a single message, and
    /// the query rate (`bucket`).
    pub fn check(&self, msg: &Message, bucket: &mut Buckets, now: Instant) -> Result<(), Tripped> {
        if !bucket.messages.take(now) {
            return Err(Tripped::ban(
                "messages_per_second",
                format!("more than {:.0} messages/s", bucket.messages.rate),
            ));
        }
        match msg {
            Message::Query(q) => {
                let text = match &q.search.terms {
                    Terms::Words(text) => text.as_str(),
                    Terms::Id(_) => "",
                };
                let ext = q.search.filter.ext.as_deref().unwrap_or("");
                if text.len() + ext.len() > self.max_query_bytes {
                    return Err(Tripped::ban(
                        "max_query_bytes",
                        format!(
                            "{} bytes > {}",
                            text.len() + ext.len(),
                            self.max_query_bytes
                        ),
                    ));
                }
                let words = text.split_whitespace().count();
                if words > self.max_query_words {
                    return Err(Tripped::ban(
                        "max_query_words",
                        format!("{words} words > {}", self.max_query_words),
                    ));
                }
                if !bucket.queries.take(now) {
                    return Err(Tripped::ban(
                        "queries_per_second",
                        format!("more than {:.0} queries/s", bucket.queries.rate),
                    ));
                }
            }
            Message::Register { .. } | Message::Withdraw { .. }
                if !bucket.share_updates.take(now) =>
            {
                return Err(Tripped::ban(
                    "leaf_share_updates_per_second",
                    format!(
                        "more than {:.0} Register or Withdraw messages/s",
                        bucket.share_updates.rate
                    ),
                ));
            }
            Message::QueryHits(h) if h.hits.len() > self.max_hits_per_message => {
                return Err(Tripped::ban(
                    "max_hits_per_message",
                    format!("{} hits > {}", h.hits.len(), self.max_hits_per_message),
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// The rates for a peer that said it has `role`.
    pub fn buckets_for(&self, role: Role, now: Instant) -> Buckets {
        let (queries, messages) = match role {
            Role::SuperPeer => (self.peer_queries_per_second, self.peer_messages_per_second),
            _ => (self.leaf_queries_per_second, self.leaf_messages_per_second),
        };
        Buckets {
            queries: TokenBucket::new(queries, queries * self.query_burst_seconds, now),
            messages: TokenBucket::new(messages, messages * MESSAGE_BURST_SECONDS, now),
            share_updates: TokenBucket::new(
                self.leaf_share_updates_per_second,
                SHARE_UPDATE_BURST,
                now,
            ),
        }
    }
}

/// Register and Withdraw messages a leaf may send at once: enough to register a share at the
/// file limit several times over (a batch holds hundreds of records).
pub const SHARE_UPDATE_BURST: f64 = 2000.0;

/// Seconds of message rate a connection may send at once.
const MESSAGE_BURST_SECONDS: f64 = 10.0;

/// A connection's rate limits.
#[derive(Debug, Clone)]
pub struct Buckets {
    /// Queries.
    pub queries: TokenBucket,
    /// Messages of any kind.
    pub messages: TokenBucket,
    /// Register and Withdraw messages.
    pub share_updates: TokenBucket,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let burst = burst.max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes a token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let passed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + passed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Connection counts and bans, shared by a node's accept loop and its connections.
#[derive(Debug)]
pub struct Gate {
    limits: Limits,
    inner: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
    banned: HashMap<IpAddr, Instant>,
}

/// A connection counted by a [`Gate`]; dropping it gives the place back.
#[derive(Debug)]
pub struct Admitted {
    gate: Arc<Gate>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut s = self.gate.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.total -= 1;
        if let Some(n) = s.per_address.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                s.per_address.remove(&self.ip);
            }
        }
    }
}

impl Gate {
    /// A gate with `limits`.
    pub fn new(limits: Limits) -> Arc<Gate> {
        Arc::new(Gate {
            limits,
            inner: Mutex::new(GateState::default()),
        })
    }

    /// The limits it applies.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Counts an accepted connection from `remote`, or says which limit refuses it.
    pub fn admit(self: &Arc<Self>, remote: SocketAddr, now: Instant) -> Result<Admitted, Tripped> {
        let ip = network_of(remote.ip());
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&until) = s.banned.get(&ip) {
            if until > now {
                return Err(Tripped {
                    limit: "banned",
                    detail: format!("for {:.0?} more", until - now),
                    ban: false,
                });
            }
            s.banned.remove(&ip);
        }
        if s.total >= self.limits.max_connections {
            return Err(Tripped {
                limit: "max_connections",
                detail: format!("{} open", s.total),
                ban: false,
            });
        }
        let here = s.per_address.get(&ip).copied().unwrap_or(0);
        if here >= self.limits.max_per_address {
            return Err(Tripped {
                limit: "max_per_address",
                detail: format!("{here} open from {ip}"),
                ban: false,
            });
        }
        s.total += 1;
        *s.per_address.entry(ip).or_default() += 1;
        Ok(Admitted {
            gate: self.clone(),
            ip,
        })
    }

    /// Logs a trip by `peer` and bans its address if the trip calls for it.
    pub fn tripped(&self, peer: SocketAddr, trip: &Tripped, now: Instant) {
        if trip.ban {
            log::warn!(
                "peer {peer} went past {trip}: disconnected and banned for {:?}",
                self.limits.ban_duration
            );
            let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            // Forget expired bans now and then, so the list stays as small as the offenders.
            if s.banned.len() >= 1024 {
                s.banned.retain(|_, until| *until > now);
            }
            s.banned
                .insert(network_of(peer.ip()), now + self.limits.ban_duration);
        } else {
            log::warn!("peer {peer} went past {trip}: disconnected");
        }
    }

    /// Whether `ip` is banned now.
    pub fn is_banned(&self, ip: IpAddr, now: Instant) -> bool {
        let s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        s.banned
            .get(&network_of(ip))
            .is_some_and(|&until| until > now)
    }
}

/// The limits as command-line settings (shared by the `superpeer` and `leaf` binaries).
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "Limits on what peers may send")]
pub struct LimitArgs {
    /// Connections accepted at once.
    #[arg(long, global = true, default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,
    /// Connections accepted at once from one IP address.
    #[arg(long, global = true, default_value_t = Limits::default().max_per_address)]
    pub max_per_address: usize,
    /// Seconds a peer has to complete the encrypted handshake.
    #[arg(long, global = true, default_value_t = Limits::default().handshake_timeout.as_secs_f64())]
    pub handshake_timeout: f64,
    /// Queries per second a leaf may send.
    #[arg(long, global = true, default_value_t = Limits::default().leaf_queries_per_second)]
    pub leaf_queries_per_second: f64,
    /// Queries per second a neighbouring super-peer may forward.
    #[arg(long, global = true, default_value_t = Limits::default().peer_queries_per_second)]
    pub peer_queries_per_second: f64,
    /// Messages of any kind per second a leaf may send.
    #[arg(long, global = true, default_value_t = Limits::default().leaf_messages_per_second)]
    pub leaf_messages_per_second: f64,
    /// Messages of any kind per second a neighbouring super-peer may send.
    #[arg(long, global = true, default_value_t = Limits::default().peer_messages_per_second)]
    pub peer_messages_per_second: f64,
    /// Bytes in a query's text.
    #[arg(long, global = true, default_value_t = Limits::default().max_query_bytes)]
    pub max_query_bytes: usize,
    /// Words in a query's text.
    #[arg(long, global = true, default_value_t = Limits::default().max_query_words)]
    pub max_query_words: usize,
    /// Register and Withdraw messages per second a leaf may send, after a burst.
    #[arg(long, global = true, default_value_t = Limits::default().leaf_share_updates_per_second)]
    pub leaf_share_updates_per_second: f64,
    /// Files one leaf may register.
    #[arg(long, global = true, default_value_t = Limits::default().max_files_per_leaf)]
    pub max_files_per_leaf: u64,
    /// Bytes of metadata one leaf may register.
    #[arg(long, global = true, default_value_t = Limits::default().max_metadata_per_leaf)]
    pub max_metadata_per_leaf: u64,
    /// Bytes queued for a peer that is not reading, before it is cut off.
    #[arg(long, global = true, default_value_t = Limits::default().max_pending_bytes)]
    pub max_pending_bytes: usize,
    /// Seconds an offender's address is refused.
    #[arg(long, global = true, default_value_t = Limits::default().ban_duration.as_secs())]
    pub ban_seconds: u64,
}

impl LimitArgs {
    /// The limits these settings give.
    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            max_per_address: self.max_per_address,
            handshake_timeout: Duration::from_secs_f64(self.handshake_timeout.max(0.001)),
            leaf_queries_per_second: self.leaf_queries_per_second,
            peer_queries_per_second: self.peer_queries_per_second,
            leaf_messages_per_second: self.leaf_messages_per_second,
            peer_messages_per_second: self.peer_messages_per_second,
            max_query_bytes: self.max_query_bytes,
            max_query_words: self.max_query_words,
            leaf_share_updates_per_second: self.leaf_share_updates_per_second,
            max_files_per_leaf: self.max_files_per_leaf,
            max_metadata_per_leaf: self.max_metadata_per_leaf,
            max_pending_bytes: self.max_pending_bytes,
            ban_duration: Duration::from_secs(self.ban_seconds),
            ..Limits::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{Filter, Query, QueryId, Search};

    fn query(text: &str) -> Message {
        Message::Query(Query {
            id: QueryId([1; 16]),
            ttl: 3,
            hops: 0,
            search: Search {
                terms: Terms::Words(text.into()),
                filter: Filter::default(),
            },
        })
    }

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 4.0, t0);
        assert!((0..4).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(500)));
        assert!(!b.take(t0 + Duration::from_millis(500)));
        // Saved-up time never exceeds the burst.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 4);
    }

    #[test]
    fn query_limits_name_themselves() {
        let limits = Limits {
            max_query_bytes: 20,
            max_query_words: 3,
            ..Limits::default()
        };
        let now = Instant::now();
        let mut bucket = Buckets {
            queries: TokenBucket::new(1.0, 1.0, now),
            messages: TokenBucket::new(100.0, 100.0, now),
            share_updates: TokenBucket::new(1.0, 2.0, now),
        };
        let long = limits.check(&query("a very long query text indeed"), &mut bucket, now);
        assert_eq!(long.unwrap_err().limit, "max_query_bytes");
        let wordy = limits.check(&query("a b c d"), &mut bucket, now);
        assert_eq!(wordy.unwrap_err().limit, "max_query_words");
        assert!(limits.check(&query("a b c"), &mut bucket, now).is_ok());
        let fast = limits.check(&query("a b c"), &mut bucket, now);
        assert_eq!(fast.unwrap_err().limit, "queries_per_second");
        bucket.messages = TokenBucket::new(1.0, 1.0, now);
        let ping = Message::Ping { nonce: 1 };
        assert!(limits.check(&ping, &mut bucket, now).is_ok());
        let chatty = limits.check(&ping, &mut bucket, now);
        assert_eq!(chatty.unwrap_err().limit, "messages_per_second");
        bucket.messages = TokenBucket::new(100.0, 100.0, now);
        let withdraw = Message::Withdraw { ids: Vec::new() };
        assert!(limits.check(&withdraw, &mut bucket, now).is_ok());
        assert!(limits.check(&withdraw, &mut bucket, now).is_ok());
        let churn = limits.check(&withdraw, &mut bucket, now);
        assert_eq!(churn.unwrap_err().limit, "leaf_share_updates_per_second");
        let later = now + Duration::from_secs(1);
        assert!(limits.check(&withdraw, &mut bucket, later).is_ok());
    }

    #[test]
    fn an_ipv6_ban_covers_the_whole_64() {
        let gate = Gate::new(Limits::default());
        let now = Instant::now();
        let a: SocketAddr = "[2001:db8:1:2:aaaa::1]:7000".parse().unwrap();
        let same_site: SocketAddr = "[2001:db8:1:2:ffff:1:2:3]:7001".parse().unwrap();
        let elsewhere: SocketAddr = "[2001:db8:1:3::1]:7000".parse().unwrap();
        gate.tripped(a, &Tripped::ban("test", String::new()), now);
        assert_eq!(gate.admit(same_site, now).unwrap_err().limit, "banned");
        assert!(gate.admit(elsewhere, now).is_ok());
        // An IPv4 address written as IPv6 is that IPv4 address.
        let v4: SocketAddr = "192.0.2.7:1".parse().unwrap();
        gate.tripped(v4, &Tripped::ban("test", String::new()), now);
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:2".parse().unwrap();
        assert_eq!(gate.admit(mapped, now).unwrap_err().limit, "banned");
        assert!(gate.admit("192.0.2.8:1".parse().unwrap(), now).is_ok());
    }

    #[test]
    fn gate_counts_per_address_and_bans() {
        let gate = Gate::new(Limits {
            max_connections: 3,
            max_per_address: 2,
            ..Limits::default()
        });
        let now = Instant::now();
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:1000".parse().unwrap();
        let c: SocketAddr = "10.0.0.3:1000".parse().unwrap();
        let a1 = gate.admit(a, now).unwrap();
        let _a2 = gate.admit(a, now).unwrap();
        assert_eq!(gate.admit(a, now).unwrap_err().limit, "max_per_address");
        let _b1 = gate.admit(b, now).unwrap();
        assert_eq!(gate.admit(c, now).unwrap_err().limit, "max_connections");
        drop(a1);
        let _c1 = gate.admit(c, now).unwrap();
        gate.tripped(b, &Tripped::ban("test", "x".into()), now);
        assert!(gate.is_banned(b.ip(), now));
        assert_eq!(gate.admit(b, now).unwrap_err().limit, "banned");
        let after = now + Limits::default().ban_duration + Duration::from_secs(1);
        assert!(!gate.is_banned(b.ip(), after));
    }
}
