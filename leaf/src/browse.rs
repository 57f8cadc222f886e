//! Browsing another leaf: the list of everything it shares, fetched over a transfer connection
//! (encrypted as chunks are) and checked by [`transfer::BrowseSession`]; and the files of one
//! of its folders, each downloaded from all of its sources into the same layout here. A leaf a
//! hit said may not be reachable (behind NAT) is also asked, through its super-peer, to connect
//! back, as a download's sources are ([`crate::reverse`]); the first connection to come is
//! used.

use std::net::SocketAddr;
use std::time::Duration;

use transport::net::{connect_secure, write_message_within, FrameReader, ReadError};
use wire::{FileRecord, Hello, NodeId, Role};

use crate::download::{direct_or_back, BackFuture};
use crate::state::NodeState;
use transfer::{BrowseEnd, BrowseSession};

/// A browse, whole, takes at most this long.
const BROWSE_LIMIT: Duration = Duration::from_secs(60);
/// Dialling and the handshake take at most this long.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// One message takes at most this long to send.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// What a browse found.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Listing {
    /// Where the peer was reached.
    pub addr: SocketAddr,
    /// Its files, in its path order (at most [`transfer::browse::MAX_FILES`]).
    pub files: Vec<FileRecord>,
    /// Files it shares in all.
    pub total: u32,
}

/// Why a browse gave no list.
#[derive(Debug, thiserror::Error)]
pub enum BrowseError {
    /// The peer could not be reached (or the handshake failed).
    #[error("cannot reach {addr}: {source}")]
    Connect {
        /// The peer.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The peer does not let others browse it.
    #[error("{addr} does not allow browsing: {reason}")]
    Refused {
        /// The peer.
        addr: SocketAddr,
        /// What it said.
        reason: String,
    },
    /// The peer broke the browsing rules, or the connection failed midway.
    #[error("browsing {addr} failed: {why}")]
    Failed {
        /// The peer.
        addr: SocketAddr,
        /// What went wrong.
        why: String,
    },
    /// It took longer than [`BROWSE_LIMIT`].
    #[error("browsing {addr} took longer than {BROWSE_LIMIT:?}")]
    TimedOut {
        /// The peer.
        addr: SocketAddr,
    },
}

/// Lists what the leaf serving at `addr` shares; `back`, when a hit named the leaf's
/// super-peer, asks it to connect back while it is dialled (with `back_later`, once dialling
/// failed or took a while: it was found reachable). With `expect`, the leaf must prove to be
/// that node.
pub(crate) async fn browse(
    state: &NodeState,
    addr: SocketAddr,
    expect: Option<NodeId>,
    back: Option<BackFuture>,
    back_later: bool,
) -> Result<Listing, BrowseError> {
    let run = async {
        let direct = async {
            let secure = connect_secure(addr, &state.identity, CONNECT_LIMIT)
                .await
                .map_err(|e| e.to_string())?;
            Ok((secure.peer, FrameReader::new(secure.reader), secure.writer))
        };
        let reverse = back.map(|back| async {
            let conn = back.await?;
            // A listing comes in frames of up to the full limits.
            let reader = conn.reader.limited(wire::MAX_BODY, wire::MAX_PAYLOAD);
            Ok((conn.peer, reader, conn.writer))
        });
        let (peer, mut reader, mut writer) = direct_or_back(direct, reverse, back_later)
            .await
            .map_err(|why| BrowseError::Connect {
                addr,
                source: std::io::Error::other(why),
            })?;
        if let Some(want) = expect.filter(|want| *want != peer) {
            return Err(BrowseError::Failed {
                addr,
                why: format!(
                    "it is node {}, not {} (the address that node was met at is someone \
                     else's now; search for it again)",
                    peer.short(),
                    want.short()
                ),
            });
        }
        let mine = Hello::new(state.node_id, Role::Leaf, state.listen, crate::AGENT);
        let mut session = BrowseSession::new(peer, mine);
        let mut scratch = Vec::new();
        loop {
            while let Some(msg) = session.poll_transmit() {
                if let Err(e) =
                    write_message_within(&mut writer, &msg, &mut scratch, SEND_TIMEOUT).await
                {
                    session.handle_closed(&e.to_string());
                    break;
                }
            }
            if let Some(end) = session.end() {
                return match end.clone() {
                    BrowseEnd::Done { files, total } => Ok(Listing { addr, files, total }),
                    BrowseEnd::Refused(reason) => Err(BrowseError::Refused { addr, reason }),
                    BrowseEnd::Failed(why) => Err(BrowseError::Failed { addr, why }),
                };
            }
            match reader.read_message().await {
                Ok(Some(msg)) => session.handle_message(msg),
                Ok(None) => session.handle_closed("closed by the peer"),
                Err(ReadError::Decode(e)) => session.handle_closed(&format!("bad frame: {e}")),
                Err(e) => session.handle_closed(&e.to_string()),
            }
        }
    };
    smol::future::or(run, async {
        smol::Timer::after(BROWSE_LIMIT).await;
        Err(BrowseError::TimedOut { addr })
    })
    .await
}

/// Bytes of records in one control-socket part of a listing at most (an estimate; a frame
/// holds 1 MiB).
const PART_BYTES: usize = 512 << 10;

/// A record's size once encoded, roughly (its CBOR is a little less).
pub(crate) fn listed_bytes(r: &FileRecord) -> usize {
    let t = &r.tags;
    let text = [&t.artist, &t.album, &t.title, &t.genre]
        .iter()
        .map(|s| s.as_ref().map_or(0, String::len))
        .sum::<usize>();
    r.path.len() + text + 120
}

/// `listing` cut into parts of at most [`PART_BYTES`] of records each (at least one part):
/// what the control socket sends, one frame each.
pub fn in_parts(listing: Listing) -> Vec<Listing> {
    let mut parts = Vec::new();
    let mut files = Vec::new();
    let mut bytes = 0;
    for f in listing.files {
        let b = listed_bytes(&f);
        if bytes + b > PART_BYTES && !files.is_empty() {
            parts.push(std::mem::take(&mut files));
            bytes = 0;
        }
        bytes += b;
        files.push(f);
    }
    parts.push(files);
    parts
        .into_iter()
        .map(|files| Listing {
            addr: listing.addr,
            files,
            total: listing.total,
        })
        .collect()
}

/// Puts parts of a listing back together (the counterpart of [`in_parts`]).
pub fn join_part(whole: &mut Option<Listing>, part: Listing) {
    match whole {
        Some(w) => w.files.extend(part.files),
        None => *whole = Some(part),
    }
}

/// The files of `listing` in `folder` (a path as the listing gives it, `/`-separated) or below,
/// each with the folder to save it in below `out`: `out/FOLDER/...` as the peer lays it out,
/// every part made safe ([`crate::part::safe_folder_path`]).
pub fn folder_files<'a>(
    listing: &'a Listing,
    folder: &str,
    out: &std::path::Path,
) -> Vec<(&'a FileRecord, std::path::PathBuf)> {
    let folder = folder.trim_matches('/');
    // The folder itself keeps its name: `get-folder ADDR music/Album` saves into out/Album/.
    let parent = folder.rsplit_once('/').map_or("", |(p, _)| p);
    listing
        .files
        .iter()
        .filter(|f| {
            f.path
                .strip_prefix(folder)
                .is_some_and(|rest| rest.starts_with('/'))
                || folder.is_empty()
        })
        .filter_map(|f| {
            let below = f.path[parent.len()..].trim_start_matches('/');
            let dir = below.rsplit_once('/').map_or("", |(d, _)| d);
            let safe = crate::part::safe_folder_path(dir);
            // Made of plain names only (as `safe_folder_path` makes it): checked again, as
            // nothing from a peer may pick where a file lands.
            let plain = safe
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            plain.then(|| (f, out.join(safe)))
        })
        .collect()
}

