//! The Browse tab's state: another leaf's listing as a folder tree whose folders fold and
//! unfold and whose rows can be marked, and what a download of the marked rows (or the
//! selected one) fetches.

use std::collections::{BTreeSet, HashMap};

use wire::{FileId, FileRecord};

use crate::browse::Listing;

/// One row of the tree as shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Row {
    /// A folder: its path in the listing, name, depth, whether it is unfolded, and the files
    /// and bytes in it and below.
    Folder {
        path: String,
        name: String,
        depth: usize,
        open: bool,
        files: usize,
        bytes: u64,
    },
    /// A file.
    File {
        path: String,
        name: String,
        depth: usize,
        size: u64,
        id: FileId,
    },
}

impl Row {
    /// Its path in the listing (what marks are kept by).
    pub fn path(&self) -> &str {
        match self {
            Row::Folder { path, .. } | Row::File { path, .. } => path,
        }
    }
}

/// What a download from the Browse tab fetches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fetch {
    /// Folders (paths in the listing), each with everything below it.
    pub folders: Vec<String>,
    /// Single files.
    pub files: Vec<FileId>,
}

/// A browsed leaf's listing, as the Browse tab shows it.
#[derive(Debug, Clone)]
pub struct BrowseView {
    /// The listing, files in path order.
    pub listing: Listing,
    /// Unfolded folders, by path.
    open: BTreeSet<String>,
    /// Marked folders and files, by path.
    pub marked: BTreeSet<String>,
    /// The selected row.
    pub selected: usize,
    /// Files and bytes in each folder and below.
    totals: HashMap<String, (usize, u64)>,
    rows: Vec<Row>,
}

impl BrowseView {
    /// A view of `listing` with every folder folded.
    pub fn new(mut listing: Listing) -> Self {
        listing.files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut totals: HashMap<String, (usize, u64)> = HashMap::new();
        for f in &listing.files {
            for dir in folders_of(&f.path) {
                let t = totals.entry(dir.to_string()).or_default();
                t.0 += 1;
                t.1 += f.size;
            }
        }
        let mut view = BrowseView {
            listing,
            open: BTreeSet::new(),
            marked: BTreeSet::new(),
            selected: 0,
            totals,
            rows: Vec::new(),
        };
        view.rebuild();
        view
    }

    /// The rows shown: every folder whose parents are unfolded, and the files of unfolded
    /// folders.
    pub fn rows(&self) -> &[Row] {
        &self.rows
    }

    /// Moves the selection by `by` rows, within the rows shown.
    pub fn move_selection(&mut self, by: isize) {
        let last = self.rows.len().saturating_sub(1) as isize;
        self.selected = (self.selected as isize + by).clamp(0, last) as usize;
    }

    /// Folds or unfolds the selected folder (on a file: marks or unmarks it).
    pub fn toggle_open(&mut self) {
        match self.rows.get(self.selected) {
            Some(Row::Folder { path, .. }) => {
                let path = path.clone();
                if !self.open.remove(&path) {
                    self.open.insert(path);
                }
                self.rebuild();
            }
            Some(Row::File { .. }) => self.toggle_mark(),
            None => {}
        }
    }

    /// Marks or unmarks the selected row.
    pub fn toggle_mark(&mut self) {
        if let Some(row) = self.rows.get(self.selected) {
            let path = row.path().to_string();
            if !self.marked.remove(&path) {
                self.marked.insert(path);
            }
        }
    }

    /// What to download: the marked rows, or else the selected one.
    pub fn fetch(&self) -> Fetch {
        let mut fetch = Fetch::default();
        let by_path: HashMap<&str, &FileRecord> = self
            .listing
            .files
            .iter()
            .map(|f| (f.path.as_str(), f))
            .collect();
        let mut add = |path: &str| match by_path.get(path) {
            Some(f) => fetch.files.push(f.id),
            None => fetch.folders.push(path.to_string()),
        };
        if self.marked.is_empty() {
            if let Some(row) = self.rows.get(self.selected) {
                add(row.path());
            }
        } else {
            self.marked.iter().for_each(|p| add(p));
        }
        fetch
    }

