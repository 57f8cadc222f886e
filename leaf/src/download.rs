//! Downloading one file from every source that has it, in parallel verified chunks.
//!
//! # How
//! 1. Connect to every source at once; ask up to three of them for the manifest. A manifest
//!    must verify against the id, and its chunk size must be the one its size implies; of the
//!    valid ones, the one most sources sent wins (a source whose manifest fails or disagrees is
//!    dropped).
//! 2. Write into `NAME.part` in the output folder. Each source keeps several chunk requests in
//!    flight; the [`Scheduler`] hands out missing chunks to whichever source asks, so faster
//!    sources take more. When no chunk is missing, idle sources re-request chunks still in
//!    flight elsewhere (endgame); the first verified copy wins and later copies are discarded.
//! 3. Every chunk is verified against the manifest before it is written. A source that sends a
//!    bad chunk, a chunk nobody asked for, or an error, or that goes silent, is dropped for this
//!    download and its chunks go back to the queue.
//! 4. When all chunks are written, the whole file is hashed again and must give the id; only
//!    then is it linked to its final name, which never replaces an existing file.
//!
//! # Scheduler invariants
//! - A chunk is in exactly one state: `Missing` (and then in the queue exactly once), `Active`
//!   (requested by one or more sources, listed in its state, none of which has delivered it) or
//!   `Done` (verified and written; never requested again).
//! - `done_chunks`/`done_bytes` count exactly the `Done` chunks.
//! - A source that fails releases every chunk it had requested: a chunk left with no requester
//!   goes back to `Missing` (front of the queue). Only [`Scheduler::release`] does that, and only
//!   [`Scheduler::complete`] makes a chunk `Done`.

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
use serde::{Deserialize, Serialize};
use smol::net::TcpStream;
use superpeer::net::{connect, write_message, FrameReader};
use wire::{FileId, Hello, Manifest, Message, NodeId, Role, PROTOCOL_VERSION};

use crate::share::PART_SUFFIX;

/// How many sources are asked for the manifest (see [`download`]).
const MANIFEST_VOTES: usize = 3;

/// Settings of the downloader.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Chunk requests kept in flight per source.
    pub inflight_per_source: usize,
    /// A source that answers nothing for this long is dropped.
    pub response_timeout: Duration,
    /// How long to wait for a source to accept the connection.
    pub connect_timeout: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            inflight_per_source: 4,
            response_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What one source contributed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReport {
    /// The source.
    pub addr: SocketAddr,
    /// Chunks it delivered that were kept.
    pub chunks: u64,
    /// Bytes of those chunks.
    pub bytes: u64,
    /// Why it was dropped, if it was.
    pub error: Option<String>,
}

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadReport {
    /// The file's id.
    pub id: FileId,
    /// Where it was written.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
    /// Each source's part.
    pub sources: Vec<SourceReport>,
}

