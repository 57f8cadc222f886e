//! Swarming: a file being downloaded is served from its verified chunks, and uploads favour the
//! peers that upload back.
//!
//! - [`PartialFile`]: a download's `.part` file as a source. The downloader marks a chunk only
//!   once it is verified against the manifest *and* written, so a chunk that is not marked is
//!   never served ([`crate::upload`] refuses it). Marking wakes the upload connections that
//!   subscribed with `GetBitfield`, which then send `Have`. When the download completes the same
//!   open file (renamed into place) goes on being served while the node seeds it.
//! - [`Reciprocity`]: bytes received from each peer, decaying with a half-life of
//!   [`HALF_LIFE`]; the upload slots rank requesters by it (tit-for-tat).
//! - [`Seeding`]: how long, or up to what upload ratio, a finished download keeps being served.
//! - [`SwarmPeers`]: the peers of each file's swarm this node has met, told to the downloaders
//!   it serves (source exchange, [`wire::Message::Peers`]).

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use event_listener::Event;
pub use transfer::ShownTo;
use wire::{Bitfield, FileId, FileRecord, Manifest, NodeId};

/// Peers remembered per file for source exchange, the most recently met kept.
pub const PEERS_KEPT: usize = 200;
/// Files whose peers are remembered, the most recently met kept.
const PEER_FILES_KEPT: usize = 256;
/// How often a downloader is told of the swarm's peers again while it is served.
pub const PEX_EVERY: Duration = Duration::from_secs(30);

/// The peers of each file's swarm this node has met first-hand: sources it connected to (at
/// the address it dialled) and downloaders that asked it for the file (at the address their
/// connection came from, on the port their Hello names). Never what another peer told of: an
/// address is passed on only by a node that met it, so a made-up one goes no further than the
/// peer that made it up. Cheap to clone; clones share the list.
#[derive(Debug, Clone, Default)]
pub struct SwarmPeers {
    inner: Arc<Mutex<PeerLists>>,
}

#[derive(Debug, Default)]
struct PeerLists {
    files: HashMap<FileId, VecDeque<SocketAddr>>,
    /// Files in the order they were last met, oldest first.
    order: VecDeque<FileId>,
}

impl SwarmPeers {
    /// Met `addr`, a peer of file `id`'s swarm.
    pub fn note(&self, id: FileId, addr: SocketAddr) {
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return;
        }
        let mut l = self.inner.lock().unwrap();
        let list = l.files.entry(id).or_default();
        list.retain(|a| *a != addr);
        list.push_back(addr);
        if list.len() > PEERS_KEPT {
            list.pop_front();
        }
        l.order.retain(|f| *f != id);
        l.order.push_back(id);
        while l.order.len() > PEER_FILES_KEPT {
            if let Some(old) = l.order.pop_front() {
                l.files.remove(&old);
            }
        }
    }

    /// Up to [`wire::MAX_PEX`] peers of `id` to tell `to` of, the most recently met first
    /// (never `to` itself).
    pub fn tell(&self, id: FileId, to: Option<SocketAddr>) -> Vec<SocketAddr> {
        let l = self.inner.lock().unwrap();
        l.files.get(&id).map_or_else(Vec::new, |list| {
            list.iter()
                .rev()
                .filter(|a| Some(**a) != to)
                .take(wire::MAX_PEX)
                .copied()
                .collect()
        })
    }
}

/// How fast the memory of a peer's uploads to us fades: its score halves every this long.
pub const HALF_LIFE: Duration = Duration::from_secs(10);

/// A file this node is downloading (or has just downloaded and seeds), served from its
/// verified chunks.
#[derive(Debug)]
pub struct PartialFile {
    /// The file.
    pub id: FileId,
    /// Its manifest (verified against the id before the download began).
    pub manifest: Manifest,
    /// What is registered with super-peers for it.
    pub record: FileRecord,
    file: Arc<File>,
    /// The verified chunks, in [`Bitfield`]'s layout: set by the download, read by every
    /// upload connection, neither waiting on the other.
    have: Box<[AtomicU8]>,
    have_count: AtomicU64,
    /// Notified whenever a chunk is marked.
    pub changed: Event,
    /// Bytes of it uploaded to other leaves.
    pub uploaded: AtomicU64,
}

impl PartialFile {
    /// A source of `file`'s chunks, none verified yet.
    pub fn new(id: FileId, manifest: Manifest, record: FileRecord, file: Arc<File>) -> Self {
        let count = manifest.chunk_count();
        PartialFile {
            id,
            manifest,
            record,
            file,
            have: (0..Bitfield::byte_len(count))
                .map(|_| AtomicU8::new(0))
                .collect(),
            have_count: AtomicU64::new(0),
            changed: Event::new(),
            uploaded: AtomicU64::new(0),
        }
    }

