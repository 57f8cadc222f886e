//! Content identity: chunk layout, manifests, and their verification against a file id.
//!
//! A file's id is its plain BLAKE3 hash. A file is cut into chunks of a power-of-two size
//! ([`chunk_size_for`]); each chunk is a complete subtree of the BLAKE3 tree, so its
//! *chaining value* (`blake3::hazmat`) can be checked on its own. The manifest is the list of
//! those chaining values; merging them up the tree must give the file id ([`Manifest::verify`]),
//! and every chunk must hash to its entry before it is kept ([`Manifest::verify_chunk`]).
//!
//! A file of one chunk (at most `chunk_size` bytes) has no interior nodes: its single manifest
//! entry is the root hash itself, the file id.

use std::ops::Range;

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

use crate::ids::FileId;

/// The smallest chunk size used. A chunk is served only once it is whole and verified, so in
/// a swarm the chunk size sets how fast a chunk spreads from node to node: the swarm
/// simulator (`leaf/examples/swarm.rs`, a 32 MiB file at 8 Mbit/s a node) finished 100
/// leechers in 1.45x the lower bound with 256 KiB chunks, 1.34x with 128 KiB and 1.29x with
/// 64 KiB; 1,000 leechers in 1.59x, 1.42x and 1.35x. But each chunk costs messages (a
/// request, a `Have` to each peer that lacks it): 101 real processes on two CPUs (bench case
/// 6, N = 100) took 57.5, 58.6 and 59.7 s with 256 KiB, 58.3, 61.4 and 64.5 s with 128 KiB,
/// and 69.8 s with 64 KiB, while aria2c given 128 KiB pieces took 53 s. So 256 KiB, until a
/// chunk costs fewer messages.
pub const MIN_CHUNK: u32 = 256 << 10;
/// The largest chunk size used.
pub const MAX_CHUNK: u32 = 16 << 20;
/// Chunk sizes grow with the file so a manifest stays near this many entries.
pub const TARGET_CHUNKS: u64 = 4096;

/// A 32-byte BLAKE3 chaining value.
pub type ChainingValue = [u8; 32];

/// The chunk size for a file of `size` bytes: a power of two from 256 KiB (files up to 1 GiB)
/// to 16 MiB, so that a manifest has at most about 4096 entries.
pub fn chunk_size_for(size: u64) -> u32 {
    let wanted = size.div_ceil(TARGET_CHUNKS).next_power_of_two();
    wanted.clamp(MIN_CHUNK as u64, MAX_CHUNK as u64) as u32
}

/// How many chunks a file of `size` bytes has with chunks of `chunk_size` (an empty file has one,
/// empty, chunk).
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(chunk_size as u64).max(1)
}

/// Why a manifest does not match a file id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The chunk size is not a power of two between 1 KiB and [`MAX_CHUNK`].
    #[error("chunk size {0} is not a power of two between 1 KiB and 16 MiB")]
    BadChunkSize(u32),
    /// The number of chaining values does not fit the size and chunk size.
    #[error("manifest has {got} chaining values, a file of {size} bytes needs {want}")]
    WrongCount {
        /// Entries present.
        got: usize,
        /// Entries needed.
        want: u64,
        /// The file size.
        size: u64,
    },
    /// The chaining values do not merge into the file id.
    #[error("manifest does not hash to file id {id}")]
    RootMismatch {
        /// The id it should have matched.
        id: FileId,
    },
}

/// Why a chunk was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The index is past the last chunk.
    #[error("chunk {index} is out of range: the file has {count} chunks")]
    OutOfRange {
        /// The index asked for.
        index: u64,
        /// How many chunks there are.
        count: u64,
    },
    /// The chunk has the wrong number of bytes.
    #[error("chunk {index} has {got} bytes, expected {want}")]
    WrongLength {
        /// Which chunk.
        index: u64,
        /// Bytes received.
        got: usize,
        /// Bytes expected.
        want: u64,
    },
    /// The chunk's bytes do not hash to its manifest entry.
    #[error("chunk {index} does not match its hash in the manifest")]
    HashMismatch {
        /// Which chunk.
        index: u64,
    },
}

