//! A leecher's download in the simulator, as `leaf::download::run` drives it: one
//! [`Scheduler`] and a [`SourceSession`] per connected source; sources offered by searches
//! and by source exchange, dialled while places are free and kept waiting otherwise; the
//! peer-set rotation; retry back-off; the re-query schedule (soon, then doubling up to the
//! interval); after every input the drain and settle rules of the real driver.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use transfer::peers::{PeerFacts, Rotation};
use transfer::source::Retries;
use transfer::{Checked, Scheduler, SourceEnd, SourceEvent, SourceOptions, SourceSession};
use wire::{Hello, Message, Role};

use super::{Ev, Msg, Sim};

/// Sources kept waiting for a place, at most (as the real driver).
const MAX_CANDIDATES: usize = 1000;
/// When a running download first asks again for more sources (as the real driver).
const FIRST_REQUERY: Duration = Duration::from_secs(2);

struct Src {
    node: usize,
    conn: Option<usize>,
    session: Option<SourceSession>,
    connected_at: Option<Duration>,
    last_chunk: Option<Duration>,
    last_byte: Duration,
    waiting_since: Option<Duration>,
}

/// One leecher's download.
pub struct Dl {
    sched: Scheduler,
    sources: BTreeMap<usize, Src>,
    next_source: usize,
    candidates: VecDeque<usize>,
    retries: Retries<usize, Duration>,
    rotation: Rotation,
    backoff: Duration,
    queued: HashMap<usize, u32>,
    changed: bool,
    next_query: Duration,
    requery_every: Duration,
    searching: bool,
    pub(crate) wake_gen: u64,
}

impl Dl {
    /// Node `n`'s download, with the chunks it holds already done.
    pub(crate) fn new(sim: &Sim, n: usize, seed: u64) -> Self {
        let mut sched = Scheduler::with_seed(sim.count, seed);
        sched.fetch_first(sim.count - 1);
        for c in sim.nodes[n].has.ones() {
            sched.complete(c, chunk_len(sim, c));
        }
        let opts = &sim.cfg.opts;
        Dl {
            sched,
            sources: BTreeMap::new(),
            next_source: 0,
            candidates: VecDeque::new(),
            retries: Retries::default(),
            rotation: Rotation::new(opts.rotate_idle, opts.rotate_every),
            backoff: Duration::from_secs(1),
            queued: HashMap::new(),
            changed: false,
            next_query: sim.now,
            requery_every: opts.requery_interval.min(FIRST_REQUERY),
            searching: false,
            wake_gen: 0,
        }
    }

    /// A search answered.
    pub(crate) fn found(&mut self, sim: &mut Sim, n: usize) {
        self.searching = false;
        for t in sim.search(n) {
            self.offer(sim, n, t);
        }
        if self.sources.is_empty() {
            self.next_query = sim.now + self.backoff;
            self.backoff = (self.backoff * 2).min(sim.cfg.opts.max_backoff);
        } else {
            self.backoff = Duration::from_secs(1);
            self.requery_every = (self.requery_every * 2).min(sim.cfg.opts.requery_interval);
            self.next_query = sim.now + self.requery_every;
        }
    }

    fn offer(&mut self, sim: &mut Sim, n: usize, t: usize) {
        if t == n {
            return;
        }
        let ready = self.retries.ready(&t, sim.now);
        let busy = self.sources.values().any(|s| s.node == t);
        if !ready || busy {
            return;
        }
        if self.sources.len() < sim.cfg.opts.max_sources.max(1) {
            self.dial(sim, n, t);
        } else if self.candidates.len() < MAX_CANDIDATES && !self.candidates.contains(&t) {
            self.candidates.push_back(t);
        }
    }

    fn fill_places(&mut self, sim: &mut Sim, n: usize) {
        while self.sources.len() < sim.cfg.opts.max_sources.max(1) {
            let Some(t) = self.candidates.pop_front() else {
                return;
            };
            self.offer(sim, n, t);
        }
    }

