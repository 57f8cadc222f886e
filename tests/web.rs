//! The web UI's HTTP API against a real node on 127.0.0.1 (ephemeral ports): the API needs the
//! token (no cookie is set or taken), the page does not; another Host or Origin is refused; a remote address
//! needs its flag; a search streams its results as server-sent events; a download is started,
//! paused and resumed; bad requests get errors that say what is wrong.
//!
//! Requests are written by hand over a TCP connection (`Connection: close`), so the test sees
//! exactly what a browser or `curl` would send, Host header included.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use canopy::corpus;
use canopy::net::{self, run_bounded, wait_until};
use leaf::control::DownloadState;
use leaf::web::WebConfig;
use wire::FileId;

/// A node serving its web UI, and how to call it.
struct Web {
    node: leaf::Node,
    addr: SocketAddr,
    token: String,
}

impl Web {
    /// A leaf with a web UI on an ephemeral port, downloads from the page going to
    /// `base/web-out`.
    async fn start(base: &Path, name: &str, sp: SocketAddr, rate: u64) -> Web {
        let out = base.join(format!("{name}-web-out"));
        let node = net::leaf_with(base, name, &[sp], |c| {
            c.control = true;
            c.download_rate = rate;
            c.web = Some(WebConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                allow_remote: false,
                out,
            });
        })
        .await;
        let addr = node.status().web.expect("the node serves its web UI");
        let token = leaf::web::read_token(node.data_dir()).unwrap();
        let url = node.web_url().unwrap();
        assert_eq!(url, format!("http://{addr}/#token={token}"));
        Web { node, addr, token }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `method path` with the token as a bearer header and `extra` header lines.
    async fn call(&self, method: &str, path: &str, extra: &str, body: &str) -> Reply {
        let auth = format!("Authorization: Bearer {}\r\n{extra}", self.token);
        self.raw(method, path, &self.host(), &auth, body, |_| false)
            .await
    }

    /// A request with this Host and these header lines; reads until `enough(text so far)` or
    /// the server closes (10 s at most).
    async fn raw(
        &self,
        method: &str,
        path: &str,
        host: &str,
        headers: &str,
        body: &str,
        enough: impl Fn(&str) -> bool + Send + 'static,
    ) -> Reply {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Content-Length: {}\r\n\
             Content-Type: application/json\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let addr = self.addr;
        smol::unblock(move || http(addr, &request, enough, Duration::from_secs(10))).await
    }
}

/// What came back: the status code and the whole text (head and body).
#[derive(Debug)]
struct Reply {
    status: u16,
    text: String,
}

impl Reply {
    /// A header's value (names compared without case).
    fn header(&self, name: &str) -> Option<&str> {
        let head = self.text.split("\r\n\r\n").next()?;
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }
}

fn http(addr: SocketAddr, request: &str, enough: impl Fn(&str) -> bool, limit: Duration) -> Reply {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let until = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("reading from {addr}: {e}"),
        }
        if enough(&String::from_utf8_lossy(&got)) || Instant::now() > until {
            break;
        }
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    Reply { status, text }
}

