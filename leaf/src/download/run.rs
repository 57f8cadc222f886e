//! The download's actor: the one owner of its [`Scheduler`] and of every source's
//! [`SourceSession`]. Source connections only move bytes ([`super::source`]); chunks are
//! verified and written on the blocking pool ([`super::disk`]) and the result comes back here. The actor finds and
//! retries sources as they come and go, records progress every second, and stops when every
//! chunk is done, the disk fails, or no source is left for longer than the job may wait.
//!
//! After every input the affected session is drained (its events acted on, its messages
//! queued to its writer); when the shared schedule changed (a chunk done, chunks given back by
//! a queued source), every other session is given `handle_timeout` and drained too, as
//! `topology`'s drivers do.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::channel::{self, Receiver, Sender};
use smol::lock::Semaphore;
use transfer::peers::{PeerFacts, Rotation};
use transfer::source::Retries;
use transfer::{Checked, Scheduler, SourceEnd, SourceEvent, SourceOptions, SourceSession};
use transport::link::Outbox;
use wire::{Manifest, Message, NodeId};

use super::disk::{
    check_chunk, flush_record, start_writeback, JobDone, ToCheck, WriteGate, CHECKERS,
};
use super::source::{read_ahead, Room, SourceConn};
use super::types::{DownloadError, Progress, SourceReport};
use super::{reasons, Job};
use crate::links::PeerLink;
use crate::part::Record;
use crate::swarm::{PartialFile, Reciprocity};

/// How often the record of done chunks is brought up to date (and progress reported).
const RECORD_EVERY: Duration = Duration::from_secs(1);
/// A time that does not come (a search under way sets the next one when it answers).
/// Sources kept waiting for a place, at most.
const MAX_CANDIDATES: usize = 1000;

const FOREVER: Duration = Duration::from_secs(24 * 3600);
/// When a running download first asks the network again for more sources.
const FIRST_REQUERY: Duration = Duration::from_secs(2);

/// What the download runs on, set up by [`super::download`].
pub(super) struct Setup<'a> {
    pub(super) job: &'a Job,
    pub(super) manifest: Manifest,
    pub(super) file: Arc<File>,
    pub(super) sched: Scheduler,
    pub(super) partial: Option<Arc<PartialFile>>,
    pub(super) reciprocity: Option<Arc<Reciprocity>>,
    /// This node's listen address, for Hello.
    pub(super) listen: Option<SocketAddr>,
    pub(super) resumed_chunks: u64,
    pub(super) progress: Arc<dyn Fn(Progress) + Send + Sync>,
    pub(super) part: &'a Path,
    pub(super) state_path: &'a Path,
    pub(super) record: Record,
    /// Connections opened for the manifest, taken over as sources.
    pub(super) conns: Vec<SourceConn>,
    /// Sources known and not dialled yet: dialled at once, as places allow.
    pub(super) more: Vec<SocketAddr>,
    /// Sources that lied already: not asked again.
    pub(super) banned: HashSet<SocketAddr>,
    /// When the download began (the byte stamps count from here).
    pub(super) epoch: Instant,
    /// When the connections in `conns` were dialled.
    pub(super) dialled: Instant,
}

pub(super) enum Input {
    Connected(usize, Result<Box<SourceConn>, String>),
    /// A message from source `n`; a chunk comes with its room in memory.
    Read(usize, Result<Message, String>, Option<Room>),
    Checked(usize, u32, u64, io::Result<Checked>),
    /// The last chunk proves the manifest's size wrong: this size is right.
    SizeProven(u64),
    /// A job of checks ended (every chunk it took was answered before).
    ChecksDone,
    /// What a search for more sources found.
    Found(Vec<SocketAddr>),
    /// The part file was flushed and the record saved: the record as saved, or why not.
    Flushed(io::Result<Record>),
}

