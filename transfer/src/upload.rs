//! [`UploadSession`]: the uploader's side of one connection to a downloader, sans-IO.
//!
//! It checks the downloader's Hello, keeps the requests waiting (a `Cancel` removes one not
//! yet served), bounds them, tracks what the downloader asked for and has (for the swarm's
//! spreading), and decides when the connection is idle or broken. What a request is answered
//! with (a manifest, a bitfield, a chunk, `Queued`) needs the node's shares, upload slots and
//! disk: the driver (`leaf::upload`) takes each request from
//! [`UploadSession::poll_request`], answers it, and passes the time in.
//!
//! # Drain rule
//! After every input (`handle_message`, `handle_timeout`), the driver sends every
//! `poll_transmit()`, then serves `poll_request()`s, then checks `end()`. It wakes for the next
//! message or at `poll_timeout()`.
//!
//! # Invariants
//! - Nothing but Hello is accepted before Hello; Hello is accepted once, only from the key the
//!   handshake proved and only at our protocol version. Our own Hello goes out after theirs,
//!   or first on a connection we opened because the downloader asked
//!   ([`UploadSession::hello_first`]).
//! - At most [`MAX_PENDING`] requests wait; one more ends the session.
//! - A waiting chunk request is removed by a `Cancel` of its number; one being served is not.
//! - A connection with no manifest or chunk request for [`IDLE_TIMEOUT`] ends (pings and
//!   bitfields do not count), and so does one that does not say Hello within
//!   [`HELLO_TIMEOUT`].
//! - Once `end()` is set, no input changes anything.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use wire::{FileId, Hello, Message, NodeId};

use crate::ShownTo;

/// How long a connecting downloader has to say Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A transfer connection with no manifest or chunk request for this long is closed (and frees
/// its slot); pings do not count.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests a downloader may have waiting at once; more is a protocol violation.
pub const MAX_PENDING: usize = 64;

/// The largest message body a downloader has reason to send an uploader: its bitfield of a
/// file of a million chunks (16 TiB at the largest chunk size) fits with room to spare. With
/// no payload ever (downloaders send no chunks), this bounds what one connection's read-ahead
/// holds to [`MAX_PENDING`] such messages.
pub const MAX_REQUEST_BODY: u32 = 256 << 10;

/// A request for the driver to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadEvent {
    /// The manifest of `id`.
    Manifest {
        /// The request number to answer with.
        request: u32,
        /// The file.
        id: FileId,
    },
    /// Which chunks of `id` we hold (and, for a file still downloading, `Have`s as it grows).
    Bitfield {
        /// The file.
        id: FileId,
    },
    /// A page of the list of what this node shares (or a refusal), from file `offset`.
    Browse {
        /// The request number to answer with.
        request: u32,
        /// The first file wanted.
        offset: u32,
    },
    /// A chunk, if the downloader holds an upload slot.
    Chunk {
        /// The request number to answer with.
        request: u32,
        /// The file.
        id: FileId,
        /// The chunk.
        index: u32,
    },
}

impl UploadEvent {
    /// The file asked about (a listing names none).
    pub fn file(&self) -> Option<FileId> {
        match self {
            UploadEvent::Manifest { id, .. }
            | UploadEvent::Bitfield { id }
            | UploadEvent::Chunk { id, .. } => Some(*id),
            UploadEvent::Browse { .. } => None,
        }
    }

    /// The request number an answer names (a bitfield request has none: 0).
    pub fn number(&self) -> u32 {
        match self {
            UploadEvent::Manifest { request, .. }
            | UploadEvent::Browse { request, .. }
            | UploadEvent::Chunk { request, .. } => *request,
            UploadEvent::Bitfield { .. } => 0,
        }
    }
}

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadEnd {
    /// The downloader said Goodbye.
    Closed,
    /// The downloader broke a rule or went idle.
    Failed(String),
}