/// Progress of a running download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Verified bytes written.
    pub done_bytes: u64,
    /// File size.
    pub size: u64,
    /// Sources still in use.
    pub sources: usize,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Nobody has the file.
    #[error("no source found for {0}")]
    NoSources(FileId),
    /// No source gave a manifest that matches the id.
    #[error("no source gave a valid manifest for {id}: {reasons}")]
    NoManifest {
        /// The file.
        id: FileId,
        /// What went wrong with each source.
        reasons: String,
    },
    /// Every source failed before the file was complete.
    #[error(
        "download of {id} stopped at chunk {done} of {total}: every source failed ({reasons})"
    )]
    SourcesFailed {
        /// The file.
        id: FileId,
        /// Chunks verified and kept.
        done: u64,
        /// Chunks in the file.
        total: u64,
        /// What went wrong with each source.
        reasons: String,
    },
    /// Writing the file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being written.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The assembled file does not hash to its id (should be impossible: every chunk was
    /// verified; a disk error is the likely cause).
    #[error("the assembled file {} does not hash to {id}", path.display())]
    Verify {
        /// The file.
        id: FileId,
        /// The partial file, kept for inspection.
        path: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ChunkState {
    Missing,
    Active(Vec<usize>),
    Done,
}

/// Which chunk is where; see the module docs for its invariants.
#[derive(Debug)]
pub struct Scheduler {
    chunks: Vec<ChunkState>,
    queue: VecDeque<u64>,
    done_chunks: u64,
    done_bytes: u64,
}

impl Scheduler {
    /// All chunks missing, in file order.
    pub fn new(count: u64) -> Self {
        Scheduler {
            chunks: vec![ChunkState::Missing; count as usize],
            queue: (0..count).collect(),
            done_chunks: 0,
            done_bytes: 0,
        }
    }

    /// A chunk for `source` to request: the next missing one, or, if `endgame` allows it (the
    /// source has nothing in flight), the in-flight chunk with the fewest requesters that
    /// `source` has not asked for yet.
    pub fn next(&mut self, source: usize, endgame: bool) -> Option<u64> {
        while let Some(c) = self.queue.pop_front() {
            if self.chunks[c as usize] == ChunkState::Missing {
                self.chunks[c as usize] = ChunkState::Active(vec![source]);
                return Some(c);
            }
        }
        if !endgame {
            return None;
        }
        let (c, _) = self
            .chunks
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                ChunkState::Active(v) if !v.contains(&source) => Some((i, v.len())),
                _ => None,
            })
            .min_by_key(|&(_, n)| n)?;
        if let ChunkState::Active(v) = &mut self.chunks[c] {
            v.push(source);
        }
        Some(c as u64)
    }

    /// `source` no longer waits for chunk `c`.
    pub fn release(&mut self, source: usize, c: u64) {
        if let ChunkState::Active(v) = &mut self.chunks[c as usize] {
            v.retain(|s| *s != source);
            if v.is_empty() {
                self.chunks[c as usize] = ChunkState::Missing;
                self.queue.push_front(c);
            }
        }
    }

    /// Chunk `c` (of `len` bytes) is verified and written. False if it already was.
    pub fn complete(&mut self, c: u64, len: u64) -> bool {
        if self.chunks[c as usize] == ChunkState::Done {
            return false;
        }
        self.chunks[c as usize] = ChunkState::Done;
        self.done_chunks += 1;
        self.done_bytes += len;
        true
    }

    /// True once chunk `c` is done.
    pub fn is_done(&self, c: u64) -> bool {
        self.chunks[c as usize] == ChunkState::Done
    }

    /// True once every chunk is done.
    pub fn all_done(&self) -> bool {
        self.done_chunks == self.chunks.len() as u64
    }
}

/// Makes a file name from the network safe to create: no separators, no leading dots, no
/// control characters, not empty.
pub fn safe_file_name(name: &str, id: &FileId) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let clean: String = last.chars().filter(|c| !c.is_control()).collect();
    let clean = clean.trim().trim_start_matches('.').trim();
    // At most 200 bytes, cut at a character boundary: room for the `.part` suffix and a
    // ` (n)` within the usual 255-byte limit of a file name.
    let mut end = clean.len().min(200);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    let clean = &clean[..end];
    if clean.is_empty() {
        id.to_hex()
    } else {
        clean.to_string()
    }
}

/// `dir/name`, or `dir/stem (n).ext` for the first n that is free.
fn free_name(dir: &Path, name: &str, n: u32) -> PathBuf {
    if n == 0 {
        return dir.join(name);
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => dir.join(format!("{stem} ({n}).{ext}")),
        _ => dir.join(format!("{name} ({n})")),
    }
}

struct SourceConn {
    addr: SocketAddr,
    reader: FrameReader<TcpStream>,
    writer: TcpStream,
    scratch: Vec<u8>,
}

