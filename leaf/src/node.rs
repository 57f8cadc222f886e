//! The leaf node: a long-running process that shares folders, keeps links to its super-peers,
//! serves chunks, searches and downloads, and answers the local control socket.
//!
//! [`Node::handle`] carries out one control [`Request`]; the control socket and the short-lived
//! in-process node of a CLI command both go through it, so both behave the same.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use smol::channel::{self, Receiver, Sender};
use smol::io::AsyncWriteExt;
use smol::net::unix::{UnixListener, UnixStream};
use smol::net::{TcpListener, TcpStream};
use smol::Task;
use transport::net::FrameReader;

use wire::{FileId, Filter, Hit, NodeId, Query, QueryId, Search, Terms};

use crate::control::{
    self, DownloadInfo, DownloadState, Reply, Request, ShareSummary, StatusReport,
};
use crate::download::{self, DownloadOptions, DownloadReport, Progress};
use crate::rate::RateLimit;
use crate::search::{group_hits, SearchResult};
use crate::share::{self, ShareDiff, ShareError, Shares};
use crate::slots::UploadSlots;
use crate::state::{NodeState, RoleStatus};
use crate::swarm::{PartialFile, Seeding, Spread};

/// The share cache's file name in the data directory.
pub const SHARES_FILE: &str = "shares.cbor";

/// Finished downloads kept for status.
const FINISHED_KEPT: usize = 100;

/// A file in the data directory listing bootstrap super-peers, one address per line (`#`
/// starts a comment), used beside `--superpeer` and the host cache.
pub const BOOTSTRAP_FILE: &str = "superpeers";

/// Reads the bootstrap file of a data directory; a missing file is no addresses, a bad line is
/// reported and skipped.
pub fn read_bootstrap(data_dir: &Path) -> Vec<SocketAddr> {
    let path = data_dir.join(BOOTSTRAP_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Vec::new();
    };
    text.lines()
        .enumerate()
        .filter_map(|(i, line)| {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                return None;
            }
            match line.parse() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    log::warn!(
                        "{}:{}: `{line}` is not an address like 192.0.2.7:7700",
                        path.display(),
                        i + 1
                    );
                    None
                }
            }
        })
        .collect()
}

/// The download queue's file in the data directory: downloads to resume after a restart.
pub const DOWNLOADS_FILE: &str = "downloads.cbor";

/// How a node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where it keeps its identity, share cache, download queue and control socket.
    pub data_dir: PathBuf,
    /// Super-peers to attach to.
    pub superpeers: Vec<SocketAddr>,
    /// Where to serve chunks; `None` for a node that only searches and downloads.
    pub listen: Option<SocketAddr>,
    /// Whether this is the long-running node: it answers on the control socket and resumes
    /// the downloads an earlier run left unfinished.
    pub control: bool,
    /// Downloader settings.
    pub download: DownloadOptions,
    /// How many downloaders are served at once; others wait in a queue.
    pub upload_slots: usize,
    /// Upload cap in bytes per second for the whole node (0: none).
    pub upload_rate: u64,
    /// Download cap in bytes per second for the whole node (0: none).
    pub download_rate: u64,
    /// How many downloads run at once; others wait.
    pub max_downloads: usize,
    /// How long a download with no source left keeps searching before it fails; `None`:
    /// until it is stopped (it resumes where it was whenever it runs again).
    pub give_up_after: Option<Duration>,
    /// How the node attaches to super-peers and when it may become one.
    pub leaf_overlay: topology::LeafConfig,
    /// The super-peer role's settings, should the node be promoted (it may demote again).
    pub superpeer_overlay: topology::Config,
    /// Hysteresis of role changes.
    pub role: topology::RoleConfig,
    /// Where to accept leaves if promoted; by default the port of the first bootstrap address
    /// (so that other nodes configured like this one find it), else 7700, else any.
    pub superpeer_listen: Option<SocketAddr>,
    /// What peers may send this node and make it hold (its chunk server, and its super-peer
    /// role if promoted).
    pub limits: transport::limits::Limits,
    /// How long a finished download goes on being served to others.
    pub seeding: Seeding,
}

