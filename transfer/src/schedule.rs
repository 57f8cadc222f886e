//! [`Scheduler`]: which chunk of a download is where, and which source holds what. Shared by
//! every source session of one download (each [`super::SourceSession`] is handed it by
//! `&mut`), so the rules of who fetches what live in one place.
//!
//! # Invariants
//! - A chunk is in exactly one state: `Missing`, `Active` (requested by one or more sources,
//!   listed in its state, none of which has delivered it) or `Done` (verified and written;
//!   never requested again).
//! - `missing` counts exactly the `Missing` chunks; `done`/`done_bytes` exactly the `Done`
//!   ones.
//! - `avail[c]` is the number of sources in `holds` whose bitfield has chunk `c`, and
//!   `serving[c]` the number of those not in `queued`: only [`Scheduler::set_holds`],
//!   [`Scheduler::add_hold`], [`Scheduler::forget_source`] and [`Scheduler::set_queued`]
//!   change them.
//! - A source is handed only chunks its bitfield has (when handed them: a later bitfield may
//!   take one back while it is in flight).
//! - A source that stops, or is told it is queued, releases every chunk it had requested: a
//!   chunk left with no requester goes back to `Missing`. Only [`Scheduler::release`] does
//!   that, and only [`Scheduler::complete`] makes a chunk `Done`.
//! - `probed[c]` is the number of sources in `probing` whose probe is out for chunk `c`
//!   ([`Scheduler::set_probe`]). A `Missing` chunk a probe is out for is handed to no source by
//!   [`Scheduler::next`] and probed by no other.
//! - A source only duplicates another's chunk (endgame) when no chunk is `Missing` and it has
//!   nothing outstanding (no request its source has not answered; see
//!   [`super::SourceSession`]), and only a chunk fewer than [`MAX_REQUESTERS`] sources were
//!   asked for, unless it asks for one beyond ([`Scheduler::spare_beyond_cap`]: the session
//!   does after waiting in vain).

use std::collections::{HashMap, HashSet};

use wire::Bitfield;

/// In the endgame, a chunk is asked of at most this many sources at once (a probe out for it
/// counting as one: granted a slot, it is answered with the chunk), until a source has
/// waited for it in vain ([`Scheduler::spare_beyond_cap`]): one spare beside the first request
/// rescues a chunk stuck at a slow source, and every further copy in flight is upload a swarm
/// loses. (Bench case 6 at 100 leechers: the leechers sent 15,817 chunks for the 12,800 they
/// needed with unbounded spares, 14,555 with this cap.)
pub const MAX_REQUESTERS: usize = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
enum ChunkState {
    Missing,
    Active(Vec<usize>),
    Done,
}

/// Which chunk is where, and which source holds what; see the module docs for its invariants.
#[derive(Debug)]
pub struct Scheduler {
    chunks: Vec<ChunkState>,
    /// How many chunks are `Missing`.
    missing: u64,
    done: Bitfield,
    done_bytes: u64,
    /// The chunks each source holds (from its bitfield and haves), by source number. A source
    /// not listed has not said yet and is asked for nothing.
    holds: HashMap<usize, Bitfield>,
    /// For each chunk, how many listed sources hold it.
    avail: Vec<u32>,
    /// Sources that keep us queued for an upload slot.
    queued: HashSet<usize>,
    /// For each chunk, how many listed sources not in `queued` hold it: those that would
    /// deliver it if asked.
    serving: Vec<u32>,
    /// The chunk each queued source has its probe out for.
    probing: HashMap<usize, u64>,
    /// For each chunk, how many probes are out for it.
    probed: Vec<u32>,
    /// Where the search for a rarest chunk starts (xorshift), so downloaders do not all fetch
    /// the same chunk first.
    rng: u64,
    /// A chunk asked for before any other, by the first source that holds it.
    first: Option<u64>,
}

impl Scheduler {
    /// All `count` chunks missing, no source known.
    pub fn new(count: u64) -> Self {
        Self::with_seed(count, rand::random())
    }

    /// [`Scheduler::new`] with a set seed for the random starting points (tests and fuzzing).
    pub fn with_seed(count: u64, seed: u64) -> Self {
        Scheduler {
            chunks: vec![ChunkState::Missing; count as usize],
            missing: count,
            done: Bitfield::new(count),
            done_bytes: 0,
            holds: HashMap::new(),
            avail: vec![0; count as usize],
            queued: HashSet::new(),
            serving: vec![0; count as usize],
            probing: HashMap::new(),
            probed: vec![0; count as usize],
            rng: seed | 1,
            first: None,
        }
    }

