//! The table of results: one row per figure, with the reference's figure beside ours, the
//! ratio, the target and whether it was met; printed, and written as Markdown.

use std::fmt::Write as _;
use std::time::Duration;

/// Whether a row meets its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The target is met.
    Met,
    /// The target is missed.
    Missed,
    /// No target: the figure is reported for information.
    Info,
    /// The case could not be measured (why).
    Failed(String),
    /// The case was skipped (why).
    Skipped(String),
}

impl Verdict {
    /// "met" or "MISSED" for a condition.
    pub fn of(met: bool) -> Verdict {
        if met {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }

    fn text(&self) -> String {
        match self {
            Verdict::Met => "met".into(),
            Verdict::Missed => "MISSED".into(),
            Verdict::Info => "—".into(),
            Verdict::Failed(_) => "FAILED".into(),
            Verdict::Skipped(_) => "skipped".into(),
        }
    }
}

/// One figure.
#[derive(Debug, Clone)]
pub struct Row {
    /// The case ("1 multi-source").
    pub case: String,
    /// What is measured.
    pub what: String,
    /// Canopy's figure.
    pub ours: String,
    /// The reference's figure (with the reference's name).
    pub reference: String,
    /// Ours against the reference, explained ("1.02× aria2c's speed").
    pub ratio: String,
    /// The target.
    pub target: String,
    /// Met or not.
    pub verdict: Verdict,
}

impl Row {
    /// A row for information (no target).
    pub fn info(case: &str, what: &str, ours: String, reference: String, ratio: String) -> Row {
        Row {
            case: case.into(),
            what: what.into(),
            ours,
            reference,
            ratio,
            target: "—".into(),
            verdict: Verdict::Info,
        }
    }

    /// A row saying a case failed or was skipped.
    pub fn not_run(case: &str, verdict: Verdict) -> Row {
        Row {
            case: case.into(),
            what: "—".into(),
            ours: "—".into(),
            reference: "—".into(),
            ratio: "—".into(),
            target: "—".into(),
            verdict,
        }
    }
}

/// Megabytes (10^6 bytes) per second.
pub fn mbps(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// A duration in the unit that suits it.
pub fn short(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1e6 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// The median of some durations (the lower middle for an even count).
pub fn median(ds: &[Duration]) -> Duration {
    percentile(ds, 50.0)
}

/// The `p`th percentile (nearest rank) of some durations.
pub fn percentile(ds: &[Duration], p: f64) -> Duration {
    if ds.is_empty() {
        return Duration::ZERO;
    }
    let mut v = ds.to_vec();
    v.sort();
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn widths(rows: &[Row]) -> [usize; 7] {
    let mut w = HEADERS.map(|h| h.chars().count());
    for r in rows {
        for (i, cell) in cells(r).iter().enumerate() {
            w[i] = w[i].max(cell.chars().count());
        }
    }
    w
}

fn cells(r: &Row) -> [String; 7] {
    [
        r.case.clone(),
        r.what.clone(),
        r.ours.clone(),
        r.reference.clone(),
        r.ratio.clone(),
        r.target.clone(),
        r.verdict.text(),
    ]
}

const HEADERS: [&str; 7] = [
    "case",
    "measure",
    "Canopy",
    "reference",
    "ratio",
    "target",
    "verdict",
];

/// The table for a terminal.
pub fn text_table(rows: &[Row]) -> String {
    let w = widths(rows);
    let line = |c: &[String]| {
        let mut s = String::new();
        for (i, cell) in c.iter().enumerate() {
            let pad = w[i] - cell.chars().count();
            s.push_str(cell);
            s.push_str(&" ".repeat(pad + 2));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&HEADERS.map(String::from));
    out.push_str(&line(&w.map(|n| "-".repeat(n))));
    for r in rows {
        out.push_str(&line(&cells(r)));
    }
    for r in rows {
        if let Verdict::Failed(why) | Verdict::Skipped(why) = &r.verdict {
            let _ = writeln!(out, "\ncase {} {}: {why}", r.case, r.verdict.text());
        }
    }
    out
}

/// The table in Markdown.
pub fn markdown_table(rows: &[Row]) -> String {
    let esc = |s: &str| s.replace('|', "\\|");
    let mut out = format!("| {} |\n", HEADERS.join(" | "));
    out.push_str(&format!("|{}\n", " --- |".repeat(HEADERS.len())));
    for r in rows {
        let c = cells(r).map(|c| esc(&c));
        let c = if r.verdict == Verdict::Missed {
            let mut c = c;
            c[6] = "**MISSED**".into();
            c
        } else {
            c
        };
        out.push_str(&format!("| {} |\n", c.join(" | ")));
    }
    for r in rows {
        if let Verdict::Failed(why) | Verdict::Skipped(why) = &r.verdict {
            let _ = writeln!(out, "\nCase {} {}: {}", r.case, r.verdict.text(), esc(why));
        }
    }
    out
}
