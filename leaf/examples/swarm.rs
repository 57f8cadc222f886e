//! Runs the swarm simulator (`leaf::sim`) on issue 21's settings and writes
//! `docs/swarm-scale.md`; or, with `--leechers N` (and the options below), runs one setting
//! and prints its line.
//!
//! `cargo run --release -p leaf --example swarm` (all settings, writes the doc: more than an
//! hour on two cores, nearly all of it the 5 GB file to 1,000 machines, run on a thread of
//! its own beside the others)
//! `cargo run --release -p leaf --example swarm -- --keep-longest` (writes the doc without
//! running that setting: its row, and the doc's paragraphs between the table and the notes on
//! the model, which say where it is from, are kept from the doc as it was)
//! `cargo run --release -p leaf --example swarm -- --leechers 1000 --leave 0.1`

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use leaf::sim::{run, SwarmConfig, SwarmReport};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        return write_doc(false);
    }
    if args == ["--keep-longest"] {
        return write_doc(true);
    }
    let mut cfg = SwarmConfig::issue21(100);
    let mut trace = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value"))
                .map(|s| s.as_str())
        };
        match a.as_str() {
            "--leechers" => cfg.leechers = value()?.parse()?,
            "--size-mib" => cfg.size = value()?.parse::<u64>()? << 20,
            "--up-mbit" => {
                let r = value()?.parse::<f64>()? * 1e6 / 8.0;
                (cfg.seed_up, cfg.leech_up) = (r, r);
            }
            "--down-mbit" => cfg.down = Some(value()?.parse::<f64>()? * 1e6 / 8.0),
            "--leave" => cfg.leave_when_done = value()?.parse()?,
            "--restart" => cfg.restart = value()?.parse()?,
            "--max-peers" => cfg.opts.max_sources = value()?.parse()?,
            "--per-file" => cfg.max_downloaders_per_file = value()?.parse()?,
            "--slots" => cfg.upload_slots = value()?.parse()?,
            "--seed" => cfg.seed = value()?.parse()?,
            "--queued-retry-ms" => cfg.opts.queued_retry = Duration::from_millis(value()?.parse()?),
            "--trace" => trace = true,
            "--inflight" => cfg.opts.inflight_per_source = value()?.parse()?,
            other => bail!("unknown argument {other:?} (see the file's docs)"),
        }
    }
    let t = Instant::now();
    let r = run(cfg.clone());
    println!("{}", row("custom", &cfg, &r, t.elapsed()));
    if trace {
        let cap = cfg.seed_up + cfg.leechers as f64 * cfg.leech_up;
        let use_: Vec<String> = r
            .sent_by_second
            .iter()
            .map(|b| format!("{:.0}", *b as f64 * 100.0 / cap))
            .collect();
        println!("upload in use, % by second: {}", use_.join(" "));
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

fn row(name: &str, cfg: &SwarmConfig, r: &SwarmReport, wall: Duration) -> String {
    let done = r.finished.iter().flatten().count();
    let q = |x| r.quantile(x).map_or("-".into(), secs);
    format!(
        "| {name} | {} | {} | {}/{} | {} | {} | {} / {} / {} | {:.2}× | {:.3}× | {} | {} | {} | {:.0} s |",
        cfg.leechers,
        secs(r.bound),
        done,
        cfg.leechers,
        r.all_done().map_or("not all".into(), secs),
        r.over_bound()
            .map_or("-".into(), |x| format!("**{x:.2}×**")),
        q(0.0),
        q(0.5),
        q(0.9),
        r.seeder_copies(),
        r.total_sent as f64 / (cfg.leechers as f64 * cfg.size as f64),
        r.max_peer_set,
        r.max_sockets,
        r.events,
        wall.as_secs_f64(),
    )
}

/// The seeds' other example: a 5 GB file from one machine to `n`, every machine's upload
/// 100 Mbit/s and download 1 Gbit/s.
fn five_gb(n: usize) -> SwarmConfig {
    SwarmConfig {
        size: 5_000_000_000,
        seed_up: 100e6 / 8.0,
        leech_up: 100e6 / 8.0,
        down: Some(1e9 / 8.0),
        ..SwarmConfig::issue21(n)
    }
}

fn write_doc(keep_longest: bool) -> anyhow::Result<()> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/swarm-scale.md");
    let seed_example = SwarmConfig {
        size: 100_000_000,
        seed_up: 10e6 / 8.0,
        leech_up: 10e6 / 8.0,
        down: Some(100e6 / 8.0),
        ..SwarmConfig::issue21(10)
    };
    let settings: Vec<(&str, SwarmConfig)> = vec![
        ("seeds' example: 10 machines, 100 MB", seed_example),
        ("issue 21, real-process setting", SwarmConfig::issue21(100)),
        ("1,000 leechers", SwarmConfig::issue21(1000)),
        (
            "1,000, 10 % leave when done",
            SwarmConfig {
                leave_when_done: 0.1,
                ..SwarmConfig::issue21(1000)
            },
        ),
        (
            "seeds' other example, at 100 machines: 5 GB, 100 Mbit/s up, 1 Gbit/s down",
            five_gb(100),
        ),
        (
            "seeds' other example, at its own figures: 5 GB to 1,000 machines, 100 Mbit/s up, \
             1 Gbit/s down",
            five_gb(1000),
        ),
        (
            "1,000, 10 % away 10 s midway",
            SwarmConfig {
                restart: 0.1,
                ..SwarmConfig::issue21(1000)
            },
        ),
    ];
    let measure = |(name, cfg): &(&str, SwarmConfig)| {
        let t = Instant::now();
        let r = run(cfg.clone());
        let line = row(name, cfg, &r, t.elapsed());
        println!("{line}");
        if !r.hostile.is_empty() {
            bail!(
                "{name}: the real rules found the simulated peers lying: {:?}",
                r.hostile
            );
        }
        Ok(line)
    };
    // The longest setting (5 GB to 1,000) on a thread of its own, the others meanwhile.
    let longest = settings
        .iter()
        .enumerate()
        .max_by_key(|(_, (_, c))| c.size * c.leechers as u64)
        .map(|(i, _)| i)
        .expect("settings");
    // With `--keep-longest`: the longest setting's row, and what the doc says between the
    // table and the notes on the model, as they were.
    let kept = match keep_longest {
        false => None,
        true => {
            let old = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
            let row = old
                .lines()
                .find(|l| l.starts_with(&format!("| {} |", settings[longest].0)))
                .with_context(|| format!("{path} has no row for {:?}", settings[longest].0))?;
            // The notes on the model start as the footer does.
            let footer_starts = FOOTER.trim_start().lines().next().expect("a footer");
            let between = old
                .split_once(row)
                .and_then(|(_, rest)| rest.split_once("\n\n"))
                .and_then(|(_, rest)| rest.split_once(footer_starts))
                .map(|(between, _)| between)
                .with_context(|| {
                    format!("{path}: no blank line after the table, or no {footer_starts:?}")
                })?;
            Some((row.to_string(), between.to_string()))
        }
    };
    let lines: Vec<String> = std::thread::scope(|scope| {
        let long = match &kept {
            Some((row, _)) => scope.spawn(|| Ok(row.clone())),
            None => scope.spawn(|| measure(&settings[longest])),
        };
        let mut lines: Vec<anyhow::Result<String>> = Vec::new();
        for (i, setting) in settings.iter().enumerate() {
            if i != longest {
                lines.push(measure(setting));
            }
        }
        let long = long.join().expect("the simulation thread panicked");
        lines.insert(longest, long);
        lines.into_iter().collect::<anyhow::Result<_>>()
    })?;
    let mut doc = String::new();
    doc.push_str(HEADER);
    for line in lines {
        writeln!(doc, "{line}")?;
    }
    if let Some((_, between)) = &kept {
        doc.push('\n');
        doc.push_str(between);
        doc.push_str(FOOTER.trim_start());
    } else {
        doc.push_str(FOOTER);
    }
    std::fs::write(path, doc).with_context(|| format!("writing {path}"))?;
    println!("wrote {path}");
    Ok(())
}

