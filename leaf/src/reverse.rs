//! Connections the other way round, for sources that cannot be reached (behind a NAT or a
//! firewall that drops what comes in).
//!
//! Soulseek's indirect connections and Gnutella's PUSH, over Canopy's super-peers:
//! - A hit names the super-peer that holds its leaf (`via`) and whether that super-peer could
//!   connect to the leaf ([`wire::Source::reachable`]). [`Reverse::note`] keeps these routes.
//! - To fetch from such a source, the downloader opens a short connection to `via` (Hello role
//!   Transfer, naming its own listen port) and sends [`Message::ConnectToMe`] with a random
//!   token ([`connect_via`]). The super-peer passes it on to its leaf as
//!   [`Message::ConnectBack`], with the downloader's address as the super-peer sees it, never
//!   as the downloader claims it.
//! - The source connects out, proves its key in the Noise handshake, and sends
//!   [`Message::Reversed`] with the token first ([`crate::upload::serve_connect_back`]). The
//!   downloader's listener hands that connection to the download waiting for the token
//!   ([`Reverse::arrived`]) only if the key is the source's; the same encrypted session then
//!   serves chunks as if the downloader had dialled.
//!
//! Where the downloader cannot accept connections either, the two punch a hole: the source
//! dials from its listen port as always ([`transport::net::connect_from`]), and the downloader
//! dials the source's address from its own listen port at the same time. Each SYN leaving a
//! NAT opens the way for the other's (TCP simultaneous open), as libp2p's DCUtR and BEP 55 do
//! over their relays; here the super-peer that passed the request on is the coordinator.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use smol::channel::{self, Receiver, Sender};
use smol::net::TcpStream;
use transport::identity::Identity;
use transport::net::{connect_secure, write_message_within, FrameReader};
use transport::secure::{SecureReader, SecureStream, SecureWriter};
use wire::{Hello, Message, NodeId, Role};

use crate::download::{Reached, Way};

/// Routes kept (the most recent sources seen in hits).
const ROUTES_KEPT: usize = 4096;
/// Connections back being made at once (dialled, not yet serving); more requests are dropped.
pub(crate) const MAX_CONNECT_BACKS: usize = 16;
/// One attempt of a hole punch (the kernel sends its SYN again within it).
const PUNCH_ATTEMPT: Duration = Duration::from_secs(4);
/// Between attempts that failed at once.
const PUNCH_PAUSE: Duration = Duration::from_millis(200);
/// How long a request for a connection back sent over our link to a super-peer waits for its
/// answer before it is sent again on a connection of its own.
const OVERLAY_ASK_WAIT: Duration = Duration::from_secs(3);

/// A connection a source opened to us because we asked, past its [`Message::Reversed`].
pub struct Accepted {
    /// Reads what the source sends (its first frame taken).
    pub reader: FrameReader<SecureReader<TcpStream>>,
    /// Writes to it.
    pub writer: SecureWriter<TcpStream>,
    /// Its node id, proved by its key.
    pub peer: NodeId,
    /// Where it came from.
    pub remote: SocketAddr,
    /// How it was made.
    pub reached: Reached,
}

/// How to reach a source that may not accept connections, as a hit told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    /// The source's node id.
    pub(crate) node: NodeId,
    /// The super-peer holding it.
    pub(crate) via: SocketAddr,
    /// Whether that super-peer could connect to it.
    pub(crate) reachable: Option<bool>,
}

/// The node's routes to sources and the connections back it waits for.
#[derive(Default)]
pub(crate) struct Reverse {
    routes: Mutex<Routes>,
    waiting: Mutex<HashMap<u64, (NodeId, Sender<Accepted>)>>,
    /// Connections back being made now (the source side).
    connecting: AtomicUsize,
    /// Connections made other than by dialling, either side: reverse, punched, relayed.
    counts: [std::sync::atomic::AtomicU64; 3],
}

#[derive(Default)]
struct Routes {
    by_addr: HashMap<SocketAddr, Route>,
    order: VecDeque<SocketAddr>,
}

