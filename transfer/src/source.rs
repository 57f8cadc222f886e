//! [`SourceSession`]: the downloader's side of one connection to one source, sans-IO.
//!
//! It decides what to request and when, what to accept, what is hostile, the endgame, what to
//! do when queued, and which bitfields to tell. It never touches a socket, a file or the
//! clock: the driver (`leaf::download`) passes messages and the time in, sends what
//! [`SourceSession::poll_transmit`] gives, verifies and writes the chunks that
//! [`SourceEvent::Verify`] hands out (the bytes are checked against the manifest off the
//! executor) and reports back with [`SourceSession::handle_checked`].
//!
//! # Drain rule
//! After every input (`handle_message`, `handle_checked`, `handle_timeout`, `handle_stalled`,
//! `handle_closed`), the driver drains `poll_event()` and `poll_transmit()` until `None`, then
//! checks `end()`. It calls `handle_timeout` at `poll_timeout()`, and whenever the shared
//! [`Scheduler`] changed (another source delivered a chunk or gave chunks back); and
//! `handle_stalled` once no byte has arrived for [`SourceSession::read_idle`] since the later of
//! the last byte and the moment requests went out. When it stops the session, for whatever
//! reason, it calls [`SourceSession::close`], which gives every chunk in flight back. The
//! driver in `leaf::download` is one actor per download that owns the scheduler and every
//! session, so none of this needs a lock.

//! # Invariants
//! - Request numbers count up from 1 and skip 0. An answer to a number below `next_request`
//!   that is no longer in flight is a late answer to a cancelled or queued request: its bytes
//!   are dropped, but while queued it ends the wait (the source serves us). An answer to a
//!   number never used is a lie.
//! - `inflight` maps each open request to its chunk; every chunk in it is `Active` for this
//!   source in the scheduler, until `close` releases them all.
//! - `checking` holds the requests whose chunk arrived and is being verified and written: a
//!   subset of `inflight`. Such a chunk stays in flight (if its check fails, it goes back with
//!   the source) but no longer counts against the window, so the source is asked for more while
//!   the driver checks what came; how many chunks wait to be checked is the driver's bound.
//! - While queued, the one request out is the probe (`probe`, not in `inflight`): its chunk
//!   is left missing in the scheduler ([`Scheduler::probe`]), but for [`PROBE_HOLD`] after it
//!   goes out no other source is handed it ([`Scheduler::set_probe`]: granted a slot, the
//!   probe is answered with the chunk). Answered with the chunk, the chunk is claimed and put
//!   in flight like any other; answered `Queued`, nothing is given back; its chunk done
//!   meanwhile, it is cancelled; the wait ended by a late answer, it is claimed and put in
//!   flight as if answered (a chunk done meanwhile is cancelled instead). A claimed probe may
//!   be a chunk another source was asked for once the hold passed: the request is out
//!   already, so it counts as a second requester.
//! - At most [`SourceSession::window`] requests are out at the source (in flight and not
//!   arrived), which is between `SourceOptions::inflight` and `max_inflight`; while queued, at
//!   most one (the probe), and none until the retry time. A second answer to a request whose
//!   chunk is being checked is a lie.
//! - A source is asked only for chunks it said it holds (its bitfield and haves).
//! - Once `end()` is set, no input changes anything.

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::ops::Add;
use std::time::{Duration, Instant};

use wire::{Bitfield, ChunkMsg, FileId, Message, TransferErrorKind};

use crate::Scheduler;

/// How often at most a source is told which chunks we hold.
pub const TELL_EVERY: Duration = Duration::from_millis(250);
/// How long at most a probe out keeps its chunk from other sources
/// ([`Scheduler::set_probe`]): most are answered `Queued` within a round trip, one granted a
/// slot once its chunk has come (a second at bench case 6's rates); but one a source sits on
/// must not hold the download up. (Simulated 1,000 leechers: a hold of 1 s let granted probes
/// run past it, and 3.5 % of all uploads were second copies, all done in 51.8 s; 4 s: 0.4 %,
/// 50.4 s.)
pub const PROBE_HOLD: Duration = Duration::from_secs(4);
/// How soon a session with nothing in flight looks again on its own.
const IDLE_LOOK: Duration = Duration::from_millis(500);
/// In the endgame, a session that has had nothing to ask for (every chunk left is asked of
/// [`crate::schedule::MAX_REQUESTERS`] sources) for as long as this source takes to deliver
/// two chunks asks for one beyond the cap: a chunk stuck at slow sources is rescued, within
/// these bounds (the longer while the source's rate is not measured yet).
const SPARE_GRACE: (Duration, Duration) = (Duration::from_millis(200), Duration::from_secs(5));
const SPARE_GRACE_UNMEASURED: Duration = Duration::from_secs(1);
/// A source's window holds what it delivers in one round trip (measured from asking for its
/// bitfield to the answer) and this long more (at least [`SourceOptions::inflight`] requests,
/// at most [`SourceOptions::max_inflight`]): a fast source is kept busy through the time a
/// request takes to be answered, a slow one is not handed chunks it will sit on (a request
/// queued behind others at a slow source waits there while faster ones could serve it).
pub const QUEUE_TIME: Duration = Duration::from_millis(50);
/// The delivery rate is measured over periods this long.
const RATE_PERIOD: Duration = Duration::from_millis(100);

/// The rules' settings.
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Chunk requests kept in flight at least (the window of a source not yet measured, or
    /// slow).
    pub inflight: usize,
    /// Chunk requests kept in flight at most, however fast the source delivers.
    pub max_inflight: usize,
    /// With requests out, a source that sends no byte for this long has stalled.
    pub response_timeout: Duration,
    /// How soon a queued request is asked again.
    pub queued_retry: Duration,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// Chunk bytes arrived (counted for tit-for-tat and against the download cap, kept or not).
    Received {
        /// Their length.
        bytes: u64,
    },
    /// Verify `data` as chunk `chunk` against the manifest, write it, and report with
    /// [`SourceSession::handle_checked`].
    Verify {
        /// The request it answers.
        request: u32,
        /// The chunk.
        chunk: u64,
        /// Its bytes.
        data: Vec<u8>,
    },
    /// A chunk this source delivered is verified and written, and nobody had before.
    Completed {
        /// The chunk.
        chunk: u64,
        /// Its length.
        bytes: u64,
    },
    /// The source's upload slots are full; we hold this place in its queue.
    Queued {
        /// The place (1 is next).
        position: u32,
    },
    /// The source serves us again.
    Unqueued,
    /// Other peers of the swarm, as the source told of them ([`Message::Peers`]): sources
    /// to try. At most one such event per [`PEX_GAP`].
    Peers(Vec<std::net::SocketAddr>),
}

/// Peers told of by one source more often than this are ignored: a source cannot make the
/// download dial a crowd.
pub const PEX_GAP: Duration = Duration::from_secs(10);

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEnd {
    /// Every chunk of the file is done.
    Finished,
    /// The source failed (closed, refused, went silent): it may be tried again later.
    Failed(String),
    /// The source lied: banned for this download.
    Hostile(String),
    /// The source takes no more downloaders for now (as many as it serves the file to, or
    /// starting): tried again later, the later the more often in a row (see [`Retries`]). In
    /// a big swarm most sources are full most of the time, and each try costs both sides a
    /// connection and a handshake.
    Busy(String),
}

/// The first wait before a source that was [`SourceEnd::Busy`] is tried again.
pub const BUSY_RETRY: Duration = Duration::from_secs(3);