#[test]
fn the_api_needs_the_token_and_the_page_does_not() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let web = Web::start(tmp.path(), "web", sp.listen_addr(), 0).await;
        let host = web.host();
        let never = |_: &str| false;

        let none = web.raw("GET", "/api/status", &host, "", "", never).await;
        assert_eq!(none.status, 401, "{}", none.text);
        assert!(none.text.contains("no token"), "{}", none.text);
        let wrong = "Authorization: Bearer 00000000\r\n";
        let r = web.raw("GET", "/api/status", &host, wrong, "", never).await;
        assert_eq!(r.status, 401);
        assert!(r.text.contains("wrong token"), "{}", r.text);
        // No cookie, and no token in a query, stands for the header.
        let port = web.addr.port();
        let cookie = format!(
            "Cookie: canopy_token={0}; canopy_token_{port}={0}\r\n",
            web.token
        );
        let r = web
            .raw("GET", "/api/status", &host, &cookie, "", never)
            .await;
        assert_eq!(r.status, 401, "{}", r.text);
        let query = format!("/api/status?token={}", web.token);
        let r = web.raw("GET", &query, &host, "", "", never).await;
        assert_eq!(r.status, 401, "{}", r.text);

        let status = web.call("GET", "/api/status", "", "").await;
        assert_eq!(status.status, 200, "{}", status.text);
        let body = status.text.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["node"], web.node.node_id().to_hex());
        assert_eq!(json["web"], web.addr.to_string());

        // The page holds no secret: it is served without the token (which its address carries
        // in the fragment, never sent here), and sets no cookie.
        let page = web.raw("GET", "/", &host, "", "", never).await;
        assert!(page.header("set-cookie").is_none());
        assert_eq!(page.status, 200, "{}", page.text);
        assert!(
            page.text.contains("<script src=\"/app.js\""),
            "{}",
            page.text
        );
        let csp = page.header("content-security-policy").unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert_eq!(page.header("x-frame-options"), Some("DENY"));
        let js = web.raw("GET", "/app.js", &host, "", "", never).await;
        assert_eq!(js.status, 200);
        assert!(js
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript"));
        // But only to this server's own name.
        let evil = format!("evil.example:{port}");
        let r = web.raw("GET", "/", &evil, "", "", never).await;
        assert_eq!(r.status, 403, "{}", r.text);
        // Nothing else is served, from the disk or anywhere.
        let auth = format!("Authorization: Bearer {}\r\n", web.token);
        for path in [
            "/nothing",
            "/../Cargo.toml",
            "/web/app.js",
            "/%2e%2e/Cargo.toml",
        ] {
            let r = web.raw("GET", path, &host, &auth, "", never).await;
            assert!(matches!(r.status, 400 | 404), "{path}: {}", r.text);
        }
        web.node.shutdown().await;
        // Stopped with the node: the port is closed.
        assert!(TcpStream::connect(web.addr).is_err(), "still serving");
    });
}

#[test]
fn another_host_or_origin_is_refused_and_does_nothing() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let web = Web::start(tmp.path(), "web", sp.listen_addr(), 0).await;
        let port = web.addr.port();
        let auth = format!("Authorization: Bearer {}\r\n", web.token);
        let never = |_: &str| false;
        // DNS rebinding: a name made to point at 127.0.0.1.
        let evil = format!("evil.example:{port}");
        let r = web.raw("GET", "/api/status", &evil, &auth, "", never).await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert!(r.text.contains("is not this server"), "{}", r.text);
        let local = format!("localhost:{port}");
        let r = web
            .raw("GET", "/api/status", &local, &auth, "", never)
            .await;
        assert_eq!(r.status, 200, "{}", r.text);

        // Another site's page posting a request, even with the token.
        let wish = r#"{"WishAdd":{"words":"forged","filter":{"ext":null,"min_size":null,"max_size":null},"auto":true,"out":""}}"#;
        let forged = format!("{auth}Origin: http://evil.example\r\n");
        let r = web
            .raw("POST", "/api/request", &web.host(), &forged, wish, never)
            .await;
        assert_eq!(r.status, 403, "{}", r.text);
        assert!(
            web.node.wishes().is_empty(),
            "a forged request did something"
        );
        // The page's own origin passes.
        let own = format!("{auth}Origin: http://{}\r\n", web.host());
        let r = web
            .raw("POST", "/api/request", &web.host(), &own, wish, |t| {
                t.contains("\"End\"")
            })
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.text.contains("\"words\":\"forged\""), "{}", r.text);
        assert_eq!(web.node.wishes().len(), 1);
        web.node.shutdown().await;
    });
}

