//! Serving chunks to other leaves: upload slots chosen tit-for-tat, a queue, cancels, the upload
//! cap, and chunks of files still downloading.
//!
//! A downloader connects, says Hello, and sends manifest and chunk requests, several at a time.
//! Requests name content ids only: the file is looked up among this node's shares, or among
//! the files it is downloading or seeding ([`crate::swarm::PartialFile`]), so nothing the
//! network sends is ever used as a path, and a file that changed on disk since it was hashed
//! is not served under its old id. Of a file still downloading, only chunks verified here are
//! served; a request for any other is refused. `GetBitfield` is answered with the chunks held
//! and then, while the connection lasts, a `Have` for each chunk verified.
//!
//! Chunks are served only to connections holding one of the node's upload slots; others are
//! answered `Queued { position }`, keep their place while they stay connected and ask again.
//! Slots are handed out tit-for-tat ([`UploadSlots::acquire`]): a slot held for a round
//! ([`ROUND`]) goes to a waiting peer that has uploaded more to this node lately
//! ([`crate::swarm::Reciprocity`]), or, among peers that uploaded equally (nothing, say, to a
//! seeder), to the one served least recently, so everyone gets turns. Once every
//! [`OPTIMISTIC_EVERY`], the waiting peer served least recently takes a slot whatever it
//! uploaded (the optimistic slot): a free rider is served, but after the others. Manifests
//! and bitfields need no slot. Every chunk sent takes its bytes from the node's upload cap
//! first.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smol::channel;
use smol::net::TcpStream;
use transport::net::{write_message_within, FrameReader};
use transport::secure::SecureStream;
use wire::{
    Bitfield, ChunkMsg, FileId, Hello, ManifestMsg, Message, NodeId, Role, TransferErrorKind,
};

use crate::node::Inner;
use crate::swarm::{PartialFile, Reciprocity, ShownTo};
use transfer::upload::{UploadEnd, MAX_PENDING};
use transfer::{UploadEvent, UploadSession};

/// A queued connection that has not asked again for this long loses its turn at the head; a
/// slot holder that has not asked for this long gives its slot up.
const STALE_IN_QUEUE: Duration = Duration::from_secs(5);
/// A slot is held at least this long before a waiting peer may take it.
pub const ROUND: Duration = Duration::from_secs(3);
/// How often the optimistic slot changes hands.
pub const OPTIMISTIC_EVERY: Duration = Duration::from_secs(9);
/// A downloader that takes longer than this to accept one message is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Grants remembered for status and tests.
const GRANTS_KEPT: usize = 1000;

/// The node's upload slots and the queue of connections waiting for one.
#[derive(Debug)]
pub struct UploadSlots {
    max: usize,
    next_conn: AtomicU64,
    state: Mutex<SlotState>,
    /// What each peer uploaded to this node lately: the ranking of requesters.
    pub reciprocity: Arc<Reciprocity>,
}

#[derive(Debug)]
struct Holder {
    conn: u64,
    who: NodeId,
    /// Whether it serves others (it gave a listen address).
    serves: bool,
    /// When it got the slot.
    since: Instant,
    /// When it last asked for a chunk.
    asked: Instant,
}

#[derive(Debug, Default)]
struct SlotState {
    /// Connections holding a slot.
    active: Vec<Holder>,
    /// Connections waiting, in the order they came, with who they are and when each last
    /// asked.
    queue: VecDeque<(u64, NodeId, bool, Instant)>,
    /// Node ids in the order they were granted a slot (most recent last).
    granted: VecDeque<NodeId>,
    /// When each peer last held a slot (it was granted one, or gave one up).
    last_served: HashMap<NodeId, Instant>,
    /// When the optimistic slot last changed hands.
    last_optimistic: Option<Instant>,
    /// When the first peer asked (the optimistic clock starts there).
    started: Option<Instant>,
}

