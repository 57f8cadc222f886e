//! `leaf tui` end to end, in tmux: against a `superpeer` process and a `leaf share` process, it
//! types a query, sees the file on screen, downloads it with Enter, sees it reach done, and the
//! file on disk is byte-identical; attached to a running node, it cancels and resumes a download,
//! and quitting leaves the node and its download running; it browses the sharer, marks its
//! folder and downloads it. Needs `tmux` (`.ci/run` installs it).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A tmux server of our own (its own socket), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `cmd` in a detached 100×30 session.
    fn start(cmd: &Command) -> Tmux {
        let socket = format!(
            "canopy-tui-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let tmux = Tmux { socket };
        let mut new = tmux.cmd();
        new.args([
            "new-session",
            "-d",
            "-s",
            "tui",
            "-x",
            "100",
            "-y",
            "30",
            "--",
        ])
        .arg(cmd.get_program())
        .args(cmd.get_args());
        new.env_remove("CANOPY_DATA_DIR")
            .env_remove("CANOPY_SUPERPEER");
        let out = run(&mut new);
        assert!(out.status.success(), "tmux: {}", text(&out.stderr));
        tmux
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    fn screen(&self) -> String {
        text(&run(self.cmd().args(["capture-pane", "-p", "-t", "tui"])).stdout)
    }

    /// Types keys: literal text, or tmux key names with `literal` false (Enter, Escape).
    fn keys(&self, keys: &str, literal: bool) {
        let mut c = self.cmd();
        c.args(["send-keys", "-t", "tui"]);
        if literal {
            c.arg("-l");
        }
        let out = run(c.arg(keys));
        assert!(out.status.success(), "send-keys: {}", text(&out.stderr));
    }

    /// Waits until the screen shows `needle`; returns the screen.
    fn wait_for(&self, needle: &str, secs: u64) -> Result<String, String> {
        let until = Instant::now() + Duration::from_secs(secs);
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return Ok(s);
            }
            if Instant::now() >= until {
                return Err(s);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn alive(&self) -> bool {
        run(self.cmd().args(["has-session", "-t", "tui"]))
            .status
            .success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = run(self.cmd().arg("kill-server"));
    }
}

fn must(r: Result<String, String>, what: &str) -> String {
    r.unwrap_or_else(|screen| panic!("timed out waiting for {what}; the screen:\n{screen}"))
}

/// A super-peer and a leaf sharing one file; the TUI's user is carol.
struct Net {
    tmp: tempfile::TempDir,
    sp_addr: String,
    name: &'static str,
    content: Vec<u8>,
    _procs: Vec<Proc>,
}

impl Net {
    /// `upload_rate`: the sharer's cap (to make a download slow enough to cancel).
    fn start(upload_rate: &str) -> Net {
        if Command::new("tmux").arg("-V").output().is_err() {
            panic!("tmux is not installed (apt-get install tmux; .ci/run installs it)");
        }
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path();
        let (sp, sp_addr) = start_superpeer(&base.join("sp"), &[]);
        let name = "Canopytui Test Song.flac";
        let content: Vec<u8> = (0..2_500_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
            .collect();
        let music = base.join("alice/Music");
        std::fs::create_dir_all(&music).unwrap();
        std::fs::write(music.join(name), &content).unwrap();
        let sharer = Proc::spawn(
            leaf(&base.join("alice-data"), &sp_addr)
                .args(["--no-promote", "--upload-rate", upload_rate, "share"])
                .arg(&music),
        );
        sharer.wait_for("sharing 1 files");
        std::fs::create_dir_all(base.join("downloads")).unwrap();
        Net {
            tmp,
            sp_addr,
            name,
            content,
            _procs: vec![sp, sharer],
        }
    }

    fn base(&self) -> &Path {
        self.tmp.path()
    }

    /// `leaf tui` for carol in tmux, once it shows its super-peer link.
    fn tui(&self) -> Tmux {
        let mut tui = leaf(&self.base().join("carol-data"), &self.sp_addr);
        tui.args(["--no-promote", "tui", "--out"])
            .arg(self.base().join("downloads"));
        let tmux = Tmux::start(&tui);
        must(
            tmux.wait_for("1 super-peer", 30),
            "the link to the super-peer",
        );
        tmux
    }

    /// Searches in the TUI until the file shows (its registration may still be on its way).
    fn search(&self, tmux: &Tmux) -> String {
        let mut found = Err(String::new());
        for _ in 0..4 {
            tmux.keys("/", true);
            tmux.keys("canopytui", true);
            tmux.keys("Enter", false);
            found = tmux.wait_for(self.name, 8);
            if found.is_ok() {
                break;
            }
            tmux.keys("/", true);
            for _ in 0.."canopytui".len() {
                tmux.keys("BSpace", false);
            }
            tmux.keys("Escape", false);
        }
        must(found, "the search result")
    }

    fn downloaded(&self) -> Option<Vec<u8>> {
        std::fs::read(self.base().join("downloads").join(self.name)).ok()
    }
}

fn row<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no row with {needle:?} in\n{screen}"))
}

/// The percentage a download row shows.
fn percent(row: &str) -> u64 {
    row.split_whitespace()
        .find_map(|w| w.strip_suffix('%')?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn search_download_and_done_in_the_tui_under_tmux() {
    let net = Net::start("0");
    let tmux = net.tui();
    let screen = net.search(&tmux);
    println!("{screen}");
    let r = row(&screen, net.name);
    assert!(r.contains("2.5 MB") && r.contains("flac"), "{r}");

    tmux.keys("Enter", false);
    tmux.keys("2", true);
    let screen = must(tmux.wait_for("done", 60), "the download to finish");
    println!("{screen}");
    assert!(row(&screen, net.name).contains("100%"));
    assert!(
        net.downloaded() == Some(net.content.clone()),
        "the file differs"
    );

    // Share a folder from the Shares tab: type its path.
    let mine = net.base().join("carol-music");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("mine.ogg"), b"ogg ogg ogg").unwrap();
    tmux.keys("3", true);
    tmux.keys("a", true);
    tmux.keys(mine.to_str().unwrap(), true);
    tmux.keys("Enter", false);
    let screen = must(
        tmux.wait_for("1 files (1 hashed", 20),
        "the share to finish",
    );
    println!("{screen}");
    // The folder's own figures come with the next status poll.
    let screen = must(tmux.wait_for("1 files, 11 B", 5), "the folder's figures");
    assert!(row(&screen, "carol-music  ").contains("1 files, 11 B"));

    // q quits; the TUI's own node stops with it.
    tmux.keys("q", true);
    let until = Instant::now() + Duration::from_secs(10);
    while tmux.alive() {
        assert!(Instant::now() < until, "leaf tui did not quit on q");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!net.base().join("carol-data/control.sock").exists());
}

#[test]
fn browse_a_leaf_mark_its_folder_and_download_it_in_the_tui() {
    let net = Net::start("0");
    let tmux = net.tui();
    net.search(&tmux);
    // b on the result: the sharer's shares, as a tree.
    tmux.keys("b", true);
    let screen = must(tmux.wait_for("▸ Music/", 20), "the browsed tree");
    println!("{screen}");
    assert!(row(&screen, "▸ Music/").contains("1 files, 2.5 MB"));
    // Mark the folder and download it: it lands in downloads/Music/, as the sharer has it.
    tmux.keys("m", true);
    must(tmux.wait_for("✓", 5), "the mark");
    tmux.keys("Enter", false);
    let target = net.base().join("downloads/Music").join(net.name);
    wait_until("the folder's file", 60, || {
        std::fs::read(&target).is_ok_and(|b| b == net.content)
    });
}

#[test]
fn attached_to_a_running_node_cancel_resume_and_quit_leave_the_download_running() {
    // 2.5 MB at 400 kB/s: about six seconds, time enough to cancel.
    let net = Net::start("400K");
    let carol = net.base().join("carol-data");
    let node = Proc::spawn(leaf(&carol, &net.sp_addr).args(["--no-promote", "share"]));
    node.wait_for("sharing 0 files");
    let tmux = net.tui();
    must(
        tmux.wait_for("attached to the node", 5),
        "the attach notice",
    );

    net.search(&tmux);
    tmux.keys("Enter", false);
    tmux.keys("2", true);
    // Cancel once a few chunks (256 KiB each) are on disk.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let screen = tmux.screen();
        if screen.contains(net.name) && percent(row(&screen, net.name)) >= 30 {
            break;
        }
        assert!(Instant::now() < until, "no progress:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    }
    tmux.keys("c", true);
    let screen = must(tmux.wait_for("cancelled (r resumes)", 10), "the cancel");
    println!("{screen}");
    assert!(
        net.downloaded().is_none(),
        "a cancelled download is not complete"
    );
    let parts = std::fs::read_dir(net.base().join("downloads"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".part")
        })
        .count();
    assert_eq!(parts, 1, "the partial file stays for a resume");

    tmux.keys("r", true);
    must(tmux.wait_for("running", 20), "the resumed download");
    // Quit while it runs: the node is not the TUI's, so it carries on.
    tmux.keys("q", true);
    let until = Instant::now() + Duration::from_secs(10);
    while tmux.alive() {
        assert!(Instant::now() < until, "leaf tui did not quit on q");
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_until("the download to finish in the node", 60, || {
        net.downloaded().is_some()
    });
    assert!(
        net.downloaded() == Some(net.content.clone()),
        "the file differs"
    );
    let status = status_json(&carol, &net.sp_addr);
    assert!(
        status["listen"].is_string(),
        "the node still runs: {status}"
    );
    let d = &status["downloads"][0];
    assert!(
        d["resumed_chunks"].as_u64().unwrap() > 0,
        "resumed, not restarted: {d}"
    );
    assert_eq!(
        status["downloads"].as_array().unwrap().len(),
        1,
        "one row per file"
    );
}

#[test]
fn a_lost_node_is_shown_retried_and_found_again() {
    let net = Net::start("0");
    let carol = net.base().join("carol-data");
    let serve = || {
        let node = Proc::spawn(leaf(&carol, &net.sp_addr).args(["--no-promote", "share"]));
        node.wait_for("sharing 0 files");
        node
    };
    let node = serve();
    let tmux = net.tui();
    tmux.keys("4", true);
    drop(node);
    let screen = must(
        tmux.wait_for("node unreachable, retrying", 10),
        "the lost node to show",
    );
    println!("{screen}");
    let node = serve();
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let screen = tmux.screen();
        if !screen.contains("unreachable") && screen.contains("1 super-peer") {
            break;
        }
        assert!(Instant::now() < until, "not found again:\n{screen}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(tmux.alive(), "the TUI survived");
    drop(node);
}
