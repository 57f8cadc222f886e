//! The `leaf` command: share folders, search, download, and inspect the running node. A node
//! started by `leaf share` stops cleanly on SIGTERM or SIGINT (see [`STOP_LIMIT`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use indicatif::{DecimalBytes, HumanBytes, ProgressBar, ProgressStyle};
use leaf::control::{self, Reply, Request};
use leaf::search::{sort_results, ResultFilter, SortBy};
use leaf::{Node, NodeConfig};
use smol::channel::Receiver;
use wire::text::{json_terminal_safe, terminal_safe};
use wire::{FileId, Filter, Search, Terms};

/// How long a node asked to stop (SIGTERM, Ctrl-C) may take to close its links and tasks.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// Canopy leaf: share your files, find what others share, and download it in parallel verified
/// chunks from every peer that has it.
///
/// Each command's own options come first in its help; the node's settings (which apply to the
/// node a command starts, or is handed to) follow under their own headings.
#[derive(Debug, Parser)]
#[command(version, next_help_heading = "Node settings")]
struct Cli {
    /// The node's data directory (identity, share cache, control socket).
    /// [default: the platform's data directory for canopy]
    #[arg(long, env = "CANOPY_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// A super-peer to attach to (repeatable; comma-separated in the variable).
    /// [default: 127.0.0.1:7700]
    #[arg(
        long = "superpeer",
        value_name = "ADDR",
        env = "CANOPY_SUPERPEER",
        value_delimiter = ',',
        global = true
    )]
    superpeers: Vec<SocketAddr>,
    /// Where the node serves chunks to other leaves.
    #[arg(
        long,
        env = "CANOPY_LISTEN",
        default_value = "0.0.0.0:0",
        global = true
    )]
    listen: SocketAddr,
    /// Downloaders served at once (others wait in a queue).
    #[arg(long, env = "CANOPY_UPLOAD_SLOTS", default_value_t = 4, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    upload_slots: u16,
    /// Upload cap for the node, e.g. 500K, 2MB or 1MiB (bytes per second; 0: none).
    #[arg(long, env = "CANOPY_UPLOAD_RATE", default_value = "0", value_parser = parse_rate, global = true)]
    upload_rate: u64,
    /// Download cap for the node (same units as --upload-rate).
    #[arg(long, env = "CANOPY_DOWNLOAD_RATE", default_value = "0", value_parser = parse_rate, global = true)]
    download_rate: u64,
    /// Never become a super-peer (a node that finds none, or is asked to, otherwise becomes one).
    #[arg(long, env = "CANOPY_NO_PROMOTE", global = true)]
    no_promote: bool,
    /// Where to accept leaves if this node becomes a super-peer [default: the port of the first
    /// --superpeer address, else 7700, on all interfaces].
    #[arg(long, env = "CANOPY_SUPERPEER_LISTEN", global = true)]
    superpeer_listen: Option<SocketAddr>,
    /// Leaves accepted if this node becomes a super-peer.
    #[arg(long, default_value_t = 300, global = true, value_parser = clap::value_parser!(u32).range(1..))]
    leaf_slots: u32,
    /// Downloads that run at once (others wait their turn).
    #[arg(long, env = "CANOPY_MAX_DOWNLOADS", default_value_t = 3, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    max_downloads: u16,
    /// Minutes a finished download goes on being served to others (0: stop at once; none:
    /// as long as the node runs).
    #[arg(long, env = "CANOPY_SEED_MINUTES", default_value = "60", value_parser = parse_seed_minutes, global = true)]
    seed_minutes: SeedMinutes,
    /// Stop seeding a finished download once this many times its size has been uploaded
    /// (whichever of this and --seed-minutes comes first).
    #[arg(long, env = "CANOPY_SEED_RATIO", global = true, value_parser = parse_ratio)]
    seed_ratio: Option<f64>,
    /// Do not let others list what this node shares (`leaf browse`); they are told so.
    #[arg(long, env = "CANOPY_NO_BROWSE", global = true)]
    no_browse: bool,
    /// Minutes between two searches for the same wish (± 20 %; see `leaf wish`).
    #[arg(long, env = "CANOPY_WISH_MINUTES", default_value = "15", value_parser = parse_wish_minutes, global = true)]
    wish_minutes: Duration,
    #[command(flatten)]
    limits: transport::limits::LimitArgs,
    #[command(subcommand)]
    command: Command,
}

