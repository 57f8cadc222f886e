//! Case 6, swarm distribution (issues 9 and 21): one seeder and N leechers, every one of them on
//! its own testbed host with its upload capped at the same rate R, all asking for the same file
//! at once: N = 10 and 30 with a 100 MiB file at 20 Mbit/s, and N = 100 with a 32 MiB file at
//! 8 Mbit/s. Reported: the time until every leecher has the file, against the single-source
//! lower bound size/R and the naive N·size/R (the seeder serving everyone alone); for both
//! tools the most TCP connections to other leechers one leecher held at once (issue 21's bound
//! of 80 for Canopy; sampled every second from its host's TCP table: connections open or
//! opening, to or from any address but the super-peer's or tracker's); for Canopy also the
//! most sockets of any kind its process held (those links, plus its listener, super-peer link,
//! control socket and any UDP socket), and the largest peak resident memory of a leecher
//! process. For both tools, the share of the machine's CPU time left idle during the run: near
//! zero, the CPU (the nodes' own work and the kernel's moving their packets through the
//! testbed's veth pairs, bridge and `tbf` queues) set the pace, not the upload caps. (Both
//! shares include the harness's sampling of the leechers' connections.) Every host runs TCP
//! CUBIC, whatever the machine's setting (see `testbed`).
//!
//! Canopy: a `leaf share` node on every host (the seeder shares the file; each leecher shares
//! an empty folder and seeds whatever it downloads), then `leaf get ID` to each leecher's
//! running node at the same moment; a leecher is done when the file appears under its final
//! name (it appears only once every chunk is verified). Reference: BitTorrent with `aria2c` (Debian's
//! package) on the same hosts and caps, with `opentracker` as the tracker on the super-peer's
//! host and a torrent made by `mktorrent` with the same piece size as Canopy's chunks (256
//! KiB for these files); a leecher is done when aria2c runs its download-complete hook. Both sides keep
//! seeding once done, and both find peers by asking again every few seconds (Canopy's
//! re-query schedule; aria2c `--bt-tracker-interval=5`).

use std::fs;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::{check_file, command, fresh_dir, share_node, superpeer, Ctx};
use crate::data;
use crate::procs::{output, CpuSample, Proc, Scratch};
use crate::report::{Row, Verdict};
use crate::setup::find_program;
use crate::testbed::{Host, Testbed};

const CASE: &str = "6 swarm";
/// The issues' target for N = 30 and N = 100: all done within this many times size/R.
const TARGET: f64 = 1.3;
/// Issue 21's bound on the connections to other leaves one leecher holds at once.
const MAX_LINKS: usize = 80;

/// One set of runs on one testbed: the file's size, every host's upload cap, the leecher
/// counts, and the counts the target applies to.
struct Setting {
    size: u64,
    cap_mbit: u32,
    counts: &'static [usize],
    targeted: &'static [usize],
}

/// Finish times of one run, from the moment every leecher was started; the most links and
/// sockets a leecher held, and for Canopy the largest peak resident memory of a leecher (KiB).
#[derive(Default)]
struct Run {
    done: Vec<Duration>,
    /// TCP connections to other leaves, open or opening.
    peak_links: usize,
    peak_sockets: usize,
    peak_rss_kib: u64,
    /// The share of the machine's CPU time that was idle from the start to all done (from
    /// `/proc/stat`): near zero, the CPU, not the upload caps, set the pace.
    cpu_idle: Option<f64>,
}

impl Run {
    fn last(&self) -> Duration {
        self.done.iter().copied().max().unwrap_or_default()
    }

    fn first(&self) -> Duration {
        self.done.iter().copied().min().unwrap_or_default()
    }
}

