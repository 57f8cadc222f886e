//! A pure render of [`App`]: the same state always draws the same screen. Only the 16 basic
//! colours are used, and every tab fits an 80×24 terminal.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Gauge, Paragraph, Row, Table, TableState, Wrap};
use ratatui::Frame;

use super::app::{App, Connection, Input, Tab};
use super::browse::Row as BrowseRow;
use crate::control::{DownloadInfo, DownloadState};

const ACCENT: Color = Color::Cyan;
const DIM: Color = Color::DarkGray;

/// Draws the whole screen.
pub fn render(app: &App, f: &mut Frame) {
    let [header, body, notice, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(f.area());
    render_header(app, f, header);
    match app.tab {
        Tab::Search => render_search(app, f, body),
        Tab::Downloads => render_downloads(app, f, body),
        Tab::Shares => render_shares(app, f, body),
        Tab::Network => render_network(app, f, body),
        Tab::Wishes => render_wishes(app, f, body),
        Tab::Browse => render_browse(app, f, body),
    }
    let note = match &app.connection {
        Connection::Lost(why) => Line::styled(
            format!("node unreachable, retrying ({why})"),
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
        _ => Line::styled(app.notice.clone().unwrap_or_default(), Color::Yellow),
    };
    f.render_widget(Paragraph::new(note), notice);
    f.render_widget(Paragraph::new(footer_keys(app)), footer);
    if app.help {
        render_help(f, f.area());
    }
}

fn render_header(app: &App, f: &mut Frame, area: Rect) {
    let mut spans = Vec::new();
    for (i, t) in Tab::ALL.iter().enumerate() {
        let style = if *t == app.tab {
            Style::new().fg(Color::Black).bg(ACCENT)
        } else {
            Style::new().fg(Color::White)
        };
        // Six tabs and the node's state fit on 80 columns.
        spans.push(Span::styled(format!("{} {}", i + 1, t.title()), style));
        spans.push(Span::raw(" "));
    }
    let state = match (&app.connection, &app.status) {
        (Connection::Lost(_), _) => Span::styled("node unreachable", Color::Red),
        (Connection::Connecting, _) | (_, None) => Span::styled("connecting…", Color::Yellow),
        (Connection::Up, Some(s)) => {
            let n = s.superpeers.len();
            Span::styled(
                format!(
                    "{} · {n} super-peer{}",
                    s.role,
                    if n == 1 { "" } else { "s" }
                ),
                if n == 0 { Color::Yellow } else { Color::Green },
            )
        }
    };
    spans.push(state);
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn footer_keys(app: &App) -> Line<'static> {
    let keys: &[(&str, &str)] = match (app.input, app.tab) {
        (Input::None, Tab::Search) => &[
            ("/", "search"),
            ("f", "filter"),
            ("s", "sort"),
            ("␣", "mark"),
            ("⏎", "get"),
            ("?", "help"),
            ("q", "quit"),
        ],
        (Input::None, Tab::Downloads) => &[
            ("↑↓", "select"),
            ("c", "cancel"),
            ("r", "resume"),
            ("o", "open"),
            ("tab", "next"),
            ("?", "help"),
            ("q", "quit"),
        ],
        (Input::None, Tab::Shares) => &[
            ("a", "add folder"),
            ("x", "remove"),
            ("tab", "next"),
            ("?", "help"),
            ("q", "quit"),
        ],
        (Input::None, Tab::Network) => &[("tab", "next"), ("?", "help"), ("q", "quit")],
        (Input::None, Tab::Browse) => &[
            ("␣", "fold"),
            ("m", "mark"),
            ("⏎", "get"),
            ("tab", "next"),
            ("?", "help"),
            ("q", "quit"),
        ],
        (Input::None, Tab::Wishes) => &[
            ("↑↓", "select"),
            ("x", "remove"),
            ("tab", "next"),
            ("?", "help"),
            ("q", "quit"),
        ],
        (_, _) => &[("⏎", "done"), ("esc", "cancel"), ("⌫", "erase")],
    };
    let mut spans = Vec::new();
    for (k, what) in keys {
        spans.push(Span::styled(
            format!(" {k} "),
            Style::new().fg(Color::Black).bg(Color::Gray),
        ));
        spans.push(Span::raw(format!(" {what}  ")));
    }
    Line::from(spans)
}

/// A text box with a title; highlighted (with a cursor) while it has the keyboard.
fn text_box<'a>(title: &'a str, text: &'a str, active: bool) -> Paragraph<'a> {
    let style = if active {
        Style::new().fg(Color::Yellow)
    } else {
        Style::new().fg(DIM)
    };
    let cursor = if active { "_" } else { "" };
    Paragraph::new(format!("{text}{cursor}")).block(
        Block::new()
            .borders(Borders::ALL)
            .border_style(style)
            .title(title),
    )
}

fn render_search(app: &App, f: &mut Frame, area: Rect) {
    let [query, info, table, detail] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(1),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(area);
    f.render_widget(
        text_box(" Search (/) ", &app.query, app.input == Input::Query),
        query,
    );
    let rows = app.shown_results();
    let mut line = vec![Span::raw(format!(
        " {} file{} · sort: {}",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" },
        app.sort.label()
    ))];
    if app.kind != crate::tui::app::Kind::All {
        line.push(Span::styled(
            format!(" · type: {}", app.kind.label()),
            Color::Yellow,
        ));
    }
    if !app.marked.is_empty() {
        line.push(Span::styled(
            format!(" · {} marked", app.marked.len()),
            Color::Cyan,
        ));
    }
    if app.input == Input::Filter || !app.filter.is_empty() {
        let cursor = if app.input == Input::Filter { "_" } else { "" };
        line.push(Span::styled(
            format!(" · filter: {}{cursor}", app.filter),
            Color::Yellow,
        ));
    }
    if app.searching {
        line.push(Span::styled(" · searching…", Color::Green));
    }
    f.render_widget(Paragraph::new(Line::from(line)), info);
    let body: Vec<Row> = rows
        .iter()
        .map(|r| {
            let tags = match (&r.tags.artist, &r.tags.title) {
                (Some(a), Some(t)) => format!("{a} – {t}"),
                (Some(a), None) => a.clone(),
                (None, Some(t)) => t.clone(),
                (None, None) => String::new(),
            };
            let ext = r
                .name
                .rsplit_once('.')
                .map(|(_, e)| e.to_lowercase())
                .unwrap_or_default();
            let mark = if app.marked.contains(&r.id) {
                "✓ "
            } else {
                ""
            };
            // A file this node already has (shared or downloaded) says so after its name.
            let have = if r.have.is_some() { "  (have)" } else { "" };
            Row::new(vec![
                format!("{mark}{}{have}", r.name),
                bytes(r.size),
                ext,
                r.sources.len().to_string(),
                tags,
            ])
        })
        .collect();
    let t = Table::new(
        body,
        [
            Constraint::Fill(3),
            Constraint::Length(9),
            Constraint::Length(5),
            Constraint::Length(3),
            Constraint::Fill(2),
        ],
    )
    .header(
        Row::new(["Name", "Size", "Type", "Src", "Artist – Title"]).style(Style::new().fg(ACCENT)),
    )
    .row_highlight_style(Style::new().fg(Color::Black).bg(ACCENT))
    .block(Block::new().borders(Borders::TOP).border_style(DIM));
    let mut state = TableState::default().with_selected((!rows.is_empty()).then_some(app.selected));
    f.render_stateful_widget(t, table, &mut state);
    if let Some(r) = rows.get(app.selected) {
        let mut about = vec![r.path.clone()];
        if let Some(album) = &r.tags.album {
            about.push(album.clone());
        }
        if let Some(year) = r.tags.year {
            about.push(year.to_string());
        }
        if let Some(d) = r.tags.duration_s {
            about.push(format!("{}:{:02}", d / 60, d % 60));
        }
        about.push(r.id.short());
        if let Some(have) = &r.have {
            about.push(format!("you have it: {}", have.display()));
        }
        f.render_widget(Paragraph::new(Line::styled(about.join(" · "), DIM)), detail);
    }
}

/// A progress bar `width` cells wide.
fn bar(done: u64, size: u64, width: usize) -> String {
    let filled = if size == 0 {
        0
    } else {
        ((done as f64 / size as f64) * width as f64).round() as usize
    }
    .min(width);
    format!("{}{}", "█".repeat(filled), "░".repeat(width - filled))
}

fn state_text(d: &DownloadInfo) -> (String, Color) {
    match &d.state {
        DownloadState::Queued => ("queued".into(), Color::Yellow),
        DownloadState::Searching => ("searching".into(), Color::Yellow),
        DownloadState::Running => match d.queued_at {
            Some(place) => (format!("in queue #{place}"), Color::Yellow),
            None => ("running".into(), Color::Green),
        },
        DownloadState::Waiting => ("waiting for sources".into(), Color::Yellow),
        DownloadState::Verifying => ("finishing".into(), Color::Cyan),
        DownloadState::Done(_) => ("done".into(), Color::Green),
        DownloadState::Failed(why) if *why == crate::NodeError::Cancelled.to_string() => {
            ("cancelled (r resumes)".into(), Color::Yellow)
        }
        DownloadState::Failed(why) => (format!("failed: {why}"), Color::Red),
    }
}

fn render_downloads(app: &App, f: &mut Frame, area: Rect) {
    let downloads = app
        .status
        .as_ref()
        .map(|s| s.downloads.as_slice())
        .unwrap_or_default();
    let [table, detail] = Layout::vertical([Constraint::Min(3), Constraint::Length(3)]).areas(area);
    let rows: Vec<Row> = downloads
        .iter()
        .map(|d| {
            let pct = (d.done_bytes * 100).checked_div(d.size).unwrap_or(0);
            let (state, colour) = state_text(d);
            let speed = if d.state.is_active() && d.speed > 0 {
                format!("{}/s", bytes(d.speed))
            } else {
                String::new()
            };
            Row::new(vec![
                Span::raw(d.name.clone()),
                Span::styled(
                    format!("{} {pct:>3}%", bar(d.done_bytes, d.size, 12)),
                    ACCENT,
                ),
                Span::raw(speed),
                Span::raw(d.eta_s.map(eta).unwrap_or_default()),
                Span::raw(d.sources.to_string()),
                Span::styled(state, colour),
            ])
        })
        .collect();
    let t = Table::new(
        rows,
        [
            Constraint::Fill(1),
            Constraint::Length(17),
            Constraint::Length(10),
            Constraint::Length(6),
            Constraint::Length(3),
            Constraint::Fill(1),
        ],
    )
    .header(
        Row::new(["Name", "Progress", "Speed", "ETA", "Src", "State"])
            .style(Style::new().fg(ACCENT)),
    )
    .row_highlight_style(Style::new().add_modifier(Modifier::REVERSED))
    .block(
        Block::new()
            .borders(Borders::TOP)
            .border_style(DIM)
            .title(format!(
                " {} download(s) into {} ",
                downloads.len(),
                app.out.display()
            )),
    );
    let mut state =
        TableState::default().with_selected((!downloads.is_empty()).then_some(app.dl_selected));
    f.render_stateful_widget(t, table, &mut state);
    let text = match downloads.get(app.dl_selected) {
        None => "No downloads yet: search (1), select a file and press Enter.".to_string(),
        Some(d) => {
            let (state, _) = state_text(d);
            let place = match &d.state {
                DownloadState::Done(p) => p.display().to_string(),
                _ => d.out.display().to_string(),
            };
            format!(
                "{} · {} of {} · {state} · {place}",
                d.id.short(),
                bytes(d.done_bytes),
                bytes(d.size)
            )
        }
    };
    f.render_widget(
        Paragraph::new(text)
            .wrap(Wrap { trim: true })
            .block(Block::new().borders(Borders::TOP).border_style(DIM)),
        detail,
    );
}

fn render_shares(app: &App, f: &mut Frame, area: Rect) {
    let adding = app.input == Input::SharePath;
    let [folders, scan, add, uploads] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(if app.scan.is_some() { 1 } else { 0 }),
        Constraint::Length(if adding { 3 } else { 0 }),
        Constraint::Length(3),
    ])
    .areas(area);
    let mut lines = Vec::new();
    if let Some(s) = &app.status {
        lines.push(Line::from(format!(
            "{} files, {} shared from {} folder(s)",
            s.files,
            bytes(s.bytes),
            s.folders.len()
        )));
        for (i, folder) in s.folders.iter().enumerate() {
            let figures = s
                .folder_stats
                .iter()
                .find(|x| &x.folder == folder)
                .map(|x| format!("  {} files, {}", x.files, bytes(x.bytes)))
                .unwrap_or_default();
            let (pointer, style) = if i == app.sh_selected {
                ("▸ ", Style::new().fg(Color::Black).bg(ACCENT))
            } else {
                ("  ", Style::new().fg(ACCENT))
            };
            lines.push(Line::from(vec![
                Span::styled(format!("{pointer}{}", folder.display()), style),
                Span::raw(figures),
            ]));
        }
    }
    f.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::TOP)
                .border_style(DIM)
                .title(" Shared folders (a: add, x: remove) "),
        ),
        folders,
    );
    if let Some(p) = &app.scan {
        let ratio = if p.bytes_total == 0 {
            (p.files_done as f64 / p.files_total.max(1) as f64).min(1.0)
        } else {
            (p.bytes_done as f64 / p.bytes_total as f64).min(1.0)
        };
        f.render_widget(
            Gauge::default()
                .gauge_style(Style::new().fg(ACCENT))
                .ratio(ratio)
                .label(format!(
                    "scanning {}: {}/{} files",
                    p.folder.display(),
                    p.files_done,
                    p.files_total
                )),
            scan,
        );
    }
    if adding {
        f.render_widget(text_box(" Folder to share ", &app.share_path, true), add);
    }
    let up = match &app.status {
        Some(s) => format!(
            "slots {}/{} in use, {} waiting · uploaded {} ({} chunks) · cap {}",
            s.upload_slots.0,
            s.upload_slots.1,
            s.upload_queue,
            bytes(s.uploaded_bytes),
            s.uploaded_chunks,
            s.upload_rate
                .map_or("none".into(), |r| format!("{}/s", bytes(r)))
        ),
        None => String::new(),
    };
    f.render_widget(
        Paragraph::new(up).wrap(Wrap { trim: true }).block(
            Block::new()
                .borders(Borders::TOP)
                .border_style(DIM)
                .title(" Uploads "),
        ),
        uploads,
    );
}

