//! The five cases of issue 6 and the swarm case of issue 9, and what they share: starting super-peers, sharing leaves and
//! nginx servers (on the host or on a testbed host), and asking the network for sources.

pub mod ingest;
pub mod load;
pub mod multisource;
pub mod raw;
pub mod search;
pub mod sharing;
pub mod swarm;

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use wire::FileId;

use crate::procs::{output, Proc};
use crate::setup::{Bins, References};
use crate::testbed::Host;

/// What every case gets.
#[derive(Debug)]
pub struct Ctx {
    /// Small sizes (the smoke test).
    pub quick: bool,
    /// Canopy's binaries.
    pub bins: Bins,
    /// The reference tools.
    pub refs: References,
    /// Where cases make their scratch folders (deleted when the case ends).
    pub scratch: PathBuf,
    /// Where processes' logs go (kept after the run, for a look after a failure).
    pub logs: PathBuf,
    /// Upload cap per host in case 1, Mbit/s.
    pub cap_mbit: u32,
}

impl Ctx {
    /// The log folder of one case, created.
    pub fn log_dir(&self, case: &str) -> anyhow::Result<PathBuf> {
        let p = self.logs.join(case);
        fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
        Ok(p)
    }
}

/// A command for `program`, on `host` if given.
pub fn command(host: Option<&Host>, program: &Path) -> Command {
    match host {
        Some(h) => h.command(program),
        None => Command::new(program),
    }
}

/// `leaf --data-dir DATA_DIR --superpeer SUPERPEER get ID --out OUT`, on `host` if given: a
/// fresh node fetching one file, as a user would run it.
pub fn leaf_get(
    bins: &Bins,
    host: Option<&Host>,
    data_dir: &Path,
    superpeer: SocketAddr,
    id: &FileId,
    out: &Path,
) -> Command {
    let mut cmd = command(host, &bins.leaf);
    cmd.arg("--data-dir")
        .arg(data_dir)
        .arg("--superpeer")
        .arg(superpeer.to_string())
        .arg("get")
        .arg(id.to_hex())
        .arg("--out")
        .arg(out);
    cmd
}

/// A free TCP port on 127.0.0.1 (for servers that cannot report the port they bound).
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Limits a benchmark's super-peers run with, unless a case says otherwise.
const BENCH_LIMITS: [(&str, &str); 6] = [
    ("--max-per-address", "100000"),
    ("--max-connections", "100000"),
    ("--leaf-queries-per-second", "1000000"),
    ("--leaf-messages-per-second", "1000000"),
    // Case 4 checks that every expected hit arrives (up to 2,000 for its probes) and times the
    // last one: queries go to every neighbour at once, not dynamically up to 150 results.
    ("--max-hits-per-query", "100000"),
    ("--dynamic-target", "0"),
];

/// Starts `superpeer --listen LISTEN --data-dir DIR`; returns it and the address it listens
/// on.
pub fn superpeer(
    bins: &Bins,
    host: Option<&Host>,
    listen: SocketAddr,
    dir: &Path,
    log: &Path,
) -> anyhow::Result<(Proc, SocketAddr)> {
    superpeer_with(bins, host, listen, &[], &[], dir, log)
}

/// Starts `superpeer --listen LISTEN --data-dir DIR [--peer P]... [EXTRA]...`; returns it and
/// the address it listens on.
pub fn superpeer_with(
    bins: &Bins,
    host: Option<&Host>,
    listen: SocketAddr,
    peers: &[SocketAddr],
    extra: &[String],
    dir: &Path,
    log: &Path,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let mut cmd = command(host, &bins.superpeer);
    cmd.arg("--listen")
        .arg(listen.to_string())
        .arg("--data-dir")
        .arg(dir);
    for p in peers {
        cmd.arg("--peer").arg(p.to_string());
    }
    cmd.args(extra);
    // The harness plays many hosts from one address, and its throughput probe many users
    // through a few connections: the limits against exactly that are lifted (unless the case
    // sets them itself, as case 7 does).
    for (flag, value) in BENCH_LIMITS {
        if !extra.iter().any(|e| e == flag) {
            cmd.arg(flag).arg(value);
        }
    }
    let mut p = Proc::spawn("superpeer", cmd, log)?;
    let line = p.wait_for("listening on", Duration::from_secs(20))?;
    let addr = line
        .rsplit("listening on ")
        .next()
        .and_then(|a| a.trim().parse().ok())
        .with_context(|| format!("cannot read the super-peer's address from {line:?}"))?;
    Ok((p, addr))
}

/// Starts a serving leaf node (`leaf share [FOLDERS]`) and waits until it has shared them
/// (hashing, if it must) and said it keeps running.
pub fn share_node(
    bins: &Bins,
    host: Option<&Host>,
    data_dir: &Path,
    superpeer: SocketAddr,
    listen: SocketAddr,
    folders: &[&Path],
    log: &Path,
) -> anyhow::Result<Proc> {
    let mut cmd = command(host, &bins.leaf);
    cmd.arg("--data-dir")
        .arg(data_dir)
        .arg("--superpeer")
        .arg(superpeer.to_string())
        .arg("--listen")
        .arg(listen.to_string())
        .arg("share")
        .args(folders);
    let mut p = Proc::spawn("leaf share", cmd, log)?;
    p.wait_for("keeping the node running", Duration::from_secs(600))?;
    Ok(p)
}