/// Runs the case: each setting on a fresh testbed.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let settings: &[Setting] = if ctx.quick {
        &[Setting {
            size: 16 << 20,
            cap_mbit: 20,
            counts: &[4, 8],
            targeted: &[4, 8],
        }]
    } else {
        &[
            Setting {
                size: 100 << 20,
                cap_mbit: 20,
                counts: &[10, 30],
                targeted: &[30],
            },
            Setting {
                size: 32 << 20,
                cap_mbit: 8,
                counts: &[100],
                targeted: &[100],
            },
        ]
    };
    let mut rows = Vec::new();
    for setting in settings {
        rows.extend(run_setting(ctx, setting)?);
    }
    Ok(rows)
}

fn run_setting(ctx: &Ctx, setting: &Setting) -> anyhow::Result<Vec<Row>> {
    let aria2c = ctx.refs.get("aria2c")?;
    let (opentracker, mktorrent) = bittorrent_tools()?;
    let Setting {
        size,
        cap_mbit,
        counts,
        targeted,
    } = *setting;
    let most = *counts.iter().max().expect("counts");
    let cap_bytes = cap_mbit as f64 * 1e6 / 8.0;
    let ideal = size as f64 / cap_bytes;

    let scratch = Scratch::create(ctx.scratch.join("swarm"))?;
    let logs = ctx.log_dir(&format!("6-swarm-{}MiB", size >> 20))?;
    let share = scratch.dir("share")?;
    let name = format!("canopy-swarm-{}MiB.bin", size >> 20);
    eprintln!("case {CASE}: writing a {} MiB file", size >> 20);
    let id = data::noise_file(&share.join(&name), size, "swarm file")?;
    eprintln!(
        "case {CASE}: testbed of {} hosts, each upload capped at {cap_mbit} Mbit/s",
        most + 1
    );
    let tb = Testbed::create(most + 1, cap_mbit)?;
    let seed_host = &tb.sources[0];
    let leech_hosts = &tb.sources[1..];
    let limit = Duration::from_secs_f64(6.0 * ideal + 120.0);

    // Canopy.
    let sp_listen = SocketAddr::new(tb.superpeer.ip.into(), 7700);
    let (sp_proc, sp) = superpeer(
        &ctx.bins,
        Some(&tb.superpeer),
        sp_listen,
        &scratch.dir("sp")?,
        &logs.join("superpeer.log"),
    )?;
    let seed_dir = scratch.dir("seeder")?;
    let seeder = share_node(
        &ctx.bins,
        Some(seed_host),
        &seed_dir,
        sp,
        SocketAddr::new(seed_host.ip.into(), 7000),
        &[&share],
        &logs.join("leaf-seeder.log"),
    )?;
    let mut ours = Vec::new();
    for &n in counts {
        eprintln!("case {CASE}: Canopy, {n} leechers");
        let before = uploaded_bytes(&ctx.bins.leaf, &seed_dir)?;
        let run = canopy_run(
            ctx,
            &scratch,
            &logs,
            sp,
            &leech_hosts[..n],
            &id,
            &name,
            size,
            limit,
        )?;
        let after = uploaded_bytes(&ctx.bins.leaf, &seed_dir)?;
        eprintln!(
            "  all done in {:.1} s ({:.2}× size/R; first {:.1} s); the seeder sent {:.2}× the \
             file; a leecher held {} connections to leaves ({} sockets) and {:.0} MiB of memory \
             at most; CPU idle {}",
            run.last().as_secs_f64(),
            run.last().as_secs_f64() / ideal,
            run.first().as_secs_f64(),
            after.saturating_sub(before) as f64 / size as f64,
            run.peak_links,
            run.peak_sockets,
            run.peak_rss_kib as f64 / 1024.0,
            idle_text(&run)
        );
        ours.push((n, run, after.saturating_sub(before)));
    }
    drop(seeder);
    drop(sp_proc);

    // BitTorrent: aria2c with opentracker (Debian builds it to serve only the torrents of
    // its whitelist).
    let torrent = scratch.path().join(format!("{name}.torrent"));
    // Pieces as large as Canopy's chunks for this file: a piece, like a chunk, is served only
    // once whole, so its size sets how fast it spreads.
    let piece_log2 = wire::content::chunk_size_for(setting.size).trailing_zeros();
    output(
        Command::new(&mktorrent)
            .args(["-l", &piece_log2.to_string(), "-a"])
            .arg(format!("http://{}:6969/announce", tb.superpeer.ip))
            .arg("-o")
            .arg(&torrent)
            .arg(share.join(&name)),
    )
    .context("making the torrent")?;
    let shown = output(Command::new(&aria2c).arg("-S").arg(&torrent))?;
    let info_hash = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("Info Hash: "))
        .context("aria2c -S shows no info hash")?
        .trim()
        .to_string();
    let tracker_dir = scratch.dir("tracker")?;
    fs::write(tracker_dir.join("whitelist"), format!("{info_hash}\n"))
        .context("writing the tracker's whitelist")?;
    let tracker = Proc::spawn(
        "opentracker",
        {
            let mut c = tb.superpeer.command(&opentracker);
            c.args([
                "-i",
                &tb.superpeer.ip.to_string(),
                "-p",
                "6969",
                "-P",
                "6969",
            ])
            .arg("-d")
            .arg(&tracker_dir)
            .args(["-w", "whitelist"]);
            c
        },
        &logs.join("opentracker.log"),
    )?;
    std::thread::sleep(Duration::from_millis(500));
    let hook = scratch.path().join("done-hook.sh");
    fs::write(&hook, "#!/bin/sh\ntouch \"$3.done\"\n").context("writing the aria2c hook")?;
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&hook, fs::Permissions::from_mode(0o755))?;
    }
    let mut bt_seed = aria2c_cmd(seed_host, &aria2c, &torrent, &share, &hook);
    bt_seed.args(["--check-integrity=true", "--bt-seed-unverified=false"]);
    let mut bt_seeder = Proc::spawn("aria2c seeder", bt_seed, &logs.join("aria2c-seeder.log"))?;
    // The seeder checks its copy before it seeds.
    std::thread::sleep(Duration::from_secs(if ctx.quick { 2 } else { 5 }));
    bt_seeder.check_running()?;
    let mut theirs = Vec::new();
    for &n in counts {
        eprintln!("case {CASE}: aria2c (BitTorrent), {n} leechers");
        let mut leechers = Vec::new();
        let mut outs = Vec::new();
        let (start, cpu_start) = (Instant::now(), CpuSample::now());
        for (i, h) in leech_hosts[..n].iter().enumerate() {
            let out = scratch.path().join(format!("bt-n{n}-l{i}"));
            fresh_dir(&out)?;
            let cmd = aria2c_cmd(h, &aria2c, &torrent, &out, &hook);
            leechers.push(Proc::spawn(
                "aria2c leecher",
                cmd,
                &logs.join(format!("aria2c-n{n}-l{}.log", i + 1)),
            )?);
            outs.push(out.join(format!("{name}.done")));
        }
        let links = LinkWatch::start(
            leechers.iter().map(Proc::pid).collect(),
            tb.superpeer.ip.into(),
        );
        let run = wait_all(&outs, (start, cpu_start), limit, &mut leechers);
        let (peak_links, peak_sockets) = links.finish();
        let run = Run {
            peak_links,
            peak_sockets,
            ..run?
        };
        eprintln!(
            "  all done in {:.1} s ({:.2}× size/R; first {:.1} s); a leecher held {} \
             connections to other leechers at most; CPU idle {}",
            run.last().as_secs_f64(),
            run.last().as_secs_f64() / ideal,
            run.first().as_secs_f64(),
            run.peak_links,
            idle_text(&run)
        );
        for i in 0..n {
            check_file(
                &scratch.path().join(format!("bt-n{n}-l{i}")).join(&name),
                size,
                &id,
            )
            .context("aria2c's file")?;
        }
        theirs.push(run);
        drop(leechers);
    }
    drop(bt_seeder);
    drop(tracker);

    let mut rows = Vec::new();
    for ((n, run, uploaded), bt) in ours.iter().zip(&theirs) {
        let t = run.last().as_secs_f64();
        let b = bt.last().as_secs_f64();
        let naive = *n as f64 * ideal;
        let met = t <= TARGET * ideal;
        let targeted = targeted.contains(n);
        rows.push(Row {
            case: CASE.into(),
            what: format!(
                "N={n}: 1 seeder + {n} leechers, {} MiB, every upload {cap_mbit} Mbit/s: all done \
                 (size/R = {ideal:.1} s, N·size/R = {naive:.0} s)",
                size >> 20
            ),
            ours: format!(
                "{t:.1} s = {:.2}× size/R, {:.3}× N·size/R (first done {:.1} s; seeder sent \
                 {:.2}× the file; a leecher held at most {} connections to other leaves, {} \
                 sockets, and {:.0} MiB resident; CPU idle {})",
                t / ideal,
                t / naive,
                run.first().as_secs_f64(),
                *uploaded as f64 / size as f64,
                run.peak_links,
                run.peak_sockets,
                run.peak_rss_kib as f64 / 1024.0,
                idle_text(run)
            ),
            reference: format!(
                "aria2c {b:.1} s = {:.2}× size/R (first done {:.1} s; CPU idle {})",
                b / ideal,
                bt.first().as_secs_f64(),
                idle_text(bt)
            ),
            ratio: format!("{:.2}× aria2c's speed", b / t),
            target: if targeted {
                format!("≤{TARGET:.1}× size/R")
            } else {
                "—".into()
            },
            verdict: if targeted {
                Verdict::of(met)
            } else {
                Verdict::Info
            },
        });
        eprintln!("  {}", rows.last().map(|r| r.ours.as_str()).unwrap_or(""));
        eprintln!(
            "  {}",
            rows.last().map(|r| r.reference.as_str()).unwrap_or("")
        );
        if targeted {
            rows.push(Row {
                case: CASE.into(),
                what: format!(
                    "N={n}: the most TCP connections to other leaves one leecher held at once \
                     (sampled every {} s)",
                    LINK_SAMPLE_EVERY.as_secs()
                ),
                ours: run.peak_links.to_string(),
                reference: format!("aria2c {}", bt.peak_links),
                ratio: "—".into(),
                target: format!("≤{MAX_LINKS}"),
                verdict: Verdict::of(run.peak_links <= MAX_LINKS),
            });
        }
    }
    drop(tb);
    Ok(rows)
}

