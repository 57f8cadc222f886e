//! [`Index`]: the files of a super-peer's leaves, in a tantivy index in RAM.
//!
//! Invariant: at most one document per (leaf, file id). Adding a file deletes the record's key
//! ([`Fields::leaf_file_term`]) before adding it, in the same commit; tantivy applies a delete
//! to the documents added before it only, so the new document survives and the old one goes.
//!
//! One thread owns the tantivy writer and applies changes in the order they were made. It
//! commits (and reloads the reader) whenever no more changes are waiting, or [`BATCH_TIME`]
//! after the first change of a batch: a change on a quiet index is searchable at once, and
//! changes that come faster than commits are committed together (group commit) instead of one
//! commit each. A commit builds a segment and can take tens of milliseconds; the caller of
//! [`Index::queue_add`] and its kind does not wait for one, unless [`CHANGES_QUEUED`] changes
//! are already waiting (back-pressure: the index is behind).
//!
//! A failure (tantivy's indexing thread gone, a commit that fails: neither happens short of a
//! bug or no memory) drops the whole batch it is in, and is logged, and returned to whoever
//! waits on that batch's commit.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tantivy::collector::TopDocs;
use tantivy::schema::TantivyDocument;
use tantivy::tokenizer::TextAnalyzer;
use tantivy::{IndexReader, IndexWriter, ReloadPolicy, TantivyError, Term};
use wire::{FileId, FileRecord, Search};

use crate::query;
use crate::schema::{self, Fields};
use crate::{IndexError, LeafKey};

/// The writer's memory budget. Segments are flushed when it fills; tantivy's minimum is 15 MB.
const WRITER_MEMORY: usize = 20_000_000;

/// Changes waiting for the writer thread at most; a caller that finds the queue full waits.
/// One change holds one Register or Withdraw message's records (at most `wire::MAX_BODY`,
/// 1 MiB, on the wire), so the queue holds some tens of MiB at worst.
pub const CHANGES_QUEUED: usize = 64;

/// A batch is committed this long after its first change at the latest, even while more keep
/// coming: changes become searchable within about this (plus the commit) under any load.
pub const BATCH_TIME: Duration = Duration::from_millis(100);

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

/// A change for the writer thread.
enum Change {
    Add(LeafKey, Vec<FileRecord>),
    Remove(LeafKey, Vec<FileId>),
    RemoveLeaf(LeafKey),
    /// Commit what came before, and say how it went.
    Commit(mpsc::SyncSender<Result<(), IndexError>>),
}

/// The files registered by a super-peer's leaves, searchable by words and by content id.
pub struct Index {
    fields: Fields,
    /// To the writer thread.
    changes: mpsc::SyncSender<Change>,
    /// Set when the index is dropped: the writer thread stops without applying what is left.
    abandoned: Arc<AtomicBool>,
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

impl Drop for Index {
    fn drop(&mut self) {
        // The writer thread ends at its next change or when the queue closes (now), without
        // the work of changes nobody will search; dropping must not wait for it (a super-peer
        // stopping drops its index on the thread its Goodbyes are written from).
        self.abandoned.store(true, Ordering::Relaxed);
    }
}

impl Index {
    /// An empty index in RAM, with its writer thread and one indexing thread.
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
        let (tx, rx) = mpsc::sync_channel(CHANGES_QUEUED);
        let abandoned = Arc::new(AtomicBool::new(false));
        let thread = Writer {
            writer,
            reader: IndexReader::clone(&reader),
            fields: fields.clone(),
            staged: 0,
            failed: None,
            abandoned: abandoned.clone(),
        };
        std::thread::Builder::new()
            .name("index-writer".into())
            .spawn(move || thread.run(&rx))
            .map_err(|e| IndexError::Create {
                error: TantivyError::SystemError(format!("starting the writer thread: {e}")),
            })?;
        Ok(Index {
            fields,
            changes: tx,
            abandoned,
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
        self.queue_add(leaf, files.to_vec());
        self.commit()?;
        log::debug!("indexed {} files of leaf {leaf}", files.len());
        Ok(())
    }

    /// Removes the files with these ids that `leaf` registered (the same ids registered by other
    /// leaves stay). Ids it never registered are ignored. Searches no longer see them when this
    /// returns.
    pub fn remove_files(&mut self, leaf: LeafKey, ids: &[FileId]) -> Result<(), IndexError> {
        if ids.is_empty() {
            return Ok(());
        }
        self.queue_remove(leaf, ids.to_vec());
        self.commit()
    }

    /// Removes every file `leaf` registered (when it disconnects).
    pub fn remove_leaf(&mut self, leaf: LeafKey) -> Result<(), IndexError> {
        self.queue_remove_leaf(leaf);
        self.commit()
    }

    /// As [`Index::add_files`], without waiting: searches see the files once the writer thread
    /// has committed them (at once on a quiet index, within about [`BATCH_TIME`] under load).
    /// A failure is logged, and drops the batch it is in.
    pub fn queue_add(&mut self, leaf: LeafKey, files: Vec<FileRecord>) {
        if !files.is_empty() {
            self.send(Change::Add(leaf, files));
        }
    }

    /// As [`Index::remove_files`], without waiting (see [`Index::queue_add`]).
    pub fn queue_remove(&mut self, leaf: LeafKey, ids: Vec<FileId>) {
        if !ids.is_empty() {
            self.send(Change::Remove(leaf, ids));
        }
    }

    /// As [`Index::remove_leaf`], without waiting (see [`Index::queue_add`]).
    pub fn queue_remove_leaf(&mut self, leaf: LeafKey) {
        self.send(Change::RemoveLeaf(leaf));
    }

    /// Waits until every change made so far is committed and searchable; the error of the
    /// first change since the last commit that failed (that commit's changes were dropped).
    pub fn commit(&mut self) -> Result<(), IndexError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.send(Change::Commit(tx));
        rx.recv().unwrap_or_else(|_| Err(writer_gone()))
    }

