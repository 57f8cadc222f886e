//! The super-peer driver: sockets and tasks around [`topology::SuperPeer`] and [`index::Index`].
//!
//! One actor task owns the overlay state machine and the index and applies the drain rule after
//! every input. Each connection has a reader task (frames in, as inputs to the actor) and a
//! writer task (messages out, from a channel the actor feeds). Dropping the writer's channel
//! makes it flush what is queued, shut the socket down, and so end the reader too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::channel::{self, Receiver, Sender};
use smol::net::{TcpListener, TcpStream};
use smol::Task;
use topology::{ConnId, Event, Stats, SuperPeer};
use wire::{Message, NodeId};

use crate::net::{connect, write_message, FrameReader, ReadError};

/// Settings of a running super-peer.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to accept leaves and neighbours.
    pub listen: SocketAddr,
    /// Neighbouring super-peers to connect to (and reconnect to when they drop).
    pub peers: Vec<SocketAddr>,
    /// This node's id.
    pub node: NodeId,
    /// The overlay logic's settings.
    pub overlay: topology::Config,
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
}

enum Input {
    Connected {
        conn: ConnId,
        remote: SocketAddr,
        writer: Sender<Message>,
    },
    Message(ConnId, Message),
    Invalid(ConnId, String),
    Disconnected(ConnId),
    Status(Sender<Status>),
}

/// A running super-peer. Dropping it stops the node and closes its connections.
pub struct SuperPeerNode {
    listen: SocketAddr,
    inputs: Sender<Input>,
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
        let state = SuperPeer::new(config.node, Some(listen), config.overlay);
        let ids = Arc::new(AtomicU64::new(1));
        let mut tasks = vec![
            smol::spawn(run_actor(state, index, rx, listen)),
            smol::spawn(accept_loop(listener, inputs.clone(), ids.clone())),
        ];
        for peer in config.peers {
            tasks.push(smol::spawn(dial_loop(peer, inputs.clone(), ids.clone())));
        }
        log::info!("super-peer {} listening on {listen}", config.node.short());
        Ok(SuperPeerNode {
            listen,
            inputs,
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
}

async fn accept_loop(listener: TcpListener, inputs: Sender<Input>, ids: Arc<AtomicU64>) {
    loop {
        match listener.accept().await {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                let conn = ids.fetch_add(1, Ordering::Relaxed);
                smol::spawn(run_connection(conn, stream, remote, inputs.clone())).detach();
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                log::warn!("accept failed: {e}");
                smol::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Keeps a connection to a configured neighbour, reconnecting with growing back-off.
async fn dial_loop(peer: SocketAddr, inputs: Sender<Input>, ids: Arc<AtomicU64>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        match connect(peer, Duration::from_secs(5)).await {
            Ok(stream) => {
                backoff = Duration::from_millis(250);
                let conn = ids.fetch_add(1, Ordering::Relaxed);
                log::info!("connected to neighbour {peer}");
                run_connection(conn, stream, peer, inputs.clone()).await;
                if inputs.is_closed() {
                    return;
                }
                log::info!("lost neighbour {peer}; reconnecting");
            }
            Err(e) => log::debug!("cannot reach neighbour {peer}: {e}"),
        }
        smol::Timer::after(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

/// Runs one connection until either side ends it.
async fn run_connection(
    conn: ConnId,
    stream: TcpStream,
    remote: SocketAddr,
    inputs: Sender<Input>,
) {
    let (writer_tx, writer_rx) = channel::unbounded::<Message>();
    if inputs
        .send(Input::Connected {
            conn,
            remote,
            writer: writer_tx,
        })
        .await
        .is_err()
    {
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

/// A peer that takes longer than this to accept one message is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

async fn write_loop(mut stream: TcpStream, rx: Receiver<Message>) {
    let mut scratch = Vec::new();
    while let Ok(msg) = rx.recv().await {
        let write = write_message(&mut stream, &msg, &mut scratch);
        let result = smol::future::or(write, async {
            smol::Timer::after(WRITE_TIMEOUT).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "peer is not reading",
            ))
        })
        .await;
        if let Err(e) = result {
            log::info!("dropping a connection: write failed: {e}");
            break;
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

async fn run_actor(
    mut state: SuperPeer,
    mut index: index::Index,
    inputs: Receiver<Input>,
    listen: SocketAddr,
) {
    let mut writers: HashMap<ConnId, Sender<Message>> = HashMap::new();
    loop {
        let deadline = state.poll_timeout();
        let next = smol::future::or(async { Some(inputs.recv().await) }, async {
            match deadline {
                Some(t) => smol::Timer::at(t).await,
                None => smol::future::pending().await,
            };
            None
        })
        .await;
        let now = Instant::now();
        match next {
            None => state.handle_timeout(now),
            Some(Err(_)) => return,
            Some(Ok(input)) => match input {
                Input::Connected {
                    conn,
                    remote,
                    writer,
                } => {
                    writers.insert(conn, writer);
                    state.handle_connect(now, conn, remote);
                }
                Input::Message(conn, msg) => state.handle_message(now, conn, msg),
                Input::Invalid(conn, reason) => state.handle_invalid(now, conn, &reason),
                Input::Disconnected(conn) => {
                    writers.remove(&conn);
                    state.handle_disconnect(now, conn);
                }
                Input::Status(tx) => {
                    let status = Status {
                        node: state.node_id(),
                        listen,
                        stats: state.stats(),
                        records: index.len(),
                    };
                    let _ = tx.try_send(status);
                }
            },
        }
        // A steady stream of inputs must not starve the timers (keep-alives, timeouts).
        if state.poll_timeout().is_some_and(|t| t <= now) {
            state.handle_timeout(now);
        }
        drain(&mut state, &mut index, &mut writers);
    }
}

/// The drain rule: transmits first (so a Goodbye is queued before its connection's writer is
/// dropped), then events, until both are empty.
fn drain(
    state: &mut SuperPeer,
    index: &mut index::Index,
    writers: &mut HashMap<ConnId, Sender<Message>>,
) {
    loop {
        while let Some(t) = state.poll_transmit() {
            if let Some(w) = writers.get(&t.to) {
                let _ = w.try_send(t.msg);
            }
        }
        let Some(event) = state.poll_event() else {
            return;
        };
        match event {
            Event::Register { conn, files } => {
                if let Err(e) = index.add_files(conn, &files) {
                    log::error!("indexing {} files of leaf {conn}: {e}", files.len());
                }
            }
            Event::Withdraw { conn, ids } => {
                if let Err(e) = index.remove_files(conn, &ids) {
                    log::error!("withdrawing {} files of leaf {conn}: {e}", ids.len());
                }
            }
            Event::LeafGone { conn } => {
                if let Err(e) = index.remove_leaf(conn) {
                    log::error!("dropping the files of leaf {conn}: {e}");
                }
            }
            Event::Search { query, search } => {
                let hits = match index.search(&search, 200) {
                    Ok(hits) => hits
                        .into_iter()
                        .map(|h| (h.leaf, h.file, h.score))
                        .collect(),
                    Err(e) => {
                        log::info!("query {} not answered: {e}", query.short());
                        Vec::new()
                    }
                };
                state.handle_local_hits(Instant::now(), query, hits);
            }
            Event::Close { conn, reason } => {
                log::debug!("closing {conn}: {reason}");
                writers.remove(&conn);
            }
            Event::LeafJoined { .. }
            | Event::NeighbourJoined { .. }
            | Event::NeighbourGone { .. } => {}
        }
    }
}
