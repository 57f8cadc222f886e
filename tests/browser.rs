//! The web UI in a real browser: Debian's `chromium`, headless, driven over WebDriver
//! (`chromium-driver`'s `chromedriver`, with `fantoccini`). `.ci/run` installs both.
//!
//! The browser opens the address `leaf web-url` prints, types a search, sees the result arrive,
//! starts its download and sees it reach "done"; the file is then on disk, whole. It shares a
//! folder by its path and stops sharing it. A file name with markup in it is shown as text. Screenshots (desktop and phone sizes) are saved under
//! the test's output folder, `target/tmp/web-ui/`, for a person to look at.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use canopy::corpus;
use canopy::net;
use fantoccini::{Client, ClientBuilder, Locator};
use leaf::web::WebConfig;
use wire::FileId;

/// A file name that holds markup: the page must show it, not run it.
/// (No `/` in it: a file name cannot hold one.)
const NAME: &str = "Roygbiv <img src=x onerror=alert(1)> & <b>more.flac";

/// `chromedriver` on a free port, in a process group of its own with the browsers it starts:
/// the whole group is killed when this is dropped (on failure too).
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    /// Starts chromedriver, on another port if the one picked was taken meanwhile; its log
    /// goes to `log`, which a failure shows.
    fn start(log: &Path) -> Driver {
        for _ in 0..3 {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap();
            let child = Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "starting chromedriver: {e} (this test needs Debian's chromium and \
                         chromium-driver; .ci/run installs them)"
                    )
                });
            let mut driver = Driver { child, port };
            let until = Instant::now() + Duration::from_secs(20);
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            loop {
                if let Ok(Some(status)) = driver.child.try_wait() {
                    eprintln!(
                        "chromedriver on port {port} exited ({status}): {}",
                        std::fs::read_to_string(log).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(addr).is_ok() {
                    return driver;
                }
                assert!(
                    Instant::now() < until,
                    "chromedriver did not listen on {addr}: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("chromedriver would not start; see above");
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The group: chromedriver and the chromium processes it started.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let options = serde_json::json!({
        "binary": "/usr/bin/chromium",
        "args": [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            format!("--user-data-dir={}", profile.display()),
        ],
    });
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a WebDriver session with headless chromium")
}

/// Waits up to `limit` for the text of the element at `css` to satisfy `ok`; its last text.
async fn wait_text(c: &Client, css: &str, limit: Duration, ok: impl Fn(&str) -> bool) -> String {
    let until = Instant::now() + limit;
    let mut last = String::new();
    loop {
        if let Ok(e) = c.find(Locator::Css(css)).await {
            if let Ok(text) = e.text().await {
                if ok(&text) {
                    return text;
                }
                last = text;
            }
        }
        assert!(
            Instant::now() < until,
            "timed out after {limit:?} waiting at {css}; its text was {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits up to 10 s for the node to be as `ok` says.
async fn wait_node(node: &leaf::Node, ok: impl Fn(&leaf::Node) -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !ok(node) {
        assert!(Instant::now() < until, "timed out waiting for the node");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn save_screenshot(c: &Client, name: &str) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("web-ui");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "not a PNG");
    let path = dir.join(name);
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.display());
}

#[test]
fn a_person_searches_downloads_and_sees_it_done_in_a_real_browser() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let driver = Driver::start(&tmp.path().join("chromedriver.log"));
    let test = async {
        let sp = net::superpeer(&[]).await;
        let content = corpus::deterministic_bytes("browser", 3 << 20);
        let id = FileId::from(blake3::hash(&content));
        let music = tmp.path().join("music");
        std::fs::create_dir_all(&music).unwrap();
        std::fs::write(music.join(NAME), &content).unwrap();
        let sharer = net::leaf(tmp.path(), "sharer", &[sp.listen_addr()]).await;
        net::share_indexed(&sharer, &sp, &music).await;
        let out = tmp.path().join("downloads");
        let node = net::leaf_with(tmp.path(), "web", &[sp.listen_addr()], |c| {
            c.control = true;
            // Slow enough to see it running, quick enough to finish (3 MiB at 2 MB/s).
            c.download_rate = 2_000_000;
            c.web = Some(WebConfig {
                addr: "127.0.0.1:0".parse().unwrap(),
                allow_remote: false,
                out: out.clone(),
            });
        })
        .await;
        let url = node.web_url().unwrap();
        let token = leaf::web::read_token(node.data_dir()).unwrap();

        let c = browser(&driver, &tmp.path().join("chromium")).await;
        c.goto(&url).await.unwrap();
        let input = c
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Id("search-input"))
            .await
            .unwrap();
        // The page took the token from the address, and took it out of the address.
        wait_text(&c, "#conn", Duration::from_secs(10), |t| t == "connected").await;
        let at = c.current_url().await.unwrap();
        // (The fragment names the open view.)
        assert!(
            !at.as_str().contains(&token),
            "the token stayed in the address: {at}"
        );
        assert_eq!((at.path(), at.query()), ("/", None));
        input.send_keys("roygbiv more").await.unwrap();
        c.find(Locator::Css("#search-form button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let row = format!("tr.result[data-id=\"{}\"]", id.to_hex());
        let text = wait_text(&c, &row, Duration::from_secs(20), |t| t.contains("Roygbiv")).await;
        // Markup in a peer's file name is text on the page, not elements.
        assert!(text.contains(NAME), "{text}");
        let planted = c
            .find_all(Locator::Css(&format!("{row} img, {row} b")))
            .await
            .unwrap();
        assert!(planted.is_empty(), "a peer's markup became elements");
        wait_text(&c, "#search-status", Duration::from_secs(10), |t| {
            t.contains("1 file")
        })
        .await;
        save_screenshot(&c, "search.png").await;

        c.find(Locator::Css(&format!("{row} button.download")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        c.find(Locator::Css("nav button[data-view=downloads]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let state = format!("tr.download[data-id=\"{}\"] .state", id.to_hex());
        wait_text(&c, &state, Duration::from_secs(60), |t| t == "done").await;
        let saved = std::fs::read(out.join(NAME)).expect("the download is on disk");
        assert!(saved == content, "the downloaded file differs");
        save_screenshot(&c, "downloads.png").await;

        // Shares: a folder shared by its path, shown with its files, then no longer shared.
        let mine = tmp.path().join("my share");
        std::fs::create_dir_all(&mine).unwrap();
        for i in 0..3 {
            std::fs::write(mine.join(format!("track {i}.mp3")), vec![i as u8; 1000]).unwrap();
        }
        c.find(Locator::Css("nav button[data-view=shares]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let path = c.find(Locator::Id("share-path")).await.unwrap();
        path.send_keys(&mine.display().to_string()).await.unwrap();
        c.find(Locator::Css("#share-form button[type=submit]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, "#share-status", Duration::from_secs(20), |t| {
            t.starts_with("shared 3 files")
        })
        .await;
        let shared = wait_text(&c, "tr.share", Duration::from_secs(10), |t| {
            t.contains("my share")
        })
        .await;
        assert!(shared.contains('3'), "{shared}");
        assert_eq!(node.status().files, 3);
        save_screenshot(&c, "shares.png").await;
        // Stopping asks first; the browser says yes.
        c.find(Locator::Css("tr.share button.unshare"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        while let Err(e) = c.accept_alert().await {
            assert!(Instant::now() < until, "no question before unsharing: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_node(&node, |n| n.status().files == 0).await;

        // A phone-sized screen: the same results, nothing wider than the screen.
        c.set_window_size(390, 844).await.unwrap();
        c.find(Locator::Css("nav button[data-view=search]"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        wait_text(&c, &row, Duration::from_secs(5), |t| t.contains("Roygbiv")).await;
        let overflow = c
            .execute(
                "return document.documentElement.scrollWidth - window.innerWidth;",
                vec![],
            )
            .await
            .unwrap();
        assert!(
            overflow.as_i64().is_some_and(|px| px <= 0),
            "the page is wider than a phone: {overflow}"
        );
        save_screenshot(&c, "phone.png").await;

        c.close().await.unwrap();
        node.shutdown().await;
        sharer.shutdown().await;
    };
    runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(150), test)
            .await
            .expect("the browser test took over 150 s")
    });
}