/// One Canopy run: fresh leecher nodes on `hosts`, all asked for the file at once.
#[allow(clippy::too_many_arguments)]
fn canopy_run(
    ctx: &Ctx,
    scratch: &Scratch,
    logs: &Path,
    sp: SocketAddr,
    hosts: &[Host],
    id: &wire::FileId,
    name: &str,
    size: u64,
    limit: Duration,
) -> anyhow::Result<Run> {
    let n = hosts.len();
    let empty = scratch.dir("empty")?;
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let dir = scratch.path().join(format!("leech-n{n}-l{i}"));
        fresh_dir(&dir)?;
        let mut cmd = command(Some(h), &ctx.bins.leaf);
        cmd.arg("--data-dir")
            .arg(&dir)
            .arg("--superpeer")
            .arg(sp.to_string())
            .arg("--listen")
            .arg(SocketAddr::new(h.ip.into(), 7000).to_string())
            .args(["--seed-minutes", "none", "--no-promote", "share"])
            .arg(&empty);
        nodes.push(Proc::spawn(
            "leaf share",
            cmd,
            &logs.join(format!("leaf-n{n}-l{}.log", i + 1)),
        )?);
        dirs.push(dir);
    }
    for p in &mut nodes {
        p.wait_for("keeping the node running", Duration::from_secs(120))?;
    }
    let mut gets = Vec::new();
    let mut outs = Vec::new();
    let (start, cpu_start) = (Instant::now(), CpuSample::now());
    for (i, (h, dir)) in hosts.iter().zip(&dirs).enumerate() {
        let out = dir.join("out");
        fs::create_dir_all(&out)?;
        let mut cmd = command(Some(h), &ctx.bins.leaf);
        cmd.arg("--data-dir")
            .arg(dir)
            .arg("get")
            .arg(id.to_hex())
            .arg("--out")
            .arg(&out);
        gets.push(Proc::spawn(
            "leaf get",
            cmd,
            &logs.join(format!("get-n{n}-l{}.log", i + 1)),
        )?);
        outs.push(out.join(name));
    }
    let pids: Vec<u32> = nodes.iter().map(Proc::pid).collect();
    let links = LinkWatch::start(pids.clone(), sp.ip());
    let run = wait_all(&outs, (start, cpu_start), limit, &mut nodes);
    let (peak_links, peak_sockets) = links.finish();
    let mut run = run?;
    run.peak_links = peak_links;
    run.peak_sockets = peak_sockets;
    run.peak_rss_kib = pids.iter().map(|&p| peak_rss_kib(p)).max().unwrap_or(0);
    for o in &outs {
        check_file(o, size, id).context("leaf get's file")?;
    }
    drop(gets);
    drop(nodes);
    Ok(run)
}

