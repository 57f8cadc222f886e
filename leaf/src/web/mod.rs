//! The web UI: the node served to a browser (`--web 127.0.0.1:7780`), and the same requests as
//! the control socket as a JSON HTTP API, for scripts too.
//!
//! # Routes
//! - `/`, `/app.js`, `/style.css`: the page, embedded in the binary (nothing is read from the
//!   disk). It is opened as `/#token=TOKEN` and sends the token with each API request.
//! - `POST /api/request`: one control [`Request`] as JSON; the [`Reply`]s stream back as
//!   newline-delimited JSON, the last one `"End"`. An empty `out` folder (in `Get`,
//!   `GetFolder`, `WishAdd`) means the web UI's download folder; other paths must be absolute.
//! - `GET /api/status`: the node's [`crate::control::StatusReport`].
//! - `GET /api/events`: server-sent events: `status` (the status report, when it changes,
//!   checked every second). With `?search=WORDS` (and `ext`, `min_size`, `max_size`,
//!   `wait_ms`, `ttl`): that search's `results` (the whole grouped list so far, each time
//!   hits arrive), then `end`, or `failed` with the reason.
//!
//! Every request passes the rules of [`guard`] first: its Host, its Origin, and (but for the
//! page's own files) the token kept in the data directory ([`TOKEN_FILE`]).
//!
//! # Runtime
//! axum runs on tokio; the node runs on smol. The server gets a thread of its own with a
//! current-thread tokio runtime, rather than `async-compat` adapters around each of axum's
//! futures: the two runtimes then share nothing but channels, and stopping the server is
//! dropping its runtime, which ends every connection (server-sent event streams never end on
//! their own, so a graceful shutdown would wait for them forever). Node work a request asks
//! for runs on the node's executor (`transport::rt::spawn`), as the control socket's does, and carries on if the browser
//! goes away.

pub mod guard;

use std::convert::Infallible;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use smol::channel::{self, Receiver};
use smol::stream::Stream;
use wire::{Filter, Search, Terms};

use crate::control::{Reply, Request};
use crate::Node;
use guard::{Facts, Guard};

/// The token's file in the data directory: 64 hex digits, readable by the owner only.
pub const TOKEN_FILE: &str = "web-token";

/// The largest request body taken (a control request is a few hundred bytes).
const MAX_BODY: usize = 64 << 10;
/// How often the status stream looks for a change.
const STATUS_EVERY: Duration = Duration::from_secs(1);
/// The longest a search of `/api/events` collects hits.
const MAX_SEARCH_WAIT_MS: u64 = 60_000;

/// What every response carries: the page runs only its own script and style, is never framed,
/// and nothing is cached or sent on as a referrer (the first address holds the token).
const SECURITY_HEADERS: [(header::HeaderName, &str); 5] = [
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::CACHE_CONTROL, "no-store"),
];

/// The page's files, in the binary.
const ASSETS: [(&str, &str, &[u8]); 3] = [
    (
        "/",
        "text/html; charset=utf-8",
        include_bytes!("../../web/index.html"),
    ),
    (
        "/app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../web/app.js"),
    ),
    (
        "/style.css",
        "text/css; charset=utf-8",
        include_bytes!("../../web/style.css"),
    ),
];

/// Where and how the web UI is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebConfig {
    /// The address to listen on.
    pub addr: SocketAddr,
    /// Whether an address other than loopback may be used.
    pub allow_remote: bool,
    /// The folder downloads started from the page go to (made if missing).
    pub out: PathBuf,
}

