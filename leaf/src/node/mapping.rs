//! The port others should connect to, when it is not the one the node listens on: a mapping
//! on the home router (UPnP IGD, PCP or NAT-PMP: [`crate::portmap`]), or a port forwarded by
//! hand or by a VPN (`--external-port`, `--external-port-file`). This task owns it: it
//! publishes the port in `NodeState::external_port` and the status, and tells the overlay,
//! which attaches again so the super-peers hear it and connect back to it.

use super::*;
use crate::control::PortMapping;
use crate::portmap::{self, Action, PortMapper};

/// How often a forwarded-port file is read again (VPN clients rewrite it when they reconnect).
const PORT_FILE_EVERY: Duration = Duration::from_secs(30);
/// One attempt at the gateway, at most (its HTTP requests have no timeout of their own).
const ATTEMPT_LIMIT: Duration = Duration::from_secs(20);

/// Where the external port comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternalPort {
    /// Ask the router (UPnP IGD, else PCP or NAT-PMP).
    Upnp,
    /// This port, forwarded by hand.
    Fixed(u16),
    /// The port written in this file.
    File(PathBuf),
}

/// The mapping held on the gateway, so shutdown can remove it.
#[derive(Default)]
pub(super) struct Held(Mutex<Option<(portmap::Gateway, u16)>>);

impl Node {
    /// Runs the external port's source until the node stops.
    pub(super) async fn run_external_port(self, how: ExternalPort, listen: SocketAddr) {
        match how {
            ExternalPort::Fixed(port) => {
                self.set_external(Some(port), format!("--external-port {port}"));
            }
            ExternalPort::File(path) => loop {
                match portmap::read_port_file(&path) {
                    Ok(port) => self.set_external(Some(port), format!("from {}", path.display())),
                    Err(e) => self.set_external(None, e),
                }
                smol::Timer::after(PORT_FILE_EVERY).await;
            },
            ExternalPort::Upnp => self.run_upnp(listen.port()).await,
        }
    }

    async fn run_upnp(&self, internal: u16) {
        let mut rules = PortMapper::new(Instant::now(), internal, portmap::LEASE);
        let mut gateway: Option<portmap::Gateway> = None;
        self.set_external(None, "asking the router (UPnP, PCP, NAT-PMP)".into());
        loop {
            smol::Timer::at(rules.poll_timeout()).await;
            let now = Instant::now();
            if rules.handle_timeout(now).is_some() {
                *self.inner.mapping.0.lock().unwrap() = None;
                self.set_external(None, "the router's lease ran out".into());
            }
            let Some(Action::Map { external_port }) = rules.poll_action(now) else {
                continue;
            };
            let known = gateway.clone();
            let attempt = smol::unblock(move || {
                portmap::map_blocking(known, internal, external_port, portmap::LEASE)
            });
            let result = smol::future::or(attempt, async {
                smol::Timer::after(ATTEMPT_LIMIT).await;
                Err(format!(
                    "no answer from the gateway within {ATTEMPT_LIMIT:?}"
                ))
            })
            .await;
            let now = Instant::now();
            match result {
                Ok((gw, external)) => {
                    let detail = format!(
                        "{}: the router at {} forwards {external}",
                        gw.protocol(),
                        gw.addr()
                    );
                    let held = self
                        .inner
                        .mapping
                        .0
                        .lock()
                        .unwrap()
                        .replace((gw.clone(), external.port()));
                    if let Some((old_gw, old)) = held.filter(|(_, p)| *p != external.port()) {
                        // Moved to another port: the old UPnP forward goes. (A PCP or NAT-PMP
                        // mapping is named by its internal port, which the new one shares:
                        // removing the old would remove the new.)
                        if matches!(old_gw, portmap::Gateway::Upnp { .. }) {
                            let _ =
                                smol::unblock(move || portmap::unmap_blocking(&old_gw, old)).await;
                        }
                    }
                    rules.handle_mapped(now, external, gw.lease(portmap::LEASE));
                    gateway = Some(gw);
                    self.set_external(Some(external.port()), detail);
                }
                Err(e) => {
                    rules.handle_failed(now, e.clone());
                    // While the lease runs, the same gateway is asked again (a PCP mapping
                    // is renewed only under its own nonce: a new one would be refused). Once
                    // it has run out, the gateway is found again: it may have moved.
                    if rules.mapped(now).is_none() {
                        gateway = None;
                        *self.inner.mapping.0.lock().unwrap() = None;
                        self.set_external(None, e);
                    }
                }
            }
        }
    }

    /// Others should connect to `port` (None: to the listen port itself), for the reason
    /// `how`. The overlay hears of a change and attaches again.
    fn set_external(&self, port: Option<u16>, how: String) {
        let state = &self.inner.state;
        let before = state
            .external_port
            .swap(port.unwrap_or(0), Ordering::AcqRel);
        if before != port.unwrap_or(0) {
            let shown = port.map_or("none".into(), |p| p.to_string());
            log::info!("external port {shown}: {how}");
            let overlay = &self.inner.overlay;
            let lost = port.is_none();
            let advertise = crate::overlay::Command::Advertise(state.advertised(), lost);
            let _ = overlay.try_send(advertise);
            let _ = overlay.try_send(crate::overlay::Command::Note(format!(
                "external port {shown}: {how}"
            )));
        }
        *self.inner.port_mapping.lock().unwrap() = Some(PortMapping { port, how });
    }

    /// Removes the router's mapping, if one is held (the node stops).
    pub(super) async fn unmap(&self) {
        let Some((gw, port)) = self.inner.mapping.0.lock().unwrap().take() else {
            return;
        };
        let removed = smol::unblock(move || portmap::unmap_blocking(&gw, port));
        let done = smol::future::or(async { Some(removed.await) }, async {
            smol::Timer::after(Duration::from_secs(2)).await;
            None
        })
        .await;
        match done {
            Some(Ok(())) => log::info!("removed the router's mapping of port {port}"),
            Some(Err(e)) => log::info!("could not remove the router's mapping of port {port}: {e}"),
            None => log::info!("the gateway did not answer the removal of port {port}"),
        }
    }
}