    /// Has chunk `c` asked for before any other (once, by the first source that holds it):
    /// the last chunk, whose bytes prove the file's size (see
    /// `wire::Manifest::size_proven_by_last_chunk`), so a manifest that lies about it is found
    /// out at the start, not after the whole file.
    pub fn fetch_first(&mut self, c: u64) {
        self.first = (c < self.count()).then_some(c);
    }

    /// How many chunks the file has.
    pub fn count(&self) -> u64 {
        self.chunks.len() as u64
    }

    /// `source` holds the chunks set in `bits`. Replaces what it held before.
    pub fn set_holds(&mut self, source: usize, bits: Bitfield) {
        debug_assert_eq!(bits.len(), self.count());
        if let Some(old) = self.holds.remove(&source) {
            self.count_holds(source, &old, false);
        }
        self.count_holds(source, &bits, true);
        self.holds.insert(source, bits);
    }

    /// Counts (or uncounts) the chunks of `bits`, held by `source`, in the availabilities.
    fn count_holds(&mut self, source: usize, bits: &Bitfield, add: bool) {
        let serving = !self.queued.contains(&source);
        for c in bits.ones() {
            let c = c as usize;
            if add {
                self.avail[c] += 1;
                self.serving[c] += serving as u32;
            } else {
                self.avail[c] -= 1;
                self.serving[c] -= serving as u32;
            }
        }
    }

    /// `source` keeps us queued for an upload slot (`queued`), or serves us again: the chunks
    /// it holds count as within reach only while it serves ([`Scheduler::probe`]).
    pub fn set_queued(&mut self, source: usize, queued: bool) {
        if self.queued.contains(&source) == queued {
            return;
        }
        let bits = self.holds.remove(&source);
        if let Some(b) = &bits {
            self.count_holds(source, b, false);
        }
        if queued {
            self.queued.insert(source);
        } else {
            self.queued.remove(&source);
        }
        if let Some(b) = bits {
            self.count_holds(source, &b, true);
            self.holds.insert(source, b);
        }
    }

    /// `source` has gained chunk `c` (a Have). Ignored for a source with no bitfield yet or a
    /// chunk out of range.
    pub fn add_hold(&mut self, source: usize, c: u64) {
        if let Some(bits) = self.holds.get_mut(&source) {
            if bits.set(c) {
                self.avail[c as usize] += 1;
                self.serving[c as usize] += !self.queued.contains(&source) as u32;
            }
        }
    }

    /// `source` is gone: what it held no longer counts.
    pub fn forget_source(&mut self, source: usize) {
        if let Some(bits) = self.holds.remove(&source) {
            self.count_holds(source, &bits, false);
        }
        self.queued.remove(&source);
        self.set_probe(source, None);
    }

    /// `source` (which keeps us queued) has its probe out for chunk `c`, or none: a chunk
    /// probed for is the last that [`Scheduler::next`] hands out, and the last another probe
    /// asks for, since a probe granted a slot is answered with its chunk.
    pub fn set_probe(&mut self, source: usize, c: Option<u64>) {
        let old = match c {
            Some(c) if (c as usize) < self.chunks.len() => self.probing.insert(source, c),
            _ => self.probing.remove(&source),
        };
        if old == c {
            return;
        }
        if let Some(o) = old {
            self.probed[o as usize] -= 1;
        }
        if let Some(c) = c.filter(|&c| (c as usize) < self.chunks.len()) {
            self.probed[c as usize] += 1;
        }
    }

    /// Whether `source` holds a chunk that is not done yet (`None`: it has not said what it
    /// holds).
    pub fn wants_from(&self, source: usize) -> Option<bool> {
        let bits = self.holds.get(&source)?;
        Some(bits.ones().any(|c| !self.done.get(c)))
    }

    fn holds(&self, source: usize, c: usize) -> bool {
        self.holds.get(&source).is_some_and(|b| b.get(c as u64))
    }

    fn random(&mut self) -> u64 {
        // xorshift64
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }

    /// A chunk for `source` to request, among those it holds: the missing chunk fewest sources
    /// serving us hold (those held by few of them go to the few that can deliver them), then
    /// fewest known sources hold (rarest first), ties broken from a random starting point so
    /// downloaders do not all fetch the same chunk first; never one a probe is out for
    /// ([`Scheduler::set_probe`]). If no chunk of the whole file is missing and
    /// `endgame` allows it (the source has nothing outstanding): the in-flight chunk with the
    /// fewest requesters that `source` holds and has not asked for yet.
    pub fn next(&mut self, source: usize, endgame: bool) -> Option<u64> {
        let n = self.chunks.len();
        if n == 0 || !self.holds.contains_key(&source) {
            return None;
        }
        if self.missing > 0 {
            if let Some(c) = self.first {
                let c = c as usize;
                if self.chunks[c] != ChunkState::Missing {
                    self.first = None;
                } else if self.holds(source, c) && self.probed[c] == 0 {
                    self.first = None;
                    self.chunks[c] = ChunkState::Active(vec![source]);
                    self.missing -= 1;
                    return Some(c as u64);
                }
            }
            let c = self.rarest_missing(source)?;
            self.chunks[c] = ChunkState::Active(vec![source]);
            self.missing -= 1;
            return Some(c as u64);
        }
        if !endgame {
            return None;
        }
        self.take_spare(source, MAX_REQUESTERS)
    }

    /// In the endgame (nothing missing), a spare for `source` whatever [`MAX_REQUESTERS`]
    /// says: the in-flight chunk with the fewest requesters that it holds and has not asked
    /// for. For a source that had nothing to ask for a while, so that chunks stuck at slow
    /// sources are rescued still.
    pub fn spare_beyond_cap(&mut self, source: usize) -> Option<u64> {
        if self.missing > 0 {
            return None;
        }
        self.take_spare(source, usize::MAX)
    }

    /// A spare for `source` among chunks with fewer than `cap` requesters, now asked of it too.
    fn take_spare(&mut self, source: usize, cap: usize) -> Option<u64> {
        let c = self.spare_for(source, cap)?;
        if let ChunkState::Active(v) = &mut self.chunks[c] {
            v.push(source);
        }
        Some(c as u64)
    }

    /// Whether the download is in its endgame: every chunk not done is asked of some source.
    pub fn in_endgame(&self) -> bool {
        self.missing == 0 && !self.all_done()
    }

    /// The missing chunk held by `source` that no probe but its own is out for and that fewest
    /// sources serving us hold, then fewest hold at all (rarest first), from a random start.
    fn rarest_missing(&mut self, source: usize) -> Option<usize> {
        let n = self.chunks.len();
        if n == 0 || self.missing == 0 {
            return None;
        }
        let start = self.random() as usize % n;
        let held = self.holds.get(&source)?;
        // None can be rarer than one only this source holds.
        let floor = (!self.queued.contains(&source) as u32, 1);
        let mut best: Option<((u32, u32), usize)> = None;
        for k in 0..n {
            let c = (start + k) % n;
            let key = (self.serving[c], self.avail[c]);
            if self.chunks[c] == ChunkState::Missing
                && self.probes_by_others(source, c) == 0
                && held.get(c as u64)
                && best.is_none_or(|(a, _)| key < a)
            {
                best = Some((key, c));
                if key <= floor {
                    break;
                }
            }
        }
        best.map(|(_, c)| c)
    }

    /// A chunk for a source that keeps us queued to be asked for, as its probe: a missing
    /// chunk it holds, left missing (not claimed: a probe usually comes back `Queued`, and the
    /// chunks of the many sources that queue us would otherwise be locked away from the few
    /// that serve). But a probe granted a slot is answered with its chunk, which is wasted if
    /// another source delivered it first. So while the session says its probe is out
    /// ([`Scheduler::set_probe`]), no other source is handed that chunk nor probes for it; and
    /// the probe is the chunk fewest sources serving us hold (none, if it can), rarest first
    /// among those. In the endgame (nothing missing), the in-flight chunk with fewest
    /// requesters that it holds, if fewer than [`MAX_REQUESTERS`], probes counted. (In a
    /// simulated swarm of 1,000, probing with what [`Scheduler::next`] would pick, and in the
    /// endgame any chunk, made 10 % of all the swarm uploaded chunks the downloader had
    /// already; these rules, 0.6 %.)
    pub fn probe(&mut self, source: usize) -> Option<u64> {
        if self.missing > 0 {
            return self.rarest_missing(source).map(|c| c as u64);
        }
        self.spare_for(source, MAX_REQUESTERS).map(|c| c as u64)
    }

