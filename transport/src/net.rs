//! Framed connections over any async byte stream: read whole messages, write messages.
//!
//! [`FrameReader`] loops between "is a whole frame buffered?" and reading more bytes, grows its
//! buffer only to the size a frame's header announces (which `wire` has already checked against
//! the maximum), and treats end-of-file inside a frame as an error, apart from a clean
//! end-of-file between frames.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use smol::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use smol::net::TcpStream;
use wire::{DecodeError, Message};

/// The smallest free space offered to a read.
const READ_SIZE: usize = 64 << 10;
/// A message payload shorter than this is copied behind its header and written at once; a
/// longer one (a chunk) is written from where it is.
const COPY_BELOW: usize = 16 << 10;
/// A buffer larger than this is given back once drained.
const KEEP_BUFFER: usize = 2 << 20;

/// Why a message could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stream failed.
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid frame or message.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// The peer closed the connection in the middle of a frame.
    #[error("connection closed in the middle of a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// No complete message arrived in time.
    #[error("no message within {0:?}")]
    Timeout(Duration),
}

/// Reads whole frames from a byte stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The largest body and payload taken from this stream.
    max: (u32, u32),
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a stream.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: vec![0; READ_SIZE],
            start: 0,
            end: 0,
            max: (wire::MAX_BODY, wire::MAX_PAYLOAD),
        }
    }

    /// Takes frames of at most `max_body` and `max_payload` bytes only: a larger one is an
    /// error as soon as its header arrives, before any of it is buffered. So what a
    /// connection may make this node hold is bounded by what its kind of connection carries.
    pub fn limited(mut self, max_body: u32, max_payload: u32) -> Self {
        self.max = (max_body, max_payload);
        self
    }

    /// The same reader over `f(inner)`, keeping what is buffered and the limits: to wrap the
    /// stream once its first frame has said what the connection is for.
    pub fn map_inner<S>(self, f: impl FnOnce(R) -> S) -> FrameReader<S> {
        FrameReader {
            inner: f(self.inner),
            buf: self.buf,
            start: self.start,
            end: self.end,
            max: self.max,
        }
    }

    /// The next value that `decode` finds, `Ok(None)` at a clean end of stream.
    pub async fn read_with<T>(
        &mut self,
        decode: impl Fn(&[u8]) -> Result<Option<(T, usize)>, DecodeError>,
    ) -> Result<Option<T>, ReadError> {
        self.read_with_idle(decode, None).await
    }

    /// The next protocol message. Gives up only when no byte at all arrives for `idle`: a
    /// slow peer that keeps sending is waited for, a silent one is not.
    pub async fn read_message_idle(&mut self, idle: Duration) -> Result<Message, ReadError> {
        self.read_with_idle(wire::decode, Some(idle))
            .await?
            .ok_or_else(|| {
                ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ))
            })
    }

    async fn read_with_idle<T>(
        &mut self,
        decode: impl Fn(&[u8]) -> Result<Option<(T, usize)>, DecodeError>,
        idle: Option<Duration>,
    ) -> Result<Option<T>, ReadError> {
        loop {
            let pending = &self.buf[self.start..self.end];
            let frame = wire::frame::frame_len_within(pending, self.max.0, self.max.1)?;
            if let Some((value, used)) = decode(pending)? {
                self.start += used;
                if self.start == self.end && self.buf.len() > KEEP_BUFFER {
                    // Give back a buffer that grew for one very large frame.
                    self.buf = vec![0; READ_SIZE];
                    (self.start, self.end) = (0, 0);
                }
                return Ok(Some(value));
            }
            // Room for the whole frame if its header is here (`wire` has checked its length
            // against the maximum), and at least one read's worth of free space.
            let have = self.end - self.start;
            let want = frame.unwrap_or(0).max(have + READ_SIZE);
            if self.buf.len() - self.start < want {
                self.buf.copy_within(self.start..self.end, 0);
                (self.start, self.end) = (0, have);
                if self.buf.len() < want {
                    self.buf.resize(want, 0);
                }
            }
            let read = self.inner.read(&mut self.buf[self.end..]);
            let n = match idle {
                None => read.await?,
                Some(limit) => {
                    smol::future::or(async { read.await.map_err(ReadError::Io) }, async {
                        smol::Timer::after(limit).await;
                        Err(ReadError::Timeout(limit))
                    })
                    .await?
                }
            };
            if n == 0 {
                return match have {
                    0 => Ok(None),
                    held => Err(ReadError::Truncated(held)),
                };
            }
            self.end += n;
        }
    }

    /// The next protocol message, `Ok(None)` at a clean end of stream.
    pub async fn read_message(&mut self) -> Result<Option<Message>, ReadError> {
        self.read_with(wire::decode).await
    }

    /// The next message within `limit`; end of stream is an error here.
    pub async fn read_message_within(&mut self, limit: Duration) -> Result<Message, ReadError> {
        let read = async {
            self.read_message().await?.ok_or_else(|| {
                ReadError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed",
                ))
            })
        };
        smol::future::or(read, async {
            smol::Timer::after(limit).await;
            Err(ReadError::Timeout(limit))
        })
        .await
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// Encodes `msg` into `scratch` and writes it, giving up after `limit` (a peer that does not
/// read must not hold us forever).
pub async fn write_message_within<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
    scratch: &mut Vec<u8>,
    limit: Duration,
) -> io::Result<()> {
    smol::future::or(write_message(w, msg, scratch), async {
        smol::Timer::after(limit).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("peer not reading for {limit:?}"),
        ))
    })
    .await
}