/// A listing of files at `paths`, file `i` with id `[i; 32]` and `size` bytes (for tests).
#[cfg(test)]
pub(crate) fn test_listing(paths: &[&str], size: u64) -> Listing {
    Listing {
        addr: "127.0.0.1:1".parse().unwrap(),
        files: paths
            .iter()
            .enumerate()
            .map(|(i, p)| FileRecord {
                id: wire::FileId([i as u8; 32]),
                size,
                path: p.to_string(),
                tags: wire::Tags::default(),
            })
            .collect(),
        total: paths.len() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(paths: &[&str]) -> Listing {
        test_listing(paths, 1)
    }

    #[test]
    fn a_folder_keeps_its_name_and_layout_and_nothing_else_comes() {
        let l = listing(&[
            "music/Album/01.flac",
            "music/Album/CD2/02.flac",
            "music/Album B/03.flac",
            "music/Albumen.flac",
            "music/top.mp3",
        ]);
        let out = std::path::Path::new("/dl");
        let got: Vec<(String, std::path::PathBuf)> = folder_files(&l, "music/Album/", out)
            .into_iter()
            .map(|(f, d)| (f.path.clone(), d))
            .collect();
        assert_eq!(
            got,
            [
                ("music/Album/01.flac".into(), "/dl/Album".into()),
                ("music/Album/CD2/02.flac".into(), "/dl/Album/CD2".into()),
            ]
        );
        assert_eq!(folder_files(&l, "", out).len(), 5, "everything");
        assert!(folder_files(&l, "music/Alb", out).is_empty());
    }

    #[test]
    fn a_listing_goes_in_parts_that_fit_a_frame_and_comes_back_whole() {
        let big: Vec<String> = (0..20_000)
            .map(|i| format!("music/{i:05} {}", "x".repeat(40)))
            .collect();
        let paths: Vec<&str> = big.iter().map(String::as_str).collect();
        let l = listing(&paths);
        let parts = in_parts(l.clone());
        assert!(parts.len() > 1, "{} parts", parts.len());
        let mut whole = None;
        for part in parts {
            let mut frame = Vec::new();
            wire::frame::try_encode_value(&part, &mut frame).expect("each part fits a frame");
            join_part(&mut whole, part);
        }
        assert_eq!(whole, Some(l));
        assert_eq!(
            in_parts(listing(&[])).len(),
            1,
            "an empty share is one empty part"
        );
    }

    #[test]
    fn hostile_folder_names_land_below_the_chosen_folder() {
        let l = listing(&[
            "share/../../../etc/cron.d/x",
            "share/..\\../y/z",
            "share/. ../. ../. ../w",
            "share/ . .ssh/authorized_keys",
        ]);
        let got = folder_files(&l, "share", std::path::Path::new("/dl"));
        assert_eq!(got.len(), 4);
        for (_, dir) in got {
            let below = dir
                .strip_prefix("/dl/share")
                .expect("below the chosen folder");
            for part in below.components() {
                let std::path::Component::Normal(name) = part else {
                    panic!("{part:?} in {}", dir.display());
                };
                assert!(
                    !name.to_string_lossy().starts_with('.'),
                    "{}",
                    dir.display()
                );
            }
        }
    }
}
