//! The node's place in the overlay: the driver of [`topology::LeafOverlay`], and of the
//! super-peer role when the node is promoted.
//!
//! This task is the one owner of the node's super-peer links and of its searches: the rest of
//! the node sends it [`Command`]s (share changes, searches) and reads what it publishes in
//! `NodeState::role`. As a leaf, the machine decides which super-peers to dial and orders every
//! registration, withdrawal and query; this driver connects, runs a reader and a writer task per
//! link, hands each link's first registration to the machine, and passes hits to the searches
//! waiting for them. When the machine says `Promote`,
//! the node starts a [`superpeer::SuperPeerNode`] in-process (listening where others configured
//! like this node look for one) and keeps a single leaf link to it, so its own files stay
//! searchable. When that super-peer demotes itself, the node becomes a plain leaf again with the
//! role history and host cache the super-peer hands back.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smol::channel::{self, Receiver, Sender};
use smol::net::TcpStream;
use superpeer::server::{load_hosts, save_hosts, HOSTS_FILE};
use superpeer::{Demoted, SuperPeerNode};
use topology::{
    ConnId, Handover, LeafConfig, LeafEvent, LeafOverlay, NodeRole, RoleClock, RoleConfig,
};
use transport::link::Outbox;
use transport::net::{connect_secure, FrameReader};
use transport::secure::SecureStream;
use wire::{Capability, FileId, FileRecord, Hit, Message, NodeId, Query, QueryId};

use crate::control::{LinkStatus, SuperPeerStatus};
use crate::state::{NodeState, RoleStatus};

/// What the rest of the node asks of the overlay actor.
pub(crate) enum Command {
    /// Shared files were added or removed: register and withdraw them on every link.
    Share {
        /// Records to register.
        added: Vec<FileRecord>,
        /// Ids to withdraw.
        removed: Vec<FileId>,
    },
    /// Send a query to every attached super-peer and pass its hits to `hits`.
    Search {
        /// The query.
        query: Query,
        /// Where its hits go (dropped, so the search ends, if no link is up).
        hits: Sender<Vec<Hit>>,
    },
    /// Stop passing on the hits of a search.
    EndSearch(QueryId),
    /// Log an event of the node's and keep it with the overlay's for status.
    Note(String),
    /// Where others should connect to us changed (a port mapping came, or went: `lost`).
    Advertise(Option<SocketAddr>, bool),
    /// Ask the super-peer at `via` over our link to it that its leaf `node` connect to us
    /// ([`Message::ConnectToMe`]); its answer, or [`Asked::NoLink`], goes to `answer`.
    AskConnectBack {
        /// The super-peer holding the source.
        via: SocketAddr,
        /// The source.
        node: NodeId,
        /// Names the connection back.
        token: u64,
        /// We dial the source at the same time (hole punching).
        punch: bool,
        /// Where the answer goes.
        answer: Sender<Asked>,
    },
}

/// How a request sent with [`Command::AskConnectBack`] went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Asked {
    /// The super-peer answered: the source was asked, or why not; and for a hole punch, how
    /// long to wait before dialling (`topology::punch_wait`).
    Answered(Option<String>, Duration),
    /// No link to that super-peer (or too many requests on it await answers, or the link
    /// went before the answer came): ask on a connection of your own.
    NoLink,
}

/// How the node behaves in the overlay.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) leaf: LeafConfig,
    pub(crate) superpeer: topology::Config,
    pub(crate) role: RoleConfig,
    pub(crate) superpeer_listen: Option<SocketAddr>,
}

enum Input {
    Connected(ConnId, SocketAddr, Box<SecureStream<TcpStream>>),
    /// Where a super-peer saw a probe from our listen port come from.
    Probed(SocketAddr, Option<SocketAddr>),
    DialFailed(SocketAddr),
    Message(ConnId, Message),
    Closed(ConnId),
}

enum Wake {
    Input(Input),
    Command(Command),
    Demoted(Demoted),
    Timer,
}

