//! How well a download uses its sources: one file held by N = 1, 2, 4, 8 leaves, each leaf's
//! uploads capped at the same rate R by its own token bucket, fetched by one more leaf, all on
//! 127.0.0.1 in one process. Prints efficiency = size / (N · R · time) for each N (1.0 is
//! perfect: every source's cap fully used) and, with `--write`, records the table in
//! BENCHMARKS.md between its markers.
//!
//! Run: `cargo run --release --example download_efficiency -- [--write] [--size-mib 32] [--rate-mb 4]`

use std::time::Duration;

use anyhow::{bail, Context};
use canopy::{corpus, net};
use wire::FileId;

const BEGIN: &str = "<!-- BEGIN download-efficiency (examples/download_efficiency.rs) -->";
const END: &str = "<!-- END download-efficiency -->";

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let mut write = false;
    let mut size_mib = 32u64;
    let mut rate_mb = 4u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--write" => write = true,
            "--size-mib" => size_mib = args.next().context("--size-mib N")?.parse()?,
            "--rate-mb" => rate_mb = args.next().context("--rate-mb N")?.parse()?,
            other => bail!("unknown argument {other}; see the file's docs"),
        }
    }
    let size = size_mib << 20;
    let rate = rate_mb * 1_000_000;
    let rows = net::run_bounded(Duration::from_secs(600), measure(size, rate))?;

    let mut table = String::new();
    table.push_str(&format!(
        "File of {size_mib} MiB; every source's uploads capped at R = {rate_mb} MB/s by its node's \
         token bucket; loopback, one process.\n\n"
    ));
    table.push_str("| sources N | time (s) | throughput (MB/s) | N·R (MB/s) | efficiency |\n");
    table.push_str("|---:|---:|---:|---:|---:|\n");
    for (n, secs) in &rows {
        let mbps = size as f64 / secs / 1e6;
        let eff = size as f64 / (*n as f64 * rate as f64 * secs);
        table.push_str(&format!(
            "| {n} | {secs:.2} | {mbps:.2} | {} | {eff:.3} |\n",
            n * rate_mb
        ));
    }
    println!("{table}");
    if write {
        let machine = format!(
            "Measured {} on {} cores with `cargo run --release --example download_efficiency -- --write --size-mib {size_mib} --rate-mb {rate_mb}`.\n\n",
            date(),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let section =
            format!("{BEGIN}\n## Download efficiency across sources\n\n{machine}{table}{END}\n");
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
        let old = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n\n".into());
        let new = match (old.find(BEGIN), old.find(END)) {
            (Some(a), Some(b)) if a < b => format!(
                "{}{section}{}",
                &old[..a],
                &old[b + END.len()..].trim_start_matches('\n')
            ),
            _ => format!("{}\n{section}", old.trim_end()),
        };
        std::fs::write(&path, new).with_context(|| format!("writing {}", path.display()))?;
        println!("recorded in {}", path.display());
    }
    Ok(())
}

fn date() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

async fn measure(size: u64, rate: u64) -> anyhow::Result<Vec<(u64, f64)>> {
    let tmp = tempfile::tempdir()?;
    let sp = net::superpeer(&[]).await;
    let content = corpus::deterministic_bytes("efficiency", size as usize);
    let id = FileId::from(blake3::hash(&content));
    let mut rows = Vec::new();
    for n in [1u64, 2, 4, 8] {
        let round = tmp.path().join(format!("n{n}"));
        let mut seeds = Vec::new();
        for i in 0..n {
            let dir = round.join(format!("share{i}"));
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("video.mkv"), &content)?;
            let seed = net::leaf_with(&round, &format!("seed{i}"), &[sp.listen_addr()], |c| {
                c.upload_rate = rate;
            })
            .await;
            seed.share(&dir, |_| {}).await?;
            seeds.push(seed);
        }
        net::wait_records(&sp, n).await;
        let getter = net::leaf(&round, "getter", &[sp.listen_addr()]).await;
        let report = getter.get(id, &round.join("out"), |_| {}).await?;
        let used = report.sources.iter().filter(|s| s.chunks > 0).count() as u64;
        if used != n {
            bail!(
                "with {n} sources only {used} delivered chunks: {:?}",
                report.sources
            );
        }
        let secs = report.elapsed_ms as f64 / 1000.0;
        println!("N = {n}: {secs:.2} s");
        rows.push((n, secs));
        getter.shutdown().await;
        for s in seeds {
            s.shutdown().await;
        }
        // The next round starts with no records of this one.
        net::wait_until(
            "the super-peer to forget the round",
            Duration::from_secs(10),
            || async { sp.status().await.records == 0 },
        )
        .await;
    }
    Ok(rows)
}
