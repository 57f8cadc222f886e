//! Sharing from behind a real NAT: network namespaces this test creates (and deletes, pass or
//! fail), with an nftables `masquerade` router that drops new inbound connections, as a home
//! router does.
//!
//! ```text
//!   home (192.168.77.2) ── nat router (192.168.77.1 | 10.77.1.2) ── inet (10.77.1.1, 10.77.2.1) ── pub (10.77.2.2)
//!   source leaf              masquerade, inbound new dropped          super-peer :7700              downloading leaf
//! ```
//!
//! The source is found, is known not to be reachable (its super-peer's connection back failed,
//! and the leaf is told so with the router's address), and the download still completes: the
//! downloader asks through the super-peer, and the source connects out to it. Needs root,
//! `ip` (iproute2) and `nft` (nftables); `.ci/run` installs them.

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

/// Network namespaces named with this process's id, deleted on drop.
struct Namespaces {
    prefix: String,
    names: Vec<String>,
}

impl Namespaces {
    fn name(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// `ip netns exec NAME program ...`
    fn exec(&self, short: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name(short)]).arg(program);
        c
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (this test needs iproute2 and nftables; .ci/run installs them)",
                args[0]
            )
        });
    assert!(
        out.status.success(),
        "{args:?}: {} (this test needs root, iproute2 and nftables)",
        text(&out.stderr)
    );
}

