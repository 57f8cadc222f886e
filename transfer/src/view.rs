//! [`ShownTo`]: what an uploader spreading a complete copy among several downloaders has shown
//! one of them, what that one asked for, and what it has. The upload session keeps it up to
//! date from the downloader's messages; the node's `Spread` (in `leaf::swarm`) picks what to
//! show next from it.

use wire::{Bitfield, FileId};

/// What one downloader has been shown of a file, has asked for, and has.
#[derive(Debug, Clone)]
pub struct ShownTo {
    /// The file.
    pub id: FileId,
    /// Chunks shown (sent as `Have`).
    pub shown: Bitfield,
    /// Chunks it asked for.
    pub asked: Bitfield,
    /// Chunks it has (its `Have`s).
    pub has: Bitfield,
}

impl ShownTo {
    /// Nothing shown, asked or had yet, for a file of `count` chunks.
    pub fn new(id: FileId, count: u64) -> Self {
        ShownTo {
            id,
            shown: Bitfield::new(count),
            asked: Bitfield::new(count),
            has: Bitfield::new(count),
        }
    }
}
