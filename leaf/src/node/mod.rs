//! The leaf node: a long-running process that shares folders, keeps links to its super-peers,
//! serves chunks, searches and downloads, and answers the local control socket.
//!
//! [`Node::handle`] carries out one control [`Request`]; the control socket and the short-lived
//! in-process node of a CLI command both go through it, so both behave the same.
//!
//! `Node` is a cheap handle. The super-peer links and searches belong to the overlay actor
//! (`crate::overlay`), which it sends commands; what the node shares with that actor and with
//! the upload connections is `crate::state::NodeState`. Here: starting and stopping, sharing and
//! searching (`mod.rs`), downloads and their queue (`downloads.rs`), and the control socket and
//! chunk server's accept loops (`serve.rs`).

use std::collections::HashMap;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
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
use crate::swarm::{PartialFile, Partials, Seeding, Spread};

mod browsing;
mod downloads;
mod have;
mod mapping;
mod serve;
mod wishes;

use downloads::Transfers;
pub use mapping::ExternalPort;
use serve::{accept_uploads, serve_control};

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
    /// How many connections may ask for one file at once (queued or served); more are told to
    /// come back later.
    pub max_downloaders_per_file: usize,
    /// Connections with other leaves at once, both ways ([`crate::links`]).
    pub max_peer_links: usize,
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
    /// How often each wish of the wishlist is searched for (± 20 %).
    pub wish_interval: Duration,
    /// Whether others may list what this node shares (as `leaf browse` does).
    pub browsable: bool,
    /// How the port others should connect to is found, behind a NAT (None: the listen port,
    /// as it is). Only the long-running node (`control`) looks for one.
    pub external_port: Option<ExternalPort>,
    /// The web UI, if it is served. Only the long-running node (`control`) serves it.
    pub web: Option<crate::web::WebConfig>,
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
            max_downloaders_per_file: crate::slots::MAX_DOWNLOADERS_PER_FILE,
            max_peer_links: crate::links::MAX_PEER_LINKS,
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
            wish_interval: DEFAULT_WISH_INTERVAL,
            browsable: true,
            external_port: None,
            web: None,
        }
    }
}

