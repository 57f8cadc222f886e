//! A source's connection: dialling it (Noise, then Hello), asking it for the manifest before the
//! download runs, and then two tasks that only move bytes for the download's actor
//! ([`super::run`]): a reader that hands every message in (after taking a chunk's bytes from
//! the download cap, so a capped download reads no faster than the cap) and stamps when a byte
//! last arrived, and a writer that sends what the actor queues.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use smol::channel::{self, Sender};
use smol::io::AsyncRead;
use smol::lock::Semaphore;
use smol::net::TcpStream;
use transfer::manifest::{check_answer, AnswerError};
use transport::identity::Identity;
use transport::link::Outbox;
use transport::net::{connect_secure, write_message_within, FrameReader, ReadError};
use transport::secure::{SecureReader, SecureWriter};
use wire::{FileId, Hello, Manifest, Message, NodeId, Role, TransferErrorKind};

use super::types::{DownloadOptions, Reached};
use super::BackFuture;
use crate::rate::RateLimit;
use crate::reverse::Accepted;
use std::future::Future;

/// Why a source gave no manifest.
#[derive(Debug)]
pub(super) enum NoManifest {
    /// It lied or broke the protocol: this download asks it for nothing more.
    Hostile(String),
    /// The source is busy with as many downloaders of the file as it takes: ask again later.
    Busy(String),
    /// The connection failed, or the source no longer shares the file: it may be tried again
    /// later.
    Failed(String),
}

/// A source that does not take a message within this time is not reading: dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes we may have queued for a source and not yet written (requests, bitfields and haves
/// are small; a source that lets this much pile up is not reading).
const MAX_QUEUED: usize = 1 << 20;
/// Bytes of chunks of one download handed in and not yet verified and written: the next
/// chunks are decrypted while the last are hashed and written. Each source's reader holds at
/// most one chunk more, waiting for room; what sources send beyond waits in their sockets. So
/// a download holds at most this much (or 4 chunks, for chunks over 1 MiB) plus a chunk per
/// source.
///
/// 4 MiB is 16 chunks of 256 KiB, 4 of 1 MiB ([`read_ahead`]). Over loopback (1 GiB, `leaf
/// get` against a running source) 4 chunks of room left the source waiting on the
/// downloader: 16 took a download from about 1.7 s to 1.35–1.6 s (runs one after the other),
/// 8 and 16 were within the noise of each other in alternating runs, and 32 was slower again
/// (1.8 s: more chunk buffers than the caches hold).
const READ_AHEAD_BYTES: u64 = 4 << 20;

/// Chunks of room for a download whose chunks are `chunk_size` bytes: [`READ_AHEAD_BYTES`]
/// of them, at least 4 and at most 16.
pub(super) fn read_ahead(chunk_size: u64) -> usize {
    (READ_AHEAD_BYTES / chunk_size.max(1)).clamp(4, 16) as usize
}

/// Room for one chunk in memory, of the download's [`read_ahead`]; given back when dropped.
pub(super) type Room = smol::lock::SemaphoreGuardArc;

/// A reader that notes when its last byte arrived, as milliseconds after `epoch`.
pub(super) struct Stamped<R> {
    inner: R,
    epoch: Instant,
    last: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Stamped<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = read {
            if n > 0 {
                let ms = this.epoch.elapsed().as_millis() as u64;
                this.last.store(ms, Ordering::Relaxed);
            }
        }
        read
    }
}

/// A source's connection, before its tasks start.
/// An encrypted connection to a source, and how it was made.
type Stream = (
    NodeId,
    FrameReader<SecureReader<TcpStream>>,
    SecureWriter<TcpStream>,
    Reached,
);

pub(super) struct SourceConn {
    pub(super) addr: SocketAddr,
    /// The address it was dialled at, when that was its other one (`Way::other`).
    pub(super) at: Option<SocketAddr>,
    /// How the connection was made.
    pub(super) reached: Reached,
    /// The source's node id, proved by its key.
    pub(super) node: NodeId,
    /// When a byte last arrived, in milliseconds after the download's epoch.
    pub(super) last_byte: Arc<AtomicU64>,
    reader: FrameReader<Stamped<SecureReader<TcpStream>>>,
    writer: SecureWriter<TcpStream>,
    scratch: Vec<u8>,
}

