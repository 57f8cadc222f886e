//! The plumbing every connection of either role runs on after its handshake, written once:
//!
//! - [`spawn_writer`]: a connection's writer task and its [`Outbox`]. Messages are encoded as
//!   they are queued and the bytes not yet written are counted, so a peer that does not read is
//!   cut off at a cap (`Limits::max_pending_bytes`) instead of making us buffer without bound. A
//!   write that makes no progress for the write timeout ends the connection.
//! - [`accept_loop`]: accepts connections, admits each through the [`Gate`] (its connection
//!   limits and bans) and hands the admitted ones to a task of their own; an accept that fails
//!   (out of descriptors, say) backs off instead of spinning.

use std::future::Future;
use std::net::{Shutdown, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::channel::{self, Receiver, Sender};
use smol::io::AsyncWriteExt;
use smol::net::{TcpListener, TcpStream};
use wire::Message;

use crate::limits::{Admitted, Gate};
use crate::secure::SecureWriter;

/// Queuing a message would put more unread bytes in a connection's queue than its cap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{pending} bytes not read yet; the cap is {cap}")]
pub struct OutboxFull {
    /// Bytes queued and not yet written.
    pub pending: usize,
    /// The cap.
    pub cap: usize,
}

/// The handle on a connection's writer task: see the module docs. Dropping every clone lets
/// the writer send what is queued and then close the connection.
#[derive(Debug, Clone)]
pub struct Outbox {
    tx: Sender<Vec<u8>>,
    pending: Arc<AtomicUsize>,
    cap: usize,
    /// Where the writer task hands its writer back ([`Outbox::take_writer`]).
    handed: Receiver<SecureWriter<TcpStream>>,
}

impl Outbox {
    /// Queues `msg`, or says it would go past the cap (the message is then not queued).
    pub fn send(&self, msg: &Message) -> Result<(), OutboxFull> {
        let mut bytes = Vec::new();
        wire::encode(msg, &mut bytes);
        let pending = self.pending.load(Ordering::Relaxed);
        if pending + bytes.len() > self.cap {
            return Err(OutboxFull {
                pending,
                cap: self.cap,
            });
        }
        self.pending.fetch_add(bytes.len(), Ordering::Relaxed);
        let _ = self.tx.try_send(bytes);
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// Stops the writer task once what is queued is written, and takes its writer back
    /// (the connection stays open): for a connection that turns into something else, a relay's
    /// end. `None` if the task had already stopped.
    pub async fn take_writer(&self) -> Option<SecureWriter<TcpStream>> {
        // An empty message is never queued otherwise: it means "hand the writer back".
        self.tx.send(Vec::new()).await.ok()?;
        self.handed.recv().await.ok()
    }
}

/// Starts the writer task of a connection whose queue may hold at most `cap` unwritten bytes;
/// a write that does not complete within `timeout` ends it. The task ends (and shuts the
/// connection down) when every [`Outbox`] is dropped and the queue is written, or on the first
/// failed write; it returns why it stopped, if a write failed.
pub fn spawn_writer(
    writer: SecureWriter<TcpStream>,
    cap: usize,
    timeout: Duration,
) -> (Outbox, smol::Task<Option<String>>) {
    let (tx, rx) = channel::unbounded::<Vec<u8>>();
    let (hand, handed) = channel::bounded(1);
    let pending = Arc::new(AtomicUsize::new(0));
    let task = crate::rt::spawn(write_loop(writer, rx, pending.clone(), timeout, hand));
    let outbox = Outbox {
        tx,
        pending,
        cap,
        handed,
    };
    (outbox, task)
}

async fn write_loop(
    mut stream: SecureWriter<TcpStream>,
    rx: Receiver<Vec<u8>>,
    pending: Arc<AtomicUsize>,
    timeout: Duration,
    hand: Sender<SecureWriter<TcpStream>>,
) -> Option<String> {
    let mut failed = None;
    while let Ok(bytes) = rx.recv().await {
        if bytes.is_empty() {
            // Asked for the writer back: everything before is written; the connection lives.
            let _ = stream.flush().await;
            let _ = hand.send(stream).await;
            return None;
        }
        let write = async {
            stream.write_all(&bytes).await?;
            // Every message is flushed: the encrypting writer holds less than a transport
            // message of plaintext until then, and under a steady stream (a query flood) the
            // queue may never be empty, which held honest messages back for seconds.
            stream.flush().await?;
            Ok::<_, std::io::Error>(())
        };
        let written = smol::future::or(write, async {
            smol::Timer::after(timeout).await;
            Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("peer not reading for {timeout:?}"),
            ))
        })
        .await;
        pending.fetch_sub(bytes.len(), Ordering::Relaxed);
        if let Err(e) = written {
            failed = Some(format!("write failed: {e}"));
            break;
        }
    }
    let _ = stream.flush().await;
    let _ = stream.get_ref().shutdown(Shutdown::Both);
    failed
}

