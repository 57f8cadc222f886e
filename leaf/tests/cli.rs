//! The binaries themselves: a `superpeer` process and `leaf` processes share folders, search
//! with `--json`, download with `get`, report `status`, and refuse bad input clearly. Every
//! child process is killed when the test ends, pass or fail.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;

#[test]
fn share_search_get_and_status_through_the_binaries() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let (sp, sp_addr) = start_superpeer(&base.join("sp"), &[]);

    // Two leaves share the same recording, so the download has two sources.
    let content: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut sharers = Vec::new();
    for name in ["alice", "bob"] {
        let music = base.join(name).join("Music/Ólafur Arnalds/Live");
        std::fs::create_dir_all(&music).unwrap();
        std::fs::write(music.join("03 - Þú ert jörðin.flac"), &content).unwrap();
        std::fs::write(music.join("cover.jpg"), name.as_bytes()).unwrap();
        let p = Proc::spawn(
            leaf(&base.join(format!("{name}-data")), &sp_addr)
                .arg("share")
                .arg(base.join(name).join("Music")),
        );
        p.wait_for("sharing 2 files");
        sharers.push(p);
    }

    let carol = base.join("carol-data");
    let out =
        run(leaf(&carol, &sp_addr).args(["search", "olafur", "jordin", "--json", "--wait", "1"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "one row per distinct file: {rows:?}");
    let id = rows[0]["id"].as_str().unwrap().to_string();
    assert_eq!(id, blake3::hash(&content).to_hex().as_str());
    assert_eq!(rows[0]["name"], "03 - Þú ert jörðin.flac");
    assert_eq!(rows[0]["size"], 3_000_000);
    assert_eq!(rows[0]["sources"], 2);

    let dl = base.join("downloads");
    let out = run(leaf(&carol, &sp_addr).args(["get", &id, "--out"]).arg(&dl));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("from 2 source(s)"),
        "{}",
        text(&out.stdout)
    );
    assert!(std::fs::read(dl.join("03 - Þú ert jörðin.flac")).unwrap() == content);

    // Carol has it now: searches mark it, and a second get says where it is and fetches nothing.
    let out =
        run(leaf(&carol, &sp_addr).args(["search", "olafur", "jordin", "--json", "--wait", "1"]));
    let row: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        row["have"].as_str().map(std::path::PathBuf::from),
        Some(dl.join("03 - Þú ert jörðin.flac"))
    );
    let out = run(leaf(&carol, &sp_addr).args(["get", &id, "--out"]).arg(&dl));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("already have"),
        "{}",
        text(&out.stdout)
    );
    assert!(!dl.join("03 - Þú ert jörðin (1).flac").exists());

    // Browse alice: her shares as a tree; then fetch one of her folders, layout kept.
    let alice_addr = status_json(&base.join("alice-data"), &sp_addr)["listen"]
        .as_str()
        .unwrap()
        .to_string();
    let out = run(leaf(&carol, &sp_addr).args(["browse", &alice_addr]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let tree = text(&out.stdout);
    for line in [
        "Music/",
        "  Ólafur Arnalds/",
        "    Live/",
        "      cover.jpg  5 B  ",
        "2 files, 2.86 MiB",
    ] {
        assert!(
            tree.lines().any(|l| l.starts_with(line)),
            "{line:?} in\n{tree}"
        );
    }
    // By node id too, as `search --json` printed it (carol's earlier searches met alice, and
    // the record of that outlives each command): the whole id, or its first 8 digits. An id no
    // search met is refused by name.
    let alice_node = status_json(&base.join("alice-data"), &sp_addr)["node"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        rows[0]["source_nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n.as_str() == Some(&alice_node)),
        "{rows:?}"
    );
    for given in [&alice_node[..], &alice_node[..8]] {
        let out = run(leaf(&carol, &sp_addr).args(["browse", given]));
        assert!(out.status.success(), "{given}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), tree, "{given}");
    }
    let out = run(leaf(&carol, &sp_addr).args(["browse", "0123456789abcdef"]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .contains("no search of this node met a leaf with node id 0123456789abcdef"),
        "{}",
        text(&out.stderr)
    );
    let albums = base.join("albums");
    let out = run(leaf(&carol, &sp_addr)
        .args(["get-folder", &alice_addr, "Music/Ólafur Arnalds", "--out"])
        .arg(&albums));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read(albums.join("Ólafur Arnalds/Live/cover.jpg")).unwrap(),
        b"alice"
    );

    // The running node answers over its control socket, and takes more folders.
    let alice = base.join("alice-data");
    let out = run(leaf(&alice, &sp_addr).arg("status"));
    let status = text(&out.stdout);
    assert!(
        status.contains(&format!("superpeer {sp_addr} connected")),
        "{status}"
    );
    assert!(status.contains("shares    2 files"), "{status}");
    let extra = base.join("alice/Podcasts");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("episode 12 marmalade.ogg"), b"an episode").unwrap();
    let out = run(leaf(&alice, &sp_addr).arg("share").arg(&extra));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("1 files"),
        "{}",
        text(&out.stdout)
    );
    let out = run(leaf(&carol, &sp_addr).args(["search", "marmalade", "--wait", "1"]));
    assert!(
        text(&out.stdout).contains("episode 12 marmalade.ogg"),
        "{}",
        text(&out.stdout)
    );

    // Filters read like the rest: sizes in the units of --upload-rate, bounds inclusive; a
    // duration bound leaves out files without a duration (the flac here is not real audio).
    let rows = |args: &[&str]| -> usize {
        let out = run(leaf(&carol, &sp_addr)
            .args(["search", "olafur", "jordin", "--json", "--wait", "1"])
            .args(args));
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout).lines().count()
    };
    assert_eq!(rows(&["--min-size", "2MB", "--max-size", "3MB"]), 1);
    assert_eq!(rows(&["--min-size", "2.9MiB"]), 0, "3,000,000 B < 2.9 MiB");
    assert_eq!(rows(&["--min-duration", "1s"]), 0);
    assert_eq!(rows(&["--sort", "size"]), 1);
    drop(sharers);
    drop(sp);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = run(leaf(&data, "127.0.0.1:9").args(["get", "not-an-id"]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a file id"),
        "{}",
        text(&out.stderr)
    );

    let out = run(leaf(&data, "127.0.0.1:9")
        .arg("share")
        .arg(tmp.path().join("missing")));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("missing") && err.contains("no such folder"),
        "{err}"
    );

    let out = run(leaf(&data, "127.0.0.1:9").args(["search", "x", "--min-size", "10XB"]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("unknown unit"),
        "{}",
        text(&out.stderr)
    );
    let out = run(leaf(&data, "127.0.0.1:9").args([
        "search",
        "x",
        "--min-size",
        "5MB",
        "--max-size",
        "1MB",
    ]));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--min-size is above --max-size"),
        "{}",
        text(&out.stderr)
    );

    // No node and no super-peer: say so, and how to fix it.
    let out = run(leaf(&data, "127.0.0.1:9").args(["search", "anything"]));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no super-peer answers at 127.0.0.1:9"),
        "{err}"
    );
}