/// The chunk layout of a file and the chaining value of each chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes: a power of two, at least 1 KiB (the BLAKE3 chunk).
    pub chunk_size: u32,
    /// One chaining value per chunk (for a one-chunk file: the root hash).
    pub cvs: Vec<ChainingValue>,
}

impl Manifest {
    /// A manifest from chaining values stored back to back (32 bytes each), as they travel and
    /// as they are kept on disk; a trailing partial value is ignored (check the count with
    /// [`Manifest::verify`]).
    pub fn from_flat(size: u64, chunk_size: u32, cvs: &[u8]) -> Manifest {
        Manifest {
            size,
            chunk_size,
            cvs: cvs
                .chunks_exact(32)
                .map(|c| c.try_into().expect("32 bytes"))
                .collect(),
        }
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u64 {
        chunk_count(self.size, self.chunk_size)
    }

    /// The byte range of chunk `index` within the file.
    pub fn chunk_range(&self, index: u64) -> Range<u64> {
        let start = index * self.chunk_size as u64;
        start..(start + self.chunk_size as u64).min(self.size)
    }

    /// Checks the manifest's shape and that its chaining values merge into `id`.
    pub fn verify(&self, id: &FileId) -> Result<(), ManifestError> {
        if !self.chunk_size.is_power_of_two()
            || self.chunk_size < blake3::CHUNK_LEN as u32
            || self.chunk_size > MAX_CHUNK
        {
            return Err(ManifestError::BadChunkSize(self.chunk_size));
        }
        let want = self.chunk_count();
        if self.cvs.len() as u64 != want {
            return Err(ManifestError::WrongCount {
                got: self.cvs.len(),
                want,
                size: self.size,
            });
        }
        if root_of(&self.cvs) != *id {
            return Err(ManifestError::RootMismatch { id: *id });
        }
        Ok(())
    }

    /// Checks one chunk's bytes against its entry. Call only on a manifest that passed
    /// [`Manifest::verify`].
    pub fn verify_chunk(&self, index: u64, data: &[u8]) -> Result<(), ChunkError> {
        let count = self.chunk_count();
        if index >= count {
            return Err(ChunkError::OutOfRange { index, count });
        }
        let range = self.chunk_range(index);
        let want = range.end - range.start;
        if data.len() as u64 != want {
            return Err(ChunkError::WrongLength {
                index,
                got: data.len(),
                want,
            });
        }
        if chunk_cv(data, range.start, count == 1) != self.cvs[index as usize] {
            return Err(ChunkError::HashMismatch { index });
        }
        Ok(())
    }
}

impl Manifest {
    /// The file's size as the bytes of its last chunk prove it, if they hash to the last
    /// chaining value at a length other than the one this manifest's size gives.
    ///
    /// A file id pins every chunk's chaining value but not the manifest's `size`: the last
    /// chunk's length within its range is bound only by its chaining value. So a manifest of
    /// `size + 1` with the true values verifies, and every honest source's last chunk then
    /// looks one byte short. BLAKE3 binds a chunk's length into its chaining value, so bytes
    /// that hash to it are the proof: `Some(true size)` means this manifest lied.
    pub fn size_proven_by_last_chunk(&self, data: &[u8]) -> Option<u64> {
        let count = self.chunk_count();
        let last = count - 1;
        let start = self.chunk_range(last).start;
        let true_size = start + data.len() as u64;
        // Only the one chunk of a one-chunk file may be empty (an empty file).
        if true_size == self.size
            || (data.is_empty() && count > 1)
            || data.len() as u64 > u64::from(self.chunk_size)
        {
            return None;
        }
        let cv = match count {
            1 => *blake3::hash(data).as_bytes(),
            _ => chunk_cv(data, start, false),
        };
        (cv == self.cvs[last as usize]).then_some(true_size)
    }
}

/// The chaining value of one chunk starting at byte `offset`; for the only chunk of a file
/// (`whole_file`), the root hash.
pub fn chunk_cv(data: &[u8], offset: u64, whole_file: bool) -> ChainingValue {
    if whole_file {
        return *blake3::hash(data).as_bytes();
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(data);
    hasher.finalize_non_root()
}

/// Merges chunk chaining values (in file order) into the file id, following BLAKE3's tree: the
/// left subtree holds the largest power of two of chunks that is smaller than the whole.
pub fn root_of(cvs: &[ChainingValue]) -> FileId {
    match cvs {
        [] => FileId(*blake3::hash(&[]).as_bytes()),
        [only] => FileId(*only),
        _ => {
            let split = left_len(cvs.len());
            let left = merge(&cvs[..split]);
            let right = merge(&cvs[split..]);
            FileId(*merge_subtrees_root(&left, &right, Mode::Hash).as_bytes())
        }
    }
}

fn merge(cvs: &[ChainingValue]) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let split = left_len(cvs.len());
    merge_subtrees_non_root(&merge(&cvs[..split]), &merge(&cvs[split..]), Mode::Hash)
}

/// The largest power of two strictly smaller than `n` (n ≥ 2).
fn left_len(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// Builds a manifest and the file id from a file's bytes, fed in any pieces, in one pass.
#[derive(Debug)]
pub struct ManifestBuilder {
    size: u64,
    chunk_size: u32,
    /// Bytes of the current chunk not yet hashed (chunks are hashed whole, so a chunk can be
    /// recognised as the file's only one at the end).
    pending: Vec<u8>,
    offset: u64,
    cvs: Vec<ChainingValue>,
}

impl ManifestBuilder {
    /// A builder for a file of `size` bytes, with the chunk size [`chunk_size_for`] picks.
    pub fn new(size: u64) -> Self {
        Self::with_chunk_size(size, chunk_size_for(size))
    }

    /// A builder with an explicit chunk size (a power of two of at least 1 KiB).
    pub fn with_chunk_size(size: u64, chunk_size: u32) -> Self {
        assert!(chunk_size.is_power_of_two() && chunk_size >= blake3::CHUNK_LEN as u32);
        ManifestBuilder {
            size,
            chunk_size,
            pending: Vec::with_capacity(chunk_size.min(size.max(1) as u32) as usize),
            offset: 0,
            cvs: Vec::with_capacity(chunk_count(size, chunk_size) as usize),
        }
    }

    /// Feeds the next bytes of the file.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = self.chunk_size as usize - self.pending.len();
            let take = room.min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == self.chunk_size as usize
                && self.offset + self.chunk_size as u64 != self.size
            {
                self.flush();
            } else if self.pending.len() == self.chunk_size as usize {
                // The last chunk exactly fills its size: keep it to learn whether it is the
                // only one (then its value is the root hash).
                self.flush_last();
            }
        }
    }