impl Reverse {
    /// Keeps the route a hit gives to its source (the newest [`ROUTES_KEPT`]).
    pub(crate) fn note(&self, source: &wire::Source) {
        let Some(via) = source.via else { return };
        let route = Route {
            node: source.node,
            via,
            reachable: source.reachable,
        };
        let mut routes = self.routes.lock().unwrap();
        if routes.by_addr.insert(source.addr, route).is_none() {
            routes.order.push_back(source.addr);
            while routes.order.len() > ROUTES_KEPT {
                if let Some(old) = routes.order.pop_front() {
                    routes.by_addr.remove(&old);
                }
            }
        }
    }

    /// How to reach the source at `addr`: with the address of the other family (IPv6 beside
    /// IPv4) that a hit named for the same node, if any. First the one this node can use
    /// (`ipv6`: it has an IPv6 route), then the one the super-peers found reachable, then
    /// IPv6 (RFC 8305). A connection back waits for the dialling where the address dialled
    /// first was found reachable.
    pub(crate) fn way(&self, addr: SocketAddr, ipv6: bool) -> Way {
        let routes = self.routes.lock().unwrap();
        let Some(route) = routes.by_addr.get(&addr) else {
            return Way::to(addr);
        };
        let v6 = topology::leaf::is_v6;
        let usable = |a: &SocketAddr| ipv6 || !v6(a) || a.ip().is_loopback();
        // Lower first.
        let rank = |a: &SocketAddr, reachable: Option<bool>| {
            (
                !usable(a),
                reachable != Some(true),
                reachable == Some(false),
                !v6(a),
            )
        };
        let other = routes
            .by_addr
            .iter()
            .filter(|(a, r)| r.node == route.node && v6(a) != v6(&addr))
            .min_by_key(|(a, r)| (rank(a, r.reachable), **a))
            .map(|(a, r)| (*a, r.reachable));
        let Some((other, reachable)) = other else {
            return Way {
                back_later: route.reachable == Some(true) && usable(&addr),
                ..Way::to(addr)
            };
        };
        let other_first = rank(&other, reachable) < rank(&addr, route.reachable);
        let (first, first_reachable) = match other_first {
            true => (other, reachable),
            false => (addr, route.reachable),
        };
        Way {
            addr,
            other: Some(other),
            node: Some(route.node),
            other_first,
            back_later: first_reachable == Some(true) && usable(&first),
        }
    }

    /// The route to the source at `addr`, when a hit gave one. For a source its super-peer
    /// found reachable it is used only once dialling failed or took a while (see
    /// [`Reverse::way`]): a finding can be wrong (a router that lets in anyone the leaf has
    /// talked to, super-peers included) or stale.
    pub(crate) fn route(&self, addr: SocketAddr) -> Option<Route> {
        let routes = self.routes.lock().unwrap();
        routes.by_addr.get(&addr).copied()
    }

    /// Waits for a connection back from `node`: its token, and where it will arrive. The
    /// token is forgotten when the returned guard drops, however the wait ends.
    fn expect(&self, node: NodeId) -> Waiting<'_> {
        let (tx, rx) = channel::bounded(1);
        let mut waiting = self.waiting.lock().unwrap();
        let token = loop {
            let t: u64 = rand::random();
            if !waiting.contains_key(&t) {
                break t;
            }
        };
        waiting.insert(token, (node, tx));
        Waiting {
            reverse: self,
            token,
            rx,
        }
    }

    /// A connection named `token` arrived: it goes to the download waiting for it, if its key
    /// is that of the source asked. Otherwise it is refused (and dropped).
    pub(crate) fn arrived(&self, token: u64, conn: Accepted) -> Result<(), String> {
        let mut waiting = self.waiting.lock().unwrap();
        match waiting.get(&token) {
            None => Err(format!(
                "token {token:016x} was never asked for (or is gone)"
            )),
            Some((node, _)) if *node != conn.peer => Err(format!(
                "token {token:016x} was for node {}, not {}",
                node.short(),
                conn.peer.short()
            )),
            Some(_) => {
                let (_, tx) = waiting.remove(&token).expect("just found");
                tx.try_send(conn)
                    .map_err(|_| "the download waiting for it is gone".to_string())
            }
        }
    }

    /// Counts a connection made (by either side) the way `reached` says.
    pub(crate) fn count(&self, reached: Reached) {
        let i = match reached {
            Reached::Direct => return,
            Reached::Reverse => 0,
            Reached::Punched => 1,
            Reached::Relayed => 2,
        };
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts, for status.
    pub(crate) fn counts(&self) -> crate::control::Indirect {
        let n = |i: usize| self.counts[i].load(Ordering::Relaxed);
        crate::control::Indirect {
            reverse: n(0),
            punched: n(1),
            relayed: n(2),
        }
    }

    /// Takes a place for one connection back, if fewer than [`MAX_CONNECT_BACKS`] are being
    /// made; the place is given back when the guard drops.
    pub(crate) fn start_connect_back(&self) -> Option<ConnectBackGuard<'_>> {
        let n = self.connecting.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_CONNECT_BACKS {
            self.connecting.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectBackGuard(&self.connecting))
    }
}

