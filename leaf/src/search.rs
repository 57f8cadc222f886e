//! Search results as a person sees them: hits grouped by content id, one row per file.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::path::PathBuf;

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
    /// Where this node already has the file (shared, or downloaded before), if it does.
    #[serde(default)]
    pub have: Option<PathBuf>,
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
            have: None,
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

/// What a person may ask of results beyond what super-peers filter (words, extension, size):
/// audio duration and bitrate, from the tags the sharer's node read. A result without the tag
/// a bound needs is left out, as Soulseek clients do with files lacking attributes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResultFilter {
    /// Seconds at least.
    pub min_duration_s: Option<u32>,
    /// Seconds at most.
    pub max_duration_s: Option<u32>,
    /// kbit/s at least.
    pub min_bitrate_kbps: Option<u32>,
    /// kbit/s at most.
    pub max_bitrate_kbps: Option<u32>,
}

impl ResultFilter {
    /// Whether `r` passes every bound set.
    pub fn keeps(&self, r: &SearchResult) -> bool {
        let within = |value: Option<u32>, min: Option<u32>, max: Option<u32>| {
            if min.is_none() && max.is_none() {
                return true;
            }
            value.is_some_and(|v| min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m))
        };
        within(r.tags.duration_s, self.min_duration_s, self.max_duration_s)
            && within(
                r.tags.bitrate_kbps,
                self.min_bitrate_kbps,
                self.max_bitrate_kbps,
            )
    }
}

/// The order of results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    /// Best match first (then most sources, then name).
    #[default]
    Relevance,
    /// Largest first.
    Size,
    /// Most sources first.
    Sources,
    /// By name, A to Z, ignoring case.
    Name,
}

/// Sorts `results` by `by`; ties keep their order (relevance, as [`group_hits`] gives it).
pub fn sort_results(results: &mut [SearchResult], by: SortBy) {
    match by {
        SortBy::Relevance => {}
        SortBy::Size => results.sort_by_key(|r| Reverse(r.size)),
        SortBy::Sources => results.sort_by_key(|r| Reverse(r.sources.len())),
        SortBy::Name => results.sort_by_cached_key(|r| r.name.to_lowercase()),
    }
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
                reachable: None,
                via: None,
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

    #[test]
    fn duration_and_bitrate_bounds_leave_out_files_outside_or_without_them() {
        let mut rows = group_hits([
            hit(1, 1, "short.mp3", 1.0),
            hit(2, 2, "long.flac", 1.0),
            hit(3, 3, "untagged.mp3", 1.0),
        ]);
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows[1].tags.duration_s = Some(95);
        rows[1].tags.bitrate_kbps = Some(128);
        rows[0].tags.duration_s = Some(400);
        rows[0].tags.bitrate_kbps = Some(900);
        let kept = |f: ResultFilter| -> Vec<&str> {
            rows.iter()
                .filter(|r| f.keeps(r))
                .map(|r| r.name.as_str())
                .collect()
        };
        assert_eq!(
            kept(ResultFilter::default()),
            ["long.flac", "short.mp3", "untagged.mp3"],
            "no bound: everything, tagged or not"
        );
        let at_least_2_min = ResultFilter {
            min_duration_s: Some(120),
            ..ResultFilter::default()
        };
        assert_eq!(kept(at_least_2_min), ["long.flac"]);
        let at_most_2_min = ResultFilter {
            max_duration_s: Some(120),
            ..ResultFilter::default()
        };
        assert_eq!(kept(at_most_2_min), ["short.mp3"], "untagged is left out");
        let bitrate = ResultFilter {
            min_bitrate_kbps: Some(128),
            max_bitrate_kbps: Some(320),
            ..ResultFilter::default()
        };
        assert_eq!(kept(bitrate), ["short.mp3"], "bounds are inclusive");
    }

    #[test]
    fn results_sort_by_size_sources_or_name_and_ties_keep_relevance() {
        let mut rows = group_hits([
            hit(1, 1, "b.mp3", 3.0),
            hit(2, 2, "A.mp3", 2.0),
            hit(2, 3, "A.mp3", 2.0),
            hit(3, 4, "c.mp3", 1.0),
        ]);
        rows[2].size = 99;
        let names = |rows: &[SearchResult]| -> Vec<String> {
            rows.iter().map(|r| r.name.clone()).collect()
        };
        sort_results(&mut rows, SortBy::Relevance);
        assert_eq!(names(&rows), ["b.mp3", "A.mp3", "c.mp3"]);
        sort_results(&mut rows, SortBy::Size);
        assert_eq!(names(&rows), ["c.mp3", "b.mp3", "A.mp3"], "largest first");
        sort_results(&mut rows, SortBy::Sources);
        assert_eq!(names(&rows), ["A.mp3", "c.mp3", "b.mp3"], "ties stay");
        sort_results(&mut rows, SortBy::Name);
        assert_eq!(names(&rows), ["A.mp3", "b.mp3", "c.mp3"], "case ignored");
    }
}
