//! Keyword routing: QRP-style route tables.
//!
//! A super-peer summarises the words its leaves' files hold as a hashed bit table of
//! `1 << bits` slots (the Gnutella Query Routing Protocol's idea): a word sets the slot its hash
//! falls in; a file sets the slots of all its words and one slot for its content id. The table
//! goes to every neighbour when the link is made ([`wire::Message::RouteTable`]), then only the
//! slots that flipped as leaves came and went ([`wire::Message::RoutePatch`]): new words at
//! once, cleared slots batched (they only cost false positives meanwhile).
//!
//! A query can match at a super-peer only if every one of its words is in some file there, so
//! only if every word's slot is set: a clear slot proves there is no match (no false negatives,
//! as long as files and queries are cut into words by the same [`Analyzer`] as the index's). A
//! set slot may be another word's (a false positive costs one message, nothing more).
//!
//! - [`LocalTable`]: this super-peer's own table, with per-slot counts so files and leaves can
//!   be taken out again, and the flips not yet sent.
//! - [`RemoteTable`]: a neighbour's table as received, patched in place.
//! - [`aggregate`]: a table of depth 1, a super-peer's own table joined with its neighbours'
//!   (a neighbour's depth-1 table routes the hop before the last: sent there with TTL 1, a
//!   query reaches that neighbour and, on its last hop, that neighbour's neighbours).
//! - [`file_hashes`] / [`search_hashes`]: the word (and id) hashes of a file and of a query.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use wire::{FileId, FileRecord, Search, Terms};

use crate::ConnId;

/// The default table size: `1 << 16` slots, as in QRP (8 KiB as a bitmap).
pub const TABLE_BITS: u8 = 16;

/// The largest table accepted from a neighbour: `1 << 24` slots.
pub const MAX_TABLE_BITS: u8 = 24;

/// Cuts text into normalised words. It must cut exactly like the index does (the super-peer
/// driver passes the index's own analyzer); [`simple_words`] is the default.
pub type Analyzer = fn(&str) -> Vec<String>;

/// Why a neighbour's route message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The table size is outside `1..=MAX_TABLE_BITS` bits.
    #[error("route table of {0} bits (at most {MAX_TABLE_BITS})")]
    Bits(u8),
    /// A slot lies beyond the table.
    #[error("route slot {slot} beyond a table of {bits} bits")]
    Slot {
        /// The slot.
        slot: u32,
        /// The table's size in bits.
        bits: u8,
    },
    /// A patch came before any table.
    #[error("route patch before any route table")]
    PatchFirst,
}

/// The default analyzer: split on anything that is not a letter or digit, lower-case, and fold
/// the common Latin accents to ASCII ("Motörhead" gives "motorhead", "Straße" "strasse"). The
/// simulator uses it for files and queries alike; a real super-peer uses the index's analyzer.
pub fn simple_words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for token in text.split(|c: char| !c.is_alphanumeric()) {
        if token.is_empty() {
            continue;
        }
        let mut w = String::with_capacity(token.len());
        for c in token.chars() {
            if c.is_ascii() {
                w.push(c.to_ascii_lowercase());
            } else {
                for l in c.to_lowercase() {
                    match fold(l) {
                        Some(f) => w.push_str(f),
                        None => w.push(l),
                    }
                }
            }
        }
        out.push(w);
    }
    out
}

/// ASCII for the common accented Latin letters (lower case).
fn fold(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' | 'ě' => "e",
        'ì' | 'í' | 'î' | 'ï' | 'ī' | 'į' | 'ı' => "i",
        'ł' | 'ľ' => "l",
        'ñ' | 'ń' | 'ň' => "n",
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' | 'ő' => "o",
        'œ' => "oe",
        'ř' => "r",
        'ś' | 'š' | 'ş' => "s",
        'ß' => "ss",
        'ť' | 'ţ' => "t",
        'þ' => "th",
        'ù' | 'ú' | 'û' | 'ü' | 'ū' | 'ů' | 'ű' => "u",
        'ý' | 'ÿ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => return None,
    })
}

/// A 64-bit hash of bytes (FNV-1a, then a SplitMix64 finish so the top bits are well mixed).
/// Fixed by the protocol: every node must hash a word alike.
fn hash64(domain: u8, bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(domain);
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^ (h >> 31)
}

/// The hash of a (normalised) word.
pub fn word_hash(word: &str) -> u64 {
    hash64(0, word.as_bytes())
}

/// The hash of a content id (a query for an id routes like a one-word query).
pub fn id_hash(id: &FileId) -> u64 {
    hash64(1, id.as_bytes())
}

/// The slot a hash falls in, in a table of `1 << bits` slots.
pub fn slot(hash: u64, bits: u8) -> u32 {
    (hash >> (64 - u32::from(bits))) as u32
}

