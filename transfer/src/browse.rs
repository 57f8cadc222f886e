//! Browsing a leaf: its list of shared files, fetched page by page over a transfer connection
//! (the same encrypted connection chunks come on).
//!
//! [`BrowseSession`] is the browsing side's rules: it says Hello, asks for each page in turn
//! (`Browse { offset }`), and checks every answer: the page it asked for, no more files than
//! a page holds, a total that does not change or pass [`MAX_FILES`]. Anything else is hostile
//! and ends the browse with an error; a `BrowseRefused` ends it with the peer's reason.

use std::collections::VecDeque;

use wire::{FileRecord, Hello, Message, NodeId};

/// The most files one browse takes in (a share larger than this is listed this far).
pub const MAX_FILES: u32 = 200_000;
/// The most files a page may hold.
pub const MAX_PAGE: u32 = 1000;
/// The most text (paths and tags) one browse takes in: a list past it is refused, so a peer
/// cannot make a browser hold more than this, whatever its records hold.
pub const MAX_TEXT_BYTES: usize = 64 << 20;

/// How a browse ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrowseEnd {
    /// Every file (up to [`MAX_FILES`]), in the peer's path order.
    Done {
        /// The files.
        files: Vec<FileRecord>,
        /// Files the peer shares in all (more than `files.len()` when it passed [`MAX_FILES`]).
        total: u32,
    },
    /// The peer does not let others browse it; its reason.
    Refused(String),
    /// The peer broke the rules (or left); what it did.
    Failed(String),
}

/// One browse of one peer. See the module docs.
#[derive(Debug)]
pub struct BrowseSession {
    peer: NodeId,
    transmit: VecDeque<Message>,
    hello: bool,
    files: Vec<FileRecord>,
    total: Option<u32>,
    request: u32,
    /// Text taken in so far.
    text: usize,
    end: Option<BrowseEnd>,
}

impl BrowseSession {
    /// A browse of `peer` (the key the connection's handshake proved), which starts with our
    /// Hello `mine`.
    pub fn new(peer: NodeId, mine: Hello) -> Self {
        BrowseSession {
            peer,
            transmit: VecDeque::from([Message::Hello(mine)]),
            hello: false,
            files: Vec::new(),
            total: None,
            request: 0,
            text: 0,
            end: None,
        }
    }

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.transmit.pop_front()
    }

    /// How it ended, once it has.
    pub fn end(&self) -> Option<&BrowseEnd> {
        self.end.as_ref()
    }

    /// A message from the peer.
    pub fn handle_message(&mut self, msg: Message) {
        if self.end.is_some() {
            return;
        }
        if let Err(why) = self.on_message(msg) {
            self.transmit.push_back(Message::Goodbye {
                reason: why.clone(),
            });
            self.end = Some(BrowseEnd::Failed(why));
        }
    }

    /// The connection closed (or failed) before the browse ended.
    pub fn handle_closed(&mut self, reason: &str) {
        if self.end.is_none() {
            self.end = Some(BrowseEnd::Failed(format!(
                "the connection closed before the list was complete: {reason}"
            )));
        }
    }

    fn on_message(&mut self, msg: Message) -> Result<(), String> {
        if !self.hello {
            return match msg {
                Message::Hello(h) => {
                    wire::hello::check(self.peer, &h).map_err(|e| e.to_string())?;
                    self.hello = true;
                    self.ask();
                    Ok(())
                }
                other => Err(format!("{} before Hello", other.kind())),
            };
        }
        match msg {
            Message::Listing {
                request,
                offset,
                total,
                files,
            } => {
                let have = self.files.len() as u32;
                if request != self.request || offset != have {
                    return Err(format!(
                        "a page nobody asked for (request {request}, offset {offset})"
                    ));
                }
                if files.len() as u32 > MAX_PAGE {
                    return Err(format!(
                        "a page of {} files (at most {MAX_PAGE})",
                        files.len()
                    ));
                }
                if self.total.is_some_and(|t| t != total) {
                    return Err("the number of files shared changed mid-browse".into());
                }
                if files.is_empty() && have < total.min(MAX_FILES) {
                    return Err(format!("an empty page at {have} of {total}"));
                }
                self.total = Some(total);
                self.text += files.iter().map(text_of).sum::<usize>();
                if self.text > MAX_TEXT_BYTES {
                    return Err(format!(
                        "a list of more than {} MiB of names and tags",
                        MAX_TEXT_BYTES >> 20
                    ));
                }
                let room = (MAX_FILES.min(total) - have.min(total)) as usize;
                self.files.extend(files.into_iter().take(room));
                let have = self.files.len() as u32;
                if have >= total.min(MAX_FILES) {
                    self.transmit.push_back(Message::Goodbye {
                        reason: "browsed".into(),
                    });
                    self.end = Some(BrowseEnd::Done {
                        files: std::mem::take(&mut self.files),
                        total,
                    });
                } else {
                    self.ask();
                }
                Ok(())
            }
            Message::BrowseRefused { request, reason } if request == self.request => {
                self.end = Some(BrowseEnd::Refused(reason));
                Ok(())
            }
            Message::Ping { nonce } => {
                self.transmit.push_back(Message::Pong { nonce });
                Ok(())
            }
            Message::Pong { .. } | Message::Have { .. } => Ok(()),
            Message::Goodbye { reason } => Err(format!("the peer left: {reason}")),
            other => Err(format!("unexpected {} while browsing", other.kind())),
        }
    }

    fn ask(&mut self) {
        self.request += 1;
        self.transmit.push_back(Message::Browse {
            request: self.request,
            offset: self.files.len() as u32,
        });
    }
}