/// A super-peer that takes longer than this to accept one message is dropped.
const LINK_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the capability and the status figures are refreshed, and the host cache saved.
const REFRESH: Duration = Duration::from_secs(2);
const SAVE_HOSTS: Duration = Duration::from_secs(30);
/// Inputs from the links and dials waiting for the actor, at most.
const INPUT_BACKLOG: usize = 1024;
/// Recent events kept for status.
const EVENTS_KEPT: usize = 50;

/// Runs the node's overlay role until the node shuts down.
pub(crate) async fn run(inner: Arc<NodeState>, settings: Settings, commands: Receiver<Command>) {
    // Bounded: a link whose messages come faster than the actor takes them waits in its
    // reader (and the super-peer's writes back up), instead of growing the queue.
    let (tx, rx) = channel::bounded::<Input>(INPUT_BACKLOG);
    let hosts_path = inner.data_dir.join(HOSTS_FILE);
    let now = Instant::now();
    let clock = RoleClock::new(now, NodeRole::Leaf, settings.role);
    let mut leaf = LeafOverlay::new(
        now,
        inner.node_id,
        inner.advertised(),
        settings.leaf.clone(),
        clock,
    );
    leaf.set_ipv6(inner.ipv6, inner.port6);
    leaf.add_seeds(now, &inner.seeds);
    leaf.import_hosts(now, &load_hosts(&hosts_path));
    // Only this actor changes the status; it publishes each change whole.
    let mut status = RoleStatus::default();
    set_role(&mut status, "leaf", "looking for super-peers");
    let mut writers: HashMap<ConnId, Outbox> = HashMap::new();
    let mut searches: HashMap<QueryId, Sender<Vec<Hit>>> = HashMap::new();
    // Requests for connections back sent over a link, by token, until answered.
    let mut asks: HashMap<u64, Sender<Asked>> = HashMap::new();
    let mut next_conn: ConnId = 1;
    let mut sp: Option<SuperPeerNode> = None;
    let mut next_refresh = now;
    let mut next_save = now + SAVE_HOSTS;
    let mut last_upload = (now, 0u64);
    let mut upload_bps = 0u64;
    loop {
        let deadline = leaf
            .poll_timeout()
            .unwrap_or(next_refresh)
            .min(next_refresh);
        let wake = smol::future::or(
            async { rx.recv().await.map(Wake::Input).unwrap_or(Wake::Timer) },
            smol::future::or(
                async {
                    match commands.recv().await {
                        Ok(c) => Wake::Command(c),
                        // The node is gone: nothing more will be asked.
                        Err(_) => smol::future::pending().await,
                    }
                },
                smol::future::or(
                    async {
                        match &sp {
                            Some(s) => Wake::Demoted(s.demoted().await),
                            None => smol::future::pending().await,
                        }
                    },
                    async {
                        smol::Timer::at(deadline).await;
                        Wake::Timer
                    },
                ),
            ),
        )
        .await;
        let now = Instant::now();
        match wake {
            Wake::Input(Input::Connected(conn, addr, stream)) => {
                writers.insert(
                    conn,
                    start_link(conn, *stream, tx.clone(), inner.limits.max_pending_bytes),
                );
                leaf.handle_connect(now, conn, addr);
            }
            Wake::Input(Input::Probed(superpeer, seen)) => leaf.handle_probe(superpeer, seen),
            Wake::Input(Input::DialFailed(addr)) => leaf.handle_dial_failed(now, addr),
            Wake::Input(Input::Message(conn, msg)) => leaf.handle_message(now, conn, msg),
            Wake::Input(Input::Closed(conn)) => {
                writers.remove(&conn);
                leaf.handle_disconnect(now, conn);
            }
            Wake::Command(Command::Share { added, removed }) => leaf.handle_share(&added, &removed),
            Wake::Command(Command::Search { query, hits }) => {
                let id = query.id;
                if leaf.start_query(query) > 0 {
                    searches.insert(id, hits);
                }
            }
            Wake::Command(Command::EndSearch(id)) => {
                leaf.end_query(id);
                searches.remove(&id);
            }
            Wake::Command(Command::AskConnectBack {
                via,
                node,
                token,
                punch,
                answer,
            }) => {
                if leaf.ask_connect_back(now, via, node, token, punch) {
                    asks.insert(token, answer);
                } else {
                    let _ = answer.try_send(Asked::NoLink);
                }
            }
            Wake::Demoted(d) => {
                // The super-peer closed its connections and stopped: a leaf again.
                note(&mut status, format!("became a leaf again: {}", d.reason));
                sp = None;
                writers.clear();
                // Its links are gone: the requests on them ask again on their own connections.
                asks.clear();
                let handover = Handover {
                    clock: d.clock,
                    hosts: d.hosts,
                };
                leaf = handover.into_leaf(
                    now,
                    inner.node_id,
                    inner.advertised(),
                    settings.leaf.clone(),
                    &inner.seeds,
                );
                leaf.set_ipv6(inner.ipv6, inner.port6);
                set_role(&mut status, "leaf", &format!("demoted: {}", d.reason));
            }
            Wake::Command(Command::Note(event)) => note(&mut status, event),
            // A promoted node's own leaf link is local: it keeps the listen address.
            Wake::Command(Command::Advertise(listen, lost)) if sp.is_none() => {
                leaf.set_listen(now, listen, lost)
            }
            Wake::Command(Command::Advertise(..)) => {}
            Wake::Timer => {}
        }
        leaf.handle_timeout(now);
        if now >= next_refresh {
            next_refresh = now + REFRESH;
            // Measured upload rate (the best of recent windows), or the configured cap.
            let sent = inner.uploaded_bytes.load(Ordering::Relaxed);
            let secs = now.duration_since(last_upload.0).as_secs_f64().max(0.001);
            upload_bps = upload_bps.max(((sent - last_upload.1) as f64 / secs) as u64);
            last_upload = (now, sent);
            leaf.set_capability(capability(&inner, upload_bps));
            refresh_status(
                &mut status,
                &leaf,
                sp.as_ref(),
                settings.superpeer.leaf_slots,
            )
            .await;
        }
        if sp.is_none() && now >= next_save {
            next_save = now + SAVE_HOSTS;
            save_hosts(&hosts_path, leaf.hosts(), now);
        }
        // The drain rule.
        loop {
            let mut progressed = false;
            while let Some(t) = leaf.poll_transmit() {
                progressed = true;
                if let Some(w) = writers.get(&t.to) {
                    if let Err(full) = w.send(&t.msg) {
                        // A super-peer that does not read: let the link go.
                        log::info!("dropping link {}: {full}", t.to);
                        writers.remove(&t.to);
                    }
                }
            }
            while let Some(event) = leaf.poll_event() {
                progressed = true;
                match event {
                    LeafEvent::Dial(addr) => {
                        let conn = next_conn;
                        next_conn += 1;
                        let (tx, identity) = (tx.clone(), inner.identity.clone());
                        transport::rt::spawn(async move {
                            let limit = Duration::from_secs(3);
                            let input = match connect_secure(addr, &identity, limit).await {
                                Ok(stream) => Input::Connected(conn, addr, Box::new(stream)),
                                Err(e) => {
                                    log::debug!("cannot reach super-peer {addr}: {e}");
                                    Input::DialFailed(addr)
                                }
                            };
                            let _ = tx.send(input).await;
                        })
                        .detach();
                    }
                    LeafEvent::Attached { conn, addr, .. } => {
                        note(&mut status, format!("attached to super-peer {addr}"));
                        leaf.register_all(conn, &shared_records(&inner));
                        // Keep what we know on disk now: a restart needs no bootstrap address.
                        if sp.is_none() {
                            save_hosts(&hosts_path, leaf.hosts(), now);
                        }
                    }
                    LeafEvent::Detached { addr, .. } => {
                        note(&mut status, format!("lost super-peer {addr}"));
                    }
                    LeafEvent::Close { conn, reason } => {
                        // Why a link went (a super-peer's Goodbye, a timeout) is worth seeing.
                        note(&mut status, format!("link closed: {reason}"));
                        writers.remove(&conn);
                    }
                    LeafEvent::Hits { query, hits } => {
                        if let Some(t) = searches.get(&query) {
                            // The sources of our own searches, by node id (`leaf browse NODE`).
                            let mut seen = inner.seen.lock().unwrap();
                            hits.iter().for_each(|h| seen.note(&h.source));
                            drop(seen);
                            // Full: the search's reader is behind; the rest is dropped.
                            let _ = t.try_send(hits);
                        }
                    }
                    LeafEvent::ConnectAsked { token, error, wait } => {
                        if let Some(answer) = asks.remove(&token) {
                            let _ = answer.try_send(Asked::Answered(error, wait));
                        }
                    }
                    LeafEvent::AskLost { token } => {
                        if let Some(answer) = asks.remove(&token) {
                            let _ = answer.try_send(Asked::NoLink);
                        }
                    }
                    LeafEvent::ConnectBack {
                        node,
                        addr,
                        token,
                        via,
                        punch,
                        wait,
                    } => {
                        let back = ConnectBack {
                            node,
                            addr,
                            token,
                            via,
                            punch,
                            wait,
                        };
                        connect_back(&inner, back)
                    }
                    LeafEvent::Probe { superpeers } => {
                        if let Some(from) = inner.listen {
                            for superpeer in superpeers {
                                let (tx, identity) = (tx.clone(), inner.identity.clone());
                                transport::rt::spawn(async move {
                                    let seen = probe(superpeer, from, &identity).await;
                                    let _ = tx.send(Input::Probed(superpeer, seen)).await;
                                })
                                .detach();
                            }
                        }
                    }
                    LeafEvent::RelayBack {
                        node,
                        token,
                        via,
                        superpeer,
                    } => relay_back(
                        &inner,
                        RelayBack {
                            node,
                            token,
                            via,
                            superpeer,
                        },
                    ),
                    LeafEvent::Promote { reason } => {
                        let placeholder = LeafOverlay::new(
                            now,
                            inner.node_id,
                            inner.advertised(),
                            LeafConfig {
                                can_promote: false,
                                ..settings.leaf.clone()
                            },
                            RoleClock::new(now, NodeRole::Leaf, settings.role),
                        );
                        let old = std::mem::replace(&mut leaf, placeholder);
                        match promote(&inner, &settings, old, &reason, &mut status).await {
                            Ok((node, local)) => {
                                sp = Some(node);
                                leaf = local;
                                writers.clear();
                                asks.clear();
                            }
                            Err(back) => leaf = back,
                        }
                    }
                }
            }
            if !progressed {
                break;
            }
        }
        status.links = links(&leaf);
        let reach = |r: topology::Reach| crate::control::Reach {
            observed: r.observed,
            reachable: r.reachable,
            nat: r.nat.map(|k| {
                match k {
                    topology::NatKind::EndpointIndependent => "endpoint-independent",
                    topology::NatKind::Symmetric => "symmetric",
                }
                .to_string()
            }),
        };
        status.reach = leaf.reach().map(reach);
        status.reach_also = leaf.reach_other().map(reach);
        if **inner.role.load() != status {
            inner.role.store(Arc::new(status.clone()));
        }
    }
}

