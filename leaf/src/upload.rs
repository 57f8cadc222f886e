//! Serving chunks to other leaves: upload slots, a queue, cancels, and the upload cap.
//!
//! A downloader connects, says Hello, and sends manifest and chunk requests, several at a time.
//! Requests name content ids only: the file is looked up among this node's shares, so nothing
//! the network sends is ever used as a path, and a file that changed on disk since it was hashed
//! is not served under its old id.
//!
//! Chunks are served only to connections holding one of the node's upload slots. A connection
//! that asks while every slot is taken joins a first-come-first-served queue and is answered
//! `Queued { position }`; it keeps its place while it stays connected and asks again. Manifests
//! need no slot. Every chunk sent takes its bytes from the node's upload cap first.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smol::channel;
use smol::net::TcpStream;
use superpeer::net::{write_message, write_message_within, FrameReader};
use superpeer::secure::SecureStream;
use wire::{ChunkMsg, Hello, ManifestMsg, Message, NodeId, Role, TransferErrorKind};

use crate::node::Inner;

/// A queued connection that has not asked again for this long loses its turn at the head.
const STALE_IN_QUEUE: Duration = Duration::from_secs(5);
/// A downloader that takes longer than this to accept one message is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connecting downloader has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A transfer connection with no manifest or chunk request for this long is closed (and frees
/// its slot); pings do not count.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests a downloader may have waiting at once; more is a protocol violation.
const MAX_PENDING: usize = 64;
/// Grants remembered for status and tests.
const GRANTS_KEPT: usize = 1000;

/// The node's upload slots and the queue of connections waiting for one.
#[derive(Debug)]
pub struct UploadSlots {
    max: usize,
    next_conn: AtomicU64,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    /// Connections holding a slot.
    active: Vec<u64>,
    /// Connections waiting, first come first, with when each last asked.
    queue: VecDeque<(u64, Instant)>,
    /// Node ids in the order they were granted a slot (most recent last).
    granted: VecDeque<NodeId>,
}

impl UploadSlots {
    /// `max` slots (at least one).
    pub fn new(max: usize) -> Self {
        UploadSlots {
            max: max.max(1),
            next_conn: AtomicU64::new(1),
            state: Mutex::new(SlotState::default()),
        }
    }

    fn new_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// A slot for `conn`, asking at `now`: `Ok` if it holds one (now or already), else its
    /// place in the queue.
    fn acquire(&self, conn: u64, who: NodeId, now: Instant) -> Result<(), u32> {
        let mut s = self.state.lock().unwrap();
        if s.active.contains(&conn) {
            return Ok(());
        }
        if let Some(entry) = s.queue.iter_mut().find(|(c, _)| *c == conn) {
            entry.1 = now;
        }
        // A head of the queue that stopped asking must not hold up everyone behind it.
        for _ in 0..s.queue.len() {
            match s.queue.front() {
                Some(&(c, asked))
                    if c != conn && now.saturating_duration_since(asked) > STALE_IN_QUEUE =>
                {
                    s.queue.rotate_left(1);
                }
                _ => break,
            }
        }
        let first_in_line = s.queue.front().is_none_or(|(c, _)| *c == conn);
        if s.active.len() < self.max && first_in_line {
            s.queue.retain(|(c, _)| *c != conn);
            s.active.push(conn);
            s.granted.push_back(who);
            if s.granted.len() > GRANTS_KEPT {
                s.granted.pop_front();
            }
            return Ok(());
        }
        let place = match s.queue.iter().position(|(c, _)| *c == conn) {
            Some(i) => i,
            None => {
                s.queue.push_back((conn, now));
                s.queue.len() - 1
            }
        };
        Err(place as u32 + 1)
    }