/// The text of a record: its path and tags.
fn text_of(f: &FileRecord) -> usize {
    let t = &f.tags;
    f.path.len()
        + [&t.artist, &t.album, &t.title, &t.genre]
            .iter()
            .map(|s| s.as_ref().map_or(0, String::len))
            .sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use wire::{FileId, Role, Tags};

    fn hello() -> Hello {
        Hello::new(NodeId([1; 32]), Role::Leaf, None, "test")
    }

    fn peer() -> NodeId {
        NodeId([2; 32])
    }

    fn theirs() -> Message {
        Message::Hello(Hello::new(
            peer(),
            Role::Leaf,
            Some("127.0.0.1:7000".parse().unwrap()),
            "test",
        ))
    }

    fn file(n: u32) -> FileRecord {
        FileRecord {
            id: FileId([n as u8; 32]),
            size: u64::from(n),
            path: format!("music/{n}.mp3"),
            tags: Tags::default(),
        }
    }

    fn sent(s: &mut BrowseSession) -> Vec<Message> {
        std::iter::from_fn(|| s.poll_transmit()).collect()
    }

    #[test]
    fn pages_are_asked_for_in_turn_until_the_total() {
        let mut s = BrowseSession::new(peer(), hello());
        assert!(matches!(sent(&mut s)[..], [Message::Hello(_)]));
        s.handle_message(theirs());
        assert_eq!(
            sent(&mut s),
            [Message::Browse {
                request: 1,
                offset: 0
            }]
        );
        s.handle_message(Message::Listing {
            request: 1,
            offset: 0,
            total: 3,
            files: vec![file(1), file(2)],
        });
        assert_eq!(
            sent(&mut s),
            [Message::Browse {
                request: 2,
                offset: 2
            }]
        );
        s.handle_message(Message::Listing {
            request: 2,
            offset: 2,
            total: 3,
            files: vec![file(3)],
        });
        assert!(matches!(sent(&mut s)[..], [Message::Goodbye { .. }]));
        assert_eq!(
            s.end(),
            Some(&BrowseEnd::Done {
                files: vec![file(1), file(2), file(3)],
                total: 3
            })
        );
    }

    #[test]
    fn an_empty_share_and_a_refusal_end_at_once() {
        let mut s = BrowseSession::new(peer(), hello());
        s.handle_message(theirs());
        s.handle_message(Message::Listing {
            request: 1,
            offset: 0,
            total: 0,
            files: vec![],
        });
        assert!(matches!(s.end(), Some(BrowseEnd::Done { files, total: 0 }) if files.is_empty()));
        let mut s = BrowseSession::new(peer(), hello());
        s.handle_message(theirs());
        s.handle_message(Message::BrowseRefused {
            request: 1,
            reason: "browsing is off".into(),
        });
        assert_eq!(s.end(), Some(&BrowseEnd::Refused("browsing is off".into())));
    }

    #[test]
    fn pages_out_of_turn_too_big_empty_or_with_a_changing_total_are_hostile() {
        let bad_pages = [
            // Not the page asked for.
            Message::Listing {
                request: 1,
                offset: 5,
                total: 10,
                files: vec![file(1)],
            },
            Message::Listing {
                request: 9,
                offset: 0,
                total: 10,
                files: vec![file(1)],
            },
            // Too many files in a page.
            Message::Listing {
                request: 1,
                offset: 0,
                total: 5000,
                files: (0..=MAX_PAGE).map(file).collect(),
            },
            // No progress while files are missing.
            Message::Listing {
                request: 1,
                offset: 0,
                total: 10,
                files: vec![],
            },
            // Chunks where a list was asked for.
            Message::GetManifest {
                request: 1,
                id: FileId([0; 32]),
            },
        ];
        for bad in bad_pages {
            let mut s = BrowseSession::new(peer(), hello());
            s.handle_message(theirs());
            sent(&mut s);
            s.handle_message(bad.clone());
            assert!(
                matches!(s.end(), Some(BrowseEnd::Failed(_))),
                "{bad:?} was taken: {:?}",
                s.end()
            );
            assert!(matches!(sent(&mut s)[..], [Message::Goodbye { .. }]));
        }
        // A total that changes between pages.
        let mut s = BrowseSession::new(peer(), hello());
        s.handle_message(theirs());
        s.handle_message(Message::Listing {
            request: 1,
            offset: 0,
            total: 3,
            files: vec![file(1)],
        });
        s.handle_message(Message::Listing {
            request: 2,
            offset: 1,
            total: 4,
            files: vec![file(2)],
        });
        assert!(matches!(s.end(), Some(BrowseEnd::Failed(why)) if why.contains("changed")));
    }

    #[test]
    fn a_list_stops_at_the_cap_and_says_how_many_there_were() {
        let mut s = BrowseSession::new(peer(), hello());
        s.handle_message(theirs());
        let total = MAX_FILES + 500;
        let mut offset = 0;
        while s.end().is_none() {
            let page: Vec<FileRecord> = (offset..offset + MAX_PAGE).map(file).collect();
            s.handle_message(Message::Listing {
                request: offset / MAX_PAGE + 1,
                offset,
                total,
                files: page,
            });
            offset += MAX_PAGE;
        }
        match s.end() {
            Some(BrowseEnd::Done { files, total: t }) => {
                assert_eq!(files.len() as u32, MAX_FILES);
                assert_eq!(*t, total);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_list_of_too_much_text_is_refused() {
        let mut s = BrowseSession::new(peer(), hello());
        s.handle_message(theirs());
        let long = "x".repeat(200_000);
        let mut offset = 0;
        while s.end().is_none() {
            let page: Vec<FileRecord> = (0..100)
                .map(|i| FileRecord {
                    path: format!("{long}/{i}"),
                    ..file(i)
                })
                .collect();
            s.handle_message(Message::Listing {
                request: offset / 100 + 1,
                offset,
                total: 10_000,
                files: page,
            });
            offset += 100;
        }
        assert!(
            matches!(s.end(), Some(BrowseEnd::Failed(why)) if why.contains("MiB")),
            "{:?}",
            s.end()
        );
        assert!(offset <= 4000, "stopped at about 64 MiB");
    }

    #[test]
    fn a_close_before_the_end_is_a_failure() {
        let mut s = BrowseSession::new(peer(), hello());
        s.handle_message(theirs());
        s.handle_closed("reset");
        assert!(matches!(s.end(), Some(BrowseEnd::Failed(why)) if why.contains("reset")));
    }
}