    /// Chunk `c` is verified and written: it may be served from now on.
    pub fn mark(&self, c: u64) {
        if c >= self.manifest.chunk_count() {
            return;
        }
        let mask = 1u8 << (c % 8);
        if self.have[(c / 8) as usize].fetch_or(mask, Ordering::SeqCst) & mask == 0 {
            self.have_count.fetch_add(1, Ordering::SeqCst);
            self.changed.notify(usize::MAX);
        }
    }

    /// True if chunk `c` is verified here.
    pub fn has(&self, c: u64) -> bool {
        c < self.manifest.chunk_count()
            && self.have[(c / 8) as usize].load(Ordering::SeqCst) & (1u8 << (c % 8)) != 0
    }

    /// The verified chunks.
    pub fn bits(&self) -> Bitfield {
        let bytes = self.have.iter().map(|b| b.load(Ordering::SeqCst)).collect();
        Bitfield::from_bytes(bytes, self.manifest.chunk_count())
            .expect("the bytes are as many as the chunks need")
    }

    /// How many chunks are verified.
    pub fn have_count(&self) -> u64 {
        self.have_count.load(Ordering::SeqCst)
    }

    /// True once every chunk is verified.
    pub fn is_complete(&self) -> bool {
        self.have_count() == self.manifest.chunk_count()
    }

    /// Reads chunk `c`, which must be verified here (blocking: run it off the executor).
    pub fn read_chunk(&self, c: u64) -> io::Result<Vec<u8>> {
        if !self.has(c) {
            return Err(io::Error::other(format!("chunk {c} is not verified here")));
        }
        let range = self.manifest.chunk_range(c);
        let mut data = vec![0u8; (range.end - range.start) as usize];
        self.file.read_exact_at(&mut data, range.start)?;
        Ok(data)
    }
}

/// Bytes received from each peer lately, for tit-for-tat.
#[derive(Debug, Default)]
pub struct Reciprocity {
    scores: Mutex<HashMap<NodeId, (f64, Instant)>>,
}

impl Reciprocity {
    /// `peer` sent us `bytes` at `now`.
    pub fn record(&self, peer: NodeId, bytes: u64, now: Instant) {
        let mut s = self.scores.lock().unwrap();
        let e = s.entry(peer).or_insert((0.0, now));
        e.0 = decay(e.0, now.saturating_duration_since(e.1)) + bytes as f64;
        e.1 = now;
    }

    /// How much all peers together sent us lately (bytes, fading with [`HALF_LIFE`]).
    pub fn total(&self, now: Instant) -> f64 {
        self.scores
            .lock()
            .unwrap()
            .values()
            .map(|(v, t)| decay(*v, now.saturating_duration_since(*t)))
            .sum()
    }

    /// How much `peer` sent us lately (bytes, fading with [`HALF_LIFE`]).
    pub fn score(&self, peer: &NodeId, now: Instant) -> f64 {
        self.scores
            .lock()
            .unwrap()
            .get(peer)
            .map_or(0.0, |(v, t)| decay(*v, now.saturating_duration_since(*t)))
    }
}

fn decay(value: f64, age: Duration) -> f64 {
    value * 0.5f64.powf(age.as_secs_f64() / HALF_LIFE.as_secs_f64())
}

/// How long a finished download goes on being served. Seeding stops at whichever limit comes
/// first; with neither, it lasts as long as the node runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seeding {
    /// Stop once this long has passed since the download finished.
    pub time: Option<Duration>,
    /// Stop once this many times the file's size has been uploaded (counting uploads made
    /// while it was still downloading).
    pub ratio: Option<f64>,
}

impl Default for Seeding {
    /// An hour, with no ratio limit.
    fn default() -> Self {
        Seeding {
            time: Some(Duration::from_secs(3600)),
            ratio: None,
        }
    }
}

impl Seeding {
    /// Whether a file of `size` bytes that finished `since` ago and has had `uploaded` bytes
    /// served should still be seeded.
    pub fn goes_on(&self, since: Duration, uploaded: u64, size: u64) -> bool {
        let time_left = self.time.is_none_or(|t| since < t);
        let ratio_left = self
            .ratio
            .is_none_or(|r| (uploaded as f64) < r * size.max(1) as f64);
        time_left && ratio_left
    }
}

/// How a source of a whole file spreads it among several downloaders at once: the rules are
/// [`transfer::view::Spread`]'s; this holds the one copy the upload connections share.
#[derive(Debug, Default)]
pub struct Spread {
    book: Mutex<transfer::view::Spread>,
}

impl Spread {
    /// Runs `f` on the shared book (briefly: every upload connection of the node waits).
    pub fn with<R>(&self, f: impl FnOnce(&mut transfer::view::Spread) -> R) -> R {
        f(&mut self.book.lock().unwrap())
    }
}

