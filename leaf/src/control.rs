//! The local control protocol: how `leaf search`, `get`, `status` and `share` talk to the
//! running node over a Unix socket in its data directory.
//!
//! One request per connection; the node answers with a stream of [`Reply`]s ending in
//! [`Reply::End`]. Frames are `wire`'s (length, CBOR body, CRC32). If the client goes away
//! mid-stream (Ctrl-C on `leaf get`), the work carries on in the node.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use smol::channel::{self, Receiver, Sender};
use smol::io::AsyncWriteExt;
use smol::net::unix::UnixStream;
use transport::net::FrameReader;
use wire::{FileId, NodeId, Search};

use crate::download::DownloadReport;
use crate::search::SearchResult;
use crate::share::ScanProgress;

/// The control socket's file name in the data directory.
pub const SOCKET_NAME: &str = "control.sock";

/// The control socket of a data directory.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET_NAME)
}

/// What a client asks the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Share these folders (scan, hash, register).
    Share {
        /// Folders, absolute.
        paths: Vec<PathBuf>,
    },
    /// Search the network.
    Search {
        /// What to look for.
        search: Search,
        /// Query TTL.
        ttl: u8,
        /// How long to collect hits, in milliseconds.
        wait_ms: u64,
    },
    /// Download these files.
    Get {
        /// Content ids.
        ids: Vec<FileId>,
        /// Output folder, absolute.
        out: PathBuf,
        /// Fetch a file even if the node already has it (else its path is reported).
        #[serde(default)]
        again: bool,
    },
    /// Report the node's state.
    Status,
    /// Add a wish; answered with the wishlist.
    WishAdd {
        /// Words every match has.
        words: String,
        /// Extension and size bounds.
        filter: wire::Filter,
        /// Download new matches.
        auto: bool,
        /// Where, absolute.
        out: PathBuf,
    },
    /// Remove a wish by its number; answered with the wishlist.
    WishRemove {
        /// The wish's number.
        id: u32,
    },
    /// The wishlist.
    Wishes,
    /// List what the leaf `source` names shares.
    Browse {
        /// Where it serves chunks (`IP:PORT`), or its node id (or the first 8 or more hex
        /// digits of it) as a search of this node met it ([`crate::node::Node::locate`]).
        source: String,
    },
    /// Download a folder of the leaf `source` names: one `GetDone`/`GetFailed` per file.
    GetFolder {
        /// Its address or node id, as for [`Request::Browse`].
        source: String,
        /// The folder, as its listing gives it.
        folder: String,
        /// Where to save it, absolute (the folder is made inside).
        out: PathBuf,
        /// Fetch files the node already has too.
        again: bool,
    },
    /// Search the network, answering with the growing grouped list as hits arrive: repeated
    /// [`Reply::Results`], each the whole list so far, then [`Reply::End`] after `wait_ms`.
    SearchStream {
        /// What to look for.
        search: Search,
        /// Query TTL.
        ttl: u8,
        /// How long to collect hits, in milliseconds.
        wait_ms: u64,
    },
    /// Stop a running download. Its partial file stays, so a later Get resumes it.
    Cancel {
        /// The file.
        id: FileId,
    },
    /// Cancel a download for good: stop it if it runs, and delete its partial file and record.
    Discard {
        /// The file.
        id: FileId,
    },
    /// Stop sharing a folder: its files are withdrawn from the super-peers.
    Unshare {
        /// The folder, as it was shared (absolute).
        path: PathBuf,
    },
}

/// A folder's share, done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareSummary {
    /// The folder.
    pub folder: PathBuf,
    /// Files shared from it.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files hashed this time.
    pub hashed: u64,
    /// Files found unchanged in the cache.
    pub reused: u64,
    /// Files skipped, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// A download's state, as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownloadState {
    /// Waiting for one of the node's download slots.
    Queued,
    /// Looking for sources.
    Searching,
    /// Fetching chunks.
    Running,
    /// Every chunk is in and verified; the file is being synced to disk and given its name.
    Verifying,
    /// No source is left: searching again with growing back-off.
    Waiting,
    /// Complete and verified, at this path.
    Done(PathBuf),
    /// Stopped, with the reason.
    Failed(String),
}