/// A token awaited; forgotten on drop.
struct Waiting<'a> {
    reverse: &'a Reverse,
    token: u64,
    rx: Receiver<Accepted>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.reverse.waiting.lock().unwrap().remove(&self.token);
    }
}

/// A place among the connections back being made.
pub(crate) struct ConnectBackGuard<'a>(&'a AtomicUsize);

impl Drop for ConnectBackGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// This node, as a connection back needs it.
pub(crate) struct Me<'a> {
    /// Its key pair.
    pub(crate) identity: &'a Identity,
    /// Where it listens (the socket's address).
    pub(crate) bound: Option<SocketAddr>,
    /// Where it tells others to connect (the external port, if one is mapped).
    pub(crate) advertised: Option<SocketAddr>,
    /// Whether its super-peers could connect to it (None: not known).
    pub(crate) reachable: Option<bool>,
    /// Whether its NAT gives another port for each peer (hole punching cannot work).
    pub(crate) symmetric: bool,
    /// The overlay actor, to ask over a link we hold to the source's super-peer (None: ask on
    /// a connection of our own).
    pub(crate) overlay: Option<&'a Sender<crate::overlay::Command>>,
}

/// Asks the super-peer holding `route.node` that the source at `addr` connect to us, and
/// waits up to `limit` for the connection. If we cannot be reached either, we also dial it
/// from our listen port while it dials us: the two connections meet as one through both NATs
/// (TCP simultaneous open), the source still opening the encrypted session and naming the
/// token, as it would on a connection back.
pub(crate) async fn connect_via(
    reverse: &Reverse,
    me: Me<'_>,
    addr: SocketAddr,
    route: Route,
    limit: Duration,
) -> Result<Accepted, String> {
    let (Some(bound), Some(advertised)) = (me.bound, me.advertised) else {
        return Err("it cannot be reached, and this node accepts no connections".into());
    };
    let punching = me.reachable == Some(false);
    // One deadline for all of it: a super-peer that talks without answering cannot hold
    // the download.
    let whole = limit * 3 + Duration::from_secs(5);
    let attempt = async {
        let first = if punching && me.symmetric {
            Err(
                "this node's NAT is symmetric (another port for each peer), so no hole can be \
                 punched"
                    .to_string(),
            )
        } else {
            back_or_punch(reverse, &me, (bound, advertised), addr, route, limit).await
        };
        match first {
            Ok(conn) => Ok(conn),
            // The last resort, where neither side can reach the other.
            Err(e) if punching => relay(me.identity, advertised, route, limit)
                .await
                .map_err(|r| format!("{e}; relayed: {r}")),
            Err(e) => Err(e),
        }
    };
    smol::future::or(attempt, async {
        smol::Timer::after(whole).await;
        Err(format!("no connection back within {whole:?}"))
    })
    .await
}

/// The source connects to us, asked through `route.via`; if we cannot be reached either, we
/// dial it at the same time, to punch a hole through both NATs.
async fn back_or_punch(
    reverse: &Reverse,
    me: &Me<'_>,
    (bound, advertised): (SocketAddr, SocketAddr),
    addr: SocketAddr,
    route: Route,
    limit: Duration,
) -> Result<Accepted, String> {
    let punching = me.reachable == Some(false);
    let waiting = reverse.expect(route.node);
    let (token, rx) = (waiting.token, &waiting.rx);
    let request = Message::ConnectToMe {
        node: route.node,
        token,
        punch: punching,
    };
    let wait = ask(
        me.identity,
        me.overlay,
        advertised,
        route,
        request,
        token,
        limit,
    )
    .await?;
    let arrived = async {
        smol::future::or(async { rx.recv().await.ok() }, async {
            smol::Timer::after(limit).await;
            None
        })
        .await
        .ok_or_else(|| {
            format!(
                "asked through super-peer {} to connect back, but it did not within {limit:?}",
                route.via
            )
        })
    };
    if punching {
        // Timed to dial when the source does (the super-peer's measure of both round trips).
        let punched = async {
            smol::Timer::after(wait).await;
            punch(me.identity, bound, addr, route.node, token, limit).await
        };
        crate::download::first_ok(arrived, punched, "punching")
            .await
            .map_err(|e| format!("both behind NAT, and hole punching failed: {e}"))
    } else {
        arrived.await
    }
}