impl SourceConn {
    /// Dials `addr`, runs the handshake and exchanges Hello (ours gives `listen`, where we
    /// serve others). `epoch` is the download's, for the byte stamps.
    pub(super) async fn open(
        addr: SocketAddr,
        me: &Identity,
        listen: Option<SocketAddr>,
        opts: &DownloadOptions,
        epoch: Instant,
    ) -> Result<Self, String> {
        let stream = connect_secure(addr, me, opts.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let reader = FrameReader::new(stream.reader);
        let stream = (stream.peer, reader, stream.writer, Reached::Direct);
        Self::hello(addr, stream, me, listen, opts, epoch).await
    }

    /// Dials `way.addr` (and `way.other`, the source's address of the other family, a moment
    /// later unless the first fails sooner, or the other way round: RFC 8305's Happy
    /// Eyeballs); with `back` (a connection back asked of the source), also waits for the
    /// source to connect to us. The first connection made is the one used (Soulseek's order:
    /// direct and indirect at once). With `way.back_later` (the address dialled first is
    /// known reachable), the connection back is asked for only once dialling failed or took
    /// [`BACK_DELAY`].
    pub(super) async fn connect(
        way: Way,
        me: &Identity,
        listen: Option<SocketAddr>,
        opts: &DownloadOptions,
        epoch: Instant,
        back: Option<BackFuture>,
    ) -> Result<Self, String> {
        let addr = way.addr;
        let direct = async {
            let got = match way.other {
                None => Self::open(addr, me, listen, opts, epoch).await,
                Some(other) => {
                    // Where a hit named the node at its other address, whoever answers there
                    // must be that node: a hit is a super-peer's word.
                    let at_other = async {
                        let conn = Self::open(other, me, listen, opts, epoch).await?;
                        match way.node {
                            Some(n) if n != conn.node => Err(format!(
                                "{other} is node {}, not {}",
                                conn.node.short(),
                                n.short()
                            )),
                            _ => Ok(conn),
                        }
                    };
                    let at_addr = Self::open(addr, me, listen, opts, epoch);
                    match way.other_first {
                        true => {
                            staggered(at_other, at_addr, HAPPY_EYEBALLS_DELAY, &addr.to_string())
                                .await
                        }
                        false => {
                            staggered(at_addr, at_other, HAPPY_EYEBALLS_DELAY, &other.to_string())
                                .await
                        }
                    }
                }
            };
            // Known by the address it was found at, wherever it was dialled.
            got.map(|mut conn| {
                if conn.addr != addr {
                    conn.at = Some(conn.addr);
                    conn.addr = addr;
                }
                conn
            })
        };
        let reverse = back.map(|back| async move {
            let conn = back.await?;
            Self::accepted(addr, conn, me, listen, opts, epoch).await
        });
        direct_or_back(direct, reverse, way.back_later).await
    }

    /// A connection the source at `addr` opened to us, as asked ([`crate::reverse`]): the
    /// Hellos are exchanged as if we had dialled.
    pub(super) async fn accepted(
        addr: SocketAddr,
        conn: Accepted,
        me: &Identity,
        listen: Option<SocketAddr>,
        opts: &DownloadOptions,
        epoch: Instant,
    ) -> Result<Self, String> {
        // It carries chunks from now on: the full frame limits.
        let reader = conn.reader.limited(wire::MAX_BODY, wire::MAX_PAYLOAD);
        let stream = (conn.peer, reader, conn.writer, conn.reached);
        Self::hello(addr, stream, me, listen, opts, epoch).await
    }

    async fn hello(
        addr: SocketAddr,
        (peer, reader, writer, reached): Stream,
        me: &Identity,
        listen: Option<SocketAddr>,
        opts: &DownloadOptions,
        epoch: Instant,
    ) -> Result<Self, String> {
        let last_byte = Arc::new(AtomicU64::new(epoch.elapsed().as_millis() as u64));
        let mut conn = SourceConn {
            addr,
            at: None,
            reached,
            node: peer,
            reader: reader.map_inner(|inner| Stamped {
                inner,
                epoch,
                last: last_byte.clone(),
            }),
            last_byte,
            writer,
            scratch: Vec::new(),
        };
        conn.send(&Message::Hello(Hello::new(
            me.node(),
            Role::Transfer,
            listen,
            crate::AGENT,
        )))
        .await?;
        match conn.recv(opts.connect_timeout).await? {
            Message::Hello(h) => match transport::hello::check(peer, &h) {
                Ok(()) => Ok(conn),
                Err(e) => Err(e.to_string()),
            },
            other => Err(format!("answered Hello with {}", other.kind())),
        }
    }

    async fn send(&mut self, msg: &Message) -> Result<(), String> {
        write_message_within(&mut self.writer, msg, &mut self.scratch, SEND_TIMEOUT)
            .await
            .map_err(|e| format!("connection lost: {e}"))
    }

    /// The next message; fails if no byte arrives for `idle`.
    async fn recv(&mut self, idle: Duration) -> Result<Message, String> {
        self.reader
            .read_message_idle(idle)
            .await
            .map_err(read_failure)
    }

    /// Asks for the manifest of `id` and checks the answer
    /// ([`transfer::manifest::check_answer`]).
    pub(super) async fn manifest(
        &mut self,
        id: FileId,
        expected_size: Option<u64>,
        limit: Duration,
    ) -> Result<Manifest, NoManifest> {
        self.send(&Message::GetManifest { request: 0, id })
            .await
            .map_err(NoManifest::Failed)?;
        let answer = self.recv(limit).await.map_err(NoManifest::Failed)?;
        check_answer(id, expected_size, answer).map_err(|e| match e {
            AnswerError::Hostile(why) => NoManifest::Hostile(why),
            AnswerError::Refused {
                kind: TransferErrorKind::Busy,
                ..
            } => NoManifest::Busy(e.to_string()),
            refused => NoManifest::Failed(refused.to_string()),
        })
    }

    /// Starts the connection's reader and writer. Every message read goes to `inputs` as
    /// `into(Ok(msg), room)`, and the first failure as `into(Err(why), None)`, after which the
    /// reader stops. A chunk read waits for room in `budget` (one per download, of
    /// [`read_ahead`]) before it is handed in, with its room, which whoever deals with the
    /// chunk keeps until it is verified and written; the reader reads on once it is handed in. Returns the
    /// writer's queue (the writer sends until it is dropped, then shuts the connection; see
    /// [`transport::link::spawn_writer`]) and the reader task (dropping it stops reading).
    pub(super) fn start<I: Send + 'static>(
        self,
        cap: RateLimit,
        budget: Arc<Semaphore>,
        inputs: Sender<I>,
        into: impl Fn(Result<Message, String>, Option<Room>) -> I + Send + 'static,
    ) -> (Outbox, smol::Task<()>) {
        let (out, writer) = transport::link::spawn_writer(self.writer, MAX_QUEUED, SEND_TIMEOUT);
        let failed = inputs.clone();
        // A write failure ends the reader too, which reports it.
        let (werr_tx, werr_rx) = channel::bounded::<String>(1);
        transport::rt::spawn(async move {
            if let Some(e) = writer.await {
                let _ = werr_tx.try_send(format!("connection lost: {e}"));
            }
        })
        .detach();
        let mut reader = self.reader;
        let reader_task = transport::rt::spawn(async move {
            loop {
                let read = smol::future::or(async { Some(reader.read_message().await) }, async {
                    let why = werr_rx.recv().await.ok()?;
                    Some(Err(ReadError::Io(std::io::Error::other(why))))
                })
                .await;
                let msg = match read {
                    Some(Ok(Some(msg))) => msg,
                    Some(Ok(None)) => {
                        let why = "connection lost: the source closed it".to_string();
                        let _ = failed.send(into(Err(why), None)).await;
                        return;
                    }
                    Some(Err(e)) => {
                        let _ = failed.send(into(Err(read_failure(e)), None)).await;
                        return;
                    }
                    // The writer is gone without an error: the download let it go.
                    None => return,
                };
                // A chunk waits here for room: the next message is not read meanwhile, so what
                // the source sends beyond waits in the socket. (Taken before reading, room
                // would be held by sources with nothing to send, and starve the others.)
                let room = match &msg {
                    Message::Chunk(c) => {
                        cap.take(c.data.len() as u64).await;
                        Some(budget.acquire_arc().await)
                    }
                    _ => None,
                };
                if inputs.send(into(Ok(msg), room)).await.is_err() {
                    return;
                }
            }
        });
        (out, reader_task)
    }
}