/// One downloader's connection; see the module docs.
#[derive(Debug)]
pub struct UploadSession {
    /// The key the handshake proved.
    peer: NodeId,
    mine: Option<Hello>,
    /// Set once its Hello is accepted: whether it serves others (gave a listen address).
    serves: Option<bool>,
    listen_port: Option<u16>,
    started: Instant,
    last_request: Instant,
    pending: VecDeque<UploadEvent>,
    transmit: VecDeque<Message>,
    /// What it has been shown of the one file it fetches from us, asked for and has.
    view: Option<ShownTo>,
    end: Option<UploadEnd>,
}

impl UploadSession {
    /// A connection from the node whose key the handshake proved to be `peer`, at `now`; `mine`
    /// is the Hello we answer with.
    pub fn new(now: Instant, peer: NodeId, mine: Hello) -> Self {
        UploadSession {
            peer,
            mine: Some(mine),
            serves: None,
            listen_port: None,
            started: now,
            last_request: now,
            pending: VecDeque::new(),
            transmit: VecDeque::new(),
            view: None,
            end: None,
        }
    }

    /// Sends our Hello now, before the downloader's, on a connection we opened because it
    /// asked (a connection back): it reads ours right after the token that names the
    /// connection, and needs no round trip for it before its first request. Its own Hello is
    /// still required before anything else, and is not answered again.
    pub fn hello_first(&mut self) {
        if let Some(mine) = self.mine.take() {
            self.transmit.push_back(Message::Hello(mine));
        }
    }

    /// The downloader's node id (proved by its key).
    pub fn peer(&self) -> NodeId {
        self.peer
    }

    /// Whether the downloader serves others (it gave a listen address); false before Hello.
    pub fn serves(&self) -> bool {
        self.serves.unwrap_or(false)
    }

    /// The port the downloader says it serves chunks on (from its Hello), if it does.
    pub fn listen_port(&self) -> Option<u16> {
        self.listen_port
    }

    /// A message from the downloader.
    pub fn handle_message(&mut self, now: Instant, msg: Message) {
        if self.end.is_some() {
            return;
        }
        if let Err(why) = self.on_message(now, msg) {
            self.end = Some(why);
        }
    }

    fn on_message(&mut self, now: Instant, msg: Message) -> Result<(), UploadEnd> {
        if self.serves.is_none() {
            return match msg {
                Message::Hello(h) => {
                    wire::hello::check(self.peer, &h)
                        .map_err(|e| UploadEnd::Failed(e.to_string()))?;
                    self.serves = Some(h.listen.is_some());
                    self.listen_port = h.listen.map(|a| a.port()).filter(|&p| p != 0);
                    // Unless it went first ([`UploadSession::hello_first`]).
                    if let Some(mine) = self.mine.take() {
                        self.transmit.push_back(Message::Hello(mine));
                    }
                    Ok(())
                }
                other => Err(UploadEnd::Failed(format!("{} before Hello", other.kind()))),
            };
        }
        match msg {
            Message::GetManifest { request, id } => {
                self.last_request = now;
                self.push(UploadEvent::Manifest { request, id })
            }
            Message::GetChunk { request, id, index } => {
                self.last_request = now;
                if let Some(v) = self.view.as_mut().filter(|v| v.id == id) {
                    v.asked.set(index as u64);
                }
                self.push(UploadEvent::Chunk { request, id, index })
            }
            Message::GetBitfield { id } => self.push(UploadEvent::Bitfield { id }),
            Message::Browse { request, offset } => {
                self.last_request = now;
                self.push(UploadEvent::Browse { request, offset })
            }
            Message::Cancel { request } => {
                self.pending.retain(
                    |r| !matches!(r, UploadEvent::Chunk { request: q, .. } if *q == request),
                );
                Ok(())
            }
            Message::Bitfield { id, bits } => {
                if let Some(v) = self.view.as_mut().filter(|v| v.id == id) {
                    if let Ok(b) = wire::Bitfield::from_bytes(bits, v.has.len()) {
                        v.has = b;
                    }
                }
                Ok(())
            }
            Message::Have { id, index } => {
                if let Some(v) = self.view.as_mut().filter(|v| v.id == id) {
                    v.has.set(index as u64);
                }
                Ok(())
            }
            Message::Pong { .. } => Ok(()),
            Message::Ping { nonce } => {
                self.transmit.push_back(Message::Pong { nonce });
                Ok(())
            }
            Message::Goodbye { .. } => Err(UploadEnd::Closed),
            other => {
                let reason = format!("unexpected {} on a transfer connection", other.kind());
                self.transmit.push_back(Message::Goodbye {
                    reason: reason.clone(),
                });
                Err(UploadEnd::Failed(reason))
            }
        }
    }