impl NodeConfig {
    /// The defaults: no super-peer, not serving, no control socket, 4 upload slots, no caps,
    /// 3 downloads at a time, downloads that wait for sources indefinitely, two super-peers to
    /// attach to, and promotion allowed.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        NodeConfig {
            data_dir: data_dir.into(),
            superpeers: Vec::new(),
            listen: None,
            control: false,
            download: DownloadOptions::default(),
            upload_slots: 4,
            upload_rate: 0,
            download_rate: 0,
            max_downloads: 3,
            give_up_after: None,
            leaf_overlay: topology::LeafConfig::default(),
            superpeer_overlay: topology::Config {
                can_demote: true,
                ..Default::default()
            },
            role: topology::RoleConfig::default(),
            superpeer_listen: None,
            limits: transport::limits::Limits::default(),
            seeding: Seeding::default(),
        }
    }
}

/// A download the node has accepted and not finished, kept on disk to resume after a restart.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Pending {
    id: FileId,
    out: PathBuf,
}

/// A download as the node tracks it: what status shows, and the last speed sample.
struct Tracked {
    info: DownloadInfo,
    /// The last speed sample: when, and how many bytes were done then (none yet: the first
    /// report after a resume must not count the resumed bytes as speed).
    sample: Option<(Instant, u64)>,
}

