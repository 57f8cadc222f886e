//! `leaf tui` end to end, in tmux: against a `superpeer` process and a `leaf share` process, it
//! types a query, sees the file on screen, downloads it with Enter, sees it reach done, and the
//! file on disk is byte-identical. Needs `tmux` (`.ci/run` installs it).

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

#[test]
fn search_download_and_done_in_the_tui_under_tmux() {
    if Command::new("tmux").arg("-V").output().is_err() {
        panic!("tmux is not installed (apt-get install tmux; .ci/run installs it)");
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let sp = Proc::spawn(
        Command::new(superpeer_bin())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(base.join("sp")),
    );
    let line = sp.wait_for("listening on");
    let sp_addr = line.rsplit(' ').next().unwrap().trim().to_string();

    let name = "Canopytui Test Song.flac";
    let content: Vec<u8> = (0..2_500_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let music = base.join("alice/Music");
    std::fs::create_dir_all(&music).unwrap();
    std::fs::write(music.join(name), &content).unwrap();
    let sharer = Proc::spawn(
        leaf(&base.join("alice-data"), &sp_addr)
            .args(["--no-promote", "share"])
            .arg(&music),
    );
    sharer.wait_for("sharing 1 files");

    let dl = base.join("downloads");
    std::fs::create_dir_all(&dl).unwrap();
    let mut tui = leaf(&base.join("carol-data"), &sp_addr);
    tui.args(["--no-promote", "tui", "--out"]).arg(&dl);
    let tmux = Tmux::start(&tui);
    must(
        tmux.wait_for("1 super-peer", 30),
        "the link to the super-peer",
    );

    // Search; the sharer's registration may still be on its way, so try a few times.
    let mut found = Err(String::new());
    for _ in 0..4 {
        tmux.keys("/", true);
        tmux.keys("canopytui", true);
        tmux.keys("Enter", false);
        found = tmux.wait_for(name, 8);
        if found.is_ok() {
            break;
        }
        tmux.keys("/", true);
        for _ in 0.."canopytui".len() {
            tmux.keys("BSpace", false);
        }
        tmux.keys("Escape", false);
    }
    let screen = must(found, "the search result");
    println!("{screen}");
    let row = screen.lines().find(|l| l.contains(name)).unwrap();
    assert!(row.contains("2.5 MB") && row.contains("flac"), "{row}");

    tmux.keys("Enter", false);
    tmux.keys("2", true);
    let screen = must(tmux.wait_for("done", 60), "the download to finish");
    println!("{screen}");
    let row = screen.lines().find(|l| l.contains(name)).unwrap();
    assert!(row.contains("100%"), "{row}");
    let got = std::fs::read(dl.join(name)).unwrap();
    assert!(got == content, "the downloaded file differs");

    // q quits; the TUI's own node stops with it.
    tmux.keys("q", true);
    let until = Instant::now() + Duration::from_secs(10);
    while tmux.alive() {
        assert!(Instant::now() < until, "leaf tui did not quit on q");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!Path::new(&base.join("carol-data/control.sock")).exists());
}