/// How long a relay's end waits for the other.
const RELAY_WAIT: Duration = Duration::from_secs(20);

/// Joins relay `token` at the super-peer at `via` (whose key must be `superpeer`'s, when
/// given) and waits until both ends are in: the socket, for the session that follows, and
/// our writer on the super-peer's session.
pub(crate) async fn join_relay(
    me: &Identity,
    via: SocketAddr,
    superpeer: Option<NodeId>,
    token: u64,
    limit: Duration,
) -> Result<(TcpStream, SecureWriter<TcpStream>), String> {
    let raw = transport::net::connect(via, limit)
        .await
        .map_err(|e| format!("super-peer {via}: {e}"))?;
    let outer = transport::secure::connect(raw.clone(), me, limit)
        .await
        .map_err(|e| format!("super-peer {via}: {e}"))?;
    if superpeer.is_some_and(|sp| sp != outer.peer) {
        return Err(format!("{via} is not the super-peer that asked"));
    }
    let mut writer = outer.writer;
    let join = Message::RelayJoin { token };
    write_message_within(&mut writer, &join, &mut Vec::new(), limit)
        .await
        .map_err(|e| format!("super-peer {via}: {e}"))?;
    let mut reader = FrameReader::new(outer.reader).limited(wire::MAX_BODY, 0);
    relay_ready(&mut reader, via).await?;
    Ok((raw, writer))
}

/// Waits on a relay's end for the super-peer at `via` to say both ends are in
/// ([`Message::RelayReady`]), past its Hello (at most one).
async fn relay_ready(
    reader: &mut FrameReader<SecureReader<TcpStream>>,
    via: SocketAddr,
) -> Result<(), String> {
    let until = std::time::Instant::now() + RELAY_WAIT;
    let mut hellos = 0;
    loop {
        let left = until.saturating_duration_since(std::time::Instant::now());
        match reader.read_message_within(left).await {
            Ok(Message::RelayReady) => return Ok(()),
            Ok(Message::Hello(h)) if h.role == Role::SuperPeer && hellos == 0 => hellos += 1,
            Ok(Message::Goodbye { reason }) => {
                return Err(format!(
                    "super-peer {via}: {}",
                    wire::text::terminal_safe(&reason)
                ))
            }
            Ok(other) => return Err(format!("super-peer {via} sent {}", other.kind())),
            Err(e) => return Err(format!("super-peer {via}: {e}")),
        }
    }
}

/// Asks the super-peer at `route.via` to relay between us and the source, joins the relay,
/// and answers the source's own encrypted session through it: the super-peer carries only
/// ciphertext.
async fn relay(
    me: &Identity,
    advertised: SocketAddr,
    route: Route,
    limit: Duration,
) -> Result<Accepted, String> {
    let token: u64 = rand::random();
    let request = Message::RelayVia {
        node: route.node,
        token,
    };
    ask(me, None, advertised, route, request, token, limit).await?;
    let via = route.via;
    let (raw, mut writer) = join_relay(me, via, None, token, limit).await?;
    let mut scratch = Vec::new();
    write_message_within(&mut writer, &Message::RelayGo, &mut scratch, limit)
        .await
        .map_err(|e| format!("super-peer {via}: {e}"))?;
    // Our session with the super-peer ends here: what follows on the socket is the source's.
    drop(writer);
    let inner = transport::secure::accept(raw, me, limit)
        .await
        .map_err(|e| format!("through super-peer {via}: {e}"))?;
    if inner.peer != route.node {
        return Err(format!(
            "through super-peer {via}: node {}, not the source",
            inner.peer.short()
        ));
    }
    let mut reader = FrameReader::new(inner.reader).limited(wire::MAX_BODY, 0);
    match reader.read_message_within(limit).await {
        Ok(Message::Reversed { token: t }) if t == token => Ok(Accepted {
            reader,
            writer: inner.writer,
            peer: inner.peer,
            remote: via,
            reached: Reached::Relayed,
        }),
        Ok(other) => Err(format!(
            "through super-peer {via}: began with {}",
            other.kind()
        )),
        Err(e) => Err(format!("through super-peer {via}: {e}")),
    }
}

