//! The node's downloads: starting one (at most one per file), tracking its progress for status,
//! the queue kept on disk to resume after a restart, cancelling and discarding, and serving a
//! file while it downloads and seeding it after.

use super::*;
use rand::seq::SliceRandom;

/// A download the node has accepted and not finished, kept on disk to resume after a restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(super) struct Pending {
    pub(super) id: FileId,
    pub(super) out: PathBuf,
    /// Asked for with `again` (see [`Node::get_again`]).
    #[serde(default)]
    pub(super) again: bool,
}

/// A download as the node tracks it: what status shows, and the last speed sample.
pub(super) struct Tracked {
    pub(super) info: DownloadInfo,
    /// The last speed sample: when, and how many bytes were done then (none yet: the first
    /// report after a resume must not count the resumed bytes as speed).
    pub(super) sample: Option<(Instant, u64)>,
}

/// The node's downloads, kept by one owner: what status shows of each, and how to stop the
/// running ones. (The queue file on disk, of downloads to resume after a restart, has a lock of
/// its own, `Inner::pending_lock`: no disk I/O is done while this is held.)
#[derive(Default)]
pub(super) struct Transfers {
    /// Every download status shows, oldest first.
    pub(super) tracked: Vec<Tracked>,
    /// How to stop each running download, by file.
    pub(super) cancels: HashMap<FileId, Sender<()>>,
}

