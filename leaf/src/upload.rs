//! Serving chunks to other leaves.
//!
//! A downloader connects, says Hello, and sends manifest and chunk requests, several at a time.
//! Requests name content ids only: the file is looked up among this node's shares, so nothing
//! the network sends is ever used as a path, and a file that changed on disk since it was hashed
//! is not served under its old id.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use smol::net::TcpStream;
use superpeer::net::{write_message, FrameReader};
use wire::{ChunkMsg, Hello, ManifestMsg, Message, Role, TransferErrorKind, PROTOCOL_VERSION};

use crate::node::Inner;

/// How long a connecting downloader has to say Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// A transfer connection with no request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// Serves one downloader's connection until it closes or misbehaves.
pub(crate) async fn serve(node: Arc<Inner>, stream: TcpStream) {
    let peer = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".into());
    if let Err(reason) = serve_inner(&node, stream).await {
        log::info!("upload connection from {peer} closed: {reason}");
    }
}

async fn serve_inner(node: &Inner, stream: TcpStream) -> Result<(), String> {
    let mut writer = stream.clone();
    let mut reader = FrameReader::new(stream);
    let mut scratch = Vec::new();
    match reader
        .read_message_within(HELLO_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?
    {
        Message::Hello(h) if h.version == PROTOCOL_VERSION => {}
        Message::Hello(h) => return Err(format!("protocol version {}", h.version)),
        other => return Err(format!("{} before Hello", other.kind())),
    }
    let hello = Message::Hello(Hello {
        version: PROTOCOL_VERSION,
        node: node.node_id,
        role: Role::Leaf,
        listen: node.listen,
        agent: crate::AGENT.into(),
    });
    write_message(&mut writer, &hello, &mut scratch)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let msg = match reader.read_message_within(IDLE_TIMEOUT).await {
            Ok(m) => m,
            Err(superpeer::net::ReadError::Io(e))
                if e.kind() == std::io::ErrorKind::UnexpectedEof =>
            {
                return Ok(())
            }
            Err(e) => return Err(e.to_string()),
        };
        let reply = match msg {
            Message::GetManifest { request, id } => match node.shares.read().unwrap().get(&id) {
                Some(f) => {
                    let m = f.manifest();
                    Message::Manifest(ManifestMsg {
                        request,
                        id,
                        size: m.size,
                        chunk_size: m.chunk_size,
                        cvs: m.cvs,
                    })
                }
                None => not_shared(request, id),
            },
            Message::GetChunk { request, id, index } => {
                let file = node.shares.read().unwrap().get(&id);
                match file {
                    None => not_shared(request, id),
                    Some(f) => {
                        let m = f.manifest();
                        if index as u64 >= m.chunk_count() {
                            Message::TransferError {
                                request,
                                id,
                                kind: TransferErrorKind::BadIndex,
                                message: format!("chunk {index} of {}", m.chunk_count()),
                            }
                        } else {
                            let range = m.chunk_range(index as u64);
                            let path = f.local.clone();
                            let read = smol::unblock(move || {
                                let file = std::fs::File::open(&path)?;
                                let mut data = vec![0u8; (range.end - range.start) as usize];
                                file.read_exact_at(&mut data, range.start)?;
                                Ok::<_, std::io::Error>(data)
                            })
                            .await;
                            match read {
                                Ok(data) => {
                                    node.uploaded_chunks.fetch_add(1, Ordering::Relaxed);
                                    node.uploaded_bytes
                                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                                    Message::Chunk(ChunkMsg {
                                        request,
                                        id,
                                        index,
                                        data,
                                    })
                                }
                                Err(e) => {
                                    log::warn!("cannot read {}: {e}", f.local.display());
                                    Message::TransferError {
                                        request,
                                        id,
                                        kind: TransferErrorKind::Unavailable,
                                        message: "the file cannot be read".into(),
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Message::Ping { nonce } => Message::Pong { nonce },
            Message::Goodbye { .. } => return Ok(()),
            other => {
                let reason = format!("unexpected {} on a transfer connection", other.kind());
                let bye = Message::Goodbye {
                    reason: reason.clone(),
                };
                let _ = write_message(&mut writer, &bye, &mut scratch).await;
                return Err(reason);
            }
        };
        write_message(&mut writer, &reply, &mut scratch)
            .await
            .map_err(|e| e.to_string())?;
    }
}

fn not_shared(request: u32, id: wire::FileId) -> Message {
    Message::TransferError {
        request,
        id,
        kind: TransferErrorKind::NotShared,
        message: "not shared here".into(),
    }
}
