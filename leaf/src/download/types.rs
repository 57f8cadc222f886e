//! What a download is told and tells: its settings, its progress, its report, and why it failed.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wire::FileId;

/// Sources a download connects to at once, by default (`--max-peers`). BitTorrent clients
/// keep about 50 peers a torrent; with as many downloaders per file
/// ([`crate::slots::MAX_DOWNLOADERS_PER_FILE`]) a leecher of a swarm of hundreds holds at most
/// 60 connections to other leaves. `leaf::sim` found the swarm of 100 done as fast with 20 as
/// with 40 (1.46× and 1.43× its bound).
pub const MAX_PEERS: usize = 30;

/// Settings of the downloader.
#[derive(Debug, Clone)]
pub struct DownloadOptions {
    /// Chunk requests kept in flight per source, at least: a source's window holds what it
    /// delivers in a round trip and [`transfer::source::QUEUE_TIME`] more, within these
    /// bounds. One: a slow source (an 8 Mbit/s upload shared by its slots) is not handed
    /// chunks it would sit on while faster ones could serve them (`leaf::sim` measured the
    /// swarm of 100 all done at 1.61× its bound with 4, 1.43× with 1).
    pub inflight_per_source: usize,
    /// Chunk requests kept in flight per source, at most (the uploader takes up to
    /// [`transfer::upload::MAX_PENDING`] waiting).
    pub max_inflight_per_source: usize,
    /// A source that delivers no chunk for this long is dropped.
    pub response_timeout: Duration,
    /// How long to wait for a source to accept the connection.
    pub connect_timeout: Duration,
    /// How often the network is asked for more sources while a download runs.
    pub requery_interval: Duration,
    /// The longest wait between searches when no source is left.
    pub max_backoff: Duration,
    /// How soon a queued request is asked again.
    pub queued_retry: Duration,
    /// Sources connected or being connected to at once; others found wait their turn. Keeps
    /// a popular file from costing a file descriptor per source, and a flood of made-up
    /// sources from turning downloaders into a crowd at one address.
    pub max_sources: usize,
    /// With every place taken and other sources waiting, a source that has delivered no chunk
    /// for this long may be let go for one of them ([`transfer::peers::Rotation`]).
    pub rotate_idle: Duration,
    /// At most one source is let go this often.
    pub rotate_every: Duration,
}

impl Default for DownloadOptions {
    fn default() -> Self {
        DownloadOptions {
            inflight_per_source: 1,
            max_inflight_per_source: 32,
            response_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            requery_interval: Duration::from_secs(30),
            max_backoff: Duration::from_secs(120),
            queued_retry: Duration::from_millis(500),
            max_sources: MAX_PEERS,
            rotate_idle: Duration::from_secs(30),
            rotate_every: Duration::from_secs(10),
        }
    }
}

/// What one source contributed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceReport {
    /// The source.
    pub addr: SocketAddr,
    /// Chunks it delivered that were kept.
    pub chunks: u64,
    /// Bytes of those chunks.
    pub bytes: u64,
    /// Why it was dropped, if it was.
    pub error: Option<String>,
    /// The first queue position it gave us, if its slots were full.
    pub queued_at: Option<u32>,
    /// How the connection to it was made, once it was.
    #[serde(default)]
    pub reached: Option<Reached>,
    /// The address it was dialled at, when that was its other one (IPv6 beside IPv4).
    #[serde(default)]
    pub at: Option<SocketAddr>,
    /// How long after it was first tried (dialled, or asked to connect back) its first chunk
    /// arrived, in milliseconds: what the way it was reached cost before the first byte.
    #[serde(default)]
    pub first_chunk_ms: Option<u64>,
}

/// How a connection to a source was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reached {
    /// We dialled it.
    Direct,
    /// It connected to us, asked through its super-peer (it cannot be reached).
    Reverse,
    /// Both dialled at once through both NATs (neither can be reached).
    Punched,
    /// Through a super-peer's relay (end-to-end encrypted), the last resort.
    Relayed,
}

impl std::fmt::Display for Reached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Reached::Direct => "direct",
            Reached::Reverse => "reverse connection",
            Reached::Punched => "hole punched",
            Reached::Relayed => "relayed by a super-peer",
        })
    }
}

impl SourceReport {
    pub(super) fn new(addr: SocketAddr) -> Self {
        SourceReport {
            addr,
            chunks: 0,
            bytes: 0,
            error: None,
            queued_at: None,
            reached: None,
            first_chunk_ms: None,
            at: None,
        }
    }

    pub(super) fn failed(addr: SocketAddr, error: String) -> Self {
        SourceReport {
            error: Some(error),
            ..Self::new(addr)
        }
    }
}

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownloadReport {
    /// The file's id.
    pub id: FileId,
    /// Where it was written.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// How long it took, in milliseconds.
    pub elapsed_ms: u64,
    /// Chunks found verified on disk from an earlier attempt.
    pub resumed_chunks: u64,
    /// Each source's part (one entry per connection to a source).
    pub sources: Vec<SourceReport>,
    /// Nothing was fetched: the node already had the file, at `path`.
    #[serde(default)]
    pub already_had: bool,
}

/// Progress of a running download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Verified bytes written.
    pub done_bytes: u64,
    /// File size.
    pub size: u64,
    /// Sources connected now.
    pub sources: usize,
    /// The best queue position among sources that queued us.
    pub queued: Option<u32>,
    /// Chunks found on disk from an earlier attempt.
    pub resumed_chunks: u64,
    /// Every chunk is in and verified: the file is being synced to disk and given its name.
    pub verifying: bool,
}

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// Nobody has the file.
    #[error("no source found for {0}")]
    NoSources(FileId),
    /// No source gave a manifest that matches the id.
    #[error("no source gave a valid manifest for {id}: {reasons}")]
    NoManifest {
        /// The file.
        id: FileId,
        /// What went wrong with each source.
        reasons: String,
    },
    /// The last chunk's bytes proved the manifest's size wrong, more than once.
    #[error("the manifests sources gave for {id} lie about its size ({claimed} bytes; its last chunk proves {proven})")]
    ManifestSize {
        /// The file.
        id: FileId,
        /// The size the manifest gave.
        claimed: u64,
        /// The size the last chunk proves.
        proven: u64,
        /// The sources that sent that manifest (none for a manifest from an earlier attempt's
        /// record).
        liars: Vec<SocketAddr>,
    },
    /// No source could be found for longer than the download may wait.
    #[error("download of {id} stopped at chunk {done} of {total}: no source left ({reasons}); run the same command again to resume")]
    SourcesFailed {
        /// The file.
        id: FileId,
        /// Chunks verified and kept.
        done: u64,
        /// Chunks in the file.
        total: u64,
        /// What went wrong with each source.
        reasons: String,
    },
    /// The output folder has too little free space.
    #[error("not enough space in {}: {need} more bytes needed, {free} free", dir.display())]
    NoSpace {
        /// The output folder.
        dir: PathBuf,
        /// Bytes still to write.
        need: u64,
        /// Bytes free.
        free: u64,
    },
    /// Reading or writing our own files failed (a full disk, a permission error).
    #[error("cannot write {}: {source}; verified chunks are kept, run the same command again to resume", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}