#[test]
fn a_killed_downloading_node_resumes_without_fetching_chunks_again() {
    stop_mid_download_and_resume(Stop::Kill);
}

#[test]
fn a_node_stopped_by_sigterm_mid_download_exits_at_once_and_resumes() {
    stop_mid_download_and_resume(Stop::Term);
}

/// How a node is stopped in the middle of a download.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    /// kill -9: nothing runs after.
    Kill,
    /// SIGTERM (what systemd sends): the node stops itself, in a bounded time.
    Term,
}

fn stop_mid_download_and_resume(stop: Stop) {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let (_sp, sp_addr) = start_superpeer(&base.join("sp"), &[]);

    // Two sources, each capped at 3 MB/s, so the 24 MiB download takes a few seconds.
    let size = 24usize << 20;
    let content: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2246822519) >> 11) as u8)
        .collect();
    let id = blake3::hash(&content).to_hex().to_string();
    let mut sources = Vec::new();
    for name in ["alice", "bob"] {
        let dir = base.join(name).join("Films");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("big.mkv"), &content).unwrap();
        let data = base.join(format!("{name}-data"));
        let p = Proc::spawn(
            leaf(&data, &sp_addr)
                .args(["--upload-rate", "3MB", "share"])
                .arg(&dir),
        );
        p.wait_for("sharing 1 files");
        sources.push((p, data));
    }

    let carol = base.join("carol-data");
    let dl = base.join("downloads");
    let node = Proc::spawn(leaf(&carol, &sp_addr).arg("share"));
    node.wait_for("keeping the node running");
    let _get = Proc::spawn(leaf(&carol, &sp_addr).args(["get", &id, "--out"]).arg(&dl));
    let done_bytes = |s: &serde_json::Value| s["downloads"][0]["done_bytes"].as_u64().unwrap_or(0);
    wait_until("a quarter of the file", 60, || {
        done_bytes(&status_json(&carol, &sp_addr)) >= (size / 4) as u64
    });

    // Stop the node in the middle of the file.
    let mut node = node;
    match stop {
        Stop::Kill => drop(node),
        Stop::Term => {
            let (status, lines) = node.terminate(Duration::from_secs(15));
            assert!(status.success(), "{status}: {lines:?}");
            assert!(
                lines.iter().any(|l| l.contains("SIGTERM: stopping"))
                    && lines.last().is_some_and(|l| l == "stopped"),
                "{lines:?}"
            );
            assert!(
                !carol.join("control.sock").exists(),
                "the control socket is removed"
            );
        }
    }
    let before: u64 = sources.iter().map(|(_, d)| uploaded(d, &sp_addr)).sum();
    let _node = Proc::spawn(leaf(&carol, &sp_addr).arg("share"));
    let target = dl.join("big.mkv");
    wait_until("the resumed download to finish", 60, || target.exists());
    assert!(
        std::fs::read(&target).unwrap() == content,
        "resumed file differs"
    );

    let after: u64 = sources.iter().map(|(_, d)| uploaded(d, &sp_addr)).sum();
    let status = status_json(&carol, &sp_addr);
    let resumed = status["downloads"][0]["resumed_chunks"].as_u64().unwrap();
    let chunk = wire::content::chunk_size_for(size as u64) as u64;
    let total = size as u64 / chunk;
    let in_flight_at_kill = 4 * 2; // requests in flight per source, two sources
    assert!(
        resumed >= total / 4,
        "the chunks verified before the kill were kept: {resumed}"
    );
    let fetched_again = after - before;
    eprintln!(
        "resume: {resumed} of {total} chunks kept across {stop:?}; {fetched_again} bytes \
         ({:.1} chunks) fetched after the restart",
        fetched_again as f64 / chunk as f64
    );
    assert!(
        fetched_again <= (total - resumed + in_flight_at_kill) * chunk,
        "fetched {fetched_again} bytes after the restart; {} chunks were missing",
        total - resumed
    );
    let leftovers: Vec<_> = std::fs::read_dir(&dl)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "no .part or record left: {leftovers:?}");
}

