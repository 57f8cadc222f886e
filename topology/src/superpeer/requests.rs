//! What a requester (a connection whose Hello said [`Role::Transfer`]) may ask: that one of
//! our leaves connect to it ([`Message::ConnectToMe`]), where we see it come from
//! ([`Message::WhereAmI`]), and a relay ([`Message::RelayVia`], in `relay.rs`). Every request
//! counts against [`Config::max_connect_requests`] for the connection.
//!
//! One of our own leaves may ask for a connection back over its link too: the same request,
//! to the address we see the link come from, at most [`Config::max_connect_requests`] a
//! minute (more are answered with an error; the link stays).

use super::*;

/// One of our leaves, as a request needs it: its connection, where it serves, and whether our
/// dial-back got through.
pub(super) type AttachedLeaf = (ConnId, Option<SocketAddr>, Option<bool>);

impl SuperPeer {
    /// Counts one request on requester connection `conn`: its node id and where it can be
    /// reached, or None (it is no requester, or asked too often and is being closed).
    pub(super) fn take_request(&mut self, conn: ConnId) -> Option<(NodeId, Option<SocketAddr>)> {
        let Some(PeerState::Requester { node, back, asked }) =
            self.conns.get_mut(&conn).map(|c| &mut c.state)
        else {
            return None;
        };
        *asked += 1;
        if *asked > self.config.max_connect_requests {
            let limit = self.config.max_connect_requests;
            self.protocol_error(
                conn,
                format!("more than {limit} requests (ConnectToMe, RelayVia, WhereAmI)"),
            );
            return None;
        }
        Some((*node, *back))
    }

    /// Our leaf `target`, if it is attached and not being closed (the oldest link of a leaf
    /// linked over each address family: not whichever hash order gives first).
    pub(super) fn attached_leaf(&self, target: NodeId) -> Option<AttachedLeaf> {
        self.conns
            .iter()
            .filter_map(|(&c, l)| match l.state {
                PeerState::Leaf {
                    node,
                    source,
                    reachable,
                    ..
                } if node == target && !l.closing => Some((c, source, reachable)),
                _ => None,
            })
            .min_by_key(|(c, ..)| *c)
    }

    /// Counts one request on leaf link `conn` against the minute's
    /// [`Config::max_connect_requests`]: its node id and where it serves, or why it may not ask
    /// now. None if `conn` is no leaf.
    fn take_leaf_request(
        &mut self,
        now: Instant,
        conn: ConnId,
    ) -> Option<Result<(NodeId, Option<SocketAddr>), String>> {
        let limit = self.config.max_connect_requests;
        let Some(PeerState::Leaf {
            node,
            source,
            asked,
            ..
        }) = self.conns.get_mut(&conn).map(|c| &mut c.state)
        else {
            return None;
        };
        Some(match asked.take(now, limit) {
            true => Ok((*node, *source)),
            false => Err(format!(
                "more than {limit} requests for connections back in a minute"
            )),
        })
    }

    /// A requester, or one of our leaves over its link, asks that our leaf `target` connect
    /// to it: passed on with the address we see the requester at, and answered either way.
    pub(super) fn on_connect_to_me(
        &mut self,
        now: Instant,
        conn: ConnId,
        target: NodeId,
        token: u64,
        punch: bool,
    ) {
        let asked = match self.take_leaf_request(now, conn) {
            Some(asked) => asked,
            None => match self.take_request(conn) {
                Some(asked) => Ok(asked),
                None => return,
            },
        };
        let (requester, back) = match asked {
            Ok(asked) => asked,
            Err(error) => {
                let error = Some(error);
                let sync = None;
                return self.send(conn, Message::ConnectAsked { token, error, sync });
            }
        };
        let mut sync = None;
        let error = match (back, self.attached_leaf(target)) {
            (None, _) => Some("no listen port to connect back to".to_string()),
            (_, None) => Some(format!("leaf {} is not attached here", target.short())),
            (_, Some((leaf, ..))) if leaf == conn => {
                Some("a leaf cannot ask itself to connect back".to_string())
            }
            (Some(addr), Some((leaf, ..))) => {
                // A hole punch is timed so that both dial at once: the nearer waits.
                let leaf_rtt = self.rtt_ms(leaf).filter(|_| punch);
                let wait_ms = match (leaf_rtt, self.rtt_ms(conn)) {
                    (Some(l), Some(r)) => (r.saturating_sub(l) / 2).min(wire::MAX_PUNCH_WAIT_MS),
                    _ => 0,
                };
                sync = leaf_rtt.map(|leaf_rtt_ms| wire::PunchSync {
                    leaf_rtt_ms,
                    leaf_wait_ms: wait_ms,
                });
                self.send(
                    leaf,
                    Message::ConnectBack {
                        node: requester,
                        addr,
                        token,
                        punch,
                        wait_ms,
                    },
                );
                None
            }
        };
        self.send(conn, Message::ConnectAsked { token, error, sync });
    }

    /// A requester asks where we see it come from.
    pub(super) fn on_where_am_i(&mut self, conn: ConnId, remote: SocketAddr) {
        if self.take_request(conn).is_some() {
            self.send(conn, Message::SeenAt { addr: remote });
        }
    }
}