    /// `conn` is gone: free its slot or its place.
    fn release(&self, conn: u64) {
        let mut s = self.state.lock().unwrap();
        s.active.retain(|c| *c != conn);
        s.queue.retain(|(c, _)| *c != conn);
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
    let secure = match superpeer::secure::accept(stream, &node.identity, limit).await {
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
    let who = match reader
        .read_message_within(HELLO_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?
    {
        Message::Hello(h) if h.node != stream.peer => {
            return Err(format!(
                "Hello claims node {} but its key is that of {}",
                h.node.short(),
                stream.peer.short()
            ))
        }
        Message::Hello(h) if h.version == wire::PROTOCOL_VERSION => h.node,
        Message::Hello(h) => return Err(format!("protocol version {}", h.version)),
        other => return Err(format!("{} before Hello", other.kind())),
    };
    let hello = Message::Hello(Hello::new(
        node.node_id,
        Role::Leaf,
        node.listen,
        crate::AGENT,
    ));
    write_message(&mut writer, &hello, &mut scratch)
        .await
        .map_err(|e| e.to_string())?;

    let conn = node.slots.new_conn();
    let _slot = SlotGuard(&node.slots, conn);
    // Requests are read ahead into `pending`, so a Cancel can remove a request not yet served.
    let (tx, rx) = channel::bounded::<Result<Message, String>>(MAX_PENDING);
    let read_ahead = smol::spawn(async move {
        loop {
            let msg = match reader.read_message().await {
                Ok(Some(m)) => Ok(m),
                Ok(None) => return,
                Err(e) => Err(e.to_string()),
            };
            let stop = msg.is_err();
            if tx.try_send(msg).is_err() {
                let _ = tx.send(Err("too many requests waiting".into())).await;
                return;
            }
            if stop {
                return;
            }
        }
    });
    let mut pending: VecDeque<Message> = VecDeque::new();
    let mut last_request = Instant::now();
    let result = loop {
        let msg = match pending.pop_front() {
            Some(m) => m,
            None => {
                // Idle only counts while there is nothing to serve.
                let until = last_request + IDLE_TIMEOUT;
                let next = smol::future::or(async { Some(rx.recv().await) }, async {
                    smol::Timer::at(until).await;
                    None
                })
                .await;
                match next {
                    Some(Ok(Ok(m))) => m,
                    Some(Ok(Err(e))) => break Err(e),
                    Some(Err(_)) => break Ok(()),
                    None => break Err(format!("no request for {IDLE_TIMEOUT:?}")),
                }
            }
        };
        if matches!(msg, Message::GetChunk { .. } | Message::GetManifest { .. }) {
            last_request = Instant::now();
        }
        // Take in whatever else has arrived, applying cancels to requests not yet served.
        let mut failure = None;
        while let Ok(next) = rx.try_recv() {
            match next {
                Ok(Message::Cancel { request }) => pending.retain(
                    |m| !matches!(m, Message::GetChunk { request: r, .. } if *r == request),
                ),
                Ok(m) => pending.push_back(m),
                Err(e) => failure = Some(e),
            }
        }
        if let Some(e) = failure {
            break Err(e);
        }
        if pending.len() > MAX_PENDING {
            break Err(format!("more than {MAX_PENDING} requests waiting"));
        }
        let reply = match msg {
            Message::GetManifest { request, id } => match node.shares.read().unwrap().get(&id) {
                Some(f) => {
                    let m = f.manifest();
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
            Message::GetChunk { request, id, index } => {
                match node.slots.acquire(conn, who, Instant::now()) {
                    Err(position) => Message::Queued { request, position },
                    Ok(()) => serve_chunk(node, request, id, index).await,
                }
            }
            Message::Cancel { .. } | Message::Pong { .. } => continue,
            Message::Ping { nonce } => Message::Pong { nonce },
            Message::Goodbye { .. } => break Ok(()),
            other => {
                let reason = format!("unexpected {} on a transfer connection", other.kind());
                let bye = Message::Goodbye {
                    reason: reason.clone(),
                };
                let _ = write_message(&mut writer, &bye, &mut scratch).await;
                break Err(reason);
            }
        };
        if let Err(e) = write_message_within(&mut writer, &reply, &mut scratch, WRITE_TIMEOUT).await
        {
            break Err(e.to_string());
        }
    };
    read_ahead.cancel().await;
    result
}

async fn serve_chunk(node: &Inner, request: u32, id: wire::FileId, index: u32) -> Message {
    let Some(f) = node.shares.read().unwrap().get(&id) else {
        return not_shared(request, id);
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
        let slots = UploadSlots::new(2);
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
        let slots = UploadSlots::new(1);
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
}