/// The text of a file that the index cuts into words: its path (folders and name) and its
/// tags. The extension is in the name; the year is a word.
pub fn file_text(file: &FileRecord) -> String {
    let t = &file.tags;
    let mut text = file.path.clone();
    for part in [&t.artist, &t.album, &t.title, &t.genre]
        .into_iter()
        .flatten()
    {
        text.push(' ');
        text.push_str(part);
    }
    if let Some(year) = t.year {
        text.push(' ');
        text.push_str(&year.to_string());
    }
    text
}

/// The hashes a file sets: each of its words, and its content id. Sorted, distinct.
pub fn file_hashes(analyzer: Analyzer, file: &FileRecord) -> Vec<u64> {
    let mut h: Vec<u64> = analyzer(&file_text(file))
        .iter()
        .map(|w| word_hash(w))
        .collect();
    h.push(id_hash(&file.id));
    h.sort_unstable();
    h.dedup();
    h
}

/// The hashes a query needs, every one of them, to match anywhere. Empty when it has no words
/// (such a query matches nothing in the index; it is routed as if it could match anything).
pub fn search_hashes(analyzer: Analyzer, search: &Search) -> Vec<u64> {
    let mut h: Vec<u64> = match &search.terms {
        Terms::Words(text) => analyzer(text).iter().map(|w| word_hash(w)).collect(),
        Terms::Id(id) => vec![id_hash(id)],
    };
    h.sort_unstable();
    h.dedup();
    h
}

/// This super-peer's route table: which slots its leaves' files set, counted, so a file or a
/// leaf can be taken out, and which slots flipped since the table was last sent.
///
/// Invariant: a slot is set (`counts` holds it) exactly when at least one registered file sets
/// it; `flips` holds exactly the slots whose set/clear state differs from what was last sent
/// (taken by [`LocalTable::take_flips`]).
///
/// Storage is flat, as a super-peer holds thousands of files: the counts are one sorted list,
/// and each leaf's files are three lists (ids, where each file's slots end, the slots), with no
/// allocation per file. Every change is a merge of sorted lists, linear in what the table or
/// the leaf holds.
#[derive(Debug)]
pub struct LocalTable {
    bits: u8,
    /// Set slots, ascending, with how many registered files set each (never 0).
    counts: Vec<(u32, u32)>,
    /// Each leaf's files and the slots each sets.
    files: HashMap<ConnId, LeafFiles>,
    flips: HashSet<u32>,
}

/// One leaf's files and their slots, flat.
#[derive(Debug, Default)]
struct LeafFiles {
    /// File ids, ascending, distinct.
    ids: Vec<FileId>,
    /// What each file's record costs to hold ([`record_cost`]).
    costs: Vec<u32>,
    /// Their sum.
    cost: u64,
    /// Where each file's slots end in `slots`: file `i`'s are `ends[i - 1]..ends[i]`.
    ends: Vec<u32>,
    /// Every file's slots (ascending, distinct per file), one after the other: one `u16` a
    /// slot in tables of up to 16 bits, two (high, low) in larger ones.
    slots: Vec<u16>,
}

/// A file's id, its record's cost and its slots.
type FileSlots = (FileId, u32, Vec<u32>);

/// What holding a leaf's record of a file costs a super-peer, in bytes: its text (path and
/// tags) and room for the rest. The per-leaf metadata limit counts this.
pub fn record_cost(file: &FileRecord) -> u32 {
    (file.text_len() as u32).saturating_add(64)
}

impl LeafFiles {
    fn unpack(&self, wide: bool) -> Vec<FileSlots> {
        let mut start = 0usize;
        self.ids
            .iter()
            .zip(&self.costs)
            .zip(&self.ends)
            .map(|((id, &cost), &end)| {
                let raw = &self.slots[start..end as usize];
                start = end as usize;
                let slots = match wide {
                    false => raw.iter().map(|&s| u32::from(s)).collect(),
                    true => raw
                        .chunks_exact(2)
                        .map(|p| (u32::from(p[0]) << 16) | u32::from(p[1]))
                        .collect(),
                };
                (*id, cost, slots)
            })
            .collect()
    }

    fn pack(entries: &[FileSlots], wide: bool) -> LeafFiles {
        let width = if wide { 2 } else { 1 };
        let mut out = LeafFiles {
            ids: Vec::with_capacity(entries.len()),
            costs: Vec::with_capacity(entries.len()),
            cost: 0,
            ends: Vec::with_capacity(entries.len()),
            slots: Vec::with_capacity(entries.iter().map(|(_, _, s)| s.len() * width).sum()),
        };
        for (id, cost, slots) in entries {
            out.ids.push(*id);
            out.costs.push(*cost);
            out.cost += u64::from(*cost);
            for &s in slots {
                match wide {
                    false => out.slots.push(s as u16),
                    true => out.slots.extend([(s >> 16) as u16, s as u16]),
                }
            }
            out.ends.push(out.slots.len() as u32);
        }
        out
    }
}

impl LocalTable {
    /// An empty table of `1 << bits` slots.
    pub fn new(bits: u8) -> Self {
        LocalTable {
            bits: bits.clamp(1, MAX_TABLE_BITS),
            counts: Vec::new(),
            files: HashMap::new(),
            flips: HashSet::new(),
        }
    }

