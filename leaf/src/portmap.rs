//! Asking the home router to forward our port, so that others can connect to a leaf behind
//! NAT: UPnP IGD (through `igd-next`), renewed before its lease ends, and removed when the node
//! stops. Or a port the user forwarded by hand or a VPN forwards (`--external-port`, or
//! `--external-port-file`, re-read as VPN clients rewrite it).
//!
//! [`PortMapper`] holds the rules, sans IO (time passed in): when to ask, when to renew, how
//! long to wait after a failure, and when the port others should use changes. The node's task
//! ([`crate::node`]) does the asking, off the executor, and tells the overlay the port to
//! announce; the super-peers then connect back to it and find the leaf reachable.
//!
//! `igd-next` was chosen for UPnP IGD: it is maintained (a fork of `igd` kept up by the
//! libp2p and iroh ecosystems), and its blocking API runs on smol's thread pool with no second
//! async runtime. NAT-PMP and PCP are not spoken yet.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// The lease asked for. Renewed at half of it.
pub const LEASE: Duration = Duration::from_secs(3600);
/// After a failure with no mapping held, the first wait; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(60);
/// The longest wait between attempts (a network with no UPnP gateway is asked this rarely).
pub const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);
/// After a failed renewal while the lease still runs: try again this soon.
pub const RENEW_RETRY: Duration = Duration::from_secs(60);
/// How long one search for the gateway waits for answers.
pub const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);

/// What the rules want done now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask the gateway to forward `external_port` (or, if it refuses, any port) to our listen
    /// port, for [`LEASE`].
    Map {
        /// The external port wanted: the one held, or else the listen port itself.
        external_port: u16,
    },
}

/// See the module docs.
#[derive(Debug)]
pub struct PortMapper {
    internal_port: u16,
    lease: Duration,
    /// The mapping held, and when its lease ends.
    held: Option<(SocketAddr, Instant)>,
    next: Instant,
    backoff: Duration,
    last_error: Option<String>,
}

impl PortMapper {
    /// Rules for forwarding to `internal_port` (where the node listens), starting at `now`.
    pub fn new(now: Instant, internal_port: u16, lease: Duration) -> Self {
        PortMapper {
            internal_port,
            lease,
            held: None,
            next: now,
            backoff: FIRST_BACKOFF,
            last_error: None,
        }
    }

    /// When [`PortMapper::poll_action`] next has something to do.
    pub fn poll_timeout(&self) -> Instant {
        self.next
    }

    /// What to do at `now`, if anything. Each action is answered with
    /// [`PortMapper::handle_mapped`] or [`PortMapper::handle_failed`].
    pub fn poll_action(&mut self, now: Instant) -> Option<Action> {
        if now < self.next {
            return None;
        }
        // Not again until answered (the answer sets the next time).
        self.next = now + MAX_BACKOFF;
        Some(Action::Map {
            external_port: self.held.map_or(self.internal_port, |(a, _)| a.port()),
        })
    }

    /// The gateway forwards `external` to us for `lease`. Returns the address others should
    /// use, if it changed.
    pub fn handle_mapped(
        &mut self,
        now: Instant,
        external: SocketAddr,
        lease: Duration,
    ) -> Option<Option<SocketAddr>> {
        let before = self.mapped(now);
        // A gateway that grants less than asked is renewed at half of what it granted
        // (0 means no end: renewed as if it had granted ours).
        let lease = if lease.is_zero() { self.lease } else { lease };
        self.held = Some((external, now + lease));
        self.next = now + (lease / 2).max(Duration::from_secs(30));
        self.backoff = FIRST_BACKOFF;
        self.last_error = None;
        (before != Some(external)).then_some(Some(external))
    }

    /// Asking failed. Returns `Some(None)` if a mapping was held and its lease has run out.
    pub fn handle_failed(&mut self, now: Instant, why: String) -> Option<Option<SocketAddr>> {
        self.last_error = Some(why);
        match self.held {
            Some((_, until)) if now < until => {
                self.next = (now + RENEW_RETRY).min(until);
                None
            }
            Some(_) => {
                self.held = None;
                self.next = now + self.backoff;
                Some(None)
            }
            None => {
                self.next = now + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                None
            }
        }
    }