impl UploadSlots {
    /// `max` slots (at least one), ranking requesters by `reciprocity`.
    pub fn new(max: usize, reciprocity: Arc<Reciprocity>) -> Self {
        UploadSlots {
            max: max.max(1),
            next_conn: AtomicU64::new(1),
            state: Mutex::new(SlotState::default()),
            reciprocity,
        }
    }

    fn new_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A slot for `conn` (peer `who`), asking at `now`: `Ok` if it holds one (now or
    /// already), else its place in the queue.
    ///
    /// Waiting peers are ranked by what they uploaded to us lately, then by how long ago they
    /// were last served (never: first), then by arrival. A free slot goes to the first in that
    /// rank. A slot held for a [`ROUND`] goes to the first in rank if it ranks above the
    /// holder (the holder counting as served now); and once every [`OPTIMISTIC_EVERY`] the
    /// waiting peer served least recently takes the lowest-ranked slot held for a round.
    pub fn acquire(&self, conn: u64, who: NodeId, now: Instant) -> Result<(), u32> {
        self.acquire_as(conn, who, true, now)
    }

    /// [`UploadSlots::acquire`] for a peer that says whether it serves others (it gave a
    /// listen address in its Hello). Between peers that uploaded equally to us, one that
    /// serves ranks first: a peer that serves nobody is a free rider, served by the optimistic
    /// slot and by slots nobody else wants.
    pub fn acquire_as(
        &self,
        conn: u64,
        who: NodeId,
        serves: bool,
        now: Instant,
    ) -> Result<(), u32> {
        let mut guard = self.state.lock().unwrap();
        let s = &mut *guard;
        let started = *s.started.get_or_insert(now);
        if let Some(h) = s.active.iter_mut().find(|h| h.conn == conn) {
            h.asked = now;
            return Ok(());
        }
        match s.queue.iter_mut().find(|(c, _, _, _)| *c == conn) {
            Some(entry) => entry.3 = now,
            None => s.queue.push_back((conn, who, serves, now)),
        }
        // Holders that stopped asking (they need nothing more from us) give their slot up.
        let idle: Vec<NodeId> = s
            .active
            .iter()
            .filter(|h| now.saturating_duration_since(h.asked) > STALE_IN_QUEUE)
            .map(|h| h.who)
            .collect();
        for w in idle {
            s.last_served.insert(w, now);
        }
        s.active
            .retain(|h| now.saturating_duration_since(h.asked) <= STALE_IN_QUEUE);
        // Waiting peers that still ask, best first.
        let score = |w: &NodeId| self.reciprocity.score(w, now);
        let served = |s: &SlotState, w: &NodeId| s.last_served.get(w).copied();
        let mut rank: Vec<(usize, (f64, bool), Option<Instant>)> = s
            .queue
            .iter()
            .enumerate()
            .filter(|(_, (c, _, _, asked))| {
                *c == conn || now.saturating_duration_since(*asked) <= STALE_IN_QUEUE
            })
            .map(|(i, (_, w, serves, _))| (i, (score(w), *serves), served(s, w)))
            .collect();
        rank.sort_by(|a, b| {
            b.1 .0
                .total_cmp(&a.1 .0)
                .then(b.1 .1.cmp(&a.1 .1)) // serving peers first
                .then(a.2.cmp(&b.2)) // None (never served) first
                .then(a.0.cmp(&b.0))
        });
        let place = rank
            .iter()
            .position(|(i, _, _)| s.queue[*i].0 == conn)
            .expect("conn is in the queue");
        let my_rank = rank[place].1;
        let my_served = rank[place].2;
        let grant = |s: &mut SlotState, replace: Option<usize>, optimistic: bool| {
            if let Some(k) = replace {
                let old = s.active.remove(k);
                s.last_served.insert(old.who, now);
                // The holder waits again, keeping its connection's place.
                s.queue
                    .push_back((old.conn, old.who, old.serves, old.asked));
            }
            s.queue.retain(|(c, _, _, _)| *c != conn);
            s.active.push(Holder {
                conn,
                who,
                serves,
                since: now,
                asked: now,
            });
            s.last_served.insert(who, now);
            if optimistic {
                s.last_optimistic = Some(now);
            }
            s.granted.push_back(who);
            if s.granted.len() > GRANTS_KEPT {
                s.granted.pop_front();
            }
        };
        if place == 0 && s.active.len() < self.max {
            grant(s, None, false);
            return Ok(());
        }
        // Holders whose round is over, lowest rank first (a holder counts as served now).
        let mut expired: Vec<(usize, (f64, bool), Instant)> = s
            .active
            .iter()
            .enumerate()
            .filter(|(_, h)| now.saturating_duration_since(h.since) >= ROUND)
            .map(|(k, h)| (k, (score(&h.who), h.serves), h.since))
            .collect();
        expired.sort_by(|a, b| {
            a.1 .0
                .total_cmp(&b.1 .0)
                .then(a.1 .1.cmp(&b.1 .1))
                .then(a.2.cmp(&b.2))
        });
        if let Some(&(k, holder_rank, _)) = expired.first() {
            // Tit-for-tat: the best waiting peer takes the slot of a holder it outranks (or
            // equals: the holder counts as served now).
            let outranks = my_rank.0 > holder_rank.0
                || (my_rank.0 == holder_rank.0 && my_rank.1 >= holder_rank.1);
            if place == 0 && outranks {
                grant(s, Some(k), false);
                return Ok(());
            }
            // Optimistic: the peer served least recently, whatever it uploaded.
            let least_recent = rank
                .iter()
                .map(|(_, _, served)| *served)
                .min()
                .expect("conn is ranked");
            let due = now.saturating_duration_since(s.last_optimistic.unwrap_or(started))
                >= OPTIMISTIC_EVERY;
            if due && my_served == least_recent {
                grant(s, Some(k), true);
                return Ok(());
            }
        }
        Err(place as u32 + 1)
    }

    /// `conn` is gone: free its slot or its place.
    fn release(&self, conn: u64) {
        let mut s = self.state.lock().unwrap();
        let now = Instant::now();
        if let Some(h) = s.active.iter().find(|h| h.conn == conn) {
            let who = h.who;
            s.last_served.insert(who, now);
        }
        s.active.retain(|h| h.conn != conn);
        s.queue.retain(|(c, _, _, _)| *c != conn);
    }

    /// How many slots there are.
    pub fn max(&self) -> usize {
        self.max
    }

    /// (slots in use, connections queued).
    pub fn usage(&self) -> (usize, usize) {
        let s = self.state.lock().unwrap();
        (s.active.len(), s.queue.len())
    }

    /// The node ids granted a slot, in order (the last 1000).
    pub fn grants(&self) -> Vec<NodeId> {
        self.state.lock().unwrap().granted.iter().copied().collect()
    }
}

/// Frees a connection's slot or place however its task ends.
struct SlotGuard<'a>(&'a UploadSlots, u64);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.release(self.1);
    }
}

