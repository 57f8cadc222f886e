//! What the `leaf` command prints: progress bars, result tables, the status, a browsed
//! leaf's tree and the wishlist. Text from peers goes through `say!` (made safe for a
//! terminal) or `json_terminal_safe`.

use anyhow::bail;
use indicatif::{DecimalBytes, HumanBytes, ProgressBar, ProgressStyle};
use leaf::control::{self, Reply};
use smol::channel::Receiver;
use wire::text::{json_terminal_safe, terminal_safe};

pub(crate) fn bar(len: u64, msg: String) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_message(msg);
    pb
}

pub(crate) async fn print_share_replies(replies: Receiver<Reply>) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    let mut pb: Option<ProgressBar> = None;
    while let Ok(reply) = replies.recv().await {
        match reply {
            Reply::ShareProgress(p) => {
                let b = pb.get_or_insert_with(|| {
                    bar(p.bytes_total, format!("hashing {}", p.folder.display()))
                });
                b.set_length(p.bytes_total);
                b.set_position(p.bytes_done);
            }
            Reply::Shared(s) => {
                if let Some(b) = pb.take() {
                    b.finish_and_clear();
                }
                say!(
                    "shared {}: {} files, {} ({} hashed, {} unchanged)",
                    s.folder.display(),
                    s.files,
                    HumanBytes(s.bytes),
                    s.hashed,
                    s.reused
                );
                for (path, why) in &s.skipped {
                    say_err!("  skipped {}: {why}", path.display());
                }
            }
            Reply::Error(e) => {
                if let Some(b) = pb.take() {
                    b.finish_and_clear();
                }
                say_err!("error: {e}");
                failed.push(e);
            }
            Reply::End => break,
            _ => {}
        }
    }
    if !failed.is_empty() {
        bail!("{} folder(s) could not be shared", failed.len());
    }
    Ok(())
}

pub(crate) fn print_results(
    results: &[leaf::search::SearchResult],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        for r in results {
            let line = serde_json::json!({
                "id": r.id.to_hex(),
                "name": r.name,
                "path": r.path,
                "size": r.size,
                "sources": r.sources.len(),
                "source_addrs": r.sources.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>(),
                "source_nodes": r.sources.iter().map(|s| s.node.to_hex()).collect::<Vec<_>>(),
                "source_reachable": r.sources.iter().map(|s| s.reachable).collect::<Vec<_>>(),
                "artist": r.tags.artist,
                "album": r.tags.album,
                "title": r.tags.title,
                "year": r.tags.year,
                "duration_s": r.tags.duration_s,
                "bitrate_kbps": r.tags.bitrate_kbps,
                "score": r.score,
                "have": r.have,
            });
            println!("{}", json_terminal_safe(&line.to_string()));
        }
        return Ok(());
    }
    if results.is_empty() {
        say!("no results");
        return Ok(());
    }
    say!("{:>10}  {:>3}  {:<64}  PATH", "SIZE", "SRC", "ID");
    for r in results {
        say!(
            "{:>10}  {:>3}  {}  {}{}",
            HumanBytes(r.size).to_string(),
            r.sources.len(),
            r.id,
            r.path,
            // What this node has already (shared or downloaded) is marked.
            if r.have.is_some() { "  (have)" } else { "" }
        );
    }
    say!("{} files", results.len());
    Ok(())
}