impl SourceConn {
    async fn open(addr: SocketAddr, me: NodeId, opts: &DownloadOptions) -> Result<Self, String> {
        let stream = connect(addr, opts.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let mut conn = SourceConn {
            addr,
            reader: FrameReader::new(stream.clone()),
            writer: stream,
            scratch: Vec::new(),
        };
        conn.send(&Message::Hello(Hello {
            version: PROTOCOL_VERSION,
            node: me,
            role: Role::Transfer,
            listen: None,
            agent: crate::AGENT.into(),
        }))
        .await?;
        match conn.recv(opts.connect_timeout).await? {
            Message::Hello(h) if h.version == PROTOCOL_VERSION => Ok(conn),
            Message::Hello(h) => Err(format!("speaks protocol version {}", h.version)),
            other => Err(format!("answered Hello with {}", other.kind())),
        }
    }

    async fn send(&mut self, msg: &Message) -> Result<(), String> {
        write_message(&mut self.writer, msg, &mut self.scratch)
            .await
            .map_err(|e| e.to_string())
    }

    async fn recv(&mut self, limit: Duration) -> Result<Message, String> {
        self.reader
            .read_message_within(limit)
            .await
            .map_err(|e| e.to_string())
    }

    async fn manifest(
        &mut self,
        id: FileId,
        expected_size: Option<u64>,
        limit: Duration,
    ) -> Result<Manifest, String> {
        self.send(&Message::GetManifest { request: 0, id }).await?;
        match self.recv(limit).await? {
            Message::Manifest(m) if m.id == id && m.request == 0 => {
                let manifest = Manifest {
                    size: m.size,
                    chunk_size: m.chunk_size,
                    cvs: m.cvs,
                };
                manifest
                    .verify(&id)
                    .map_err(|e| format!("sent a bad manifest: {e}"))?;
                // The chunk layout follows from the size, so every honest source agrees on it.
                if manifest.chunk_size != wire::chunk_size_for(manifest.size) {
                    return Err(format!(
                        "sent a manifest with chunk size {} for {} bytes",
                        manifest.chunk_size, manifest.size
                    ));
                }
                if let Some(want) = expected_size.filter(|w| *w != manifest.size) {
                    return Err(format!(
                        "sent a manifest for {} bytes; the search said {want}",
                        manifest.size
                    ));
                }
                Ok(manifest)
            }
            Message::TransferError { kind, message, .. } => {
                Err(format!("refused the manifest: {kind:?} ({message})"))
            }
            other => Err(format!("answered a manifest request with {}", other.kind())),
        }
    }
}

/// Why one source stopped.
enum Stop {
    /// The source misbehaved or failed: drop it.
    Source(String),
    /// Our disk failed: stop the whole download.
    Disk(io::Error),
}

struct Shared {
    id: FileId,
    manifest: Manifest,
    file: Arc<File>,
    sched: Mutex<Scheduler>,
    changed: Event,
    opts: DownloadOptions,
    active_sources: Mutex<usize>,
    /// Set on a disk error: every source stops.
    aborted: AtomicBool,
    progress: Box<dyn Fn(Progress) + Send + Sync>,
}

/// Downloads `id` from `sources` into `out_dir`, naming it after `name` (made safe).
/// `expected_size`, when the search results agree on one, must match the manifest.
#[allow(clippy::too_many_arguments)]
pub async fn download(
    me: NodeId,
    id: FileId,
    name: &str,
    expected_size: Option<u64>,
    sources: &[SocketAddr],
    out_dir: &Path,
    opts: DownloadOptions,
    progress: Box<dyn Fn(Progress) + Send + Sync>,
) -> Result<DownloadReport, DownloadError> {
    let started = Instant::now();
    if sources.is_empty() {
        return Err(DownloadError::NoSources(id));
    }
    let opened = spawn_all(sources.iter().map(|&a| {
        let opts = opts.clone();
        async move { (a, SourceConn::open(a, me, &opts).await) }
    }))
    .await;
    let mut reports = Vec::new();
    let mut conns = Vec::new();
    for (addr, r) in opened {
        match r {
            Ok(c) => conns.push(c),
            Err(e) => {
                log::info!("source {addr} for {}: {e}", id.short());
                reports.push(SourceReport {
                    addr,
                    chunks: 0,
                    bytes: 0,
                    error: Some(e),
                });
            }
        }
    }
    // A manifest is checked against the id, but a one-chunk claim ("the file is 5 bytes, and
    // its only chunk hashes to the id") passes for any id: the id cannot pin the size of a
    // one-chunk file. So several sources are asked, and the manifest most of them send wins;
    // on a tie, the one with more chunks (a forged one-chunk claim always has fewer).
    let mut votes: Vec<(Manifest, Vec<SocketAddr>)> = Vec::new();
    let mut i = 0;
    while i < conns.len() && votes.iter().map(|(_, who)| who.len()).sum::<usize>() < MANIFEST_VOTES
    {
        match conns[i]
            .manifest(id, expected_size, opts.response_timeout)
            .await
        {
            Ok(m) => {
                let addr = conns[i].addr;
                match votes.iter_mut().find(|(v, _)| *v == m) {
                    Some((_, who)) => who.push(addr),
                    None => votes.push((m, vec![addr])),
                }
                i += 1;
            }
            Err(e) => {
                log::warn!("source {} for {}: {e}", conns[i].addr, id.short());
                let addr = conns.remove(i).addr;
                reports.push(SourceReport {
                    addr,
                    chunks: 0,
                    bytes: 0,
                    error: Some(e),
                });
            }
        }
    }
    votes.sort_by_key(|(m, who)| std::cmp::Reverse((who.len(), m.cvs.len())));
    let manifest = votes.first().map(|(m, _)| m.clone());
    for (m, who) in votes.iter().skip(1) {
        for addr in who {
            let why = format!(
                "its manifest ({} bytes in {} chunks) disagrees with the one {} other source(s) sent",
                m.size,
                m.cvs.len(),
                votes[0].1.len()
            );
            log::warn!("source {addr} for {}: {why}", id.short());
            conns.retain(|c| c.addr != *addr);
            reports.push(SourceReport {
                addr: *addr,
                chunks: 0,
                bytes: 0,
                error: Some(why),
            });
        }
    }
    let Some(manifest) = manifest else {
        return Err(DownloadError::NoManifest {
            id,
            reasons: reasons(&reports),
        });
    };

    fs::create_dir_all(out_dir).map_err(|source| DownloadError::Io {
        path: out_dir.to_path_buf(),
        source,
    })?;
    let name = safe_file_name(name, &id);
    // The id in the name keeps two files of the same name apart; the node runs one download
    // per id at a time.
    let part = out_dir.join(format!("{name}.{}{PART_SUFFIX}", id.short()));
    let io_err = |source| DownloadError::Io {
        path: part.clone(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&part)
        .map_err(io_err)?;
    file.set_len(manifest.size).map_err(io_err)?;

    let count = manifest.chunk_count();
    let shared = Arc::new(Shared {
        id,
        file: Arc::new(file),
        sched: Mutex::new(Scheduler::new(count)),
        changed: Event::new(),
        active_sources: Mutex::new(conns.len()),
        aborted: AtomicBool::new(false),
        manifest,
        opts,
        progress,
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(n, conn)| smol::spawn(run_source(shared.clone(), n, conn)))
        .collect();
    let mut disk_error = None;
    for t in tasks {
        let (report, stop) = t.await;
        if let Some(Stop::Disk(e)) = stop {
            disk_error.get_or_insert(e);
        }
        reports.push(report);
    }
    if let Some(source) = disk_error {
        return Err(DownloadError::Io { path: part, source });
    }
    let (done, all) = {
        let s = shared.sched.lock().unwrap();
        (s.done_chunks, s.all_done())
    };
    if !all {
        return Err(DownloadError::SourcesFailed {
            id,
            done,
            total: count,
            reasons: reasons(&reports),
        });
    }

    let file = shared.file.clone();
    let check = smol::unblock(move || -> io::Result<FileId> {
        file.sync_all()?;
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(&*file)?;
        Ok(hasher.finalize().into())
    });
    let got = check.await.map_err(io_err)?;
    if got != id {
        return Err(DownloadError::Verify { id, path: part });
    }
    let path = place(&part, out_dir, &name).map_err(io_err)?;
    Ok(DownloadReport {
        id,
        path,
        size: shared.manifest.size,
        elapsed_ms: started.elapsed().as_millis() as u64,
        sources: reports,
    })
}

/// Gives the verified `.part` file its final name without replacing any existing file.
fn place(part: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    for n in 0..1000 {
        let target = free_name(dir, name, n);
        match fs::hard_link(part, &target) {
            Ok(()) => {
                fs::remove_file(part)?;
                return Ok(target);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "no free name for {name} in {}",
        dir.display()
    )))
}

fn reasons(reports: &[SourceReport]) -> String {
    let list: Vec<String> = reports
        .iter()
        .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.addr)))
        .collect();
    if list.is_empty() {
        "no source answered".into()
    } else {
        list.join("; ")
    }
}

