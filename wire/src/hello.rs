//! The check every connection makes of the peer's `Hello`, after the Noise handshake proved the
//! peer's key: the node id it claims must be that key's, and it must speak our protocol
//! version. Written once here for the super-peer's connections, the leaf's overlay links and
//! both ends of a transfer (`transport::hello` re-exports it for the drivers; the sans-IO
//! transfer sessions call it directly).

use crate::{Hello, NodeId, PROTOCOL_VERSION};

/// Why a peer's Hello is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// It claims another node's id than the key it proved.
    #[error("Hello claims node {} but its key is that of {}", claimed.short(), proved.short())]
    NotItsKey {
        /// The id in the Hello.
        claimed: NodeId,
        /// The id of the key the handshake proved.
        proved: NodeId,
    },
    /// It speaks another protocol version.
    #[error("speaks protocol version {0}")]
    Version(u16),
}

/// Checks the Hello of the peer whose key the handshake proved to be `proved`.
pub fn check(proved: NodeId, hello: &Hello) -> Result<(), HelloError> {
    check_key(proved, hello)?;
    if hello.version != PROTOCOL_VERSION {
        return Err(HelloError::Version(hello.version));
    }
    Ok(())
}

/// Only the key half of [`check`], for a driver that leaves the version to the overlay logic.
pub fn check_key(proved: NodeId, hello: &Hello) -> Result<(), HelloError> {
    if hello.node != proved {
        return Err(HelloError::NotItsKey {
            claimed: hello.node,
            proved,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_claimed_id_must_be_the_proved_key_and_the_version_ours() {
        let hello = |n: u8| Hello::new(NodeId([n; 32]), crate::Role::Leaf, None, "t");
        assert_eq!(check(NodeId([1; 32]), &hello(1)), Ok(()));
        let err = check(NodeId([1; 32]), &hello(2)).unwrap_err();
        assert!(err.to_string().starts_with("Hello claims node"), "{err}");
        let mut old = hello(1);
        old.version = PROTOCOL_VERSION + 1;
        assert_eq!(
            check(NodeId([1; 32]), &old),
            Err(HelloError::Version(PROTOCOL_VERSION + 1))
        );
        assert_eq!(check_key(NodeId([1; 32]), &old), Ok(()));
    }
}
