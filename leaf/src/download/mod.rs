//! Downloading one file from every source that has it, in parallel verified chunks, surviving
//! crashes, flaky and hostile sources, and full disks.
//!
//! # How
//! 1. **Manifest.** A download left by an earlier run (a `NAME.ID.part` file with its
//!    `.state` record in the output folder) resumes from its record. Otherwise three sources
//!    are dialled and asked for the manifest at once (more, in turn, if some fail); the others
//!    are dialled once the download runs. A manifest must verify against the id and its chunk
//!    size must be the one its size implies; of the valid ones, the one most sources sent wins,
//!    ties going to the one with more chunks (a forged one-chunk claim verifies against any id,
//!    since the id cannot pin the size of a one-chunk file). Sources whose manifest fails or
//!    disagrees are banned; those that refuse (busy) or cannot be reached are dropped for now.
//!    With no manifest while sources are busy, the network is asked again with growing
//!    back-off.
//! 2. **Space.** The output folder must have room for the bytes still missing.
//! 3. **Chunks.** Each source keeps several chunk requests in flight; the [`Scheduler`] hands
//!    missing chunks to whichever source asks, so faster sources take more. A source with
//!    nothing to do re-requests a chunk still in flight elsewhere (endgame); the first verified
//!    copy wins and the other requests are cancelled. Every chunk is verified against the
//!    manifest before it is written.
//! 4. **Sources come and go.** A source that fails (closes, refuses, sends nothing for the
//!    response timeout) is dropped and its chunks go back to the queue; it may be tried again
//!    later. A source that lies (a bad chunk, a chunk nobody asked for, a chunk of the wrong
//!    length, a bad manifest) is banned for this download. The network is asked again for
//!    sources every so often, and with growing back-off when none is left: the download waits
//!    rather than fails while the file may come back. A source whose upload slots are full
//!    answers `Queued`; the downloader keeps its place and asks again.
//! 5. **Record.** Every second the `.part` file is flushed to disk and *then* the record of
//!    done chunks is rewritten (atomically), so a crash never records a chunk that is not on
//!    disk. On resume every chunk on disk is read back and verified, recorded or not: chunks
//!    written after the last record are not fetched again, and a recorded chunk altered
//!    between runs is fetched again.
//! 6. **Finish.** Every chunk was verified before it was kept (in memory as it arrived, or on
//!    disk on resume), so the file is not hashed again: it is synced, then linked to its final
//!    name, which never replaces an existing file. A failure (a full disk, say) keeps the
//!    `.part` file and its record for the next attempt.
//!
//! 7. **Swarm.** Each source is asked which chunks it holds (`GetBitfield`): a complete source
//!    holds all, another downloader only what it has verified, and it tells of each chunk it
//!    gains (`Have`) that we have not told it we hold. A source is asked only for chunks it holds, the rarest among the sources
//!    known first. While it downloads, the file is itself a source ([`crate::swarm`]): a chunk
//!    is offered to others only once it is verified and written.
//!
//! # Where the rules live
//! Every rule of the exchange with one source (what to request, what to accept, what is
//! hostile, the endgame, queue places, bitfields) is in [`transfer::SourceSession`], and
//! who fetches which chunk in [`transfer::Scheduler`], both sans-IO; the manifest checks
//! and vote are in [`transfer::manifest`]. This module drives them: it connects, moves
//! messages, verifies and writes chunks off the executor, keeps the part file and its record,
//! and finds sources.

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use transport::identity::Identity;
use wire::{FileId, FileRecord, Manifest};

use crate::part::{
    create_part, find_earlier, free_space, is_part_of_size, open_part, part_paths, place,
    recover_chunks, Record,
};
pub use crate::part::{discard_partial, safe_file_name, STATE_SUFFIX};
use crate::rate::RateLimit;
use crate::reverse::Accepted;
pub use source::Way;
pub(crate) use source::{direct_or_back, first_ok};
use source::{NoManifest, SourceConn};
pub use types::{
    DownloadError, DownloadOptions, DownloadReport, Progress, Reached, SourceReport, MAX_PEERS,
};

mod disk;
mod run;
mod source;
mod types;
use crate::swarm::{PartialFile, Reciprocity};
use transfer::manifest::Vote;
use transfer::Scheduler;

/// How many sources are asked for the manifest.
const MANIFEST_VOTES: usize = 3;

/// Finds sources for the file: called when the download starts, every
/// [`DownloadOptions::requery_interval`], and with back-off while no source is left.
pub type FindSources =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Vec<SocketAddr>> + Send>> + Send + Sync>;