    /// How many probes other than `source`'s own are out for chunk `c`.
    fn probes_by_others(&self, source: usize, c: usize) -> u32 {
        let own = self.probed[c] > 0 && self.probing.get(&source) == Some(&(c as u64));
        self.probed[c] - own as u32
    }

    /// The in-flight chunk with the fewest requesters (fewer than `cap`, other sources' probes
    /// out for it counted) that `source` holds and has not asked for.
    fn spare_for(&self, source: usize, cap: usize) -> Option<usize> {
        self.chunks
            .iter()
            .enumerate()
            .filter_map(|(i, s)| match s {
                ChunkState::Active(v) if !v.contains(&source) && self.holds(source, i) => {
                    let asked = v.len() + self.probes_by_others(source, i) as usize;
                    (asked < cap).then_some((i, asked))
                }
                _ => None,
            })
            .min_by_key(|&(_, n)| n)
            .map(|(i, _)| i)
    }

    /// `source` answered its probe with chunk `c`: it is in flight from `source` now (besides
    /// any other source asked for it meanwhile). False if `c` is done already.
    pub fn claim(&mut self, source: usize, c: u64) -> bool {
        match self.chunks.get_mut(c as usize) {
            None | Some(ChunkState::Done) => false,
            Some(ChunkState::Missing) => {
                self.chunks[c as usize] = ChunkState::Active(vec![source]);
                self.missing -= 1;
                true
            }
            Some(ChunkState::Active(v)) => {
                if !v.contains(&source) {
                    v.push(source);
                }
                true
            }
        }
    }

    /// `source` no longer waits for chunk `c`.
    pub fn release(&mut self, source: usize, c: u64) {
        if let Some(ChunkState::Active(v)) = self.chunks.get_mut(c as usize) {
            v.retain(|s| *s != source);
            if v.is_empty() {
                self.chunks[c as usize] = ChunkState::Missing;
                self.missing += 1;
            }
        }
    }

    /// Chunk `c` (of `len` bytes) is verified and written. False if it already was.
    pub fn complete(&mut self, c: u64, len: u64) -> bool {
        match self.chunks[c as usize] {
            ChunkState::Done => return false,
            ChunkState::Missing => self.missing -= 1,
            ChunkState::Active(_) => {}
        }
        self.chunks[c as usize] = ChunkState::Done;
        self.done.set(c);
        self.done_bytes += len;
        true
    }

    /// True once chunk `c` is done.
    pub fn is_done(&self, c: u64) -> bool {
        self.done.get(c)
    }

    /// True if `source` has chunk `c` requested.
    pub fn is_requested_by(&self, source: usize, c: u64) -> bool {
        matches!(self.chunks.get(c as usize), Some(ChunkState::Active(v)) if v.contains(&source))
    }

    /// True once every chunk is done.
    pub fn all_done(&self) -> bool {
        self.done.is_full()
    }

    /// How many chunks are done.
    pub fn done_chunks(&self) -> u64 {
        self.done.count_ones()
    }

    /// Bytes of the done chunks.
    pub fn done_bytes(&self) -> u64 {
        self.done_bytes
    }

    /// The done chunks.
    pub fn done(&self) -> &Bitfield {
        &self.done
    }

    /// Checks every invariant of the module docs; panics with the broken one (tests and
    /// fuzzing).
    pub fn check_invariants(&self) {
        let missing = self
            .chunks
            .iter()
            .filter(|s| **s == ChunkState::Missing)
            .count() as u64;
        assert_eq!(missing, self.missing, "missing count");
        for (c, s) in self.chunks.iter().enumerate() {
            assert_eq!(
                *s == ChunkState::Done,
                self.done.get(c as u64),
                "done bit {c}"
            );
            if let ChunkState::Active(v) = s {
                assert!(!v.is_empty(), "chunk {c} active with no requester");
            }
            let avail = self.holds.values().filter(|b| b.get(c as u64)).count() as u32;
            assert_eq!(avail, self.avail[c], "availability of chunk {c}");
            let serving = self
                .holds
                .iter()
                .filter(|(s, b)| !self.queued.contains(s) && b.get(c as u64))
                .count() as u32;
            assert_eq!(
                serving, self.serving[c],
                "serving availability of chunk {c}"
            );
            let probed = self.probing.values().filter(|&&p| p == c as u64).count() as u32;
            assert_eq!(probed, self.probed[c], "probes out for chunk {c}");
        }
    }