/// Why the node could not do something.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Browsing another leaf, or fetching one of its folders, failed.
    #[error("{0}")]
    Browse(String),
    /// A leaf named by its node id is not one this node's searches met.
    #[error(transparent)]
    Unknown(#[from] crate::seen::SeenError),
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
    /// The web UI cannot be served.
    #[error(transparent)]
    Web(#[from] crate::web::WebError),
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
    /// The node's downloads: what status shows and how to stop each.
    transfers: Mutex<Transfers>,
    /// Serialises changes to the download queue file.
    pending_lock: Mutex<()>,
    /// Finished downloads (see [`Node::already_have`]), saved in the data directory.
    downloaded: Mutex<Vec<have::Downloaded>>,
    /// The wishlist, saved in the data directory.
    wishes: Mutex<crate::wish::Wishlist>,
    /// Wakes the wish loop when a wish is added.
    wish_wake: Sender<()>,
    /// Whether this node owns the control socket.
    control: bool,
    /// Keeps other nodes off the data directory until this one shuts down.
    dir_lock: Mutex<Option<transport::store::DirLock>>,
    /// The router's mapping held (UPnP, PCP or NAT-PMP), removed at shutdown.
    mapping: mapping::Held,
    /// The external port and where it comes from, for status.
    port_mapping: Mutex<Option<control::PortMapping>>,
    seeding: Seeding,
    download_cap: RateLimit,
    download_gate: smol::lock::Semaphore,
    give_up_after: Option<Duration>,
    download_options: DownloadOptions,
    /// One scan at a time: scans of one folder must not interleave.
    scan_lock: smol::lock::Mutex<()>,
    tasks: Mutex<Vec<Task<()>>>,
    /// The web UI, while it is served.
    web: Mutex<Option<crate::web::WebServer>>,
}

/// A running leaf node. Cheap to clone; [`Node::shutdown`] stops it.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// How often each wish is searched for by default: minutes apart, as Soulseek clients do, well
/// inside a super-peer's query limits.
pub const DEFAULT_WISH_INTERVAL: Duration = Duration::from_secs(15 * 60);

/// QueryHits messages held for a search that its reader has not taken yet.
const SEARCH_BACKLOG: usize = 256;
/// How long a download waits for a source it asked to connect back.
const CONNECT_BACK_WAIT: Duration = Duration::from_secs(10);

impl Node {
    /// Starts a node: identity, share cache, chunk server, super-peer links, control socket.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let dir = config.data_dir.clone();
        let data_err = |source| NodeError::DataDir {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(data_err)?;
        let dir_lock = transport::store::lock_dir(&dir).map_err(data_err)?;
        let identity = transport::identity::Identity::load_or_create(&dir).map_err(data_err)?;
        let downloaded = have::load_downloaded(&dir);
        let wishlist = wishes::load_wishes(&dir, config.wish_interval);
        let (wish_wake, wish_woken) = channel::bounded(1);
        let node_id = identity.node();
        let shares = Shares::load(&dir.join(SHARES_FILE));

        let route6 = transport::net::has_ipv6_route();
        let (listeners, listen) = match config.listen {
            Some(addr) => {
                // On every IPv4 address of a host that has IPv6: on every IPv6 address too,
                // on the same port, so that a leaf with a global IPv6 address is reachable
                // over it even behind an IPv4 NAT.
                let dual = route6 && addr.ip() == std::net::Ipv4Addr::UNSPECIFIED;
                // A short queue: connections the kernel completed and the node has not taken
                // count towards the node's bound on links (`crate::links`); two listeners
                // share it.
                let queued = match dual {
                    true => crate::links::LISTEN_BACKLOG / 2,
                    false => crate::links::LISTEN_BACKLOG,
                };
                let backlog = crate::links::listen_backlog(queued);
                // Shared with the connections that leave from it (hole punching).
                let l = transport::net::listen_reusable(addr, backlog)
                    .map_err(|source| NodeError::Bind { addr, source })?;
                let bound = l
                    .local_addr()
                    .map_err(|source| NodeError::Bind { addr, source })?;
                let mut listeners = vec![l];
                if dual {
                    match transport::net::listen_ipv6_beside(bound.port(), backlog) {
                        Ok(l6) => listeners.push(l6),
                        Err(e) => log::warn!(
                            "serving over IPv4 only: listening on [::]:{}: {e}",
                            bound.port()
                        ),
                    }
                }
                (listeners, Some(bound))
            }
            None => (Vec::new(), None),
        };
        // Over IPv6: where it serves there, or (serving nobody) where it may search.
        let port6 = (listeners.len() == 2)
            .then(|| listen.map(|a| a.port()))
            .flatten();
        let ipv6 = route6 && (listen.is_none() || port6.is_some());
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
            ipv6,
            port6,
            shares: RwLock::new(shares),
            uploaded_chunks: AtomicU64::new(0),
            uploaded_bytes: AtomicU64::new(0),
            data_dir: dir,
            seeds,
            role: ArcSwap::from_pointee(RoleStatus {
                role: "leaf".into(),
                why: "starting".into(),
                ..Default::default()
            }),
            started: Instant::now(),
            slots: UploadSlots::new(config.upload_slots, Arc::default())
                .with_per_file(config.max_downloaders_per_file),
            links: crate::links::PeerLinks::new(config.max_peer_links),
            partials: Partials::default(),
            swarm_peers: Default::default(),
            spread: Spread::default(),
            upload_cap: RateLimit::new(config.upload_rate),
            browsable: config.browsable,
            reverse: Default::default(),
            seen: Mutex::new(crate::seen::Seen::load(&config.data_dir)),
            external_port: Default::default(),
            upload_streams: Mutex::new(HashMap::new()),
            upload_keys: AtomicU64::new(0),
        });
        let inner = Arc::new(Inner {
            state,
            gate: transport::limits::Gate::new(config.limits.clone()),
            overlay: overlay_tx,
            transfers: Mutex::default(),
            pending_lock: Mutex::new(()),
            downloaded: Mutex::new(downloaded),
            wishes: Mutex::new(wishlist),
            wish_wake,
            control: config.control,
            dir_lock: Mutex::new(Some(dir_lock)),
            mapping: Default::default(),
            port_mapping: Mutex::new(None),
            seeding: config.seeding,
            download_cap: RateLimit::new(config.download_rate),
            download_gate: smol::lock::Semaphore::new(config.max_downloads.max(1)),
            give_up_after: config.give_up_after,
            download_options: config.download,
            scan_lock: smol::lock::Mutex::new(()),
            tasks: Mutex::new(Vec::new()),
            web: Mutex::new(None),
        });
        let node = Node { inner };
        // First, so that a web UI that cannot be served stops the start before anything runs.
        if let (Some(web), true) = (config.web.clone(), config.control) {
            let server = crate::web::WebServer::start(node.clone(), web)?;
            *node.inner.web.lock().unwrap() = Some(server);
        }
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
        for l in listeners {
            tasks.push(transport::rt::spawn(accept_uploads(node.inner.clone(), l)));
        }
        tasks.push(transport::rt::spawn(crate::overlay::run(
            node.inner.state.clone(),
            overlay,
            overlay_rx,
        )));
        if let Some(l) = control_listener {
            tasks.push(transport::rt::spawn(serve_control(node.clone(), l)));
        }
        // The long-running node's only: a short-lived one is gone before anyone connects.
        if let (Some(how), Some(listen), true) =
            (config.external_port.clone(), listen, config.control)
        {
            tasks.push(transport::rt::spawn(
                node.clone().run_external_port(how, listen),
            ));
        }
        log::info!(
            "leaf {} up; serving on {}",
            node_id.short(),
            listen
                .map(|a| a.to_string())
                .unwrap_or_else(|| "nothing".into())
        );
        if config.control {
            // The long-running node runs the wishes.
            tasks.push(transport::rt::spawn(node.clone().run_wishes(wish_woken)));
            // Downloads an earlier run accepted and did not finish carry on.
            for p in node.load_pending() {
                let n = node.clone();
                tasks.push(transport::rt::spawn(async move {
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
                    // A file that got here meanwhile (or finished just before a crash) is not
                    // fetched again, unless another copy was asked for.
                    if let Err(e) = n.get_with(p.id, &p.out, true, p.again, |_| {}).await {
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
        let web = self.inner.web.lock().unwrap().take();
        if let Some(web) = web {
            web.stop().await;
        }
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().unwrap());
        for t in tasks {
            t.cancel().await;
        }
        self.unmap().await;
        for (_, stream) in self.inner.state.upload_streams.lock().unwrap().drain() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        if self.inner.control {
            let _ = std::fs::remove_file(control::socket_path(&self.inner.state.data_dir));
        }
        // Stopped: another node may use the data directory now.
        self.inner.dir_lock.lock().unwrap().take();
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.state.node_id
    }

    /// Its data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.state.data_dir
    }

    /// The address of its web UI, with the token, while it serves one.
    pub fn web_url(&self) -> Option<String> {
        self.inner.web.lock().unwrap().as_ref().map(|w| w.url())
    }

    /// Where it serves chunks.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.inner.state.listen
    }

    /// Waits until at least one super-peer link is up; false if none came up within `limit`.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        loop {
            if !self.inner.state.role.load().links.is_empty() {
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
        let _ = self
            .inner
            .overlay
            .try_send(crate::overlay::Command::Note(format!(
                "stopped sharing {}",
                folder.display()
            )));
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
        if self.inner.state.role.load().links.is_empty() {
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
        // The sources it met, for `leaf browse NODE` by this or a later command (written
        // before the command ends, outside the lock the overlay takes).
        let state = &self.inner.state;
        let list = state.seen.lock().unwrap().to_save();
        if let Some(list) = list {
            crate::seen::save(&state.data_dir, &list);
        }
    }

    fn tried(&self) -> String {
        let list: Vec<String> = self
            .inner
            .state
            .seeds
            .iter()
            .map(|a| a.to_string())
            .collect();
        let known = self.inner.state.role.load().hosts;
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
        let hits = collect_hits(&rx, wait, false).await;
        self.end_search(id);
        let mut results = group_hits(hits);
        self.mark_have(&mut results);
        Ok(results)
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
        // downloader's own search a couple of seconds in, and told of by the sources.
        let hits = collect_hits(&rx, wait, true).await;
        self.end_search(qid);
        let mut seen = Vec::new();
        for h in &hits {
            self.inner.state.reverse.note(&h.source);
        }
        Ok(hits
            .into_iter()
            .filter(|h| h.file.id == id && h.source.node != self.inner.state.node_id)
            // One per address. A node found at an address of each family (IPv6 beside IPv4)
            // is dialled at both as one source (`Reverse::way`; the download takes one address
            // of such a node at a time). Not one per node: a node id in a hit is a
            // super-peer's word, and a false hit must not hide the true one.
            .filter(|h| {
                let fresh = !seen.contains(&h.source.addr);
                seen.push(h.source.addr);
                fresh
            })
            .collect())
    }

    /// For the downloads: a connection back from a source, through the super-peer its hit
    /// named (beside dialling it, or after: see `Reverse::way`).
    pub(super) fn connect_back(&self) -> download::ConnectBack {
        let state = self.inner.state.clone();
        let overlay = self.inner.overlay.clone();
        Arc::new(move |addr| {
            let route = state.reverse.route(addr)?;
            let (state, overlay) = (state.clone(), overlay.clone());
            Some(Box::pin(async move {
                let role = state.role.load();
                // The source connects back over the family of the super-peer asked: what its
                // super-peers found of us over that family decides.
                let v6 = topology::leaf::is_v6(&route.via);
                let mine = [role.reach.as_ref(), role.reach_also.as_ref()]
                    .into_iter()
                    .flatten()
                    .find(|r| topology::leaf::is_v6(&r.observed) == v6)
                    .or(role.reach.as_ref());
                let reach = mine.map(|r| r.reachable);
                let symmetric = mine.is_some_and(|r| r.nat.as_deref() == Some("symmetric"));
                let advertised = match (v6, state.port6) {
                    (true, Some(port)) => Some(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))),
                    _ => state.advertised(),
                };
                let me = crate::reverse::Me {
                    identity: &state.identity,
                    bound: state.listen,
                    advertised,
                    reachable: reach,
                    symmetric,
                    overlay: Some(&overlay),
                };
                let got =
                    crate::reverse::connect_via(&state.reverse, me, addr, route, CONNECT_BACK_WAIT)
                        .await;
                if let Ok(conn) = &got {
                    state.reverse.count(conn.reached);
                }
                got
            }))
        })
    }

    /// The node ids this node granted an upload slot to, in order (the last 1000).
    pub fn upload_grants(&self) -> Vec<NodeId> {
        self.inner.state.slots.grants()
    }

    /// The node's state.
    pub fn status(&self) -> StatusReport {
        let role = RoleStatus::clone(&self.inner.state.role.load());
        let shares = self.inner.state.shares.read().unwrap();
        StatusReport {
            node: self.inner.state.node_id,
            role: role.role,
            role_reason: role.why,
            listen: self.inner.state.listen,
            superpeers: role.links,
            reach: role.reach,
            reach_also: role.reach_also,
            port_mapping: self.inner.port_mapping.lock().unwrap().clone(),
            web: self.inner.web.lock().unwrap().as_ref().map(|w| w.addr()),
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
                .transfers()
                .tracked
                .iter()
                .map(|t| t.info.clone())
                .collect(),
            wishes: self.wishes(),
            uploaded_chunks: self.inner.state.uploaded_chunks.load(Ordering::Relaxed),
            uploaded_bytes: self.inner.state.uploaded_bytes.load(Ordering::Relaxed),
            indirect: self.inner.state.reverse.counts(),
            upload_slots: (
                self.inner.state.slots.usage().0,
                self.inner.state.slots.max(),
            ),
            upload_queue: self.inner.state.slots.usage().1,
            peer_links: (self.inner.state.links.open(), self.inner.state.links.max()),
            upload_rate: self.inner.state.upload_cap.bytes_per_sec(),
            download_rate: self.inner.download_cap.bytes_per_sec(),
        }
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

/// How long a search for sources waits for more hits after the first arrived, which came
/// `first` after it began: four times as long (hits from super-peers further away take a hop
/// or two more), from 10 to 100 ms. On a LAN, where the first hits come within a millisecond
/// or two, a fixed 100 ms was most of `leaf get`'s start-up (bench case 1: 0.09–0.15 s
/// outside the download).
fn hit_grace(first: Duration) -> Duration {
    (first * 4).clamp(Duration::from_millis(10), Duration::from_millis(100))
}

/// Hits from `rx` until `wait` passes, or (with `after_first`) [`hit_grace`] after the first
/// hits arrived.
async fn collect_hits(rx: &Receiver<Vec<Hit>>, wait: Duration, after_first: bool) -> Vec<Hit> {
    let began = Instant::now();
    let mut deadline = began + wait;
    let mut hits = Vec::new();
    loop {
        let got = smol::future::or(async { rx.recv().await.ok() }, async {
            smol::Timer::at(deadline).await;
            None
        })
        .await;
        match got {
            Some(batch) => {
                if hits.is_empty() && after_first {
                    let now = Instant::now();
                    deadline = deadline.min(now + hit_grace(now - began));
                }
                hits.extend(batch);
            }
            None => return hits,
        }
    }
}

/// Splits records into Register batches (public so that load generators batch exactly as a
/// leaf does).
pub use topology::leaf::register_batches;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_for_more_hits_follows_the_first_within_bounds() {
        let ms = Duration::from_millis;
        // A LAN: the first hits in a millisecond, the floor holds.
        assert_eq!(hit_grace(ms(1)), ms(10));
        // Further away: four times the first hits' time.
        assert_eq!(hit_grace(ms(15)), ms(60));
        // Far away: never more than the ceiling.
        assert_eq!(hit_grace(ms(400)), ms(100));
    }
}
