//! The node's upload slots, handed out tit-for-tat, and the queue of downloaders waiting for
//! one.
//!
//! Chunks are served only to connections holding one of the node's upload slots; others are
//! answered `Queued { position }`, keep their place while they stay connected and ask again.
//! Slots are handed out tit-for-tat ([`UploadSlots::acquire`]): a slot held for a round
//! ([`ROUND`]) goes to a waiting peer that has uploaded more to this node lately
//! ([`crate::swarm::Reciprocity`]), or, among peers that uploaded equally (nothing, say, to a
//! seeder), to the one served least recently, so everyone gets turns. Once every
//! [`OPTIMISTIC_EVERY`], the waiting peer served least recently takes a slot whatever it
//! uploaded (the optimistic slot): a free rider is served, but after the others. The upload
//! connections ([`crate::upload`]) ask for a slot before each chunk.
//!
//! Beyond the queue, at most [`UploadSlots::per_file`] connections ask for one file at once
//! ([`UploadSlots::admit_file`]): in a swarm of hundreds, every leecher would otherwise be
//! asked by every other, and hold a connection for each. A connection takes such a place only
//! once it asks for a file, so at most [`MAX_UNASKED`] connections accepted hold a place while
//! they have not asked yet ([`UploadSlots::unasked`]); one without a place is refused if its
//! first request is for a file, and one refused every file it asked for is closed once told.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wire::{FileId, NodeId};

use crate::swarm::Reciprocity;

/// A queued connection that has not asked again for this long loses its turn at the head; a
/// slot holder that has not asked for this long gives its slot up.
const STALE_IN_QUEUE: Duration = Duration::from_secs(5);
/// A slot is held at least this long before a waiting peer may take it.
pub const ROUND: Duration = Duration::from_secs(2);
/// How often the optimistic slot changes hands.
pub const OPTIMISTIC_EVERY: Duration = Duration::from_secs(9);
/// Connections that may ask for one file at once, by default (`--max-downloaders-per-file`).
pub const MAX_DOWNLOADERS_PER_FILE: usize = 30;
/// Connections accepted that may hold a place between their TCP handshake and their first
/// request. Bench case 6 (100 leechers starting at once) saw 40–70 connections at one early
/// leecher before it had refused any: every leecher that heard of it dialled it at once. One
/// beyond is served as any other, but refused (Busy, then closed) if its first request is for
/// a file, as one beyond the file's share is: so connections back that this node asked for,
/// and a super-peer's reachability check, which ask for no file, always get through.
pub const MAX_UNASKED: usize = 12;
/// Of [`MAX_UNASKED`], the places connections from one address may hold: a single host
/// cannot keep every downloader out by holding them.
pub const MAX_UNASKED_PER_ADDRESS: usize = 3;
/// Grants remembered for status and tests.
const GRANTS_KEPT: usize = 1000;

/// The node's upload slots and the queue of connections waiting for one.
#[derive(Debug)]
pub struct UploadSlots {
    max: usize,
    per_file: usize,
    next_conn: AtomicU64,
    /// Connections accepted that have not asked for anything yet.
    unasked: Arc<Mutex<UnaskedCount>>,
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
    /// The connections that asked for each file.
    files: HashMap<FileId, Vec<u64>>,
}

/// A connection's place among those that have not asked for anything yet
/// ([`UploadSlots::unasked`]), given back when dropped.
#[derive(Debug)]
pub struct Unasked(Arc<Mutex<UnaskedCount>>, IpAddr);

impl Drop for Unasked {
    fn drop(&mut self) {
        let mut u = self.0.lock().unwrap();
        u.total -= 1;
        if let Some(n) = u.by_ip.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                u.by_ip.remove(&self.1);
            }
        }
    }
}

/// The places of connections that have not asked yet: in all, and by address.
#[derive(Debug, Default)]
pub struct UnaskedCount {
    total: usize,
    by_ip: HashMap<IpAddr, usize>,
}

impl UploadSlots {
    /// `max` slots (at least one), ranking requesters by `reciprocity`.
    pub fn new(max: usize, reciprocity: Arc<Reciprocity>) -> Self {
        UploadSlots {
            max: max.max(1),
            per_file: usize::MAX,
            next_conn: AtomicU64::new(1),
            unasked: Arc::default(),
            state: Mutex::new(SlotState::default()),
            reciprocity,
        }
    }

    /// At most `max` connections (at least one) ask for one file at once.
    pub fn with_per_file(mut self, max: usize) -> Self {
        self.per_file = max.max(1);
        self
    }

    /// How many connections may ask for one file at once.
    pub fn per_file(&self) -> usize {
        self.per_file
    }

    /// Whether connection `conn` may ask for file `id`: it has before, or fewer than
    /// [`UploadSlots::per_file`] connections do. Its place is kept until it closes.
    pub fn admit_file(&self, conn: u64, id: FileId) -> bool {
        let mut s = self.state.lock().unwrap();
        let conns = s.files.entry(id).or_default();
        if conns.contains(&conn) {
            return true;
        }
        if conns.len() >= self.per_file {
            return false;
        }
        conns.push(conn);
        true
    }

