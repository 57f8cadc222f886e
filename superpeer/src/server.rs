//! The super-peer driver: sockets and tasks around [`topology::SuperPeer`] and [`index::Index`].
//!
//! One actor task owns the overlay state machine and the index and applies the drain rule after
//! every input. Each connection has a reader task (frames in, as inputs to the actor) and a
//! writer task (messages out, from a channel the actor feeds). Dropping the writer's channel
//! makes it flush what is queued, shut the socket down, and so end the reader too.
//!
//! Every connection is admitted by the [`Gate`] (connection counts, bans), then runs the Noise
//! handshake ([`transport::secure`]) before its reader starts. The reader checks each message
//! against the [`Limits`] (and the first, Hello, against the peer's key) before the actor sees
//! it; the actor encodes what it sends and counts the bytes a peer has not read yet. A trip
//! logs the peer and the limit, cuts the connection off, and bans the address when the limit
//! calls for it.
//!
//! Two lanes lead to the actor. Queries a neighbour relays take the query lane, where each
//! connection holds at most [`QUEUED_PER_CONNECTION`] places; one that finds its
//! connection's places taken is dropped (and counted), not waited for, so the reader keeps
//! reading. Everything else (hits, route tables, keep-alives, and all a leaf sends, which the
//! limits already hold to a leaf's rate) takes the first lane, which the actor always empties
//! first. That order is what keeps a connection's Hello ahead of its first query (a query
//! handled before its Hello would close the link); the cost is that a node whose first lane
//! alone keeps it busy holds neighbours' queries (16 a connection, the rest shed) until it
//! catches up: its own leaves' searches and the hits come first.
//! Under a flood the mesh then sheds queries rather than delaying them: hits never wait behind
//! a backlog of queries in the same TCP stream, a leaf's search is handled at once, and a
//! flooding neighbour's arrival rate (not the rate this node gets round to it) is what the
//! limits see.
//!
//! The state machine decides which super-peers to dial ([`Event::Dial`]), which leaves to check
//! for reachability ([`Event::CheckReachable`]) and when to demote ([`Event::Demote`]); the
//! driver carries those out, and keeps the host cache on disk (`hosts.cbor` in the data
//! directory) so a restart needs no bootstrap address.

