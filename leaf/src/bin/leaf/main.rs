//! The `leaf` command: share folders, search, download, and inspect the running node. A node
//! started by `leaf share` stops cleanly on SIGTERM or SIGINT (see [`STOP_LIMIT`]).
//!
//! - `args`: the commands and settings (clap), and the parsers of their values.
//! - `print`: what the commands print.
//! - here: running each command, on the running node (its control socket) or a short-lived
//!   node of its own.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use indicatif::HumanBytes;
use leaf::control::{self, Reply, Request};
use leaf::node::ExternalPort;
use leaf::search::{sort_results, ResultFilter};
use leaf::{Node, NodeConfig};
use smol::channel::Receiver;
use wire::text::json_terminal_safe;
use wire::{Search, Terms};

/// How long a node asked to stop (SIGTERM, Ctrl-C) may take to close its links and tasks.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// `println!` for everything but JSON: text from peers (names, paths, reasons) is shown with
/// [`wire::text::terminal_safe`], never raw. (`serde_json` escapes control characters itself.)
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", wire::text::terminal_safe(&format!($($arg)*)))
    };
}

/// [`say!`] on standard error.
macro_rules! say_err {
    ($($arg:tt)*) => {
        eprintln!("{}", wire::text::terminal_safe(&format!($($arg)*)))
    };
}

mod args;
mod print;

use args::{Cli, Command, WishAction};
use print::{
    print_get_replies, print_results, print_share_replies, print_status, print_tree, print_wishes,
};

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            say_err!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    transport::logging::init("warn,lofty=error");
    let cli = Cli::parse();
    let data_dir = match &cli.data_dir {
        Some(d) => d.clone(),
        None => transport::identity::default_data_dir()
            .context("no home directory for the data directory; pass --data-dir")?,
    };
    let superpeers = if cli.superpeers.is_empty() {
        vec![SocketAddr::from(([127, 0, 0, 1], superpeer::DEFAULT_PORT))]
    } else {
        cli.superpeers.clone()
    };
    let mut config = NodeConfig::new(&data_dir);
    config.superpeers = superpeers.clone();
    config.upload_slots = cli.upload_slots as usize;
    config.max_downloaders_per_file = cli.max_downloaders_per_file as usize;
    config.max_peer_links = cli.max_peer_links as usize;
    config.download.max_sources = cli.max_peers as usize;
    config.upload_rate = cli.upload_rate;
    config.download_rate = cli.download_rate;
    config.max_downloads = cli.max_downloads as usize;
    config.leaf_overlay.can_promote = !cli.no_promote;
    config.superpeer_listen = cli.superpeer_listen;
    config.superpeer_overlay.leaf_slots = cli.leaf_slots;
    config.limits = cli.limits.limits();
    config.seeding = leaf::swarm::Seeding {
        time: cli.seed_minutes.0,
        ratio: cli.seed_ratio,
    };
    config.wish_interval = cli.wish_minutes;
    config.browsable = !cli.no_browse;
    config.external_port = match (&cli.external_port, &cli.external_port_file) {
        (Some(port), _) => Some(ExternalPort::Fixed(*port)),
        (None, Some(file)) => Some(ExternalPort::File(file.clone())),
        (None, None) if cli.no_port_mapping => None,
        (None, None) => Some(ExternalPort::Upnp),
    };
    config.web = match cli.web {
        Some(addr) => {
            let out = match &cli.web_out {
                Some(dir) => std::path::absolute(dir)
                    .with_context(|| format!("bad --web-out folder {}", dir.display()))?,
                None => directories::UserDirs::new()
                    .and_then(|u| u.download_dir().map(|d| d.to_path_buf()))
                    .unwrap_or_else(|| data_dir.join("downloads")),
            };
            Some(leaf::web::WebConfig {
                addr,
                allow_remote: cli.web_allow_remote,
                out,
            })
        }
        None => None,
    };
    if let Command::Tui { out } = &cli.command {
        let out = std::path::absolute(out)
            .with_context(|| format!("bad output folder {}", out.display()))?;
        if !out.is_dir() {
            bail!("--out {}: no such folder", out.display());
        }
        let config = NodeConfig {
            listen: Some(cli.listen),
            control: true,
            ..config
        };
        return leaf::tui::run(config, out);
    }
    transport::rt::block_on(run(cli, config))
}