#[test]
fn an_address_other_machines_reach_needs_the_flag() {
    run_bounded(Duration::from_secs(30), async {
        let tmp = tempfile::tempdir().unwrap();
        let start = |allow_remote: bool, name: &str| {
            let mut config = leaf::NodeConfig::new(tmp.path().join(name));
            config.control = true;
            config.web = Some(WebConfig {
                // Refused before it is bound: nothing listens on it at any time.
                addr: "192.0.2.7:7780".parse().unwrap(),
                allow_remote,
                out: tmp.path().join("out"),
            });
            leaf::Node::start(config)
        };
        let err = start(false, "a").await.err().expect("refused").to_string();
        assert!(err.contains("192.0.2.7:7780"), "{err}");
        assert!(err.contains("--web-allow-remote"), "{err}");
        // With the flag it goes as far as binding (which fails: that address is not ours).
        let err = start(true, "b").await.err().expect("not ours").to_string();
        assert!(
            err.contains("cannot serve the web UI on 192.0.2.7:7780"),
            "{err}"
        );
    });
}

#[test]
fn a_search_streams_and_a_download_starts_pauses_and_resumes() {
    run_bounded(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let content = corpus::deterministic_bytes("web download", 4 << 20);
        let id = FileId::from(blake3::hash(&content));
        let dir = tmp.path().join("music");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Orbital - Halcyon.flac"), &content).unwrap();
        let sharer = net::leaf(tmp.path(), "sharer", &[sp.listen_addr()]).await;
        net::share_indexed(&sharer, &sp, &dir).await;
        // Slow enough (1 MB/s for 4 MiB) to pause half way.
        let web = Web::start(tmp.path(), "web", sp.listen_addr(), 1_000_000).await;
        let hex = id.to_hex();

        // The status stream starts with the whole report.
        let auth = format!("Authorization: Bearer {}\r\n", web.token);
        let events = web
            .raw("GET", "/api/events", &web.host(), &auth, "", |t| {
                t.contains("event: status")
            })
            .await;
        assert_eq!(events.status, 200, "{}", events.text);
        assert_eq!(events.header("content-type"), Some("text/event-stream"));
        assert!(events.text.contains("\"role\":\"leaf\""), "{}", events.text);

        // A search: results as they arrive, then the end.
        let found = web
            .raw(
                "GET",
                "/api/events?search=orbital%20halcyon&ext=flac&wait_ms=2000",
                &web.host(),
                &auth,
                "",
                |t| t.contains("event: end"),
            )
            .await;
        assert_eq!(found.status, 200, "{}", found.text);
        let results: Vec<&str> = found
            .text
            .lines()
            .skip_while(|l| *l != "event: results")
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        let last: serde_json::Value = serde_json::from_str(
            results
                .iter()
                .rev()
                .find(|d| d.starts_with('['))
                .expect("results"),
        )
        .unwrap();
        assert_eq!(last[0]["id"], hex, "{last}");
        assert_eq!(last[0]["name"], "Orbital - Halcyon.flac");
        assert_eq!(
            last[0]["sources"][0]["addr"],
            sharer.listen_addr().unwrap().to_string()
        );
        assert!(found.text.contains("event: end"));

        // Start it (the page leaves the folder empty: the web UI's own).
        let get = format!(r#"{{"Get":{{"ids":["{hex}"],"out":"","again":false}}}}"#);
        // Its replies go on until it is done: take the head, and leave (it carries on).
        let started = web
            .raw("POST", "/api/request", &web.host(), &auth, &get, |t| {
                t.contains("\r\n\r\n")
            })
            .await;
        assert_eq!(started.status, 200, "{}", started.text);
        assert_eq!(started.header("content-type"), Some("application/x-ndjson"));
        let info = |n: &leaf::Node| n.status().downloads.into_iter().find(|d| d.id == id);
        wait_until(
            "the download to be under way",
            Duration::from_secs(20),
            || async { info(&web.node).is_some_and(|d| d.done_bytes > 0) },
        )
        .await;
        let out = tmp.path().join("web-web-out");
        assert_eq!(info(&web.node).unwrap().out, out);

        // Pause: it stops, its verified chunks kept.
        let pause = format!(r#"{{"Cancel":{{"id":"{hex}"}}}}"#);
        let paused = web.call("POST", "/api/request", "", &pause).await;
        assert_eq!(paused.status, 200, "{}", paused.text);
        assert!(paused.text.contains("\"End\""), "{}", paused.text);
        wait_until("the download to stop", Duration::from_secs(10), || async {
            info(&web.node).is_some_and(|d| !d.state.is_active())
        })
        .await;
        let stopped = info(&web.node).unwrap();
        assert!(stopped.done_bytes < content.len() as u64, "{stopped:?}");
        assert!(!out.join("Orbital - Halcyon.flac").exists());

        // Resume: the same request, into the folder status names.
        let resume = format!(
            r#"{{"Get":{{"ids":["{hex}"],"out":{},"again":false}}}}"#,
            serde_json::to_string(&stopped.out).unwrap()
        );
        let resumed = web
            .raw("POST", "/api/request", &web.host(), &auth, &resume, |t| {
                t.contains("\r\n\r\n")
            })
            .await;
        assert_eq!(resumed.status, 200, "{}", resumed.text);
        // The reply's head can come before the node has taken the request: until then,
        // status still shows the paused download, which is not active either.
        let paused_state = stopped.state.clone();
        wait_until(
            "the download to finish",
            Duration::from_secs(60),
            || async {
                info(&web.node).is_some_and(|d| !d.state.is_active() && d.state != paused_state)
            },
        )
        .await;
        let d = info(&web.node).unwrap();
        assert!(matches!(d.state, DownloadState::Done(_)), "{d:?}");
        assert!(d.resumed_chunks > 0, "the resume kept nothing: {d:?}");
        let saved = std::fs::read(out.join("Orbital - Halcyon.flac")).unwrap();
        assert!(saved == content, "the file differs");
        web.node.shutdown().await;
        sharer.shutdown().await;
    });
}

#[test]
fn bad_requests_get_errors_that_say_what_is_wrong() {
    run_bounded(Duration::from_secs(60), async {
        let tmp = tempfile::tempdir().unwrap();
        let sp = net::superpeer(&[]).await;
        let web = Web::start(tmp.path(), "web", sp.listen_addr(), 0).await;
        let r = web
            .call("POST", "/api/request", "", "{\"Nonsense\":1}")
            .await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(r.text.contains("not a control request"), "{}", r.text);
        let r = web
            .call(
                "POST",
                "/api/request",
                "",
                r#"{"Share":{"paths":["music"]}}"#,
            )
            .await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert!(
            r.text.contains("`music` is not an absolute path"),
            "{}",
            r.text
        );
        let big = "x".repeat(100 << 10);
        let r = web.call("POST", "/api/request", "", &big).await;
        assert_eq!(r.status, 413, "{}", r.text);
        let r = web.call("GET", "/api/events?search=", "", "").await;
        assert_eq!(r.status, 400, "{}", r.text);
        let r = web
            .call("GET", "/api/events?search=x&min_size=5MB", "", "")
            .await;
        assert_eq!(r.status, 400);
        assert!(
            r.text.contains("min_size=`5MB` is not a number"),
            "{}",
            r.text
        );
        // A folder that is not there: the node's own error, in the reply stream.
        let missing = tmp.path().join("no-such-folder");
        let share = format!(
            r#"{{"Share":{{"paths":[{}]}}}}"#,
            serde_json::to_string(&missing).unwrap()
        );
        let r = web.call("POST", "/api/request", "", &share).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(r.text.contains("{\"Error\":"), "{}", r.text);
        assert!(r.text.contains("no-such-folder"), "{}", r.text);
        web.node.shutdown().await;
    });
}