#[test]
fn escape_sequences_from_peers_never_reach_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let (_sp, sp_addr) = start_superpeer(&base.join("sp"), &[]);
    // Clear the screen, then write to the clipboard (OSC 52), then a C1 CSI.
    let name = "canopy evil \u{1b}[2J\u{1b}]52;c;ZXZpbA==\u{7} \u{9b}31m tune.mp3";
    let music = base.join("mallory/Music");
    std::fs::create_dir_all(&music).unwrap();
    std::fs::write(music.join(name), b"not really a tune").unwrap();
    let _sharer = Proc::spawn(
        leaf(&base.join("mallory-data"), &sp_addr)
            .arg("share")
            .arg(&music),
    );
    _sharer.wait_for("sharing 1 files");
    let raw = |b: &[u8]| b.contains(&0x1b) || b.contains(&0x07) || text(b).contains('\u{9b}');

    let carol = base.join("carol-data");
    let out = run(leaf(&carol, &sp_addr).args(["search", "canopy", "evil", "--wait", "1"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !raw(&out.stdout) && !raw(&out.stderr),
        "{:?}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stdout).contains("canopy evil \\u{1b}[2J\\u{1b}]52;c;ZXZpbA==\\u{7} \\u{9b}31m"),
        "{}",
        text(&out.stdout)
    );

    // JSON keeps the name as it is, escaped as JSON.
    let out =
        run(leaf(&carol, &sp_addr).args(["search", "canopy", "evil", "--json", "--wait", "1"]));
    assert!(!raw(&out.stdout), "{:?}", text(&out.stdout));
    let row: serde_json::Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(row["name"], name);
    let id = row["id"].as_str().unwrap().to_string();

    let dl = base.join("downloads");
    let out = run(leaf(&carol, &sp_addr).args(["get", &id, "--out"]).arg(&dl));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !raw(&out.stdout) && !raw(&out.stderr),
        "{:?}",
        text(&out.stdout)
    );
    // The file saved has no control characters in its name.
    let saved: Vec<_> = std::fs::read_dir(&dl).unwrap().flatten().collect();
    assert_eq!(saved.len(), 1);
    let saved_name = saved[0].file_name().to_string_lossy().into_owned();
    assert!(!saved_name.chars().any(char::is_control), "{saved_name:?}");
}