    #[cfg(test)]
    fn avail(&self) -> &[u32] {
        &self.avail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_asked_first_goes_to_the_first_source_holding_it() {
        let mut s = Scheduler::with_seed(10, 7);
        s.fetch_first(9);
        let mut some = Bitfield::new(10);
        some.set(0);
        s.set_holds(0, some);
        s.set_holds(1, Bitfield::full(10));
        assert_eq!(s.next(0, false), Some(0), "source 0 lacks chunk 9");
        assert_eq!(s.next(1, false), Some(9));
        assert_ne!(s.next(1, false), Some(9));
        s.check_invariants();
    }
    use std::collections::HashSet;

    fn bits(count: u64, set: &[u64]) -> Bitfield {
        let mut b = Bitfield::new(count);
        for &c in set {
            b.set(c);
        }
        b
    }

    #[test]
    fn scheduler_hands_out_each_chunk_once_then_endgame() {
        let mut s = Scheduler::new(3);
        assert_eq!(
            s.next(0, true),
            None,
            "a source that has not said what it holds"
        );
        for src in 0..3 {
            s.set_holds(src, Bitfield::full(3));
        }
        let mut given = vec![s.next(0, true).unwrap(), s.next(1, true).unwrap()];
        given.push(s.next(0, true).unwrap());
        given.sort();
        assert_eq!(given, vec![0, 1, 2], "each chunk once");
        // Only a source with nothing in flight duplicates.
        assert_eq!(s.next(1, false), None);
        // Endgame: source 2 duplicates a chunk, fewest requesters first.
        let dup = s.next(2, true).unwrap();
        assert!(s.complete(dup, 10));
        assert!(!s.complete(dup, 10), "a second copy is not counted");
        // A failing source's chunk goes back: no longer endgame, anyone may take it.
        let other = (0..3).find(|&c| c != dup).unwrap();
        s.release(0, other);
        s.release(1, other);
        assert_eq!(s.next(2, false), Some(other));
        assert!(!s.all_done());
        assert_eq!(s.done().as_bytes(), &[1 << dup]);
        s.check_invariants();
    }

    #[test]
    fn a_chunk_few_serving_sources_hold_goes_first_and_probes_take_chunks_none_serve() {
        let mut s = Scheduler::with_seed(4, 1);
        // Sources 0 and 1 serve us; 2, 3 and 4 keep us queued. Chunk 0 is held by two that
        // serve (and one queued), chunk 1 by one that serves and by three queued: rarer
        // among those that serve, though more common in all. Chunks 2 and 3 only queued
        // sources hold.
        s.set_holds(0, bits(4, &[0, 1]));
        s.set_holds(1, bits(4, &[0]));
        s.set_holds(2, bits(4, &[1, 2, 3]));
        s.set_holds(3, bits(4, &[0, 1, 2, 3]));
        s.set_holds(4, bits(4, &[1]));
        for q in 2..5 {
            s.set_queued(q, true);
        }
        s.check_invariants();
        // Source 0 is the only one serving us that holds chunk 1: it gets that one, and
        // chunk 0 is left to source 1.
        assert_eq!(s.next(0, false), Some(1));
        assert_eq!(s.next(1, false), Some(0));
        // Queued sources probe for chunks none that serve hold, each for another one.
        let p = s.probe(2).unwrap();
        assert!(p == 2 || p == 3, "{p}");
        s.set_probe(2, Some(p));
        assert_eq!(
            s.probe(3),
            Some(5 - p),
            "not the chunk another probe is out for"
        );
        s.set_probe(3, Some(5 - p));
        assert_eq!(s.probe(4), None, "chunk 1 is in flight");
        s.check_invariants();
        // While a probe is out, no other source is handed its chunk, not even as the chunk
        // asked first; once over, it is.
        s.set_holds(1, bits(4, &[0, 2, 3]));
        s.fetch_first(p);
        assert_eq!(s.next(1, false), None);
        s.set_probe(2, None);
        assert_eq!(s.next(1, false), Some(p));
        // Serving again, a source's chunks count as within reach again; gone, not at all.
        s.set_queued(2, false);
        s.check_invariants();
        s.forget_source(3);
        s.check_invariants();
    }

    #[test]
    fn in_the_endgame_a_chunk_is_asked_of_at_most_two_sources() {
        let mut s = Scheduler::with_seed(2, 1);
        for src in 0..5 {
            s.set_holds(src, Bitfield::full(2));
        }
        let mut first = vec![s.next(0, true).unwrap(), s.next(1, true).unwrap()];
        first.sort();
        assert_eq!(first, vec![0, 1]);
        // One spare for each chunk, then none: a third copy in flight is waste.
        let mut spares = vec![s.next(2, true).unwrap(), s.next(3, true).unwrap()];
        spares.sort();
        assert_eq!(spares, vec![0, 1]);
        assert_eq!(s.next(4, true), None);
        // A queued source's probe is capped too: granted a slot, it is answered with its
        // chunk, a third copy.
        assert_eq!(s.probe(4), None);
        // A requester that gives its chunk back makes room for another spare, or one probe.
        let (c, _) = (0..2u64)
            .map(|c| (c, s.is_requested_by(2, c)))
            .find(|&(_, by2)| by2)
            .unwrap();
        s.release(2, c);
        assert_eq!(s.probe(4), Some(c));
        s.set_probe(4, Some(c));
        assert_eq!(s.probe(3), None, "another probe is out for it");
        s.check_invariants();
        s.set_probe(4, None);
        assert_eq!(s.next(4, true), Some(c));
        // Beyond the cap only when asked for so: the fewest requesters first.
        assert!(s.in_endgame());
        assert_eq!(s.next(2, true), None);
        let beyond = s.spare_beyond_cap(2).unwrap();
        assert!(s.is_requested_by(2, beyond));
        assert_eq!(s.spare_beyond_cap(2), Some(1 - beyond), "then the other");
        assert_eq!(s.spare_beyond_cap(2), None, "it asked for both");
        s.check_invariants();
    }

    #[test]
    fn scheduler_asks_only_holders_and_the_rarest_first() {
        let mut s = Scheduler::new(4);
        // Source 0 holds everything; source 1 holds chunks 0 and 1; source 2 holds chunk 1.
        s.set_holds(0, Bitfield::full(4));
        s.set_holds(1, bits(4, &[0, 1]));
        s.set_holds(2, bits(4, &[]));
        s.add_hold(2, 1);
        s.add_hold(2, 9); // out of range: ignored
        assert_eq!(s.avail(), &[2, 3, 1, 1]);
        // Source 1 gets its rarer chunk (0, held by two) before chunk 1 (held by three).
        assert_eq!(s.next(1, false), Some(0));
        assert_eq!(s.next(1, false), Some(1));
        assert_eq!(
            s.next(1, true),
            None,
            "nothing else it holds; no endgame yet"
        );
        // Source 0 gets what only it holds.
        let mut rest = vec![s.next(0, false).unwrap(), s.next(0, false).unwrap()];
        rest.sort();
        assert_eq!(rest, vec![2, 3]);
        s.forget_source(1);
        assert_eq!(s.avail(), &[1, 2, 1, 1]);
        // The random start spreads first picks among equally rare chunks.
        let firsts: HashSet<u64> = (0..64)
            .map(|_| {
                let mut s = Scheduler::new(16);
                s.set_holds(0, Bitfield::full(16));
                s.next(0, false).unwrap()
            })
            .collect();
        assert!(firsts.len() > 4, "first picks {firsts:?}");
    }

    #[test]
    fn a_chunk_only_the_asking_source_holds_is_rarest() {
        let mut s = Scheduler::with_seed(100, 7);
        s.set_holds(0, Bitfield::full(100));
        // A second source holds all but one chunk: that one is taken first, wherever the
        // search starts (the search stops there: none can be rarer).
        let rare = 42;
        let mut bits = Bitfield::new(100);
        for c in (0..100).filter(|&c| c != rare) {
            bits.set(c);
        }
        s.set_holds(1, bits);
        assert_eq!(s.next(0, false), Some(rare));
        assert_ne!(s.next(0, false), Some(rare), "handed out once");
        s.check_invariants();
    }
}
