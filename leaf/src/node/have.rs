//! What the node already has: the files it shares, and the files it downloaded (the newest
//! [`HAVE_KEPT`], kept in [`HAVE_FILE`] in the data directory), so search results say so and
//! `get` points at the copy there is instead of fetching another.

use super::*;

/// The record of finished downloads, in the data directory.
pub(super) const HAVE_FILE: &str = "downloaded.cbor";
/// Finished downloads remembered at most (the oldest are forgotten first).
const HAVE_KEPT: usize = 10_000;

/// A file this node downloaded, as it was when the download finished.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Downloaded {
    pub(super) id: FileId,
    pub(super) path: PathBuf,
    pub(super) size: u64,
    /// Modification time (seconds, nanoseconds since the epoch) when it finished.
    pub(super) mtime: (i64, u32),
}

impl Downloaded {
    /// Still there, with the size and modification time it finished with (a file changed since
    /// may no longer be this content).
    fn unchanged(&self) -> bool {
        std::fs::metadata(&self.path)
            .is_ok_and(|m| m.is_file() && m.len() == self.size && share::mtime_of(&m) == self.mtime)
    }
}

/// The record as read at start: a missing or damaged file is an empty record (logged).
pub(super) fn load_downloaded(data_dir: &Path) -> Vec<Downloaded> {
    let path = data_dir.join(HAVE_FILE);
    transport::store::load_or_log(&path, "starting without the record of finished downloads")
        .unwrap_or_default()
}

impl Node {
    /// Where this node already has the file `id`: a shared file unchanged since it was hashed,
    /// or a file it downloaded, unchanged since.
    pub fn already_have(&self, id: FileId) -> Option<PathBuf> {
        if let Some(f) = self.inner.state.shares.read().unwrap().get(&id) {
            return Some(f.local.clone());
        }
        let downloaded = self.inner.downloaded.lock().unwrap();
        downloaded
            .iter()
            .rev()
            .find(|d| d.id == id && d.unchanged())
            .map(|d| d.path.clone())
    }

    /// Marks the results this node already has (see [`Node::already_have`]).
    pub(super) fn mark_have(&self, results: &mut [SearchResult]) {
        for r in results {
            r.have = self.already_have(r.id);
        }
    }

    /// Records a finished download, so later searches and gets know it is here.
    pub(super) fn remember_download(&self, report: &DownloadReport) {
        let Ok(meta) = std::fs::metadata(&report.path) else {
            return;
        };
        let entry = Downloaded {
            id: report.id,
            path: report.path.clone(),
            size: meta.len(),
            mtime: share::mtime_of(&meta),
        };
        let mut downloaded = self.inner.downloaded.lock().unwrap();
        downloaded.retain(|d| d.path != entry.path);
        downloaded.push(entry);
        let extra = downloaded.len().saturating_sub(HAVE_KEPT);
        downloaded.drain(..extra);
        let path = self.inner.state.data_dir.join(HAVE_FILE);
        if let Err(e) = transport::store::save(&path, &*downloaded) {
            log::warn!(
                "cannot save the record of finished downloads {}: {e}",
                path.display()
            );
        }
    }
}