/// The search hit for `id` among those for `words`, as `leaf search WORDS --json` prints it
/// (its sources grouped), asking from a short-lived node on `host`; `None` if no source has
/// it.
fn hit_of(
    bins: &Bins,
    host: Option<&Host>,
    superpeer: SocketAddr,
    words: &str,
    id: &FileId,
    probe_dir: &Path,
) -> anyhow::Result<Option<serde_json::Value>> {
    let mut cmd = command(host, &bins.leaf);
    cmd.arg("--data-dir")
        .arg(probe_dir)
        .arg("--superpeer")
        .arg(superpeer.to_string())
        .args(["search", "--json", "--wait", "0.5", words]);
    let text = output(&mut cmd)?;
    for line in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("leaf search printed {line:?}"))?;
        if v["id"].as_str() == Some(id.to_hex().as_str()) {
            return Ok(Some(v));
        }
    }
    Ok(None)
}

/// How many sources the network reports for `id` (see [`hit_of`]).
pub fn sources_of(
    bins: &Bins,
    host: Option<&Host>,
    superpeer: SocketAddr,
    words: &str,
    id: &FileId,
    probe_dir: &Path,
) -> anyhow::Result<usize> {
    let hit = hit_of(bins, host, superpeer, words, id, probe_dir)?;
    Ok(hit.map_or(0, |v| v["sources"].as_u64().unwrap_or(0) as usize))
}

/// Waits until the network reports exactly `n` sources for `id`.
pub fn wait_sources(
    bins: &Bins,
    host: Option<&Host>,
    superpeer: SocketAddr,
    words: &str,
    id: &FileId,
    n: usize,
    probe_dir: &Path,
) -> anyhow::Result<()> {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let have = sources_of(bins, host, superpeer, words, id, probe_dir)?;
        if have == n {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("the network reports {have} sources of {words:?}, not {n}, after a minute");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts nginx serving `root` at `listen` (one worker, sendfile, no access log), with its
/// configuration and temporary files in `dir`; waits until it answers.
pub fn nginx(
    refs: &References,
    host: Option<&Host>,
    listen: SocketAddr,
    root: &Path,
    dir: &Path,
    log: &Path,
) -> anyhow::Result<Proc> {
    let nginx = refs.get("nginx")?;
    let curl = refs.get("curl")?;
    fs::create_dir_all(dir.join("tmp")).with_context(|| format!("creating {}", dir.display()))?;
    let d = dir.display();
    let conf = format!(
        "daemon off;\nuser root;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n\
         default_type application/octet-stream;\n  client_body_temp_path {d}/tmp/body;\n\
         proxy_temp_path {d}/tmp/proxy;\n  fastcgi_temp_path {d}/tmp/fastcgi;\n\
         uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
         server {{ listen {listen}; root {}; }}\n}}\n",
        root.display()
    );
    let conf_path = dir.join("nginx.conf");
    fs::write(&conf_path, conf).with_context(|| format!("writing {}", conf_path.display()))?;
    let mut cmd = command(host, &nginx);
    cmd.arg("-c")
        .arg(&conf_path)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"));
    let mut p = Proc::spawn("nginx", cmd, log)?;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut probe = command(host, &curl);
        probe
            .args(["-sf", "-o", "/dev/null", "-I"])
            .arg(format!("http://{listen}/"));
        // The folder has no index page: any HTTP answer (403, 404) means nginx is up.
        let up = probe
            .stderr(std::process::Stdio::null())
            .status()
            .map(|s| s.code() == Some(0) || s.code() == Some(22))
            .unwrap_or(false);
        if up {
            return Ok(p);
        }
        p.check_running()?;
        if Instant::now() > until {
            bail!("nginx at {listen} did not answer within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Checks a downloaded file: its size and its BLAKE3 id.
pub fn check_file(path: &Path, size: u64, id: &FileId) -> anyhow::Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("the download {}", path.display()))?;
    if meta.len() != size {
        bail!("{} has {} bytes, not {size}", path.display(), meta.len());
    }
    let mut hasher = blake3::Hasher::new();
    let file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    hasher
        .update_reader(file)
        .with_context(|| format!("hashing {}", path.display()))?;
    let got: FileId = hasher.finalize().into();
    if got != *id {
        bail!("{} does not hash to {id}", path.display());
    }
    Ok(())
}

/// Empties (or creates) a folder.
pub fn fresh_dir(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        fs::remove_dir_all(path).with_context(|| format!("emptying {}", path.display()))?;
    }
    fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))
}

/// The seconds `leaf get` reports for the download itself ("saved … in 12.3 s").
pub fn reported_seconds(stdout: &str) -> Option<f64> {
    let line = stdout.lines().find(|l| l.starts_with("saved "))?;
    let (_, rest) = line.rsplit_once(" in ")?;
    rest.trim()
        .trim_end_matches(')')
        .trim_end_matches('s')
        .trim()
        .parse()
        .ok()
}