/// Serves one downloader's connection until it closes or misbehaves.
pub(crate) async fn serve(node: Arc<Inner>, stream: TcpStream, peer: SocketAddr) {
    let limit = node.limits.handshake_timeout;
    let secure = match transport::secure::accept(stream, &node.identity, limit).await {
        Ok(secure) => secure,
        Err(e) => {
            log::warn!("download connection from {peer}: {e} (handshake_timeout {limit:?})");
            return;
        }
    };
    if let Err(reason) = serve_inner(&node, secure).await {
        log::info!("upload connection from {peer} closed: {reason}");
    }
}

async fn serve_inner(node: &Inner, stream: SecureStream<TcpStream>) -> Result<(), String> {
    let mut writer = stream.writer;
    let mut reader = FrameReader::new(stream.reader);
    let mut scratch = Vec::new();
    let mine = Hello::new(node.node_id, Role::Leaf, node.listen, crate::AGENT);
    let mut session = UploadSession::new(Instant::now(), stream.peer, mine);
    let conn = node.slots.new_conn();
    let _slot = SlotGuard(&node.slots, conn);
    // Messages are read ahead, so a Cancel can remove a request not yet served; the session
    // bounds how many wait.
    let (tx, rx) = channel::bounded::<Result<Option<Message>, String>>(MAX_PENDING);
    let read_ahead = smol::spawn(async move {
        loop {
            let msg = reader.read_message().await.map_err(|e| e.to_string());
            let stop = !matches!(msg, Ok(Some(_)));
            if tx.send(msg).await.is_err() || stop {
                return;
            }
        }
    });
    // Files still downloading that this downloader asked the bitfield of, with the chunks it
    // was told of.
    let mut subscribed: Vec<(Arc<PartialFile>, Bitfield)> = Vec::new();
    let mut joined: Option<FileId> = None;
    let result = loop {
        // Everything the session has to say, then the chunks gained and shown since.
        let mut out: Vec<Message> = std::iter::from_fn(|| session.poll_transmit()).collect();
        for (p, told) in subscribed.iter_mut() {
            if p.have_count() != told.count_ones() {
                let now = p.bits();
                out.extend(now.ones_not_in(told).map(|c| Message::Have {
                    id: p.id,
                    index: c as u32,
                }));
                *told = now;
            }
        }
        if let Some(view) = session.view_mut() {
            out.extend(
                node.spread
                    .pick(view.id, view)
                    .into_iter()
                    .map(|c| Message::Have {
                        id: view.id,
                        index: c as u32,
                    }),
            );
        }
        let mut failed = None;
        for msg in &out {
            if let Err(e) =
                write_message_within(&mut writer, msg, &mut scratch, WRITE_TIMEOUT).await
            {
                failed = Some(e.to_string());
                break;
            }
        }
        if let Some(e) = failed {
            break Err(e);
        }
        match session.end() {
            Some(UploadEnd::Closed) => break Ok(()),
            Some(UploadEnd::Failed(why)) => break Err(why.clone()),
            None => {}
        }
        if let Some(request) = session.poll_request() {
            let reply = match request {
                UploadEvent::Manifest { request, id } => match manifest_of(node, &id) {
                    Some(m) => Message::Manifest(ManifestMsg {
                        request,
                        id,
                        size: m.size,
                        chunk_size: m.chunk_size,
                        cvs: m.cvs,
                    }),
                    None => not_shared(request, id),
                },
                UploadEvent::Bitfield { id } => {
                    bitfield_of(node, id, &mut session, &mut subscribed, &mut joined)
                }
                UploadEvent::Chunk { request, id, index } => {
                    let (who, serves) = (session.peer(), session.serves());
                    match node.slots.acquire_as(conn, who, serves, Instant::now()) {
                        Err(position) => Message::Queued { request, position },
                        Ok(()) => serve_chunk(node, request, id, index).await,
                    }
                }
            };
            if let Err(e) =
                write_message_within(&mut writer, &reply, &mut scratch, WRITE_TIMEOUT).await
            {
                break Err(e.to_string());
            }
            // Read what came meanwhile before the next request, so its Cancels apply.
            while let Ok(next) = rx.try_recv() {
                feed(&mut session, next);
            }
            continue;
        }
        // Nothing to serve: wait for a message, a chunk gained by a file we are fetching, or
        // the session's timeout.
        let until = session.poll_timeout();
        let gained = subscribed.first().map(|(p, _)| p.changed.listen());
        let next = smol::future::or(async { Some(rx.recv().await) }, async {
            let timer = async {
                match until {
                    Some(t) => smol::Timer::at(t).await,
                    None => std::future::pending().await,
                };
            };
            match gained {
                Some(l) => smol::future::or(l, timer).await,
                None => timer.await,
            }
            None
        })
        .await;
        match next {
            Some(Ok(msg)) => feed(&mut session, msg),
            Some(Err(_)) => session.handle_closed(None),
            None => session.handle_timeout(Instant::now()),
        }
    };
    read_ahead.cancel().await;
    if let Some(id) = joined {
        node.spread.leave(id);
    }
    result
}