    fn push(&mut self, request: UploadEvent) -> Result<(), UploadEnd> {
        if self.pending.len() >= MAX_PENDING {
            return Err(UploadEnd::Failed(format!(
                "more than {MAX_PENDING} requests waiting"
            )));
        }
        self.pending.push_back(request);
        Ok(())
    }

    /// The connection closed or failed under the driver.
    pub fn handle_closed(&mut self, reason: Option<String>) {
        if self.end.is_none() {
            self.end = Some(reason.map_or(UploadEnd::Closed, UploadEnd::Failed));
        }
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.end.is_some() {
            return;
        }
        if self.serves.is_none() && now >= self.started + HELLO_TIMEOUT {
            self.end = Some(UploadEnd::Failed(format!(
                "no Hello within {HELLO_TIMEOUT:?}"
            )));
        } else if now >= self.last_request + IDLE_TIMEOUT {
            self.end = Some(UploadEnd::Failed(format!(
                "no request for {IDLE_TIMEOUT:?}"
            )));
        }
    }

    /// When to call [`UploadSession::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (&self.end, self.serves) {
            (Some(_), _) => None,
            (None, None) => Some(self.started + HELLO_TIMEOUT),
            (None, Some(_)) => Some(self.last_request + IDLE_TIMEOUT),
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    /// The next request to answer, oldest first.
    pub fn poll_request(&mut self) -> Option<UploadEvent> {
        if self.end.is_some() {
            return None;
        }
        self.pending.pop_front()
    }

    /// Why the session ended, once it has.
    pub fn end(&self) -> Option<&UploadEnd> {
        self.end.as_ref()
    }

    /// The driver answers this downloader's chunk requests for `view.id` (from a complete copy
    /// it may spread among several downloaders, or a copy still downloading): what it has been
    /// shown, asked for and has is tracked from here on.
    pub fn set_view(&mut self, view: ShownTo) {
        self.view = Some(view);
    }

    /// What the downloader has been shown, asked for and has, if a view is set.
    pub fn view(&self) -> Option<&ShownTo> {
        self.view.as_ref()
    }

    /// [`UploadSession::view`], to change.
    pub fn view_mut(&mut self) -> Option<&mut ShownTo> {
        self.view.as_mut()
    }