impl SourceEnd {
    /// How long to wait before the source is tried again, if at all: after a failure `first`,
    /// after a refusal for being busy at least [`BUSY_RETRY`], and twice the `last` wait of
    /// the same kind each time in a row, up to `max`; never after the end or a lie.
    pub fn retry_after(
        &self,
        last: Option<Duration>,
        first: Duration,
        max: Duration,
    ) -> Option<Duration> {
        let first = match self {
            SourceEnd::Finished | SourceEnd::Hostile(_) => return None,
            SourceEnd::Failed(_) => first,
            SourceEnd::Busy(_) => first.max(BUSY_RETRY),
        };
        Some(last.map_or(first, |d| (d * 2).max(first)).min(max))
    }
}

/// When each source of a download may be tried again, by key (its address; a node in the
/// simulator) and time (`Instant`; virtual time in the simulator), by the rule of
/// [`SourceEnd::retry_after`]. Failures in a row are those without a connection between (a
/// connection starts them over); refusals for being busy come after a connection, so they
/// are counted apart, until the source ends a session otherwise.
#[derive(Debug)]
pub struct Retries<K, T> {
    at: HashMap<K, (T, Duration)>,
    busy: HashMap<K, Duration>,
}

impl<K, T> Default for Retries<K, T> {
    fn default() -> Self {
        Retries {
            at: HashMap::new(),
            busy: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, T: Copy + Ord + Add<Duration, Output = T>> Retries<K, T> {
    /// Whether `k` may be tried at `now`.
    pub fn ready(&self, k: &K, now: T) -> bool {
        self.at.get(k).is_none_or(|(t, _)| *t <= now)
    }

    /// A connection to `k` was made: the waits after failures start over.
    pub fn connected(&mut self, k: &K) {
        self.at.remove(k);
    }

    /// The session with `k` ended at `now` with `end`; `first` and `max` as in
    /// [`SourceEnd::retry_after`].
    pub fn ended(&mut self, k: &K, end: &SourceEnd, now: T, first: Duration, max: Duration) {
        let busy = matches!(end, SourceEnd::Busy(_));
        let last = match busy {
            true => self.busy.get(k).copied(),
            false => {
                self.busy.remove(k);
                self.at.get(k).map(|(_, d)| *d)
            }
        };
        if let Some(wait) = end.retry_after(last, first, max) {
            if busy {
                self.busy.insert(k.clone(), wait);
            }
            self.at.insert(k.clone(), (now + wait, wait));
        }
    }
}

/// What the driver found when it checked a chunk that [`SourceEvent::Verify`] handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// It verified and is written.
    Kept,
    /// It does not match the manifest.
    Bad(String),
}

/// One source of one download; see the module docs.
#[derive(Debug)]
pub struct SourceSession {
    id: FileId,
    count: u64,
    /// This source's number in the scheduler.
    me: usize,
    opts: SourceOptions,
    inflight: HashMap<u32, u64>,
    /// Requests whose chunk arrived and is being checked (a subset of `inflight`).
    checking: HashSet<u32>,
    /// How fast the source delivers, which sizes its window.
    pace: Pace,
    next_request: u32,
    /// Set once queued: when to ask again.
    queued_until: Option<Instant>,
    /// While queued, the one request out (its number and chunk): the chunk stays missing in
    /// the scheduler ([`Scheduler::probe`]) until the answer is the chunk.
    probe: Option<(u32, u64)>,
    /// Until when the probe keeps its chunk from other sources ([`PROBE_HOLD`]).
    probe_holds: Option<Instant>,
    /// The queue place last told to the driver.
    position: Option<u32>,
    /// How many done chunks we last told it of, and when.
    told_done: Option<u64>,
    told_at: Option<Instant>,
    /// When the source last told of peers we took.
    peers_at: Option<Instant>,
    /// When we asked which chunks it holds (the round trip is measured to the answer).
    asked_bits: Option<Instant>,
    wake_at: Option<Instant>,
    /// Since when, in the endgame, it has had nothing to ask for.
    spare_wait: Option<Instant>,
    transmit: VecDeque<Message>,
    events: VecDeque<SourceEvent>,
    end: Option<SourceEnd>,
    closed: bool,
}

impl SourceSession {
    /// A session with source number `me` for file `id` of `count` chunks, connected at `now`.
    /// Its first message asks which chunks the source holds: until it says, it is asked for
    /// nothing.
    pub fn new(id: FileId, count: u64, me: usize, opts: SourceOptions) -> Self {
        let mut s = SourceSession {
            id,
            count,
            me,
            opts,
            inflight: HashMap::new(),
            checking: HashSet::new(),
            pace: Pace::default(),
            next_request: 1,
            queued_until: None,
            probe: None,
            probe_holds: None,
            position: None,
            told_done: None,
            told_at: None,
            peers_at: None,
            asked_bits: None,
            wake_at: None,
            spare_wait: None,
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            end: None,
            closed: false,
        };
        s.transmit.push_back(Message::GetBitfield { id });
        s
    }

    /// A message from the source.
    pub fn handle_message(&mut self, now: Instant, msg: Message, sched: &mut Scheduler) {
        if self.end.is_some() {
            return;
        }
        if let Err(end) = self.on_message(now, msg, sched) {
            self.end = Some(end);
            return;
        }
        self.look(now, sched);
    }

    fn on_message(
        &mut self,
        now: Instant,
        msg: Message,
        sched: &mut Scheduler,
    ) -> Result<(), SourceEnd> {
        let next_request = self.next_request;
        let issued = move |r: u32| r != 0 && r < next_request;
        match msg {
            Message::Chunk(chunk) => self.on_chunk(now, chunk, issued, sched),
            Message::Bitfield { id, bits } => {
                let want = Bitfield::byte_len(self.count);
                if id != self.id || bits.len() != want {
                    return Err(SourceEnd::Hostile(format!(
                        "sent a bitfield of {} bytes for {}; {} chunks need {want}",
                        bits.len(),
                        id.short(),
                        self.count,
                    )));
                }
                let bits = Bitfield::from_bytes(bits, self.count).expect("length checked");
                sched.set_holds(self.me, bits);
                if self.pace.rtt.is_none() {
                    self.pace.rtt = self.asked_bits.map(|t| now.saturating_duration_since(t));
                }
                Ok(())
            }
            Message::Have { id, index } => {
                if id != self.id || index as u64 >= self.count {
                    return Err(SourceEnd::Hostile(format!(
                        "said it has chunk {index} of {}; the file has {}",
                        id.short(),
                        self.count
                    )));
                }
                sched.add_hold(self.me, index as u64);
                Ok(())
            }
            Message::Peers { id, addrs } => {
                if id != self.id || addrs.len() > wire::MAX_PEX {
                    return Err(SourceEnd::Hostile(format!(
                        "told of {} peers of {} (at most {} of {})",
                        addrs.len(),
                        id.short(),
                        wire::MAX_PEX,
                        self.id.short()
                    )));
                }
                if self.peers_at.is_none_or(|t| now >= t + PEX_GAP) && !addrs.is_empty() {
                    self.peers_at = Some(now);
                    self.events.push_back(SourceEvent::Peers(addrs));
                }
                Ok(())
            }
            Message::Queued { request, position } => {
                if self.probe.is_some_and(|(r, _)| r == request) {
                    // Still queued: nothing changes for the download unless the place did.
                    self.probe = None;
                    self.queued_until = Some(now + self.opts.queued_retry);
                    if self.position != Some(position) {
                        self.position = Some(position);
                        self.events.push_back(SourceEvent::Queued { position });
                    }
                    return Ok(());
                }
                if !self.inflight.contains_key(&request) {
                    if issued(request) {
                        return Ok(());
                    }
                    return Err(SourceEnd::Hostile(format!(
                        "queued request {request}, never made"
                    )));
                }
                // Queued: give every chunk not yet arrived back (their other answers will be
                // Queued too, or late, and are ignored) and ask again shortly with one request.
                let (me, checking) = (self.me, &self.checking);
                self.inflight.retain(|r, &mut c| {
                    let keep = checking.contains(r);
                    if !keep {
                        sched.release(me, c);
                    }
                    keep
                });
                self.queued_until = Some(now + self.opts.queued_retry);
                self.position = Some(position);
                self.events.push_back(SourceEvent::Queued { position });
                Ok(())
            }
            Message::TransferError {
                kind: TransferErrorKind::Busy,
                message,
                ..
            } => Err(SourceEnd::Busy(format!("busy: {message}"))),
            Message::TransferError { kind, message, .. } => Err(SourceEnd::Failed(format!(
                "refused a chunk: {kind:?} ({message})"
            ))),
            Message::Ping { nonce } => {
                self.transmit.push_back(Message::Pong { nonce });
                Ok(())
            }
            Message::Goodbye { reason } => Err(SourceEnd::Failed(format!(
                "closed the connection: {reason}"
            ))),
            other => Err(SourceEnd::Hostile(format!(
                "sent an unexpected {}",
                other.kind()
            ))),
        }
    }

    fn on_chunk(
        &mut self,
        now: Instant,
        chunk: ChunkMsg,
        issued: impl Fn(u32) -> bool,
        sched: &mut Scheduler,
    ) -> Result<(), SourceEnd> {
        // The probe answered with its chunk: it is in flight from here now, like any other.
        if let Some((r, c)) = self.probe.filter(|(r, _)| *r == chunk.request) {
            self.probe = None;
            if chunk.id != self.id || chunk.index as u64 != c {
                return Err(SourceEnd::Hostile(format!(
                    "answered a request for chunk {c} with chunk {} of {}",
                    chunk.index,
                    chunk.id.short()
                )));
            }
            if !sched.claim(self.me, c) {
                // Done meanwhile, by a source that serves us: a spare.
                if self.queued_until.take().is_some() {
                    self.position = None;
                    self.events.push_back(SourceEvent::Unqueued);
                }
                self.pace.arrived(now, chunk.data.len() as u64);
                self.events.push_back(SourceEvent::Received {
                    bytes: chunk.data.len() as u64,
                });
                return Ok(());
            }
            self.inflight.insert(r, c);
        }
        let Some(&c) = self.inflight.get(&chunk.request) else {
            if issued(chunk.request) {
                // A late answer to a cancelled request (a probe whose chunk came from
                // elsewhere meanwhile, say): the source serves us, so a queued session asks
                // again now instead of waiting out the retry time.
                if self.queued_until.take().is_some() {
                    self.position = None;
                    self.events.push_back(SourceEvent::Unqueued);
                    // A probe out since becomes a request like any other.
                    if let Some((r, c)) = self.probe.take() {
                        if sched.claim(self.me, c) {
                            self.inflight.insert(r, c);
                        } else {
                            self.transmit.push_back(Message::Cancel { request: r });
                        }
                    }
                }
                return Ok(());
            }
            return Err(SourceEnd::Hostile(format!(
                "sent chunk {} for request {} that was never made",
                chunk.index, chunk.request
            )));
        };
        if chunk.id != self.id || chunk.index as u64 != c {
            return Err(SourceEnd::Hostile(format!(
                "answered a request for chunk {c} with chunk {} of {}",
                chunk.index,
                chunk.id.short()
            )));
        }
        if self.checking.contains(&chunk.request) {
            return Err(SourceEnd::Hostile(format!(
                "answered request {} (chunk {c}) twice",
                chunk.request
            )));
        }
        if self.queued_until.take().is_some() {
            self.position = None;
            self.events.push_back(SourceEvent::Unqueued);
        }
        self.events.push_back(SourceEvent::Received {
            bytes: chunk.data.len() as u64,
        });
        self.pace.arrived(now, chunk.data.len() as u64);
        if sched.is_done(c) {
            // An endgame spare that arrived before its cancel.
            self.inflight.remove(&chunk.request);
            return Ok(());
        }
        // The chunk stays in flight until it is checked: if the check fails, it is released
        // with the source.
        self.checking.insert(chunk.request);
        self.events.push_back(SourceEvent::Verify {
            request: chunk.request,
            chunk: c,
            data: chunk.data,
        });
        Ok(())
    }

    /// The driver checked the chunk of `request` (of `len` bytes) as [`SourceEvent::Verify`]
    /// asked.
    pub fn handle_checked(
        &mut self,
        now: Instant,
        request: u32,
        len: u64,
        checked: Checked,
        sched: &mut Scheduler,
    ) {
        if self.end.is_some() {
            return;
        }
        self.checking.remove(&request);
        let Some(&c) = self.inflight.get(&request) else {
            return;
        };
        match checked {
            Checked::Bad(e) => {
                self.end = Some(SourceEnd::Hostile(format!("sent a bad chunk: {e}")));
                return;
            }
            Checked::Kept => {
                self.inflight.remove(&request);
                if sched.complete(c, len) {
                    self.events.push_back(SourceEvent::Completed {
                        chunk: c,
                        bytes: len,
                    });
                }
            }
        }
        self.look(now, sched);
    }

    /// Time passed, or the shared schedule changed: cancel spares others delivered, tell what
    /// we hold, and keep the pipeline full.
    pub fn handle_timeout(&mut self, now: Instant, sched: &mut Scheduler) {
        if self.end.is_none() {
            self.look(now, sched);
        }
    }

    fn look(&mut self, now: Instant, sched: &mut Scheduler) {
        // The first look sends the question of which chunks it holds (queued in `new`).
        self.asked_bits.get_or_insert(now);
        // What the scheduler weighs chunks by: whether this source serves us.
        sched.set_queued(self.me, self.queued_until.is_some());
        if sched.all_done() {
            self.end = Some(SourceEnd::Finished);
            return;
        }
        // What we hold, for a source spreading a file among many downloaders (it shows each
        // the chunks it lacks).
        let done = sched.done_chunks();
        if self.told_done != Some(done) && self.told_at.is_none_or(|t| now >= t + TELL_EVERY) {
            self.told_done = Some(done);
            self.told_at = Some(now);
            self.transmit.push_back(Message::Bitfield {
                id: self.id,
                bits: sched.done().as_bytes().to_vec(),
            });
        }
        // Endgame spares whose chunk another source delivered: cancel them.
        let mut cancel: Vec<u32> = Vec::new();
        let checking = &mut self.checking;
        self.inflight.retain(|&r, &mut c| {
            let keep = !sched.is_done(c);
            // A chunk that arrived is answered: nothing to cancel.
            if !keep && !checking.remove(&r) {
                cancel.push(r);
            }
            keep
        });
        cancel.sort_unstable();
        for request in cancel {
            self.transmit.push_back(Message::Cancel { request });
        }
        // A probe whose chunk another source delivered meanwhile is not wanted any more.
        if let Some((request, _)) = self.probe.filter(|(_, c)| sched.is_done(*c)) {
            self.probe = None;
            self.transmit.push_back(Message::Cancel { request });
        }
        // The probe out keeps its chunk from other sources for a while only: one a source
        // sits on does not hold the download up.
        let holds = self.probe_holds.filter(|t| now < *t);
        sched.set_probe(
            self.me,
            self.probe.filter(|_| holds.is_some()).map(|(_, c)| c),
        );
        let queued = self.queued_until.is_some_and(|t| now < t);
        // A queued source probes with one request, for a chunk left missing (kept from other
        // sources while the probe is young); others keep the pipeline full.
        let probe = (self.queued_until.is_some() && !queued && self.outstanding() == 0)
            .then(|| sched.probe(self.me))
            .flatten();
        if let Some(c) = probe {
            let request = self.ask_for(c);
            self.probe = Some((request, c));
            self.probe_holds = Some(now + PROBE_HOLD);
            sched.set_probe(self.me, Some(c));
        }
        let room = if self.queued_until.is_some() {
            0
        } else {
            self.window()
        };
        while !queued && self.outstanding() < room {
            // Duplicate another source's chunk only when this one has nothing to do.
            let Some(c) = sched.next(self.me, self.outstanding() == 0) else {
                break;
            };
            let request = self.ask_for(c);
            self.inflight.insert(request, c);
        }
        // The endgame's spares are capped; one that waited long enough asks beyond the cap.
        let waiting = self.queued_until.is_none() && self.outstanding() == 0 && sched.in_endgame();
        if !waiting {
            self.spare_wait = None;
        } else {
            let since = *self.spare_wait.get_or_insert(now);
            if now >= since + self.pace.spare_grace() {
                // Nothing it could take: wait as long again.
                self.spare_wait = Some(now);
                if let Some(c) = sched.spare_beyond_cap(self.me) {
                    self.spare_wait = None;
                    let request = self.ask_for(c);
                    self.inflight.insert(request, c);
                }
            }
        }
        // With nothing out (nothing it holds is needed, or queued), look again at the retry
        // time or after a while (sooner if a spare beyond the cap is due); with requests out,
        // their answers wake us.
        let spare_due = self.spare_wait.map(|t| t + self.pace.spare_grace());
        let hold_ends = self.probe.and(self.probe_holds).filter(|t| *t > now);
        self.wake_at = (self.inflight.is_empty() && self.probe.is_none())
            .then(|| {
                let look = self
                    .queued_until
                    .filter(|t| *t > now)
                    .unwrap_or(now + IDLE_LOOK);
                spare_due.map_or(look, |t| look.min(t.max(now)))
            })
            .or(hold_ends);
    }

    /// Sends a request for chunk `c` under the next request number, and returns the number.
    fn ask_for(&mut self, c: u64) -> u32 {
        let request = self.next_request;
        self.next_request = self.next_request.wrapping_add(1).max(1);
        self.transmit.push_back(Message::GetChunk {
            request,
            id: self.id,
            index: c as u32,
        });
        request
    }

    /// How long the driver may wait for the next byte from the source before it has stalled
    /// ([`SourceEnd::Failed`]): the response timeout while requests are out. With none out the
    /// source may rightly stay silent: `None`.
    pub fn read_idle(&self) -> Option<Duration> {
        (self.outstanding() > 0).then_some(self.opts.response_timeout)
    }

    /// How many requests the source is to have out: what it delivers in [`QUEUE_TIME`],
    /// within the options' bounds.
    pub fn window(&self) -> usize {
        self.pace.window(self.opts.inflight, self.opts.max_inflight)
    }

    /// Requests the source has not answered yet.
    fn outstanding(&self) -> usize {
        self.inflight.len() - self.checking.len() + self.probe.is_some() as usize
    }

    /// The read limit passed with no byte from the source.
    pub fn handle_stalled(&mut self, limit: Duration) {
        if self.end.is_none() {
            self.end = Some(SourceEnd::Failed(format!("no answer within {limit:?}")));
        }
    }

    /// The connection failed or closed under the driver (`why` says how).
    pub fn handle_closed(&mut self, why: String) {
        if self.end.is_none() {
            self.end = Some(SourceEnd::Failed(why));
        }
    }

    /// When to call [`SourceSession::handle_timeout`] if nothing else happens first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.end.is_some() {
            None
        } else {
            self.wake_at
        }
    }

