//! The super-peer driver: sockets and tasks around [`topology::SuperPeer`] and [`index::Index`].
//!
//! One actor task owns the overlay state machine and the index and applies the drain rule after
//! every input. Each connection has a reader task (frames in, as inputs to the actor) and a
//! writer task (messages out, from a channel the actor feeds). Dropping the writer's channel
//! makes it flush what is queued, shut the socket down, and so end the reader too.
//!
//! The state machine decides which super-peers to dial ([`Event::Dial`]), which leaves to check
//! for reachability ([`Event::CheckReachable`]) and when to demote ([`Event::Demote`]); the
//! driver carries those out, and keeps the host cache on disk (`hosts.cbor` in the data
//! directory) so a restart needs no bootstrap address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::channel::{self, Receiver, Sender};
use smol::net::{TcpListener, TcpStream};
use smol::Task;
use topology::{ConnId, Event, HostCache, NodeRole, RoleClock, RoleConfig, Stats, SuperPeer};
use wire::{Hello, HostEntry, Message, NodeId, Role};

use crate::net::{connect, write_message_within, FrameReader, ReadError};

/// The host cache's file name in a data directory.
pub const HOSTS_FILE: &str = "hosts.cbor";
/// A peer that takes longer than this to accept one message is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the host cache is saved.
const SAVE_HOSTS_EVERY: Duration = Duration::from_secs(30);

/// Settings of a running super-peer.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to accept leaves and neighbours.
    pub listen: SocketAddr,
    /// Bootstrap super-peers (kept in the host cache and dialled as the mesh needs them).
    pub peers: Vec<SocketAddr>,
    /// This node's id.
    pub node: NodeId,
    /// The overlay logic's settings.
    pub overlay: topology::Config,
    /// Where the host cache is kept between runs (none: not kept).
    pub data_dir: Option<PathBuf>,
    /// The node's role history (a fresh one for a dedicated super-peer).
    pub clock: Option<RoleClock>,
    /// Super-peers already known (handed over by a leaf that became this super-peer).
    pub hosts: Vec<HostEntry>,
}

impl Config {
    /// A dedicated super-peer listening at `listen`, with the default overlay settings.
    pub fn new(node: NodeId, listen: SocketAddr) -> Self {
        Config {
            listen,
            peers: Vec::new(),
            node,
            overlay: topology::Config::default(),
            data_dir: None,
            clock: None,
            hosts: Vec::new(),
        }
    }
}

/// Why a super-peer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The in-memory index could not be created.
    #[error("cannot create the index: {0}")]
    Index(#[from] index::IndexError),
}

/// A snapshot of a running super-peer.
#[derive(Debug, Clone)]
pub struct Status {
    /// Its node id.
    pub node: NodeId,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Overlay counters.
    pub stats: Stats,
    /// Records in its index.
    pub records: u64,
    /// Super-peers in its host cache.
    pub hosts: usize,
    /// Neighbours whose route table (with words in it) it holds.
    pub route_tables: usize,
}

/// What a super-peer that demoted itself hands back to its node.
#[derive(Debug, Clone)]
pub struct Demoted {
    /// Why it demoted.
    pub reason: String,
    /// The node's role history.
    pub clock: RoleClock,
    /// The super-peers it knew.
    pub hosts: Vec<HostEntry>,
}

enum Input {
    Connected {
        conn: ConnId,
        remote: SocketAddr,
        dialed: bool,
        writer: Sender<Message>,
    },
    DialFailed(SocketAddr),
    Reachable(ConnId, bool),
    Message(ConnId, Message),
    Invalid(ConnId, String),
    Disconnected(ConnId),
    Status(Sender<Status>),
}

/// A running super-peer. Dropping it stops the node and closes its connections.
pub struct SuperPeerNode {
    listen: SocketAddr,
    inputs: Sender<Input>,
    demoted: Receiver<Demoted>,
    _tasks: Vec<Task<()>>,
}

