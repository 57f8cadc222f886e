//! What an uploader knows of each downloader, and super-seeding: how an uploader of a
//! complete copy spreads it among several downloaders at once.
//!
//! - [`ShownTo`]: what the uploader has shown one downloader, what that one asked for, and
//!   what it has. The upload session keeps it up to date from the downloader's messages.
//! - [`news_for`]: the chunks a downloader subscribed to a file still downloading here is
//!   told of as they are verified, except those it holds already.
//! - [`Spread`]: the node's book of every file being spread and how often each chunk was shown
//!   and sent; it picks what to show each downloader next. The node keeps one, shared by its
//!   upload connections.
//!
//! Invariants: a downloader is never shown a chunk it has or was shown; after a pick, unless
//! no chunk is left to show it, a downloader being served has at least as many shown chunks
//! open (see [`Spread::pick`]) as it has requests waiting (at least one, at most
//! [`SHOWN_AHEAD`]), and one waiting for an upload slot at least one (what it asked for and was
//! queued with counts: it will ask again); one pick shows at most [`SHOWN_AHEAD`]; a file's
//! entry lives exactly while a connection is joined to it.

use std::collections::HashMap;

use wire::{Bitfield, FileId};

/// What one downloader has been shown of a file, has asked for, and has.
#[derive(Debug, Clone)]
pub struct ShownTo {
    /// The file.
    pub id: FileId,
    /// Chunks shown (sent as `Have`).
    pub shown: Bitfield,
    /// Chunks it asked for.
    pub asked: Bitfield,
    /// Chunks it has (its `Have`s).
    pub has: Bitfield,
}

impl ShownTo {
    /// Nothing shown, asked or had yet, for a file of `count` chunks.
    pub fn new(id: FileId, count: u64) -> Self {
        ShownTo {
            id,
            shown: Bitfield::new(count),
            asked: Bitfield::new(count),
            has: Bitfield::new(count),
        }
    }

    /// For a downloader of a file not spread from here (a partial copy, or a complete one that
    /// no other downloader fetches now): every chunk counts as shown, so none is picked for it, while
    /// what it has is still tracked (see [`news_for`]).
    pub fn unspread(id: FileId, count: u64) -> Self {
        ShownTo {
            shown: Bitfield::full(count),
            ..ShownTo::new(id, count)
        }
    }
}

/// The chunks of file `id` verified here (`now`) since a downloader was last told (`told`),
/// that it does not hold by the bitfield it told us (`view`, if for this file): each is owed
/// a `Have`. A chunk it holds is no news to it, so it is not sent (libtorrent does the same
/// by default): in a swarm most chunks a source gains, many of its downloaders have already.
/// `told` becomes `now`, the suppressed chunks included.
pub fn news_for(
    id: FileId,
    now: &Bitfield,
    told: &mut Bitfield,
    view: Option<&ShownTo>,
) -> Vec<u64> {
    let has = view.filter(|v| v.id == id).map(|v| &v.has);
    let news = now
        .ones_not_in(told)
        .filter(|&c| has.is_none_or(|h| !h.get(c)))
        .collect();
    *told = now.clone();
    news
}

/// How a source of a whole file spreads it among several downloaders at once (super-seeding):
/// instead of its whole bitfield, each downloader is shown a few chunks at a time, those
/// shown or sent least so far, and more as it gets them (from anyone: downloaders send `Have`
/// to their sources). So the source sends each chunk about once, and the downloaders trade
/// the rest among themselves.
#[derive(Debug, Default)]
pub struct Spread {
    files: HashMap<FileId, SpreadFile>,
    /// xorshift64 state for the random starts of ties (0: not seeded yet).
    rng: u64,
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

/// Open chunks (see [`Spread::pick`]) kept shown to one downloader being served: as many as it
/// has requests waiting, at least one and at most this many.
pub const SHOWN_AHEAD: usize = 8;

impl Spread {
    /// A connection asks for the bitfield of `id` (`count` chunks): true if others are
    /// fetching it from here already, so this one should be shown chunks a few at a time.
    pub fn join(&mut self, id: FileId, count: u64) -> bool {
        let files = &mut self.files;
        let f = files.entry(id).or_default();
        if f.shown.len() as u64 != count {
            f.shown = vec![0; count as usize];
            f.sent = vec![0; count as usize];
        }
        f.conns += 1;
        f.conns > 1
    }