pub(crate) async fn print_get_replies(replies: Receiver<Reply>) -> anyhow::Result<()> {
    let mut failed = 0;
    let mut pb: Option<ProgressBar> = None;
    while let Ok(reply) = replies.recv().await {
        match reply {
            Reply::GetProgress(info) => {
                let b = pb
                    .get_or_insert_with(|| bar(info.size, terminal_safe(&info.name).into_owned()));
                b.set_length(info.size);
                b.set_position(info.done_bytes);
                let note = match (&info.state, info.queued_at) {
                    (control::DownloadState::Waiting, _) => " (waiting for sources)".to_string(),
                    (_, Some(place)) => format!(" (queued, place {place})"),
                    _ => String::new(),
                };
                b.set_message(format!("{}{note}", terminal_safe(&info.name)));
            }
            Reply::GetDone(r) if r.already_had => {
                if let Some(b) = pb.take() {
                    b.finish_and_clear();
                }
                say!(
                    "already have {} at {} (--again fetches another copy)",
                    r.id,
                    r.path.display()
                );
            }
            Reply::GetDone(r) => {
                if let Some(b) = pb.take() {
                    b.finish_and_clear();
                }
                let used = r.sources.iter().filter(|s| s.chunks > 0).count();
                say!(
                    "saved {} ({}, {} from {} source(s) in {:.1} s)",
                    r.path.display(),
                    r.id,
                    HumanBytes(r.size),
                    used,
                    r.elapsed_ms as f64 / 1000.0
                );
                for s in r.sources.iter().filter(|s| s.chunks > 0) {
                    let h = match (s.reached, s.at) {
                        (Some(h), Some(at)) => Some(format!("{h} at {at}")),
                        (h, _) => h.map(|h| h.to_string()),
                    };
                    let how = match (h, s.first_chunk_ms) {
                        (Some(h), Some(ms)) => format!(" ({h}; the first after {ms} ms)"),
                        (Some(h), None) => format!(" ({h})"),
                        (None, _) => String::new(),
                    };
                    say!("  {} chunks from {}{how}", s.chunks, s.addr);
                }
                for s in r.sources.iter().filter(|s| s.error.is_some()) {
                    say_err!(
                        "  dropped source {}: {}",
                        s.addr,
                        s.error.as_deref().unwrap_or("")
                    );
                }
            }
            Reply::GetFailed { id, error } => {
                if let Some(b) = pb.take() {
                    b.finish_and_clear();
                }
                say_err!("error: cannot download {id}: {error}");
                failed += 1;
            }
            Reply::Error(e) => {
                say_err!("error: {e}");
                failed += 1;
            }
            Reply::End => break,
            _ => {}
        }
    }
    if failed > 0 {
        bail!("{failed} download(s) failed");
    }
    Ok(())
}

pub(crate) fn print_status(s: &control::StatusReport) {
    say!("node      {}", s.node);
    say!("role      {}", s.role);
    match s.listen {
        Some(a) => say!("serving   {a}"),
        None => say!("serving   nothing (no node runs for this data directory)"),
    }
    match &s.reach {
        Some(r) if r.reachable => say!("reachable at {}", r.observed),
        Some(r) => say!(
            "reachable no: a super-peer could not connect to {} (behind NAT or a firewall?); \
             downloaders ask it to connect to them instead",
            r.observed
        ),
        None if s.listen.is_some() => say!("reachable not known yet"),
        None => {}
    }
    if let Some(r) = &s.reach_also {
        let family = match r.observed.ip().to_canonical().is_ipv6() {
            true => "IPv6",
            false => "IPv4",
        };
        match r.reachable {
            true => say!("also      reachable over {family} at {}", r.observed),
            false => say!(
                "also      not reachable over {family}: a super-peer could not connect to {}",
                r.observed
            ),
        }
    }
    match s.reach.as_ref().and_then(|r| r.nat.as_deref()) {
        Some("symmetric") => {
            say!("nat       symmetric: another port for each peer; hole punching cannot work")
        }
        Some(kind) => say!("nat       {kind}: one port for every peer; hole punching can work"),
        None => {}
    }
    if let Some(m) = &s.port_mapping {
        match m.port {
            Some(p) => say!("external  port {p} ({})", m.how),
            None => {
                say!("external  none ({})", m.how);
                // What the user can do when the router will not map a port, unless others
                // reach the node anyway.
                if !s.reach.as_ref().is_some_and(|r| r.reachable) {
                    say!(
                        "          a port forwarded by hand (or by a VPN) is announced with \
                     --external-port N (or --external-port-file FILE)"
                    );
                }
            }
        }
    }
    if let Some(web) = s.web {
        say!("web UI    http://{web}/ (`leaf web-url` prints it with its token)");
    }
    for l in &s.superpeers {
        let state = if l.connected {
            "connected"
        } else {
            "not connected"
        };
        say!("superpeer {} {state}", l.addr);
    }
    say!("shares    {} files, {}", s.files, HumanBytes(s.bytes));
    for f in &s.folders {
        say!("          {}", f.display());
    }
    say!(
        "uploads   {} chunks, {}; slots {}/{} in use, {} waiting; cap {}",
        s.uploaded_chunks,
        HumanBytes(s.uploaded_bytes),
        s.upload_slots.0,
        s.upload_slots.1,
        s.upload_queue,
        s.upload_rate
            .map_or("none".into(), |r| format!("{}/s", HumanBytes(r)))
    );
    say!(
        "peers     {} of {} connections with other leaves open",
        s.peer_links.0,
        s.peer_links.1
    );
    let i = s.indirect;
    if i != Default::default() {
        say!(
            "indirect  {} reverse, {} hole-punched, {} relayed connection(s) (behind NAT)",
            i.reverse,
            i.punched,
            i.relayed
        );
    }
    if s.downloads.is_empty() {
        say!("downloads none");
    }
    for d in &s.downloads {
        let pct = (d.done_bytes * 100).checked_div(d.size).unwrap_or(0);
        let eta = d.eta_s.map_or(String::new(), |e| format!(", eta {e} s"));
        say!(
            "download  {} {} {pct}% of {} from {} source(s) at {}/s{eta}: {:?}",
            d.id.short(),
            d.name,
            HumanBytes(d.size),
            d.sources,
            HumanBytes(d.speed),
            d.state
        );
    }
    print_wishes(&s.wishes, "wish     ");
}