fn render_network(app: &App, f: &mut Frame, area: Rect) {
    let Some(s) = &app.status else {
        f.render_widget(Paragraph::new("Waiting for the node…"), area);
        return;
    };
    let label = |l: &str| Span::styled(format!("{l:<12}"), ACCENT);
    let mut lines = vec![
        Line::from(vec![label("node"), Span::raw(s.node.short())]),
        Line::from(vec![
            label("role"),
            Span::styled(s.role.clone(), Modifier::BOLD),
            Span::raw(format!(" — {}", s.role_reason)),
        ]),
        Line::from(vec![
            label("serving"),
            Span::raw(s.listen.map_or("nothing".into(), |a| a.to_string())),
        ]),
        Line::from(vec![
            label("reachable"),
            match &s.reach {
                Some(r) if r.reachable => Span::raw(format!("yes, at {}", r.observed)),
                Some(r) => Span::styled(
                    format!(
                        "no (a super-peer could not connect to {}): downloaders ask this \
                         node to connect to them",
                        r.observed
                    ),
                    Color::Yellow,
                ),
                None => Span::raw("not known yet"),
            },
        ]),
        Line::from(vec![
            label("also"),
            Span::raw(match &s.reach_also {
                Some(r) if r.reachable => format!("reachable at {}", r.observed),
                Some(r) => format!("not reachable at {}", r.observed),
                None => "no link over another address family".into(),
            }),
        ]),
        Line::from(vec![
            label("external"),
            Span::raw(match &s.port_mapping {
                Some(m) => match m.port {
                    Some(p) => format!("port {p} ({})", m.how),
                    None => format!("none ({})", m.how),
                },
                None => "the listen port".into(),
            }),
        ]),
        Line::from(vec![
            label("super-peers"),
            Span::raw(if s.superpeers.is_empty() {
                "none attached".to_string()
            } else {
                s.superpeers
                    .iter()
                    .map(|l| l.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }),
        ]),
        Line::from(vec![
            label("host cache"),
            Span::raw(format!(
                "{} super-peer{} known",
                s.hosts,
                if s.hosts == 1 { "" } else { "s" }
            )),
        ]),
    ];
    if let Some(sp) = &s.superpeer {
        lines.push(Line::from(vec![
            label("as super-p."),
            Span::raw(format!(
                "{} · {}/{} leaves · {} neighbours · {} records · {} queries",
                sp.listen, sp.leaves, sp.leaf_slots, sp.neighbours, sp.records, sp.queries
            )),
        ]));
    }
    let downloaded: u64 = s.downloads.iter().map(|d| d.done_bytes).sum();
    lines.push(Line::from(vec![
        label("traffic"),
        Span::raw(format!(
            "up {} · down {}",
            bytes(s.uploaded_bytes),
            bytes(downloaded)
        )),
    ]));
    lines.push(Line::styled("Recent events", ACCENT));
    for e in s
        .events
        .iter()
        .rev()
        .take(area.height.saturating_sub(8) as usize)
    {
        lines.push(Line::from(format!("  {e}")));
    }
    f.render_widget(Paragraph::new(lines).wrap(Wrap { trim: false }), area);
}

fn render_browse(app: &App, f: &mut Frame, area: Rect) {
    let Some(view) = &app.browse else {
        f.render_widget(
            Paragraph::new(Line::styled(
                "Nothing browsed yet: b on a search result lists everything that leaf shares.",
                DIM,
            ))
            .block(Block::new().borders(Borders::TOP).border_style(DIM)),
            area,
        );
        return;
    };
    let rows: Vec<Row> = view
        .rows()
        .iter()
        .map(|row| {
            let mark = if view.marked.contains(row.path()) {
                "✓ "
            } else {
                "  "
            };
            match row {
                BrowseRow::Folder {
                    name,
                    depth,
                    open,
                    files,
                    bytes: size,
                    ..
                } => Row::new(vec![
                    format!(
                        "{mark}{}{} {name}/",
                        "  ".repeat(*depth),
                        if *open { "▾" } else { "▸" }
                    ),
                    format!("{files} files, {}", bytes(*size)),
                ]),
                BrowseRow::File {
                    name, depth, size, ..
                } => Row::new(vec![
                    format!("{mark}{}  {name}", "  ".repeat(*depth)),
                    bytes(*size),
                ]),
            }
        })
        .collect();
    let total: u64 = view.listing.files.iter().map(|f| f.size).sum();
    let title = format!(
        " {}: {} files, {} (space: fold, m: mark, enter: download) ",
        view.listing.addr,
        view.listing.total,
        bytes(total)
    );
    let t = Table::new(rows, [Constraint::Fill(1), Constraint::Length(22)])
        .row_highlight_style(Style::new().fg(Color::Black).bg(ACCENT))
        .block(
            Block::new()
                .borders(Borders::TOP)
                .border_style(DIM)
                .title(title),
        );
    let mut state = TableState::default().with_selected(Some(view.selected));
    f.render_stateful_widget(t, area, &mut state);
}

fn render_wishes(app: &App, f: &mut Frame, area: Rect) {
    let mut lines = Vec::new();
    let wishes = app.status.as_ref().map_or(&[][..], |s| &s.wishes[..]);
    if wishes.is_empty() {
        lines.push(Line::styled(
            "No wishes. On Search, w wishes for the search's words; or: leaf wish add WORDS",
            DIM,
        ));
    }
    for (i, w) in wishes.iter().enumerate() {
        let (pointer, style) = if i == app.wish_selected {
            ("▸ ", Style::new().fg(Color::Black).bg(ACCENT))
        } else {
            ("  ", Style::new().fg(ACCENT))
        };
        let run = if w.last_run.is_some() {
            format!("{} found", w.matches.len())
        } else {
            "not searched yet".into()
        };
        let auto = if w.auto { " · auto" } else { "" };
        lines.push(Line::from(vec![
            Span::styled(format!("{pointer}{}: {}", w.id, w.words), style),
            Span::styled(format!("  {run}{auto}"), DIM),
        ]));
        for m in w.matches.iter().rev().take(3) {
            lines.push(Line::from(format!("      {}  {}", m.name, bytes(m.size))));
        }
    }
    f.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::TOP)
                .border_style(DIM)
                .title(" Wishes (x: remove; w on Search adds one) "),
        ),
        area,
    );
}