    /// Requests waiting.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(node: u8) -> Hello {
        Hello::new(NodeId([node; 32]), wire::Role::Transfer, None, "test")
    }

    fn session(now: Instant) -> UploadSession {
        UploadSession::new(now, NodeId([1; 32]), hello(9))
    }

    #[test]
    fn hello_first_from_the_proved_key_then_ours() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_message(t, Message::Hello(hello(2)));
        let Some(UploadEnd::Failed(why)) = s.end() else {
            panic!("a Hello with another node's id is refused")
        };
        assert!(why.contains("Hello claims node"), "{why}");
        assert!(s.poll_transmit().is_none(), "nothing sent to an impostor");

        let mut s = session(t);
        s.handle_message(
            t,
            Message::GetBitfield {
                id: FileId([3; 32]),
            },
        );
        assert_eq!(
            s.end(),
            Some(&UploadEnd::Failed("GetBitfield before Hello".into()))
        );

        let mut s = session(t);
        s.handle_message(t, Message::Hello(hello(1)));
        assert!(s.end().is_none());
        assert!(matches!(s.poll_transmit(), Some(Message::Hello(h)) if h.node == NodeId([9; 32])));
        s.handle_message(t, Message::Hello(hello(1)));
        assert!(
            matches!(s.end(), Some(UploadEnd::Failed(w)) if w.contains("unexpected Hello")),
            "a second Hello breaks the protocol"
        );
        assert!(matches!(s.poll_transmit(), Some(Message::Goodbye { .. })));
    }

    /// On a connection back, ours goes first; theirs is still required, and not answered twice.
    #[test]
    fn on_a_connection_back_our_hello_goes_first_and_once() {
        let t = Instant::now();
        let mut s = session(t);
        s.hello_first();
        assert!(matches!(s.poll_transmit(), Some(Message::Hello(h)) if h.node == NodeId([9; 32])));
        s.handle_message(
            t,
            Message::GetBitfield {
                id: FileId([3; 32]),
            },
        );
        assert_eq!(
            s.end(),
            Some(&UploadEnd::Failed("GetBitfield before Hello".into()))
        );
        let mut s = session(t);
        s.hello_first();
        assert!(s.poll_transmit().is_some());
        s.handle_message(t, Message::Hello(hello(1)));
        assert!(s.end().is_none());
        assert!(s.poll_transmit().is_none(), "our Hello went once");
    }

    #[test]
    fn cancels_remove_waiting_chunk_requests_and_the_queue_is_bounded() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_message(t, Message::Hello(hello(1)));
        let id = FileId([4; 32]);
        for request in 1..=3 {
            s.handle_message(
                t,
                Message::GetChunk {
                    request,
                    id,
                    index: request,
                },
            );
        }
        s.handle_message(t, Message::Cancel { request: 2 });
        let served: Vec<u32> = std::iter::from_fn(|| s.poll_request())
            .map(|r| match r {
                UploadEvent::Chunk { request, .. } => request,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(served, vec![1, 3]);
        for request in 0..=MAX_PENDING as u32 {
            s.handle_message(t, Message::GetManifest { request, id });
        }
        assert_eq!(
            s.end(),
            Some(&UploadEnd::Failed(format!(
                "more than {MAX_PENDING} requests waiting"
            )))
        );
        assert!(s.poll_request().is_none(), "nothing is served once ended");
    }

    #[test]
    fn silence_ends_the_session_but_pings_do_not_count_as_requests() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_timeout(t + HELLO_TIMEOUT);
        assert!(matches!(s.end(), Some(UploadEnd::Failed(w)) if w.starts_with("no Hello")));

        let mut s = session(t);
        s.handle_message(t, Message::Hello(hello(1)));
        let later = t + IDLE_TIMEOUT / 2;
        s.handle_message(later, Message::Ping { nonce: 5 });
        let _ = s.poll_transmit();
        assert_eq!(s.poll_transmit(), Some(Message::Pong { nonce: 5 }));
        assert_eq!(s.poll_timeout(), Some(t + IDLE_TIMEOUT));
        s.handle_timeout(t + IDLE_TIMEOUT);
        assert!(matches!(s.end(), Some(UploadEnd::Failed(w)) if w.starts_with("no request")));
    }

    #[test]
    fn the_view_tracks_what_the_downloader_asked_for_and_has() {
        let t = Instant::now();
        let mut s = session(t);
        s.handle_message(t, Message::Hello(hello(1)));
        let id = FileId([6; 32]);
        s.set_view(ShownTo::new(id, 20));
        s.handle_message(
            t,
            Message::GetChunk {
                request: 1,
                id,
                index: 3,
            },
        );
        s.handle_message(t, Message::Have { id, index: 7 });
        s.handle_message(t, Message::Have { id, index: 700 }); // out of range: ignored
        let v = s.view_mut().unwrap();
        assert!(v.asked.get(3) && v.has.get(7));
        assert_eq!(v.has.count_ones(), 1);
        s.handle_message(
            t,
            Message::Bitfield {
                id,
                bits: vec![0xff; 3],
            },
        );
        assert_eq!(s.view_mut().unwrap().has.count_ones(), 20);
    }
}
