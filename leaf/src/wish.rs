//! The wishlist: searches the node runs again and again, at a modest interval with jitter,
//! reporting the files that match and are new (and, for a wish made with `auto`, downloading
//! them).
//!
//! [`Wishlist`] holds the wishes and their rules, with no I/O and time passed in:
//! [`Wishlist::poll_due`] says which wish to search for next and when
//! ([`Wishlist::poll_timeout`]), and [`Wishlist::handle_results`] takes that search's results and
//! returns the matches not seen before. The node runs the searches and the downloads, and saves
//! [`Wishlist::saved`] in [`WISHES_FILE`] after every change, so wishes survive restarts.
//!
//! Pacing: one wish's search at a time, at least [`MIN_GAP`] apart, each wish again after the
//! interval ± 20 %. A leaf may send its super-peer 5 queries a second; a wishlist of any length
//! sends at most one every [`MIN_GAP`].

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use wire::{FileId, Filter, Search, Terms};

use crate::search::SearchResult;

/// The wishlist's file in the data directory.
pub const WISHES_FILE: &str = "wishes.cbor";
/// The least time between two wishes' searches.
pub const MIN_GAP: Duration = Duration::from_secs(2);
/// A new wish is first searched for this soon.
const FIRST_RUN: Duration = Duration::from_secs(1);
/// Matches a wish lists (the newest).
const MATCHES_KEPT: usize = 50;
/// Ids a wish remembers having reported (the newest), so they are not reported again.
const SEEN_KEPT: usize = 2000;
/// Wishes kept at most.
pub const MAX_WISHES: usize = 200;

/// One wish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wish {
    /// Its number, as `leaf wish list` shows it (and `leaf wish remove` takes).
    pub id: u32,
    /// The words every match has (as for `leaf search`).
    pub words: String,
    /// Extension and size bounds.
    pub filter: Filter,
    /// Whether new matches are downloaded.
    pub auto: bool,
    /// Where they are downloaded to.
    pub out: PathBuf,
    /// Matches found, oldest first (the newest [`MATCHES_KEPT`]).
    pub matches: Vec<WishMatch>,
    /// When it was last searched for (seconds since the Unix epoch).
    pub last_run: Option<u64>,
    /// Ids reported already.
    #[serde(default)]
    seen: Vec<FileId>,
}

impl Wish {
    /// The wish as status and the control socket show it: without the ids it remembers having
    /// reported (up to 2,000 of them), which only the wishlist itself needs.
    pub fn shown(&self) -> Wish {
        Wish {
            seen: Vec::new(),
            ..self.clone()
        }
    }
}

/// A file a wish found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WishMatch {
    /// Content id.
    pub id: FileId,
    /// File name, as the sharer has it.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// When it was found (seconds since the Unix epoch).
    pub found: u64,
}

/// The wishlist as saved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedWishes {
    /// The number the next wish gets.
    pub next_id: u32,
    /// The wishes, oldest first.
    pub wishes: Vec<Wish>,
}

/// A wish that cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WishError {
    /// No words to search for.
    #[error("a wish needs at least one word")]
    NoWords,
    /// The list is full.
    #[error("the wishlist holds {MAX_WISHES} wishes at most; remove one first")]
    Full,
    /// No wish has that number.
    #[error("no wish {0} (leaf wish list shows them)")]
    NoSuchWish(u32),
}

/// The wishes and when each is searched for next. See the module docs.
#[derive(Debug)]
pub struct Wishlist {
    saved: SavedWishes,
    due: HashMap<u32, Instant>,
    /// No search before this (the last one plus [`MIN_GAP`]).
    next_allowed: Instant,
    interval: Duration,
    rng: StdRng,
}

impl Wishlist {
    /// The wishes `saved`, searched for every `interval` (± 20 %); their first searches are
    /// spread over the first interval, so a restart does not send them all at once. `seed`
    /// seeds the jitter.
    pub fn new(saved: SavedWishes, interval: Duration, now: Instant, seed: u64) -> Self {
        let mut list = Wishlist {
            saved,
            due: HashMap::new(),
            next_allowed: now,
            interval: interval.max(Duration::from_millis(100)),
            rng: StdRng::seed_from_u64(seed),
        };
        let ids: Vec<u32> = list.saved.wishes.iter().map(|w| w.id).collect();
        for id in ids {
            let at = now + list.interval.mul_f64(list.rng.random::<f64>());
            list.due.insert(id, at);
        }
        list
    }

    /// The wishes, oldest first.
    pub fn wishes(&self) -> &[Wish] {
        &self.saved.wishes
    }

