//! `leaf`: the leaf role of Canopy — share folders, search the network, download in parallel
//! verified chunks from every leaf that has a file, and serve chunks to others.
//!
//! # Layout
//! The rules of the protocol are not here: the overlay's are in `topology`, the transfers' in
//! `transfer` (both sans-IO). This crate drives them and does the I/O. Its modules form a DAG:
//! `node` uses the others, and nothing but the TUI uses `node`.
//! - [`node`]: [`Node`], the handle on the running node (start, share, search, get, status);
//!   its downloads' bookkeeping and the control socket and chunk server's accept loops.
//! - `overlay`: the overlay actor, the one owner of the super-peer links and searches: it drives
//!   `topology::LeafOverlay`, and the super-peer role in-process when promoted.
//! - `state`: what the node, the overlay actor and the upload connections share.
//! - [`download`]: one actor per download that owns its `transfer::Scheduler` and one
//!   `transfer::SourceSession` per source; `part`: its partial file and record.
//! - [`upload`]: serving manifests and chunks by content id, one `transfer::UploadSession` per
//!   downloader; [`slots`]: the upload slots, handed out tit-for-tat, and their queue.
//! - [`swarm`]: files being downloaded served from their verified chunks, tit-for-tat
//!   bookkeeping, and how long finished downloads are seeded.
//! - [`share`]: scanning and hashing shared folders, the hash cache, the registry by id;
//!   [`tags`]: reading audio tags with `lofty`.
//! - [`rate`]: the token bucket behind the upload and download caps, and the parsers of
//!   rates, sizes and lengths of time.
//! - [`search`]: grouping hits into one row per file, and the filters and orders of results.
//! - [`browse`]: listing another leaf's shares (`transfer::BrowseSession`), and a folder of it.
//! - [`wish`]: the wishlist's rules (sans IO); the node runs them.
//! - [`control`]: the local control socket protocol between the CLI and the node.
//! - [`tui`]: `leaf tui`, the terminal interface over the control socket.
//! - [`web`]: the web UI and its JSON HTTP API (axum, on a thread of its own), the same
//!   requests as the control socket behind a token.
//!
//! The `leaf` binary (`src/bin/leaf/`: `args`, `print` and `main`) is the command line on top.
//!
//! # Example
//! ```no_run
//! # smol::block_on(async {
//! use leaf::node::{Node, NodeConfig};
//! let mut config = NodeConfig::new("/tmp/canopy-doc");
//! config.superpeers = vec!["127.0.0.1:7700".parse().unwrap()];
//! config.listen = Some("127.0.0.1:0".parse().unwrap());
//! config.upload_rate = leaf::rate::parse_rate("2MB").unwrap();
//! let node = Node::start(config).await.unwrap();
//! node.share("/home/me/music".as_ref(), |_| {}).await.unwrap();
//! # })
//! ```

pub mod browse;
pub mod control;
pub mod download;
pub mod links;
pub mod node;
mod overlay;
mod part;
pub mod portmap;
pub mod rate;
pub mod reverse;
pub mod search;
pub mod seen;
pub mod share;
pub mod sim;
pub mod slots;
mod state;
pub mod swarm;
pub mod tags;
pub mod tui;
pub mod upload;
pub mod web;
pub mod wish;

pub use node::{Node, NodeConfig, NodeError};

/// The software name sent in Hello.
pub const AGENT: &str = concat!("canopy-leaf/", env!("CARGO_PKG_VERSION"));
