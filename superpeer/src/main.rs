//! The `superpeer` binary: a dedicated super-peer. SIGTERM or SIGINT stops it cleanly: its
//! neighbours and leaves are told, and its host cache is saved.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

/// How long a stopping super-peer gives its connections to send their Goodbye.
const GOODBYE_GRACE: Duration = Duration::from_millis(250);

/// Run a dedicated Canopy super-peer: index the files of the leaves that attach to it, answer
/// their searches, and flood them to neighbouring super-peers.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to accept leaves and neighbouring super-peers on.
    #[arg(long, env = "CANOPY_SUPERPEER_LISTEN", default_value_t = SocketAddr::from(([0, 0, 0, 0], superpeer::DEFAULT_PORT)))]
    listen: SocketAddr,
    /// A super-peer to join the mesh through (repeatable; later runs also remember the
    /// super-peers they heard of).
    #[arg(long = "peer", value_name = "ADDR")]
    peers: Vec<SocketAddr>,
    /// Leaves accepted at most; more are sent to other super-peers.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
    leaf_slots: u32,
    /// Neighbouring super-peers to keep.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..))]
    neighbours: u16,
    /// Where the node keeps its identity [default: the platform's data directory].
    #[arg(long, env = "CANOPY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TTL cap applied to incoming queries.
    #[arg(long, default_value_t = wire::MAX_TTL, value_parser = clap::value_parser!(u8).range(0..=15))]
    max_ttl: u8,
    /// Results a leaf's query is searched for (dynamic querying: neighbours are asked step by
    /// step until the leaf has this many); 0 sends every query to all neighbours at once.
    #[arg(long, default_value_t = topology::DynamicQuerying::default().target)]
    dynamic_target: usize,
    /// Hits routed back for one query at most (from every super-peer it reached).
    #[arg(long, default_value_t = topology::Config::default().max_hits_per_query)]
    max_hits_per_query: usize,
    /// Relays between leaves that cannot reach each other, at once (0: relay nothing).
    #[arg(long, default_value_t = topology::Config::default().max_relays)]
    max_relays: usize,
    /// Relays one leaf may take part in at once.
    #[arg(long, default_value_t = topology::Config::default().relays_per_leaf as u16, value_parser = clap::value_parser!(u16).range(1..))]
    relays_per_leaf: u16,
    /// Mebibytes one relay carries (both ways together) before it is closed.
    #[arg(long, default_value_t = topology::Config::default().relay_max_bytes >> 20, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    relay_max_mib: u64,
    /// Minutes one relay lasts at most.
    #[arg(long, default_value_t = topology::Config::default().relay_max_time.as_secs() / 60, value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 60))]
    relay_max_minutes: u64,
    #[command(flatten)]
    limits: transport::limits::LimitArgs,
}

fn main() -> std::process::ExitCode {
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    transport::logging::init("info");
    let args = Args::parse();
    let data_dir = match args.data_dir {
        Some(d) => d,
        None => transport::identity::default_data_dir()
            .context("no home directory to keep the super-peer's data in; pass --data-dir")?
            .join("superpeer"),
    };
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let _dir_lock = transport::store::lock_dir(&data_dir)
        .with_context(|| format!("using the data directory {}", data_dir.display()))?;
    let identity = transport::identity::Identity::load_or_create(&data_dir)
        .with_context(|| format!("reading the node key in {}", data_dir.display()))?;
    let node = identity.node();
    let overlay = topology::Config {
        max_ttl: args.max_ttl,
        max_hits_per_query: args.max_hits_per_query,
        dynamic: (args.dynamic_target > 0).then(|| topology::DynamicQuerying {
            target: args.dynamic_target,
            ..Default::default()
        }),
        leaf_slots: args.leaf_slots,
        neighbour_target: args.neighbours as usize,
        max_relays: args.max_relays,
        relays_per_leaf: usize::from(args.relays_per_leaf),
        relay_max_bytes: args.relay_max_mib << 20,
        relay_max_time: std::time::Duration::from_secs(args.relay_max_minutes * 60),
        ..Default::default()
    };
    let mut stop = transport::signals::StopSignals::catch()
        .context("catching SIGTERM and SIGINT (to stop cleanly)")?;
    transport::rt::block_on(async {
        let sp = superpeer::SuperPeerNode::start(superpeer::Config {
            peers: args.peers,
            overlay,
            data_dir: Some(data_dir.clone()),
            limits: args.limits.limits(),
            ..superpeer::Config::new(identity, args.listen)
        })
        .await
        .context("starting the super-peer")?;
        // Tests and scripts read this line to learn the port when listening on port 0.
        println!("superpeer {} listening on {}", node, sp.listen_addr());
        let signal = stop.next().await;
        println!("{signal}: stopping");
        sp.shutdown(&format!("super-peer stopping ({signal})"))
            .await;
        // The connections' writers send their Goodbye as the process goes on for a moment.
        smol::Timer::after(GOODBYE_GRACE).await;
        println!("stopped");
        Ok(())
    })
}