/// The namespaces of the picture above, with the router's rules loaded.
fn home_behind_nat() -> Namespaces {
    let prefix = format!("cnat{}", std::process::id());
    let mut ns = Namespaces {
        prefix,
        names: Vec::new(),
    };
    for short in ["inet", "nat", "home", "pub"] {
        let name = ns.name(short);
        sh(&["ip", "netns", "add", &name]);
        ns.names.push(name);
    }
    let (inet, nat, home, public) = (
        ns.name("inet"),
        ns.name("nat"),
        ns.name("home"),
        ns.name("pub"),
    );
    // Each pair is made inside its namespaces: nothing is created in the test's own.
    let pairs = [
        (&inet, "i-nat", &nat, "wan"),
        (&inet, "i-pub", &public, "eth"),
        (&nat, "lan", &home, "eth"),
    ];
    for (a, ia, b, ib) in pairs {
        sh(&[
            "ip", "-n", a, "link", "add", ia, "type", "veth", "peer", "name", ib, "netns", b,
        ]);
    }
    let addrs = [
        (&inet, "i-nat", "10.77.1.1/24"),
        (&inet, "i-pub", "10.77.2.1/24"),
        (&nat, "wan", "10.77.1.2/24"),
        (&nat, "lan", "192.168.77.1/24"),
        (&home, "eth", "192.168.77.2/24"),
        (&public, "eth", "10.77.2.2/24"),
    ];
    for (n, dev, addr) in addrs {
        sh(&["ip", "-n", n, "addr", "add", addr, "dev", dev]);
        sh(&["ip", "-n", n, "link", "set", dev, "up"]);
    }
    for n in [&inet, &nat, &home, &public] {
        sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
    }
    for (n, gw) in [
        (&nat, "10.77.1.1"),
        (&home, "192.168.77.1"),
        (&public, "10.77.2.1"),
    ] {
        sh(&["ip", "-n", n, "route", "add", "default", "via", gw]);
    }
    for n in [&inet, &nat] {
        sh(&[
            "ip",
            "netns",
            "exec",
            n,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
    }
    // A home router: the LAN leaves through the router's address; nothing new comes in.
    let rules = r#"
table ip nat {
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan" masquerade
    }
}
table inet filter {
    chain input {
        type filter hook input priority filter; policy accept;
        iifname "wan" ct state new drop
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan" accept
    }
}
"#;
    let file = std::env::temp_dir().join(format!("{}-rules.nft", ns.prefix));
    std::fs::write(&file, rules).unwrap();
    sh(&[
        "ip",
        "netns",
        "exec",
        &nat,
        "nft",
        "-f",
        file.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&file);
    ns
}

fn leaf_in(ns: &Namespaces, where_: &str, data: &Path, sp: &str, listen: &str) -> Command {
    let mut c = ns.exec(where_, LEAF);
    c.arg("--data-dir")
        .arg(data)
        .args(["--superpeer", sp, "--listen", listen]);
    c.env_remove("CANOPY_DATA_DIR")
        .env_remove("CANOPY_SUPERPEER");
    c
}

#[test]
fn a_source_behind_nat_is_found_known_unreachable_and_still_downloaded_from() {
    let ns = home_behind_nat();
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();

    let mut sp_cmd = ns.exec("inet", superpeer_bin());
    sp_cmd
        .args(["--listen", "0.0.0.0:7700", "--data-dir"])
        .arg(base.join("sp"));
    let sp = Proc::spawn(&mut sp_cmd);
    sp.wait_for("listening on");

    // The source, at home behind the router.
    let content: Vec<u8> = (0..5_000_000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    let music = base.join("home-music/Nils Frahm");
    std::fs::create_dir_all(&music).unwrap();
    std::fs::write(music.join("Says (live at home).flac"), &content).unwrap();
    let home_data = base.join("home-data");
    let source = Proc::spawn(
        leaf_in(&ns, "home", &home_data, "10.77.1.1:7700", "0.0.0.0:7001")
            .arg("share")
            .arg(base.join("home-music")),
    );
    source.wait_for("sharing 1 files");

    // The downloader, on the public side.
    let pub_data = base.join("pub-data");
    std::fs::create_dir_all(base.join("nothing")).unwrap();
    let downloader = Proc::spawn(
        leaf_in(&ns, "pub", &pub_data, "10.77.2.1:7700", "0.0.0.0:7002")
            .arg("share")
            .arg(base.join("nothing")),
    );
    downloader.wait_for("sharing 0 files");

    // The super-peer's connection back to the source failed, and the source was told so, with
    // the router's address: the one the super-peer sees it at.
    let status = |data: &Path| status_json(data, "10.77.1.1:7700");
    wait_until("the source to learn it cannot be reached", 40, || {
        status(&home_data)["reach"]["reachable"] == false
    });
    assert_eq!(status(&home_data)["reach"]["observed"], "10.77.1.2:7001");
    wait_until("the downloader to learn it can be reached", 40, || {
        status(&pub_data)["reach"]["reachable"] == true
    });
    let shown =
        run(leaf_in(&ns, "home", &home_data, "10.77.1.1:7700", "0.0.0.0:7001").arg("status"));
    assert!(
        text(&shown.stdout)
            .contains("reachable no: a super-peer could not connect to 10.77.1.2:7001"),
        "{}",
        text(&shown.stdout)
    );
    // Nothing gets in directly: the router drops it.
    let direct = run(ns.exec("pub", "bash").args([
        "-c",
        "timeout 3 bash -c '</dev/tcp/10.77.1.2/7001' && echo open || echo closed",
    ]));
    assert_eq!(text(&direct.stdout).trim(), "closed");

    let id = blake3::hash(&content).to_hex().to_string();
    let out = run(
        leaf_in(&ns, "pub", &pub_data, "10.77.2.1:7700", "0.0.0.0:7002")
            .args(["search", "nils", "frahm", "--json", "--wait", "2"]),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&id), "{}", text(&out.stdout));

    let dl = base.join("downloads");
    let out = run(
        leaf_in(&ns, "pub", &pub_data, "10.77.2.1:7700", "0.0.0.0:7002")
            .args(["get", &id, "--out"])
            .arg(&dl),
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(std::fs::read(dl.join("Says (live at home).flac")).unwrap() == content);
    // Served by the source over the connection it made.
    assert!(uploaded(&home_data, "10.77.1.1:7700") >= content.len() as u64);
    drop((source, downloader, sp));
}
