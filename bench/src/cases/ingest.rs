//! Case 5, ingest and memory: one `superpeer` process on 127.0.0.1 registering 100,000 file
//! records from 100 leaves at once (1,000 each, whole albums drawn from the corpus by
//! popularity, so the same files recur across leaves). The leaves live in this process and
//! speak the wire protocol ([`crate::wirenet`]), cutting their registrations into batches as
//! a leaf does. Ingest runs from the first registration sent to the moment every leaf has
//! proof that its records are searchable; memory is the super-peer's VmRSS from /proc,
//! before (leaves connected, nothing registered) and after.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use canopy::corpus;
use rand::rngs::StdRng;
use rand::SeedableRng;
use wire::FileRecord;

use super::search::distinct_tracks;
use super::{superpeer, Ctx};
use crate::data::{self, Spread};
use crate::procs::{memory_of, Scratch};
use crate::report::{Row, Verdict};
use crate::wirenet::{wait_indexed, WireLeaf};

const CASE: &str = "5 ingest";

/// Runs the case.
pub fn run(ctx: &Ctx) -> anyhow::Result<Vec<Row>> {
    let (n_leaves, per_leaf) = if ctx.quick { (10, 500) } else { (100, 1_000) };
    let tracks = distinct_tracks(corpus::load_tracks(usize::MAX).context("loading the corpus")?);
    let records: Vec<FileRecord> = tracks.iter().map(data::record).collect();
    let mut rng = StdRng::seed_from_u64(5);
    let libs = data::spread(
        &tracks,
        Spread {
            leaves: n_leaves,
            cover_all: false,
            extra_per_leaf: per_leaf,
        },
        &mut rng,
    );
    let libs: Vec<Vec<FileRecord>> = libs
        .iter()
        .map(|l| l.iter().map(|&t| records[t].clone()).collect())
        .collect();
    let total: usize = libs.iter().map(|l| l.len()).sum();

    let scratch = Scratch::create(ctx.scratch.join("ingest"))?;
    let logs = ctx.log_dir("5-ingest")?;
    let any: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let (sp, addr) = superpeer(
        &ctx.bins,
        None,
        any,
        &scratch.dir("sp")?,
        &logs.join("superpeer.log"),
    )?;
    eprintln!("case {CASE}: {n_leaves} leaves register {total} records");
    let (elapsed, messages, before, after) = smol::block_on(async {
        let mut leaves = Vec::new();
        for _ in 0..n_leaves {
            leaves.push(WireLeaf::connect(addr, true).await?);
        }
        smol::Timer::after(Duration::from_millis(300)).await;
        let before = memory_of(sp.pid())?;
        let started = Instant::now();
        let mut messages = 0;
        for (leaf, files) in leaves.iter().zip(&libs) {
            messages += leaf.register(files)?;
        }
        let pairs: Vec<(&WireLeaf, &FileRecord)> = leaves
            .iter()
            .zip(&libs)
            .map(|(l, f)| (l, f.last().expect("libraries are not empty")))
            .collect();
        let done = wait_indexed(&pairs, Duration::from_secs(300)).await?;
        let after = memory_of(sp.pid())?;
        drop(leaves);
        Ok::<_, anyhow::Error>((done - started, messages, before, after))
    })?;
    drop(sp);

    let per_s = total as f64 / elapsed.as_secs_f64();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let grown = after.0.saturating_sub(before.0);
    let per_100k = grown as f64 * 100_000.0 / total as f64;
    let what = format!("{total} records from {n_leaves} leaves ({messages} Register messages)");
    Ok(vec![
        Row {
            case: CASE.into(),
            what: format!("{what}: ingest rate"),
            ours: format!("{per_s:.0} records/s ({:.2} s)", elapsed.as_secs_f64()),
            reference: "—".into(),
            ratio: "—".into(),
            target: "—".into(),
            verdict: Verdict::Info,
        },
        Row::info(
            CASE,
            "same: super-peer resident memory per 100,000 records (VmRSS growth)",
            format!(
                "{:.0} MiB (VmRSS {:.0} → {:.0} MiB, peak {:.0} MiB)",
                mib(per_100k as u64),
                mib(before.0),
                mib(after.0),
                mib(after.1)
            ),
            "—".into(),
            "—".into(),
        ),
    ])
}