    /// The time passed: a mapping whose lease ran out (renewals failing) is gone. Returns
    /// `Some(None)` when that happens.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Option<SocketAddr>> {
        match self.held {
            Some((_, until)) if now >= until => {
                self.held = None;
                Some(None)
            }
            _ => None,
        }
    }

    /// The external address held at `now`.
    pub fn mapped(&self, now: Instant) -> Option<SocketAddr> {
        self.held.filter(|(_, until)| now < *until).map(|(a, _)| a)
    }

    /// Why the last attempt failed, if it did.
    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }
}

/// A gateway found, and the address we reach it from.
#[derive(Debug, Clone)]
pub struct Gateway {
    gateway: igd_next::Gateway,
    local: IpAddr,
}

impl Gateway {
    /// The gateway's address, for status.
    pub fn addr(&self) -> SocketAddr {
        self.gateway.addr
    }
}

/// Blocking: finds the gateway (unless `known`), and asks it to forward `external_port` (or,
/// refused, any port it picks) to `internal_port` on this host. Returns the gateway and the
/// external address.
pub fn map_blocking(
    known: Option<Gateway>,
    internal_port: u16,
    external_port: u16,
    lease: Duration,
) -> Result<(Gateway, SocketAddr), String> {
    let gw = match known {
        Some(gw) => gw,
        None => {
            let options = igd_next::SearchOptions {
                timeout: Some(SEARCH_TIMEOUT),
                single_search_timeout: Some(SEARCH_TIMEOUT),
                ..Default::default()
            };
            let gateway = igd_next::search_gateway(options)
                .map_err(|e| format!("no UPnP gateway answered: {e}"))?;
            // The address the gateway sees us at: what it must forward to.
            let local = UdpSocket::bind(("0.0.0.0", 0))
                .and_then(|s| s.connect(gateway.addr).and_then(|()| s.local_addr()))
                .map_err(|e| format!("no route to the gateway {}: {e}", gateway.addr))?
                .ip();
            Gateway { gateway, local }
        }
    };
    let at = gw.gateway.addr;
    let ip = gw
        .gateway
        .get_external_ip()
        .map_err(|e| format!("gateway {at}: external address: {e}"))?;
    let local = SocketAddr::new(gw.local, internal_port);
    let mut lease_s = lease.as_secs() as u32;
    let tcp = igd_next::PortMappingProtocol::TCP;
    let mut asked = gw
        .gateway
        .add_port(tcp, external_port, local, lease_s, "canopy");
    if let Err(igd_next::AddPortError::OnlyPermanentLeasesSupported) = asked {
        // Some routers take no lease but "forever" (0); renewing is then harmless, and the
        // mapping is removed when the node stops.
        lease_s = 0;
        asked = gw
            .gateway
            .add_port(tcp, external_port, local, lease_s, "canopy");
    }
    let port = match asked {
        Ok(()) => external_port,
        Err(first) => gw
            .gateway
            .add_any_port(tcp, local, lease_s, "canopy")
            .map_err(|e| {
                format!("gateway {at} refused port {external_port} ({first}) and any other ({e})")
            })?,
    };
    Ok((gw, SocketAddr::new(ip, port)))
}

/// Blocking: removes the mapping of `external_port` (when the node stops).
pub fn unmap_blocking(gw: &Gateway, external_port: u16) -> Result<(), String> {
    gw.gateway
        .remove_port(igd_next::PortMappingProtocol::TCP, external_port)
        .map_err(|e| format!("gateway {}: {e}", gw.gateway.addr))
}

