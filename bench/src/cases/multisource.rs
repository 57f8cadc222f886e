//! Case 1, multi-source download: one file held by N = 1, 2, 4, 8, 16 hosts of the testbed, each
//! with its upload capped at the same rate. Canopy: a leaf on each host shares the file, and
//! `leaf get ID` runs on the client host (a fresh node each time, as a user would run it).
//! Reference: nginx on the same hosts, and `aria2c` fetching the same file from the N mirrors.
//! Efficiency is size / (N · cap · time); TCP/IP headers alone keep it below about 0.96.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use super::{
    check_file, fresh_dir, leaf_get, nginx, reported_seconds, share_node, superpeer, wait_sources,
    Ctx,
};
use crate::data;
use crate::procs::{run_timed, Scratch};
use crate::report::{median, Row, Verdict};
use crate::testbed::Testbed;

const CASE: &str = "1 multi-source";

/// Runs the case on a fresh testbed.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let aria2c = ctx.refs.get("aria2c")?;
    ctx.refs.get("nginx")?;
    let size: u64 = if ctx.quick { 16 << 20 } else { 200 << 20 };
    let counts = [1usize, 2, 4, 8, 16];
    let hosts = counts[counts.len() - 1];
    let runs = if ctx.quick { 1 } else { 3 };
    let cap_bytes = ctx.cap_mbit as f64 * 1e6 / 8.0;

    let scratch = Scratch::create(ctx.scratch.join("multisource"))?;
    let logs = ctx.log_dir("1-multisource")?;
    let share = scratch.dir("share")?;
    let name = format!("canopy-bench-{}MiB.bin", size >> 20);
    let words = format!("canopy bench {}MiB", size >> 20);
    eprintln!("case {CASE}: writing a {} MiB file", size >> 20);
    let id = data::noise_file(&share.join(&name), size, "multi-source file")?;

    eprintln!(
        "case {CASE}: testbed of {} hosts capped at {} Mbit/s",
        hosts, ctx.cap_mbit
    );
    let tb = Testbed::create(hosts, ctx.cap_mbit)?;
    let sp_listen = SocketAddr::new(tb.superpeer.ip.into(), 7700);
    let (_sp, sp) = superpeer(
        &ctx.bins,
        Some(&tb.superpeer),
        sp_listen,
        &scratch.dir("sp")?,
        &logs.join("superpeer.log"),
    )?;
    let mut servers = Vec::new();
    for (i, h) in tb.sources.iter().enumerate() {
        servers.push(nginx(
            &ctx.refs,
            Some(h),
            SocketAddr::new(h.ip.into(), 8080),
            &share,
            &scratch.dir(&format!("nginx-h{}", i + 1))?,
            &logs.join(format!("nginx-h{}.log", i + 1)),
        )?);
    }
    let probe = scratch.dir("probe")?;
    let mut leaves = Vec::new();
    let mut rows = Vec::new();
    // Per N: leaf get's wall time minus the download time it reports.
    let mut outside = Vec::new();
    for &n in &counts {
        while leaves.len() < n {
            let i = leaves.len();
            let h = &tb.sources[i];
            leaves.push(share_node(
                &ctx.bins,
                Some(h),
                &scratch.dir(&format!("leaf-h{}", i + 1))?,
                sp,
                SocketAddr::new(h.ip.into(), 7000),
                &[&share],
                &logs.join(format!("leaf-h{}.log", i + 1)),
            )?);
        }
        wait_sources(&ctx.bins, Some(&tb.client), sp, &words, &id, n, &probe)
            .with_context(|| format!("waiting for {n} Canopy sources"))?;
        // A generous limit: ten times the ideal time, plus start-up.
        let limit = Duration::from_secs_f64(10.0 * size as f64 / (n as f64 * cap_bytes) + 60.0);
        let mut ours = Vec::new();
        let mut reported = Vec::new();
        let mut theirs = Vec::new();
        for r in 0..runs {
            // Alternate which tool goes first.
            for tool in if r % 2 == 0 { [0, 1] } else { [1, 0] } {
                let out = scratch.path().join("out");
                fresh_dir(&out)?;
                if tool == 0 {
                    let client = scratch.path().join(format!("client-n{n}-r{r}"));
                    let cmd = leaf_get(&ctx.bins, Some(&tb.client), &client, sp, &id, &out);
                    let t = run_timed(&format!("leaf-get-n{n}-r{r}"), cmd, &logs, limit)?;
                    check_file(&out.join(&name), size, &id).context("leaf get's file")?;
                    ours.push(t.elapsed);
                    if let Some(s) = reported_seconds(&t.stdout) {
                        reported.push(Duration::from_secs_f64(s));
                    }
                } else {
                    let mut cmd = tb.client.command(&aria2c);
                    cmd.arg("--dir")
                        .arg(&out)
                        .arg("--out")
                        .arg(&name)
                        .arg(format!("--split={n}"))
                        .args([
                            "--max-connection-per-server=1",
                            "--min-split-size=1M",
                            "--file-allocation=falloc",
                            "--console-log-level=warn",
                            "--summary-interval=0",
                            "--allow-overwrite=true",
                        ]);
                    for h in &tb.sources[..n] {
                        cmd.arg(format!("http://{}:8080/{name}", h.ip));
                    }
                    let t = run_timed(&format!("aria2c-n{n}-r{r}"), cmd, &logs, limit)?;
                    check_file(&out.join(&name), size, &id).context("aria2c's file")?;
                    theirs.push(t.elapsed);
                }
                fresh_dir(&out)?;
            }
        }
        let (t_ours, t_theirs) = (median(&ours), median(&theirs));
        let eff = |t: Duration| size as f64 / (n as f64 * cap_bytes * t.as_secs_f64());
        let speed = t_theirs.as_secs_f64() / t_ours.as_secs_f64();
        let note = if reported.is_empty() {
            String::new()
        } else {
            let t = median(&reported);
            outside.push(t_ours.saturating_sub(t));
            format!("; transfer {:.2} s, eff {:.2}", t.as_secs_f64(), eff(t))
        };
        rows.push(Row {
            case: CASE.into(),
            what: format!(
                "N={n}: {} MiB from {n}×{} Mbit/s, time (efficiency), median of {runs}",
                size >> 20,
                ctx.cap_mbit
            ),
            ours: format!(
                "{:.2} s (eff {:.2}{note})",
                t_ours.as_secs_f64(),
                eff(t_ours)
            ),
            reference: format!(
                "aria2c {:.2} s (eff {:.2})",
                t_theirs.as_secs_f64(),
                eff(t_theirs)
            ),
            ratio: format!("{speed:.2}× aria2c's speed"),
            // Issue 18 asks for efficiency 0.90 up to N = 8; at 16 sources of 100 Mbit/s the
            // start-up (a fixed tenth of a second or less) is 7 % of the download, so only
            // the speed beside aria2c is asked there.
            target: if n <= 8 {
                "≥1.00× and eff ≥0.90".into()
            } else {
                "≥1.00×".into()
            },
            verdict: Verdict::of(speed >= 1.0 && (n > 8 || eff(t_ours) >= 0.9)),
        });
        eprintln!("  {}", rows.last().map(|r| r.ours.as_str()).unwrap_or(""));
    }
    if !outside.is_empty() {
        outside.sort();
        rows.push(Row::info(
            CASE,
            "leaf get's time outside the download it reports (start-up, finding sources)",
            format!(
                "{:.2}–{:.2} s over the N",
                outside[0].as_secs_f64(),
                outside[outside.len() - 1].as_secs_f64()
            ),
            "—".into(),
            "—".into(),
        ));
    }
    drop(leaves);
    drop(servers);
    Ok(rows)
}
