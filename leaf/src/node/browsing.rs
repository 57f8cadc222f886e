//! Browsing other leaves and fetching one of their folders ([`crate::browse`]).

use super::*;
use crate::browse::{BrowseError, Listing};

impl Node {
    /// Lists what the leaf serving at `addr` shares.
    pub async fn browse(&self, addr: SocketAddr) -> Result<Listing, BrowseError> {
        crate::browse::browse(&self.inner.state, addr).await
    }

    /// Downloads every file of `folder` of the leaf at `addr` (and its subfolders) into
    /// `out/FOLDER/`, keeping the layout; each file comes from all of its sources, and at most
    /// `--max-downloads` at a time. `each` hears how each file ended.
    pub async fn get_folder(
        &self,
        addr: SocketAddr,
        folder: &str,
        out: &Path,
        again: bool,
        each: impl Fn(FileId, &Result<DownloadReport, NodeError>) + Clone + Send + 'static,
    ) -> Result<usize, NodeError> {
        let listing = self
            .browse(addr)
            .await
            .map_err(|e| NodeError::Browse(e.to_string()))?;
        let files = crate::browse::folder_files(&listing, folder, out);
        if files.is_empty() {
            return Err(NodeError::Browse(format!(
                "{addr} shares no folder {folder:?} (leaf browse {addr} lists what it shares)"
            )));
        }
        let tasks: Vec<_> = files
            .into_iter()
            .map(|(f, dir)| {
                let (node, id, each) = (self.clone(), f.id, each.clone());
                smol::spawn(async move {
                    let got = match std::fs::create_dir_all(&dir) {
                        Err(e) => Err(NodeError::Browse(format!(
                            "cannot make the folder {}: {e}",
                            dir.display()
                        ))),
                        Ok(()) if again => node.get_again(id, &dir, |_| {}).await,
                        Ok(()) => node.get(id, &dir, |_| {}).await,
                    };
                    each(id, &got);
                })
            })
            .collect();
        let n = tasks.len();
        for t in tasks {
            t.await;
        }
        Ok(n)
    }
}
