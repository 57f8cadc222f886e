//! `bench`: Canopy's benchmarks side by side with the tools people use today (issue 6).
//!
//! Run `cargo run --release -p bench` as root on Linux (network namespaces, `tc`, `apt-get`).
//! It installs the reference tools from Debian's packages if they are missing (`aria2`,
//! `nginx`, `b3sum`, `curl`), builds the release `leaf` and `superpeer`, runs every case,
//! prints a table with the reference's figure beside ours, the ratio and the target, and
//! rewrites `BENCHMARKS.md` with the figures, the machine, the date and the exact command.
//! `--quick` runs every case at a small scale as a smoke test (CI) and writes its table to
//! `target/bench/quick.md` instead; it skips the case that needs network namespaces if the
//! machine cannot make them. A case that breaks makes the exit status non-zero; a missed
//! target does not (the table says so).
//!
//! # Cases
//! 1. [`cases::multisource`]: `leaf get` against `aria2c` from N nginx mirrors, N = 1, 2, 4, 8
//!    and 16 hosts in network namespaces, each host's upload capped ([`testbed`]).
//! 2. [`cases::raw`]: one source, loopback, no cap, 1 GiB: `leaf get` against `curl` + nginx;
//!    and `leaf get`'s peak memory for that file and for one four times larger.
//! 3. [`cases::sharing`]: hashing a few GB of real-size files, `leaf share` against `b3sum`;
//!    re-sharing an unchanged folder.
//! 4. [`cases::search`]: 10 super-peers and 200 leaves over the corpus: latency, and one
//!    super-peer's queries per second, against a local tantivy index of the whole corpus.
//! 5. [`cases::ingest`]: one super-peer registering 100,000 records from 100 leaves.
//! 6. [`cases::swarm`] (issues 9 and 21): one seeder and N = 10 and 30 leechers on testbed
//!    hosts, every upload capped at the same rate, all fetching a 100 MiB file at once, then
//!    N = 100 with a 32 MiB file at 8 Mbit/s: time until all have it against size/R and
//!    N·size/R, a leecher's most sockets and peak memory, beside BitTorrent (`aria2c` with `opentracker`, both
//!    installed from Debian's packages when missing). Its figures also go to their own
//!    section of `BENCHMARKS.md` (between `<!-- BEGIN swarm` and `<!-- END swarm -->`),
//!    rewritten by any run of the case that is not `--quick`.
//! 7. [`cases::load`] (issue 7): one super-peer with 1,000 leaves of 100 records each, then 50
//!    searchers for 30 s: errors, p99 time to first hit, memory over time.
//!
//! # Layout
//! - [`setup`]: reference tools, the release build, the machine's description.
//! - [`testbed`]: namespaces, veth pairs, the bridge and the caps.
//! - [`procs`]: child processes, timing, and clean-up on any exit (Ctrl-C included).
//! - [`wirenet`]: leaves in this process that speak the wire protocol (cases 4 and 5).
//! - [`data`]: files, folders, leaves' libraries and queries, all from fixed seeds.
//! - [`report`]: the table, as text and Markdown.
//!
//! # Example
//! ```text
//! sudo cargo run --release -p bench -- --quick     # about two minutes after the build
//! sudo cargo run --release -p bench                # the full run, about a quarter of an hour
//! sudo cargo run --release -p bench -- --case 1 --cap-mbit 50
//! ```

mod cases;
mod data;
mod delayline;
mod procs;
mod report;
mod setup;
mod testbed;
mod wirenet;

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

use cases::Ctx;
use procs::Scratch;
use report::{Row, Verdict};

