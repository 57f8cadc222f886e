//! A node's upload link in the simulator: the connections' messages share it in turns, as
//! TCP connections share a `tbf`-capped interface.
//!
//! Each connection's messages leave in order (one TCP stream), and the link takes turns
//! between the connections with something to send, a quantum of bytes each (deficit round
//! robin): four chunks to four downloaders go out side by side, each at a quarter of the rate,
//! and a request or a `Have` waits for one turn of each busy connection rather than behind
//! whole chunks. That is what the real links do: the kernel keeps each socket's backlog in the
//! socket, lets only a little of it into the interface's queue at a time (TCP small queues),
//! and the bench's `tbf` queue holds 50 ms.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::Msg;

/// One direction of one connection: (connection, towards its uploader).
pub(crate) type Flow = (usize, bool);

/// A link's turn lasts this long at most (the bytes it sends in that time, at least a
/// packet): what a connection sends before the next one with something waiting gets its turn.
const TURN: Duration = Duration::from_millis(16);

/// An upload link: the flows with messages waiting, and whose turn it is.
#[derive(Debug, Default)]
pub(crate) struct Uplink {
    /// Each flow's messages, the head's bytes still to send beside it.
    flows: HashMap<Flow, VecDeque<(Msg, u64)>>,
    /// Flows waiting for a turn, in order.
    turns: VecDeque<Flow>,
    /// The flow on the wire and the bytes of its turn.
    sending: Option<(Flow, u64)>,
    /// Counts the link's turns, so that a turn's end left from before [`Uplink::clear`] is
    /// known.
    pub(crate) gen: u64,
}

impl Uplink {
    /// Queues `msg` on `flow`; true if the link is idle and must start a turn.
    pub(crate) fn push(&mut self, flow: Flow, msg: Msg) -> bool {
        let size = msg.size();
        let q = self.flows.entry(flow).or_default();
        q.push_back((msg, size));
        if q.len() == 1 && self.sending.is_none_or(|(f, _)| f != flow) {
            self.turns.push_back(flow);
        }
        self.sending.is_none()
    }

    /// Starts the next turn on a link sending `rate` bytes a second: how many bytes it sends,
    /// and whether they are a chunk's (None: nothing waits).
    pub(crate) fn start(&mut self, rate: f64) -> Option<(u64, bool)> {
        debug_assert!(self.sending.is_none());
        let quantum = ((rate * TURN.as_secs_f64()) as u64).max(1500);
        let (flow, (msg, left)) = loop {
            let flow = self.turns.pop_front()?;
            // A flow dropped since it queued has no messages.
            if let Some(head) = self.flows.get(&flow).and_then(|q| q.front()) {
                break (flow, head);
            }
        };
        let bytes = (*left).min(quantum);
        let chunk = matches!(msg, Msg::Chunk { .. });
        self.sending = Some((flow, bytes));
        self.gen += 1;
        Some((bytes, chunk))
    }

    /// The turn is over: the message it finished, if it did, with its flow.
    pub(crate) fn finish(&mut self) -> Option<(Flow, Msg)> {
        let (flow, bytes) = self.sending.take()?;
        let q = self.flows.get_mut(&flow)?;
        let head = q.front_mut()?;
        head.1 -= bytes;
        let done = if head.1 == 0 {
            q.pop_front().map(|(m, _)| m)
        } else {
            None
        };
        if q.is_empty() {
            self.flows.remove(&flow);
        } else {
            self.turns.push_back(flow);
        }
        done.map(|m| (flow, m))
    }

    /// The connection of `flow` closed here: what waits on it is not sent (a turn under way
    /// ends).
    pub(crate) fn drop_flow(&mut self, flow: Flow) {
        self.flows.remove(&flow);
        self.turns.retain(|f| *f != flow);
        // A turn under way counts for nothing the flow may queue later.
        if let Some((f, bytes)) = self.sending.as_mut() {
            if *f == flow {
                *bytes = 0;
            }
        }
    }

    /// The node went offline: nothing waiting is sent.
    pub(crate) fn clear(&mut self) {
        self.flows.clear();
        self.turns.clear();
        self.sending = None;
        self.gen += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::Message;

    fn chunk(len: u32) -> Msg {
        Msg::Chunk {
            request: 1,
            index: 0,
            len,
        }
    }

    /// Runs the link at `rate` until idle: (flow, finished at) for each message, in order.
    fn drain(link: &mut Uplink, rate: f64) -> Vec<(Flow, f64)> {
        let mut t = 0.0;
        let mut out = Vec::new();
        while let Some((bytes, _)) = link.start(rate) {
            t += bytes as f64 / rate;
            if let Some((flow, _)) = link.finish() {
                out.push((flow, t));
            }
        }
        out
    }

    #[test]
    fn connections_share_the_link_in_turns_and_each_keeps_its_order() {
        let mut link = Uplink::default();
        let rate = 1e6;
        assert!(link.push((1, false), chunk(100_000)));
        assert!(link.push((2, false), chunk(100_000)));
        assert!(link.push((1, false), Msg::M(Message::Promote)));
        // A small message on a third connection goes after one turn of each busy one, not
        // behind their chunks.
        assert!(link.push((3, true), Msg::M(Message::Promote)));
        let done = drain(&mut link, rate);
        let order: Vec<Flow> = done.iter().map(|(f, _)| *f).collect();
        assert_eq!(order, vec![(3, true), (1, false), (2, false), (1, false)]);
        assert!(done[0].1 < 0.04, "the small message waited {}s", done[0].1);
        // The two chunks went side by side: both finish near the end, not one at half time.
        assert!(done[1].1 > 0.18 && done[2].1 > 0.18, "{done:?}");
        assert!(link.sending.is_none());
    }

    #[test]
    fn a_cleared_link_sends_nothing_more() {
        let mut link = Uplink::default();
        link.push((1, false), chunk(100_000));
        let gen = link.gen;
        assert!(link.start(1e6).is_some());
        link.clear();
        assert!(link.gen != gen);
        assert!(link.finish().is_none());
        assert!(link.start(1e6).is_none());
        // A dropped flow's turn passes to the next.
        link.push((1, false), chunk(100_000));
        link.push((2, false), chunk(10));
        link.drop_flow((1, false));
        assert_eq!(drain(&mut link, 1e6).len(), 1);
        // Dropped during its own turn and given a message again: that one goes whole, once.
        link.push((1, false), chunk(100_000));
        assert!(link.start(1e6).is_some());
        link.drop_flow((1, false));
        link.push((1, false), Msg::M(Message::Promote));
        assert!(link.finish().is_none(), "the dropped chunk does not arrive");
        let done = drain(&mut link, 1e6);
        assert_eq!(done.len(), 1, "{done:?}");
        assert!(
            done[0].1 < 0.001,
            "the new message was sent whole: {done:?}"
        );
        assert!(link.flows.is_empty() && link.turns.is_empty());
    }
}