    fn rebuild(&mut self) {
        let mut rows = Vec::new();
        let mut prev: Vec<&str> = Vec::new();
        for f in &self.listing.files {
            let parts: Vec<&str> = f.path.split('/').collect();
            let (dirs, name) = parts.split_at(parts.len() - 1);
            let common = prev.iter().zip(dirs).take_while(|(a, b)| a == b).count();
            for depth in common..dirs.len() {
                let path = dirs[..=depth].join("/");
                if (0..depth).all(|d| self.open.contains(&dirs[..=d].join("/"))) {
                    let (files, bytes) = self.totals.get(&path).copied().unwrap_or_default();
                    rows.push(Row::Folder {
                        name: dirs[depth].to_string(),
                        open: self.open.contains(&path),
                        path,
                        depth,
                        files,
                        bytes,
                    });
                }
            }
            if (0..dirs.len()).all(|d| self.open.contains(&dirs[..=d].join("/"))) {
                rows.push(Row::File {
                    path: f.path.clone(),
                    name: name[0].to_string(),
                    depth: dirs.len(),
                    size: f.size,
                    id: f.id,
                });
            }
            prev = dirs.to_vec();
        }
        self.rows = rows;
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
    }
}

/// The folders a path is in: `a/b/c.mp3` is in `a` and `a/b`.
fn folders_of(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(move |(i, _)| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(paths: &[&str]) -> BrowseView {
        BrowseView::new(crate::browse::test_listing(paths, 10))
    }

    fn shown(v: &BrowseView) -> Vec<String> {
        v.rows()
            .iter()
            .map(|r| match r {
                Row::Folder {
                    name,
                    depth,
                    open,
                    files,
                    ..
                } => format!(
                    "{}{}{name}/ {files}",
                    "  ".repeat(*depth),
                    if *open { "-" } else { "+" }
                ),
                Row::File { name, depth, .. } => format!("{}{name}", "  ".repeat(*depth)),
            })
            .collect()
    }

    #[test]
    fn folders_start_folded_and_unfold_one_level_at_a_time() {
        let mut v = view(&[
            "music/A/1.flac",
            "music/A/CD2/2.flac",
            "music/B/3.flac",
            "music/top.mp3",
        ]);
        assert_eq!(shown(&v), ["+music/ 4"]);
        v.toggle_open();
        assert_eq!(shown(&v), ["-music/ 4", "  +A/ 2", "  +B/ 1", "  top.mp3"]);
        v.move_selection(1);
        v.toggle_open();
        assert_eq!(
            shown(&v),
            [
                "-music/ 4",
                "  -A/ 2",
                "    1.flac",
                "    +CD2/ 1",
                "  +B/ 1",
                "  top.mp3"
            ]
        );
        // Folding a parent hides everything below, and unfolding it shows what was open.
        v.selected = 0;
        v.toggle_open();
        assert_eq!(shown(&v), ["+music/ 4"]);
        v.toggle_open();
        assert_eq!(shown(&v).len(), 6);
    }

    #[test]
    fn marked_rows_or_else_the_selected_one_are_fetched() {
        let mut v = view(&["music/A/1.flac", "music/A/2.flac", "music/B/3.flac"]);
        assert_eq!(
            v.fetch(),
            Fetch {
                folders: vec!["music".into()],
                files: vec![]
            },
            "the selected folder when nothing is marked"
        );
        v.toggle_open();
        v.move_selection(1); // A
        v.toggle_mark();
        v.toggle_open();
        v.move_selection(2); // A/2.flac
        v.toggle_mark();
        assert_eq!(
            v.fetch(),
            Fetch {
                folders: vec!["music/A".into()],
                files: vec![FileId([1; 32])]
            }
        );
        v.move_selection(100);
        assert_eq!(v.selected, v.rows().len() - 1, "selection stays on a row");
    }
}