    /// The table's size in bits.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    fn wide(&self) -> bool {
        self.bits > 16
    }

    fn find(&self, s: u32) -> Result<usize, usize> {
        self.counts.binary_search_by_key(&s, |&(slot, _)| slot)
    }

    /// Counts every slot in `adds` once more and every slot in `subs` once less; a slot whose
    /// set/clear state changes flips.
    fn adjust(&mut self, mut adds: Vec<u32>, mut subs: Vec<u32>) {
        adds.sort_unstable();
        subs.sort_unstable();
        // Net change per slot, ascending.
        let mut delta: Vec<(u32, i64)> = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < adds.len() || j < subs.len() {
            let (s, d) = match (adds.get(i), subs.get(j)) {
                (Some(&a), Some(&b)) if a == b => {
                    i += 1;
                    j += 1;
                    (a, 0)
                }
                (Some(&a), Some(&b)) if a < b => {
                    i += 1;
                    (a, 1)
                }
                (Some(&a), None) => {
                    i += 1;
                    (a, 1)
                }
                (_, Some(&b)) => {
                    j += 1;
                    (b, -1)
                }
                (None, None) => unreachable!(),
            };
            match delta.last_mut() {
                Some(last) if last.0 == s => last.1 += d,
                _ => delta.push((s, d)),
            }
        }
        if delta.iter().all(|&(_, d)| d == 0) {
            return;
        }
        let old = std::mem::take(&mut self.counts);
        let mut counts = Vec::with_capacity(old.len() + delta.len());
        let (mut i, mut j) = (0, 0);
        while i < old.len() || j < delta.len() {
            let (s, before, d) = match (old.get(i), delta.get(j)) {
                (Some(&(a, c)), Some(&(b, d))) if a == b => {
                    i += 1;
                    j += 1;
                    (a, c, d)
                }
                (Some(&(a, c)), Some(&(b, _))) if a < b => {
                    i += 1;
                    (a, c, 0)
                }
                (Some(&(a, c)), None) => {
                    i += 1;
                    (a, c, 0)
                }
                (_, Some(&(b, d))) => {
                    j += 1;
                    (b, 0, d)
                }
                (None, None) => unreachable!(),
            };
            let after = i64::from(before) + d;
            debug_assert!(after >= 0, "slot {s} counted below zero");
            let after = after.max(0) as u32;
            if (before == 0) != (after == 0) && !self.flips.remove(&s) {
                self.flips.insert(s);
            }
            if after > 0 {
                counts.push((s, after));
            }
        }
        counts.shrink_to_fit();
        self.counts = counts;
    }

    /// Leaf `leaf` registered `files` (a file it registered before is replaced).
    pub fn add_files(&mut self, analyzer: Analyzer, leaf: ConnId, files: &[FileRecord]) {
        let (bits, wide) = (self.bits, self.wide());
        let mut new: Vec<FileSlots> = files
            .iter()
            .map(|f| {
                let mut s: Vec<u32> = file_hashes(analyzer, f)
                    .into_iter()
                    .map(|h| slot(h, bits))
                    .collect();
                s.sort_unstable();
                s.dedup();
                (f.id, record_cost(f), s)
            })
            .collect();
        // The same id twice in one registration: the later one stands (as if sent one by one).
        new.reverse();
        new.sort_by_key(|(id, _, _)| *id);
        new.dedup_by_key(|(id, _, _)| *id);
        let adds: Vec<u32> = new.iter().flat_map(|(_, _, s)| s.iter().copied()).collect();
        let mut subs = Vec::new();
        let old = self.files.remove(&leaf).unwrap_or_default().unpack(wide);
        let mut merged: Vec<FileSlots> = Vec::with_capacity(old.len() + new.len());
        let mut new = new.into_iter().peekable();
        for (id, cost, slots) in old {
            while let Some(n) = new.next_if(|(nid, _, _)| *nid < id) {
                merged.push(n);
            }
            match new.next_if(|(nid, _, _)| *nid == id) {
                Some(n) => {
                    subs.extend(slots);
                    merged.push(n);
                }
                None => merged.push((id, cost, slots)),
            }
        }
        merged.extend(new);
        self.files.insert(leaf, LeafFiles::pack(&merged, wide));
        self.adjust(adds, subs);
    }

    /// Leaf `leaf` withdrew the files with these ids; returns those it held (ids it never
    /// registered change nothing, and cost nothing but the look-up).
    pub fn withdraw(&mut self, leaf: ConnId, ids: &[FileId]) -> Vec<FileId> {
        let wide = self.wide();
        let Some(files) = self.files.get_mut(&leaf) else {
            return Vec::new();
        };
        let mut gone: Vec<FileId> = ids
            .iter()
            .filter(|id| files.ids.binary_search(id).is_ok())
            .copied()
            .collect();
        gone.sort_unstable();
        gone.dedup();
        if gone.is_empty() {
            return gone;
        }
        let mut subs = Vec::new();
        let kept: Vec<FileSlots> = files
            .unpack(wide)
            .into_iter()
            .filter(|(id, _, slots)| match gone.binary_search(id) {
                Ok(_) => {
                    subs.extend_from_slice(slots);
                    false
                }
                Err(_) => true,
            })
            .collect();
        *files = LeafFiles::pack(&kept, wide);
        self.adjust(Vec::new(), subs);
        gone
    }

    /// What leaf `leaf` holds here: its files, and their records' cost in bytes
    /// ([`record_cost`]).
    pub fn held(&self, leaf: ConnId) -> (u64, u64) {
        self.files
            .get(&leaf)
            .map_or((0, 0), |f| (f.ids.len() as u64, f.cost))
    }

    /// Leaf `leaf` is gone, and its files with it.
    pub fn remove_leaf(&mut self, leaf: ConnId) {
        if let Some(files) = self.files.remove(&leaf) {
            let subs = files
                .unpack(self.wide())
                .into_iter()
                .flat_map(|(_, _, s)| s)
                .collect();
            self.adjust(Vec::new(), subs);
        }
    }

    /// Whether a query with these hashes could match here.
    pub fn may_match(&self, hashes: &[u64]) -> bool {
        hashes
            .iter()
            .all(|&h| self.find(slot(h, self.bits)).is_ok())
    }

    /// The set slots, ascending (a whole table to send).
    pub fn slots(&self) -> Vec<u32> {
        self.counts.iter().map(|&(s, _)| s).collect()
    }

    /// Whether slot `s` is set.
    pub fn contains(&self, s: u32) -> bool {
        self.find(s).is_ok()
    }

    /// Set slots.
    pub fn len(&self) -> usize {
        self.counts.len()
    }

    /// True when no slot is set.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Whether slots flipped since the last [`LocalTable::take_flips`].
    pub fn has_flips(&self) -> bool {
        !self.flips.is_empty()
    }

    /// Whether a slot was set since the last [`LocalTable::take_flips`] (a new word that
    /// neighbours must learn of before they can route queries for it here).
    pub fn has_new_slots(&self) -> bool {
        self.flips.iter().any(|&s| self.find(s).is_ok())
    }

    /// The slots that flipped since the last call, ascending; they count as sent.
    pub fn take_flips(&mut self) -> Vec<u32> {
        // Taken, not drained: an idle table keeps no spare capacity.
        let mut v: Vec<u32> = std::mem::take(&mut self.flips).into_iter().collect();
        v.sort_unstable();
        v
    }
}