/// A listing as a folder tree: each folder once, its files under it with size and id.
pub(crate) fn print_tree(l: &leaf::browse::Listing) {
    let mut files: Vec<&wire::FileRecord> = l.files.iter().collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut open: Vec<&str> = Vec::new();
    for f in &files {
        let parts: Vec<&str> = f.path.split('/').collect();
        let (dirs, name) = parts.split_at(parts.len() - 1);
        let common = open.iter().zip(dirs).take_while(|(a, b)| *a == *b).count();
        open.truncate(common);
        for d in &dirs[common..] {
            say!("{}{d}/", "  ".repeat(open.len()));
            open.push(d);
        }
        say!(
            "{}{}  {}  {}",
            "  ".repeat(open.len()),
            name[0],
            HumanBytes(f.size),
            f.id
        );
    }
    let bytes: u64 = l.files.iter().map(|f| f.size).sum();
    if l.total as usize > l.files.len() {
        say!(
            "{} files ({}) listed, of {} shared",
            l.files.len(),
            HumanBytes(bytes),
            l.total
        );
    } else {
        say!("{} files, {}", l.files.len(), HumanBytes(bytes));
    }
}

/// Each wish on a line (`lead` first), with its newest matches under it.
pub(crate) fn print_wishes(wishes: &[leaf::wish::Wish], lead: &str) {
    for w in wishes {
        let mut bounds = Vec::new();
        if let Some(ext) = &w.filter.ext {
            bounds.push(format!(".{ext}"));
        }
        if let Some(min) = w.filter.min_size {
            // In the units the bound was most likely typed in (`5MB`).
            bounds.push(format!(">= {}", DecimalBytes(min)));
        }
        if let Some(max) = w.filter.max_size {
            bounds.push(format!("<= {}", DecimalBytes(max)));
        }
        if w.auto {
            bounds.push(format!("auto into {}", w.out.display()));
        }
        let bounds = if bounds.is_empty() {
            String::new()
        } else {
            format!(" ({})", bounds.join(", "))
        };
        let run = if w.last_run.is_some() {
            "searched"
        } else {
            "not searched yet"
        };
        say!(
            "{lead} {}: \"{}\"{bounds}; {run}, {} found",
            w.id,
            w.words,
            w.matches.len()
        );
        for m in w.matches.iter().rev().take(5) {
            say!(
                "{lead}    {} {} ({})",
                m.id.short(),
                m.name,
                HumanBytes(m.size)
            );
        }
    }
}