/// Canopy's benchmarks beside aria2c, nginx + curl, b3sum and a local tantivy index. Needs
/// root (network namespaces, tc, apt-get).
#[derive(Debug, Parser)]
struct Args {
    /// Every case at a small scale (a smoke test, about two minutes after the build); the
    /// table goes to target/bench/quick.md, not BENCHMARKS.md.
    #[arg(long)]
    quick: bool,
    /// Upload cap of every source host in case 1, in Mbit/s.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    cap_mbit: u32,
    /// Before each case, wait up to this many minutes for other programs to leave the CPUs
    /// alone (under a quarter of a CPU), and run a case they disturbed again (twice at most);
    /// 0 to start at once and run each case once. [default: 10, 0 with --quick]
    #[arg(long, value_name = "MINUTES")]
    wait_idle: Option<u64>,
    /// Run only this case (1 to 7; repeatable); the table goes to target/bench/partial.md.
    #[arg(long = "case", value_name = "N", value_parser = clap::value_parser!(u8).range(1..=7))]
    cases: Vec<u8>,
}

const NAMES: [&str; 7] = [
    "1 multi-source",
    "2 raw transfer",
    "3 sharing",
    "4 search",
    "5 ingest",
    "6 swarm",
    "7 load",
];

/// The reference programs each case needs.
const NEEDS: [&[&str]; 7] = [
    &["aria2c", "nginx", "curl"],
    &["nginx", "curl"],
    &["b3sum"],
    &[],
    &[],
    &["aria2c"],
    &[],
];