/// Connects to `addr` as super-peer `via` passed on, and serves it there, unless as many
/// connections back as allowed are being made already.
fn connect_back(inner: &Arc<NodeState>, back: ConnectBack) {
    let inner = inner.clone();
    transport::rt::spawn(async move {
        let (addr, via) = (back.addr, back.via);
        let Some(place) = inner.reverse.start_connect_back() else {
            log::info!(
                "not connecting back to {addr} (asked through {via}): {} connections back being \
                 made already",
                crate::reverse::MAX_CONNECT_BACKS
            );
            return;
        };
        // It serves a downloader, as a connection accepted would: it takes such a place.
        let Some(_link) = inner.links.accept() else {
            log::info!(
                "not connecting back to {addr} (asked through {via}): {} links open \
                 (--max-peer-links)",
                inner.links.open()
            );
            return;
        };
        log::info!("connecting back to {addr}, asked through super-peer {via}");
        if let Err(e) = crate::upload::serve_connect_back(&inner, back, place).await {
            log::info!("connection back to {addr}: {e}");
        }
    })
    .detach();
}

/// Joins a relay a super-peer asked us to, and serves the requester through it, unless as
/// many connections back as allowed are being made already.
fn relay_back(inner: &Arc<NodeState>, back: RelayBack) {
    let inner = inner.clone();
    transport::rt::spawn(async move {
        let via = back.via;
        let Some(place) = inner.reverse.start_connect_back() else {
            log::info!("not joining a relay at {via}: too many connections back being made");
            return;
        };
        let Some(_link) = inner.links.accept() else {
            log::info!(
                "not joining a relay at {via}: {} links open (--max-peer-links)",
                inner.links.open()
            );
            return;
        };
        log::info!(
            "joining a relay at super-peer {via} for {}",
            back.node.short()
        );
        if let Err(e) = crate::upload::serve_relayed(&inner, back, place).await {
            log::info!("relay at {via}: {e}");
        }
    })
    .detach();
}

