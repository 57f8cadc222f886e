//! The `leaf` command line: the commands, their options and the node's settings, and the
//! parsers of their values.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand};
use leaf::search::SortBy;
use wire::{FileId, Filter};

/// Canopy leaf: share your files, find what others share, and download it in parallel verified
/// chunks from every peer that has it.
///
/// Each command's own options come first in its help; the node's settings (which apply to the
/// node a command starts, or is handed to) follow under their own headings.
#[derive(Debug, Parser)]
#[command(version, next_help_heading = "Node settings")]
pub(crate) struct Cli {
    /// The node's data directory (identity, share cache, control socket).
    /// [default: the platform's data directory for canopy]
    #[arg(long, env = "CANOPY_DATA_DIR", global = true)]
    pub(crate) data_dir: Option<PathBuf>,
    /// A super-peer to attach to (repeatable; comma-separated in the variable).
    /// [default: 127.0.0.1:7700]
    #[arg(
        long = "superpeer",
        value_name = "ADDR",
        env = "CANOPY_SUPERPEER",
        value_delimiter = ',',
        global = true
    )]
    pub(crate) superpeers: Vec<SocketAddr>,
    /// Where the node serves chunks to other leaves.
    #[arg(
        long,
        env = "CANOPY_LISTEN",
        default_value = "0.0.0.0:0",
        global = true
    )]
    pub(crate) listen: SocketAddr,
    /// Downloaders served at once (others wait in a queue).
    #[arg(long, env = "CANOPY_UPLOAD_SLOTS", default_value_t = 4, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) upload_slots: u16,
    /// Connections that may ask for one file at once, served or queued; more are told to come
    /// back later (in a swarm of hundreds, every leecher is asked by every other).
    #[arg(long, env = "CANOPY_MAX_DOWNLOADERS_PER_FILE", default_value_t = leaf::slots::MAX_DOWNLOADERS_PER_FILE as u16, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) max_downloaders_per_file: u16,
    /// Connections with other leaves at once, both ways (downloads' sources, downloaders
    /// served, connections back); one accepted past it is closed at once, and sources wait.
    #[arg(long, env = "CANOPY_MAX_PEER_LINKS", default_value_t = leaf::links::MAX_PEER_LINKS as u16, global = true, value_parser = clap::value_parser!(u16).range(16..))]
    pub(crate) max_peer_links: u16,
    /// Sources a download connects to at once; others found wait, and one that gives nothing
    /// for 30 s makes way for one of them.
    #[arg(long, env = "CANOPY_MAX_PEERS", default_value_t = leaf::download::MAX_PEERS as u16, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) max_peers: u16,
    /// Upload cap for the node, e.g. 500K, 2MB or 1MiB (bytes per second; 0: none).
    #[arg(long, env = "CANOPY_UPLOAD_RATE", default_value = "0", value_parser = parse_rate, global = true)]
    pub(crate) upload_rate: u64,
    /// Download cap for the node (same units as --upload-rate).
    #[arg(long, env = "CANOPY_DOWNLOAD_RATE", default_value = "0", value_parser = parse_rate, global = true)]
    pub(crate) download_rate: u64,
    /// Never become a super-peer (a node that finds none, or is asked to, otherwise becomes one).
    #[arg(long, env = "CANOPY_NO_PROMOTE", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) no_promote: bool,
    /// Where to accept leaves if this node becomes a super-peer [default: the port of the first
    /// --superpeer address, else 7700, on all interfaces].
    #[arg(long, env = "CANOPY_SUPERPEER_LISTEN", global = true)]
    pub(crate) superpeer_listen: Option<SocketAddr>,
    /// Leaves accepted if this node becomes a super-peer.
    #[arg(long, default_value_t = 300, global = true, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) leaf_slots: u32,
    /// Downloads that run at once (others wait their turn).
    #[arg(long, env = "CANOPY_MAX_DOWNLOADS", default_value_t = 3, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub(crate) max_downloads: u16,
    /// Minutes a finished download goes on being served to others (0: stop at once; none:
    /// as long as the node runs).
    #[arg(long, env = "CANOPY_SEED_MINUTES", default_value = "60", value_parser = parse_seed_minutes, global = true)]
    pub(crate) seed_minutes: SeedMinutes,
    /// Stop seeding a finished download once this many times its size has been uploaded
    /// (whichever of this and --seed-minutes comes first).
    #[arg(long, env = "CANOPY_SEED_RATIO", global = true, value_parser = parse_ratio)]
    pub(crate) seed_ratio: Option<f64>,
    /// The port others should connect to, forwarded to --listen's port by hand on the router
    /// (or by a VPN). Turns asking the router off.
    #[arg(long, env = "CANOPY_EXTERNAL_PORT", global = true, value_parser = clap::value_parser!(u16).range(1..), conflicts_with = "external_port_file")]
    pub(crate) external_port: Option<u16>,
    /// A file holding the forwarded port (as VPN clients write it), read again every 30 s.
    /// Turns asking the router off.
    #[arg(
        long,
        env = "CANOPY_EXTERNAL_PORT_FILE",
        global = true,
        value_name = "FILE"
    )]
    pub(crate) external_port_file: Option<PathBuf>,
    /// Do not ask the router to forward the listen port (UPnP IGD, PCP, NAT-PMP).
    #[arg(long, env = "CANOPY_NO_PORT_MAPPING", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) no_port_mapping: bool,
    /// Do not let others list what this node shares (`leaf browse`); they are told so.
    #[arg(long, env = "CANOPY_NO_BROWSE", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) no_browse: bool,
    /// Minutes between two searches for the same wish (± 20 %; see `leaf wish`).
    #[arg(long, env = "CANOPY_WISH_MINUTES", default_value = "15", value_parser = parse_wish_minutes, global = true)]
    pub(crate) wish_minutes: Duration,
    /// Serve the web UI on this address (e.g. 127.0.0.1:7780) from the node `share` or `tui`
    /// starts; `leaf web-url` prints the address to open, with its token.
    #[arg(long, env = "CANOPY_WEB", global = true, value_name = "ADDR")]
    pub(crate) web: Option<SocketAddr>,
    /// Let --web use an address other machines can reach (they still need the token).
    #[arg(long, env = "CANOPY_WEB_ALLOW_REMOTE", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub(crate) web_allow_remote: bool,
    /// Where downloads started from the web UI go [default: your Downloads folder, else
    /// DATA_DIR/downloads].
    #[arg(long, env = "CANOPY_WEB_OUT", global = true, value_name = "DIR")]
    pub(crate) web_out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) limits: transport::limits::LimitArgs,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `--seed-minutes`: a number of minutes, or `none` for no time limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeedMinutes(pub(crate) Option<Duration>);

