//! The check of a peer's `Hello` against the key the handshake proved, for the drivers of both
//! roles. It is written once, in `wire::hello` (pure, so the sans-IO transfer sessions use it
//! too); see there.

pub use wire::hello::{check, check_key, HelloError};