impl SuperPeerNode {
    /// Binds the listen address and starts the node on smol's global executor.
    pub async fn start(config: Config) -> Result<SuperPeerNode, StartError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let listen = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let index = index::Index::new()?;
        let (inputs, rx) = channel::unbounded();
        let now = Instant::now();
        let clock = config
            .clock
            .unwrap_or_else(|| RoleClock::new(now, NodeRole::SuperPeer, RoleConfig::default()));
        // Route tables must cut words exactly as the index does (no false negatives).
        let overlay = topology::Config {
            analyzer: index::words,
            ..config.overlay
        };
        let mut state = SuperPeer::new(now, config.node, Some(listen), overlay, clock);
        state.add_seeds(now, &config.peers);
        state.import_hosts(now, &config.hosts);
        let hosts_file = config.data_dir.map(|d| d.join(HOSTS_FILE));
        if let Some(path) = &hosts_file {
            state.import_hosts(now, &load_hosts(path));
        }
        let ids = Arc::new(AtomicU64::new(1));
        let (demoted_tx, demoted) = channel::bounded(1);
        let actor = Actor {
            state,
            index,
            writers: HashMap::new(),
            inputs: inputs.clone(),
            ids: ids.clone(),
            listen,
            hosts_file,
            demoted: demoted_tx,
        };
        let tasks = vec![
            smol::spawn(actor.run(rx)),
            smol::spawn(accept_loop(listener, inputs.clone(), ids)),
        ];
        log::info!("super-peer {} listening on {listen}", config.node.short());
        Ok(SuperPeerNode {
            listen,
            inputs,
            demoted,
            _tasks: tasks,
        })
    }

    /// Where it accepts connections.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Counters and index size.
    pub async fn status(&self) -> Status {
        let (tx, rx) = channel::bounded(1);
        self.inputs
            .send(Input::Status(tx))
            .await
            .expect("super-peer actor is running");
        rx.recv().await.expect("super-peer actor answers")
    }

    /// Waits until this super-peer demotes itself (only one whose overlay settings allow it
    /// ever does); it has then closed its connections and stopped.
    pub async fn demoted(&self) -> Demoted {
        match self.demoted.recv().await {
            Ok(d) => d,
            Err(_) => smol::future::pending().await,
        }
    }
}

/// The host cache saved in `path`; a missing or damaged file is an empty cache.
pub fn load_hosts(path: &std::path::Path) -> Vec<HostEntry> {
    match std::fs::read(path) {
        Ok(bytes) => ciborium::from_reader(&bytes[..]).unwrap_or_else(|e| {
            log::warn!(
                "host cache {} is damaged ({e}); starting without it",
                path.display()
            );
            Vec::new()
        }),
        Err(_) => Vec::new(),
    }
}

/// Saves a host cache to `path`, atomically.
pub fn save_hosts(path: &std::path::Path, hosts: &HostCache, now: Instant) {
    let mut bytes = Vec::new();
    let saved = ciborium::into_writer(&hosts.export(now), &mut bytes)
        .map_err(std::io::Error::other)
        .and_then(|()| crate::identity::write_atomically(path, &bytes));
    if let Err(e) = saved {
        log::warn!("cannot save the host cache {}: {e}", path.display());
    }
}