use std::collections::HashMap;
use std::net::{Shutdown, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::channel::{self, Receiver, Sender};
use smol::lock::{Semaphore, SemaphoreGuardArc};
use smol::net::{TcpListener, TcpStream};
use smol::Task;
use topology::{
    ConnId, Event, HostCache, NodeRole, RelayJoin, RoleClock, RoleConfig, Stats, SuperPeer,
};
use wire::{Hello, HostEntry, Message, NodeId, Role};

use transport::identity::Identity;
use transport::limits::{Admitted, Gate, Limits, Tripped};
use transport::net::{connect_secure, write_message_within, FrameReader, ReadError};
use transport::secure::SecureStream;

/// The host cache's file name in a data directory.
pub const HOSTS_FILE: &str = "hosts.cbor";
/// A peer that takes longer than this to accept one message is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Inputs waiting for the actor before connection readers wait.
const INPUT_BACKLOG: usize = 4096;
/// Messages of one connection waiting in each lane of the actor's queue, at most.
const QUEUED_PER_CONNECTION: usize = 16;
/// How often the host cache is saved.
const SAVE_HOSTS_EVERY: Duration = Duration::from_secs(30);

/// Settings of a running super-peer.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to accept leaves and neighbours.
    pub listen: SocketAddr,
    /// Bootstrap super-peers (kept in the host cache and dialled as the mesh needs them).
    pub peers: Vec<SocketAddr>,
    /// This node's key pair (its node id is derived from it).
    pub identity: Identity,
    /// What peers may send and make it hold.
    pub limits: Limits,
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
    pub fn new(identity: Identity, listen: SocketAddr) -> Self {
        Config {
            listen,
            peers: Vec::new(),
            identity,
            limits: Limits::default(),
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
    /// Neighbours whose depth-1 route table (with words in it) it holds.
    pub route_aggregates: usize,
    /// Queries neighbours relayed that were shed because this node was behind on their
    /// connection (see the module docs).
    pub queries_dropped_busy: u64,
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
        writer: Outbox,
    },
    DialFailed(SocketAddr),
    Reachable(ConnId, bool),
    /// A check made for a neighbour (its connection, its token) is done.
    ReachableFor(ConnId, u64, Option<bool>),
    /// A message, holding one of its connection's places in the queue until it is handled.
    Message(ConnId, Message, SemaphoreGuardArc),
    Invalid(ConnId, String),
    Disconnected(ConnId),
    /// Status; with `true`, once what was registered so far is committed to the index.
    Status(Sender<Status>, bool),
    /// Stop: say goodbye (with this reason) to everyone, save the host cache, and answer.
    Stop(String, Sender<()>),
    /// A connection whose first message is `RelayJoin` (instead of Hello).
    RelayJoin(Box<RelayEnd>),
    /// That connection's writer is back: it is one end of relay `token`, from `node`.
    RelayEnd {
        token: u64,
        node: NodeId,
        end: Box<crate::relay::End>,
    },
    /// A spliced relay ended.
    RelayEnded {
        token: u64,
        bytes: u64,
    },
}

/// A running super-peer. Dropping it stops the node and closes its connections.
pub struct SuperPeerNode {
    listen: SocketAddr,
    inputs: Sender<Input>,
    demoted: Receiver<Demoted>,
    gate: Arc<Gate>,
    _tasks: Vec<Task<()>>,
}

/// Where a connection's reader puts what it reads (see the module docs).
#[derive(Clone)]
struct Lanes {
    /// The first lane: everything but neighbours' queries.
    inputs: Sender<Input>,
    /// Queries relayed by neighbours.
    queries: Sender<Input>,
    /// Queries dropped because their connection's places were taken.
    dropped: Arc<AtomicU64>,
}

impl SuperPeerNode {
    /// Binds the listen address and starts the node's tasks with `transport::rt::spawn`.
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
        // On every IPv4 address: on every IPv6 address too, on the same port, where the host
        // has IPv6 (leaves with a global IPv6 address are then seen, checked and named in
        // hits at it).
        let listener6 = match listen.ip() == std::net::Ipv4Addr::UNSPECIFIED {
            true => match transport::net::listen_ipv6_beside(listen.port(), 128) {
                Ok(l) => Some(l),
                Err(e) => {
                    log::info!("not listening on [::]:{}: {e}", listen.port());
                    None
                }
            },
            false => None,
        };
        let index = index::Index::new()?;
        // Bounded: readers wait (and so do their peers, through TCP) when the actor is behind.
        let (inputs, rx) = channel::bounded(INPUT_BACKLOG);
        let (queries, queries_rx) = channel::bounded(INPUT_BACKLOG);
        let lanes = Lanes {
            inputs: inputs.clone(),
            queries,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let now = Instant::now();
        let clock = config
            .clock
            .unwrap_or_else(|| RoleClock::new(now, NodeRole::SuperPeer, RoleConfig::default()));
        let node = config.identity.node();
        let identity = Arc::new(config.identity);
        // Route tables must cut words exactly as the index does (no false negatives). The
        // limits on what one leaf holds are counted by the overlay logic, which knows what
        // each leaf really holds.
        let overlay = topology::Config {
            analyzer: index::words,
            max_files_per_leaf: config.limits.max_files_per_leaf,
            max_record_bytes_per_leaf: config.limits.max_metadata_per_leaf,
            // Below what a neighbour accepts (assumed to run the same limits), so relaying
            // never gets this node cut off and banned.
            neighbour_query_rate: config.limits.peer_queries_per_second * 0.9,
            neighbour_query_burst: config.limits.peer_queries_per_second
                * config.limits.query_burst_seconds
                * 0.9,
            ..config.overlay
        };
        let gate = Gate::new(config.limits);
        let mut state = SuperPeer::new(now, node, Some(listen), overlay, clock);
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
            lanes: lanes.clone(),
            ids: ids.clone(),
            listen,
            hosts_file,
            demoted: demoted_tx,
            identity: identity.clone(),
            gate: gate.clone(),
            relay_waiting: HashMap::new(),
            relays: HashMap::new(),
        };
        let mut tasks = vec![transport::rt::spawn(actor.run(rx, queries_rx))];
        for l in std::iter::once(listener).chain(listener6) {
            tasks.push(transport::rt::spawn(accept_loop(
                l,
                lanes.clone(),
                ids.clone(),
                identity.clone(),
                gate.clone(),
            )));
        }
        log::info!("super-peer {} listening on {listen}", node.short());
        Ok(SuperPeerNode {
            listen,
            inputs,
            demoted,
            gate,
            _tasks: tasks,
        })
    }

    /// Where it accepts connections.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Whether connections from `ip` are refused now for an offence.
    pub fn is_banned(&self, ip: std::net::IpAddr) -> bool {
        self.gate.is_banned(ip, Instant::now())
    }

    /// Counters and index size (records committed so far: changes are committed within about
    /// [`index::BATCH_TIME`] of arriving).
    pub async fn status(&self) -> Status {
        self.status_with(false).await
    }

    /// [`SuperPeerNode::status`] once everything registered so far is committed, so the
    /// record count is exact (for tests; the super-peer waits for a commit meanwhile).
    pub async fn status_committed(&self) -> Status {
        self.status_with(true).await
    }

    async fn status_with(&self, committed: bool) -> Status {
        let (tx, rx) = channel::bounded(1);
        self.inputs
            .send(Input::Status(tx, committed))
            .await
            .expect("super-peer actor is running");
        rx.recv().await.expect("super-peer actor answers")
    }

    /// Stops the node: every neighbour and leaf is told `reason` in a Goodbye, the host cache is
    /// saved, and the connections close once their Goodbye is written. Returns once the node
    /// has stopped (at once if it had already).
    pub async fn shutdown(&self, reason: &str) {
        let (tx, rx) = channel::bounded(1);
        if self
            .inputs
            .send(Input::Stop(reason.into(), tx))
            .await
            .is_ok()
        {
            let _ = rx.recv().await;
        }
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
    transport::store::load_or_log(path, "starting without the host cache").unwrap_or_default()
}

/// Saves a host cache to `path`, atomically.
pub fn save_hosts(path: &std::path::Path, hosts: &HostCache, now: Instant) {
    if let Err(e) = transport::store::save(path, &hosts.export(now)) {
        log::warn!("cannot save the host cache {}: {e}", path.display());
    }
}

async fn accept_loop(
    listener: TcpListener,
    lanes: Lanes,
    ids: Arc<AtomicU64>,
    identity: Arc<Identity>,
    gate: Arc<Gate>,
) {
    let admit = gate.clone();
    let handle = move |stream: TcpStream, remote: SocketAddr, admitted: Admitted| {
        let conn = ids.fetch_add(1, Ordering::Relaxed);
        let (lanes, identity, gate) = (lanes.clone(), identity.clone(), gate.clone());
        async move {
            let limit = gate.limits().handshake_timeout;
            match transport::secure::accept(stream.clone(), &identity, limit).await {
                Ok(secure) => {
                    let peer = Peer {
                        conn,
                        socket: stream,
                        remote,
                        dialed: false,
                        _admitted: Some(admitted),
                    };
                    run_connection(peer, secure, lanes, gate).await
                }
                Err(e) => log::warn!("peer {remote}: {e} (handshake_timeout {limit:?})"),
            }
        }
    };
    transport::link::accept_loop(listener, admit, "a connection", handle).await
}

/// The actor's handle on a connection's writer ([`transport::link::Outbox`], whose queued bytes
/// are capped at [`Limits::max_pending_bytes`]), and its socket, to end it at once.
struct Outbox {
    out: transport::link::Outbox,
    socket: TcpStream,
    remote: SocketAddr,
}

impl Outbox {
    /// Queues `msg`, or says the limit it would go past.
    fn send(&self, msg: &Message) -> Result<(), Tripped> {
        self.out.send(msg).map_err(|full| Tripped {
            limit: "max_pending_bytes",
            detail: format!("{} bytes not read yet", full.pending),
            ban: false,
        })
    }

    /// Ends the connection now, without flushing.
    fn kill(&self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// A connection that asked to join a relay, as its reader hands it over.
struct RelayEnd {
    conn: ConnId,
    token: u64,
    node: NodeId,
    raw: TcpStream,
    reader: FrameReader<transport::secure::SecureReader<TcpStream>>,
    admitted: Option<Admitted>,
}

/// One connection, as the tasks that run it know it.
struct Peer {
    conn: ConnId,
    socket: TcpStream,
    remote: SocketAddr,
    dialed: bool,
    _admitted: Option<Admitted>,
}

/// Runs one connection, after its handshake, until either side ends it.
async fn run_connection(
    peer: Peer,
    secure: SecureStream<TcpStream>,
    lanes: Lanes,
    gate: Arc<Gate>,
) {
    let inputs = &lanes.inputs;
    let (conn, remote) = (peer.conn, peer.remote);
    let limits = gate.limits();
    let (out, writer) =
        transport::link::spawn_writer(secure.writer, limits.max_pending_bytes, WRITE_TIMEOUT);
    let connected = Input::Connected {
        conn,
        remote,
        dialed: peer.dialed,
        writer: Outbox {
            out,
            socket: peer.socket.clone(),
            remote,
        },
    };
    if inputs.send(connected).await.is_err() {
        return;
    }
    // Overlay messages never carry a payload (only chunks and manifests do).
    let mut reader = FrameReader::new(secure.reader).limited(wire::MAX_BODY, 0);
    let mut bucket = None;
    // Fair queueing: one connection holds at most this many messages in each lane of the
    // actor's queue, so a peer that sends as fast as it may delays the others' messages by
    // that many at most, not by the whole queue.
    let places = Arc::new(Semaphore::new(QUEUED_PER_CONNECTION));
    let query_places = Arc::new(Semaphore::new(QUEUED_PER_CONNECTION));
    let mut neighbour = false;
    loop {
        match reader.read_message().await {
            // One end of a relay: it said so instead of Hello. The actor takes the connection
            // over: reading stops here, and the writer is handed back.
            Ok(Some(Message::RelayJoin { token })) if bucket.is_none() => {
                writer.detach();
                let end = RelayEnd {
                    conn,
                    token,
                    node: secure.peer,
                    raw: peer.socket.clone(),
                    reader,
                    admitted: peer._admitted,
                };
                let _ = inputs.send(Input::RelayJoin(Box::new(end))).await;
                return;
            }
            Ok(Some(msg)) => {
                let now = Instant::now();
                let verdict = match (&mut bucket, &msg) {
                    (None, Message::Hello(hello)) => {
                        match transport::hello::check_key(secure.peer, hello) {
                            Err(e) => Err(Tripped::ban("identity", e.to_string())),
                            Ok(()) => {
                                bucket = Some(limits.buckets_for(hello.role, now));
                                neighbour = hello.role == Role::SuperPeer;
                                Ok(())
                            }
                        }
                    }
                    (Some(bucket), msg) => limits.check(msg, bucket, now),
                    // Anything before Hello: the overlay logic closes the connection.
                    (None, _) => Ok(()),
                };
                if let Err(trip) = verdict {
                    gate.tripped(remote, &trip, now);
                    peer.socket.shutdown(Shutdown::Both).ok();
                    break;
                }
                if neighbour && matches!(msg, Message::Query(_)) {
                    // Behind on this neighbour's queries: shed this one rather than stop
                    // reading (what follows it, hits say, would wait behind the backlog).
                    let Some(place) = query_places.try_acquire_arc() else {
                        lanes.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    if lanes
                        .queries
                        .send(Input::Message(conn, msg, place))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    continue;
                }
                let place = places.acquire_arc().await;
                if inputs.send(Input::Message(conn, msg, place)).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(ReadError::Decode(e)) => {
                let limit = match e {
                    wire::DecodeError::TooLarge { .. } => "max_frame_bytes",
                    _ => "protocol",
                };
                gate.tripped(remote, &Tripped::ban(limit, e.to_string()), Instant::now());
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
    let failed = smol::future::or(writer, async {
        smol::Timer::after(Duration::from_secs(5)).await;
        None
    })
    .await;
    if let Some(e) = failed {
        log::info!("dropping connection {conn} from {remote}: {e}");
    }
}

/// How long a reachability check may take in all: less than a neighbour that asked for one
/// waits for the answer (`topology::superpeer::REACH_ASK_WAIT`).
const CHECK_LIMIT: Duration = Duration::from_secs(6);

/// Connects to a leaf's listen address and exchanges Hellos: can others reach it? Only if the
/// node that answers is the leaf (`node`): its Noise key proves it, so a leaf that names
/// another node's address is not found reachable there. No answer within [`CHECK_LIMIT`]: no.
async fn check_reachable(addr: SocketAddr, node: NodeId, identity: &Identity) -> bool {
    smol::future::or(check_reachable_inner(addr, node, identity), async {
        smol::Timer::after(CHECK_LIMIT).await;
        false
    })
    .await
}

async fn check_reachable_inner(addr: SocketAddr, node: NodeId, identity: &Identity) -> bool {
    let limit = Duration::from_secs(5);
    let Ok(secure) = connect_secure(addr, identity, limit).await else {
        return false;
    };
    let (mut writer, peer) = (secure.writer, secure.peer);
    if peer != node {
        log::info!("reachability check: {addr} is node {peer}, not leaf {node}");
        return false;
    }
    let mut scratch = Vec::new();
    let hello = Message::Hello(Hello::new(
        identity.node(),
        Role::Transfer,
        None,
        "canopy-reachability",
    ));
    if write_message_within(&mut writer, &hello, &mut scratch, limit)
        .await
        .is_err()
    {
        return false;
    }
    // Overlay messages never carry a payload (only chunks and manifests do).
    let mut reader = FrameReader::new(secure.reader).limited(wire::MAX_BODY, 0);
    let ok = matches!(
        reader.read_message_within(limit).await,
        Ok(Message::Hello(h)) if h.node == peer
    );
    let bye = Message::Goodbye {
        reason: "reachability check done".into(),
    };
    let _ = write_message_within(&mut writer, &bye, &mut scratch, Duration::from_secs(1)).await;
    ok
}

struct Actor {
    state: SuperPeer,
    index: index::Index,
    writers: HashMap<ConnId, Outbox>,
    lanes: Lanes,
    ids: Arc<AtomicU64>,
    listen: SocketAddr,
    hosts_file: Option<PathBuf>,
    demoted: Sender<Demoted>,
    identity: Arc<Identity>,
    gate: Arc<Gate>,
    /// Relay ends waiting for the other, by token.
    relay_waiting: HashMap<u64, crate::relay::End>,
    /// Relays being spliced, by token: they end with the actor (the node stopping).
    relays: HashMap<u64, Task<()>>,
}

impl Actor {
    async fn run(mut self, inputs: Receiver<Input>, queries: Receiver<Input>) {
        let mut next_save = Instant::now() + SAVE_HOSTS_EVERY;
        loop {
            let deadline = self
                .state
                .poll_timeout()
                .map_or(next_save, |t| t.min(next_save));
            // The first lane first, always; the query lane when it is empty (see the module
            // docs). (`or` polls its first future first.)
            let next = smol::future::or(
                smol::future::or(async { Some(inputs.recv().await) }, async {
                    Some(queries.recv().await)
                }),
                async {
                    smol::Timer::at(deadline).await;
                    None
                },
            )
            .await;
            let now = Instant::now();
            match next {
                None => self.state.handle_timeout(now),
                Some(Err(_)) => return,
                Some(Ok(Input::Stop(reason, done))) => {
                    self.state.handle_shutdown(&reason);
                    // The drain queues every Goodbye; dropping the writers lets each one send
                    // what is queued, then close.
                    let _ = self.drain();
                    self.save_hosts(Instant::now());
                    self.writers.clear();
                    log::info!("stopped: {reason}");
                    let _ = done.try_send(());
                    return;
                }
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
            Input::ReachableFor(peer, token, ok) => {
                self.state.handle_checked_for(now, peer, token, ok)
            }
            Input::Message(conn, msg, _place) => self.state.handle_message(now, conn, msg),
            Input::Invalid(conn, reason) => self.state.handle_invalid(now, conn, &reason),
            Input::Disconnected(conn) => {
                self.writers.remove(&conn);
                self.state.handle_disconnect(now, conn);
            }
            Input::Status(tx, committed) => {
                // The actor waits for a commit only when asked to (tests that count records).
                if committed {
                    if let Err(e) = self.index.commit() {
                        log::error!("index: {e}");
                    }
                }
                let status = Status {
                    node: self.state.node_id(),
                    listen: self.listen,
                    stats: self.state.stats(),
                    records: self.index.len(),
                    hosts: self.state.hosts().len(),
                    route_tables: self.state.neighbour_tables_with_words(),
                    route_aggregates: self.state.neighbour_aggregates_with_words(),
                    queries_dropped_busy: self.lanes.dropped.load(Ordering::Relaxed),
                };
                let _ = tx.try_send(status);
            }
            // `run` takes it (the actor ends there).
            Input::Stop(..) => {}
            Input::RelayJoin(end) => {
                let end = *end;
                // The overlay logic forgets the connection (it never said Hello), and its
                // writer task hands the writer back once our Hello is written.
                let outbox = self.writers.remove(&end.conn);
                self.state.handle_disconnect(now, end.conn);
                let inputs = self.lanes.inputs.clone();
                transport::rt::spawn(async move {
                    let Some(outbox) = outbox else { return };
                    let Some(writer) = outbox.out.take_writer().await else {
                        return;
                    };
                    let (token, node) = (end.token, end.node);
                    let joined = crate::relay::End {
                        raw: end.raw,
                        reader: end.reader,
                        writer,
                        _admitted: end.admitted,
                    };
                    let end = Box::new(joined);
                    let _ = inputs.send(Input::RelayEnd { token, node, end }).await;
                })
                .detach();
            }
            Input::RelayEnd { token, node, end } => self.relay_join(now, token, node, *end),
            Input::RelayEnded { token, bytes } => {
                // Its task has sent this, its last step: dropping the handle ends nothing more.
                self.relays.remove(&token);
                self.state.handle_relay_ended(token, bytes)
            }
        }
    }

    /// One end of relay `token` arrived from `node`: held, spliced with the other, or refused.
    fn relay_join(&mut self, now: Instant, token: u64, node: NodeId, end: crate::relay::End) {
        match self.state.handle_relay_join(now, token, node) {
            RelayJoin::Wait => {
                self.relay_waiting.insert(token, end);
            }
            RelayJoin::Paired => {
                let Some(other) = self.relay_waiting.remove(&token) else {
                    self.state.handle_relay_ended(token, 0);
                    return;
                };
                let (requester, leaf) = match self.state.relay_requester(token, node) {
                    true => (end, other),
                    false => (other, end),
                };
                let (max_bytes, max_time) = self.state.relay_caps();
                let inputs = self.lanes.inputs.clone();
                let task = transport::rt::spawn(async move {
                    let (bytes, why) =
                        crate::relay::splice(requester, leaf, max_bytes, max_time).await;
                    log::info!("relay {token:016x} ended after {bytes} bytes: {why}");
                    let _ = inputs.send(Input::RelayEnded { token, bytes }).await;
                });
                self.relays.insert(token, task);
            }
            RelayJoin::Refused(why) => {
                log::info!("refused a relay end from {}: {why}", node.short());
                let mut end = end;
                transport::rt::spawn(async move {
                    let bye = Message::Goodbye { reason: why };
                    let mut scratch = Vec::new();
                    let limit = Duration::from_secs(2);
                    let _ = write_message_within(&mut end.writer, &bye, &mut scratch, limit).await;
                })
                .detach();
            }
        }
    }

    fn save_hosts(&self, now: Instant) {
        if let Some(path) = &self.hosts_file {
            save_hosts(path, self.state.hosts(), now);
        }
    }

    /// Ends a connection that went past a limit, now, and tells the overlay logic.
    fn cut_off(&mut self, conn: ConnId, trip: &Tripped) {
        if let Some(w) = self.writers.remove(&conn) {
            self.gate.tripped(w.remote, trip, Instant::now());
            w.kill();
        }
        self.state.handle_disconnect(Instant::now(), conn);
    }

    /// The drain rule: transmits first (so a Goodbye is queued before its connection's writer
    /// is dropped), then events, until both are empty. Returns the reason if the super-peer
    /// demoted itself.
    fn drain(&mut self) -> Option<String> {
        let mut demoted = None;
        loop {
            while let Some(t) = self.state.poll_transmit() {
                if let Some(w) = self.writers.get(&t.to) {
                    if let Err(trip) = w.send(&t.msg) {
                        self.cut_off(t.to, &trip);
                    }
                }
            }
            let Some(event) = self.state.poll_event() else {
                return demoted;
            };
            match event {
                // The index's writer thread commits these (together, when they come fast):
                // the actor does not wait for commits, so one leaf's registrations do not hold
                // up every other connection's messages.
                Event::Register { conn, files } => self.index.queue_add(conn, files),
                Event::OverLimit {
                    conn,
                    limit,
                    detail,
                } => {
                    // The overlay logic closes the leaf; its address is banned for a while.
                    if let Some(w) = self.writers.get(&conn) {
                        self.gate
                            .tripped(w.remote, &Tripped::ban(limit, detail), Instant::now());
                    }
                }
                Event::Withdraw { conn, ids } => self.index.queue_remove(conn, ids),
                Event::LeafGone { conn } => self.index.queue_remove_leaf(conn),
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
                    let (lanes, ids) = (self.lanes.clone(), self.ids.clone());
                    let (identity, gate) = (self.identity.clone(), self.gate.clone());
                    transport::rt::spawn(async move {
                        let limit = Duration::from_secs(5);
                        match transport::net::connect(addr, limit).await {
                            Ok(stream) => {
                                let secure = match transport::secure::connect(
                                    stream.clone(),
                                    &identity,
                                    limit,
                                )
                                .await
                                {
                                    Ok(secure) => secure,
                                    Err(e) => {
                                        log::info!("super-peer {addr}: {e}");
                                        let _ = lanes.inputs.send(Input::DialFailed(addr)).await;
                                        return;
                                    }
                                };
                                let conn = ids.fetch_add(1, Ordering::Relaxed);
                                log::info!("connected to super-peer {addr}");
                                let peer = Peer {
                                    conn,
                                    socket: stream,
                                    remote: addr,
                                    dialed: true,
                                    _admitted: None,
                                };
                                run_connection(peer, secure, lanes, gate).await;
                            }
                            Err(e) => {
                                log::debug!("cannot reach super-peer {addr}: {e}");
                                let _ = lanes.inputs.send(Input::DialFailed(addr)).await;
                            }
                        }
                    })
                    .detach();
                }
                Event::CheckReachable { conn, addr, node } => {
                    let (inputs, identity) = (self.lanes.inputs.clone(), self.identity.clone());
                    transport::rt::spawn(async move {
                        let ok = check_reachable(addr, node, &identity).await;
                        log::debug!("leaf {conn} at {addr} reachable: {ok}");
                        let _ = inputs.send(Input::Reachable(conn, ok)).await;
                    })
                    .detach();
                }
                Event::CheckReachableFor {
                    peer,
                    token,
                    addr,
                    node,
                } => {
                    let (inputs, identity) = (self.lanes.inputs.clone(), self.identity.clone());
                    transport::rt::spawn(async move {
                        // No route to that family here (an IPv4-only host asked to check an
                        // IPv6 address): not checked, rather than found unreachable.
                        let ip = addr.ip().to_canonical();
                        let v6 = ip.is_ipv6() && !ip.is_loopback();
                        let ok = match v6 && !transport::net::has_ipv6_route() {
                            true => None,
                            false => Some(check_reachable(addr, node, &identity).await),
                        };
                        let _ = inputs.send(Input::ReachableFor(peer, token, ok)).await;
                    })
                    .detach();
                }
                Event::Demote { reason } => demoted = Some(reason),
                // Dropping the end waiting closes it.
                Event::RelayExpired { token } => {
                    self.relay_waiting.remove(&token);
                }
                Event::LeafJoined { .. }
                | Event::NeighbourJoined { .. }
                | Event::NeighbourGone { .. } => {}
            }
        }
    }
}