    /// A place for a connection just accepted from `ip`, kept until it asks for anything
    /// (dropped then) or closes; `None` if [`MAX_UNASKED`] are taken, or
    /// [`MAX_UNASKED_PER_ADDRESS`] by connections from `ip`'s network (an IPv6 address's /64,
    /// as bans and the connection gate count: [`wire::network_of`]).
    pub fn unasked(&self, ip: IpAddr) -> Option<Unasked> {
        let ip = wire::network_of(ip);
        let mut u = self.unasked.lock().unwrap();
        let from_ip = u.by_ip.get(&ip).copied().unwrap_or(0);
        if u.total >= MAX_UNASKED || from_ip >= MAX_UNASKED_PER_ADDRESS {
            return None;
        }
        u.total += 1;
        *u.by_ip.entry(ip).or_default() += 1;
        Some(Unasked(self.unasked.clone(), ip))
    }

    pub(crate) fn new_conn(&self) -> u64 {
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

    /// `conn` is gone, at `now`: free its slot or its place.
    pub(crate) fn release_at(&self, conn: u64, now: Instant) {
        let mut s = self.state.lock().unwrap();
        if let Some(h) = s.active.iter().find(|h| h.conn == conn) {
            let who = h.who;
            s.last_served.insert(who, now);
        }
        s.active.retain(|h| h.conn != conn);
        s.queue.retain(|(c, _, _, _)| *c != conn);
        s.files.retain(|_, conns| {
            conns.retain(|c| *c != conn);
            !conns.is_empty()
        });
    }

    /// Whether connection `conn` holds a slot.
    pub fn holds(&self, conn: u64) -> bool {
        let s = self.state.lock().unwrap();
        s.active.iter().any(|h| h.conn == conn)
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
pub(crate) struct SlotGuard<'a>(pub(crate) &'a UploadSlots, pub(crate) u64);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.release_at(self.1, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_asked_for_by_at_most_its_share_of_connections() {
        let slots = UploadSlots::new(2, Arc::default()).with_per_file(2);
        let (a, b) = (FileId([1; 32]), FileId([2; 32]));
        assert!(slots.admit_file(1, a));
        assert!(slots.admit_file(2, a));
        assert!(!slots.admit_file(3, a), "a third connection for one file");
        assert!(slots.admit_file(1, a), "one admitted stays admitted");
        assert!(slots.admit_file(3, b), "another file has its own count");
        // A connection that closes makes room.
        slots.release_at(1, Instant::now());
        assert!(slots.admit_file(3, a));
        assert!(!slots.admit_file(4, a));
        // Closed, every connection's count goes.
        slots.release_at(2, Instant::now());
        slots.release_at(3, Instant::now());
        assert!(slots.state.lock().unwrap().files.is_empty());
    }

    #[test]
    fn only_so_many_connections_wait_unasked_and_few_from_one_address() {
        let slots = UploadSlots::new(2, Arc::default());
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        let from_one: Vec<Unasked> = (0..MAX_UNASKED_PER_ADDRESS)
            .map(|_| slots.unasked(ip(1)).unwrap())
            .collect();
        assert!(
            slots.unasked(ip(1)).is_none(),
            "one address beyond its share"
        );
        let mut held: Vec<Unasked> = (0..MAX_UNASKED - MAX_UNASKED_PER_ADDRESS)
            .map(|i| slots.unasked(ip(2 + i as u8)).unwrap())
            .collect();
        assert!(slots.unasked(ip(200)).is_none(), "one beyond the bound");
        held.pop();
        let again = slots
            .unasked(ip(200))
            .expect("a place given back is taken again");
        assert!(slots.unasked(ip(201)).is_none());
        drop((again, held, from_one));
        assert_eq!(
            (0..MAX_UNASKED)
                .filter_map(|i| slots.unasked(ip(i as u8)))
                .collect::<Vec<_>>()
                .len(),
            MAX_UNASKED,
            "every place comes back"
        );
        assert!(slots.unasked.lock().unwrap().by_ip.is_empty());
        // An IPv6 host is its /64: other addresses in it share its places.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        let held: Vec<Unasked> = (0..MAX_UNASKED_PER_ADDRESS as u16)
            .map(|i| slots.unasked(v6(i)).unwrap())
            .collect();
        assert!(
            slots.unasked(v6(99)).is_none(),
            "another address of the same /64"
        );
        drop(held);
    }

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
        slots.release_at(1, Instant::now());
        assert_eq!(
            slots.acquire(4, who(4), t),
            Err(2),
            "only the first in line may take a slot"
        );
        assert_eq!(slots.acquire(3, who(3), t), Ok(()));
        assert_eq!(slots.acquire(4, who(4), t), Err(1));
        slots.release_at(4, Instant::now());
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
        slots.release_at(1, Instant::now());
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
