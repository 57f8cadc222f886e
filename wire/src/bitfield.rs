//! [`Bitfield`]: which chunks of a file a node holds, as sent in `Bitfield` messages and kept
//! in download records.
//!
//! Chunk `c` is bit `c % 8` of byte `c / 8`. A bitfield knows its length in chunks, so the bits
//! past the last chunk are always clear: a peer's bitfield is checked on the way in
//! ([`Bitfield::from_bytes`]) and never sets a chunk the file does not have.
//!
//! # Example
//! ```
//! use wire::Bitfield;
//! let mut b = Bitfield::new(10);
//! assert!(b.set(9) && !b.set(9), "set says whether the bit was clear");
//! assert!(b.get(9) && !b.get(8) && !b.get(99));
//! assert_eq!(b.count_ones(), 1);
//! assert_eq!(b.as_bytes(), &[0, 0b10]);
//! let back = Bitfield::from_bytes(b.as_bytes().to_vec(), 10).unwrap();
//! assert_eq!(back, b);
//! assert!(Bitfield::from_bytes(vec![0; 3], 10).is_err(), "10 chunks take 2 bytes");
//! ```

/// A fixed-length set of chunk indices.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct Bitfield {
    bytes: Vec<u8>,
    len: u64,
    ones: u64,
}

/// A bitfield whose byte length does not fit its chunk count.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a bitfield of {got} bytes; {len} chunks need {want}")]
pub struct BitfieldLenError {
    /// Bytes given.
    pub got: usize,
    /// Bytes `len` chunks take.
    pub want: usize,
    /// Chunks.
    pub len: u64,
}

impl Bitfield {
    /// `len` chunks, none set.
    pub fn new(len: u64) -> Self {
        Bitfield {
            bytes: vec![0; Self::byte_len(len)],
            len,
            ones: 0,
        }
    }

    /// `len` chunks, all set.
    pub fn full(len: u64) -> Self {
        let mut b = Bitfield {
            bytes: vec![0xff; Self::byte_len(len)],
            len,
            ones: len,
        };
        b.clear_tail();
        b
    }

    /// The bytes a bitfield of `len` chunks takes.
    pub fn byte_len(len: u64) -> usize {
        len.div_ceil(8) as usize
    }

    /// The bitfield of `len` chunks packed in `bytes` (as a peer sends it). The byte length must
    /// be exactly what `len` chunks take; bits past the last chunk are cleared.
    pub fn from_bytes(bytes: Vec<u8>, len: u64) -> Result<Self, BitfieldLenError> {
        let want = Self::byte_len(len);
        if bytes.len() != want {
            return Err(BitfieldLenError {
                got: bytes.len(),
                want,
                len,
            });
        }
        let mut b = Bitfield {
            bytes,
            len,
            ones: 0,
        };
        b.clear_tail();
        b.ones = b.bytes.iter().map(|x| x.count_ones() as u64).sum();
        Ok(b)
    }

    fn clear_tail(&mut self) {
        let rem = self.len % 8;
        if rem != 0 {
            if let Some(last) = self.bytes.last_mut() {
                *last &= (1u8 << rem) - 1;
            }
        }
    }

    /// The number of chunks.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True for a bitfield of no chunks.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True if chunk `c` is set; false past the end.
    pub fn get(&self, c: u64) -> bool {
        c < self.len && self.bytes[(c / 8) as usize] & (1 << (c % 8)) != 0
    }

    /// Sets chunk `c`: true if it was clear. A chunk past the end is ignored (false).
    pub fn set(&mut self, c: u64) -> bool {
        if c >= self.len {
            return false;
        }
        let byte = &mut self.bytes[(c / 8) as usize];
        let mask = 1u8 << (c % 8);
        let fresh = *byte & mask == 0;
        *byte |= mask;
        self.ones += fresh as u64;
        fresh
    }

    /// Clears chunk `c`: true if it was set.
    pub fn unset(&mut self, c: u64) -> bool {
        if !self.get(c) {
            return false;
        }
        self.bytes[(c / 8) as usize] &= !(1u8 << (c % 8));
        self.ones -= 1;
        true
    }

    /// How many chunks are set.
    pub fn count_ones(&self) -> u64 {
        self.ones
    }

    /// True when every chunk is set.
    pub fn is_full(&self) -> bool {
        self.ones == self.len
    }

    /// The set chunks, in order.
    pub fn ones(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.len).filter(|&c| self.get(c))
    }

    /// The chunks set here and not in `other` (of the same length), in order.
    pub fn ones_not_in<'a>(&'a self, other: &'a Bitfield) -> impl Iterator<Item = u64> + 'a {
        self.ones().filter(|&c| !other.get(c))
    }

    /// The packed bytes (what a `Bitfield` message carries).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The packed bytes, taken.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn full_sets_exactly_len_bits() {
        for len in 0..20 {
            let b = Bitfield::full(len);
            assert_eq!(b.count_ones(), len);
            assert!(b.is_full());
            assert_eq!(b.ones().count() as u64, len);
            let raw_ones: u32 = b.as_bytes().iter().map(|x| x.count_ones()).sum();
            assert_eq!(raw_ones as u64, len, "no bit past the end is set");
        }
    }

    #[test]
    fn bytes_from_a_peer_are_checked_and_trimmed() {
        let err = Bitfield::from_bytes(vec![0xff], 9).unwrap_err();
        assert_eq!(err.to_string(), "a bitfield of 1 bytes; 9 chunks need 2");
        let b = Bitfield::from_bytes(vec![0xff, 0xff], 9).unwrap();
        assert_eq!(b.count_ones(), 9, "bits past chunk 8 are dropped");
        assert!(!b.get(9));
        assert!(Bitfield::from_bytes(vec![], 0).unwrap().is_full());
    }

    proptest! {
        #[test]
        fn set_unset_and_count_agree(len in 0u64..200, ops in prop::collection::vec((any::<bool>(), 0u64..220), 0..100)) {
            let mut b = Bitfield::new(len);
            let mut model = std::collections::BTreeSet::new();
            for (on, c) in ops {
                if on {
                    prop_assert_eq!(b.set(c), c < len && model.insert(c));
                } else {
                    prop_assert_eq!(b.unset(c), model.remove(&c));
                }
                prop_assert_eq!(b.count_ones(), model.len() as u64);
            }
            prop_assert_eq!(b.ones().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
            let back = Bitfield::from_bytes(b.as_bytes().to_vec(), len).unwrap();
            prop_assert_eq!(back, b);
        }
    }
}