/// Encodes `msg` and writes it: its header and body from `scratch`, then a chunk's bytes from
/// the message itself (not copied into a frame buffer), then the trailer.
pub async fn write_message<W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &Message,
    scratch: &mut Vec<u8>,
) -> io::Result<()> {
    scratch.clear();
    let (payload, trailer) = wire::frame::encode_parts(msg, scratch);
    if payload.len() < COPY_BELOW {
        // Small: one write (a plain stream would otherwise send three segments).
        scratch.extend_from_slice(payload);
        scratch.extend_from_slice(&trailer);
        w.write_all(scratch).await?;
    } else {
        w.write_all(scratch).await?;
        w.write_all(payload).await?;
        w.write_all(&trailer).await?;
    }
    // An encrypting writer may hold the last bytes until flushed.
    w.flush().await
}

/// Connects to `addr` and runs the Noise handshake as its initiator, each step within `limit`.
pub async fn connect_secure(
    addr: SocketAddr,
    identity: &crate::identity::Identity,
    limit: Duration,
) -> io::Result<crate::secure::SecureStream<TcpStream>> {
    let stream = connect(addr, limit).await?;
    crate::secure::connect(stream, identity, limit)
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, format!("{addr}: {e}")))
}

/// Connects to `addr`, giving up after `limit`.
pub async fn connect(addr: SocketAddr, limit: Duration) -> io::Result<TcpStream> {
    let stream = smol::future::or(TcpStream::connect(addr), async {
        smol::Timer::after(limit).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connecting to {addr} timed out"),
        ))
    })
    .await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A socket that may share its port with the node's listener (SO_REUSEADDR and
/// SO_REUSEPORT), so connections can leave from the port others connect to: what a NAT maps
/// for the listen port is then what it maps for them too, as hole punching needs.
fn reusable(addr: SocketAddr) -> io::Result<socket2::Socket> {
    bound(addr, true, false)
}

