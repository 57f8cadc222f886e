//! The uploader's side in the simulator, as `leaf::upload::serve_inner` drives it: after every
//! input, the session's messages, the swarm's peers when due, `Have`s of chunks gained (a
//! partial file) or shown (super-seeding), then one request answered at a time.

use std::net::SocketAddr;

use transfer::view::ShownTo;
use transfer::{UploadEnd, UploadEvent, UploadSession};
use wire::{Bitfield, Hello, Message, Role, TransferErrorKind};

use super::{Conn, Ev, Msg, Sim};
use crate::swarm::PEX_EVERY;

impl Sim {
    /// Opens a connection from node `down`'s source `src` to node `up`; returns its number.
    pub(crate) fn open_conn(&mut self, down: usize, up: usize, src: usize) -> usize {
        let now = self.instant();
        let node = &self.nodes[up];
        let mine = Hello::new(node.id, Role::Leaf, Some(node.addr), crate::AGENT);
        let session = UploadSession::new(now, self.nodes[down].id, mine);
        let slot_conn = node.slots.new_conn();
        let conn = self.conns.len();
        self.conns.push(Conn {
            down,
            up,
            src,
            session,
            slot_conn,
            subscribed: None,
            pex: None,
            admitted: false,
            open_down: true,
            open_up: true,
            up_gen: 0,
        });
        self.nodes[up].uploads.push(conn);
        self.socket_opened(down, false);
        self.socket_opened(up, true);
        let node = &mut self.nodes[down];
        node.max_peer_set = node.max_peer_set.max(node.sockets - node.unadmitted);
        conn
    }

    /// The uploader's side of `conn` acts on what it has, as the driver's loop does.
    pub(crate) fn pump(&mut self, conn: usize) {
        loop {
            if !self.conns[conn].open_up {
                return;
            }
            let now = self.now;
            let up = self.conns[conn].up;
            let file = self.file;
            let mut replies: Vec<Message> =
                std::iter::from_fn(|| self.conns[conn].session.poll_transmit()).collect();
            if let Some(due) = self.conns[conn].pex.filter(|due| now >= *due) {
                let c = &self.conns[conn];
                let to = c
                    .session
                    .listen_port()
                    .map(|p| SocketAddr::new(self.nodes[c.down].addr.ip(), p));
                let addrs = self.nodes[up].swarm_peers.tell(file, to);
                if !addrs.is_empty() {
                    replies.push(Message::Peers { id: file, addrs });
                }
                self.conns[conn].pex = Some(due.max(now) + PEX_EVERY);
            }
            let has = &self.nodes[up].has;
            let c = &mut self.conns[conn];
            if let Some(told) = c.subscribed.as_mut() {
                if has.count_ones() != told.count_ones() {
                    let news = transfer::view::news_for(file, has, told, c.session.view());
                    replies.extend(news.into_iter().map(|i| Message::Have {
                        id: file,
                        index: i as u32,
                    }));
                }
            }
            let asking = c.session.pending();
            if let Some(view) = c.session.view_mut() {
                let serving = self.nodes[up].slots.holds(c.slot_conn);
                let shown = self.nodes[up].spread.pick(view.id, view, serving, asking);
                replies.extend(shown.into_iter().map(|i| Message::Have {
                    id: file,
                    index: i as u32,
                }));
            }
            for m in replies {
                self.send(conn, false, Msg::M(m));
            }
            if self.conns[conn].session.end().is_some() {
                let failed = matches!(self.conns[conn].session.end(), Some(UploadEnd::Failed(_)));
                self.close_up(conn, failed || self.conns[conn].open_down);
                return;
            }
            match self.conns[conn].session.poll_request() {
                Some(req) => {
                    let reply = self.answer(conn, req);
                    self.send(conn, false, reply);
                }
                None => break,
            }
        }
        // Nothing to serve: wake at the session's timeout or the next source exchange.
        let c = &mut self.conns[conn];
        let until = match (c.session.poll_timeout(), c.pex) {
            (Some(a), Some(b)) => Some((a - self.base).min(b)),
            (a, b) => a.map(|a| a - self.base).or(b),
        };
        if let Some(t) = until {
            c.up_gen += 1;
            let gen = c.up_gen;
            self.at(t, Ev::UpWake { conn, gen });
        }
    }