/// Hands what the read-ahead task read to the session.
fn feed(session: &mut UploadSession, read: Result<Option<Message>, String>) {
    match read {
        Ok(Some(msg)) => session.handle_message(Instant::now(), msg),
        Ok(None) => session.handle_closed(None),
        Err(e) => session.handle_closed(Some(e)),
    }
}

/// The answer to `GetBitfield { id }`: a complete copy shows everything, or, while several
/// downloaders fetch it from here, a few chunks at a time (each shown different ones); a file
/// still downloading shows what is verified, and then each chunk as it is gained.
fn bitfield_of(
    node: &Inner,
    id: FileId,
    session: &mut UploadSession,
    subscribed: &mut Vec<(Arc<PartialFile>, Bitfield)>,
    joined: &mut Option<FileId>,
) -> Message {
    let shared = node.shares.read().unwrap().get(&id);
    let partial = node.partials.lock().unwrap().get(&id).cloned();
    match (shared, partial) {
        (Some(f), _) => {
            let count = f.manifest().chunk_count();
            if joined.is_none() && session.view_mut().is_none() {
                if node.spread.join(id, count) {
                    *joined = Some(id);
                    session.set_view(ShownTo::new(id, count));
                    return Message::Bitfield {
                        id,
                        bits: Bitfield::new(count).into_bytes(),
                    };
                }
                *joined = Some(id);
                let mut view = ShownTo::new(id, count);
                view.shown = Bitfield::full(count);
                session.set_view(view);
            }
            Message::Bitfield {
                id,
                bits: Bitfield::full(count).into_bytes(),
            }
        }
        (None, Some(p)) => {
            let bits = p.bits();
            subscribed.retain(|(q, _)| q.id != id);
            let msg = Message::Bitfield {
                id,
                bits: bits.as_bytes().to_vec(),
            };
            subscribed.push((p, bits));
            msg
        }
        (None, None) => not_shared(0, id),
    }
}

