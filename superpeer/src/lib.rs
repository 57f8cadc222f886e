//! `superpeer`: the super-peer role, as a library (run in-process by a promoted leaf and by
//! tests) and as the dedicated `superpeer` binary.
//!
//! # Layout
//! - [`server`]: [`SuperPeerNode`], the async driver around the overlay logic
//!   ([`topology::SuperPeer`]) and the index ([`index::Index`]).
//! - [`net`]: framed reading and writing over async streams, shared with the leaf.
//! - [`secure`]: the Noise handshake and the encrypted halves every connection runs on.
//! - [`store`]: checksummed data files written atomically.
//! - [`identity`]: the node's key pair kept in a data directory (its node id is derived from the
//!   public key), and atomic file writes.
//!
//! # Example
//! ```no_run
//! # smol::block_on(async {
//! use superpeer::{Config, SuperPeerNode};
//! let id = superpeer::identity::Identity::generate();
//! let node = SuperPeerNode::start(Config::new(id, "127.0.0.1:0".parse().unwrap())).await.unwrap();
//! println!("listening on {}", node.listen_addr());
//! # })
//! ```

pub mod identity;
pub mod limits;
pub mod net;
pub mod secure;
pub mod server;
pub mod store;

pub use server::{Config, Demoted, StartError, Status, SuperPeerNode};

/// The port a super-peer listens on by default, and where a leaf looks for one by default.
pub const DEFAULT_PORT: u16 = 7700;
