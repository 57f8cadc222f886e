//! What can go wrong in the index.

use tantivy::TantivyError;

use crate::LeafKey;

/// An index operation that failed.
///
/// The tantivy error that caused a failure is part of the message (so a plain `{}` in a log line
/// says why), and is kept in the `error` field rather than offered again as
/// [`std::error::Error::source`], so that an error chain printed with `{:#}` does not repeat it.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Setting up the in-RAM index (its writer or reader) failed.
    #[error("could not set up the in-RAM index: {error}")]
    Create {
        /// What tantivy reported.
        error: TantivyError,
    },
    /// Handing a file's document to the indexing thread failed; its batch was dropped.
    #[error("could not index the files of leaf {leaf}: {error}")]
    Add {
        /// The leaf whose files were being added.
        leaf: LeafKey,
        /// What tantivy reported.
        error: TantivyError,
    },
    /// Committing failed; the batch was rolled back.
    #[error("could not commit {changes} changes to the index (they were dropped): {error}")]
    Commit {
        /// How many changes (adds, removals) the commit held.
        changes: usize,
        /// What tantivy reported.
        error: TantivyError,
    },
    /// The writer thread is gone (it panicked): the index no longer changes.
    #[error("the index's writer thread is gone; the index no longer changes")]
    WriterGone,
    /// Reloading the reader after a commit failed; searches may not see the change yet.
    #[error("could not reload the index reader after a commit: {error}")]
    Reload {
        /// What tantivy reported.
        error: TantivyError,
    },
    /// Running a search failed.
    #[error("search failed: {error}")]
    Search {
        /// What tantivy reported.
        error: TantivyError,
    },
    /// Reading the stored record of a hit failed.
    #[error("could not read the stored record of a hit: {error}")]
    Fetch {
        /// What tantivy reported.
        error: TantivyError,
    },
    /// A stored record lacks a field every record is written with (a bug, not bad input).
    #[error("stored record has no valid `{field}` field")]
    Corrupt {
        /// The schema field that is missing or of the wrong type.
        field: &'static str,
    },
    /// The query has more distinct words than [`crate::MAX_QUERY_WORDS`].
    #[error("query has {words} words, at most {max} are allowed")]
    QueryTooLong {
        /// How many distinct words the query has after tokenising.
        words: usize,
        /// The maximum ([`crate::MAX_QUERY_WORDS`]).
        max: usize,
    },
}