/// For a source that may not accept connections: a connection it opens to us, asked for
/// through its super-peer ([`crate::reverse`]). `None` when the source is dialled only.
pub type ConnectBack = Arc<dyn Fn(SocketAddr) -> Option<BackFuture> + Send + Sync>;

/// How to reach the source at an address: with its address of the other family (IPv6
/// beside IPv4) when a hit named one, and whether the address is known reachable.
pub type Ways = Arc<dyn Fn(SocketAddr) -> Way + Send + Sync>;

/// A connection back being asked for and awaited.
pub type BackFuture = Pin<Box<dyn Future<Output = Result<Accepted, String>> + Send>>;

/// One download to run.
pub struct Job {
    /// This node's key pair (its id is sent in Hello).
    pub me: Arc<Identity>,
    /// The file.
    pub id: FileId,
    /// Its name, from the search (made safe before use).
    pub name: String,
    /// Its size, when the search results agree on one (checked against the manifest).
    pub expected_size: Option<u64>,
    /// The folder to save into.
    pub out_dir: PathBuf,
    /// Sources known at the start.
    pub sources: Vec<SocketAddr>,
    /// Where to look for more.
    pub find: FindSources,
    /// How to have a source that cannot be reached connect to us instead (tried beside
    /// dialling it); `None`: sources are only dialled.
    pub connect_back: Option<ConnectBack>,
    /// How to reach a source by its addresses; `None`: at the one address it is found at.
    pub ways: Option<Ways>,
    /// How long to go on with no source at all before giving up; `None`: wait indefinitely.
    pub give_up_after: Option<Duration>,
    /// With no source at the start and nothing of the file on disk: keep searching (as for a
    /// download resumed after a restart) instead of failing at once (as for a mistyped id).
    pub wait_for_sources: bool,
    /// Downloader settings.
    pub opts: DownloadOptions,
    /// The node's download cap.
    pub cap: RateLimit,
    /// Taking part in the swarm: serving the file while it downloads, and counting what each
    /// source sends for tit-for-tat. `None`: a plain download.
    pub swarm: Option<SwarmHooks>,
}

/// Stops serving a partial file (see [`SwarmHooks::unpublish`]).
pub type Unpublish = Box<dyn Fn(&Arc<PartialFile>) + Send + Sync>;

/// How a download takes part in the swarm (see [`crate::swarm`]).
pub struct SwarmHooks {
    /// Given the partial file once it exists (resumed chunks already marked), to serve it.
    pub publish: Box<dyn Fn(Arc<PartialFile>) + Send + Sync>,
    /// Stops serving a partial file given to `publish` (one whose manifest was proven wrong),
    /// unless another has replaced it.
    pub unpublish: Unpublish,
    /// Where the bytes each source sends are counted.
    pub reciprocity: Arc<Reciprocity>,
    /// Where this node serves chunks, told to sources in Hello (they favour downloaders that
    /// serve others); `None` for a node that serves nobody.
    pub listen: Option<SocketAddr>,
    /// The swarm's peers this node met, where the sources it connects to are noted (and told
    /// to the downloaders it serves).
    pub peers: crate::swarm::SwarmPeers,
    /// The node's connections with other leaves: each source dialled takes a place first
    /// ([`crate::links`]).
    pub links: Arc<crate::links::PeerLinks>,
}

/// Downloads a file; see the module docs for the steps.
pub async fn download(
    mut job: Job,
    progress: Box<dyn Fn(Progress) + Send + Sync>,
) -> Result<DownloadReport, DownloadError> {
    let progress: Progress_ = Arc::from(progress);
    // Sources that lied (about the manifest) are not asked again for this file.
    let mut banned = HashSet::new();
    let mut retries = 0;
    loop {
        let banned_before = banned.clone();
        match attempt(&job, progress.clone(), &mut banned).await {
            Err(DownloadError::ManifestSize {
                id,
                claimed,
                proven,
                liars,
            }) if retries < SIZE_RETRIES => {
                // Proven, not suspected: what was fetched against the lie goes, and so do
                // those who told it.
                log::warn!(
                    "the manifest of {id} from {liars:?} lies about its size ({claimed} bytes, \
                     {proven} proven); starting over"
                );
                discard_partial(&job.out_dir, &id).map_err(|source| DownloadError::Io {
                    path: job.out_dir.clone(),
                    source,
                })?;
                // Those who disagreed with the lie were dropped for it: they are asked again.
                banned = banned_before;
                banned.extend(liars);
                job.expected_size = Some(proven);
                retries += 1;
            }
            other => return other,
        }
    }
}