const HEADER: &str = "\
# Swarms at scale: one seeder, up to a thousand leechers, in simulation

Generated by `cargo run --release -p leaf --example swarm` (`leaf/examples/swarm.rs`); do not
edit by hand.

Every leecher's download is the real `transfer::SourceSession`s over one real
`transfer::Scheduler`, with the real peer-set rotation (`transfer::peers::Rotation`, at most
`--max-peers` 30 sources); every node's uploads are the real `transfer::UploadSession`s under
the real choking rules (`leaf::slots::UploadSlots`: 4 slots, tit-for-tat, the optimistic slot,
30 downloaders per file), super-seeding (`transfer::view::Spread`) and source exchange
(`leaf::swarm::SwarmPeers`), driven as `leaf::download` and `leaf::upload` drive them, in
virtual time (`leaf::sim`). Simulated instead: the network (each node's upload link shared by
its connections in turns of 16 ms, as TCP connections share a `tbf`-capped interface; its
download link, if capped, a FIFO of whole messages; 5–40 ms one-way latency a node), the disk
and hashing (instant), and the super-peers (a tracker: a leecher registers as
its download starts; a search answers in 150 ms with up to 200 registered nodes). Leechers
start within 0.5 s of each other. Unless the row says otherwise: a 32 MiB file (256 KiB
chunks), every node's upload 8 Mbit/s, downloads not capped: bench case 6's setting.

- **bound**: the least time in which all can be done, max(F/u_seed, F/d, N·F/(u_seed + Σ u)).
- **all done**: when the last leecher had the file; **over bound**: all done / bound.
- **first / median / 90 %**: the spread of finishing times.
- **seeder sent**: the seeder's upload over the file's size; **all sent**: what all nodes
  uploaded over N copies of the file (beyond 1: chunks sent twice to one downloader).
- **wall**: the simulation's own time (the longest setting runs beside the others).
- **peer set**: the most sources plus admitted downloaders one node held at once;
  **sockets**: the most connections, those being refused included.

| setting | N | bound (s) | done | all done (s) | over bound | first / median / 90 % (s) | seeder sent | all sent | peer set | sockets | events | wall |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
";

const FOOTER: &str = "
Where the model is coarser than the network (read the figures with these in mind):
- An upload link takes turns between its connections, 16 ms of bytes each: the real kernel
  interleaves packets, and TCP's congestion control shares the link less evenly. A request
  or a `Have` waits for one turn of each busy connection (at most about 50 ms at bench case
  6's rates, the length of its `tbf` queue), not behind whole chunks; and a connection's
  messages, chunks included, leave in order. (The previous model, one FIFO of whole
  messages per link, held requests behind the sender's own chunks: up to a second at 8
  Mbit/s, which the real network does not do.)
- An uploader answers every request it has at once (the real one answers one at a time into
  a writer queue of two messages): a `Cancel` never catches a chunk here.
- Connecting costs two round trips and no Hello exchange; the manifest is known at start.

The seeds' example says 10 machines fetch 100 MB from one with 10 Mbit/s of upload in 80 s
one after another and about 9 s as a swarm. The first row simulates it with every machine's
upload at 10 Mbit/s and download at 100 Mbit/s: no schedule can beat the bound there, since
the one source must send each of the file's 800 Mbit at least once (80 s). The seeds' ~9 s
holds only when the file is already spread over the machines, so that their pooled upload of
110 Mbit/s carries it from the start.
";
