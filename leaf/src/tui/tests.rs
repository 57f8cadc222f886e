//! Render tests: given a state, the screen shows what a person should see.

use std::path::PathBuf;

use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use wire::{FileId, NodeId, Source, Tags};

use super::app::{Action, App, Connection, Input, Sort, Tab, Update};
use super::ui;
use crate::control::{DownloadInfo, DownloadState, LinkStatus, StatusReport, SuperPeerStatus};
use crate::search::SearchResult;

/// The screen as lines of text.
fn screen(app: &App, w: u16, h: u16) -> Vec<String> {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| ui::render(app, f)).unwrap();
    let buf = t.backend().buffer().clone();
    (0..h)
        .map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>())
        .collect()
}

fn contains(lines: &[String], needle: &str) -> bool {
    lines.iter().any(|l| l.contains(needle))
}

fn line_with<'a>(lines: &'a [String], needle: &str) -> &'a str {
    lines
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in\n{}", lines.join("\n")))
}

fn result(n: u8, name: &str, size: u64, sources: usize, artist: Option<&str>) -> SearchResult {
    SearchResult {
        id: FileId([n; 32]),
        name: name.into(),
        path: format!("Music/{name}"),
        size,
        tags: Tags {
            artist: artist.map(String::from),
            title: artist.map(|_| "Saman".to_string()),
            album: artist.map(|_| "Living Room Songs".to_string()),
            year: artist.map(|_| 2011),
            duration_s: artist.map(|_| 185),
            ..Tags::default()
        },
        sources: (0..sources)
            .map(|i| Source {
                node: NodeId([i as u8; 32]),
                addr: ([127, 0, 0, 1], 9000 + i as u16).into(),
                reachable: Some(true),
                via: None,
            })
            .collect(),
        score: 10.0 - n as f32,
        have: None,
    }
}

fn download(name: &str, size: u64, done: u64, state: DownloadState) -> DownloadInfo {
    DownloadInfo {
        id: FileId([7; 32]),
        name: name.into(),
        size,
        done_bytes: done,
        sources: 2,
        speed: 1_500_000,
        eta_s: Some(4),
        queued_at: None,
        resumed_chunks: 0,
        out: PathBuf::from("/tmp/dl"),
        state,
    }
}

fn status() -> StatusReport {
    StatusReport {
        node: NodeId([1; 32]),
        role: "leaf".into(),
        role_reason: "attached to 1 super-peer".into(),
        hosts: 3,
        superpeer: None,
        events: vec!["attached to 127.0.0.1:7700".into()],
        listen: Some("127.0.0.1:4000".parse().unwrap()),
        superpeers: vec![LinkStatus {
            addr: "127.0.0.1:7700".parse().unwrap(),
            connected: true,
            node: None,
        }],
        port_mapping: None,
        web: None,
        reach: Some(crate::control::Reach {
            observed: "203.0.113.4:4000".parse().unwrap(),
            reachable: true,
            nat: None,
        }),
        reach_also: Some(crate::control::Reach {
            observed: "[2001:db8::4]:4000".parse().unwrap(),
            reachable: true,
            nat: None,
        }),
        folders: vec![PathBuf::from("/home/me/Music")],
        folder_stats: vec![crate::control::FolderStats {
            folder: PathBuf::from("/home/me/Music"),
            files: 12,
            bytes: 34_000_000,
        }],
        files: 12,
        bytes: 34_000_000,
        downloads: Vec::new(),
        wishes: Vec::new(),
        uploaded_chunks: 5,
        uploaded_bytes: 1_200_000,
        indirect: Default::default(),
        upload_slots: (1, 4),
        upload_queue: 2,
        peer_links: (3, 72),
        upload_rate: None,
        download_rate: None,
    }
}

