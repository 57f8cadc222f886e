//! [`Index`]: the files of a super-peer's leaves, in a tantivy index in RAM.
//!
//! Invariant: at most one document per (leaf, file id). [`Index::add_files`] deletes the record's
//! key ([`Fields::leaf_file_term`]) before adding it, in the same commit; tantivy applies a
//! delete to the documents added before it only, so the new document survives and the old one
//! goes. Every method that changes the index commits and reloads the reader before it returns,
//! so the next search sees the change.

use std::fmt;

use tantivy::collector::TopDocs;
use tantivy::schema::TantivyDocument;
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{IndexReader, IndexWriter, ReloadPolicy, Term};
use wire::{FileId, FileRecord, Search};

use crate::query;
use crate::schema::{self, Fields};
use crate::{IndexError, LeafKey};

/// The writer's memory budget. Segments are flushed when it fills; tantivy's minimum is 15 MB.
const WRITER_MEMORY: usize = 20_000_000;

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexHit {
    /// The leaf that registered the file.
    pub leaf: LeafKey,
    /// The file, as the leaf registered it.
    pub file: FileRecord,
    /// Relevance: BM25 for word searches (higher is better), a constant for id searches.
    pub score: f32,
}

/// The files registered by a super-peer's leaves, searchable by words and by content id.
pub struct Index {
    fields: Fields,
    writer: IndexWriter<TantivyDocument>,
    reader: IndexReader,
    /// The same analyzer the word fields use, for tokenising queries.
    analyzer: TextAnalyzer,
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("records", &self.len())
            .finish_non_exhaustive()
    }
}

impl Index {
    /// An empty index in RAM, with one indexing thread.
    pub fn new() -> Result<Index, IndexError> {
        let (schema, fields) = Fields::schema();
        let index = tantivy::Index::create_in_ram(schema);
        schema::register(index.tokenizers());
        let create = |error| IndexError::Create { error };
        let writer = index
            .writer_with_num_threads(1, WRITER_MEMORY)
            .map_err(create)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(create)?;
        Ok(Index {
            fields,
            writer,
            reader,
            analyzer: schema::analyzer(),
        })
    }

    /// Adds files registered by `leaf`; a file whose id `leaf` registered before replaces the
    /// old record. Searches see the files when this returns.
    pub fn add_files(&mut self, leaf: LeafKey, files: &[FileRecord]) -> Result<(), IndexError> {
        if files.is_empty() {
            return Ok(());
        }
        for file in files {
            self.writer
                .delete_term(self.fields.leaf_file_term(leaf, &file.id));
            if let Err(error) = self.writer.add_document(self.fields.document(leaf, file)) {
                self.roll_back();
                return Err(IndexError::Add { leaf, error });
            }
        }
        self.commit(leaf, "adding files")?;
        log::debug!("indexed {} files of leaf {leaf}", files.len());
        Ok(())
    }

    /// Removes the files with these ids that `leaf` registered (the same ids registered by other
    /// leaves stay). Ids it never registered are ignored.
    pub fn remove_files(&mut self, leaf: LeafKey, ids: &[FileId]) -> Result<(), IndexError> {
        if ids.is_empty() {
            return Ok(());
        }
        for id in ids {
            self.writer
                .delete_term(self.fields.leaf_file_term(leaf, id));
        }
        self.commit(leaf, "removing files")?;
        log::debug!("removed {} files of leaf {leaf}", ids.len());
        Ok(())
    }

    /// Removes every file `leaf` registered (when it disconnects).
    pub fn remove_leaf(&mut self, leaf: LeafKey) -> Result<(), IndexError> {
        self.writer
            .delete_term(Term::from_field_u64(self.fields.leaf, leaf));
        self.commit(leaf, "removing all files")?;
        log::debug!("removed all files of leaf {leaf}");
        Ok(())
    }

    /// At most `limit` hits for `search`, best first.
    ///
    /// Words: every word of the text (tokenised like the indexed fields: case and accents do not
    /// matter) must match in the file's name, folders, artist, album, title, genre or year; a
    /// text without words matches nothing. Id: every record of that content id, from any leaf.
    /// The filter applies to both. More than [`crate::MAX_QUERY_WORDS`] distinct words is
    /// [`IndexError::QueryTooLong`].
    pub fn search(&self, search: &Search, limit: usize) -> Result<Vec<IndexHit>, IndexError> {
        // Check the query before anything else, so a too-long query is an error even on an
        // empty index.
        let query = query::build(&self.fields, &mut self.analyzer.clone(), search)?;
        let searcher = self.reader.searcher();
        // TopDocs allocates for `limit` hits up front: never ask for more than there are.
        let limit = limit.min(usize::try_from(searcher.num_docs()).unwrap_or(usize::MAX));
        let Some(query) = query.filter(|_| limit > 0) else {
            return Ok(Vec::new());
        };
        let top = searcher
            .search(&query, &TopDocs::with_limit(limit).order_by_score())
            .map_err(|error| IndexError::Search { error })?;
        top.into_iter()
            .map(|(score, address)| {
                let doc: TantivyDocument = searcher
                    .doc(address)
                    .map_err(|error| IndexError::Fetch { error })?;
                let (leaf, file) = self.fields.record(&doc)?;
                Ok(IndexHit { leaf, file, score })
            })
            .collect()
    }

    /// The number of (leaf, file) records.
    pub fn len(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// True when no leaf has any file registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Commits what was queued and makes it visible to searches; on failure, drops it.
    fn commit(&mut self, leaf: LeafKey, action: &'static str) -> Result<(), IndexError> {
        if let Err(error) = self.writer.commit() {
            self.roll_back();
            return Err(IndexError::Commit {
                leaf,
                action,
                error,
            });
        }
        self.reader
            .reload()
            .map_err(|error| IndexError::Reload { error })
    }

    /// Drops what was queued since the last commit, so a failed change is not committed later
    /// with the next one.
    fn roll_back(&mut self) {
        if let Err(error) = self.writer.rollback() {
            log::error!("index: rolling back a failed change also failed: {error}");
        }
    }
}
