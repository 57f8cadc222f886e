//! Moving a relay's bytes: the two ends' connections, once `topology::SuperPeer` paired them
//! ([`topology::RelayJoin::Paired`]), are spliced, capped in bytes and time.
//!
//! Each end reached us over Noise, was sent our Hello, and sent `RelayJoin` as its first
//! message (instead of a Hello); the connection's writer task handed its writer back. The
//! requester's
//! end is told `RelayReady` first and answers `RelayGo`; only then is the leaf's end told
//! `RelayReady`. From there on neither end writes through our Noise session again: the leaf
//! opens its own session with the requester, and we copy the raw bytes of both sockets,
//! which are theirs, encrypted end to end. Neither end sends anything between its last
//! message to us and its first to the other, so no byte meant for the other is read by our
//! decryption.

use std::time::Duration;

use smol::io::{AsyncReadExt, AsyncWriteExt};
use smol::net::TcpStream;
use transport::net::{write_message_within, FrameReader};
use transport::secure::{SecureReader, SecureWriter};
use wire::Message;

/// One end of a relay, past its `RelayJoin`.
pub(crate) struct End {
    /// The socket itself, for the raw bytes after `RelayReady`.
    pub(crate) raw: TcpStream,
    pub(crate) reader: FrameReader<SecureReader<TcpStream>>,
    pub(crate) writer: SecureWriter<TcpStream>,
    /// Its place among the node's connections.
    pub(crate) _admitted: Option<transport::limits::Admitted>,
}

/// How long an end has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// Bytes copied at a time.
const COPY_BUF: usize = 64 << 10;

/// Tells both ends, then copies between them until either closes, `max_bytes` have passed
/// (both ways together) or `max_time` is up. Returns the bytes carried, and why it ended.
pub(crate) async fn splice(
    mut requester: End,
    mut leaf: End,
    max_bytes: u64,
    max_time: Duration,
) -> (u64, String) {
    let mut scratch = Vec::new();
    let told = async {
        write_message_within(
            &mut requester.writer,
            &Message::RelayReady,
            &mut scratch,
            ANSWER_WITHIN,
        )
        .await
        .map_err(|e| format!("requester: {e}"))?;
        match requester.reader.read_message_within(ANSWER_WITHIN).await {
            Ok(Message::RelayGo) => {}
            Ok(other) => return Err(format!("requester answered {}", other.kind())),
            Err(e) => return Err(format!("requester: {e}")),
        }
        write_message_within(
            &mut leaf.writer,
            &Message::RelayReady,
            &mut scratch,
            ANSWER_WITHIN,
        )
        .await
        .map_err(|e| format!("leaf: {e}"))
    };
    if let Err(why) = told.await {
        return (0, why);
    }
    let carried = std::sync::atomic::AtomicU64::new(0);
    let copy = |mut from: TcpStream, mut to: TcpStream| {
        let carried = &carried;
        async move {
            let mut buf = vec![0; COPY_BUF];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => return "an end closed".to_string(),
                    Ok(n) => n,
                };
                let total = carried.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                if total + n as u64 > max_bytes {
                    return format!("over {max_bytes} bytes (relay_max_bytes)");
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return "an end closed".to_string();
                }
            }
        }
    };
    let (a, b) = (requester.raw.clone(), leaf.raw.clone());
    let why = smol::future::or(
        smol::future::or(copy(a.clone(), b.clone()), copy(b, a)),
        async {
            // (A duration past the clock's end never fires.)
            smol::Timer::after(max_time).await;
            format!("{max_time:?} passed (relay_max_time)")
        },
    )
    .await;
    let _ = requester.raw.shutdown(std::net::Shutdown::Both);
    let _ = leaf.raw.shutdown(std::net::Shutdown::Both);
    (carried.into_inner(), why)
}