/// A super-peer's request to relay ([`LeafEvent::RelayBack`]).
pub(crate) struct RelayBack {
    pub(crate) node: NodeId,
    pub(crate) token: u64,
    pub(crate) via: SocketAddr,
    pub(crate) superpeer: NodeId,
}

/// A super-peer's request to connect back ([`LeafEvent::ConnectBack`]).
pub(crate) struct ConnectBack {
    pub(crate) node: NodeId,
    pub(crate) addr: SocketAddr,
    pub(crate) token: u64,
    pub(crate) via: SocketAddr,
    pub(crate) punch: bool,
    /// For a hole punch: how long to wait before dialling (the super-peer's timing).
    pub(crate) wait: Duration,
}

/// Connects to super-peer `superpeer` from our listen port `from` and asks where it sees the
/// connection come from ([`Message::WhereAmI`]). None if that cannot be done.
async fn probe(
    superpeer: SocketAddr,
    from: SocketAddr,
    identity: &transport::identity::Identity,
) -> Option<SocketAddr> {
    let limit = Duration::from_secs(3);
    let stream = transport::net::connect_from(from, superpeer, limit)
        .await
        .map_err(|e| log::debug!("probing {superpeer} from port {}: {e}", from.port()))
        .ok()?;
    let secure = transport::secure::connect(stream, identity, limit)
        .await
        .ok()?;
    match crate::reverse::ask_superpeer(secure, identity, None, Message::WhereAmI, limit).await {
        Ok(Message::SeenAt { addr }) => Some(addr),
        other => {
            log::debug!("probing {superpeer}: {other:?}");
            None
        }
    }
}