/// A neighbour's route table, as received and patched. Slots are kept as a sorted list (two
/// bytes a slot up to 16 bits): most tables are sparse, and a super-peer holds one per
/// neighbour; a table dense enough that a bitmap is smaller (an aggregate, say) is kept as a
/// bitmap. The list is immutable and shared (a patch builds a new one), so a simulation that
/// holds the same table at every neighbour can keep one copy ([`TablePool`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteTable {
    bits: u8,
    slots: SlotSet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum SlotSet {
    /// Sorted slots of a table of up to 16 bits.
    Small(Arc<[u16]>),
    /// Sorted slots of a larger table.
    Large(Arc<[u32]>),
    /// One bit a slot (slot `s` is bit `s % 64` of word `s / 64`).
    Dense(Arc<[u64]>),
}

/// Hashes the form, the length and 16 entries spread over the list, not all of it: the pool
/// ([`TablePool`]) hashes every table a simulated super-peer patches, and hashing whole
/// tables (8 KiB a dense one) was a tenth of a simulation's time. Equal sets hash alike, as
/// `Eq` requires; lists that differ only between the samples meet in a bucket and are told
/// apart by comparing them whole.
impl std::hash::Hash for SlotSet {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        fn sample<T: std::hash::Hash, H: std::hash::Hasher>(v: &[T], h: &mut H) {
            v.len().hash(h);
            let step = v.len().div_ceil(16).max(1);
            v.iter().step_by(step).for_each(|x| x.hash(h));
            v.last().hash(h);
        }
        std::mem::discriminant(self).hash(h);
        match self {
            SlotSet::Small(v) => sample(v, h),
            SlotSet::Large(v) => sample(v, h),
            SlotSet::Dense(v) => sample(v, h),
        }
    }
}

impl SlotSet {
    /// The smaller form for these slots (ascending) of a `bits` table.
    fn build(bits: u8, slots: &[u32]) -> SlotSet {
        if dense(bits, slots.len()) {
            let mut map = vec![0u64; bitmap_words(bits)];
            for &s in slots {
                map[(s / 64) as usize] |= 1 << (s % 64);
            }
            SlotSet::Dense(map.into())
        } else if bits <= 16 {
            SlotSet::Small(slots.iter().map(|&s| s as u16).collect())
        } else {
            SlotSet::Large(slots.into())
        }
    }