/// How often [`LinkWatch`] counts: each count reads every leecher's TCP table and open
/// files, which costs the machine a few per cent of a CPU at N = 100, so it is done alike
/// for Canopy and aria2c.
const LINK_SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Counts, on a thread of its own, the most TCP connections one of `pids` held to hosts
/// other than `server` (the super-peer or the tracker) and the most sockets, until
/// [`LinkWatch::finish`].
struct LinkWatch {
    sampling: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(usize, usize)>,
}

impl LinkWatch {
    fn start(pids: Vec<u32>, server: IpAddr) -> LinkWatch {
        let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let on = sampling.clone();
        let thread = std::thread::spawn(move || {
            let (mut links, mut sockets) = (0, 0);
            while on.load(std::sync::atomic::Ordering::Relaxed) {
                for &p in &pids {
                    links = links.max(leaf_links_of(p, server));
                    sockets = sockets.max(sockets_of(p));
                }
                std::thread::sleep(LINK_SAMPLE_EVERY);
            }
            (links, sockets)
        });
        LinkWatch { sampling, thread }
    }

    /// The most links and sockets seen.
    fn finish(self) -> (usize, usize) {
        self.sampling
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}

/// The sockets process `pid` has open now (0 if it is gone).
fn sockets_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |fds| {
        fds.flatten()
            .filter(|fd| {
                fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
            })
            .count()
    })
}