    /// What to save.
    pub fn saved(&self) -> &SavedWishes {
        &self.saved
    }

    /// Adds a wish; it is first searched for shortly after.
    pub fn add(
        &mut self,
        now: Instant,
        words: &str,
        filter: Filter,
        auto: bool,
        out: PathBuf,
    ) -> Result<&Wish, WishError> {
        let words = words.split_whitespace().collect::<Vec<_>>().join(" ");
        if words.is_empty() {
            return Err(WishError::NoWords);
        }
        if self.saved.wishes.len() >= MAX_WISHES {
            return Err(WishError::Full);
        }
        self.saved.next_id = self.saved.next_id.max(1);
        let id = self.saved.next_id;
        self.saved.next_id += 1;
        self.saved.wishes.push(Wish {
            id,
            words,
            filter,
            auto,
            out,
            matches: Vec::new(),
            last_run: None,
            seen: Vec::new(),
        });
        self.due.insert(id, now + FIRST_RUN);
        Ok(self.saved.wishes.last().expect("just pushed"))
    }

    /// Removes wish `id`.
    pub fn remove(&mut self, id: u32) -> Result<Wish, WishError> {
        let at = self
            .saved
            .wishes
            .iter()
            .position(|w| w.id == id)
            .ok_or(WishError::NoSuchWish(id))?;
        self.due.remove(&id);
        Ok(self.saved.wishes.remove(at))
    }