fn main() -> ExitCode {
    // The leaves the bench starts leave the machine's router alone (no UPnP), whatever the
    // environment says; set before any thread starts.
    std::env::set_var("CANOPY_NO_PORT_MAPPING", "1");
    match real_main() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("bench: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// True when every case that ran worked.
fn real_main() -> anyhow::Result<bool> {
    // Before any other thread exists, so that every thread leaves the signals to this one.
    procs::install_signal_handler()?;
    let args = Args::parse();
    let started = Instant::now();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the bench crate lives in the workspace")?
        .to_path_buf();
    let _lock = lock()?;
    clean_stale_scratch();

    let refs = setup::references();
    let bins = setup::build(&workspace)?;
    // What was built: the figures belong to this, whatever is committed while the run goes on.
    let run = RunInfo {
        date: short_output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
        code: code_version(&workspace),
        started,
    };
    let scratch = Scratch::create(
        std::env::temp_dir().join(format!("{SCRATCH_PREFIX}{}", std::process::id())),
    )?;
    let out_dir = workspace.join("target/bench");
    let logs = out_dir.join("logs");
    if logs.exists() {
        fs::remove_dir_all(&logs).with_context(|| format!("emptying {}", logs.display()))?;
    }
    let netns = testbed::available();
    if netns.is_ok() {
        testbed::clean_stale()?;
    }
    let machine = setup::machine(scratch.path());
    let ctx = Ctx {
        quick: args.quick,
        bins,
        refs,
        scratch: scratch.path().to_path_buf(),
        logs: logs.clone(),
        cap_mbit: args.cap_mbit,
    };

    let mut rows: Vec<Row> = Vec::new();
    let mut others: Vec<(&str, f64)> = Vec::new();
    let mut ok = true;
    for case in 1..=NAMES.len() as u8 {
        if !args.cases.is_empty() && !args.cases.contains(&case) {
            continue;
        }
        let name = NAMES[case as usize - 1];
        eprintln!("\n== case {name}");
        // What stops a case from running at all: a skip in a smoke test, a failure otherwise.
        let blocked = match (case, &netns) {
            (1 | 6, Err(why)) => Some(format!("network namespaces are not available here: {why}")),
            _ => NEEDS[case as usize - 1]
                .iter()
                .find_map(|p| ctx.refs.get(p).err().map(|e| format!("{e:#}"))),
        };
        let patience = args.wait_idle.unwrap_or(if args.quick { 0 } else { 10 });
        // A case that other programs disturbed is run again (twice at most, not in a smoke
        // test); the least disturbed attempt counts.
        let attempts = if patience == 0 { 1 } else { 3 };
        let mut best: Option<(f64, anyhow::Result<Vec<Row>>)> = None;
        for attempt in 1..=attempts {
            wait_idle(Duration::from_secs(patience * 60));
            let t = Instant::now();
            let cpu = procs::CpuSample::now();
            let result = match &blocked {
                Some(why) if args.quick => {
                    eprintln!("case {name} skipped: {why}");
                    Ok(vec![Row::not_run(name, Verdict::Skipped(why.clone()))])
                }
                Some(why) => Err(anyhow::anyhow!(why.clone())),
                None => match case {
                    1 => cases::multisource::run(&ctx),
                    2 => cases::raw::run(&ctx),
                    3 => cases::sharing::run(&ctx),
                    4 => cases::search::run(&ctx),
                    5 => cases::ingest::run(&ctx),
                    6 => cases::swarm::run(&ctx),
                    _ => cases::load::run(&ctx),
                },
            };
            let busy = procs::CpuSample::now().others_since(&cpu);
            eprintln!(
                "case {name} took {:.0} s; other programs kept {busy:.2} CPUs busy meanwhile",
                t.elapsed().as_secs_f64()
            );
            let failed = result.is_err();
            if best.as_ref().is_none_or(|(b, _)| busy < *b) {
                best = Some((busy, result));
            }
            if failed || busy <= 0.25 {
                break;
            }
            if attempt < attempts {
                eprintln!("case {name}: disturbed by other programs; running it again");
            }
        }
        let (busy, result) = best.expect("at least one attempt");
        others.push((name, busy));
        match result {
            Ok(r) => rows.extend(r),
            Err(e) => {
                eprintln!("case {name} FAILED: {e:#}");
                ok = false;
                rows.push(Row::not_run(name, Verdict::Failed(format!("{e:#}"))));
            }
        }
    }
    drop(scratch);

    println!("\n{}", report::text_table(&rows));
    let all = args.cases.is_empty() || (1..=NAMES.len() as u8).all(|c| args.cases.contains(&c));
    let path = if args.quick {
        out_dir.join("quick.md")
    } else if !all {
        out_dir.join("partial.md")
    } else {
        workspace.join("BENCHMARKS.md")
    };
    fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let mut text = markdown(&args, &rows, &others, &machine, &ctx, &run);
    if path == workspace.join("BENCHMARKS.md") {
        // Sections other programs write (between their BEGIN and END markers) are kept.
        if let Ok(old) = fs::read_to_string(&path) {
            text.push_str(&kept_sections(&old));
        }
    }
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    // Cases 6 and 7 keep their own sections of BENCHMARKS.md, rewritten by any full run of
    // the case (alone or with the others).
    for (case, key) in [(NAMES[5], "swarm"), (NAMES[6], "load")] {
        let case_rows: Vec<Row> = rows.iter().filter(|r| r.case == case).cloned().collect();
        let ran = case_rows
            .iter()
            .any(|r| !matches!(r.verdict, Verdict::Failed(_) | Verdict::Skipped(_)));
        if !args.quick && ran {
            let md = workspace.join("BENCHMARKS.md");
            let old = fs::read_to_string(&md).unwrap_or_default();
            let section = case_section(case, key, &case_rows, &others, &machine, &ctx, &run);
            fs::write(&md, replace_section(&old, key, &section))
                .with_context(|| format!("writing {}", md.display()))?;
            println!("case {case}: figures written to {}", md.display());
        }
    }
    println!(
        "report written to {}; process logs in {}",
        path.display(),
        logs.display()
    );
    if !ok {
        eprintln!("bench: at least one case failed (see the table)");
    }
    Ok(ok)
}

/// Waits until other programs use under a quarter of a CPU (sampled over two seconds), or
/// `patience` passes.
fn wait_idle(patience: Duration) {
    if patience.is_zero() {
        return;
    }
    let until = Instant::now() + patience;
    let mut said = Instant::now() - Duration::from_secs(60);
    loop {
        let a = procs::CpuSample::now();
        std::thread::sleep(Duration::from_secs(2));
        let busy = procs::CpuSample::now().others_since(&a);
        if busy < 0.25 {
            return;
        }
        if Instant::now() > until {
            eprintln!("bench: other programs still use {busy:.2} CPUs; going ahead anyway");
            return;
        }
        if said.elapsed() >= Duration::from_secs(30) {
            eprintln!(
                "bench: waiting for the machine to be idle (other programs use {busy:.2} CPUs)"
            );
            said = Instant::now();
        }
    }
}

/// The scratch folders' prefix in the temporary folder.
const SCRATCH_PREFIX: &str = "cnpy-bench-";

/// One run at a time: the testbed's namespace names are fixed.
fn lock() -> anyhow::Result<File> {
    let path = std::env::temp_dir().join("cnpy-bench.lock");
    let f = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        bail!(
            "another bench run holds {}; wait for it to finish",
            path.display()
        );
    }
    Ok(f)
}

/// Removes scratch folders of earlier runs that were killed (we hold the lock, so none is
/// in use).
fn clean_stale_scratch() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with(SCRATCH_PREFIX) && e.path().is_dir() {
            eprintln!(
                "bench: removing {} left by an earlier run",
                e.path().display()
            );
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        "cargo run --release -p bench".into()
    } else {
        format!("cargo run --release -p bench -- {}", args.join(" "))
    }
}