fn app() -> App {
    let mut app = App::new(PathBuf::from("/tmp/dl"), "test");
    app.notice = None;
    app.on_update(Update::Status(Ok(Box::new(status()))));
    app
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

#[test]
fn search_results_show_one_row_per_file_with_size_type_sources_and_tags() {
    let mut app = app();
    app.query = "saman".into();
    app.search_gen = 1;
    app.searching = true;
    app.on_update(Update::Results(
        1,
        vec![
            result(1, "saman.flac", 3_000_000, 2, Some("Ólafur Arnalds")),
            result(2, "notes.txt", 1_200, 1, None),
        ],
    ));
    let s = screen(&app, 100, 30);
    assert!(contains(&s, "saman"), "the query box shows the query");
    assert!(contains(&s, "2 files · sort: relevance · searching…"));
    let row = line_with(&s, "saman.flac");
    for cell in ["3.0 MB", "flac", " 2 ", "Ólafur Arnalds – Saman"] {
        assert!(row.contains(cell), "{cell:?} in {row:?}");
    }
    // The selected file's details: its path, album, year, length and id.
    assert!(
        contains(
            &s,
            "Music/saman.flac · Living Room Songs · 2011 · 3:05 · 01010101"
        ),
        "{}",
        s.join("\n")
    );
    let row = line_with(&s, "notes.txt");
    assert!(row.contains("1.2 kB") && row.contains("txt"), "{row}");
    // Sorting by size puts the big file first still; by name puts notes first.
    app.on_key(key(KeyCode::Char('s')));
    assert_eq!(app.sort, Sort::Name);
    let s = screen(&app, 100, 30);
    let first = s.iter().position(|l| l.contains("notes.txt")).unwrap();
    let second = s.iter().position(|l| l.contains("saman.flac")).unwrap();
    assert!(first < second, "sorted by name:\n{}", s.join("\n"));
    // A filter hides what does not match.
    app.on_key(key(KeyCode::Char('f')));
    for c in "ARNALDS".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    assert_eq!(app.input, Input::Filter);
    app.on_key(key(KeyCode::Enter));
    // The filter matches tags too, in any case.
    let s = screen(&app, 100, 30);
    assert!(!contains(&s, "notes.txt"));
    assert!(contains(&s, "saman.flac"));
    assert!(contains(&s, "filter: ARNALDS"));
}

#[test]
fn results_this_node_already_has_say_so_and_where() {
    let mut app = app();
    app.search_gen = 1;
    let mut had = result(1, "kept.flac", 3_000_000, 2, None);
    had.have = Some("/home/me/Music/kept.flac".into());
    app.on_update(Update::Results(
        1,
        vec![had, result(2, "new.flac", 3_000_000, 1, None)],
    ));
    let s = screen(&app, 100, 30);
    assert!(
        line_with(&s, "kept.flac").contains("(have)"),
        "{}",
        s.join("\n")
    );
    assert!(!line_with(&s, "new.flac").contains("(have)"));
    // The selected one (the first) says where.
    assert!(
        contains(&s, "you have it: /home/me/Music/kept.flac"),
        "{}",
        s.join("\n")
    );
}

#[test]
fn the_wishes_tab_lists_wishes_with_what_they_found_and_w_and_x_add_and_remove() {
    let mut app = app();
    app.query = "saman".into();
    assert_eq!(
        app.on_key(key(KeyCode::Char('w'))),
        Some(Action::Wish("saman".into()))
    );
    let mut s = status();
    let mut list = crate::wish::Wishlist::new(
        Default::default(),
        std::time::Duration::from_secs(60),
        std::time::Instant::now(),
        1,
    );
    let now = std::time::Instant::now();
    list.add(now, "living room", Default::default(), true, "/dl".into())
        .unwrap();
    list.add(now, "never found", Default::default(), false, "/dl".into())
        .unwrap();
    list.handle_results(
        1,
        &[result(4, "living room songs.flac", 9_000_000, 1, None)],
        5,
    );
    s.wishes = list.wishes().to_vec();
    app.on_update(Update::Status(Ok(Box::new(s))));
    app.on_key(key(KeyCode::Char('5')));
    assert_eq!(app.tab, Tab::Wishes);
    let screen = screen(&app, 80, 24);
    assert!(line_with(&screen, "1: living room").contains("1 found · auto"));
    assert!(
        contains(&screen, "living room songs.flac  9.0 MB"),
        "{}",
        screen.join("\n")
    );
    assert!(line_with(&screen, "2: never found").contains("not searched yet"));
    app.on_key(key(KeyCode::Down));
    assert_eq!(app.on_key(key(KeyCode::Char('x'))), Some(Action::Unwish(2)));
}

#[test]
fn b_browses_the_selected_results_leaf_whose_folders_fold_mark_and_download() {
    let mut app = app();
    app.search_gen = 1;
    app.on_update(Update::Results(
        1,
        vec![result(1, "saman.flac", 3, 1, None)],
    ));
    let addr = app.results[0].sources[0].addr;
    assert_eq!(
        app.on_key(key(KeyCode::Char('b'))),
        Some(Action::Browse(addr))
    );
    let file = |n: u8, path: &str| wire::FileRecord {
        id: FileId([n; 32]),
        size: 2_000_000,
        path: path.into(),
        tags: Tags::default(),
    };
    app.on_update(Update::Listing(crate::browse::Listing {
        addr,
        files: vec![
            file(1, "Music/Album/01.flac"),
            file(2, "Music/Album/CD2/02.flac"),
            file(3, "Music/loose.mp3"),
        ],
        total: 3,
    }));
    assert_eq!(app.tab, Tab::Browse, "the tree opens at once");
    let s = screen(&app, 80, 24);
    assert!(
        line_with(&s, "▸ Music/").contains("3 files, 6.0 MB"),
        "{}",
        s.join("\n")
    );
    assert!(!contains(&s, "Album"), "folded");
    app.on_key(key(KeyCode::Char(' ')));
    app.on_key(key(KeyCode::Down));
    app.on_key(key(KeyCode::Char(' ')));
    let s = screen(&app, 80, 24);
    for row in ["▾ Music/", "▾ Album/", "01.flac", "▸ CD2/", "loose.mp3"] {
        assert!(contains(&s, row), "{row} in\n{}", s.join("\n"));
    }
    // Enter on a folder fetches it whole.
    let Some(Action::FetchBrowsed(to, fetch)) = app.on_key(key(KeyCode::Enter)) else {
        panic!("no download");
    };
    assert_eq!(to, addr);
    assert_eq!(fetch.folders, ["Music/Album"]);
    // Marked rows go together: a folder and a file.
    app.on_key(key(KeyCode::Char('m'))); // Album, then the selection moves to 01.flac
    app.on_key(key(KeyCode::Down)); // CD2
    app.on_key(key(KeyCode::Down)); // loose.mp3
    app.on_key(key(KeyCode::Char('m')));
    assert!(line_with(&screen(&app, 80, 24), "loose.mp3").contains("✓"));
    let Some(Action::FetchBrowsed(_, fetch)) = app.on_key(key(KeyCode::Char('d'))) else {
        panic!("no download");
    };
    assert_eq!(fetch.folders, ["Music/Album"]);
    assert_eq!(fetch.files, [FileId([3; 32])]);
}

#[test]
fn stale_results_of_an_older_search_are_ignored_and_enter_downloads() {
    let mut app = app();
    app.on_key(key(KeyCode::Char('/')));
    for c in "abc".chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        Some(Action::Search("abc".into()))
    );
    let gen = app.search_gen;
    app.on_update(Update::Results(
        gen - 1,
        vec![result(9, "old.mp3", 1, 1, None)],
    ));
    assert!(app.results.is_empty());
    app.on_update(Update::Results(gen, vec![result(3, "new.mp3", 1, 1, None)]));
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        Some(Action::Get(FileId([3; 32])))
    );
    // Selection stays within the rows, however far it is moved.
    app.on_update(Update::Results(
        gen,
        (1..=30).map(|n| result(n, "x.mp3", 1, 1, None)).collect(),
    ));
    app.on_key(key(KeyCode::End));
    assert_eq!(app.selected, 29);
    app.on_key(key(KeyCode::PageDown));
    assert_eq!(app.selected, 29);
    app.on_key(key(KeyCode::PageUp));
    assert_eq!(app.selected, 19);
    app.on_key(key(KeyCode::Home));
    assert_eq!(app.selected, 0);
    app.on_key(key(KeyCode::Up));
    assert_eq!(app.selected, 0);
}