/// Reads a forwarded port from `path`, as VPN clients write it (the number alone, maybe with
/// a newline).
pub fn read_port_file(path: &std::path::Path) -> Result<u16, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    match text.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!(
            "{}: expected a port number (1 to 65535), found {:?}",
            path.display(),
            text.trim().chars().take(20).collect::<String>()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([80, 77, 1, 2], port))
    }

    #[test]
    fn the_listen_port_is_asked_for_first_then_renewed_at_half_the_lease() {
        let t0 = Instant::now();
        let mut m = PortMapper::new(t0, 7001, LEASE);
        assert_eq!(
            m.poll_action(t0),
            Some(Action::Map {
                external_port: 7001
            })
        );
        assert_eq!(m.poll_action(t0), None, "one question at a time");
        // The gateway gave another port: that is what others must use.
        assert_eq!(
            m.handle_mapped(t0, addr(40001), LEASE),
            Some(Some(addr(40001)))
        );
        assert_eq!(m.poll_timeout(), t0 + LEASE / 2);
        assert_eq!(m.poll_action(t0 + LEASE / 4), None);
        // Renewal asks for the port held, and changes nothing when granted.
        let t1 = t0 + LEASE / 2;
        assert_eq!(
            m.poll_action(t1),
            Some(Action::Map {
                external_port: 40001
            })
        );
        assert_eq!(m.handle_mapped(t1, addr(40001), LEASE), None);
        // A gateway granting a shorter lease is renewed sooner; one granting "forever" as if
        // it had granted ours.
        m.handle_mapped(t1, addr(40001), Duration::from_secs(120));
        assert_eq!(m.poll_timeout(), t1 + Duration::from_secs(60));
        m.handle_mapped(t1, addr(40001), Duration::ZERO);
        assert_eq!(m.poll_timeout(), t1 + LEASE / 2);
    }

    #[test]
    fn failed_renewals_keep_the_mapping_until_its_lease_ends() {
        let t0 = Instant::now();
        let mut m = PortMapper::new(t0, 7001, LEASE);
        m.poll_action(t0);
        m.handle_mapped(t0, addr(7001), LEASE);
        let t1 = t0 + LEASE / 2;
        m.poll_action(t1);
        assert_eq!(m.handle_failed(t1, "gateway rebooting".into()), None);
        assert_eq!(m.mapped(t1), Some(addr(7001)));
        assert_eq!(m.poll_timeout(), t1 + RENEW_RETRY);
        assert_eq!(m.last_error(), Some("gateway rebooting"));
        // The lease runs out with no renewal: the address is withdrawn.
        let end = t0 + LEASE;
        assert_eq!(m.handle_timeout(end - Duration::from_secs(1)), None);
        assert_eq!(m.handle_timeout(end), Some(None));
        assert_eq!(m.mapped(end), None);
        // The next success announces it again.
        m.poll_action(m.poll_timeout().max(end));
        assert_eq!(
            m.handle_mapped(end, addr(7001), LEASE),
            Some(Some(addr(7001)))
        );
    }

    #[test]
    fn with_no_gateway_attempts_back_off_to_half_an_hour() {
        let t0 = Instant::now();
        let mut m = PortMapper::new(t0, 7001, LEASE);
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            assert!(m.poll_action(now).is_some());
            assert_eq!(
                m.handle_failed(now, "no UPnP gateway answered".into()),
                None
            );
            waits.push((m.poll_timeout() - now).as_secs());
            now = m.poll_timeout();
        }
        assert_eq!(waits, [60, 120, 240, 480, 960, 1800, 1800, 1800]);
    }

    #[test]
    fn a_port_file_holds_a_number_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("forwarded_port");
        std::fs::write(&f, "51413\n").unwrap();
        assert_eq!(read_port_file(&f), Ok(51413));
        for bad in ["", "0", "70000", "port 5\n", "\u{1b}[2J"] {
            std::fs::write(&f, bad).unwrap();
            let err = read_port_file(&f).unwrap_err();
            assert!(err.contains("expected a port number"), "{err}");
            assert!(!err.contains('\u{1b}'), "{err:?}");
        }
        let err = read_port_file(&dir.path().join("missing")).unwrap_err();
        assert!(err.contains("missing"), "{err}");
    }
}