fn manifest_of(node: &Inner, id: &wire::FileId) -> Option<wire::Manifest> {
    if let Some(f) = node.shares.read().unwrap().get(id) {
        return Some(f.manifest());
    }
    let partial = node.partials.lock().unwrap().get(id).cloned();
    partial.map(|p| p.manifest.clone())
}

/// A chunk of a file downloading or seeding here: only if it is verified.
async fn serve_partial(node: &Inner, p: Arc<PartialFile>, request: u32, index: u32) -> Message {
    let id = p.id;
    let count = p.manifest.chunk_count();
    if index as u64 >= count {
        return Message::TransferError {
            request,
            id,
            kind: TransferErrorKind::BadIndex,
            message: format!("chunk {index} of {count}"),
        };
    }
    if !p.has(index as u64) {
        return Message::TransferError {
            request,
            id,
            kind: TransferErrorKind::Unavailable,
            message: format!("chunk {index} is not verified here yet"),
        };
    }
    let source = p.clone();
    match smol::unblock(move || source.read_chunk(index as u64)).await {
        Ok(data) => {
            node.upload_cap.take(data.len() as u64).await;
            node.uploaded_chunks.fetch_add(1, Ordering::Relaxed);
            node.uploaded_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            p.uploaded.fetch_add(data.len() as u64, Ordering::Relaxed);
            Message::Chunk(ChunkMsg {
                request,
                id,
                index,
                data,
            })
        }
        Err(e) => {
            log::warn!("cannot read chunk {index} of {}: {e}", id.short());
            Message::TransferError {
                request,
                id,
                kind: TransferErrorKind::Unavailable,
                message: "the file cannot be read".into(),
            }
        }
    }
}

