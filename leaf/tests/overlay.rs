//! The self-organising overlay with real processes on 127.0.0.1: a node that finds no
//! super-peer becomes one and the next finds it with nothing configured; and a network of three
//! super-peers and twenty leaves survives a `kill -9` of one super-peer.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// A `leaf` command configured only through its environment, as a user's would be: the data
/// directory, and (to stay off the real default port 7700) where to look for a super-peer.
fn bare_leaf(data: &Path, superpeer: &str) -> Command {
    let mut c = Command::new(LEAF);
    c.env("CANOPY_DATA_DIR", data)
        .env("CANOPY_SUPERPEER", superpeer)
        .env("CANOPY_LISTEN", "127.0.0.1:0")
        .env("CANOPY_SUPERPEER_LISTEN", superpeer)
        // The machine's router is left alone.
        .env("CANOPY_NO_PORT_MAPPING", "1");
    c
}

fn bare_status(data: &Path, superpeer: &str) -> serde_json::Value {
    let out = run(bare_leaf(data, superpeer).args(["status", "--json"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A free port below the kernel's ephemeral range, so that no process of a concurrent test
/// (they all listen on port 0) can be given it between this check and its use.
fn free_port() -> u16 {
    let start = 20_000 + (std::process::id() % 10_000) as u16;
    (start..32_000)
        .chain(20_000..start)
        .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
        .expect("a free port below 32000")
}

#[test]
fn with_nothing_configured_the_first_node_becomes_a_superpeer_and_the_next_finds_it() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let sp = format!("127.0.0.1:{}", free_port());
    let music_a = base.join("a/Music/Nils Frahm");
    let music_b = base.join("b/Music/Hania Rani");
    std::fs::create_dir_all(&music_a).unwrap();
    std::fs::create_dir_all(&music_b).unwrap();
    std::fs::write(music_a.join("Says.flac"), b"a recording of says").unwrap();
    std::fs::write(music_b.join("Glass.flac"), b"a recording of glass").unwrap();

    let first = Proc::spawn(
        bare_leaf(&base.join("a-data"), &sp)
            .arg("share")
            .arg(base.join("a/Music")),
    );
    first.wait_for("keeping the node running");
    wait_until("the first node to become a super-peer", 30, || {
        bare_status(&base.join("a-data"), &sp)["role"] == "super-peer"
    });
    let second = Proc::spawn(
        bare_leaf(&base.join("b-data"), &sp)
            .arg("share")
            .arg(base.join("b/Music")),
    );
    second.wait_for("keeping the node running");
    let status = bare_status(&base.join("b-data"), &sp);
    assert_eq!(status["role"], "leaf");
    assert_eq!(status["superpeers"][0]["addr"], sp.as_str(), "{status}");

    // A third, short-lived node finds both files through the first node's super-peer.
    wait_until("both files to be searchable", 20, || {
        let out =
            run(bare_leaf(&base.join("c-data"), &sp)
                .args(["search", "flac", "--json", "--wait", "1"]));
        let found = text(&out.stdout);
        found.contains("Says.flac") && found.contains("Glass.flac")
    });
    drop(second);
    drop(first);
}

#[test]
fn leaves_reattach_and_are_found_again_within_ten_seconds_after_a_superpeer_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let start_sp = |name: &str, peers: &[&str]| start_superpeer(&base.join(name), peers);
    let (_a, a) = start_sp("sp-a", &[]);
    let (_b, b) = start_sp("sp-b", &[&a]);
    let (c_proc, c) = start_sp("sp-c", &[&a]);
    let sps = [a.clone(), b.clone(), c.clone()];

    // Twenty leaves, each told one super-peer; they learn the others from it.
    let mut leaves = Vec::new();
    for i in 0..20 {
        let dir = base.join(format!("share{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("leafmark {i:02}.txt")),
            format!("leaf {i}"),
        )
        .unwrap();
        let data = base.join(format!("leaf{i}"));
        let p = Proc::spawn(
            leaf(&data, &sps[i % 3])
                .args(["--no-promote", "share"])
                .arg(&dir),
        );
        leaves.push((p, data, i));
    }
    for (p, _, _) in &leaves {
        p.wait_for("keeping the node running");
    }
    let attached = |data: &Path, i: usize| -> Vec<String> {
        let s = status_json(data, &sps[i % 3]);
        s["superpeers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["addr"].as_str().unwrap().to_string())
            .collect()
    };
    wait_until("every leaf attached to two super-peers", 60, || {
        leaves.iter().all(|(_, d, i)| attached(d, *i).len() == 2)
    });
    let on_c: Vec<usize> = leaves
        .iter()
        .filter(|(_, d, i)| attached(d, *i).contains(&c))
        .map(|(_, _, i)| *i)
        .collect();
    assert!(!on_c.is_empty(), "some leaves use super-peer C");

    // kill -9 one super-peer; its leaves must re-attach elsewhere and stay findable.
    drop(c_proc);
    let killed = Instant::now();
    let searcher = base.join("searcher");
    let found = |sp: &str| -> HashSet<String> {
        let out = run(leaf(&searcher, sp).args(["search", "leafmark", "--json", "--wait", "1"]));
        text(&out.stdout)
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["name"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    wait_until("leaves to re-attach to live super-peers", 10, || {
        leaves.iter().all(|(_, d, i)| {
            let now = attached(d, *i);
            now.len() == 2 && !now.contains(&c)
        })
    });
    wait_until("all twenty files to be found again", 10, || {
        found(&a).len() == 20 && found(&b).len() == 20
    });
    let took = killed.elapsed();
    eprintln!(
        "{} leaves were on the killed super-peer; all re-attached and found in {took:?}",
        on_c.len()
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}