/// `--seed-minutes`: a number of minutes, or `none` for no time limit.
#[derive(Debug, Clone, Copy)]
struct SeedMinutes(Option<Duration>);

fn parse_seed_minutes(text: &str) -> Result<SeedMinutes, String> {
    if text.eq_ignore_ascii_case("none") {
        return Ok(SeedMinutes(None));
    }
    match text.trim().parse::<f64>() {
        Ok(m) if m >= 0.0 && m.is_finite() => {
            Ok(SeedMinutes(Some(Duration::from_secs_f64(m * 60.0))))
        }
        _ => Err(format!("`{text}`: give minutes (0 or more) or `none`")),
    }
}

fn parse_wish_minutes(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        // At least 3 s (tests run wishes that often); a day at most.
        Ok(m) if (0.05..=1440.0).contains(&m) => Ok(Duration::from_secs_f64(m * 60.0)),
        _ => Err(format!("`{text}`: give minutes between 0.05 and 1440")),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r >= 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!("`{text}`: give a ratio of 0 or more, e.g. 1.5")),
    }
}

fn parse_rate(text: &str) -> Result<u64, String> {
    leaf::rate::parse_rate(text)
}

fn parse_size(text: &str) -> Result<u64, String> {
    leaf::rate::parse_size(text)
}