    fn flush(&mut self) {
        let cv = chunk_cv(&self.pending, self.offset, false);
        self.cvs.push(cv);
        self.offset += self.pending.len() as u64;
        self.pending.clear();
    }

    fn flush_last(&mut self) {
        let only = self.cvs.is_empty();
        let cv = chunk_cv(&self.pending, self.offset, only);
        self.cvs.push(cv);
        self.offset += self.pending.len() as u64;
        self.pending.clear();
    }

    /// Bytes fed so far.
    pub fn bytes_seen(&self) -> u64 {
        self.offset + self.pending.len() as u64
    }

    /// Finishes: the file id and manifest, or `None` if the bytes fed differ from the size
    /// announced (the file changed while it was read).
    pub fn finish(mut self) -> Option<(FileId, Manifest)> {
        if self.bytes_seen() != self.size {
            return None;
        }
        if !self.pending.is_empty() || self.cvs.is_empty() {
            self.flush_last();
        }
        let manifest = Manifest {
            size: self.size,
            chunk_size: self.chunk_size,
            cvs: self.cvs,
        };
        Some((root_of(&manifest.cvs), manifest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    proptest! {
        #[test]
        fn builder_matches_blake3(len in 0usize..20_000, shift in 10u32..13, piece in 1usize..5000) {
            let bytes = data(len, 7);
            let mut b = ManifestBuilder::with_chunk_size(len as u64, 1 << shift);
            for p in bytes.chunks(piece) { b.update(p); }
            let (id, manifest) = b.finish().expect("all bytes fed");
            prop_assert_eq!(id, FileId::from(blake3::hash(&bytes)));
            prop_assert!(manifest.verify(&id).is_ok());
            for i in 0..manifest.chunk_count() {
                let r = manifest.chunk_range(i);
                prop_assert!(manifest.verify_chunk(i, &bytes[r.start as usize..r.end as usize]).is_ok());
            }
        }

        #[test]
        fn any_flipped_byte_is_caught(len in 1usize..9000, pos in any::<prop::sample::Index>()) {
            let mut bytes = data(len, 3);
            let mut b = ManifestBuilder::with_chunk_size(len as u64, 1024);
            b.update(&bytes);
            let (_, manifest) = b.finish().unwrap();
            let at = pos.index(len);
            bytes[at] ^= 0x40;
            let index = (at / 1024) as u64;
            let r = manifest.chunk_range(index);
            prop_assert_eq!(
                manifest.verify_chunk(index, &bytes[r.start as usize..r.end as usize]),
                Err(ChunkError::HashMismatch { index })
            );
        }
    }

    proptest! {
        #[test]
        fn the_last_chunk_proves_a_lying_size(len in 1usize..6000, delta in -500i64..500) {
            let bytes = data(len, 9);
            let mut b = ManifestBuilder::with_chunk_size(len as u64, 1024);
            b.update(&bytes);
            let (id, honest) = b.finish().unwrap();
            let last = honest.chunk_count() - 1;
            let r = honest.chunk_range(last);
            let tail = &bytes[r.start as usize..];
            prop_assert_eq!(honest.size_proven_by_last_chunk(tail), None);
            let size = (len as i64 + delta).max(1) as u64;
            let liar = Manifest { size, ..honest.clone() };
            if size == len as u64 || liar.verify(&id).is_err() {
                return Ok(()); // the same, or caught by verify
            }
            // The lie verifies against the id; the honest last chunk proves it.
            prop_assert!(liar.verify_chunk(last, tail).is_err());
            prop_assert_eq!(liar.size_proven_by_last_chunk(tail), Some(len as u64));
            // Other bytes prove nothing.
            let mut forged = tail.to_vec();
            forged[0] ^= 1;
            prop_assert_eq!(liar.size_proven_by_last_chunk(&forged), None);
        }
    }

    #[test]
    fn chunk_sizes_grow_with_the_file() {
        assert_eq!(chunk_size_for(0), MIN_CHUNK);
        assert_eq!(chunk_size_for(1 << 30), MIN_CHUNK);
        assert_eq!(chunk_size_for(2 << 30), 512 << 10);
        assert_eq!(chunk_size_for(4 << 30), 1 << 20);
        assert_eq!(chunk_size_for(1 << 50), MAX_CHUNK);
    }

    #[test]
    fn tampered_manifest_is_rejected() {
        let bytes = data(5000, 1);
        let mut b = ManifestBuilder::with_chunk_size(5000, 1024);
        b.update(&bytes);
        let (id, mut m) = b.finish().unwrap();
        m.cvs[2][0] ^= 1;
        assert_eq!(m.verify(&id), Err(ManifestError::RootMismatch { id }));
        m.cvs.pop();
        assert!(matches!(
            m.verify(&id),
            Err(ManifestError::WrongCount { .. })
        ));
        let m2 = Manifest {
            size: 5000,
            chunk_size: 1000,
            cvs: vec![],
        };
        assert_eq!(m2.verify(&id), Err(ManifestError::BadChunkSize(1000)));
    }

    #[test]
    fn short_and_long_chunks_are_rejected() {
        let bytes = data(3000, 2);
        let mut b = ManifestBuilder::with_chunk_size(3000, 1024);
        b.update(&bytes);
        let (_, m) = b.finish().unwrap();
        assert!(matches!(
            m.verify_chunk(0, &bytes[..1000]),
            Err(ChunkError::WrongLength { .. })
        ));
        assert!(matches!(
            m.verify_chunk(3, &bytes[..10]),
            Err(ChunkError::OutOfRange { .. })
        ));
    }

    #[test]
    fn wrong_size_is_detected() {
        let mut b = ManifestBuilder::new(10);
        b.update(b"123");
        assert!(b.finish().is_none());
    }
}