/// Dials `addr` from our listen port until `limit`, as the source dials us: a connection
/// that gets through is taken as the source's connection back (we answer its handshake, and
/// it must name `token` and be `node`).
async fn punch(
    me: &Identity,
    bound: SocketAddr,
    addr: SocketAddr,
    node: NodeId,
    token: u64,
    limit: Duration,
) -> Result<Accepted, String> {
    let deadline = std::time::Instant::now() + limit;
    let mut last = String::from("no attempt");
    while std::time::Instant::now() < deadline {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match transport::net::connect_from(bound, addr, left.min(PUNCH_ATTEMPT)).await {
            Ok(stream) => {
                let secure = transport::secure::accept(stream, me, left)
                    .await
                    .map_err(|e| format!("{addr}: {e}"))?;
                if secure.peer != node {
                    return Err(format!(
                        "{addr} is node {}, not the source",
                        secure.peer.short()
                    ));
                }
                let mut reader = FrameReader::new(secure.reader).limited(wire::MAX_BODY, 0);
                return match reader.read_message_within(left).await {
                    Ok(Message::Reversed { token: t }) if t == token => Ok(Accepted {
                        reader,
                        writer: secure.writer,
                        peer: secure.peer,
                        remote: addr,
                        reached: Reached::Punched,
                    }),
                    Ok(other) => Err(format!("{addr} began with {}", other.kind())),
                    Err(e) => Err(format!("{addr}: {e}")),
                };
            }
            Err(e) => {
                last = e.to_string();
                // Refused or reset: its NAT has not opened yet. Again shortly.
                smol::Timer::after(PUNCH_PAUSE).await;
            }
        }
    }
    Err(format!(
        "dialling {addr} from port {}: {last}",
        bound.port()
    ))
}

/// One request to the super-peer at `route.via` ([`Message::ConnectToMe`] or
/// [`Message::RelayVia`]), answered with [`Message::ConnectAsked`]. A [`Message::ConnectToMe`]
/// goes over our link to that super-peer when we hold one (through `overlay`): it then costs
/// one message, not a connection and its handshakes, so a source behind a NAT starts sending
/// about as soon as one we dial. Otherwise (or with no link) on a connection of its own.
/// Returns how long to wait before dialling, for a hole punch (`topology::punch_wait`).
async fn ask(
    me: &Identity,
    overlay: Option<&Sender<crate::overlay::Command>>,
    listen: SocketAddr,
    route: Route,
    request: Message,
    token: u64,
    limit: Duration,
) -> Result<Duration, String> {
    let (via, asked) = (route.via, request.kind());
    let answered = |error: Option<String>, wait: Duration| match error {
        None => Ok(wait),
        Some(e) => Err(format!(
            "super-peer {via}: {}",
            wire::text::terminal_safe(&e)
        )),
    };
    if let (Some(overlay), &Message::ConnectToMe { node, token, punch }) = (overlay, &request) {
        let (tx, rx) = channel::bounded(1);
        let command = crate::overlay::Command::AskConnectBack {
            via,
            node,
            token,
            punch,
            answer: tx,
        };
        if overlay.try_send(command).is_ok() {
            // A link that does not answer soon (its super-peer busy, or the overlay actor
            // promoting) costs no more than this before we ask on a connection of our own.
            let wait = limit.min(OVERLAY_ASK_WAIT);
            let answer = smol::future::or(async { rx.recv().await.ok() }, async {
                smol::Timer::after(wait).await;
                None
            })
            .await;
            match answer {
                Some(crate::overlay::Asked::Answered(error, wait)) => return answered(error, wait),
                // No link to it, the link went, or no answer yet: a connection of our own.
                Some(crate::overlay::Asked::NoLink) | None => {}
            }
        }
    }
    let secure = connect_secure(via, me, limit)
        .await
        .map_err(|e| format!("super-peer {via}: {e}"))?;
    let sent = std::time::Instant::now();
    match ask_superpeer(secure, me, Some(listen), request, limit).await? {
        Message::ConnectAsked {
            token: t,
            error,
            sync,
        } if t == token => answered(error, topology::punch_wait(sent.elapsed(), sync)),
        other => Err(format!(
            "super-peer {via} answered {asked} with {}",
            other.kind()
        )),
    }
}