    fn contains(&self, s: u32) -> bool {
        self.any_in(s, s + 1)
    }

    /// Whether any slot in `lo..hi` is set.
    fn any_in(&self, lo: u32, hi: u32) -> bool {
        match self {
            SlotSet::Small(v) => {
                let i = v.partition_point(|&x| u32::from(x) < lo);
                v.get(i).is_some_and(|&x| u32::from(x) < hi)
            }
            SlotSet::Large(v) => {
                let i = v.partition_point(|&x| x < lo);
                v.get(i).is_some_and(|&x| x < hi)
            }
            SlotSet::Dense(m) => (lo..hi).any(|s| {
                m.get((s / 64) as usize)
                    .is_some_and(|w| w & (1 << (s % 64)) != 0)
            }),
        }
    }

    /// Calls `f` with every set slot, ascending.
    fn for_each(&self, mut f: impl FnMut(u32)) {
        match self {
            SlotSet::Small(v) => v.iter().for_each(|&s| f(u32::from(s))),
            SlotSet::Large(v) => v.iter().for_each(|&s| f(s)),
            SlotSet::Dense(m) => {
                for (i, &w) in m.iter().enumerate() {
                    let mut w = w;
                    while w != 0 {
                        f(i as u32 * 64 + w.trailing_zeros());
                        w &= w - 1;
                    }
                }
            }
        }
    }

    fn shared(&self) -> bool {
        match self {
            SlotSet::Small(v) => Arc::strong_count(v) > 1,
            SlotSet::Large(v) => Arc::strong_count(v) > 1,
            SlotSet::Dense(v) => Arc::strong_count(v) > 1,
        }
    }
}

/// 64-bit words in a bitmap of a `bits` table.
fn bitmap_words(bits: u8) -> usize {
    (1usize << bits).div_ceil(64)
}

/// Whether `set` slots of a `bits` table take less room as a bitmap than as a sorted list.
fn dense(bits: u8, set: usize) -> bool {
    let width = if bits <= 16 { 2 } else { 4 };
    set * width > bitmap_words(bits) * 8
}

/// Equal route tables held once: a simulation of many super-peers holds each super-peer's
/// table at every one of its neighbours (32 copies of the same list at the default degree);
/// [`RemoteTable::share`] swaps a copy for the pooled one when they are equal. A real
/// super-peer has no use for it (its neighbours' tables differ).
#[derive(Debug, Default)]
pub struct TablePool {
    lists: HashSet<SlotSet>,
    /// Pool size after the last sweep of lists nobody else holds.
    swept: usize,
}

impl TablePool {
    /// An empty pool.
    pub fn new() -> Self {
        TablePool::default()
    }

    /// Distinct lists held.
    pub fn len(&self) -> usize {
        self.lists.len()
    }

    /// True when no list is held.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    fn intern(&mut self, s: &SlotSet) -> SlotSet {
        if let Some(found) = self.lists.get(s) {
            return found.clone();
        }
        self.lists.insert(s.clone());
        // Forget lists that only the pool holds, once it has grown by half since the last sweep.
        if self.lists.len() > self.swept + self.swept.max(1024) / 2 {
            self.lists.retain(SlotSet::shared);
            self.swept = self.lists.len();
        }
        s.clone()
    }
}

/// The symmetric difference of two ascending lists.
fn xor_sorted<T: Ord + Copy>(a: &[T], b: &[T]) -> Vec<T> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

impl RemoteTable {
    /// A table of `1 << bits` slots with these set (ascending, as [`wire::Slots`] guarantees).
    pub fn new(bits: u8, slots: &[u32]) -> Result<Self, RouteError> {
        if bits == 0 || bits > MAX_TABLE_BITS {
            return Err(RouteError::Bits(bits));
        }
        check(bits, slots)?;
        Ok(RemoteTable {
            bits,
            slots: SlotSet::build(bits, slots),
        })
    }

    /// Flips these slots (ascending).
    pub fn apply(&mut self, flips: &[u32]) -> Result<(), RouteError> {
        check(self.bits, flips)?;
        // Every patch makes a new list (the old one may be shared, see `TablePool`), copied
        // once: patches are what a simulation of many super-peers spends its time on.
        self.slots = match &self.slots {
            SlotSet::Small(v) => {
                let f: Vec<u16> = flips.iter().map(|&s| s as u16).collect();
                let new = xor_sorted(v, &f);
                if dense(self.bits, new.len()) {
                    let new: Vec<u32> = new.into_iter().map(u32::from).collect();
                    SlotSet::build(self.bits, &new)
                } else {
                    SlotSet::Small(new.into())
                }
            }
            SlotSet::Large(v) => SlotSet::build(self.bits, &xor_sorted(v, flips)),
            SlotSet::Dense(m) => {
                let mut arc: Arc<[u64]> = Arc::from(&m[..]);
                let map = Arc::get_mut(&mut arc).expect("a list just made");
                for &s in flips {
                    map[(s / 64) as usize] ^= 1 << (s % 64);
                }
                let set: u32 = map.iter().map(|w| w.count_ones()).sum();
                if dense(self.bits, set as usize) {
                    SlotSet::Dense(arc)
                } else {
                    let mut slots = Vec::with_capacity(set as usize);
                    SlotSet::Dense(arc).for_each(|s| slots.push(s));
                    SlotSet::build(self.bits, &slots)
                }
            }
        };
        Ok(())
    }

