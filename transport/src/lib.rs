//! `transport`: what every Canopy connection runs on, shared by both roles (`superpeer` and
//! `leaf` depend on it; neither reaches into the other for it).
//!
//! # Layout
//! - [`secure`]: the Noise XX handshake and the encrypted halves every connection runs on.
//! - [`net`]: framed reading and writing over async streams, and dialling.
//! - [`link`]: a connection's writer task with its bytes in flight capped ([`link::Outbox`]),
//!   and the accept loop that admits connections through the gate.
//! - [`limits`]: the bounds a node keeps on what peers send, the connection [`limits::Gate`]
//!   and token buckets.
//! - [`hello`]: the check of a peer's `Hello` against the key it proved, done once here.
//! - [`identity`]: the node's key pair kept in a data directory (its node id is derived from the
//!   public key).
//! - [`store`]: checksummed data files written atomically, and the data directory's lock.
//! - [`rt`]: the one thread a node's tasks run on, waiting on the sockets itself.
//! - [`logging`]: the log on standard error, with text from peers made safe for a terminal.
//! - [`signals`]: waiting for SIGTERM or SIGINT, so a node stops cleanly.
//!
//! Nothing here knows what a super-peer or a leaf does with a connection: roles, queries and
//! transfers are the business of `topology`, `superpeer` and `leaf`.

pub mod hello;
pub mod identity;
pub mod limits;
pub mod link;
pub mod logging;
pub mod net;
pub mod rt;
pub mod secure;
pub mod signals;
pub mod store;