    /// The next message to send to the source.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    /// The next thing the driver must do or know.
    pub fn poll_event(&mut self) -> Option<SourceEvent> {
        self.events.pop_front()
    }

    /// Why the session ended, once it has.
    pub fn end(&self) -> Option<&SourceEnd> {
        self.end.as_ref()
    }

    /// The driver stops the session (it ended, the connection failed, or the download is
    /// over): every chunk in flight goes back to the scheduler, what the source holds no
    /// longer counts, and a parting `Goodbye` is queued. Idempotent.
    pub fn close(&mut self, sched: &mut Scheduler) {
        if self.closed {
            return;
        }
        self.closed = true;
        for (_, c) in self.inflight.drain() {
            sched.release(self.me, c);
        }
        self.checking.clear();
        self.probe = None;
        sched.forget_source(self.me);
        self.wake_at = None;
        if self.end.is_none() {
            self.end = Some(SourceEnd::Failed("stopped".into()));
        }
        self.transmit.clear();
        self.transmit.push_back(Message::Goodbye {
            reason: "done".into(),
        });
    }

    /// Requests in flight (for tests and invariant checks).
    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    /// Checks the invariants of the module docs against `sched`; panics with the broken one.
    pub fn check_invariants(&self, sched: &Scheduler) {
        assert!(
            self.outstanding() <= self.opts.inflight.max(self.opts.max_inflight).max(1),
            "too many requests out"
        );
        assert!(
            self.checking.iter().all(|r| self.inflight.contains_key(r)),
            "a chunk being checked is no longer in flight"
        );
        if self.closed {
            assert!(self.inflight.is_empty(), "closed with chunks in flight");
        }
        if let Some((r, c)) = self.probe {
            assert!(r != 0 && r < self.next_request, "probe {r} never issued");
            assert!(!self.inflight.contains_key(&r), "probe {r} also in flight");
            assert!(self.queued_until.is_some(), "a probe while not queued");
            assert!(
                !sched.is_requested_by(self.me, c) || self.inflight.values().any(|&x| x == c),
                "the probe's chunk {c} is held for source {}",
                self.me
            );
        }
        for (&r, &c) in &self.inflight {
            assert!(r != 0 && r < self.next_request, "request {r} never issued");
            assert!(
                sched.is_done(c) || sched.is_requested_by(self.me, c),
                "chunk {c} of request {r} is not active for source {}",
                self.me
            );
        }
    }
}

