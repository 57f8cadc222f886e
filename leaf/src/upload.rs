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
//! Chunks are served only to connections holding one of the node's upload slots
//! ([`crate::slots::UploadSlots`]); others are answered `Queued { position }`. Manifests and
//! bitfields need no slot. Every chunk sent takes its bytes from the node's upload cap first.

use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::channel;
use smol::net::TcpStream;
use transport::net::{write_message_within, FrameReader};
use transport::secure::{SecureReader, SecureStream, SecureWriter};
use wire::{
    Bitfield, ChunkMsg, FileId, Hello, ManifestMsg, Message, NodeId, Role, TransferErrorKind,
};

use crate::download::Reached;
use crate::slots::{SlotGuard, Unasked, MAX_UNASKED};
use crate::state::NodeState;
use crate::swarm::{PartialFile, ShownTo};
use transfer::upload::{UploadEnd, MAX_PENDING};
use transfer::{UploadEvent, UploadSession};

/// How long a connection back is tried (it may need the downloader's NAT to open first).
const CONNECT_BACK_FOR: Duration = Duration::from_secs(10);
/// A downloader that takes longer than this to accept one message is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Answers queued for a connection's writer: the next chunk is read from disk while the last
/// is encrypted and sent.
const SEND_AHEAD: usize = 2;
/// Serves one downloader's connection until it closes or misbehaves.
///
/// A connection whose first message is [`Message::Reversed`] is a source connecting back as
/// this node asked ([`crate::reverse`]): it goes to the download waiting for it instead.
/// `unasked`: its place among the connections that have not asked for anything yet, given
/// back once it does (`None`: none was free; its first request is refused if it is for a
/// file).
pub(crate) async fn serve(
    node: Arc<NodeState>,
    stream: TcpStream,
    peer: SocketAddr,
    unasked: Option<Unasked>,
) {
    let limit = node.limits.handshake_timeout;
    let secure = match transport::secure::accept(stream, &node.identity, limit).await {
        Ok(secure) => secure,
        Err(e) => {
            log::warn!("download connection from {peer}: {e} (handshake_timeout {limit:?})");
            return;
        }
    };
    let mut reader = FrameReader::new(secure.reader).limited(transfer::upload::MAX_REQUEST_BODY, 0);
    let first = match reader.read_message_within(limit).await {
        Ok(first) => first,
        Err(e) => {
            log::info!("download connection from {peer}: {e}");
            return;
        }
    };
    if let Message::Reversed { token } = first {
        let accepted = crate::reverse::Accepted {
            reader,
            writer: secure.writer,
            peer: secure.peer,
            remote: peer,
            reached: crate::download::Reached::Reverse,
        };
        if let Err(why) = node.reverse.arrived(token, accepted) {
            log::info!("connection from {peer}: {why}");
        }
        return;
    }
    let stream = Served {
        reader,
        writer: secure.writer,
        peer: secure.peer,
        seen: Some(peer),
    };
    let place = match unasked {
        Some(held) => Place::Held { _place: held },
        None => Place::Beyond,
    };
    if let Err(reason) = serve_inner(&node, stream, Some(first), place, false).await {
        log::info!("upload connection from {peer} closed: {reason}");
    }
}

/// Connects to `addr` as its node asked through our super-peer, names `token`, and serves it
/// as if it had connected to us.
///
/// `place` (one of the few connections back made at once) is given back once the connection
/// is made: serving it is bounded by the upload slots, as any downloader's is.
pub(crate) async fn serve_connect_back(
    node: &NodeState,
    back: crate::overlay::ConnectBack,
    place: crate::reverse::ConnectBackGuard<'_>,
) -> Result<(), String> {
    let (want, addr, token) = (back.node, back.addr, back.token);
    let limit = node.limits.handshake_timeout;
    // Only a hole punch needs our listen port, and the retries; a plain connection back is one
    // attempt from any port (two at once to the same downloader would clash on one port).
    let stream = match back.punch {
        true => {
            // Timed by the super-peer so that the requester, farther from it, dials at the
            // same moment.
            smol::Timer::after(back.wait).await;
            dial_from_listen_port(node, addr).await?
        }
        false => transport::net::connect(addr, limit)
            .await
            .map_err(|e| format!("cannot connect back to {addr}: {e}"))?,
    };
    let _open = Registered::new(node, &stream);
    let secure = transport::secure::connect(stream, &node.identity, limit)
        .await
        .map_err(|e| format!("connecting back to {addr}: {e}"))?;
    let reached = match back.punch {
        true => Reached::Punched,
        false => Reached::Reverse,
    };
    serve_as_asked(
        node,
        secure,
        (want, token),
        &addr.to_string(),
        reached,
        place,
    )
    .await
}

