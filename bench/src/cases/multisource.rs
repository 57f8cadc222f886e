//! Case 1, multi-source download: one file held by N = 1, 2, 4, 8, 16 hosts of the testbed, each
//! with its upload capped at the same rate. Canopy: a leaf on each host shares the file, and
//! `leaf get ID` runs on the client host (a fresh node each time, as a user would run it).
//! Reference: nginx on the same hosts, and `aria2c` fetching the same file from the N mirrors.
//! Efficiency is size / (N · cap · time); TCP/IP headers alone keep it below about 0.96.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use anyhow::bail;

use super::{
    check_file, fresh_dir, hit_of, leaf_get, nginx, reported_seconds, share_node, superpeer,
    wait_sources, Ctx,
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
    // Behind NAT (issue 19): the same download from NAT_N sources nobody can dial, each
    // asked through the super-peer to connect back. Only they share the file now.
    drop(leaves);
    let nat = NatRun {
        ctx,
        tb: &tb,
        sp,
        share: &share,
        scratch: &scratch,
        logs: &logs,
        probe: &probe,
        id: &id,
        name: &name,
        words: &words,
        size,
        runs,
        cap_bytes,
    };
    // A failure here fails this row only: the rows above stand.
    rows.push(nat.row().unwrap_or_else(|e| {
        eprintln!("case {CASE}: behind NAT: {e:#}");
        Row {
            case: CASE.into(),
            what: format!("N={NAT_N} behind NAT (reverse connections)"),
            ours: "—".into(),
            reference: "—".into(),
            ratio: "—".into(),
            target: "≤ 1 round trip more".into(),
            verdict: Verdict::Failed(format!("{e:#}")),
        }
    }));
    drop(servers);
    Ok(rows)
}

/// How many sources the row behind NAT has (compared with the direct run at the same N).
const NAT_N: usize = 4;

/// What the run behind NAT needs of the case.
struct NatRun<'a> {
    ctx: &'a Ctx,
    tb: &'a Testbed,
    sp: SocketAddr,
    share: &'a std::path::Path,
    scratch: &'a Scratch,
    logs: &'a std::path::Path,
    probe: &'a std::path::Path,
    id: &'a wire::FileId,
    name: &'a str,
    words: &'a str,
    size: u64,
    runs: usize,
    cap_bytes: f64,
}

/// What the client host sends reaches the testbed this much later in the row behind NAT
/// ([`crate::delayline`]): a round trip of a home connection to a nearby server, so that a
/// round trip more or less shows beside the programs' own time.
const NAT_DELAY: Duration = Duration::from_millis(10);