/// What the node registers on a link: its shared files, and the files it downloads or seeds
/// that no share holds.
fn shared_records(inner: &NodeState) -> Vec<FileRecord> {
    let shares = inner.shares.read().unwrap();
    let mut records: Vec<FileRecord> = shares.files().map(|f| f.record.clone()).collect();
    records.extend(
        inner
            .partials
            .all()
            .into_iter()
            .filter(|p| shares.get(&p.record.id).is_none())
            .map(|p| p.record.clone()),
    );
    records
}

/// The attached super-peers, for status.
fn links(leaf: &LeafOverlay) -> Vec<LinkStatus> {
    leaf.superpeers()
        .into_iter()
        .map(|(addr, node)| LinkStatus {
            addr,
            connected: true,
            node: Some(node),
        })
        .collect()
}

/// Starts the super-peer role in-process; returns it and the leaf machine for the node's own
/// link to it. On failure, the old leaf machine comes back.
async fn promote(
    inner: &Arc<NodeState>,
    settings: &Settings,
    leaf: LeafOverlay,
    reason: &str,
    status: &mut RoleStatus,
) -> Result<(SuperPeerNode, LeafOverlay), LeafOverlay> {
    let now = Instant::now();
    let Handover { clock, hosts } = Handover::of_leaf(&leaf, now);
    let preferred = settings.superpeer_listen.unwrap_or_else(|| {
        let port = inner
            .seeds
            .first()
            .map_or(superpeer::DEFAULT_PORT, |s| s.port());
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
    });
    let mut started = None;
    for listen in [preferred, SocketAddr::new(preferred.ip(), 0)] {
        let config = superpeer::Config {
            overlay: settings.superpeer.clone(),
            data_dir: Some(inner.data_dir.clone()),
            clock: Some(clock.clone()),
            hosts: hosts.clone(),
            limits: inner.limits.clone(),
            ..superpeer::Config::new((*inner.identity).clone(), listen)
        };
        match SuperPeerNode::start(config).await {
            Ok(node) => {
                started = Some(node);
                break;
            }
            Err(e) => log::warn!("cannot start the super-peer role: {e}"),
        }
    }
    let Some(node) = started else {
        return Err(leaf);
    };
    let addr = node.listen_addr();
    let local_addr = if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    };
    note(status, format!("became a super-peer on {addr}: {reason}"));
    set_role(status, "super-peer", reason);
    // The node's own files go into its own index through an ordinary leaf link.
    let mut local = LeafOverlay::new(
        now,
        inner.node_id,
        inner.listen,
        LeafConfig {
            target: 1,
            can_promote: false,
            ..settings.leaf.clone()
        },
        RoleClock::new(now, NodeRole::Leaf, settings.role),
    );
    local.add_seeds(now, &[local_addr]);
    Ok((node, local))
}