    fn dial(&mut self, sim: &mut Sim, n: usize, t: usize) {
        let k = self.next_source;
        self.next_source += 1;
        self.sources.insert(
            k,
            Src {
                node: t,
                conn: None,
                session: None,
                connected_at: None,
                last_chunk: None,
                last_byte: sim.now,
                waiting_since: None,
            },
        );
        let at = sim.now + sim.dial_time(n, t).min(sim.cfg.opts.connect_timeout);
        let epoch = sim.nodes[n].epoch;
        sim.at(
            at,
            Ev::Connected {
                node: n,
                src: k,
                epoch,
            },
        );
    }

    /// Source `k`'s dial is done: connected if its node is online, else failed.
    pub(crate) fn connected(&mut self, sim: &mut Sim, n: usize, k: usize) {
        let Some(t) = self.sources.get(&k).map(|s| s.node) else {
            return;
        };
        if !sim.nodes[t].online {
            self.end(sim, k, SourceEnd::Failed("connection refused".into()));
            return;
        }
        let conn = sim.open_conn(n, t, k);
        let node = &sim.nodes[n];
        let hello = Hello::new(node.id, Role::Leaf, Some(node.addr), crate::AGENT);
        sim.send(conn, true, Msg::M(Message::Hello(hello)));
        let opts = &sim.cfg.opts;
        let opts = SourceOptions {
            inflight: opts.inflight_per_source,
            max_inflight: opts.max_inflight_per_source,
            response_timeout: opts.response_timeout,
            queued_retry: opts.queued_retry,
        };
        let mut session = SourceSession::new(sim.file, sim.count, k, opts);
        session.handle_timeout(sim.instant(), &mut self.sched);
        let src = self.sources.get_mut(&k).expect("looked up above");
        src.conn = Some(conn);
        src.session = Some(session);
        src.connected_at = Some(sim.now);
        src.last_byte = sim.now;
        self.retries.connected(&t);
        let addr = sim.nodes[t].addr;
        sim.nodes[n].swarm_peers.note(sim.file, addr);
    }

    /// A message from source `k`.
    pub(crate) fn message(&mut self, sim: &mut Sim, n: usize, k: usize, msg: Message) {
        let Some(src) = self.sources.get_mut(&k) else {
            return;
        };
        src.last_byte = sim.now;
        // The driver takes the source's Hello before the session starts.
        if matches!(msg, Message::Hello(_)) {
            return;
        }
        if let Some(session) = src.session.as_mut() {
            session.handle_message(sim.instant(), msg, &mut self.sched);
        }
        self.drain(sim, n, k);
    }

    /// Source `k`'s connection closed under it.
    pub(crate) fn closed(&mut self, k: usize) {
        if let Some(session) = self.sources.get_mut(&k).and_then(|s| s.session.as_mut()) {
            session.handle_closed("closed by the source".into());
        }
    }

    /// Time passed: rotation, stalls, and each session's own timeout; a search when due.
    pub(crate) fn tick(&mut self, sim: &mut Sim) {
        let now = sim.instant();
        self.rotate(sim);
        for (_, src) in self.sources.iter_mut() {
            let stall = stall_at(src);
            let Some(session) = src.session.as_mut() else {
                continue;
            };
            if stall.is_some_and(|t| sim.now >= t) {
                let limit = session.read_idle().expect("a stall needs a read limit");
                session.handle_stalled(limit);
            } else if session.poll_timeout().is_some_and(|t| now >= t) {
                session.handle_timeout(now, &mut self.sched);
            }
        }
    }