/// Why reading from a source failed, as its report says.
fn read_failure(e: ReadError) -> String {
    match e {
        ReadError::Timeout(d) => format!("no answer within {d:?}"),
        ReadError::Decode(e) => format!("sent an invalid message: {e}"),
        other => format!("connection lost: {other}"),
    }
}

/// How long the second address of a source waits for the first to connect (RFC 8305
/// recommends 250 ms).
pub(crate) const HAPPY_EYEBALLS_DELAY: Duration = Duration::from_millis(250);

/// How long a connection back waits for dialling a source known reachable to fail.
pub(crate) const BACK_DELAY: Duration = Duration::from_secs(2);

/// How to reach one source: the address to dial first, maybe another of the other family,
/// and whether a connection back waits for the dialling ([`SourceConn::connect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Way {
    /// Where the source was found (dialled first unless `other_first`).
    pub addr: SocketAddr,
    /// The source's address of the other family, dialled [`HAPPY_EYEBALLS_DELAY`] after
    /// `addr` (or before it, with `other_first`).
    pub other: Option<SocketAddr>,
    /// The node the hits named at both addresses: whoever answers at `other` must be it.
    pub node: Option<NodeId>,
    /// `other` is dialled first instead, and `addr` after the delay.
    pub other_first: bool,
    /// The address dialled first is known reachable: a connection back is asked for only if
    /// dialling fails or takes [`BACK_DELAY`].
    pub back_later: bool,
}

