//! Who may use the web UI: the rules every request passes before it reaches the node, as pure
//! functions of the request's facts (no IO), so each rule is tested on its own.
//!
//! - **Host.** The `Host` header must name the server itself: `localhost` or an IP literal, on
//!   the port it listens on. A DNS name is refused, which stops DNS rebinding (a page on
//!   `evil.example` whose name is made to point at 127.0.0.1). Bound to loopback, only
//!   loopback names pass.
//! - **Origin.** A request that carries `Origin` (browsers send it on POST and on cross-origin
//!   requests) must come from the UI's own origin: no cross-site request forgery.
//! - **Token.** Every API request carries the node's token as `Authorization: Bearer TOKEN`.
//!   The page gets it from the address `leaf web-url` prints (`/#token=TOKEN`: a fragment, which
//!   a browser never sends to a server, nor in a `Referer`) and keeps it in `sessionStorage`,
//!   which belongs to one origin, port included. No cookie: a cookie would go to every server on
//!   the same host, whatever its port, and with every request a page there makes. The
//!   comparison takes the same time wherever the tokens differ.
//!
//! The page's own files hold no secret: they pass the Host rule only.

use std::net::IpAddr;

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `Host` header (HTTP/1.1 requires one).
    #[error("no Host header")]
    NoHost,
    /// The `Host` header names something other than this server.
    #[error("Host `{0}` is not this server: open the address `leaf web-url` prints")]
    BadHost(String),
    /// The request comes from another site's page.
    #[error("Origin `{0}` is not this server's")]
    BadOrigin(String),
    /// No token came with the request.
    #[error(
        "no token: open the address `leaf web-url` prints, or send `Authorization: Bearer TOKEN`"
    )]
    NoToken,
    /// A token came, but not this node's.
    #[error("wrong token: open the address `leaf web-url` prints")]
    BadToken,
}

impl Refusal {
    /// The HTTP status it is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NoToken | Refusal::BadToken => 401,
            _ => 403,
        }
    }
}

/// The facts of a request the rules look at.
#[derive(Debug, Clone, Default)]
pub struct Facts<'a> {
    /// The `Host` header.
    pub host: Option<&'a str>,
    /// The `Origin` header.
    pub origin: Option<&'a str>,
    /// The `Authorization` header.
    pub authorization: Option<&'a str>,
}

/// The rules of one web server.
#[derive(Debug, Clone)]
pub struct Guard {
    token: String,
    port: u16,
    loopback_only: bool,
}

impl Guard {
    /// The rules for a server listening on `port` (on a loopback address if `loopback_only`)
    /// with `token`.
    pub fn new(token: String, port: u16, loopback_only: bool) -> Guard {
        Guard {
            token,
            port,
            loopback_only,
        }
    }

    /// Checks a request for the page's own files: its Host and its Origin.
    pub fn check_page(&self, facts: &Facts<'_>) -> Result<(), Refusal> {
        let host = facts.host.ok_or(Refusal::NoHost)?;
        if !self.host_ok(host) {
            return Err(Refusal::BadHost(shown(host)));
        }
        if let Some(origin) = facts.origin {
            if origin != format!("http://{host}") {
                return Err(Refusal::BadOrigin(shown(origin)));
            }
        }
        Ok(())
    }

