//! `superpeer`: the super-peer role, as a library (run in-process by a promoted leaf and by
//! tests) and as the dedicated `superpeer` binary.
//!
//! # Layout
//! - [`server`]: [`SuperPeerNode`], the async driver around the overlay logic
//!   ([`topology::SuperPeer`]) and the index ([`index::Index`]).
//!
//! The connection layer it runs on (the Noise handshake, framing, limits, identity, data files)
//! is the `transport` crate, shared with the leaf.
//!
//! # Example
//! ```no_run
//! # smol::block_on(async {
//! use superpeer::{Config, SuperPeerNode};
//! let id = transport::identity::Identity::generate();
//! let node = SuperPeerNode::start(Config::new(id, "127.0.0.1:0".parse().unwrap())).await.unwrap();
//! println!("listening on {}", node.listen_addr());
//! # })
//! ```

mod relay;
pub mod server;

pub use server::{Config, Demoted, StartError, Status, SuperPeerNode};

/// The port a super-peer listens on by default, and where a leaf looks for one by default.
pub const DEFAULT_PORT: u16 = 7700;