impl NatRun<'_> {
    /// The first [`NAT_N`] source hosts share the file, first reachable, then behind a home
    /// router's filter; a running node on the client (which accepts connections, as the
    /// reverse path needs) downloads it [`NatRun::runs`] times each way, with the client's
    /// packets delayed by [`NAT_DELAY`]. The row sets how long after a source is tried its
    /// first chunk comes, reached by reverse connections, beside the same reached directly.
    fn row(&self) -> anyhow::Result<Row> {
        let tb = self.tb;
        let delay = crate::delayline::DelayLine::start(&tb.client, "10.77.0.0/24", NAT_DELAY)
            .context("the delay line on the client host")?;
        let rtt = tb.round_trip(&tb.client, self.sp)?;
        if rtt < NAT_DELAY || delay.packets() == 0 {
            bail!(
                "the delay line is not in the client's path: a round trip of {rtt:?} after \
                 {} packets delayed",
                delay.packets()
            );
        }
        let (direct_times, direct_first) = self.phase(false)?;
        let (times, first) = self.phase(true)?;
        let med = |v: &[u64]| {
            let mut v = v.to_vec();
            v.sort_unstable();
            v.get(v.len() / 2).copied()
        };
        let (Some(rev), Some(dir)) = (med(&first), med(&direct_first)) else {
            bail!("behind NAT: no first-chunk times to compare");
        };
        let (t, td) = (median(&times), median(&direct_times));
        let eff =
            |t: Duration| self.size as f64 / (NAT_N as f64 * self.cap_bytes * t.as_secs_f64());
        let more_ms = rev as f64 - dir as f64;
        let rtt_ms = rtt.as_secs_f64() * 1e3;
        drop(delay);
        Ok(Row {
            case: CASE.into(),
            what: format!(
                "N={NAT_N} behind NAT (each source host drops connections it did not open, as a \
                 home router does; reached by reverse connections through the super-peer), the \
                 client's packets delayed {} ms: time, and how long after a source is tried its \
                 first chunk comes (median over sources and runs)",
                NAT_DELAY.as_millis()
            ),
            ours: format!(
                "{:.2} s (eff {:.2}); first chunk after {rev} ms",
                t.as_secs_f64(),
                eff(t)
            ),
            reference: format!(
                "the same hosts reachable, a running node as well: {:.2} s (eff {:.2}); first \
                 chunk after {dir} ms (direct)",
                td.as_secs_f64(),
                eff(td)
            ),
            ratio: format!(
                "{more_ms:+.0} ms before the first chunk; a round trip of the testbed is \
                 {rtt_ms:.1} ms"
            ),
            target: "≤ 1 round trip more".into(),
            verdict: Verdict::of(more_ms <= rtt_ms),
        })
    }

    /// One way of the row: the source hosts reachable (`behind` false) or behind a filter.
    /// Returns the download times and the first-chunk times of the sources, each reached the
    /// way expected.
    fn phase(&self, behind: bool) -> anyhow::Result<(Vec<Duration>, Vec<u64>)> {
        let (ctx, tb) = (self.ctx, self.tb);
        let way = if behind { "nat" } else { "open" };
        let mut leaves = Vec::new();
        for (i, h) in tb.sources[..NAT_N].iter().enumerate() {
            if behind {
                tb.firewall(h)?;
            }
            leaves.push(share_node(
                &ctx.bins,
                Some(h),
                &self.scratch.dir(&format!("leaf-{way}-h{}", i + 1))?,
                self.sp,
                SocketAddr::new(h.ip.into(), 7000),
                &[self.share],
                &self.logs.join(format!("leaf-{way}-h{}.log", i + 1)),
            )?);
        }
        let until = std::time::Instant::now() + Duration::from_secs(90);
        let want_unreachable = if behind { NAT_N } else { 0 };
        loop {
            let hit = hit_of(
                &ctx.bins,
                Some(&tb.client),
                self.sp,
                self.words,
                self.id,
                self.probe,
            )?;
            let (sources, reachable, unreachable) = hit.map_or((0, 0, 0), |v| {
                let said = v["source_reachable"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                let count = |b| said.iter().filter(|r| r.as_bool() == Some(b)).count();
                (
                    v["sources"].as_u64().unwrap_or(0) as usize,
                    count(true),
                    count(false),
                )
            });
            // Only once the super-peer has checked each: the way to them is then settled.
            if sources == NAT_N
                && unreachable == want_unreachable
                && reachable + unreachable == NAT_N
            {
                break;
            }
            if std::time::Instant::now() > until {
                bail!(
                    "{way}: the network reports {sources} sources, {unreachable} of them \
                     unreachable and {reachable} reachable, not {NAT_N} and {want_unreachable} \
                     unreachable after 90 s"
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let limit = Duration::from_secs_f64(
            10.0 * self.size as f64 / (NAT_N as f64 * self.cap_bytes) + 60.0,
        );
        // The downloader must accept connections to be connected back to: a running node
        // (as `leaf share`, the TUI or the web UI run it) that `leaf get` hands the download.
        let client = self.scratch.dir(&format!("client-{way}"))?;
        let _node = share_node(
            &ctx.bins,
            Some(&tb.client),
            &client,
            self.sp,
            SocketAddr::new(tb.client.ip.into(), 7000),
            &[&self.scratch.dir(&format!("client-{way}-share"))?],
            &self.logs.join(format!("leaf-client-{way}.log")),
        )?;
        let how = if behind {
            "reverse connection"
        } else {
            "direct"
        };
        let (mut times, mut first) = (Vec::new(), Vec::new());
        for r in 0..self.runs {
            let out = self.scratch.path().join("out");
            fresh_dir(&out)?;
            // Again: the node keeps what the run before fetched.
            let mut cmd = leaf_get(&ctx.bins, Some(&tb.client), &client, self.sp, self.id, &out);
            cmd.arg("--again");
            let t = run_timed(&format!("leaf-get-{way}-r{r}"), cmd, self.logs, limit)?;
            check_file(&out.join(self.name), self.size, self.id)
                .with_context(|| format!("leaf get's file ({way})"))?;
            let firsts = first_chunks(&t.stdout, how);
            if firsts.len() != NAT_N {
                bail!(
                    "{way}: {} of {NAT_N} sources were reached by {how} (leaf get said: {})",
                    firsts.len(),
                    t.stdout.trim()
                );
            }
            first.extend(firsts);
            times.push(t.elapsed);
            fresh_dir(&out)?;
        }
        Ok((times, first))
    }
}

/// How long after each source was tried its first chunk came, as `leaf get` prints it
/// ("  N chunks from ADDR (HOW; the first after MS ms)"), for the sources reached by `how`.
fn first_chunks(stdout: &str, how: &str) -> Vec<u64> {
    let marker = format!("({how}; the first after ");
    stdout
        .lines()
        .filter(|l| l.contains(" chunks from "))
        .filter_map(|l| {
            let rest = &l[l.find(&marker)? + marker.len()..];
            rest.strip_suffix(" ms)")?.parse().ok()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_chunk_times_are_read_from_what_leaf_get_prints() {
        let out = "saved /x (ab, 200 MiB from 2 source(s) in 2.2 s)\n  \
                   100 chunks from 10.77.0.11:7000 (direct; the first after 12 ms)\n  \
                   100 chunks from 10.77.0.12:7000 (reverse connection; the first after 15 ms)\n  \
                   3 chunks from 10.77.0.13:7000 (direct)\n";
        assert_eq!(first_chunks(out, "direct"), vec![12]);
        assert_eq!(first_chunks(out, "reverse connection"), vec![15]);
        assert!(first_chunks(out, "hole punched").is_empty());
    }
}