/// Why the web UI cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// A non-loopback address without `allow_remote`.
    #[error("the web UI's address {0} is not a loopback address: pass --web-allow-remote to serve it to other machines (they still need its token)")]
    Remote(SocketAddr),
    /// The address cannot be bound.
    #[error("cannot serve the web UI on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// The token cannot be read or kept.
    #[error("cannot keep the web UI's token in {}: {source}", path.display())]
    Token {
        /// The token's file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The download folder cannot be made.
    #[error("cannot use {} as the web UI's download folder: {source}", path.display())]
    Out {
        /// The folder.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The server's thread or runtime cannot be started.
    #[error("cannot start the web UI: {0}")]
    Runtime(io::Error),
}

/// A running web UI; [`WebServer::stop`] (or dropping it) ends it.
#[derive(Debug)]
pub struct WebServer {
    addr: SocketAddr,
    token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebServer {
    /// Serves `node`'s web UI as `config` says, on a thread of its own.
    pub fn start(node: Node, config: WebConfig) -> Result<WebServer, WebError> {
        let addr = config.addr;
        let loopback_only = !config.allow_remote;
        if loopback_only && !addr.ip().is_loopback() {
            return Err(WebError::Remote(addr));
        }
        let data_dir = node.data_dir().to_path_buf();
        let token = load_or_create_token(&data_dir).map_err(|source| WebError::Token {
            path: data_dir.join(TOKEN_FILE),
            source,
        })?;
        std::fs::create_dir_all(&config.out).map_err(|source| WebError::Out {
            path: config.out.clone(),
            source,
        })?;
        let bind = |source| WebError::Bind { addr, source };
        let listener = std::net::TcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let bound = listener.local_addr().map_err(bind)?;
        let app = App {
            node,
            guard: Arc::new(Guard::new(token.clone(), bound.port(), loopback_only)),
            out: Arc::new(config.out),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(WebError::Runtime)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("web".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => return log::error!("web UI on {bound}: {e}"),
                    };
                    let serve = async {
                        if let Err(e) = axum::serve(listener, router(app)).await {
                            log::error!("web UI on {bound} stopped: {e}");
                        }
                    };
                    smol::future::or(serve, async {
                        let _ = stopped.await;
                    })
                    .await
                });
                // The runtime goes with this thread, and every connection with it.
            })
            .map_err(WebError::Runtime)?;
        log::info!("web UI on http://{bound}/");
        Ok(WebServer {
            addr: bound,
            token,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address to open, with the token.
    pub fn url(&self) -> String {
        url(self.addr, &self.token)
    }

    /// Stops serving and waits until the address is free again.
    pub async fn stop(mut self) {
        self.stop.take().map(|s| s.send(()));
        if let Some(thread) = self.thread.take() {
            let _ = smol::unblock(move || thread.join()).await;
        }
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop.take().map(|s| s.send(()));
    }
}

/// The address to open for a web UI on `addr` with `token`: on the machine itself when it
/// listens on every address.
pub fn url(addr: SocketAddr, token: &str) -> String {
    let mut shown = addr;
    if addr.ip().is_unspecified() {
        shown.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{shown}/#token={token}")
}

/// The token kept in `data_dir`, if there is a good one.
pub fn read_token(data_dir: &Path) -> io::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    let text = std::fs::read_to_string(&path)?;
    let token = text.trim();
    if token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(token.to_ascii_lowercase())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} does not hold a token (64 hex digits)", path.display()),
        ))
    }
}

