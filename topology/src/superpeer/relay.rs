//! Relays, the last resort between two leaves that cannot reach each other (one behind a
//! symmetric NAT): the rules, sans IO.
//!
//! A requester (a Transfer connection) asks with [`Message::RelayVia`] naming our leaf, and
//! opens a fresh connection to us whose first message is [`Message::RelayJoin`] with the
//! token. Only then is the leaf told ([`Message::RelayBack`]), and it joins the same way (so a
//! requester that never joins costs the leaf nothing). The driver asks
//! [`SuperPeer::handle_relay_join`] what to do with it, and once both are in, splices the two
//! connections' bytes, capped in bytes and time ([`Config::relay_max_bytes`],
//! [`Config::relay_max_time`]). The two leaves run their own Noise session through it: the
//! relay carries only their ciphertext.
//!
//! Bounded: [`Config::relays_per_leaf`] per leaf and [`Config::max_relays`] in all, each
//! waiting at most [`RELAY_JOIN_WAIT`] for its two ends.

use super::*;
use std::time::Duration;

/// How long a relay waits for both ends to join.
pub const RELAY_JOIN_WAIT: Duration = Duration::from_secs(15);

/// What to do with a connection that asks to join a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayJoin {
    /// The first end: hold it until the other joins (or the relay expires:
    /// [`Event::RelayExpired`]).
    Wait,
    /// The second end: splice the two (the requester's end is told first).
    Paired,
    /// Refuse it, for this reason.
    Refused(String),
}

/// One relay, asked for and not ended.
#[derive(Debug, Clone)]
pub(super) struct Relay {
    requester: NodeId,
    leaf: NodeId,
    /// The leaf's overlay connection, where it is told once the requester joined.
    leaf_conn: ConnId,
    /// Joined: the requester's end, the leaf's.
    joined: (bool, bool),
    /// When it expires unless both joined.
    deadline: Instant,
    active: bool,
}

impl SuperPeer {
    /// A requester asks that our leaf `target` join a relay with it, named `token`.
    pub(super) fn on_relay_via(&mut self, now: Instant, conn: ConnId, target: NodeId, token: u64) {
        let Some((requester, _)) = self.take_request(conn) else {
            return;
        };
        let held = |leaf| self.relays.values().filter(|r| r.leaf == leaf).count();
        let leaf = self.attached_leaf(target);
        let error = if self.config.max_relays == 0 {
            Some("this super-peer relays nothing".to_string())
        } else if leaf.is_none() {
            Some(format!("leaf {} is not attached here", target.short()))
        } else if let Some((_, None, _)) = leaf {
            Some(format!("leaf {} serves nothing", target.short()))
        } else if let Some((_, _, Some(true))) = leaf {
            Some(format!(
                "leaf {} can be reached: connect to it",
                target.short()
            ))
        } else if self.relays.contains_key(&token) {
            Some("that token is in use".to_string())
        } else if held(target) >= self.config.relays_per_leaf {
            Some(format!(
                "leaf {} has {} relays already (relays_per_leaf)",
                target.short(),
                self.config.relays_per_leaf
            ))
        } else if self.relays.len() >= self.config.max_relays {
            Some(format!(
                "{} relays already (max_relays)",
                self.config.max_relays
            ))
        } else {
            None
        };
        if let (None, Some((leaf_conn, ..))) = (&error, leaf) {
            self.relays.insert(
                token,
                Relay {
                    requester,
                    leaf: target,
                    leaf_conn,
                    joined: (false, false),
                    deadline: now + RELAY_JOIN_WAIT,
                    active: false,
                },
            );
        }
        let sync = None;
        self.send(conn, Message::ConnectAsked { token, error, sync });
    }

    /// A connection from `node` (proved by its key) asks to join relay `token`.
    pub fn handle_relay_join(&mut self, now: Instant, token: u64, node: NodeId) -> RelayJoin {
        let Some(r) = self
            .relays
            .get_mut(&token)
            .filter(|r| now < r.deadline || r.active)
        else {
            return RelayJoin::Refused(format!("no relay {token:016x} is waiting"));
        };
        if r.active {
            return RelayJoin::Refused(format!("relay {token:016x} is complete"));
        }
        if node == r.requester && !r.joined.0 {
            r.joined.0 = true;
            // The leaf hears of it now, not before: only a requester that joined costs it
            // a connection.
            let (leaf_conn, requester) = (r.leaf_conn, r.requester);
            if self.conns.get(&leaf_conn).is_some_and(|c| !c.closing) {
                self.send(
                    leaf_conn,
                    Message::RelayBack {
                        node: requester,
                        token,
                    },
                );
            }
            return RelayJoin::Wait;
        } else if node == r.leaf && r.joined.0 && !r.joined.1 {
            r.joined.1 = true;
        } else {
            return RelayJoin::Refused(format!(
                "node {} is not a party to relay {token:016x}",
                node.short()
            ));
        }
        if r.joined == (true, true) {
            r.active = true;
            self.stats.relays += 1;
            RelayJoin::Paired
        } else {
            RelayJoin::Wait
        }
    }

    /// What a relay may carry: bytes (both ways together), and time.
    pub fn relay_caps(&self) -> (u64, Duration) {
        (self.config.relay_max_bytes, self.config.relay_max_time)
    }

    /// Whether `node` is the requester's end of relay `token` (told first when paired).
    pub fn relay_requester(&self, token: u64, node: NodeId) -> bool {
        self.relays.get(&token).is_some_and(|r| r.requester == node)
    }

    /// A spliced relay ended after carrying `bytes`.
    pub fn handle_relay_ended(&mut self, token: u64, bytes: u64) {
        if self.relays.remove(&token).is_some() {
            self.stats.relayed_bytes += bytes;
        }
    }

    /// Relays not joined by both ends in time are dropped ([`Event::RelayExpired`]).
    pub(super) fn expire_relays(&mut self, now: Instant) {
        let mut gone: Vec<u64> = self
            .relays
            .iter()
            .filter(|(_, r)| !r.active && now >= r.deadline)
            .map(|(&t, _)| t)
            .collect();
        gone.sort_unstable();
        for token in gone {
            self.relays.remove(&token);
            self.events.push_back(Event::RelayExpired { token });
        }
    }

    /// When the next waiting relay expires.
    pub(super) fn relay_deadline(&self) -> Option<Instant> {
        self.relays
            .values()
            .filter(|r| !r.active)
            .map(|r| r.deadline)
            .min()
    }
}
