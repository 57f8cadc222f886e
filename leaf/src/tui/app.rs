//! The TUI's state and how keys and node updates change it. Nothing here touches the terminal
//! or the network: keys become [`Action`]s that the run loop carries out.

use std::collections::BTreeSet;
use std::path::PathBuf;

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use wire::FileId;

use crate::control::{ShareSummary, StatusReport};
use crate::search::SearchResult;
use crate::share::ScanProgress;

/// The screens, in tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    /// Query box and results.
    Search,
    /// Transfers.
    Downloads,
    /// Shared folders and uploads.
    Shares,
    /// Role, super-peers, events.
    Network,
    /// The wishlist and what it found.
    Wishes,
    /// Another leaf's shares, as a folder tree.
    Browse,
}

impl Tab {
    /// Every tab, in order.
    pub const ALL: [Tab; 6] = [
        Tab::Search,
        Tab::Downloads,
        Tab::Shares,
        Tab::Network,
        Tab::Wishes,
        Tab::Browse,
    ];

    /// Its title.
    pub fn title(self) -> &'static str {
        match self {
            Tab::Search => "Search",
            Tab::Downloads => "Downloads",
            Tab::Shares => "Shares",
            Tab::Network => "Network",
            Tab::Wishes => "Wishes",
            Tab::Browse => "Browse",
        }
    }

    fn index(self) -> usize {
        Tab::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

/// Which text box has the keyboard, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// None: keys are commands.
    None,
    /// The search query.
    Query,
    /// The results filter.
    Filter,
    /// A folder to share.
    SharePath,
}

/// How results are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Best score first (the node's order).
    Relevance,
    /// By name.
    Name,
    /// Largest first.
    Size,
    /// Most sources first.
    Sources,
}

impl Sort {
    /// Its label.
    pub fn label(self) -> &'static str {
        match self {
            Sort::Relevance => "relevance",
            Sort::Name => "name",
            Sort::Size => "size",
            Sort::Sources => "sources",
        }
    }

    fn next(self) -> Sort {
        match self {
            Sort::Relevance => Sort::Name,
            Sort::Name => Sort::Size,
            Sort::Size => Sort::Sources,
            Sort::Sources => Sort::Relevance,
        }
    }
}

/// Which kinds of files the results show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Every file.
    All,
    /// Music and other sound.
    Audio,
    /// Films and clips.
    Video,
    /// Pictures.
    Image,
    /// Texts, books, documents.
    Document,
    /// Archives and disk images.
    Archive,
}

impl Kind {
    /// Its label.
    pub fn label(self) -> &'static str {
        match self {
            Kind::All => "all",
            Kind::Audio => "audio",
            Kind::Video => "video",
            Kind::Image => "images",
            Kind::Document => "documents",
            Kind::Archive => "archives",
        }
    }

    fn next(self) -> Kind {
        match self {
            Kind::All => Kind::Audio,
            Kind::Audio => Kind::Video,
            Kind::Video => Kind::Image,
            Kind::Image => Kind::Document,
            Kind::Document => Kind::Archive,
            Kind::Archive => Kind::All,
        }
    }

    /// Whether a file of this name is of this kind.
    pub fn matches(self, name: &str) -> bool {
        let ext = name
            .rsplit_once('.')
            .map(|(_, e)| e.to_lowercase())
            .unwrap_or_default();
        let of = |list: &[&str]| list.contains(&ext.as_str());
        match self {
            Kind::All => true,
            Kind::Audio => of(&[
                "mp3", "flac", "ogg", "oga", "opus", "m4a", "aac", "wav", "aif", "aiff", "wv",
                "ape", "mpc",
            ]),
            Kind::Video => of(&[
                "mkv", "mp4", "avi", "webm", "mov", "m4v", "mpg", "mpeg", "ts", "wmv",
            ]),
            Kind::Image => of(&[
                "jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "svg", "heic",
            ]),
            Kind::Document => of(&[
                "txt", "pdf", "epub", "mobi", "djvu", "doc", "docx", "odt", "md", "rtf", "cbz",
                "cbr",
            ]),
            Kind::Archive => of(&[
                "zip", "7z", "rar", "tar", "gz", "xz", "bz2", "zst", "iso", "img",
            ]),
        }
    }
}