/// One source, connecting or connected.
struct Source {
    addr: SocketAddr,
    node: Option<NodeId>,
    session: Option<SourceSession>,
    out: Option<Outbox>,
    last_byte: Arc<AtomicU64>,
    /// Since when requests are out with nothing heard (the stall clock starts at the later of
    /// this and the last byte).
    waiting_since: Option<Instant>,
    /// When its connection came up, and when it last delivered a chunk that was kept: what
    /// the peer set's rotation looks at.
    connected_at: Option<Instant>,
    last_chunk: Option<Instant>,
    report: SourceReport,
    /// When it was first tried (dialled, or asked to connect back): its report's
    /// `first_chunk_ms` counts from here.
    tried_at: Instant,
    /// The connect task, then the reader task: dropped to stop them.
    _task: Option<smol::Task<()>>,
    /// Its place among the node's links (None: a plain download, or a connection made to
    /// fetch the manifest when none was free).
    _link: Option<PeerLink>,
}

/// The actor's state; see the module docs.
struct Run<'a> {
    s: Setup<'a>,
    sources: HashMap<usize, Source>,
    next_source: usize,
    inputs: Sender<Input>,
    /// Queue positions of the sources that are queued, by source number.
    queued: HashMap<usize, u32>,
    reports: Vec<SourceReport>,
    retries: Retries<SocketAddr, Instant>,
    /// Sources found and not tried yet, while [`DownloadOptions::max_sources`] are in use;
    /// oldest first, at most [`MAX_CANDIDATES`].
    candidates: VecDeque<SocketAddr>,
    /// Which useless source to let go for a candidate, once every place is taken.
    rotation: Rotation,
    backoff: Duration,
    disk_error: Option<io::Error>,
    /// The file's size, when the last chunk proved the manifest's wrong.
    size_proven: Option<u64>,
    /// Set when the shared schedule changed: every session looks again.
    changed: bool,
    /// A search for more sources under way (the network is asked on the side, so the sources
    /// keep being served meanwhile).
    searching: Option<smol::Task<()>>,
    /// Room in memory for chunks read and not yet checked, shared by the sources' readers.
    budget: Arc<Semaphore>,
    /// The room of the chunk being handed in, taken by its check if it gets one.
    room: Option<Room>,
    /// Chunks waiting to be verified and written.
    to_check: VecDeque<ToCheck>,
    /// Jobs verifying and writing chunks now, at most [`CHECKERS`].
    checks_running: usize,
    /// Open while the download runs; checks write to the part file only while it is. Closed
    /// (by [`WriteGate`]'s drop) when `run` returns or its future is dropped (a cancel).
    writes: Arc<std::sync::Mutex<bool>>,
    /// A flush of the part file and save of the record is under way, off the executor. The
    /// actor goes on meanwhile: a flush takes as long as the disk needs to write what
    /// arrived in the last second (tens to hundreds of milliseconds at loopback speed), and
    /// a download that waited on it stopped reading and checking for that long.
    flushing: bool,
    /// A flush failed: no record is saved after it.
    flush_failed: bool,
}

/// How long a stopping download waits for its checks running off the executor.
const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Runs the download until every chunk is done. Whatever happens, the record of verified
/// chunks is brought up to date at the end. Returns the outcome (the record as saved), the
/// outcome of that last save, and every source's report after `reports` (the sources dropped
/// while the manifest was chosen).
pub(super) async fn run(
    setup: Setup<'_>,
    reports: Vec<SourceReport>,
) -> (Result<(), DownloadError>, io::Result<()>, Vec<SourceReport>) {
    let (inputs, rx) = channel::unbounded::<Input>();
    let mut record = setup.record.clone();
    let mut run = Run {
        sources: HashMap::new(),
        next_source: 0,
        inputs,
        queued: HashMap::new(),
        reports,
        retries: Retries::default(),
        candidates: VecDeque::new(),
        rotation: Rotation::new(setup.job.opts.rotate_idle, setup.job.opts.rotate_every),
        backoff: Duration::from_secs(1),
        disk_error: None,
        size_proven: None,
        changed: false,
        searching: None,
        budget: Arc::new(Semaphore::new(read_ahead(setup.manifest.chunk_size as u64))),
        room: None,
        to_check: VecDeque::new(),
        checks_running: 0,
        writes: Arc::new(std::sync::Mutex::new(true)),
        flushing: false,
        flush_failed: false,
        s: setup,
    };
    let _gate = WriteGate(run.writes.clone());
    let result = run.main(&rx, &mut record).await;
    run.stop();
    // Checks still verifying or writing finish before the download returns: nothing writes to
    // the part file after that, and the record below sees every chunk they kept.
    run.drain_checks(&rx, &mut record).await;
    // A flush that failed after the last chunk came (while the checks drained): the download
    // did not end well after all.
    let result = match (result, run.disk_error.take()) {
        (Ok(()), Some(source)) => Err(DownloadError::Io {
            path: run.s.part.to_path_buf(),
            source,
        }),
        (result, _) => result,
    };
    // Whatever happened, record what is on disk for the next attempt; but not after a flush
    // failed: the chunks the record would add may not be on disk (and a second fsync of the
    // same file may not say so again).
    let flushed = match flush_record(&run.s, &record, &run.writes) {
        Some(flush) if !run.flush_failed => smol::unblock(flush).await.map(|saved| record = saved),
        _ => Ok(()),
    };
    if result.is_ok() && flushed.is_ok() {
        run.report(true);
    }
    (result, flushed, run.reports)
}

