//! The manifest a download starts from: the checks one source's manifest must pass, and the
//! vote among several sources.
//!
//! # Rules
//! - A manifest must verify against the id, and its chunk size must be the one its size
//!   implies (every honest source agrees on the layout); when the search agreed on a size, it
//!   must have that size. A source whose manifest fails is hostile.
//! - Of the valid manifests, the one most sources sent wins, ties going to the one with more
//!   chunks (a forged one-chunk claim verifies against any id, since the id cannot pin the size
//!   of a one-chunk file). The sources of every other manifest are hostile.
//! - Neither the id nor the vote pins the size within the last chunk's range: the download
//!   fetches the last chunk first, and bytes that hash to its chaining value at another length
//!   prove the winning manifest's size wrong (`wire::Manifest::size_proven_by_last_chunk`).
//!   Its senders are then hostile, and the download starts over with the proven size. Sources
//!   whose manifest differs from the winner's in size alone are therefore not dropped by the
//!   vote: their last chunk may be the proof.

use std::net::SocketAddr;

use wire::{FileId, Manifest, Message, TransferErrorKind};

/// Why a source's answer to a manifest request gave no manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The source said no (busy with as many downloaders of the file as it takes, or no longer
    /// sharing it): no fault of its own, so it may be asked again later.
    #[error("refused the manifest: {kind:?} ({message})")]
    Refused {
        kind: TransferErrorKind,
        message: String,
    },
    /// The source is not to be trusted for this file.
    #[error("{0}")]
    Hostile(String),
}

/// What a source answered to `GetManifest { request: 0, id }`, checked: the manifest, or why
/// there is none.
pub fn check_answer(
    id: FileId,
    expected_size: Option<u64>,
    answer: Message,
) -> Result<Manifest, AnswerError> {
    let hostile = AnswerError::Hostile;
    match answer {
        Message::Manifest(m) if m.id == id && m.request == 0 => {
            let manifest = Manifest {
                size: m.size,
                chunk_size: m.chunk_size,
                cvs: m.cvs,
            };
            manifest
                .verify(&id)
                .map_err(|e| hostile(format!("sent a bad manifest: {e}")))?;
            if manifest.chunk_size != wire::chunk_size_for(manifest.size) {
                return Err(hostile(format!(
                    "sent a manifest with chunk size {} for {} bytes",
                    manifest.chunk_size, manifest.size
                )));
            }
            if let Some(want) = expected_size.filter(|w| *w != manifest.size) {
                return Err(hostile(format!(
                    "sent a manifest for {} bytes; the search said {want}",
                    manifest.size
                )));
            }
            Ok(manifest)
        }
        Message::TransferError { kind, message, .. } => Err(AnswerError::Refused { kind, message }),
        other => Err(hostile(format!(
            "answered a manifest request with {}",
            other.kind()
        ))),
    }
}

/// The manifests sources sent, and who sent each.
#[derive(Debug, Default)]
pub struct Vote {
    votes: Vec<(Manifest, Vec<SocketAddr>)>,
}

impl Vote {
    /// `from` sent `manifest` (already checked with [`check_answer`]).
    pub fn add(&mut self, from: SocketAddr, manifest: Manifest) {
        match self.votes.iter_mut().find(|(v, _)| *v == manifest) {
            Some((_, who)) => who.push(from),
            None => self.votes.push((manifest, vec![from])),
        }
    }

    /// How many sources have voted.
    pub fn voters(&self) -> usize {
        self.votes.iter().map(|(_, who)| who.len()).sum()
    }

    /// The winner and the sources that sent it (if anyone voted), and each source that sent
    /// another manifest with the reason it is dropped.
    #[allow(clippy::type_complexity)]
    pub fn result(
        mut self,
    ) -> (
        Option<(Manifest, Vec<SocketAddr>)>,
        Vec<(SocketAddr, String)>,
    ) {
        self.votes
            .sort_by_key(|(m, who)| std::cmp::Reverse((who.len(), m.cvs.len())));
        let mut losers = Vec::new();
        if let Some((won, winners)) = self.votes.first() {
            let n = winners.len();
            for (m, who) in self.votes.iter().skip(1) {
                if m.cvs == won.cvs && m.chunk_size == won.chunk_size {
                    // Only the size differs, which the id does not pin: not a lie until the
                    // last chunk shows whose size is true, so they stay sources.
                    continue;
                }
                for addr in who {
                    let why = format!(
                        "its manifest ({} bytes in {} chunks) disagrees with the one {n} other source(s) sent",
                        m.size,
                        m.cvs.len(),
                    );
                    losers.push((*addr, why));
                }
            }
        }
        (self.votes.into_iter().next(), losers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{ManifestBuilder, ManifestMsg};

    fn manifest_of(data: &[u8]) -> (FileId, Manifest) {
        let mut b = ManifestBuilder::new(data.len() as u64);
        b.update(data);
        b.finish().unwrap()
    }

    fn answer(id: FileId, m: &Manifest) -> Message {
        Message::Manifest(ManifestMsg {
            request: 0,
            id,
            size: m.size,
            chunk_size: m.chunk_size,
            cvs: m.cvs.clone(),
        })
    }

    #[test]
    fn a_forged_or_refused_manifest_is_named() {
        let data = vec![7u8; 3 << 20];
        let (id, m) = manifest_of(&data);
        assert_eq!(check_answer(id, None, answer(id, &m)).unwrap(), m);
        let mut forged = m.clone();
        forged.cvs[0] = [0; 32];
        let why = check_answer(id, None, answer(id, &forged)).unwrap_err();
        assert!(matches!(&why, AnswerError::Hostile(w) if w.starts_with("sent a bad manifest")));
        let why = check_answer(id, Some(5), answer(id, &m)).unwrap_err();
        assert!(matches!(&why, AnswerError::Hostile(w) if w.contains("the search said 5")));
        // A refusal is no lie: the source may be asked again.
        for kind in [TransferErrorKind::NotShared, TransferErrorKind::Busy] {
            let refused = Message::TransferError {
                request: 0,
                id,
                kind,
                message: "no".into(),
            };
            let why = check_answer(id, None, refused).unwrap_err();
            assert_eq!(
                why,
                AnswerError::Refused {
                    kind,
                    message: "no".into()
                }
            );
            assert!(why.to_string().starts_with("refused the manifest"), "{why}");
        }
        let why = check_answer(id, None, Message::Ping { nonce: 1 }).unwrap_err();
        assert_eq!(
            why,
            AnswerError::Hostile("answered a manifest request with Ping".into())
        );
    }

    #[test]
    fn the_majority_wins_and_the_others_are_named() {
        let (_, a) = manifest_of(&[1u8; 1000]);
        let (_, b) = manifest_of(&[2u8; 1000]);
        let addr = |n: u16| SocketAddr::from(([127, 0, 0, 1], n));
        let mut vote = Vote::default();
        vote.add(addr(1), b.clone());
        vote.add(addr(2), a.clone());
        vote.add(addr(3), a.clone());
        assert_eq!(vote.voters(), 3);
        let (won, losers) = vote.result();
        assert_eq!(won, Some((a, vec![addr(2), addr(3)])));
        assert_eq!(losers.len(), 1);
        assert_eq!(losers[0].0, addr(1));
        assert!(
            losers[0].1.contains("disagrees with the one 2 other"),
            "{}",
            losers[0].1
        );
        assert_eq!(Vote::default().result().0, None);
    }
}