    /// The connection that joined `id` is gone.
    pub fn leave(&mut self, id: FileId) {
        let files = &mut self.files;
        if let Some(f) = files.get_mut(&id) {
            f.conns -= 1;
            if f.conns == 0 {
                files.remove(&id);
            }
        }
    }

    /// Chunk `c` of `id` was sent to a downloader.
    pub fn sent(&mut self, id: FileId, c: u64) {
        if let Some(f) = self.files.get_mut(&id) {
            if let Some(n) = f.sent.get_mut(c as usize) {
                *n += 1;
            }
        }
    }

    /// A book whose ties are broken from `seed` (simulations and tests repeat exactly);
    /// [`Spread::default`] seeds itself at random.
    pub fn with_seed(seed: u64) -> Self {
        Spread {
            files: HashMap::new(),
            rng: seed | 1,
        }
    }

    fn random(rng: &mut u64) -> u64 {
        if *rng == 0 {
            *rng = rand::random::<u64>() | 1;
        }
        // xorshift64
        let mut x = *rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *rng = x;
        x
    }

    /// The next chunks to show a downloader (`serving`: it holds an upload slot; `asking`: its
    /// requests read here and not answered yet), marked shown.
    ///
    /// A shown chunk is open while the downloader has neither asked for it nor had it, and it
    /// has been sent no more often than the chunks it could be shown next (those not shown to
    /// it and not had by it, least sent). A downloader being served is kept as many open
    /// chunks as it has requests waiting (at least one, at most [`SHOWN_AHEAD`]): one asking a
    /// chunk at a time is shown one more, and one whose requests pile up here is shown enough
    /// to keep asking. One waiting for a slot is kept one, to ask with: shown more, it would be
    /// shown chunks that others fetch from here meanwhile, and ask for them again once served.
    ///
    /// So a chunk shown to a downloader that lost its slot before asking for it, and sent to
    /// another since, no longer keeps the downloader from being shown a chunk sent less.
    /// Otherwise it would ask for that one once served again, and the source would send it twice while
    /// chunks nobody has wait (the simulated swarm of 1,000 sent 29 second copies in its first
    /// pass so, with six shown ahead). A chunk just shown is open (it is among the least sent
    /// of those that could be), so one pick shows at most [`SHOWN_AHEAD`] and the next shows
    /// none more until one is asked for, had, or sent elsewhere, or more requests wait.
    ///
    /// Picked among those not shown to it and not had by it, least sent first, then least
    /// shown (ties from a random start).
    pub fn pick(
        &mut self,
        id: FileId,
        view: &mut ShownTo,
        serving: bool,
        asking: usize,
    ) -> Vec<u64> {
        let Some(f) = self.files.get_mut(&id) else {
            return Vec::new();
        };
        let n = f.shown.len() as u64;
        let fresh = |c: u64| !view.shown.get(c) && !view.has.get(c);
        // The fewest sends of a chunk that could be shown next (none left: nothing to show).
        let Some(floor) = (0..n)
            .filter(|&c| fresh(c))
            .map(|c| f.sent[c as usize])
            .min()
        else {
            return Vec::new();
        };
        let open = (0..n)
            .filter(|&c| {
                view.shown.get(c)
                    && !view.has.get(c)
                    && !(serving && view.asked.get(c))
                    && f.sent[c as usize] <= floor
            })
            .count();
        let ahead = if serving {
            asking.clamp(1, SHOWN_AHEAD)
        } else {
            1
        };
        let mut out = Vec::new();
        for _ in open..ahead {
            let start = Self::random(&mut self.rng) % n.max(1);
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

    /// True when no connection is in any file's spread.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_downloader_is_told_only_of_new_chunks_it_does_not_hold() {
        let id = FileId([5; 32]);
        let mut told = Bitfield::new(10);
        told.set(0);
        let mut now = told.clone();
        for c in [1, 2, 3] {
            now.set(c);
        }
        // Without its bitfield, every new chunk is news.
        let mut t = told.clone();
        assert_eq!(news_for(id, &now, &mut t, None), vec![1, 2, 3]);
        assert_eq!(t, now);
        // It holds chunk 2: that one is not.
        let mut view = ShownTo::unspread(id, 10);
        view.has.set(2);
        let mut t = told.clone();
        assert_eq!(news_for(id, &now, &mut t, Some(&view)), vec![1, 3]);
        assert_eq!(t, now, "a chunk not told counts as told");
        assert!(news_for(id, &now, &mut t, Some(&view)).is_empty());
        // A view of another file says nothing of this one.
        let other = ShownTo {
            has: Bitfield::full(10),
            ..ShownTo::unspread(FileId([6; 32]), 10)
        };
        let mut t = told.clone();
        assert_eq!(news_for(id, &now, &mut t, Some(&other)), vec![1, 2, 3]);
    }

    #[test]
    fn an_unspread_view_is_shown_nothing_even_while_the_file_is_spread() {
        let mut spread = Spread::default();
        let id = FileId([5; 32]);
        spread.join(id, 20);
        spread.join(id, 20);
        let mut view = ShownTo::unspread(id, 20);
        assert!(spread.pick(id, &mut view, true, 1).is_empty());
        assert!(spread.pick(id, &mut view, false, 0).is_empty());
    }

    #[test]
    fn several_downloaders_are_shown_different_chunks_least_sent_first() {
        let mut spread = Spread::default();
        let id = FileId([5; 32]);
        assert!(!spread.join(id, 20), "a single downloader sees everything");
        assert!(spread.join(id, 20));
        let mut a = ShownTo::new(id, 20);
        let mut b = ShownTo::new(id, 20);
        // Each keeps three requests waiting: three shown ahead.
        let first_a = spread.pick(id, &mut a, true, 3);
        let first_b = spread.pick(id, &mut b, true, 3);
        assert_eq!(first_a.len(), 3);
        assert!(
            first_a.iter().all(|c| !first_b.contains(c)),
            "{first_a:?} {first_b:?}"
        );
        // Nothing more while the shown ones are neither asked for nor had.
        assert!(spread.pick(id, &mut a, true, 3).is_empty());
        // One asked for, one had from elsewhere: two more, never one it has.
        a.asked.set(first_a[0]);
        a.has.set(first_a[1]);
        let elsewhere = (0..20u64)
            .find(|c| !first_a.contains(c) && !first_b.contains(c))
            .unwrap();
        a.has.set(elsewhere);
        let more = spread.pick(id, &mut a, true, 3);
        assert_eq!(more.len(), 2, "{more:?}");
        assert!(!more.contains(&elsewhere) && more.iter().all(|c| !first_a.contains(c)));
        // Once every chunk was shown, the one not sent yet is shown first.
        for c in 0..20 {
            if c != 3 {
                spread.sent(id, c);
            }
        }
        let mut fresh = ShownTo::new(id, 20);
        assert_eq!(spread.pick(id, &mut fresh, true, 1), vec![3]);
        spread.leave(id);
        spread.leave(id);
        assert!(spread.is_empty());
    }

    /// A book seeded with `seed` that two downloaders of file `[file; 32]` (`n` chunks) joined.
    fn two_joined(seed: u64, file: u8, n: u64) -> (Spread, FileId) {
        let mut spread = Spread::with_seed(seed);
        let id = FileId([file; 32]);
        spread.join(id, n);
        spread.join(id, n);
        (spread, id)
    }

    #[test]
    fn a_downloader_asking_one_chunk_at_a_time_is_shown_one_ahead_and_many_at_most_the_cap() {
        let (mut spread, id) = two_joined(5, 7, 40);
        let mut a = ShownTo::new(id, 40);
        assert_eq!(spread.pick(id, &mut a, true, 0).len(), 1, "at least one");
        assert!(spread.pick(id, &mut a, true, 1).is_empty());
        assert_eq!(
            spread.pick(id, &mut a, true, 4).len(),
            3,
            "as many as it asks"
        );
        assert_eq!(
            spread.pick(id, &mut a, true, 100).len(),
            SHOWN_AHEAD - 4,
            "never more than the cap"
        );
    }

    #[test]
    fn a_chunk_shown_and_since_sent_to_another_does_not_keep_a_fresh_one_from_being_shown() {
        let (mut spread, id) = two_joined(9, 8, 10);
        // A is shown a chunk, and loses its slot before asking for it.
        let mut a = ShownTo::new(id, 10);
        let first = spread.pick(id, &mut a, true, 1);
        assert_eq!(first.len(), 1);
        assert!(spread.pick(id, &mut a, false, 0).is_empty(), "one open");
        // Another downloader is sent that chunk meanwhile.
        spread.sent(id, first[0]);
        // A is served again: it is shown a chunk nobody was sent, not left to ask the sent one.
        let next = spread.pick(id, &mut a, true, 0);
        assert_eq!(next.len(), 1, "{next:?}");
        assert_ne!(next[0], first[0]);
        // Once every chunk has been sent once, the second pass counts them all open again.
        for c in 0..10 {
            if c != first[0] {
                spread.sent(id, c);
            }
        }
        assert!(
            spread.pick(id, &mut a, true, 2).is_empty(),
            "both shown chunks count open again"
        );
    }

    #[test]
    fn a_downloader_shown_every_least_sent_chunk_is_not_shown_the_rest_at_once() {
        let (mut spread, id) = two_joined(4, 9, 10);
        // Chunks 0 to 8 went out once; 9 never did.
        for c in 0..9 {
            spread.sent(id, c);
        }
        let mut a = ShownTo::new(id, 10);
        assert_eq!(spread.pick(id, &mut a, true, 1), vec![9]);
        // It asked for 9: one more is shown, a chunk sent once, and then no more while it is
        // open, however often the downloader's messages come.
        a.asked.set(9);
        let next = spread.pick(id, &mut a, true, 1);
        assert_eq!(next.len(), 1, "{next:?}");
        for _ in 0..20 {
            assert!(spread.pick(id, &mut a, true, 1).is_empty());
        }
        assert_eq!(a.shown.count_ones(), 2);
    }

    #[test]
    fn a_downloader_waiting_for_a_slot_is_shown_one_chunk_until_it_has_it() {
        let (mut spread, id) = two_joined(3, 6, 20);
        let mut w = ShownTo::new(id, 20);
        let first = spread.pick(id, &mut w, false, 1);
        assert_eq!(first.len(), 1);
        // It asked and was queued: it will ask again, so nothing more is shown.
        w.asked.set(first[0]);
        assert!(spread.pick(id, &mut w, false, 1).is_empty());
        // Served, its request waiting: one more ahead.
        assert_eq!(spread.pick(id, &mut w, true, 1).len(), 1);
        // Waiting again with chunks open: none more until it has one.
        assert!(spread.pick(id, &mut w, false, 0).is_empty());
        let shown: Vec<u64> = w.shown.ones().collect();
        for c in shown {
            w.has.set(c);
        }
        assert_eq!(spread.pick(id, &mut w, false, 0).len(), 1);
    }
}