    /// Holds the slot list in `pool` once: an equal list already there replaces this one.
    pub fn share(&mut self, pool: &mut TablePool) {
        self.slots = pool.intern(&self.slots);
    }

    /// Whether a query with these hashes could match at this neighbour.
    pub fn may_match(&self, hashes: &[u64]) -> bool {
        hashes
            .iter()
            .all(|&h| self.slots.contains(slot(h, self.bits)))
    }

    /// The set slots, ascending.
    pub fn slots(&self) -> Vec<u32> {
        let mut out = Vec::new();
        self.slots.for_each(|s| out.push(s));
        out
    }

    /// The table's size in bits.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// Whether slot `s` of a table of `1 << bits` slots is set once this table is folded to
    /// that size (as [`aggregate`] folds it).
    pub fn covers(&self, bits: u8, s: u32) -> bool {
        if self.bits >= bits {
            let shift = self.bits - bits;
            self.slots.any_in(s << shift, (s + 1) << shift)
        } else {
            self.slots.contains(s >> (bits - self.bits))
        }
    }

    /// Calls `f` with every set slot, ascending.
    pub fn for_each_slot(&self, f: impl FnMut(u32)) {
        self.slots.for_each(f)
    }

    /// Bytes this table's slot list takes on the heap, divided among the tables that share it
    /// (see [`TablePool`]).
    pub fn heap_bytes(&self) -> usize {
        match &self.slots {
            SlotSet::Small(v) => (16 + v.len() * 2) / Arc::strong_count(v),
            SlotSet::Large(v) => (16 + v.len() * 4) / Arc::strong_count(v),
            SlotSet::Dense(v) => (16 + v.len() * 8) / Arc::strong_count(v),
        }
    }

    /// True when no slot is set.
    pub fn is_empty(&self) -> bool {
        match &self.slots {
            SlotSet::Small(v) => v.is_empty(),
            SlotSet::Large(v) => v.is_empty(),
            SlotSet::Dense(v) => v.iter().all(|&w| w == 0),
        }
    }
}

/// A depth-1 table of `1 << bits` slots: the slots of our own table (`own`, a table of the same
/// size) and of each neighbour's table in `tables`, ascending. A neighbour table of another
/// size is folded in: a larger one's slot `s` is slot `s >> (its bits - bits)` here (a slot
/// is the top bits of a hash), a smaller one's sets every slot it covers here. So whatever
/// could match in any of them may match in the result (no false negatives).
pub fn aggregate<'a>(
    bits: u8,
    own: &[u32],
    tables: impl IntoIterator<Item = &'a RemoteTable>,
) -> Vec<u32> {
    let bits = bits.clamp(1, MAX_TABLE_BITS);
    let mut map = vec![0u64; bitmap_words(bits)];
    let mut set = |s: u32| map[(s / 64) as usize] |= 1 << (s % 64);
    own.iter().for_each(|&s| set(s));
    for t in tables {
        t.slots.for_each(|s| fold_slot(t.bits, bits, s, &mut set));
    }
    let mut out = Vec::new();
    SlotSet::Dense(map.into()).for_each(|s| out.push(s));
    out
}

/// Calls `f` with the slots of a `to`-bit table that slot `s` of a `from`-bit table falls in:
/// one when `from >= to` (a slot is the top bits of a hash), all it covers when smaller.
pub fn fold_slot(from: u8, to: u8, s: u32, mut f: impl FnMut(u32)) {
    if from >= to {
        f(s >> (from - to));
    } else {
        let shift = to - from;
        (s << shift..(s + 1) << shift).for_each(f);
    }
}

