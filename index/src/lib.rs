//! `index`: a super-peer's full-text index of the files its leaves share, on tantivy in RAM.
//!
//! A leaf registers its files ([`wire::FileRecord`]: content id, size, path, tags) with its
//! super-peer, which adds them under the leaf's [`LeafKey`] and answers [`wire::Search`]es from
//! them. Nothing is written to disk: when a leaf goes its records go ([`Index::remove_leaf`]), and
//! it registers again when it comes back. [`Index::add_files`] and the other changes are committed
//! before they return, so the next search sees them; [`Index::queue_add`] and its kind return at
//! once, and a writer thread commits whatever has queued up together (group commit), so a
//! caller that must not block (the super-peer's actor) does not wait for commits (only for room,
//! should [`CHANGES_QUEUED`] changes be waiting).
//!
//! Searching by words: the words of the query are tokenised like the indexed text (split on
//! anything that is not a letter or digit, lower-cased, accents folded: "beyonce" finds
//! "Beyoncé"), and every word must match (AND) in the file's name, the folders of its path, or
//! its artist, album, title, genre or year tags. Hits are ranked by BM25, with the name and the
//! title weighing most. Searching by content id finds every leaf holding that file. Extension and
//! size filters apply to both.
//!
//! # Layout
//! - `index`: [`Index`] (add, remove, search) and [`IndexHit`].
//! - `schema`: the tantivy schema, the word analyzer, and record ↔ document conversion.
//! - `query`: [`wire::Search`] to a tantivy query.
//! - `error`: [`IndexError`].
//!
//! # Example
//! ```
//! use index::Index;
//! use wire::{FileId, FileRecord, Filter, Search, Tags, Terms};
//!
//! let mut index = Index::new()?;
//! let song = FileRecord {
//!     id: FileId([7; 32]),
//!     size: 4_000_000,
//!     path: "music/Motörhead/01 - Ace of Spades.mp3".into(),
//!     tags: Tags { artist: Some("Motörhead".into()), ..Tags::default() },
//! };
//! index.add_files(1, &[song.clone()])?;
//!
//! let search = Search {
//!     terms: Terms::Words("MOTORHEAD spades".into()),
//!     filter: Filter { ext: Some("mp3".into()), ..Filter::default() },
//! };
//! let hits = index.search(&search, 10)?;
//! assert_eq!((hits[0].leaf, &hits[0].file), (1, &song));
//!
//! index.remove_leaf(1)?;
//! assert!(index.search(&search, 10)?.is_empty());
//! # Ok::<(), index::IndexError>(())
//! ```

mod error;
mod index;
mod query;
mod schema;

#[cfg(test)]
mod tests;

pub use error::IndexError;
pub use index::{Index, IndexHit, BATCH_TIME, CHANGES_QUEUED};

/// Which connected leaf registered a file (the super-peer's own key for the connection).
pub type LeafKey = u64;

/// The words of `text` exactly as the index cuts them, for files and queries alike (split on
/// anything that is not a letter or digit, lower-cased, accents folded), each once. Keyword
/// routing (`topology::routing`) cuts words with this, so its tables never rule out a query
/// that the index would match.
pub fn words(text: &str) -> Vec<String> {
    schema::words(&mut schema::analyzer(), text)
}

/// The most distinct words a query may have.
pub const MAX_QUERY_WORDS: usize = 32;