impl Node {
    /// The node's downloads.
    pub(super) fn transfers(&self) -> std::sync::MutexGuard<'_, Transfers> {
        self.inner.transfers.lock().unwrap()
    }

    /// Finds sources for `id` and downloads it into `out`; or, if this node already has it
    /// (see [`Node::already_have`]), fetches nothing and reports where it is
    /// ([`DownloadReport::already_had`]).
    pub async fn get(
        &self,
        id: FileId,
        out: &Path,
        progress: impl Fn(&DownloadInfo) + Send + Sync + 'static,
    ) -> Result<DownloadReport, NodeError> {
        self.get_with(id, out, false, false, progress).await
    }

    /// [`Node::get`], even if this node already has the file: another copy.
    pub async fn get_again(
        &self,
        id: FileId,
        out: &Path,
        progress: impl Fn(&DownloadInfo) + Send + Sync + 'static,
    ) -> Result<DownloadReport, NodeError> {
        self.get_with(id, out, false, true, progress).await
    }

    /// [`Node::get`]; `wait_for_sources`: with no source at all, keep searching instead of
    /// failing (as for a download resumed after a restart); `again`: fetch it even if this node
    /// already has it.
    pub(super) async fn get_with(
        &self,
        id: FileId,
        out: &Path,
        wait_for_sources: bool,
        again: bool,
        progress: impl Fn(&DownloadInfo) + Send + Sync + 'static,
    ) -> Result<DownloadReport, NodeError> {
        if let Some(path) = self.already_have(id).filter(|_| !again) {
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            return Ok(DownloadReport {
                id,
                path,
                size,
                elapsed_ms: 0,
                resumed_chunks: 0,
                sources: Vec::new(),
                already_had: true,
            });
        }
        {
            let d = &mut self.transfers().tracked;
            if d.iter()
                .any(|t| t.info.id == id && t.info.state.is_active())
            {
                return Err(NodeError::AlreadyDownloading(id));
            }
            // A finished or cancelled download of the same file is replaced by this one (a
            // resume after a cancel shows as one row).
            d.retain(|t| t.info.id != id);
            // Forget the oldest finished downloads beyond what status shows.
            while d.iter().filter(|t| !t.info.state.is_active()).count() >= FINISHED_KEPT {
                let oldest = d
                    .iter()
                    .position(|t| !t.info.state.is_active())
                    .expect("counted");
                d.remove(oldest);
            }
            d.push(Tracked {
                info: DownloadInfo {
                    id,
                    name: id.to_hex(),
                    size: 0,
                    done_bytes: 0,
                    sources: 0,
                    speed: 0,
                    eta_s: None,
                    queued_at: None,
                    resumed_chunks: 0,
                    out: out.to_path_buf(),
                    state: DownloadState::Queued,
                },
                sample: None,
            });
        }
        self.change_pending(|list| {
            if !list.iter().any(|p| p.id == id) {
                list.push(Pending {
                    id,
                    out: out.to_path_buf(),
                    again,
                });
            }
        });
        let (cancel_tx, cancel_rx) = channel::bounded(1);
        self.transfers().cancels.insert(id, cancel_tx);
        let work = async {
            let _slot = self.inner.download_gate.acquire().await;
            self.update_download(id, |t| t.info.state = DownloadState::Searching);
            self.get_inner(id, out, wait_for_sources, progress).await
        };
        // Cancelling drops the download where it is: the chunks written so far stay on disk.
        let result = smol::future::or(work, async {
            let _ = cancel_rx.recv().await;
            Err(NodeError::Cancelled)
        })
        .await;
        self.transfers().cancels.remove(&id);
        // A finished download is seeded for a while; an unfinished one is no longer served.
        match &result {
            Ok(report) => {
                self.remember_download(report);
                self.seed(id)
            }
            Err(_) => self.unpublish(id),
        }
        // Finished either way: it is not resumed on the next start. (A crash leaves it queued.)
        self.change_pending(|list| list.retain(|p| p.id != id));
        self.update_download(id, |t| {
            t.info.state = match &result {
                Ok(r) => DownloadState::Done(r.path.clone()),
                Err(e) => DownloadState::Failed(e.to_string()),
            };
            t.info.eta_s = None;
        });
        result
    }

    pub(super) async fn get_inner(
        &self,
        id: FileId,
        out: &Path,
        wait_for_sources: bool,
        progress: impl Fn(&DownloadInfo) + Send + Sync + 'static,
    ) -> Result<DownloadReport, NodeError> {
        // No source at all is fine if an earlier attempt left the file's manifest on disk: the
        // download then waits for sources. Without one, `download` says no source was found.
        let hits = self
            .find_sources(id, Duration::from_secs(3))
            .await
            .unwrap_or_default();
        let name = hits
            .first()
            .map(|h| h.file.name().to_string())
            .unwrap_or_else(|| id.to_hex());
        // A size the hits disagree on is left to the manifest (the id pins the content).
        let size = hits.first().map_or(0, |h| h.file.size);
        let agreed = (!hits.is_empty() && hits.iter().all(|h| h.file.size == size)).then_some(size);
        let mut sources: Vec<SocketAddr> = hits.iter().map(|h| h.source.addr).collect();
        // Sources are dialled in a random order: a swarm's leechers all find the same sources
        // at once, and would otherwise all dial the first ones listed.
        sources.shuffle(&mut rand::rng());
        self.update_download(id, |t| {
            t.info.name = name.clone();
            t.info.size = size;
            t.info.sources = sources.len();
            t.info.state = DownloadState::Running;
        });
        let node = self.clone();
        let on_progress = move |p: Progress| {
            let info = node.update_download(id, |t| {
                let now = Instant::now();
                match t.sample {
                    None => t.sample = Some((now, p.done_bytes)),
                    Some((then, bytes)) => {
                        let dt = now.duration_since(then).as_secs_f64();
                        if dt >= 0.5 {
                            let recent = p.done_bytes.saturating_sub(bytes) as f64 / dt;
                            let speed = if t.info.speed == 0 {
                                recent
                            } else {
                                0.7 * t.info.speed as f64 + 0.3 * recent
                            };
                            t.info.speed = speed as u64;
                            t.sample = Some((now, p.done_bytes));
                        }
                    }
                }
                t.info.done_bytes = p.done_bytes;
                t.info.size = p.size;
                t.info.sources = p.sources;
                t.info.queued_at = p.queued;
                t.info.resumed_chunks = p.resumed_chunks;
                t.info.eta_s = (t.info.speed > 0).then(|| (p.size - p.done_bytes) / t.info.speed);
                t.info.state = if p.verifying {
                    DownloadState::Verifying
                } else if p.sources == 0 {
                    DownloadState::Waiting
                } else {
                    DownloadState::Running
                };
            });
            if let Some(info) = info {
                progress(&info);
            }
        };
        let finder = self.clone();
        let find: download::FindSources = Arc::new(move || {
            let node = finder.clone();
            Box::pin(async move {
                match node.find_sources(id, Duration::from_secs(3)).await {
                    Ok(hits) => {
                        let mut found: Vec<SocketAddr> =
                            hits.into_iter().map(|h| h.source.addr).collect();
                        found.shuffle(&mut rand::rng());
                        found
                    }
                    Err(e) => {
                        log::debug!("looking for sources of {}: {e}", id.short());
                        Vec::new()
                    }
                }
            })
        });
        let job = download::Job {
            me: self.inner.state.identity.clone(),
            id,
            name,
            expected_size: agreed,
            out_dir: out.to_path_buf(),
            sources,
            find,
            connect_back: Some(self.connect_back()),
            ways: {
                let state = self.inner.state.clone();
                Some(Arc::new(move |addr| state.reverse.way(addr, state.ipv6)))
            },
            give_up_after: self.inner.give_up_after,
            wait_for_sources,
            opts: self.inner.download_options.clone(),
            cap: self.inner.download_cap.clone(),
            swarm: Some(download::SwarmHooks {
                publish: {
                    let node = self.clone();
                    Box::new(move |p| node.publish(p))
                },
                unpublish: {
                    let node = self.clone();
                    Box::new(move |p| node.unpublish_if(p.id, Some(p)))
                },
                reciprocity: self.inner.state.slots.reciprocity.clone(),
                listen: self.inner.state.advertised(),
                peers: self.inner.state.swarm_peers.clone(),
                links: self.inner.state.links.clone(),
            }),
        };
        Ok(download::download(job, Box::new(on_progress)).await?)
    }

    /// Serves a file being downloaded from its verified chunks, and registers it with the
    /// super-peers so other downloaders find it.
    pub(super) fn publish(&self, p: Arc<PartialFile>) {
        let record = p.record.clone();
        self.inner.state.partials.insert(p);
        if self.inner.state.listen.is_none()
            || self
                .inner
                .state
                .shares
                .read()
                .unwrap()
                .get(&record.id)
                .is_some()
        {
            return;
        }
        let _ = self.inner.overlay.try_send(crate::overlay::Command::Share {
            added: vec![record],
            removed: Vec::new(),
        });
    }

    /// Stops serving a file published by [`Node::publish`], withdrawing it from the
    /// super-peers unless a shared folder holds it too.
    pub(super) fn unpublish(&self, id: FileId) {
        self.unpublish_if(id, None);
    }

    /// [`Node::unpublish`], if the file served for `id` is `only` (or whichever it is, for
    /// `None`).
    fn unpublish_if(&self, id: FileId, only: Option<&Arc<PartialFile>>) {
        if !self.inner.state.partials.remove(&id, only) {
            return;
        }
        if self.inner.state.listen.is_none()
            || self.inner.state.shares.read().unwrap().get(&id).is_some()
        {
            return;
        }
        let _ = self.inner.overlay.try_send(crate::overlay::Command::Share {
            added: Vec::new(),
            removed: vec![id],
        });
    }

    /// Seeds a finished download as the seeding setting says, then stops serving it.
    pub(super) fn seed(&self, id: FileId) {
        let Some(p) = self.inner.state.partials.get(&id) else {
            return;
        };
        let node = self.clone();
        let seeding = self.inner.seeding;
        let task = transport::rt::spawn(async move {
            let finished = Instant::now();
            while seeding.goes_on(
                finished.elapsed(),
                p.uploaded.load(Ordering::Relaxed),
                p.manifest.size,
            ) {
                smol::Timer::after(Duration::from_millis(500)).await;
            }
            // A later download of the same file may have replaced this one.
            log::info!("done seeding {}", id.short());
            node.unpublish_if(id, Some(&p));
        });
        self.inner.tasks.lock().unwrap().push(task);
    }

    /// Applies `change` to the running download of `id`; returns its new state.
    pub(super) fn update_download(
        &self,
        id: FileId,
        change: impl FnOnce(&mut Tracked),
    ) -> Option<DownloadInfo> {
        let mut transfers = self.transfers();
        let t = transfers
            .tracked
            .iter_mut()
            .rev()
            .find(|t| t.info.id == id)?;
        change(t);
        Some(t.info.clone())
    }

    pub(super) fn load_pending(&self) -> Vec<Pending> {
        let path = self.inner.state.data_dir.join(DOWNLOADS_FILE);
        // Downloads in the queue also left records beside their part files: a later `get`
        // of the same id resumes them.
        transport::store::load_or_log(&path, "starting with an empty download queue")
            .unwrap_or_default()
    }

    pub(super) fn change_pending(&self, change: impl FnOnce(&mut Vec<Pending>)) {
        // Its own lock, not `Transfers`': the file is read and synced while it is held, and
        // every download's progress goes through `Transfers`.
        let _one_at_a_time = self.inner.pending_lock.lock().unwrap();
        let mut list = self.load_pending();
        change(&mut list);
        let path = self.inner.state.data_dir.join(DOWNLOADS_FILE);
        if let Err(e) = transport::store::save(&path, &list) {
            log::warn!("cannot save the download queue {}: {e}", path.display());
        }
    }

    /// Stops the running download of `id`; the file stays partial, and a later get resumes it.
    pub fn cancel(&self, id: FileId) -> Result<(), NodeError> {
        match self.transfers().cancels.get(&id) {
            Some(tx) => {
                let _ = tx.try_send(());
                Ok(())
            }
            None => Err(NodeError::NotDownloading(id)),
        }
    }

    /// Cancels a download for good: stops it if it runs, then deletes its partial file and
    /// record. Returns how many files were deleted.
    pub async fn discard(&self, id: FileId) -> Result<usize, NodeError> {
        let out = {
            let transfers = self.transfers();
            let t = transfers.tracked.iter().rev().find(|t| t.info.id == id);
            t.map(|t| t.info.out.clone())
                .ok_or(NodeError::NotDownloading(id))?
        };
        if self.cancel(id).is_ok() {
            // Wait for the download to let go of its files.
            let until = Instant::now() + Duration::from_secs(10);
            while self
                .update_download(id, |_| {})
                .is_some_and(|i| i.state.is_active())
                && Instant::now() < until
            {
                smol::Timer::after(Duration::from_millis(20)).await;
            }
        }
        self.change_pending(|list| list.retain(|p| p.id != id));
        let removed =
            download::discard_partial(&out, &id).map_err(|source| download::DownloadError::Io {
                path: out.clone(),
                source,
            })?;
        self.update_download(id, |t| {
            t.info.state = DownloadState::Failed("cancelled; partial file deleted".into())
        });
        Ok(removed)
    }
}