/// Accepts connections on `listener` until it is dropped (the task cancelled). Each one the
/// gate admits gets `TCP_NODELAY` and is handed to `handle` in a task of its own, with its
/// [`Admitted`] ticket (hold it as long as the connection lasts). `what` names the connections
/// in the log ("a connection", "a download connection").
pub async fn accept_loop<F, Fut>(listener: TcpListener, gate: Arc<Gate>, what: &str, handle: F)
where
    F: Fn(TcpStream, SocketAddr, Admitted) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            // An IPv4 peer of a dual-stack listener (`[::]`) comes as `::ffff:a.b.c.d`: it is
            // known by its IPv4 address everywhere (bans, per-address counts, the address a
            // leaf is seen at), whichever socket it came through.
            Ok((stream, remote)) => {
                let remote = canonical(remote);
                match gate.admit(remote, Instant::now()) {
                    Ok(admitted) => {
                        let _ = stream.set_nodelay(true);
                        crate::rt::spawn(handle(stream, remote, admitted)).detach();
                    }
                    Err(trip) => log::warn!("refusing {what} from {remote}: {trip}"),
                }
            }
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                log::warn!("accepting {what} failed: {e}");
                smol::Timer::after(Duration::from_millis(100)).await;
            }
        }
    }
}

/// `addr` with an IPv4-mapped IPv6 address as the IPv4 address it is.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::limits::Limits;
    use crate::net::FrameReader;

    #[test]
    fn an_ipv4_peer_of_a_dual_stack_listener_is_known_by_its_ipv4_address() {
        let mapped: SocketAddr = "[::ffff:80.77.1.2]:7001".parse().unwrap();
        assert_eq!(canonical(mapped), "80.77.1.2:7001".parse().unwrap());
        for same in ["80.77.1.2:7001", "[2001:db8::1]:7001", "[::1]:7001"] {
            let a: SocketAddr = same.parse().unwrap();
            assert_eq!(canonical(a), a, "{same}");
        }
    }

    #[test]
    fn a_queue_at_its_cap_refuses_more_and_a_reading_peer_gets_everything_in_order() {
        smol::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let gate = Gate::new(Limits::default());
            let (accepted_tx, accepted_rx) = channel::unbounded();
            let server =
                crate::rt::spawn(accept_loop(listener, gate, "a test", move |s, _, adm| {
                    let tx = accepted_tx.clone();
                    async move {
                        let _ = tx.send((s, adm)).await;
                    }
                }));
            let (a, b) = (Identity::generate(), Identity::generate());
            let client = crate::rt::spawn(async move {
                let s = TcpStream::connect(addr).await.unwrap();
                crate::secure::connect(s, &a, Duration::from_secs(5))
                    .await
                    .unwrap()
            });
            let (stream, _admitted) = accepted_rx.recv().await.unwrap();
            let secure = crate::secure::accept(stream, &b, Duration::from_secs(5))
                .await
                .unwrap();
            let theirs = client.await;
            // A cap of three small messages: the fourth does not fit while none is written.
            let ping = Message::Ping { nonce: 1 };
            let mut one = Vec::new();
            wire::encode(&ping, &mut one);
            let (out, writer) = spawn_writer(secure.writer, 3 * one.len(), Duration::from_secs(5));
            // A live writer drains into the socket buffers faster than a test can fill them, so
            // the cap is checked on a queue no writer drains (the peer that never reads).
            let parked = Outbox {
                tx: channel::unbounded().0,
                pending: Arc::new(AtomicUsize::new(0)),
                cap: 3 * one.len(),
                handed: channel::bounded(1).1,
            };
            for _ in 0..3 {
                parked.send(&ping).unwrap();
            }
            let full = parked.send(&ping).unwrap_err();
            assert_eq!(full.pending, 3 * one.len());
            assert_eq!(parked.pending(), 3 * one.len());
            // A reading peer gets every message, in order, then the close.
            for nonce in 0..100 {
                while out.send(&Message::Ping { nonce }).is_err() {
                    smol::Timer::after(Duration::from_millis(1)).await;
                }
            }
            drop(out);
            let mut reader = FrameReader::new(theirs.reader);
            for nonce in 0..100 {
                assert_eq!(
                    reader.read_message().await.unwrap(),
                    Some(Message::Ping { nonce })
                );
            }
            assert_eq!(reader.read_message().await.unwrap(), None, "closed after");
            assert_eq!(writer.await, None, "no write failed");
            server.cancel().await;
        });
    }

    #[test]
    fn a_writer_handed_back_leaves_the_connection_open_after_what_was_queued() {
        smol::block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (a, b) = (Identity::generate(), Identity::generate());
            let client = crate::rt::spawn(async move {
                let s = TcpStream::connect(addr).await.unwrap();
                crate::secure::connect(s, &a, Duration::from_secs(5))
                    .await
                    .unwrap()
            });
            let (stream, _) = listener.accept().await.unwrap();
            let secure = crate::secure::accept(stream, &b, Duration::from_secs(5))
                .await
                .unwrap();
            let theirs = client.await;
            let (out, task) = spawn_writer(secure.writer, 1 << 20, Duration::from_secs(5));
            out.send(&Message::Ping { nonce: 1 }).unwrap();
            let mut writer = out.take_writer().await.expect("the writer comes back");
            assert_eq!(task.await, None, "the task ended without a failed write");
            assert!(out.take_writer().await.is_none(), "only once");
            // Still open: the writer goes on where the task stopped.
            let mut scratch = Vec::new();
            let pong = Message::Pong { nonce: 2 };
            crate::net::write_message(&mut writer, &pong, &mut scratch)
                .await
                .unwrap();
            let mut reader = FrameReader::new(theirs.reader);
            assert_eq!(
                reader.read_message().await.unwrap(),
                Some(Message::Ping { nonce: 1 })
            );
            assert_eq!(reader.read_message().await.unwrap(), Some(pong));
        });
    }
}
