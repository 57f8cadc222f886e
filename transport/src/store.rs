//! Data files that survive crashes and tell damage from content: the host cache, the share
//! cache, download records and the download queue all go through here.
//!
//! A file is written to a temporary name, synced and renamed over the old one
//! ([`write_atomically`]), so a crash leaves the old file or the new, never a torn one. Its
//! content is a header (`CNPY`, a format byte), the BLAKE3 hash of the body, and the body (CBOR).
//! Reading checks the header and the hash before decoding, so a flipped bit, a truncated file
//! or a file from something else is reported as [`LoadError::Damaged`] and the caller rebuilds
//! what it held, instead of trusting a body that happens to decode.

use std::fs;
use std::io;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::identity::write_atomically;

/// The file in a data directory that a running node holds locked.
pub const LOCK_FILE: &str = "lock";

const MAGIC: &[u8; 4] = b"CNPY";
const FORMAT: u8 = 1;
const HEADER: usize = MAGIC.len() + 1 + 32;

/// Why a data file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read at all.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: io::Error,
    },
    /// The file is there but its content is not what was written.
    #[error("{path} is damaged: {why}")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// A data directory held by this process, so no second node runs on it (their data files would
/// overwrite each other's). Released when dropped, or when the process ends however it ends.
#[derive(Debug)]
pub struct DirLock {
    _file: fs::File,
}

/// Takes `dir` for this process; fails with a message naming it if another process holds it.
pub fn lock_dir(dir: &Path) -> io::Result<DirLock> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(DirLock { _file: file }),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "another node is running on {} (it holds {}); stop it, or give this one its \
                 own data directory",
                dir.display(),
                path.display()
            ),
        )),
        Err(e) => Err(e.into()),
    }
}

/// Saves `value` to `path`: checksummed, atomically.
pub fn save<T: Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let mut body = Vec::new();
    ciborium::into_writer(value, &mut body).map_err(io::Error::other)?;
    let mut bytes = Vec::with_capacity(HEADER + body.len());
    bytes.extend_from_slice(MAGIC);
    bytes.push(FORMAT);
    bytes.extend_from_slice(blake3::hash(&body).as_bytes());
    bytes.extend_from_slice(&body);
    write_atomically(path, &bytes)
}

/// Loads what [`save`] wrote to `path`; `Ok(None)` if there is no such file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, LoadError> {
    let shown = || path.display().to_string();
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(LoadError::Io {
                path: shown(),
                source,
            })
        }
    };
    let damaged = |why: &str| LoadError::Damaged {
        path: shown(),
        why: why.to_string(),
    };
    if bytes.len() < HEADER || &bytes[..4] != MAGIC {
        return Err(damaged("not a Canopy data file"));
    }
    if bytes[4] != FORMAT {
        return Err(damaged(&format!("unknown format {}", bytes[4])));
    }
    let body = &bytes[HEADER..];
    if blake3::hash(body).as_bytes() != &bytes[5..HEADER] {
        return Err(damaged("checksum mismatch"));
    }
    ciborium::from_reader(body)
        .map(Some)
        .map_err(|e| damaged(&e.to_string()))
}

/// [`load`] for callers that rebuild what a missing or damaged file held: the value, or
/// `None` with the problem logged (naming the file and `what` is rebuilt).
pub fn load_or_log<T: DeserializeOwned>(path: &Path, rebuilt: &str) -> Option<T> {
    match load(path) {
        Ok(v) => v,
        Err(e) => {
            log::warn!("{e}; {rebuilt}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_every_flipped_bit_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.cbor");
        let value = vec!["one".to_string(), "two".to_string()];
        assert!(load::<Vec<String>>(&path).unwrap().is_none());
        save(&path, &value).unwrap();
        assert_eq!(load::<Vec<String>>(&path).unwrap(), Some(value));
        let good = fs::read(&path).unwrap();
        for i in 0..good.len() {
            for bit in [0x01, 0x80] {
                let mut bad = good.clone();
                bad[i] ^= bit;
                fs::write(&path, &bad).unwrap();
                assert!(
                    matches!(load::<Vec<String>>(&path), Err(LoadError::Damaged { .. })),
                    "byte {i} bit {bit:#x} went unnoticed"
                );
            }
        }
        for len in [0, 3, HEADER - 1, good.len() - 1] {
            fs::write(&path, &good[..len]).unwrap();
            assert!(matches!(
                load::<Vec<String>>(&path),
                Err(LoadError::Damaged { .. })
            ));
        }
        // No temporary file is left beside it.
        save(&path, &vec!["three".to_string()]).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn a_data_directory_is_held_by_one_process_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_dir(dir.path()).unwrap();
        let e = lock_dir(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().contains("another node"), "{e}");
        drop(held);
        lock_dir(dir.path()).unwrap();
    }
}