/// A non-blocking TCP socket bound to `addr`, sharing its port (`reuse`: SO_REUSEADDR and
/// SO_REUSEPORT) or not, and (`only_v6`) taking IPv6 only.
fn bound(addr: SocketAddr, reuse: bool, only_v6: bool) -> io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if only_v6 {
        socket.set_only_v6(true)?;
    }
    if reuse {
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Listens at `addr` on a port that [`connect_from`] may also use, with up to `backlog`
/// connections completed by the kernel and waiting to be accepted.
///
/// The port is first bound plainly and let go: that fails if anything holds it (another
/// node's listener among them, which SO_REUSEPORT alone would let us share and split its
/// connections with), and picks a free port for port 0.
pub fn listen_reusable(addr: SocketAddr, backlog: i32) -> io::Result<smol::net::TcpListener> {
    let free = std::net::TcpListener::bind(addr)?.local_addr()?;
    let socket = reusable(free)?;
    socket.listen(backlog)?;
    let std: std::net::TcpListener = socket.into();
    smol::net::TcpListener::try_from(std)
}

/// Listens on every IPv6 address (IPv6 only) on `port`, beside a listener on every IPv4
/// address on the same port: how a dual-stack node takes connections of both families. As
/// [`listen_reusable`], the port is checked free first.
pub fn listen_ipv6_beside(port: u16, backlog: i32) -> io::Result<smol::net::TcpListener> {
    let addr = SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    drop(bound(addr, false, true)?);
    let socket = bound(addr, true, true)?;
    socket.listen(backlog)?;
    let std: std::net::TcpListener = socket.into();
    smol::net::TcpListener::try_from(std)
}

/// Whether this host has a route to global IPv6 addresses, from an address of its own that
/// is neither loopback nor link-local. Only the routing table is asked: no packet is sent.
pub fn has_ipv6_route() -> bool {
    let Ok(socket) = std::net::UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)) else {
        return false;
    };
    // A documentation address: any global one picks the same route (the default).
    let global = std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    if socket.connect((global, 9)).is_err() {
        return false;
    }
    match socket.local_addr() {
        Ok(SocketAddr::V6(a)) => {
            let ip = a.ip();
            !ip.is_loopback() && !ip.is_unspecified() && (ip.segments()[0] & 0xffc0) != 0xfe80
        }
        _ => false,
    }
}