async fn accept_loop(listener: TcpListener, inputs: Sender<Input>, ids: Arc<AtomicU64>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                let conn = ids.fetch_add(1, Ordering::Relaxed);
                smol::spawn(run_connection(conn, stream, remote, false, inputs.clone())).detach();
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                log::warn!("accept failed: {e}");
                smol::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Runs one connection until either side ends it.
async fn run_connection(
    conn: ConnId,
    stream: TcpStream,
    remote: SocketAddr,
    dialed: bool,
    inputs: Sender<Input>,
) {
    let (writer_tx, writer_rx) = channel::unbounded::<Message>();
    let connected = Input::Connected {
        conn,
        remote,
        dialed,
        writer: writer_tx,
    };
    if inputs.send(connected).await.is_err() {
        return;
    }
    let writer = smol::spawn(write_loop(stream.clone(), writer_rx));
    let mut reader = FrameReader::new(stream);
    loop {
        match reader.read_message().await {
            Ok(Some(msg)) => {
                if inputs.send(Input::Message(conn, msg)).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(ReadError::Decode(e)) => {
                let _ = inputs.send(Input::Invalid(conn, e.to_string())).await;
                break;
            }
            Err(e) => {
                log::debug!("connection {conn} from {remote}: {e}");
                break;
            }
        }
    }
    let _ = inputs.send(Input::Disconnected(conn)).await;
    // Let the writer flush (a Goodbye, say) before the socket goes.
    smol::future::or(writer, async {
        smol::Timer::after(Duration::from_secs(5)).await;
    })
    .await;
}

async fn write_loop(mut stream: TcpStream, rx: Receiver<Message>) {
    let mut scratch = Vec::new();
    while let Ok(msg) = rx.recv().await {
        let written = write_message_within(&mut stream, &msg, &mut scratch, WRITE_TIMEOUT).await;
        if let Err(e) = written {
            log::info!("dropping a connection: write failed: {e}");
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Connects to a leaf's listen address and exchanges Hellos: can others reach it?
async fn check_reachable(addr: SocketAddr, node: NodeId) -> bool {
    let Ok(mut stream) = connect(addr, Duration::from_secs(5)).await else {
        return false;
    };
    let mut scratch = Vec::new();
    let hello = Message::Hello(Hello::new(
        node,
        Role::Transfer,
        None,
        "canopy-reachability",
    ));
    if write_message_within(&mut stream, &hello, &mut scratch, Duration::from_secs(5))
        .await
        .is_err()
    {
        return false;
    }
    let mut reader = FrameReader::new(stream.clone());
    let ok = matches!(
        reader.read_message_within(Duration::from_secs(5)).await,
        Ok(Message::Hello(_))
    );
    let bye = Message::Goodbye {
        reason: "reachability check done".into(),
    };
    let _ = write_message_within(&mut stream, &bye, &mut scratch, Duration::from_secs(1)).await;
    ok
}

struct Actor {
    state: SuperPeer,
    index: index::Index,
    writers: HashMap<ConnId, Sender<Message>>,
    inputs: Sender<Input>,
    ids: Arc<AtomicU64>,
    listen: SocketAddr,
    hosts_file: Option<PathBuf>,
    demoted: Sender<Demoted>,
}

impl Actor {
    async fn run(mut self, inputs: Receiver<Input>) {
        let mut next_save = Instant::now() + SAVE_HOSTS_EVERY;
        loop {
            let deadline = self
                .state
                .poll_timeout()
                .map_or(next_save, |t| t.min(next_save));
            let next = smol::future::or(async { Some(inputs.recv().await) }, async {
                smol::Timer::at(deadline).await;
                None
            })
            .await;
            let now = Instant::now();
            match next {
                None => self.state.handle_timeout(now),
                Some(Err(_)) => return,
                Some(Ok(input)) => self.input(now, input),
            }
            // A steady stream of inputs must not starve the timers (keep-alives, timeouts).
            if self.state.poll_timeout().is_some_and(|t| t <= now) {
                self.state.handle_timeout(now);
            }
            if now >= next_save {
                next_save = now + SAVE_HOSTS_EVERY;
                self.save_hosts(now);
            }
            if let Some(demoted) = self.drain() {
                self.save_hosts(Instant::now());
                let hosts = self.state.hosts().export(Instant::now());
                let clock = self.state.clock().clone();
                let _ = self.demoted.try_send(Demoted {
                    reason: demoted,
                    clock,
                    hosts,
                });
                // Flush what was queued (redirects, goodbyes), then stop.
                self.writers.clear();
                return;
            }
        }
    }

    fn input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Connected {
                conn,
                remote,
                dialed,
                writer,
            } => {
                self.writers.insert(conn, writer);
                self.state.handle_connect(now, conn, remote, dialed);
            }
            Input::DialFailed(addr) => self.state.handle_dial_failed(now, addr),
            Input::Reachable(conn, ok) => self.state.handle_reachable(now, conn, ok),
            Input::Message(conn, msg) => self.state.handle_message(now, conn, msg),
            Input::Invalid(conn, reason) => self.state.handle_invalid(now, conn, &reason),
            Input::Disconnected(conn) => {
                self.writers.remove(&conn);
                self.state.handle_disconnect(now, conn);
            }
            Input::Status(tx) => {
                let status = Status {
                    node: self.state.node_id(),
                    listen: self.listen,
                    stats: self.state.stats(),
                    records: self.index.len(),
                    hosts: self.state.hosts().len(),
                    route_tables: self.state.neighbour_tables_with_words(),
                };
                let _ = tx.try_send(status);
            }
        }
    }

    fn save_hosts(&self, now: Instant) {
        if let Some(path) = &self.hosts_file {
            save_hosts(path, self.state.hosts(), now);
        }
    }

    /// The drain rule: transmits first (so a Goodbye is queued before its connection's writer
    /// is dropped), then events, until both are empty. Returns the reason if the super-peer
    /// demoted itself.
    fn drain(&mut self) -> Option<String> {
        let mut demoted = None;
        loop {
            while let Some(t) = self.state.poll_transmit() {
                if let Some(w) = self.writers.get(&t.to) {
                    let _ = w.try_send(t.msg);
                }
            }
            let Some(event) = self.state.poll_event() else {
                return demoted;
            };
            match event {
                Event::Register { conn, files } => {
                    if let Err(e) = self.index.add_files(conn, &files) {
                        log::error!("indexing {} files of leaf {conn}: {e}", files.len());
                    }
                }
                Event::Withdraw { conn, ids } => {
                    if let Err(e) = self.index.remove_files(conn, &ids) {
                        log::error!("withdrawing {} files of leaf {conn}: {e}", ids.len());
                    }
                }
                Event::LeafGone { conn } => {
                    if let Err(e) = self.index.remove_leaf(conn) {
                        log::error!("dropping the files of leaf {conn}: {e}");
                    }
                }
                Event::Search { query, search } => {
                    let hits = match self.index.search(&search, 200) {
                        Ok(hits) => hits
                            .into_iter()
                            .map(|h| (h.leaf, h.file, h.score))
                            .collect(),
                        Err(e) => {
                            log::info!("query {} not answered: {e}", query.short());
                            Vec::new()
                        }
                    };
                    self.state.handle_local_hits(Instant::now(), query, hits);
                }
                Event::Close { conn, reason } => {
                    log::debug!("closing {conn}: {reason}");
                    self.writers.remove(&conn);
                }
                Event::Dial(addr) => {
                    let (inputs, ids) = (self.inputs.clone(), self.ids.clone());
                    smol::spawn(async move {
                        match connect(addr, Duration::from_secs(5)).await {
                            Ok(stream) => {
                                let conn = ids.fetch_add(1, Ordering::Relaxed);
                                log::info!("connected to super-peer {addr}");
                                run_connection(conn, stream, addr, true, inputs).await;
                            }
                            Err(e) => {
                                log::debug!("cannot reach super-peer {addr}: {e}");
                                let _ = inputs.send(Input::DialFailed(addr)).await;
                            }
                        }
                    })
                    .detach();
                }
                Event::CheckReachable { conn, addr } => {
                    let (inputs, node) = (self.inputs.clone(), self.state.node_id());
                    smol::spawn(async move {
                        let ok = check_reachable(addr, node).await;
                        let _ = inputs.send(Input::Reachable(conn, ok)).await;
                    })
                    .detach();
                }
                Event::Demote { reason } => demoted = Some(reason),
                Event::LeafJoined { .. }
                | Event::NeighbourJoined { .. }
                | Event::NeighbourGone { .. } => {}
            }
        }
    }
}