/// How many times a download starts over after its manifest was proven to lie about the size.
const SIZE_RETRIES: usize = 2;

/// The progress callback, shared by a download's attempts.
type Progress_ = Arc<dyn Fn(Progress) + Send + Sync>;

/// One attempt at `job`, which ends early if the manifest it starts from is proven wrong.
async fn attempt(
    job: &Job,
    progress: Progress_,
    banned: &mut HashSet<SocketAddr>,
) -> Result<DownloadReport, DownloadError> {
    let started = Instant::now();
    let id = job.id;
    let out_dir = job.out_dir.clone();
    let dir_err = |source| DownloadError::Io {
        path: out_dir.clone(),
        source,
    };
    fs::create_dir_all(&out_dir).map_err(dir_err)?;
    let mut reports = Vec::new();
    let mut conns = Vec::new();

    let earlier = find_earlier(&out_dir, &id);
    // When the sources the download starts with were dialled (after any wait for them).
    let mut dialled = started;
    // Who sent the manifest the download starts from (nobody, when resuming from a record).
    let mut senders = Vec::new();
    // Sources known and not dialled yet.
    let mut more = job.sources.clone();
    let (manifest, part, state_path, name, resuming) = match earlier {
        Some((part, state, record)) => {
            log::info!("resuming {} from {}", id.short(), part.display());
            (
                record.manifest(),
                part,
                state,
                record.name.clone(),
                Some(record),
            )
        }
        None => {
            let mut sources = if job.sources.is_empty() {
                first_sources(job).await?
            } else {
                job.sources.clone()
            };
            // While a source found says it is busy, ask again with growing back-off, as a
            // running download does (in a swarm starting at once, each source takes only so
            // many downloaders); and, in a download that waits for sources, while they cannot
            // be reached either. Otherwise, no manifest ends the download (a one-shot get
            // whose sources are all gone fails at once, as it always did).
            let mut backoff = Duration::from_secs(1);
            // A node found at an address of each family is dialled at both as one source.
            let mut kept: Vec<SocketAddr> = Vec::new();
            sources.retain(|&a| {
                let fresh = !job.way(a).other.is_some_and(|o| kept.contains(&o));
                kept.push(a);
                fresh
            });
            let (manifest, voters) = loop {
                sources.retain(|a| !banned.contains(a));
                dialled = Instant::now();
                let mut left = VecDeque::from(std::mem::take(&mut sources));
                let busy =
                    match vote_manifest(job, started, &mut left, &mut conns, &mut reports, banned)
                        .await
                    {
                        Ok(won) => {
                            // The others are dialled as soon as the download runs.
                            more = left.into();
                            break won;
                        }
                        Err(busy) => busy,
                    };
                let out_of_time = job
                    .give_up_after
                    .is_some_and(|limit| started.elapsed() >= limit);
                if !(busy || job.wait_for_sources) || out_of_time {
                    return Err(DownloadError::NoManifest {
                        id,
                        reasons: reasons(&reports),
                    });
                }
                log::info!(
                    "{}: no source gave the manifest yet ({}); asking again in {backoff:?}",
                    id.short(),
                    if busy {
                        "busy"
                    } else {
                        "none could be reached"
                    }
                );
                smol::Timer::after(backoff).await;
                backoff = (backoff * 2).min(job.opts.max_backoff);
                // The next round's reports stand for this one's, but for the banned.
                reports.retain(|r| banned.contains(&r.addr));
                sources = (job.find)().await;
                if sources.is_empty() {
                    sources = job.sources.clone();
                }
            };
            senders = voters;
            let name = safe_file_name(&job.name, &id);
            let (part, state) = part_paths(&out_dir, &name, &id);
            // A part file of the right size whose record is gone or damaged: rebuild the
            // record by verifying every chunk on disk, rather than fetch it all again.
            let orphan = is_part_of_size(&part, manifest.size);
            let rebuilt = orphan.then(|| {
                log::warn!(
                    "{}: no usable record; verifying its chunks on disk",
                    part.display()
                );
                let none = vec![0; manifest.chunk_count().div_ceil(8) as usize];
                Record::new(id, &name, &manifest, none)
            });
            (manifest, part, state, name, rebuilt)
        }
    };
    let part_err = |source| DownloadError::Io {
        path: part.clone(),
        source,
    };

    let count = manifest.chunk_count();
    let mut sched = Scheduler::new(count);
    // The last chunk's bytes prove the size the manifest claims, or that it lies.
    sched.fetch_first(count - 1);
    let file = match &resuming {
        Some(record) => {
            let file = Arc::new(open_part(&part).map_err(part_err)?);
            // Every chunk on disk is verified: recorded ones (which may have been altered since)
            // and others written after the last record.
            let (f, m, done) = (file.clone(), manifest.clone(), record.done.clone());
            let found = smol::unblock(move || recover_chunks(&f, &m, &done)).await;
            let (found, damaged) = found.map_err(part_err)?;
            if damaged > 0 {
                log::warn!(
                    "{}: {damaged} recorded chunks no longer verify on disk; fetching them again",
                    part.display()
                );
            }
            for c in found {
                sched.complete(
                    c,
                    manifest.chunk_range(c).end - manifest.chunk_range(c).start,
                );
            }
            file
        }
        None => {
            let free = free_space(&out_dir).map_err(dir_err)?;
            if free < manifest.size {
                return Err(DownloadError::NoSpace {
                    dir: out_dir,
                    need: manifest.size,
                    free,
                });
            }
            Arc::new(create_part(&part, manifest.size).map_err(part_err)?)
        }
    };
    let resumed_chunks = sched.done_chunks();
    if resuming.is_some() {
        let need = manifest.size - sched.done_bytes();
        let free = free_space(&out_dir).map_err(dir_err)?;
        if free < need {
            return Err(DownloadError::NoSpace {
                dir: out_dir,
                need,
                free,
            });
        }
    }
    let record = Record::new(id, &name, &manifest, sched.done().as_bytes().to_vec());
    // Chunks found by reading the part file are recorded only once they are surely on disk.
    let synced = if resuming.is_some() {
        file.sync_data()
    } else {
        Ok(())
    };
    synced
        .and_then(|()| record.save(&state_path))
        .map_err(|source| DownloadError::Io {
            path: state_path.clone(),
            source,
        })?;

    let partial = job.swarm.as_ref().map(|hooks| {
        let record = FileRecord {
            id,
            size: manifest.size,
            path: name.clone(),
            tags: Default::default(),
        };
        let p = Arc::new(PartialFile::new(id, manifest.clone(), record, file.clone()));
        for c in 0..count {
            if sched.is_done(c) {
                p.mark(c);
            }
        }
        (hooks.publish)(p.clone());
        p
    });
    (progress)(Progress {
        done_bytes: sched.done_bytes(),
        size: manifest.size,
        sources: 0,
        queued: None,
        resumed_chunks,
        verifying: false,
    });
    let size = manifest.size;
    let published = partial.clone();
    let setup = run::Setup {
        job,
        manifest,
        file: file.clone(),
        sched,
        partial,
        reciprocity: job.swarm.as_ref().map(|h| h.reciprocity.clone()),
        listen: job.swarm.as_ref().and_then(|h| h.listen),
        resumed_chunks,
        progress,
        part: &part,
        state_path: &state_path,
        record,
        conns,
        more,
        banned: banned.clone(),
        // The byte stamps of the sources count from the start.
        epoch: started,
        dialled,
    };
    let (result, flushed, reports) = run::run(setup, reports).await;
    result.map_err(|e| match e {
        DownloadError::ManifestSize {
            id,
            claimed,
            proven,
            ..
        } => {
            // Nobody is to be served from the lie meanwhile.
            if let (Some(hooks), Some(p)) = (&job.swarm, &published) {
                (hooks.unpublish)(p);
            }
            DownloadError::ManifestSize {
                id,
                claimed,
                proven,
                liars: senders,
            }
        }
        e => e,
    })?;
    flushed.map_err(|source| DownloadError::Io {
        path: state_path.clone(),
        source,
    })?;

    // Every chunk was verified before it was written: in memory as it arrived, or read back
    // from disk on resume. So the file is not hashed again; it is made durable, then named.
    smol::unblock(move || file.sync_all())
        .await
        .map_err(part_err)?;
    let path = place(&part, &out_dir, &name).map_err(part_err)?;
    let _ = fs::remove_file(&state_path);
    Ok(DownloadReport {
        id,
        path,
        size,
        elapsed_ms: started.elapsed().as_millis() as u64,
        resumed_chunks,
        sources: reports,
        already_had: false,
    })
}