    /// After every input: settle, then finish, search, or sleep until the next wake.
    pub(crate) fn after(&mut self, sim: &mut Sim, n: usize) {
        if !sim.nodes[n].online {
            return;
        }
        self.settle(sim, n);
        if self.sched.all_done() {
            self.finish(sim, n);
            return;
        }
        if !self.searching {
            if self.sources.is_empty() {
                self.next_query = self.next_query.min(sim.now + self.backoff);
            }
            if sim.now >= self.next_query {
                self.searching = true;
                self.next_query = Duration::MAX;
                let at = sim.now + sim.cfg.search_delay;
                let epoch = sim.nodes[n].epoch;
                sim.at(at, Ev::Found { node: n, epoch });
            }
        }
        let query = (!self.searching).then_some(self.next_query);
        let wake = self.wake_at(sim).into_iter().chain(query).min();
        if let Some(t) = wake {
            self.wake_gen += 1;
            let gen = self.wake_gen;
            let epoch = sim.nodes[n].epoch;
            sim.at(
                t,
                Ev::Wake {
                    node: n,
                    gen,
                    epoch,
                },
            );
        }
    }

    fn finish(&mut self, sim: &mut Sim, n: usize) {
        sim.nodes[n].done_at = Some(sim.now);
        let ks: Vec<usize> = self.sources.keys().copied().collect();
        for k in ks {
            self.end(sim, k, SourceEnd::Finished);
        }
        if sim.nodes[n].leaves_when_done {
            sim.at(sim.now, Ev::Leave(n));
        }
    }

    /// Node `n` goes offline: every source connection closes at once.
    pub(crate) fn drop_all(&mut self, sim: &mut Sim, _n: usize) {
        for (_, src) in std::mem::take(&mut self.sources) {
            if let Some(conn) = src.conn {
                if sim.conns[conn].open_down {
                    sim.close_down(conn);
                    sim.notify_closed(conn, true);
                }
            }
        }
    }

    fn settle(&mut self, sim: &mut Sim, n: usize) {
        loop {
            let ks: Vec<usize> = self.sources.keys().copied().collect();
            for &k in &ks {
                self.drain(sim, n, k);
            }
            let ended: Vec<(usize, SourceEnd)> = self
                .sources
                .iter()
                .filter_map(|(&k, s)| s.session.as_ref()?.end().cloned().map(|e| (k, e)))
                .collect();
            for (k, end) in ended {
                self.end(sim, k, end);
            }
            self.fill_places(sim, n);
            if !std::mem::take(&mut self.changed) {
                break;
            }
            let now = sim.instant();
            for src in self.sources.values_mut() {
                if let Some(session) = src.session.as_mut() {
                    session.handle_timeout(now, &mut self.sched);
                }
            }
        }
    }

    /// Acts on what source `k`'s session asks (chunks are verified and kept at once), then
    /// sends its messages.
    fn drain(&mut self, sim: &mut Sim, n: usize, k: usize) {
        let mut told = Vec::new();
        let mut gained = false;
        loop {
            let Some(src) = self.sources.get_mut(&k) else {
                return;
            };
            let Some(session) = src.session.as_mut() else {
                return;
            };
            let mut verify = Vec::new();
            while let Some(event) = session.poll_event() {
                match event {
                    SourceEvent::Received { .. } => {}
                    SourceEvent::Verify {
                        request,
                        chunk,
                        data,
                    } => verify.push((request, chunk, data.len() as u64)),
                    SourceEvent::Completed { chunk, bytes } => {
                        let from = sim.nodes[src.node].id;
                        let now = sim.instant();
                        let node = &mut sim.nodes[n];
                        node.reciprocity.record(from, bytes, now);
                        node.has.set(chunk);
                        src.last_chunk = Some(sim.now);
                        self.changed = true;
                        gained = true;
                    }
                    SourceEvent::Queued { position } => {
                        self.queued.insert(k, position);
                        self.changed = true;
                    }
                    SourceEvent::Unqueued => {
                        self.queued.remove(&k);
                    }
                    SourceEvent::Peers(addrs) => told.extend(addrs),
                }
            }
            if verify.is_empty() {
                break;
            }
            let now = sim.instant();
            for (request, _, len) in verify {
                session.handle_checked(now, request, len, Checked::Kept, &mut self.sched);
            }
        }
        let src = self.sources.get_mut(&k).expect("drained above");
        let session = src.session.as_mut().expect("drained above");
        if let Some(conn) = src.conn {
            while let Some(msg) = session.poll_transmit() {
                sim.send(conn, true, Msg::M(msg));
            }
        }
        match session.read_idle() {
            Some(_) => {
                src.waiting_since.get_or_insert(sim.now);
            }
            None => src.waiting_since = None,
        }
        if gained {
            sim.gained(n);
        }
        let me = sim.nodes[n].addr;
        for addr in told {
            if addr != me {
                if let Some(&t) = sim.by_addr.get(&addr) {
                    self.offer(sim, n, t);
                }
            }
        }
    }

