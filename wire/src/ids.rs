//! Identifiers: content ids, node ids and query ids.
//!
//! All three are fixed-size byte strings. They travel as CBOR byte strings (not arrays of
//! integers) and print as lower-case hex, so a [`FileId`] prints exactly what `b3sum` prints.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A hex string that does not parse as an identifier of the expected length.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a {what}: expected {len} hex digits")]
pub struct ParseIdError {
    /// The text that was given (cut to 80 characters).
    pub text: String,
    /// What was expected ("file id", ...).
    pub what: &'static str,
    /// How many hex digits were expected.
    pub len: usize,
}

macro_rules! byte_id {
    ($(#[$doc:meta])* $name:ident, $len:expr, $what:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $name(pub [u8; $len]);

        impl $name {
            /// The length in bytes.
            pub const LEN: usize = $len;

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// Lower-case hex.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }

            /// The first eight hex digits, for logs.
            pub fn short(&self) -> String {
                hex::encode(&self.0[..4])
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let err = || ParseIdError {
                    text: s.chars().take(80).collect(),
                    what: $what,
                    len: $len * 2,
                };
                let mut out = [0u8; $len];
                hex::decode_to_slice(s.trim(), &mut out).map_err(|_| err())?;
                Ok($name(out))
            }
        }

        /// Bytes on the wire (CBOR); hex text in human-readable formats (JSON), as the
        /// command line prints and takes it.
        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                if s.is_human_readable() {
                    s.serialize_str(&self.to_hex())
                } else {
                    s.serialize_bytes(&self.0)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "{} bytes", $len)
                    }
                    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<$name, E> {
                        let arr: [u8; $len] =
                            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))?;
                        Ok($name(arr))
                    }
                    fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<$name, E> {
                        self.visit_bytes(&v)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                if d.is_human_readable() {
                    d.deserialize_str(V)
                } else {
                    d.deserialize_bytes(V)
                }
            }
        }
    };
}

byte_id!(
    /// A file's content id: the plain BLAKE3 hash of its bytes, what `b3sum` prints.
    FileId,
    32,
    "file id"
);
byte_id!(
    /// A node's identity in the overlay.
    NodeId,
    32,
    "node id"
);
byte_id!(
    /// A random id carried by a query, used to suppress duplicates and route hits back.
    QueryId,
    16,
    "query id"
);

impl From<blake3::Hash> for FileId {
    fn from(h: blake3::Hash) -> Self {
        FileId(*h.as_bytes())
    }
}

/// The network an address stands for, as counts and bans see it: an IPv4 address itself, an
/// IPv6 address its /64 (one site's subnet: a host there picks any of its 2^64 addresses at
/// will, so a ban on one address alone would be no ban).
pub fn network_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip.to_canonical() {
        std::net::IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            std::net::IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}