/// With no source at all: searches again with growing back-off if the job may wait, else
/// fails at once.
async fn first_sources(job: &Job) -> Result<Vec<SocketAddr>, DownloadError> {
    if !job.wait_for_sources {
        return Err(DownloadError::NoSources(job.id));
    }
    let started = Instant::now();
    let mut backoff = Duration::from_secs(1);
    loop {
        if job
            .give_up_after
            .is_some_and(|limit| started.elapsed() >= limit)
        {
            return Err(DownloadError::NoSources(job.id));
        }
        smol::Timer::after(backoff).await;
        let found = (job.find)().await;
        if !found.is_empty() {
            return Ok(found);
        }
        backoff = (backoff * 2).min(job.opts.max_backoff);
    }
}

/// Asks [`MANIFEST_VOTES`] sources of `left` for the manifest (or all, if fewer) and keeps
/// the one most of them sent; the connections of those that sent one go to `conns`. With
/// none sent: `Err`, with whether a source said it was busy.
///
/// Sources are dialled from the front of `left`, as many at once as votes are still wanted,
/// and each is asked as soon as it is connected. The others stay in `left`, for the download
/// to dial once it runs: a connection that sits unasked at a source while the manifest is
/// chosen takes a place the source cannot yet refuse (it counts a connection against its
/// file's downloaders once asked; in a swarm of a hundred starting at once, connections
/// opened before they were needed held early leechers at 60–70 links: issue 21).
async fn vote_manifest(
    job: &Job,
    opened_at: Instant,
    left: &mut VecDeque<SocketAddr>,
    conns: &mut Vec<SourceConn>,
    reports: &mut Vec<SourceReport>,
    banned: &mut HashSet<SocketAddr>,
) -> Result<(Manifest, Vec<SocketAddr>), bool> {
    let mut vote = Vote::default();
    let mut busy = false;
    // Never more connections than the download may hold.
    let room = |conns: &Vec<SourceConn>| job.opts.max_sources.max(1).saturating_sub(conns.len());
    while vote.voters() < MANIFEST_VOTES && !left.is_empty() && room(conns) > 0 {
        let wanted = (MANIFEST_VOTES - vote.voters())
            .min(left.len())
            .min(room(conns));
        let answers = spawn_all(left.drain(..wanted).map(|a| {
            let (me, opts) = (job.me.clone(), job.opts.clone());
            let listen = job.swarm.as_ref().and_then(|h| h.listen);
            let mut way = job.way(a);
            if way.other.is_some_and(|o| banned.contains(&o)) {
                way.other = None;
            }
            let back = job.back(&way);
            let (id, size) = (job.id, job.expected_size);
            async move {
                match SourceConn::connect(way, &me, listen, &opts, opened_at, back).await {
                    Ok(mut c) => {
                        let m = c.manifest(id, size, opts.response_timeout).await;
                        (a, Some(c), m)
                    }
                    Err(e) => (a, None, Err(NoManifest::Failed(e))),
                }
            }
        }))
        .await;
        for (addr, conn, answer) in answers {
            match answer {
                Ok(m) => {
                    vote.add(addr, m);
                    conns.extend(conn);
                }
                Err(NoManifest::Hostile(why)) => {
                    log::warn!("source {addr} for {}: {why}", job.id.short());
                    banned.insert(addr);
                    reports.push(SourceReport::failed(addr, why));
                }
                Err(NoManifest::Busy(why)) => {
                    busy = true;
                    log::info!("source {addr} for {}: {why}", job.id.short());
                    reports.push(SourceReport::failed(addr, why));
                }
                Err(NoManifest::Failed(why)) => {
                    log::info!("source {addr} for {}: {why}", job.id.short());
                    reports.push(SourceReport::failed(addr, why));
                }
            }
        }
    }
    let (won, losers) = vote.result();
    for (addr, why) in losers {
        log::warn!("source {addr} for {}: {why}", job.id.short());
        conns.retain(|c| c.addr != addr);
        banned.insert(addr);
        reports.push(SourceReport::failed(addr, why));
    }
    won.ok_or(busy)
}

/// Why each source failed, for an error message.
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
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futs.map(transport::rt::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await);
    }
    out
}

impl Job {
    /// How to reach the source at `addr`.
    fn way(&self, addr: SocketAddr) -> Way {
        self.ways.as_ref().map_or(Way::to(addr), |w| w(addr))
    }

    /// A connection back from the source reached by `way`, asked through the super-peer a
    /// hit named for the address dialled first (the one this node can use: a hole punch dials
    /// it), or else for the other.
    fn back(&self, way: &Way) -> Option<BackFuture> {
        let ask = self.connect_back.as_ref()?;
        let (first, second) = way.order();
        ask(first).or_else(|| second.and_then(|a| ask(a)))
    }
}