pub(crate) fn parse_seed_minutes(text: &str) -> Result<SeedMinutes, String> {
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

pub(crate) fn parse_wish_minutes(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        // At least 3 s (tests run wishes that often); a day at most.
        Ok(m) if (0.05..=1440.0).contains(&m) => Ok(Duration::from_secs_f64(m * 60.0)),
        _ => Err(format!("`{text}`: give minutes between 0.05 and 1440")),
    }
}

pub(crate) fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r >= 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!("`{text}`: give a ratio of 0 or more, e.g. 1.5")),
    }
}

pub(crate) fn parse_rate(text: &str) -> Result<u64, String> {
    leaf::rate::parse_rate(text)
}

pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    leaf::rate::parse_size(text)
}

pub(crate) fn parse_seconds(text: &str) -> Result<u32, String> {
    leaf::rate::parse_seconds(text)
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
        /// The leaf: its address or its node id (or the id's first 8 or more hex digits), as
        /// `leaf search --json` prints them (`source_addrs`, `source_nodes`). An id is looked
        /// up among the sources this node's searches met.
        source: String,
        /// One JSON object per file instead of a tree.
        #[arg(long)]
        json: bool,
    },
    /// Download a folder of a leaf, with its subfolders, into --out/FOLDER/ (its layout kept;
    /// each file from every source the network finds for it).
    GetFolder {
        /// The leaf: its address or node id, as for `leaf browse`.
        source: String,
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
    /// Print the address of the running node's web UI, with its token: open it in a browser
    /// (the node must have been started with --web).
    WebUrl,
    /// Show the node's role, super-peers, shares and transfers.
    Status {
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// The filters super-peers apply, as `leaf search` and `leaf wish add` take them.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FilterArgs {
    /// Only files with this extension (e.g. flac).
    #[arg(long)]
    pub(crate) ext: Option<String>,
    /// Only files at least this large, e.g. 5MB or 700MiB (units as for --upload-rate).
    #[arg(long, value_parser = parse_size)]
    pub(crate) min_size: Option<u64>,
    /// Only files at most this large (same units).
    #[arg(long, value_parser = parse_size)]
    pub(crate) max_size: Option<u64>,
}

impl FilterArgs {
    /// As the wire carries it; an error if no file can match.
    pub(crate) fn filter(self) -> anyhow::Result<Filter> {
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
pub(crate) enum WishAction {
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