fn parse_seconds(text: &str) -> Result<u32, String> {
    leaf::rate::parse_seconds(text)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Share folders. Starts the node in the foreground if none runs for this data directory
    /// (and keeps serving until stopped), or hands the folders to the running node.
    Share {
        /// Folders to share (none: serve the folders shared before).
        paths: Vec<PathBuf>,
    },
    /// Search the network; prints one row per distinct file.
    Search {
        /// Words that must all match (name, folders, artist, album, title).
        #[arg(required = true)]
        words: Vec<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
        /// How many super-peer hops the query may take.
        #[arg(long, default_value_t = wire::DEFAULT_TTL, value_parser = clap::value_parser!(u8).range(0..=7))]
        ttl: u8,
        /// Seconds to collect results.
        #[arg(long, default_value_t = 2.0)]
        wait: f64,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only audio at least this long, e.g. 90s, 3m or 3:30 (files without a duration
        /// are left out).
        #[arg(long, value_parser = parse_seconds)]
        min_duration: Option<u32>,
        /// Only audio at most this long.
        #[arg(long, value_parser = parse_seconds)]
        max_duration: Option<u32>,
        /// Only audio of at least this bitrate, in kbit/s (files without one are left out).
        #[arg(long)]
        min_bitrate: Option<u32>,
        /// Only audio of at most this bitrate, in kbit/s.
        #[arg(long)]
        max_bitrate: Option<u32>,
        /// The order of the results.
        #[arg(long, value_enum, default_value_t = SortBy::Relevance)]
        sort: SortBy,
    },
    /// Download files by content id (as `leaf search` prints it) from every leaf that has them.
    Get {
        /// Content ids (64 hex digits, what b3sum prints).
        #[arg(required = true)]
        ids: Vec<FileId>,
        /// Folder to save into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Fetch a file even if this node already has it (shared or downloaded before); else
        /// its path is printed and nothing is fetched.
        #[arg(long)]
        again: bool,
    },
    /// List everything a leaf shares, as a folder tree with sizes and ids.
    Browse {
        /// The leaf's address, as `leaf search --json` prints it (`source_addrs`).
        source: SocketAddr,
        /// One JSON object per file instead of a tree.
        #[arg(long)]
        json: bool,
    },
    /// Download a folder of a leaf, with its subfolders, into --out/FOLDER/ (its layout kept;
    /// each file from every source the network finds for it).
    GetFolder {
        /// The leaf's address, as `leaf search --json` prints it.
        source: SocketAddr,
        /// The folder, as `leaf browse` shows it (e.g. `music/Boards of Canada/Geogaddi`).
        folder: String,
        /// Folder to save into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
        /// Fetch files this node already has too.
        #[arg(long)]
        again: bool,
    },
    /// Full-screen terminal interface: search, downloads, shares and network. Attaches to the
    /// running node (which keeps running on quit), or starts one until quit.
    Tui {
        /// Folder to save downloads into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// The wishlist: searches the node runs again every --wish-minutes; new matches show in
    /// `leaf status` and the log, and are downloaded for wishes made with --auto.
    Wish {
        #[command(subcommand)]
        action: WishAction,
    },
    /// Stop sharing folders: their files are withdrawn from the network.
    Unshare {
        /// Folders, as they were shared.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show the node's role, super-peers, shares and transfers.
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The filters super-peers apply, as `leaf search` and `leaf wish add` take them.
#[derive(Debug, Clone, clap::Args)]
struct FilterArgs {
    /// Only files with this extension (e.g. flac).
    #[arg(long)]
    ext: Option<String>,
    /// Only files at least this large, e.g. 5MB or 700MiB (units as for --upload-rate).
    #[arg(long, value_parser = parse_size)]
    min_size: Option<u64>,
    /// Only files at most this large (same units).
    #[arg(long, value_parser = parse_size)]
    max_size: Option<u64>,
}

impl FilterArgs {
    /// As the wire carries it; an error if no file can match.
    fn filter(self) -> anyhow::Result<Filter> {
        if let (Some(min), Some(max)) = (self.min_size, self.max_size) {
            if min > max {
                bail!("--min-size is above --max-size: no file can match");
            }
        }
        Ok(Filter {
            ext: self.ext.map(|e| e.trim_start_matches('.').to_lowercase()),
            min_size: self.min_size,
            max_size: self.max_size,
        })
    }
}

#[derive(Debug, Subcommand)]
enum WishAction {
    /// Add a wish (it is first searched for a second later).
    Add {
        /// Words that must all match, as for `leaf search`.
        #[arg(required = true)]
        words: Vec<String>,
        #[command(flatten)]
        filter: FilterArgs,
        /// Download new matches.
        #[arg(long)]
        auto: bool,
        /// Folder to download them into.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// List the wishes and what they found.
    List {
        /// One JSON object per wish instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Remove a wish by its number (as `leaf wish list` shows it).
    Remove {
        /// The wish's number.
        id: u32,
    },
}

/// `println!` for everything but JSON: text from peers (names, paths, reasons) is shown with
/// [`terminal_safe`], never raw. (`serde_json` escapes control characters itself.)
macro_rules! say {
    ($($arg:tt)*) => {
        println!("{}", terminal_safe(&format!($($arg)*)))
    };
}

/// [`say!`] on standard error.
macro_rules! say_err {
    ($($arg:tt)*) => {
        eprintln!("{}", terminal_safe(&format!($($arg)*)))
    };
}

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
    smol::block_on(run(cli, config))
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
            let replies = backend(&config, Request::Browse { addr: source }).await?;
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
                addr: source,
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
    smol::spawn(async move { node.handle(req, tx).await }).detach();
    rx
}

fn bar(len: u64, msg: String) -> ProgressBar {
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

async fn print_share_replies(replies: Receiver<Reply>) -> anyhow::Result<()> {
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

fn print_results(results: &[leaf::search::SearchResult], json: bool) -> anyhow::Result<()> {
    if json {
        for r in results {
            let line = serde_json::json!({
                "id": r.id.to_hex(),
                "name": r.name,
                "path": r.path,
                "size": r.size,
                "sources": r.sources.len(),
                "source_addrs": r.sources.iter().map(|s| s.addr.to_string()).collect::<Vec<_>>(),
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

async fn print_get_replies(replies: Receiver<Reply>) -> anyhow::Result<()> {
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

fn print_status(s: &control::StatusReport) {
    say!("node      {}", s.node);
    say!("role      {}", s.role);
    match s.listen {
        Some(a) => say!("serving   {a}"),
        None => say!("serving   nothing (no node runs for this data directory)"),
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
fn print_tree(l: &leaf::browse::Listing) {
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
fn print_wishes(wishes: &[leaf::wish::Wish], lead: &str) {
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