/// TCP connections open or opening in the network namespace of process `pid` (a leecher's
/// host: the leaf, or aria2c, is the only program there that speaks TCP) with any host but
/// `server` (the super-peer's link and its checks that connect back from other ports, or the
/// tracker's): its links to other leechers. Counted: established, SYN sent or received, and
/// closed by the other end but not yet by us (the socket is still held); not listeners, nor
/// connections we closed (`TIME_WAIT` and the like hold no socket of ours).
fn leaf_links_of(pid: u32, server: IpAddr) -> usize {
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|t| fs::read_to_string(format!("/proc/{pid}/net/{t}")).ok())
        .map(|table| {
            table
                .lines()
                .skip(1)
                .filter(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    let (Some(remote), Some(state)) = (cols.get(2), cols.get(3)) else {
                        return false;
                    };
                    matches!(*state, "01" | "02" | "03" | "08")
                        && parse_proc_addr(remote).map(|a| a.ip()) != Some(server)
                })
                .count()
        })
        .sum()
}

/// An address as `/proc/net/tcp` writes it: the IPv4 address as one hexadecimal number in the
/// host's (little-endian) order, then the port (`0100007F:1F90` is 127.0.0.1:8080). IPv6
/// entries are not parsed (the testbed speaks IPv4): `None`.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    if ip.len() != 8 {
        return None;
    }
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::from((ip.to_le_bytes(), port)))
}

