//! Asking the home router to forward our port, so that others can connect to a leaf behind
//! NAT: UPnP IGD (through `igd-next`), or else PCP or NAT-PMP (through `crab_nat`) at the
//! default gateway, renewed before its lease ends, and removed when the node stops. Or a port
//! the user forwarded by hand or a VPN forwards (`--external-port`, or
//! `--external-port-file`, re-read as VPN clients rewrite it).
//!
//! [`PortMapper`] holds the rules, sans IO (time passed in): when to ask, when to renew, how
//! long to wait after a failure, and when the port others should use changes. The node's task
//! ([`crate::node`]) does the asking, off the executor, and tells the overlay the port to
//! announce; the super-peers then connect back to it and find the leaf reachable.
//!
//! `igd-next` was chosen for UPnP IGD: it is maintained (a fork of `igd` kept up by the
//! libp2p and iroh ecosystems), and its blocking API runs on smol's thread pool with no second
//! async runtime. `crab_nat` speaks PCP (RFC 6887) and falls back to NAT-PMP (RFC 6886), the
//! protocols of routers that have no UPnP (Apple's, and many that run miniupnpd with UPnP
//! off); it is small and needs only tokio's UDP and timers, already in the build for the web
//! UI. It runs on a current-thread tokio runtime made for each attempt, on the same thread
//! pool, so nothing of tokio touches smol's executor.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::num::NonZeroU16;
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
/// The port PCP and NAT-PMP servers listen on.
pub const PCP_PORT: u16 = 5351;
/// A PCP or NAT-PMP request waits 250 ms for an answer, then is sent again and waits 500 ms,
/// then once more and waits 1 s: a router that has not answered in 1.75 s does not speak them.
const PCP_TIMEOUTS: crab_nat::TimeoutConfig = crab_nat::TimeoutConfig {
    initial_timeout: Duration::from_millis(250),
    max_retries: 2,
    max_retry_timeout: Some(Duration::from_secs(1)),
};

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

/// A gateway found, and how it is spoken to.
#[derive(Debug, Clone)]
pub enum Gateway {
    /// A UPnP IGD, and the address we reach it from.
    Upnp {
        /// The gateway as `igd-next` found it.
        gateway: igd_next::Gateway,
        /// Our address as it sees us.
        local: IpAddr,
    },
    /// A router that speaks PCP or NAT-PMP, with the mapping it granted (what renewing and
    /// removing it need: PCP names a mapping by a nonce).
    Pcp(crab_nat::PortMapping),
}

impl Gateway {
    /// The gateway's address, for status.
    pub fn addr(&self) -> SocketAddr {
        match self {
            Gateway::Upnp { gateway, .. } => gateway.addr,
            Gateway::Pcp(m) => SocketAddr::new(m.gateway().into(), PCP_PORT),
        }
    }

    /// The lease the gateway granted, when it says (PCP and NAT-PMP do); else `asked`.
    pub fn lease(&self, asked: Duration) -> Duration {
        match self {
            Gateway::Upnp { .. } => asked,
            Gateway::Pcp(m) => Duration::from_secs(m.lifetime().into()),
        }
    }

    /// The protocol spoken, for status: "UPnP", "PCP" or "NAT-PMP".
    pub fn protocol(&self) -> &'static str {
        match self {
            Gateway::Upnp { .. } => "UPnP",
            Gateway::Pcp(m) => match m.mapping_type() {
                crab_nat::PortMappingType::Pcp { .. } => "PCP",
                crab_nat::PortMappingType::NatPmp => "NAT-PMP",
            },
        }
    }
}