/// Why the node could not do something.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory cannot be used.
    #[error("cannot use the data directory {}: {source}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The control socket cannot be bound.
    #[error("cannot open the control socket {}: {source}", path.display())]
    Control {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// No super-peer link is up.
    #[error("not connected to any super-peer (tried {tried}); start one with `superpeer` or pass --superpeer ADDR")]
    NotConnected {
        /// The addresses tried.
        tried: String,
    },
    /// A folder could not be shared.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// A download failed.
    #[error(transparent)]
    Download(#[from] download::DownloadError),
    /// The folder is not one of the shared folders.
    #[error("{} is not shared (see `leaf status` for the shared folders)", .0.display())]
    NotShared(PathBuf),
    /// The same file is being downloaded already.
    #[error("{0} is being downloaded already")]
    AlreadyDownloading(FileId),
    /// The download was cancelled; its partial file stays for a later resume.
    #[error("cancelled")]
    Cancelled,
    /// No download of that file is running.
    #[error("{0} is not being downloaded")]
    NotDownloading(FileId),
}

pub(crate) struct Inner {
    /// What the overlay actor and the upload connections share with the node.
    pub(crate) state: Arc<NodeState>,
    /// Connection counts and bans of the chunk server.
    gate: Arc<transport::limits::Gate>,
    /// Commands to the overlay actor, which owns the super-peer links and searches.
    overlay: Sender<crate::overlay::Command>,
    downloads: Mutex<Vec<Tracked>>,
    /// How to stop each running download, by file.
    cancels: Mutex<HashMap<FileId, Sender<()>>>,
    /// Whether this node owns the control socket.
    control: bool,
    /// Open upload connections, so shutdown can close them.
    upload_streams: Mutex<HashMap<u64, TcpStream>>,
    upload_keys: AtomicU64,
    /// Serialises changes to the download queue file.
    pending_lock: Mutex<()>,
    seeding: Seeding,
    download_cap: RateLimit,
    download_gate: smol::lock::Semaphore,
    give_up_after: Option<Duration>,
    download_options: DownloadOptions,
    /// One scan at a time: scans of one folder must not interleave.
    scan_lock: smol::lock::Mutex<()>,
    tasks: Mutex<Vec<Task<()>>>,
}

/// A running leaf node. Cheap to clone; [`Node::shutdown`] stops it.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// QueryHits messages held for a search that its reader has not taken yet.
const SEARCH_BACKLOG: usize = 256;

impl Node {
    /// Starts a node: identity, share cache, chunk server, super-peer links, control socket.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let dir = config.data_dir.clone();
        let data_err = |source| NodeError::DataDir {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(data_err)?;
        let identity = transport::identity::Identity::load_or_create(&dir).map_err(data_err)?;
        let node_id = identity.node();
        let shares = Shares::load(&dir.join(SHARES_FILE));

        let (listener, listen) = match config.listen {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| NodeError::Bind { addr, source })?;
                let bound = l
                    .local_addr()
                    .map_err(|source| NodeError::Bind { addr, source })?;
                (Some(l), Some(bound))
            }
            None => (None, None),
        };
        let control_listener = if config.control {
            let path = control::socket_path(&dir);
            // A socket file left by a node that died; the caller checked none answers.
            let _ = std::fs::remove_file(&path);
            let listener = smol::net::unix::UnixListener::bind(&path).map_err(|source| {
                NodeError::Control {
                    path: path.clone(),
                    source,
                }
            })?;
            // Only the owner may drive the node (whatever the umask).
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| NodeError::Control { path, source })?;
            Some(listener)
        } else {
            None
        };
        let mut seeds = config.superpeers.clone();
        for a in read_bootstrap(&dir) {
            if !seeds.contains(&a) {
                seeds.push(a);
            }
        }
        let (overlay_tx, overlay_rx) = channel::unbounded();
        let state = Arc::new(NodeState {
            node_id,
            identity: Arc::new(identity),
            limits: config.limits.clone(),
            listen,
            shares: RwLock::new(shares),
            uploaded_chunks: AtomicU64::new(0),
            uploaded_bytes: AtomicU64::new(0),
            data_dir: dir,
            seeds,
            role: Mutex::new(RoleStatus {
                role: "leaf".into(),
                why: "starting".into(),
                ..Default::default()
            }),
            started: Instant::now(),
            slots: UploadSlots::new(config.upload_slots, Arc::default()),
            partials: Mutex::new(HashMap::new()),
            spread: Spread::default(),
            upload_cap: RateLimit::new(config.upload_rate),
        });
        let inner = Arc::new(Inner {
            state,
            gate: transport::limits::Gate::new(config.limits.clone()),
            overlay: overlay_tx,
            downloads: Mutex::new(Vec::new()),
            cancels: Mutex::new(HashMap::new()),
            control: config.control,
            upload_streams: Mutex::new(HashMap::new()),
            upload_keys: AtomicU64::new(0),
            pending_lock: Mutex::new(()),
            seeding: config.seeding,
            download_cap: RateLimit::new(config.download_rate),
            download_gate: smol::lock::Semaphore::new(config.max_downloads.max(1)),
            give_up_after: config.give_up_after,
            download_options: config.download,
            scan_lock: smol::lock::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
        });
        let node = Node { inner };
        let overlay = crate::overlay::Settings {
            leaf: topology::LeafConfig {
                // A node without a listen address cannot serve as a super-peer's leaf source,
                // nor as a super-peer.
                can_promote: config.leaf_overlay.can_promote && config.listen.is_some(),
                ..config.leaf_overlay.clone()
            },
            superpeer: config.superpeer_overlay.clone(),
            role: config.role,
            superpeer_listen: config.superpeer_listen,
        };
        let mut tasks = Vec::new();
        if let Some(l) = listener {
            tasks.push(smol::spawn(accept_uploads(node.inner.clone(), l)));
        }
        tasks.push(smol::spawn(crate::overlay::run(
            node.inner.state.clone(),
            overlay,
            overlay_rx,
        )));
        if let Some(l) = control_listener {
            tasks.push(smol::spawn(serve_control(node.clone(), l)));
        }
        log::info!(
            "leaf {} up; serving on {}",
            node_id.short(),
            listen
                .map(|a| a.to_string())
                .unwrap_or_else(|| "nothing".into())
        );
        if config.control {
            // Downloads an earlier run accepted and did not finish carry on.
            for p in node.load_pending() {
                let n = node.clone();
                tasks.push(smol::spawn(async move {
                    if !p.out.is_dir() {
                        // An unmounted disk, say: keep it queued for a later start.
                        log::warn!(
                            "not resuming {}: its folder {} is gone; it stays queued",
                            p.id,
                            p.out.display()
                        );
                        return;
                    }
                    log::info!("resuming the download of {}", p.id);
                    // Sources are searched for once a super-peer link is up.
                    n.wait_connected(Duration::from_secs(30)).await;
                    if let Err(e) = n.get_with(p.id, &p.out, true, |_| {}).await {
                        log::warn!("download of {} failed: {e}", p.id);
                    }
                }));
            }
        }
        *node.inner.tasks.lock().unwrap() = tasks;
        Ok(node)
    }

    /// Stops the node's tasks and closes its super-peer links and upload connections.
    pub async fn shutdown(&self) {
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap());
        for t in tasks {
            t.cancel().await;
        }
        for (_, stream) in self.inner.upload_streams.lock().unwrap().drain() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        if self.inner.control {
            let _ = std::fs::remove_file(control::socket_path(&self.inner.state.data_dir));
        }
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.state.node_id
    }

    /// Where it serves chunks.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.inner.state.listen
    }

    /// Waits until at least one super-peer link is up; false if none came up within `limit`.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            if !self.inner.state.role.lock().unwrap().links.is_empty() {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            smol::Timer::after(Duration::from_millis(20)).await;
        }
    }

    /// Scans and shares a folder, registering its files with the super-peers.
    pub async fn share(
        &self,
        folder: &Path,
        progress: impl FnMut(&share::ScanProgress) + Send + 'static,
    ) -> Result<ShareSummary, NodeError> {
        let _guard = self.inner.scan_lock.lock().await;
        let inner = self.inner.clone();
        let folder = folder.to_path_buf();
        let mut progress = progress;
        let (outcome, canon) = smol::unblock(move || {
            let canon = std::fs::canonicalize(&folder).unwrap_or_else(|_| folder.clone());
            let shares = inner.state.shares.read().unwrap();
            let cached = |p: &Path| shares.cached(p);
            share::scan_folder(&folder, &cached, &mut progress).map(|o| (o, canon))
        })
        .await?;
        let summary = ShareSummary {
            folder: canon.clone(),
            files: outcome.files.len() as u64,
            bytes: outcome.files.iter().map(|f| f.record.size).sum(),
            hashed: outcome.hashed,
            reused: outcome.reused,
            skipped: outcome.skipped,
        };
        let diff = self
            .inner
            .state
            .shares
            .write()
            .unwrap()
            .apply_scan(&canon, outcome.files);
        self.save_shares().await;
        self.announce(diff);
        Ok(summary)
    }

    /// Stops sharing a folder: its files are withdrawn from the super-peers. Returns how many
    /// files were shared from it.
    pub async fn unshare(&self, folder: &Path) -> Result<u64, NodeError> {
        let _guard = self.inner.scan_lock.lock().await;
        let canon = std::fs::canonicalize(folder).unwrap_or_else(|_| folder.to_path_buf());
        let (files, diff) = {
            let mut shares = self.inner.state.shares.write().unwrap();
            let before = shares.len();
            let diff = shares
                .remove_folder(&canon)
                .or_else(|| shares.remove_folder(folder))
                .ok_or_else(|| NodeError::NotShared(folder.to_path_buf()))?;
            ((before - shares.len()) as u64, diff)
        };
        self.save_shares().await;
        self.announce(diff);
        crate::overlay::note(
            &self.inner.state,
            format!("stopped sharing {}", folder.display()),
        );
        Ok(files)
    }

    async fn save_shares(&self) {
        let inner = self.inner.clone();
        smol::unblock(move || {
            let path = inner.state.data_dir.join(SHARES_FILE);
            if let Err(e) = inner.state.shares.read().unwrap().save(&path) {
                log::warn!("cannot save the share cache {}: {e}", path.display());
            }
        })
        .await
    }

    /// Tells every attached super-peer about added and removed files (through the overlay
    /// actor, which keeps them in order with each link's first registration).
    fn announce(&self, diff: ShareDiff) {
        let _ = self.inner.overlay.try_send(crate::overlay::Command::Share {
            added: diff.added,
            removed: diff.removed,
        });
    }

    /// Sends a query to every connected super-peer; hits arrive on the receiver until
    /// [`Node::end_search`].
    pub fn start_search(
        &self,
        search: Search,
        ttl: u8,
    ) -> Result<(QueryId, Receiver<Vec<Hit>>), NodeError> {
        if self.inner.state.role.lock().unwrap().links.is_empty() {
            return Err(NodeError::NotConnected {
                tried: self.tried(),
            });
        }
        let id = QueryId(rand::random());
        // Bounded: a super-peer that floods hits for a search fills this and the rest is
        // dropped, whatever it sends (each message holds at most 256 hits).
        let (tx, rx) = channel::bounded(SEARCH_BACKLOG);
        let query = Query {
            id,
            ttl,
            hops: 0,
            search,
        };
        // (Should the last link drop before the actor sends it, the search sees no hit and
        // its channel closes.)
        let _ = self
            .inner
            .overlay
            .try_send(crate::overlay::Command::Search { query, hits: tx });
        Ok((id, rx))
    }

    /// Stops routing hits of a search.
    pub fn end_search(&self, id: QueryId) {
        let _ = self
            .inner
            .overlay
            .try_send(crate::overlay::Command::EndSearch(id));
    }

    fn tried(&self) -> String {
        let list: Vec<String> = self
            .inner
            .state
            .seeds
            .iter()
            .map(|a| a.to_string())
            .collect();
        let known = self.inner.state.role.lock().unwrap().hosts;
        match (list.is_empty(), known) {
            (true, 0) => "no super-peer address given".into(),
            (true, n) => format!("{n} known from earlier runs"),
            (false, _) => format!("{} and {known} known from earlier runs", list.join(", ")),
        }
    }

    /// Searches and collects hits for `wait`, grouped by file.
    pub async fn search(
        &self,
        search: Search,
        ttl: u8,
        wait: Duration,
    ) -> Result<Vec<SearchResult>, NodeError> {
        let (id, rx) = self.start_search(search, ttl)?;
        let hits = collect_hits(&rx, wait, None).await;
        self.end_search(id);
        Ok(group_hits(hits))
    }

    /// Finds the leaves that hold `id` (other than this one).
    pub async fn find_sources(&self, id: FileId, wait: Duration) -> Result<Vec<Hit>, NodeError> {
        let search = Search {
            terms: Terms::Id(id),
            filter: Filter::default(),
        };
        let (qid, rx) = self.start_search(search, wire::DEFAULT_TTL)?;
        // Hits by id come back quickly or not at all: stop shortly after the first ones.
        // The download starts with these; sources whose hits come later are found by the
        // downloader's own search a couple of seconds in.
        let hits = collect_hits(&rx, wait, Some(Duration::from_millis(100))).await;
        self.end_search(qid);
        let mut seen = Vec::new();
        Ok(hits
            .into_iter()
            .filter(|h| h.file.id == id && h.source.node != self.inner.state.node_id)
            .filter(|h| {
                let fresh = !seen.contains(&h.source.addr);
                seen.push(h.source.addr);
                fresh
            })
            .collect())
    }

    /// Finds sources for `id` and downloads it into `out`.
    pub async fn get(
        &self,
        id: FileId,
        out: &Path,
        progress: impl Fn(&DownloadInfo) + Send + Sync + 'static,
    ) -> Result<DownloadReport, NodeError> {
        self.get_with(id, out, false, progress).await
    }

    /// [`Node::get`]; `wait_for_sources`: with no source at all, keep searching instead of
    /// failing (as for a download resumed after a restart).
    async fn get_with(
        &self,
        id: FileId,
        out: &Path,
        wait_for_sources: bool,
        progress: impl Fn(&DownloadInfo) + Send + Sync + 'static,
    ) -> Result<DownloadReport, NodeError> {
        {
            let mut d = self.inner.downloads.lock().unwrap();
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
                });
            }
        });
        let (cancel_tx, cancel_rx) = channel::bounded(1);
        self.inner.cancels.lock().unwrap().insert(id, cancel_tx);
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
        self.inner.cancels.lock().unwrap().remove(&id);
        // A finished download is seeded for a while; an unfinished one is no longer served.
        match &result {
            Ok(_) => self.seed(id),
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

    async fn get_inner(
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
        let sources: Vec<SocketAddr> = hits.iter().map(|h| h.source.addr).collect();
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
                    Ok(hits) => hits.into_iter().map(|h| h.source.addr).collect(),
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
            give_up_after: self.inner.give_up_after,
            wait_for_sources,
            opts: self.inner.download_options.clone(),
            cap: self.inner.download_cap.clone(),
            swarm: Some(download::SwarmHooks {
                publish: {
                    let node = self.clone();
                    Box::new(move |p| node.publish(p))
                },
                reciprocity: self.inner.state.slots.reciprocity.clone(),
                listen: self.inner.state.listen,
            }),
        };
        Ok(download::download(job, Box::new(on_progress)).await?)
    }

    /// Serves a file being downloaded from its verified chunks, and registers it with the
    /// super-peers so other downloaders find it.
    fn publish(&self, p: Arc<PartialFile>) {
        let record = p.record.clone();
        self.inner.state.partials.lock().unwrap().insert(p.id, p);
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
    fn unpublish(&self, id: FileId) {
        if self
            .inner
            .state
            .partials
            .lock()
            .unwrap()
            .remove(&id)
            .is_none()
        {
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
    fn seed(&self, id: FileId) {
        let Some(p) = self.inner.state.partials.lock().unwrap().get(&id).cloned() else {
            return;
        };
        let node = self.clone();
        let seeding = self.inner.seeding;
        let task = smol::spawn(async move {
            let finished = Instant::now();
            while seeding.goes_on(
                finished.elapsed(),
                p.uploaded.load(Ordering::Relaxed),
                p.manifest.size,
            ) {
                smol::Timer::after(Duration::from_millis(500)).await;
            }
            // A later download of the same file may have replaced this one.
            let current = node.inner.state.partials.lock().unwrap().get(&id).cloned();
            if current.is_some_and(|c| Arc::ptr_eq(&c, &p)) {
                log::info!("done seeding {}", id.short());
                node.unpublish(id);
            }
        });
        self.inner.tasks.lock().unwrap().push(task);
    }

    /// Applies `change` to the running download of `id`; returns its new state.
    fn update_download(
        &self,
        id: FileId,
        change: impl FnOnce(&mut Tracked),
    ) -> Option<DownloadInfo> {
        let mut d = self.inner.downloads.lock().unwrap();
        let t = d.iter_mut().rev().find(|t| t.info.id == id)?;
        change(t);
        Some(t.info.clone())
    }

    fn load_pending(&self) -> Vec<Pending> {
        let path = self.inner.state.data_dir.join(DOWNLOADS_FILE);
        // Downloads in the queue also left records beside their part files: a later `get`
        // of the same id resumes them.
        transport::store::load_or_log(&path, "starting with an empty download queue")
            .unwrap_or_default()
    }

    fn change_pending(&self, change: impl FnOnce(&mut Vec<Pending>)) {
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
        match self.inner.cancels.lock().unwrap().get(&id) {
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
            let d = self.inner.downloads.lock().unwrap();
            let t = d.iter().rev().find(|t| t.info.id == id);
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

    /// Searches and sends the grouped results so far each time hits arrive, for `wait`.
    async fn search_stream(
        &self,
        search: Search,
        ttl: u8,
        wait: Duration,
        reply: &Sender<Reply>,
    ) -> Result<(), NodeError> {
        let (qid, rx) = self.start_search(search, ttl)?;
        let deadline = Instant::now() + wait;
        let mut hits = Vec::new();
        // An empty list first, so the client knows the search is under way.
        let mut open = reply.send(Reply::Results(Vec::new())).await.is_ok();
        while open {
            let got = smol::future::or(async { rx.recv().await.ok() }, async {
                smol::Timer::at(deadline).await;
                None
            })
            .await;
            let Some(batch) = got else { break };
            hits.extend(batch);
            // Whatever else already arrived goes into the same update.
            while let Ok(more) = rx.try_recv() {
                hits.extend(more);
            }
            open = reply
                .send(Reply::Results(group_hits(hits.iter().cloned())))
                .await
                .is_ok();
        }
        self.end_search(qid);
        Ok(())
    }

    /// The node ids this node granted an upload slot to, in order (the last 1000).
    pub fn upload_grants(&self) -> Vec<NodeId> {
        self.inner.state.slots.grants()
    }

    /// The node's state.
    pub fn status(&self) -> StatusReport {
        let role = self.inner.state.role.lock().unwrap().clone();
        let shares = self.inner.state.shares.read().unwrap();
        StatusReport {
            node: self.inner.state.node_id,
            role: role.role,
            role_reason: role.why,
            listen: self.inner.state.listen,
            superpeers: role.links,
            hosts: role.hosts,
            superpeer: role.superpeer,
            events: role.events.into_iter().collect(),
            folders: shares.folders().to_vec(),
            folder_stats: shares
                .folders()
                .iter()
                .map(|folder| {
                    let (files, bytes) = shares
                        .files()
                        .filter(|f| f.local.starts_with(folder))
                        .fold((0, 0), |(n, b), f| (n + 1, b + f.record.size));
                    control::FolderStats {
                        folder: folder.clone(),
                        files,
                        bytes,
                    }
                })
                .collect(),
            files: shares.len() as u64,
            bytes: shares.total_bytes(),
            downloads: self
                .inner
                .downloads
                .lock()
                .unwrap()
                .iter()
                .map(|t| t.info.clone())
                .collect(),
            uploaded_chunks: self.inner.state.uploaded_chunks.load(Ordering::Relaxed),
            uploaded_bytes: self.inner.state.uploaded_bytes.load(Ordering::Relaxed),
            upload_slots: (
                self.inner.state.slots.usage().0,
                self.inner.state.slots.max(),
            ),
            upload_queue: self.inner.state.slots.usage().1,
            upload_rate: self.inner.state.upload_cap.bytes_per_sec(),
            download_rate: self.inner.download_cap.bytes_per_sec(),
        }
    }

    /// Carries out one control request, sending replies (ending with [`Reply::End`]).
    pub async fn handle(&self, req: Request, reply: Sender<Reply>) {
        match req {
            Request::Share { paths } => {
                for path in paths {
                    let tx = reply.clone();
                    let mut last = Instant::now() - Duration::from_secs(1);
                    let progress = move |p: &share::ScanProgress| {
                        let finished = p.files_done == p.files_total;
                        if finished || last.elapsed() >= Duration::from_millis(100) {
                            last = Instant::now();
                            let _ = tx.try_send(Reply::ShareProgress(p.clone()));
                        }
                    };
                    let r = match self.share(&path, progress).await {
                        Ok(summary) => Reply::Shared(summary),
                        Err(e) => Reply::Error(e.to_string()),
                    };
                    let _ = reply.send(r).await;
                }
            }
            Request::Search {
                search,
                ttl,
                wait_ms,
            } => {
                let r = match self
                    .search(search, ttl, Duration::from_millis(wait_ms))
                    .await
                {
                    Ok(results) => Reply::Results(results),
                    Err(e) => Reply::Error(e.to_string()),
                };
                let _ = reply.send(r).await;
            }
            Request::Get { ids, out } => {
                // All at once: each takes its place in the queue (and on disk) now, and the
                // node's download limit decides how many run together.
                let tasks: Vec<_> = ids
                    .into_iter()
                    .map(|id| {
                        let (node, out, tx) = (self.clone(), out.clone(), reply.clone());
                        smol::spawn(async move {
                            let progress_tx = tx.clone();
                            let last = Mutex::new(Instant::now() - Duration::from_secs(1));
                            let progress = move |info: &DownloadInfo| {
                                let mut last = last.lock().unwrap();
                                if last.elapsed() >= Duration::from_millis(100) {
                                    *last = Instant::now();
                                    let _ = progress_tx.try_send(Reply::GetProgress(info.clone()));
                                }
                            };
                            let r = match node.get(id, &out, progress).await {
                                Ok(report) => Reply::GetDone(report),
                                Err(e) => Reply::GetFailed {
                                    id,
                                    error: e.to_string(),
                                },
                            };
                            let _ = tx.send(r).await;
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await;
                }
            }
            Request::Status => {
                let _ = reply.send(Reply::Status(Box::new(self.status()))).await;
            }
            Request::SearchStream {
                search,
                ttl,
                wait_ms,
            } => {
                let wait = Duration::from_millis(wait_ms.min(60_000));
                if let Err(e) = self.search_stream(search, ttl, wait, &reply).await {
                    let _ = reply.send(Reply::Error(e.to_string())).await;
                }
            }
            Request::Cancel { id } => {
                if let Err(e) = self.cancel(id) {
                    let _ = reply.send(Reply::Error(e.to_string())).await;
                }
            }
            Request::Discard { id } => {
                if let Err(e) = self.discard(id).await {
                    let _ = reply.send(Reply::Error(e.to_string())).await;
                }
            }
            Request::Unshare { path } => {
                let r = match self.unshare(&path).await {
                    Ok(removed) => Reply::Unshared {
                        folder: path,
                        files: removed,
                    },
                    Err(e) => Reply::Error(e.to_string()),
                };
                let _ = reply.send(r).await;
            }
        }
        let _ = reply.send(Reply::End).await;
    }

    /// Shares again every folder remembered in the share cache (after a restart).
    pub async fn reshare_remembered(&self) {
        let folders = self.inner.state.shares.read().unwrap().folders().to_vec();
        for f in folders {
            match self.share(&f, |_| {}).await {
                Ok(s) => log::info!("sharing {} again: {} files", s.folder.display(), s.files),
                Err(e) => log::warn!("cannot share {} again: {e}", f.display()),
            }
        }
    }
}

/// Hits from `rx` until `wait` passes, or `after_first` after the first hits arrived.
async fn collect_hits(
    rx: &Receiver<Vec<Hit>>,
    wait: Duration,
    after_first: Option<Duration>,
) -> Vec<Hit> {
    let mut deadline = Instant::now() + wait;
    let mut hits = Vec::new();
    loop {
        let got = smol::future::or(async { rx.recv().await.ok() }, async {
            smol::Timer::at(deadline).await;
            None
        })
        .await;
        match got {
            Some(batch) => {
                if hits.is_empty() {
                    if let Some(grace) = after_first {
                        deadline = deadline.min(Instant::now() + grace);
                    }
                }
                hits.extend(batch);
            }
            None => return hits,
        }
    }
}

/// Accepts control connections (see [`crate::control`]) until the listener fails.
async fn serve_control(node: Node, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => smol::spawn(serve_control_one(node.clone(), stream)).detach(),
            Err(e) => {
                log::warn!("control socket accept failed: {e}");
                smol::Timer::after(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

async fn serve_control_one(node: Node, stream: UnixStream) {
    let mut writer = stream.clone();
    let mut reader = FrameReader::new(stream);
    let req: Request = match reader.read_with(wire::frame::decode_value).await {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            log::warn!("bad control request: {e}");
            return;
        }
    };
    let (tx, rx) = channel::unbounded();
    // The work runs on its own: it carries on if the client goes away.
    smol::spawn(async move { node.handle(req, tx).await }).detach();
    let mut buf = Vec::new();
    while let Ok(reply) = rx.recv().await {
        buf.clear();
        wire::frame::encode_value(&reply, &mut buf);
        if writer.write_all(&buf).await.is_err() {
            return;
        }
        if reply == Reply::End {
            return;
        }
    }
}

/// Splits records into Register batches (public so that load generators batch exactly as a
/// leaf does).
pub use topology::leaf::register_batches;

async fn accept_uploads(inner: Arc<Inner>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let admitted = match inner.gate.admit(remote, Instant::now()) {
                    Ok(admitted) => admitted,
                    Err(trip) => {
                        log::warn!("refusing a download connection from {remote}: {trip}");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                // Known to the node so that shutdown can close it.
                let key = inner.upload_keys.fetch_add(1, Ordering::Relaxed);
                inner
                    .upload_streams
                    .lock()
                    .unwrap()
                    .insert(key, stream.clone());
                let inner = inner.clone();
                smol::spawn(async move {
                    crate::upload::serve(inner.state.clone(), stream, remote).await;
                    drop(admitted);
                    inner.upload_streams.lock().unwrap().remove(&key);
                })
                .detach();
            }
            Err(e) => {
                log::warn!("accepting a download connection failed: {e}");
                smol::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}
