//! One source of a download: the connection (Noise, then Hello), and the task that drives its
//! [`transfer::SourceSession`] until the session ends, the download is over, or the disk fails.
//! The session decides; this code moves messages, verifies and writes chunks off the executor,
//! and reports to the download's shared state.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_listener::Event;
use smol::net::TcpStream;
use transfer::{Checked, Scheduler, SourceEnd, SourceEvent, SourceOptions, SourceSession};
use transport::identity::Identity;
use transport::net::{connect_secure, write_message_within, FrameReader, ReadError};
use transport::secure::{SecureReader, SecureWriter};
use wire::{FileId, Hello, Manifest, Message, NodeId, Role};

use super::types::{DownloadOptions, Progress, SourceReport};
use crate::rate::RateLimit;
use crate::swarm::{PartialFile, Reciprocity};
use transfer::manifest::check_answer;

/// The read limit while a source may rightly stay silent.
const FOREVER: Duration = Duration::from_secs(24 * 3600);
/// A source that does not take a request within this time is not reading: dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one source stopped.
pub(super) enum Stop {
    /// The source failed (closed, refused, went silent): it may be tried again later.
    Failed(String),
    /// The source lied: banned for this download.
    Hostile(String),
    /// Our disk failed: the whole download stops.
    Disk(io::Error),
}

/// What the tasks of one download share.
pub(super) struct Shared {
    pub(super) id: FileId,
    pub(super) me: Arc<Identity>,
    pub(super) manifest: Manifest,
    pub(super) file: Arc<File>,
    pub(super) sched: Mutex<Scheduler>,
    pub(super) changed: Event,
    pub(super) opts: DownloadOptions,
    pub(super) cap: RateLimit,
    /// Queue positions of the sources that are queued, by source number.
    pub(super) queued: Mutex<HashMap<usize, u32>>,
    pub(super) connected: Mutex<usize>,
    /// Set on a disk error: every source stops.
    pub(super) aborted: AtomicBool,
    pub(super) resumed_chunks: u64,
    pub(super) progress: Box<dyn Fn(Progress) + Send + Sync>,
    /// The file as a source to others, when swarming.
    pub(super) partial: Option<Arc<PartialFile>>,
    pub(super) reciprocity: Option<Arc<Reciprocity>>,
    /// This node's listen address, for Hello.
    pub(super) listen: Option<SocketAddr>,
}

impl Shared {
    pub(super) fn report_progress(&self) {
        self.report(false)
    }

    pub(super) fn report(&self, verifying: bool) {
        let done_bytes = self.sched.lock().unwrap().done_bytes();
        let queued = self.queued.lock().unwrap().values().min().copied();
        (self.progress)(Progress {
            done_bytes,
            size: self.manifest.size,
            sources: *self.connected.lock().unwrap(),
            queued,
            resumed_chunks: self.resumed_chunks,
            verifying,
        });
    }
}

/// A source's connection.
pub(super) struct SourceConn {
    pub(super) addr: SocketAddr,
    /// The source's node id, proved by its key.
    node: NodeId,
    reader: FrameReader<SecureReader<TcpStream>>,
    writer: SecureWriter<TcpStream>,
    scratch: Vec<u8>,
}