#[test]
fn downloads_show_a_bar_speed_eta_sources_and_failure_reason() {
    let mut app = app();
    let mut s = status();
    s.downloads = vec![
        download("big.flac", 10_000_000, 5_000_000, DownloadState::Running),
        DownloadInfo {
            id: FileId([8; 32]),
            ..download(
                "gone.mp3",
                100,
                0,
                DownloadState::Failed("no source has it".into()),
            )
        },
        DownloadInfo {
            id: FileId([9; 32]),
            ..download(
                "fine.ogg",
                100,
                100,
                DownloadState::Done("/tmp/dl/fine.ogg".into()),
            )
        },
    ];
    app.on_update(Update::Status(Ok(Box::new(s))));
    app.on_key(key(KeyCode::Char('2')));
    assert_eq!(app.tab, Tab::Downloads);
    let screen = screen(&app, 100, 24);
    let row = line_with(&screen, "big.flac");
    assert!(row.contains("██████░░░░░░  50%"), "{row}");
    assert!(row.contains("1.5 MB/s") && row.contains("4s") && row.contains("running"));
    assert!(line_with(&screen, "gone.mp3").contains("failed: no source has it"));
    assert!(line_with(&screen, "fine.ogg").contains("████████████ 100%"));
    assert!(line_with(&screen, "fine.ogg").contains("done"));
    // c on the running download cancels it; r on the failed one gets it again.
    assert_eq!(
        app.on_key(key(KeyCode::Char('c'))),
        Some(Action::Cancel(FileId([7; 32])))
    );
    app.on_key(key(KeyCode::Down));
    assert_eq!(
        app.on_key(key(KeyCode::Char('r'))),
        Some(Action::Get(FileId([8; 32])))
    );
}