/// Runs the futures concurrently as tasks and collects their outputs in order.
async fn spawn_all<F>(futs: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futs.map(smol::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await);
    }
    out
}

async fn run_source(
    shared: Arc<Shared>,
    me: usize,
    mut conn: SourceConn,
) -> (SourceReport, Option<Stop>) {
    let mut report = SourceReport {
        addr: conn.addr,
        chunks: 0,
        bytes: 0,
        error: None,
    };
    let mut inflight: HashMap<u32, u64> = HashMap::new();
    let result = source_loop(&shared, me, &mut conn, &mut inflight, &mut report).await;
    {
        let mut sched = shared.sched.lock().unwrap();
        for c in inflight.values() {
            sched.release(me, *c);
        }
    }
    *shared.active_sources.lock().unwrap() -= 1;
    shared.changed.notify(usize::MAX);
    let stop = match result {
        Ok(()) => None,
        Err(Stop::Source(reason)) => {
            log::warn!(
                "dropping source {} for {}: {reason}",
                conn.addr,
                shared.id.short()
            );
            report.error = Some(reason.clone());
            Some(Stop::Source(reason))
        }
        Err(Stop::Disk(e)) => {
            shared.aborted.store(true, Ordering::SeqCst);
            shared.changed.notify(usize::MAX);
            report.error = Some(format!("disk error: {e}"));
            Some(Stop::Disk(e))
        }
    };
    let _ = conn
        .send(&Message::Goodbye {
            reason: "done".into(),
        })
        .await;
    (report, stop)
}

