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

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
pub use transfer::ShownTo;
use wire::{Bitfield, FileId, FileRecord, Manifest, NodeId};

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
    have: Mutex<Bitfield>,
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
            have: Mutex::new(Bitfield::new(count)),
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
        if self.have.lock().unwrap().set(c) {
            self.have_count.fetch_add(1, Ordering::SeqCst);
            self.changed.notify(usize::MAX);
        }
    }

    /// True if chunk `c` is verified here.
    pub fn has(&self, c: u64) -> bool {
        self.have.lock().unwrap().get(c)
    }

    /// The verified chunks.
    pub fn bits(&self) -> Bitfield {
        self.have.lock().unwrap().clone()
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

/// How a source of a whole file spreads it among several downloaders at once (super-seeding):
/// instead of its whole bitfield, each downloader is shown a few chunks at a time, those
/// shown or sent least so far, and more as it gets them (from anyone: downloaders send `Have`
/// to their sources). So the source sends each chunk about once, and the downloaders trade
/// the rest among themselves.
#[derive(Debug, Default)]
pub struct Spread {
    files: Mutex<HashMap<FileId, SpreadFile>>,
}

#[derive(Debug, Default)]
struct SpreadFile {
    /// Connections that asked for this file's bitfield and are still open.
    conns: usize,
    /// How many times each chunk was shown to a downloader.
    shown: Vec<u32>,
    /// How many times each chunk was sent.
    sent: Vec<u32>,
}

/// Chunks shown to one downloader and not yet asked for or had: kept at least this many.
pub const SHOWN_AHEAD: usize = 6;

impl Spread {
    /// A connection asks for the bitfield of `id` (`count` chunks): true if others are
    /// fetching it from here already, so this one should be shown chunks a few at a time.
    pub fn join(&self, id: FileId, count: u64) -> bool {
        let mut files = self.files.lock().unwrap();
        let f = files.entry(id).or_default();
        if f.shown.len() as u64 != count {
            f.shown = vec![0; count as usize];
            f.sent = vec![0; count as usize];
        }
        f.conns += 1;
        f.conns > 1
    }

    /// The connection that joined `id` is gone.
    pub fn leave(&self, id: FileId) {
        let mut files = self.files.lock().unwrap();
        if let Some(f) = files.get_mut(&id) {
            f.conns -= 1;
            if f.conns == 0 {
                files.remove(&id);
            }
        }
    }

    /// Chunk `c` of `id` was sent to a downloader.
    pub fn sent(&self, id: FileId, c: u64) {
        if let Some(f) = self.files.lock().unwrap().get_mut(&id) {
            if let Some(n) = f.sent.get_mut(c as usize) {
                *n += 1;
            }
        }
    }

    /// The next chunks to show a downloader: enough that at least [`SHOWN_AHEAD`] are shown
    /// and neither asked for nor had, picked among those not shown to it and not had by it,
    /// least sent first, then least shown (ties from a random start). Marks them shown.
    pub fn pick(&self, id: FileId, view: &mut ShownTo) -> Vec<u64> {
        let mut files = self.files.lock().unwrap();
        let Some(f) = files.get_mut(&id) else {
            return Vec::new();
        };
        let n = f.shown.len() as u64;
        let open = (0..n)
            .filter(|&c| view.shown.get(c) && !view.has.get(c) && !view.asked.get(c))
            .count();
        let mut out = Vec::new();
        for _ in open..SHOWN_AHEAD {
            let start = rand::random::<u64>() % n.max(1);
            let best = (0..n)
                .map(|k| (start + k) % n)
                .filter(|&c| !view.shown.get(c) && !view.has.get(c))
                .min_by_key(|&c| (f.sent[c as usize], f.shown[c as usize]));
            let Some(c) = best else { break };
            f.shown[c as usize] += 1;
            view.shown.set(c);
            out.push(c);
        }
        out
    }
}

/// A file being downloaded, or seeded, by its id: what the upload side consults besides the
/// shared folders.
pub type Partials = Mutex<HashMap<FileId, Arc<PartialFile>>>;

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn several_downloaders_are_shown_different_chunks_least_sent_first() {
        let spread = Spread::default();
        let id = FileId([5; 32]);
        assert!(!spread.join(id, 20), "a single downloader sees everything");
        assert!(spread.join(id, 20));
        let mut a = ShownTo::new(id, 20);
        let mut b = ShownTo::new(id, 20);
        let first_a = spread.pick(id, &mut a);
        let first_b = spread.pick(id, &mut b);
        assert_eq!(first_a.len(), SHOWN_AHEAD);
        assert!(
            first_a.iter().all(|c| !first_b.contains(c)),
            "{first_a:?} {first_b:?}"
        );
        // Nothing more while the shown ones are neither asked for nor had.
        assert!(spread.pick(id, &mut a).is_empty());
        // One asked for, one had from elsewhere: two more, never one it has.
        a.asked.set(first_a[0]);
        a.has.set(first_a[1]);
        let elsewhere = (0..20u64)
            .find(|c| !first_a.contains(c) && !first_b.contains(c))
            .unwrap();
        a.has.set(elsewhere);
        let more = spread.pick(id, &mut a);
        assert_eq!(more.len(), 2, "{more:?}");
        assert!(!more.contains(&elsewhere) && more.iter().all(|c| !first_a.contains(c)));
        // Once every chunk was shown, a chunk already sent is shown last.
        for c in 0..20 {
            if c != 3 {
                spread.sent(id, c);
            }
        }
        let mut fresh = ShownTo::new(id, 20);
        assert_eq!(spread.pick(id, &mut fresh)[0], 3);
        spread.leave(id);
        spread.leave(id);
        assert!(spread.files.lock().unwrap().is_empty());
    }
}