async fn run(cli: Cli, config: NodeConfig) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let superpeers = config.superpeers.clone();
    match cli.command {
        Command::Share { paths } => {
            let paths = paths
                .iter()
                .map(|p| {
                    std::path::absolute(p).with_context(|| format!("bad path {}", p.display()))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if let Some(stream) = control::connect(&data_dir).await {
                if config.web.is_some() {
                    say_err!(
                        "warning: a node already runs for {}: --web applies to the node a \
                         command starts (`leaf web-url` shows the running node's)",
                        data_dir.display()
                    );
                }
                let replies = control::request(stream, Request::Share { paths });
                return print_share_replies(replies).await;
            }
            for p in &paths {
                if !p.is_dir() {
                    bail!("cannot share {}: no such folder", p.display());
                }
            }
            let mut stop = transport::signals::StopSignals::catch()
                .context("catching SIGTERM and SIGINT (to stop cleanly)")?;
            let node = Node::start(NodeConfig {
                listen: Some(cli.listen),
                control: true,
                ..config
            })
            .await
            .context("starting the leaf node")?;
            say!(
                "leaf {} serving on {} (data in {})",
                node.node_id(),
                node.listen_addr().expect("a serving node listens"),
                data_dir.display()
            );
            if let Some(url) = node.web_url() {
                say!("web UI at {url}");
            }
            let serve = async {
                node.reshare_remembered().await;
                print_share_replies(local(&node, Request::Share { paths })).await?;
                if !node.wait_connected(Duration::from_secs(3)).await {
                    say_err!(
                        "warning: no super-peer reachable at {} yet; will keep trying",
                        list(&superpeers)
                    );
                }
                let s = node.status();
                say!(
                    "sharing {} files ({}); keeping the node running, Ctrl-C to stop",
                    s.files,
                    HumanBytes(s.bytes)
                );
                smol::future::pending::<()>().await;
                anyhow::Ok(())
            };
            // Until a stop is asked for (or sharing fails); either way the node then stops
            // cleanly. Unfinished downloads keep every verified chunk, and resume when the node
            // starts again.
            let ended = smol::future::or(async { serve.await.map(|()| None) }, async {
                Ok(Some(stop.next().await))
            })
            .await;
            if let Ok(Some(signal)) = ended {
                say!("{signal}: stopping the node");
            }
            // The node's tasks share this thread: one stuck in the kernel (an fsync on a hung
            // disk) would hold the timer below too. A thread of its own ends the process a
            // little later whatever happens.
            std::thread::spawn(|| {
                std::thread::sleep(STOP_LIMIT + Duration::from_secs(2));
                eprintln!("the node did not stop within {STOP_LIMIT:?}: exiting now");
                std::process::exit(1);
            });
            let stopped = smol::future::or(
                async {
                    node.shutdown().await;
                    Ok(())
                },
                async {
                    let why = smol::future::or(
                        async {
                            smol::Timer::after(STOP_LIMIT).await;
                            format!("the node did not stop within {STOP_LIMIT:?}")
                        },
                        // Asked twice: no more waiting.
                        async { format!("{} again", stop.next().await) },
                    )
                    .await;
                    Err(why)
                },
            )
            .await;
            match stopped {
                Ok(()) => say!("stopped"),
                Err(why) => {
                    say_err!("{why}: exiting now (verified chunks are kept)");
                    ended?;
                    bail!("stopped before the node had closed");
                }
            }
            ended.map(|_| ())
        }
        Command::Search {
            words,
            json,
            ttl,
            wait,
            filter,
            min_duration,
            max_duration,
            min_bitrate,
            max_bitrate,
            sort,
        } => {
            if !(0.0..=60.0).contains(&wait) {
                bail!("--wait {wait}: give between 0 and 60 seconds");
            }
            let filter = filter.filter()?;
            for (what, min, max) in [
                (
                    "duration",
                    min_duration.map(u64::from),
                    max_duration.map(u64::from),
                ),
                (
                    "bitrate",
                    min_bitrate.map(u64::from),
                    max_bitrate.map(u64::from),
                ),
            ] {
                if let (Some(min), Some(max)) = (min, max) {
                    if min > max {
                        bail!("--min-{what} is above --max-{what}: no file can match");
                    }
                }
            }
            let local = ResultFilter {
                min_duration_s: min_duration,
                max_duration_s: max_duration,
                min_bitrate_kbps: min_bitrate,
                max_bitrate_kbps: max_bitrate,
            };
            let search = Search {
                terms: Terms::Words(words.join(" ")),
                filter,
            };
            let req = Request::Search {
                search,
                ttl,
                wait_ms: (wait * 1000.0) as u64,
            };
            let replies = backend(&config, req).await?;
            while let Ok(reply) = replies.recv().await {
                match reply {
                    Reply::Results(mut results) => {
                        results.retain(|r| local.keeps(r));
                        sort_results(&mut results, sort);
                        print_results(&results, json)?
                    }
                    Reply::Error(e) => bail!("search failed: {e}"),
                    Reply::End => break,
                    _ => {}
                }
            }
            Ok(())
        }
        Command::Get { ids, out, again } => {
            let out = std::path::absolute(&out)
                .with_context(|| format!("bad output folder {}", out.display()))?;
            let replies = backend(&config, Request::Get { ids, out, again }).await?;
            print_get_replies(replies).await
        }
        Command::Tui { .. } => unreachable!("handled before the runtime starts"),
        Command::Browse { source, json } => {
            let replies = backend(&config, Request::Browse { source }).await?;
            let mut whole = None;
            while let Ok(reply) = replies.recv().await {
                match reply {
                    Reply::Listing(part) => leaf::browse::join_part(&mut whole, part),
                    Reply::Error(e) => bail!("{e}"),
                    Reply::End => break,
                    _ => {}
                }
            }
            if let Some(l) = whole {
                if json {
                    for f in &l.files {
                        let line = serde_json::json!({
                            "id": f.id.to_hex(),
                            "path": f.path,
                            "size": f.size,
                            "artist": f.tags.artist,
                            "album": f.tags.album,
                            "title": f.tags.title,
                            "duration_s": f.tags.duration_s,
                            "bitrate_kbps": f.tags.bitrate_kbps,
                        });
                        println!("{}", json_terminal_safe(&line.to_string()));
                    }
                } else {
                    print_tree(&l);
                }
            }
            Ok(())
        }
        Command::GetFolder {
            source,
            folder,
            out,
            again,
        } => {
            let out = std::path::absolute(&out)
                .with_context(|| format!("bad output folder {}", out.display()))?;
            let req = Request::GetFolder {
                source,
                folder,
                out,
                again,
            };
            print_get_replies(backend(&config, req).await?).await
        }
        Command::Unshare { paths } => {
            let mut failed = 0;
            for path in paths {
                let path = std::path::absolute(&path)
                    .with_context(|| format!("bad path {}", path.display()))?;
                let replies = backend(&config, Request::Unshare { path }).await?;
                while let Ok(reply) = replies.recv().await {
                    match reply {
                        Reply::Unshared { folder, files } => {
                            say!("stopped sharing {}: {files} files", folder.display())
                        }
                        Reply::Error(e) => {
                            say_err!("error: {e}");
                            failed += 1;
                        }
                        Reply::End => break,
                        _ => {}
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} folder(s) could not be unshared");
            }
            Ok(())
        }
        Command::Wish { action } => {
            let json = matches!(action, WishAction::List { json: true });
            let req = match action {
                WishAction::Add {
                    words,
                    filter,
                    auto,
                    out,
                } => {
                    let out = std::path::absolute(&out)
                        .with_context(|| format!("bad output folder {}", out.display()))?;
                    if auto && !out.is_dir() {
                        bail!("--out {}: no such folder", out.display());
                    }
                    Request::WishAdd {
                        words: words.join(" "),
                        filter: filter.filter()?,
                        auto,
                        out,
                    }
                }
                WishAction::List { .. } => Request::Wishes,
                WishAction::Remove { id } => Request::WishRemove { id },
            };
            let replies = backend(&config, req).await?;
            while let Ok(reply) = replies.recv().await {
                match reply {
                    Reply::Wishes(wishes) if json => {
                        for w in &wishes {
                            println!("{}", json_terminal_safe(&serde_json::to_string(w)?));
                        }
                    }
                    Reply::Wishes(wishes) if wishes.is_empty() => say!("no wishes"),
                    Reply::Wishes(wishes) => print_wishes(&wishes, "wish"),
                    Reply::Error(e) => bail!("{e}"),
                    Reply::End => break,
                    _ => {}
                }
            }
            Ok(())
        }
        Command::WebUrl => {
            let Some(stream) = control::connect(&data_dir).await else {
                bail!(
                    "no node runs for {}; start one with `leaf share --web 127.0.0.1:7780`",
                    data_dir.display()
                );
            };
            let replies = control::request(stream, Request::Status);
            while let Ok(reply) = replies.recv().await {
                match reply {
                    Reply::Status(s) => {
                        let Some(addr) = s.web else {
                            bail!(
                                "the node running for {} serves no web UI; start it with --web ADDR",
                                data_dir.display()
                            );
                        };
                        let token = leaf::web::read_token(&data_dir).with_context(|| {
                            format!("reading the web UI's token in {}", data_dir.display())
                        })?;
                        println!("{}", leaf::web::url(addr, &token));
                    }
                    Reply::Error(e) => bail!("{e}"),
                    Reply::End => break,
                    _ => {}
                }
            }
            Ok(())
        }
        Command::Status { json } => {
            let replies = backend(&config, Request::Status).await?;
            while let Ok(reply) = replies.recv().await {
                match reply {
                    Reply::Status(s) if json => {
                        println!("{}", json_terminal_safe(&serde_json::to_string_pretty(&s)?))
                    }
                    Reply::Status(s) => print_status(&s),
                    Reply::Error(e) => bail!("{e}"),
                    Reply::End => break,
                    _ => {}
                }
            }
            Ok(())
        }
    }
}

fn list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The running node's control socket, or a short-lived node of our own for this one request.
async fn backend(config: &NodeConfig, req: Request) -> anyhow::Result<Receiver<Reply>> {
    let (data_dir, superpeers) = (&config.data_dir, &config.superpeers);
    if let Some(stream) = control::connect(data_dir).await {
        return Ok(control::request(stream, req));
    }
    // A node of its own for one command never becomes a super-peer.
    let mut config = config.clone();
    config.leaf_overlay.can_promote = false;
    let node = Node::start(config)
        .await
        .context("starting a short-lived leaf node")?;
    // The status and the wishlist are the node's own: no super-peer needed.
    let offline = matches!(
        req,
        Request::Status
            | Request::Wishes
            | Request::WishAdd { .. }
            | Request::WishRemove { .. }
            | Request::Browse { .. }
    );
    if !offline && !node.wait_connected(Duration::from_secs(3)).await {
        bail!(
            "no node runs for {} and no super-peer answers at {}; start one with `superpeer` \
             or pass --superpeer ADDR",
            data_dir.display(),
            list(superpeers)
        );
    }
    Ok(local(&node, req))
}

fn local(node: &Node, req: Request) -> Receiver<Reply> {
    let (tx, rx) = smol::channel::unbounded();
    let node = node.clone();
    transport::rt::spawn(async move { node.handle(req, tx).await }).detach();
    rx
}
