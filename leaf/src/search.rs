//! Search results as a person sees them: hits grouped by content id, one row per file.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use wire::{FileId, Hit, Source, Tags};

/// One distinct file found by a search, with every source that has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    /// Content id.
    pub id: FileId,
    /// File name (from the best-scored hit).
    pub name: String,
    /// Path below the sharer's folder (from the best-scored hit).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Tags (from the best-scored hit that has any).
    pub tags: Tags,
    /// Leaves that hold it, without repeats.
    pub sources: Vec<Source>,
    /// The best relevance score among its hits.
    pub score: f32,
}

/// Groups hits by content id: best score first, then most sources, then name.
pub fn group_hits(hits: impl IntoIterator<Item = Hit>) -> Vec<SearchResult> {
    let mut by_id: HashMap<FileId, SearchResult> = HashMap::new();
    for hit in hits {
        let r = by_id.entry(hit.file.id).or_insert_with(|| SearchResult {
            id: hit.file.id,
            name: hit.file.name().to_string(),
            path: hit.file.path.clone(),
            size: hit.file.size,
            tags: hit.file.tags.clone(),
            sources: Vec::new(),
            score: hit.score,
        });
        if hit.score > r.score {
            r.score = hit.score;
            r.name = hit.file.name().to_string();
            r.path = hit.file.path.clone();
        }
        if r.tags.is_empty() && !hit.file.tags.is_empty() {
            r.tags = hit.file.tags.clone();
        }
        if !r.sources.iter().any(|s| s.addr == hit.source.addr) {
            r.sources.push(hit.source);
        }
    }
    let mut out: Vec<SearchResult> = by_id.into_values().collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(b.sources.len().cmp(&a.sources.len()))
            .then(a.name.cmp(&b.name))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{FileRecord, NodeId};

    fn hit(id: u8, port: u16, name: &str, score: f32) -> Hit {
        Hit {
            source: Source {
                node: NodeId([port as u8; 32]),
                addr: ([127, 0, 0, 1], port).into(),
            },
            file: FileRecord {
                id: FileId([id; 32]),
                size: 10,
                path: format!("m/{name}"),
                tags: Tags::default(),
            },
            score,
        }
    }

    #[test]
    fn one_row_per_file_with_distinct_sources() {
        let rows = group_hits([
            hit(1, 1, "a.mp3", 1.0),
            hit(1, 2, "a copy.mp3", 2.0),
            hit(1, 2, "a copy.mp3", 2.0),
            hit(2, 3, "b.mp3", 0.5),
        ]);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].name, "a copy.mp3");
        assert_eq!(rows[0].sources.len(), 2);
        assert_eq!(rows[1].sources.len(), 1);
    }
}
