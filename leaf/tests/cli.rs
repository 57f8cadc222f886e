//! The binaries themselves: a `superpeer` process and `leaf` processes share folders, search
//! with `--json`, download with `get`, report `status`, and refuse bad input clearly. Every
//! child process is killed when the test ends, pass or fail.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const LEAF: &str = env!("CARGO_BIN_EXE_leaf");

fn superpeer_bin() -> PathBuf {
    let p = Path::new(LEAF).with_file_name("superpeer");
    assert!(
        p.exists(),
        "{} is not built: run the workspace's tests (cargo test)",
        p.display()
    );
    p
}

/// A child process that is killed when dropped, with its stdout read line by line.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc { child, lines }
    }

    /// Waits for a stdout line containing `needle`; returns it.
    fn wait_for(&self, needle: &str) -> String {
        loop {
            match self.lines.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("no line with {needle:?} from the process: {e}"),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn leaf(data: &Path, sp: &str) -> Command {
    let mut c = Command::new(LEAF);
    c.arg("--data-dir")
        .arg(data)
        .args(["--superpeer", sp, "--listen", "127.0.0.1:0"]);
    c.env_remove("CANOPY_DATA_DIR")
        .env_remove("CANOPY_SUPERPEER");
    c
}

/// Runs a short command with a time bound.
fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("command did not finish within 60 s: {cmd:?}");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn share_search_get_and_status_through_the_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let sp = Proc::spawn(
        Command::new(superpeer_bin())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(base.join("sp")),
    );
    let line = sp.wait_for("listening on");
    let sp_addr = line.rsplit(' ').next().unwrap().trim().to_string();

    // Two leaves share the same recording, so the download has two sources.
    let content: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut sharers = Vec::new();
    for name in ["alice", "bob"] {
        let music = base.join(name).join("Music/Ólafur Arnalds/Live");
        std::fs::create_dir_all(&music).unwrap();
        std::fs::write(music.join("03 - Þú ert jörðin.flac"), &content).unwrap();
        std::fs::write(music.join("cover.jpg"), name.as_bytes()).unwrap();
        let p = Proc::spawn(
            leaf(&base.join(format!("{name}-data")), &sp_addr)
                .arg("share")
                .arg(base.join(name).join("Music")),
        );
        p.wait_for("sharing 2 files");
        sharers.push(p);
    }

    let carol = base.join("carol-data");
    let out =
        run(leaf(&carol, &sp_addr).args(["search", "olafur", "jordin", "--json", "--wait", "1"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "one row per distinct file: {rows:?}");
    let id = rows[0]["id"].as_str().unwrap().to_string();
    assert_eq!(id, blake3::hash(&content).to_hex().as_str());
    assert_eq!(rows[0]["name"], "03 - Þú ert jörðin.flac");
    assert_eq!(rows[0]["size"], 3_000_000);
    assert_eq!(rows[0]["sources"], 2);

    let dl = base.join("downloads");
    let out = run(leaf(&carol, &sp_addr).args(["get", &id, "--out"]).arg(&dl));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("from 2 source(s)"),
        "{}",
        text(&out.stdout)
    );
    assert!(std::fs::read(dl.join("03 - Þú ert jörðin.flac")).unwrap() == content);

    // The running node answers over its control socket, and takes more folders.
    let alice = base.join("alice-data");
    let out = run(leaf(&alice, &sp_addr).arg("status"));
    let status = text(&out.stdout);
    assert!(
        status.contains(&format!("superpeer {sp_addr} connected")),
        "{status}"
    );
    assert!(status.contains("shares    2 files"), "{status}");
    let extra = base.join("alice/Podcasts");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("episode 12 marmalade.ogg"), b"an episode").unwrap();
    let out = run(leaf(&alice, &sp_addr).arg("share").arg(&extra));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 files"),
        "{}",
        text(&out.stdout)
    );
    let out = run(leaf(&carol, &sp_addr).args(["search", "marmalade", "--wait", "1"]));
    assert!(
        text(&out.stdout).contains("episode 12 marmalade.ogg"),
        "{}",
        text(&out.stdout)
    );
    drop(sharers);
    drop(sp);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = run(leaf(&data, "127.0.0.1:9").args(["get", "not-an-id"]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a file id"),
        "{}",
        text(&out.stderr)
    );

    let out = run(leaf(&data, "127.0.0.1:9")
        .arg("share")
        .arg(tmp.path().join("missing")));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("missing") && err.contains("no such folder"),
        "{err}"
    );

    // No node and no super-peer: say so, and how to fix it.
    let out = run(leaf(&data, "127.0.0.1:9").args(["search", "anything"]));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no super-peer answers at 127.0.0.1:9"),
        "{err}"
    );
}
