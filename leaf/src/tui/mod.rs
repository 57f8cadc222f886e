//! `leaf tui`: a full-screen terminal interface to the node of a data directory.
//!
//! - [`app`]: the state and how keys and node updates change it;
//! - [`event`]: terminal events, status polls and request replies merged into one stream;
//! - [`ui`]: a pure render of the state.
//!
//! The TUI talks to the node over its control socket only. If no node runs for the data
//! directory, it starts one in this process (answering on the control socket, so other `leaf`
//! commands reach it too) and stops it on quit; a node that ran before keeps running, with its
//! transfers, when the TUI quits.

pub mod app;
pub mod browse;
pub mod event;
pub mod ui;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

use anyhow::Context;
use wire::{Filter, Search, Terms};

use crate::control::{self, Request};
use crate::node::{Node, NodeConfig};
use app::{Action, App};
use event::{send_request, Event, Events};

/// How long a search collects hits.
pub const SEARCH_WAIT_MS: u64 = 5_000;

/// Runs the TUI for the node of `config.data_dir` until the user quits. `config` (with
/// `control` and `listen` set) is used to start the node if none runs; downloads go to `out`.
pub fn run(config: NodeConfig, out: PathBuf) -> anyhow::Result<()> {
    smol::block_on(async move {
        let data_dir = config.data_dir.clone();
        let (node, attached) = if control::connect(&data_dir).await.is_some() {
            (
                None,
                format!("attached to the node of {}", data_dir.display()),
            )
        } else {
            let node = Node::start(config)
                .await
                .context("starting the leaf node")?;
            let n = node.clone();
            smol::spawn(async move { n.reshare_remembered().await }).detach();
            (
                Some(node),
                format!("started a node for {} (stops on quit)", data_dir.display()),
            )
        };
        let mut app = App::new(out, attached.clone());
        app.notice = Some(attached);
        // Restores the terminal on panic too.
        let mut terminal = ratatui::try_init().context("setting up the terminal")?;
        let result = event_loop(&mut terminal, &mut app, data_dir).await;
        ratatui::restore();
        if let Some(node) = node {
            node.shutdown().await;
        }
        result
    })
}

async fn event_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    data_dir: PathBuf,
) -> anyhow::Result<()> {
    let events = Events::new();
    events.read_terminal();
    events.poll_status(data_dir.clone());
    loop {
        terminal.draw(|f| ui::render(app, f))?;
        let Some(ev) = events.next().await else {
            return Ok(());
        };
        let action = match ev {
            Event::Key(k) => app.on_key(k),
            Event::Resize => None,
            Event::Update(u) => {
                app.on_update(u);
                None
            }
        };
        let Some(action) = action else { continue };
        let (req, gen) = match action {
            Action::Quit => return Ok(()),
            Action::Open(folder) => {
                app.notice = Some(open_folder(&folder));
                continue;
            }
            Action::GetMany(ids) => (
                Request::Get {
                    ids,
                    out: app.out.clone(),
                    again: false,
                },
                0,
            ),
            Action::Unshare(path) => (Request::Unshare { path }, 0),
            Action::Wish(words) => (
                Request::WishAdd {
                    words,
                    filter: Filter::default(),
                    auto: false,
                    out: app.out.clone(),
                },
                0,
            ),
            Action::Unwish(id) => (Request::WishRemove { id }, 0),
            Action::Browse(addr) => (
                Request::Browse {
                    source: addr.to_string(),
                },
                0,
            ),
            Action::FetchBrowsed(addr, fetch) => {
                // One request per folder, and one for the single files.
                for folder in fetch.folders {
                    let req = Request::GetFolder {
                        source: addr.to_string(),
                        folder,
                        out: app.out.clone(),
                        again: false,
                    };
                    send_request(data_dir.clone(), req, 0, events.sender());
                }
                if fetch.files.is_empty() {
                    continue;
                }
                let ids = fetch.files;
                (
                    Request::Get {
                        ids,
                        out: app.out.clone(),
                        again: false,
                    },
                    0,
                )
            }
            Action::Search(words) => (
                Request::SearchStream {
                    search: Search {
                        terms: Terms::Words(words),
                        filter: Filter::default(),
                    },
                    ttl: wire::DEFAULT_TTL,
                    wait_ms: SEARCH_WAIT_MS,
                },
                app.search_gen,
            ),
            Action::Get(id) => (
                Request::Get {
                    ids: vec![id],
                    out: app.out.clone(),
                    again: false,
                },
                0,
            ),
            Action::Cancel(id) => (Request::Cancel { id }, 0),
            Action::Discard(id) => (Request::Discard { id }, 0),
            Action::Share(path) => {
                let path = std::path::absolute(&path).unwrap_or(path);
                (Request::Share { paths: vec![path] }, 0)
            }
        };
        send_request(data_dir.clone(), req, gen, events.sender());
    }
}

/// Opens a folder in the desktop's file manager when there is one (`xdg-open`); over SSH or in
/// a bare terminal, says where the folder is instead.
fn open_folder(folder: &std::path::Path) -> String {
    let desktop =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if desktop {
        let opened = std::process::Command::new("xdg-open")
            .arg(folder)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        if opened.is_ok() {
            return format!("opened {}", folder.display());
        }
    }
    format!("saved in {}", folder.display())
}