/// Starts a link's writer and reader tasks; returns the writer's queue (its unread bytes capped
/// at `max_pending` bytes).
fn start_link(
    conn: ConnId,
    stream: SecureStream<TcpStream>,
    inputs: Sender<Input>,
    max_pending: usize,
) -> Outbox {
    let _ = stream.writer.get_ref().set_nodelay(true);
    let (out, writer) =
        transport::link::spawn_writer(stream.writer, max_pending, LINK_WRITE_TIMEOUT);
    transport::rt::spawn(async move {
        if let Some(e) = writer.await {
            log::debug!("link {conn}: {e}");
        }
    })
    .detach();
    let peer = stream.peer;
    transport::rt::spawn(async move {
        // Overlay messages never carry a payload (only chunks and manifests do).
        let mut reader = FrameReader::new(stream.reader).limited(wire::MAX_BODY, 0);
        loop {
            match reader.read_message().await {
                Ok(Some(msg)) => {
                    if let Message::Hello(h) = &msg {
                        if let Err(e) = transport::hello::check_key(peer, h) {
                            log::warn!("link {conn}: {e}");
                            break;
                        }
                    }
                    if inputs.send(Input::Message(conn, msg)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    log::debug!("link {conn}: {e}");
                    break;
                }
            }
        }
        let _ = inputs.send(Input::Closed(conn)).await;
    })
    .detach();
    out
}

/// What this node offers as a super-peer: uptime, upload rate, free descriptors and memory.
fn capability(inner: &NodeState, upload_bps: u64) -> Capability {
    let cap = inner.upload_cap.bytes_per_sec().unwrap_or(0);
    Capability {
        can_promote: true,
        uptime_s: inner.started.elapsed().as_secs(),
        upload_bps: if cap > 0 { cap } else { upload_bps },
        free_fds: free_fds().unwrap_or(0),
        free_mem_mb: free_mem_mb().unwrap_or(0),
    }
}

fn free_fds() -> Option<u64> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current?;
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(limit.saturating_sub(open))
}

fn free_mem_mb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}

async fn refresh_status(
    role: &mut RoleStatus,
    leaf: &LeafOverlay,
    sp: Option<&SuperPeerNode>,
    leaf_slots: u32,
) {
    let superpeer = match sp {
        Some(node) => {
            let s = node.status().await;
            Some((
                SuperPeerStatus {
                    listen: s.listen,
                    leaves: s.stats.leaves,
                    leaf_slots,
                    neighbours: s.stats.neighbours,
                    records: s.records,
                    queries: s.stats.queries_processed,
                },
                s.hosts,
            ))
        }
        None => None,
    };
    match superpeer {
        Some((status, hosts)) => {
            role.hosts = hosts;
            role.superpeer = Some(status);
        }
        None => {
            role.hosts = leaf.hosts().len();
            role.superpeer = None;
        }
    }
}

fn set_role(r: &mut RoleStatus, role: &str, why: &str) {
    r.role = role.into();
    r.why = why.into();
}

/// Logs an overlay event and keeps it for status.
fn note(status: &mut RoleStatus, event: String) {
    log::info!("{event}");
    let events = &mut status.events;
    events.push_back(event);
    while events.len() > EVENTS_KEPT {
        events.pop_front();
    }
}