async fn source_loop(
    shared: &Arc<Shared>,
    me: usize,
    conn: &mut SourceConn,
    inflight: &mut HashMap<u32, u64>,
    report: &mut SourceReport,
) -> Result<(), Stop> {
    let timeout = shared.opts.response_timeout;
    let mut next_request: u32 = 1;
    // The source must deliver a chunk by this time; pings do not count.
    let mut deadline = Instant::now() + timeout;
    loop {
        // Listen before looking, so a change between the look and the wait is not missed.
        let listener = shared.changed.listen();
        let mut new = Vec::new();
        {
            let mut sched = shared.sched.lock().unwrap();
            if sched.all_done() || shared.aborted.load(Ordering::SeqCst) {
                return Ok(()); // requests still in flight are endgame spares: drop them
            }
            if inflight.is_empty() {
                deadline = Instant::now() + timeout;
            }
            while inflight.len() < shared.opts.inflight_per_source {
                // Duplicate another source's chunk only when this one has nothing to do.
                let Some(c) = sched.next(me, inflight.is_empty()) else {
                    break;
                };
                inflight.insert(next_request, c);
                new.push((next_request, c));
                next_request = next_request.wrapping_add(1);
            }
        }
        for (request, c) in new {
            conn.send(&Message::GetChunk {
                request,
                id: shared.id,
                index: c as u32,
            })
            .await
            .map_err(Stop::Source)?;
        }
        if inflight.is_empty() {
            // Woken when a chunk is released or completed; re-check regardless after a while.
            smol::future::or(listener, async {
                smol::Timer::after(Duration::from_millis(500)).await;
            })
            .await;
            continue;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = smol::future::or(async { Some(conn.recv(left).await) }, async {
            listener.await;
            None
        })
        .await;
        let Some(msg) = msg else {
            continue; // something changed elsewhere: maybe the file is complete
        };
        match msg.map_err(|e| Stop::Source(format!("no chunk within {timeout:?}: {e}")))? {
            Message::Chunk(chunk) => {
                let Some(&c) = inflight.get(&chunk.request) else {
                    return Err(Stop::Source(format!(
                        "sent chunk {} for request {} that was never made",
                        chunk.index, chunk.request
                    )));
                };
                if chunk.id != shared.id || chunk.index as u64 != c {
                    return Err(Stop::Source(format!(
                        "answered a request for chunk {c} with chunk {} of {}",
                        chunk.index,
                        chunk.id.short()
                    )));
                }
                deadline = Instant::now() + timeout;
                if shared.sched.lock().unwrap().is_done(c) {
                    inflight.remove(&chunk.request);
                    continue; // an endgame duplicate
                }
                let len = chunk.data.len() as u64;
                let job = shared.clone();
                // On failure the chunk stays in `inflight`, so it is released with the source.
                smol::unblock(move || -> Result<(), Stop> {
                    job.manifest
                        .verify_chunk(c, &chunk.data)
                        .map_err(|e| Stop::Source(format!("sent a bad chunk: {e}")))?;
                    let offset = job.manifest.chunk_range(c).start;
                    job.file
                        .write_all_at(&chunk.data, offset)
                        .map_err(Stop::Disk)
                })
                .await?;
                inflight.remove(&chunk.request);
                let (fresh, done_bytes) = {
                    let mut sched = shared.sched.lock().unwrap();
                    (sched.complete(c, len), sched.done_bytes)
                };
                if fresh {
                    report.chunks += 1;
                    report.bytes += len;
                    let sources = *shared.active_sources.lock().unwrap();
                    (shared.progress)(Progress {
                        done_bytes,
                        size: shared.manifest.size,
                        sources,
                    });
                    shared.changed.notify(usize::MAX);
                }
            }
            Message::TransferError { kind, message, .. } => {
                return Err(Stop::Source(format!(
                    "refused a chunk: {kind:?} ({message})"
                )))
            }
            Message::Ping { nonce } => conn
                .send(&Message::Pong { nonce })
                .await
                .map_err(Stop::Source)?,
            Message::Goodbye { reason } => {
                return Err(Stop::Source(format!("closed the connection: {reason}")))
            }
            other => return Err(Stop::Source(format!("sent an unexpected {}", other.kind()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_hands_out_each_chunk_once_then_endgame() {
        let mut s = Scheduler::new(3);
        assert_eq!(s.next(0, true), Some(0));
        assert_eq!(s.next(1, true), Some(1));
        assert_eq!(s.next(0, true), Some(2));
        // Only a source with nothing in flight duplicates.
        assert_eq!(s.next(1, false), None);
        // Endgame: source 1 duplicates a chunk it has not asked for, fewest requesters first.
        let dup = s.next(1, true).unwrap();
        assert_ne!(dup, 1);
        assert!(s.complete(dup, 10));
        assert!(!s.complete(dup, 10), "a second copy is not counted");
        // A failing source's chunk goes back to the queue.
        s.release(1, 1);
        assert_eq!(s.next(2, false), Some(1));
        assert!(!s.all_done());
    }

    #[test]
    fn file_names_from_the_network_are_made_safe() {
        let id = FileId([0xab; 32]);
        assert_eq!(safe_file_name("../../etc/passwd", &id), "passwd");
        assert_eq!(safe_file_name("a\\b\\..\\c.mp3", &id), "c.mp3");
        assert_eq!(safe_file_name("..", &id), id.to_hex());
        assert_eq!(safe_file_name(".bashrc", &id), "bashrc");
        assert_eq!(safe_file_name("ok\u{7}name.txt", &id), "okname.txt");
        assert_eq!(
            free_name(Path::new("/d"), "x.mp3", 2),
            PathBuf::from("/d/x (2).mp3")
        );
        let long = "é".repeat(150);
        let cut = safe_file_name(&long, &id);
        assert!(
            cut.len() <= 200 && cut.chars().all(|c| c == 'é'),
            "{}",
            cut.len()
        );
    }
}