/// The default gateways in a `/proc/net/route` table: the routes to 0.0.0.0/0 through a
/// gateway (flag RTF_GATEWAY), in the table's order.
pub fn default_gateways(route_table: &str) -> Vec<Ipv4Addr> {
    const RTF_UP: u32 = 0x1;
    const RTF_GATEWAY: u32 = 0x2;
    route_table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let hex = |i: usize| f.get(i).and_then(|s| u32::from_str_radix(s, 16).ok());
            let (dest, gw, flags, mask) = (hex(1)?, hex(2)?, hex(3)?, hex(7)?);
            let wanted = RTF_UP | RTF_GATEWAY;
            // The addresses are written as the kernel holds them: in network order, read
            // as a number in the host's order.
            (dest == 0 && mask == 0 && flags & wanted == wanted && gw != 0)
                .then(|| Ipv4Addr::from(gw.to_ne_bytes()))
        })
        .collect()
}

/// A tokio runtime on this thread, for `crab_nat` (see the module docs).
fn pcp_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("PCP: cannot start its runtime: {e}"))
}

/// Blocking: asks the default gateway for a mapping with PCP, or NAT-PMP if it speaks only
/// that, renewing `held` when it is for the same external port.
fn map_pcp_blocking(
    held: Option<crab_nat::PortMapping>,
    internal_port: u16,
    external_port: u16,
    lease: Duration,
) -> Result<(Gateway, SocketAddr), String> {
    let runtime = pcp_runtime()?;
    runtime.block_on(async move {
        let internal = NonZeroU16::new(internal_port).ok_or("PCP: internal port 0")?;
        let mapping = match held.filter(|m| m.external_port().get() == external_port) {
            Some(mut m) => {
                let at = m.gateway();
                m.renew()
                    .await
                    .map_err(|e| format!("gateway {}: renewing: {e}", IpAddr::from(at)))?;
                m
            }
            None => {
                let table = std::fs::read_to_string("/proc/net/route")
                    .map_err(|e| format!("no default gateway known (/proc/net/route: {e})"))?;
                let routers = default_gateways(&table);
                if routers.is_empty() {
                    return Err("no default gateway in /proc/net/route".to_string());
                }
                let mut failures = Vec::new();
                let mut found = None;
                for router in routers {
                    let at = SocketAddr::from((router, PCP_PORT));
                    // Our address as the router sees us, which PCP names in its request.
                    let local = match UdpSocket::bind(("0.0.0.0", 0))
                        .and_then(|s| s.connect(at).and_then(|()| s.local_addr()))
                    {
                        Ok(local) => local.ip(),
                        Err(e) => {
                            failures.push(format!("{router}: no route: {e}"));
                            continue;
                        }
                    };
                    let options = crab_nat::PortMappingOptions {
                        external_port: NonZeroU16::new(external_port),
                        lifetime_seconds: Some(lease.as_secs().min(u64::from(u32::MAX)) as u32),
                        timeout_config: Some(PCP_TIMEOUTS),
                    };
                    let tcp = crab_nat::InternetProtocol::Tcp;
                    match crab_nat::PortMapping::new(router.into(), local, tcp, internal, options)
                        .await
                    {
                        Ok(m) => {
                            found = Some(m);
                            break;
                        }
                        Err(e) => failures.push(format!("{router}: {e}")),
                    }
                }
                found.ok_or_else(|| {
                    format!(
                        "no PCP or NAT-PMP router answered ({})",
                        failures.join("; ")
                    )
                })?
            }
        };
        let ip = match mapping.mapping_type() {
            crab_nat::PortMappingType::Pcp { external_ip, .. } => external_ip,
            crab_nat::PortMappingType::NatPmp => {
                let at = mapping.gateway();
                crab_nat::natpmp::external_address(at, Some(PCP_TIMEOUTS))
                    .await
                    .map(IpAddr::V4)
                    .map_err(|e| format!("gateway {}: external address: {e}", IpAddr::from(at)))?
            }
        };
        let external = SocketAddr::new(ip, mapping.external_port().get());
        Ok((Gateway::Pcp(mapping), external))
    })
}