/// A source's delivery rate, measured over periods of [`RATE_PERIOD`] (each new measure
/// averaged with the last), and the size of its chunks.
#[derive(Debug, Default)]
struct Pace {
    since: Option<Instant>,
    bytes: u64,
    /// Bytes a second; 0 until measured.
    rate: f64,
    chunk: u64,
    /// The round trip: from asking which chunks it holds to the answer.
    rtt: Option<Duration>,
}

impl Pace {
    fn arrived(&mut self, now: Instant, bytes: u64) {
        self.chunk = self.chunk.max(bytes);
        let since = *self.since.get_or_insert(now);
        self.bytes += bytes;
        let took = now.saturating_duration_since(since);
        if took >= RATE_PERIOD {
            let rate = self.bytes as f64 / took.as_secs_f64();
            self.rate = if self.rate == 0.0 {
                rate
            } else {
                (self.rate + rate) / 2.0
            };
            (self.since, self.bytes) = (Some(now), 0);
        }
    }

    /// How long an idle session waits in the endgame before it asks for a spare beyond the
    /// cap: the time this source takes to deliver two chunks ([`SPARE_GRACE`]).
    fn spare_grace(&self) -> Duration {
        if self.rate <= 0.0 || self.chunk == 0 {
            return SPARE_GRACE_UNMEASURED;
        }
        Duration::try_from_secs_f64(2.0 * self.chunk as f64 / self.rate)
            .unwrap_or(SPARE_GRACE.1)
            .clamp(SPARE_GRACE.0, SPARE_GRACE.1)
    }