/// The link to the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connection {
    /// Not asked yet.
    Connecting,
    /// The last status request was answered.
    Up,
    /// The last status request failed, with why; it is retried.
    Lost(String),
}

/// What the run loop should do for a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Start a search with these words.
    Search(String),
    /// Download this file into the output folder.
    Get(FileId),
    /// Download these files into the output folder.
    GetMany(Vec<FileId>),
    /// Cancel this download for good (its partial file is deleted).
    Discard(FileId),
    /// Stop sharing this folder.
    Unshare(PathBuf),
    /// Open this folder in the desktop's file manager (or say where it is).
    Open(PathBuf),
    /// Stop this download (its partial file stays).
    Cancel(FileId),
    /// Share this folder.
    Share(PathBuf),
    /// Add a wish for these words (searched for again and again by the node).
    Wish(String),
    /// Remove this wish.
    Unwish(u32),
    /// List what the leaf at this address shares.
    Browse(std::net::SocketAddr),
    /// Download these folders and files of the leaf at this address.
    FetchBrowsed(std::net::SocketAddr, crate::tui::browse::Fetch),
    /// Leave the TUI.
    Quit,
}

/// What the node told us.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The node's state, or why it could not be had.
    Status(Result<Box<StatusReport>, String>),
    /// The results of search number `.0` so far.
    Results(u64, Vec<SearchResult>),
    /// Search number `.0` finished.
    SearchEnd(u64),
    /// Scan progress of a folder being shared.
    ShareProgress(ScanProgress),
    /// A folder is shared.
    Shared(ShareSummary),
    /// Something to tell the user (a failure, a confirmation).
    Notice(String),
    /// What a browsed leaf shares.
    Listing(crate::browse::Listing),
}

/// The whole state of the TUI.
#[derive(Debug, Clone)]
pub struct App {
    /// The tab shown.
    pub tab: Tab,
    /// Which box has the keyboard.
    pub input: Input,
    /// The search box.
    pub query: String,
    /// The results filter (words matched against name, path, type and tags).
    pub filter: String,
    /// The add-folder box.
    pub share_path: String,
    /// Results of the last search, in the node's order.
    pub results: Vec<SearchResult>,
    /// Whether a search is collecting hits.
    pub searching: bool,
    /// The number of the current search (replies to older ones are ignored).
    pub search_gen: u64,
    /// Result order.
    pub sort: Sort,
    /// Selected row among the shown results.
    pub selected: usize,
    /// Selected download.
    pub dl_selected: usize,
    /// Selected shared folder.
    pub sh_selected: usize,
    /// The selected wish.
    pub wish_selected: usize,
    /// The leaf browsed last.
    pub browse: Option<crate::tui::browse::BrowseView>,
    /// Results marked for download (space toggles).
    pub marked: BTreeSet<FileId>,
    /// Which kinds of files the results show.
    pub kind: Kind,
    /// The node's last state.
    pub status: Option<StatusReport>,
    /// The link to the node.
    pub connection: Connection,
    /// The last notice.
    pub notice: Option<String>,
    /// The folder being scanned.
    pub scan: Option<ScanProgress>,
    /// Whether the help screen is open.
    pub help: bool,
    /// Where downloads are saved.
    pub out: PathBuf,
    /// How the TUI reaches its node, for the header.
    pub attached: String,
    /// Set once the user quits.
    pub quit: bool,
}