/// Joins relay `token` at the super-peer `via` (its key must be `superpeer`'s), opens our own
/// encrypted session with `want` through it, names the token, and serves `want` there. The
/// super-peer carries only that session's ciphertext.
pub(crate) async fn serve_relayed(
    node: &NodeState,
    back: crate::overlay::RelayBack,
    place: crate::reverse::ConnectBackGuard<'_>,
) -> Result<(), String> {
    let (via, token) = (back.via, back.token);
    let limit = node.limits.handshake_timeout;
    let superpeer = Some(back.superpeer);
    let (raw, writer) =
        crate::reverse::join_relay(&node.identity, via, superpeer, token, limit).await?;
    let _open = Registered::new(node, &raw);
    // Our session with the super-peer ends here: from now on the bytes are the requester's.
    drop(writer);
    let inner = transport::secure::connect(raw, &node.identity, limit)
        .await
        .map_err(|e| format!("through super-peer {via}: {e}"))?;
    let at = format!("through super-peer {via}");
    serve_as_asked(
        node,
        inner,
        (back.node, token),
        &at,
        Reached::Relayed,
        place,
    )
    .await
}

/// An upload connection this node opened, known to the node while it lasts so that shutdown
/// can close it (as it does those it accepted).
struct Registered<'a>(&'a NodeState, u64);

impl<'a> Registered<'a> {
    fn new(node: &'a NodeState, stream: &TcpStream) -> Self {
        let key = node.upload_keys.fetch_add(1, Ordering::Relaxed);
        node.upload_streams
            .lock()
            .unwrap()
            .insert(key, stream.clone());
        Registered(node, key)
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        self.0.upload_streams.lock().unwrap().remove(&self.1);
    }
}

/// On a connection we opened because someone asked (back, punched or relayed): checks it is
/// `want` who answered, names `token` ([`Message::Reversed`]), gives the connect-back `place`
/// back, and serves `want` as if it had connected to us.
async fn serve_as_asked(
    node: &NodeState,
    secure: SecureStream<TcpStream>,
    (want, token): (NodeId, u64),
    at: &str,
    reached: Reached,
    place: crate::reverse::ConnectBackGuard<'_>,
) -> Result<(), String> {
    if secure.peer != want {
        return Err(format!(
            "{at}: node {}, not {} who asked",
            secure.peer.short(),
            want.short()
        ));
    }
    let mut writer = secure.writer;
    let named = Message::Reversed { token };
    let limit = node.limits.handshake_timeout;
    write_message_within(&mut writer, &named, &mut Vec::new(), limit)
        .await
        .map_err(|e| format!("{at}: {e}"))?;
    drop(place);
    node.reverse.count(reached);
    let stream = Served {
        reader: FrameReader::new(secure.reader).limited(transfer::upload::MAX_REQUEST_BODY, 0),
        writer,
        peer: secure.peer,
        // Through its router or a relay: not an address to tell others of.
        seen: None,
    };
    // Our Hello follows the token at once: the downloader needs no round trip for it.
    serve_inner(node, stream, None, Place::Asked, true).await
}

/// A connection's place among those accepted that have not asked for anything yet
/// ([`crate::slots::UploadSlots::unasked`]).
enum Place {
    /// It holds one, given back at its first request (when this is dropped).
    Held { _place: Unasked },
    /// None was free: if its first request is for a file, it is refused.
    Beyond,
    /// It has asked (or we opened the connection): it needs none.
    Asked,
}

/// Dials `addr` from our listen port (so our NAT maps it as it maps that port), again and again
/// for [`CONNECT_BACK_FOR`]: a downloader behind NAT is dialling us at the same time, and its
/// NAT lets us in only once its own SYN has left (hole punching).
async fn dial_from_listen_port(node: &NodeState, addr: SocketAddr) -> Result<TcpStream, String> {
    let from = node.listen.ok_or("this node listens nowhere")?;
    let deadline = Instant::now() + CONNECT_BACK_FOR;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match transport::net::connect_from(from, addr, left.min(Duration::from_secs(4))).await {
            Ok(stream) => return Ok(stream),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("cannot connect back to {addr}: {e}"))
            }
            Err(_) => smol::Timer::after(Duration::from_millis(200)).await,
        };
    }
}