/// Connects to `to` from `from` (the listen address, usually), giving up after `limit`.
/// Two nodes doing this towards each other at once open one connection through both their
/// NATs (TCP simultaneous open).
pub async fn connect_from(
    from: SocketAddr,
    to: SocketAddr,
    limit: Duration,
) -> io::Result<TcpStream> {
    // Another family than `to`'s: any address of that family, and any port.
    let from = match (from.is_ipv4(), to.is_ipv4()) {
        (a, b) if a == b => from,
        (_, true) => SocketAddr::from(([0, 0, 0, 0], 0)),
        (_, false) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    };
    let socket = reusable(from)?;
    match socket.connect(&to.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc_einprogress()) => {}
        Err(e) => return Err(e),
    }
    let stream = smol::Async::new(std::net::TcpStream::from(socket))?;
    let connected = smol::future::or(
        async {
            stream.writable().await?;
            match stream.get_ref().take_error()? {
                Some(e) => Err(e),
                None => Ok(()),
            }
        },
        async {
            smol::Timer::after(limit).await;
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {to} timed out"),
            ))
        },
    )
    .await;
    connected?;
    let stream = TcpStream::from(stream);
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// EINPROGRESS: a non-blocking connect under way (115 on Linux).
fn libc_einprogress() -> i32 {
    rustix::io::Errno::INPROGRESS.raw_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_from_the_listen_port_while_it_listens() {
        smol::block_on(async {
            let ours = listen_reusable("127.0.0.1:0".parse().unwrap(), 8).unwrap();
            let from = ours.local_addr().unwrap();
            let theirs = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let to = theirs.local_addr().unwrap();
            let limit = Duration::from_secs(5);
            let (out, accepted) =
                smol::future::zip(connect_from(from, to, limit), theirs.accept()).await;
            out.unwrap();
            assert_eq!(accepted.unwrap().1, from, "it came from our listen port");
            // Its port is not shared with another listener, ours or anyone's.
            let err = listen_reusable(from, 8).expect_err("the port is taken");
            assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
            // And the listener still takes connections.
            let (inbound, got) = smol::future::zip(TcpStream::connect(from), ours.accept()).await;
            inbound.unwrap();
            got.unwrap();
            // Nothing there: a clear error, in time.
            drop(theirs);
            let err = connect_from(from, to, limit).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused, "{err}");
        });
    }

    /// A node listening on every IPv4 address takes IPv6 connections on the same port through
    /// a second listener, and each family arrives at its own.
    #[test]
    fn an_ipv6_listener_shares_the_port_of_an_ipv4_one() {
        smol::block_on(async {
            let v4 = listen_reusable("0.0.0.0:0".parse().unwrap(), 4).unwrap();
            let port = v4.local_addr().unwrap().port();
            let v6 = match listen_ipv6_beside(port, 4) {
                Ok(l) => l,
                // A host without IPv6 at all (the kernel's disabled): nothing to check.
                Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable => return,
                Err(e) => panic!("listening on [::]:{port}: {e}"),
            };
            assert_eq!(v6.local_addr().unwrap().port(), port);
            let (c6, a6) = smol::future::zip(
                connect(
                    SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port)),
                    Duration::from_secs(5),
                ),
                async {
                    smol::future::or(async { v6.accept().await.ok() }, async {
                        smol::Timer::after(Duration::from_secs(5)).await;
                        None
                    })
                    .await
                },
            )
            .await;
            c6.expect("connecting to [::1] (no IPv6 on loopback?)");
            assert!(a6.expect("accepted within 5 s").1.is_ipv6());
            let (c4, a4) =
                smol::future::zip(TcpStream::connect(("127.0.0.1", port)), v4.accept()).await;
            c4.unwrap();
            assert!(a4.unwrap().1.is_ipv4());
            // Not shared with another node's IPv6 listener.
            let err = listen_ipv6_beside(port, 4).expect_err("the port is taken");
            assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        });
    }

    #[test]
    fn reads_frames_split_anywhere_and_large_payloads() {
        smol::block_on(async {
            let big = Message::Chunk(wire::ChunkMsg {
                request: 1,
                id: wire::FileId([1; 32]),
                index: 0,
                data: vec![7; 1 << 20],
            });
            let mut bytes = Vec::new();
            for m in [
                Message::Ping { nonce: 1 },
                big.clone(),
                Message::Pong { nonce: 2 },
            ] {
                wire::encode(&m, &mut bytes);
            }
            // A reader that hands out 1000 bytes at a time.
            struct Dribble(Vec<u8>, usize);
            impl AsyncRead for Dribble {
                fn poll_read(
                    mut self: std::pin::Pin<&mut Self>,
                    _: &mut std::task::Context<'_>,
                    out: &mut [u8],
                ) -> std::task::Poll<io::Result<usize>> {
                    let n = out.len().min(1000).min(self.0.len() - self.1);
                    out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                    self.1 += n;
                    std::task::Poll::Ready(Ok(n))
                }
            }
            let mut r = FrameReader::new(Dribble(bytes.clone(), 0));
            assert_eq!(
                r.read_message().await.unwrap(),
                Some(Message::Ping { nonce: 1 })
            );
            assert_eq!(r.read_message().await.unwrap(), Some(big));
            assert_eq!(
                r.read_message().await.unwrap(),
                Some(Message::Pong { nonce: 2 })
            );
            assert!(r.read_message().await.unwrap().is_none());

            let cut = bytes.len() - 3;
            let mut r = FrameReader::new(Dribble(bytes[..cut].to_vec(), 0));
            r.read_message().await.unwrap();
            r.read_message().await.unwrap();
            assert!(matches!(
                r.read_message().await,
                Err(ReadError::Truncated(_))
            ));
        })
    }
}