#[test]
fn a_command_shows_its_own_options_before_the_node_settings() {
    let out = run(Command::new(env!("CARGO_BIN_EXE_leaf")).args(["search", "--help"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let help = text(&out.stdout);
    let at = |what: &str| {
        help.find(what)
            .unwrap_or_else(|| panic!("no {what} in:\n{help}"))
    };
    let settings = at("Node settings:");
    for own in ["--min-size", "--sort", "--min-duration", "--json"] {
        assert!(
            at(own) < settings,
            "{own} comes after the node settings:\n{help}"
        );
    }
    for node in ["--upload-slots", "--data-dir", "--max-downloads"] {
        assert!(
            at(node) > settings,
            "{node} is not under the node settings:\n{help}"
        );
    }
    assert!(at("Limits on what peers may send:") > settings, "{help}");
}

#[test]
fn a_superpeer_stopped_by_sigterm_says_so_saves_its_hosts_and_exits() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("sp");
    let (mut sp, sp_addr) = start_superpeer(&data, &[]);
    let alice = tmp.path().join("alice-data");
    let music = tmp.path().join("music");
    std::fs::create_dir_all(&music).unwrap();
    std::fs::write(music.join("song.mp3"), b"la la la").unwrap();
    let leaf_node = Proc::spawn(
        leaf(&alice, &sp_addr)
            .args(["--no-promote", "share"])
            .arg(&music),
    );
    leaf_node.wait_for("sharing 1 files");
    let attached = || {
        let status = status_json(&alice, &sp_addr);
        let links = status["superpeers"].as_array().cloned().unwrap_or_default();
        links.iter().any(|l| l["addr"] == sp_addr.as_str())
    };
    wait_until("the leaf attached", 30, attached);
    let (status, lines) = sp.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}: {lines:?}");
    assert_eq!(lines, ["SIGTERM: stopping", "stopped"]);
    assert!(data.join("hosts.cbor").exists(), "the host cache is saved");
    wait_until("the leaf to see its super-peer go", 10, || !attached());
    // It was told why (a Goodbye), not just cut off.
    let events = status_json(&alice, &sp_addr)["events"].to_string();
    assert!(events.contains("super-peer stopping (SIGTERM)"), "{events}");
}

#[test]
fn wishes_are_added_listed_and_removed_with_no_node_running() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let wish = |args: &[&str]| run(leaf(&data, "127.0.0.1:9").arg("wish").args(args));
    let out = wish(&[
        "add",
        "boards",
        "of",
        "canada",
        "--ext",
        ".FLAC",
        "--min-size",
        "5MB",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("1: \"boards of canada\" (.flac, >= 5.00 MB); not searched yet, 0 found"),
        "{}",
        text(&out.stdout)
    );
    let out = wish(&["list", "--json"]);
    let rows: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["words"], "boards of canada");
    assert_eq!(rows[0]["filter"]["min_size"], 5_000_000);
    let out = wish(&["remove", "1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("no wishes"),
        "{}",
        text(&out.stdout)
    );
    let out = wish(&["remove", "1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no wish 1"),
        "{}",
        text(&out.stderr)
    );
    let out = run(leaf(&data, "127.0.0.1:9")
        .args(["wish", "add", "x", "--auto", "--out"])
        .arg(tmp.path().join("missing")));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no such folder"),
        "{}",
        text(&out.stderr)
    );
}