impl App {
    /// A fresh state: the search tab, nothing found yet.
    pub fn new(out: PathBuf, attached: impl Into<String>) -> App {
        App {
            tab: Tab::Search,
            input: Input::None,
            query: String::new(),
            filter: String::new(),
            share_path: String::new(),
            results: Vec::new(),
            searching: false,
            search_gen: 0,
            sort: Sort::Relevance,
            selected: 0,
            dl_selected: 0,
            sh_selected: 0,
            wish_selected: 0,
            browse: None,
            marked: BTreeSet::new(),
            kind: Kind::All,
            status: None,
            connection: Connection::Connecting,
            notice: None,
            scan: None,
            help: false,
            out,
            attached: attached.into(),
            quit: false,
        }
    }

    /// The results as shown: filtered, then sorted.
    pub fn shown_results(&self) -> Vec<&SearchResult> {
        let words: Vec<String> = self
            .filter
            .split_whitespace()
            .map(|w| w.to_lowercase())
            .collect();
        let mut rows: Vec<&SearchResult> = self
            .results
            .iter()
            .filter(|r| {
                let hay = format!(
                    "{} {} {} {}",
                    r.path,
                    r.tags.artist.as_deref().unwrap_or(""),
                    r.tags.title.as_deref().unwrap_or(""),
                    r.tags.album.as_deref().unwrap_or("")
                )
                .to_lowercase();
                self.kind.matches(&r.name) && words.iter().all(|w| hay.contains(w.as_str()))
            })
            .collect();
        match self.sort {
            Sort::Relevance => {}
            Sort::Name => rows.sort_by_key(|r| r.name.to_lowercase()),
            Sort::Size => rows.sort_by_key(|r| std::cmp::Reverse(r.size)),
            Sort::Sources => rows.sort_by_key(|r| std::cmp::Reverse(r.sources.len())),
        }
        rows
    }

    fn downloads_len(&self) -> usize {
        self.status.as_ref().map_or(0, |s| s.downloads.len())
    }

    /// Applies a node update.
    pub fn on_update(&mut self, update: Update) {
        match update {
            Update::Status(Ok(s)) => {
                self.connection = Connection::Up;
                self.status = Some(*s);
                self.dl_selected = self.dl_selected.min(self.downloads_len().saturating_sub(1));
                let wishes = self.status.as_ref().map_or(0, |s| s.wishes.len());
                self.wish_selected = self.wish_selected.min(wishes.saturating_sub(1));
            }
            Update::Status(Err(e)) => self.connection = Connection::Lost(e),
            Update::Results(gen, _) | Update::SearchEnd(gen) if gen != self.search_gen => {}
            Update::Results(_, r) => {
                self.results = r;
                let n = self.shown_results().len();
                self.selected = self.selected.min(n.saturating_sub(1));
            }
            Update::SearchEnd(_) => {
                self.searching = false;
                if self.results.is_empty() {
                    self.notice = Some(format!("no results for \"{}\"", self.query));
                }
            }
            Update::ShareProgress(p) => self.scan = Some(p),
            Update::Shared(s) => {
                self.scan = None;
                let skipped = match s.skipped.len() {
                    0 => String::new(),
                    n => format!(", {n} skipped"),
                };
                self.notice = Some(format!(
                    "shared {}: {} files ({} hashed, {} unchanged{skipped})",
                    s.folder.display(),
                    s.files,
                    s.hashed,
                    s.reused
                ));
            }
            Update::Notice(n) => {
                self.notice = Some(n);
            }
            Update::Listing(l) => {
                self.notice = Some(format!(
                    "{}: {} files (space: fold/unfold, m: mark, enter: download)",
                    l.addr, l.total
                ));
                self.browse = Some(crate::tui::browse::BrowseView::new(l));
                self.tab = Tab::Browse;
            }
        }
    }