#[test]
fn every_tab_fits_80_by_24_with_tabs_and_footer() {
    let mut app = app();
    let mut s = status();
    s.downloads = vec![download(
        "a very long file name that goes on and on.flac",
        10,
        5,
        DownloadState::Waiting,
    )];
    s.superpeer = Some(SuperPeerStatus {
        listen: "0.0.0.0:7700".parse().unwrap(),
        leaves: 4,
        leaf_slots: 300,
        neighbours: 2,
        records: 99,
        queries: 7,
    });
    s.role = "super-peer".into();
    app.on_update(Update::Status(Ok(Box::new(s))));
    app.results = vec![result(
        1,
        "saman.flac",
        3_000_000,
        2,
        Some("Ólafur Arnalds"),
    )];
    for (n, expect) in [
        ('1', "saman.flac"),
        ('2', "waiting for sources"),
        ('3', "/home/me/Music"),
        ('4', "4/300 leaves"),
    ] {
        app.on_key(key(KeyCode::Char(n)));
        let s = screen(&app, 80, 24);
        assert_eq!(s.len(), 24);
        assert!(
            s[0].contains("1 Search") && s[0].contains("4 Network"),
            "{}",
            s[0]
        );
        assert!(
            s[23].contains("q") && s[23].contains("quit"),
            "footer: {}",
            s[23]
        );
        assert!(
            contains(&s, expect),
            "tab {n}: {expect:?} in\n{}",
            s.join("\n")
        );
    }
    let s = screen(&app, 80, 24);
    assert!(contains(&s, "super-peer — attached to 1 super-peer"));
    assert!(contains(&s, "3 super-peers known"));
    assert!(contains(&s, "yes, at 203.0.113.4:4000"));
    assert!(contains(&s, "reachable at [2001:db8::4]:4000"));
    assert!(contains(&s, "attached to 127.0.0.1:7700"));
    app.on_key(key(KeyCode::Char('3')));
    let s = screen(&app, 80, 24);
    assert!(contains(&s, "12 files, 34.0 MB shared from 1 folder(s)"));
    assert!(line_with(&s, "/home/me/Music").contains("12 files, 34.0 MB"));
    assert!(contains(&s, "slots 1/4 in use, 2 waiting"));
}

#[test]
fn help_screen_lists_the_keys_and_any_key_closes_it() {
    let mut app = app();
    app.on_key(key(KeyCode::Char('?')));
    let s = screen(&app, 80, 24);
    assert!(contains(&s, "Keys (any key closes)"));
    assert!(contains(&s, "download the selected result"));
    assert!(contains(&s, "quit (the node keeps running)"));
    app.on_key(key(KeyCode::Char('x')));
    assert!(!app.help);
    assert!(!contains(&screen(&app, 80, 24), "Keys (any key closes)"));
    assert_eq!(app.on_key(key(KeyCode::Char('q'))), Some(Action::Quit));
}