/// Sends a super-peer, on a connection of ours (`secure`), a Transfer Hello (naming `listen`)
/// and `request`, and returns its answer: the first message after its Hello (a Goodbye is an
/// error). Says Goodbye after.
pub(crate) async fn ask_superpeer(
    secure: SecureStream<TcpStream>,
    me: &Identity,
    listen: Option<SocketAddr>,
    request: Message,
    limit: Duration,
) -> Result<Message, String> {
    let mut writer = secure.writer;
    let mut scratch = Vec::new();
    let hello = Hello::new(me.node(), Role::Transfer, listen, crate::AGENT);
    for msg in [Message::Hello(hello), request] {
        write_message_within(&mut writer, &msg, &mut scratch, limit)
            .await
            .map_err(|e| format!("sending: {e}"))?;
    }
    let mut reader = FrameReader::new(secure.reader).limited(wire::MAX_BODY, 0);
    let mut hellos = 0;
    let answer = loop {
        match reader.read_message_within(limit).await {
            Ok(Message::Hello(h)) if h.role == Role::SuperPeer && hellos == 0 => hellos += 1,
            Ok(Message::Goodbye { reason }) => {
                break Err(format!("it said: {}", wire::text::terminal_safe(&reason)))
            }
            Ok(answer) => break Ok(answer),
            Err(e) => break Err(e.to_string()),
        }
    };
    let bye = Message::Goodbye {
        reason: "asked".into(),
    };
    let _ = write_message_within(&mut writer, &bye, &mut scratch, Duration::from_secs(1)).await;
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(n: u8, reachable: Option<bool>) -> wire::Source {
        wire::Source {
            node: NodeId([n; 32]),
            addr: SocketAddr::from(([10, 0, 0, n], 7001)),
            reachable,
            via: Some("198.51.100.1:7700".parse().unwrap()),
        }
    }

    /// A node that hits name at an address of each family is dialled at both, the one found
    /// reachable first (else IPv6 first), and a connection back waits for dialling only when
    /// the first address is known reachable.
    #[test]
    fn a_node_found_at_both_families_is_dialled_at_both_in_order() {
        let r = Reverse::default();
        let v4 = source(1, Some(false));
        let v6 = |reachable| wire::Source {
            addr: "[2001:db8:77::2]:7001".parse().unwrap(),
            reachable,
            ..source(1, None)
        };
        let node = Some(NodeId([1; 32]));
        let way = |addr, other, other_first, back_later| Way {
            addr,
            other: Some(other),
            node,
            other_first,
            back_later,
        };
        assert_eq!(
            r.way(v4.addr, true),
            Way::to(v4.addr),
            "no other address known"
        );
        r.note(&v4);
        r.note(&source(2, None)); // another node: not an address of this one
        assert_eq!(r.way(v4.addr, true), Way::to(v4.addr));
        r.note(&v6(Some(true)));
        let six = v6(None).addr;
        assert_eq!(r.way(v4.addr, true), way(v4.addr, six, true, true));
        assert_eq!(r.way(six, true), way(six, v4.addr, false, true));
        // Without an IPv6 route here: IPv4 first, and (not known reachable) a connection
        // back at once.
        assert_eq!(r.way(six, false), way(six, v4.addr, true, false));
        // So IPv4 is dialled first, and a connection back (a hole punch, which dials the same
        // address) is asked for it: found at its IPv6 address first or not.
        assert_eq!(r.way(six, false).order(), (v4.addr, Some(six)));
        assert_eq!(r.way(v4.addr, false).order(), (v4.addr, Some(six)));
        // Neither known reachable: IPv6 first, and a connection back at once.
        r.note(&v6(None));
        r.note(&source(1, None));
        assert_eq!(r.way(v4.addr, true), way(v4.addr, six, true, false));
        // IPv4 found reachable, IPv6 not known: IPv4 first.
        r.note(&source(1, Some(true)));
        assert_eq!(r.way(six, true), way(six, v4.addr, true, true));
        // IPv4 found reachable, IPv6 not: IPv4 first.
        r.note(&v6(Some(false)));
        assert_eq!(r.way(six, true), way(six, v4.addr, true, true));
    }

    #[test]
    fn routes_are_kept_and_a_source_found_reachable_is_dialled_before_it_is_asked() {
        let r = Reverse::default();
        r.note(&source(1, Some(false)));
        r.note(&source(2, Some(true)));
        r.note(&source(3, None));
        r.note(&wire::Source {
            via: None,
            ..source(4, Some(false))
        });
        assert_eq!(
            r.route(source(1, None).addr).map(|r| r.node),
            Some(NodeId([1; 32]))
        );
        // Found reachable: dialled, and asked to connect back only if that fails or takes a
        // while; not known, or unreachable: both at once.
        assert!(r.route(source(2, None).addr).is_some());
        assert!(
            r.way(source(2, None).addr, true).back_later,
            "reachable: dial it first"
        );
        assert!(r.route(source(3, None).addr).is_some(), "unknown: try both");
        assert!(!r.way(source(3, None).addr, true).back_later);
        assert!(!r.way(source(1, None).addr, true).back_later);
        assert_eq!(r.route(source(4, None).addr), None, "no super-peer named");
        // Bounded.
        for i in 0..ROUTES_KEPT + 10 {
            r.note(&wire::Source {
                addr: SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 1)),
                ..source(9, Some(false))
            });
        }
        assert_eq!(r.routes.lock().unwrap().by_addr.len(), ROUTES_KEPT);
        assert_eq!(r.route(source(1, None).addr), None, "the oldest went first");
    }

    #[test]
    fn a_node_that_accepts_no_connections_is_told_at_once() {
        let r = Reverse::default();
        let identity = Identity::generate();
        let route = Route {
            node: NodeId([1; 32]),
            // Nothing listens there: any attempt to ask would fail differently, or hang.
            via: "192.0.2.1:7700".parse().unwrap(),
            reachable: Some(false),
        };
        let me = Me {
            identity: &identity,
            bound: None,
            advertised: None,
            reachable: None,
            symmetric: false,
            overlay: None,
        };
        let started = std::time::Instant::now();
        let addr = "192.0.2.2:7001".parse().unwrap();
        let limit = Duration::from_secs(30);
        let err = smol::block_on(connect_via(&r, me, addr, route, limit))
            .err()
            .expect("refused");
        assert!(err.contains("accepts no connections"), "{err}");
        // Behind a symmetric NAT with a source that cannot be reached: no hole to punch.
        let me = Me {
            identity: &identity,
            bound: Some("0.0.0.0:7002".parse().unwrap()),
            advertised: Some("0.0.0.0:7002".parse().unwrap()),
            reachable: Some(false),
            symmetric: true,
            overlay: None,
        };
        let err = smol::block_on(connect_via(&r, me, addr, route, limit))
            .err()
            .expect("refused");
        assert!(err.contains("symmetric"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(r.waiting.lock().unwrap().is_empty(), "no token left behind");
    }

    /// A request for a connection back goes over the overlay's link when it holds one to the
    /// super-peer: no connection of its own is made. With no link, it is.
    #[test]
    fn a_request_goes_over_the_overlay_link_when_there_is_one() {
        let identity = Identity::generate();
        let listen: SocketAddr = "198.51.100.3:7001".parse().unwrap();
        smol::block_on(async {
            let superpeer = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let route = Route {
                node: NodeId([4; 32]),
                via: superpeer.local_addr().unwrap(),
                reachable: Some(false),
            };
            let (overlay, commands) = channel::bounded(4);
            let limit = Duration::from_secs(2);
            let request = |token| Message::ConnectToMe {
                node: route.node,
                token,
                punch: false,
            };
            let ask_with = |token, answer: crate::overlay::Asked| {
                let (overlay, commands, identity) = (&overlay, &commands, &identity);
                async move {
                    let asked = ask(
                        identity,
                        Some(overlay),
                        listen,
                        route,
                        request(token),
                        token,
                        limit,
                    );
                    let actor = async {
                        match commands.recv().await.unwrap() {
                            crate::overlay::Command::AskConnectBack {
                                via,
                                node,
                                token: t,
                                answer: tx,
                                ..
                            } => {
                                assert_eq!((via, node, t), (route.via, route.node, token));
                                tx.try_send(answer).unwrap();
                            }
                            _ => panic!("not a request for a connection back"),
                        }
                    };
                    smol::future::zip(asked, actor).await.0
                }
            };
            let accepted_within = |ms| {
                let superpeer = &superpeer;
                async move {
                    smol::future::or(async { superpeer.accept().await.is_ok() }, async {
                        smol::Timer::after(Duration::from_millis(ms)).await;
                        false
                    })
                    .await
                }
            };
            // Asked over the link: the super-peer's answer is ours, and nobody dialled it.
            // (With the super-peer's timing for a hole punch passed on.)
            let wait = Duration::from_millis(30);
            let ok = ask_with(1, crate::overlay::Asked::Answered(None, wait)).await;
            assert_eq!(ok, Ok(wait));
            let refused = ask_with(
                2,
                crate::overlay::Asked::Answered(
                    Some("leaf 0404 is not attached here".into()),
                    Duration::ZERO,
                ),
            )
            .await;
            assert!(refused.unwrap_err().contains("not attached here"));
            assert!(!accepted_within(200).await, "a connection was made");
            // No link to it: a connection of our own (which this listener never answers).
            let (fell_back, dialled) = smol::future::zip(
                ask_with(3, crate::overlay::Asked::NoLink),
                accepted_within(5000),
            )
            .await;
            assert!(dialled, "no connection of its own");
            assert!(fell_back.is_err());
        });
    }

    /// A real encrypted connection from `from` over loopback, as the downloader accepts it.
    async fn accepted_from(from: &Identity, me: &Identity) -> Accepted {
        let listener = smol::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limit = Duration::from_secs(5);
        let (dialled, accepted) = smol::future::zip(
            async {
                let s = TcpStream::connect(addr).await.unwrap();
                transport::secure::connect(s, from, limit).await.unwrap()
            },
            async {
                let (s, remote) = listener.accept().await.unwrap();
                (
                    transport::secure::accept(s, me, limit).await.unwrap(),
                    remote,
                )
            },
        )
        .await;
        drop(dialled);
        let (secure, remote) = accepted;
        Accepted {
            reader: FrameReader::new(secure.reader),
            writer: secure.writer,
            peer: secure.peer,
            remote,
            reached: Reached::Reverse,
        }
    }

    #[test]
    fn a_connection_back_goes_only_to_the_download_that_asked_the_source_it_came_from() {
        smol::block_on(async {
            let (me, source, stranger) = (
                Identity::generate(),
                Identity::generate(),
                Identity::generate(),
            );
            let r = Reverse::default();
            let waiting = r.expect(source.node());
            let (token, rx) = (waiting.token, &waiting.rx);
            // Another node naming the token (it saw it, or guessed it) is refused.
            let err = r
                .arrived(token, accepted_from(&stranger, &me).await)
                .unwrap_err();
            assert!(err.contains("was for node"), "{err}");
            // So is a token never asked for.
            let err = r
                .arrived(token ^ 1, accepted_from(&source, &me).await)
                .unwrap_err();
            assert!(err.contains("never asked for"), "{err}");
            // The source itself gets through, once.
            r.arrived(token, accepted_from(&source, &me).await).unwrap();
            assert_eq!(rx.try_recv().unwrap().peer, source.node());
            let err = r
                .arrived(token, accepted_from(&source, &me).await)
                .unwrap_err();
            assert!(err.contains("never asked for"), "{err}");
            // A wait that ends, however it ends, forgets its token.
            let other = r.expect(source.node());
            assert_eq!(r.waiting.lock().unwrap().len(), 1);
            drop(other);
            drop(waiting);
            assert!(r.waiting.lock().unwrap().is_empty());
        });
    }

    #[test]
    fn connections_back_are_bounded() {
        let r = Reverse::default();
        let held: Vec<_> = (0..MAX_CONNECT_BACKS)
            .map(|_| r.start_connect_back().expect("a place"))
            .collect();
        assert!(r.start_connect_back().is_none());
        drop(held);
        assert!(r.start_connect_back().is_some());
    }
}
