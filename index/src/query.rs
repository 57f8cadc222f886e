//! Turning a [`wire::Search`] into a tantivy query.
//!
//! Words: one clause per distinct word, all required (AND). A word's clause is the best of its
//! matches over the word fields ([`Fields::word_fields`], boosted), plus a little of the others
//! (a dis-max with a tie breaker), so a word repeated in folder, tag and name does not count
//! three times over. Scores are BM25. An id: a constant score. Filters are required clauses that
//! add nothing to the score.

use std::ops::Bound;

use tantivy::query::{
    BooleanQuery, BoostQuery, ConstScoreQuery, DisjunctionMaxQuery, Occur, Query, RangeQuery,
    TermQuery,
};
use tantivy::schema::IndexRecordOption;
use tantivy::tokenizer::TextAnalyzer;
use tantivy::Term;
use wire::{Filter, Search, Terms};

use crate::schema::{words, Fields};
use crate::{IndexError, MAX_QUERY_WORDS};

/// How much of a word's matches in its other fields adds to its best one.
const TIE_BREAKER: f32 = 0.2;

/// The score every hit of an id search gets.
pub(crate) const ID_SCORE: f32 = 1.0;

/// The query for `search`, or `None` when it can match nothing (no words in the text).
pub(crate) fn build(
    fields: &Fields,
    analyzer: &mut TextAnalyzer,
    search: &Search,
) -> Result<Option<Box<dyn Query>>, IndexError> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    match &search.terms {
        Terms::Words(text) => {
            let words = words(analyzer, text);
            if words.len() > MAX_QUERY_WORDS {
                return Err(IndexError::QueryTooLong {
                    words: words.len(),
                    max: MAX_QUERY_WORDS,
                });
            }
            if words.is_empty() {
                return Ok(None);
            }
            for word in &words {
                clauses.push((Occur::Must, word_query(fields, word)));
            }
        }
        Terms::Id(id) => {
            let term = Term::from_field_bytes(fields.id, id.as_bytes());
            let query = TermQuery::new(term, IndexRecordOption::Basic);
            clauses.push((
                Occur::Must,
                Box::new(ConstScoreQuery::new(Box::new(query), ID_SCORE)),
            ));
        }
    }
    for filter in filter_queries(fields, &search.filter) {
        // A score of zero: filters decide what matches, not how well.
        clauses.push((Occur::Must, Box::new(ConstScoreQuery::new(filter, 0.0))));
    }
    Ok(Some(Box::new(BooleanQuery::new(clauses))))
}

/// One word, in any of the word fields.
fn word_query(fields: &Fields, word: &str) -> Box<dyn Query> {
    let per_field = fields
        .word_fields()
        .into_iter()
        .map(|(field, boost)| {
            let term = TermQuery::new(
                Term::from_field_text(field, word),
                IndexRecordOption::WithFreqs,
            );
            Box::new(BoostQuery::new(Box::new(term), boost)) as Box<dyn Query>
        })
        .collect();
    Box::new(DisjunctionMaxQuery::with_tie_breaker(
        per_field,
        TIE_BREAKER,
    ))
}

/// The filters as queries, each matching the files that pass it.
fn filter_queries(fields: &Fields, filter: &Filter) -> Vec<Box<dyn Query>> {
    let mut out: Vec<Box<dyn Query>> = Vec::new();
    // Be lenient about how a user writes it: ".MP3" is "mp3". Empty means no filter.
    let ext = filter
        .ext
        .as_deref()
        .map(|e| e.trim().trim_start_matches('.').to_lowercase())
        .filter(|e| !e.is_empty());
    if let Some(ext) = ext {
        let term = Term::from_field_text(fields.ext, &ext);
        out.push(Box::new(TermQuery::new(term, IndexRecordOption::Basic)));
    }
    if filter.min_size.is_some() || filter.max_size.is_some() {
        let bound = |size: Option<u64>| match size {
            Some(size) => Bound::Included(Term::from_field_u64(fields.size, size)),
            None => Bound::Unbounded,
        };
        out.push(Box::new(RangeQuery::new(
            bound(filter.min_size),
            bound(filter.max_size),
        )));
    }
    out
}