impl Run<'_> {
    async fn main(
        &mut self,
        rx: &Receiver<Input>,
        record: &mut Record,
    ) -> Result<(), DownloadError> {
        for c in std::mem::take(&mut self.s.conns) {
            let n = self.add(c.addr);
            let link = self.take_link().flatten();
            // Dialled (or asked to connect back) before the download ran.
            if let Some(src) = self.sources.get_mut(&n) {
                src.tried_at = self.s.dialled;
                src._link = link;
            }
            self.connected(n, c);
        }
        let job = self.s.job;
        for addr in std::mem::take(&mut self.s.more) {
            if !self.reports.iter().any(|r| r.addr == addr) {
                self.offer(addr, Instant::now());
            }
        }
        self.settle(Instant::now());
        let mut requery_every = job.opts.requery_interval.min(FIRST_REQUERY);
        // The first search for more sources comes soon: the starting list was cut short so the
        // download could begin.
        let mut next_query = Instant::now()
            + if self.sources.is_empty() {
                Duration::ZERO
            } else {
                job.opts.requery_interval.min(FIRST_REQUERY)
            };
        let mut alone_since = self.sources.is_empty().then(Instant::now);
        let mut next_record = Instant::now() + RECORD_EVERY;
        loop {
            if let Some(proven) = self.size_proven {
                return Err(DownloadError::ManifestSize {
                    id: job.id,
                    claimed: self.s.manifest.size,
                    proven,
                    liars: Vec::new(),
                });
            }
            if self.s.sched.all_done() || self.disk_error.is_some() {
                break;
            }
            let wake_at = self.wake_at().map_or(next_query.min(next_record), |t| {
                t.min(next_query).min(next_record)
            });
            let input = smol::future::or(async { rx.recv().await.ok() }, async {
                smol::Timer::at(wake_at).await;
                None
            })
            .await;
            let now = Instant::now();
            match input {
                Some(Input::Found(found)) => {
                    self.searching = None;
                    for addr in found {
                        self.offer(addr, now);
                    }
                    if self.sources.is_empty() {
                        next_query = now + self.backoff;
                        self.backoff = (self.backoff * 2).min(job.opts.max_backoff);
                    } else {
                        self.backoff = Duration::from_secs(1);
                        // Soon at first (other downloaders of the file appear as they start),
                        // then every requery interval.
                        requery_every = (requery_every * 2).min(job.opts.requery_interval);
                        next_query = now + requery_every;
                    }
                }
                Some(Input::Flushed(saved)) => self.flushed(saved, record),
                Some(input) => self.handle(now, input),
                None => self.tick(now),
            }
            self.settle(now);
            if now >= next_record {
                // One flush at a time: a slow disk makes the record lag, not the download.
                if !self.flushing {
                    if let Some(flush) = flush_record(&self.s, record, &self.writes) {
                        self.flushing = true;
                        let inputs = self.inputs.clone();
                        transport::rt::spawn(async move {
                            let saved = smol::unblock(flush).await;
                            let _ = inputs.send(Input::Flushed(saved)).await;
                        })
                        .detach();
                    }
                }
                self.report(false);
                next_record = Instant::now() + RECORD_EVERY;
            }
            if self.searching.is_none() {
                if self.sources.is_empty() {
                    next_query = next_query.min(now + self.backoff);
                }
                if now >= next_query && self.disk_error.is_none() {
                    let (find, inputs) = (job.find.clone(), self.inputs.clone());
                    self.searching = Some(transport::rt::spawn(async move {
                        let found = find().await;
                        let _ = inputs.send(Input::Found(found)).await;
                    }));
                    // Until it answers.
                    next_query = now + FOREVER;
                }
            }
            // Alone means no source connected, whatever is being tried.
            if self.connected_count() > 0 {
                alone_since = None;
            } else {
                alone_since.get_or_insert(now);
            }
            if let (Some(since), Some(limit)) = (alone_since, job.give_up_after) {
                if since.elapsed() >= limit {
                    return Err(DownloadError::SourcesFailed {
                        id: job.id,
                        done: self.s.sched.done_chunks(),
                        total: self.s.sched.count(),
                        reasons: reasons(&self.reports),
                    });
                }
            }
        }
        if let Some(source) = self.disk_error.take() {
            return Err(DownloadError::Io {
                path: self.s.part.to_path_buf(),
                source,
            });
        }
        Ok(())
    }

    /// A source found at `addr`: dialled now if it may be and a place is free, kept for later
    /// if it may be but none is.
    fn offer(&mut self, addr: SocketAddr, now: Instant) {
        let ready = self.retries.ready(&addr, now);
        // The same node at its other address (IPv6 beside IPv4) is the same source.
        let other = self.s.job.way(addr).other;
        let same = |a: &SocketAddr| *a == addr || Some(*a) == other;
        let busy = self.sources.values().any(|s| same(&s.addr))
            || self.candidates.iter().any(|a| Some(*a) == other);
        if !ready || busy || self.s.banned.contains(&addr) {
            return;
        }
        let link = match self.sources.len() < self.s.job.opts.max_sources.max(1) {
            true => self.take_link(),
            false => None,
        };
        match link {
            Some(link) => self.dial(addr, link),
            None if self.candidates.len() < MAX_CANDIDATES && !self.candidates.contains(&addr) => {
                self.candidates.push_back(addr)
            }
            None => {}
        }
    }

    /// A place among the node's links for a source to dial: `Some(None)` for a plain
    /// download (not counted), `None` if the node has none free.
    fn take_link(&self) -> Option<Option<PeerLink>> {
        match &self.s.job.swarm {
            Some(hooks) => hooks.links.dial().map(Some),
            None => Some(None),
        }
    }

    /// Dials waiting candidates while places are free, in the download and in the node.
    fn fill_places(&mut self, now: Instant) {
        while self.sources.len() < self.s.job.opts.max_sources.max(1) {
            if !self.s.job.swarm.as_ref().is_none_or(|h| h.links.may_dial()) {
                return;
            }
            let Some(addr) = self.candidates.pop_front() else {
                return;
            };
            self.offer(addr, now);
        }
    }

    /// A new source at `addr`, not connected yet; returns its number.
    fn add(&mut self, addr: SocketAddr) -> usize {
        let n = self.next_source;
        self.next_source += 1;
        self.sources.insert(
            n,
            Source {
                addr,
                node: None,
                session: None,
                out: None,
                last_byte: Arc::default(),
                waiting_since: None,
                connected_at: None,
                last_chunk: None,
                report: SourceReport::new(addr),
                tried_at: Instant::now(),
                _task: None,
                _link: None,
            },
        );
        n
    }

    /// Connects to `addr` as a new source, in the node's `link` place.
    fn dial(&mut self, addr: SocketAddr, link: Option<PeerLink>) {
        let n = self.add(addr);
        let (me, listen, opts, epoch) = (
            self.s.job.me.clone(),
            self.s.listen,
            self.s.job.opts.clone(),
            self.s.epoch,
        );
        let inputs = self.inputs.clone();
        // A source that may not accept connections is also asked to connect to us: the first
        // connection made is the one used (Soulseek's order: direct and indirect at once).
        let mut way = self.s.job.way(addr);
        // A node that lied at its other address is not dialled there again.
        if way.other.is_some_and(|o| self.s.banned.contains(&o)) {
            way.other = None;
        }
        let back = self.s.job.back(&way);
        let task = transport::rt::spawn(async move {
            let conn = SourceConn::connect(way, &me, listen, &opts, epoch, back).await;
            let _ = inputs.send(Input::Connected(n, conn.map(Box::new))).await;
        });
        if let Some(src) = self.sources.get_mut(&n) {
            src._task = Some(task);
            src._link = link;
        }
    }

    /// Source `n`'s connection is up: start its tasks and its session.
    fn connected(&mut self, n: usize, conn: SourceConn) {
        let opts = SourceOptions {
            inflight: self.s.job.opts.inflight_per_source,
            max_inflight: self.s.job.opts.max_inflight_per_source,
            response_timeout: self.s.job.opts.response_timeout,
            queued_retry: self.s.job.opts.queued_retry,
        };
        let count = self.s.manifest.chunk_count();
        let Some(src) = self.sources.get_mut(&n) else {
            return;
        };
        src.node = Some(conn.node);
        src.connected_at = Some(Instant::now());
        let addr = src.addr;
        src.report.reached = Some(conn.reached);
        src.report.at = conn.at;
        src.last_byte = conn.last_byte.clone();
        let (out, reader) = conn.start(
            self.s.job.cap.clone(),
            self.budget.clone(),
            self.inputs.clone(),
            move |r, room| Input::Read(n, r, room),
        );
        src.out = Some(out);
        src._task = Some(reader);
        let mut session = SourceSession::new(self.s.job.id, count, n, opts);
        session.handle_timeout(Instant::now(), &mut self.s.sched);
        src.session = Some(session);
        // Connected: earlier failures no longer lengthen its next wait.
        self.retries.connected(&addr);
        // Met first-hand: a peer of this file's swarm to tell others of.
        if let Some(hooks) = &self.s.job.swarm {
            hooks.peers.note(self.s.job.id, addr);
        }
        self.report(false);
    }

    fn handle(&mut self, now: Instant, input: Input) {
        match input {
            Input::Connected(n, Ok(conn)) => self.connected(n, *conn),
            Input::Connected(n, Err(why)) => {
                if let Some(src) = self.sources.get_mut(&n) {
                    src.report.error = Some(why.clone());
                }
                self.end(n, now, SourceEnd::Failed(why));
            }
            Input::Read(n, Ok(msg), room) => {
                if let Some(src) = self.sources.get_mut(&n) {
                    if matches!(msg, Message::Chunk(_)) && src.report.first_chunk_ms.is_none() {
                        let took = now.saturating_duration_since(src.tried_at);
                        src.report.first_chunk_ms = Some(took.as_millis() as u64);
                    }
                    if let Some(session) = src.session.as_mut() {
                        session.handle_message(now, msg, &mut self.s.sched);
                    }
                }
                if room.is_some() {
                    // A chunk that goes to be checked keeps its room until it has been; any
                    // other (late, a spare, a lie) gives it back here.
                    self.room = room;
                    self.drain(n);
                    self.room = None;
                }
            }
            Input::Read(n, Err(why), _) => {
                if let Some(session) = self.sources.get_mut(&n).and_then(|s| s.session.as_mut()) {
                    session.handle_closed(why);
                }
            }
            Input::Checked(n, request, len, Ok(checked)) => {
                if let Some(session) = self.sources.get_mut(&n).and_then(|s| s.session.as_mut()) {
                    session.handle_checked(now, request, len, checked, &mut self.s.sched);
                }
            }
            Input::SizeProven(size) => self.size_proven = Some(size),
            Input::ChecksDone => self.check_done(),
            // Handled by the main loop, which owns the search timing and the record.
            Input::Found(_) | Input::Flushed(_) => {}
            Input::Checked(n, _, _, Err(e)) => {
                // Our disk failed: the whole download stops.
                if let Some(src) = self.sources.get_mut(&n) {
                    src.report.error = Some(format!("disk error: {e}"));
                }
                self.disk_error.get_or_insert(e);
            }
        }
    }

    /// The facts of the connected sources the rotation looks at (`wants`: whether each holds
    /// a chunk still missing, which takes a pass over its bitfield).
    fn peer_facts(&self, wants: bool) -> Vec<PeerFacts> {
        self.sources
            .iter()
            .filter(|(_, s)| s.session.is_some())
            .filter_map(|(&n, s)| {
                // Bytes arriving while requests are out count as delivering: a large chunk
                // takes a while at a slow source.
                let busy = (s.session.as_ref()?.inflight() > 0).then(|| {
                    self.s.epoch + Duration::from_millis(s.last_byte.load(Ordering::Relaxed))
                });
                Some(PeerFacts {
                    source: n,
                    connected: s.connected_at?,
                    last_active: s.last_chunk.max(busy),
                    queued: self.queued.contains_key(&n),
                    has_wanted: if wants {
                        self.s.sched.wants_from(n)
                    } else {
                        Some(true)
                    },
                })
            })
            .collect()
    }

    /// Whether every place is taken while candidates wait: the rotation has work.
    fn full(&self) -> bool {
        !self.candidates.is_empty() && self.sources.len() >= self.s.job.opts.max_sources.max(1)
    }

    /// With every place taken and candidates waiting, lets go of a source that has been
    /// useless for a while, so that a candidate is tried in its place.
    fn rotate(&mut self, now: Instant) {
        if !self.full()
            || self
                .rotation
                .poll_timeout(&self.peer_facts(false))
                .is_none_or(|t| now < t)
        {
            return;
        }
        if let Some(n) = self.rotation.handle_full(now, &self.peer_facts(true)) {
            let idle = self.rotation.idle().as_secs();
            let why = format!("let go: no chunk from it for {idle} s while other sources wait");
            self.end(n, now, SourceEnd::Failed(why));
        }
    }

    /// Time passed: every session looks again, and those that stalled are told.
    fn tick(&mut self, now: Instant) {
        self.rotate(now);
        for n in self.sources.keys().copied().collect::<Vec<_>>() {
            let stall = self.sources.get(&n).and_then(|src| self.stall_at(src));
            let Some(session) = self.sources.get_mut(&n).and_then(|s| s.session.as_mut()) else {
                continue;
            };
            if stall.is_some_and(|t| now >= t) {
                let limit = session.read_idle().expect("a stall needs a read limit");
                session.handle_stalled(limit);
            } else if session.poll_timeout().is_some_and(|t| now >= t) {
                session.handle_timeout(now, &mut self.s.sched);
            }
        }
    }

    /// Drains every session and ends those that ended; while the schedule keeps changing,
    /// every session looks again.
    fn settle(&mut self, now: Instant) {
        loop {
            let ns: Vec<usize> = self.sources.keys().copied().collect();
            for &n in &ns {
                self.drain(n);
            }
            let ended: Vec<(usize, SourceEnd)> = self
                .sources
                .iter()
                .filter_map(|(&n, s)| s.session.as_ref()?.end().cloned().map(|e| (n, e)))
                .collect();
            for (n, end) in ended {
                self.end(n, now, end);
            }
            self.fill_places(now);
            if !std::mem::take(&mut self.changed) {
                break;
            }
            // Once per change, not once per session drained.
            self.report(false);
            for n in self.sources.keys().copied().collect::<Vec<_>>() {
                if let Some(session) = self.sources.get_mut(&n).and_then(|s| s.session.as_mut()) {
                    session.handle_timeout(now, &mut self.s.sched);
                }
            }
        }
    }

    /// Acts on what source `n`'s session asks, then queues its messages.
    fn drain(&mut self, n: usize) {
        let Some(src) = self.sources.get_mut(&n) else {
            return;
        };
        let Some(session) = src.session.as_mut() else {
            return;
        };
        let mut told = Vec::new();
        while let Some(event) = session.poll_event() {
            match event {
                // Bytes in are not credit: only a chunk verified and kept earns the source
                // tit-for-tat standing (below), so garbage buys no upload slot.
                SourceEvent::Received { .. } => {}
                SourceEvent::Verify {
                    request,
                    chunk,
                    data,
                } => {
                    self.to_check.push_back(ToCheck {
                        source: n,
                        request,
                        chunk,
                        data,
                        room: self.room.take(),
                    });
                }
                SourceEvent::Completed { chunk, bytes } => {
                    if let (Some(r), Some(node)) = (&self.s.reciprocity, src.node) {
                        r.record(node, bytes, Instant::now());
                    }
                    // Verified and written: others may have it from us now.
                    if let Some(p) = &self.s.partial {
                        p.mark(chunk);
                    }
                    src.report.chunks += 1;
                    src.report.bytes += bytes;
                    src.last_chunk = Some(Instant::now());
                    self.changed = true;
                }
                SourceEvent::Queued { position } => {
                    src.report.queued_at.get_or_insert(position);
                    self.queued.insert(n, position);
                    self.changed = true;
                }
                SourceEvent::Unqueued => {
                    self.queued.remove(&n);
                }
                SourceEvent::Peers(addrs) => told.extend(addrs),
            }
        }
        if let Some(out) = &src.out {
            while let Some(msg) = session.poll_transmit() {
                if let Err(full) = out.send(&msg) {
                    session.handle_closed(format!("not reading what we send: {full}"));
                    break;
                }
            }
        }
        match session.read_idle() {
            Some(_) => {
                src.waiting_since.get_or_insert_with(Instant::now);
            }
            None => src.waiting_since = None,
        }
        // Peers of the swarm the source told of: tried as places free up (never ourselves).
        let now = Instant::now();
        for addr in told {
            if Some(addr) != self.s.listen {
                self.offer(addr, now);
            }
        }
        self.start_checks();
    }

    /// A job of checks ended: the next may start.
    fn check_done(&mut self) {
        self.checks_running = self.checks_running.saturating_sub(1);
        self.start_checks();
    }

    /// Starts verifying and writing the waiting chunks off the executor, in [`CHECKERS`] jobs
    /// at most: a job takes every chunk waiting when it starts, one after another (so a
    /// download that keeps up pays one trip to the blocking pool for several chunks, not one
    /// each). Each chunk's answer comes back as an input.
    fn start_checks(&mut self) {
        while self.checks_running < CHECKERS && !self.to_check.is_empty() {
            let batch: Vec<ToCheck> = self.to_check.drain(..).collect();
            self.checks_running += 1;
            let (file, manifest, inputs, writes) = (
                self.s.file.clone(),
                self.s.manifest.clone(),
                self.inputs.clone(),
                self.writes.clone(),
            );
            // The inputs are unbounded: a send from this thread never waits. Each answer goes
            // as soon as it is known, and the job's end after the last.
            smol::unblock(move || {
                // Said when the job ends, even by a panic: the next job may start.
                let _done = JobDone(inputs.clone());
                let (mut from, mut to) = (u64::MAX, 0);
                for c in batch {
                    let range = manifest.chunk_range(c.chunk);
                    (from, to) = (from.min(range.start), to.max(range.end));
                    let _ = inputs.try_send(check_chunk(c, &file, &manifest, &writes));
                }
                start_writeback(&file, from, to);
            })
            .detach();
        }
    }

    /// Source `n` is done with: its chunks go back, it says Goodbye, and whether and when it is
    /// tried again follows from why it ended.
    fn end(&mut self, n: usize, now: Instant, end: SourceEnd) {
        let Some(mut src) = self.sources.remove(&n) else {
            return;
        };
        // Its chunks not checked yet are dropped with their room: its session, which would
        // take the answers, is gone.
        self.to_check.retain(|c| c.source != n);
        if let Some(mut session) = src.session.take() {
            session.close(&mut self.s.sched);
            if let Some(out) = &src.out {
                while let Some(msg) = session.poll_transmit() {
                    let _ = out.send(&msg);
                }
            }
            self.changed = true;
        }
        self.queued.remove(&n);
        let addr = src.addr;
        match &end {
            SourceEnd::Finished => {}
            SourceEnd::Hostile(reason) => {
                log::warn!(
                    "banning source {addr} for {}: {reason}",
                    self.s.job.id.short()
                );
                src.report.error = Some(reason.clone());
                self.s.banned.insert(addr);
            }
            SourceEnd::Failed(reason) | SourceEnd::Busy(reason) => {
                log::info!(
                    "dropping source {addr} for {}: {reason}",
                    self.s.job.id.short()
                );
                src.report.error = Some(reason.clone());
            }
        }
        let max = self.s.job.opts.max_backoff;
        self.retries.ended(&addr, &end, now, self.backoff, max);
        self.reports.push(src.report);
        // Dropping `out` lets the writer send the Goodbye and close; dropping the task stops the
        // reader (or the dial).
        self.report(false);
    }

    /// Stops every source (the download is over).
    fn stop(&mut self) {
        let now = Instant::now();
        for n in self.sources.keys().copied().collect::<Vec<_>>() {
            self.end(n, now, SourceEnd::Finished);
        }
        self.to_check.clear();
    }

    /// A flush under way ended: `saved` is the record as saved, or the disk's error.
    fn flushed(&mut self, saved: io::Result<Record>, record: &mut Record) {
        self.flushing = false;
        match saved {
            Ok(saved) => *record = saved,
            Err(e) => {
                self.flush_failed = true;
                self.disk_error.get_or_insert(e);
            }
        }
    }

    /// Waits for the checks running off the executor to answer, and for a flush under way
    /// (so that no older record is saved after the last). Chunks the checks kept are on disk
    /// but their sessions are gone, so they are not counted here; a resume verifies them.
    async fn drain_checks(&mut self, rx: &Receiver<Input>, record: &mut Record) {
        let until = Instant::now() + DRAIN_LIMIT;
        while self.checks_running > 0 || self.flushing {
            let next = smol::future::or(async { Some(rx.recv().await) }, async {
                smol::Timer::at(until).await;
                None
            })
            .await;
            match next {
                Some(Ok(Input::ChecksDone)) => self.checks_running -= 1,
                Some(Ok(Input::Flushed(saved))) => self.flushed(saved, record),
                Some(Ok(_)) => {}
                // Every check holds a sender, and so does `self.inputs`: never closed here.
                Some(Err(_)) => return,
                // A check that never answers (it panicked): the gate closes its writes.
                None => {
                    log::warn!(
                        "{} jobs of chunk checks (and flushing: {}) did not answer",
                        self.checks_running,
                        self.flushing
                    );
                    return;
                }
            }
        }
    }

    fn wake_at(&self) -> Option<Instant> {
        let rotate = if self.full() {
            self.rotation.poll_timeout(&self.peer_facts(false))
        } else {
            None
        };
        self.sources
            .values()
            .filter_map(|src| {
                let session = src.session.as_ref()?;
                let stall = self.stall_at(src);
                match (session.poll_timeout(), stall) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .chain(rotate)
            .min()
    }

    /// When source `src` counts as stalled if nothing arrives: the session's read limit after
    /// the later of its last byte and the moment its requests went out.
    fn stall_at(&self, src: &Source) -> Option<Instant> {
        let limit = src.session.as_ref()?.read_idle()?;
        let last = self.s.epoch + Duration::from_millis(src.last_byte.load(Ordering::Relaxed));
        let since = src.waiting_since.map_or(last, |w| w.max(last));
        Some(since + limit)
    }

    fn connected_count(&self) -> usize {
        self.sources
            .values()
            .filter(|s| s.session.is_some())
            .count()
    }

    /// Tells the caller how the download stands.
    fn report(&self, verifying: bool) {
        (self.s.progress)(Progress {
            done_bytes: self.s.sched.done_bytes(),
            size: self.s.manifest.size,
            sources: self.connected_count(),
            queued: self.queued.values().min().copied(),
            resumed_chunks: self.s.resumed_chunks,
            verifying,
        });
    }
}
