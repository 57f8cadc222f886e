//! The sources this node's searches met, by node id: how `leaf browse NODE` and
//! `leaf get-folder NODE FOLDER` find a leaf named by the id `leaf search --json` prints
//! (`source_nodes`), or by its first hex digits.
//!
//! Each entry is a hit's [`wire::Source`] as it came: the address the leaf's super-peer saw
//! it at (never one the leaf claimed), whether it could be reached, and through which
//! super-peer to ask it to connect back. The newest [`SEEN_KEPT`] are kept, in
//! [`SEEN_FILE`] in the data directory, so a search by one `leaf` command serves a browse by
//! the next. A node id never seen in a hit is not guessed at: the error says to search first
//! or to give the address.

use std::collections::HashMap;
use std::path::Path;

use wire::{NodeId, Source};

/// The record of sources met, in the data directory.
pub const SEEN_FILE: &str = "sources.cbor";
/// Sources remembered at most (the oldest are forgotten first).
pub const SEEN_KEPT: usize = 4096;
/// Hex digits a node id prefix needs at least: fewer would name many nodes by chance.
pub const MIN_PREFIX: usize = 8;

/// Why a node id names no source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeenError {
    /// Not a node id or a prefix of one.
    #[error(
        "{text:?} is neither an address (IP:PORT) nor a node id (at least {MIN_PREFIX} of its \
         64 hex digits)"
    )]
    Malformed {
        /// What was given (at most 80 characters of it).
        text: String,
    },
    /// No hit of this node's searches came from such a node.
    #[error(
        "no search of this node met a leaf with node id {prefix}; search for something it \
         shares first (`leaf search … --json` prints source_nodes), or give its address"
    )]
    NotSeen {
        /// The id or prefix.
        prefix: String,
    },
    /// Several nodes start with this prefix.
    #[error("{count} leaves have node ids starting with {prefix}; give more of the id")]
    Ambiguous {
        /// The prefix.
        prefix: String,
        /// How many.
        count: usize,
    },
}

/// The sources met, one per node id, the most recently met kept.
#[derive(Debug, Default)]
pub struct Seen {
    /// Each node's newest source, with the stamp of when it was last met (stamps grow).
    by_node: HashMap<NodeId, (u64, Source)>,
    next: u64,
    /// Changed since it was last saved.
    dirty: bool,
}

impl Seen {
    /// The record in `data_dir`: a missing or damaged file is an empty record (logged).
    pub fn load(data_dir: &Path) -> Self {
        let sources: Vec<Source> = transport::store::load_or_log(
            &data_dir.join(SEEN_FILE),
            "starting without the record of sources met",
        )
        .unwrap_or_default();
        let mut seen = Seen::default();
        for s in sources {
            seen.note(&s);
        }
        seen.dirty = false;
        seen
    }

    /// A hit came from `source`: its newest address and route replace any older. Met again
    /// unchanged, it only counts as met lately (nothing new to save).
    pub fn note(&mut self, source: &Source) {
        let stamp = self.next;
        self.next += 1;
        let changed = match self.by_node.get_mut(&source.node) {
            Some((at, known)) if known == source => {
                *at = stamp;
                false
            }
            _ => {
                self.by_node.insert(source.node, (stamp, source.clone()));
                true
            }
        };
        self.dirty |= changed;
        // Full: the one met longest ago goes (one pass, only when a new node comes past the
        // bound).
        if self.by_node.len() > SEEN_KEPT {
            let oldest = self.by_node.iter().min_by_key(|(_, (at, _))| *at);
            if let Some(node) = oldest.map(|(node, _)| *node) {
                self.by_node.remove(&node);
            }
        }
    }

    /// The record to save, if it changed since the last time this was asked.
    pub fn to_save(&mut self) -> Option<Vec<Source>> {
        std::mem::take(&mut self.dirty).then(|| {
            let mut met: Vec<&(u64, Source)> = self.by_node.values().collect();
            met.sort_unstable_by_key(|(at, _)| *at);
            met.into_iter().map(|(_, s)| s.clone()).collect()
        })
    }

    /// Saves the record to `data_dir` if it changed since the last save.
    pub fn save_if_changed(&mut self, data_dir: &Path) {
        if let Some(list) = self.to_save() {
            save(data_dir, &list);
        }
    }