    /// When [`Wishlist::poll_due`] next has a wish to give.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let first = self.due.values().min()?;
        Some((*first).max(self.next_allowed))
    }

    /// The wish to search for now, if one is due (the most overdue first), and its search.
    /// Its next search is then due an interval (± 20 %) later.
    pub fn poll_due(&mut self, now: Instant) -> Option<(u32, Search)> {
        if now < self.next_allowed {
            return None;
        }
        let (&id, _) = self
            .due
            .iter()
            .filter(|(_, at)| **at <= now)
            .min_by_key(|(id, at)| (**at, **id))?;
        let wish = self.saved.wishes.iter().find(|w| w.id == id)?;
        let search = Search {
            terms: Terms::Words(wish.words.clone()),
            filter: wish.filter.clone(),
        };
        let jitter = 0.8 + 0.4 * self.rng.random::<f64>();
        self.due.insert(id, now + self.interval.mul_f64(jitter));
        self.next_allowed = now + MIN_GAP;
        Some((id, search))
    }

    /// Takes the results of wish `id`'s search (run at `unix_now`, seconds since the epoch):
    /// the matches not reported before and not already here ([`SearchResult::have`]), which
    /// are added to the wish. Results of a wish removed meanwhile give nothing.
    pub fn handle_results(
        &mut self,
        id: u32,
        results: &[SearchResult],
        unix_now: u64,
    ) -> Vec<WishMatch> {
        let Some(wish) = self.saved.wishes.iter_mut().find(|w| w.id == id) else {
            return Vec::new();
        };
        wish.last_run = Some(unix_now);
        let seen: HashSet<FileId> = wish.seen.iter().copied().collect();
        let new: Vec<WishMatch> = results
            .iter()
            .filter(|r| r.have.is_none() && !seen.contains(&r.id))
            .map(|r| WishMatch {
                id: r.id,
                name: r.name.clone(),
                size: r.size,
                found: unix_now,
            })
            .collect();
        wish.seen.extend(new.iter().map(|m| m.id));
        let extra = wish.seen.len().saturating_sub(SEEN_KEPT);
        wish.seen.drain(..extra);
        wish.matches.extend(new.iter().cloned());
        let extra = wish.matches.len().saturating_sub(MATCHES_KEPT);
        wish.matches.drain(..extra);
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(n: u8, name: &str) -> SearchResult {
        SearchResult {
            id: FileId([n; 32]),
            name: name.into(),
            path: format!("m/{name}"),
            size: 1000,
            tags: Default::default(),
            sources: Vec::new(),
            score: 1.0,
            have: None,
        }
    }

    fn list(interval_s: u64, now: Instant) -> Wishlist {
        Wishlist::new(
            SavedWishes::default(),
            Duration::from_secs(interval_s),
            now,
            7,
        )
    }

    #[test]
    fn a_new_wish_runs_soon_then_again_an_interval_later_with_jitter() {
        let t0 = Instant::now();
        let mut w = list(600, t0);
        assert_eq!(w.poll_timeout(), None, "no wish, no search");
        let id = w
            .add(
                t0,
                "  boards   of canada ",
                Filter::default(),
                false,
                "/dl".into(),
            )
            .unwrap()
            .id;
        assert_eq!(w.wishes()[0].words, "boards of canada");
        assert_eq!(w.poll_due(t0), None, "not at once");
        assert_eq!(w.poll_timeout(), Some(t0 + FIRST_RUN));
        let (got, search) = w.poll_due(t0 + FIRST_RUN).unwrap();
        assert_eq!(got, id);
        assert_eq!(search.terms, Terms::Words("boards of canada".into()));
        let next = w.poll_timeout().unwrap() - (t0 + FIRST_RUN);
        assert!(
            (480..=720).contains(&next.as_secs()),
            "an interval ± 20 % later: {next:?}"
        );
        assert_eq!(w.poll_due(t0 + Duration::from_secs(100)), None);
    }

    #[test]
    fn many_wishes_go_out_one_at_a_time_min_gap_apart_oldest_due_first() {
        let t0 = Instant::now();
        let mut w = list(60, t0);
        for words in ["a", "b", "c"] {
            w.add(t0, words, Filter::default(), false, "/dl".into())
                .unwrap();
        }
        let t = t0 + Duration::from_secs(5);
        let mut order = Vec::new();
        let mut now = t;
        while order.len() < 3 {
            match w.poll_due(now) {
                Some((id, _)) => order.push((id, now)),
                None => now = w.poll_timeout().unwrap(),
            }
        }
        assert_eq!(
            order.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        for pair in order.windows(2) {
            assert!(pair[1].1 - pair[0].1 >= MIN_GAP, "{order:?}");
        }
    }

    #[test]
    fn only_new_matches_that_are_not_here_are_reported_once() {
        let t0 = Instant::now();
        let mut w = list(60, t0);
        let id = w
            .add(t0, "song", Filter::default(), true, "/dl".into())
            .unwrap()
            .id;
        let mut have = result(3, "had.mp3");
        have.have = Some("/music/had.mp3".into());
        let first = w.handle_results(id, &[result(1, "one.mp3"), have.clone()], 100);
        assert_eq!(
            first.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["one.mp3"]
        );
        let second = w.handle_results(id, &[result(1, "one.mp3"), result(2, "two.mp3")], 200);
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].name, "two.mp3");
        assert_eq!(second[0].found, 200);
        assert_eq!(w.wishes()[0].matches.len(), 2);
        assert_eq!(w.wishes()[0].last_run, Some(200));
        assert!(w.handle_results(99, &[result(5, "x")], 300).is_empty());
    }

    #[test]
    fn wishes_survive_a_save_and_their_numbers_are_not_reused() {
        let t0 = Instant::now();
        let mut w = list(60, t0);
        w.add(t0, "one", Filter::default(), false, "/dl".into())
            .unwrap();
        w.add(t0, "two", Filter::default(), false, "/dl".into())
            .unwrap();
        w.handle_results(1, &[result(1, "one.mp3")], 5);
        assert_eq!(w.remove(2).unwrap().words, "two");
        assert_eq!(w.remove(2), Err(WishError::NoSuchWish(2)));
        let saved = w.saved().clone();
        let mut bytes = Vec::new();
        ciborium::into_writer(&saved, &mut bytes).unwrap();
        let back: SavedWishes = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!(back, saved);
        let mut w = Wishlist::new(back, Duration::from_secs(60), t0, 1);
        // Spread over the first interval after a restart, not all at once.
        let first = w.poll_timeout().unwrap();
        assert!(first <= t0 + Duration::from_secs(60));
        let id = w
            .add(t0, "three", Filter::default(), false, "/dl".into())
            .unwrap()
            .id;
        assert_eq!(id, 3, "numbers are not reused");
        assert!(
            w.handle_results(1, &[result(1, "one.mp3")], 9).is_empty(),
            "what was reported before a restart is not reported again"
        );
    }

    #[test]
    fn a_wish_needs_words_and_the_list_is_bounded() {
        let t0 = Instant::now();
        let mut w = list(60, t0);
        assert_eq!(
            w.add(t0, "   ", Filter::default(), false, "/dl".into())
                .unwrap_err(),
            WishError::NoWords
        );
        for i in 0..MAX_WISHES {
            w.add(t0, &format!("w{i}"), Filter::default(), false, "/dl".into())
                .unwrap();
        }
        assert_eq!(
            w.add(t0, "more", Filter::default(), false, "/dl".into())
                .unwrap_err(),
            WishError::Full
        );
    }
}