impl SourceConn {
    pub(super) async fn open(
        addr: SocketAddr,
        me: &Identity,
        listen: Option<SocketAddr>,
        opts: &DownloadOptions,
    ) -> Result<Self, String> {
        let stream = connect_secure(addr, me, opts.connect_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let peer = stream.peer;
        let mut conn = SourceConn {
            addr,
            node: peer,
            reader: FrameReader::new(stream.reader),
            writer: stream.writer,
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

    pub(super) async fn manifest(
        &mut self,
        id: FileId,
        expected_size: Option<u64>,
        limit: Duration,
    ) -> Result<Manifest, String> {
        self.send(&Message::GetManifest { request: 0, id }).await?;
        check_answer(id, expected_size, self.recv(limit).await?)
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

/// One source, from connecting (unless already connected) until it stops.
pub(super) async fn run_source(
    shared: Arc<Shared>,
    me: usize,
    addr: SocketAddr,
    conn: Option<SourceConn>,
) -> (SourceReport, Option<Stop>) {
    let mut report = SourceReport::new(addr);
    let mut conn = match conn {
        Some(c) => c,
        None => {
            // Connecting gives way if the download ends meanwhile.
            let open = async {
                Some(SourceConn::open(addr, &shared.me, shared.listen, &shared.opts).await)
            };
            let ended = async {
                loop {
                    let listener = shared.changed.listen();
                    if shared.aborted.load(Ordering::SeqCst) {
                        return None;
                    }
                    listener.await;
                }
            };
            match smol::future::or(open, ended).await {
                Some(Ok(c)) => c,
                Some(Err(e)) => {
                    report.error = Some(e.clone());
                    return (report, Some(Stop::Failed(e)));
                }
                None => return (report, None),
            }
        }
    };
    *shared.connected.lock().unwrap() += 1;
    shared.report_progress();
    let opts = SourceOptions {
        inflight: shared.opts.inflight_per_source,
        response_timeout: shared.opts.response_timeout,
        queued_retry: shared.opts.queued_retry,
    };
    let count = shared.manifest.chunk_count();
    let mut session = SourceSession::new(shared.id, count, me, opts);
    let result = source_loop(&shared, me, &mut conn, &mut session, &mut report).await;
    session.close(&mut shared.sched.lock().unwrap());
    shared.queued.lock().unwrap().remove(&me);
    *shared.connected.lock().unwrap() -= 1;
    shared.changed.notify(usize::MAX);
    shared.report_progress();
    let stop = match result {
        Ok(()) => None,
        Err(Stop::Hostile(reason)) => {
            log::warn!("banning source {addr} for {}: {reason}", shared.id.short());
            report.error = Some(reason.clone());
            Some(Stop::Hostile(reason))
        }
        Err(Stop::Failed(reason)) => {
            log::info!("dropping source {addr} for {}: {reason}", shared.id.short());
            report.error = Some(reason.clone());
            Some(Stop::Failed(reason))
        }
        Err(Stop::Disk(e)) => {
            shared.aborted.store(true, Ordering::SeqCst);
            shared.changed.notify(usize::MAX);
            report.error = Some(format!("disk error: {e}"));
            Some(Stop::Disk(e))
        }
    };
    // The parting Goodbye, given a second.
    let _ = smol::future::or(
        async {
            while let Some(msg) = session.poll_transmit() {
                conn.send(&msg).await?;
            }
            Ok::<(), String>(())
        },
        async {
            smol::Timer::after(Duration::from_secs(1)).await;
            Ok(())
        },
    )
    .await;
    (report, stop)
}

/// Drives one source's session until it ends, the download is over, or the disk fails.
async fn source_loop(
    shared: &Arc<Shared>,
    me: usize,
    conn: &mut SourceConn,
    session: &mut SourceSession,
    report: &mut SourceReport,
) -> Result<(), Stop> {
    session.handle_timeout(Instant::now(), &mut shared.sched.lock().unwrap());
    loop {
        // Listen before looking, so a change between the look and the wait is not missed.
        let listener = shared.changed.listen();
        if shared.aborted.load(Ordering::SeqCst) {
            return Ok(());
        }
        drain_session(shared, me, conn, session, report).await?;
        match session.end() {
            None => {}
            Some(SourceEnd::Finished) => return Ok(()),
            Some(SourceEnd::Failed(why)) => return Err(Stop::Failed(why.clone())),
            Some(SourceEnd::Hostile(why)) => return Err(Stop::Hostile(why.clone())),
        }
        let idle = session.read_idle();
        let wake = session.poll_timeout();
        let msg = smol::future::or(
            async { Some(conn.reader.read_message_idle(idle.unwrap_or(FOREVER)).await) },
            async {
                match wake {
                    Some(t) => {
                        smol::future::or(listener, async {
                            smol::Timer::at(t).await;
                        })
                        .await
                    }
                    None => listener.await,
                }
                None
            },
        )
        .await;
        let now = Instant::now();
        let mut sched = shared.sched.lock().unwrap();
        match msg {
            None => session.handle_timeout(now, &mut sched),
            Some(Ok(msg)) => session.handle_message(now, msg, &mut sched),
            Some(Err(ReadError::Timeout(d))) => session.handle_stalled(d),
            Some(Err(e)) => return Err(Stop::Failed(read_failure(e))),
        }
    }
}

/// Does what the session asks, then sends what it has to send.
async fn drain_session(
    shared: &Arc<Shared>,
    me: usize,
    conn: &mut SourceConn,
    session: &mut SourceSession,
    report: &mut SourceReport,
) -> Result<(), Stop> {
    // Events first (each may add more), so what was verified is counted even if sending then
    // fails; sending makes no events.
    while let Some(event) = session.poll_event() {
        match event {
            SourceEvent::Received { bytes } => {
                if let Some(r) = &shared.reciprocity {
                    r.record(conn.node, bytes, Instant::now());
                }
                shared.cap.take(bytes).await;
            }
            SourceEvent::Verify {
                request,
                chunk,
                data,
            } => {
                let len = data.len() as u64;
                let job = shared.clone();
                // Verified and written off the executor; a disk error stops the download.
                let checked = smol::unblock(move || -> io::Result<Checked> {
                    if let Err(e) = job.manifest.verify_chunk(chunk, &data) {
                        return Ok(Checked::Bad(e.to_string()));
                    }
                    let offset = job.manifest.chunk_range(chunk).start;
                    job.file.write_all_at(&data, offset)?;
                    Ok(Checked::Kept)
                })
                .await
                .map_err(Stop::Disk)?;
                let mut sched = shared.sched.lock().unwrap();
                session.handle_checked(Instant::now(), request, len, checked, &mut sched);
            }
            SourceEvent::Completed { chunk, bytes } => {
                // Verified and written: others may have it from us now.
                if let Some(p) = &shared.partial {
                    p.mark(chunk);
                }
                report.chunks += 1;
                report.bytes += bytes;
                shared.report_progress();
                shared.changed.notify(usize::MAX);
            }
            SourceEvent::Queued { position } => {
                report.queued_at.get_or_insert(position);
                shared.queued.lock().unwrap().insert(me, position);
                shared.changed.notify(usize::MAX);
                shared.report_progress();
            }
            SourceEvent::Unqueued => {
                shared.queued.lock().unwrap().remove(&me);
            }
        }
    }
    while let Some(msg) = session.poll_transmit() {
        conn.send(&msg).await.map_err(Stop::Failed)?;
    }
    Ok(())
}