/// The keys, all of them.
pub const HELP: &[(&str, &str)] = &[
    (
        "1-6, tab",
        "switch tab (Search, Downloads, Shares, Network, Wishes, Browse)",
    ),
    (
        "b",
        "browse the selected result's leaf: its shares as a tree",
    ),
    (
        "space / m / Enter",
        "on Browse: fold or unfold / mark / download (marked, or selected)",
    ),
    ("/", "type a search; Enter runs it, Esc leaves the box"),
    ("↑↓ j k", "select a row (PgUp PgDn, Home End: jump)"),
    (
        "Enter, d",
        "download the selected result (or the marked ones)",
    ),
    ("space", "mark or unmark a result"),
    ("s", "sort results: relevance, name, size, sources"),
    ("f", "filter results by text"),
    ("t", "filter results by type: audio, video, images, ..."),
    (
        "c / X",
        "pause the selected download (keeps the partial file) / cancel it",
    ),
    ("r", "resume the selected download"),
    ("o", "open the selected download's folder"),
    ("a / x", "add a shared folder / remove the selected one"),
    (
        "w",
        "wish for the search's words (searched for again and again)",
    ),
    ("x", "on Wishes: remove the selected wish"),
    ("?", "this help"),
    ("q", "quit (the node keeps running)"),
];

fn render_help(f: &mut Frame, area: Rect) {
    let w = area.width.min(66);
    let h = (HELP.len() as u16 + 2).min(area.height);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!(" {k:<10}"), Style::new().fg(Color::Yellow)),
                Span::raw(*what),
            ])
        })
        .collect();
    f.render_widget(Clear, popup);
    f.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::ALL)
                .border_style(Style::new().fg(ACCENT))
                .title(" Keys (any key closes) "),
        ),
        popup,
    );
}

/// Bytes for a person: 1.5 MB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn eta(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}