fn short_output(cmd: &mut Command) -> String {
    procs::output(cmd)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// When the run began and what code it measures.
struct RunInfo {
    date: String,
    code: String,
    started: Instant,
}

/// The commit of the workspace, and the source files that differ from it (modified or new).
fn code_version(workspace: &Path) -> String {
    let git = |args: &[&str]| short_output(Command::new("git").arg("-C").arg(workspace).args(args));
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    // Not trimmed: each line starts with two status columns and a space.
    let status = procs::output(
        Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(["status", "--porcelain"]),
    )
    .unwrap_or_default();
    let changed: Vec<&str> = status
        .lines()
        .filter_map(|l| l.get(3..))
        .filter(|p| p.ends_with(".rs") || p.ends_with(".toml") || p.ends_with(".lock"))
        .collect();
    match changed.len() {
        0 => format!("commit {commit}"),
        n if n <= 8 => format!("commit {commit} with changes to {}", changed.join(", ")),
        n => format!(
            "commit {commit} with changes to {} and {} more files",
            changed[..8].join(", "),
            n - 8
        ),
    }
}

fn markdown(
    args: &Args,
    rows: &[Row],
    others: &[(&str, f64)],
    m: &setup::Machine,
    ctx: &Ctx,
    run: &RunInfo,
) -> String {
    let rustc = short_output(Command::new("rustc").arg("--version"));
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    out.push_str(
        "Canopy beside the tools people use today (issue 6). This file is written by the \
         benchmark harness in `bench/`; run it again rather than editing the figures.\n\n",
    );
    out.push_str(&format!("- **Command:** `{}` (as root)\n", command_line()));
    out.push_str(&format!("- **Date:** {} (start)\n", run.date));
    out.push_str(&format!(
        "- **Machine:** {}, {} logical CPUs (`nproc`), {:.1} GiB memory, Linux {}, scratch on {}\n",
        m.cpu,
        m.nproc,
        m.memory as f64 / (1u64 << 30) as f64,
        m.kernel,
        m.disk
    ));
    out.push_str(&format!(
        "- **Code:** {}, {rustc}, release build\n",
        run.code
    ));
    out.push_str(&format!(
        "- **References:** {}\n",
        ctx.refs.versions().join("; ")
    ));
    out.push_str(&format!(
        "- **Run time:** {:.1} min{}\n",
        run.started.elapsed().as_secs_f64() / 60.0,
        if args.quick {
            " (--quick: small sizes, a smoke test; not figures to quote)"
        } else {
            ""
        }
    ));
    let load: Vec<String> = others
        .iter()
        .map(|(case, busy)| format!("{busy:.2} in case {case}"))
        .collect();
    out.push_str(&format!(
        "- **Other load:** CPUs kept busy by programs other than the benchmark, on average: {}\n",
        load.join(", ")
    ));
    if let Some((case, busy)) = others.iter().find(|(_, b)| *b > 0.25) {
        out.push_str(&format!(
            "\n> **Warning:** other programs were using the machine during the run (on average \
             {busy:.2} CPUs during case {case}); the figures of such cases are perturbed. Run \
             again on an idle machine.\n"
        ));
    }
    out.push('\n');
    out.push_str("## Results\n\n");
    out.push_str(&report::markdown_table(rows));
    out.push_str(
        "\n**MISSED** marks a figure that misses the issue's target; `—` in the verdict column \
         means the issue sets no target for that figure. Ratios are Canopy's figure over the \
         reference's (for times: the reference's time over ours, so above 1 is faster).\n\n",
    );
    out.push_str(&METHODS.replace("{cap}", &args.cap_mbit.to_string()));
    out
}

const METHODS: &str = "## How each case is measured

Times are wall-clock times of the command a user would type, from starting the process to its
exit, with the median of the runs shown. Every download is checked afterwards (size and BLAKE3).
Canopy runs as the release `leaf` and `superpeer` binaries unless said otherwise. Before
each case the harness waits (up to `--wait-idle` minutes) until other programs use under a
quarter of a CPU, runs a case again (twice at most) if they used more meanwhile, keeps the
least disturbed attempt, and reports how busy they kept the machine during it (above).

1. **Multi-source download** (processes in network namespaces). A bridge in one namespace, one
   veth pair per host; each source host's upload is capped with a `tbf` qdisc on its own end
   ({cap} Mbit/s, so the cap holds for all its connections together), the super-peer's and
   the client's hosts are not capped. Each source host runs a `leaf share` of the file and an
   nginx serving the same folder. Canopy: `leaf get ID --out DIR` on the client host, a fresh
   node each run (it asks the super-peer for sources, then downloads). Reference: `aria2c
   --split=N --max-connection-per-server=1 --min-split-size=1M --file-allocation=falloc` with
   the N mirror URLs. Efficiency = size / (N × cap × time); Ethernet, IP and TCP headers alone
   cap it near 0.96. \"transfer\" is the time `leaf get` itself reports for the download
   (without finding the sources and starting up). Behind NAT: the first four source hosts
   then drop every connection they did not open (an `nft` rule, as a home router does;
   addresses are not translated, which changes nothing of a path's cost), fresh leaves share
   the file there, and once the super-peer has found them all unreachable, a running node on
   the client host (it must accept the connections back) downloads it as before: each source
   is asked through the super-peer to connect to it. `leaf get` prints how long after a
   source was first tried its first chunk came; the row compares the median of those with
   the direct runs' at N = 4, against the testbed's round trip (the median of 21 TCP
   connects from the client host to the super-peer).
2. **Raw transfer** (processes, 127.0.0.1, root namespace). One leaf shares the file; `leaf
   get` against `curl -o FILE` from nginx. `leaf get` verifies every chunk as it arrives and
   fsyncs the file before giving it its name; curl does neither, so the second row adds `sync
   FILE` after curl.
3. **Sharing** (processes). Real-size files: albums of tagged 320 kbit/s MP3s (1–30 MB) and two
   video-size files, written just before (warm page cache). `leaf share FOLDER` is timed
   against a running node with an empty hash cache (it walks, hashes into the id and the chunk
   manifest, reads tags and registers); `b3sum FILES...` (multi-threaded, as shipped) after one
   untimed warm-up run, and on one thread for comparison. Re-share: `leaf share` of the same
   folder again, unchanged (only metadata is read), on a library of small tagged files in
   Artist/Album layout and on the real-size folder.
4. **Search** (super-peers as processes on 127.0.0.1; the leaves live in the harness and speak
   the wire protocol, registering the records a leaf would for its MP3s). Every album of the
   corpus is on at least one leaf and popular albums on many (Zipf). Two meshes, one after the
   other: default settings, each super-peer joining through the first and the overlay left to
   link them (measured once every super-peer reaches all others in one hop: ten super-peers
   with a neighbour target of 32 end up fully linked), and `--neighbours 3` in a ring with
   chords (diameter 3; the default TTL of 3 reaches all), as in a network too large for a full
   mesh. Queries are drawn from the corpus (artist and title words, title, artist or album
   words) and kept if the whole-corpus index finds something; they are sent one at a time, from
   a searching leaf at each super-peer in turn. The harness knows how many hits each
   super-peer returns (it indexes each super-peer's records itself with the `index` crate), so
   \"last hit\" is exact. The floor is the `index` crate searching the whole corpus in this
   process, on one thread (as a super-peer answers queries on one thread), 200 hits at most (as
   a super-peer). Queries/s: one super-peer holding the whole corpus once (20 leaves), four
   searching leaves keeping eight queries each in flight (TTL 0); the harness shares the
   machine's cores with it, so the super-peer's CPU use is shown too.
5. **Ingest and memory** (a `superpeer` process; leaves in the harness as in case 4, 1,000
   records each cut into Register batches as a leaf does). Ingest runs from the first
   registration sent to the moment every leaf has had an answer to a query for its last record
   (a super-peer indexes a registration before it reads the leaf's next message). Memory is
   VmRSS from /proc before (leaves connected) and after; VmHWM is the peak.
7. **Load** (a `superpeer` process; 1,000 leaves in the harness, each with 100 records drawn at
   random from the corpus, then 50 searchers that each send a query every 250 ms, under the
   default limit of 5 a leaf, for 30 s). Every connection runs the Noise handshake; the
   super-peer keeps its default limits except the connection counts (all leaves share one
   address). Time to first hit per query; errors are queries unanswered within 5 s, closed
   connections and limit trips in the super-peer's log; memory is VmRSS sampled every second.
   Other cases' super-peers run with the per-address, per-leaf query and message, and
   hits-per-query limits lifted (they play many hosts from one address and many users through few connections), and
   without dynamic querying (case 4 counts and times every hit; dynamic querying stops at 150).
";

/// The BENCHMARKS.md section of case 6 or 7 (`key` "swarm" or "load"), with its own command,
/// date, machine and method.
fn case_section(
    case: &str,
    key: &str,
    rows: &[Row],
    others: &[(&str, f64)],
    m: &setup::Machine,
    ctx: &Ctx,
    run: &RunInfo,
) -> String {
    let rustc = short_output(Command::new("rustc").arg("--version"));
    let busy = others
        .iter()
        .find(|(c, _)| *c == case)
        .map_or(0.0, |(_, b)| *b);
    let mut out = String::new();
    let title = if key == "swarm" {
        "Swarm distribution (issues 9 and 21)"
    } else {
        "Load on one super-peer (issue 7)"
    };
    out.push_str(&format!(
        "<!-- BEGIN {key} (bench/src/cases/{key}.rs) -->\n## {title}\n\n"
    ));
    out.push_str(&format!(
        "- **Command:** `{}` (as root); **date:** {}\n",
        command_line(),
        run.date
    ));
    out.push_str(&format!(
        "- **Machine:** {}, {} logical CPUs, {:.1} GiB memory, Linux {}; **code:** {}, {rustc}, \
         release build\n",
        m.cpu,
        m.nproc,
        m.memory as f64 / (1u64 << 30) as f64,
        m.kernel,
        run.code
    ));
    if key == "swarm" {
        out.push_str(&format!(
            "- **References:** {}; `opentracker` and `mktorrent` from Debian's packages\n",
            ctx.refs
                .versions()
                .into_iter()
                .filter(|v| v.starts_with("aria2c"))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    out.push_str(&format!(
        "- **Other load:** programs other than the benchmark kept {busy:.2} CPUs busy on \
         average during the case\n\n"
    ));
    out.push_str(&report::markdown_table(rows));
    if key == "load" {
        out.push_str(&format!("\n{LOAD_METHOD}"));
    } else {
        out.push_str(
            "\nOne seeder and N leechers, each on its own host of the namespace testbed (case 1), \
         every host's upload capped by a `tbf` qdisc at R (20 Mbit/s for N = 10 and 30, with a \
         100 MiB file; 8 Mbit/s for N = 100, with a 32 MiB file); the super-peer's (and \
         tracker's) host is not capped, and every host runs TCP CUBIC (Linux's default), \
         whatever the machine's own setting. All leechers are asked for the file at the same \
         moment; \"all done\" is when the last one has it (Canopy: the file appears under its \
         final name, which happens only once every chunk is verified; aria2c: its \
         download-complete hook runs). size/R is the time the seeder alone needs to send the \
         file once, the lower bound for everyone; N·size/R is the seeder serving each leecher \
         alone. \"Seeder sent\" is the seeder's uploaded bytes over the file size; a leecher's sockets \
         (most held by one leecher process, sampled every second) count its links to other \
         leaves plus about four of its own (listener, super-peer link, control socket); its \
         memory is the largest peak resident set of a leecher process. Canopy: \
         `leaf share` nodes (the leechers share an empty folder, seed with `--seed-minutes \
         none`) and `leaf get ID` to each; reference: `aria2c` with `opentracker` on the \
         super-peer's host and a `mktorrent -l 18` torrent (256 KiB pieces, as Canopy's \
         chunks for these files), DHT and local peer discovery off, `--bt-tracker-interval=5`, \
         `--seed-ratio=0.0`.\n",
        );
    }
    out.push_str(&format!("<!-- END {key} -->\n"));
    out
}

/// How case 7 measures, for its section.
const LOAD_METHOD: &str = "One `superpeer` process on 127.0.0.1; 1,000 leaves in the harness \
(each a Noise-encrypted connection speaking the wire protocol, as in cases 4 and 5), each \
registering 100 records drawn at random from the corpus, then 50 more leaves that each send a \
query (artist and title of a registered track) every 250 ms for 30 s, under the default limit of \
5 a leaf. The super-peer keeps its default limits except the connection counts (all leaves share \
one address: `--max-per-address`, `--max-connections` and `--leaf-slots` are raised to fit). \
Time to first hit per query; errors are queries unanswered within 5 s, closed connections and \
limit trips in the super-peer's log; memory is the super-peer's VmRSS, sampled every second of \
the searches. The harness and the super-peer share the machine's cores.\n";

/// `old` with its `<!-- BEGIN {key}` … `<!-- END {key} -->` section replaced by `section`
/// (appended if it has none).
fn replace_section(old: &str, key: &str, section: &str) -> String {
    let begin = format!("<!-- BEGIN {key}");
    let end = format!("<!-- END {key} -->");
    match (old.find(&begin), old.find(&end)) {
        (Some(a), Some(b)) if b > a => {
            let mut b = b + end.len();
            if old[b..].starts_with('\n') {
                b += 1;
            }
            format!("{}{section}{}", &old[..a], &old[b..])
        }
        _ => {
            let mut out = old.trim_end().to_string();
            out.push_str("\n\n");
            out.push_str(section);
            out
        }
    }
}

/// The sections of an earlier BENCHMARKS.md that other programs wrote, each between a
/// `<!-- BEGIN ... -->` and an `<!-- END ... -->` line (e.g. examples/download_efficiency.rs).
fn kept_sections(old: &str) -> String {
    let mut out = String::new();
    let mut rest = old;
    while let Some(a) = rest.find("<!-- BEGIN ") {
        let Some(b) = rest[a..].find("<!-- END ") else {
            break;
        };
        let end = a + b + rest[a + b..].find("-->").map_or(0, |e| e + 3);
        out.push('\n');
        out.push_str(&rest[a..end]);
        out.push('\n');
        rest = &rest[end..];
    }
    out
}