#[test]
fn a_lost_node_is_shown_and_the_last_state_kept() {
    let mut app = app();
    app.on_update(Update::Status(Err(
        "no node answers on /x/control.sock".into()
    )));
    assert!(matches!(app.connection, Connection::Lost(_)));
    app.on_key(key(KeyCode::Char('4')));
    let s = screen(&app, 80, 24);
    assert!(
        contains(&s, "node unreachable, retrying"),
        "{}",
        s.join("\n")
    );
    assert!(s[0].contains("node unreachable"));
    assert!(contains(&s, "127.0.0.1:7700"), "the last known state stays");
    // Back again.
    app.on_update(Update::Status(Ok(Box::new(status()))));
    assert!(!contains(&screen(&app, 80, 24), "unreachable"));
}

#[test]
fn tiny_terminals_do_not_panic() {
    // Also print one screen, for a person running the tests with --nocapture.
    println!("{}", screen(&app(), 80, 24).join("\n"));
    let mut app = app();
    for tab in ['1', '2', '3', '4', '?'] {
        app.on_key(key(KeyCode::Char(tab)));
        for (w, h) in [(1, 1), (10, 3), (20, 5), (80, 24), (200, 60)] {
            screen(&app, w, h);
        }
    }
}

#[test]
fn marked_results_download_together_and_the_type_filter_narrows_the_rows() {
    let mut app = app();
    app.on_update(Update::Results(
        app.search_gen,
        vec![
            result(1, "song.flac", 30_000_000, 2, Some("Artist")),
            result(2, "film.mkv", 700_000_000, 1, None),
            result(3, "cover.jpg", 200_000, 3, None),
        ],
    ));
    // Mark the first two (space marks and moves down), then download both.
    assert_eq!(app.on_key(key(KeyCode::Char(' '))), None);
    assert_eq!(app.on_key(key(KeyCode::Char(' '))), None);
    let lines = screen(&app, 100, 20);
    assert!(contains(&lines, "2 marked"), "{lines:#?}");
    assert!(contains(&lines, "✓ song.flac"), "{lines:#?}");
    assert_eq!(
        app.on_key(key(KeyCode::Enter)),
        Some(Action::GetMany(vec![FileId([1; 32]), FileId([2; 32])]))
    );
    assert!(app.marked.is_empty());
    // t cycles the type: audio shows only the flac.
    app.on_key(key(KeyCode::Char('t')));
    let shown: Vec<&str> = app
        .shown_results()
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(shown, ["song.flac"]);
    assert!(contains(&screen(&app, 100, 20), "type: audio"));
    app.on_key(key(KeyCode::Char('t')));
    let shown: Vec<&str> = app
        .shown_results()
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(shown, ["film.mkv"]);
}

#[test]
fn a_shared_folder_can_be_removed_and_a_download_folder_opened() {
    let mut app = app();
    app.on_key(key(KeyCode::Char('3')));
    let lines = screen(&app, 80, 24);
    assert!(contains(&lines, "▸ /home/me/Music"), "{lines:#?}");
    assert_eq!(
        app.on_key(key(KeyCode::Char('x'))),
        Some(Action::Unshare(PathBuf::from("/home/me/Music")))
    );
    let mut s = status();
    s.downloads = vec![
        download(
            "done.ogg",
            10,
            10,
            DownloadState::Done("/tmp/dl/sub/done.ogg".into()),
        ),
        download("check.ogg", 10, 10, DownloadState::Verifying),
    ];
    app.on_update(Update::Status(Ok(Box::new(s))));
    app.on_key(key(KeyCode::Char('2')));
    assert_eq!(
        app.on_key(key(KeyCode::Char('o'))),
        Some(Action::Open(PathBuf::from("/tmp/dl/sub")))
    );
    assert!(contains(&screen(&app, 100, 20), "finishing"));
}

#[test]
fn shift_x_cancels_a_download_for_good() {
    let mut app = app();
    let mut s = status();
    s.downloads = vec![download("big.iso", 100, 40, DownloadState::Running)];
    app.on_update(Update::Status(Ok(Box::new(s))));
    app.on_key(key(KeyCode::Char('2')));
    let id = app.status.as_ref().unwrap().downloads[0].id;
    assert_eq!(
        app.on_key(key(KeyCode::Char('X'))),
        Some(Action::Discard(id))
    );
}
