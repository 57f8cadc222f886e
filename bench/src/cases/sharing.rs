//! Case 3, sharing: hashing a folder of real-size files (a few GB, warm page cache) with
//! `leaf share` against `b3sum` over the same files, and sharing an unchanged folder again.
//!
//! `leaf share FOLDER` is timed as a user runs it against their running node (started
//! beforehand with `leaf share` and a fresh data directory, so nothing is cached): the command
//! returns when the node has walked, hashed (id and chunk manifest), read the tags of and
//! registered every file. b3sum hashes several files at once on all cores (it is
//! multi-threaded); a single-threaded b3sum run is shown too. Re-sharing is timed on the same
//! real-size folder and on a library of 10,000 small tagged files (only metadata is read, so
//! file size hardly matters).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use canopy::corpus;

use super::{share_node, superpeer, Ctx};
use crate::data;
use crate::procs::{run_timed, Scratch, Timed};
use crate::report::{mbps, median, Row, Verdict};
use crate::setup::Bins;

const CASE: &str = "3 sharing";

/// Runs the case.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let b3sum = ctx.refs.get("b3sum")?;
    let total: u64 = if ctx.quick { 160 << 20 } else { 3 << 30 };
    let small_files = if ctx.quick { 2_000 } else { 10_000 };
    let runs = if ctx.quick { 1 } else { 5 };
    let scratch = Scratch::create(ctx.scratch.join("sharing"))?;
    let logs = ctx.log_dir("3-sharing")?;
    let tracks = corpus::load_tracks(usize::MAX).context("loading the corpus")?;

    let real = scratch.dir("real")?;
    eprintln!(
        "case {CASE}: writing {:.1} GiB of real-size files",
        total as f64 / (1u64 << 30) as f64
    );
    let files = data::real_size_folder(&real, &tracks, total)?;
    let bytes: u64 = files
        .iter()
        .map(|f| f.metadata().map(|m| m.len()).unwrap_or(0))
        .sum();
    let small = scratch.dir("library")?;
    eprintln!("case {CASE}: writing a library of {small_files} small files");
    data::small_library(&small, &tracks, small_files)?;

    let limit = Duration::from_secs(600);
    // b3sum over the same files; a first run warms the cache and is not counted.
    let b3 = |threads: Option<usize>, tag: &str| -> anyhow::Result<Vec<Duration>> {
        let mut times = Vec::new();
        for r in 0..=runs {
            let mut cmd = Command::new(&b3sum);
            if let Some(n) = threads {
                cmd.arg(format!("--num-threads={n}"));
            }
            cmd.args(&files);
            let t = run_timed(&format!("b3sum-{tag}-{r}"), cmd, &logs, limit)?;
            if r > 0 {
                times.push(t.elapsed);
            }
        }
        Ok(times)
    };
    let b3_all = b3(None, "all")?;
    let b3_one = b3(Some(1), "1thread")?;

    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let (_sp, sp) = superpeer(
        &ctx.bins,
        None,
        any,
        &scratch.dir("sp")?,
        &logs.join("superpeer.log"),
    )?;
    // First shares: a fresh node (empty hash cache) for each run.
    let mut hashing = Vec::new();
    let mut reshare_real = Vec::new();
    for r in 0..runs {
        let data_dir = scratch.path().join(format!("node-{r}"));
        let _node = share_node(
            &ctx.bins,
            None,
            &data_dir,
            sp,
            any,
            &[],
            &logs.join(format!("node-{r}.log")),
        )?;
        let t = share(&ctx.bins, &data_dir, &real, &logs, &format!("share-{r}"))?;
        expect_counts(&t, files.len(), 0).context("first share of the real-size folder")?;
        hashing.push(t.elapsed);
        if r == runs - 1 {
            for q in 0..runs {
                let t = share(&ctx.bins, &data_dir, &real, &logs, &format!("reshare-{q}"))?;
                expect_counts(&t, 0, files.len()).context("re-share of the real-size folder")?;
                reshare_real.push(t.elapsed);
            }
        }
    }
    // The library: shared once (hashed), then again unchanged.
    let data_dir = scratch.path().join("node-library");
    let _node = share_node(
        &ctx.bins,
        None,
        &data_dir,
        sp,
        any,
        &[],
        &logs.join("node-library.log"),
    )?;
    let t = share(&ctx.bins, &data_dir, &small, &logs, "library-share")?;
    expect_counts(&t, small_files, 0).context("first share of the library")?;
    let mut reshare_lib = Vec::new();
    for q in 0..runs {
        let t = share(
            &ctx.bins,
            &data_dir,
            &small,
            &logs,
            &format!("library-reshare-{q}"),
        )?;
        expect_counts(&t, 0, small_files).context("re-share of the library")?;
        reshare_lib.push(t.elapsed);
    }

    let (ours, all, one) = (
        mbps(bytes, median(&hashing)),
        mbps(bytes, median(&b3_all)),
        mbps(bytes, median(&b3_one)),
    );
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let per10k = |d: Duration, n: usize| d.as_secs_f64() * 10_000.0 / n as f64;
    let (lib, real_r) = (median(&reshare_lib), median(&reshare_real));
    Ok(vec![
        Row {
            case: CASE.into(),
            what: format!(
                "hash {gib:.1} GiB, {} real-size files, warm cache: throughput, median of {runs}",
                files.len()
            ),
            ours: format!("{ours:.0} MB/s"),
            reference: format!("b3sum {all:.0} MB/s (multi-threaded)"),
            ratio: format!("{:.2}× b3sum", ours / all),
            target: "≥0.80× b3sum".into(),
            verdict: Verdict::of(ours / all >= 0.8),
        },
        Row::info(
            CASE,
            "same, reference on one thread (b3sum --num-threads=1)",
            format!("{ours:.0} MB/s"),
            format!("b3sum 1 thread {one:.0} MB/s"),
            format!("{:.2}× b3sum 1 thread", ours / one),
        ),
        Row {
            case: CASE.into(),
            what: format!(
                "re-share unchanged library of {small_files} small files, median of {runs}"
            ),
            ours: format!(
                "{:.2} s per 10,000 files ({:.2} s)",
                per10k(lib, small_files),
                lib.as_secs_f64()
            ),
            reference: "—".into(),
            ratio: "—".into(),
            target: "<1 s per 10,000 files".into(),
            verdict: Verdict::of(per10k(lib, small_files) < 1.0),
        },
        Row::info(
            CASE,
            &format!(
                "re-share unchanged real-size folder ({} files), median of {runs}",
                files.len()
            ),
            format!("{:.3} s", real_r.as_secs_f64()),
            "—".into(),
            "—".into(),
        ),
    ])
}

/// Times `leaf share FOLDER` against the node running in `data_dir`.
fn share(
    bins: &Bins,
    data_dir: &Path,
    folder: &Path,
    logs: &Path,
    tag: &str,
) -> anyhow::Result<Timed> {
    let mut cmd = Command::new(&bins.leaf);
    cmd.arg("--data-dir").arg(data_dir).arg("share").arg(folder);
    run_timed(tag, cmd, logs, Duration::from_secs(900))
}

/// Checks "(H hashed, U unchanged)" in `leaf share`'s output.
fn expect_counts(t: &Timed, hashed: usize, unchanged: usize) -> anyhow::Result<()> {
    let line = t
        .stdout
        .lines()
        .find(|l| l.starts_with("shared "))
        .with_context(|| format!("leaf share printed no summary: {}", t.stdout))?;
    let want = format!("({hashed} hashed, {unchanged} unchanged)");
    if !line.contains(&want) {
        bail!("leaf share said {line:?}; expected {want}");
    }
    Ok(())
}