/// The token kept in `data_dir`, made (random, owner-only) if there is none or it is damaged.
pub fn load_or_create_token(data_dir: &Path) -> io::Result<String> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = data_dir.join(TOKEN_FILE);
    match read_token(data_dir) {
        Ok(token) => {
            // Whatever the umask was when it was made: the owner's only.
            let mode = std::fs::metadata(&path)?.permissions().mode();
            if mode & 0o077 != 0 {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
            }
            return Ok(token);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("{e}; making a new token"),
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    let tmp = data_dir.join(format!("{TOKEN_FILE}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    writeln!(file, "{token}")?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(token)
}

/// What the handlers share.
#[derive(Clone)]
struct App {
    node: Node,
    guard: Arc<Guard>,
    out: Arc<PathBuf>,
}

fn router(app: App) -> Router {
    let mut router = Router::new();
    for (path, kind, body) in ASSETS {
        router = router.route(
            path,
            get(move || async move { ([(header::CONTENT_TYPE, kind)], body) }),
        );
    }
    router
        .route("/api/request", post(api_request))
        .route("/api/status", get(api_status))
        .route("/api/events", get(api_events))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such page") })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), check))
        .with_state(app)
}

/// Every request: the guard's rules first, and the security headers on every answer.
async fn check(State(app): State<App>, req: axum::extract::Request, next: Next) -> Response {
    let headers = req.headers();
    let value = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let facts = Facts {
        host: value(header::HOST),
        origin: value(header::ORIGIN),
        authorization: value(header::AUTHORIZATION),
    };
    // The page's own files hold no secret; everything else needs the token.
    let page = ASSETS.iter().any(|(path, _, _)| *path == req.uri().path());
    let verdict = if page {
        app.guard.check_page(&facts)
    } else {
        app.guard.check(&facts)
    };
    let mut response = match verdict {
        Ok(()) => next.run(req).await,
        Err(refusal) => {
            let status = StatusCode::from_u16(refusal.status()).unwrap_or(StatusCode::FORBIDDEN);
            (status, format!("{refusal}\n")).into_response()
        }
    };
    add_security_headers(response.headers_mut());
    response
}

fn add_security_headers(headers: &mut HeaderMap) {
    for (name, value) in SECURITY_HEADERS {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

/// A value as JSON text that is safe to print (see [`wire::text::json_terminal_safe`]).
fn json_text<T: Serialize>(value: &T) -> String {
    match serde_json::to_string(value) {
        Ok(json) => wire::text::json_terminal_safe(&json).into_owned(),
        Err(e) => serde_json::to_string(&format!("unencodable reply: {e}")).unwrap_or_default(),
    }
}

async fn api_status(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json_text(&app.node.status()),
    )
        .into_response()
}

async fn api_request(State(app): State<App>, body: Bytes) -> Response {
    let req: Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("the body is not a control request ({e}); see the API in README.md\n"),
            )
                .into_response()
        }
    };
    let req = match with_paths(req, &app.out) {
        Ok(r) => r,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
    let replies = run(&app.node, req);
    let lines = smol::stream::unfold(Some(replies), |replies| async move {
        let replies = replies?;
        let reply = replies.recv().await.ok()?;
        let last = reply == Reply::End;
        let line = json_text(&reply) + "\n";
        Some((Ok::<_, Infallible>(line), (!last).then_some(replies)))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response()
}

/// Carries out `req` on the node's own executor (so it goes on if the client leaves); the
/// replies arrive on the receiver.
fn run(node: &Node, req: Request) -> Receiver<Reply> {
    let (tx, rx) = channel::unbounded();
    let node = node.clone();
    transport::rt::spawn(async move { node.handle(req, tx).await }).detach();
    rx
}

/// `req` with an empty download folder made the web UI's, and every path checked to be
/// absolute: the node's working folder means nothing to someone in a browser.
fn with_paths(req: Request, out: &Path) -> Result<Request, String> {
    let absolute = |p: &Path| {
        if p.is_absolute() {
            Ok(())
        } else {
            Err(format!(
                "`{}` is not an absolute path: give the whole path, from /",
                wire::text::terminal_safe(&p.display().to_string())
            ))
        }
    };
    let folder = |p: PathBuf| {
        if p.as_os_str().is_empty() {
            Ok(out.to_path_buf())
        } else {
            absolute(&p).map(|()| p)
        }
    };
    Ok(match req {
        Request::Share { paths } => {
            for p in &paths {
                absolute(p)?;
            }
            Request::Share { paths }
        }
        Request::Unshare { path } => {
            absolute(&path)?;
            Request::Unshare { path }
        }
        Request::Get { ids, out, again } => Request::Get {
            ids,
            out: folder(out)?,
            again,
        },
        Request::GetFolder {
            source,
            folder: name,
            out,
            again,
        } => Request::GetFolder {
            source,
            folder: name,
            out: folder(out)?,
            again,
        },
        Request::WishAdd {
            words,
            filter,
            auto,
            out,
        } => Request::WishAdd {
            words,
            filter,
            auto,
            out: folder(out)?,
        },
        other => other,
    })
}

/// The query of `/api/events`.
#[derive(Debug, Default, Deserialize)]
struct EventsQuery {
    search: Option<String>,
    ext: Option<String>,
    min_size: Option<String>,
    max_size: Option<String>,
    wait_ms: Option<String>,
    ttl: Option<String>,
}

/// A number from the query, or a message naming the parameter.
fn number<T: std::str::FromStr>(name: &str, value: &Option<String>) -> Result<Option<T>, String> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            format!(
                "{name}=`{}` is not a number",
                wire::text::terminal_safe(&v.chars().take(40).collect::<String>())
            )
        }),
    }
}

impl EventsQuery {
    /// The search it asks for: (search, ttl, wait in ms).
    fn search(&self, words: &str) -> Result<(Search, u8, u64), String> {
        let ext = self
            .ext
            .as_deref()
            .map(|e| e.trim().trim_start_matches('.').to_lowercase())
            .filter(|e| !e.is_empty());
        let filter = Filter {
            ext,
            min_size: number("min_size", &self.min_size)?,
            max_size: number("max_size", &self.max_size)?,
        };
        let ttl = number::<u64>("ttl", &self.ttl)?.map_or(wire::DEFAULT_TTL, |t| t.min(7) as u8);
        let wait = number::<u64>("wait_ms", &self.wait_ms)?
            .unwrap_or(5_000)
            .min(MAX_SEARCH_WAIT_MS);
        let search = Search {
            terms: Terms::Words(words.to_string()),
            filter,
        };
        Ok((search, ttl, wait))
    }
}