    /// Checks an API request: its Host, its Origin, then its token.
    pub fn check(&self, facts: &Facts<'_>) -> Result<(), Refusal> {
        self.check_page(facts)?;
        let given = facts
            .authorization
            .and_then(|a| a.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or(Refusal::NoToken)?;
        if same(given.as_bytes(), self.token.as_bytes()) {
            Ok(())
        } else {
            Err(Refusal::BadToken)
        }
    }

    /// `localhost` or an IP literal (IPv6 in brackets), on this server's port (80 when none is
    /// given); only loopback ones when the server listens on loopback.
    fn host_ok(&self, host: &str) -> bool {
        let (name, port) = match host.rsplit_once(':') {
            // `[::1]` alone has colons inside the brackets, not before a port.
            Some((name, port)) if !port.contains(']') => (name, port.parse::<u16>().ok()),
            _ => (host, Some(80)),
        };
        if port != Some(self.port) {
            return false;
        }
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let bare = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .unwrap_or(name);
        let bracketed = bare != name;
        match bare.parse::<IpAddr>() {
            // An IPv6 literal is bracketed in a Host header, and only an IPv6 one.
            Ok(IpAddr::V6(_)) if !bracketed => false,
            Ok(IpAddr::V4(_)) if bracketed => false,
            Ok(ip) => !self.loopback_only || ip.is_loopback(),
            Err(_) => false,
        }
    }
}

/// Equal, in a time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A header value as an error message may show it: at most 100 characters, terminal-safe.
fn shown(text: &str) -> String {
    let cut: String = text.chars().take(100).collect();
    wire::text::terminal_safe(&cut).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef";

    fn guard() -> Guard {
        Guard::new(TOKEN.into(), 7780, true)
    }

    fn facts(host: &'static str) -> Facts<'static> {
        Facts {
            host: Some(host),
            authorization: Some("Bearer 0123456789abcdef"),
            ..Default::default()
        }
    }

    #[test]
    fn the_token_passes_by_header_only_and_the_page_needs_none() {
        let g = guard();
        assert_eq!(g.check(&facts("127.0.0.1:7780")), Ok(()));
        let page = Facts {
            host: Some("localhost:7780"),
            ..Default::default()
        };
        assert_eq!(g.check_page(&page), Ok(()));
        assert_eq!(g.check(&page), Err(Refusal::NoToken));
        assert_eq!(Refusal::NoToken.status(), 401);
        assert_eq!(Refusal::BadHost("x".into()).status(), 403);
    }

    #[test]
    fn no_token_or_another_is_refused() {
        let g = guard();
        let none = Facts {
            host: Some("127.0.0.1:7780"),
            ..Default::default()
        };
        assert_eq!(g.check(&none), Err(Refusal::NoToken));
        for wrong in [
            "Bearer 0123456789abcdeF",
            "Bearer 0123",
            "Bearer ",
            "Basic x",
        ] {
            let f = Facts {
                authorization: Some(wrong),
                ..facts("127.0.0.1:7780")
            };
            let got = g.check(&f);
            assert!(
                matches!(got, Err(Refusal::BadToken | Refusal::NoToken)),
                "{wrong}: {got:?}"
            );
        }
    }

    #[test]
    fn a_host_that_is_not_this_server_is_refused() {
        let g = guard();
        for host in [
            "evil.example:7780",
            "127.0.0.1",
            "127.0.0.1:80",
            "127.0.0.1:7781",
            "192.168.1.5:7780",
            "::1:7780",
            "localhost.evil.example:7780",
            "localhost.:7780",
            "127.0.0.1:7780@evil.example",
            "[::ffff:127.0.0.1]:7780",
            "[127.0.0.1]:7780",
        ] {
            assert_eq!(
                g.check(&facts(host)),
                Err(Refusal::BadHost(host.into())),
                "{host}"
            );
            assert!(g.check_page(&facts(host)).is_err(), "{host}");
        }
        assert_eq!(g.check(&facts("[::1]:7780")), Ok(()));
        assert_eq!(g.check(&facts("LOCALHOST:7780")), Ok(()));
        assert_eq!(
            g.check(&Facts {
                host: None,
                ..facts("x")
            }),
            Err(Refusal::NoHost)
        );
    }

    #[test]
    fn a_remote_server_takes_ip_literals_but_no_names() {
        let g = Guard::new(TOKEN.into(), 7780, false);
        assert_eq!(g.check(&facts("192.168.1.5:7780")), Ok(()));
        assert_eq!(g.check(&facts("[fd00::5]:7780")), Ok(()));
        assert!(matches!(
            g.check(&facts("nas.local:7780")),
            Err(Refusal::BadHost(_))
        ));
    }

    #[test]
    fn another_sites_origin_is_refused() {
        let g = guard();
        let ok = Facts {
            origin: Some("http://127.0.0.1:7780"),
            ..facts("127.0.0.1:7780")
        };
        assert_eq!(g.check(&ok), Ok(()));
        for origin in [
            "http://evil.example",
            "null",
            "https://127.0.0.1:7780",
            "http://127.0.0.1:7781",
            "HTTP://127.0.0.1:7780",
        ] {
            let f = Facts {
                origin: Some(origin),
                ..facts("127.0.0.1:7780")
            };
            assert_eq!(g.check(&f), Err(Refusal::BadOrigin(origin.into())));
        }
    }

    #[test]
    fn header_text_in_a_refusal_is_cut_and_made_safe() {
        let g = guard();
        let long = format!("\u{1b}[2J{}:7780", "a".repeat(300));
        let long: &'static str = Box::leak(long.into_boxed_str());
        match g.check(&facts(long)) {
            Err(Refusal::BadHost(shown)) => {
                // 100 characters kept, the escape written out visibly.
                assert!(shown.starts_with("\\u{1b}[2Jaaa"), "{shown}");
                assert_eq!(shown.chars().count(), 100 - 1 + "\\u{1b}".len());
            }
            other => panic!("{other:?}"),
        }
    }
}