impl DownloadState {
    /// True while the download is looking for sources or fetching.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            DownloadState::Queued
                | DownloadState::Searching
                | DownloadState::Running
                | DownloadState::Verifying
                | DownloadState::Waiting
        )
    }
}

/// One download as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadInfo {
    /// The file.
    pub id: FileId,
    /// Its name.
    pub name: String,
    /// Its size (0 until known).
    pub size: u64,
    /// Verified bytes written.
    pub done_bytes: u64,
    /// Sources in use.
    pub sources: usize,
    /// Bytes per second, averaged over the last seconds.
    pub speed: u64,
    /// Seconds left at that speed.
    pub eta_s: Option<u64>,
    /// The best place in a source's upload queue, while every source has us queued.
    pub queued_at: Option<u32>,
    /// Chunks found on disk from an earlier attempt.
    pub resumed_chunks: u64,
    /// The folder it is saved into.
    pub out: PathBuf,
    /// State.
    pub state: DownloadState,
}

/// One super-peer link as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// The super-peer's address.
    pub addr: SocketAddr,
    /// Whether the link is up.
    pub connected: bool,
    /// The super-peer's node id, once known.
    pub node: Option<NodeId>,
}

/// The in-process super-peer of a promoted node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuperPeerStatus {
    /// Where it accepts leaves and neighbours.
    pub listen: SocketAddr,
    /// Leaves attached.
    pub leaves: u64,
    /// Leaves it accepts at most.
    pub leaf_slots: u32,
    /// Neighbouring super-peers.
    pub neighbours: u64,
    /// Records in its index.
    pub records: u64,
    /// Queries it answered.
    pub queries: u64,
}

/// A shared folder's figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderStats {
    /// The folder.
    pub folder: PathBuf,
    /// Files shared from it.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// The port a node asks others to connect to, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The external port (None: none held; the listen port is announced).
    pub port: Option<u16>,
    /// Where it comes from (UPnP, PCP or NAT-PMP and the router's address, a flag, a file), or why there is
    /// none.
    pub how: String,
}

/// Connections a node made, or took, other than by dialling.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Indirect {
    /// The source connected to the downloader, asked through its super-peer.
    pub reverse: u64,
    /// Both dialled at once through their NATs.
    pub punched: u64,
    /// Through a super-peer's relay.
    pub relayed: u64,
}

/// Whether others can connect to a node: what a super-peer found when it connected back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    /// The node's listen address as the super-peer sees it (behind a NAT: the router's).
    pub observed: SocketAddr,
    /// Whether the super-peer's connection to it got through.
    pub reachable: bool,
    /// How its NAT maps its port, when two super-peers could tell: "endpoint-independent"
    /// (hole punching can work) or "symmetric" (it cannot).
    #[serde(default)]
    pub nat: Option<String>,
}