fn check(bits: u8, slots: &[u32]) -> Result<(), RouteError> {
    match slots.iter().find(|&&s| u64::from(s) >= 1u64 << bits) {
        Some(&slot) => Err(RouteError::Slot { slot, bits }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use wire::{Filter, Tags};

    #[test]
    fn the_pool_holds_equal_tables_once_and_tells_near_ones_apart() {
        // A list (1,000 slots) and a bitmap (6,000 slots of 65,536); the near one differs in
        // one slot that the pool's hash does not look at.
        for (n, step) in [(1000u32, 50u32), (6000, 10)] {
            let slots: Vec<u32> = (0..n).map(|i| i * step).collect();
            let mut near = slots.clone();
            near[n as usize / 2 + 1] += 1;
            let mut pool = TablePool::new();
            let mut a = RemoteTable::new(16, &slots).unwrap();
            let mut b = RemoteTable::new(16, &slots).unwrap();
            let mut c = RemoteTable::new(16, &near).unwrap();
            for t in [&mut a, &mut b, &mut c] {
                t.share(&mut pool);
            }
            assert_eq!(pool.len(), 2, "{n} slots");
            assert_eq!(a.slots(), slots);
            assert_eq!(b.slots(), slots);
            assert_eq!(c.slots(), near);
            // a and b hold one list between them (and the pool); c its own (and the pool).
            assert_eq!(a.heap_bytes(), b.heap_bytes());
            assert!(a.heap_bytes() < c.heap_bytes(), "{n} slots");
        }
    }

    fn file(n: u8, path: &str, tags: Tags) -> FileRecord {
        FileRecord {
            id: FileId([n; 32]),
            size: 1000,
            path: path.into(),
            tags,
        }
    }

    fn words(text: &str) -> Search {
        Search {
            terms: Terms::Words(text.into()),
            filter: Filter::default(),
        }
    }

    #[test]
    fn a_leaf_holds_what_it_registered_once_and_withdrew_not() {
        let mut t = LocalTable::new(TABLE_BITS);
        let a = file(1, "a/one.mp3", Tags::default());
        let b = file(2, "a/two.mp3", Tags::default());
        t.add_files(simple_words, 7, &[a.clone(), b.clone()]);
        t.add_files(simple_words, 7, std::slice::from_ref(&a));
        let cost = u64::from(record_cost(&a) + record_cost(&b));
        assert_eq!(t.held(7), (2, cost));
        // Unknown ids: nothing withdrawn, nothing given back.
        assert!(t
            .withdraw(7, &[FileId([9; 32]), FileId([8; 32])])
            .is_empty());
        assert_eq!(t.held(7), (2, cost));
        assert_eq!(t.withdraw(7, &[a.id, a.id, FileId([9; 32])]), vec![a.id]);
        assert_eq!(t.held(7), (1, u64::from(record_cost(&b))));
        assert_eq!(t.held(8), (0, 0));
        t.remove_leaf(7);
        assert_eq!(t.held(7), (0, 0));
        assert!(t.is_empty());
    }

    #[test]
    fn simple_words_fold_case_and_accents() {
        assert_eq!(
            simple_words("Motörhead/Ace of Spades-Straße 1999.MP3"),
            ["motorhead", "ace", "of", "spades", "strasse", "1999", "mp3"]
        );
    }

    #[test]
    fn a_table_answers_for_its_words_and_ids_and_forgets_a_gone_leaf() {
        let mut t = LocalTable::new(TABLE_BITS);
        let f = file(
            1,
            "Music/Björk/01 - Hyperballad.mp3",
            Tags {
                genre: Some("Electronic".into()),
                year: Some(1996),
                ..Tags::default()
            },
        );
        t.add_files(simple_words, 7, std::slice::from_ref(&f));
        for q in ["bjork hyperballad", "ELECTRONIC 1996", "music mp3", "01"] {
            assert!(t.may_match(&search_hashes(simple_words, &words(q))), "{q}");
        }
        let by_id = Search {
            terms: Terms::Id(f.id),
            filter: Filter::default(),
        };
        assert!(t.may_match(&search_hashes(simple_words, &by_id)));
        let flips = t.take_flips();
        assert_eq!(flips, t.slots());
        t.remove_leaf(7);
        assert!(t.is_empty());
        assert!(!t.may_match(&search_hashes(simple_words, &words("hyperballad"))));
        // Every slot that was set flipped back.
        assert_eq!(t.take_flips(), flips);
    }

    #[test]
    fn withdrawing_one_of_two_files_keeps_the_shared_words() {
        let mut t = LocalTable::new(TABLE_BITS);
        let a = file(1, "x/alpha shared.mp3", Tags::default());
        let b = file(2, "x/beta shared.mp3", Tags::default());
        t.add_files(simple_words, 1, &[a.clone(), b]);
        t.withdraw(1, &[a.id]);
        assert!(t.may_match(&search_hashes(simple_words, &words("beta shared"))));
        assert!(!t.may_match(&search_hashes(simple_words, &words("alpha"))));
    }

    #[test]
    fn remote_tables_refuse_slots_beyond_their_size() {
        assert_eq!(
            RemoteTable::new(4, &[3, 16]),
            Err(RouteError::Slot { slot: 16, bits: 4 })
        );
        assert_eq!(RemoteTable::new(0, &[]), Err(RouteError::Bits(0)));
        let mut t = RemoteTable::new(4, &[1, 2]).unwrap();
        assert!(t.apply(&[20]).is_err());
        t.apply(&[2, 5]).unwrap();
        assert_eq!(t.slots(), [1, 5]);
    }

    fn arb_text() -> impl Strategy<Value = String> {
        // Words from a small alphabet (so queries often hit), accents and separators.
        prop::collection::vec("[a-cA-CéÖß0-2]{1,4}", 1..6).prop_map(|w| w.join(" "))
    }

    proptest! {
        /// Whatever leaves come and go, a neighbour that applied every patch holds the same
        /// table as the sender, and the table is set exactly where some live file sets it.
        #[test]
        fn patches_keep_a_remote_copy_equal(ops in prop::collection::vec((0u64..4, any::<bool>(), prop::collection::vec((0u8..8, arb_text()), 0..4)), 1..30), bits in 3u8..=18, flush_every in 1usize..4) {
            let mut local = LocalTable::new(bits);
            local.take_flips();
            let mut remote = RemoteTable::new(bits, &local.slots()).unwrap();
            for (i, (leaf, leave, files)) in ops.into_iter().enumerate() {
                if leave {
                    local.remove_leaf(leaf);
                } else {
                    let files: Vec<FileRecord> = files
                        .into_iter()
                        .map(|(n, text)| file(n, &text, Tags::default()))
                        .collect();
                    local.add_files(simple_words, leaf, &files);
                }
                if i % flush_every == 0 {
                    remote.apply(&local.take_flips()).unwrap();
                    prop_assert_eq!(remote.slots(), local.slots());
                }
            }
            remote.apply(&local.take_flips()).unwrap();
            prop_assert_eq!(remote.slots(), local.slots());
        }

        /// A table kept as a list or as a bitmap (whichever is smaller as it is patched)
        /// holds exactly the slots set, as a plain set would.
        #[test]
        fn tables_dense_or_sparse_hold_their_slots(bits in 2u8..=18, start in prop::collection::btree_set(any::<u32>(), 0..400), patches in prop::collection::vec(prop::collection::btree_set(any::<u32>(), 0..300), 0..6)) {
            let cap = 1u32 << bits;
            let mut model: std::collections::BTreeSet<u32> = start.iter().map(|s| s % cap).collect();
            let list: Vec<u32> = model.iter().copied().collect();
            let mut t = RemoteTable::new(bits, &list).unwrap();
            prop_assert_eq!(t.slots(), list);
            for p in patches {
                let flips: std::collections::BTreeSet<u32> = p.iter().map(|s| s % cap).collect();
                let flips: Vec<u32> = flips.into_iter().collect();
                t.apply(&flips).unwrap();
                for f in &flips {
                    if !model.remove(f) {
                        model.insert(*f);
                    }
                }
                prop_assert_eq!(t.slots(), model.iter().copied().collect::<Vec<_>>());
                prop_assert_eq!(t.is_empty(), model.is_empty());
            }
        }

        /// No false negatives through a depth-1 table: a query that could match in our own
        /// table or in any neighbour's (whatever their sizes) may match in the aggregate.
        #[test]
        fn an_aggregate_never_filters_what_a_part_could_match(texts in prop::collection::vec(arb_text(), 1..12), sizes in prop::collection::vec(4u8..=20, 1..5), bits in 4u8..=18, pick in any::<prop::sample::Index>()) {
            // Table 0 is our own (of `bits`), the others neighbours' of their own sizes; file
            // `i` goes to table `i % tables`.
            let tables = sizes.len() + 1;
            let mut locals: Vec<LocalTable> = std::iter::once(bits)
                .chain(sizes.iter().copied())
                .map(LocalTable::new)
                .collect();
            let files: Vec<FileRecord> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| file(i as u8, &format!("{t}.ogg"), Tags::default()))
                .collect();
            for (i, f) in files.iter().enumerate() {
                locals[i % tables].add_files(simple_words, i as u64, std::slice::from_ref(f));
            }
            let remotes: Vec<RemoteTable> = locals[1..]
                .iter()
                .map(|l| RemoteTable::new(l.bits(), &l.slots()).unwrap())
                .collect();
            let agg = aggregate(bits, &locals[0].slots(), &remotes);
            let agg = RemoteTable::new(bits, &agg).unwrap();
            let f = pick.get(&files);
            let h = search_hashes(simple_words, &words(&simple_words(&f.path).join(" ")));
            prop_assert!(agg.may_match(&h));
        }

        /// No false negatives: a query whose every word is in some file of the table may match.
        #[test]
        fn a_query_that_matches_a_file_is_never_filtered(texts in prop::collection::vec(arb_text(), 1..20), pick in any::<prop::sample::Index>(), take in 1usize..4, bits in 1u8..=16) {
            let files: Vec<FileRecord> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| file(i as u8, &format!("share/{t}.ogg"), Tags { artist: Some(t.to_uppercase()), ..Tags::default() }))
                .collect();
            let mut local = LocalTable::new(bits);
            local.add_files(simple_words, 1, &files);
            let remote = RemoteTable::new(bits, &local.slots()).unwrap();
            // A query made of some words of one file, in other case.
            let f = pick.get(&files);
            let w = simple_words(&f.path);
            let q: Vec<String> = w.iter().take(take).map(|w| w.to_uppercase()).collect();
            let h = search_hashes(simple_words, &words(&q.join(" ")));
            prop_assert!(local.may_match(&h));
            prop_assert!(remote.may_match(&h));
        }
    }
}