    /// The source whose node id is `text`, or starts with it (at least [`MIN_PREFIX`] hex
    /// digits, any case).
    pub fn find(&self, text: &str) -> Result<Source, SeenError> {
        let prefix = text.trim().to_ascii_lowercase();
        let hex = prefix.chars().all(|c| c.is_ascii_hexdigit());
        if !hex || prefix.len() < MIN_PREFIX || prefix.len() > NodeId::LEN * 2 {
            return Err(SeenError::Malformed {
                text: text.chars().take(80).collect(),
            });
        }
        let mut found = self
            .by_node
            .values()
            .map(|(_, s)| s)
            .filter(|s| s.node.to_hex().starts_with(&prefix));
        match (found.next(), found.count()) {
            (None, _) => Err(SeenError::NotSeen { prefix }),
            (Some(s), 0) => Ok(s.clone()),
            (Some(_), more) => Err(SeenError::Ambiguous {
                prefix,
                count: more + 1,
            }),
        }
    }

    /// How many sources are remembered.
    pub fn len(&self) -> usize {
        self.by_node.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
    }
}

/// Writes `list` as the record in `data_dir` (a failure is logged: the record is a
/// convenience, and the next search writes it again).
pub fn save(data_dir: &Path, list: &[Source]) {
    let path = data_dir.join(SEEN_FILE);
    if let Err(e) = transport::store::save(&path, &list) {
        log::warn!(
            "cannot save the record of sources met {}: {e}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(first: u8, port: u16) -> Source {
        let mut id = [7u8; NodeId::LEN];
        id[0] = first;
        Source {
            node: NodeId(id),
            addr: format!("192.0.2.1:{port}").parse().unwrap(),
            reachable: Some(false),
            via: Some("192.0.2.9:7700".parse().unwrap()),
        }
    }

    #[test]
    fn a_node_is_found_by_its_id_or_a_prefix_and_its_newest_address_wins() {
        let mut seen = Seen::default();
        seen.note(&source(0xab, 1));
        seen.note(&source(0xcd, 2));
        seen.note(&source(0xab, 3));
        assert_eq!(seen.len(), 2);
        let full = source(0xab, 3).node.to_hex();
        assert_eq!(seen.find(&full).unwrap().addr.port(), 3);
        assert_eq!(seen.find(&full[..8].to_uppercase()).unwrap().addr.port(), 3);
        assert_eq!(
            seen.find(&format!(" {} ", &full[..10]))
                .unwrap()
                .addr
                .port(),
            3
        );
    }

    #[test]
    fn unknown_short_ambiguous_and_malformed_ids_are_refused_by_name() {
        let mut seen = Seen::default();
        seen.note(&source(0xab, 1));
        let unknown = source(0x01, 1).node.to_hex();
        assert!(matches!(
            seen.find(&unknown),
            Err(SeenError::NotSeen { .. })
        ));
        assert!(matches!(
            seen.find("ab07"),
            Err(SeenError::Malformed { .. })
        ));
        assert!(matches!(
            seen.find("not-an-id!"),
            Err(SeenError::Malformed { .. })
        ));
        let too_long = format!("{}00", source(0xab, 1).node.to_hex());
        assert!(matches!(
            seen.find(&too_long),
            Err(SeenError::Malformed { .. })
        ));
        // Two ids that share their first eight digits: more are needed.
        let mut other = source(0xab, 2);
        other.node.0[5] = 0;
        seen.note(&other);
        let e = seen.find("ab070707").unwrap_err();
        assert_eq!(
            e,
            SeenError::Ambiguous {
                prefix: "ab070707".into(),
                count: 2
            }
        );
        assert!(e.to_string().contains("give more of the id"));
        assert_eq!(seen.find("ab0707070707").unwrap().addr.port(), 1);
    }

    #[test]
    fn the_record_is_bounded_and_survives_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        let mut seen = Seen::default();
        for i in 0..SEEN_KEPT + 10 {
            let mut s = source(0, 1);
            s.node.0[..8].copy_from_slice(&(i as u64).to_be_bytes());
            seen.note(&s);
        }
        assert_eq!(seen.len(), SEEN_KEPT);
        seen.save_if_changed(tmp.path());
        let back = Seen::load(tmp.path());
        assert_eq!(back.len(), SEEN_KEPT);
        // The oldest went first.
        let first = {
            let mut s = source(0, 1);
            s.node.0[..8].copy_from_slice(&0u64.to_be_bytes());
            s.node.to_hex()
        };
        assert!(matches!(back.find(&first), Err(SeenError::NotSeen { .. })));
        // A damaged record is an empty one, not a failed start.
        std::fs::write(tmp.path().join(SEEN_FILE), b"garbage").unwrap();
        assert!(Seen::load(tmp.path()).is_empty());
    }
}