/// The peak resident memory of process `pid`, in KiB (0 if it is gone).
fn peak_rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Waits until every path in `marks` exists; their times from `start`, and the CPU idle share
/// since `cpu_start` (read with `start`). Fails after `limit` or if one of `procs` exits.
fn wait_all(
    marks: &[PathBuf],
    (start, cpu_before): (Instant, CpuSample),
    limit: Duration,
    procs: &mut [Proc],
) -> anyhow::Result<Run> {
    let mut done: Vec<Option<Duration>> = vec![None; marks.len()];
    let mut next_check = Instant::now();
    loop {
        for (d, m) in done.iter_mut().zip(marks) {
            if d.is_none() && m.exists() {
                *d = Some(start.elapsed());
            }
        }
        if done.iter().all(Option::is_some) {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let busy = CpuSample::now().machine_busy_since(&cpu_before);
            let cpu_idle = Some((1.0 - busy / cpus).clamp(0.0, 1.0));
            return Ok(Run {
                done: done.into_iter().flatten().collect(),
                cpu_idle,
                ..Run::default()
            });
        }
        if start.elapsed() > limit {
            let left = done.iter().filter(|d| d.is_none()).count();
            bail!(
                "{left} of {} leechers not done after {limit:?}",
                marks.len()
            );
        }
        if Instant::now() >= next_check {
            for p in procs.iter_mut() {
                p.check_running()?;
            }
            next_check = Instant::now() + Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How a run's CPU idle share reads in the report.
fn idle_text(run: &Run) -> String {
    run.cpu_idle
        .map_or("not measured".into(), |i| format!("{:.0} %", i * 100.0))
}

/// An aria2c that downloads (or seeds) `torrent` into `dir` and keeps seeding, on `host`.
fn aria2c_cmd(host: &Host, aria2c: &Path, torrent: &Path, dir: &Path, hook: &Path) -> Command {
    let mut c = host.command(aria2c);
    c.arg("--dir")
        .arg(dir)
        .arg(format!("--on-bt-download-complete={}", hook.display()))
        .args([
            "--seed-ratio=0.0",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--bt-tracker-interval=5",
            "--file-allocation=none",
            "--allow-overwrite=true",
            "--summary-interval=0",
            "--console-log-level=warn",
            "--listen-port=6881",
        ])
        .arg(torrent);
    c
}

/// What the node in `data_dir` has uploaded so far (`leaf status --json`).
fn uploaded_bytes(leaf: &Path, data_dir: &Path) -> anyhow::Result<u64> {
    let text = output(
        Command::new(leaf)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["status", "--json"]),
    )?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("leaf status printed {text:?}"))?;
    v["uploaded_bytes"]
        .as_u64()
        .context("leaf status has no uploaded_bytes")
}

/// `opentracker` and `mktorrent`, installed from Debian's packages if missing.
fn bittorrent_tools() -> anyhow::Result<(PathBuf, PathBuf)> {
    let find = || (find_program("opentracker"), find_program("mktorrent"));
    if let (Some(t), Some(m)) = find() {
        return Ok((t, m));
    }
    eprintln!("bench: installing opentracker, mktorrent with apt-get");
    // As for the other references: the package lists of a fresh machine may be empty.
    let updated = Command::new("apt-get")
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get update")?;
    if !updated.success() {
        bail!("apt-get update failed ({updated})");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "opentracker", "mktorrent"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install opentracker mktorrent")?;
    if !status.success() {
        bail!("apt-get install opentracker mktorrent failed ({status})");
    }
    match find() {
        (Some(t), Some(m)) => Ok((t, m)),
        _ => bail!("opentracker or mktorrent still missing after apt-get install"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_the_kernels_tcp_table_are_read_in_host_order() {
        assert_eq!(
            parse_proc_addr("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("014D0A0A:1B58"),
            Some("10.10.77.1:7000".parse().unwrap())
        );
        // IPv6 entries and garbage are not read.
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:1F90"),
            None
        );
        assert_eq!(parse_proc_addr("nothing"), None);
    }
}