    /// Applies a key; returns what the run loop should do.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return Some(Action::Quit);
        }
        if self.input != Input::None {
            return self.on_input_key(key);
        }
        if self.help {
            // Any key closes the help screen; q still quits.
            self.help = false;
            if key.code != KeyCode::Char('q') {
                return None;
            }
        }
        match key.code {
            KeyCode::Char('q') => {
                self.quit = true;
                return Some(Action::Quit);
            }
            KeyCode::Char('?') => self.help = true,
            KeyCode::Tab | KeyCode::Right => {
                self.tab = Tab::ALL[(self.tab.index() + 1) % Tab::ALL.len()]
            }
            KeyCode::BackTab | KeyCode::Left => {
                self.tab = Tab::ALL[(self.tab.index() + Tab::ALL.len() - 1) % Tab::ALL.len()]
            }
            KeyCode::Char(c @ '1'..='6') => self.tab = Tab::ALL[c as usize - '1' as usize],
            KeyCode::Char('/') => {
                self.tab = Tab::Search;
                self.input = Input::Query;
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::PageUp => self.move_selection(-10),
            KeyCode::PageDown => self.move_selection(10),
            KeyCode::Home | KeyCode::Char('g') => self.move_selection(isize::MIN / 2),
            KeyCode::End | KeyCode::Char('G') => self.move_selection(isize::MAX / 2),
            _ => return self.on_tab_key(key),
        }
        None
    }

    fn on_tab_key(&mut self, key: KeyEvent) -> Option<Action> {
        match (self.tab, key.code) {
            (Tab::Search, KeyCode::Char('s')) => {
                self.sort = self.sort.next();
                self.selected = 0;
            }
            (Tab::Search, KeyCode::Char('f')) => self.input = Input::Filter,
            (Tab::Search, KeyCode::Char('t')) => {
                self.kind = self.kind.next();
                self.selected = 0;
            }
            (Tab::Search, KeyCode::Char(' ')) => {
                let id = self.shown_results().get(self.selected).map(|r| r.id)?;
                if !self.marked.remove(&id) {
                    self.marked.insert(id);
                }
                self.move_selection(1);
            }
            (Tab::Search, KeyCode::Enter | KeyCode::Char('d')) => {
                if !self.marked.is_empty() {
                    // The marked files, in the order shown.
                    let mut ids: Vec<FileId> = self
                        .shown_results()
                        .iter()
                        .map(|r| r.id)
                        .filter(|id| self.marked.contains(id))
                        .collect();
                    ids.extend(
                        self.marked
                            .iter()
                            .filter(|id| !ids.contains(id))
                            .copied()
                            .collect::<Vec<_>>(),
                    );
                    self.marked.clear();
                    self.notice = Some(format!(
                        "downloading {} files into {}",
                        ids.len(),
                        self.out.display()
                    ));
                    return Some(Action::GetMany(ids));
                }
                let id = self.shown_results().get(self.selected).map(|r| r.id)?;
                self.notice = Some(format!("downloading into {}", self.out.display()));
                return Some(Action::Get(id));
            }
            (Tab::Downloads, KeyCode::Char('X')) => {
                let d = self.status.as_ref()?.downloads.get(self.dl_selected)?;
                if matches!(d.state, crate::control::DownloadState::Done(_)) {
                    self.notice = Some("that download is complete".into());
                    return None;
                }
                return Some(Action::Discard(d.id));
            }
            (Tab::Downloads, KeyCode::Char('o')) => {
                let d = self.status.as_ref()?.downloads.get(self.dl_selected)?;
                let folder = match &d.state {
                    crate::control::DownloadState::Done(path) => path
                        .parent()
                        .map(|p| p.to_path_buf())
                        .unwrap_or_else(|| d.out.clone()),
                    _ => d.out.clone(),
                };
                return Some(Action::Open(folder));
            }
            (Tab::Shares, KeyCode::Char('x') | KeyCode::Delete) => {
                let folder = self.status.as_ref()?.folders.get(self.sh_selected)?.clone();
                return Some(Action::Unshare(folder));
            }
            (Tab::Downloads, KeyCode::Char('c') | KeyCode::Char('p')) => {
                let d = self.selected_download()?;
                if d.1 {
                    return Some(Action::Cancel(d.0));
                }
                self.notice = Some("that download is not running".into());
            }
            (Tab::Downloads, KeyCode::Char('r')) => {
                let d = self.selected_download()?;
                if !d.1 {
                    return Some(Action::Get(d.0));
                }
                self.notice = Some("that download is running already".into());
            }
            (Tab::Shares, KeyCode::Char('a')) => self.input = Input::SharePath,
            (Tab::Search, KeyCode::Char('b')) => {
                let r = self.shown_results().get(self.selected).copied()?;
                let Some(addr) = r.sources.first().map(|s| s.addr) else {
                    self.notice = Some("no source to browse".into());
                    return None;
                };
                self.notice = Some(format!("browsing {addr}…"));
                return Some(Action::Browse(addr));
            }
            (Tab::Browse, KeyCode::Char(' ')) => self.browse.as_mut()?.toggle_open(),
            (Tab::Browse, KeyCode::Char('m')) => {
                let view = self.browse.as_mut()?;
                view.toggle_mark();
                view.move_selection(1);
            }
            (Tab::Browse, KeyCode::Enter | KeyCode::Char('d')) => {
                let view = self.browse.as_ref()?;
                let fetch = view.fetch();
                if fetch == crate::tui::browse::Fetch::default() {
                    return None;
                }
                return Some(Action::FetchBrowsed(view.listing.addr, fetch));
            }
            (Tab::Search, KeyCode::Char('w')) if !self.query.trim().is_empty() => {
                return Some(Action::Wish(self.query.clone()));
            }
            (Tab::Wishes, KeyCode::Char('x') | KeyCode::Delete) => {
                let wish = self.status.as_ref()?.wishes.get(self.wish_selected)?;
                return Some(Action::Unwish(wish.id));
            }
            _ => {}
        }
        None
    }

    /// The selected download's id and whether it is active.
    fn selected_download(&self) -> Option<(FileId, bool)> {
        let d = self.status.as_ref()?.downloads.get(self.dl_selected)?;
        Some((d.id, d.state.is_active()))
    }

    fn on_input_key(&mut self, key: KeyEvent) -> Option<Action> {
        let input = self.input;
        let text = match input {
            Input::Query => &mut self.query,
            Input::Filter => &mut self.filter,
            Input::SharePath => &mut self.share_path,
            Input::None => return None,
        };
        match key.code {
            KeyCode::Esc => self.input = Input::None,
            KeyCode::Backspace => {
                text.pop();
            }
            KeyCode::Char(c) => text.push(c),
            KeyCode::Enter => {
                self.input = Input::None;
                match input {
                    Input::Query if !self.query.trim().is_empty() => {
                        self.results.clear();
                        self.selected = 0;
                        self.searching = true;
                        self.search_gen += 1;
                        self.notice = None;
                        return Some(Action::Search(self.query.trim().to_string()));
                    }
                    Input::SharePath if !self.share_path.trim().is_empty() => {
                        let path = PathBuf::from(self.share_path.trim());
                        self.share_path.clear();
                        return Some(Action::Share(path));
                    }
                    _ => {}
                }
            }
            _ => {}
        }
        if input == Input::Filter {
            self.selected = 0;
        }
        None
    }

    fn move_selection(&mut self, by: isize) {
        let (sel, len) = match self.tab {
            Tab::Search => {
                let len = self.shown_results().len();
                (&mut self.selected, len)
            }
            Tab::Downloads => {
                let len = self.downloads_len();
                (&mut self.dl_selected, len)
            }
            Tab::Shares => {
                let len = self.status.as_ref().map_or(0, |s| s.folders.len());
                (&mut self.sh_selected, len)
            }
            Tab::Wishes => {
                let len = self.status.as_ref().map_or(0, |s| s.wishes.len());
                (&mut self.wish_selected, len)
            }
            Tab::Browse => {
                if let Some(view) = self.browse.as_mut() {
                    view.move_selection(by);
                }
                return;
            }
            _ => return,
        };
        *sel = (*sel as isize + by).clamp(0, len.saturating_sub(1) as isize) as usize;
    }
}