/// Blocking: finds the gateway (unless `known`): a UPnP IGD, or else a router speaking PCP or
/// NAT-PMP; and asks it to forward `external_port` (or, refused, any port it picks) to
/// `internal_port` on this host. Returns the gateway and the external address.
pub fn map_blocking(
    known: Option<Gateway>,
    internal_port: u16,
    external_port: u16,
    lease: Duration,
) -> Result<(Gateway, SocketAddr), String> {
    let (gateway, local) = match known {
        Some(Gateway::Upnp { gateway, local }) => (gateway, local),
        Some(Gateway::Pcp(held)) => {
            return map_pcp_blocking(Some(held), internal_port, external_port, lease)
        }
        None => {
            let options = igd_next::SearchOptions {
                timeout: Some(SEARCH_TIMEOUT),
                single_search_timeout: Some(SEARCH_TIMEOUT),
                ..Default::default()
            };
            let gateway = match igd_next::search_gateway(options) {
                Ok(gateway) => gateway,
                Err(upnp) => {
                    return map_pcp_blocking(None, internal_port, external_port, lease)
                        .map_err(|pcp| format!("no UPnP gateway answered ({upnp}), and {pcp}"))
                }
            };
            // The address the gateway sees us at: what it must forward to.
            let local = UdpSocket::bind(("0.0.0.0", 0))
                .and_then(|s| s.connect(gateway.addr).and_then(|()| s.local_addr()))
                .map_err(|e| format!("no route to the gateway {}: {e}", gateway.addr))?
                .ip();
            (gateway, local)
        }
    };
    let at = gateway.addr;
    let ip = gateway
        .get_external_ip()
        .map_err(|e| format!("gateway {at}: external address: {e}"))?;
    let to = SocketAddr::new(local, internal_port);
    let mut lease_s = lease.as_secs() as u32;
    let tcp = igd_next::PortMappingProtocol::TCP;
    let mut asked = gateway.add_port(tcp, external_port, to, lease_s, "canopy");
    if let Err(igd_next::AddPortError::OnlyPermanentLeasesSupported) = asked {
        // Some routers take no lease but "forever" (0); renewing is then harmless, and the
        // mapping is removed when the node stops.
        lease_s = 0;
        asked = gateway.add_port(tcp, external_port, to, lease_s, "canopy");
    }
    let port = match asked {
        Ok(()) => external_port,
        Err(first) => gateway
            .add_any_port(tcp, to, lease_s, "canopy")
            .map_err(|e| {
                format!("gateway {at} refused port {external_port} ({first}) and any other ({e})")
            })?,
    };
    Ok((Gateway::Upnp { gateway, local }, SocketAddr::new(ip, port)))
}

/// Blocking: removes the mapping of `external_port` (when the node stops).
pub fn unmap_blocking(gw: &Gateway, external_port: u16) -> Result<(), String> {
    match gw {
        Gateway::Upnp { gateway, .. } => gateway
            .remove_port(igd_next::PortMappingProtocol::TCP, external_port)
            .map_err(|e| format!("gateway {}: {e}", gateway.addr)),
        Gateway::Pcp(m) => {
            let runtime = pcp_runtime()?;
            let at = IpAddr::from(m.gateway());
            runtime
                .block_on(m.clone().try_drop())
                .map_err(|(e, _)| format!("gateway {at}: {e}"))
        }
    }
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
    fn the_default_gateway_is_read_from_the_kernels_route_table() {
        // /proc/net/route of a host on 192.168.77.0/24 whose router is 192.168.77.1, with a
        // second default route (a VPN) that is down, and a host route through a gateway.
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t014DA8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     tun0\t00000000\t0100080A\t0002\t0\t0\t50\t00000000\t0\t0\t0\n\
                     eth0\t004DA8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t0A0A0A0A\t014DA8C0\t0007\t0\t0\t0\tFFFFFFFF\t0\t0\t0\n\
                     garbage line\n";
        assert_eq!(default_gateways(table), [Ipv4Addr::new(192, 168, 77, 1)]);
        assert!(default_gateways("").is_empty());
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