async fn serve_chunk(node: &Inner, request: u32, id: wire::FileId, index: u32) -> Message {
    let shared = node.shares.read().unwrap().get(&id);
    let Some(f) = shared else {
        let partial = node.partials.lock().unwrap().get(&id).cloned();
        return match partial {
            Some(p) => serve_partial(node, p, request, index).await,
            None => not_shared(request, id),
        };
    };
    let m = f.manifest();
    if index as u64 >= m.chunk_count() {
        return Message::TransferError {
            request,
            id,
            kind: TransferErrorKind::BadIndex,
            message: format!("chunk {index} of {}", m.chunk_count()),
        };
    }
    let range = m.chunk_range(index as u64);
    let path = f.local.clone();
    let read = smol::unblock(move || {
        // A shared file swapped for a symbolic link since it was shared is not followed.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)?;
        let mut data = vec![0u8; (range.end - range.start) as usize];
        file.read_exact_at(&mut data, range.start)?;
        Ok::<_, std::io::Error>(data)
    })
    .await;
    match read {
        Ok(data) => {
            node.upload_cap.take(data.len() as u64).await;
            node.uploaded_chunks.fetch_add(1, Ordering::Relaxed);
            node.uploaded_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            node.spread.sent(id, index as u64);
            Message::Chunk(ChunkMsg {
                request,
                id,
                index,
                data,
            })
        }
        Err(e) => {
            log::warn!("cannot read {}: {e}", f.local.display());
            Message::TransferError {
                request,
                id,
                kind: TransferErrorKind::Unavailable,
                message: "the file cannot be read".into(),
            }
        }
    }
}

