//! Leaves that speak Canopy's wire protocol to real super-peer processes, without files behind
//! them: they say Hello, register records, send queries, answer pings, and hand every
//! QueryHits to the caller with the time it arrived.
//!
//! The search and ingest cases use them to put hundreds of leaves in front of the super-peers
//! without hashing hundreds of folders: to a super-peer they are leaves like any other (the
//! same messages a `leaf` sends). A leaf that registers files listens on a port of its own
//! on 127.0.0.1, where it accepts connections (a super-peer's reachability check) and closes
//! them: it serves no chunks.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use smol::channel::{self, Receiver, Sender};
use smol::net::TcpListener;
use smol::Task;
use transport::identity::Identity;
use transport::net::{connect_secure, write_message, FrameReader};
use wire::{FileRecord, Hello, Message, Query, QueryHits, QueryId, Role, Search};

/// One connection to a super-peer, as a leaf.
pub struct WireLeaf {
    /// Where it claims to serve chunks (a listener that only accepts), if it registers files.
    pub listen: Option<SocketAddr>,
    out: Sender<Message>,
    /// Hits as they arrive, with their arrival time.
    pub hits: Receiver<(Instant, QueryHits)>,
    _tasks: Vec<Task<()>>,
}

impl WireLeaf {
    /// Connects to `sp` and completes the handshake. A `serving` leaf listens (a super-peer
    /// takes registrations only from a leaf that says where it serves); one that only
    /// searches does not.
    pub async fn connect(sp: SocketAddr, serving: bool) -> anyhow::Result<WireLeaf> {
        let mut tasks = Vec::new();
        let listen = if serving {
            let l = TcpListener::bind("127.0.0.1:0")
                .await
                .context("listening on 127.0.0.1")?;
            let addr = l.local_addr().context("reading a listener's address")?;
            tasks.push(smol::spawn(async move {
                loop {
                    if l.accept().await.is_err() {
                        smol::Timer::after(Duration::from_millis(100)).await;
                    }
                }
            }));
            Some(addr)
        } else {
            None
        };
        let identity = Identity::generate();
        let stream = connect_secure(sp, &identity, Duration::from_secs(10))
            .await
            .with_context(|| format!("connecting to super-peer {sp}"))?;
        let mut writer = stream.writer;
        let mut reader = FrameReader::new(stream.reader);
        let mut scratch = Vec::new();
        let hello = Message::Hello(Hello::new(
            identity.node(),
            Role::Leaf,
            listen,
            "canopy-bench",
        ));
        write_message(&mut writer, &hello, &mut scratch)
            .await
            .with_context(|| format!("greeting super-peer {sp}"))?;
        match reader
            .read_message_within(Duration::from_secs(10))
            .await
            .with_context(|| format!("waiting for super-peer {sp} to greet"))?
        {
            Message::Hello(h) if h.role == Role::SuperPeer => {}
            other => bail!("super-peer {sp} answered Hello with {}", other.kind()),
        }
        let (out, out_rx) = channel::unbounded::<Message>();
        let (hits_tx, hits) = channel::unbounded();
        let writer_task = smol::spawn(async move {
            let mut scratch = Vec::new();
            while let Ok(msg) = out_rx.recv().await {
                if write_message(&mut writer, &msg, &mut scratch)
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
        let pong = out.clone();
        let reader_task = smol::spawn(async move {
            while let Ok(Some(msg)) = reader.read_message().await {
                let keep = match msg {
                    Message::QueryHits(h) => hits_tx.send((Instant::now(), h)).await.is_ok(),
                    Message::Ping { nonce } => pong.send(Message::Pong { nonce }).await.is_ok(),
                    Message::Goodbye { reason } => {
                        eprintln!("bench: super-peer {sp} said goodbye: {reason}");
                        false
                    }
                    _ => true,
                };
                if !keep {
                    break;
                }
            }
        });
        tasks.extend([writer_task, reader_task]);
        Ok(WireLeaf {
            listen,
            out,
            hits,
            _tasks: tasks,
        })
    }

    /// Registers `files`, in batches the way a leaf cuts them; returns the number of messages.
    pub fn register(&self, files: &[FileRecord]) -> anyhow::Result<usize> {
        let batches = leaf::node::register_batches(files);
        let n = batches.len();
        for files in batches {
            self.send(Message::Register { files })?;
        }
        Ok(n)
    }

    /// Sends a query; returns its id.
    pub fn query(&self, search: Search, ttl: u8) -> anyhow::Result<QueryId> {
        let id = QueryId(rand::random());
        self.send(Message::Query(Query {
            id,
            ttl,
            hops: 0,
            search,
        }))?;
        Ok(id)
    }

    fn send(&self, msg: Message) -> anyhow::Result<()> {
        self.out
            .try_send(msg)
            .map_err(|_| anyhow::anyhow!("the connection to the super-peer is closed"))
    }

    /// Waits for the first QueryHits of query `id` (hits of other queries are dropped); returns
    /// them with their arrival time.
    pub async fn first_hits(
        &self,
        id: QueryId,
        limit: Duration,
    ) -> anyhow::Result<(Instant, QueryHits)> {
        let until = Instant::now() + limit;
        loop {
            let next = smol::future::or(async { self.hits.recv().await.ok() }, async {
                smol::Timer::at(until).await;
                None
            })
            .await;
            match next {
                Some((at, h)) if h.query == id => return Ok((at, h)),
                Some(_) => continue,
                None => bail!("no answer to query {} within {limit:?}", id.short()),
            }
        }
    }
}

/// How long one ask of [`wait_indexed`] waits for its answer before asking again.
const ASK_EVERY: Duration = Duration::from_millis(50);

/// Waits until super-peer(s) have indexed everything each leaf registered: each leaf asks for
/// the id of its last record (TTL 0) until it is found. A super-peer queues a registration for
/// its index's writer thread, which commits what has queued up together (within about
/// `index::BATCH_TIME`), so a leaf's last record is searchable soon after its registration, not
/// by its next message; the answer proves everything the leaf registered before it is. Returns
/// when the last leaf has its answer (to within [`ASK_EVERY`]).
pub async fn wait_indexed(
    leaves: &[(&WireLeaf, &FileRecord)],
    limit: Duration,
) -> anyhow::Result<Instant> {
    let until = Instant::now() + limit;
    let mut done: Option<Instant> = None;
    for (leaf, last) in leaves {
        let search = Search {
            terms: wire::Terms::Id(last.id),
            filter: Default::default(),
        };
        let at = loop {
            let id = leaf.query(search.clone(), 0)?;
            match leaf.first_hits(id, ASK_EVERY).await {
                Ok((at, _)) => break at,
                Err(e) if Instant::now() >= until => {
                    bail!(
                        "record {} never indexed within {limit:?}: {e}",
                        last.id.short()
                    )
                }
                Err(_) => {}
            }
        };
        done = Some(done.map_or(at, |d| d.max(at)));
    }
    Ok(done.unwrap_or_else(Instant::now))
}
