//! Helpers for the tests that run the `leaf` and `superpeer` binaries: child processes that
//! are killed when dropped, commands bounded in time, and status polling.
#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const LEAF: &str = env!("CARGO_BIN_EXE_leaf");

pub fn superpeer_bin() -> PathBuf {
    let p = Path::new(LEAF).with_file_name("superpeer");
    assert!(
        p.exists(),
        "{} is not built: run the workspace's tests (cargo test)",
        p.display()
    );
    p
}

/// A child process that is killed when dropped, with its stdout read line by line.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            // Its log, with PROC_STDERR set (and RUST_LOG), when a test needs a look inside.
            .stderr(match std::env::var_os("PROC_STDERR") {
                Some(_) => Stdio::inherit(),
                None => Stdio::null(),
            })
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

    /// Sends SIGTERM and waits up to `within` for the process to exit; its exit status and the
    /// stdout lines not read yet. Panics (and the drop kills it) if it is still running then.
    pub fn terminate(&mut self, within: Duration) -> (ExitStatus, Vec<String>) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -TERM failed");
        let until = std::time::Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                std::time::Instant::now() < until,
                "still running {within:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at end of file.
        let mut lines = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            lines.push(line);
        }
        (status, lines)
    }

    /// Waits for a stdout line containing `needle`; returns it.
    pub fn wait_for(&self, needle: &str) -> String {
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

/// A `leaf` command on 127.0.0.1 that leaves the machine's router alone (no UPnP).
pub fn leaf(data: &Path, sp: &str) -> Command {
    let mut c = Command::new(LEAF);
    c.arg("--data-dir").arg(data).args([
        "--superpeer",
        sp,
        "--listen",
        "127.0.0.1:0",
        "--no-port-mapping",
    ]);
    c.env_remove("CANOPY_DATA_DIR")
        .env_remove("CANOPY_SUPERPEER");
    c
}

/// Runs a short command with a time bound.
pub fn run(cmd: &mut Command) -> Output {
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

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `leaf status --json` of a data directory.
pub fn status_json(data: &Path, sp: &str) -> serde_json::Value {
    let out = run(leaf(data, sp).args(["status", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

pub fn uploaded(data: &Path, sp: &str) -> u64 {
    status_json(data, sp)["uploaded_bytes"].as_u64().unwrap()
}

/// Polls `cond` every 100 ms for up to `secs` seconds.
pub fn wait_until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts a `superpeer` process on 127.0.0.1 (any port) with its data in `data_dir`, joining
/// `peers`; returns it and the address it printed.
pub fn start_superpeer(data_dir: &Path, peers: &[&str]) -> (Proc, String) {
    let mut cmd = Command::new(superpeer_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir);
    for p in peers {
        cmd.args(["--peer", p]);
    }
    let p = Proc::spawn(&mut cmd);
    let addr = p
        .wait_for("listening on")
        .rsplit(' ')
        .next()
        .unwrap()
        .trim()
        .to_string();
    (p, addr)
}