/// The node's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Node id.
    pub node: NodeId,
    /// "leaf" or "super-peer".
    pub role: String,
    /// Why it has that role.
    pub role_reason: String,
    /// Super-peers in its host cache.
    pub hosts: usize,
    /// Its super-peer role's figures, when promoted.
    pub superpeer: Option<SuperPeerStatus>,
    /// Recent overlay events, oldest first.
    pub events: Vec<String>,
    /// Where it serves chunks.
    pub listen: Option<SocketAddr>,
    /// Its super-peers.
    pub superpeers: Vec<LinkStatus>,
    /// Whether others can connect to it, as its super-peers found (None: not known yet): over
    /// IPv4 while it has a link to a super-peer over IPv4, else over IPv6.
    #[serde(default)]
    pub reach: Option<Reach>,
    /// The same over its other address family (IPv6, beside IPv4), when a super-peer linked
    /// over that family has said.
    #[serde(default)]
    pub reach_also: Option<Reach>,
    /// The port others are told to connect to, when one is set or mapped on the router.
    #[serde(default)]
    pub port_mapping: Option<PortMapping>,
    /// Where its web UI is served, if it is.
    #[serde(default)]
    pub web: Option<SocketAddr>,
    /// Shared folders.
    pub folders: Vec<PathBuf>,
    /// Each shared folder's files and bytes.
    #[serde(default)]
    pub folder_stats: Vec<FolderStats>,
    /// Shared files.
    pub files: u64,
    /// Shared bytes.
    pub bytes: u64,
    /// Downloads of this run.
    pub downloads: Vec<DownloadInfo>,
    /// The wishlist, with what each wish found.
    #[serde(default)]
    pub wishes: Vec<crate::wish::Wish>,
    /// Chunks served to others.
    pub uploaded_chunks: u64,
    /// Bytes served to others.
    pub uploaded_bytes: u64,
    /// Connections made other than by dialling (behind NAT), either way, since the node
    /// started.
    #[serde(default)]
    pub indirect: Indirect,
    /// Upload slots in use, and how many there are.
    pub upload_slots: (usize, usize),
    /// Downloaders waiting for an upload slot.
    pub upload_queue: usize,
    /// Connections with other leaves open now, both ways, and the node's cap
    /// (`--max-peer-links`).
    #[serde(default)]
    pub peer_links: (usize, usize),
    /// Upload cap in bytes per second, if any.
    pub upload_rate: Option<u64>,
    /// Download cap in bytes per second, if any.
    pub download_rate: Option<u64>,
}

/// What the node answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Scan progress of a share.
    ShareProgress(ScanProgress),
    /// A folder is shared.
    Shared(ShareSummary),
    /// A folder is no longer shared.
    Unshared {
        /// The folder.
        folder: PathBuf,
        /// How many files were shared from it.
        files: u64,
    },
    /// Search results, grouped by file.
    Results(Vec<SearchResult>),
    /// Download progress.
    GetProgress(DownloadInfo),
    /// A download finished.
    GetDone(DownloadReport),
    /// A download failed.
    GetFailed {
        /// The file.
        id: FileId,
        /// Why.
        error: String,
    },
    /// The node's state.
    Status(Box<StatusReport>),
    /// The wishlist, oldest first.
    Wishes(Vec<crate::wish::Wish>),
    /// What a leaf shares.
    Listing(crate::browse::Listing),
    /// A request (or part of it) failed.
    Error(String),
    /// No more replies.
    End,
}

/// Connects to the node running for `data_dir`, if one is.
pub async fn connect(data_dir: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket_path(data_dir)).await.ok()
}

/// Sends `req` over a control connection; the replies arrive on the returned channel.
pub fn request(stream: UnixStream, req: Request) -> Receiver<Reply> {
    let (tx, rx) = channel::unbounded();
    transport::rt::spawn(async move {
        if let Err(e) = request_inner(stream, req, &tx).await {
            let _ = tx
                .send(Reply::Error(format!(
                    "lost the connection to the node: {e}"
                )))
                .await;
            let _ = tx.send(Reply::End).await;
        }
    })
    .detach();
    rx
}

async fn request_inner(stream: UnixStream, req: Request, tx: &Sender<Reply>) -> io::Result<()> {
    let mut writer = stream.clone();
    let mut buf = Vec::new();
    wire::frame::encode_value(&req, &mut buf);
    writer.write_all(&buf).await?;
    let mut reader = FrameReader::new(stream);
    loop {
        match reader.read_with(wire::frame::decode_value::<Reply>).await {
            Ok(Some(reply)) => {
                let end = reply == Reply::End;
                if tx.send(reply).await.is_err() || end {
                    return Ok(());
                }
            }
            Ok(None) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "node closed")),
            Err(e) => return Err(io::Error::other(e.to_string())),
        }
    }
}