    /// The answer to one request, as `leaf::upload` gives it.
    fn answer(&mut self, conn: usize, req: UploadEvent) -> Msg {
        let up = self.conns[conn].up;
        let file = self.file;
        let per_file = self.nodes[up].slots.per_file();
        let busy = |request| Msg::M(crate::upload::too_many(request, file, per_file));
        match req {
            // Downloads here start with the manifest, and nobody browses.
            UploadEvent::Manifest { request, .. } | UploadEvent::Browse { request, .. } => {
                Msg::M(Message::TransferError {
                    request,
                    id: file,
                    kind: TransferErrorKind::NotShared,
                    message: "not simulated".into(),
                })
            }
            UploadEvent::Bitfield { .. } if !self.admit(conn) => busy(0),
            UploadEvent::Bitfield { id } => {
                let count = self.count;
                let node = &mut self.nodes[up];
                let c = &mut self.conns[conn];
                let bits = if node.seeder {
                    if c.session.view().is_none() {
                        if node.spread.join(id, count) {
                            c.session.set_view(ShownTo::new(id, count));
                            return self.bitfield_reply(conn, Bitfield::new(count));
                        }
                        c.session.set_view(ShownTo::unspread(id, count));
                    }
                    Bitfield::full(count)
                } else {
                    if c.session.view().is_none() {
                        c.session.set_view(ShownTo::unspread(id, count));
                    }
                    c.subscribed = Some(node.has.clone());
                    node.has.clone()
                };
                self.bitfield_reply(conn, bits)
            }
            UploadEvent::Chunk { request, .. } if !self.admit(conn) => busy(request),
            UploadEvent::Chunk { request, id, index } => {
                let now = self.instant();
                let c = &self.conns[conn];
                let (who, serves) = (c.session.peer(), c.session.serves());
                let node = &mut self.nodes[up];
                if let Err(position) = node.slots.acquire_as(c.slot_conn, who, serves, now) {
                    return Msg::M(Message::Queued { request, position });
                }
                if !node.has.get(index as u64) {
                    return Msg::M(Message::TransferError {
                        request,
                        id,
                        kind: TransferErrorKind::Unavailable,
                        message: format!("chunk {index} is not verified here yet"),
                    });
                }
                if node.seeder {
                    node.spread.sent(id, index as u64);
                }
                let start = index as u64 * self.chunk;
                let len = (self.cfg.size.min(start + self.chunk) - start) as u32;
                node.uploaded += len as u64;
                Msg::Chunk {
                    request,
                    index,
                    len,
                }
            }
        }
    }

    /// A bitfield sent: the downloader is a peer of the swarm met first-hand, told of the
    /// others from now on.
    fn bitfield_reply(&mut self, conn: usize, bits: Bitfield) -> Msg {
        let c = &mut self.conns[conn];
        if let Some(port) = c.session.listen_port() {
            let at = SocketAddr::new(self.nodes[c.down].addr.ip(), port);
            self.nodes[c.up].swarm_peers.note(self.file, at);
        }
        c.pex = Some(self.now);
        Msg::M(Message::Bitfield {
            id: self.file,
            bits: bits.into_bytes(),
        })
    }

    /// Whether `conn` may ask for the file here (the per-file cap).
    fn admit(&mut self, conn: usize) -> bool {
        let c = &mut self.conns[conn];
        if !c.admitted {
            c.admitted = self.nodes[c.up].slots.admit_file(c.slot_conn, self.file);
            if c.admitted {
                let up = c.up;
                self.socket_admitted(up);
            }
        }
        self.conns[conn].admitted
    }

    /// The uploader's side of `conn` is done: its slot, place and view go; the downloader
    /// hears of it if `tell`.
    pub(crate) fn close_up(&mut self, conn: usize, tell: bool) {
        let now = self.instant();
        let c = &mut self.conns[conn];
        if !c.open_up {
            return;
        }
        c.open_up = false;
        let up = c.up;
        // Nobody reads what the downloader still sends here.
        let down = c.down;
        self.nodes[down].uplink.drop_flow((conn, true));
        let joined = c.session.view_mut().is_some() && self.nodes[up].seeder;
        self.nodes[up].slots.release_at(c.slot_conn, now);
        if joined {
            self.nodes[up].spread.leave(self.file);
        }
        self.nodes[up].uploads.retain(|&x| x != conn);
        let unadmitted = !self.conns[conn].admitted;
        self.socket_closed(up, unadmitted);
        if tell && self.conns[conn].open_down {
            self.notify_closed(conn, false);
        }
    }

    /// Node `n` gained a chunk: its upload connections tell their downloaders.
    pub(crate) fn gained(&mut self, n: usize) {
        for conn in self.nodes[n].uploads.clone() {
            if self.conns[conn].subscribed.is_some() {
                self.pump(conn);
            }
        }
    }
}