/// A downloader's connection, whichever side opened it.
struct Served {
    reader: FrameReader<SecureReader<TcpStream>>,
    writer: SecureWriter<TcpStream>,
    peer: NodeId,
    /// Where its connection came from, when it dialled us.
    seen: Option<SocketAddr>,
}

/// `place`: the connection's place among those that have not asked for anything yet. A
/// connection that has been refused every file it asked for, and asked for nothing else, is
/// closed once told.
async fn serve_inner(
    node: &NodeState,
    stream: Served,
    first: Option<Message>,
    mut place: Place,
    hello_first: bool,
) -> Result<(), String> {
    let mut reader = stream.reader;
    // Everything sent goes through the writer task, in order. A failed write ends it and shuts
    // the connection, so the reading side below ends too (the next send here would also find
    // the queue closed); its error is the connection's.
    let (out, out_rx) = channel::bounded::<Message>(SEND_AHEAD);
    let mut writer = stream.writer;
    let write_task = transport::rt::spawn(async move {
        let mut scratch = Vec::new();
        while let Ok(msg) = out_rx.recv().await {
            if let Err(e) =
                write_message_within(&mut writer, &msg, &mut scratch, WRITE_TIMEOUT).await
            {
                let _ = writer.get_ref().shutdown(std::net::Shutdown::Both);
                return Err(e.to_string());
            }
        }
        Ok::<(), String>(())
    });
    let mut open = OpenShare::default();
    let mine = Hello::new(node.node_id, Role::Leaf, node.listen, crate::AGENT);
    let mut session = UploadSession::new(Instant::now(), stream.peer, mine);
    if hello_first {
        session.hello_first();
    }
    let conn = node.slots.new_conn();
    let slot = SlotGuard(&node.slots, conn);
    // Messages are read ahead, so a Cancel can remove a request not yet served; the session
    // bounds how many wait.
    let (tx, rx) = channel::bounded::<Result<Option<Message>, String>>(MAX_PENDING);
    if let Some(first) = first {
        let _ = tx.try_send(Ok(Some(first)));
    }
    let read_ahead = transport::rt::spawn(async move {
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
    // Listing pages asked for on this connection.
    let mut browses = 0;
    // The file whose swarm this downloader is told of, and when next (source exchange).
    let mut pex: Option<(FileId, Instant)> = None;
    // Files this connection was admitted for (see `admit`): a chunk request for one of them
    // takes no lock.
    let mut admitted: Vec<FileId> = Vec::new();
    // The complete file whose spread this connection joined (one at most), left when it ends.
    let mut joined: Option<FileId> = None;
    let result = loop {
        // Everything the session has to say, then the chunks gained and shown since.
        let mut replies: Vec<Message> = std::iter::from_fn(|| session.poll_transmit()).collect();
        if let Some((id, due)) = pex.filter(|(_, due)| Instant::now() >= *due) {
            let addrs = node.swarm_peers.tell(
                id,
                stream
                    .seen
                    .zip(session.listen_port())
                    .map(|(s, p)| SocketAddr::new(s.ip(), p)),
            );
            if !addrs.is_empty() {
                replies.push(Message::Peers { id, addrs });
            }
            pex = Some((id, due.max(Instant::now()) + crate::swarm::PEX_EVERY));
        }
        for (p, told) in subscribed.iter_mut() {
            if p.have_count() != told.count_ones() {
                let news = transfer::view::news_for(p.id, &p.bits(), told, session.view());
                replies.extend(news.into_iter().map(|c| Message::Have {
                    id: p.id,
                    index: c as u32,
                }));
            }
        }
        let asking = session.pending();
        if let Some(view) = session.view_mut() {
            // A downloader waiting for a slot is shown one chunk to ask for (and queue with).
            let serving = node.slots.holds(conn);
            replies.extend(
                node.spread
                    .with(|s| s.pick(view.id, view, serving, asking))
                    .into_iter()
                    .map(|c| Message::Have {
                        id: view.id,
                        index: c as u32,
                    }),
            );
        }
        let mut failed = false;
        for msg in replies {
            if out.send(msg).await.is_err() {
                failed = true;
                break;
            }
        }
        if failed {
            break Err(WRITER_FAILED.into());
        }
        match session.end() {
            Some(UploadEnd::Closed) => break Ok(()),
            Some(UploadEnd::Failed(why)) => break Err(why.clone()),
            None => {}
        }
        if let Some(request) = session.poll_request() {
            // The first request gives the connection's place back, or, if it had none and
            // asks for a file, is refused. Any request for a file takes one of the file's
            // places for downloaders first.
            let beyond = matches!(std::mem::replace(&mut place, Place::Asked), Place::Beyond);
            // (A file not served here is answered as such, place or not.)
            let refused = request.file().filter(|&id| {
                (beyond && served(node, id)) || !admit(node, conn, id, &mut admitted)
            });
            if let Some(id) = refused {
                let reply = match beyond {
                    true => busy(
                        request.number(),
                        id,
                        &format!(
                            "too many connections here already ({MAX_UNASKED} starting, or \
                             every place of --max-peer-links taken)"
                        ),
                    ),
                    false => too_many(request.number(), id, node.slots.per_file()),
                };
                if out.send(reply).await.is_err() {
                    break Err(WRITER_FAILED.into());
                }
                if admitted.is_empty() && browses == 0 {
                    break Ok(());
                }
                continue;
            }
            let reply = match request {
                // Manifests and bitfields need no slot (a downloader asks for them before it
                // may queue), but their bytes count against the upload cap like chunks'.
                UploadEvent::Manifest { request, id } => match manifest_of(node, &id) {
                    Some(m) => {
                        node.upload_cap.take(m.cvs.len() as u64 * 32).await;
                        Message::Manifest(ManifestMsg {
                            request,
                            id,
                            size: m.size,
                            chunk_size: m.chunk_size,
                            cvs: m.cvs,
                        })
                    }
                    None => not_shared(request, id),
                },
                UploadEvent::Bitfield { id } => {
                    let reply = bitfield_of(node, id, &mut session, &mut subscribed, &mut joined);
                    if let Message::Bitfield { bits, .. } = &reply {
                        node.upload_cap.take(bits.len() as u64).await;
                        // A peer of this file's swarm, where it says it serves; told of the
                        // others from now on (source exchange).
                        let serves_at = stream.seen.zip(session.listen_port());
                        if let Some((seen, port)) = serves_at {
                            node.swarm_peers.note(id, SocketAddr::new(seen.ip(), port));
                        }
                        pex = Some((id, Instant::now()));
                    }
                    reply
                }
                UploadEvent::Browse { request, offset } => {
                    let reply = listing(node, request, offset);
                    browses += 1;
                    let reply = if browses > MAX_BROWSE_PAGES {
                        Message::BrowseRefused {
                            request,
                            reason: format!("more than {MAX_BROWSE_PAGES} pages on one connection"),
                        }
                    } else {
                        reply
                    };
                    if let Message::Listing { files, .. } = &reply {
                        let bytes: usize = files.iter().map(crate::browse::listed_bytes).sum();
                        // Every page costs something, empty or not.
                        node.upload_cap.take(bytes.max(4096) as u64).await;
                    }
                    reply
                }
                UploadEvent::Chunk { request, id, index } => {
                    let (who, serves) = (session.peer(), session.serves());
                    match node.slots.acquire_as(conn, who, serves, Instant::now()) {
                        Err(position) => Message::Queued { request, position },
                        Ok(()) => serve_chunk(node, &mut open, request, id, index).await,
                    }
                }
            };
            if out.send(reply).await.is_err() {
                break Err(WRITER_FAILED.into());
            }
            // Read what came meanwhile before the next request, so its Cancels apply.
            while let Ok(next) = rx.try_recv() {
                feed(&mut session, next);
            }
            continue;
        }
        // Nothing to serve: wait for a message, a chunk gained by a file we are fetching, or
        // the session's timeout.
        let until = match (session.poll_timeout(), pex) {
            (Some(a), Some((_, b))) => Some(a.min(b)),
            (a, b) => a.or(b.map(|(_, t)| t)),
        };
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
    // The slot is free for others at once. A connection that ended well still gets what is
    // queued (within the write timeout each); one that failed does not. A write that failed
    // is the reason the connection ended.
    drop(slot);
    drop(out);
    let written = match result {
        Ok(()) => write_task.await,
        Err(_) => write_task.cancel().await.unwrap_or(Ok(())),
    };
    let result = match (result, written) {
        (_, Err(e)) => Err(e),
        (result, Ok(())) => result,
    };
    if let Some(id) = joined {
        node.spread.with(|s| s.leave(id));
    }
    result
}

/// Files in one page of a listing at most (within [`transfer::browse::MAX_PAGE`]).
const LISTING_PAGE: usize = 500;
/// Listing pages one connection may ask for: a whole list of the most a browser takes
/// ([`transfer::browse::MAX_FILES`]), and a few more.
const MAX_BROWSE_PAGES: u32 = transfer::browse::MAX_FILES / LISTING_PAGE as u32 + 8;
/// Bytes of records in one page at most (an estimate: well inside a frame's body).
const LISTING_BYTES: usize = 256 << 10;

/// A page of what this node shares, in path order from `offset`; or a refusal.
fn listing(node: &NodeState, request: u32, offset: u32) -> Message {
    if !node.browsable {
        return Message::BrowseRefused {
            request,
            reason: "this node does not let others browse its shares".into(),
        };
    }
    let shares = node.shares.read().unwrap();
    let mut files = Vec::new();
    let mut bytes = 0;
    let past_the_end = offset as usize >= shares.len();
    for f in shares
        .files()
        .skip(offset as usize)
        .take(if past_the_end { 0 } else { LISTING_PAGE })
    {
        bytes += crate::browse::listed_bytes(&f.record);
        if bytes > LISTING_BYTES && !files.is_empty() {
            break;
        }
        files.push(f.record.clone());
    }
    Message::Listing {
        request,
        offset,
        total: shares.len().min(u32::MAX as usize) as u32,
        files,
    }
}

/// The loop's reason when the writer task has stopped: the writer's own error replaces it.
const WRITER_FAILED: &str = "the writer stopped";

/// The shared file a connection last read, kept open while it asks for chunks of the same
/// content id at the same path: one open per file rather than one per chunk. A file found
/// changed when opened (size or mtime not those it was hashed with) is not served.
#[derive(Default)]
struct OpenShare(Option<(FileId, std::path::PathBuf, Arc<std::fs::File>)>);

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
/// still downloading shows what is verified, and then each chunk as it is gained, unless the
/// downloader holds it ([`transfer::view::news_for`]).
fn bitfield_of(
    node: &NodeState,
    id: FileId,
    session: &mut UploadSession,
    subscribed: &mut Vec<(Arc<PartialFile>, Bitfield)>,
    joined: &mut Option<FileId>,
) -> Message {
    let shared = node.shares.read().unwrap().get(&id);
    let partial = node.partials.get(&id);
    match (shared, partial) {
        (Some(f), _) => {
            let count = f.manifest().chunk_count();
            if joined.is_none() {
                *joined = Some(id);
                let spreading = node.spread.with(|s| s.join(id, count));
                let mut view = match spreading {
                    true => ShownTo::new(id, count),
                    false => ShownTo::unspread(id, count),
                };
                // What it told us it has while the file was still downloading here stays
                // known.
                if let Some(old) = session.view().filter(|v| v.id == id) {
                    view.has = old.has.clone();
                }
                session.set_view(view);
                if spreading {
                    return Message::Bitfield {
                        id,
                        bits: Bitfield::new(count).into_bytes(),
                    };
                }
            }
            Message::Bitfield {
                id,
                bits: Bitfield::full(count).into_bytes(),
            }
        }
        (None, Some(p)) => {
            // What the downloader has is tracked, so it is not told of chunks it holds.
            if session.view().is_none() {
                session.set_view(ShownTo::unspread(id, p.manifest.chunk_count()));
            }
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

fn manifest_of(node: &NodeState, id: &wire::FileId) -> Option<wire::Manifest> {
    if let Some(f) = node.shares.read().unwrap().get(id) {
        return Some(f.manifest());
    }
    let partial = node.partials.get(id);
    partial.map(|p| p.manifest.clone())
}

/// A chunk of a file downloading or seeding here: only if it is verified.
async fn serve_partial(node: &NodeState, p: Arc<PartialFile>, request: u32, index: u32) -> Message {
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

async fn serve_chunk(
    node: &NodeState,
    open: &mut OpenShare,
    request: u32,
    id: wire::FileId,
    index: u32,
) -> Message {
    let shared = node.shares.read().unwrap().get(&id);
    let Some(f) = shared else {
        let partial = node.partials.get(&id);
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
    let held = open
        .0
        .take()
        .filter(|(held_id, path, _)| *held_id == id && *path == f.local);
    let len = (range.end - range.start) as usize;
    let file = match held {
        Some((_, _, file)) => Ok(file),
        None => {
            let shared = f.clone();
            smol::unblock(move || {
                // A shared file swapped for a symbolic link since it was shared is not
                // followed, and one replaced or changed since it was hashed is not served.
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                    .open(&shared.local)?;
                if !shared.matches(&file.metadata()?) {
                    return Err(std::io::Error::other("changed since it was shared"));
                }
                Ok(Arc::new(file))
            })
            .await
        }
    };
    // What the page cache holds is read here, without a trip to the blocking pool (a wake-up
    // there and back for each chunk, for which the executor sat in `epoll_wait` once a chunk
    // in `perf sched`); what it does not hold is read there.
    let read = match file {
        Ok(file) => read_at(file, len, range.start).await,
        Err(e) => Err(e),
    };
    match read {
        Ok((file, data)) => {
            open.0 = Some((id, f.local.clone(), file));
            node.upload_cap.take(data.len() as u64).await;
            node.uploaded_chunks.fetch_add(1, Ordering::Relaxed);
            node.uploaded_bytes
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            node.spread.with(|s| s.sent(id, index as u64));
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

/// Reads `len` bytes of `file` from offset `at`: what the page cache holds here, the rest on
/// the blocking pool. Gives the file back with the bytes.
async fn read_at(
    file: Arc<std::fs::File>,
    len: usize,
    at: u64,
) -> std::io::Result<(Arc<std::fs::File>, Vec<u8>)> {
    let mut data = vec![0u8; len];
    let got = read_cached(&file, &mut data, at);
    if got == len {
        return Ok((file, data));
    }
    smol::unblock(move || {
        file.read_exact_at(&mut data[got..], at + got as u64)?;
        Ok((file, data))
    })
    .await
}

/// Reads into `buf` from offset `at` what the page cache holds, without waiting for the disk
/// (`RWF_NOWAIT`). Returns how many bytes were read: fewer than asked (0 included) where the
/// rest is not cached, the file ends, or the kernel does not support the flag.
fn read_cached(file: &std::fs::File, buf: &mut [u8], at: u64) -> usize {
    let mut got = 0;
    while got < buf.len() {
        let mut slice = [std::io::IoSliceMut::new(&mut buf[got..])];
        match rustix::io::preadv2(
            file,
            &mut slice,
            at + got as u64,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    got
}

/// Whether connection `conn` may ask for file `id` (see
/// [`crate::slots::UploadSlots::admit_file`]). Only files served here are counted: a file
/// not served is answered as such, and made-up ids take no room. `admitted`: the files this
/// connection was admitted for already, which need no look.
fn admit(node: &NodeState, conn: u64, id: wire::FileId, admitted: &mut Vec<FileId>) -> bool {
    if admitted.contains(&id) {
        return true;
    }
    if !served(node, id) {
        return true;
    }
    let ok = node.slots.admit_file(conn, id);
    if ok {
        admitted.push(id);
    }
    ok
}

/// Whether file `id` is served here: shared, or being downloaded or seeded.
fn served(node: &NodeState, id: wire::FileId) -> bool {
    node.shares.read().unwrap().get(&id).is_some() || node.partials.get(&id).is_some()
}

/// The answer to a connection beyond the file's share ([`crate::slots::UploadSlots::per_file`]).
pub(crate) fn too_many(request: u32, id: wire::FileId, max: usize) -> Message {
    busy(
        request,
        id,
        &format!("{max} downloaders of this file are served already"),
    )
}

/// Busy because of `why`, come back later (the connection keeps its place in no queue).
fn busy(request: u32, id: wire::FileId, why: &str) -> Message {
    Message::TransferError {
        request,
        id,
        kind: TransferErrorKind::Busy,
        message: format!("{why}; try later"),
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
    use std::io::Write;

    #[test]
    fn a_chunk_is_read_whole_cached_or_not_and_never_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.bin");
        let bytes: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(&bytes).unwrap();
        f.sync_all().unwrap();
        drop(f);
        let file = Arc::new(std::fs::File::open(&path).unwrap());
        smol::block_on(async {
            for (len, at) in [(256 << 10, 0), (100_000, 12_345), (4096, (1 << 20) - 4096)] {
                // Dropped from the page cache (where the file system allows it), the bytes
                // come from the blocking pool; cached, from here. Either way the same bytes.
                rustix::fs::fadvise(&*file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
                for _ in 0..2 {
                    let (_, data) = read_at(file.clone(), len, at).await.unwrap();
                    assert_eq!(data, &bytes[at as usize..at as usize + len]);
                }
            }
            // A file shorter than its manifest says: an error, not zeros.
            let short = read_at(file.clone(), 8192, (1 << 20) - 4096).await;
            assert_eq!(short.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
        });
    }
}