    fn window(&self, min: usize, max: usize) -> usize {
        if self.chunk == 0 {
            return min;
        }
        // What it delivers while a request travels there and back, and [`QUEUE_TIME`] more.
        let span = QUEUE_TIME + self.rtt.unwrap_or_default();
        let w = (self.rate * span.as_secs_f64() / self.chunk as f64).ceil();
        (w.min(max as f64) as usize).clamp(min, max.max(min))
    }
}

#[cfg(test)]
mod tests {
    //! The hostile-source rules, without sockets: each case feeds the session what a lying,
    //! stalling or queueing source would send.
    use super::*;
    use wire::TransferErrorKind;

    #[test]
    fn busy_refusals_in_a_row_wait_longer_though_each_came_after_a_connection() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(120));
        let s = Duration::from_secs;
        let busy = SourceEnd::Busy("busy".into());
        let mut r: Retries<u8, Duration> = Retries::default();
        assert!(r.ready(&1, s(0)));
        r.ended(&1, &busy, s(0), first, max);
        assert!(
            !r.ready(&1, s(2)) && r.ready(&1, s(3)),
            "{BUSY_RETRY:?} after the first"
        );
        r.connected(&1);
        r.ended(&1, &busy, s(3), first, max);
        assert!(
            !r.ready(&1, s(8)) && r.ready(&1, s(9)),
            "twice that after the second"
        );
        // Failures in a row double too, until a connection.
        r.connected(&1);
        let failed = SourceEnd::Failed("closed".into());
        r.ended(&1, &failed, s(10), first, max);
        assert!(r.ready(&1, s(11)));
        r.ended(&1, &failed, s(11), first, max);
        assert!(!r.ready(&1, s(12)) && r.ready(&1, s(13)));
        // Ended otherwise, the busy streak starts over.
        r.connected(&1);
        r.ended(&1, &busy, s(20), first, max);
        assert!(r.ready(&1, s(23)));
        // Another source is its own.
        assert!(r.ready(&2, s(0)));
        r.ended(&2, &SourceEnd::Hostile("lied".into()), s(0), first, max);
        assert!(
            r.ready(&2, s(0)),
            "a liar is banned elsewhere, not waited for"
        );
    }

    #[test]
    fn a_busy_source_is_tried_again_later_than_a_failed_one_and_a_liar_never() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(120));
        let failed = SourceEnd::Failed("closed".into());
        let busy = SourceEnd::Busy("busy: 30 downloaders".into());
        assert_eq!(failed.retry_after(None, first, max), Some(first));
        assert_eq!(busy.retry_after(None, first, max), Some(BUSY_RETRY));
        // Each wait doubles the last, up to the longest.
        let s = Duration::from_secs;
        assert_eq!(failed.retry_after(Some(s(4)), first, max), Some(s(8)));
        assert_eq!(busy.retry_after(Some(s(1)), first, max), Some(BUSY_RETRY));
        assert_eq!(busy.retry_after(Some(s(10)), first, max), Some(s(20)));
        assert_eq!(busy.retry_after(Some(s(100)), first, max), Some(max));
        assert_eq!(SourceEnd::Finished.retry_after(None, first, max), None);
        assert_eq!(
            SourceEnd::Hostile("lied".into()).retry_after(None, first, max),
            None
        );
    }

    const ID: FileId = FileId([7; 32]);

    fn opts() -> SourceOptions {
        SourceOptions {
            inflight: 4,
            max_inflight: 16,
            response_timeout: Duration::from_secs(30),
            queued_retry: Duration::from_millis(500),
        }
    }

    /// A session with source number `me` that has said it holds every chunk of 10.
    #[test]
    fn peers_told_of_are_passed_on_at_most_once_per_gap_and_bounded() {
        let t = Instant::now();
        let mut sched = Scheduler::with_seed(10, 1);
        let mut s = ready(t, &mut sched, 0);
        let addrs: Vec<std::net::SocketAddr> = (1..=3)
            .map(|i| std::net::SocketAddr::from(([10, 0, 0, i], 7000)))
            .collect();
        let peers = |addrs: Vec<std::net::SocketAddr>| Message::Peers { id: ID, addrs };
        s.handle_message(t, peers(addrs.clone()), &mut sched);
        let told: Vec<_> = std::iter::from_fn(|| s.poll_event())
            .filter(|e| matches!(e, SourceEvent::Peers(_)))
            .collect();
        assert_eq!(told, vec![SourceEvent::Peers(addrs.clone())]);
        // Again at once: ignored, not an offence.
        s.handle_message(t + Duration::from_secs(1), peers(addrs.clone()), &mut sched);
        assert!(std::iter::from_fn(|| s.poll_event()).all(|e| !matches!(e, SourceEvent::Peers(_))));
        assert_eq!(s.end(), None);
        s.handle_message(t + PEX_GAP, peers(addrs.clone()), &mut sched);
        assert!(std::iter::from_fn(|| s.poll_event()).any(|e| matches!(e, SourceEvent::Peers(_))));
        // More than a message may hold: hostile.
        let many = vec![addrs[0]; wire::MAX_PEX + 1];
        s.handle_message(t + PEX_GAP * 3, peers(many), &mut sched);
        assert!(matches!(s.end(), Some(SourceEnd::Hostile(w)) if w.contains("51 peers")));
        // Of another file: hostile too.
        let mut s = ready(t, &mut sched, 1);
        let other = Message::Peers {
            id: FileId([9; 32]),
            addrs,
        };
        s.handle_message(t, other, &mut sched);
        assert!(matches!(s.end(), Some(SourceEnd::Hostile(_))));
    }

    fn ready(now: Instant, sched: &mut Scheduler, me: usize) -> SourceSession {
        let mut s = SourceSession::new(ID, 10, me, opts());
        assert_eq!(s.poll_transmit(), Some(Message::GetBitfield { id: ID }));
        s.handle_timeout(now, sched);
        assert!(
            matches!(s.poll_transmit(), Some(Message::Bitfield { .. })),
            "we tell what we hold"
        );
        assert_eq!(s.poll_transmit(), None, "nothing asked before its bitfield");
        assert_eq!(s.read_idle(), None, "silence is fine with nothing asked");
        s.handle_message(
            now,
            Message::Bitfield {
                id: ID,
                bits: Bitfield::full(10).into_bytes(),
            },
            sched,
        );
        s
    }

    /// The chunk requests sent since the last call: (request, chunk).
    fn requests(s: &mut SourceSession) -> Vec<(u32, u64)> {
        std::iter::from_fn(|| s.poll_transmit())
            .filter_map(|m| match m {
                Message::GetChunk { request, index, .. } => Some((request, index as u64)),
                _ => None,
            })
            .collect()
    }

    fn chunk(request: u32, index: u64) -> Message {
        Message::Chunk(ChunkMsg {
            request,
            id: ID,
            index: index as u32,
            data: vec![1; 100],
        })
    }

    fn hostile(s: &SourceSession) -> String {
        match s.end() {
            Some(SourceEnd::Hostile(why)) => why.clone(),
            other => panic!("expected the source to be found hostile, got {other:?}"),
        }
    }

    #[test]
    fn the_pipeline_is_kept_full_and_a_kept_chunk_is_completed_once() {
        let t = Instant::now();
        let mut sched = Scheduler::with_seed(10, 1);
        let mut s = ready(t, &mut sched, 0);
        let out = requests(&mut s);
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(s.read_idle(), Some(Duration::from_secs(30)));
        let (r, c) = out[0];
        s.handle_message(t, chunk(r, c), &mut sched);
        assert_eq!(s.poll_event(), Some(SourceEvent::Received { bytes: 100 }));
        let Some(SourceEvent::Verify {
            request,
            chunk: got,
            ..
        }) = s.poll_event()
        else {
            panic!("the chunk is handed out to verify");
        };
        assert_eq!((request, got), (r, c));
        assert_eq!(
            requests(&mut s).len(),
            1,
            "an answered chunk no longer counts against the window while it is checked"
        );
        assert_eq!(s.inflight(), 5, "it stays in flight until checked");
        s.check_invariants(&sched);
        s.handle_checked(t, r, 100, Checked::Kept, &mut sched);
        assert_eq!(
            s.poll_event(),
            Some(SourceEvent::Completed {
                chunk: c,
                bytes: 100
            })
        );
        assert!(sched.is_done(c));
        assert!(requests(&mut s).is_empty(), "still four out at the source");
        assert_eq!(s.inflight(), 4);
        s.check_invariants(&sched);
        sched.check_invariants();
    }

    /// A ready session whose first request has been answered (its chunk handed out to be
    /// checked, events drained); and the requests it had sent.
    fn first_chunk_arrived(t: Instant, sched: &mut Scheduler) -> (SourceSession, Vec<(u32, u64)>) {
        let mut s = ready(t, sched, 0);
        let out = requests(&mut s);
        let (r, c) = out[0];
        s.handle_message(t, chunk(r, c), sched);
        while s.poll_event().is_some() {}
        (s, out)
    }

    /// Feeds `s` chunks of 100 bytes, one every `gap`, answering its requests in order and
    /// keeping each, for `chunks` chunks; returns the largest number it had out at once.
    fn deliver(
        s: &mut SourceSession,
        sched: &mut Scheduler,
        t: &mut Instant,
        gap: Duration,
        chunks: usize,
    ) -> usize {
        let mut out = std::collections::VecDeque::from(requests(s));
        let mut most = out.len();
        for _ in 0..chunks {
            let Some((r, c)) = out.pop_front() else { break };
            *t += gap;
            s.handle_message(*t, chunk(r, c), sched);
            while s.poll_event().is_some() {}
            s.handle_checked(*t, r, 100, Checked::Kept, sched);
            while s.poll_event().is_some() {}
            out.extend(requests(s));
            most = most.max(out.len());
            s.check_invariants(sched);
        }
        most
    }

    #[test]
    fn the_window_grows_with_what_a_source_delivers_within_its_bounds() {
        // A source of 2000 chunks that has said it holds them all, fed a chunk every `gap`:
        // its window before it is measured, after, and the most it had out.
        let run = |gap: Duration, chunks: usize| {
            let count = 2000;
            let mut t = Instant::now();
            let mut sched = Scheduler::with_seed(count, 1);
            let mut s = SourceSession::new(ID, count, 0, opts());
            assert_eq!(s.poll_transmit(), Some(Message::GetBitfield { id: ID }));
            let bits = Bitfield::full(count).into_bytes();
            s.handle_message(t, Message::Bitfield { id: ID, bits }, &mut sched);
            let before = s.window();
            let most = deliver(&mut s, &mut sched, &mut t, gap, chunks);
            (before, s.window(), most)
        };
        // Fast: 100 bytes a millisecond is 100 kB/s, 5 kB (50 chunks) in QUEUE_TIME: the
        // window reaches its maximum of 16, and never more is out.
        assert_eq!(run(Duration::from_millis(1), 400), (4, 16, 16));
        // Slow: a chunk every 100 ms is 1 kB/s, under one chunk in QUEUE_TIME: the least.
        assert_eq!(run(Duration::from_millis(100), 40), (4, 4, 4));
    }

    #[test]
    fn a_second_answer_to_a_request_being_checked_is_a_lie() {
        let t = Instant::now();
        let mut sched = Scheduler::with_seed(10, 1);
        let (mut s, out) = first_chunk_arrived(t, &mut sched);
        let (r, c) = out[0];
        s.handle_message(t, chunk(r, c), &mut sched);
        assert!(hostile(&s).contains("twice"), "{}", hostile(&s));
        assert!(
            std::iter::from_fn(|| s.poll_event()).all(|e| !matches!(e, SourceEvent::Verify { .. })),
            "it is not checked again"
        );
        s.close(&mut sched);
        s.check_invariants(&sched);
        sched.check_invariants();
    }

    #[test]
    fn queued_while_a_chunk_is_checked_keeps_that_chunk_and_gives_back_the_rest() {
        let t = Instant::now();
        let mut sched = Scheduler::with_seed(10, 1);
        let (mut s, out) = first_chunk_arrived(t, &mut sched);
        let (r, c) = out[0];
        let more = requests(&mut s);
        s.handle_message(
            t,
            Message::Queued {
                request: out[1].0,
                position: 3,
            },
            &mut sched,
        );
        assert_eq!(
            s.inflight(),
            1,
            "only the chunk being checked stays: {more:?}"
        );
        s.check_invariants(&sched);
        sched.check_invariants();
        s.handle_checked(t, r, 100, Checked::Kept, &mut sched);
        assert!(
            sched.is_done(c),
            "the checked chunk is kept though the source queued us"
        );
        assert_eq!(s.inflight(), 0);
        s.check_invariants(&sched);
    }

    #[test]
    fn a_chunk_for_a_request_never_made_is_a_lie_but_a_late_answer_is_not() {
        let t = Instant::now();
        let mut sched = Scheduler::with_seed(10, 2);
        let mut s = ready(t, &mut sched, 0);
        let out = requests(&mut s);
        // Queued gives every request back; their late answers are harmless.
        s.handle_message(
            t,
            Message::Queued {
                request: out[0].0,
                position: 3,
            },
            &mut sched,
        );
        assert_eq!(s.poll_event(), Some(SourceEvent::Queued { position: 3 }));
        s.handle_message(t, chunk(out[1].0, out[1].1), &mut sched);
        assert!(s.end().is_none(), "a late answer is ignored");
        assert_eq!(
            s.poll_event(),
            Some(SourceEvent::Unqueued),
            "but it shows the source serves us again"
        );
        assert_eq!(s.poll_event(), None);
        s.handle_message(t, chunk(99, 0), &mut sched);
        assert!(hostile(&s).contains("never made"), "{}", hostile(&s));
        s.close(&mut sched);
        assert_eq!(
            s.poll_transmit(),
            Some(Message::Goodbye {
                reason: "done".into()
            })
        );
        s.check_invariants(&sched);
        sched.check_invariants();
    }

    #[test]
    fn a_wrong_chunk_a_bad_chunk_a_bad_bitfield_or_have_is_hostile() {
        let t = Instant::now();
        let mut sched = Scheduler::with_seed(10, 3);
        let mut s = ready(t, &mut sched, 0);
        let (r, c) = requests(&mut s)[0];
        s.handle_message(t, chunk(r, (c + 1) % 10), &mut sched);
        assert!(hostile(&s).starts_with("answered a request for chunk"));

        let mut sched = Scheduler::with_seed(10, 3);
        let mut s = ready(t, &mut sched, 0);
        let (r, c) = requests(&mut s)[0];
        s.handle_message(t, chunk(r, c), &mut sched);
        s.handle_checked(
            t,
            r,
            100,
            Checked::Bad("chunk 1 does not match".into()),
            &mut sched,
        );
        assert!(hostile(&s).contains("bad chunk"));
        assert!(!sched.is_done(c));
        s.close(&mut sched);
        sched.check_invariants();
        assert!(!sched.is_requested_by(0, c), "its chunks went back");

        let mut sched = Scheduler::with_seed(10, 3);
        let mut s = SourceSession::new(ID, 10, 0, opts());
        s.handle_message(
            t,
            Message::Bitfield {
                id: ID,
                bits: vec![0xff; 5],
            },
            &mut sched,
        );
        assert!(hostile(&s).contains("10 chunks need 2"), "{}", hostile(&s));

        let mut s = ready(t, &mut sched, 1);
        s.handle_message(t, Message::Have { id: ID, index: 10 }, &mut sched);
        assert!(hostile(&s).contains("the file has 10"));

        let mut s = ready(t, &mut sched, 2);
        s.handle_message(
            t,
            Message::GetChunk {
                request: 1,
                id: ID,
                index: 0,
            },
            &mut sched,
        );
        assert_eq!(hostile(&s), "sent an unexpected GetChunk");
        s.handle_message(t, Message::Ping { nonce: 1 }, &mut sched);
        assert_eq!(
            hostile(&s),
            "sent an unexpected GetChunk",
            "nothing changes once ended"
        );
    }

    #[test]
    fn refusals_goodbyes_and_silence_are_failures_not_lies() {
        let t = Instant::now();
        let mut sched = Scheduler::with_seed(10, 4);
        let mut s = ready(t, &mut sched, 0);
        s.handle_message(t, Message::Ping { nonce: 9 }, &mut sched);
        assert!(std::iter::from_fn(|| s.poll_transmit()).any(|m| m == Message::Pong { nonce: 9 }));
        s.handle_message(
            t,
            Message::TransferError {
                request: 1,
                id: ID,
                kind: TransferErrorKind::Unavailable,
                message: "gone".into(),
            },
            &mut sched,
        );
        assert!(matches!(s.end(), Some(SourceEnd::Failed(w)) if w.starts_with("refused a chunk")));

        let mut s = ready(t, &mut sched, 1);
        s.handle_message(
            t,
            Message::Goodbye {
                reason: "bye".into(),
            },
            &mut sched,
        );
        assert_eq!(
            s.end(),
            Some(&SourceEnd::Failed("closed the connection: bye".into()))
        );

        let mut s = ready(t, &mut sched, 2);
        let limit = s.read_idle().expect("requests are out");
        s.handle_stalled(limit);
        assert_eq!(
            s.end(),
            Some(&SourceEnd::Failed("no answer within 30s".into()))
        );
    }

    #[test]
    fn a_queued_source_probes_with_one_request_after_the_retry_time() {
        let t = Instant::now();
        let mut sched = Scheduler::with_seed(10, 5);
        let mut s = ready(t, &mut sched, 0);
        let out = requests(&mut s);
        s.handle_message(
            t,
            Message::Queued {
                request: out[2].0,
                position: 1,
            },
            &mut sched,
        );
        assert_eq!(s.poll_event(), Some(SourceEvent::Queued { position: 1 }));
        assert_eq!(s.inflight(), 0, "every chunk given back");
        assert!(out.iter().all(|&(_, c)| !sched.is_requested_by(0, c)));
        assert!(requests(&mut s).is_empty(), "nothing until the retry time");
        assert_eq!(s.poll_timeout(), Some(t + Duration::from_millis(500)));
        s.handle_timeout(t + Duration::from_millis(500), &mut sched);
        let probe = requests(&mut s);
        assert_eq!(probe.len(), 1, "one probe while queued");
        s.handle_message(t, chunk(probe[0].0, probe[0].1), &mut sched);
        assert_eq!(s.poll_event(), Some(SourceEvent::Unqueued));
        s.check_invariants(&sched);
    }

    /// A download with one chunk (0) missing, whose only source queued it at `t` and sent
    /// its probe at the retry time: the scheduler, the session, the probe (request, chunk),
    /// and the time it went out.
    fn one_chunk_probed(t: Instant) -> (Scheduler, SourceSession, (u32, u64), Instant) {
        let mut sched = Scheduler::with_seed(10, 5);
        for c in 1..10 {
            sched.complete(c, 100);
        }
        let mut queued = ready(t, &mut sched, 0);
        let out = requests(&mut queued);
        assert_eq!(out.len(), 1);
        let queue = Message::Queued {
            request: out[0].0,
            position: 3,
        };
        queued.handle_message(t, queue, &mut sched);
        while queued.poll_event().is_some() {}
        let later = t + Duration::from_millis(500);
        queued.handle_timeout(later, &mut sched);
        let probe = requests(&mut queued);
        assert_eq!(probe.len(), 1, "one probe");
        (sched, queued, probe[0], later)
    }

    #[test]
    fn a_probe_leaves_its_chunk_missing_and_to_nobody_else_until_answered() {
        let t = Instant::now();
        // One chunk missing: the queued source probes for it; the serving one does not take
        // it while the probe is out (a probe granted a slot is answered with its chunk, which
        // would come twice), and takes it once the probe is answered `Queued`.
        let (mut sched, mut queued, probe, later) = one_chunk_probed(t);
        assert_eq!(probe.1, 0);
        assert!(
            !sched.is_requested_by(0, 0),
            "the probe's chunk is left missing"
        );
        assert!(
            queued.read_idle().is_some(),
            "a probe out is an answer awaited"
        );
        let mut serving = ready(later, &mut sched, 1);
        assert!(
            requests(&mut serving).is_empty(),
            "the probe's chunk is not handed out"
        );
        queued.check_invariants(&sched);
        serving.check_invariants(&sched);
        sched.check_invariants();
        // Nor is a source that connects meanwhile.
        let mut other = ready(t, &mut sched, 3);
        let first = requests(&mut other);
        assert!(first.is_empty(), "{first:?}");
        // Answered with the chunk, the probe is a request like any other, from it alone.
        let (mut both, mut q, p, _) = one_chunk_probed(t);
        q.handle_message(later, chunk(p.0, 0), &mut both);
        assert!(std::iter::from_fn(|| q.poll_event()).any(|e| e == SourceEvent::Unqueued));
        assert!(both.is_requested_by(0, 0));
        q.check_invariants(&both);
        both.check_invariants();
        // Answered `Queued`, the probe is over: the serving source takes the chunk.
        queued.handle_message(
            later,
            Message::Queued {
                request: probe.0,
                position: 3,
            },
            &mut sched,
        );
        serving.handle_timeout(later, &mut sched);
        let taken = requests(&mut serving);
        assert_eq!(taken.iter().map(|p| p.1).collect::<Vec<_>>(), vec![0]);
        queued.check_invariants(&sched);
        serving.check_invariants(&sched);
        sched.check_invariants();
        // Answered `Queued` instead, a probe gives nothing back (it held nothing) and the
        // next one comes after the retry time.
        let mut sched2 = Scheduler::with_seed(10, 5);
        let mut again = ready(t, &mut sched2, 2);
        let first = requests(&mut again);
        again.handle_message(
            t,
            Message::Queued {
                request: first[0].0,
                position: 1,
            },
            &mut sched2,
        );
        while again.poll_event().is_some() {}
        again.handle_timeout(later, &mut sched2);
        let p = requests(&mut again);
        assert_eq!(p.len(), 1);
        again.handle_message(
            later,
            Message::Queued {
                request: p[0].0,
                position: 1,
            },
            &mut sched2,
        );
        assert_eq!(
            again.poll_event(),
            None,
            "the same place again: nothing new for the driver"
        );
        assert_eq!(again.read_idle(), None, "nothing out until the retry time");
        assert!(requests(&mut again).is_empty());
        again.check_invariants(&sched2);
    }

    #[test]
    fn a_probe_left_unanswered_keeps_its_chunk_from_others_for_a_while_only() {
        let t = Instant::now();
        let (mut sched, mut queued, _, later) = one_chunk_probed(t);
        let mut serving = ready(later, &mut sched, 1);
        assert!(requests(&mut serving).is_empty());
        // The source sits on the probe: once the hold is over, the chunk is anyone's.
        let over = later + PROBE_HOLD;
        assert_eq!(queued.poll_timeout(), Some(over));
        queued.handle_timeout(over, &mut sched);
        serving.handle_timeout(over, &mut sched);
        assert_eq!(
            requests(&mut serving)
                .iter()
                .map(|r| r.1)
                .collect::<Vec<_>>(),
            vec![0]
        );
        queued.check_invariants(&sched);
        serving.check_invariants(&sched);
        sched.check_invariants();
    }

    #[test]
    fn a_late_chunk_from_a_source_that_queued_us_ends_the_wait() {
        let t = Instant::now();
        let mut sched = Scheduler::with_seed(10, 5);
        let mut s = ready(t, &mut sched, 0);
        let out = requests(&mut s);
        let queue = Message::Queued {
            request: out[0].0,
            position: 2,
        };
        s.handle_message(t, queue, &mut sched);
        while s.poll_event().is_some() {}
        let later = t + Duration::from_millis(500);
        s.handle_timeout(later, &mut sched);
        let probe = requests(&mut s);
        assert_eq!(probe.len(), 1);
        // Another source delivers the probe's chunk: the probe is cancelled...
        sched.complete(probe[0].1, 100);
        s.handle_timeout(later, &mut sched);
        let sent: Vec<Message> = std::iter::from_fn(|| s.poll_transmit()).collect();
        assert!(sent.contains(&Message::Cancel {
            request: probe[0].0
        }));
        let probes = sent
            .iter()
            .filter(|m| matches!(m, Message::GetChunk { .. }))
            .count();
        assert_eq!(probes, 1, "still queued, it probes again: {sent:?}");
        // ...but the source had granted it a slot and sent it: it serves us, so we ask now,
        // not at the retry time 500 ms on.
        s.handle_message(later, chunk(probe[0].0, probe[0].1), &mut sched);
        assert_eq!(s.poll_event(), Some(SourceEvent::Unqueued));
        let asked = requests(&mut s);
        assert_eq!(
            asked.len(),
            3,
            "the window filled at once, beside the probe"
        );
        assert_eq!(
            s.inflight(),
            4,
            "the probe out is a request like the others"
        );
        assert!(asked.iter().all(|&(_, c)| c != probe[0].1));
        s.check_invariants(&sched);
    }

    #[test]
    fn in_the_endgame_an_idle_session_asks_beyond_the_cap_only_after_waiting() {
        let t = Instant::now();
        let mut sched = Scheduler::with_seed(10, 3);
        for c in 0..8 {
            sched.complete(c, 100);
        }
        // Chunks 8 and 9 are left: one source asks for both, two more take a spare each.
        let mut first = ready(t, &mut sched, 0);
        assert_eq!(requests(&mut first).len(), 2);
        let mut spares = Vec::new();
        for me in 1..=2 {
            let mut s = ready(t, &mut sched, me);
            assert_eq!(
                requests(&mut s).len(),
                1,
                "one spare while it has nothing out"
            );
            spares.push(s);
        }
        // Every chunk left is asked of two sources: a fourth asks for nothing...
        let mut idle = ready(t, &mut sched, 3);
        assert!(requests(&mut idle).is_empty());
        let wake = idle.poll_timeout().expect("it looks again");
        assert!(wake <= t + SPARE_GRACE_UNMEASURED, "{:?}", wake - t);
        idle.handle_timeout(t + Duration::from_millis(500), &mut sched);
        assert!(requests(&mut idle).is_empty(), "not before the grace");
        // ...until it has waited (its rate unmeasured: a second): then it rescues one.
        idle.handle_timeout(t + SPARE_GRACE_UNMEASURED, &mut sched);
        let rescue = requests(&mut idle);
        assert_eq!(rescue.len(), 1, "one chunk beyond the cap");
        assert!([8, 9].contains(&rescue[0].1));
        idle.check_invariants(&sched);
        sched.check_invariants();
        // Delivered, the rescued chunk is done.
        idle.handle_message(
            t + SPARE_GRACE_UNMEASURED,
            chunk(rescue[0].0, rescue[0].1),
            &mut sched,
        );
        while let Some(e) = idle.poll_event() {
            if let SourceEvent::Verify { request, data, .. } = e {
                let now = t + SPARE_GRACE_UNMEASURED;
                idle.handle_checked(now, request, data.len() as u64, Checked::Kept, &mut sched);
            }
        }
        assert!(sched.is_done(rescue[0].1));
    }

    #[test]
    fn the_window_covers_the_round_trip() {
        // 100 bytes every 10 ms (10 kB/s): 5 chunks in QUEUE_TIME alone; with a round trip of
        // 200 ms, 25, which the maximum of 16 caps.
        let run = |rtt: Duration| {
            let count = 2000;
            let mut t = Instant::now();
            let mut sched = Scheduler::with_seed(count, 1);
            let mut s = SourceSession::new(ID, count, 0, opts());
            s.handle_timeout(t, &mut sched);
            t += rtt;
            let bits = Bitfield::full(count).into_bytes();
            s.handle_message(t, Message::Bitfield { id: ID, bits }, &mut sched);
            deliver(&mut s, &mut sched, &mut t, Duration::from_millis(10), 100);
            s.window()
        };
        // (The first measure counts the first chunk's bytes over the period after it: a
        // little over 10 kB/s.)
        assert!((5..=6).contains(&run(Duration::ZERO)));
        assert_eq!(run(Duration::from_millis(200)), 16);
    }

    #[test]
    fn in_the_endgame_a_spare_request_is_cancelled_once_another_source_delivers() {
        let t = Instant::now();
        let mut sched = Scheduler::with_seed(2, 6);
        let mk = |me| SourceSession::new(ID, 2, me, opts());
        let (mut a, mut b) = (mk(0), mk(1));
        for s in [&mut a, &mut b] {
            s.handle_message(
                t,
                Message::Bitfield {
                    id: ID,
                    bits: Bitfield::full(2).into_bytes(),
                },
                &mut sched,
            );
        }
        let ra = requests(&mut a);
        assert_eq!(ra.len(), 2, "a takes both chunks");
        // b has nothing in flight and nothing is missing: it duplicates one of a's chunks.
        let rb = requests(&mut b);
        assert_eq!(rb.len(), 1, "{rb:?}");
        let spare = rb[0].1;
        let (ra_req, _) = *ra.iter().find(|(_, c)| *c == spare).unwrap();
        a.handle_message(t, chunk(ra_req, spare), &mut sched);
        while a.poll_event().is_some() {}
        a.handle_checked(t, ra_req, 100, Checked::Kept, &mut sched);
        b.handle_timeout(t + TELL_EVERY, &mut sched);
        let sent: Vec<Message> = std::iter::from_fn(|| b.poll_transmit()).collect();
        assert!(
            sent.contains(&Message::Cancel { request: rb[0].0 }),
            "{sent:?}"
        );
        a.check_invariants(&sched);
        b.check_invariants(&sched);
        sched.check_invariants();
    }
}
