//! Case 2, raw transfer: one source, no cap, loopback (127.0.0.1, no namespaces), a 1 GiB file
//! to disk. Canopy: a leaf shares the file and `leaf get ID` fetches it (source search, every
//! chunk verified, fsync, rename). Reference: `curl` from nginx. `leaf get` makes the file
//! durable (fsync) before naming it and curl does not, so a second reference,
//! curl followed by `sync FILE`, shows the like-for-like figure. Last, one `leaf get` of a file
//! four times larger (4 GiB) shows that a download's peak resident memory does not grow with
//! the file.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use super::{
    check_file, free_port, fresh_dir, leaf_get, nginx, reported_seconds, share_node, superpeer,
    wait_sources, Ctx,
};
use crate::data;
use crate::procs::{cpu_time_of, run_timed, tree_cpu_time, Scratch};
use crate::report::{mbps, median, Row, Verdict};

const CASE: &str = "2 raw transfer";

/// Runs the case.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let curl = ctx.refs.get("curl")?;
    ctx.refs.get("nginx")?;
    let size: u64 = if ctx.quick { 64 << 20 } else { 1 << 30 };
    let runs = if ctx.quick { 1 } else { 5 };
    let scratch = Scratch::create(ctx.scratch.join("raw"))?;
    let logs = ctx.log_dir("2-raw")?;
    let share = scratch.dir("share")?;
    let name = format!("canopy-bench-raw-{}MiB.bin", size >> 20);
    let words = format!("canopy bench raw {}MiB", size >> 20);
    eprintln!("case {CASE}: writing a {} MiB file", size >> 20);
    let id = data::noise_file(&share.join(&name), size, "raw transfer file")?;
    let big_size = 4 * size;
    let big_name = format!("canopy-bench-raw-{}MiB.bin", big_size >> 20);
    let big_words = format!("canopy bench raw {}MiB", big_size >> 20);
    eprintln!("case {CASE}: writing a {} MiB file", big_size >> 20);
    let big_id = data::noise_file(&share.join(&big_name), big_size, "raw transfer big file")?;

    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let (_sp, sp) = superpeer(
        &ctx.bins,
        None,
        any,
        &scratch.dir("sp")?,
        &logs.join("superpeer.log"),
    )?;
    let source = share_node(
        &ctx.bins,
        None,
        &scratch.dir("source")?,
        sp,
        any,
        &[&share],
        &logs.join("leaf-source.log"),
    )?;
    wait_sources(&ctx.bins, None, sp, &words, &id, 1, &scratch.dir("probe")?)?;
    // Both files shared (hashed) before anything is timed.
    wait_sources(
        &ctx.bins,
        None,
        sp,
        &big_words,
        &big_id,
        1,
        &scratch.dir("probe")?,
    )?;
    let web: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let server = nginx(
        &ctx.refs,
        None,
        web,
        &share,
        &scratch.dir("nginx")?,
        &logs.join("nginx.log"),
    )?;

    let limit = Duration::from_secs(300);
    let out = scratch.path().join("out");
    let target = out.join(&name);
    let (mut ours, mut reported, mut theirs, mut synced) = (vec![], vec![], vec![], vec![]);
    let mut peak_rss = 0u64;
    // CPU time of each side: (downloader, server), summed over the runs.
    let (mut cpu_ours, mut cpu_theirs) = (
        (Duration::ZERO, Duration::ZERO),
        (Duration::ZERO, Duration::ZERO),
    );
    for r in 0..runs {
        fresh_dir(&out)?;
        let client = scratch.path().join(format!("client-{r}"));
        let cmd = leaf_get(&ctx.bins, None, &client, sp, &id, &out);
        let before = cpu_time_of(source.pid())?;
        let t = run_timed(&format!("leaf-get-r{r}"), cmd, &logs, limit)?;
        cpu_ours.0 += t.cpu;
        cpu_ours.1 += cpu_time_of(source.pid())?.saturating_sub(before);
        peak_rss = peak_rss.max(t.peak_rss);
        check_file(&target, size, &id).context("leaf get's file")?;
        ours.push(t.elapsed);
        if let Some(s) = reported_seconds(&t.stdout) {
            reported.push(Duration::from_secs_f64(s));
        }

        fresh_dir(&out)?;
        let mut cmd = Command::new(&curl);
        cmd.args(["-sS", "--fail", "-o"])
            .arg(&target)
            .arg(format!("http://{web}/{name}"));
        let before = tree_cpu_time(server.pid())?;
        let t = run_timed(&format!("curl-r{r}"), cmd, &logs, limit)?;
        cpu_theirs.0 += t.cpu;
        cpu_theirs.1 += tree_cpu_time(server.pid())?.saturating_sub(before);
        let mut sync = Command::new("sync");
        sync.arg(&target);
        let s = run_timed(&format!("sync-r{r}"), sync, &logs, limit)?;
        check_file(&target, size, &id).context("curl's file")?;
        theirs.push(t.elapsed);
        synced.push(t.elapsed + s.elapsed);
    }
    // The same download, of a file four times larger: its peak memory.
    fresh_dir(&out)?;
    let client = scratch.path().join("client-big");
    let cmd = leaf_get(&ctx.bins, None, &client, sp, &big_id, &out);
    let big = run_timed("leaf-get-big", cmd, &logs, 4 * limit)?;
    check_file(&out.join(&big_name), big_size, &big_id).context("leaf get's large file")?;
    fresh_dir(&out)?;
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    let (o, c, cs) = (
        mbps(size, median(&ours)),
        mbps(size, median(&theirs)),
        mbps(size, median(&synced)),
    );
    let note = if reported.is_empty() {
        String::new()
    } else {
        format!(" (transfer {:.0} MB/s)", mbps(size, median(&reported)))
    };
    let per_gib = |d: Duration| {
        format!(
            "{:.2} s",
            d.as_secs_f64() / runs as f64 / (size as f64 / (1u64 << 30) as f64)
        )
    };
    let what = format!(
        "{} MiB, 1 source, loopback, no cap: throughput, median of {runs}",
        size >> 20
    );
    Ok(vec![
        Row {
            case: CASE.into(),
            what: what.clone(),
            ours: format!("{o:.0} MB/s{note}"),
            reference: format!("curl {c:.0} MB/s"),
            ratio: format!("{:.2}× curl", o / c),
            target: "≥0.80× curl".into(),
            verdict: Verdict::of(o / c >= 0.8),
        },
        Row::info(
            CASE,
            "same, CPU time per GiB: downloader + server",
            format!(
                "leaf get {} + source leaf {}",
                per_gib(cpu_ours.0),
                per_gib(cpu_ours.1)
            ),
            format!(
                "curl {} + nginx {}",
                per_gib(cpu_theirs.0),
                per_gib(cpu_theirs.1)
            ),
            format!(
                "{:.1}× the CPU",
                (cpu_ours.0 + cpu_ours.1).as_secs_f64()
                    / (cpu_theirs.0 + cpu_theirs.1).as_secs_f64().max(1e-9)
            ),
        ),
        Row {
            case: CASE.into(),
            what: format!(
                "peak resident memory of leaf get: {} MiB file (largest of {runs}), then {} MiB",
                size >> 20,
                big_size >> 20
            ),
            ours: format!(
                "{:.1} MiB, then {:.1} MiB",
                mib(peak_rss),
                mib(big.peak_rss)
            ),
            reference: "—".into(),
            ratio: format!("{:.2}× for 4× the file", mib(big.peak_rss) / mib(peak_rss)),
            // Buffers hold a few chunks, and a larger file has larger chunks (256 KiB to
            // 1 MiB here, at most 16 MiB): the bound allows for that, not for the file.
            target: "≤ first + 16 MiB".into(),
            verdict: Verdict::of(big.peak_rss <= peak_rss + (16 << 20)),
        },
        Row::info(
            CASE,
            "same, reference made durable too (curl, then sync FILE)",
            format!("{o:.0} MB/s"),
            format!("curl+sync {cs:.0} MB/s"),
            format!("{:.2}× curl+sync", o / cs),
        ),
    ])
}