impl Way {
    /// The address dialled first, and the other (if any) after: the first is also the one
    /// a connection back is asked for (a hole punch dials it).
    pub fn order(&self) -> (SocketAddr, Option<SocketAddr>) {
        match (self.other_first, self.other) {
            (true, Some(other)) => (other, Some(self.addr)),
            _ => (self.addr, self.other),
        }
    }

    /// Only `addr`, and a connection back at once.
    pub fn to(addr: SocketAddr) -> Way {
        Way {
            addr,
            other: None,
            node: None,
            other_first: false,
            back_later: false,
        }
    }
}

/// `direct`, with `back` (a connection back) beside it: at once, or with `later` once
/// `direct` failed or took [`BACK_DELAY`]. The first to succeed; if both fail, both reasons.
pub(crate) async fn direct_or_back<T>(
    direct: impl Future<Output = Result<T, String>>,
    back: Option<impl Future<Output = Result<T, String>>>,
    later: bool,
) -> Result<T, String> {
    match back {
        None => direct.await,
        Some(back) => {
            let delay = if later { BACK_DELAY } else { Duration::ZERO };
            staggered(direct, back, delay, "connecting back").await
        }
    }
}

/// `a`, and `b` once `a` failed or `delay` passed: the first to succeed; if both fail, both
/// reasons (`b`'s after `b_is`).
async fn staggered<T>(
    a: impl Future<Output = Result<T, String>>,
    b: impl Future<Output = Result<T, String>>,
    delay: Duration,
    b_is: &str,
) -> Result<T, String> {
    let (failed, on_failure) = smol::channel::bounded::<()>(1);
    let a = async {
        let got = a.await;
        if got.is_err() {
            let _ = failed.try_send(());
        }
        got
    };
    let b = async {
        if !delay.is_zero() {
            smol::future::or(
                async {
                    smol::Timer::after(delay).await;
                },
                async {
                    let _ = on_failure.recv().await;
                },
            )
            .await;
        }
        b.await
    };
    first_ok(a, b, b_is).await
}

/// The first of `a` and `b` to succeed; if both fail, both reasons (`b`'s after `b_is`).
pub(crate) async fn first_ok<T>(
    a: impl Future<Output = Result<T, String>>,
    b: impl Future<Output = Result<T, String>>,
    b_is: &str,
) -> Result<T, String> {
    let (mut a, mut b) = (Box::pin(a), Box::pin(b));
    let (mut a_err, mut b_err): (Option<String>, Option<String>) = (None, None);
    loop {
        let next = smol::future::or(
            async {
                match a_err {
                    None => Either::A(a.as_mut().await),
                    Some(_) => std::future::pending().await,
                }
            },
            async {
                match b_err {
                    None => Either::B(b.as_mut().await),
                    Some(_) => std::future::pending().await,
                }
            },
        )
        .await;
        match next {
            Either::A(Ok(t)) | Either::B(Ok(t)) => return Ok(t),
            Either::A(Err(e)) => a_err = Some(e),
            Either::B(Err(e)) => b_err = Some(e),
        }
        if let (Some(a), Some(b)) = (&a_err, &b_err) {
            return Err(format!("{a}; {b_is}: {b}"));
        }
    }
}

enum Either<T> {
    A(T),
    B(T),
}