async fn api_events(State(app): State<App>, Query(q): Query<EventsQuery>) -> Response {
    let events: std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> =
        match q.search.as_deref().map(str::trim) {
            None => Box::pin(status_events(app.node.clone())),
            Some("") => return (StatusCode::BAD_REQUEST, "search= needs words\n").into_response(),
            Some(words) => match q.search(words) {
                Ok((search, ttl, wait_ms)) => {
                    let replies = run(
                        &app.node,
                        Request::SearchStream {
                            search,
                            ttl,
                            wait_ms,
                        },
                    );
                    Box::pin(search_events(replies))
                }
                Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
            },
        };
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The node's status each time it changes.
fn status_events(node: Node) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    smol::stream::unfold((node, String::new()), |(node, last)| async move {
        loop {
            let now = json_text(&node.status());
            if now != last {
                let event = Event::default().event("status").data(&now);
                return Some((Ok(event), (node, now)));
            }
            tokio::time::sleep(STATUS_EVERY).await;
        }
    })
}

/// A search's replies as events: `results`, then `failed` if it failed, then `end`.
fn search_events(replies: Receiver<Reply>) -> impl Stream<Item = Result<Event, Infallible>> + Send {
    smol::stream::unfold(Some(replies), |replies| async move {
        let replies = replies?;
        loop {
            let event = match replies.recv().await.unwrap_or(Reply::End) {
                Reply::Results(results) => {
                    Event::default().event("results").data(json_text(&results))
                }
                Reply::Error(why) => Event::default().event("failed").data(json_text(&why)),
                Reply::End => return Some((Ok(Event::default().event("end").data("")), None)),
                _ => continue,
            };
            return Some((Ok(event), Some(replies)));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_must_be_absolute_and_an_empty_folder_is_the_web_uis() {
        let out = Path::new("/srv/downloads");
        let get = |o: &str| Request::Get {
            ids: vec![],
            out: o.into(),
            again: false,
        };
        assert_eq!(with_paths(get(""), out), Ok(get("/srv/downloads")));
        assert_eq!(with_paths(get("/tmp/x"), out), Ok(get("/tmp/x")));
        let err = with_paths(get("music"), out).unwrap_err();
        assert!(err.contains("`music` is not an absolute path"), "{err}");
        let share = Request::Share {
            paths: vec!["/a".into(), "b".into()],
        };
        assert!(with_paths(share, out).unwrap_err().contains("`b`"));
        let unshare = Request::Unshare { path: "".into() };
        assert!(with_paths(unshare, out).is_err());
    }

    #[test]
    fn a_search_query_is_read_with_its_filters_and_bounds() {
        let q = EventsQuery {
            ext: Some(".FLAC".into()),
            min_size: Some("1000".into()),
            max_size: Some("".into()),
            wait_ms: Some("999999".into()),
            ttl: Some("200".into()),
            ..Default::default()
        };
        let (search, ttl, wait) = q.search("aphex twin").unwrap();
        assert_eq!(search.terms, Terms::Words("aphex twin".into()));
        assert_eq!(search.filter.ext.as_deref(), Some("flac"));
        assert_eq!(search.filter.min_size, Some(1000));
        assert_eq!(search.filter.max_size, None);
        assert_eq!((ttl, wait), (7, MAX_SEARCH_WAIT_MS));
        let bad = EventsQuery {
            min_size: Some("5MB".into()),
            ..Default::default()
        };
        assert_eq!(
            bad.search("x").unwrap_err(),
            "min_size=`5MB` is not a number"
        );
    }

    #[test]
    fn the_token_is_made_once_kept_private_and_remade_when_damaged() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_token(dir.path()).unwrap();
        assert_eq!(first.len(), 64);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), first);
        let path = dir.path().join(TOKEN_FILE);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(load_or_create_token(dir.path()).unwrap(), first);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "not a token").unwrap();
        let second = load_or_create_token(dir.path()).unwrap();
        assert_ne!(second, first);
        assert_eq!(read_token(dir.path()).unwrap(), second);
    }

    #[test]
    fn the_url_names_the_machine_itself_for_an_unspecified_address() {
        let url = url("0.0.0.0:7780".parse().unwrap(), "ab");
        assert_eq!(url, "http://127.0.0.1:7780/#token=ab");
        let url = super::url("[::]:7780".parse().unwrap(), "ab");
        assert_eq!(url, "http://[::1]:7780/#token=ab");
    }
}