fn not_shared(request: u32, id: wire::FileId) -> Message {
    Message::TransferError {
        request,
        id,
        kind: TransferErrorKind::NotShared,
        message: "not shared here".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_go_first_come_first_served() {
        let slots = UploadSlots::new(2, Arc::default());
        let who = |n: u8| NodeId([n; 32]);
        let t = Instant::now();
        assert_eq!(slots.acquire(1, who(1), t), Ok(()));
        assert_eq!(slots.acquire(2, who(2), t), Ok(()));
        assert_eq!(slots.acquire(3, who(3), t), Err(1));
        assert_eq!(slots.acquire(4, who(4), t), Err(2));
        assert_eq!(
            slots.acquire(3, who(3), t),
            Err(1),
            "asking again keeps the place"
        );
        slots.release(1);
        assert_eq!(
            slots.acquire(4, who(4), t),
            Err(2),
            "only the first in line may take a slot"
        );
        assert_eq!(slots.acquire(3, who(3), t), Ok(()));
        assert_eq!(slots.acquire(4, who(4), t), Err(1));
        slots.release(4);
        assert_eq!(slots.usage(), (2, 0));
        assert_eq!(slots.grants(), vec![who(1), who(2), who(3)]);
    }

    #[test]
    fn a_queue_head_that_stops_asking_loses_its_turn() {
        let slots = UploadSlots::new(1, Arc::default());
        let who = |n: u8| NodeId([n; 32]);
        let t = Instant::now();
        assert_eq!(slots.acquire(1, who(1), t), Ok(()));
        assert_eq!(slots.acquire(2, who(2), t), Err(1));
        assert_eq!(slots.acquire(3, who(3), t), Err(2));
        slots.release(1);
        // 2 went quiet; 3 keeps asking and, once 2 is stale, goes ahead.
        let later = t + STALE_IN_QUEUE + Duration::from_secs(1);
        assert_eq!(slots.acquire(3, who(3), later), Ok(()));
        assert_eq!(slots.acquire(2, who(2), later), Err(1));
    }

    #[test]
    fn peers_that_upload_back_take_expired_slots_and_free_riders_wait_their_optimistic_turn() {
        let slots = UploadSlots::new(1, Arc::default());
        let who = |n: u8| NodeId([n; 32]);
        let t = Instant::now();
        // Peer 2 has uploaded to us; peer 3 never has (a free rider).
        slots.reciprocity.record(who(2), 1 << 20, t);
        assert_eq!(
            slots.acquire(3, who(3), t),
            Ok(()),
            "a free slot goes to whoever asks"
        );
        assert_eq!(slots.acquire(2, who(2), t), Err(1));
        // Within the round the holder keeps its slot; after it, the uploader takes it.
        let t1 = t + ROUND / 2;
        assert_eq!(slots.acquire(3, who(3), t1), Ok(()));
        assert_eq!(slots.acquire(2, who(2), t1), Err(1));
        let t2 = t + ROUND;
        assert_eq!(slots.acquire(2, who(2), t2), Ok(()));
        assert_eq!(slots.acquire(3, who(3), t2), Err(1));
        // The free rider does not outrank the uploader when the round is over again...
        let t3 = t2 + ROUND;
        slots.reciprocity.record(who(2), 1 << 20, t3);
        assert_eq!(slots.acquire(2, who(2), t3), Ok(()));
        assert_eq!(slots.acquire(3, who(3), t3), Err(1));
        // ...until the optimistic slot is due: then it is served (least recently served).
        let t4 = t + OPTIMISTIC_EVERY;
        slots.reciprocity.record(who(2), 1 << 20, t4);
        assert_eq!(slots.acquire(2, who(2), t4), Ok(()));
        assert_eq!(slots.acquire(3, who(3), t4), Ok(()), "the optimistic turn");
        assert_eq!(slots.acquire(2, who(2), t4), Err(1));
        assert_eq!(slots.grants(), vec![who(3), who(2), who(3)]);
    }

    #[test]
    fn equal_peers_take_turns_round_by_round() {
        // A seeder: nobody uploads to it, so every slot rotates once its round is over.
        let slots = UploadSlots::new(2, Arc::default());
        let who = |n: u8| NodeId([n; 32]);
        let t = Instant::now();
        for n in 1..=4u8 {
            let _ = slots.acquire(n as u64, who(n), t);
        }
        let t1 = t + ROUND;
        // 1 and 2 still ask, but 3 and 4 have waited: they take the slots.
        let _ = slots.acquire(1, who(1), t1);
        let _ = slots.acquire(2, who(2), t1);
        assert_eq!(slots.acquire(3, who(3), t1), Ok(()));
        assert_eq!(slots.acquire(4, who(4), t1), Ok(()));
        assert!(slots.acquire(1, who(1), t1).is_err());
        assert!(slots.acquire(2, who(2), t1).is_err());
        let mut grants = slots.grants();
        grants.sort_by_key(|n| n.0[0]);
        assert_eq!(grants, vec![who(1), who(2), who(3), who(4)]);
    }

    #[test]
    fn a_peer_that_serves_nobody_ranks_after_equal_peers_that_do() {
        // At a seeder nobody uploads back; a downloader that serves others still goes first.
        let slots = UploadSlots::new(1, Arc::default());
        let who = |n: u8| NodeId([n; 32]);
        let t = Instant::now();
        assert_eq!(slots.acquire_as(1, who(1), true, t), Ok(()));
        assert_eq!(slots.acquire_as(9, who(9), false, t), Err(1));
        assert_eq!(
            slots.acquire_as(2, who(2), true, t),
            Err(1),
            "ahead of the free rider"
        );
        let t1 = t + ROUND;
        assert_eq!(slots.acquire_as(9, who(9), false, t1), Err(2));
        assert_eq!(
            slots.acquire_as(2, who(2), true, t1),
            Ok(()),
            "the next serving peer"
        );
        // The free rider is served in its optimistic turn.
        let t2 = t + OPTIMISTIC_EVERY;
        assert_eq!(slots.acquire_as(9, who(9), false, t2), Ok(()));
        assert_eq!(slots.acquire_as(1, who(1), true, t2), Err(1));
    }
}
