//! One stream of events for the run loop: terminal keys and resizes (read on a thread), the
//! node's status polled every 500 ms, and the replies of requests the TUI makes.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ratatui::crossterm::event::{self as term, KeyEvent, KeyEventKind};
use smol::channel::{self, Receiver, Sender};

use super::app::Update;
use crate::control::{self, Reply, Request};

/// How often the node's status is asked for.
pub const STATUS_EVERY: Duration = Duration::from_millis(500);

/// Something the run loop reacts to.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A key was pressed.
    Key(KeyEvent),
    /// The terminal changed size (the next draw adapts).
    Resize,
    /// The node told us something.
    Update(Update),
}

/// The merged stream, and the sender its sources use.
pub struct Events {
    tx: Sender<Event>,
    rx: Receiver<Event>,
    stop: Arc<AtomicBool>,
}

impl Events {
    /// A stream with no source yet.
    pub fn new() -> Events {
        let (tx, rx) = channel::unbounded();
        Events {
            tx,
            rx,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The next event.
    pub async fn next(&self) -> Option<Event> {
        self.rx.recv().await.ok()
    }

    /// A sender for another source.
    pub fn sender(&self) -> Sender<Event> {
        self.tx.clone()
    }

    /// Reads the terminal on a thread until the stream is dropped.
    pub fn read_terminal(&self) {
        let (tx, stop) = (self.tx.clone(), self.stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match term::poll(Duration::from_millis(100)) {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(_) => return,
                }
                let ev = match term::read() {
                    Ok(term::Event::Key(k)) if k.kind != KeyEventKind::Release => Event::Key(k),
                    Ok(term::Event::Resize(..)) => Event::Resize,
                    Ok(_) => continue,
                    Err(_) => return,
                };
                if tx.send_blocking(ev).is_err() {
                    return;
                }
            }
        });
    }

    /// Asks the node for its status every [`STATUS_EVERY`] until the stream is dropped.
    pub fn poll_status(&self, data_dir: PathBuf) {
        let tx = self.tx.clone();
        smol::spawn(async move {
            loop {
                let update = Update::Status(status(&data_dir).await);
                if tx.send(Event::Update(update)).await.is_err() {
                    return;
                }
                smol::Timer::after(STATUS_EVERY).await;
            }
        })
        .detach();
    }
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the node says, or why it said nothing.
async fn status(data_dir: &Path) -> Result<Box<StatusReport>, String> {
    let Some(stream) = control::connect(data_dir).await else {
        return Err(format!(
            "no node answers on {}",
            control::socket_path(data_dir).display()
        ));
    };
    let replies = control::request(stream, Request::Status);
    let timeout = async {
        smol::Timer::after(Duration::from_secs(3)).await;
        None
    };
    match smol::future::or(async { replies.recv().await.ok() }, timeout).await {
        Some(Reply::Status(s)) => Ok(s),
        Some(Reply::Error(e)) => Err(e),
        Some(other) => Err(format!("unexpected answer {other:?}")),
        None => Err("the node did not answer within 3 s".into()),
    }
}

use crate::control::StatusReport;

/// Sends `req` to the node and turns its replies into updates on `tx`.
/// `search`: the number of the search this is, for [`Update::Results`].
pub fn send_request(data_dir: PathBuf, req: Request, search: u64, tx: Sender<Event>) {
    smol::spawn(async move {
        let searching = matches!(req, Request::SearchStream { .. });
        let what = request_name(&req);
        let Some(stream) = control::connect(&data_dir).await else {
            let _ = tx
                .send(Event::Update(Update::Notice(format!(
                    "{what}: the node is unreachable"
                ))))
                .await;
            if searching {
                let _ = tx.send(Event::Update(Update::SearchEnd(search))).await;
            }
            return;
        };
        let replies = control::request(stream, req);
        // A listing comes in parts; the tab gets it whole.
        let mut listing = None;
        while let Ok(reply) = replies.recv().await {
            let update = match reply {
                Reply::Results(r) => Update::Results(search, r),
                Reply::ShareProgress(p) => Update::ShareProgress(p),
                Reply::Shared(s) => Update::Shared(s),
                Reply::Unshared { folder, files } => Update::Notice(format!(
                    "stopped sharing {}: {files} files withdrawn",
                    folder.display()
                )),
                Reply::GetDone(r) if r.already_had => {
                    Update::Notice(format!("already here: {}", r.path.display()))
                }
                Reply::GetDone(r) => Update::Notice(format!("saved {}", r.path.display())),
                Reply::GetFailed { error, .. } => Update::Notice(format!("download: {error}")),
                Reply::Error(e) => Update::Notice(format!("{what}: {e}")),
                Reply::End => {
                    if searching {
                        let _ = tx.send(Event::Update(Update::SearchEnd(search))).await;
                    }
                    if let Some(l) = listing.take() {
                        let _ = tx.send(Event::Update(Update::Listing(l))).await;
                    }
                    return;
                }
                // The Wishes tab shows them from the status.
                Reply::Wishes(w) => Update::Notice(format!("wishlist: {} wish(es)", w.len())),
                Reply::Listing(part) => {
                    crate::browse::join_part(&mut listing, part);
                    continue;
                }
                Reply::GetProgress(_) | Reply::Status(_) => continue,
            };
            if tx.send(Event::Update(update)).await.is_err() {
                return;
            }
        }
    })
    .detach();
}

fn request_name(req: &Request) -> &'static str {
    match req {
        Request::Share { .. } => "share",
        Request::Search { .. } | Request::SearchStream { .. } => "search",
        Request::Get { .. } => "download",
        Request::Status => "status",
        Request::Cancel { .. } => "cancel",
        Request::Discard { .. } => "cancel",
        Request::Unshare { .. } => "unshare",
        Request::WishAdd { .. } | Request::WishRemove { .. } | Request::Wishes => "wishlist",
        Request::Browse { .. } => "browse",
        Request::GetFolder { .. } => "folder download",
    }
}