    fn send(&self, change: Change) {
        if self.changes.send(change).is_err() {
            // Only if the writer thread panicked; `commit` reports it.
            log::error!("index: {}", writer_gone());
        }
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
}

fn writer_gone() -> IndexError {
    IndexError::WriterGone
}

/// The writer thread's state: the only owner of the tantivy writer.
struct Writer {
    writer: IndexWriter<TantivyDocument>,
    reader: IndexReader,
    fields: Fields,
    /// Changes applied since the last commit.
    staged: usize,
    /// Why the batch being applied failed: it was rolled back, and its other changes are
    /// skipped; the batch's commit reports it.
    failed: Option<IndexError>,
    abandoned: Arc<AtomicBool>,
}

impl Writer {
    /// Applies changes in order until the queue closes or the index is dropped, committing
    /// whenever none are waiting or the batch is [`BATCH_TIME`] old.
    fn run(mut self, changes: &mpsc::Receiver<Change>) {
        while let Ok(first) = changes.recv() {
            let started = Instant::now();
            let mut next = Some(first);
            while let Some(change) = next {
                if self.abandoned.load(Ordering::Relaxed) {
                    return;
                }
                self.apply(change);
                next = (started.elapsed() < BATCH_TIME)
                    .then(|| changes.try_recv().ok())
                    .flatten();
            }
            if self.staged > 0 || self.failed.is_some() {
                // Logged where it failed.
                let _ = self.commit();
            }
        }
    }

    fn apply(&mut self, change: Change) {
        if self.failed.is_some() && !matches!(change, Change::Commit(_)) {
            // Part of a batch that failed: dropped with it.
            return;
        }
        match change {
            Change::Add(leaf, files) => {
                for file in &files {
                    self.writer
                        .delete_term(self.fields.leaf_file_term(leaf, &file.id));
                    if let Err(error) = self.writer.add_document(self.fields.document(leaf, file)) {
                        self.roll_back(IndexError::Add { leaf, error });
                        return;
                    }
                }
                log::debug!("indexing {} files of leaf {leaf}", files.len());
            }
            Change::Remove(leaf, ids) => {
                for id in &ids {
                    self.writer
                        .delete_term(self.fields.leaf_file_term(leaf, id));
                }
            }
            Change::RemoveLeaf(leaf) => {
                self.writer
                    .delete_term(Term::from_field_u64(self.fields.leaf, leaf));
            }
            Change::Commit(reply) => {
                let _ = reply.send(self.commit());
                return;
            }
        }
        self.staged += 1;
    }

    /// Commits the batch applied since the last commit and makes it searchable; or, if it
    /// failed, says why (it was rolled back).
    fn commit(&mut self) -> Result<(), IndexError> {
        let changes = std::mem::take(&mut self.staged);
        if let Some(failed) = self.failed.take() {
            return Err(failed);
        }
        if let Err(error) = self.writer.commit() {
            self.roll_back(IndexError::Commit { changes, error });
            return Err(self.failed.take().expect("just set"));
        }
        self.reader
            .reload()
            .map_err(|error| IndexError::Reload { error })
    }

    /// Drops the batch applied so far, so a failed change is not committed later with the next
    /// one, and keeps `error` for the batch's commit to report.
    fn roll_back(&mut self, error: IndexError) {
        log::error!("index: {error}; the changes since the last commit are dropped");
        if let Err(error) = self.writer.rollback() {
            log::error!("index: rolling back a failed change also failed: {error}");
        }
        self.failed.get_or_insert(error);
    }
}
