//! Browsing other leaves and fetching one of their folders ([`crate::browse`]).

use super::*;
use crate::browse::{BrowseError, Listing};

impl Node {
    /// Where the leaf `source` names serves: `source` is its address (`IP:PORT`), or its node
    /// id or at least the first 8 hex digits of it, as a hit of this node's searches gave it
    /// (the address its super-peer saw it at, never one it claimed; [`crate::seen`]). A leaf
    /// found by id is asked to connect back as its hit said, as a download's sources are, and
    /// its id is returned too: whoever answers at that address must prove to be that node (an
    /// address met days ago may be someone else's now).
    pub fn locate(&self, source: &str) -> Result<(SocketAddr, Option<NodeId>), NodeError> {
        if let Ok(addr) = source.trim().parse::<SocketAddr>() {
            return Ok((addr, None));
        }
        let state = &self.inner.state;
        let found = state.seen.lock().unwrap().find(source)?;
        state.reverse.note(&found);
        Ok((found.addr, Some(found.node)))
    }

    /// Lists what the leaf serving at `addr` shares: dialled, and asked to connect back too
    /// when a hit named its super-peer (at once if the hit said it may not be reachable, else
    /// once dialling failed or took a while).
    pub async fn browse(&self, addr: SocketAddr) -> Result<Listing, BrowseError> {
        self.browse_node(addr, None).await
    }

    /// [`Node::browse`], refused unless the leaf that answers proves to be `node` (if given).
    pub async fn browse_node(
        &self,
        addr: SocketAddr,
        node: Option<NodeId>,
    ) -> Result<Listing, BrowseError> {
        let back = (self.connect_back())(addr);
        // (Only `addr` is dialled: its own reachability decides.)
        let route = self.inner.state.reverse.route(addr);
        let later = route.is_some_and(|r| r.reachable == Some(true));
        crate::browse::browse(&self.inner.state, addr, node, back, later).await
    }

    /// [`Node::browse`] of the leaf `source` names ([`Node::locate`]).
    pub async fn locate_and_browse(&self, source: &str) -> Result<Listing, NodeError> {
        let (addr, node) = self.locate(source)?;
        self.browse_node(addr, node)
            .await
            .map_err(|e| NodeError::Browse(e.to_string()))
    }

    /// Downloads every file of `folder` of the leaf at `addr` (and its subfolders) into
    /// `out/FOLDER/`, keeping the layout; each file comes from all of its sources, and at most
    /// `--max-downloads` at a time. `each` hears how each file ended. With `node`, the leaf
    /// must prove to be that node.
    pub async fn get_folder(
        &self,
        addr: SocketAddr,
        node: Option<NodeId>,
        folder: &str,
        out: &Path,
        again: bool,
        each: impl Fn(FileId, &Result<DownloadReport, NodeError>) + Clone + Send + 'static,
    ) -> Result<usize, NodeError> {
        let listing = self
            .browse_node(addr, node)
            .await
            .map_err(|e| NodeError::Browse(e.to_string()))?;
        let files = crate::browse::folder_files(&listing, folder, out);
        if files.is_empty() {
            return Err(NodeError::Browse(format!(
                "{addr} shares no folder {folder:?} (leaf browse {addr} lists what it shares)"
            )));
        }
        let n = files.len();
        // The same content in several places of the folder (a cover in each CD's folder) is
        // fetched once and copied to the others.
        let mut groups: Vec<(FileId, Vec<PathBuf>)> = Vec::new();
        let mut at: HashMap<FileId, usize> = HashMap::new();
        for (f, dir) in files {
            match at.get(&f.id) {
                Some(&i) => groups[i].1.push(dir),
                None => {
                    at.insert(f.id, groups.len());
                    groups.push((f.id, vec![dir]));
                }
            }
        }
        let tasks: Vec<_> = groups
            .into_iter()
            .map(|(id, dirs)| {
                let (node, each) = (self.clone(), each.clone());
                transport::rt::spawn(async move {
                    let dir = &dirs[0];
                    let got = match std::fs::create_dir_all(dir) {
                        Err(e) => Err(NodeError::Browse(format!(
                            "cannot make the folder {}: {e}",
                            dir.display()
                        ))),
                        Ok(()) if again => node.get_again(id, dir, |_| {}).await,
                        Ok(()) => node.get(id, dir, |_| {}).await,
                    };
                    if let Some(report) = got.as_ref().ok().filter(|r| !r.already_had) {
                        for other in &dirs[1..] {
                            if let Err(e) = copy_into(&report.path, other) {
                                log::warn!("{e}");
                            }
                        }
                    }
                    each(id, &got);
                })
            })
            .collect();
        for t in tasks {
            t.await;
        }
        Ok(n)
    }
}

/// Copies the finished file `from` into folder `dir` under its name, unless a file of that
/// name is there.
fn copy_into(from: &Path, dir: &Path) -> Result<(), String> {
    let name = from.file_name().ok_or("a download with no file name")?;
    let to = dir.join(name);
    if to.exists() {
        return Ok(());
    }
    // Under a temporary name, then renamed: never a half-copied file under the final name.
    let tmp = dir.join(format!(".{}.copying", name.to_string_lossy()));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::copy(from, &tmp))
        .and_then(|_| std::fs::rename(&tmp, &to))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot copy {} to {}: {e}", from.display(), to.display())
        })
}