/// The files being downloaded, or seeded, by id: what the upload side consults besides the
/// shared folders.
///
/// The node's downloads are its only writer; every upload connection reads it for each
/// request. Readers never wait: a writer swaps in a new map whole, and a reader keeps the one
/// it loaded.
#[derive(Debug, Default)]
pub struct Partials {
    map: ArcSwap<HashMap<FileId, Arc<PartialFile>>>,
}

impl Partials {
    /// The file `id`, if it is being downloaded or seeded here.
    pub fn get(&self, id: &FileId) -> Option<Arc<PartialFile>> {
        self.map.load().get(id).cloned()
    }

    /// Every such file.
    pub fn all(&self) -> Vec<Arc<PartialFile>> {
        self.map.load().values().cloned().collect()
    }

    /// Serves `p` from now on, in place of any earlier file of its id.
    pub fn insert(&self, p: Arc<PartialFile>) {
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(p.id, p.clone());
            m
        });
    }

    /// Stops serving `id` if `only` is `None` or the file served for it is `only` (a later
    /// download of the same file may have replaced it). True if a file was removed.
    pub fn remove(&self, id: &FileId, only: Option<&Arc<PartialFile>>) -> bool {
        let mut removed = false;
        self.map.rcu(|m| {
            removed = false;
            let mut m = HashMap::clone(m);
            if m.get(id)
                .is_some_and(|c| only.is_none_or(|o| Arc::ptr_eq(c, o)))
            {
                m.remove(id);
                removed = true;
            }
            m
        });
        removed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_peers_are_told_newest_first_bounded_and_never_to_themselves() {
        let peers = SwarmPeers::default();
        let (a, b) = (FileId([1; 32]), FileId([2; 32]));
        let at = |i: u32| SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 7000));
        for i in 0..300 {
            peers.note(a, at(i));
        }
        peers.note(a, at(5)); // met again: newest
        peers.note(a, SocketAddr::from(([0, 0, 0, 0], 7000))); // no address: not kept
        let told = peers.tell(a, Some(at(299)));
        assert_eq!(told.len(), wire::MAX_PEX);
        assert_eq!(told[0], at(5));
        assert!(!told.contains(&at(299)));
        assert_eq!(told[1], at(298));
        assert!(peers.tell(b, None).is_empty());
        // At most PEERS_KEPT per file, and files beyond PEER_FILES_KEPT forgotten oldest first.
        assert_eq!(peers.inner.lock().unwrap().files[&a].len(), PEERS_KEPT);
        for f in 0..PEER_FILES_KEPT as u32 {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&f.to_be_bytes());
            id[31] = 9;
            peers.note(FileId(id), at(1));
        }
        assert!(
            peers.tell(a, None).is_empty(),
            "the oldest file was forgotten"
        );
    }

    #[test]
    fn only_marked_chunks_are_readable() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut b = wire::ManifestBuilder::with_chunk_size(3000, 1024);
        b.update(&data);
        let (id, m) = b.finish().unwrap();
        let path = dir.path().join("f.part");
        std::fs::write(&path, &data).unwrap();
        let record = FileRecord {
            id,
            size: 3000,
            path: "f".into(),
            tags: Default::default(),
        };
        let p = PartialFile::new(id, m, record, Arc::new(File::open(&path).unwrap()));
        assert!(p.read_chunk(1).is_err(), "an unmarked chunk is refused");
        p.mark(1);
        p.mark(1);
        assert_eq!(p.have_count(), 1);
        assert_eq!(p.read_chunk(1).unwrap(), &data[1024..2048]);
        assert_eq!(p.bits().as_bytes(), &[0b10]);
        p.mark(0);
        p.mark(2);
        assert!(p.is_complete());
    }

    #[test]
    fn scores_fade_and_seeding_stops_at_the_first_limit() {
        let r = Reciprocity::default();
        let t = Instant::now();
        let a = NodeId([1; 32]);
        r.record(a, 1000, t);
        assert_eq!(r.score(&a, t), 1000.0);
        let later = r.score(&a, t + HALF_LIFE);
        assert!((later - 500.0).abs() < 1.0, "{later}");
        assert_eq!(r.score(&NodeId([2; 32]), t), 0.0);

        let s = Seeding {
            time: Some(Duration::from_secs(60)),
            ratio: Some(2.0),
        };
        assert!(s.goes_on(Duration::from_secs(10), 100, 100));
        assert!(
            !s.goes_on(Duration::from_secs(10), 200, 100),
            "ratio reached"
        );
        assert!(!s.goes_on(Duration::from_secs(60), 0, 100), "time is up");
        let forever = Seeding {
            time: None,
            ratio: None,
        };
        assert!(forever.goes_on(Duration::from_secs(1 << 30), u64::MAX, 1));
    }
}