    fn end(&mut self, sim: &mut Sim, k: usize, end: SourceEnd) {
        let Some(mut src) = self.sources.remove(&k) else {
            return;
        };
        if let Some(mut session) = src.session.take() {
            session.close(&mut self.sched);
            if let Some(conn) = src.conn {
                while let Some(msg) = session.poll_transmit() {
                    sim.send(conn, true, Msg::M(msg));
                }
            }
            self.changed = true;
        }
        if let Some(conn) = src.conn {
            if sim.conns[conn].open_down {
                sim.close_down(conn);
            }
        }
        self.queued.remove(&k);
        let max = sim.cfg.opts.max_backoff;
        self.retries
            .ended(&src.node, &end, sim.now, self.backoff, max);
        if let SourceEnd::Hostile(why) = end {
            sim.hostile.push(why);
        }
    }

    fn peer_facts(&self, sim: &Sim, wants: bool) -> Vec<PeerFacts> {
        self.sources
            .iter()
            .filter_map(|(&k, s)| {
                let session = s.session.as_ref()?;
                let busy = (session.inflight() > 0).then_some(sim.base + s.last_byte);
                Some(PeerFacts {
                    source: k,
                    connected: sim.base + s.connected_at?,
                    last_active: s.last_chunk.map(|t| sim.base + t).max(busy),
                    queued: self.queued.contains_key(&k),
                    has_wanted: if wants {
                        self.sched.wants_from(k)
                    } else {
                        Some(true)
                    },
                })
            })
            .collect()
    }

    fn full(&self, sim: &Sim) -> bool {
        !self.candidates.is_empty() && self.sources.len() >= sim.cfg.opts.max_sources.max(1)
    }

    fn rotate(&mut self, sim: &mut Sim) {
        let now = sim.instant();
        if !self.full(sim)
            || self
                .rotation
                .poll_timeout(&self.peer_facts(sim, false))
                .is_none_or(|t| now < t)
        {
            return;
        }
        if let Some(k) = self.rotation.handle_full(now, &self.peer_facts(sim, true)) {
            self.end(sim, k, SourceEnd::Failed("let go".into()));
        }
    }

    fn wake_at(&self, sim: &Sim) -> Option<Duration> {
        let rotate = if self.full(sim) {
            self.rotation
                .poll_timeout(&self.peer_facts(sim, false))
                .map(|t| t - sim.base)
        } else {
            None
        };
        self.sources
            .values()
            .filter_map(|src| {
                let session = src.session.as_ref()?;
                let own = session.poll_timeout().map(|t| t - sim.base);
                match (own, stall_at(src)) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            })
            .chain(rotate)
            .min()
    }
}

/// When source `src` counts as stalled if nothing arrives.
fn stall_at(src: &Src) -> Option<Duration> {
    let limit = src.session.as_ref()?.read_idle()?;
    let since = src
        .waiting_since
        .map_or(src.last_byte, |w| w.max(src.last_byte));
    Some(since + limit)
}

fn chunk_len(sim: &Sim, c: u64) -> u64 {
    let start = c * sim.chunk;
    sim.cfg.size.min(start + sim.chunk) - start
}
